//! HTTPS end to end (issue 16, item 2): a real `enclii server` on the Docker target orders
//! certificates from a real ACME server (Pebble, `support/acme.rs`) over HTTP-01 answered by its
//! own router, and serves them on its TLS listener. From `POST …/domains` to a page fetched over
//! HTTPS with Pebble's root trusted; plain HTTP redirected unless the route says
//! `tls: {redirect: false}`; a certificate file for hosts its names cover; an unverified host
//! neither routed nor served; a generated host's certificate ordered on its first TLS request; a
//! failed order visible with the ACME server's reason; a restarted
//! server serving its stored certificates without ordering again; renewal (the renewal window
//! set past the certificate's lifetime, the clock we control); and removal with the certificate.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};
use support::acme::{TestAcme, https_get, make_certificate, served_serial};
use support::deploy::{Cleanup, Platform, deploy, get, head, platform_in, ready_release, wait_status};
use support::dns::TestDns;
use support::free_port;
use support::pipeline::{call, wait_until};

const PROJECT: &str = "httpsdomains";

fn domain(p: &Platform, id: i64) -> Value {
    let (status, body) = call(
        &p.server,
        "GET",
        &format!("/v1/projects/{PROJECT}/domains/{id}"),
        Value::Null,
    );
    assert_eq!(status, 200, "{body}");
    body
}

/// Adds a domain for `api`, publishes its ownership record and waits until it is verified.
fn verified_domain(p: &Platform, dns: &TestDns, host: &str) -> i64 {
    let (status, added) = call(
        &p.server,
        "POST",
        &format!("/v1/projects/{PROJECT}/domains"),
        json!({"host": host, "service": "api"}),
    );
    assert_eq!(status, 201, "{added}");
    let id = added["id"].as_i64().unwrap();
    dns.set_txt(
        &format!("_enclii-challenge.{host}"),
        added["ownership"]["value"].as_str().unwrap(),
    );
    call(
        &p.server,
        "POST",
        &format!("/v1/projects/{PROJECT}/domains/{id}/verify"),
        Value::Null,
    );
    wait_until(Duration::from_secs(30), "the domain's verification", || {
        domain(p, id)["status"] == "verified"
    });
    id
}

/// Waits until the domain's certificate reaches `status`; the domain's view then.
fn certificate(p: &Platform, acme: &TestAcme, id: i64, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let view = domain(p, id);
        if done(&view["certificate"]) {
            return view;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: the domain is {view}\n--- pebble ---\n{}\n--- server ---\n{}",
            acme.log(),
            std::fs::read_to_string(p.server.data.with_extension("log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The plain-HTTP response head from the router for `host` (status line and headers, lowercase).
fn head_of(router: &str, host: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(router).unwrap();
    write!(
        stream,
        "GET {path}?q=1 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response.split("\r\n\r\n").next().unwrap().to_ascii_lowercase()
}

fn audit_actions(p: &Platform) -> Vec<String> {
    let (_, audit) = call(&p.server, "GET", &format!("/v1/audit?project={PROJECT}"), Value::Null);
    audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn verified_domains_get_acme_certificates_served_over_https_through_the_router_and_renewed() {
    let _cleanup = Cleanup(PROJECT);
    let dns = TestDns::start();
    let router_port = free_port();
    let router = format!("127.0.0.1:{router_port}");
    let tls = format!("127.0.0.1:{}", free_port());
    let acme = TestAcme::start(&dns, router_port);
    // A certificate file for `*.files.example`, from a CA of its own.
    let files = support::data_dir();
    std::fs::create_dir_all(&files).unwrap();
    make_certificate(&files, "wildcard", &["*.files.example"]);
    let (file_cert, file_key, file_root) = (
        files.join("wildcard.pem").display().to_string(),
        files.join("wildcard.key").display().to_string(),
        files.join("wildcard-ca.pem").display().to_string(),
    );
    let mut p = platform_in(
        PROJECT,
        "prod",
        json!({}),
        &[
            ("ENCLII_DNS_RESOLVER", dns.resolver.as_str()),
            ("ENCLII_ROUTER_LISTEN", router.as_str()),
            ("ENCLII_ROUTER_TLS_LISTEN", tls.as_str()),
            ("ENCLII_ACME_DIRECTORY", acme.directory.as_str()),
            ("ENCLII_ACME_CA_ROOT", acme.ca_root.as_str()),
            ("ENCLII_ACME_EMAIL", "ops@httpsdomains.example"),
            ("ENCLII_ROUTER_TLS_CERT", file_cert.as_str()),
            ("ENCLII_ROUTER_TLS_KEY", file_key.as_str()),
            ("ENCLII_CERT_CHECK_SECONDS", "1"),
            ("ENCLII_BASE_DOMAIN", "apps.example"),
        ],
    );
    let release = ready_release(&p, &head(&p));
    let deployment = deploy(&p, release, "deployments");
    wait_status(&p.server, deployment["id"].as_i64().unwrap(), &["succeeded"], None);

    // Verified → ordered → issued by Pebble after it fetched the HTTP-01 answer from the router.
    let id = verified_domain(&p, &dns, "secure.example");
    let issued = certificate(&p, &acme, id, "the certificate's issue", |c| c["status"] == "issued");
    assert_eq!(issued["certificate"]["orders"], 1, "{issued}");
    assert!(
        issued["certificate"]["not_after"].as_i64().unwrap() > chrono_now_ms(),
        "{issued}"
    );
    // Kept beside the test's own files: Pebble's directory goes when it stops.
    let root = files.join("pebble-issuer.pem").display().to_string();
    std::fs::copy(acme.issuer_root(), &root).unwrap();
    wait_until(Duration::from_secs(10), "the certificate served", || {
        https_get(&tls, "secure.example", "/", &root).is_ok()
    });
    let (status, body) = https_get(&tls, "secure.example", "/", &root).unwrap();
    assert_eq!(status, 200, "{body}");
    let first_serial = served_serial(&tls, "secure.example");
    assert!(first_serial.starts_with("serial="), "{first_serial}");

    // A generated host gets its certificate on its first TLS request (which fails; the next work).
    let generated = format!("api.{PROJECT}.apps.example");
    https_get(&tls, &generated, "/", &root).expect_err("no certificate before the first request");
    wait_until(
        Duration::from_secs(60),
        "the generated host's certificate on first use",
        || https_get(&tls, &generated, "/", &root).is_ok_and(|(status, _)| status == 200),
    );

    // Plain HTTP to a host with a certificate is redirected to the same URL over HTTPS.
    let response = head_of(&router, "secure.example", "/orders");
    assert!(response.starts_with("http/1.1 308"), "{response}");
    assert!(
        response.contains(&format!(
            "location: https://secure.example:{}/orders?q=1",
            tls.rsplit_once(':').unwrap().1
        )),
        "{response}"
    );

    // An unverified host is neither routed nor served over TLS.
    let (status, pending) = call(
        &p.server,
        "POST",
        &format!("/v1/projects/{PROJECT}/domains"),
        json!({"host": "unproven.example", "service": "api"}),
    );
    assert_eq!(status, 201, "{pending}");
    assert_eq!(get(&router, "unproven.example", "/").0, 404);
    let refused = https_get(&tls, "unproven.example", "/", &root).unwrap_err();
    assert!(
        refused.to_lowercase().contains("alert") || refused.contains("SSL"),
        "{refused}"
    );

    // A certificate file serves the hosts its names cover; `tls: {redirect: false}` keeps HTTP.
    for (host, redirect) in [("open.files.example", false), ("shut.files.example", true)] {
        let (status, body) = call(
            &p.server,
            "POST",
            &format!("/v1/projects/{PROJECT}/routes"),
            json!({"host": host, "service": "api", "tls": {"redirect": redirect}}),
        );
        assert_eq!(status, 201, "{body}");
    }
    wait_until(Duration::from_secs(30), "the routes applied", || {
        get(&router, "open.files.example", "/").0 == 200 && get(&router, "shut.files.example", "/").0 != 404
    });
    let response = head_of(&router, "shut.files.example", "/");
    assert!(response.starts_with("http/1.1 308"), "{response}");
    let (status, _) = https_get(&tls, "open.files.example", "/", &file_root).unwrap();
    assert_eq!(status, 200);
    https_get(&tls, "secure.example", "/", &file_root).expect_err("secure.example has Pebble's certificate");

    // A failed order is on the domain with the ACME server's reason; the host is still routed.
    dns.set_a("astray.example", "127.0.0.2");
    let astray = verified_domain(&p, &dns, "astray.example");
    let failed = certificate(&p, &acme, astray, "the failed order", |c| c["status"] == "failed");
    let error = failed["certificate"]["error"].as_str().unwrap();
    assert!(error.contains("127.0.0.2") || error.contains("connection"), "{failed}");
    assert!(failed["certificate"]["not_after"].is_null(), "{failed}");
    // DNS fixed, "check now" orders again at once (not an hour later).
    dns.clear_a("astray.example");
    let (status, body) = call(
        &p.server,
        "POST",
        &format!("/v1/projects/{PROJECT}/domains/{astray}/verify"),
        Value::Null,
    );
    assert_eq!(status, 202, "{body}");
    let fixed = certificate(&p, &acme, astray, "the order after the fix", |c| {
        c["status"] == "issued"
    });
    assert_eq!(fixed["certificate"]["orders"], 2, "{fixed}");

    // Restarted, the server serves what the store holds without ordering again.
    p.restart(&[]);
    wait_until(
        Duration::from_secs(30),
        "the stored certificate served after a restart",
        || https_get(&tls, "secure.example", "/", &root).is_ok_and(|(status, _)| status == 200),
    );
    assert_eq!(served_serial(&tls, "secure.example"), first_serial);
    assert_eq!(domain(&p, id)["certificate"]["orders"], 1);

    // Renewal: with a renewal window longer than the certificate's life it is due at once; the
    // scheduler orders it again and the router serves the new one.
    p.restart(&[("ENCLII_CERT_RENEW_DAYS", "36500")]);
    let renewed = certificate(&p, &acme, id, "the renewal", |c| {
        c["status"] == "issued" && c["orders"].as_i64().unwrap() >= 2
    });
    assert!(
        renewed["certificate"]["issued_at"].as_i64() > issued["certificate"]["issued_at"].as_i64(),
        "{renewed}"
    );
    wait_until(Duration::from_secs(30), "the renewed certificate served", || {
        let serial = served_serial(&tls, "secure.example");
        serial.starts_with("serial=") && serial != first_serial
    });
    let actions = audit_actions(&p);
    for action in ["certificate.order", "certificate.issue", "certificate.fail"] {
        assert!(actions.iter().any(|a| a == action), "{action} not in {actions:?}");
    }

    // The ACME server goes down: the next renewal's attempts fail and say so on the domain (the
    // queue retries them), and the host keeps its certificate.
    let serving = served_serial(&tls, "secure.example");
    let pebble_log = acme.log();
    drop(acme);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let retrying = loop {
        let view = domain(&p, id);
        let error = view["certificate"]["error"].as_str().unwrap_or_default().to_string();
        if view["certificate"]["status"] == "ordering" && error.contains("could not be reached") {
            break view;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no retry noted: {view}\n{pebble_log}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        retrying["certificate"]["error"].as_str().unwrap().contains("retrying"),
        "{retrying}"
    );
    assert_eq!(
        served_serial(&tls, "secure.example"),
        serving,
        "the last certificate still serves"
    );
    let (status, _) = https_get(&tls, "secure.example", "/", &root).unwrap();
    assert_eq!(status, 200);

    // Removed with its certificate on request: no longer routed, no longer served.
    let (status, body) = call(
        &p.server,
        "DELETE",
        &format!("/v1/projects/{PROJECT}/domains/{id}?delete_certificate=true"),
        Value::Null,
    );
    assert_eq!(status, 204, "{body}");
    wait_until(Duration::from_secs(30), "the certificate no longer served", || {
        https_get(&tls, "secure.example", "/", &root).is_err()
    });
    assert_eq!(get(&router, "secure.example", "/").0, 404);
    assert!(audit_actions(&p).iter().any(|a| a == "certificate.delete"));
    let (_, audit) = call(&p.server, "GET", &format!("/v1/audit?project={PROJECT}"), Value::Null);
    assert!(
        !audit.to_string().contains("PRIVATE KEY"),
        "the audit trail holds no key"
    );
    let _ = std::fs::remove_dir_all(&files);
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
