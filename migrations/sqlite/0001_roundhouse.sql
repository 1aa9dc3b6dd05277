-- Roundhouse queue schema (SQLite). Times are Unix milliseconds; lists are JSON arrays.

CREATE TABLE roundhouse_pipelines (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    project       TEXT NOT NULL,
    name          TEXT NOT NULL,
    state         TEXT NOT NULL DEFAULT 'running'
                  CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled', 'superseded')),
    supersede_key TEXT,
    unique_key    TEXT UNIQUE,
    created_at    INTEGER NOT NULL,
    finished_at   INTEGER
);
CREATE INDEX roundhouse_pipelines_supersede ON roundhouse_pipelines (supersede_key) WHERE state = 'running';

CREATE TABLE roundhouse_jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    kind             TEXT NOT NULL,
    project          TEXT NOT NULL,
    payload          TEXT NOT NULL,
    state            TEXT NOT NULL
                     CHECK (state IN ('pending', 'scheduled', 'available', 'running', 'completed', 'dead', 'cancelled')),
    priority         INTEGER NOT NULL,
    attempt          INTEGER NOT NULL DEFAULT 0,
    -- Claims so far; identifies a lease (never decremented, unlike attempt).
    claims           INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL CHECK (max_attempts > 0),
    timeout_ms       INTEGER NOT NULL CHECK (timeout_ms > 0),
    backoff_base_ms  INTEGER NOT NULL,
    backoff_max_ms   INTEGER NOT NULL,
    run_at           INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    attempted_at     INTEGER,
    finished_at      INTEGER,
    lease_expires_at INTEGER,
    worker_id        TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    unique_key       TEXT,
    pipeline_id      INTEGER REFERENCES roundhouse_pipelines (id) ON DELETE CASCADE,
    step             TEXT,
    needs            TEXT NOT NULL DEFAULT '[]',
    dependents       TEXT NOT NULL DEFAULT '[]',
    deps_remaining   INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT
);

CREATE UNIQUE INDEX roundhouse_jobs_unique_key ON roundhouse_jobs (unique_key) WHERE unique_key IS NOT NULL;
CREATE INDEX roundhouse_jobs_available ON roundhouse_jobs (project, priority, id) WHERE state = 'available';
CREATE INDEX roundhouse_jobs_scheduled ON roundhouse_jobs (run_at) WHERE state = 'scheduled';
CREATE INDEX roundhouse_jobs_lease ON roundhouse_jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX roundhouse_jobs_running_project ON roundhouse_jobs (project) WHERE state = 'running';
CREATE INDEX roundhouse_jobs_finished ON roundhouse_jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX roundhouse_jobs_pipeline ON roundhouse_jobs (pipeline_id, step) WHERE pipeline_id IS NOT NULL;

CREATE TABLE roundhouse_project_limits (
    project         TEXT PRIMARY KEY,
    max_running     INTEGER CHECK (max_running >= 0),
    jobs_per_minute INTEGER CHECK (jobs_per_minute >= 0),
    tokens          REAL NOT NULL DEFAULT 0,
    refilled_at     INTEGER NOT NULL
);
