//! Checks of `ops/` (running Enclii itself on Kubernetes) against the code, so the packaging
//! cannot drift from the binary. No API server and no image build happen here (these machines
//! have neither a cluster nor Docker Hub); what is checked:
//!
//! - every core-API manifest passes `kubernetes-validate --strict` (PyPI, installed by
//!   `.ci/infra.sh`; the same tool `deploy/kubernetes/tests` uses) against Kubernetes 1.33 and
//!   1.37, and the validator rejects a deliberately broken copy (so a pass means something);
//! - KEDA's `ScaledObject` (a CRD the validator has no schema for: it only warns and skips such
//!   kinds) is checked structurally here, and its HPA `behavior` block by the validator;
//! - the KEDA and HPA autoscalers target the worker Deployment and query `enclii_queue_depth`;
//! - every PromQL expression of the Grafana dashboard names only metrics the code exports
//!   (`counter!`/`gauge!`/`histogram!` in the workspace's `*.rs`), and every exported metric is
//!   on the dashboard;
//! - every `ENCLII_*` variable the manifests and the Dockerfile name is declared in `cli/src`.
//!
//! YAML is read with python3's PyYAML (a dependency of kubernetes-validate), converted to JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use serde_json::{Value, json};

/// The oldest Kubernetes the manifests target (k8s-openapi's `v1_33`, as the deploy target) and
/// the newest kubernetes-validate 1.37.0 knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.33.0", "1.37.0"];

/// API groups of custom resources: the validator has no schema for them; this file checks them.
const CUSTOM_GROUPS: &[&str] = &["keda.sh"];

const WORKER: &str = "enclii-worker";

fn root() -> PathBuf {
    let cli = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::canonicalize(cli.parent().expect("the workspace root")).expect("the workspace root exists")
}

fn kubernetes_dir() -> PathBuf {
    root().join("ops/kubernetes")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The YAML documents of a file (empty ones dropped), as JSON values; each file parsed once.
fn yaml_documents(path: &Path) -> Vec<Value> {
    static PARSED: Mutex<BTreeMap<PathBuf, Vec<Value>>> = Mutex::new(BTreeMap::new());
    if let Some(documents) = PARSED.lock().expect("the YAML cache").get(path) {
        return documents.clone();
    }
    let documents = parse_yaml(path);
    PARSED
        .lock()
        .expect("the YAML cache")
        .insert(path.to_path_buf(), documents.clone());
    documents
}

fn parse_yaml(path: &Path) -> Vec<Value> {
    const SCRIPT: &str = "import json, sys, yaml\n\
        docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
        json.dump(docs, sys.stdout)";
    let output = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("python3 could not be run ({e}); it reads the YAML here"));
    assert!(
        output.status.success(),
        "cannot parse {} as YAML (python3 with PyYAML, installed with kubernetes-validate by \
         `source .ci/infra.sh`):\n{}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    match serde_json::from_slice(&output.stdout).expect("python printed JSON") {
        Value::Array(documents) => documents,
        other => panic!("expected a list of documents, got {other}"),
    }
}

fn single_document(path: &Path) -> Value {
    let mut documents = yaml_documents(path);
    assert_eq!(documents.len(), 1, "{} holds one document", path.display());
    documents.remove(0)
}

/// The resource files a kustomization lists, following bases (directories) recursively.
fn kustomization_files(dir: &Path) -> Vec<PathBuf> {
    let kustomization = single_document(&dir.join("kustomization.yaml"));
    let resources = kustomization["resources"]
        .as_array()
        .unwrap_or_else(|| panic!("{}/kustomization.yaml lists resources", dir.display()));
    let mut files = Vec::new();
    for resource in resources {
        let listed = dir.join(resource.as_str().expect("a resource is a path"));
        let path = std::fs::canonicalize(&listed)
            .unwrap_or_else(|e| panic!("{} lists {}: {e}", dir.display(), listed.display()));
        if path.is_dir() {
            files.extend(kustomization_files(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// The directories under `ops/kubernetes` that hold a kustomization (the base, the default
/// install and the two autoscaling overlays).
fn kustomizations() -> Vec<PathBuf> {
    let dir = kubernetes_dir();
    let mut found: Vec<PathBuf> = std::iter::once(dir.clone())
        .chain(subdirectories(&dir))
        .filter(|d| d.join("kustomization.yaml").exists())
        .collect();
    found.sort();
    found
}

fn subdirectories(dir: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display())) {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            dirs.push(path.clone());
            dirs.extend(subdirectories(&path));
        }
    }
    dirs
}

fn files_with_extension(dir: &Path, extension: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::iter::once(dir.to_path_buf())
        .chain(subdirectories(dir))
        .flat_map(|d| std::fs::read_dir(d).expect("a readable directory"))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    files
}

/// Every Kubernetes manifest: what the kustomizations list, plus the Secret example (kept out
/// of them on purpose so it is never applied).
fn manifest_files() -> Vec<PathBuf> {
    let mut files: BTreeSet<PathBuf> = kustomizations().iter().flat_map(|d| kustomization_files(d)).collect();
    files.insert(kubernetes_dir().join("base/secret.example.yaml"));
    files.into_iter().collect()
}

fn is_custom(document: &Value) -> bool {
    let api_version = document["apiVersion"].as_str().unwrap_or_default();
    CUSTOM_GROUPS
        .iter()
        .any(|group| api_version.starts_with(&format!("{group}/")))
}

/// The manifests whose documents are all core Kubernetes kinds (the validator's input).
fn core_manifests() -> Vec<(PathBuf, usize)> {
    manifest_files()
        .into_iter()
        .filter_map(|path| {
            let documents = yaml_documents(&path);
            let custom = documents.iter().filter(|d| is_custom(d)).count();
            assert!(
                custom == 0 || custom == documents.len(),
                "{}: keep custom resources in files of their own",
                path.display()
            );
            (custom == 0).then_some((path, documents.len()))
        })
        .collect()
}

fn documents_of_kind(kind: &str) -> Vec<Value> {
    manifest_files()
        .iter()
        .flat_map(|p| yaml_documents(p))
        .filter(|d| d["kind"] == kind)
        .collect()
}

fn deployment(name: &str) -> Value {
    let mut found: Vec<Value> = documents_of_kind("Deployment")
        .into_iter()
        .filter(|d| d["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "one Deployment {name}");
    found.remove(0)
}

/// A container's environment variable set in the Deployment itself.
fn env_value(deployment: &Value, name: &str) -> Option<String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(str::to_string))
}

struct Validation {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `kubernetes-validate --strict` over files, against every version in
/// [`KUBERNETES_VERSIONS`].
fn kubernetes_validate(files: &[PathBuf]) -> Validation {
    let mut command = Command::new("kubernetes-validate");
    command.arg("--strict");
    for version in KUBERNETES_VERSIONS {
        command.args(["--kubernetes-version", version]);
    }
    let output = command.args(files).output().unwrap_or_else(|e| {
        panic!(
            "kubernetes-validate could not be run ({e}); install it with `source .ci/infra.sh` (PyPI \
             kubernetes-validate==1.37.0)"
        )
    });
    Validation {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A fresh scratch directory (no tempfile crate in this package's dependencies).
fn scratch_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("enclii_packaging_{name}_{}_{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

#[test]
fn manifests_pass_kubernetes_validate_strict() {
    let manifests = core_manifests();
    let files: Vec<PathBuf> = manifests.iter().map(|(path, _)| path.clone()).collect();
    for expected in [
        "base/api.yaml",
        "base/worker.yaml",
        "base/scheduler.yaml",
        "base/rbac.yaml",
    ] {
        assert!(
            files.contains(&kubernetes_dir().join(expected)),
            "{expected} is validated: {files:?}"
        );
    }
    let validation = kubernetes_validate(&files);
    let Validation { stdout, stderr, .. } = &validation;
    assert!(validation.success, "kubernetes-validate failed:\n{stdout}\n{stderr}");
    let documents: usize = manifests.iter().map(|(_, count)| count).sum();
    assert_eq!(
        stdout.matches(" passed for resource ").count(),
        documents * KUBERNETES_VERSIONS.len(),
        "every document validated against every version:\n{stdout}\n{stderr}"
    );
    assert!(
        !stdout.contains("WARN") && !stderr.contains("WARN"),
        "no warnings (a warning means a kind was skipped):\n{stdout}\n{stderr}"
    );
}

#[test]
fn kubernetes_validate_rejects_a_broken_manifest() {
    // The check above must be able to fail: an unknown field (caught by --strict only) and a
    // wrongly typed one in copies of the worker's manifest are each refused.
    let original = read(&kubernetes_dir().join("base/worker.yaml"));
    let dir = scratch_dir("broken");
    for (name, from, to) in [
        (
            "unknown-field",
            "  revisionHistoryLimit: 5\n",
            "  revisionHistoryLimit: 5\n  replica: 3\n",
        ),
        ("wrong-type", "containerPort: 8080", "containerPort: http"),
    ] {
        assert!(original.contains(from), "worker.yaml still has `{from}`");
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, original.replacen(from, to, 1)).expect("a scratch file");
        let validation = kubernetes_validate(std::slice::from_ref(&path));
        assert!(
            !validation.success && validation.stdout.contains("did not validate"),
            "{name}: kubernetes-validate accepted a broken manifest:\n{}\n{}",
            validation.stdout,
            validation.stderr
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_yaml_file_under_ops_kubernetes_is_accounted_for() {
    let listed: BTreeSet<PathBuf> = manifest_files().into_iter().collect();
    let helm_values = kubernetes_dir().join("hpa-external/prometheus-adapter-values.yaml");
    assert!(helm_values.exists());
    for file in files_with_extension(&kubernetes_dir(), "yaml") {
        let accounted = listed.contains(&file)
            || file.file_name().is_some_and(|n| n == "kustomization.yaml")
            || file == helm_values;
        assert!(
            accounted,
            "{} is in no kustomization (list it, or teach this test what it is)",
            file.display()
        );
    }
}

#[test]
fn the_three_roles_run_from_one_image_with_probes_the_server_serves() {
    let routes = read(&root().join("api/src/routes.rs"));
    let served = |path: &str| routes.contains(&format!(".route(\"{path}\""));
    let config = documents_of_kind("ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["name"] == "enclii")
        .expect("the enclii ConfigMap");
    assert_eq!(
        config["data"]["ENCLII_LISTEN"], "0.0.0.0:8080",
        "every role listens on 8080"
    );
    let mut roles = BTreeSet::new();
    for deployment in documents_of_kind("Deployment") {
        let name = deployment["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let pod = &deployment["spec"]["template"];
        let containers = pod["spec"]["containers"].as_array().expect("containers");
        assert_eq!(containers.len(), 1, "{name}: one container");
        let container = &containers[0];
        assert_eq!(
            container["image"], "enclii",
            "{name}: the one image (kustomize sets its name)"
        );
        let args: Vec<&str> = container["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a.as_str().expect("a string arg"))
            .collect();
        let ["server", "--role", role] = args[..] else {
            panic!("{name}: args are `server --role <role>`, not {args:?}");
        };
        assert!(["api", "worker", "scheduler"].contains(&role), "{name}: role {role}");
        assert!(roles.insert(role.to_string()), "{name}: one Deployment per role");
        assert_eq!(name, format!("enclii-{role}"));
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
            let path = container[probe]["httpGet"]["path"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: an HTTP {probe}"));
            assert!(
                served(path),
                "{name}: {probe} on {path}, a route api/src/routes.rs serves"
            );
        }
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/health/ready");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/health/live");
        assert_eq!(container["ports"][0]["containerPort"], 8080);
        let annotations = &pod["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"], "true", "{name}: scraped");
        assert_eq!(annotations["prometheus.io/port"], "8080");
        let metrics = annotations["prometheus.io/path"].as_str().expect("a metrics path");
        assert!(served(metrics), "{name}: scrape path {metrics} is served");
        let security = &container["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"], true, "{name}: read-only root");
        assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true, "{name}: non-root");
        let data_dir = config["data"]["ENCLII_DATA_DIR"].as_str().expect("ENCLII_DATA_DIR");
        assert!(
            container["volumeMounts"]
                .as_array()
                .expect("volume mounts")
                .iter()
                .any(|m| m["mountPath"] == data_dir),
            "{name}: the data dir {data_dir} is a writable volume"
        );
        let sources: Vec<&Value> = container["envFrom"].as_array().expect("envFrom").iter().collect();
        assert!(
            sources.iter().any(|s| s["configMapRef"]["name"] == "enclii")
                && sources.iter().any(|s| s["secretRef"]["name"] == "enclii"),
            "{name}: the shared ConfigMap and Secret"
        );
    }
    assert_eq!(roles.into_iter().collect::<Vec<_>>(), ["api", "scheduler", "worker"]);
}

/// What a manifest's query must select: waiting work (available and scheduled), not dead jobs.
fn assert_counts_waiting_jobs(what: &str, query: &str) {
    assert!(
        query.contains("enclii_queue_depth"),
        "{what} reads enclii_queue_depth: {query}"
    );
    assert!(
        query.contains("available") && query.contains("scheduled") && !query.contains("dead"),
        "{what} counts available and scheduled jobs, not dead ones: {query}"
    );
    assert!(
        query.contains("max by (kind, project, state)"),
        "{what} deduplicates the gauge every pod exports: {query}"
    );
    let exported = exported_metrics();
    for name in metric_names(query) {
        assert!(
            exported.contains_key(&name),
            "{what} names {name}, which no code exports"
        );
    }
}

fn worker_concurrency() -> f64 {
    env_value(&deployment(WORKER), "ENCLII_WORKER_CONCURRENCY")
        .expect("the worker sets ENCLII_WORKER_CONCURRENCY")
        .parse()
        .expect("a number")
}

#[test]
fn keda_scales_the_workers_on_queue_depth() {
    let path = kubernetes_dir().join("keda/scaledobject.yaml");
    assert!(
        kustomization_files(&kubernetes_dir().join("keda")).contains(&path),
        "the keda overlay applies the ScaledObject"
    );
    let scaled = single_document(&path);
    // Structure, by hand: the validator has no schema for this CRD (keda.sh/v1alpha1).
    assert_eq!(scaled["apiVersion"], "keda.sh/v1alpha1");
    assert_eq!(scaled["kind"], "ScaledObject");
    let worker = deployment(WORKER);
    assert_eq!(scaled["metadata"]["namespace"], worker["metadata"]["namespace"]);
    assert!(scaled["metadata"]["name"].is_string());
    let spec = scaled["spec"].as_object().expect("a spec");
    const SPEC_FIELDS: &[&str] = &[
        "scaleTargetRef",
        "pollingInterval",
        "cooldownPeriod",
        "initialCooldownPeriod",
        "idleReplicaCount",
        "minReplicaCount",
        "maxReplicaCount",
        "fallback",
        "advanced",
        "triggers",
    ];
    for key in spec.keys() {
        assert!(
            SPEC_FIELDS.contains(&key.as_str()),
            "ScaledObject spec has no field {key}"
        );
    }
    let target = &spec["scaleTargetRef"];
    assert_eq!(target["name"], WORKER);
    assert_eq!(target["kind"], "Deployment");
    assert_eq!(target["apiVersion"], "apps/v1");
    let min = spec["minReplicaCount"].as_u64().expect("minReplicaCount");
    let max = spec["maxReplicaCount"].as_u64().expect("maxReplicaCount");
    assert!(min <= max && max > 0, "{min}..{max} replicas");
    for field in ["pollingInterval", "cooldownPeriod"] {
        assert!(
            spec[field].as_u64().is_some_and(|s| s > 0),
            "{field} is positive seconds"
        );
    }
    for key in spec["advanced"].as_object().expect("advanced").keys() {
        assert!(
            [
                "horizontalPodAutoscalerConfig",
                "restoreToOriginalReplicaCount",
                "scalingModifiers"
            ]
            .contains(&key.as_str()),
            "ScaledObject spec.advanced has no field {key}"
        );
    }
    let triggers = spec["triggers"].as_array().expect("triggers");
    assert_eq!(triggers.len(), 1);
    let trigger = &triggers[0];
    assert_eq!(trigger["type"], "prometheus");
    let metadata = trigger["metadata"].as_object().expect("trigger metadata");
    const PROMETHEUS_FIELDS: &[&str] = &[
        "serverAddress",
        "query",
        "queryParameters",
        "threshold",
        "activationThreshold",
        "namespace",
        "customHeaders",
        "ignoreNullValues",
        "unsafeSsl",
        "timeout",
    ];
    for (key, value) in metadata {
        assert!(
            PROMETHEUS_FIELDS.contains(&key.as_str()),
            "prometheus trigger has no field {key}"
        );
        assert!(value.is_string(), "trigger metadata values are strings: {key}");
    }
    let server = metadata["serverAddress"].as_str().expect("serverAddress");
    assert!(
        server.starts_with("http://") || server.starts_with("https://"),
        "{server}"
    );
    assert_counts_waiting_jobs("the ScaledObject", metadata["query"].as_str().expect("a query"));
    let threshold: f64 = metadata["threshold"]
        .as_str()
        .expect("a threshold")
        .parse()
        .expect("a number");
    assert_eq!(
        threshold,
        worker_concurrency(),
        "a worker's share is one concurrency's worth"
    );
    let _: f64 = metadata["activationThreshold"]
        .as_str()
        .expect("an activation threshold")
        .parse()
        .expect("a number");
    // The behavior block is an autoscaling/v2 HPA's: let the validator check it in one.
    let behavior = &spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"];
    assert!(behavior.is_object(), "a scaling behavior");
    let hpa = json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "keda-behavior", "namespace": "enclii-system"},
        "spec": {
            "scaleTargetRef": target,
            "minReplicas": min.max(1),
            "maxReplicas": max,
            "behavior": behavior,
        },
    });
    let dir = scratch_dir("keda");
    let file = dir.join("behavior.json");
    std::fs::write(&file, hpa.to_string()).expect("a scratch file");
    let validation = kubernetes_validate(std::slice::from_ref(&file));
    assert!(
        validation.success && !validation.stdout.contains("WARN"),
        "the ScaledObject's HPA behavior is invalid:\n{}\n{}",
        validation.stdout,
        validation.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_external_hpa_scales_the_workers_on_queue_depth() {
    let dir = kubernetes_dir().join("hpa-external");
    let path = dir.join("hpa.yaml");
    assert!(kustomization_files(&dir).contains(&path), "the overlay applies the HPA");
    let hpa = single_document(&path);
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], WORKER);
    assert_eq!(
        hpa["metadata"]["namespace"],
        deployment(WORKER)["metadata"]["namespace"]
    );
    let metrics = hpa["spec"]["metrics"].as_array().expect("metrics");
    assert_eq!(metrics.len(), 1);
    assert_eq!(metrics[0]["type"], "External");
    let metric = metrics[0]["external"]["metric"]["name"]
        .as_str()
        .expect("a metric name");
    let target: f64 = metrics[0]["external"]["target"]["averageValue"]
        .as_str()
        .expect("an averageValue")
        .parse()
        .expect("a number");
    assert_eq!(
        target,
        worker_concurrency(),
        "a worker's share is one concurrency's worth"
    );
    // The External metric exists only through the adapter rule documented beside the HPA.
    let values = single_document(&dir.join("prometheus-adapter-values.yaml"));
    let rules = values["rules"]["external"].as_array().expect("external rules");
    let rule = rules
        .iter()
        .find(|r| r["name"]["as"] == metric)
        .unwrap_or_else(|| panic!("an adapter rule serves {metric}"));
    assert_counts_waiting_jobs(
        "the adapter rule",
        rule["metricsQuery"].as_str().expect("a metricsQuery"),
    );
    let series = rule["seriesQuery"].as_str().expect("a seriesQuery");
    assert!(metric_names(series).contains("enclii_queue_depth"), "{series}");
}

/// `enclii_…` metric names in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let bytes = expr.as_bytes();
    let mut names = BTreeSet::new();
    let mut at = 0;
    while let Some(found) = expr[at..].find("enclii_") {
        let start = at + found;
        let end = start
            + expr[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(expr.len() - start);
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || matches!(bytes[start - 1], b'_' | b':'));
        if boundary {
            names.insert(expr[start..end].to_string());
        }
        at = end;
    }
    names
}

/// The workspace's `*.rs` files outside build output (this file excluded: it only names macros).
fn workspace_sources() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display())) {
            let path = entry.expect("a directory entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if path.is_dir() {
                if !(name.starts_with('.') || name == "target" || name == "node_modules") {
                    walk(&path, out);
                }
            } else if name.ends_with(".rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(&root(), &mut files);
    let this = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/packaging.rs");
    files.retain(|f| *f != this);
    files
}

/// The contents of the string literals in `text` that start with `prefix` (up to the next quote:
/// the names looked for hold no escapes).
fn quoted_with_prefix<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.match_indices(&format!("\"{prefix}"))
        .filter_map(|(at, _)| {
            let rest = &text[at + 1..];
            rest.find('"').map(|end| &rest[..end])
        })
        .collect()
}

fn is_metric_name(s: &str) -> bool {
    s.strip_prefix("enclii_").is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    })
}

/// Metric names the code records, and whether each is a histogram: the first argument of every
/// `counter!`, `gauge!` and `histogram!`, either a literal or a variable bound just before by
/// `let <name> = …` to literals (as `worker/src/pool.rs` picks an outcome's counter).
fn exported_metrics() -> BTreeMap<String, bool> {
    let mut exported = BTreeMap::new();
    for file in workspace_sources() {
        let text = read(&file);
        for kind in ["counter", "gauge", "histogram"] {
            let needle = format!("{kind}!(");
            for (at, _) in text.match_indices(&needle) {
                let before = text[..at].chars().next_back();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                    continue;
                }
                let rest = text[at + needle.len()..].trim_start();
                let names: Vec<&str> = if let Some(literal) = rest.strip_prefix('"') {
                    literal.split('"').next().into_iter().collect()
                } else {
                    let ident: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    match text[..at].rfind(&format!("let {ident} =")) {
                        Some(binding) if !ident.is_empty() => quoted_with_prefix(&text[binding..at], "enclii_"),
                        _ => Vec::new(),
                    }
                };
                for name in names.into_iter().filter(|n| is_metric_name(n)) {
                    exported.insert(name.to_string(), kind == "histogram");
                }
            }
        }
    }
    assert!(
        exported.len() >= 10
            && exported.contains_key("enclii_queue_depth")
            && exported.get("enclii_queue_job_duration_seconds") == Some(&true),
        "the scan of the sources found the metrics: {exported:?}"
    );
    exported
}

/// Every panel, rows' nested panels included.
fn panels(list: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in list.as_array().into_iter().flatten() {
        all.push(panel);
        all.extend(panels(&panel["panels"]));
    }
    all
}

#[test]
fn the_dashboard_queries_only_metrics_the_code_exports() {
    let path = root().join("ops/grafana/enclii-dashboard.json");
    let dashboard: Value = serde_json::from_str(&read(&path)).expect("the dashboard is JSON");
    let variables = dashboard["templating"]["list"].as_array().expect("template variables");
    assert!(
        variables
            .iter()
            .any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"),
        "a ${{datasource}} Prometheus variable"
    );
    let exported = exported_metrics();
    let allowed: BTreeSet<String> = exported
        .iter()
        .flat_map(|(name, histogram)| {
            let suffixes: &[&str] = if *histogram {
                &["", "_bucket", "_sum", "_count"]
            } else {
                &[""]
            };
            suffixes.iter().map(move |s| format!("{name}{s}"))
        })
        .collect();
    let mut used = BTreeSet::new();
    let mut queries = 0;
    for panel in panels(&dashboard["panels"]) {
        let title = panel["title"].as_str().unwrap_or_default();
        let targets = panel["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
        if panel["type"] != "row" {
            assert!(!targets.is_empty(), "panel {title:?} has queries");
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "panel {title:?}");
        }
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title:?}: a PromQL expr"));
            let names = metric_names(expr);
            assert!(!names.is_empty(), "panel {title:?} queries an enclii metric: {expr}");
            for name in names {
                assert!(
                    allowed.contains(&name),
                    "panel {title:?} queries {name}, which the code does not export (exported: {exported:?})"
                );
                used.insert(name.trim_end_matches("_bucket").to_string());
            }
            queries += 1;
        }
    }
    assert!(queries > 0);
    let unused: Vec<&String> = exported.keys().filter(|name| !used.contains(*name)).collect();
    assert!(
        unused.is_empty(),
        "exported metrics missing from ops/grafana/enclii-dashboard.json: {unused:?}"
    );
}

/// `ENCLII_…` names in a text (a bare `ENCLII_` prefix, as in `ENCLII_*`, is not a name).
fn enclii_variables(text: &str) -> BTreeSet<String> {
    text.match_indices("ENCLII_")
        .filter(|(at, _)| {
            *at == 0 || {
                let before = text.as_bytes()[at - 1];
                !(before.is_ascii_alphanumeric() || before == b'_')
            }
        })
        .map(|(at, _)| {
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| !name.ends_with('_'))
        .collect()
}

#[test]
fn manifests_name_only_environment_variables_the_binary_reads() {
    // Declared: the string literals of the binary's sources that are exactly a variable's name
    // (`env = "ENCLII_…"` in cli/src, and `ENCLII_LOG` read by the log filter in telemetry/src).
    let mut declared = BTreeSet::new();
    for dir in ["cli/src", "telemetry/src"] {
        for path in files_with_extension(&root().join(dir), "rs") {
            for literal in quoted_with_prefix(&read(&path), "ENCLII_") {
                if enclii_variables(literal).contains(literal) {
                    declared.insert(literal.to_string());
                }
            }
        }
    }
    for known in [
        "ENCLII_ROLE",
        "ENCLII_LISTEN",
        "ENCLII_DATABASE_URL",
        "ENCLII_DEPLOY_TARGET",
        "ENCLII_LOG",
    ] {
        assert!(
            declared.contains(known),
            "the scan of cli/src and telemetry/src finds {known}: {declared:?}"
        );
    }
    let mut files = files_with_extension(&kubernetes_dir(), "yaml");
    files.push(root().join("Dockerfile"));
    let mut named = 0;
    for file in files {
        for name in enclii_variables(&read(&file)) {
            assert!(
                declared.contains(&name),
                "{} names {name}, which `enclii server` does not read (renamed flag?)",
                file.display()
            );
            named += 1;
        }
    }
    assert!(named >= 10, "the manifests set the server's variables");
    // The Secret example holds what must be secret; all of it reaches every role.
    let secret = single_document(&kubernetes_dir().join("base/secret.example.yaml"));
    let keys: BTreeSet<&str> = secret["stringData"]
        .as_object()
        .expect("stringData")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "ENCLII_DATABASE_URL",
            "ENCLII_MASTER_KEY",
            "ENCLII_GITHUB_WEBHOOK_SECRET"
        ])
    );
}

#[test]
fn kustomize_renders_every_install_when_kubectl_is_present() {
    // kubectl is not part of this project's CI set-up; where it is installed (it renders
    // kustomizations offline), the rendered streams are validated as applied.
    if Command::new("kubectl").arg("version").arg("--client").output().is_err() {
        eprintln!("kubectl not found: kustomize rendering not checked (the files themselves are)");
        return;
    }
    let dir = scratch_dir("kustomize");
    for install in ["", "keda", "hpa-external"] {
        let output = Command::new("kubectl")
            .arg("kustomize")
            .arg(kubernetes_dir().join(install))
            .output()
            .expect("kubectl runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "kubectl kustomize ops/kubernetes/{install}: {stderr}"
        );
        let file = dir.join(format!(
            "rendered-{}.yaml",
            if install.is_empty() { "base" } else { install }
        ));
        std::fs::write(&file, &output.stdout).expect("a scratch file");
        let documents = yaml_documents(&file);
        let custom = documents.iter().filter(|d| is_custom(d)).count();
        let validation = kubernetes_validate(std::slice::from_ref(&file));
        assert!(
            validation.success,
            "{install}: {}\n{}",
            validation.stdout, validation.stderr
        );
        assert_eq!(
            validation.stdout.matches(" passed for resource ").count(),
            (documents.len() - custom) * KUBERNETES_VERSIONS.len(),
            "{install}: {}",
            validation.stdout
        );
        let worker = documents
            .iter()
            .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == WORKER)
            .expect("the worker Deployment");
        assert_eq!(
            worker["spec"]["replicas"].is_null(),
            !install.is_empty(),
            "{install}: the worker's replicas are fixed only without an autoscaler"
        );
        assert!(
            documents
                .iter()
                .filter(|d| d["kind"] == "Deployment")
                .all(|d| d["spec"]["template"]["spec"]["containers"][0]["image"]
                    .as_str()
                    .is_some_and(|image| image.contains(':'))),
            "{install}: kustomize sets a tagged image"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
