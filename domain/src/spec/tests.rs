use std::time::Duration;

use super::*;

const MINIMAL: &str = "apiVersion: enclii.dev/v1
kind: Service
metadata: { project: shop, environment: dev, name: web }
spec:
  source: { git: { repository: 'git@github.com:org/shop.git', branch: main } }
";

fn example() -> ServiceSpec {
    ServiceSpec::parse(EXAMPLE, SpecFormat::Yaml).unwrap()
}

/// Parses the example with `edit` applied to its JSON form, returning the errors.
fn errors_after(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<(String, String)> {
    let mut value = serde_json::to_value(example()).unwrap();
    edit(&mut value);
    match ServiceSpec::parse(&value.to_string(), SpecFormat::Json) {
        Ok(_) => vec![],
        Err(e) => e.0.into_iter().map(|e| (e.path, e.message)).collect(),
    }
}

/// Asserts that the edit produces exactly one error, at `path`, whose message contains `needle`.
#[track_caller]
fn rejects(path: &str, needle: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let errors = errors_after(edit);
    assert!(
        errors.len() == 1 && errors[0].0 == path && errors[0].1.contains(needle),
        "expected one error at {path} containing {needle:?}, got {errors:?}"
    );
}

#[track_caller]
fn accepts(edit: impl FnOnce(&mut serde_json::Value)) {
    let errors = errors_after(edit);
    assert!(errors.is_empty(), "{errors:?}");
}

fn yaml_err(text: &str) -> SpecErrors {
    ServiceSpec::parse(text, SpecFormat::Yaml).unwrap_err()
}

#[test]
fn the_product_example_parses_with_every_field() {
    let s = example();
    assert_eq!(s.metadata.project, "solarpunk-saas");
    assert_eq!(s.spec.build, Build::default());
    let git = &s.spec.source.as_ref().unwrap().git;
    assert_eq!(
        (git.repository.as_str(), git.branch.as_str()),
        ("https://github.com/org/repo", "main")
    );
    assert_eq!(
        s.spec.runtime.image.as_deref(),
        Some("registry.example/org/api:{{ git.sha }}")
    );
    assert_eq!(s.spec.runtime.ports, [3000]);
    assert_eq!(s.spec.runtime.cpu_millis(), Some(500));
    assert_eq!(s.spec.runtime.memory_bytes(), Some(512 << 20));
    assert_eq!(s.spec.runtime.replicas, Replicas { min: 2, max: 5 });
    let readiness = s.spec.health.readiness.as_ref().unwrap();
    assert_eq!(
        (readiness.http_get.as_deref(), readiness.timeout_seconds),
        (Some("/healthz"), Some(2))
    );
    assert_eq!(s.spec.routes[0].host, "api.example.dev");
    assert_eq!(s.spec.env[0].value, "production");
    assert_eq!(s.spec.env_from[0].secret_ref.as_deref(), Some("api-prod"));
    assert_eq!(s.spec.volumes[0].size_bytes(), Some(10 << 30));
    assert_eq!(s.spec.jobs[0].schedule, "0 2 * * *");
    assert_eq!(
        s.spec.autoscaling.hpa,
        Some(Hpa {
            cpu_target_utilization: 70
        })
    );
    assert_eq!(s.spec.deploy.strategy, DeployStrategy::Canary);
    assert_eq!(s.spec.deploy.analysis.window_duration(), Some(Duration::from_secs(120)));
}

#[test]
fn defaults_fill_in_missing_sections() {
    let s = ServiceSpec::parse(MINIMAL, SpecFormat::Yaml).unwrap();
    assert_eq!(s.spec.build.build_type, BuildType::Dockerfile);
    assert_eq!(
        (s.spec.build.dockerfile.as_str(), s.spec.build.context.as_str()),
        ("Dockerfile", ".")
    );
    assert_eq!(s.spec.runtime, Runtime::default());
    assert_eq!(s.spec.runtime.replicas, Replicas { min: 1, max: 1 });
    assert_eq!(s.spec.runtime.cpu_millis(), None);
    assert_eq!(s.spec.health, Health::default());
    assert!(s.spec.routes.is_empty() && s.spec.env.is_empty() && s.spec.env_from.is_empty());
    assert!(s.spec.volumes.is_empty() && s.spec.jobs.is_empty() && s.spec.autoscaling.hpa.is_none());
    assert_eq!(s.spec.deploy.strategy, DeployStrategy::Rolling);
    assert_eq!(s.spec.deploy.steps, [10, 100]);
    assert_eq!(s.spec.deploy.analysis.max_error_rate, 0.02);
    assert_eq!(s.spec.deploy.analysis.window, "2m");
    let build: Build = serde_json::from_str(r#"{"type": "auto"}"#).unwrap();
    assert_eq!(build.build_type, BuildType::Auto);
    assert_eq!(build.dockerfile, "Dockerfile");
}

#[test]
fn round_trips_through_canonical_json() {
    for text in [EXAMPLE, MINIMAL] {
        let spec = ServiceSpec::parse(text, SpecFormat::Yaml).unwrap();
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(ServiceSpec::parse(&json, SpecFormat::Json).unwrap(), spec, "{json}");
        assert_eq!(ServiceSpec::parse_any(&json).unwrap(), spec);
        let yaml = serde_yaml::to_string(&spec).unwrap();
        assert_eq!(ServiceSpec::parse(&yaml, SpecFormat::Yaml).unwrap(), spec, "{yaml}");
    }
    let json = serde_json::to_value(example()).unwrap();
    assert_eq!(json["spec"]["runtime"]["cpu"], "500m");
    assert_eq!(json["spec"]["build"]["type"], "dockerfile");
    assert_eq!(json["spec"]["envFrom"][0]["secretRef"], "api-prod");
}

#[test]
fn numbers_are_accepted_for_quantities_and_env_values() {
    let text = EXAMPLE
        .replace("cpu: 500m", "cpu: 0.5")
        .replace("memory: 512Mi", "memory: 536870912")
        .replace("value: production", "value: 3000");
    let s = ServiceSpec::parse(&text, SpecFormat::Yaml).unwrap();
    assert_eq!(s.spec.runtime.cpu.as_deref(), Some("0.5"));
    assert_eq!(s.spec.runtime.cpu_millis(), Some(500));
    assert_eq!(s.spec.runtime.memory_bytes(), Some(512 << 20));
    assert_eq!(s.spec.env[0].value, "3000");
    let s = ServiceSpec::parse(&EXAMPLE.replace("cpu: 500m", "cpu: 2"), SpecFormat::Yaml).unwrap();
    assert_eq!(s.spec.runtime.cpu_millis(), Some(2000));
}

#[test]
fn syntax_type_and_unknown_field_errors_carry_the_path() {
    let e = yaml_err(&EXAMPLE.replace("replicas:", "replicaz:"));
    assert_eq!(e.0.len(), 1);
    assert_eq!(e.0[0].path, "spec.runtime.replicaz");
    assert!(
        e.0[0].message.starts_with("unknown field `replicaz`, expected one of"),
        "{e}"
    );
    assert!(e.0[0].message.contains("line 13"), "{e}");

    let e = yaml_err(&EXAMPLE.replace("ports: [3000]", "ports: [web]"));
    assert_eq!(e.0[0].path, "spec.runtime.ports[0]", "{e}");
    assert!(e.0[0].message.contains("invalid type"), "{e}");

    let e = yaml_err(&EXAMPLE.replace("type: dockerfile", "type: docker"));
    assert_eq!(e.0[0].path, "spec.build.type", "{e}");
    assert!(
        e.0[0]
            .message
            .contains("unknown variant `docker`, expected `dockerfile` or `auto`"),
        "{e}"
    );

    let e = yaml_err(&EXAMPLE.replace("strategy: canary", "strategy: blue-green"));
    assert_eq!(e.0[0].path, "spec.deploy.strategy", "{e}");

    let e = yaml_err(&EXAMPLE.replace("{ name: NODE_ENV, value: production }", "{ value: production }"));
    assert_eq!(e.0[0].path, "spec.env[0].name", "{e}");
    assert!(e.0[0].message.starts_with("missing field `name` at line 16"), "{e}");

    let e = yaml_err(&EXAMPLE.replace("cpu: 500m", "cpu: 500m\n    cpu: 1"));
    assert_eq!(e.0[0].path, "spec.runtime.cpu", "{e}");
    assert!(e.0[0].message.starts_with("duplicate field `cpu`"), "{e}");

    let e = yaml_err(&EXAMPLE.replace("kind: Service\n", ""));
    assert_eq!(e.0[0].path, "kind", "{e}");

    let e = ServiceSpec::parse(r#"{"apiVersion": 1}"#, SpecFormat::Json).unwrap_err();
    assert_eq!(e.0[0].path, "apiVersion", "{e}");
    assert!(e.0[0].message.contains("line 1 column"), "{e}");

    let json = serde_json::to_string(&example()).unwrap();
    let e = ServiceSpec::parse(&format!("{json} {{}}"), SpecFormat::Json).unwrap_err();
    assert_eq!(e.0[0].path, ROOT_PATH);
    assert!(e.0[0].message.contains("trailing characters"), "{e}");
    let e = ServiceSpec::parse(&json.replace("\"ports\"", "\"portz\""), SpecFormat::Json).unwrap_err();
    assert_eq!(e.0[0].path, "spec.runtime.portz", "{e}");
}

#[test]
fn malformed_documents_give_clear_errors() {
    for (text, needle) in [
        ("", "empty"),
        ("   \n\t", "empty"),
        ("# just a comment\n", ""),
        ("- a\n- b\n", "sequence"),
        ("just a string", "string"),
        ("42", "integer"),
        ("{ unclosed", ""),
        ("key: [1, 2", ""),
        (&format!("{EXAMPLE}---\n{EXAMPLE}"), "more than one document"),
        ("apiVersion: enclii.dev/v1\napiVersion: enclii.dev/v1\n", "duplicate"),
        ("\t- tab", ""),
        ("&a [*a]", ""),
    ] {
        let e = yaml_err(text);
        assert_eq!(e.0.len(), 1, "{text:?}: {e}");
        assert!(!e.0[0].path.is_empty(), "{text:?}: {e}");
        assert!(e.0[0].message.contains(needle), "{text:?}: {e}");
    }
    for text in [
        "",
        "[]",
        "{",
        "{} {}",
        "null",
        "\"x\"",
        "{\"apiVersion\": \"enclii.dev/v1\"}",
    ] {
        let e = ServiceSpec::parse(text, SpecFormat::Json).unwrap_err();
        assert!(!e.0[0].path.is_empty(), "{text:?}: {e}");
    }
}

#[test]
fn semantic_errors_are_all_reported_with_paths() {
    let text = EXAMPLE
        .replace("apiVersion: enclii.dev/v1", "apiVersion: enclii.dev/v2")
        .replace("environment: prod", "environment: production")
        .replace("min: 2", "min: 7")
        .replace("ports: [3000]", "ports: [3000, 0, 3000]")
        .replace("name: NODE_ENV", "name: 1NODE");
    let e = yaml_err(&text);
    let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "apiVersion",
            "metadata.environment",
            "spec.runtime.ports[1]",
            "spec.runtime.ports[2]",
            "spec.runtime.replicas.min",
            "spec.env[0].name"
        ],
        "{e}"
    );
    let shown = e.to_string();
    assert!(
        shown.contains("spec.runtime.replicas.min: must be ≤ max (got 7 > 5); "),
        "{shown}"
    );
    assert!(
        shown.starts_with("apiVersion: must be `enclii.dev/v1` (got \"enclii.dev/v2\"); "),
        "{shown}"
    );
    let boxed: Box<dyn std::error::Error> = Box::new(e);
    assert!(boxed.to_string().contains("duplicate port 3000"));
}

#[test]
fn api_version_kind_and_metadata() {
    rejects("kind", "must be `Service`", |v| v["kind"] = "Deployment".into());
    rejects("metadata.project", "must start with a letter", |v| {
        v["metadata"]["project"] = "1shop".into()
    });
    rejects("metadata.name", "invalid character", |v| {
        v["metadata"]["name"] = "API".into()
    });
    rejects("metadata.name", "must not end with '-'", |v| {
        v["metadata"]["name"] = "api-".into()
    });
    rejects("metadata.name", "at most 63", |v| {
        v["metadata"]["name"] = "a".repeat(64).into()
    });
    rejects("metadata.environment", "preview-<n>", |v| {
        v["metadata"]["environment"] = "preview-0".into()
    });
    accepts(|v| v["metadata"]["environment"] = "preview-12".into());
    accepts(|v| v["metadata"]["environment"] = "stage".into());
}

#[test]
fn build_paths_stay_in_the_repository() {
    rejects("spec.build.dockerfile", "relative", |v| {
        v["spec"]["build"]["dockerfile"] = "/Dockerfile".into()
    });
    rejects("spec.build.context", "inside the repository", |v| {
        v["spec"]["build"]["context"] = "a/../..".into()
    });
    accepts(|v| v["spec"]["build"]["context"] = "services/../api".into());
    accepts(|v| v["spec"]["build"]["type"] = "auto".into());
}

#[test]
fn source_rules() {
    rejects("spec.source.git.repository", "git URL", |v| {
        v["spec"]["source"]["git"]["repository"] = "github.com/org/repo".into()
    });
    rejects("spec.source.git.branch", "must not contain", |v| {
        v["spec"]["source"]["git"]["branch"] = "my branch".into()
    });
    rejects("spec.source.git.branch", ".lock", |v| {
        v["spec"]["source"]["git"]["branch"] = "main.lock".into()
    });
    rejects("spec.source.git.branch", "must not start", |v| {
        v["spec"]["source"]["git"]["branch"] = "-main".into()
    });
    accepts(|v| v["spec"]["source"]["git"]["repository"] = "ssh://git@example.com:2222/org/repo.git".into());
    accepts(|v| v["spec"]["source"]["git"]["branch"] = "release/1.x".into());
    // Without a source, a prebuilt image is required.
    accepts(|v| v["spec"].as_object_mut().unwrap().remove("source").map(drop).unwrap());
    rejects("spec.source", "is required unless", |v| {
        let spec = v["spec"].as_object_mut().unwrap();
        spec.remove("source");
        spec["runtime"].as_object_mut().unwrap().remove("image");
    });
}

#[test]
fn runtime_rules() {
    rejects("spec.runtime.ports[0]", "between 1 and 65535 (got 70000)", |v| {
        v["spec"]["runtime"]["ports"] = serde_json::json!([70000])
    });
    rejects("spec.runtime.ports[1]", "duplicate port 80", |v| {
        v["spec"]["runtime"]["ports"] = serde_json::json!([80, 80])
    });
    rejects("spec.runtime.cpu", "greater than 0", |v| {
        v["spec"]["runtime"]["cpu"] = "0m".into()
    });
    rejects("spec.runtime.cpu", "CPU quantity", |v| {
        v["spec"]["runtime"]["cpu"] = "half".into()
    });
    rejects("spec.runtime.memory", "memory quantity", |v| {
        v["spec"]["runtime"]["memory"] = "512MB".into()
    });
    rejects("spec.runtime.memory", "greater than 0", |v| {
        v["spec"]["runtime"]["memory"] = "0".into()
    });
    rejects("spec.runtime.replicas.max", "between 1 and 1000", |v| {
        v["spec"]["runtime"]["replicas"] = serde_json::json!({"min": 0, "max": 0})
    });
    rejects("spec.runtime.replicas.max", "between 1 and 1000 (got 1001)", |v| {
        v["spec"]["runtime"]["replicas"]["max"] = 1001.into()
    });
    rejects("spec.runtime.cmd", "must not be empty", |v| {
        v["spec"]["runtime"]["cmd"] = serde_json::json!([])
    });
    rejects("spec.runtime.image", "outside", |v| {
        v["spec"]["runtime"]["image"] = "nginx latest".into()
    });
    rejects("spec.runtime.image", "unclosed", |v| {
        v["spec"]["runtime"]["image"] = "nginx:{{ git.sha".into()
    });
    rejects("spec.runtime.image", "empty", |v| {
        v["spec"]["runtime"]["image"] = "".into()
    });
    accepts(|v| v["spec"]["runtime"]["replicas"] = serde_json::json!({"min": 0, "max": 1}));
    accepts(|v| v["spec"]["runtime"]["cpu"] = "1.5".into());
}

#[test]
fn health_rules() {
    let readiness = |v: &mut serde_json::Value, probe: serde_json::Value| v["spec"]["health"]["readiness"] = probe;
    rejects("spec.health.readiness.timeoutSeconds", "between 1 and 300", |v| {
        readiness(v, serde_json::json!({"httpGet": "/", "timeoutSeconds": 0}))
    });
    rejects("spec.health.readiness.timeoutSeconds", "(got 301)", |v| {
        readiness(v, serde_json::json!({"httpGet": "/", "timeoutSeconds": 301}))
    });
    rejects("spec.health.readiness.httpGet", "must start with '/'", |v| {
        readiness(v, serde_json::json!({"httpGet": "healthz"}))
    });
    rejects("spec.health.readiness", "only one", |v| {
        readiness(v, serde_json::json!({"httpGet": "/", "tcpSocket": 3000}))
    });
    rejects("spec.health.readiness", "set `httpGet`", |v| {
        readiness(v, serde_json::json!({"timeoutSeconds": 2}))
    });
    rejects("spec.health.readiness.port", "only used with `httpGet`", |v| {
        readiness(v, serde_json::json!({"tcpSocket": 5432, "port": 1}))
    });
    rejects("spec.health.readiness.tcpSocket", "between 1 and 65535", |v| {
        readiness(v, serde_json::json!({"tcpSocket": 0}))
    });
    rejects("spec.health.liveness.periodSeconds", "between 1 and 3600", |v| {
        v["spec"]["health"]["liveness"] = serde_json::json!({"httpGet": "/live", "periodSeconds": 0})
    });
    rejects("spec.health.liveness.failureThreshold", "between 1 and 100", |v| {
        v["spec"]["health"]["liveness"] = serde_json::json!({"tcpSocket": 3000, "failureThreshold": 0})
    });
    rejects("spec.health.readiness.port", "is required when", |v| {
        readiness(v, serde_json::json!({"httpGet": "/"}));
        v["spec"]["runtime"]["ports"] = serde_json::json!([]);
        v["spec"]["routes"] = serde_json::json!([]);
    });
    accepts(|v| {
        readiness(
            v,
            serde_json::json!({"httpGet": "/ready", "port": 9000, "timeoutSeconds": 300, "periodSeconds": 10, "failureThreshold": 3}),
        );
        v["spec"]["health"]["liveness"] = serde_json::json!({"tcpSocket": 3000});
    });
}

#[test]
fn route_rules() {
    rejects("spec.routes[0].host", "lowercase", |v| {
        v["spec"]["routes"][0]["host"] = "API.example.dev".into()
    });
    rejects("spec.routes[0].host", "IP address", |v| {
        v["spec"]["routes"][0]["host"] = "10.0.0.1".into()
    });
    rejects("spec.routes[0].path", "must start with '/'", |v| {
        v["spec"]["routes"][0]["path"] = "api".into()
    });
    rejects("spec.routes[1].host", "duplicate route api.example.dev /", |v| {
        v["spec"]["routes"] = serde_json::json!([{"host": "api.example.dev", "path": "/"}, {"host": "api.example.dev"}])
    });
    rejects("spec.routes", "need a port", |v| {
        v["spec"]["runtime"]["ports"] = serde_json::json!([]);
        v["spec"]["health"]["readiness"] = serde_json::json!({"tcpSocket": 3000});
    });
    accepts(
        |v| v["spec"]["routes"] = serde_json::json!([{"host": "*.example.dev"}, {"host": "api.example.dev", "path": "/v2"}, {"host": "api.example.dev"}]),
    );
}

#[test]
fn env_rules() {
    rejects("spec.env[0].name", "[A-Za-z_]", |v| {
        v["spec"]["env"][0]["name"] = "NODE-ENV".into()
    });
    rejects("spec.env[1].name", "duplicate variable A", |v| {
        v["spec"]["env"] = serde_json::json!([{"name": "A", "value": "1"}, {"name": "A"}])
    });
    rejects("spec.envFrom[0].secretRef", "invalid character", |v| {
        v["spec"]["envFrom"][0]["secretRef"] = "Api_Prod".into()
    });
    accepts(|v| v["spec"]["env"] = serde_json::json!([{"name": "_A1"}, {"name": "a", "value": ""}]));
}

#[test]
fn addon_references() {
    rejects(
        "spec.env[0]",
        "either `value` or `fromAddon`",
        |v| {
            v["spec"]["env"] =
                serde_json::json!([{"name": "DB", "value": "x", "fromAddon": {"name": "db", "key": "url"}}])
        },
    );
    rejects("spec.env[0].fromAddon.key", "expected one of: url, host", |v| {
        v["spec"]["env"] = serde_json::json!([{"name": "DB", "fromAddon": {"name": "db", "key": "uri"}}])
    });
    rejects("spec.envFrom[0]", "exactly one of `secretRef`", |v| {
        v["spec"]["envFrom"] = serde_json::json!([{"secretRef": "a", "addon": "db"}])
    });
    rejects("spec.envFrom[0]", "exactly one of `secretRef`", |v| {
        v["spec"]["envFrom"] = serde_json::json!([{}])
    });
    rejects("spec.envFrom[0].addon", "invalid character", |v| {
        v["spec"]["envFrom"] = serde_json::json!([{"addon": "My_DB"}])
    });
    accepts(|v| {
        v["spec"]["env"] = serde_json::json!([{"name": "DATABASE_URL", "fromAddon": {"name": "db", "key": "url"}}]);
        v["spec"]["envFrom"] = serde_json::json!([{"addon": "cache"}, {"addon": "db"}, {"secretRef": "api-prod"}]);
    });
    let mut spec = example();
    spec.spec.env_from = vec![EnvFrom {
        addon: Some("cache".into()),
        ..EnvFrom::default()
    }];
    spec.spec.env[0].from_addon = Some(AddonKeyRef {
        name: "db".into(),
        key: "url".into(),
    });
    assert_eq!(spec.spec.addons(), ["cache", "db"]);
}

#[test]
fn volume_rules() {
    let vol = |v: &mut serde_json::Value, field: &str, x: serde_json::Value| v["spec"]["volumes"][0][field] = x;
    rejects("spec.volumes[0].name", "must start with a letter", |v| {
        vol(v, "name", "9data".into())
    });
    rejects("spec.volumes[0].mountPath", "absolute", |v| {
        vol(v, "mountPath", "data".into())
    });
    rejects("spec.volumes[0].size", "greater than 0", |v| {
        vol(v, "size", "0Gi".into())
    });
    rejects("spec.volumes[0].size", "memory quantity", |v| {
        vol(v, "size", "ten".into())
    });
    rejects("spec.volumes[0].class", "invalid character 'F'", |v| {
        vol(v, "class", "Fast_SSD".into())
    });
    rejects("spec.volumes[1].name", "duplicate volume name uploads", |v| {
        v["spec"]["volumes"] = serde_json::json!([{"name": "uploads", "mountPath": "/a", "size": "1Gi"}, {"name": "uploads", "mountPath": "/b", "size": "1Gi"}]);
    });
    rejects("spec.volumes[1].mountPath", "duplicate mount path", |v| {
        v["spec"]["volumes"] = serde_json::json!([{"name": "a", "mountPath": "/data", "size": "1Gi"}, {"name": "b", "mountPath": "/data/", "size": "1Gi"}]);
    });
    accepts(|v| vol(v, "size", serde_json::json!(1073741824)));
}

#[test]
fn job_rules() {
    let job = |v: &mut serde_json::Value, field: &str, x: serde_json::Value| v["spec"]["jobs"][0][field] = x;
    rejects("spec.jobs[0].schedule", "5 fields", |v| {
        job(v, "schedule", "every night".into())
    });
    rejects("spec.jobs[0].schedule", "5 fields", |v| {
        job(v, "schedule", "0 0 2 * * *".into())
    });
    rejects("spec.jobs[0].schedule", "not a valid cron schedule", |v| {
        job(v, "schedule", "0 25 * * *".into())
    });
    rejects("spec.jobs[0].schedule", "invalid character", |v| {
        job(v, "schedule", "0 0 * * 5#2".into())
    });
    rejects("spec.jobs[0].args", "must not be empty", |v| {
        job(v, "args", serde_json::json!([]))
    });
    rejects("spec.jobs[0].name", "invalid character", |v| {
        job(v, "name", "Nightly".into())
    });
    rejects("spec.jobs[1].name", "duplicate job name a", |v| {
        v["spec"]["jobs"] = serde_json::json!([{"name": "a", "schedule": "@daily", "args": ["x"]}, {"name": "a", "schedule": "* * * * *", "args": ["x"]}]);
        v["spec"]["jobs"][0]["schedule"] = "0 0 * * *".into();
    });
    accepts(|v| job(v, "schedule", "*/5 9-17 * * mon-fri".into()));
}

#[test]
fn autoscaling_and_deploy_rules() {
    rejects(
        "spec.autoscaling.hpa.cpuTargetUtilization",
        "between 1 and 100 (got 0)",
        |v| v["spec"]["autoscaling"]["hpa"]["cpuTargetUtilization"] = 0.into(),
    );
    rejects("spec.autoscaling.hpa.cpuTargetUtilization", "(got 101)", |v| {
        v["spec"]["autoscaling"]["hpa"]["cpuTargetUtilization"] = 101.into()
    });
    let steps = |v: &mut serde_json::Value, s: serde_json::Value| v["spec"]["deploy"]["steps"] = s;
    rejects(
        "spec.deploy.steps[1]",
        "greater than the previous step (got 10 after 50)",
        |v| steps(v, serde_json::json!([50, 10, 100])),
    );
    rejects("spec.deploy.steps[1]", "(got 10 after 10)", |v| {
        steps(v, serde_json::json!([10, 10, 100]))
    });
    rejects("spec.deploy.steps", "must end with 100 (got 50)", |v| {
        steps(v, serde_json::json!([10, 50]))
    });
    rejects("spec.deploy.steps", "must not be empty", |v| {
        steps(v, serde_json::json!([]))
    });
    rejects("spec.deploy.steps[0]", "between 1 and 100 (got 0)", |v| {
        steps(v, serde_json::json!([0, 100]))
    });
    rejects("spec.deploy.analysis.maxErrorRate", "between 0 and 1", |v| {
        v["spec"]["deploy"]["analysis"]["maxErrorRate"] = 1.5.into()
    });
    rejects("spec.deploy.analysis.maxErrorRate", "between 0 and 1", |v| {
        v["spec"]["deploy"]["analysis"]["maxErrorRate"] = (-0.1).into()
    });
    rejects("spec.deploy.analysis.window", "duration", |v| {
        v["spec"]["deploy"]["analysis"]["window"] = "two minutes".into()
    });
    rejects("spec.deploy.analysis.window", "greater than 0", |v| {
        v["spec"]["deploy"]["analysis"]["window"] = "0s".into()
    });
    accepts(|v| steps(v, serde_json::json!([1, 5, 25, 100])));
    accepts(|v| steps(v, serde_json::json!([100])));
    accepts(|v| v["spec"]["deploy"]["analysis"] = serde_json::json!({"maxErrorRate": 0, "window": "30s"}));
    let e = yaml_err(&EXAMPLE.replace("maxErrorRate: 0.02", "maxErrorRate: .nan"));
    assert_eq!(e.0[0].path, "spec.deploy.analysis.maxErrorRate", "{e}");
}

#[test]
fn parse_any_sniffs_the_format() {
    let json = serde_json::to_string_pretty(&example()).unwrap();
    assert_eq!(ServiceSpec::parse_any(&format!("\n  {json}")).unwrap(), example());
    assert_eq!(ServiceSpec::parse_any(EXAMPLE).unwrap(), example());
    assert_eq!(
        ServiceSpec::parse_any(&format!("\u{feff}{EXAMPLE}")).unwrap(),
        example()
    );
    let e = ServiceSpec::parse_any("{ not json").unwrap_err();
    assert!(e.0[0].message.contains("line 1"), "{e}");
}

/// `MINIMAL` with `runtime.cmd` holding `aliases` aliases of one anchored scalar of `len` bytes.
fn aliased_cmd(len: usize, aliases: usize) -> String {
    let mut text = format!(
        "{MINIMAL}  runtime:\n    image: nginx\n    cmd:\n      - &big {}\n",
        "x".repeat(len)
    );
    text.push_str(&"      - *big\n".repeat(aliases));
    text
}

#[test]
fn aliases_that_expand_past_the_budget_are_refused_at_the_field() {
    // 20 KiB of text that would build 20 MB of strings (the probe's 186 KiB took 2.9 GiB).
    let text = aliased_cmd(10_000, 2_000);
    assert!(text.len() < 40_000);
    let e = yaml_err(&text);
    assert_eq!(e.0.len(), 1, "{e}");
    assert!(e.0[0].path.starts_with("spec.runtime.cmd["), "{e}");
    assert!(e.0[0].message.contains("YAML aliases"), "{e}");
}

#[test]
fn aliases_that_expand_to_too_many_values_are_refused() {
    // Small strings, many of them: 300 jobs sharing one 1,000-argument list through an alias.
    let args = vec!["a"; 1_000].join(", ");
    let mut text = format!("{MINIMAL}  runtime: {{ image: nginx }}\n  jobs:\n");
    text.push_str(&format!(
        "    - {{ name: j0, schedule: '0 2 * * *', args: &args [{args}] }}\n"
    ));
    for n in 1..300 {
        text.push_str(&format!("    - {{ name: j{n}, schedule: '0 2 * * *', args: *args }}\n"));
    }
    assert!(text.len() < 25_000);
    let e = yaml_err(&text);
    assert!(e.0[0].path.starts_with("spec.jobs["), "{e}");
    assert!(e.0[0].message.contains("250000 values"), "{e}");
}

#[test]
fn modest_aliases_still_parse() {
    let spec = ServiceSpec::parse(&aliased_cmd(100, 50), SpecFormat::Yaml).unwrap();
    assert_eq!(spec.spec.runtime.cmd.map(|c| c.len()), Some(51));
}
