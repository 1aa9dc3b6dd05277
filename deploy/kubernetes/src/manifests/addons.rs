//! Add-ons: a database per project environment (PostgreSQL, Redis), in the environment's
//! namespace, from the official images' interface — as the Docker target runs them.
//!
//! Per add-on `<name>` (objects `enclii-addon-<name>`, labelled like the environment's objects
//! plus `dev.enclii.addon=<name>`, never with a service's labels, so removing a service leaves it):
//! - a `Secret` seeding the first login: PostgreSQL's `POSTGRES_USER`, `POSTGRES_PASSWORD`,
//!   `POSTGRES_DB` (read once, by `initdb`); Redis' ACL file `users.acl` (hashes only), copied
//!   to the data volume by an init container when the volume has none;
//! - a headless `Service` selecting the add-on's pod: services reach it at
//!   `enclii-addon-<name>.<namespace>.svc.<cluster domain>`;
//! - a `StatefulSet` of one replica with a `data` claim template (`size_bytes`, else 1Gi),
//!   an exec readiness probe that passes once the server answers on its TCP port.
//!
//! Logins change without exec into the pod: an admin run is a `Job` from the add-on's image
//! (`enclii-addon-<name>-login` / `-retire`) that connects over the Service with the image's
//! own client (`psql`, `redis-cli`). What it runs and the passwords it authenticates with are
//! in a `Secret` of the Job's name read as environment variables; the pod spec holds neither,
//! and the client reads the commands on its standard input.

use std::collections::BTreeMap;

use enclii_deploy_contract::ServiceKey;
use enclii_deploy_contract::model::{AddonKey, AddonWorkload};
use enclii_domain::addons::{AddonCredentials, AddonKind};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvFromSource, EnvVar, EnvVarSource, ExecAction, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, Secret, SecretEnvSource,
    SecretKeySelector, SecretVolumeSource, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{LABEL_NAME, MAX_NAME, dns_name, environment_labels, format_bytes, hex, meta, namespace_name};

/// Names the add-on on its objects (the Docker target's label too).
pub const LABEL_ADDON: &str = "dev.enclii.addon";
/// A StatefulSet's pods carry a `controller-revision-hash` label of its name and 11 more
/// characters; a label value has at most 63.
const MAX_STATEFUL_SET_NAME: usize = 52;
/// The data volume's size when the add-on names none.
pub const DEFAULT_ADDON_SIZE: u64 = 1 << 30;
/// The claim template's name: the claim is `data-<statefulset>-0`.
const DATA: &str = "data";
/// Where the Redis ACL seed is mounted (read-only) for the init container.
const ACL_SEED_DIR: &str = "/etc/enclii";
const ACL_FILE: &str = "users.acl";

/// What an add-on's containers ask for. Every container has CPU and memory requests and a
/// memory limit (= request, as services' memory is), so it is admitted in an environment whose
/// `ResourceQuota` limits CPU or memory (the API rejects pods without them there).
struct Footprint {
    cpu: &'static str,
    memory_bytes: u64,
}

fn footprint(kind: AddonKind) -> Footprint {
    match kind {
        AddonKind::Postgres => Footprint {
            cpu: "250m",
            memory_bytes: 512 << 20,
        },
        AddonKind::Redis => Footprint {
            cpu: "100m",
            memory_bytes: 256 << 20,
        },
    }
}

/// An admin run's container and the Redis ACL init container: a client and a shell.
const ADMIN_FOOTPRINT: Footprint = Footprint {
    cpu: "50m",
    memory_bytes: 64 << 20,
};

/// The add-on's objects, applied in this order.
#[derive(Clone, Debug)]
pub struct AddonObjects {
    pub secret: Secret,
    pub service: Service,
    pub stateful_set: StatefulSet,
}

/// What an admin run does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddonTask<'a> {
    /// Makes the current login work with its password (a superuser, as the image's first one),
    /// authenticating as the previous login, else as the current one.
    Login,
    /// Disables `user` and ends its sessions, authenticating as the current login.
    Retire { user: &'a str },
}

impl AddonTask<'_> {
    fn suffix(self) -> &'static str {
        match self {
            AddonTask::Login => "login",
            AddonTask::Retire { .. } => "retire",
        }
    }
}

/// An admin run: its `Secret` (commands and passwords) and its `Job`.
#[derive(Clone, Debug)]
pub struct AdminRun {
    pub secret: Secret,
    pub job: Job,
}

/// The environment's namespace, as its services'.
pub fn addon_namespace(key: &AddonKey) -> String {
    namespace_name(&addon_environment_key(key))
}

/// The key the environment's own objects (namespace, policies) are rendered for.
pub fn addon_environment_key(key: &AddonKey) -> ServiceKey {
    ServiceKey::new(&key.project, &key.environment, &key.name)
}

/// `enclii-addon-<name>`: the StatefulSet, its headless Service and its Secret (hash-shortened
/// past 52 characters).
pub fn addon_name(key: &AddonKey) -> String {
    dns_name(&format!("enclii-addon-{}", key.name), MAX_STATEFUL_SET_NAME)
}

/// The Job of an admin run, and the Secret it reads: `enclii-addon-<name>-login` or `-retire`
/// (one per task, so that a retirement never reads a rotation's Secret).
pub fn addon_job_name(key: &AddonKey, task: AddonTask<'_>) -> String {
    dns_name(&format!("{}-{}", addon_name(key), task.suffix()), MAX_NAME)
}

/// The add-on's pod (the StatefulSet's only ordinal).
pub fn addon_pod_name(key: &AddonKey) -> String {
    format!("{}-0", addon_name(key))
}

/// Where services reach the add-on: the headless Service's name in the cluster's DNS.
pub fn addon_host(key: &AddonKey, cluster_domain: &str) -> String {
    format!("{}.{}.svc.{cluster_domain}", addon_name(key), addon_namespace(key))
}

/// Selects every object of the add-on that carries its label (and its data claims).
pub fn addon_selector(key: &AddonKey) -> String {
    format!("{LABEL_ADDON}={}", key.name)
}

/// The labels of the add-on's objects and pod: the environment's, its name, [`LABEL_ADDON`].
pub fn addon_labels(key: &AddonKey) -> BTreeMap<String, String> {
    let mut labels = environment_labels(&addon_environment_key(key));
    labels.insert(LABEL_NAME.into(), key.name.clone());
    labels.insert(LABEL_ADDON.into(), key.name.clone());
    labels
}

/// What the StatefulSet and the Service select (immutable: the add-on only).
fn selector(key: &AddonKey) -> BTreeMap<String, String> {
    BTreeMap::from([(LABEL_ADDON.to_string(), key.name.clone())])
}

pub fn sha256_hex(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

/// The Redis ACL rule of a login: every command and key, authenticated by the password's hash.
pub fn redis_acl(credentials: &AddonCredentials) -> String {
    format!(
        "{} on resetpass #{} ~* &* +@all",
        credentials.user,
        sha256_hex(&credentials.password)
    )
}

/// Whether `user` can be written into SQL identifiers and ACL rules as it is (Enclii's logins
/// are `app` and `app_alt`).
pub fn check_login_name(user: &str) -> Result<(), String> {
    let plain = !user.is_empty() && user.len() <= 63;
    if plain && user.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        Ok(())
    } else {
        Err(format!(
            "add-on login `{user}` is not a plain name (letters, digits, `_`, `-`)"
        ))
    }
}

fn sql_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The commands of `task`: SQL for PostgreSQL, one `redis-cli` command a line for Redis.
pub fn admin_work(kind: AddonKind, credentials: &AddonCredentials, task: AddonTask<'_>) -> String {
    match (kind, task) {
        (AddonKind::Postgres, AddonTask::Login) => {
            let user = &credentials.user;
            format!(
                "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{user}') THEN CREATE ROLE \"{user}\"; \
                 END IF; END $$;\nALTER ROLE \"{user}\" WITH LOGIN SUPERUSER PASSWORD {};\n",
                sql_literal(&credentials.password)
            )
        }
        (AddonKind::Redis, AddonTask::Login) => format!("ACL SETUSER {}\nACL SAVE", redis_acl(credentials)),
        (AddonKind::Postgres, AddonTask::Retire { user }) => format!(
            "DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{user}') THEN \
             ALTER ROLE \"{user}\" WITH NOLOGIN PASSWORD NULL; END IF; END $$;\n\
             SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = '{user}';\n"
        ),
        (AddonKind::Redis, AddonTask::Retire { user }) => {
            format!("ACL SETUSER {user} off resetpass\nACL SAVE\nCLIENT KILL USER {user}")
        }
    }
}

fn resources(footprint: &Footprint) -> ResourceRequirements {
    let memory = Quantity(format_bytes(footprint.memory_bytes));
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(footprint.cpu.into())),
            ("memory".to_string(), memory.clone()),
        ])),
        limits: Some(BTreeMap::from([("memory".to_string(), memory)])),
        ..Default::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn secret_env(name: &str, secret: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: name.into(),
                optional: Some(false),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn secret(name: String, ns: &str, labels: BTreeMap<String, String>, data: Vec<(&str, String)>) -> Secret {
    Secret {
        metadata: meta(name, ns, labels),
        type_: Some("Opaque".into()),
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Default::default()
    }
}

/// The add-on's Secret, headless Service and StatefulSet. The Secret always holds the current
/// login: it only seeds a data volume that has none (a new add-on, or a claim that was lost).
pub fn addon_objects(addon: &AddonWorkload) -> AddonObjects {
    let key = &addon.key;
    let (ns, name, labels) = (addon_namespace(key), addon_name(key), addon_labels(key));
    let credentials = &addon.credentials;
    let seed = match addon.kind {
        AddonKind::Postgres => vec![
            ("POSTGRES_USER", credentials.user.clone()),
            ("POSTGRES_PASSWORD", credentials.password.clone()),
            (
                "POSTGRES_DB",
                credentials.database.clone().unwrap_or_else(|| "app".into()),
            ),
        ],
        AddonKind::Redis => vec![(ACL_FILE, format!("user default off\nuser {}\n", redis_acl(credentials)))],
    };
    let port = i32::from(addon.kind.port());
    let service = Service {
        metadata: meta(name.clone(), &ns, labels.clone()),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector(key)),
            ports: Some(vec![ServicePort {
                name: Some(addon.kind.as_str().into()),
                port,
                target_port: Some(IntOrString::Int(port)),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    AddonObjects {
        secret: secret(name.clone(), &ns, labels.clone(), seed),
        service,
        stateful_set: stateful_set(addon, &ns, &name, labels),
    }
}

fn stateful_set(addon: &AddonWorkload, ns: &str, name: &str, labels: BTreeMap<String, String>) -> StatefulSet {
    let kind = addon.kind;
    let port = i32::from(kind.port());
    let data_mount = |path: &str| VolumeMount {
        name: DATA.into(),
        mount_path: path.into(),
        ..Default::default()
    };
    let (probe, mut container, init, volumes) = match kind {
        AddonKind::Postgres => (
            vec!["pg_isready".into(), "-h".into(), "127.0.0.1".into(), "-q".into()],
            Container {
                // A claim's root may hold `lost+found`, which initdb refuses: the data lives
                // one directory down (as the image's documentation advises).
                env: Some(vec![env("PGDATA", "/var/lib/postgresql/data/pgdata")]),
                env_from: Some(vec![EnvFromSource {
                    secret_ref: Some(SecretEnvSource {
                        name: name.into(),
                        optional: Some(false),
                    }),
                    ..Default::default()
                }]),
                volume_mounts: Some(vec![data_mount("/var/lib/postgresql/data")]),
                ..Default::default()
            },
            None,
            None,
        ),
        AddonKind::Redis => {
            // Redis refuses writes past 3/4 of the memory limit rather than being killed at it
            // (and reloading its append-only file into the same limit).
            let maxmemory = footprint(kind).memory_bytes / 4 * 3;
            let seed = format!("{ACL_SEED_DIR}/{ACL_FILE}");
            let acl = format!("/data/{ACL_FILE}");
            (
                // Without a login Redis answers NOAUTH: it is up. redis-cli's exit code does
                // not say so in every version, its output does.
                vec![
                    "sh".into(),
                    "-c".into(),
                    "redis-cli -h 127.0.0.1 PING 2>&1 | grep -qE 'PONG|NOAUTH|WRONGPASS'".into(),
                ],
                Container {
                    args: Some(
                        [
                            "redis-server",
                            "--aclfile",
                            &acl,
                            "--appendonly",
                            "yes",
                            "--maxmemory",
                            &maxmemory.to_string(),
                            "--maxmemory-policy",
                            "noeviction",
                        ]
                        .map(String::from)
                        .to_vec(),
                    ),
                    volume_mounts: Some(vec![data_mount("/data")]),
                    ..Default::default()
                },
                // The ACL file is written once; `ACL SAVE` rewrites it on the volume afterwards.
                // The image's entrypoint then hands /data to the redis user and drops root.
                Some(Container {
                    name: "acl-seed".into(),
                    image: Some(addon.image.clone()),
                    command: Some(vec![
                        "sh".into(),
                        "-c".into(),
                        format!("[ -s {acl} ] || cp {seed} {acl}"),
                    ]),
                    volume_mounts: Some(vec![
                        data_mount("/data"),
                        VolumeMount {
                            name: "acl-seed".into(),
                            mount_path: ACL_SEED_DIR.into(),
                            read_only: Some(true),
                            ..Default::default()
                        },
                    ]),
                    resources: Some(resources(&ADMIN_FOOTPRINT)),
                    ..Default::default()
                }),
                Some(vec![Volume {
                    name: "acl-seed".into(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(name.into()),
                        default_mode: Some(0o400),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
            )
        }
    };
    container.name = kind.as_str().into();
    container.image = Some(addon.image.clone());
    container.ports = Some(vec![ContainerPort {
        name: Some(kind.as_str().into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..Default::default()
    }]);
    container.readiness_probe = Some(Probe {
        exec: Some(ExecAction { command: Some(probe) }),
        period_seconds: Some(5),
        timeout_seconds: Some(5),
        failure_threshold: Some(3),
        ..Default::default()
    });
    container.resources = Some(resources(&footprint(kind)));
    let size = addon.size_bytes.unwrap_or(DEFAULT_ADDON_SIZE);
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA.into()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_string(), Quantity(format_bytes(size)))])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    StatefulSet {
        metadata: meta(name.into(), ns, labels.clone()),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(name.into()),
            selector: LabelSelector {
                match_labels: Some(selector(&addon.key)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    init_containers: init.map(|c| vec![c]),
                    containers: vec![container],
                    volumes,
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    ..Default::default()
                }),
            },
            volume_claim_templates: Some(vec![claim]),
            // The claim outlives the StatefulSet; `remove_addon` deletes it unless the data is kept.
            persistent_volume_claim_retention_policy: Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some("Retain".into()),
                when_scaled: Some("Retain".into()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The admin run's script: tries the first login, then the fallback one, with the image's client
/// reading `$ENCLII_WORK` on its standard input. Passwords reach the client in its environment.
const ADMIN_SCRIPT: &str = r#"attempt() {
  echo "enclii: connecting to $ENCLII_HOST:$ENCLII_PORT as $1"
  if run "$1" "$2"; then echo "enclii: done as $1"; exit 0; fi
}
attempt "$ENCLII_USER" "$ENCLII_PASSWORD"
if [ -n "${ENCLII_FALLBACK_USER:-}" ]; then attempt "$ENCLII_FALLBACK_USER" "$ENCLII_FALLBACK_PASSWORD"; fi
echo "enclii: no login could run the commands" >&2
exit 1
"#;

/// `run USER PASSWORD` for PostgreSQL: psql stops at the first error with a non-zero exit.
const POSTGRES_RUN: &str = r#"run() {
  printf '%s\n' "$ENCLII_WORK" | PGPASSWORD="$2" PGCONNECT_TIMEOUT=10 \
    psql -X -v ON_ERROR_STOP=1 -qAt -h "$ENCLII_HOST" -p "$ENCLII_PORT" -U "$1" -d "$ENCLII_DATABASE" 2>&1
}
"#;

/// `run USER PASSWORD` for Redis: redis-cli reports error replies in its output, not always in
/// its exit code.
const REDIS_RUN: &str = r#"run() {
  out=$(printf '%s\n' "$ENCLII_WORK" | REDISCLI_AUTH="$2" redis-cli --no-auth-warning -h "$ENCLII_HOST" -p "$ENCLII_PORT" --user "$1" 2>&1)
  code=$?
  printf '%s\n' "$out"
  [ "$code" -eq 0 ] && ! printf '%s\n' "$out" | grep -qE 'ERR|WRONGPASS|NOAUTH|NOPERM|Could not connect'
}
"#;

/// The admin run of `task` against the add-on at `host`: the logins it authenticates as (the
/// previous then the current one to converge a rotation; the current one to retire), the
/// commands and passwords in its Secret. The cluster stops it after `deadline_seconds`.
pub fn admin_run(addon: &AddonWorkload, task: AddonTask<'_>, host: &str, deadline_seconds: i64) -> AdminRun {
    let key = &addon.key;
    let (ns, labels) = (addon_namespace(key), addon_labels(key));
    let secret_name = addon_job_name(key, task);
    let current = &addon.credentials;
    let logins: Vec<&AddonCredentials> = match task {
        AddonTask::Login => addon.previous.iter().chain([current]).collect(),
        AddonTask::Retire { .. } => vec![current],
    };
    let mut data = vec![
        ("ENCLII_WORK", admin_work(addon.kind, current, task)),
        ("ENCLII_PASSWORD", logins[0].password.clone()),
    ];
    let mut vars = vec![
        env("ENCLII_HOST", host),
        env("ENCLII_PORT", addon.kind.port().to_string()),
        env("ENCLII_USER", logins[0].user.clone()),
        secret_env("ENCLII_PASSWORD", &secret_name),
        secret_env("ENCLII_WORK", &secret_name),
    ];
    if let Some(fallback) = logins.get(1) {
        data.push(("ENCLII_FALLBACK_PASSWORD", fallback.password.clone()));
        vars.push(env("ENCLII_FALLBACK_USER", fallback.user.clone()));
        vars.push(secret_env("ENCLII_FALLBACK_PASSWORD", &secret_name));
    }
    let run = match addon.kind {
        AddonKind::Postgres => {
            let database = current.database.clone().unwrap_or_else(|| "app".into());
            vars.push(env("ENCLII_DATABASE", database));
            POSTGRES_RUN
        }
        AddonKind::Redis => REDIS_RUN,
    };
    // The pods carry the environment's labels but not the add-on's: its Service must not
    // select them.
    let mut pod_labels = labels.clone();
    pod_labels.remove(LABEL_ADDON);
    let container = Container {
        name: "admin".into(),
        image: Some(addon.image.clone()),
        command: Some(vec!["sh".into(), "-c".into(), format!("set -u\n{run}{ADMIN_SCRIPT}")]),
        env: Some(vars),
        resources: Some(resources(&ADMIN_FOOTPRINT)),
        ..Default::default()
    };
    let job = Job {
        metadata: meta(addon_job_name(key, task), &ns, labels.clone()),
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            active_deadline_seconds: Some(deadline_seconds),
            ttl_seconds_after_finished: Some(86_400),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    restart_policy: Some("Never".into()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    AdminRun {
        secret: secret(secret_name, &ns, labels, data),
        job,
    }
}

/// The add-on's objects (and admin runs) as JSON values, for snapshots and validation.
pub fn addon_documents(objects: &AddonObjects, runs: &[AdminRun]) -> Vec<serde_json::Value> {
    fn value<T: Serialize>(obj: &T) -> serde_json::Value {
        serde_json::to_value(obj).expect("k8s objects serialize")
    }
    let mut docs = vec![
        value(&objects.secret),
        value(&objects.service),
        value(&objects.stateful_set),
    ];
    for run in runs {
        docs.push(value(&run.secret));
        docs.push(value(&run.job));
    }
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(user: &str, password: &str) -> AddonCredentials {
        AddonCredentials {
            user: user.into(),
            password: password.into(),
            database: Some("app".into()),
        }
    }

    fn addon(kind: AddonKind, previous: Option<AddonCredentials>) -> AddonWorkload {
        AddonWorkload {
            key: AddonKey {
                project: "shop".into(),
                environment: "prod".into(),
                name: "cache".into(),
            },
            kind,
            image: kind.default_image(kind.default_version()),
            size_bytes: None,
            credentials: login("app_alt", "new-secret"),
            previous,
        }
    }

    fn pod_spec_text(job: &Job) -> String {
        serde_json::to_string(&job.spec.as_ref().unwrap().template).unwrap()
    }

    #[test]
    fn names_fit_a_statefulset_and_the_host_is_the_headless_service() {
        let mut key = addon(AddonKind::Redis, None).key;
        assert_eq!(addon_name(&key), "enclii-addon-cache");
        assert_eq!(
            addon_host(&key, "cluster.local"),
            "enclii-addon-cache.enclii-shop-prod.svc.cluster.local"
        );
        assert_eq!(
            addon_job_name(&key, AddonTask::Retire { user: "app" }),
            "enclii-addon-cache-retire"
        );
        key.name = "c".repeat(63);
        assert_eq!(addon_name(&key).len(), 52);
        assert!(addon_job_name(&key, AddonTask::Login).len() <= 63);
    }

    #[test]
    fn the_redis_seed_holds_hashes_and_the_claim_defaults_to_1gi() {
        let objects = addon_objects(&addon(AddonKind::Redis, None));
        let text = serde_json::to_string(&addon_documents(&objects, &[])).unwrap();
        assert!(!text.contains("new-secret"), "the ACL seed holds only the hash");
        let seed = &objects.secret.data.as_ref().unwrap()[ACL_FILE];
        let seed = String::from_utf8(seed.0.clone()).unwrap();
        assert_eq!(
            seed,
            format!(
                "user default off\nuser app_alt on resetpass #{} ~* &* +@all\n",
                sha256_hex("new-secret")
            )
        );
        let spec = objects.stateful_set.spec.unwrap();
        let claim = &spec.volume_claim_templates.unwrap()[0];
        let requests = claim
            .spec
            .as_ref()
            .unwrap()
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap();
        assert_eq!(requests["storage"].0, "1Gi");
        let pod = spec.template.spec.unwrap();
        let args = pod.containers[0].args.clone().unwrap();
        assert_eq!(
            &args[..5],
            ["redis-server", "--aclfile", "/data/users.acl", "--appendonly", "yes"]
        );
    }

    #[test]
    fn admin_runs_keep_passwords_out_of_the_pod_spec() {
        let previous = login("app", "old-secret");
        for kind in AddonKind::ALL {
            let workload = addon(kind, Some(previous.clone()));
            let run = admin_run(&workload, AddonTask::Login, "h", 60);
            let spec = pod_spec_text(&run.job);
            for secret in ["old-secret", "new-secret", &sha256_hex("new-secret")] {
                assert!(!spec.contains(secret), "{kind}: {secret} in {spec}");
            }
            let data = run.secret.data.unwrap();
            assert_eq!(data["ENCLII_PASSWORD"].0, b"old-secret", "the previous login first");
            assert_eq!(data["ENCLII_FALLBACK_PASSWORD"].0, b"new-secret");
            let labels = run.job.spec.unwrap().template.metadata.unwrap().labels.unwrap();
            assert!(
                !labels.contains_key(LABEL_ADDON),
                "the Service must not select admin pods"
            );
        }
        let retire = admin_run(
            &addon(AddonKind::Postgres, None),
            AddonTask::Retire { user: "app" },
            "h",
            60,
        );
        let data = retire.secret.data.unwrap();
        assert_eq!(
            data["ENCLII_PASSWORD"].0, b"new-secret",
            "retiring authenticates as the current login"
        );
        assert!(!data.contains_key("ENCLII_FALLBACK_PASSWORD"));
        let work = String::from_utf8(data["ENCLII_WORK"].0.clone()).unwrap();
        assert!(work.contains("ALTER ROLE \"app\" WITH NOLOGIN PASSWORD NULL"), "{work}");
    }

    #[test]
    fn work_quotes_passwords_and_login_names_are_checked() {
        let work = admin_work(AddonKind::Postgres, &login("app", "it's"), AddonTask::Login);
        assert!(work.contains("PASSWORD 'it''s';"), "{work}");
        assert_eq!(
            admin_work(
                AddonKind::Redis,
                &login("app", "x"),
                AddonTask::Retire { user: "app_alt" }
            ),
            "ACL SETUSER app_alt off resetpass\nACL SAVE\nCLIENT KILL USER app_alt"
        );
        assert!(check_login_name("app_alt").is_ok());
        assert!(check_login_name("app\"; DROP").is_err());
        assert!(check_login_name("").is_err());
    }
}
