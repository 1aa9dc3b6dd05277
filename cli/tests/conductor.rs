//! The Conductor (`enclii init`, `up`, `deploy`, `logs`, `ps`, `secrets`, …) end to end: the
//! built binary as a subprocess against a running `enclii server`, each test with its own data
//! directory, database and config file. Covers exit codes (0, 10, 20, 50), `--output json` of
//! every read command, hints on errors, config profiles written by `auth login` (mode 0600) and
//! used with no flags, secrets never printed, the queue's dead jobs retried, completions — and,
//! with real builds and the Docker target (as `deploy.rs`), `enclii up` from a git checkout to a
//! preview URL answering through the router (TC-01), its runtime logs and status, and a build
//! that fails (exit 20).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::deploy::{get, remove_containers};
use support::pipeline::{BASE_IMAGE, app_checkout as checkout, git, server as build_server, wait_until};
use support::{TOKEN, data_dir, free_port, http, launch};

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}\nstderr: {}", self.stdout, self.stderr))
    }
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `enclii` with only the given `ENCLII_*` settings (none from the caller's environment).
struct Conductor {
    server: String,
    config: PathBuf,
    dir: PathBuf,
}

impl Conductor {
    fn new(addr: &str) -> Self {
        let dir = data_dir().with_extension("cwd");
        std::fs::create_dir_all(&dir).unwrap();
        Conductor {
            server: format!("http://{addr}"),
            config: dir.join("config").join("enclii.toml"),
            dir,
        }
    }

    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_enclii"));
        for var in [
            "ENCLII_TOKEN",
            "ENCLII_PROJECT",
            "ENCLII_PROFILE",
            "ENCLII_OUTPUT",
            "ENCLII_SERVER",
            "XDG_CONFIG_HOME",
        ] {
            cmd.env_remove(var);
        }
        cmd.args(args)
            .current_dir(&self.dir)
            .env("ENCLII_CONFIG", &self.config)
            .env("ENCLII_SERVER", &self.server)
            .envs(env.iter().copied());
        cmd
    }

    fn run_with(&self, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Out {
        let mut child = self
            .command(args, env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        drop(input);
        let out = child.wait_with_output().unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// As the Owner of project `project`.
    fn owner(&self, project: &str, args: &[&str]) -> Out {
        self.run_with(args, &[("ENCLII_TOKEN", TOKEN), ("ENCLII_PROJECT", project)], None)
    }

    fn ok(&self, project: &str, args: &[&str]) -> Out {
        let out = self.owner(project, args);
        assert_eq!(out.code, 0, "enclii {args:?}: {out:?}");
        out
    }
}

impl Drop for Conductor {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Running {
    child: Child,
    addr: String,
    data: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// A server of its own (data directory and SQLite database); `deploys`: with the Docker target
/// (which runs `preview-teardown` jobs, so that one can be made to die).
fn server(deploys: bool) -> Running {
    let data = data_dir();
    let data_str = data.display().to_string();
    let router = format!("127.0.0.1:{}", free_port());
    let target = if deploys { "docker" } else { "none" };
    let env = [
        ("ENCLII_DATA_DIR", data_str.as_str()),
        ("ENCLII_DEPLOY_TARGET", target),
        ("ENCLII_ROUTER_LISTEN", router.as_str()),
    ];
    let (child, addr) = launch(&[], &env, Stdio::null());
    Running { child, addr, data }
}

/// POSTs a Service Spec as YAML: (status, body).
fn post_yaml(addr: &str, path: &str, yaml: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/yaml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{yaml}",
        yaml.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    (
        status,
        response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    )
}

#[test]
fn exit_codes_hints_json_output_profiles_secrets_and_the_queue() {
    let server = server(true);
    let cli = Conductor::new(&server.addr);
    let addr = server.addr.as_str();

    // No token (50), a bad token (50), a bad flag value (10), each with what to do.
    let out = cli.run_with(&["ps", "--project", "shop"], &[], None);
    assert_eq!(out.code, 50, "{out:?}");
    assert!(out.stderr.contains("hint: run `enclii auth login"), "{out:?}");
    let bad = "enclii_pat_badbadbadbad_0123456789abcdefghijABCDEFGHIJ0123456789abc";
    let out = cli.run_with(&["ps", "--project", "shop", "--token", bad], &[], None);
    assert_eq!(out.code, 50, "{out:?}");
    assert!(out.stderr.contains("hint:"), "{out:?}");
    assert!(!out.stderr.contains(bad), "the token must not be printed: {out:?}");
    let out = cli.owner("shop", &["ps", "--output", "yaml"]);
    assert_eq!(out.code, 10, "{out:?}");
    let out = cli.run_with(
        &["ps", "--project", "shop", "--server", "http://127.0.0.1:1"],
        &[("ENCLII_TOKEN", TOKEN)],
        None,
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("is the server running?"), "{out:?}");

    // `init` writes a spec (refusing to overwrite it) that the server accepts.
    let (status, body) = http(addr, "POST", "/v1/projects", r#"{"slug":"shop"}"#);
    assert_eq!(status, 201, "{body}");
    let app = cli.dir.join("web");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("package.json"),
        r#"{"name":"web","scripts":{"start":"node server.js"}}"#,
    )
    .unwrap();
    git(&app, &["init", "-q"]);
    let out = cli.ok("shop", &["init", "--dir", "web", "--output", "json"]);
    assert_eq!(out.json()["template"], "node", "{out:?}");
    let spec = std::fs::read_to_string(app.join("enclii.yaml")).unwrap();
    assert!(spec.contains("ports: [3000]") && spec.contains("type: auto"), "{spec}");
    let out = cli.owner("shop", &["init", "--dir", "web"]);
    assert_eq!(out.code, 10, "{out:?}");
    assert!(out.stderr.contains("--force"), "{out:?}");
    cli.ok(
        "shop",
        &[
            "init",
            "--dir",
            "web",
            "--force",
            "--template",
            "python",
            "--port",
            "8000",
        ],
    );
    assert!(app.join("Dockerfile").exists());
    let spec = std::fs::read_to_string(app.join("enclii.yaml")).unwrap();
    let (status, body) = post_yaml(addr, "/v1/projects/shop/services", &spec);
    assert_eq!(status, 201, "the generated spec is refused: {body}\n{spec}");

    // A bad spec (locally, and from the server) is a validation error with its hint.
    std::fs::write(
        cli.dir.join("enclii.yaml"),
        "apiVersion: enclii.dev/v1\nkind: Service\n",
    )
    .unwrap();
    let out = cli.owner("shop", &["up"]);
    assert_eq!(out.code, 10, "{out:?}");
    assert!(
        out.stderr.contains("not a valid Service Spec") && out.stderr.contains("hint:"),
        "{out:?}"
    );
    std::fs::remove_file(cli.dir.join("enclii.yaml")).unwrap();
    let out = cli.owner("shop", &["scale", "web", "--min", "5", "--max", "2"]);
    assert_eq!(out.code, 10, "{out:?}");
    assert!(
        out.stderr.contains("spec.runtime.replicas") && out.stderr.contains("hint:"),
        "{out:?}"
    );
    let out = cli.ok(
        "shop",
        &["scale", "web", "--min", "2", "--max", "4", "--output", "json"],
    );
    assert_eq!(
        out.json()["spec"]["spec"]["runtime"]["replicas"],
        json!({"min": 2, "max": 4})
    );
    let out = cli.owner("shop", &["logs", "web", "--grep", "(unclosed"]);
    assert_eq!(out.code, 10, "{out:?}");
    assert!(out.stderr.contains("grep"), "{out:?}");

    // Every read command's --output json parses.
    for args in [
        &["ps"][..],
        &["logs", "web", "--tail", "5"],
        &["secrets", "list"],
        &["routes", "list"],
        &["jobs", "list", "--service", "web"],
        &["cost", "--since", "7d"],
        &["queue", "stats"],
        &["queue", "dead"],
        &["queue", "workers"],
    ] {
        let mut args = args.to_vec();
        args.extend(["--output", "json"]);
        let out = cli.ok("shop", &args);
        let value = out.json();
        assert!(value.is_array() || value.is_object(), "{args:?}: {value}");
    }
    let ps = cli.ok("shop", &["ps", "--output", "json"]).json();
    assert_eq!(ps[0]["service"], "web");
    assert_eq!(ps[0]["health"], "not_deployed");

    // Secrets: set from the command line and from stdin, listed and removed; never printed.
    let value = "s3cr3t-value-never-shown";
    let out = cli.ok(
        "shop",
        &["secrets", "set", &format!("API_KEY={value}"), "--service", "web"],
    );
    assert!(out.stdout.contains("API_KEY") && !out.stdout.contains(value), "{out:?}");
    let out = cli.run_with(
        &["secrets", "set", "DB_PASSWORD", "--service", "web", "--output", "json"],
        &[("ENCLII_TOKEN", TOKEN), ("ENCLII_PROJECT", "shop")],
        Some("from-stdin-secret\n"),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        !out.stdout.contains("from-stdin-secret") && !out.stderr.contains("from-stdin-secret"),
        "{out:?}"
    );
    let out = cli.ok("shop", &["secrets", "list", "--service", "web", "--output", "json"]);
    let list = out.json();
    let mut names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    names.sort();
    assert_eq!(names, ["API_KEY", "DB_PASSWORD"], "{out:?}");
    assert!(
        !out.stdout.contains(value) && !out.stdout.contains("from-stdin-secret"),
        "{out:?}"
    );
    let text = cli.ok("shop", &["secrets", "list"]);
    assert!(
        text.stdout.contains("API_KEY") && !text.stdout.contains(value),
        "{text:?}"
    );
    cli.ok("shop", &["secrets", "rm", "API_KEY", "--service", "web"]);
    let out = cli.ok("shop", &["secrets", "list", "--output", "json"]);
    assert_eq!(out.json().as_array().unwrap().len(), 1, "{out:?}");

    // Routes: add, list, remove.
    let out = cli.ok(
        "shop",
        &[
            "routes",
            "add",
            "--host",
            "web.shop.example",
            "--service",
            "web",
            "--output",
            "json",
        ],
    );
    let id = out.json()["id"].as_i64().unwrap().to_string();
    let out = cli.ok("shop", &["routes", "list"]);
    assert!(out.stdout.contains("web.shop.example"), "{out:?}");
    cli.ok("shop", &["routes", "rm", &id]);

    // Profiles: `auth login` stores server, token and project (0600); a second command needs no flags.
    let out = cli.run_with(
        &["auth", "login", "--project", "shop", "--profile", "ci"],
        &[],
        Some(&format!("{TOKEN}\n")),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("user:admin") && !out.stdout.contains(TOKEN),
        "{out:?}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&cli.config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the config file holds tokens");
    let config = std::fs::read_to_string(&cli.config).unwrap();
    assert!(
        config.contains("[profiles.ci]") && config.contains("default_profile = \"ci\""),
        "{config}"
    );
    let out = cli.run_with(&["routes", "list", "--output", "json"], &[], None);
    assert_eq!(out.code, 0, "the profile gives server, token and project: {out:?}");
    let out = cli.run_with(&["ps", "--profile", "nope"], &[], None);
    assert_eq!(out.code, 10, "{out:?}");

    // A read-only token made with `auth token create` may read but not change (50).
    let out = cli.run_with(
        &["auth", "token", "create", "--scopes", "read", "--expires", "7d"],
        &[],
        None,
    );
    assert_eq!(out.code, 0, "{out:?}");
    let readonly = out.stdout.trim().to_string();
    assert!(readonly.starts_with("enclii_pat_"), "{out:?}");
    let out = cli.run_with(&["routes", "list", "--token", &readonly], &[], None);
    assert_eq!(out.code, 0, "{out:?}");
    let out = cli.run_with(
        &[
            "routes",
            "add",
            "--host",
            "x.shop.example",
            "--service",
            "web",
            "--token",
            &readonly,
        ],
        &[],
        None,
    );
    assert_eq!(out.code, 50, "{out:?}");
    assert!(out.stderr.contains("hint:"), "{out:?}");

    // The queue: a job that dies is listed dead and retried; a project's queue pauses and resumes.
    let job = json!({"kind": "preview-teardown", "project": "shop",
                     "payload": {"service": "web", "repository": "r", "pull_request": 1, "environment": "prod"}});
    let (status, body) = http(addr, "POST", "/v1/jobs", &job.to_string());
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"].as_i64().unwrap();
    wait_until(Duration::from_secs(30), "the job to die", || {
        let out = cli.ok(
            "shop",
            &["queue", "dead", "--kind", "preview-teardown", "--output", "json"],
        );
        out.json()
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["id"].as_i64() == Some(id))
    });
    let out = cli.ok("shop", &["queue", "dead"]);
    assert!(
        out.stdout.contains("preview-teardown") && out.stdout.contains("not a preview environment"),
        "{out:?}"
    );
    let out = cli.ok("shop", &["queue", "retry", &id.to_string(), "--output", "json"]);
    assert_eq!(out.json()["result"], "available", "{out:?}");
    let out = cli.ok("shop", &["queue", "pause", "shop", "--output", "json"]);
    assert_eq!(out.json()["paused"], true, "{out:?}");
    let out = cli.ok("shop", &["queue", "resume", "shop"]);
    assert!(out.stdout.contains("running"), "{out:?}");

    // Completions for every shell.
    for shell in ["bash", "zsh", "fish", "powershell"] {
        let out = cli.run_with(&["completions", shell], &[], None);
        assert_eq!(out.code, 0, "{out:?}");
        assert!(
            out.stdout.contains("enclii") && out.stdout.len() > 1000,
            "{shell}: {out:?}"
        );
    }
}

#[test]
fn runtime_routes_without_a_deploy_target_say_so() {
    let server = server(false);
    let cli = Conductor::new(&server.addr);
    let (status, body) = http(&server.addr, "POST", "/v1/projects", r#"{"slug":"shop"}"#);
    assert_eq!(status, 201, "{body}");
    let out = cli.owner("shop", &["ps"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("no deploy target") && out.stderr.contains("ENCLII_DEPLOY_TARGET"),
        "{out:?}"
    );
}

/// A server that runs no build step (no Docker engine here, or build steps off) says so in its
/// worker's heartbeat; `enclii up` prints why its release waits once, instead of waiting
/// silently, and `releases` and `queue workers` show it.
#[test]
fn a_build_no_worker_can_run_says_why_instead_of_waiting_silently() {
    let server = server(false);
    let addr = server.addr.as_str();
    let (status, body) = http(addr, "POST", "/v1/projects", r#"{"slug":"shop"}"#);
    assert_eq!(status, 201, "{body}");
    // The worker has beaten, saying what it cannot run.
    wait_until(Duration::from_secs(30), "the worker's first heartbeat", || {
        let (_, workers) = http(addr, "GET", "/v1/queue/workers", "");
        serde_json::from_str::<Value>(&workers).unwrap()[0]["unavailable"]["clone"].is_string()
    });
    let mut cli = Conductor::new(addr);
    cli.dir = checkout("shop", &format!("FROM {BASE_IMAGE}\n"));
    let env = [("ENCLII_TOKEN", TOKEN), ("ENCLII_PROJECT", "shop")];

    let out = cli.run_with(&["up", "--timeout", "3"], &env, None);
    assert_eq!(out.code, 40, "{out:?}");
    let said: Vec<&str> = out
        .stderr
        .lines()
        .filter_map(|l| l.strip_prefix("• waiting: "))
        .collect();
    assert_eq!(said.len(), 1, "said once: {out:?}");
    assert!(said[0].starts_with("no worker can run clone ("), "{out:?}");

    let releases = cli.ok("shop", &["releases", "web", "--output", "json"]).json();
    assert_eq!(
        releases[0]["waiting"].as_str(),
        Some(format!("waiting: {}", said[0]).as_str()),
        "{releases}"
    );
    let out = cli.ok("shop", &["releases", "web"]);
    assert!(
        out.stdout.contains("REASON") && out.stdout.contains("waiting: no worker can run clone ("),
        "{out:?}"
    );
    let out = cli.ok("shop", &["queue", "workers"]);
    assert!(
        out.stdout.contains(" cannot run ") && out.stdout.contains("clone"),
        "{out:?}"
    );
}

// --- real builds and deploys ---------------------------------------------------------------------

fn deploy_server(router: &str) -> support::pipeline::Server {
    build_server(&[
        ("ENCLII_DEPLOY_TARGET", "docker"),
        ("ENCLII_ROUTER_LISTEN", router),
        ("ENCLII_DEPLOY_HEALTH_TIMEOUT_SECONDS", "20"),
    ])
}

/// GET `url` (http://host:port/path) through the router at `router`: (status, body).
fn get_via(router: &str, url: &str) -> (u16, String) {
    let rest = url.strip_prefix("http://").unwrap();
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.split(':').next().unwrap();
    get(router, host, if path.is_empty() { "/" } else { path })
}

#[test]
fn up_deploys_the_checkout_to_a_preview_url_then_logs_and_ps_see_it() {
    let project = "conductor-up";
    remove_containers(project);
    let router = format!("127.0.0.1:{}", free_port());
    let server = deploy_server(&router);
    let (status, body) = http(
        &server.addr,
        "POST",
        "/v1/projects",
        &json!({"slug": project}).to_string(),
    );
    assert_eq!(status, 201, "{body}");
    let dockerfile = format!(
        "FROM {BASE_IMAGE}\nCOPY www /www\nCMD [\"httpd\", \"-f\", \"-vv\", \"-p\", \"3000\", \"-h\", \"/www\"]\n"
    );
    let dir = checkout(project, &dockerfile);
    let mut cli = Conductor::new(&server.addr);
    cli.dir = dir.clone();

    // `up` creates the service from enclii.yaml, builds HEAD, deploys the preview, prints its URL.
    let out = cli.run_with(&["up", "--timeout", "10m"], &[("ENCLII_TOKEN", TOKEN)], None);
    assert_eq!(out.code, 0, "{out:?}");
    let url = out.stdout.trim().to_string();
    assert!(
        url.starts_with("http://web-preview-") && url.contains(".preview.localhost:"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("build") && out.stderr.contains("succeeded"),
        "progress on stderr: {out:?}"
    );
    let (status, body) = get_via(&router, &url);
    assert_eq!((status, body.as_str()), (200, "hello from up"), "{url}");
    let environment = url
        .strip_prefix("http://web-")
        .and_then(|r| r.split('.').next())
        .unwrap()
        .to_string();

    // Its runtime log (httpd -vv logs each request's path, `…: url:/`) and its status.
    let env = [("ENCLII_TOKEN", TOKEN), ("ENCLII_PROJECT", project)];
    wait_until(Duration::from_secs(20), "the request in the runtime log", || {
        let out = cli.run_with(&["logs", "web", "--env", &environment, "--output", "json"], &env, None);
        assert_eq!(out.code, 0, "{out:?}");
        out.json()
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["line"].as_str().unwrap_or("").ends_with("url:/"))
    });
    let out = cli.run_with(&["logs", "web", "--env", &environment, "--grep", "url:/$"], &env, None);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("url:/") && !out.stdout.contains("healthz"),
        "{out:?}"
    );
    assert!(
        out.stdout.contains("enclii-conductor-up-"),
        "lines name their replica: {out:?}"
    );
    let out = cli.run_with(&["ps", "--env", &environment, "--output", "json"], &env, None);
    assert_eq!(out.code, 0, "{out:?}");
    let web = &out.json()[0];
    assert_eq!(web["service"], "web", "{out:?}");
    assert_eq!(web["health"], "healthy", "{out:?}");
    assert_eq!(web["replicas_ready"], 1, "{out:?}");
    assert_eq!(web["url"].as_str(), Some(url.as_str()), "{out:?}");
    assert!(
        web["requests"].as_u64().unwrap() >= 1,
        "the router counted the request: {out:?}"
    );
    let image = web["image"].as_str().unwrap();
    assert!(image.starts_with("127.0.0.1:5000/conductor-up/web@sha256:"), "{out:?}");

    // `logs -f` streams lines as they are printed.
    let mut follow = cli
        .command(
            &[
                "logs",
                "web",
                "--env",
                &environment,
                "-f",
                "--tail",
                "0",
                "--output",
                "json",
            ],
            &env,
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut streamed = false;
    while !streamed && Instant::now() < deadline {
        let (status, _) = get_via(&router, &format!("{url}followed"));
        assert_eq!(status, 404);
        while let Ok(line) = seen.recv_timeout(Duration::from_millis(500)) {
            let line: Value = serde_json::from_str(&line).unwrap();
            streamed |= line["line"].as_str().unwrap_or("").ends_with("url:/followed");
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(streamed, "logs -f did not show the new request");

    // `up` again with nothing new deploys the same release again and prints the same URL.
    let out = cli.run_with(&["up", "--no-progress"], &[("ENCLII_TOKEN", TOKEN)], None);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout.trim(), url);
    assert!(out.stderr.is_empty(), "--no-progress: {out:?}");

    // `deploy --wait` builds HEAD for the service's own environment and waits for the deployment.
    let out = cli.run_with(&["deploy", "--wait", "--output", "json"], &env, None);
    assert_eq!(out.code, 0, "{out:?}");
    let deployment = out.json();
    assert_eq!(deployment["status"], "succeeded", "{out:?}");
    assert_eq!(deployment["environment"], "prod", "{out:?}");
    assert!(out.stderr.is_empty(), "no progress with --output json: {out:?}");
    let out = cli.run_with(&["ps", "--output", "json"], &env, None);
    assert_eq!(out.json()[0]["environment"], "prod", "{out:?}");
    assert_eq!(out.json()[0]["health"], "healthy", "{out:?}");
    drop(server);
    remove_containers(project);
}

#[test]
fn a_build_that_fails_exits_20_with_the_reason() {
    let project = "conductor-fail";
    let router = format!("127.0.0.1:{}", free_port());
    let server = deploy_server(&router);
    let (status, body) = http(
        &server.addr,
        "POST",
        "/v1/projects",
        &json!({"slug": project}).to_string(),
    );
    assert_eq!(status, 201, "{body}");
    let dir = checkout(project, &format!("FROM {BASE_IMAGE}\nRUN exit 3\n"));
    let mut cli = Conductor::new(&server.addr);
    cli.dir = dir;
    let env = [("ENCLII_TOKEN", TOKEN), ("ENCLII_PROJECT", project)];
    let (status, body) = post_yaml(
        &server.addr,
        &format!("/v1/projects/{project}/services"),
        &std::fs::read_to_string(cli.dir.join("enclii.yaml")).unwrap(),
    );
    assert_eq!(status, 201, "{body}");
    let out = cli.run_with(&["deploy", "--wait", "--timeout", "5m"], &env, None);
    assert_eq!(out.code, 20, "{out:?}");
    assert!(
        out.stderr.contains("build failed") && out.stderr.contains("hint:"),
        "{out:?}"
    );
    // The failed release cannot deploy: the API refuses (409), a failed deployment (30).
    let (_, body) = http(&server.addr, "GET", &format!("/v1/projects/{project}/releases"), "");
    let failed = serde_json::from_str::<Value>(&body).unwrap()[0]["id"]
        .as_i64()
        .unwrap()
        .to_string();
    let out = cli.run_with(&["deploy", "web", "--release", &failed], &env, None);
    assert_eq!(out.code, 30, "{out:?}");
    let out = cli.run_with(&["rollback", "web", "--to", &failed], &env, None);
    assert_eq!(out.code, 30, "{out:?}");
    // Waiting too little is a timeout (40).
    let out = cli.run_with(&["up", "--timeout", "0"], &env, None);
    assert_eq!(out.code, 40, "{out:?}");
}

#[test]
fn jobs_run_queue_views_cancel_and_bad_inputs() {
    // No deploy target: the worker claims no `job-run`, so a run waits in the queue.
    let server = server(false);
    let cli = Conductor::new(&server.addr);
    let addr = server.addr.as_str();
    let (status, body) = http(addr, "POST", "/v1/projects", r#"{"slug":"shop"}"#);
    assert_eq!(status, 201, "{body}");
    let spec = "apiVersion: enclii.dev/v1\nkind: Service\nmetadata: { project: shop, environment: prod, name: web }\n\
                spec:\n  source: { git: { repository: \"https://example.com/web.git\", branch: main } }\n\
                \x20 runtime: { ports: [3000], memory: 64Mi, cpu: 250m }\n\
                \x20 jobs: [ { name: report, schedule: \"0 2 * * *\", args: [\"echo\", \"hi\"] } ]\n";
    let (status, body) = post_yaml(addr, "/v1/projects/shop/services", spec);
    assert_eq!(status, 201, "{body}");

    // `jobs run` queues a `job-run` job; `queue jobs` shows it waiting; `queue cancel` cancels it.
    let run = cli
        .ok(
            "shop",
            &["jobs", "run", "report", "--service", "web", "--output", "json"],
        )
        .json();
    assert_eq!(run["status"], "queued", "{run}");
    let job = run["queue_job_id"].as_i64().unwrap();
    let out = cli.ok("shop", &["jobs", "run", "report", "--service", "web"]);
    assert!(out.stdout.contains("queued"), "{out:?}");
    let waiting = cli
        .ok("shop", &["queue", "jobs", "--kind", "job-run", "--output", "json"])
        .json();
    let mine = waiting
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["id"].as_i64() == Some(job));
    assert_eq!(mine.map(|j| j["state"].clone()), Some(json!("available")), "{waiting}");
    let out = cli.ok("shop", &["queue", "jobs"]);
    assert!(
        out.stdout.contains("job-run") && out.stdout.contains("available"),
        "{out:?}"
    );
    // Retrying a job that is not dead says which ones can be (409: exit 1).
    let out = cli.owner("shop", &["queue", "retry", &job.to_string()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("hint:") && out.stderr.contains("queue dead"),
        "{out:?}"
    );
    let out = cli.ok("shop", &["queue", "cancel", &job.to_string(), "--output", "json"]);
    assert_eq!(out.json()["result"], "cancelled", "{out:?}");
    let cancelled = cli
        .ok("shop", &["queue", "jobs", "--state", "cancelled", "--output", "json"])
        .json();
    assert!(
        cancelled
            .as_array()
            .unwrap()
            .iter()
            .any(|j| j["id"].as_i64() == Some(job)),
        "{cancelled}"
    );
    let out = cli.ok("shop", &["queue", "cancel", &job.to_string()]);
    assert!(out.stdout.contains("already finished"), "{out:?}");
    let out = cli.owner("shop", &["queue", "cancel", "999999"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("hint:"), "{out:?}");
    // An unknown job names the service's jobs.
    let out = cli.owner("shop", &["jobs", "run", "nope", "--service", "web"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("report"), "{out:?}");
    // The server's text reaches the terminal without control characters (an escape sequence in
    // a name the server quotes back is shown escaped).
    let out = cli.owner("shop", &["jobs", "run", "x\u{1b}]0;pwned\u{7}", "--service", "web"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        !out.stderr.contains('\u{1b}') && out.stderr.contains("\\u{1b}]0;pwned"),
        "{out:?}"
    );

    // The operators' views: stats as a table, controls (and its alias limits), throughput.
    let out = cli.ok("shop", &["queue", "stats"]);
    assert!(out.stdout.contains("KIND") && out.stdout.contains("job-run"), "{out:?}");
    cli.ok("shop", &["queue", "pause", "shop"]);
    let controls = cli.ok("shop", &["queue", "controls", "--output", "json"]).json();
    assert_eq!(controls[0]["project"], "shop", "{controls}");
    assert_eq!(controls[0]["paused"], true, "{controls}");
    let out = cli.ok("shop", &["queue", "limits"]);
    assert!(out.stdout.contains("shop") && out.stdout.contains("paused"), "{out:?}");
    let report = cli
        .ok("shop", &["queue", "throughput", "--minutes", "5", "--output", "json"])
        .json();
    assert_eq!(report["buckets"].as_array().unwrap().len(), 5, "{report}");
    let out = cli.ok("shop", &["queue", "throughput", "--minutes", "3"]);
    assert!(
        out.stdout.contains("CANCELLED") && out.stdout.contains("last 3 min"),
        "{out:?}"
    );
    let out = cli.owner("shop", &["queue", "throughput", "--minutes", "0"]);
    assert_eq!(out.code, 10, "{out:?}");

    // Releases: a read command (none yet); rolling back to a release that does not exist says
    // where to look.
    let out = cli.ok("shop", &["releases", "web", "--output", "json"]);
    assert_eq!(out.json(), json!([]), "{out:?}");
    let out = cli.owner("shop", &["rollback", "web", "--to", "999"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("enclii releases web"), "{out:?}");

    // Secrets: no value on stdin, or no name, is a validation error, and nothing is set.
    let out = cli.owner("shop", &["secrets", "set", "NOEQUALS"]);
    assert_eq!(out.code, 10, "{out:?}");
    assert!(out.stderr.contains("stdin") && out.stderr.contains("hint:"), "{out:?}");
    let out = cli.owner("shop", &["secrets", "set", "=value"]);
    assert_eq!(out.code, 10, "{out:?}");
    let out = cli.ok("shop", &["secrets", "list", "--output", "json"]);
    assert_eq!(out.json(), json!([]), "{out:?}");

    // A timeout too long for the clock is refused, not a panic.
    let out = cli.owner(
        "shop",
        &["deploy", "web", "--release", "1", "--timeout", "999999999999999h"],
    );
    assert_eq!(out.code, 10, "{out:?}");
    assert!(!out.stderr.contains("panicked"), "{out:?}");

    // Credentials in --server are refused without being printed.
    let out = cli.owner("shop", &["ps", "--server", "http://alice:hunter2@127.0.0.1:1"]);
    assert_eq!(out.code, 10, "{out:?}");
    assert!(
        !out.stderr.contains("hunter2") && out.stderr.contains("hint:"),
        "{out:?}"
    );

    // A profile's token goes only to the profile's server.
    let out = cli.run_with(
        &["auth", "login", "--project", "shop"],
        &[],
        Some(&format!("{TOKEN}\n")),
    );
    assert_eq!(out.code, 0, "{out:?}");
    cli.ok("shop", &["routes", "list"]);
    let out = cli.run_with(&["routes", "list", "--server", "http://127.0.0.1:1"], &[], None);
    assert_eq!(out.code, 50, "{out:?}");
    assert!(
        out.stderr.contains("not sent elsewhere") && !out.stderr.contains(TOKEN),
        "{out:?}"
    );
    // A config file others may read is named, with the fix.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cli.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cli.run_with(&["routes", "list"], &[], None);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("chmod 600"), "{out:?}");
    // `auth login` again (no token given) reads a new one instead of reusing the stored one,
    // and writes the file 0600 again.
    let out = cli.run_with(&["auth", "login"], &[], None);
    assert_eq!(out.code, 50, "{out:?}");
    let out = cli.run_with(&["auth", "login"], &[], Some(&format!("{TOKEN}\n")));
    assert_eq!(out.code, 0, "{out:?}");
    let mode = std::fs::metadata(&cli.config).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

/// A stand-in API on a free port: each request gets `answer(method, path)`'s (status, body), or,
/// for `None`, headers of an event stream (`Some` status 0) or nothing at all — then silence.
fn silent_server(answer: fn(&str, &str) -> Option<(u16, &'static str)>) -> String {
    use std::io::BufRead;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    head.push_str(&line);
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let mut words = head.split_whitespace();
                let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                let mut stream = stream;
                match answer(method, path) {
                    Some((0, _)) => {
                        let _ = write!(stream, "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n");
                    }
                    Some((status, body)) => {
                        let _ = write!(
                            stream,
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    None => {}
                }
                let _ = stream.flush();
                std::thread::sleep(Duration::from_secs(30));
            });
        }
    });
    addr
}

#[test]
fn a_silent_server_ends_in_an_error_not_a_hang() {
    let started = Instant::now();
    // `logs -f`: an event stream with not even a keep-alive fails (exit 1) after the idle time.
    let addr = silent_server(|_, _| Some((0, "")));
    let cli = Conductor::new(&addr);
    let out = cli.run_with(
        &["logs", "web", "-f"],
        &[
            ("ENCLII_TOKEN", TOKEN),
            ("ENCLII_PROJECT", "shop"),
            ("ENCLII_STREAM_IDLE_SECONDS", "1"),
        ],
        None,
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("silent") && out.stderr.contains("hint:"), "{out:?}");
    // `rollback --wait`: a deployment that never answers ends at --timeout (40), not at the
    // client's own request timeout.
    let addr = silent_server(|method, path| match (method, path) {
        ("POST", p) if p.ends_with("/rollback") => Some((201, r#"{"id": 7, "status": "pending"}"#)),
        _ => None,
    });
    let cli = Conductor::new(&addr);
    let out = cli.owner("shop", &["rollback", "web", "--to", "1", "--wait", "--timeout", "2"]);
    assert_eq!(out.code, 40, "{out:?}");
    assert!(out.stderr.contains("deployment 7"), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
}
