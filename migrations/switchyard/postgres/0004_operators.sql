-- What operators control and watch: per-project queue limits and pauses (the queue enforces the
-- effective limits; this is their source of truth), and the worker processes' heartbeats.
CREATE TABLE queue_controls (
    project          TEXT PRIMARY KEY REFERENCES projects (slug) ON DELETE CASCADE,
    max_running      BIGINT,
    jobs_per_minute  BIGINT,
    paused           BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at       BIGINT NOT NULL,
    updated_by       TEXT NOT NULL
);

CREATE TABLE workers (
    id           TEXT PRIMARY KEY,
    host         TEXT NOT NULL,
    pid          BIGINT NOT NULL,
    -- JSON array of the job kinds the worker handles.
    kinds        TEXT NOT NULL,
    concurrency  BIGINT NOT NULL,
    started_at   BIGINT NOT NULL,
    last_seen    BIGINT NOT NULL,
    stopped_at   BIGINT
);
CREATE INDEX workers_last_seen ON workers (last_seen);
