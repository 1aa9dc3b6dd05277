-- Who may build from a repository. A repository belongs to the first project whose service names
-- it; another project's services may build from it only with a grant from an Admin of the owner.
-- Without this, anyone able to create a service could subscribe to another project's repository:
-- its signed pushes would build there, cloned with the platform's git token.
CREATE TABLE repository_claims (
    -- The repository as `repository_key` normalises it (`github.com/org/shop`).
    repository  TEXT PRIMARY KEY,
    project     TEXT NOT NULL REFERENCES projects (slug) ON DELETE CASCADE,
    claimed_at  BIGINT NOT NULL,
    claimed_by  TEXT NOT NULL
);

CREATE TABLE repository_grants (
    repository  TEXT NOT NULL REFERENCES repository_claims (repository) ON DELETE CASCADE,
    project     TEXT NOT NULL REFERENCES projects (slug) ON DELETE CASCADE,
    granted_at  BIGINT NOT NULL,
    granted_by  TEXT NOT NULL,
    PRIMARY KEY (repository, project)
);

-- Installations from before this rule keep working: each repository goes to the project whose
-- service named it first, and every other project already building from it gets a grant.
INSERT INTO repository_claims (repository, project, claimed_at, claimed_by)
SELECT s.repository, MIN(s.project), MIN(s.created_at), 'migration'
FROM services s
WHERE s.repository IS NOT NULL
  AND NOT EXISTS (
      SELECT 1 FROM services o
      WHERE o.repository = s.repository AND o.created_at < s.created_at
  )
GROUP BY s.repository;

INSERT INTO repository_grants (repository, project, granted_at, granted_by)
SELECT DISTINCT s.repository, s.project, c.claimed_at, 'migration'
FROM services s
JOIN repository_claims c ON c.repository = s.repository
WHERE s.project <> c.project;
