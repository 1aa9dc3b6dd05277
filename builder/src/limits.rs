//! CPU and memory limits of builds. The engine's embedded BuildKit runs every `RUN` step in a
//! container under one cgroup, `docker/buildkit`, and takes no per-build resource options (the
//! engine's `--memory`/`--cpu-quota` build flags are the legacy builder's); so the limits are set
//! on that cgroup and bound all builds running on the builder together.

use std::path::Path;

use crate::BuildConfig;

const ROOT: &str = "/sys/fs/cgroup";

/// Applies the configured limits; returns a line for the build log, `None` when none are set.
/// An error says why the limits could not be applied (a build is never run silently unlimited).
pub fn apply(config: &BuildConfig) -> Result<Option<String>, String> {
    if config.build_cpus.is_none() && config.build_memory_bytes.is_none() {
        return Ok(None);
    }
    let unified = Path::new(ROOT).join("cgroup.controllers").exists();
    let write = |controller: &str, file: &str, value: String| -> Result<(), String> {
        let dir = if unified {
            Path::new(ROOT).join("docker/buildkit")
        } else {
            Path::new(ROOT).join(controller).join("docker/buildkit")
        };
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(dir.join(file), &value))
            .map_err(|e| {
                format!(
                    "build failed: cannot apply the build limits ({}/{file}: {e}); run the worker as root on the builder's host or unset ENCLII_BUILD_CPUS/ENCLII_BUILD_MEMORY_MIB",
                    dir.display()
                )
            })
    };
    if let Some(cpus) = config.build_cpus {
        let quota = (cpus * 100_000.0).round() as u64;
        if unified {
            write("cpu", "cpu.max", format!("{quota} 100000"))?;
        } else {
            write("cpu", "cpu.cfs_period_us", "100000".into())?;
            write("cpu", "cpu.cfs_quota_us", quota.to_string())?;
        }
    }
    if let Some(bytes) = config.build_memory_bytes {
        if unified {
            write("memory", "memory.max", bytes.to_string())?;
        } else {
            write("memory", "memory.limit_in_bytes", bytes.to_string())?;
        }
    }
    Ok(Some(format!(
        "build limits: {} CPUs, {} MiB of memory (shared by the builds running on this builder)",
        config.build_cpus.map_or("unlimited".into(), |c| c.to_string()),
        config
            .build_memory_bytes
            .map_or("unlimited".into(), |b| (b >> 20).to_string()),
    )))
}
