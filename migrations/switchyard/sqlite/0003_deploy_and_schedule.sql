-- Deploy and Timetable (issue 5): deployment progress, paused environments, cron and one-off job
-- runs, cost samples and the scheduler's leader lease.

-- Why a deployment ended as it did (or which canary step it is on), the share of traffic its
-- release gets while it is a canary, the URL it serves on (previews), and when it ended.
ALTER TABLE deployments ADD COLUMN detail TEXT;
ALTER TABLE deployments ADD COLUMN canary_percent INTEGER;
ALTER TABLE deployments ADD COLUMN url TEXT;
ALTER TABLE deployments ADD COLUMN finished_at BIGINT;
CREATE INDEX deployments_by_environment ON deployments (project, environment, service, id);
-- A pipeline's deploy job creates its deployment row; a retried job finds it again by job id.
CREATE UNIQUE INDEX deployments_by_job ON deployments (job_id);

-- What the environment may use at most (every replica at replicas.max, every volume); NULL is
-- unlimited. A deploy that would exceed it is refused before anything is applied.
ALTER TABLE environments ADD COLUMN quota_cpu_millis BIGINT;
ALTER TABLE environments ADD COLUMN quota_memory_mib BIGINT;
ALTER TABLE environments ADD COLUMN quota_storage_mib BIGINT;
ALTER TABLE environments ADD COLUMN quota_pods BIGINT;

-- A budget at 100% pauses a non-prod environment; `budget_state` is the last level reported for
-- `budget_month` (`ok`, `warned` at 80%, `exceeded` at 100%) so each level is reported once.
ALTER TABLE environments ADD COLUMN paused_at BIGINT;
ALTER TABLE environments ADD COLUMN budget_state TEXT;
ALTER TABLE environments ADD COLUMN budget_month TEXT;

-- Next fire time of each cron job of each service spec.
CREATE TABLE cron_schedules (
    project   TEXT NOT NULL,
    service   TEXT NOT NULL,
    job       TEXT NOT NULL,
    schedule  TEXT NOT NULL,
    next_at   BIGINT NOT NULL,
    PRIMARY KEY (project, service, job),
    FOREIGN KEY (project, service) REFERENCES services (project, name) ON DELETE CASCADE
);
CREATE INDEX cron_schedules_due ON cron_schedules (next_at);

-- The history of cron and one-off runs of a service's jobs.
CREATE TABLE job_runs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    project        TEXT NOT NULL,
    service        TEXT NOT NULL,
    environment    TEXT NOT NULL,
    job            TEXT NOT NULL,
    trigger        TEXT NOT NULL,
    status         TEXT NOT NULL,
    queue_job_id   BIGINT,
    attempts       INTEGER NOT NULL,
    exit_code      BIGINT,
    detail         TEXT,
    scheduled_for  BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    started_at     BIGINT,
    finished_at    BIGINT,
    created_by     TEXT NOT NULL,
    FOREIGN KEY (project, service) REFERENCES services (project, name) ON DELETE CASCADE
);
CREATE INDEX job_runs_by_job ON job_runs (project, service, job, id);
-- A cron fire looks for a run of the same job still queued or running (it skips when there is one).
CREATE INDEX job_runs_active ON job_runs (project, service, job) WHERE status IN ('queued', 'running');

-- Resource usage of one service in one environment over one sampling interval.
CREATE TABLE cost_samples (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    project           TEXT NOT NULL,
    environment       TEXT NOT NULL,
    service           TEXT NOT NULL,
    at                BIGINT NOT NULL,
    interval_secs     BIGINT NOT NULL,
    cpu_seconds       REAL NOT NULL,
    ram_gib_hours     REAL NOT NULL,
    volume_gib_hours  REAL NOT NULL,
    egress_gib        REAL NOT NULL,
    cost_cents        REAL NOT NULL,
    -- The target's cumulative CPU and sent-bytes counters at `at`, so the next sample can take
    -- the difference.
    cpu_counter_ns    BIGINT,
    egress_counter_bytes BIGINT
);
CREATE INDEX cost_samples_by_project ON cost_samples (project, at);
CREATE INDEX cost_samples_by_service ON cost_samples (project, environment, service, at);

-- At most one scheduler acts at a time: the holder renews its lease before it expires.
CREATE TABLE leader_leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);
