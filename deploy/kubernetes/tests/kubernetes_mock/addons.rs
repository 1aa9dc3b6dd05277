//! Add-ons against the stand-in API server: the objects a provisioning applies, the wait for the
//! StatefulSet's pod, the admin Jobs of a rotation and a retirement, removal with and without the
//! data. What the Jobs' scripts do inside PostgreSQL and Redis is not exercised here (no pod
//! runs): only what the API is asked to run.

use enclii_deploy_contract::DeployError;
use enclii_deploy_contract::model::AddonWorkload;
use enclii_domain::addons::AddonKind;

use super::*;

const DB: &str = "enclii-addon-db";
const CACHE: &str = "enclii-addon-cache";

fn base64(text: &str) -> String {
    // The stand-in decodes nothing: compare with the encoding the API server stores.
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn seed_of(name: &str) -> k8s_openapi::api::core::v1::Secret {
    manifests::addon_objects(&addon_workload(AddonKind::Postgres, name, false)).secret
}

fn sha256_hex(text: &str) -> String {
    manifests::sha256_hex(text)
}

/// The add-on's Secret, Service and StatefulSet are applied; the StatefulSet is reported
/// not ready `polls_not_ready` times, then ready. Returns the applied Secret and StatefulSet.
async fn expect_addon_objects(handle: &mut Handle, name: &str, polls_not_ready: usize) -> (Value, Value) {
    expect_environment(handle, false).await;
    let secret = expect_apply(handle, &format!("{CORE}/secrets/{name}")).await;
    let service = expect_apply(handle, &format!("{CORE}/services/{name}")).await;
    assert_eq!(service["spec"]["clusterIP"], "None", "headless");
    assert_eq!(
        service["spec"]["selector"],
        secret["metadata"]["labels"]
            .as_object()
            .map(|l| json!({"dev.enclii.addon": l["dev.enclii.addon"]}))
            .unwrap()
    );
    let stateful_set = expect_apply(handle, &format!("{APPS}/statefulsets/{name}")).await;
    assert_eq!(stateful_set["spec"]["replicas"], 1);
    assert_eq!(stateful_set["spec"]["serviceName"], name);
    for _ in 0..polls_not_ready {
        expect(handle, "GET", &format!("{APPS}/statefulsets/{name}"))
            .await
            .reply(200, stateful_set_status(stateful_set.clone(), 0));
    }
    expect(handle, "GET", &format!("{APPS}/statefulsets/{name}"))
        .await
        .reply(200, stateful_set_status(stateful_set.clone(), 1));
    (secret, stateful_set)
}

/// An admin run: the earlier Job deleted (`earlier` says whether one was there), the Secret and
/// Job (both named `job`) applied, the Job polled until `end`, the Secret deleted. Returns the
/// applied Secret and Job.
async fn expect_admin_run(handle: &mut Handle, job: &str, earlier: bool, end: JobPhase) -> (Value, Value) {
    let secret = job;
    let job_path = format!("{BATCH}/jobs/{job}");
    expect_delete(handle, &job_path, earlier).await;
    if earlier {
        expect(handle, "GET", &job_path).await.not_found();
    }
    let applied_secret = expect_apply(handle, &format!("{CORE}/secrets/{secret}")).await;
    let applied_job = expect_apply(handle, &job_path).await;
    expect(handle, "GET", &job_path)
        .await
        .reply(200, job_status(applied_job.clone(), JobPhase::Running));
    expect(handle, "GET", &job_path)
        .await
        .reply(200, job_status(applied_job.clone(), end));
    expect_delete(handle, &format!("{CORE}/secrets/{secret}"), true).await;
    (applied_secret, applied_job)
}

/// The admin Job's pod spec holds no password (nor the Redis hash): they come from its Secret.
fn assert_no_secrets_in_pod_spec(job: &Value, addon: &AddonWorkload) {
    let pod = job["spec"]["template"].to_string();
    let mut secrets = vec![
        addon.credentials.password.clone(),
        sha256_hex(&addon.credentials.password),
    ];
    if let Some(previous) = &addon.previous {
        secrets.push(previous.password.clone());
    }
    for secret in secrets {
        assert!(!pod.contains(&secret), "{secret} in the pod spec: {pod}");
    }
    let container = &job["spec"]["template"]["spec"]["containers"][0];
    let command = container["command"].as_array().unwrap();
    assert_eq!(command[..2], [json!("sh"), json!("-c")]);
    let password = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "ENCLII_PASSWORD")
        .unwrap();
    assert!(password["value"].is_null(), "{password}");
    assert_eq!(password["valueFrom"]["secretKeyRef"]["key"], "ENCLII_PASSWORD");
}

#[tokio::test]
async fn mock_addon_first_provisioning_applies_the_objects_and_returns_once_the_pod_is_ready() {
    let (target, handle) = mock_target(config());
    let addon = addon_workload(AddonKind::Postgres, "db", false);
    let server = tokio::spawn(async move {
        let mut handle = handle;
        let (secret, stateful_set) = expect_addon_objects(&mut handle, DB, 2).await;
        assert_eq!(
            secret["data"],
            json!({"POSTGRES_DB": base64("app"), "POSTGRES_PASSWORD": base64("fixture-pw-gen1"),
                   "POSTGRES_USER": base64("app")})
        );
        assert_eq!(secret["metadata"]["labels"]["dev.enclii.addon"], "db");
        assert_eq!(secret["metadata"]["labels"]["enclii.dev/cost-center"], "solarpunk-saas");
        assert!(secret["metadata"]["labels"]["enclii.dev/service"].is_null());
        let spec = &stateful_set["spec"];
        assert_eq!(
            spec["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
            "5Gi"
        );
        assert_eq!(spec["selector"]["matchLabels"], json!({"dev.enclii.addon": "db"}));
        let container = &spec["template"]["spec"]["containers"][0];
        assert_eq!(container["image"], "postgres:16");
        assert_eq!(
            container["envFrom"],
            json!([{"secretRef": {"name": DB, "optional": false}}])
        );
        assert_eq!(
            container["env"],
            json!([{"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"}])
        );
        assert_eq!(
            container["volumeMounts"],
            json!([{"name": "data", "mountPath": "/var/lib/postgresql/data"}])
        );
        assert_eq!(
            container["readinessProbe"]["exec"]["command"],
            json!(["pg_isready", "-h", "127.0.0.1", "-q"])
        );
        assert!(
            !stateful_set.to_string().contains("fixture-pw"),
            "no password in the StatefulSet"
        );
        // Generation 1: the seed made the login; no admin Job follows.
        handle
    });
    let provisioned = target.provision_addon(&addon).await;
    let handle = server.await.expect("the stand-in API server's assertions hold");
    provisioned.unwrap();
    let endpoint = target.addon_endpoint(&addon.key, addon.kind);
    assert_eq!(
        (endpoint.host.as_str(), endpoint.port),
        ("enclii-addon-db.enclii-solarpunk-saas-prod.svc.cluster.local", 5432)
    );
    drop(target);
    expect_no_more_requests(handle).await;
}

#[tokio::test]
async fn mock_addon_rotation_runs_a_converge_job_as_the_previous_login_without_passwords_in_its_pod() {
    let (target, handle) = mock_target(config());
    let addon = addon_workload(AddonKind::Redis, "cache", true);
    let expected = addon.clone();
    let server = tokio::spawn(async move {
        let mut handle = handle;
        let (secret, stateful_set) = expect_addon_objects(&mut handle, CACHE, 0).await;
        let hash = sha256_hex("fixture-pw-gen2");
        assert_eq!(
            secret["data"],
            json!({"users.acl": base64(&format!("user default off\nuser app_alt on resetpass #{hash} ~* &* +@all\n"))}),
            "the seed is the current login, as hashes"
        );
        let pod = &stateful_set["spec"]["template"]["spec"];
        assert_eq!(
            pod["initContainers"][0]["command"][2],
            "[ -s /data/users.acl ] || cp /etc/enclii/users.acl /data/users.acl"
        );
        assert_eq!(pod["volumes"][0]["secret"]["secretName"], CACHE);
        assert_eq!(
            pod["initContainers"][0]["volumeMounts"][1],
            json!({"name": "acl-seed", "mountPath": "/etc/enclii", "readOnly": true})
        );
        let args = pod["containers"][0]["args"].as_array().unwrap();
        assert_eq!(
            args[..5],
            [
                json!("redis-server"),
                json!("--aclfile"),
                json!("/data/users.acl"),
                json!("--appendonly"),
                json!("yes")
            ]
        );

        let (admin, job) = expect_admin_run(&mut handle, "enclii-addon-cache-login", false, JobPhase::Succeeded).await;
        assert_eq!(
            admin["data"]["ENCLII_PASSWORD"],
            base64("fixture-pw-gen1"),
            "as the previous login"
        );
        assert_eq!(admin["data"]["ENCLII_FALLBACK_PASSWORD"], base64("fixture-pw-gen2"));
        assert_eq!(
            admin["data"]["ENCLII_WORK"],
            base64(&format!(
                "ACL SETUSER app_alt on resetpass #{hash} ~* &* +@all\nACL SAVE"
            ))
        );
        assert_no_secrets_in_pod_spec(&job, &expected);
        assert_eq!(job["spec"]["backoffLimit"], 0);
        assert_eq!(job["spec"]["activeDeadlineSeconds"], 1);
        let container = &job["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["image"], "redis:7");
        let env: Vec<(String, Value)> = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap().to_string(), e["value"].clone()))
            .collect();
        assert!(env.contains(&(
            "ENCLII_HOST".into(),
            json!("enclii-addon-cache.enclii-solarpunk-saas-prod.svc.cluster.local")
        )));
        assert!(env.contains(&("ENCLII_USER".into(), json!("app"))));
        assert!(env.contains(&("ENCLII_FALLBACK_USER".into(), json!("app_alt"))));
        assert!(
            job["spec"]["template"]["metadata"]["labels"]["dev.enclii.addon"].is_null(),
            "the add-on's Service does not select the admin pod"
        );
        assert_eq!(job["metadata"]["labels"]["dev.enclii.addon"], "cache");
        handle
    });
    let provisioned = target.provision_addon(&addon).await;
    let handle = server.await.expect("the stand-in API server's assertions hold");
    provisioned.unwrap();
    drop(target);
    expect_no_more_requests(handle).await;
}

#[tokio::test]
async fn mock_addon_converge_job_that_fails_is_refused_with_its_masked_log_tail() {
    let (target, handle) = mock_target(config());
    let addon = addon_workload(AddonKind::Postgres, "db", true);
    let server = tokio::spawn(async move {
        let mut handle = handle;
        expect_addon_objects(&mut handle, DB, 0).await;
        // An earlier attempt's Job is still there: deleted and waited for.
        let (admin, _) = expect_admin_run(&mut handle, "enclii-addon-db-login", true, JobPhase::Failed).await;
        let work = admin["data"]["ENCLII_WORK"].as_str().unwrap().to_string();
        assert_eq!(
            work,
            base64(&manifests::admin_work(
                AddonKind::Postgres,
                &addon_login("app_alt", "fixture-pw-gen2", AddonKind::Postgres),
                manifests::AddonTask::Login
            ))
        );
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "enclii-addon-db-login-q8x2n", "namespace": NS,
                         "labels": {"batch.kubernetes.io/job-name": "enclii-addon-db-login"}},
            "spec": {"containers": [{"name": "admin", "image": "postgres:16"}]},
            "status": {"phase": "Failed", "containerStatuses": [{"name": "admin", "image": "postgres:16",
                "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]}});
        expect_list(
            &mut handle,
            &format!("{CORE}/pods"),
            "batch.kubernetes.io/job-name=enclii-addon-db-login",
            vec![pod],
        )
        .await;
        let log = expect(
            &mut handle,
            "GET",
            &format!("{CORE}/pods/enclii-addon-db-login-q8x2n/log"),
        )
        .await;
        assert_eq!(log.query.get("container").map(String::as_str), Some("admin"));
        assert_eq!(log.query.get("tailLines").map(String::as_str), Some("10"));
        log.reply_text(
            "enclii: connecting to enclii-addon-db.enclii-solarpunk-saas-prod.svc.cluster.local:5432 as app\n\
             psql: error: FATAL:  password authentication failed for user \"app\"\n\
             LINE 1: ALTER ROLE \"app_alt\" WITH LOGIN SUPERUSER PASSWORD 'fixture-pw-gen2'\n\
             enclii: no login could run the commands\n",
        );
        handle
    });
    let err = target.provision_addon(&addon).await.unwrap_err();
    let handle = server.await.expect("the stand-in API server's assertions hold");
    let DeployError::Refused(message) = &err else {
        panic!("expected Refused, got {err:?}");
    };
    assert!(err.is_permanent());
    assert!(
        message.starts_with(
            "add-on solarpunk-saas/prod/db: setting login `app_alt` failed (Job enclii-solarpunk-saas-prod/\
             enclii-addon-db-login: BackoffLimitExceeded: Job has reached the specified backoff limit); pod \
             enclii-addon-db-login-q8x2n: Failed, container admin exited 1 (Error); last log lines: "
        ),
        "{message}"
    );
    assert!(
        message.contains("password authentication failed for user \"app\""),
        "{message}"
    );
    assert!(message.contains("PASSWORD '***'"), "{message}");
    assert!(!message.contains("fixture-pw"), "{message}");
    drop(target);
    expect_no_more_requests(handle).await;
}

#[tokio::test]
async fn mock_addon_retire_runs_a_job_as_the_current_login() {
    let (target, handle) = mock_target(config());
    let addon = addon_workload(AddonKind::Postgres, "db", true);
    let expected = addon.clone();
    let server = tokio::spawn(async move {
        let mut handle = handle;
        let (admin, job) = expect_admin_run(&mut handle, "enclii-addon-db-retire", false, JobPhase::Succeeded).await;
        assert_eq!(admin["data"]["ENCLII_PASSWORD"], base64("fixture-pw-gen2"));
        assert!(admin["data"]["ENCLII_FALLBACK_PASSWORD"].is_null());
        assert_eq!(
            admin["data"]["ENCLII_WORK"],
            base64(
                "DO $$ BEGIN IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'app') THEN ALTER ROLE \"app\" WITH \
                 NOLOGIN PASSWORD NULL; END IF; END $$;\nSELECT count(pg_terminate_backend(pid)) FROM \
                 pg_stat_activity WHERE usename = 'app';\n"
            )
        );
        assert_no_secrets_in_pod_spec(&job, &expected);
        let env = job["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
        assert!(env.contains(r#"{"name":"ENCLII_USER","value":"app_alt"}"#), "{env}");
        assert!(env.contains(r#"{"name":"ENCLII_DATABASE","value":"app"}"#), "{env}");
        handle
    });
    let retired = target.retire_addon_login(&addon, "app").await;
    // The current login is never retired: nothing is asked of the API.
    let kept = target.retire_addon_login(&addon, "app_alt").await;
    let handle = server.await.expect("the stand-in API server's assertions hold");
    retired.unwrap();
    kept.unwrap();
    drop(target);
    expect_no_more_requests(handle).await;
}

#[tokio::test]
async fn mock_addon_remove_deletes_the_objects_and_keeps_the_claim_with_keep_data() {
    let (target, handle) = mock_target(config());
    let key = addon_workload(AddonKind::Postgres, "db", false).key;
    let server = tokio::spawn(async move {
        let mut handle = handle;
        let job = job_status(
            serde_json::to_value(
                manifests::admin_run(
                    &addon_workload(AddonKind::Postgres, "db", true),
                    manifests::AddonTask::Login,
                    "h",
                    300,
                )
                .job,
            )
            .unwrap(),
            JobPhase::Succeeded,
        );
        for keep_data in [true, false] {
            expect_delete(&mut handle, &format!("{APPS}/statefulsets/{DB}"), keep_data).await;
            expect_delete(&mut handle, &format!("{CORE}/services/{DB}"), keep_data).await;
            let jobs = if keep_data { vec![job.clone()] } else { vec![] };
            expect_list(&mut handle, &format!("{BATCH}/jobs"), "dev.enclii.addon=db", jobs).await;
            if keep_data {
                expect_delete(&mut handle, &format!("{BATCH}/jobs/enclii-addon-db-login"), true).await;
            }
            // The seed Secret, and an admin run's an interrupted attempt left.
            let secrets = if keep_data {
                let seed = serde_json::to_value(seed_of("db")).unwrap();
                let mut left = seed.clone();
                left["metadata"]["name"] = json!("enclii-addon-db-retire");
                vec![seed, left]
            } else {
                vec![]
            };
            expect_list(&mut handle, &format!("{CORE}/secrets"), "dev.enclii.addon=db", secrets).await;
            if keep_data {
                expect_delete(&mut handle, &format!("{CORE}/secrets/{DB}"), true).await;
                expect_delete(&mut handle, &format!("{CORE}/secrets/enclii-addon-db-retire"), true).await;
            }
        }
        // Without keep_data the claim the StatefulSet made goes too.
        let claim = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data-enclii-addon-db-0", "namespace": NS,
                         "labels": {"dev.enclii.addon": "db", "app.kubernetes.io/managed-by": "enclii"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}},
            "status": {"phase": "Bound"}});
        expect_list(
            &mut handle,
            &format!("{CORE}/persistentvolumeclaims"),
            "dev.enclii.addon=db",
            vec![claim],
        )
        .await;
        expect_delete(
            &mut handle,
            &format!("{CORE}/persistentvolumeclaims/data-enclii-addon-db-0"),
            true,
        )
        .await;
        handle
    });
    let kept = target.remove_addon(&key, true).await;
    // A second removal finds the rest gone (idempotent) and removes the data.
    let removed = target.remove_addon(&key, false).await;
    let handle = server.await.expect("the stand-in API server's assertions hold");
    kept.unwrap();
    removed.unwrap();
    drop(target);
    expect_no_more_requests(handle).await;
}

#[tokio::test]
async fn mock_addon_that_never_becomes_ready_is_refused_with_its_pod_state() {
    let (target, handle) = mock_target(config());
    let addon = addon_workload(AddonKind::Redis, "cache", false);
    let server = tokio::spawn(async move {
        let mut handle = handle;
        expect_environment(&mut handle, false).await;
        expect_apply(&mut handle, &format!("{CORE}/secrets/{CACHE}")).await;
        expect_apply(&mut handle, &format!("{CORE}/services/{CACHE}")).await;
        let stateful_set = expect_apply(&mut handle, &format!("{APPS}/statefulsets/{CACHE}")).await;
        let mut polls = 0;
        let pod_path = format!("{CORE}/pods/{CACHE}-0");
        loop {
            let call = next_call(&mut handle).await;
            match (call.method.as_str(), call.path.as_str()) {
                ("GET", path) if path.ends_with("/statefulsets/enclii-addon-cache") => {
                    polls += 1;
                    call.reply(200, stateful_set_status(stateful_set.clone(), 0));
                }
                ("GET", path) if path == pod_path => {
                    call.reply(
                        200,
                        json!({"apiVersion": "v1", "kind": "Pod",
                            "metadata": {"name": "enclii-addon-cache-0", "namespace": NS},
                            "spec": {"containers": [{"name": "redis", "image": "redis:7"}]},
                            "status": {"phase": "Pending", "containerStatuses": [{"name": "redis", "image": "redis:7",
                                "imageID": "", "ready": false, "restartCount": 0,
                                "state": {"waiting": {"reason": "ImagePullBackOff",
                                          "message": "Back-off pulling image \"redis:7\""}}}]}}),
                    );
                    break;
                }
                (method, path) => panic!("unexpected {method} {path}"),
            }
        }
        assert!(polls >= 2, "polled until the timeout ({polls})");
        let log = expect(&mut handle, "GET", &format!("{pod_path}/log")).await;
        log.reply(
            400,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "BadRequest",
                   "message": "container \"redis\" in pod \"enclii-addon-cache-0\" is waiting to start: trying and failing to pull image",
                   "code": 400}),
        );
        handle
    });
    let err = target.provision_addon(&addon).await.unwrap_err();
    let handle = server.await.expect("the stand-in API server's assertions hold");
    match &err {
        DeployError::Refused(message) => assert_eq!(
            message,
            "add-on solarpunk-saas/prod/cache did not become ready within 0 s (0 of 1 pods ready, 1 updated); pod \
             enclii-addon-cache-0: Pending, container redis waiting (ImagePullBackOff: Back-off pulling image \
             \"redis:7\")"
        ),
        other => panic!("expected Refused, got {other:?}"),
    }
    drop(target);
    expect_no_more_requests(handle).await;
}

/// The objects of both kinds and their converge runs.
fn addon_documents() -> Vec<Value> {
    let mut documents = Vec::new();
    for (kind, name) in [(AddonKind::Postgres, "db"), (AddonKind::Redis, "cache")] {
        let addon = addon_workload(kind, name, true);
        let host = manifests::addon_host(&addon.key, "cluster.local");
        let run = manifests::admin_run(&addon, manifests::AddonTask::Login, &host, 300);
        documents.extend(manifests::addon_documents(&manifests::addon_objects(&addon), &[run]));
    }
    documents
}

/// For the snapshot.
pub(super) fn addons_yaml() -> String {
    to_yaml(&addon_documents())
}

/// For the schema check, as JSON, which is what the API server is sent: YAML 1.2 writes Redis'
/// `yes` unquoted, which a YAML 1.1 reader (the validator, kubectl) takes for a boolean.
pub(super) fn addons_json() -> String {
    addon_documents()
        .iter()
        .map(|d| serde_json::to_string_pretty(d).unwrap() + "\n")
        .collect::<Vec<_>>()
        .join("---\n")
}
