-- Build pipeline (issue 4): provenance on releases, per-step records, job logs.

-- Who built the image (e.g. `docker-buildkit 20.10.24`); the other provenance fields (repository,
-- git_sha, digest, sbom_uri, signature) are columns already.
ALTER TABLE releases ADD COLUMN builder TEXT;

-- One row per pipeline step of a release: timings, state, failure and the archived log.
CREATE TABLE release_steps (
    release_id   BIGINT NOT NULL REFERENCES releases (id) ON DELETE CASCADE,
    step         TEXT NOT NULL,
    job_id       BIGINT NOT NULL,
    attempt      INTEGER NOT NULL,
    status       TEXT NOT NULL,
    started_at   BIGINT NOT NULL,
    finished_at  BIGINT,
    detail       TEXT,
    log_uri      TEXT,
    PRIMARY KEY (release_id, step)
);

-- Job output, line by line, appended by workers while the job runs and read live by the API.
CREATE TABLE job_logs (
    job_id  BIGINT NOT NULL,
    seq     BIGINT NOT NULL,
    at      BIGINT NOT NULL,
    line    TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
-- Pruned by age with the job retention.
CREATE INDEX job_logs_by_age ON job_logs (at);
