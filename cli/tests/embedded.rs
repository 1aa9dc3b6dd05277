//! The embedded default builds and deploys (issue 15): `enclii server` with nothing but a data
//! directory and a Docker engine — no `ENCLII_REGISTRY`, no `ENCLII_S3_*` — keeps artefacts in
//! its data directory and images in the registry it serves itself. `enclii up` in a checkout with
//! a Dockerfile gets a preview URL that answers through the router; the release carries a digest,
//! an SBOM and a signature that `enclii verify` accepts against the embedded registry. No setting
//! beyond the defaults but ports of the test's own: the repository is a local git directory
//! (`file://`), which a server whose API listens on loopback clones without being told.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::{Value, json};
use support::deploy::{get, remove_containers};
use support::pipeline::{BASE_IMAGE, app_checkout, base_image};
use support::{TOKEN, data_dir, free_port, http, launch};

/// `enclii <args>` in `cwd`, talking to `server` with the test's Owner token.
fn enclii(server: &str, cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_enclii"))
        .args(args)
        .current_dir(cwd)
        .env_remove("ENCLII_PROJECT")
        .env_remove("ENCLII_PROFILE")
        .env("ENCLII_SERVER", format!("http://{server}"))
        .env("ENCLII_TOKEN", TOKEN)
        .env_remove("XDG_CONFIG_HOME")
        .env("ENCLII_CONFIG", cwd.join("no-config.toml"))
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A server of the test's own with build steps on (the test harness turns them off for other
/// tests), its log beside its data directory, and `project` created: (child, API address, data
/// directory, embedded registry address).
fn start(project: &str, env: &[(&str, &str)]) -> (std::process::Child, String, std::path::PathBuf, String) {
    let data = data_dir();
    let data_str = data.display().to_string();
    let registry_listen = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(data.with_extension("log")).unwrap();
    let mut settings = vec![
        ("ENCLII_DATA_DIR", data_str.as_str()),
        ("ENCLII_BUILD_STEPS", "auto"),
        ("ENCLII_REGISTRY_LISTEN", registry_listen.as_str()),
    ];
    settings.extend_from_slice(env);
    let (child, addr) = launch(&[], &settings, Stdio::from(log));
    let (status, body) = http(&addr, "POST", "/v1/projects", &json!({"slug": project}).to_string());
    assert_eq!(status, 201, "{body}");
    (child, addr, data, registry_listen)
}

/// `host:port/project/service` of an image reference, without its tag or digest.
fn repository_of(image: &str) -> &str {
    let name = image.split('@').next().unwrap();
    match name.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => repository,
        _ => name,
    }
}

#[test]
fn the_embedded_default_builds_signs_and_serves_with_only_a_docker_engine() {
    base_image();
    let project = "embedded-default";
    remove_containers(project);
    let router = format!("127.0.0.1:{}", free_port());
    // The default deploy target, which the test harness turns off for other tests.
    let (mut child, addr, data, registry_listen) = start(
        project,
        &[
            ("ENCLII_DEPLOY_TARGET", "auto"),
            ("ENCLII_ROUTER_LISTEN", router.as_str()),
        ],
    );
    let data_str = data.display().to_string();

    // `up` in the checkout: created from enclii.yaml, built, pushed, signed, deployed.
    let dockerfile =
        format!("FROM {BASE_IMAGE}\nCOPY www /www\nCMD [\"httpd\", \"-f\", \"-p\", \"3000\", \"-h\", \"/www\"]\n");
    let dir = app_checkout(project, &dockerfile);
    let out = enclii(&addr, &dir, &["up", "--timeout", "10m"]);
    let server_log = || std::fs::read_to_string(data.with_extension("log")).unwrap_or_default();
    assert!(out.status.success(), "{}\n--- server log\n{}", text(&out), server_log());
    let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let rest = url.strip_prefix("http://").unwrap();
    let host = rest.split([':', '/']).next().unwrap();
    let (status, body) = get(&router, host, "/");
    assert_eq!((status, body.trim()), (200, "hello from up"), "{url}");

    // The release: an image in the embedded registry, pinned by digest, with its SBOM kept in
    // the data directory.
    let other = data.with_extension("elsewhere");
    std::fs::create_dir_all(&other).unwrap();
    let out = enclii(
        &addr,
        &other,
        &["releases", "web", "--project", project, "--output", "json"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let releases: Value = serde_json::from_slice(&out.stdout).unwrap();
    let release = &releases[0];
    assert_eq!(release["status"], "ready", "{release}");
    let image = release["image"].as_str().unwrap();
    let digest = release["digest"].as_str().unwrap();
    assert!(
        image.starts_with(&format!("{registry_listen}/{project}/web")),
        "pushed to the embedded registry: {release}"
    );
    let sbom = release["sbom_uri"].as_str().unwrap();
    let sbom_path = sbom.strip_prefix("file://").unwrap_or_else(|| panic!("{release}"));
    assert!(sbom_path.starts_with(&data_str), "{sbom}");
    let inventory: Value = serde_json::from_slice(&std::fs::read(sbom_path).unwrap()).unwrap();
    assert_eq!(inventory["bomFormat"], "CycloneDX", "{inventory}");

    // `enclii verify` from another directory accepts the signature in the embedded registry,
    // with the data directory's public key and the registry's generated credentials; the
    // registry refuses anyone without them.
    let password = std::fs::read_to_string(data.join("registry.password")).unwrap();
    let pinned = format!("{}@{digest}", repository_of(image));
    let key = data.join("cosign.pub").display().to_string();
    let verify = |password: &str| {
        enclii(
            &addr,
            &other,
            &[
                "verify",
                &pinned,
                "--key",
                &key,
                "--insecure",
                "--username",
                "enclii",
                "--password",
                password.trim(),
            ],
        )
    };
    let out = verify(&password);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Verified OK"),
        "{}",
        text(&out)
    );
    let out = verify("not-the-password");
    assert!(!out.status.success(), "{}", text(&out));

    let _ = child.kill();
    let _ = child.wait();
    remove_containers(project);
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_dir_all(&other);
}

/// Builds on, deploys off (`ENCLII_DEPLOY_TARGET=none`): `enclii up` builds the release, then
/// says once why it is not deployed instead of waiting in silence, and gives up at its timeout
/// (exit 40); the release says the same.
#[test]
fn a_release_no_worker_can_deploy_says_why() {
    base_image();
    let project = "embedded-no-deploys";
    let (mut child, addr, data, _) = start(project, &[]);
    let dockerfile = format!("FROM {BASE_IMAGE}\nCOPY www /www\n");
    let dir = app_checkout(project, &dockerfile);
    let out = enclii(&addr, &dir, &["up", "--timeout", "30"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(40), "{}", text(&out));
    let expected = "waiting: no worker can run deploy (no deploy target here (ENCLII_DEPLOY_TARGET=none";
    assert_eq!(stderr.matches(expected).count(), 1, "said once: {}", text(&out));
    assert!(stderr.contains("ready"), "the build itself finished: {}", text(&out));

    let out = enclii(&addr, &dir, &["releases", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let releases: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = releases[0]["id"].as_i64().unwrap();
    let (status, body) = http(&addr, "GET", &format!("/v1/releases/{id}"), "");
    assert_eq!(status, 200, "{body}");
    let release: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(release["status"], "ready", "{release}");
    assert!(release["waiting"].as_str().unwrap().starts_with(expected), "{release}");

    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&data);
}
