//! Control-plane backups (issue 17): the restore drill. A running embedded server is backed up
//! (`enclii server backup`, `VACUUM INTO` beside the live server), stopped, its data directory
//! wiped, and `enclii server restore` brings it back: projects, tokens, secrets (still opening
//! with the restored master key, read back through the API and the store) and releases are all
//! there. A backup with one byte changed is refused by its checksum and leaves the data directory
//! as it was. The scheduler's snapshots go to S3 (the test's moto server) and the newest comes
//! back with `--from latest`; on PostgreSQL, `restore` loads a `pg_dump` file (custom or plain).

mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{data_dir, http, launch, wait_exit};

const SECRET_VALUE: &str = "drill-secret-value-42";
const GIT_SHA: &str = "4f1c0e2a9b8d7c6e5f4a3b2c1d0e9f8a7b6c5d4e";

/// `enclii server <args>` (a one-off command), with `env` and nothing from the test's own.
fn enclii_server(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_enclii"))
        .arg("server")
        .args(args)
        .env_remove("ENCLII_DATABASE_URL")
        .env_remove("ENCLII_MASTER_KEY")
        .env_remove("ENCLII_S3_BUCKET")
        .envs(env.iter().copied())
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

/// A running server, killed if a failing test leaves it behind.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server on `data` with its log beside it (appended to across restarts).
fn start(data: &Path, args: &[&str], env: &[(&str, &str)]) -> (Running, String) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.with_extension("log"))
        .unwrap();
    let data = data.display().to_string();
    let args = [&["--data-dir", data.as_str()][..], args].concat();
    let (child, addr) = launch(&args, env, Stdio::from(log));
    (Running(child), addr)
}

/// SIGTERM, and a clean exit within 15 s.
fn stop(mut server: Running) {
    Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(
        wait_exit(&mut server.0, Duration::from_secs(15))
            .expect("exits")
            .success()
    );
}

fn json_of(status: u16, body: &str, expected: u16) -> Value {
    assert_eq!(status, expected, "{body}");
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// What the drill checks after the restore.
struct Recorded {
    project: String,
    addon_password: String,
    release: i64,
}

/// A project with a secret, an add-on (whose generated password the API opens with the master
/// key on every read), a service and a release (waiting: build steps are off).
fn populate(addr: &str, project: &str) -> Recorded {
    let (status, body) = http(addr, "POST", "/v1/projects", &json!({"slug": project}).to_string());
    json_of(status, &body, 201);
    let (status, body) = http(
        addr,
        "PUT",
        &format!("/v1/projects/{project}/secrets/API_KEY"),
        &json!({"value": SECRET_VALUE}).to_string(),
    );
    json_of(status, &body, 200);
    let (status, body) = http(
        addr,
        "POST",
        &format!("/v1/projects/{project}/environments/prod/addons"),
        &json!({"kind": "postgres", "name": "db"}).to_string(),
    );
    assert!((200..300).contains(&status), "{status} {body}");
    let credentials = addon_credentials(addr, project);
    let service = json!({
        "apiVersion": "enclii.dev/v1", "kind": "Service",
        "metadata": {"project": project, "environment": "prod", "name": "web"},
        "spec": {"source": {"git": {"repository": "https://example.com/web.git", "branch": "main"}},
                 "runtime": {"ports": [3000]}}
    });
    let (status, body) = http(
        addr,
        "POST",
        &format!("/v1/projects/{project}/services"),
        &service.to_string(),
    );
    json_of(status, &body, 201);
    let (status, body) = http(
        addr,
        "POST",
        &format!("/v1/projects/{project}/services/web/releases"),
        &json!({"git_sha": GIT_SHA}).to_string(),
    );
    let release = json_of(status, &body, 202)["release"]["id"].as_i64().unwrap();
    Recorded {
        project: project.to_string(),
        addon_password: credentials["password"].as_str().unwrap().to_string(),
        release,
    }
}

fn addon_credentials(addr: &str, project: &str) -> Value {
    let (status, body) = http(
        addr,
        "GET",
        &format!("/v1/projects/{project}/environments/prod/addons/db/credentials"),
        "",
    );
    json_of(status, &body, 200)
}

/// Everything `populate` made answers again (the test's token too: its hash is in the database).
fn check_restored(addr: &str, recorded: &Recorded) {
    let project = &recorded.project;
    let (status, body) = http(addr, "GET", "/v1/projects", "");
    let projects = json_of(status, &body, 200);
    assert!(
        projects.as_array().unwrap().iter().any(|p| p["slug"] == *project),
        "{projects}"
    );
    let (status, body) = http(addr, "GET", &format!("/v1/projects/{project}/secrets"), "");
    let secrets = json_of(status, &body, 200);
    assert_eq!(secrets[0]["name"], "API_KEY", "{secrets}");
    assert_eq!(secrets[0]["version"], 1, "{secrets}");
    // Sealed with the master key: it opens only with the restored key.
    let credentials = addon_credentials(addr, project);
    assert_eq!(
        credentials["password"],
        recorded.addon_password.as_str(),
        "{credentials}"
    );
    let (status, body) = http(addr, "GET", &format!("/v1/releases/{}", recorded.release), "");
    let release = json_of(status, &body, 200);
    assert_eq!(release["git_sha"], GIT_SHA, "{release}");
    assert_eq!(release["service"], "web", "{release}");
}

/// The secret's value, opened straight from the restored database with the restored key (the
/// API never returns secret values).
fn reveal_secret(database_url: &str, master_key: &str, project: &str) -> Option<Vec<u8>> {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = enclii_store::Store::open(enclii_store::StoreConfig {
            database_url: database_url.to_string(),
            queue_url: None,
            max_connections: 2,
            master_key: enclii_store::MasterKey::from_base64(master_key).unwrap(),
        })
        .await
        .unwrap();
        let scope = enclii_store::SecretScope {
            project: project.to_string(),
            environment: None,
            service: None,
        };
        store.reveal_secret(&scope, "API_KEY").await.unwrap()
    })
}

#[test]
fn the_restore_drill_brings_back_projects_secrets_and_releases() {
    let data = data_dir();
    let data_str = data.display().to_string();
    let backup_file = data.with_extension("backup.tar.gz");
    let backup_str = backup_file.display().to_string();
    let (server, addr) = start(&data, &[], &[("ENCLII_CONTROL_PLANE_BACKUP_HOURS", "0")]);
    let recorded = populate(&addr, "drill");

    // Backed up while the server runs.
    let began = Instant::now();
    let out = enclii_server(&["backup", "--data-dir", &data_str, "--to", &backup_str], &[]);
    let backup_took = began.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("control-plane backup written to {backup_str}")) && stdout.contains("master.key"),
        "{}",
        text(&out)
    );
    let key = std::fs::read_to_string(data.join("master.key")).unwrap();
    assert!(
        !stdout.contains(key.trim()) && !String::from_utf8_lossy(&out.stderr).contains(key.trim()),
        "the key is never printed"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&backup_file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    stop(server);
    std::fs::remove_dir_all(&data).unwrap();

    let began = Instant::now();
    let out = enclii_server(&["restore", "--from", &backup_str, "--data-dir", &data_str], &[]);
    let restore_took = began.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("restored {data_str} from {backup_str}")),
        "{}",
        text(&out)
    );
    for file in ["enclii.db", "master.key"] {
        let mode = std::fs::metadata(data.join(file)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
    let database_url = format!("sqlite://{}", data.join("enclii.db").display());
    assert_eq!(
        reveal_secret(&database_url, &key, "drill").as_deref(),
        Some(SECRET_VALUE.as_bytes()),
        "the secret opens with the restored key"
    );

    let (server, addr) = start(&data, &[], &[("ENCLII_CONTROL_PLANE_BACKUP_HOURS", "0")]);
    check_restored(&addr, &recorded);
    // Not over a data directory that holds a database, without --force.
    let out = enclii_server(&["restore", "--from", &backup_str, "--data-dir", &data_str], &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already holds a database: stop the server and pass --force"),
        "{}",
        text(&out)
    );
    stop(server);
    eprintln!(
        "restore drill: backup {:.0} ms, restore {:.0} ms ({} KiB archive)",
        backup_took.as_secs_f64() * 1000.0,
        restore_took.as_secs_f64() * 1000.0,
        std::fs::metadata(&backup_file).unwrap().len() / 1024
    );
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_file(&backup_file);
    let _ = std::fs::remove_file(data.with_extension("log"));
}

/// Rewrites the gzip-compressed tar at `path` with one byte of `entry`'s content changed; the
/// archive itself stays well-formed, so only the manifest's checksum can tell.
fn change_one_byte_of(path: &Path, entry: &str) {
    let mut tar_bytes = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut tar_bytes)
        .unwrap();
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    let offset = archive
        .entries()
        .unwrap()
        .map(Result::unwrap)
        .find(|e| e.path().unwrap().to_str() == Some(entry))
        .map(|e| e.raw_file_position() as usize)
        .unwrap();
    tar_bytes[offset + 100] ^= 0x01;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar_bytes).unwrap();
    std::fs::write(path, gz.finish().unwrap()).unwrap();
}

/// A server's data directory with one project, and a backup of it taken with `backup_args`
/// (the server stopped since): (data directory, backup file).
fn backed_up(project: &str, backup_args: &[&str]) -> (PathBuf, PathBuf) {
    let data = data_dir();
    let data_str = data.display().to_string();
    let (server, addr) = start(&data, &[], &[("ENCLII_CONTROL_PLANE_BACKUP_HOURS", "0")]);
    let (status, body) = http(&addr, "POST", "/v1/projects", &json!({"slug": project}).to_string());
    json_of(status, &body, 201);
    let backup = data.with_extension("backup.tar.gz");
    let backup_str = backup.display().to_string();
    let args = [
        &["backup", "--data-dir", &data_str, "--to", &backup_str][..],
        backup_args,
    ]
    .concat();
    let out = enclii_server(&args, &[]);
    assert!(out.status.success(), "{}", text(&out));
    stop(server);
    (data, backup)
}

#[test]
fn a_backup_with_one_byte_changed_is_refused_by_its_checksum() {
    let (data, backup) = backed_up("tampered", &[]);
    let backup_str = backup.display().to_string();
    let target = data.with_extension("restored");
    let target_str = target.display().to_string();

    // A byte of the database changed inside a well-formed archive: the manifest's SHA-256 says.
    let original = std::fs::read(&backup).unwrap();
    change_one_byte_of(&backup, "enclii.db");
    let out = enclii_server(&["restore", "--from", &backup_str, "--data-dir", &target_str], &[]);
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is damaged or was changed: enclii.db has SHA-256") && stderr.contains("its manifest says"),
        "{}",
        text(&out)
    );
    assert!(!target.join("enclii.db").exists(), "nothing is restored");

    // A byte of the compressed file changed: gzip's own checks refuse it.
    let mut flipped = original.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    std::fs::write(&backup, &flipped).unwrap();
    let out = enclii_server(&["restore", "--from", &backup_str, "--data-dir", &target_str], &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is damaged"),
        "{}",
        text(&out)
    );
    assert!(!target.join("enclii.db").exists(), "nothing is restored");
    let leftovers: Vec<_> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(leftovers.is_empty(), "no working files are left: {leftovers:?}");

    // The untouched backup restores.
    std::fs::write(&backup, &original).unwrap();
    let out = enclii_server(&["restore", "--from", &backup_str, "--data-dir", &target_str], &[]);
    assert!(out.status.success(), "{}", text(&out));
    for path in [&data, &target] {
        let _ = std::fs::remove_dir_all(path);
    }
    let _ = std::fs::remove_file(&backup);
    let _ = std::fs::remove_file(data.with_extension("log"));
}

/// A restore after which the server could not open the secrets is refused, naming the key
/// fingerprints: a key other than the backup's, or no key for a backup taken without one.
#[test]
fn a_restore_whose_secrets_would_not_open_is_refused() {
    let other_key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let (data, backup) = backed_up("keyed", &[]);
    let backup_str = backup.display().to_string();
    let target = data.with_extension("restored");
    let target_str = target.display().to_string();
    let restore = ["restore", "--from", &backup_str, "--data-dir", &target_str];
    let out = enclii_server(&restore, &[("ENCLII_MASTER_KEY", other_key)]);
    assert!(!out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("are sealed with the master key sha256:")
            && stderr.contains("but the server would open them with ENCLII_MASTER_KEY (sha256:"),
        "{}",
        text(&out)
    );
    assert!(!target.join("enclii.db").exists(), "nothing is restored");

    let (bare_data, bare) = backed_up("bare", &["--without-master-key"]);
    let bare_str = bare.display().to_string();
    let restore = ["restore", "--from", &bare_str, "--data-dir", &target_str];
    let out = enclii_server(&restore, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds no master key"),
        "{}",
        text(&out)
    );
    // With the key given, it restores, and keeps no key in the data directory.
    let key = std::fs::read_to_string(bare_data.join("master.key")).unwrap();
    let out = enclii_server(&restore, &[("ENCLII_MASTER_KEY", key.trim())]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!target.join("master.key").exists());
    for path in [&data, &bare_data, &target] {
        let _ = std::fs::remove_dir_all(path);
        let _ = std::fs::remove_file(path.with_extension("log"));
    }
    for file in [&backup, &bare] {
        let _ = std::fs::remove_file(file);
    }
}

/// A GET from the test's S3 server: the status and the body as text.
fn s3_get(path: &str) -> (u16, String) {
    let (status, body) = support::pipeline::s3_request("GET", path, &[]);
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The snapshot keys in `bucket`, oldest first.
fn snapshots_in(bucket: &str) -> Vec<String> {
    let (status, body) = s3_get(&format!("/{bucket}?list-type=2&prefix=control-plane/"));
    assert_eq!(status, 200, "{body}");
    let mut keys: Vec<String> = body
        .split("<Key>")
        .skip(1)
        .filter_map(|rest| rest.split_once("</Key>").map(|(key, _)| key.to_string()))
        .collect();
    keys.sort();
    keys
}

#[test]
fn scheduled_snapshots_go_to_s3_and_the_latest_restores() {
    let data = data_dir();
    let data_str = data.display().to_string();
    let bucket = format!(
        "enclii-cpb-{}",
        data.file_name().unwrap().to_string_lossy().replace('_', "-")
    );
    let s3 = support::pipeline::s3();
    let env = [
        ("ENCLII_S3_ENDPOINT", s3.as_str()),
        ("ENCLII_S3_BUCKET", bucket.as_str()),
        ("ENCLII_S3_ACCESS_KEY", "enclii-test"),
        ("ENCLII_S3_SECRET_KEY", "enclii-test-secret"),
        ("ENCLII_CONTROL_PLANE_BACKUP_KEEP", "2"),
    ];
    // A fresh installation has no snapshot yet: the scheduler takes one at once.
    let (server, addr) = start(&data, &[], &env);
    let deadline = Instant::now() + Duration::from_secs(30);
    while snapshots_in_if_any(&bucket).is_empty() {
        assert!(Instant::now() < deadline, "no scheduled snapshot in {bucket}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let scheduled = snapshots_in(&bucket)[0].clone();
    let recorded = populate(&addr, "scheduled");
    // Two more by hand: three in all (a manual backup does not prune; the scheduler keeps 2).
    for _ in 0..2 {
        let out = enclii_server(&["backup", "--data-dir", &data_str], &env);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!("written to s3://{bucket}/control-plane/")),
            "{}",
            text(&out)
        );
    }
    assert_eq!(snapshots_in(&bucket).len(), 3);
    stop(server);
    std::fs::remove_dir_all(&data).unwrap();

    let out = enclii_server(&["restore", "--from", "latest", "--data-dir", &data_str], &env);
    assert!(out.status.success(), "{}", text(&out));
    // The restored server's schedule finds a recent snapshot: it takes none now.
    let (server, addr) = start(&data, &[], &env);
    check_restored(&addr, &recorded);
    stop(server);
    assert_eq!(snapshots_in(&bucket).len(), 3);

    // The first, scheduled, snapshot by its URI: from before the project.
    let older = data.with_extension("older");
    let older_str = older.display().to_string();
    let uri = format!("s3://{bucket}/{scheduled}");
    let out = enclii_server(&["restore", "--from", &uri, "--data-dir", &older_str], &env);
    assert!(out.status.success(), "{}", text(&out));
    let (server, addr) = start(&older, &[], &[("ENCLII_CONTROL_PLANE_BACKUP_HOURS", "0")]);
    let (status, body) = http(&addr, "GET", "/v1/projects", "");
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("\"scheduled\""), "{body}");
    stop(server);

    // A bucket other than the configured one is named in the refusal.
    let out = enclii_server(
        &[
            "restore",
            "--from",
            "s3://another-bucket/control-plane/x.tar.gz",
            "--data-dir",
            &older_str,
        ],
        &env,
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("but ENCLII_S3_BUCKET is {bucket}")),
        "{}",
        text(&out)
    );
    for path in [&data, &older] {
        let _ = std::fs::remove_dir_all(path);
        let _ = std::fs::remove_file(path.with_extension("log"));
    }
}

/// `snapshots_in`, or nothing while the bucket does not exist yet.
fn snapshots_in_if_any(bucket: &str) -> Vec<String> {
    match s3_get(&format!("/{bucket}?list-type=2&prefix=control-plane/")) {
        (200, _) => snapshots_in(bucket),
        _ => Vec::new(),
    }
}

const PG: &str = "postgres://postgres@127.0.0.1:5432";

/// Databases of the test's own, dropped when it ends (passed or not).
struct Databases(Vec<String>);

impl Drop for Databases {
    fn drop(&mut self) {
        for db in &self.0 {
            let _ = Command::new("psql")
                .args(["-X", "-q", "-d", &format!("{PG}/postgres"), "-c"])
                .arg(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                .output();
        }
    }
}

fn psql(database: &str, sql: &str) {
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &format!("{PG}/{database}"),
            "-c",
            sql,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{sql}: {}", text(&out));
}

#[test]
fn a_pg_dump_restores_a_control_plane_on_postgresql() {
    let data = data_dir();
    let data_str = data.display().to_string();
    let suffix = data.file_name().unwrap().to_string_lossy().to_string();
    let [source, custom, plain] = ["src", "custom", "plain"].map(|d| format!("cpb_{d}_{suffix}"));
    let _databases = Databases(vec![source.clone(), custom.clone(), plain.clone()]);
    for db in [&source, &custom, &plain] {
        psql("postgres", &format!("CREATE DATABASE {db}"));
    }
    let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let env = [("ENCLII_MASTER_KEY", key)];
    let url = |db: &str| format!("{PG}/{db}");
    let source_url = url(&source);
    let (server, addr) = start(&data, &["--database-url", &source_url], &env);
    let recorded = populate(&addr, "onpostgres");
    stop(server);

    let dump_custom = data.with_extension("dump");
    let dump_plain = data.with_extension("sql");
    for (format, file) in [("custom", &dump_custom), ("plain", &dump_plain)] {
        let out = Command::new("pg_dump")
            .args(["--format", format, "--file"])
            .arg(file)
            .arg(&source_url)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    for (db, file) in [(&custom, &dump_custom), (&plain, &dump_plain)] {
        let target = url(db);
        let file = file.display().to_string();
        let args = [
            "restore",
            "--from",
            &file,
            "--database-url",
            &target,
            "--data-dir",
            &data_str,
        ];
        let out = enclii_server(&args, &env);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("restored the PostgreSQL database"),
            "{}",
            text(&out)
        );
        let (server, addr) = start(&data, &["--database-url", &target], &env);
        check_restored(&addr, &recorded);
        stop(server);
        // Not over a database that holds tables, without --force; with it, replaced.
        let out = enclii_server(&args, &env);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("already holds"),
            "{}",
            text(&out)
        );
    }
    let target = url(&custom);
    let file = dump_custom.display().to_string();
    let out = enclii_server(
        &[
            "restore",
            "--from",
            &file,
            "--database-url",
            &target,
            "--data-dir",
            &data_str,
            "--force",
        ],
        &env,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        reveal_secret(&target, key, "onpostgres").as_deref(),
        Some(SECRET_VALUE.as_bytes())
    );

    let _ = std::fs::remove_dir_all(&data);
    for file in [&dump_custom, &dump_plain] {
        let _ = std::fs::remove_file(file);
    }
    let _ = std::fs::remove_file(data.with_extension("log"));
}
