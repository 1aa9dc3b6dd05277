//! Add-on backups end to end (issue 17) on the Docker target, with the stand-in PostgreSQL and
//! Redis images (`.ci/addon-images.sh`) and the test's S3 server (moto) as the artefact store: a
//! service writes rows and keys through its add-ons, both are backed up (sealed, size and
//! SHA-256 recorded), the table is dropped and the keys flushed, and restoring brings them back.
//! A backup altered in the bucket is refused by its checksum and changes nothing; a backup of
//! the wrong kind, an unknown backup and a bad schedule are refused with their reasons.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::addons::{addon_platform, wait_ready};
use support::deploy::{deploy, get, head, pull_request, ready_release, wait_status, webhook};
use support::pipeline::{DOCKER, Server, call, run, s3_request, wait_until};

const PROJECT: &str = "addonsbk";
const HOST: &str = "notes.addonsbk.test";

fn bucket(server: &Server) -> String {
    format!(
        "enclii-test-{}",
        server.data.file_name().unwrap().to_string_lossy().replace('_', "-")
    )
}

fn backups_path(addon: &str) -> String {
    backups_of(PROJECT, addon)
}

fn backups_of(project: &str, addon: &str) -> String {
    format!("/v1/projects/{project}/environments/prod/addons/{addon}/backups")
}

/// Backs `addon` up and waits until the backup completed.
fn back_up(server: &Server, addon: &str) -> Value {
    back_up_in(server, PROJECT, addon)
}

fn back_up_in(server: &Server, project: &str, addon: &str) -> Value {
    let backups_path = |addon: &str| backups_of(project, addon);
    let (status, started) = call(server, "POST", &backups_path(addon), Value::Null);
    assert_eq!(status, 202, "{started}");
    assert_eq!(started["status"], "running", "{started}");
    let id = started["id"].clone();
    let mut last = Value::Null;
    wait_until(Duration::from_secs(120), &format!("backup {id} of {addon}"), || {
        let (_, list) = call(server, "GET", &backups_path(addon), Value::Null);
        last = list
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["id"] == id)
            .cloned()
            .unwrap();
        assert_ne!(last["status"], "failed", "{last}");
        last["status"] == "completed"
    });
    last
}

/// Restores `backup` into `addon` and waits for the job's end: its state and error.
fn restore(server: &Server, addon: &str, backup: &Value) -> (String, String) {
    let path = format!("/v1/projects/{PROJECT}/environments/prod/addons/{addon}/restore");
    let (status, accepted) = call(server, "POST", &path, json!({"backup": backup["id"]}));
    assert_eq!(status, 202, "{accepted}");
    let mut job = Value::Null;
    wait_until(Duration::from_secs(180), &format!("restore into {addon}"), || {
        job = call(server, "GET", &format!("/v1/jobs/{}", accepted["job"]), Value::Null).1;
        matches!(job["state"].as_str(), Some("completed" | "dead" | "failed"))
    });
    (
        job["state"].as_str().unwrap_or_default().to_string(),
        job["last_error"].as_str().unwrap_or_default().to_string(),
    )
}

#[test]
fn backups_of_postgres_and_redis_restore_lost_rows_and_keys_and_a_damaged_backup_is_refused() {
    let spec = json!({
        "env": [{"name": "DATABASE_URL", "fromAddon": {"name": "db", "key": "url"}}],
        "envFrom": [{"addon": "cache"}],
        "routes": [{"host": HOST}]
    });
    let (_cleanup, p) = addon_platform(PROJECT, spec, &[]);
    let server = &p.server;
    let addons = format!("/v1/projects/{PROJECT}/environments/prod/addons");

    // A schedule that is not cron is refused, naming the field.
    let (status, refused) = call(
        server,
        "POST",
        &addons,
        json!({"name": "db", "kind": "postgres", "backup": {"schedule": "daily"}}),
    );
    assert_eq!(status, 422, "{refused}");
    assert!(refused.to_string().contains("backup.schedule"), "{refused}");

    let (status, db) = call(
        server,
        "POST",
        &addons,
        json!({"name": "db", "kind": "postgres", "image": "enclii-test/postgres:15", "version": "15",
               "backup": {"schedule": "0 3 * * *", "keep": 2}}),
    );
    assert_eq!(status, 201, "{db}");
    assert_eq!(db["backup"], json!({"schedule": "0 3 * * *", "keep": 2}), "{db}");
    let (status, cache) = call(
        server,
        "POST",
        &addons,
        json!({"name": "cache", "kind": "redis", "image": "enclii-test/redis:7", "version": "7"}),
    );
    assert_eq!(status, 201, "{cache}");
    // Not ready yet: no backup.
    let (status, early) = call(server, "POST", &backups_path("cache"), Value::Null);
    assert_eq!(status, 409, "{early}");
    wait_ready(server, PROJECT, "db", 1);
    wait_ready(server, PROJECT, "cache", 1);

    let release = ready_release(&p, &head(&p));
    let deployment = deploy(&p, release, "deployments");
    wait_status(server, deployment["id"].as_i64().unwrap(), &["succeeded"], None);
    for note in ["first", "second"] {
        assert_eq!(
            get(&p.router, HOST, &format!("/cgi-bin/add?{note}")),
            (200, "added".into())
        );
    }
    let key = "remembered-key-for-the-backup-test";
    assert_eq!(
        get(&p.router, HOST, &format!("/cgi-bin/remember?{key}")),
        (200, "OK".into())
    );

    let db_backup = back_up(server, "db");
    let cache_backup = back_up(server, "cache");
    for backup in [&db_backup, &cache_backup] {
        assert!(
            backup["size_bytes"].as_i64().unwrap() > backup["plain_bytes"].as_i64().unwrap(),
            "{backup}"
        );
        assert_eq!(backup["sha256"].as_str().unwrap().len(), 64, "{backup}");
        assert_eq!(backup["trigger"], "manual");
    }
    // Sealed at rest: the stored RDB does not show the key it holds.
    let object = format!("/{}/{}", bucket(server), cache_backup["artefact_key"].as_str().unwrap());
    let (status, stored) = s3_request("GET", &object, &[]);
    assert_eq!(status, 200);
    assert_eq!(stored.len() as i64, cache_backup["size_bytes"].as_i64().unwrap());
    assert!(
        !stored.windows(key.len()).any(|w| w == key.as_bytes()),
        "the backup is not encrypted"
    );

    // Lose the data.
    let container = |name: &str| format!("enclii-addon-{PROJECT}-prod-{name}");
    run(Command::new(DOCKER).args([
        "exec",
        &container("db"),
        "psql",
        "-U",
        "app",
        "-d",
        "app",
        "-c",
        "DROP TABLE notes",
    ]));
    let (_, credentials) = call(server, "GET", &format!("{addons}/cache/credentials"), Value::Null);
    let auth = format!("REDISCLI_AUTH={}", credentials["password"].as_str().unwrap());
    run(Command::new(DOCKER).args([
        "exec",
        "-e",
        &auth,
        &container("cache"),
        "redis-cli",
        "--no-auth-warning",
        "--user",
        "app",
        "FLUSHALL",
    ]));
    assert_eq!(get(&p.router, HOST, "/cgi-bin/count").0, 500);
    assert_eq!(
        get(&p.router, HOST, &format!("/cgi-bin/recall?{key}")),
        (200, "0".into())
    );

    // Refusals: wrong kind, unknown backup.
    let (status, wrong) = call(
        server,
        "POST",
        &format!("{addons}/db/restore"),
        json!({"backup": cache_backup["id"]}),
    );
    assert_eq!(status, 404, "a backup of `cache` is not one of `db`: {wrong}");
    let (status, wrong_kind) = call(
        server,
        "POST",
        &format!("{addons}/cache/restore"),
        json!({"backup": cache_backup["id"], "into": "db"}),
    );
    assert_eq!(status, 400, "{wrong_kind}");
    assert!(wrong_kind.to_string().contains("is a redis backup"), "{wrong_kind}");
    let (status, unknown) = call(
        server,
        "POST",
        &format!("{addons}/db/restore"),
        json!({"backup": 99999}),
    );
    assert_eq!(status, 404, "{unknown}");

    // Restore: the rows and the key are back, through the service.
    assert_eq!(restore(server, "db", &db_backup), ("completed".into(), String::new()));
    assert_eq!(
        restore(server, "cache", &cache_backup),
        ("completed".into(), String::new())
    );
    assert_eq!(get(&p.router, HOST, "/cgi-bin/count"), (200, "2".into()));
    wait_until(
        Duration::from_secs(30),
        "the service reaches the restarted Redis",
        || get(&p.router, HOST, &format!("/cgi-bin/recall?{key}")) == (200, "1".into()),
    );

    // A backup altered in the bucket is refused by its checksum; the data stays as it is.
    let db_object = format!("/{}/{}", bucket(server), db_backup["artefact_key"].as_str().unwrap());
    let (_, mut altered) = s3_request("GET", &db_object, &[]);
    let middle = altered.len() / 2;
    altered[middle] ^= 0x01;
    assert_eq!(s3_request("PUT", &db_object, &altered).0, 200);
    assert_eq!(get(&p.router, HOST, "/cgi-bin/add?third"), (200, "added".into()));
    let (state, error) = restore(server, "db", &db_backup);
    assert_eq!(state, "dead", "{error}");
    assert!(error.contains("fails its checksum"), "{error}");
    assert_eq!(get(&p.router, HOST, "/cgi-bin/count"), (200, "3".into()));

    // Kept: two backups at most by the schedule's `keep`, the newest.
    let third = back_up(server, "db");
    let fourth = back_up(server, "db");
    let (_, list) = call(server, "GET", &backups_path("db"), Value::Null);
    let ids: Vec<&Value> = list.as_array().unwrap().iter().map(|b| &b["id"]).collect();
    assert_eq!(ids, [&fourth["id"], &third["id"]], "{list}");
    let (status, _) = s3_request("GET", &db_object, &[]);
    assert_eq!(status, 404, "the pruned backup's artefact is gone");

    // The audit trail names each backup and restore, and no secret.
    let (_, audit) = call(
        server,
        "GET",
        &format!("/v1/audit?project={PROJECT}&limit=200"),
        Value::Null,
    );
    let text = audit.to_string();
    for action in [
        "addon.backup",
        "addon.restore",
        "addon.restored",
        "addon.restore_failed",
    ] {
        assert!(
            text.contains(&format!("\"{action}\"")),
            "{action} missing from the audit trail"
        );
    }
    assert!(!text.contains(credentials["password"].as_str().unwrap()));
}

/// The rows of `notes` in add-on `db` of `environment`, read inside its container.
fn notes_in(project: &str, environment: &str) -> String {
    run(Command::new(DOCKER).args([
        "exec",
        &format!("enclii-addon-{project}-{environment}-db"),
        "psql",
        "-U",
        "app",
        "-d",
        "app",
        "-qtAc",
        "SELECT string_agg(v, ',' ORDER BY v) FROM notes",
    ]))
    .trim()
    .to_string()
}

#[test]
fn a_preview_with_seed_addons_starts_from_the_parents_latest_backup_and_never_writes_to_it() {
    const SEEDED: &str = "addonseed";
    let spec = json!({
        "env": [{"name": "DATABASE_URL", "fromAddon": {"name": "db", "key": "url"}}],
        "previews": {"seedAddons": true}
    });
    let (_cleanup, p) = addon_platform(SEEDED, spec, &[]);
    let server = &p.server;
    let (_, service) = call(
        server,
        "GET",
        &format!("/v1/projects/{SEEDED}/services/api"),
        Value::Null,
    );
    assert_eq!(
        service["spec"]["spec"]["previews"],
        json!({"seedAddons": true}),
        "{service}"
    );
    let (status, created) = call(
        server,
        "POST",
        &format!("/v1/projects/{SEEDED}/environments/prod/addons"),
        json!({"name": "db", "kind": "postgres", "image": "enclii-test/postgres:15", "version": "15"}),
    );
    assert_eq!(status, 201, "{created}");
    wait_ready(server, SEEDED, "db", 1);
    let parent = format!("enclii-addon-{SEEDED}-prod-db");
    let sql = |statement: &str| {
        run(Command::new(DOCKER).args(["exec", &parent, "psql", "-U", "app", "-d", "app", "-qc", statement]));
    };
    sql("CREATE TABLE notes (v text)");
    sql("INSERT INTO notes VALUES ('a'), ('b')");
    back_up_in(server, SEEDED, "db");
    // Written after the backup: the preview does not see it.
    sql("INSERT INTO notes VALUES ('c')");

    let sha = head(&p);
    run(Command::new("git")
        .args(["branch", "-f", "feature", &sha])
        .current_dir(p.url.strip_prefix("file://").unwrap()));
    webhook(server, "seed-pr-open", &pull_request(&p.url, "opened", 5, &sha));
    let host = "api-preview-5.preview.localhost";
    wait_until(Duration::from_secs(240), "the preview answers", || {
        get(&p.router, host, "/healthz").0 == 200
    });
    let (_, audit) = call(
        server,
        "GET",
        &format!("/v1/audit?project={SEEDED}&limit=200"),
        Value::Null,
    );
    let seeded = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "addon.create" && e["entity"].as_str().is_some_and(|t| t.contains("preview-5")))
        .cloned()
        .unwrap_or_default();
    assert!(seeded["diff"]["seed_backup"].is_i64(), "{seeded}");
    assert_eq!(
        get(&p.router, host, "/cgi-bin/count"),
        (200, "2".into()),
        "seeded from the backup"
    );
    assert_eq!(get(&p.router, host, "/cgi-bin/add?preview"), (200, "added".into()));
    assert_eq!(notes_in(SEEDED, "preview-5"), "a,b,preview");
    assert_eq!(
        notes_in(SEEDED, "prod"),
        "a,b,c",
        "the parent never sees the preview's writes"
    );
}
