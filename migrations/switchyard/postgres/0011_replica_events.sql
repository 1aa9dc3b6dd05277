-- Issue 16: what replicas did on their own between deploys (an exit restarted by the engine, a
-- restart after failed liveness probes), shown in the service's history beside its deployments.
CREATE TABLE replica_events (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project      TEXT NOT NULL,
    environment  TEXT NOT NULL,
    service      TEXT NOT NULL,
    release_id   BIGINT NOT NULL,
    replica      TEXT NOT NULL,
    kind         TEXT NOT NULL,
    detail       TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE INDEX replica_events_service ON replica_events (project, service, id);
CREATE INDEX replica_events_created ON replica_events (created_at);
