-- Issue 16: custom domains with proof of ownership. A domain is routed only once a TXT record
-- `_enclii-challenge.<host>` (the apex's for a wildcard) carries its token; `route_id` is the
-- route its verification created (removed with the domain).
CREATE TABLE domains (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project      TEXT NOT NULL,
    environment  TEXT NOT NULL,
    service      TEXT NOT NULL,
    host         TEXT NOT NULL UNIQUE,
    path         TEXT NOT NULL,
    token        TEXT NOT NULL,
    status       TEXT NOT NULL,
    -- What the last check found (or why it failed), for the user.
    detail       TEXT,
    -- Bumped by every (re)start of the checks; a check job of an older round is stale.
    round        BIGINT NOT NULL DEFAULT 0,
    checks       BIGINT NOT NULL DEFAULT 0,
    checked_at   BIGINT,
    verified_at  BIGINT,
    -- Checks stop (status `failed`) after this instant.
    deadline     BIGINT NOT NULL,
    route_id     BIGINT,
    created_at   BIGINT NOT NULL,
    FOREIGN KEY (project, service) REFERENCES services (project, name) ON DELETE CASCADE
);
CREATE INDEX domains_project ON domains (project, host);
