//! The claim's plan under a deep backlog (PostgreSQL only; the upkeep's tests are in
//! `queue/tests/postgres_upkeep.rs`, behaviour common to every backend in `queue/tests/behaviour.rs`).

use sqlx::{Connection, PgConnection, PgPool};

use super::claim::{HOT_PATH_BEGIN, PROJECTS_AFTER_CURSORS, PROJECTS_WITH_WORK, heartbeat_sql, take_sql};
use super::completion::ack_sql;
use super::*;

fn admin_url() -> String {
    std::env::var("ENCLII_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database of the test's own with its queue (dropped by [`drop_database`] when the test
/// passes; CI sweeps `roundhouse_test_*` databases a failing test leaves behind).
async fn database() -> (PostgresQueue, String) {
    let name = format!("roundhouse_test_{:016x}", rand::random::<u64>());
    let admin = admin_url();
    let mut conn = PgConnection::connect(&admin)
        .await
        .expect("PostgreSQL on 127.0.0.1:5432");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
    (PostgresQueue::connect(&url, 4).await.unwrap(), name)
}

async fn drop_database(queue: PostgresQueue, name: &str) {
    queue.pool().close().await;
    drop(queue);
    let mut conn = PgConnection::connect(&admin_url()).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
}

/// `n` available jobs of one project, inserted in one statement.
async fn backlog(pool: &PgPool, n: i64) {
    sqlx::query(
        "INSERT INTO roundhouse_jobs (kind, project, payload, state, priority, max_attempts, timeout_ms,
                                      backoff_base_ms, backoff_max_ms)
         SELECT 'noop', 'acme', '{}', 'available', 2, 3, 60000, 1000, 60000 FROM generate_series(1, $1)",
    )
    .bind(n)
    .execute(pool)
    .await
    .unwrap();
}

/// The plan of `statement` (with its parameters) as PostgreSQL would run it inside a
/// transaction opened with `begin`.
async fn plan(pool: &PgPool, begin: &str, statement: &str, bind: impl FnOnce(&str) -> String) -> String {
    let mut tx = pool.begin_with(sqlx::AssertSqlSafe(begin.to_string())).await.unwrap();
    let explain = bind(&format!("EXPLAIN {statement}"));
    let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(explain))
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    rows.join("\n")
}

fn take_with_literals(statement: &str) -> String {
    statement
        .replace("$1::text[]", "ARRAY['acme']")
        .replace("$2::int4[]", "ARRAY[32]")
        .replace("$3", "ARRAY['noop']")
        .replace("$4", "'w1'")
        .replace("$5", "30000")
        .replace("$6::int2[]", "ARRAY[2]::int2[]")
        .replace("$7::int8[]", "ARRAY[100]::int8[]")
}

#[tokio::test]
async fn claims_walk_the_available_index_in_order_whatever_the_planner_estimates() {
    let (queue, name) = database().await;
    let pool = queue.pool().clone();
    backlog(&pool, 20_000).await;
    let take = plan(&pool, HOT_PATH_BEGIN, &take_sql(), take_with_literals).await;
    assert!(take.contains("Index Scan using roundhouse_jobs_available"), "{take}");
    assert!(take.contains("Index Scan using roundhouse_jobs_pkey"), "{take}");
    // The walk starts at the claim cursor by descending the index, not by filtering the front.
    let starts_at_cursor = |plan: &str, cursor: &str| {
        plan.lines()
            .any(|l| l.contains("Index Cond") && l.contains(&format!("(ROW(priority, id) > ROW({cursor}))")))
    };
    assert!(starts_at_cursor(&take, "q.after_priority, q.after_id"), "{take}");
    for linear in ["Sort", "Bitmap", "Seq Scan", "Hash", "Merge"] {
        assert!(!take.contains(linear), "{linear}: {take}");
    }
    let projects = plan(&pool, HOT_PATH_BEGIN, PROJECTS_WITH_WORK, |s| {
        s.replace("$1", "100").replace("$2", "''")
    })
    .await;
    for linear in ["Sort", "Bitmap", "Seq Scan on roundhouse_jobs"] {
        assert!(!projects.contains(linear), "{linear}: {projects}");
    }
    let after_cursors = plan(&pool, HOT_PATH_BEGIN, PROJECTS_AFTER_CURSORS, |s| {
        s.replace("$1::text[]", "ARRAY['acme']")
            .replace("$2::int2[]", "ARRAY[2]::int2[]")
            .replace("$3::int8[]", "ARRAY[100]::int8[]")
    })
    .await;
    assert!(starts_at_cursor(&after_cursors, "c.priority, c.id"), "{after_cursors}");
    for linear in ["Sort", "Bitmap", "Seq Scan on roundhouse_jobs"] {
        assert!(!after_cursors.contains(linear), "{linear}: {after_cursors}");
    }
    // Estimates that make the ordered index scan look dear (stale or missing statistics do this
    // under deep backlogs; here the strongest such preference): unguarded, the planner reads and
    // sorts every waiting row per claim; guarded, it keeps the index walk.
    let dear = "; SET LOCAL enable_indexscan = off";
    let unguarded = plan(&pool, &format!("BEGIN{dear}"), &take_sql(), take_with_literals).await;
    assert!(
        unguarded.contains("Sort") && unguarded.contains("Bitmap"),
        "{unguarded}"
    );
    let guarded = plan(
        &pool,
        &format!("{HOT_PATH_BEGIN}{dear}"),
        &take_sql(),
        take_with_literals,
    )
    .await;
    assert!(
        guarded.contains("Index Scan using roundhouse_jobs_available"),
        "{guarded}"
    );
    assert!(!guarded.contains("Sort") && !guarded.contains("Bitmap"), "{guarded}");
    drop_database(queue, &name).await;
}

/// Statistics gathered while every job waited say that nothing runs; the planner then preferred
/// to walk a whole `running` partial index (and the dead entries of every job finished since the
/// last VACUUM) once per heartbeat or acknowledgement row: 23–35 s a heartbeat in a million-job
/// drain. Both must reach their rows by the primary key.
#[tokio::test]
async fn heartbeats_and_acknowledgements_reach_rows_by_their_primary_key() {
    let (queue, name) = database().await;
    let pool = queue.pool().clone();
    backlog(&pool, 20_000).await;
    sqlx::query("ANALYZE roundhouse_jobs").execute(&pool).await.unwrap();
    sqlx::query(
        "UPDATE roundhouse_jobs SET state = 'running', worker_id = 'w1', claims = 1,
             lease_expires_at = now() + interval '30 seconds' WHERE id <= 300",
    )
    .execute(&pool)
    .await
    .unwrap();
    let leases = "(SELECT array_agg(g)::bigint[] FROM generate_series(1, 300) g)";
    let tokens = "array_fill(1, ARRAY[300])::int4[]";
    let heartbeat = plan(&pool, HOT_PATH_BEGIN, &heartbeat_sql(), |s| {
        s.replace("$1::bigint[]", leases)
            .replace("$2::int4[]", tokens)
            .replace("$3", "30000")
            .replace("$4", "'w1'")
    })
    .await;
    let ack = plan(&pool, HOT_PATH_BEGIN, &ack_sql(), |s| {
        s.replace("$1::bigint[]", leases)
            .replace("$2::int4[]", tokens)
            .replace("$3::text[]", "array_fill('completed'::text, ARRAY[300])")
            .replace("$4::timestamptz[]", "array_fill(NULL::timestamptz, ARRAY[300])")
            .replace("$5::text[]", "array_fill(NULL::text, ARRAY[300])")
            .replace("$6", "false")
    })
    .await;
    for statement in [heartbeat, ack] {
        assert!(
            statement.contains("Index Scan using roundhouse_jobs_pkey"),
            "{statement}"
        );
        for walk in [
            "roundhouse_jobs_running_project",
            "roundhouse_jobs_lease",
            "Seq Scan on roundhouse_jobs",
            "Hash",
        ] {
            assert!(!statement.contains(walk), "{walk}: {statement}");
        }
    }
    drop_database(queue, &name).await;
}

fn noop(project: &str, priority: i16) -> NewJob {
    NewJob::new("noop", project, serde_json::json!({})).with_priority(priority)
}

fn request(limit: usize) -> ClaimRequest {
    ClaimRequest {
        worker: "w1".into(),
        kinds: vec!["noop".into()],
        limit,
        lease: Duration::from_secs(30),
    }
}

/// Waits until the listener has applied the notifications that `done` looks for.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "no notification: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The claim cursor (`cursor.rs`) skips the dead front of the `available` index; a row that
/// becomes available behind it must still be claimed, in priority order, without waiting for the
/// periodic full walk (switched off here): an urgent job, a transaction that commits after a
/// later one, a job handed back — the first and last by another process (another queue handle),
/// so that only the notification can tell this one.
#[tokio::test]
async fn rows_that_become_available_behind_the_claim_cursor_are_still_claimed_in_order() {
    let (queue, name) = database().await;
    let url = format!("{}/{name}", admin_url().rsplit_once('/').unwrap().0);
    let other = PostgresQueue::connect(&url, 2).await.unwrap();
    queue.wait_for_work(Duration::from_secs(10)).await; // LISTEN is up
    queue.cursors.set_full_walk_every(Duration::from_secs(3600));
    let kinds = ClaimCursors::kinds_key(&["noop".to_string()]);
    let ids = |jobs: &[ClaimedJob]| jobs.iter().map(|j| j.id).collect::<Vec<_>>();
    let normal = queue.enqueue((0..10).map(|_| noop("acme", 5)).collect()).await.unwrap();
    let first = queue.claim(&request(3)).await.unwrap();
    assert_eq!(ids(&first), normal[..3].iter().map(|e| e.id).collect::<Vec<_>>());
    let cursor_claim = || queue.cursors.plan(&kinds, 0, 256);
    until("the first full walk recorded", || !cursor_claim().is_full()).await;

    // An urgent job: its id is the newest, its priority puts it before the cursor.
    let urgent = other.enqueue(vec![noop("acme", 1)]).await.unwrap()[0].id;
    until("urgent job", || {
        cursor_claim().from.is_some_and(|from| from[0].1.priority == 1)
    })
    .await;
    assert_eq!(ids(&queue.claim(&request(1)).await.unwrap()), vec![urgent]);

    // A transaction that took its ids first and commits after a later one.
    let mut late = queue.pool().begin().await.unwrap();
    let late_ids = queue.enqueue_in(&mut late, vec![noop("acme", 5)]).await.unwrap();
    let later = queue.enqueue(vec![noop("acme", 5)]).await.unwrap()[0].id;
    let mut rest: Vec<i64> = Vec::new();
    while rest.last() != Some(&later) {
        let got = queue.claim(&request(4)).await.unwrap();
        assert!(!got.is_empty(), "the committed jobs are all claimed: {rest:?}");
        rest.extend(ids(&got));
    }
    late.commit().await.unwrap();
    until("late commit", || {
        cursor_claim().from.is_some_and(|from| from[0].1.id < late_ids[0].id)
    })
    .await;
    assert_eq!(ids(&queue.claim(&request(4)).await.unwrap()), vec![late_ids[0].id]);

    // A job handed back (a worker's shutdown) keeps its id, behind the cursor.
    let again = queue.enqueue(vec![noop("acme", 5), noop("acme", 5)]).await.unwrap();
    let held = queue.claim(&request(2)).await.unwrap();
    assert_eq!(ids(&held), again.iter().map(|e| e.id).collect::<Vec<_>>());
    other
        .acknowledge(vec![Ack::new(&held[0], crate::job::Outcome::Released)])
        .await
        .unwrap();
    until("hand-back", || cursor_claim().is_full()).await;
    assert_eq!(ids(&queue.claim(&request(4)).await.unwrap()), vec![held[0].id]);
    other.pool().close().await;
    drop(other);
    drop_database(queue, &name).await;
}

/// More projects with work than a claim considers (`MAX_PROJECTS_PER_CLAIM`): every project gets
/// its turn long before the first ones in name order run dry — with full walks (the project scan
/// starts where the last one stopped) and with claim cursors (a rotating window).
#[tokio::test]
async fn with_more_projects_than_a_claim_considers_every_project_gets_its_turn() {
    for full_walk_every in [Duration::ZERO, Duration::from_secs(3600)] {
        let (queue, name) = database().await;
        queue.wait_for_work(Duration::from_secs(10)).await; // LISTEN is up
        queue.cursors.set_full_walk_every(full_walk_every);
        let projects = 300;
        let jobs: Vec<NewJob> = (0..projects)
            .flat_map(|p| (0..20).map(move |_| noop(&format!("p{p:03}"), 5)))
            .collect();
        queue.enqueue(jobs).await.unwrap();
        let mut served = std::collections::HashSet::new();
        // 40 claims of 64 are 2,560 jobs: half of what the first 256 projects hold.
        for _ in 0..40 {
            for job in queue.claim(&request(64)).await.unwrap() {
                served.insert(job.project);
            }
        }
        assert_eq!(
            served.len(),
            projects,
            "full walk every {full_walk_every:?}: {served:?}"
        );
        drop_database(queue, &name).await;
    }
}
