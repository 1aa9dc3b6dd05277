//! The build pipeline for real, through the `enclii` binary: a local git repository with a
//! Dockerfile → clone (git2) → BuildKit build on the Docker engine → push to a local OCI registry →
//! CycloneDX SBOM in a local S3 server and attached in the registry ∥ cosign signature → a ready
//! release; then a pull, `enclii verify`, and the failure cases. Needs the Docker engine, the
//! registry (ENCLII_TEST_REGISTRY, default 127.0.0.1:5000) and the S3 server (ENCLII_TEST_S3,
//! default http://127.0.0.1:8014) that `.ci/run` starts.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::data_dir;
use support::pipeline::*;

const DPKG_STATUS: &str = "Package: libfake1\nStatus: install ok installed\nVersion: 1.2-3\n\nPackage: tzdata\nStatus: install ok installed\nVersion: 2024a-0+deb12u1\n";

#[test]
fn a_commit_becomes_a_signed_inventoried_image() {
    let secret = format!("s3cr3t-{}", std::process::id());
    // A fresh nonce: BuildKit would otherwise serve the secret-using step from an earlier run's
    // cache, and the log would not show it.
    let nonce = data_dir().file_name().unwrap().to_string_lossy().to_string();
    let dockerfile = format!(
        "FROM {BASE_IMAGE}\nRUN echo {nonce} > /nonce\nARG GREETING\nRUN echo \"$GREETING\" > /greeting\n\
         RUN --mount=type=secret,id=API_TOKEN echo \"token is $(cat /run/secrets/API_TOKEN)\"\n\
         COPY status /var/lib/dpkg/status\nCOPY app.txt /app.txt\nCMD [\"cat\", \"/greeting\"]\n"
    );
    let (url, sha) = repository(&[
        ("Dockerfile", &dockerfile),
        ("app.txt", "hello\n"),
        ("status", DPKG_STATUS),
        (
            "Cargo.lock",
            "version = 3\n\n[[package]]\nname = \"serde\"\nversion = \"1.0.200\"\n",
        ),
        (
            "web/package-lock.json",
            r#"{"lockfileVersion":3,"packages":{"":{"version":"1.0.0"},"node_modules/express":{"version":"4.19.2"}}}"#,
        ),
        (
            "go.sum",
            "github.com/pkg/errors v0.9.1 h1:x=\ngithub.com/pkg/errors v0.9.1/go.mod h1:y=\n",
        ),
        ("requirements.txt", "Django==5.0.1\n"),
    ]);
    let server = server(&[]);
    service(
        &server,
        &url,
        json!({"args": {"GREETING": "hi from enclii"}, "secrets": ["API_TOKEN"]}),
    );
    let (status, body) = call(
        &server,
        "PUT",
        "/v1/projects/shop/secrets/API_TOKEN",
        json!({"value": secret, "service": "api"}),
    );
    assert!(status == 200 || status == 201, "{body}");

    let created = build(&server, &sha);
    let id = created["id"].as_i64().unwrap();
    let r = wait_finished(&server, id, Duration::from_secs(180));
    assert_eq!(r["status"], "ready", "{r:#}");
    let digest = r["digest"].as_str().unwrap();
    assert!(digest.starts_with("sha256:") && digest.len() == 71, "{digest}");
    let image = r["image"].as_str().unwrap().to_string();
    assert_eq!(image, format!("{}/shop/api:{sha}", registry()));
    assert!(r["builder"].as_str().unwrap().starts_with("docker-buildkit "), "{r}");
    assert!(r["sbom_uri"].as_str().unwrap().starts_with("s3://enclii-test-"), "{r}");
    let signature = r["signature"].as_str().unwrap();
    assert_eq!(
        signature,
        format!("{}/shop/api:{}.sig", registry(), digest.replace(':', "-"))
    );
    for name in ["clone", "build", "push", "sbom", "sign"] {
        let s = step(&r, name);
        assert_eq!(s["status"], "succeeded", "{s}");
        assert!(s["finished_at"].as_i64().unwrap() >= s["started_at"].as_i64().unwrap());
        assert!(s["log_uri"].as_str().unwrap().starts_with("s3://"), "{s}");
    }

    // The build's log, through the API: every step line, the secret masked.
    let (lines, end) = stream_log(&server, step(&r, "build")["job_id"].as_i64().unwrap(), None);
    assert_eq!(end.as_deref(), Some("completed"));
    let text = lines.join("\n");
    assert!(
        text.contains("token is ***"),
        "the secret's use is logged, masked:\n{text}"
    );
    assert!(!text.contains(&secret), "the build secret leaked into the log");
    assert!(text.contains("== build done"), "{text}");

    // The image, pulled by digest, runs; the secret is nowhere in it.
    let pinned = format!("{}/shop/api@{digest}", registry());
    run(Command::new(DOCKER).args(["rmi", "-f", &image]));
    run(Command::new(DOCKER).args(["pull", "-q", &pinned]));
    assert_eq!(
        run(Command::new(DOCKER).args(["run", "--rm", &pinned])),
        "hi from enclii"
    );
    let saved = Command::new(DOCKER).args(["save", &pinned]).output().unwrap();
    assert!(saved.status.success());
    assert!(
        !saved.stdout.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the build secret is in the image"
    );

    // `enclii verify` with the server's public key: verified; with another key: exit 10.
    let public = server.data.join("cosign.pub");
    let verify = |key: &Path| {
        Command::new(env!("CARGO_BIN_EXE_enclii"))
            .args(["verify", &image, "--insecure", "--output", "json", "--key"])
            .arg(key)
            .output()
            .unwrap()
    };
    let out = verify(&public);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let verified: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verified["digest"], digest);
    assert_eq!(verified["annotations"]["dev.enclii.git-sha"], sha);
    let other = server.data.with_extension("other.pem");
    run(Command::new("openssl")
        .args(["ecparam", "-genkey", "-name", "prime256v1", "-noout", "-out"])
        .arg(&other));
    let other_pub = server.data.with_extension("other.pub");
    run(Command::new("openssl")
        .args(["ec", "-pubout", "-in"])
        .arg(&other)
        .arg("-out")
        .arg(&other_pub));
    let out = verify(&other_pub);
    assert_eq!(out.status.code(), Some(10), "{}", String::from_utf8_lossy(&out.stdout));

    // The SBOM: attached in the registry, the same document in S3, valid CycloneDX 1.5 (schema).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    enclii_signing::install_crypto_provider();
    let auth = enclii_signing::RegistryAuth {
        insecure: true,
        ..Default::default()
    };
    let sbom = rt.block_on(enclii_signing::fetch_sbom(&auth, &pinned)).unwrap();
    let path = server.data.with_extension("sbom.json");
    std::fs::write(&path, &sbom).unwrap();
    let check = Command::new("python3")
        .arg("-c")
        .arg(SCHEMA_CHECK)
        .arg(&path)
        .arg(s3())
        .arg(r["sbom_uri"].as_str().unwrap())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "SBOM check failed: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let doc: Value = serde_json::from_slice(&sbom).unwrap();
    let purls: Vec<&str> = doc["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["purl"].as_str().unwrap())
        .collect();
    for expected in [
        "pkg:cargo/serde@1.0.200",
        "pkg:npm/express@4.19.2",
        "pkg:golang/github.com/pkg/errors@v0.9.1",
        "pkg:pypi/django@5.0.1",
        "pkg:deb/debian/libfake1@1.2-3",
    ] {
        assert!(purls.contains(&expected), "{expected} missing from {purls:?}");
    }
    assert_eq!(doc["metadata"]["component"]["version"], digest);

    // The deploy policy checks the registry: the signed release deploys; once its signature is
    // gone from the registry, it is refused.
    let deploy = || {
        call(
            &server,
            "POST",
            "/v1/projects/shop/services/api/deployments",
            json!({"release": id}),
        )
    };
    let (status, body) = deploy();
    assert_eq!(status, 202, "{body}");
    let manifest = format!(
        "http://{}/v2/shop/api/manifests/{}.sig",
        registry(),
        digest.replace(':', "-")
    );
    let headers = run(Command::new("curl").args([
        "-sfI",
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        &manifest,
    ]));
    let sig_digest = headers
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("docker-content-digest: ")
                .map(|d| d.trim().to_string())
        })
        .unwrap();
    let manifest_by_digest = format!("http://{}/v2/shop/api/manifests/{sig_digest}", registry());
    run(Command::new("curl").args(["-sf", "-X", "DELETE", &manifest_by_digest]));
    let (status, body) = deploy();
    assert_eq!(status, 409, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("signature does not verify"),
        "{body}"
    );

    // The release is immutable: a second build of the same commit is the same release.
    let again = build(&server, &sha);
    assert_eq!(again["id"].as_i64(), Some(id));
}

/// Validates the SBOM file (argv[1]) against the CycloneDX 1.5 JSON schema and checks that the
/// object at the S3 URI (argv[3], server argv[2]) is the same document.
const SCHEMA_CHECK: &str = r#"
import sys, boto3
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
doc = open(sys.argv[1]).read()
errors = JsonStrictValidator(SchemaVersion.V1_5).validate_str(doc)
if errors:
    sys.exit(f"schema errors: {errors}")
bucket, key = sys.argv[3][len("s3://"):].split("/", 1)
s3 = boto3.client("s3", endpoint_url=sys.argv[2], aws_access_key_id="enclii-test",
                  aws_secret_access_key="enclii-test-secret", region_name="us-east-1")
stored = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
if stored != doc:
    sys.exit("the SBOM in S3 differs from the one attached in the registry")
print("ok")
"#;

#[test]
fn a_broken_dockerfile_fails_the_release_at_its_line() {
    let (url, sha) = repository(&[(
        "Dockerfile",
        &format!("FROM {BASE_IMAGE}\n\nRUN echo building\nRUN exit 3\nCOPY . .\n"),
    )]);
    let server = server(&[]);
    service(&server, &url, json!({}));
    let r = build_and_wait(&server, &sha, Duration::from_secs(120));
    assert_eq!(r["status"], "failed", "{r}");
    let failure = r["failure"].as_str().unwrap();
    assert!(
        failure.starts_with("build failed at Dockerfile:4: `RUN exit 3`"),
        "{failure}"
    );
    assert!(failure.contains("exit code: 3"), "{failure}");
    assert_eq!(step(&r, "build")["status"], "failed");
    assert!(
        r["steps"].as_array().unwrap().iter().all(|s| s["step"] != "push"),
        "nothing is pushed: {r}"
    );
    assert!(r["digest"].is_null());
}

#[test]
fn an_unreachable_repository_fails_the_clone_with_a_clear_message() {
    let server = server(&[]);
    service(&server, "file:///nonexistent/enclii/repo", json!({}));
    let r = build_and_wait(
        &server,
        "4f1c0e2a9b8d7c6e5f4a3b2c1d0e9f8a7b6c5d4e",
        Duration::from_secs(60),
    );
    assert_eq!(r["status"], "failed", "{r}");
    let failure = r["failure"].as_str().unwrap();
    assert!(
        failure.starts_with("clone failed: cannot fetch from file:///nonexistent/enclii/repo"),
        "{failure}"
    );
    assert!(
        failure.contains("spec.source.git.repository"),
        "says what to fix: {failure}"
    );
}

/// A build that would sleep for minutes; its `sleep` runs in a BuildKit container on the engine.
fn sleeping_repository(marker: u32) -> (String, String) {
    repository(&[(
        "Dockerfile",
        &format!("FROM {BASE_IMAGE}\nRUN echo started && sleep {marker}\n"),
    )])
}

#[test]
fn a_cancelled_build_stops_on_the_builder() {
    let marker = 4000 + std::process::id() % 1000;
    let (url, sha) = sleeping_repository(marker);
    let server = server(&[]);
    service(&server, &url, json!({}));
    let created = build(&server, &sha);
    let id = created["id"].as_i64().unwrap();
    let pattern = format!("sleep {marker}");
    wait_until(Duration::from_secs(120), "the build's RUN step", || {
        processes_matching(&pattern) > 0
    });
    // The log is live: the running build's lines are readable before it ends.
    let job = step(&release(&server, id), "build")["job_id"].as_i64().unwrap();
    let (lines, end) = stream_log(&server, job, Some("started"));
    assert!(
        end.is_none() && lines.iter().any(|l| l.contains("started")),
        "{lines:?}"
    );

    let pipeline = created["pipeline_id"].as_i64().unwrap();
    let (status, body) = call(
        &server,
        "POST",
        &format!("/v1/pipelines/{pipeline}/cancel"),
        Value::Null,
    );
    assert_eq!(status, 200, "{body}");
    wait_until(Duration::from_secs(30), "the builder to stop the build", || {
        processes_matching(&pattern) == 0
    });
    let r = release(&server, id);
    assert_eq!(r["status"], "failed");
    assert!(r["failure"].as_str().unwrap().starts_with("cancelled by"), "{r}");
    wait_until(Duration::from_secs(10), "the build step to be marked stopped", || {
        let r = release(&server, id);
        step(&r, "build")["status"] == "failed"
            && step(&r, "build")["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("stopped before it finished"))
    });
}

#[test]
fn a_timed_out_build_is_stopped_and_fails_the_release() {
    let marker = 6000 + std::process::id() % 1000;
    let (url, sha) = sleeping_repository(marker);
    let server = server(&[("ENCLII_BUILD_TIMEOUT_SECONDS", "8")]);
    service(&server, &url, json!({}));
    let r = build_and_wait(&server, &sha, Duration::from_secs(120));
    assert_eq!(r["status"], "failed", "{r}");
    assert!(
        r["failure"].as_str().unwrap().starts_with("build timed out after 8s"),
        "{r}"
    );
    wait_until(Duration::from_secs(30), "the builder to stop the build", || {
        processes_matching(&format!("sleep {marker}")) == 0
    });
}

/// A local stand-in for `node:20-slim` (nothing can be pulled on these machines): busybox with an
/// `npm` that reports what it was asked to do. Made only when the engine has no such image.
fn node_stand_in() {
    if Command::new(DOCKER)
        .args(["image", "inspect", "node:20-slim"])
        .output()
        .unwrap()
        .status
        .success()
    {
        return;
    }
    let dir = unique_dir("node");
    std::fs::write(dir.join("npm"), "#!/bin/sh\necho \"npm $*\"\n").unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        format!("FROM {BASE_IMAGE}\nCOPY npm /usr/local/bin/npm\nRUN chmod +x /usr/local/bin/npm\n"),
    )
    .unwrap();
    run(Command::new(DOCKER)
        .env("DOCKER_BUILDKIT", "1")
        .args(["build", "-q", "-t", "node:20-slim"])
        .arg(&dir));
}

#[test]
fn a_node_project_without_a_dockerfile_is_detected_and_built() {
    base_image();
    node_stand_in();
    let nonce = data_dir().file_name().unwrap().to_string_lossy().to_string();
    let (url, sha) = repository(&[
        (
            "package.json",
            &format!(r#"{{"name":"web","version":"1.0.0","description":"{nonce}"}}"#),
        ),
        (
            "package-lock.json",
            r#"{"lockfileVersion":3,"packages":{"node_modules/express":{"version":"4.19.2"}}}"#,
        ),
        ("server.js", "console.log('hi')\n"),
    ]);
    let server = server(&[]);
    service(&server, &url, json!({}));
    let r = build_and_wait(&server, &sha, Duration::from_secs(180));
    assert_eq!(r["status"], "ready", "{r}");
    let log = step_log(&server, &r, "build");
    assert!(
        log.contains("no Dockerfile: detected a node (package.json) project"),
        "{log}"
    );
    assert!(log.contains("npm ci --omit=dev"), "the generated Dockerfile ran: {log}");
    let cmd = run(Command::new(DOCKER).args([
        "image",
        "inspect",
        "--format",
        "{{json .Config.Cmd}}",
        r["image"].as_str().unwrap(),
    ]));
    assert_eq!(cmd, r#"["npm","start"]"#);
}
