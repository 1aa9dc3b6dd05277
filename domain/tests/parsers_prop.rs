//! Property tests for the Service Spec and GitHub webhook parsers: no input makes them panic,
//! every error names a field, and every valid spec parses and round-trips.

use std::collections::BTreeSet;

use enclii_domain::github::parse_event;
use enclii_domain::spec::*;
use proptest::prelude::*;

/// Parses `text`; on success checks the canonical JSON round trip, on failure that every error
/// names a field.
fn check_parse(text: &str, format: SpecFormat) -> Result<(), TestCaseError> {
    match ServiceSpec::parse(text, format) {
        Ok(spec) => {
            let json = serde_json::to_string(&spec).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let again = ServiceSpec::parse(&json, SpecFormat::Json);
            prop_assert_eq!(again, Ok(spec), "{}", json);
        }
        Err(errors) => {
            prop_assert!(!errors.0.is_empty());
            for e in &errors {
                prop_assert!(!e.path.is_empty(), "error without a path: {e:?}");
                prop_assert!(!e.message.is_empty(), "error without a message: {e:?}");
            }
        }
    }
    Ok(())
}

/// Characters that matter to YAML and JSON, to reach deeper into the parsers than random text.
fn yamlish() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 \n\t:{}\\[\\],\\-#&*!|>'\"%@?~.=/\\\\]{0,300}"
}

/// A plausible or hostile value for a YAML field.
fn yaml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("~".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("\"\"".to_string()),
        Just("-1".to_string()),
        Just("0".to_string()),
        Just("1e400".to_string()),
        Just(".nan".to_string()),
        Just("99999999999999999999999".to_string()),
        Just("*anchor".to_string()),
        Just("[1, 2, 3]".to_string()),
        Just("{ a: 1 }".to_string()),
        Just("true".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| n.to_string()),
        "[a-z0-9./:-]{0,20}",
        "[0-9]{1,4}(m|Mi|Gi|s|h)?",
        yamlish(),
    ]
}

#[derive(Clone, Debug)]
enum Mutation {
    Delete(usize),
    Replace(usize, String),
    ReplaceValue(usize, String),
    Insert(usize, String),
    Duplicate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let line = 0..EXAMPLE.lines().count();
    prop_oneof![
        2 => line.clone().prop_map(Mutation::Delete),
        1 => (line.clone(), yamlish()).prop_map(|(i, s)| Mutation::Replace(i, s)),
        6 => (line.clone(), yaml_value()).prop_map(|(i, s)| Mutation::ReplaceValue(i, s)),
        1 => (line.clone(), yamlish()).prop_map(|(i, s)| Mutation::Insert(i, s)),
        1 => line.prop_map(Mutation::Duplicate),
    ]
}

fn apply(lines: &mut Vec<String>, m: &Mutation) {
    let len = lines.len();
    match m {
        Mutation::Delete(i) if *i < len => {
            lines.remove(*i);
        }
        Mutation::Replace(i, s) if *i < len => lines[*i] = s.clone(),
        Mutation::ReplaceValue(i, s) if *i < len => {
            // Replace the value of one `key: value` pair on the line (inline maps included).
            let line = &lines[*i];
            let colons: Vec<usize> = line.match_indices(": ").map(|(p, _)| p).collect();
            if let Some(&at) = colons.get(s.len() % colons.len().max(1)) {
                let rest = &line[at + 2..];
                let end = rest.find([',', '}', ']']).unwrap_or(rest.len());
                lines[*i] = format!("{}: {}{}", &line[..at], s, &rest[end..]);
            }
        }
        Mutation::Insert(i, s) => lines.insert((*i).min(len), s.clone()),
        Mutation::Duplicate(i) if *i < len => {
            let dup = lines[*i].clone();
            lines.insert(*i, dup);
        }
        _ => {}
    }
}

fn slug() -> impl Strategy<Value = String> {
    "[a-z]([a-z0-9-]{0,20}[a-z0-9])?"
}

fn environment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("dev".to_string()),
        Just("stage".to_string()),
        Just("prod".to_string()),
        (1u64..1_000_000).prop_map(|n| format!("preview-{n}")),
    ]
}

fn hostname() -> impl Strategy<Value = String> {
    (
        prop::bool::ANY,
        prop::collection::vec("[a-z]([a-z0-9-]{0,10}[a-z0-9])?", 1..4),
        "[a-z]{2,6}",
    )
        .prop_map(|(wildcard, labels, tld)| format!("{}{}.{tld}", if wildcard { "*." } else { "" }, labels.join(".")))
}

fn cpu() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u32..64_000).prop_map(|m| format!("{m}m")),
        (1u32..64).prop_map(|c| c.to_string()),
        (0u32..8, 1u32..1000).prop_map(|(i, f)| format!("{i}.{f:03}")),
    ]
}

fn memory() -> impl Strategy<Value = String> {
    (
        1u32..4096,
        prop::sample::select(vec!["", "k", "M", "G", "Ki", "Mi", "Gi"]),
    )
        .prop_map(|(n, s)| format!("{n}{s}"))
}

fn cron() -> impl Strategy<Value = String> {
    let field = |max: u32, min: u32| {
        prop_oneof![
            Just("*".to_string()),
            (min..=max).prop_map(|n| n.to_string()),
            (1u32..=max).prop_map(|n| format!("*/{n}")),
            (min..=max, min..=max).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
        ]
    };
    (field(59, 0), field(23, 0), field(31, 1), field(12, 1), field(6, 0))
        .prop_map(|(a, b, c, d, e)| format!("{a} {b} {c} {d} {e}"))
}

fn canary_steps() -> impl Strategy<Value = Vec<u32>> {
    prop::collection::btree_set(1u32..100, 0..5).prop_map(|s| s.into_iter().chain([100]).collect())
}

fn probe(ports: Vec<u32>) -> impl Strategy<Value = Option<Probe>> {
    let port = prop::sample::select(if ports.is_empty() { vec![8080] } else { ports });
    prop::option::of(prop_oneof![
        ("/[a-z]{0,10}", 1u32..=300).prop_map(|(path, t)| Probe {
            http_get: Some(path),
            port: Some(8080),
            timeout_seconds: Some(t),
            ..Probe::default()
        }),
        port.prop_map(|p| Probe {
            tcp_socket: Some(p),
            period_seconds: Some(10),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
    ])
}

prop_compose! {
    fn valid_spec()(
        project in slug(),
        name in slug(),
        environment in environment(),
        ports in prop::collection::btree_set(1u32..=65535, 1..4),
        (min, max) in (1u32..=1000).prop_flat_map(|max| (0..=max, Just(max))),
        cpu in prop::option::of(cpu()),
        memory in prop::option::of(memory()),
        hosts in prop::collection::btree_set(hostname(), 0..3),
        env in prop::collection::btree_map("[A-Z_][A-Z0-9_]{0,12}", "[ -~]{0,20}", 0..4),
        secrets in prop::collection::vec(slug(), 0..2),
        volumes in prop::collection::btree_map(slug(), (memory(), prop::option::of(slug())), 0..3),
        jobs in prop::collection::btree_map(slug(), (cron(), prop::collection::vec("[a-z./-]{1,10}", 1..3)), 0..3),
        hpa in prop::option::of(1u32..=100),
        canary in prop::bool::ANY,
        steps in canary_steps(),
        max_error_rate in 0.0f64..=1.0,
        window in (1u32..600, prop::sample::select(vec!["s", "m", "h"])).prop_map(|(n, u)| format!("{n}{u}")),
        branch in "[a-z]{1,8}(/[a-z0-9]{1,8})?",
        auto_build in prop::bool::ANY,
    ) -> (ServiceSpec, Vec<u32>) {
        let ports: Vec<u32> = ports.into_iter().collect();
        let spec = ServiceSpec {
            api_version: API_VERSION.to_string(),
            kind: KIND.to_string(),
            metadata: Metadata { project, environment, name },
            spec: Spec {
                build: Build {
                    build_type: if auto_build { BuildType::Auto } else { BuildType::Dockerfile },
                    ..Build::default()
                },
                source: Some(Source {
                    git: GitSource { repository: "git@github.com:org/repo.git".into(), branch },
                }),
                runtime: Runtime {
                    image: None,
                    cmd: Some(vec!["./server".into()]),
                    ports: ports.clone(),
                    cpu,
                    memory,
                    replicas: Replicas { min, max },
                },
                health: Health::default(),
                routes: hosts.into_iter().map(|host| Route { host, path: "/".into(), tls: None }).collect(),
                env: env.into_iter().map(|(name, value)| EnvVar { name, value, from_addon: None }).collect(),
                env_from: secrets.into_iter().map(EnvFrom::secret).collect(),
                volumes: volumes
                    .into_iter()
                    .map(|(name, (size, class))| Volume { mount_path: format!("/mnt/{name}"), name, size, class })
                    .collect(),
                jobs: jobs.into_iter().map(|(name, (schedule, args))| Job { name, schedule, args }).collect(),
                autoscaling: Autoscaling { hpa: hpa.map(|cpu_target_utilization| Hpa { cpu_target_utilization }) },
                deploy: Deploy {
                    strategy: if canary { DeployStrategy::Canary } else { DeployStrategy::Rolling },
                    steps,
                    analysis: Analysis { max_error_rate, window, max_p95_latency: None },
                },
                previews: Previews { seed_addons: auto_build },
            },
        };
        (spec, ports)
    }
}

fn valid_spec_with_health() -> impl Strategy<Value = ServiceSpec> {
    valid_spec().prop_flat_map(|(spec, ports)| {
        (Just(spec), probe(ports.clone()), probe(ports)).prop_map(|(mut spec, readiness, liveness)| {
            spec.spec.health = Health { readiness, liveness };
            spec
        })
    })
}

/// Arbitrary JSON values, to feed the webhook parser structurally plausible garbage.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        "[ -~]{0,12}".prop_map(serde_json::Value::from),
        "[0-9a-f]{40}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        let keys = prop::sample::select(vec![
            "ref",
            "after",
            "before",
            "deleted",
            "repository",
            "full_name",
            "clone_url",
            "html_url",
            "head_commit",
            "pusher",
            "name",
            "action",
            "number",
            "pull_request",
            "head",
            "base",
            "sha",
            "repo",
            "merged",
            "zen",
            "hook_id",
            "message",
            "author",
        ]);
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(keys.prop_map(String::from), inner, 0..8)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn event_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("ping".to_string()),
        Just("push".to_string()),
        Just("pull_request".to_string()),
        "[a-z_]{0,12}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>(), yamlish in yamlish()) {
        for t in [&text, &yamlish] {
            check_parse(t, SpecFormat::Yaml)?;
            check_parse(t, SpecFormat::Json)?;
            let _ = ServiceSpec::parse_any(t);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), event in event_name()) {
        let text = String::from_utf8_lossy(&bytes);
        check_parse(&text, SpecFormat::Yaml)?;
        check_parse(&text, SpecFormat::Json)?;
        let _ = parse_event(&event, &bytes);
    }

    #[test]
    fn field_validators_never_panic(
        text in any::<String>(),
        cron in prop::collection::vec("[0-9*,/LW#?a-zA-Z-]{0,6}", 5),
        number in "[0-9.]{0,45}(m|k|Ki|Mi|Ei|E|s|h|ms)?",
    ) {
        let cron = cron.join(" ");
        for s in [text.as_str(), cron.as_str(), number.as_str()] {
            let _ = validate_cron(s);
            let _ = parse_cpu_millis(s);
            let _ = parse_memory_bytes(s);
            let _ = parse_duration(s);
            let _ = validate_git_url(s);
            let _ = validate_git_ref(s);
            let _ = validate_hostname(s);
            let _ = validate_slug(s);
            let _ = validate_environment_name(s);
            let _ = validate_env_name(s);
        }
    }

    #[test]
    fn webhook_parser_never_panics_on_json(value in json_value(), event in event_name()) {
        if let Err(e) = parse_event(&event, value.to_string().as_bytes()) {
            prop_assert!(!e.path.is_empty() && !e.message.is_empty(), "{e:?}");
        }
    }

    #[test]
    fn mutated_example_parses_or_names_the_field(mutations in prop::collection::vec(mutation(), 1..4)) {
        let mut lines: Vec<String> = EXAMPLE.lines().map(String::from).collect();
        for m in &mutations {
            apply(&mut lines, m);
        }
        let text = lines.join("\n");
        check_parse(&text, SpecFormat::Yaml)?;
        // The same document as JSON, when the mutated YAML still loads as a value.
        if let Ok(value) = serde_yaml::from_str::<serde_json::Value>(&text) {
            check_parse(&value.to_string(), SpecFormat::Json)?;
        }
    }

    #[test]
    fn generated_valid_specs_parse_and_round_trip(spec in valid_spec_with_health()) {
        prop_assert_eq!(spec.validate(), Ok(()));
        let json = serde_json::to_string(&spec).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(ServiceSpec::parse(&json, SpecFormat::Json), Ok(spec.clone()), "{}", json);
        let yaml = serde_yaml::to_string(&spec).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(ServiceSpec::parse(&yaml, SpecFormat::Yaml), Ok(spec.clone()), "{}", yaml);
        prop_assert_eq!(ServiceSpec::parse_any(&yaml), Ok(spec.clone()));
        let ports: BTreeSet<u32> = spec.spec.runtime.ports.iter().copied().collect();
        prop_assert_eq!(ports.len(), spec.spec.runtime.ports.len());
        if let Some(cpu) = &spec.spec.runtime.cpu {
            prop_assert_eq!(spec.spec.runtime.cpu_millis(), parse_cpu_millis(cpu).ok());
            prop_assert!(spec.spec.runtime.cpu_millis().is_some());
        }
        prop_assert!(spec.spec.deploy.analysis.window_duration().is_some());
    }
}
