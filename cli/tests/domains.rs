//! Custom domains end to end (issue 16, item 1): `enclii domains add|ls|verify|rm` and the API
//! against a real `enclii server` whose ownership checks ask a real DNS server
//! (`pebble-challtestsrv`, see `support/dns.rs`). A domain is routed only once its TXT record
//! holds its token; a wildcard is proven on its apex; a domain never proven fails at its deadline
//! with what the last check found; hosts that are invalid, the platform's, or another project's are
//! refused with a named reason; a route needs a host its project proved. With the Docker target, a verified domain answers through the
//! router and an unverified one does not.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::deploy::{Cleanup, deploy, get, head, platform_in, ready_release, wait_status};
use support::dns::TestDns;
use support::pipeline::{Server, call, wait_until};
use support::{TOKEN, data_dir, launch};

/// A server without deploy target or builds, checking ownership through `dns`.
fn server(dns: &TestDns, extra: &[(&str, &str)]) -> Server {
    let data = data_dir();
    let data_str = data.display().to_string();
    let mut env = vec![
        ("ENCLII_DATA_DIR", data_str.as_str()),
        ("ENCLII_DNS_RESOLVER", dns.resolver.as_str()),
        ("ENCLII_ROUTER_PUBLIC_ADDRESS", "router.enclii.example"),
    ];
    env.extend_from_slice(extra);
    let (child, addr) = launch(&[], &env, std::process::Stdio::null());
    Server { child, addr, data }
}

fn service(server: &Server, project: &str, name: &str) {
    let (status, body) = call(server, "POST", "/v1/projects", json!({"slug": project}));
    assert!(status == 201 || status == 409, "{body}");
    let document = json!({
        "apiVersion": "enclii.dev/v1", "kind": "Service",
        "metadata": {"project": project, "environment": "prod", "name": name},
        "spec": {"source": {"git": {"repository": format!("https://github.com/org/{project}"), "branch": "main"}},
                 "runtime": {"ports": [3000]}}
    });
    let (status, body) = call(server, "POST", &format!("/v1/projects/{project}/services"), document);
    assert_eq!(status, 201, "{body}");
}

/// Runs the CLI against `server` for project `shop`: (exit code, stdout, stderr).
fn enclii(server: &Server, args: &[&str]) -> (i32, String, String) {
    let config: PathBuf = server.data.join("cli.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_enclii"))
        .args(args)
        .env_remove("ENCLII_PROFILE")
        .env_remove("ENCLII_OUTPUT")
        .env("ENCLII_CONFIG", config)
        .env("ENCLII_SERVER", format!("http://{}", server.addr))
        .env("ENCLII_TOKEN", TOKEN)
        .env("ENCLII_PROJECT", "shop")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn domain(server: &Server, project: &str, id: i64) -> Value {
    let (status, body) = call(
        server,
        "GET",
        &format!("/v1/projects/{project}/domains/{id}"),
        Value::Null,
    );
    assert_eq!(status, 200, "{body}");
    body
}

fn routed_hosts(server: &Server, project: &str) -> Vec<String> {
    let (status, body) = call(server, "GET", &format!("/v1/projects/{project}/routes"), Value::Null);
    assert_eq!(status, 200, "{body}");
    body.as_array()
        .unwrap()
        .iter()
        .map(|r| r["host"].as_str().unwrap().to_string())
        .collect()
}

fn wait_checked(server: &Server, id: i64, checks: i64) -> Value {
    let mut last = Value::Null;
    wait_until(Duration::from_secs(30), "a domain check", || {
        last = domain(server, "shop", id);
        last["checks"].as_i64().unwrap() >= checks
    });
    last
}

#[test]
fn domains_are_routed_only_once_their_owner_proves_them_in_dns() {
    let dns = TestDns::start();
    let server = server(&dns, &[]);
    service(&server, "shop", "web");

    // Added from the CLI: pending, with the two records to create.
    let (code, out, err) = enclii(
        &server,
        &[
            "domains",
            "add",
            "App.Shop.Example.",
            "--service",
            "web",
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let added: Value = serde_json::from_str(&out).unwrap();
    let id = added["id"].as_i64().unwrap();
    assert_eq!(added["host"], "app.shop.example");
    assert_eq!(added["status"], "pending");
    assert_eq!(added["ownership"]["type"], "TXT");
    assert_eq!(added["ownership"]["name"], "_enclii-challenge.app.shop.example");
    let token = added["ownership"]["value"].as_str().unwrap().to_string();
    assert!(token.starts_with("enclii-verify-"), "{added}");
    assert_eq!(
        added["target"],
        json!({"type": "CNAME", "name": "app.shop.example", "value": "router.enclii.example"})
    );

    // The first check finds nothing: still pending, saying so, and not routed.
    let checked = wait_checked(&server, id, 1);
    assert_eq!(checked["status"], "pending", "{checked}");
    assert!(
        checked["detail"]
            .as_str()
            .unwrap()
            .contains("no TXT record at `_enclii-challenge.app.shop.example`"),
        "{checked}"
    );
    assert!(routed_hosts(&server, "shop").is_empty());

    // A record with another value is not proof, and says what it holds.
    dns.set_txt("_enclii-challenge.app.shop.example", "someone-elses-token");
    let (code, out, err) = enclii(&server, &["domains", "verify", &id.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("_enclii-challenge.app.shop.example"), "{out}");
    let checked = wait_checked(&server, id, 2);
    assert_eq!(checked["status"], "pending", "{checked}");
    assert!(
        checked["detail"].as_str().unwrap().contains("someone-elses-token"),
        "{checked}"
    );

    // The token in place: verified at the next check, and routed.
    dns.clear_txt("_enclii-challenge.app.shop.example");
    dns.set_txt("_enclii-challenge.app.shop.example", &token);
    enclii(&server, &["domains", "verify", &id.to_string()]);
    wait_until(Duration::from_secs(30), "verification", || {
        domain(&server, "shop", id)["status"] == "verified"
    });
    let verified = domain(&server, "shop", id);
    assert!(verified["route"].as_i64().is_some(), "{verified}");
    assert_eq!(routed_hosts(&server, "shop"), ["app.shop.example"]);
    let (code, out, _) = enclii(&server, &["domains", "ls"]);
    assert_eq!(code, 0);
    assert!(out.contains("app.shop.example") && out.contains("verified"), "{out}");

    // A wildcard is proven on its apex's record.
    let (status, wildcard) = call(
        &server,
        "POST",
        "/v1/projects/shop/domains",
        json!({"host": "*.shop.example", "service": "web"}),
    );
    assert_eq!(status, 201, "{wildcard}");
    assert_eq!(wildcard["ownership"]["name"], "_enclii-challenge.shop.example");
    dns.set_txt(
        "_enclii-challenge.shop.example",
        wildcard["ownership"]["value"].as_str().unwrap(),
    );
    let wid = wildcard["id"].as_i64().unwrap();
    call(
        &server,
        "POST",
        &format!("/v1/projects/shop/domains/{wid}/verify"),
        Value::Null,
    );
    wait_until(Duration::from_secs(30), "the wildcard's verification", || {
        domain(&server, "shop", wid)["status"] == "verified"
    });

    // Refused, each with a named reason and nothing stored.
    service(&server, "rival", "web");
    for (project, host, status, says) in [
        ("shop", "10.0.0.1", 422, "not an IP address"),
        ("shop", "example", 422, "at least two labels"),
        ("shop", "*.*.shop.example", 422, "wildcard"),
        ("shop", "a.*.shop.example", 422, "wildcard"),
        ("shop", "web-preview-1.preview.localhost", 422, "preview domain"),
        ("shop", "exa mple.com", 422, "host"),
        ("shop", "app.shop.example", 409, "already domain"),
        ("rival", "app.shop.example", 409, "ask an operator"),
    ] {
        let (got, body) = call(
            &server,
            "POST",
            &format!("/v1/projects/{project}/domains"),
            json!({"host": host, "service": "web"}),
        );
        assert_eq!(got, status, "{host}: {body}");
        assert!(body.to_string().contains(says), "{host}: {body}");
    }
    let (status, body) = call(
        &server,
        "POST",
        "/v1/projects/shop/domains",
        json!({"host": "api.shop.example", "service": "nope"}),
    );
    assert_eq!(status, 404, "{body}");
    let (_, list) = call(&server, "GET", "/v1/projects/shop/domains", Value::Null);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    let (_, rival) = call(&server, "GET", "/v1/projects/rival/domains", Value::Null);
    assert_eq!(rival, json!([]));

    // Removal takes the route with it, and is audited with the rest.
    let (code, out, err) = enclii(&server, &["domains", "rm", &id.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(routed_hosts(&server, "shop"), ["*.shop.example"]);
    let (_, audit) = call(&server, "GET", "/v1/audit?project=shop", Value::Null);
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .filter(|a| a.starts_with("domain."))
        .collect();
    for action in ["domain.create", "domain.recheck", "domain.verify", "domain.delete"] {
        assert!(actions.contains(&action), "{action} not in {actions:?}");
    }
    assert!(!audit.to_string().contains(&token), "the audit trail holds no token");
}

/// A route (`POST …/routes`, `enclii routes add`, a spec's `routes`) is accepted only on a host the
/// project has proven: a verified domain of its own on the host or above it, or a name reserved
/// from public DNS. The test zone `shop.io` is served only by the test DNS server.
#[test]
fn routes_need_a_host_the_project_proved_and_reserved_names_need_none() {
    let dns = TestDns::start();
    let server = server(&dns, &[]);
    service(&server, "shop", "web");
    service(&server, "rival", "web");
    let route = |project: &str, host: &str| {
        call(
            &server,
            "POST",
            &format!("/v1/projects/{project}/routes"),
            json!({"service": "web", "host": host}),
        )
    };
    let spec_with_route = |host: &str| {
        json!({
            "apiVersion": "enclii.dev/v1", "kind": "Service",
            "metadata": {"project": "shop", "environment": "prod", "name": "web"},
            "spec": {"source": {"git": {"repository": "https://github.com/org/shop", "branch": "main"}},
                     "runtime": {"ports": [3000]}, "routes": [{"host": host}]}
        })
    };

    // Unproven: refused with what, where and how, and nothing stored.
    let (status, body) = route("shop", "api.shop.io");
    assert_eq!(status, 403, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .starts_with("host: project `shop` has not proven it owns host `api.shop.io`"),
        "{body}"
    );
    assert!(body["hint"].as_str().unwrap().contains("enclii domains add"), "{body}");
    let (code, out, err) = enclii(&server, &["routes", "add", "--host", "api.shop.io", "--service", "web"]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("has not proven it owns host `api.shop.io`"), "{err}");
    let (status, body) = call(
        &server,
        "POST",
        "/v1/projects/shop/services",
        spec_with_route("www.shop.io"),
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body["detail"].as_str().unwrap().starts_with("spec.routes[0].host:"),
        "{body}"
    );
    let (_, web) = call(&server, "GET", "/v1/projects/shop/services/web", Value::Null);
    assert_eq!(web["spec_version"], 1, "nothing half-applied: {web}");
    assert!(routed_hosts(&server, "shop").is_empty());

    // Proving the apex covers it and everything under it, for this project only.
    let (status, added) = call(
        &server,
        "POST",
        "/v1/projects/shop/domains",
        json!({"host": "shop.io", "service": "web"}),
    );
    assert_eq!(status, 201, "{added}");
    let id = added["id"].as_i64().unwrap();
    dns.set_txt(
        "_enclii-challenge.shop.io",
        added["ownership"]["value"].as_str().unwrap(),
    );
    enclii(&server, &["domains", "verify", &id.to_string()]);
    wait_until(Duration::from_secs(30), "verification", || {
        domain(&server, "shop", id)["status"] == "verified"
    });
    let (status, body) = route("shop", "api.shop.io");
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(
        &server,
        "POST",
        "/v1/projects/shop/services",
        spec_with_route("*.stage.shop.io"),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        routed_hosts(&server, "shop"),
        ["*.stage.shop.io", "api.shop.io", "shop.io"]
    );
    let (status, body) = route("rival", "rival.shop.io");
    assert_eq!(status, 403, "another project's proof is not this one's: {body}");

    // Names nobody can register need no proof.
    for host in ["rival.test", "app.localhost", "www.example.com", "svc.internal"] {
        let (status, body) = route("rival", host);
        assert_eq!(status, 201, "{host}: {body}");
    }
}

#[test]
fn a_domain_never_proven_fails_at_its_deadline_and_a_recheck_revives_it() {
    let dns = TestDns::start();
    let server = server(&dns, &[("ENCLII_DOMAIN_VERIFY_SECONDS", "2")]);
    service(&server, "shop", "web");
    let (status, added) = call(
        &server,
        "POST",
        "/v1/projects/shop/domains",
        json!({"host": "late.shop.example", "service": "web"}),
    );
    assert_eq!(status, 201, "{added}");
    let id = added["id"].as_i64().unwrap();
    // The next check (30 s on) would fall past the 2-second window: the first miss fails it.
    wait_until(Duration::from_secs(30), "the domain to fail", || {
        domain(&server, "shop", id)["status"] == "failed"
    });
    let failed = domain(&server, "shop", id);
    let detail = failed["detail"].as_str().unwrap();
    assert!(
        detail.contains("not verified before its deadline") && detail.contains("no TXT record"),
        "{failed}"
    );
    assert!(routed_hosts(&server, "shop").is_empty());

    dns.set_txt(
        "_enclii-challenge.late.shop.example",
        added["ownership"]["value"].as_str().unwrap(),
    );
    let (code, out, err) = enclii(&server, &["domains", "verify", &id.to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    wait_until(Duration::from_secs(30), "verification after the re-check", || {
        domain(&server, "shop", id)["status"] == "verified"
    });
    assert_eq!(routed_hosts(&server, "shop"), ["late.shop.example"]);
}

#[test]
fn verified_domains_generated_hosts_and_route_changes_reach_the_router_live_and_unproven_ones_do_not() {
    let _cleanup = Cleanup("domainsrouted");
    let dns = TestDns::start();
    let p = platform_in(
        "domainsrouted",
        "prod",
        json!({}),
        &[
            ("ENCLII_DNS_RESOLVER", dns.resolver.as_str()),
            ("ENCLII_BASE_DOMAIN", "apps.test"),
        ],
    );
    let project = p.project;
    let add = |host: &str| {
        let (status, body) = call(
            &p.server,
            "POST",
            &format!("/v1/projects/{project}/domains"),
            json!({"host": host, "service": "api"}),
        );
        assert_eq!(status, 201, "{body}");
        body
    };
    // Hosts under the base domain are the platform's: generated, never claimed.
    let (status, body) = call(
        &p.server,
        "POST",
        &format!("/v1/projects/{project}/domains"),
        json!({"host": "api.other.apps.test", "service": "api"}),
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("base domain `apps.test`"),
        "{body}"
    );
    let proven = add("www.routed.example");
    add("www.unproven.example");
    dns.set_txt(
        "_enclii-challenge.www.routed.example",
        proven["ownership"]["value"].as_str().unwrap(),
    );
    let id = proven["id"].as_i64().unwrap();
    call(
        &p.server,
        "POST",
        &format!("/v1/projects/{project}/domains/{id}/verify"),
        Value::Null,
    );
    wait_until(Duration::from_secs(30), "verification", || {
        let (_, d) = call(
            &p.server,
            "GET",
            &format!("/v1/projects/{project}/domains/{id}"),
            Value::Null,
        );
        d["status"] == "verified"
    });

    let release = ready_release(&p, &head(&p));
    let deployment = deploy(&p, release, "deployments");
    wait_status(&p.server, deployment["id"].as_i64().unwrap(), &["succeeded"], None);
    let (status, body) = get(&p.router, "www.routed.example", "/");
    assert_eq!(status, 200, "{body}");
    let (status, _) = get(&p.router, "www.unproven.example", "/");
    assert_eq!(status, 404);
    // The generated host needs no proof: `<service>.<project>.<base domain>`.
    let (status, body) = get(&p.router, &format!("api.{project}.apps.test"), "/");
    assert_eq!(status, 200, "{body}");

    // Live, without a deploy: a domain verified now is served, a removed one no longer.
    let later = add("later.routed.example");
    dns.set_txt(
        "_enclii-challenge.later.routed.example",
        later["ownership"]["value"].as_str().unwrap(),
    );
    let later_id = later["id"].as_i64().unwrap();
    call(
        &p.server,
        "POST",
        &format!("/v1/projects/{project}/domains/{later_id}/verify"),
        Value::Null,
    );
    wait_until(
        Duration::from_secs(30),
        "the verified domain served without a deploy",
        || get(&p.router, "later.routed.example", "/").0 == 200,
    );
    let (status, body) = call(
        &p.server,
        "DELETE",
        &format!("/v1/projects/{project}/domains/{id}"),
        Value::Null,
    );
    assert_eq!(status, 204, "{body}");
    wait_until(Duration::from_secs(30), "the removed domain no longer served", || {
        get(&p.router, "www.routed.example", "/").0 == 404
    });
    // So is a route added or removed through the API.
    let (status, route) = call(
        &p.server,
        "POST",
        &format!("/v1/projects/{project}/routes"),
        json!({"host": "plain.routed.example", "service": "api"}),
    );
    assert_eq!(status, 201, "{route}");
    wait_until(Duration::from_secs(30), "the new route served without a deploy", || {
        get(&p.router, "plain.routed.example", "/").0 == 200
    });
    let route_id = route["id"].as_i64().unwrap();
    call(
        &p.server,
        "DELETE",
        &format!("/v1/projects/{project}/routes/{route_id}"),
        Value::Null,
    );
    wait_until(Duration::from_secs(30), "the removed route no longer served", || {
        get(&p.router, "plain.routed.example", "/").0 == 404
    });
    assert_eq!(get(&p.router, "later.routed.example", "/").0, 200);
}
