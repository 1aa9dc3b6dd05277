//! A per-job scratch directory, removed when the job's step ends (also when its future is dropped
//! by a timeout or a cancellation).

use std::path::{Path, PathBuf};

use crate::StepError;

pub struct Workspace {
    dir: PathBuf,
}

impl Workspace {
    pub fn create(root: &Path, job_id: i64, attempt: u32) -> Result<Self, StepError> {
        let dir = root.join(format!("job-{job_id}-{attempt}"));
        if dir.exists() {
            // Left by a crashed earlier run of this very attempt.
            let _ = std::fs::remove_dir_all(&dir);
        }
        std::fs::create_dir_all(&dir).map_err(|e| {
            StepError::transient(format!(
                "cannot create the job workspace {}: {e}; check ENCLII_BUILD_WORKSPACE and free disk space",
                dir.display()
            ))
        })?;
        Ok(Workspace { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not remove a job workspace");
        }
    }
}

/// Joins a repository-relative path to `root` and checks, after resolving symlinks, that it stays
/// inside `root` (the spec's lexical check cannot see symlinks committed to the repository).
pub fn contained(root: &Path, relative: &str, what: &str) -> Result<PathBuf, StepError> {
    let root = root
        .canonicalize()
        .map_err(|e| StepError::transient(format!("workspace vanished: {e}")))?;
    let joined = root.join(relative.trim_start_matches("./"));
    let resolved = joined.canonicalize().map_err(|_| {
        StepError::fatal(format!(
            "{what} `{relative}` does not exist in the repository at this commit; fix spec.build or add it"
        ))
    })?;
    if !resolved.starts_with(&root) {
        return Err(StepError::fatal(format!(
            "{what} `{relative}` resolves outside the repository (through a symlink); point spec.build at a path inside it"
        )));
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_escape_through_symlinks_are_refused() {
        let root = std::env::temp_dir().join(format!("enclii-ws-test-{}", std::process::id()));
        let ws = Workspace::create(&root, 1, 1).unwrap();
        std::fs::create_dir(ws.path().join("app")).unwrap();
        std::os::unix::fs::symlink("/etc", ws.path().join("escape")).unwrap();
        assert!(contained(ws.path(), "app", "context").is_ok());
        let err = contained(ws.path(), "escape", "context").unwrap_err();
        assert!(err.message.contains("outside the repository"), "{err}");
        let err = contained(ws.path(), "missing/Dockerfile", "Dockerfile").unwrap_err();
        assert!(err.message.contains("does not exist"), "{err}");
        let path = ws.path().to_path_buf();
        drop(ws);
        assert!(!path.exists(), "the workspace is removed when dropped");
        let _ = std::fs::remove_dir_all(root);
    }
}
