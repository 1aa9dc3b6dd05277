//! Shutdown's flush is bounded: with an OTLP endpoint that accepts connections and never
//! answers, `Telemetry::shutdown` returns within `FLUSH_TIMEOUT` (plus scheduling slack), so a
//! silent collector cannot hold up a server's exit after SIGTERM. One test per binary: `init`
//! installs the process's subscriber.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use enclii_telemetry::{Config, Export, FLUSH_TIMEOUT};

#[test]
fn a_silent_collector_cannot_hold_up_shutdown() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and keeps every connection, reads nothing, answers nothing.
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        for stream in listener.incoming().flatten() {
            kept.push(stream);
        }
    });
    let mut telemetry = enclii_telemetry::init(&Config {
        otlp_endpoint: Some(format!("http://user:s3cr3t@127.0.0.1:{port}")),
        role: "all".into(),
        ..Config::default()
    })
    .unwrap();
    let Export::Endpoint(url) = telemetry.export() else {
        panic!("{:?}", telemetry.export())
    };
    assert_eq!(url.to_string(), format!("http://***@127.0.0.1:{port}/v1/traces"));
    for n in 0..100 {
        tracing::info_span!("job", n).in_scope(|| tracing::debug!("work"));
    }
    let started = Instant::now();
    telemetry.shutdown();
    let took = started.elapsed();
    assert!(took < FLUSH_TIMEOUT + Duration::from_secs(2), "shutdown took {took:?}");
}
