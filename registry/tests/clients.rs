//! The registry driven by clients nobody here wrote: the Docker engine (`docker push`/`pull`),
//! skopeo, oras-py, and the workspace's cosign-scheme signing crate (oci-client). None of these
//! tests skips: a missing client fails the test with how to install it (`.ci/infra.sh` does).

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use enclii_signing::{RegistryAuth, Secret, SigningKey, attach_sbom, fetch_sbom, sign, verify};
use support::api::Api;
use support::{TempDir, TestRegistry, random_hex, require, run};
use tokio::process::Command;

const DOCKER: &str = "/usr/bin/docker";
const INSTALL: &str = "run `bash .ci/infra.sh` (installs and starts the Docker engine, skopeo and oras-py)";

/// A scratch folder for one test, removed at the end.
fn scratch(test: &str) -> TempDir {
    TempDir::new(&format!("enclii-registry-client-{test}"))
}

/// Local image tags this test made, removed from the engine at the end (also on failure).
struct LocalImages(Vec<String>);

impl Drop for LocalImages {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let _ = std::process::Command::new(DOCKER)
                .arg("rmi")
                .arg("-f")
                .args(&self.0)
                .output();
        }
    }
}

/// Builds a two-layer image in the engine: Debian's static busybox (nothing can be pulled
/// here, so it stands in for the `busybox` base) and a file unique to this run.
async fn build_image(scratch: &Path, tag: &str, stamp: &str) {
    require(DOCKER, &["info"], INSTALL).await;
    let context = scratch.join("context");
    std::fs::create_dir_all(&context).unwrap();
    std::fs::copy("/bin/busybox", context.join("busybox"))
        .unwrap_or_else(|e| panic!("Debian's busybox-static at /bin/busybox: {e}; {INSTALL}"));
    std::fs::write(context.join("stamp"), stamp).unwrap();
    std::fs::write(
        context.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY stamp /stamp\nCMD [\"/bin/busybox\", \"cat\", \"/stamp\"]\n",
    )
    .unwrap();
    run(Command::new(DOCKER)
        .env("DOCKER_BUILDKIT", "1")
        .args(["build", "-q", "-t", tag])
        .arg(&context))
    .await;
}

fn docker(config: &Path) -> Command {
    let mut command = Command::new(DOCKER);
    command.arg("--config").arg(config);
    command
}

/// The `digest: sha256:… size: …` line `docker push` ends with.
fn pushed_digest(output: &str) -> String {
    output
        .split_whitespace()
        .skip_while(|word| *word != "digest:")
        .nth(1)
        .unwrap_or_else(|| panic!("no digest in docker push output:\n{output}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pushes_and_pulls_by_tag_and_digest() {
    let registry = TestRegistry::start("docker").await;
    let scratch = scratch("docker");
    let host = registry.host();
    let stamp = random_hex(16);
    let image = format!("{host}/project/busybox:v1");
    let copy = format!("{host}/other/busybox:v1");
    let mut local = LocalImages(vec![image.clone(), copy.clone()]);
    build_image(&scratch, &image, &stamp).await;

    let config = scratch.join("docker-config");
    std::fs::create_dir_all(&config).unwrap();
    // Without credentials the engine is refused.
    let refused = docker(&config).args(["push", &image]).output().await.unwrap();
    assert!(!refused.status.success(), "a push without login must fail");
    let mut login = docker(&config);
    login
        .args(["login", &host, "-u", registry.user(), "--password-stdin"])
        .stdin(std::process::Stdio::piped());
    let mut child = login.spawn().unwrap();
    {
        use tokio::io::AsyncWriteExt as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(registry.password().as_bytes()).await.unwrap();
    }
    let login = child.wait_with_output().await.unwrap();
    assert!(
        login.status.success(),
        "docker login: {}",
        String::from_utf8_lossy(&login.stderr)
    );

    let pushed = run(docker(&config).args(["push", &image])).await;
    let digest = pushed_digest(&pushed);
    // The same layers into another repository: blobs are global, so none is uploaded again.
    run(docker(&config).args(["tag", &image, &copy])).await;
    let again = run(docker(&config).args(["push", &copy])).await;
    assert!(
        again.contains("Layer already exists") && !again.contains("Pushed"),
        "{again}"
    );
    assert_eq!(pushed_digest(&again), digest);

    run(docker(&config).args(["rmi", &image, &copy])).await;
    run(docker(&config).args(["pull", &image])).await;
    let repo_digests =
        run(docker(&config).args(["image", "inspect", "--format", "{{json .RepoDigests}}", &image])).await;
    assert!(
        repo_digests.contains(&format!("{host}/project/busybox@{digest}")),
        "{repo_digests}"
    );
    let by_digest = format!("{host}/project/busybox@{digest}");
    run(docker(&config).args(["rmi", &image])).await;
    run(docker(&config).args(["pull", &by_digest])).await;
    local.0.push(by_digest.clone());
    // The pulled image runs and holds this run's file.
    let out = run(docker(&config).args(["run", "--rm", &by_digest])).await;
    assert_eq!(out.trim(), stamp);

    let tags = Api::new(&registry).tags("project/busybox").await;
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copies_inspects_and_deletes() {
    require(
        "skopeo",
        &["--version"],
        "install skopeo: apt-get install skopeo (see .ci/infra.sh)",
    )
    .await;
    let registry = TestRegistry::start("skopeo").await;
    let scratch = scratch("skopeo");
    let host = registry.host();
    let local_tag = format!("enclii-registry-test/skopeo:{}", random_hex(6));
    let _local = LocalImages(vec![local_tag.clone()]);
    build_image(&scratch, &local_tag, &random_hex(16)).await;
    let creds = format!("{}:{}", registry.user(), registry.password());
    let skopeo = || {
        let mut command = Command::new("skopeo");
        command.arg("--insecure-policy");
        command
    };

    // docker-daemon: → registry (Docker schema 2), then back out to an OCI layout.
    let pushed = format!("docker://{host}/skopeo/app:v1");
    run(skopeo()
        .args(["copy", "--dest-creds", &creds, "--dest-tls-verify=false"])
        .arg(format!("docker-daemon:{local_tag}"))
        .arg(&pushed))
    .await;
    let inspect = || {
        let mut command = skopeo();
        command.args(["inspect", "--creds", &creds, "--tls-verify=false", &pushed]);
        command
    };
    let inspected: serde_json::Value = serde_json::from_str(&run(&mut inspect()).await).unwrap();
    let digest = inspected["Digest"].as_str().unwrap().to_owned();
    assert!(digest.starts_with("sha256:"), "{inspected}");
    assert_eq!(inspected["Layers"].as_array().unwrap().len(), 2, "{inspected}");

    let layout = scratch.join("layout");
    run(skopeo()
        .args(["copy", "--src-creds", &creds, "--src-tls-verify=false"])
        .arg(&pushed)
        .arg(format!("oci:{}:v1", layout.display())))
    .await;
    assert!(layout.join("index.json").exists());
    // oci: → registry: an OCI image manifest this time.
    let from_oci = format!("docker://{host}/skopeo/from-oci:v1");
    run(skopeo()
        .args(["copy", "--dest-creds", &creds, "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(&from_oci))
    .await;
    let raw = run(skopeo().args(["inspect", "--raw", "--creds", &creds, "--tls-verify=false", &from_oci])).await;
    let raw: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(raw["mediaType"], "application/vnd.oci.image.manifest.v1+json", "{raw}");
    let tags = run(skopeo().args([
        "list-tags",
        "--creds",
        &creds,
        "--tls-verify=false",
        &format!("docker://{host}/skopeo/app"),
    ]))
    .await;
    assert!(tags.contains("\"v1\""), "{tags}");

    run(skopeo()
        .args(["delete", "--creds", &creds, "--tls-verify=false"])
        .arg(format!("docker://{host}/skopeo/app@{digest}")))
    .await;
    let gone = inspect().output().await.unwrap();
    assert!(!gone.status.success(), "the deleted image is still there");
    let stderr = String::from_utf8_lossy(&gone.stderr);
    assert!(
        stderr.contains("manifest unknown") || stderr.contains("MANIFEST_UNKNOWN"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oras_pushes_pulls_and_attaches_a_referrer() {
    require(
        "python3",
        &["-c", "import oras.provider"],
        "install oras-py: pip install oras (see .ci/infra.sh)",
    )
    .await;
    let registry = TestRegistry::start("oras").await;
    let scratch = scratch("oras");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oras/roundtrip.py");
    let out = run(Command::new("python3")
        .arg(&script)
        .args([&registry.host(), registry.user(), registry.password()])
        .arg(&*scratch))
    .await;
    let seen: serde_json::Value = serde_json::from_str(out.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("roundtrip.py printed no JSON ({e}):\n{out}"));
    assert_eq!(seen["referrers"], 1, "{seen}");

    // The referrer, read back here too.
    let subject = seen["subject"].as_str().unwrap();
    let index = Api::new(&registry).referrers("oras/artifact", subject).await;
    assert_eq!(index["manifests"][0]["digest"], seen["referrer"], "{index}");
}

/// Pushes a tiny image (config + one layer) with oci-client; returns `repo@sha256:…`.
async fn push_with_oci_client(registry: &TestRegistry, repo: &str) -> String {
    use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
    use oci_client::secrets::RegistryAuth as OciAuth;
    enclii_signing::install_crypto_provider();
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    });
    let auth = OciAuth::Basic(registry.user().to_owned(), registry.password().to_owned());
    let layer = ImageLayer::oci_v1(random_hex(2048).into_bytes(), None);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": [layer.sha256_digest()] },
    });
    let config = Config::oci_v1(serde_json::to_vec(&config).unwrap(), None);
    let reference: oci_client::Reference = format!("{repo}:v1").parse().unwrap();
    client.push(&reference, &[layer], config, &auth, None).await.unwrap();
    let digest = client.fetch_manifest_digest(&reference, &auth).await.unwrap();
    format!("{repo}@{digest}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cosign_signatures_and_sboms_round_trip_through_the_signing_crate() {
    let registry = TestRegistry::start("signing").await;
    let repo = format!("{}/project/service", registry.host());
    let image = push_with_oci_client(&registry, &repo).await;
    let auth = RegistryAuth {
        insecure: true,
        username: Some(registry.user().to_owned()),
        password: Some(Secret::new(registry.password())),
    };
    let key = SigningKey::generate().unwrap();
    let annotations: BTreeMap<String, String> = [("git_sha".to_owned(), "0123abcd".to_owned())].into();

    let signature = sign(&auth, &image, &key, annotations.clone()).await.unwrap();
    let hex = image.split_once("@sha256:").unwrap().1;
    assert_eq!(signature.reference, format!("{repo}:sha256-{hex}.sig"));
    let verified = verify(&auth, &image, key.verifying_key()).await.unwrap();
    assert_eq!(verified.annotations, annotations);

    let sbom = serde_json::to_vec(&serde_json::json!({ "bomFormat": "CycloneDX", "specVersion": "1.5" })).unwrap();
    let attached = attach_sbom(&auth, &image, &sbom).await.unwrap();
    assert!(attached.ends_with(".sbom"), "{attached}");
    assert_eq!(fetch_sbom(&auth, &image).await.unwrap(), sbom);

    let api = Api::new(&registry);
    let tags = api.tags("project/service").await;
    assert_eq!(
        tags["tags"],
        serde_json::json!([format!("sha256-{hex}.sbom"), format!("sha256-{hex}.sig"), "v1"])
    );

    // Wrong credentials are refused as such.
    let wrong = RegistryAuth {
        password: Some(Secret::new("wrong")),
        ..auth.clone()
    };
    let err = verify(&wrong, &image, key.verifying_key()).await.unwrap_err();
    assert!(
        matches!(err, enclii_signing::SigningError::Unauthorized { .. }),
        "{err:?}"
    );

    // Pruning the image takes its signature and SBOM (and its own tag) with it.
    let digest = format!("sha256:{hex}");
    registry
        .registry
        .delete_image("project/service", &digest)
        .await
        .unwrap();
    registry
        .registry
        .delete_image("project/service", &digest)
        .await
        .expect("deleting what is gone is fine");
    assert!(verify(&auth, &image, key.verifying_key()).await.is_err());
    assert!(fetch_sbom(&auth, &image).await.is_err());
    let tags = api.tags("project/service").await;
    assert!(tags["tags"].as_array().is_none_or(Vec::is_empty), "{tags}");
}
