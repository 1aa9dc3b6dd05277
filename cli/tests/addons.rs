//! Add-ons end to end (issue 17) on the Docker target: a real PostgreSQL and a real Redis run
//! as containers of the test's engine — stand-ins built from Debian's packages with the official
//! images' interface (`.ci/addon-images.sh`: `enclii-test/postgres:15`, `enclii-test/redis:7`),
//! since no registry is reachable here — and a service built on `enclii-test/addon-client`
//! (busybox httpd with `psql` and `redis-cli`) writes and reads them through CGI scripts, reading
//! `DATABASE_URL` (`fromAddon`) and `REDIS_URL` (`envFrom: addon`). Credentials are revealed only
//! by the audited call; a rotation rolls the service without a failed request and retires the
//! old login; an add-on a service reads is not deleted without `force`.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use support::addons::{addon, addon_platform, wait_ready};
use support::deploy::{deploy, get, head, pull_request, ready_release, wait_status, webhook};
use support::pipeline::{DOCKER, call, run, wait_until};

#[test]
fn services_use_postgres_and_redis_addons_and_a_rotation_rolls_them_without_a_failed_request() {
    const PROJECT: &str = "addonsdb";
    let spec = json!({
        "env": [{"name": "DATABASE_URL", "fromAddon": {"name": "db", "key": "url"}}],
        "envFrom": [{"addon": "cache"}],
        "routes": [{"host": "notes.addonsdb.test"}]
    });
    let (_cleanup, p) = addon_platform(PROJECT, spec, &[("ENCLII_ADDON_RETIRE_SECONDS", "2")]);
    let server = &p.server;
    let addons = format!("/v1/projects/{PROJECT}/environments/prod/addons");

    // Bad input, each with a named reason and nothing stored.
    for (body, status, says) in [
        (
            json!({"name": "db", "kind": "mysql"}),
            422,
            "expected one of: postgres, redis",
        ),
        (
            json!({"name": "db", "kind": "postgres", "version": "9"}),
            422,
            "not offered",
        ),
        (json!({"name": "Db!", "kind": "postgres"}), 422, "name"),
        (json!({"name": "db", "kind": "redis", "size": "lots"}), 422, "size"),
        (
            json!({"name": "db", "kind": "redis", "image": "no spaces please"}),
            422,
            "image",
        ),
    ] {
        let (got, answer) = call(server, "POST", &addons, body.clone());
        assert_eq!(got, status, "{body}: {answer}");
        assert!(answer.to_string().contains(says), "{body}: {answer}");
    }
    let (status, body) = call(
        server,
        "POST",
        &format!("/v1/projects/{PROJECT}/environments/nope/addons"),
        json!({"name": "db", "kind": "postgres"}),
    );
    assert_eq!(status, 404, "{body}");

    // A deploy before the add-ons exist is refused, naming the field and how to fix it.
    let release = ready_release(&p, &head(&p));
    let refused = deploy(&p, release, "deployments");
    let refused = wait_status(server, refused["id"].as_i64().unwrap(), &["failed"], None);
    let detail = refused["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("spec.envFrom[0].addon: add-on `cache` does not exist")
            && detail.contains("enclii addons create"),
        "{refused}"
    );

    for (name, kind, image, version) in [
        ("db", "postgres", "enclii-test/postgres:15", "15"),
        ("cache", "redis", "enclii-test/redis:7", "7"),
    ] {
        let (status, created) = call(
            server,
            "POST",
            &addons,
            json!({"name": name, "kind": kind, "image": image, "version": version}),
        );
        assert_eq!(status, 201, "{created}");
        assert_eq!(created["status"], "provisioning");
        assert_eq!(created["host"], format!("{name}.internal"));
        assert!(created.get("password").is_none(), "{created}");
    }
    let (status, again) = call(server, "POST", &addons, json!({"name": "db", "kind": "redis"}));
    assert_eq!(status, 409, "{again}");
    let db = wait_ready(server, PROJECT, "db", 1);
    assert_eq!(db["services"], json!(["api"]), "{db}");
    wait_ready(server, PROJECT, "cache", 1);

    // The service writes rows and keys through them.
    let deployment = deploy(&p, release, "deployments");
    wait_status(server, deployment["id"].as_i64().unwrap(), &["succeeded"], None);
    let host = "notes.addonsdb.test";
    for note in ["first", "second"] {
        assert_eq!(
            get(&p.router, host, &format!("/cgi-bin/add?{note}")),
            (200, "added".into())
        );
    }
    assert_eq!(get(&p.router, host, "/cgi-bin/count"), (200, "2".into()));
    assert_eq!(get(&p.router, host, "/cgi-bin/whoami"), (200, "app".into()));
    assert_eq!(get(&p.router, host, "/cgi-bin/remember?k1"), (200, "OK".into()));
    assert_eq!(get(&p.router, host, "/cgi-bin/recall?k1"), (200, "1".into()));

    // Credentials only from the audited call; never in the container's command or the add-on's view.
    let (status, credentials) = call(server, "GET", &format!("{addons}/db/credentials"), Value::Null);
    assert_eq!(status, 200, "{credentials}");
    let password = credentials["password"].as_str().unwrap().to_string();
    assert_eq!(password.len(), 32);
    assert_eq!(
        credentials["variables"]["DATABASE_URL"],
        format!("postgres://app:{password}@db.internal:5432/app")
    );
    let outside = credentials["external_url"].as_str().unwrap().to_string();
    assert!(
        outside.starts_with(&format!("postgres://app:{password}@127.0.0.1:")),
        "{outside}"
    );
    let (_, listed) = call(server, "GET", &format!("/v1/projects/{PROJECT}/addons"), Value::Null);
    assert!(!listed.to_string().contains(&password), "{listed}");
    let (_, cache_credentials) = call(server, "GET", &format!("{addons}/cache/credentials"), Value::Null);
    let redis_password = cache_credentials["password"].as_str().unwrap();
    let inspect = run(Command::new(DOCKER).args(["inspect", "enclii-addon-addonsdb-prod-cache"]));
    assert!(
        !inspect.contains(redis_password),
        "the Redis container holds only the password's hash"
    );
    let (_, audit) = call(server, "GET", &format!("/v1/audit?project={PROJECT}"), Value::Null);
    let audit = audit.to_string();
    assert!(
        audit.contains("addon.credentials") && audit.contains("addon.create"),
        "{audit}"
    );
    assert!(!audit.contains(&password), "the audit trail holds no password");
    // From the node, the published port takes the login (the host's psql).
    let select = |url: &str| {
        Command::new("psql")
            .args([url, "-qtAc", "SELECT count(*) FROM notes"])
            .output()
            .unwrap()
    };
    let out = select(&outside);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2", "{out:?}");

    // Rotation: the new login is applied, the service rolls to it, and no request fails meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let client = {
        let (router, stop, sent, failed) = (p.router.clone(), stop.clone(), sent.clone(), failed.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let (status, body) = get(&router, host, "/cgi-bin/count");
                sent.fetch_add(1, Ordering::Relaxed);
                if status != 200 || body != "2" {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("failed during rotation: {status} {body}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let (status, rotated) = call(server, "POST", &format!("{addons}/db/rotate"), Value::Null);
    assert_eq!(status, 202, "{rotated}");
    assert_eq!(rotated["generation"], 2);
    wait_ready(server, PROJECT, "db", 2);
    wait_until(Duration::from_secs(120), "the service rolled to the new login", || {
        get(&p.router, host, "/cgi-bin/whoami") == (200, "app_alt".into())
    });
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    assert!(sent.load(Ordering::Relaxed) > 10, "the client kept calling");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed during the rotation"
    );
    // After the grace period the old login no longer works; the new one does.
    wait_until(Duration::from_secs(60), "the old login retired", || {
        !select(&outside).status.success()
    });
    let (_, fresh) = call(server, "GET", &format!("{addons}/db/credentials"), Value::Null);
    assert_ne!(fresh["password"], password.as_str());
    let out = select(fresh["external_url"].as_str().unwrap());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2", "{out:?}");

    // An add-on a service reads is not deleted without force; with it, it is gone from the engine.
    let (status, body) = call(server, "DELETE", &format!("{addons}/db"), Value::Null);
    assert_eq!(status, 409, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("`api`"), "{body}");
    let (status, body) = call(server, "DELETE", &format!("{addons}/cache?force=true"), Value::Null);
    assert_eq!(status, 204, "{body}");
    wait_until(Duration::from_secs(60), "the container removed", || {
        run(Command::new(DOCKER).args(["ps", "-aq", "--filter", "name=enclii-addon-addonsdb-prod-cache"])).is_empty()
    });
    let volumes = run(Command::new(DOCKER).args([
        "volume",
        "ls",
        "-q",
        "--filter",
        "name=enclii-addon-addonsdb-prod-cache",
    ]));
    assert!(volumes.is_empty(), "its data went with it: {volumes}");
}

/// A pull request's preview gets its own instance of each add-on its service reads — empty, with
/// its own login, never the parent environment's data — and closing it takes them away.
#[test]
fn a_preview_gets_its_own_addons_and_loses_them_with_the_pull_request() {
    const PROJECT: &str = "addonspr";
    let spec = json!({"env": [{"name": "DATABASE_URL", "fromAddon": {"name": "db", "key": "url"}}]});
    let (_cleanup, p) = addon_platform(PROJECT, spec, &[]);
    let server = &p.server;
    let (status, created) = call(
        server,
        "POST",
        &format!("/v1/projects/{PROJECT}/environments/prod/addons"),
        json!({"name": "db", "kind": "postgres", "image": "enclii-test/postgres:15", "version": "15"}),
    );
    assert_eq!(status, 201, "{created}");
    wait_ready(server, PROJECT, "db", 1);

    let sha = head(&p);
    run(Command::new("git")
        .args(["branch", "-f", "feature", &sha])
        .current_dir(p.url.strip_prefix("file://").unwrap()));
    webhook(server, "addons-pr-open", &pull_request(&p.url, "opened", 8, &sha));
    let host = "api-preview-8.preview.localhost";
    wait_until(Duration::from_secs(240), "the preview answers", || {
        get(&p.router, host, "/healthz").0 == 200
    });
    assert_eq!(get(&p.router, host, "/cgi-bin/add?preview"), (200, "added".into()));
    assert_eq!(get(&p.router, host, "/cgi-bin/count"), (200, "1".into()));
    let (_, previews) = call(
        server,
        "GET",
        &format!("/v1/projects/{PROJECT}/addons?environment=preview-8"),
        Value::Null,
    );
    assert_eq!(previews[0]["name"], "db", "{previews}");
    assert_eq!(
        previews[0]["image"], "enclii-test/postgres:15",
        "like the parent's: {previews}"
    );
    let (_, parent) = call(
        server,
        "GET",
        &format!("/v1/projects/{PROJECT}/environments/prod/addons/db/credentials"),
        Value::Null,
    );
    let (_, own) = call(
        server,
        "GET",
        &format!("/v1/projects/{PROJECT}/environments/preview-8/addons/db/credentials"),
        Value::Null,
    );
    assert_ne!(parent["password"], own["password"], "the preview has its own login");
    // The parent's database never saw the preview's rows.
    let out = Command::new("psql")
        .args([
            parent["external_url"].as_str().unwrap(),
            "-qtAc",
            "SELECT to_regclass('notes') IS NULL",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t", "{out:?}");

    webhook(server, "addons-pr-close", &pull_request(&p.url, "closed", 8, &sha));
    wait_until(Duration::from_secs(90), "the preview's add-on removed", || {
        run(Command::new(DOCKER).args(["ps", "-aq", "--filter", "name=enclii-addon-addonspr-preview-8-db"])).is_empty()
    });
    let (_, left) = call(server, "GET", &format!("/v1/projects/{PROJECT}/addons"), Value::Null);
    assert_eq!(left.as_array().unwrap().len(), 1, "only the parent's remains: {left}");
    assert_eq!(addon(server, PROJECT, "db")["status"], "ready");
}
