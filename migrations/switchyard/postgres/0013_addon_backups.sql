-- Issue 17: backups of add-ons. A backup row is written `running` when it is asked for (on
-- demand, by an add-on's schedule, or before a forced deletion) and becomes `completed` only
-- after its artefact is stored in full, with the artefact's size and SHA-256; a failed or
-- interrupted backup lists as `failed` with the reason, never as restorable. `data_key` is the
-- sealed key the artefact is encrypted with. Backups outlive their add-on (a new add-on of the
-- same kind can be restored from them) and go with their project.
ALTER TABLE addons ADD COLUMN backup_schedule TEXT;
ALTER TABLE addons ADD COLUMN backup_keep BIGINT;
ALTER TABLE addons ADD COLUMN backup_next_at BIGINT;
-- A preview's add-on made with `spec.previews.seedAddons`: the parent's backup it starts from.
ALTER TABLE addons ADD COLUMN seed_backup BIGINT;

CREATE TABLE addon_backups (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project       TEXT NOT NULL REFERENCES projects (slug) ON DELETE CASCADE,
    environment   TEXT NOT NULL,
    addon         TEXT NOT NULL,
    kind          TEXT NOT NULL,
    trigger       TEXT NOT NULL,
    status        TEXT NOT NULL,
    artefact_key  TEXT NOT NULL,
    data_key      TEXT NOT NULL,
    size_bytes    BIGINT,
    plain_bytes   BIGINT,
    sha256        TEXT,
    detail        TEXT,
    requested_by  TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    completed_at  BIGINT
);
CREATE INDEX addon_backups_by_addon ON addon_backups (project, environment, addon, id);
