-- Where each repository's refs stand, as the signed bodies of accepted GitHub deliveries say:
-- a branch's newest pushed commit (`refs/heads/<b>`) and a pull request's head
-- (`refs/pull/<n>/head`, empty once closed). A delivery that would move a ref backwards — a
-- captured old delivery re-sent with a fresh X-GitHub-Delivery id, or one that arrives late — is
-- recognised here and changes nothing.
CREATE TABLE source_heads (
    repository  TEXT NOT NULL,
    git_ref     TEXT NOT NULL,
    sha         TEXT NOT NULL,
    -- The head's time as the body gave it (commit time for a push, updated_at for a pull
    -- request), milliseconds since the epoch; NULL when the body had none.
    at_ms       BIGINT,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (repository, git_ref)
);
