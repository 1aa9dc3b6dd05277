//! Add-on tests' shared parts: the client service's CGI scripts and waiting for an add-on.

use std::time::Duration;

use serde_json::Value;

use super::deploy::{Cleanup, Platform, platform_with, remove_containers};
use super::pipeline::{call, wait_until};

pub const CLIENT_IMAGE: &str = "enclii-test/addon-client:latest";

/// A CGI script: runs `command` (which reads `$Q`, the query string) and answers its output,
/// `500` when it fails.
pub fn cgi(command: &str) -> String {
    format!(
        "#!/bin/sh\nQ=\"$QUERY_STRING\"\nif out=$({command} 2>&1); then\n  printf 'Content-Type: text/plain\\r\\n\\r\\n%s\\n' \"$out\"\nelse\n  printf 'Status: 500 Internal Server Error\\r\\nContent-Type: text/plain\\r\\n\\r\\n%s\\n' \"$out\"\nfi\n"
    )
}

pub fn app() -> Vec<(&'static str, String)> {
    vec![
        (
            "Dockerfile",
            format!(
                "FROM {CLIENT_IMAGE}\nCOPY www /www\nRUN chmod -R +x /www/cgi-bin\n\
                 CMD [\"httpd\", \"-f\", \"-p\", \"3000\", \"-h\", \"/www\"]\n"
            ),
        ),
        ("www/healthz", "ok\n".into()),
        (
            "www/cgi-bin/add",
            cgi(
                "psql \"$DATABASE_URL\" -qtA -v ON_ERROR_STOP=1 -c \"CREATE TABLE IF NOT EXISTS notes (v text)\" -c \"INSERT INTO notes VALUES ('$Q')\" && echo added",
            ),
        ),
        (
            "www/cgi-bin/count",
            cgi("psql \"$DATABASE_URL\" -qtAc \"SELECT count(*) FROM notes\""),
        ),
        (
            "www/cgi-bin/whoami",
            cgi("psql \"$DATABASE_URL\" -qtAc \"SELECT current_user\""),
        ),
        (
            "www/cgi-bin/remember",
            cgi("redis-cli --no-auth-warning -u \"$REDIS_URL\" SET \"$Q\" 1 | grep -x OK"),
        ),
        (
            "www/cgi-bin/recall",
            cgi("redis-cli --no-auth-warning -u \"$REDIS_URL\" EXISTS \"$Q\""),
        ),
    ]
}

pub fn addon(server: &super::pipeline::Server, project: &str, name: &str) -> Value {
    let (status, body) = call(
        server,
        "GET",
        &format!("/v1/projects/{project}/environments/prod/addons/{name}"),
        Value::Null,
    );
    assert_eq!(status, 200, "{body}");
    body
}

pub fn wait_ready(server: &super::pipeline::Server, project: &str, name: &str, generation: i64) -> Value {
    let mut last = Value::Null;
    wait_until(Duration::from_secs(180), &format!("add-on {name} ready"), || {
        last = addon(server, project, name);
        assert_ne!(last["status"], "failed", "{last}");
        last["status"] == "ready" && last["generation"] == generation
    });
    last
}

/// The client service of [`app`] in `project`'s `prod`, `spec` merged into its spec, on a fresh
/// platform with `env`; the project's containers are removed before, and after (the [`Cleanup`],
/// dropped after the platform).
pub fn addon_platform(project: &'static str, spec: Value, env: &[(&str, &str)]) -> (Cleanup, Platform) {
    let cleanup = Cleanup(project);
    remove_containers(project);
    let files = app();
    let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (*p, t.as_str())).collect();
    (cleanup, platform_with(project, "prod", &files, spec, env))
}
