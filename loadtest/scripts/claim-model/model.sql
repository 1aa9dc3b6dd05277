-- The claim model's functions (run.sh): the worker's claim and acknowledgement as one function
-- each, with the claim transaction's planner settings (HOT_PATH_BEGIN in queue/src/postgres/claim.rs).
-- model_claim_front: the project scan and the take walk the `available` index from its front.
-- model_claim_cursor: both start after `cur`, the last id the client took (one project, one priority).
CREATE OR REPLACE FUNCTION model_claim_front(n int) RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE ids bigint[]; projects text[];
BEGIN
  PERFORM set_config('enable_seqscan','off',true); PERFORM set_config('enable_bitmapscan','off',true);
  PERFORM set_config('enable_sort','off',true); PERFORM set_config('enable_hashjoin','off',true); PERFORM set_config('enable_mergejoin','off',true);
  WITH RECURSIVE p(project) AS (
         (SELECT project FROM roundhouse_jobs WHERE state = 'available' ORDER BY project LIMIT 1)
         UNION ALL
         SELECT (SELECT j.project FROM roundhouse_jobs j WHERE j.state = 'available' AND j.project > p.project
                 ORDER BY j.project LIMIT 1)
         FROM p WHERE p.project IS NOT NULL)
     SELECT array_agg(project) INTO projects FROM (SELECT project FROM p WHERE p.project IS NOT NULL LIMIT 256) x;
  WITH quota AS (SELECT * FROM unnest(ARRAY['loadtest']::text[], ARRAY[n]::int4[]) AS q(project, n)),
              picked AS (
                  SELECT c.id FROM quota q CROSS JOIN LATERAL (
                      SELECT id FROM roundhouse_jobs
                      WHERE state = 'available' AND project = q.project AND kind = ANY(ARRAY['bench.noop','bench.sleep'])
                      ORDER BY priority, id LIMIT q.n FOR UPDATE SKIP LOCKED) c),
       upd AS (UPDATE roundhouse_jobs j SET state = 'running', attempt = j.attempt + 1, claims = j.claims + 1, worker_id = 'w',
             attempted_at = now(), lease_expires_at = now() + interval '8 seconds'
         FROM picked WHERE j.id = picked.id RETURNING j.id)
  SELECT array_agg(id) INTO ids FROM upd;
  RETURN ids;
END $$;
CREATE OR REPLACE FUNCTION model_ack(ids bigint[]) RETURNS void LANGUAGE sql AS $$
  UPDATE roundhouse_jobs j SET state = 'completed', finished_at = now(), lease_expires_at = NULL, worker_id = NULL
  FROM unnest(ids) AS a(id) WHERE j.id = a.id AND j.state = 'running';
$$;
CREATE OR REPLACE FUNCTION model_claim_cursor(n int, cur bigint) RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE ids bigint[]; project_with_work text;
BEGIN
  PERFORM set_config('enable_seqscan','off',true); PERFORM set_config('enable_bitmapscan','off',true);
  PERFORM set_config('enable_sort','off',true); PERFORM set_config('enable_hashjoin','off',true); PERFORM set_config('enable_mergejoin','off',true);
  SELECT project INTO project_with_work FROM roundhouse_jobs WHERE state = 'available' AND (project, priority, id) > ('loadtest', 5, cur) ORDER BY project, priority, id LIMIT 1;
  WITH picked AS (SELECT id FROM roundhouse_jobs
                      WHERE state = 'available' AND project = 'loadtest' AND (priority, id) > (5, cur) AND kind = ANY(ARRAY['bench.noop','bench.sleep'])
                      ORDER BY priority, id LIMIT n FOR UPDATE SKIP LOCKED),
       upd AS (UPDATE roundhouse_jobs j SET state = 'running', attempt = j.attempt + 1, claims = j.claims + 1, worker_id = 'w',
             attempted_at = now(), lease_expires_at = now() + interval '8 seconds'
         FROM picked WHERE j.id = picked.id RETURNING j.id)
  SELECT array_agg(id ORDER BY id) INTO ids FROM upd;
  RETURN ids;
END $$;
