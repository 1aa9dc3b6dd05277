-- Switchyard control plane. Times are Unix epoch milliseconds (BIGINT) and documents are JSON
-- text, so that one set of queries serves PostgreSQL and SQLite alike.

CREATE TABLE projects (
    slug        TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    created_by  TEXT NOT NULL
);

CREATE TABLE environments (
    project       TEXT NOT NULL REFERENCES projects (slug) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    region        TEXT,
    budget_cents  BIGINT,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (project, name)
);

CREATE TABLE services (
    project       TEXT NOT NULL REFERENCES projects (slug) ON DELETE CASCADE,
    name          TEXT NOT NULL,
    environment   TEXT NOT NULL,
    repository    TEXT,
    branch        TEXT,
    spec          TEXT NOT NULL,
    spec_version  BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (project, name),
    FOREIGN KEY (project, environment) REFERENCES environments (project, name)
);
CREATE INDEX services_by_repository ON services (repository, branch);

CREATE TABLE service_spec_versions (
    project     TEXT NOT NULL,
    service     TEXT NOT NULL,
    version     BIGINT NOT NULL,
    spec        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    created_by  TEXT NOT NULL,
    PRIMARY KEY (project, service, version),
    FOREIGN KEY (project, service) REFERENCES services (project, name) ON DELETE CASCADE
);

CREATE TABLE releases (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project      TEXT NOT NULL,
    service      TEXT NOT NULL,
    environment  TEXT NOT NULL,
    git_sha      TEXT NOT NULL,
    repository   TEXT NOT NULL,
    branch       TEXT NOT NULL,
    image        TEXT NOT NULL,
    digest       TEXT,
    sbom_uri     TEXT,
    signature    TEXT,
    status       TEXT NOT NULL,
    failure      TEXT,
    pipeline_id  BIGINT,
    trigger      TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    UNIQUE (project, service, environment, git_sha),
    FOREIGN KEY (project, service) REFERENCES services (project, name) ON DELETE CASCADE
);
CREATE INDEX releases_by_service ON releases (project, service, id);
-- A superseded run marks its release: find it without scanning every release.
CREATE INDEX releases_building_by_pipeline ON releases (pipeline_id) WHERE status = 'building';

CREATE TABLE deployments (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project      TEXT NOT NULL,
    service      TEXT NOT NULL,
    environment  TEXT NOT NULL,
    release_id   BIGINT NOT NULL REFERENCES releases (id) ON DELETE CASCADE,
    strategy     TEXT NOT NULL,
    status       TEXT NOT NULL,
    reason       TEXT NOT NULL,
    job_id       BIGINT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    created_by   TEXT NOT NULL,
    FOREIGN KEY (project, service) REFERENCES services (project, name) ON DELETE CASCADE
);
CREATE INDEX deployments_by_service ON deployments (project, service, id);

-- Envelope encryption: each version has its own data key, wrapped by the master key.
-- environment/service are '' when the secret is not scoped that narrowly.
CREATE TABLE secrets (
    project      TEXT NOT NULL REFERENCES projects (slug) ON DELETE CASCADE,
    environment  TEXT NOT NULL,
    service      TEXT NOT NULL,
    name         TEXT NOT NULL,
    version      BIGINT NOT NULL,
    sealed       TEXT,
    deleted      BOOLEAN NOT NULL,
    created_at   BIGINT NOT NULL,
    created_by   TEXT NOT NULL,
    PRIMARY KEY (project, environment, service, name, version)
);

CREATE TABLE routes (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project      TEXT NOT NULL,
    environment  TEXT NOT NULL,
    service      TEXT NOT NULL,
    host         TEXT NOT NULL,
    path         TEXT NOT NULL,
    tls          BOOLEAN NOT NULL,
    created_at   BIGINT NOT NULL,
    UNIQUE (host, path),
    FOREIGN KEY (project, service) REFERENCES services (project, name) ON DELETE CASCADE
);

-- Who may do what: project '*' binds a role on every project.
CREATE TABLE role_bindings (
    subject     TEXT NOT NULL,
    project     TEXT NOT NULL,
    role        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (subject, project)
);

CREATE TABLE api_tokens (
    id            TEXT PRIMARY KEY,
    secret_hash   TEXT NOT NULL,
    subject       TEXT NOT NULL,
    name          TEXT NOT NULL,
    scopes        TEXT NOT NULL,
    project       TEXT,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT,
    revoked_at    BIGINT
);

CREATE TABLE webhook_deliveries (
    delivery_id  TEXT PRIMARY KEY,
    event        TEXT NOT NULL,
    action       TEXT,
    repository   TEXT,
    project      TEXT,
    outcome      TEXT NOT NULL,
    pipeline_ids TEXT NOT NULL,
    received_at  BIGINT NOT NULL
);

CREATE TABLE audit_events (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at           BIGINT NOT NULL,
    actor        TEXT NOT NULL,
    action       TEXT NOT NULL,
    entity_type  TEXT NOT NULL,
    entity       TEXT NOT NULL,
    project      TEXT,
    diff         TEXT NOT NULL
);
CREATE INDEX audit_by_project ON audit_events (project, id);

-- The audit trail is append-only.
CREATE FUNCTION audit_events_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit events are immutable';
END $$;
CREATE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_immutable();
