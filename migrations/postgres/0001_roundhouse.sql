-- Roundhouse queue schema (PostgreSQL).

CREATE TABLE roundhouse_pipelines (
    id            BIGSERIAL PRIMARY KEY,
    project       TEXT NOT NULL,
    name          TEXT NOT NULL,
    state         TEXT NOT NULL DEFAULT 'running'
                  CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled', 'superseded')),
    supersede_key TEXT,
    unique_key    TEXT UNIQUE,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at   TIMESTAMPTZ
);
CREATE INDEX roundhouse_pipelines_supersede ON roundhouse_pipelines (supersede_key) WHERE state = 'running';

CREATE TABLE roundhouse_jobs (
    id               BIGSERIAL PRIMARY KEY,
    kind             TEXT NOT NULL,
    project          TEXT NOT NULL,
    payload          JSONB NOT NULL,
    state            TEXT NOT NULL
                     CHECK (state IN ('pending', 'scheduled', 'available', 'running', 'completed', 'dead', 'cancelled')),
    priority         SMALLINT NOT NULL,
    attempt          INT NOT NULL DEFAULT 0,
    -- Claims so far; identifies a lease (never decremented, unlike attempt).
    claims           INT NOT NULL DEFAULT 0,
    max_attempts     INT NOT NULL CHECK (max_attempts > 0),
    timeout_ms       BIGINT NOT NULL CHECK (timeout_ms > 0),
    backoff_base_ms  BIGINT NOT NULL,
    backoff_max_ms   BIGINT NOT NULL,
    run_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempted_at     TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ,
    lease_expires_at TIMESTAMPTZ,
    worker_id        TEXT,
    cancel_requested BOOLEAN NOT NULL DEFAULT false,
    unique_key       TEXT,
    pipeline_id      BIGINT REFERENCES roundhouse_pipelines (id) ON DELETE CASCADE,
    step             TEXT,
    needs            TEXT[] NOT NULL DEFAULT '{}',
    dependents       TEXT[] NOT NULL DEFAULT '{}',
    deps_remaining   INT NOT NULL DEFAULT 0,
    last_error       TEXT
);

-- Unique keys hold until the job is pruned.
CREATE UNIQUE INDEX roundhouse_jobs_unique_key ON roundhouse_jobs (unique_key) WHERE unique_key IS NOT NULL;
-- The claim path: per project, by priority then age. Partial indexes stay small as jobs finish.
CREATE INDEX roundhouse_jobs_available ON roundhouse_jobs (project, priority, id) WHERE state = 'available';
CREATE INDEX roundhouse_jobs_scheduled ON roundhouse_jobs (run_at) WHERE state = 'scheduled';
CREATE INDEX roundhouse_jobs_lease ON roundhouse_jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX roundhouse_jobs_running_project ON roundhouse_jobs (project) WHERE state = 'running';
CREATE INDEX roundhouse_jobs_finished ON roundhouse_jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX roundhouse_jobs_pipeline ON roundhouse_jobs (pipeline_id, step) WHERE pipeline_id IS NOT NULL;

CREATE TABLE roundhouse_project_limits (
    project         TEXT PRIMARY KEY,
    max_running     INT CHECK (max_running >= 0),
    jobs_per_minute INT CHECK (jobs_per_minute >= 0),
    tokens          DOUBLE PRECISION NOT NULL DEFAULT 0,
    refilled_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
