-- Issue 16: HTTPS. One row per host that has a certificate or an order for one (a verified
-- custom domain, or a generated preview/base-domain host on its first TLS request). The chain is
-- public; the private key is sealed with the master key, so every router process of this Enclii
-- serves it after a restart without asking the ACME server again.
CREATE TABLE certificates (
    host         TEXT PRIMARY KEY,
    project      TEXT NOT NULL,
    status       TEXT NOT NULL,
    -- Bumped by every order; a `cert-order` job of an older order is stale.
    orders       BIGINT NOT NULL DEFAULT 0,
    chain_pem    TEXT,
    key_sealed   TEXT,
    not_after    BIGINT,
    -- Why the last order failed (the ACME server's problem document), for the user.
    error        TEXT,
    ordered_at   BIGINT,
    issued_at    BIGINT,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX certificates_project ON certificates (project, host);

-- The ACME account per directory URL: instant-acme's credentials (its private key), sealed.
CREATE TABLE acme_accounts (
    directory    TEXT PRIMARY KEY,
    credentials  TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);

-- HTTP-01 answers any router process serves at /.well-known/acme-challenge/<token> while an
-- order waits for the ACME server's validation.
CREATE TABLE acme_challenges (
    token              TEXT PRIMARY KEY,
    key_authorization  TEXT NOT NULL,
    host               TEXT NOT NULL,
    expires_at         BIGINT NOT NULL
);
