//! Build resource limits on the real builder. A test binary of its own: the limits bind every
//! build on the engine's BuildKit, so no other build may run meanwhile (test binaries run one at a
//! time). Needs what `pipeline.rs` needs.

mod support;

use std::time::Duration;

use serde_json::json;
use support::pipeline::*;

/// Puts the builder's limits back to unlimited, also when the test fails.
struct Unlimited;

impl Drop for Unlimited {
    fn drop(&mut self) {
        for (dir, file) in [("memory", "memory.limit_in_bytes"), ("cpu", "cpu.cfs_quota_us")] {
            let _ = std::fs::write(format!("/sys/fs/cgroup/{dir}/docker/buildkit/{file}"), "-1");
        }
        let _ = std::fs::write("/sys/fs/cgroup/docker/buildkit/memory.max", "max");
        let _ = std::fs::write("/sys/fs/cgroup/docker/buildkit/cpu.max", "max 100000");
    }
}

#[test]
fn a_build_over_its_memory_limit_fails_and_one_within_it_passes() {
    let _restore = Unlimited;
    let server = server_with_limits();
    // 400 MB held in a shell variable: far over 96 MiB.
    let (url, greedy) = holding(400000000);
    service(&server, &url, json!({}));
    let r = build_and_wait(&server, &greedy, Duration::from_secs(180));
    assert_eq!(r["status"], "failed", "a build over its memory limit must fail: {r}");
    let failure = r["failure"].as_str().unwrap();
    assert!(failure.starts_with("build failed at Dockerfile:3"), "{failure}");

    let log = step_log(&server, &r, "build");
    assert!(log.contains("build limits: 1 CPUs, 96 MiB"), "{log}");

    // Under the same limits a modest build passes: the limit, not the builder, stopped the first.
    let modest = server_with_limits();
    let (url, sha) = holding(4000000);
    service(&modest, &url, json!({}));
    let r = build_and_wait(&modest, &sha, Duration::from_secs(180));
    assert_eq!(r["status"], "ready", "{r}");
    let log = step_log(&modest, &r, "build");
    assert!(log.contains("held 4000000 bytes"), "{log}");
}

/// A repository whose build holds `bytes` bytes of memory in one `RUN` step.
fn holding(bytes: u64) -> (String, String) {
    // A fresh nonce first: the step must run under the limits, not come from the cache.
    let nonce = support::data_dir().file_name().unwrap().to_string_lossy().to_string();
    let dockerfile = format!(
        "FROM {BASE_IMAGE}\nRUN echo {nonce} > /nonce\nRUN x=\"$(head -c {bytes} /dev/zero | tr '\\0' a)\" && echo \"held ${{#x}} bytes\"\n"
    );
    repository(&[("Dockerfile", &dockerfile)])
}

fn server_with_limits() -> Server {
    server(&[("ENCLII_BUILD_MEMORY_MIB", "96"), ("ENCLII_BUILD_CPUS", "1")])
}
