//! Timetable and Waybill in the control-plane store, on PostgreSQL and on SQLite: the scheduler's
//! leader lease, cron schedules and fires (overlaps skipped, missed fires not replayed), one-off
//! runs, the run history the `job-run` handler reports to, cost reports and prices, budgets
//! reported once per level and month, paused environments, and expired previews.

#[path = "../../queue/tests/common/mod.rs"]
mod common;
#[macro_use]
mod support;

use std::time::Duration;

use enclii_domain::jobs::JobRun;
use enclii_queue::{JobKind, JobState};
use enclii_store::{
    AuditFilter, BudgetLevel, CronOutcome, EnvironmentChange, JobRunStatus, NewCostSample, Prices, ServiceDraft,
    ServiceKey, Store, StoreError, next_fire,
};
use support::Db;

struct TestStore {
    store: Store,
    _db: Option<common::TestDatabase>,
}

async fn open(db: Db) -> TestStore {
    let (store, guard) = support::open_store(db).await;
    TestStore { store, _db: guard }
}

fn spec(environment: &str, jobs: &[(&str, &str)]) -> String {
    let jobs: Vec<serde_json::Value> = jobs
        .iter()
        .map(|(name, schedule)| serde_json::json!({"name": name, "schedule": schedule, "args": ["./run", name]}))
        .collect();
    serde_json::json!({
        "apiVersion": "enclii.dev/v1",
        "kind": "Service",
        "metadata": {"project": "shop", "environment": environment, "name": "api"},
        "spec": {
            "source": {"git": {"repository": "https://github.com/org/shop", "branch": "main"}},
            "jobs": jobs,
        },
    })
    .to_string()
}

async fn apply(store: &Store, environment: &str, jobs: &[(&str, &str)]) {
    let draft = ServiceDraft {
        project: "shop".into(),
        name: "api".into(),
        environment: environment.into(),
        repository: Some("github.com/org/shop".into()),
        branch: Some("main".into()),
        spec: spec(environment, jobs),
    };
    store.apply_service("user:dev", &draft, &[]).await.unwrap();
}

async fn shop(db: Db, environment: &str, jobs: &[(&str, &str)]) -> TestStore {
    let t = open(db).await;
    t.store.create_project("user:admin", "shop", "Shop").await.unwrap();
    apply(&t.store, environment, jobs).await;
    t
}

const MINUTE: i64 = 60_000;

async fn two_holders_contend_for_the_lease(db: Db) {
    let t = open(db).await;
    let ttl = Duration::from_millis(400);
    // Both at once on a fresh lease: exactly one leads.
    let (a, b) = tokio::join!(
        t.store.try_lead("scheduler", "a", ttl),
        t.store.try_lead("scheduler", "b", ttl)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a ^ b, "exactly one leads (a: {a}, b: {b})");
    let (leader, other) = if a { ("a", "b") } else { ("b", "a") };
    assert!(
        t.store.try_lead("scheduler", leader, ttl).await.unwrap(),
        "the leader renews"
    );
    assert!(!t.store.try_lead("scheduler", other, ttl).await.unwrap());
    // Another lease name is independent.
    assert!(t.store.try_lead("other", other, ttl).await.unwrap());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        t.store.try_lead("scheduler", other, ttl).await.unwrap(),
        "takes over after expiry"
    );
    assert!(
        !t.store.try_lead("scheduler", leader, ttl).await.unwrap(),
        "the old leader lost it"
    );
    t.store.resign("scheduler", leader).await.unwrap();
    assert!(
        !t.store.try_lead("scheduler", leader, ttl).await.unwrap(),
        "resigning another's lease does nothing"
    );
    t.store.resign("scheduler", other).await.unwrap();
    assert!(
        t.store.try_lead("scheduler", leader, ttl).await.unwrap(),
        "a resigned lease is free at once"
    );
}

async fn cron_fires_queue_runs_and_skip_overlaps(db: Db) {
    let t = shop(db, "dev", &[("report", "*/5 * * * *")]).await;
    let store = &t.store;
    let sync = store.sync_cron_schedules().await.unwrap();
    assert_eq!((sync.added, sync.changed, sync.removed), (1, 0, 0));
    assert_eq!(
        store.sync_cron_schedules().await.unwrap(),
        Default::default(),
        "nothing changed"
    );
    let schedule = store.cron_schedules("shop").await.unwrap().remove(0);
    let now = chrono::Utc::now().timestamp_millis();
    assert!(
        schedule.next_at > now && schedule.next_at <= now + 5 * MINUTE,
        "{schedule:?}"
    );
    assert!(store.fire_due_cron(now).await.unwrap().is_empty(), "not due yet");

    let first_fire = schedule.next_at;
    let fired = store.fire_due_cron(first_fire).await.unwrap();
    assert_eq!(fired.len(), 1);
    assert_eq!(fired[0].outcome, CronOutcome::Queued);
    let run = fired[0].run.clone().unwrap();
    assert_eq!((run.status.as_str(), run.trigger.as_str()), ("queued", "cron"));
    assert_eq!((run.environment.as_str(), run.scheduled_for), ("dev", first_fire));
    let job = store.queue().job(run.queue_job_id.unwrap()).await.unwrap().unwrap();
    assert_eq!((job.kind.as_str(), job.state), (JobRun::KIND, JobState::Available));
    assert_eq!(
        job.policy.max_attempts,
        JobRun::policy().max_attempts,
        "the kind's retry policy"
    );
    let payload: JobRun = serde_json::from_value(job.payload).unwrap();
    assert_eq!((payload.job.as_str(), payload.run), ("report", run.id));
    assert!(store.fire_due_cron(first_fire).await.unwrap().is_empty(), "fired once");

    // The next fire while the first run still runs records a skipped run and queues nothing.
    store.job_run_started(run.id, 1).await.unwrap();
    let second_fire = first_fire + 5 * MINUTE;
    let fired = store.fire_due_cron(second_fire).await.unwrap();
    assert_eq!(fired[0].outcome, CronOutcome::Skipped);
    let skipped = fired[0].run.clone().unwrap();
    assert_eq!((skipped.status.as_str(), skipped.queue_job_id), ("skipped", None));
    let detail = skipped.detail.unwrap();
    assert!(
        detail.contains(&format!("run ({}) is still running", run.id)),
        "{detail}"
    );

    // Once it ends, the next fire runs again; fires missed while down are not replayed.
    let done = store
        .job_run_finished(run.id, JobRunStatus::Succeeded, Some(0), None)
        .await
        .unwrap();
    assert_eq!(
        (done.status.as_str(), done.exit_code, done.attempts),
        ("succeeded", Some(0), 1)
    );
    let again = store
        .job_run_finished(run.id, JobRunStatus::Failed, Some(1), None)
        .await
        .unwrap();
    assert_eq!(again.status, "succeeded", "a finished run does not change");
    let late = second_fire + 60 * MINUTE;
    let fired = store.fire_due_cron(late).await.unwrap();
    assert_eq!(fired.len(), 1, "one catch-up run for twelve missed fires");
    assert_eq!(fired[0].outcome, CronOutcome::Queued);
    let next = store.cron_schedules("shop").await.unwrap()[0].next_at;
    assert_eq!(next, next_fire("*/5 * * * *", late).unwrap());
    assert!(next > late);

    let runs = store.list_job_runs("shop", "api", Some("report"), 10).await.unwrap();
    let statuses: Vec<&str> = runs.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["queued", "skipped", "succeeded"], "newest first");
    assert!(
        store
            .list_job_runs("shop", "api", Some("other"), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // A changed schedule is re-timed; a removed job is dropped.
    apply(store, "dev", &[("report", "0 3 * * *"), ("cleanup", "0 4 * * *")]).await;
    let sync = store.sync_cron_schedules().await.unwrap();
    assert_eq!((sync.added, sync.changed, sync.removed), (1, 1, 0));
    let schedules = store.cron_schedules("shop").await.unwrap();
    let report = schedules.iter().find(|s| s.job == "report").unwrap();
    assert_eq!(report.schedule, "0 3 * * *");
    apply(store, "dev", &[("cleanup", "0 4 * * *")]).await;
    let sync = store.sync_cron_schedules().await.unwrap();
    assert_eq!((sync.added, sync.changed, sync.removed), (0, 0, 1));
    store.delete_service("user:admin", "shop", "api", false).await.unwrap();
    assert!(
        store.cron_schedules("shop").await.unwrap().is_empty(),
        "deleted with the service"
    );
}

async fn one_off_runs_name_the_jobs_and_respect_paused_environments(db: Db) {
    let t = shop(db, "dev", &[("report", "0 2 * * *"), ("cleanup", "0 4 * * *")]).await;
    let store = &t.store;
    let err = store.run_job_now("user:dev", "shop", "api", "nope").await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("has no job `nope`") && message.contains("its jobs are: report, cleanup"),
        "{message}"
    );

    let run = store.run_job_now("user:dev", "shop", "api", "report").await.unwrap();
    assert_eq!(
        (run.trigger.as_str(), run.status.as_str(), run.created_by.as_str()),
        ("manual", "queued", "user:dev")
    );
    assert!(run.queue_job_id.is_some());
    assert_eq!(store.job_run(run.id).await.unwrap(), run);
    let audit = store
        .list_audit(&AuditFilter {
            action: Some("job.run".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 1);

    // Retried attempts reopen a failed run.
    store.job_run_started(run.id, 1).await.unwrap();
    store
        .job_run_finished(run.id, JobRunStatus::Failed, Some(2), Some("exit 2"))
        .await
        .unwrap();
    let retried = store.job_run_started(run.id, 2).await.unwrap();
    assert_eq!(
        (retried.status.as_str(), retried.attempts, retried.detail),
        ("running", 2, None)
    );
    let err = store
        .job_run_finished(run.id, JobRunStatus::Skipped, None, None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("succeeded"), "{err}");

    let paused = store.pause_environment("user:admin", "shop", "dev").await.unwrap();
    assert!(paused.paused_at.is_some());
    let listed = store.list_environments("shop").await.unwrap();
    assert!(listed.iter().find(|e| e.name == "dev").unwrap().paused_at.is_some());
    let err = store
        .run_job_now("user:dev", "shop", "api", "report")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("paused") && m.contains("/v1/projects/shop/environments/dev/resume")),
        "{err:?}"
    );
    store.sync_cron_schedules().await.unwrap();
    let far = chrono::Utc::now().timestamp_millis() + 2 * 24 * 60 * MINUTE;
    let fired = store.fire_due_cron(far).await.unwrap();
    assert!(
        fired
            .iter()
            .all(|f| f.outcome == CronOutcome::Paused && f.run.is_none()),
        "{fired:?}"
    );

    let err = store.pause_environment("user:admin", "shop", "prod").await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Invalid(m) if m.contains("`prod`")),
        "{err:?}"
    );
    let resumed = store.resume_environment("user:admin", "shop", "dev").await.unwrap();
    assert_eq!(resumed.paused_at, None);
    store.run_job_now("user:dev", "shop", "api", "report").await.unwrap();
}

fn sample(environment: &str, service: &str, at: i64, cpu_seconds: f64, ram_gib_hours: f64) -> NewCostSample {
    NewCostSample {
        project: "shop".into(),
        environment: environment.into(),
        service: service.into(),
        at,
        interval_secs: 300,
        cpu_seconds,
        ram_gib_hours,
        volume_gib_hours: 10.0 / 12.0,
        egress_gib: 0.5,
        cpu_counter_ns: Some((cpu_seconds * 1e9) as i64),
        ..Default::default()
    }
}

async fn cost_reports_sum_and_price_samples(db: Db) {
    let t = shop(db, "dev", &[]).await;
    let store = &t.store;
    let prices = Prices {
        cpu_hour_cents: 3.6,
        ram_gib_hour_cents: 1.0,
        volume_gib_hour_cents: 0.12,
        egress_gib_cents: 10.0,
    };
    // 300 CPU-seconds = 1/12 h × 3.6 = 0.3; 0.5 GiB-h × 1 = 0.5; 10/12 GiB-h × 0.12 = 0.1; 0.5 GiB × 10 = 5.
    let priced = sample("dev", "api", 0, 300.0, 0.5).priced(&prices);
    assert!((priced.cost_cents - 5.9).abs() < 1e-9, "{}", priced.cost_cents);
    assert!(Prices::default().cost_cents(&priced) > 0.0);

    let now = chrono::Utc::now().timestamp_millis();
    for (env, service, age, cpu) in [
        ("dev", "api", 10, 300.0),
        ("dev", "api", 5, 150.0),
        ("dev", "worker", 5, 30.0),
        ("prod", "api", 5, 600.0),
        ("dev", "api", 60 * 24 * 40, 9999.0),
    ] {
        let s = sample(env, service, now - age * MINUTE, cpu, 0.5).priced(&prices);
        store.insert_cost_sample(&s).await.unwrap();
    }
    let last = store
        .last_cost_sample(&ServiceKey::new("shop", "dev", "api"))
        .await
        .unwrap()
        .unwrap();
    let last = last.sample;
    assert_eq!((last.cpu_seconds, last.cpu_counter_ns), (150.0, Some(150_000_000_000)));
    assert!(
        store
            .last_cost_sample(&ServiceKey::new("shop", "stage", "api"))
            .await
            .unwrap()
            .is_none()
    );

    let report = store.cost_report("shop", now - 30 * 24 * 60 * MINUTE).await.unwrap();
    let lines: Vec<(&str, &str, f64, i64)> = report
        .iter()
        .map(|l| (l.environment.as_str(), l.service.as_str(), l.cpu_seconds, l.samples))
        .collect();
    assert_eq!(
        lines,
        [
            ("dev", "api", 450.0, 2),
            ("dev", "worker", 30.0, 1),
            ("prod", "api", 600.0, 1)
        ],
        "the 40-day-old sample is outside the period"
    );
    let dev_api = &report[0];
    assert!((dev_api.ram_gib_hours - 1.0).abs() < 1e-9 && (dev_api.egress_gib - 1.0).abs() < 1e-9);
    let expected = prices.cost_cents(&sample("dev", "api", 0, 450.0, 1.0)) + 0.1 + 5.0;
    assert!(
        (dev_api.cost_cents - expected).abs() < 1e-9,
        "{} vs {expected}",
        dev_api.cost_cents
    );
    let spend = store
        .environment_spend_cents("shop", "prod", now - 60 * MINUTE)
        .await
        .unwrap();
    assert!((spend - report[2].cost_cents).abs() < 1e-9);
    assert_eq!(store.environment_spend_cents("shop", "stage", 0).await.unwrap(), 0.0);
    assert!(matches!(
        store.cost_report("nope", 0).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn budget_levels_are_reported_once_a_month(db: Db) {
    let t = shop(db, "dev", &[]).await;
    let store = &t.store;
    let budget = |cents| EnvironmentChange {
        budget_cents: Some(cents),
        ..Default::default()
    };
    store
        .update_environment("user:admin", "shop", "dev", &budget(1000))
        .await
        .unwrap();
    store
        .update_environment("user:admin", "shop", "prod", &budget(1000))
        .await
        .unwrap();
    let budgeted = store.budgeted_environments().await.unwrap();
    assert_eq!(
        budgeted.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
        ["dev", "prod"]
    );

    let now = chrono::Utc::now().timestamp_millis();
    let spend = |env: &str, cents: f64| NewCostSample {
        project: "shop".into(),
        environment: env.into(),
        service: "api".into(),
        at: now,
        interval_secs: 300,
        cost_cents: cents,
        ..Default::default()
    };
    assert_eq!(store.budget_check("shop", "dev", now).await.unwrap(), BudgetLevel::Ok);
    store.insert_cost_sample(&spend("dev", 850.0)).await.unwrap();
    assert_eq!(
        store.budget_check("shop", "dev", now).await.unwrap(),
        BudgetLevel::Warn(85.0)
    );
    assert_eq!(
        store.budget_check("shop", "dev", now).await.unwrap(),
        BudgetLevel::Ok,
        "reported once"
    );
    store.insert_cost_sample(&spend("dev", 200.0)).await.unwrap();
    assert_eq!(
        store.budget_check("shop", "dev", now).await.unwrap(),
        BudgetLevel::Exceeded(105.0)
    );
    assert!(
        store.environment("shop", "dev").await.unwrap().paused_at.is_some(),
        "non-prod is paused"
    );
    assert_eq!(
        store.budget_check("shop", "dev", now).await.unwrap(),
        BudgetLevel::Ok,
        "reported once"
    );
    // Resuming by hand is not undone by the same month's checks.
    store.resume_environment("user:admin", "shop", "dev").await.unwrap();
    assert_eq!(store.budget_check("shop", "dev", now).await.unwrap(), BudgetLevel::Ok);
    assert_eq!(store.environment("shop", "dev").await.unwrap().paused_at, None);

    // Straight past 100% reports only `exceeded`; prod is never paused.
    store.insert_cost_sample(&spend("prod", 1500.0)).await.unwrap();
    assert_eq!(
        store.budget_check("shop", "prod", now).await.unwrap(),
        BudgetLevel::Exceeded(150.0)
    );
    assert_eq!(store.environment("shop", "prod").await.unwrap().paused_at, None);

    // A new month starts from nothing.
    let next_month = now + 32 * 24 * 60 * MINUTE;
    assert_eq!(
        store.budget_check("shop", "dev", next_month).await.unwrap(),
        BudgetLevel::Ok
    );

    let actions = |action: &str| AuditFilter {
        action: Some(action.into()),
        ..Default::default()
    };
    assert_eq!(store.list_audit(&actions("budget.warn")).await.unwrap().len(), 1);
    assert_eq!(store.list_audit(&actions("budget.exceeded")).await.unwrap().len(), 2);
    assert_eq!(store.list_audit(&actions("environment.resume")).await.unwrap().len(), 1);
}

async fn idle_previews_expire_once(db: Db) {
    let t = shop(db, "dev", &[]).await;
    let store = &t.store;
    let delivery = enclii_store::fixtures::pull_request_opened("d-1");
    store.accept_webhook(&delivery).await.unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let ttl = Duration::from_secs(3600);
    assert!(store.expired_previews(ttl, now).await.unwrap().is_empty(), "active");
    let later = now + 2 * 60 * MINUTE;
    let expired = store.expired_previews(ttl, later).await.unwrap();
    assert_eq!(expired.len(), 1, "{expired:?}");
    let preview = &expired[0];
    assert_eq!(
        (
            preview.environment.as_str(),
            preview.service.as_str(),
            preview.number,
            preview.branch.as_str()
        ),
        ("preview-7", "api", 7, "feature")
    );
    assert_eq!(preview.repository, "https://github.com/org/shop");
    let first = store.enqueue_preview_teardown(preview).await.unwrap();
    assert!(!first.duplicate);
    assert_eq!(first.superseded.len(), 1, "the preview's build in flight is superseded");
    let release = &store.list_releases("shop", Some("api"), 1).await.unwrap()[0];
    assert_eq!(release.status, "superseded");
    let again = store.enqueue_preview_teardown(preview).await.unwrap();
    assert!(again.duplicate && again.id == first.id, "asking again changes nothing");
    let pipeline = store.queue().pipeline(first.id).await.unwrap().unwrap();
    assert_eq!(pipeline.name, "preview-teardown");
    assert!(store.deployed_services().await.unwrap().is_empty(), "nothing deployed");
}

on_both_databases!(
    two_holders_contend_for_the_lease,
    cron_fires_queue_runs_and_skip_overlaps,
    one_off_runs_name_the_jobs_and_respect_paused_environments,
    cost_reports_sum_and_price_samples,
    budget_levels_are_reported_once_a_month,
    idle_previews_expire_once,
);
