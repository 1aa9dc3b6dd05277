-- Group-commit model for webhook ingestion (issue 21 item 5, docs/benchmarks.md): one transaction
-- writes the rows of :n push deliveries over :k services set-based, as a group-commit writer would
-- (delivery, head, release, pipeline + 6 jobs, audit; each service's previous run superseded with
-- its jobs and release). Database side only: no HTTP, no application.
--
--   createdb whgc; pg_dump -s <a loadtest_… database while `loadtest webhooks` runs> | psql whgc
--   psql whgc -c "INSERT INTO projects (slug, name, created_at, created_by) SELECT 'p' || g, 'p', 0, 'x' FROM generate_series(0, 999) g;
--                 INSERT INTO environments (project, name, created_at) SELECT 'p' || g, 'prod', 0 FROM generate_series(0, 999) g;
--                 INSERT INTO services (project, name, environment, spec, spec_version, created_at, updated_at)
--                   SELECT 'p' || g, 'web', 'prod', '{}', 1, 0, 0 FROM generate_series(0, 999) g;"
--   pgbench -n -f webhook-batch-model.sql -D n=32 -D k=16 -c 2 -j 2 -T 20 whgc   # deliveries/s = tps × n
BEGIN;
SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM (SELECT 'k' || (:client_id * :k + g) AS k FROM generate_series(0, :k - 1) g ORDER BY 1) s;
SELECT repository FROM source_heads WHERE git_ref = 'refs/heads/main' AND repository = ANY (ARRAY(SELECT 'r' || (:client_id * :k + g) FROM generate_series(0, :k - 1) g)) ORDER BY 1 FOR UPDATE;
INSERT INTO source_heads (repository, git_ref, sha, at_ms, updated_at)
  SELECT 'r' || (:client_id * :k + g), 'refs/heads/main', md5(random()::text), NULL, 0 FROM generate_series(0, :k - 1) g
  ON CONFLICT (repository, git_ref) DO UPDATE SET sha = excluded.sha, updated_at = excluded.updated_at;
WITH s AS (UPDATE roundhouse_pipelines SET state = 'superseded', finished_at = now()
           WHERE supersede_key = ANY (ARRAY(SELECT 'k' || (:client_id * :k + g) FROM generate_series(0, :k - 1) g)) AND state = 'running' RETURNING id),
     r AS (UPDATE releases SET status = 'superseded', failure = 'superseded', updated_at = 0 FROM s WHERE releases.pipeline_id = s.id AND status = 'building' RETURNING 1)
UPDATE roundhouse_jobs j SET state = 'cancelled', finished_at = now(), last_error = 'superseded'
  FROM s WHERE j.pipeline_id = s.id AND j.state IN ('pending', 'scheduled', 'available');
CREATE TEMP TABLE IF NOT EXISTS batch_p (i int, id bigint) ON COMMIT DELETE ROWS;
WITH p AS (INSERT INTO roundhouse_pipelines (project, name, supersede_key)
           SELECT 'p' || (:client_id * :k + g % :k), 'build-and-deploy', 'k' || (:client_id * :k + g % :k) FROM generate_series(1, :n) g RETURNING id, supersede_key),
     j AS (INSERT INTO roundhouse_jobs (kind, project, payload, state, priority, max_attempts, timeout_ms,
                                       backoff_base_ms, backoff_max_ms, pipeline_id, step, needs, dependents, deps_remaining)
           SELECT 'clone', 'p', '{"repository": "https://github.com/org/repo", "commit": "0123456789abcdef0123456789abcdef01234567", "branch": "main"}'::jsonb,
                  CASE WHEN s = 1 THEN 'available' ELSE 'pending' END, 0, 3, 600000, 1000, 60000, p.id, 'step' || s,
                  '{}', '{}', CASE WHEN s = 1 THEN 0 ELSE 1 END
           FROM p, generate_series(1, 6) s RETURNING pipeline_id)
INSERT INTO batch_p SELECT row_number() OVER (), id FROM p, (SELECT pg_notify('roundhouse_jobs', '')) n;
INSERT INTO releases (project, service, environment, git_sha, repository, branch, image, status, pipeline_id, trigger, created_at, updated_at)
  SELECT 'p' || (:client_id * :k + i % :k), 'web', 'prod', md5(random()::text), 'github.com/org/r', 'main', 'img', 'building', id, 'push', 0, 0 FROM batch_p;
INSERT INTO webhook_deliveries (delivery_id, event, action, repository, project, outcome, pipeline_ids, received_at)
  SELECT gen_random_uuid()::text, 'push', NULL, 'github.com/org/r', 'p', 'enqueued 1 pipeline(s)', '[' || id || ']', 0 FROM batch_p;
INSERT INTO audit_events (at, actor, action, entity_type, entity, project, diff)
  SELECT 0, 'github', 'webhook.receive', 'delivery', 'd' || id, 'p', '{"event":"push","outcome":"enqueued 1 pipeline(s)"}' FROM batch_p;
COMMIT;
