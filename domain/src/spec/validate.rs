//! Semantic validation of a deserialized Service Spec. Every rule runs, so one pass reports every
//! problem, each at the path of the field as written in the spec (`spec.routes[1].host`).

use std::collections::HashSet;

use super::types::*;
use super::{SpecError, SpecErrors};
use super::{rules, text};

/// Collects errors while walking the spec, tracking the current field path.
#[derive(Default)]
struct Checker {
    path: String,
    errors: Vec<SpecError>,
}

impl Checker {
    /// Runs `f` with `field` appended to the path.
    fn field(&mut self, field: &str, f: impl FnOnce(&mut Self)) {
        let len = self.path.len();
        if !self.path.is_empty() {
            self.path.push('.');
        }
        self.path.push_str(field);
        f(self);
        self.path.truncate(len);
    }

    /// Runs `f` for each item with `[i]` appended to the path.
    fn each<'a, T>(&mut self, items: &'a [T], mut f: impl FnMut(&mut Self, usize, &'a T)) {
        for (i, item) in items.iter().enumerate() {
            let len = self.path.len();
            self.path.push_str(&format!("[{i}]"));
            f(self, i, item);
            self.path.truncate(len);
        }
    }

    /// Records an error at the current path.
    fn error(&mut self, message: impl Into<String>) {
        self.errors.push(SpecError {
            path: self.path.clone(),
            message: message.into(),
        });
    }

    /// Records `result`'s error, if any, at `field` under the current path.
    fn check(&mut self, field: &str, result: Result<(), String>) {
        if let Err(message) = result {
            self.field(field, |c| c.error(message));
        }
    }

    /// Checks that `value` lies in `lo..=hi`.
    fn range(&mut self, field: &str, value: u32, lo: u32, hi: u32) {
        self.check(field, in_range(value, lo, hi));
    }

    fn finish(self) -> Result<(), SpecErrors> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(SpecErrors(self.errors))
        }
    }
}

fn in_range(value: u32, lo: u32, hi: u32) -> Result<(), String> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(format!("must be between {lo} and {hi} (got {value})"))
    }
}

fn port(value: u32) -> Result<(), String> {
    in_range(value, 1, 65535)
}

/// Remembers keys seen so far and reports repeats.
struct Unique<K>(HashSet<K>);

impl<K: std::hash::Hash + Eq> Unique<K> {
    fn new() -> Self {
        Unique(HashSet::new())
    }

    fn check(&mut self, key: K, what: impl FnOnce() -> String) -> Result<(), String> {
        if self.0.insert(key) {
            Ok(())
        } else {
            Err(format!("duplicate {}", what()))
        }
    }
}

impl ServiceSpec {
    /// Checks every semantic rule, returning all violations.
    pub fn validate(&self) -> Result<(), SpecErrors> {
        let mut c = Checker::default();
        if self.api_version != API_VERSION {
            c.field("apiVersion", |c| {
                c.error(format!("must be `{API_VERSION}` (got {:?})", self.api_version))
            });
        }
        if self.kind != KIND {
            c.field("kind", |c| c.error(format!("must be `{KIND}` (got {:?})", self.kind)));
        }
        c.field("metadata", |c| {
            c.check("project", rules::validate_slug(&self.metadata.project));
            c.check(
                "environment",
                rules::validate_environment_name(&self.metadata.environment),
            );
            c.check("name", rules::validate_slug(&self.metadata.name));
        });
        c.field("spec", |c| spec(c, &self.spec));
        c.finish()
    }
}

fn spec(c: &mut Checker, s: &Spec) {
    c.field("build", |c| {
        c.check("dockerfile", rules::validate_repo_relative_path(&s.build.dockerfile));
        c.check("context", rules::validate_repo_relative_path(&s.build.context));
        for name in s.build.args.keys() {
            c.check(&format!("args.{name}"), rules::validate_env_name(name));
        }
        for (i, name) in s.build.secrets.iter().enumerate() {
            c.check(&format!("secrets[{i}]"), rules::validate_env_name(name));
        }
    });
    if let Some(source) = &s.source {
        c.field("source.git", |c| {
            c.check("repository", rules::validate_git_url(&source.git.repository));
            c.check("branch", rules::validate_git_ref(&source.git.branch));
        });
    } else if s.runtime.image.is_none() {
        c.field("source", |c| {
            c.error("is required unless spec.runtime.image names a prebuilt image")
        });
    }
    c.field("runtime", |c| runtime(c, &s.runtime));
    c.field("health", |c| {
        if let Some(p) = &s.health.readiness {
            c.field("readiness", |c| probe(c, p, &s.runtime.ports));
        }
        if let Some(p) = &s.health.liveness {
            c.field("liveness", |c| probe(c, p, &s.runtime.ports));
        }
    });
    c.field("routes", |c| {
        let mut seen = Unique::new();
        c.each(&s.routes, |c, _, r| {
            c.check("host", rules::validate_hostname(&r.host));
            c.check("path", text::validate_url_path(&r.path));
            let key = (r.host.as_str(), r.path.as_str());
            c.check("host", seen.check(key, || format!("route {} {}", r.host, r.path)));
        });
        if !s.routes.is_empty() && s.runtime.ports.is_empty() {
            c.error("routes need a port to send traffic to: set spec.runtime.ports");
        }
    });
    c.field("env", |c| {
        let mut seen = Unique::new();
        c.each(&s.env, |c, _, e| {
            c.check("name", rules::validate_env_name(&e.name));
            c.check("name", seen.check(e.name.as_str(), || format!("variable {}", e.name)));
            if let Some(addon) = &e.from_addon {
                if !e.value.is_empty() {
                    c.error("give either `value` or `fromAddon`, not both");
                }
                c.field("fromAddon", |c| {
                    c.check("name", rules::validate_slug(&addon.name));
                    c.check("key", rules::validate_addon_key(&addon.key));
                });
            }
        });
    });
    c.field("envFrom", |c| {
        c.each(&s.env_from, |c, _, e| match (&e.secret_ref, &e.addon) {
            (Some(secret), None) => c.check("secretRef", rules::validate_slug(secret)),
            (None, Some(addon)) => c.check("addon", rules::validate_slug(addon)),
            _ => c.error("give exactly one of `secretRef` (a secret's name) or `addon` (an add-on's name)"),
        });
    });
    c.field("volumes", |c| {
        let (mut names, mut mounts) = (Unique::new(), Unique::new());
        c.each(&s.volumes, |c, _, v| {
            c.check("name", rules::validate_slug(&v.name));
            c.check(
                "name",
                names.check(v.name.as_str(), || format!("volume name {}", v.name)),
            );
            c.check("mountPath", rules::validate_absolute_path(&v.mount_path));
            let mount = v.mount_path.trim_end_matches('/');
            c.check(
                "mountPath",
                mounts.check(mount, || format!("mount path {}", v.mount_path)),
            );
            c.check("size", rules::parse_memory_bytes(&v.size).map(drop));
            if let Some(class) = &v.class {
                c.check("class", rules::validate_dns_subdomain(class));
            }
        });
    });
    c.field("jobs", |c| {
        let mut names = Unique::new();
        c.each(&s.jobs, |c, _, j| {
            c.check("name", rules::validate_slug(&j.name));
            c.check("name", names.check(j.name.as_str(), || format!("job name {}", j.name)));
            c.check("schedule", rules::validate_cron(&j.schedule));
            if j.args.is_empty() {
                c.field("args", |c| c.error("must not be empty: give the command to run"));
            }
        });
    });
    if let Some(hpa) = &s.autoscaling.hpa {
        c.field("autoscaling.hpa", |c| {
            c.range("cpuTargetUtilization", hpa.cpu_target_utilization, 1, 100);
        });
    }
    c.field("deploy", |c| deploy(c, &s.deploy));
}

fn runtime(c: &mut Checker, r: &Runtime) {
    if let Some(image) = &r.image {
        c.check("image", image_reference(image));
    }
    if r.cmd.as_ref().is_some_and(Vec::is_empty) {
        c.field("cmd", |c| {
            c.error("must not be empty when given (leave it out to use the image's command)")
        });
    }
    c.field("ports", |c| {
        let mut seen = Unique::new();
        c.each(&r.ports, |c, _, p| {
            if let Err(e) = port(*p).and_then(|()| seen.check(*p, || format!("port {p}"))) {
                c.error(e);
            }
        });
    });
    if let Some(cpu) = &r.cpu {
        c.check("cpu", rules::parse_cpu_millis(cpu).map(drop));
    }
    if let Some(memory) = &r.memory {
        c.check("memory", rules::parse_memory_bytes(memory).map(drop));
    }
    c.field("replicas", |c| {
        let Replicas { min, max } = r.replicas;
        if min > max {
            c.field("min", |c| c.error(format!("must be ≤ max (got {min} > {max})")));
        }
        c.range("max", max, 1, 1000);
    });
}

/// An image reference, possibly with `{{ … }}` templates: not empty, no whitespace outside the
/// templates, templates closed.
fn image_reference(image: &str) -> Result<(), String> {
    if image.trim().is_empty() {
        return Err("must not be empty".into());
    }
    let mut rest = image;
    while let Some(start) = rest.find("{{") {
        check_image_literal(&rest[..start], image)?;
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("has an unclosed `{{{{` template in {image:?}"))?;
        rest = &after[end + 2..];
    }
    check_image_literal(rest, image)
}

fn check_image_literal(part: &str, image: &str) -> Result<(), String> {
    if part.contains("}}") {
        return Err(format!("has a `}}}}` without `{{{{` in {image:?}"));
    }
    match part.chars().find(|c| c.is_whitespace() || c.is_control()) {
        Some(c) => Err(format!(
            "must not contain {c:?} outside `{{{{ … }}}}` templates (got {image:?})"
        )),
        None => Ok(()),
    }
}

fn probe(c: &mut Checker, p: &Probe, runtime_ports: &[u32]) {
    match (&p.http_get, p.tcp_socket) {
        (Some(_), Some(_)) => c.error("set only one of `httpGet` and `tcpSocket`"),
        (None, None) => c.error("set `httpGet` (a path) or `tcpSocket` (a port)"),
        (Some(path), None) => {
            c.check("httpGet", text::validate_url_path(path));
            match p.port {
                Some(n) => c.check("port", port(n)),
                None if runtime_ports.is_empty() => {
                    c.field("port", |c| c.error("is required when spec.runtime.ports is empty"));
                }
                None => {}
            }
        }
        (None, Some(n)) => {
            c.check("tcpSocket", port(n));
            if p.port.is_some() {
                c.field("port", |c| {
                    c.error("is only used with `httpGet`; `tcpSocket` names its port")
                });
            }
        }
    }
    if let Some(t) = p.timeout_seconds {
        c.range("timeoutSeconds", t, 1, 300);
    }
    if let Some(t) = p.period_seconds {
        c.range("periodSeconds", t, 1, 3600);
    }
    if let Some(t) = p.failure_threshold {
        c.range("failureThreshold", t, 1, 100);
    }
}

fn deploy(c: &mut Checker, d: &Deploy) {
    c.field("steps", |c| {
        if d.steps.is_empty() {
            c.error("must not be empty (the last step is 100)");
        }
        c.each(&d.steps, |c, i, &step| {
            if let Err(e) = in_range(step, 1, 100) {
                c.error(e);
            } else if let Some(&prev) = i.checked_sub(1).and_then(|j| d.steps.get(j))
                && step <= prev
            {
                c.error(format!(
                    "must be greater than the previous step (got {step} after {prev})"
                ));
            }
        });
        if let Some(&last) = d.steps.last()
            && last != 100
        {
            c.error(format!("must end with 100 (got {last})"));
        }
    });
    c.field("analysis", |c| {
        let rate = d.analysis.max_error_rate;
        if !(0.0..=1.0).contains(&rate) {
            c.field("maxErrorRate", |c| {
                c.error(format!("must be between 0 and 1 (got {rate})"))
            });
        }
        c.check("window", rules::parse_duration(&d.analysis.window).map(drop));
        if let Some(latency) = &d.analysis.max_p95_latency {
            c.check("maxP95Latency", rules::parse_duration(latency).map(drop));
        }
    });
}
