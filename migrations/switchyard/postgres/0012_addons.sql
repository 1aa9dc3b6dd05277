-- Issue 17: add-ons, databases a project environment runs beside its services. `credentials`
-- is the sealed JSON of the current login (generation `generation`); `previous_credentials`
-- the one before the last rotation, still valid until an `addon-retire` job disables it.
CREATE TABLE addons (
    id                    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project               TEXT NOT NULL,
    environment           TEXT NOT NULL,
    name                  TEXT NOT NULL,
    kind                  TEXT NOT NULL,
    version               TEXT NOT NULL,
    image                 TEXT NOT NULL,
    size_mib              BIGINT,
    status                TEXT NOT NULL,
    -- Why it failed, or what the last attempt found, for the user.
    detail                TEXT,
    generation            BIGINT NOT NULL DEFAULT 1,
    credentials           TEXT NOT NULL,
    previous_credentials  TEXT,
    ready_at              BIGINT,
    created_at            BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL,
    UNIQUE (project, environment, name),
    FOREIGN KEY (project, environment) REFERENCES environments (project, name) ON DELETE CASCADE
);
