//! Networks per environment on the Docker target (issue 16, item 5), through the `enclii` binary
//! with real builds and containers (as `deploy.rs`): a service answers another container of its
//! environment at `http://<service>:<port>`, a container of another project can neither resolve
//! nor connect to it, the router still reaches both, and the environment's network goes with its
//! last service.

mod support;

use std::process::{Command, Output};

use serde_json::{Value, json};
use support::deploy::*;
use support::pipeline::*;

/// Runs a throwaway container of the test base image on `network`.
fn from_network(network: &str, args: &[&str]) -> Output {
    Command::new(DOCKER)
        .args(["run", "--rm", "--network", network, BASE_IMAGE])
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}: {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The address of the project's replica on its environment's network.
fn replica_ip(project: &str) -> String {
    let name = run(Command::new(DOCKER).args([
        "ps",
        "--format",
        "{{.Names}}",
        "--filter",
        &format!("label=dev.enclii.project={project}"),
        "--filter",
        "label=dev.enclii.role=replica",
    ]));
    let name = name.lines().next().expect("a running replica");
    run(Command::new(DOCKER).args([
        "inspect",
        "-f",
        &format!("{{{{(index .NetworkSettings.Networks \"enclii-{project}-prod\").IPAddress}}}}"),
        name,
    ]))
}

fn deployed(host: &'static str, project: &'static str) -> Platform {
    let p = platform(project, json!({"routes": [{"host": host}]}));
    let release = ready_release(&p, &head(&p));
    let deployment = deploy(&p, release, "deployments");
    let d = wait_status(
        &p.server,
        deployment["id"].as_i64().unwrap(),
        &["succeeded", "failed"],
        None,
    );
    assert_eq!(d["status"], "succeeded", "{d}");
    p
}

#[test]
fn services_reach_each_other_by_name_within_an_environment_and_not_across_projects() {
    let _alpha_cleanup = Cleanup("netalpha");
    let _beta_cleanup = Cleanup("netbeta");
    let alpha = deployed("netalpha.test", "netalpha");
    let beta = deployed("netbeta.test", "netbeta");
    let (alpha_ip, beta_ip) = (replica_ip("netalpha"), replica_ip("netbeta"));
    assert!(!alpha_ip.is_empty() && !beta_ip.is_empty() && alpha_ip != beta_ip);

    // Within the environment: the service's name resolves (through the engine's DNS, 127.0.0.11)
    // to its replica, which answers. (The test image's static busybox crashes resolving names
    // through libc, and its `wget` crashes: names go to `nslookup` with the server given, requests
    // to `nc` by address.)
    let out = from_network("enclii-netalpha-prod", &["nslookup", "api", "127.0.0.11"]);
    assert!(text(&out).contains(&alpha_ip), "{}", text(&out));
    let connect = |network: &str, ip: &str| {
        let request = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 3000");
        from_network(network, &["sh", "-c", &request])
    };
    let out = connect("enclii-netalpha-prod", &alpha_ip);
    assert!(out.status.success() && text(&out).contains("v1"), "{}", text(&out));

    // From another project: `api` is its own service, and alpha's replica cannot be reached.
    let out = from_network("enclii-netbeta-prod", &["nslookup", "api", "127.0.0.11"]);
    let answer = text(&out);
    assert!(answer.contains(&beta_ip) && !answer.contains(&alpha_ip), "{answer}");
    let out = connect("enclii-netbeta-prod", &alpha_ip);
    assert!(
        !out.status.success() && text(&out).contains("timed out"),
        "a container of another project reached alpha: {}",
        text(&out)
    );

    // The router reaches both.
    assert_eq!(get(&alpha.router, "netalpha.test", "/").0, 200);
    assert_eq!(get(&beta.router, "netbeta.test", "/").0, 200);

    // Deleting the environment's last service takes its network.
    let (status, body) = call(
        &alpha.server,
        "DELETE",
        "/v1/projects/netalpha/services/api",
        Value::Null,
    );
    assert!(status == 202 || status == 204, "{body}");
    wait_until(std::time::Duration::from_secs(60), "the network's removal", || {
        !Command::new(DOCKER)
            .args(["network", "inspect", "enclii-netalpha-prod"])
            .output()
            .unwrap()
            .status
            .success()
    });
}
