//! Without an OTLP endpoint nothing of OpenTelemetry runs: no export thread, no span linker (the
//! queue makes up its own ids). One test per binary: `init` installs the process's subscriber.

use std::time::Duration;

use enclii_queue::trace;
use enclii_telemetry::{Config, Export};

/// The names of this process's threads.
fn threads() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

#[test]
fn export_off_starts_no_exporter() {
    let config = Config {
        role: "all".into(),
        ..Config::default()
    };
    if Export::resolve(&config, |name| std::env::var(name).ok()) != Export::Off {
        eprintln!("skipped: this environment configures an OTLP endpoint (OTEL_EXPORTER_OTLP_*)");
        return;
    }
    let mut telemetry = enclii_telemetry::init(&config).unwrap();
    assert_eq!(telemetry.export(), &Export::Off);
    let span = tracing::info_span!("job", trace_id = tracing::field::Empty);
    let ctx = trace::attach(&span, None);
    span.in_scope(|| tracing::info!("inside"));
    drop(span);
    std::thread::sleep(Duration::from_millis(50));
    let threads = threads();
    assert!(
        !threads.iter().any(|name| name.starts_with("OpenTelemetry")),
        "{threads:?}"
    );
    assert!(trace::set_span_linker(|_, _| None), "no span linker was installed");
    assert_ne!(ctx.trace_id, [0; 16], "the queue made up the ids");
    telemetry.shutdown();
}
