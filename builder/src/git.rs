//! `clone`: fetch exactly one commit with git2 (shallow when the server allows fetching it by
//! SHA) and archive its tree.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use git2::{FetchOptions, RemoteCallbacks, Repository};

use crate::{JobLog, StepError};

pub struct CloneRequest<'a> {
    pub repository: &'a str,
    pub commit: &'a str,
    pub branch: Option<&'a str>,
    pub token: Option<&'a str>,
    pub allowed_schemes: &'a [String],
}

/// The URL's scheme (`scp`-like `git@host:path` counts as `ssh`).
fn scheme(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, _)) => scheme.to_ascii_lowercase(),
        None => "ssh".into(),
    }
}

pub fn check_scheme(url: &str, allowed: &[String]) -> Result<(), StepError> {
    let scheme = scheme(url);
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(&scheme)) {
        Ok(())
    } else {
        Err(StepError::fatal(format!(
            "clone failed: repository scheme `{scheme}` is not allowed here (allowed: {}); use an allowed URL in spec.source.git.repository or ask the operator to extend ENCLII_GIT_SCHEMES",
            allowed.join(", ")
        )))
    }
}

fn is_full_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Fetches `req.commit` into `dir` and checks its tree out. Blocking: run it on a blocking thread.
/// Setting `cancel` aborts the transfer at the next progress callback.
pub fn fetch_commit(
    req: &CloneRequest<'_>,
    dir: &Path,
    log: &JobLog,
    cancel: Arc<AtomicBool>,
) -> Result<String, StepError> {
    check_scheme(req.repository, req.allowed_schemes)?;
    let repo = Repository::init(dir).map_err(|e| {
        StepError::transient(format!(
            "clone failed: cannot create a repository in the workspace: {e}"
        ))
    })?;
    let mut remote = repo.remote_anonymous(req.repository).map_err(|e| {
        StepError::fatal(format!(
            "clone failed: `{}` is not a usable git URL: {}",
            req.repository,
            e.message()
        ))
    })?;
    let mut fetch = |refspecs: &[String], depth: Option<i32>| -> Result<(), git2::Error> {
        let mut callbacks = RemoteCallbacks::new();
        let token = req.token.map(str::to_string);
        callbacks.credentials(move |_url, username, _allowed| match &token {
            Some(token) => git2::Cred::userpass_plaintext(username.unwrap_or("x-access-token"), token),
            None => Err(git2::Error::from_str(
                "the repository needs credentials: set the project secret GIT_TOKEN",
            )),
        });
        let transfer_cancel = cancel.clone();
        callbacks.transfer_progress(move |_| !transfer_cancel.load(Ordering::Relaxed));
        // The server's progress messages come before any object does: stop there too.
        let (progress_log, sideband_cancel) = (log.clone(), cancel.clone());
        callbacks.sideband_progress(move |bytes| {
            let text = String::from_utf8_lossy(bytes);
            if let Some(line) = text.split(['\r', '\n']).rev().find(|l| !l.trim().is_empty()) {
                progress_log.line(format!("remote: {}", line.trim()));
            }
            !sideband_cancel.load(Ordering::Relaxed)
        });
        let mut options = FetchOptions::new();
        options.remote_callbacks(callbacks);
        if let Some(depth) = depth {
            options.depth(depth);
        }
        remote.fetch(refspecs, Some(&mut options), None)
    };
    let started = std::time::Instant::now();
    let by_sha = is_full_sha(req.commit);
    let shallow = by_sha && fetch(&[format!("+{}:refs/enclii/build", req.commit)], Some(1)).is_ok();
    if !shallow {
        if cancel.load(Ordering::Relaxed) {
            return Err(StepError::fatal("clone cancelled"));
        }
        // The server refuses unadvertised SHAs (or the commit is abbreviated): fetch the branch.
        let branch = req.branch.unwrap_or("HEAD");
        let refspec = if branch == "HEAD" {
            "+HEAD:refs/enclii/head".to_string()
        } else {
            format!("+refs/heads/{branch}:refs/enclii/head")
        };
        log.line(format!("fetching {branch} (the server does not serve commits by SHA)"));
        fetch(&[refspec], None).map_err(|e| classify(req.repository, &e, &cancel))?;
    }
    let object = repo.revparse_single(req.commit).map_err(|_| {
        StepError::fatal(format!(
            "clone failed: commit {} is not in {} (branch {}); was it force-pushed away?",
            req.commit,
            req.repository,
            req.branch.unwrap_or("HEAD")
        ))
    })?;
    let commit = object
        .peel_to_commit()
        .map_err(|e| StepError::fatal(format!("clone failed: {} is not a commit: {}", req.commit, e.message())))?;
    repo.checkout_tree(commit.as_object(), Some(git2::build::CheckoutBuilder::new().force()))
        .map_err(|e| StepError::transient(format!("clone failed: checkout of {}: {}", req.commit, e.message())))?;
    log.line(format!(
        "fetched {} from {} ({}) in {} ms",
        commit.id(),
        redact_url(req.repository),
        if shallow { "shallow" } else { "branch history" },
        started.elapsed().as_millis()
    ));
    Ok(commit.id().to_string())
}

fn classify(repository: &str, e: &git2::Error, cancel: &AtomicBool) -> StepError {
    if cancel.load(Ordering::Relaxed) {
        return StepError::fatal("clone cancelled");
    }
    let url = redact_url(repository);
    let message = e.message();
    // libgit2's word for credentials the server refused (a wrong or expired token).
    if message.contains("authentication replays") || message.contains("authentication required") {
        return StepError::fatal(format!(
            "clone failed: {url} refused the credentials: {message}; set a valid token in the project secret GIT_TOKEN"
        ));
    }
    match e.class() {
        git2::ErrorClass::Net | git2::ErrorClass::Ssl | git2::ErrorClass::Http
            if !message.contains("401") && !message.contains("403") && !message.contains("404") =>
        {
            StepError::transient(format!("clone failed: {url} is unreachable: {message}; retrying"))
        }
        _ => StepError::fatal(format!(
            "clone failed: cannot fetch from {url}: {message}; check spec.source.git.repository and, for a private repository, the project secret GIT_TOKEN"
        )),
    }
}

/// The host a repository URL points at (`github.com` for `https://github.com/o/r` and
/// `git@github.com:o/r`), lowercased; empty for `file://`.
pub fn host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', ':']).next().unwrap_or("");
    let authority = if url.contains("://") {
        rest.split('/').next().unwrap_or("")
    } else {
        authority
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host.split(':').next().unwrap_or("").to_ascii_lowercase()
}

/// The URL without any credentials written into it.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_once('/').map_or((rest, None), |(a, p)| (a, Some(p)));
    match authority.rsplit_once('@') {
        Some((_, host)) => match path {
            Some(path) => format!("{scheme}://***@{host}/{path}"),
            None => format!("{scheme}://***@{host}"),
        },
        None => url.to_string(),
    }
}

/// Archives the checked-out tree (without `.git`) as a gzipped tar.
pub fn archive_tree(dir: &Path) -> Result<Vec<u8>, StepError> {
    let failed = |e: std::io::Error| StepError::transient(format!("clone failed: archiving the tree: {e}"));
    let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(encoder);
    tar.follow_symlinks(false);
    for entry in std::fs::read_dir(dir).map_err(failed)? {
        let entry = entry.map_err(failed)?;
        let name = entry.file_name();
        if name == ".git" {
            continue;
        }
        let path = entry.path();
        if entry.file_type().map_err(failed)?.is_dir() {
            tar.append_dir_all(&name, &path).map_err(failed)?;
        } else {
            tar.append_path_with_name(&path, &name).map_err(failed)?;
        }
    }
    tar.into_inner().and_then(|gz| gz.finish()).map_err(failed)
}

/// Unpacks an archive made by [`archive_tree`] into `dir`.
pub fn unpack(archive: &[u8], dir: &Path) -> Result<(), StepError> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    tar.set_preserve_permissions(true);
    tar.unpack(dir)
        .map_err(|e| StepError::transient(format!("cannot unpack the source archive: {e}; re-run the pipeline")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_and_credentials() {
        let allowed = vec!["https".to_string()];
        assert!(check_scheme("https://github.com/o/r", &allowed).is_ok());
        let err = check_scheme("file:///etc", &allowed).unwrap_err();
        assert!(err.message.contains("scheme `file` is not allowed"), "{err}");
        assert!(check_scheme("git@github.com:o/r", &allowed).is_err());
        assert_eq!(
            redact_url("https://user:tok@github.com/o/r"),
            "https://***@github.com/o/r"
        );
        assert_eq!(redact_url("https://github.com/o/r@v1"), "https://github.com/o/r@v1");
        assert_eq!(redact_url("https://u:tok@host"), "https://***@host");
        assert_eq!(host("https://x:t@GitHub.com:443/o/r"), "github.com");
        assert_eq!(host("git@github.com:o/r.git"), "github.com");
        assert_eq!(host("file:///srv/repo"), "");
    }
}
