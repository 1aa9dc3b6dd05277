//! Add-ons in the control-plane store, on PostgreSQL and on SQLite: generated credentials sealed
//! and opened only for the job of the current generation; a rotation keeps the previous login
//! until it is retired, and a job of an older generation records nothing; deletion is refused
//! while a service reads the add-on (naming it) unless forced; an environment's deletion takes its
//! add-ons; nothing the audit trail holds reveals a password.

#[path = "../../queue/tests/common/mod.rs"]
mod common;
#[macro_use]
mod support;

use std::time::Duration;

use enclii_domain::addons::{AddonKind, BackupPolicy};
use enclii_queue::JobFilter;
use enclii_store::{
    AddonStatus, AuditFilter, BACKUP_SCHEDULER, BackupOutcome, BackupStatus, BackupTrigger, NewAddon, ProvisionOutcome,
    Store, StoreError,
};
use support::Db;

const GRACE: Duration = Duration::from_secs(600);

/// Project `shop` with service `web` at home in `prod`, whose spec reads add-on `db`.
async fn shop(db: Db) -> (Store, Option<common::TestDatabase>) {
    support::shop_with_web(db, serde_json::json!({"envFrom": [{"addon": "db"}]})).await
}

fn new_addon(environment: &str, name: &str, kind: AddonKind) -> NewAddon {
    NewAddon {
        project: "shop".into(),
        environment: environment.into(),
        name: name.into(),
        kind,
        version: kind.default_version().into(),
        image: kind.default_image(kind.default_version()),
        size_mib: Some(1024),
        backup: None,
        seed_backup: None,
    }
}

async fn rotations_keep_the_previous_login_until_retired_and_stale_jobs_change_nothing(db: Db) {
    let (store, _guard) = shop(db).await;
    let addon = store
        .create_addon("user:dev", &new_addon("prod", "db", AddonKind::Postgres))
        .await
        .unwrap();
    assert_eq!((addon.status, addon.generation), (AddonStatus::Provisioning, 1));
    let first = store
        .addon_for_job(addon.id, 1)
        .await
        .unwrap()
        .expect("generation 1 is current");
    assert_eq!(first.credentials.user, "app");
    assert_eq!(first.credentials.database.as_deref(), Some("app"));
    assert_eq!(first.credentials.password.len(), 32);
    assert!(first.previous.is_none());

    // Rotating while provisioning is refused; once ready it is not.
    let refused = store.rotate_addon("user:dev", "shop", "prod", "db").await.unwrap_err();
    assert!(matches!(refused, StoreError::Conflict(_)), "{refused}");
    assert!(
        store
            .record_addon_provision("system:addons", addon.id, 1, &ProvisionOutcome::Ready, GRACE)
            .await
            .unwrap()
    );
    assert_eq!(
        store.addon("shop", "prod", "db").await.unwrap().status,
        AddonStatus::Ready
    );
    let rotated = store.rotate_addon("user:dev", "shop", "prod", "db").await.unwrap();
    assert_eq!((rotated.status, rotated.generation), (AddonStatus::Provisioning, 2));

    // The job of generation 1 is stale now: it reads nothing and records nothing.
    assert!(store.addon_for_job(addon.id, 1).await.unwrap().is_none());
    let failed = ProvisionOutcome::Failed("late".into());
    assert!(
        !store
            .record_addon_provision("system:addons", addon.id, 1, &failed, GRACE)
            .await
            .unwrap()
    );
    let second = store.addon_for_job(addon.id, 2).await.unwrap().unwrap();
    assert_eq!(second.credentials.user, "app_alt");
    assert_ne!(second.credentials.password, first.credentials.password);
    let previous = second.previous.expect("the previous login is kept during the rotation");
    assert_eq!(previous, first.credentials);

    assert!(
        store
            .record_addon_provision("system:addons", addon.id, 2, &ProvisionOutcome::Ready, GRACE)
            .await
            .unwrap()
    );
    store.record_addon_retired(addon.id, 2).await.unwrap();
    assert!(
        store
            .addon_for_job(addon.id, 2)
            .await
            .unwrap()
            .unwrap()
            .previous
            .is_none()
    );

    // A third rotation returns to the first role, with a fresh password.
    store.rotate_addon("user:dev", "shop", "prod", "db").await.unwrap();
    let third = store.addon_for_job(addon.id, 3).await.unwrap().unwrap();
    assert_eq!(third.credentials.user, "app");
    assert_ne!(third.credentials.password, first.credentials.password);

    // The user's read is audited; no audit event holds a password.
    let revealed = store
        .reveal_addon_credentials("user:dev", "shop", "prod", "db")
        .await
        .unwrap();
    assert_eq!(revealed.credentials, third.credentials);
    let events = store
        .list_audit(&AuditFilter {
            project: Some("shop".into()),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    for action in ["addon.create", "addon.ready", "addon.rotate", "addon.credentials"] {
        assert!(actions.contains(&action), "{action} not in {actions:?}");
    }
    let trail = serde_json::to_string(&events).unwrap();
    for password in [
        &first.credentials.password,
        &second.credentials.password,
        &third.credentials.password,
    ] {
        assert!(!trail.contains(password.as_str()), "the audit trail holds a password");
    }
}

async fn deletion_names_the_readers_and_an_environment_takes_its_addons(db: Db) {
    let (store, _guard) = shop(db).await;
    store
        .create_addon("user:dev", &new_addon("prod", "db", AddonKind::Postgres))
        .await
        .unwrap();
    let taken = store
        .create_addon("user:dev", &new_addon("prod", "db", AddonKind::Redis))
        .await
        .unwrap_err();
    assert!(matches!(taken, StoreError::Conflict(_)), "{taken}");
    let missing = store
        .create_addon("user:dev", &new_addon("nope", "db", AddonKind::Redis))
        .await
        .unwrap_err();
    assert!(matches!(missing, StoreError::NotFound(_)), "{missing}");

    let refused = store
        .delete_addon("user:dev", "shop", "prod", "db", false, false)
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, StoreError::Conflict(why) if why.contains("`web`") && why.contains("force=true")),
        "{refused}"
    );
    assert_eq!(
        store.list_addons("shop", None).await.unwrap().len(),
        1,
        "nothing removed"
    );
    store
        .delete_addon("user:dev", "shop", "prod", "db", true, false)
        .await
        .unwrap();
    assert!(store.list_addons("shop", None).await.unwrap().is_empty());

    // An add-on nobody reads goes without force; another environment's is not `web`'s. (A
    // project starts with dev, stage and prod.)
    store
        .create_addon("user:dev", &new_addon("stage", "db", AddonKind::Redis))
        .await
        .unwrap();
    store
        .create_addon("user:dev", &new_addon("stage", "cache", AddonKind::Redis))
        .await
        .unwrap();
    assert_eq!(
        store.addon_readers("shop", "stage", "db").await.unwrap(),
        Vec::<String>::new()
    );
    store
        .delete_addon("user:dev", "shop", "stage", "cache", false, true)
        .await
        .unwrap();
    store
        .delete_environment("user:admin", "shop", "stage", false)
        .await
        .unwrap();
    assert!(store.list_addons("shop", Some("stage")).await.unwrap().is_empty());
    // Every add-on deleted, alone or with its environment, has its removal job.
    let removals = store
        .queue()
        .list_jobs(&JobFilter {
            kind: Some("addon-remove".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut removed: Vec<(String, String, bool)> = removals
        .iter()
        .map(|job| {
            let p = &job.payload;
            (
                p["environment"].as_str().unwrap().to_string(),
                p["name"].as_str().unwrap().to_string(),
                p["keep_data"].as_bool().unwrap(),
            )
        })
        .collect();
    removed.sort();
    let expected = [("prod", "db", false), ("stage", "cache", true), ("stage", "db", false)];
    assert_eq!(
        removed,
        expected.map(|(e, n, k)| (e.to_string(), n.to_string(), k)),
        "{removals:?}"
    );
}

/// A ready add-on `name` of `kind` in `prod`, backed up on `schedule`, keeping `keep`.
async fn ready_addon(store: &Store, name: &str, kind: AddonKind, backup: Option<BackupPolicy>) -> enclii_store::Addon {
    let new = NewAddon {
        backup,
        ..new_addon("prod", name, kind)
    };
    let addon = store.create_addon("user:dev", &new).await.unwrap();
    store
        .record_addon_provision("system:addons", addon.id, 1, &ProvisionOutcome::Ready, GRACE)
        .await
        .unwrap();
    store.addon("shop", "prod", name).await.unwrap()
}

fn completed(n: u64) -> BackupOutcome {
    BackupOutcome::Completed {
        size_bytes: 100 + n,
        plain_bytes: n,
        sha256: format!("{n:064}"),
    }
}

async fn backups_keep_their_sealed_key_restore_only_when_complete_and_schedules_fire_once(db: Db) {
    let (store, _guard) = shop(db).await;
    let policy = BackupPolicy {
        schedule: "0 3 * * *".into(),
        keep: 2,
    };
    let addon = ready_addon(&store, "db", AddonKind::Postgres, Some(policy.clone())).await;
    assert_eq!(
        (addon.backup_schedule.as_deref(), addon.backup_keep),
        (Some("0 3 * * *"), Some(2))
    );
    ready_addon(&store, "cache", AddonKind::Redis, None).await;

    // A backup is `running` with its own data key and artefact key, and a job.
    let first = store.backup_addon("user:dev", "shop", "prod", "db").await.unwrap();
    assert_eq!(
        (first.status, first.trigger),
        (BackupStatus::Running, BackupTrigger::Manual)
    );
    assert_eq!(
        first.artefact_key,
        format!("backups/shop/prod/db/{}.pgdump.sealed", first.id)
    );
    let work = store.backup_for_job(first.id).await.unwrap().unwrap();
    assert_eq!(work.data_key.len(), 32);
    assert_eq!(work.addon.unwrap().addon.name, "db");
    let jobs = store
        .queue()
        .list_jobs(&JobFilter {
            kind: Some("addon-backup".into()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(jobs.len(), 1);

    // Not restorable until completed; then only into an add-on of its kind.
    let running = store
        .restore_addon("user:dev", "shop", "prod", "db", first.id, None)
        .await
        .unwrap_err();
    assert!(matches!(running, StoreError::Conflict(_)), "{running}");
    assert!(
        store
            .record_addon_backup(first.id, &completed(1))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .record_addon_backup(first.id, &BackupOutcome::Failed("late".into()))
            .await
            .unwrap()
            .is_empty(),
        "a backup no longer running records nothing"
    );
    let listed = store.addon_backups("shop", "prod", "db").await.unwrap();
    assert_eq!(
        (listed[0].status, listed[0].sha256.clone()),
        (BackupStatus::Completed, Some(format!("{:064}", 1)))
    );
    let wrong = store
        .restore_addon("user:dev", "shop", "prod", "db", first.id, Some("cache"))
        .await
        .unwrap_err();
    assert!(
        matches!(&wrong, StoreError::Invalid(m) if m.contains("postgres backup")),
        "{wrong}"
    );
    let elsewhere = store
        .restore_addon("user:dev", "shop", "prod", "cache", first.id, None)
        .await
        .unwrap_err();
    assert!(matches!(elsewhere, StoreError::NotFound(_)), "{elsewhere}");
    let restore = store
        .restore_addon("user:dev", "shop", "prod", "db", first.id, None)
        .await
        .unwrap();
    let target = store.restore_for_job(restore.backup, addon.id).await.unwrap().unwrap();
    assert_eq!(
        (target.into.addon.name.as_str(), target.data_key),
        ("db", work.data_key.clone())
    );

    // Keep 2: the third completed backup hands back the oldest to prune.
    let second = store.backup_addon("user:dev", "shop", "prod", "db").await.unwrap();
    assert!(
        store
            .record_addon_backup(second.id, &completed(2))
            .await
            .unwrap()
            .is_empty()
    );
    let third = store.backup_addon("user:dev", "shop", "prod", "db").await.unwrap();
    let excess = store.record_addon_backup(third.id, &completed(3)).await.unwrap();
    assert_eq!(excess.iter().map(|b| b.id).collect::<Vec<_>>(), [first.id]);
    store.forget_addon_backups(&[first.id]).await.unwrap();
    let ids: Vec<i64> = store
        .addon_backups("shop", "prod", "db")
        .await
        .unwrap()
        .iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(ids, [third.id, second.id]);

    // The schedule fires once per due time, whoever asks twice.
    let tomorrow = chrono::Utc::now().timestamp_millis() + 2 * 86_400_000;
    let started = store.fire_due_backups(tomorrow).await.unwrap();
    assert_eq!(started.len(), 1);
    assert!(store.fire_due_backups(tomorrow).await.unwrap().is_empty());
    let scheduled = &store.addon_backups("shop", "prod", "db").await.unwrap()[0];
    assert_eq!(
        (scheduled.id, scheduled.trigger, scheduled.requested_by.as_str()),
        (started[0], BackupTrigger::Scheduled, BACKUP_SCHEDULER)
    );
    store
        .set_addon_backup_policy("user:dev", "shop", "prod", "db", None)
        .await
        .unwrap();
    assert!(
        store
            .fire_due_backups(tomorrow + 2 * 86_400_000)
            .await
            .unwrap()
            .is_empty()
    );

    // Audited, without key material.
    let audit = store
        .list_audit(&AuditFilter {
            project: Some("shop".into()),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    for action in ["addon.backup", "addon.restore", "addon.backup_policy"] {
        assert!(actions.contains(&action), "{action} not in {actions:?}");
    }
}

on_both_databases!(
    rotations_keep_the_previous_login_until_retired_and_stale_jobs_change_nothing,
    deletion_names_the_readers_and_an_environment_takes_its_addons,
    backups_keep_their_sealed_key_restore_only_when_complete_and_schedules_fire_once,
);
