//! Blob upload sessions: `uploads/<id>/data` (the bytes so far) and `uploads/<id>/info` (the
//! repository it belongs to). The SHA-256 of the data is kept running in memory while chunks are
//! streamed in; after a restart it is computed again from disk. A finished upload is renamed into
//! `blobs/sha256/<hex>`, so a blob is visible whole or not at all.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::{ErrorCode, RegistryError, Result, io};
use crate::names::{Digest, Name};
use crate::storage::{append_body, drain, hash_file, panicked, random_id};
use crate::{Inner, MAX_BLOB_BYTES};

/// The sessions being written to, each behind its own lock so that two requests on one session
/// take turns. An entry holds a running hash (a few hundred bytes); entries go when the session
/// ends or is collected.
#[derive(Default)]
pub(crate) struct Sessions {
    live: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Running>>>>,
}

#[derive(Default)]
pub(crate) struct Running {
    /// The hash of the first `.0` bytes of the data, if it was computed while they came in.
    hash: Option<(u64, Sha256)>,
}

/// A request's turn on a session: while it is held, no other request works on the session.
pub(crate) type Turn = tokio::sync::OwnedMutexGuard<Running>;

#[derive(Serialize, Deserialize)]
struct Info {
    repository: String,
}

impl Sessions {
    fn lock_of(&self, id: &str) -> Arc<tokio::sync::Mutex<Running>> {
        let mut live = self.live.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        live.entry(id.to_owned()).or_default().clone()
    }

    pub(crate) fn forget(&self, id: &str) {
        let mut live = self.live.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        live.remove(id);
    }

    /// Takes the session's turn if no request is working on it right now (for GC, which then
    /// removes it and calls [`Sessions::forget`]).
    pub(crate) fn claim_idle(&self, id: &str) -> Option<Turn> {
        self.lock_of(id).try_lock_owned().ok()
    }
}

fn unknown(name: &Name, id: &str) -> RegistryError {
    RegistryError::new(
        ErrorCode::BlobUploadUnknown,
        format!(
            "no upload session {id} in repository {name} (it finished, was cancelled or expired after an \
             hour idle); start a new one with POST /v2/{name}/blobs/uploads/"
        ),
    )
}

/// Runs an upload step in a task of its own, so that a client going away mid-body does not drop
/// the step half-way: it sees the body break off and cuts the chunk back off.
pub(crate) async fn detached<T: Send + 'static>(work: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
    tokio::spawn(work).await.unwrap_or_else(|e| Err(panicked(e)))
}

/// Opens a new session for `name`; returns its id.
pub(crate) async fn start(inner: &Inner, name: &Name) -> Result<String> {
    let id = random_id();
    let dir = inner.storage.upload_dir(&id);
    tokio::fs::create_dir(&dir).await.map_err(io("create", &dir))?;
    let data = dir.join("data");
    tokio::fs::File::create(&data).await.map_err(io("create", &data))?;
    let info = serde_json::to_vec(&Info {
        repository: name.to_string(),
    })
    .unwrap_or_default();
    inner.storage.write_atomic(&dir.join("info"), &info).await?;
    Ok(id)
}

/// Checks that session `id` exists and belongs to `name`; returns its size so far.
async fn check(inner: &Inner, name: &Name, id: &str) -> Result<u64> {
    let dir = inner.storage.upload_dir(id);
    let info_path = dir.join("info");
    let info = match tokio::fs::read(&info_path).await {
        Ok(info) => info,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(unknown(name, id)),
        Err(e) => return Err(io("read", &info_path)(e)),
    };
    match serde_json::from_slice::<Info>(&info) {
        Ok(info) if info.repository == name.as_str() => {}
        _ => return Err(unknown(name, id)),
    }
    let data = dir.join("data");
    match tokio::fs::metadata(&data).await {
        Ok(meta) => Ok(meta.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(unknown(name, id)),
        Err(e) => Err(io("read", &data)(e)),
    }
}

/// Waits for session `id`'s turn, then [`check`]s it; returns the turn and the size so far.
async fn turn(inner: &Inner, name: &Name, id: &str) -> Result<(Turn, u64)> {
    let running = inner.uploads.lock_of(id).lock_owned().await;
    let size = check(inner, name, id).await?;
    Ok((running, size))
}

/// [`turn`] for a request with a body (PATCH, PUT): a refused request's body is [`drain`]ed
/// first; otherwise the body comes back with the turn.
async fn turn_with_body(inner: &Inner, name: &Name, id: &str, body: Body) -> Result<(Turn, u64, Body)> {
    match turn(inner, name, id).await {
        Ok((running, size)) => Ok((running, size, body)),
        Err(e) => {
            drain(body).await;
            Err(e)
        }
    }
}

/// Ends a session (finished or cancelled): removes its files, then gives up the turn and forgets
/// its lock.
async fn end_session(inner: &Inner, id: &str, running: Turn) -> Result<()> {
    remove(inner, id).await?;
    drop(running);
    inner.uploads.forget(id);
    Ok(())
}

/// The number of bytes received so far.
pub(crate) async fn size(inner: &Inner, name: &Name, id: &str) -> Result<u64> {
    let (_turn, size) = turn(inner, name, id).await?;
    Ok(size)
}

/// Appends a chunk (PATCH). With `range` (`Content-Range: <start>-<end>`), the chunk must start
/// where the data ends (else 416) and be as long as it says. A chunk is all or nothing: a body
/// that breaks off leaves the session as it was. Returns the new size.
pub(crate) async fn append(inner: &Inner, name: &Name, id: &str, range: Option<(u64, u64)>, body: Body) -> Result<u64> {
    let (mut running, size, body) = turn_with_body(inner, name, id, body).await?;
    if let Some((start, _)) = range
        && start != size
    {
        drain(body).await;
        return Err(RegistryError::with_status(
            ErrorCode::BlobUploadInvalid,
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!(
                "the chunk starts at byte {start} but the upload has {size} bytes; resume from byte {size} \
                 (the Range header says what was received)"
            ),
        ));
    }
    let written = write_chunk(inner, id, size, body, &mut running).await?;
    if let Some((start, end)) = range
        && written > 0
        && end.checked_sub(start).and_then(|span| span.checked_add(1)) != Some(written)
    {
        truncate(inner, id, size, &mut running).await?;
        return Err(RegistryError::new(
            ErrorCode::SizeInvalid,
            format!(
                "Content-Range {start}-{end} announces {} bytes but the body had {written}; send the chunk again",
                end.saturating_add(1).saturating_sub(start)
            ),
        ));
    }
    Ok(size + written)
}

/// Streams `body` onto the end of the data (at `size`), keeping the running hash; on failure
/// cuts the data back to `size`.
async fn write_chunk(inner: &Inner, id: &str, size: u64, body: Body, running: &mut Running) -> Result<u64> {
    let path = inner.storage.upload_dir(id).join("data");
    let mut file = tokio::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .await
        .map_err(io("open", &path))?;
    // Continue the hash if it covers exactly what is on disk; an empty upload starts one.
    let mut hasher = match &running.hash {
        Some((hashed, hasher)) if *hashed == size => Some(hasher.clone()),
        _ if size == 0 => Some(Sha256::new()),
        _ => None,
    };
    match append_body(&mut file, &path, body, size, MAX_BLOB_BYTES, hasher.as_mut()).await {
        Ok(written) => {
            running.hash = hasher.map(|h| (size + written, h));
            Ok(written)
        }
        Err(e) => {
            drop(file);
            truncate(inner, id, size, running).await?;
            Err(e)
        }
    }
}

async fn truncate(inner: &Inner, id: &str, size: u64, running: &mut Running) -> Result<()> {
    let path = inner.storage.upload_dir(id).join("data");
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .await
        .map_err(io("open", &path))?;
    file.set_len(size).await.map_err(io("truncate", &path))?;
    if running.hash.as_ref().is_some_and(|(hashed, _)| *hashed != size) {
        running.hash = None;
    }
    Ok(())
}

/// Completes the upload (PUT `?digest=`): appends the last chunk, checks the digest, moves the
/// data to `blobs/sha256/<hex>` and ends the session. A wrong digest ends the session too.
pub(crate) async fn finish(inner: &Inner, name: &Name, id: &str, digest: &Digest, body: Body) -> Result<u64> {
    let (mut running, size, body) = turn_with_body(inner, name, id, body).await?;
    let written = write_chunk(inner, id, size, body, &mut running).await?;
    let size = size + written;
    let dir = inner.storage.upload_dir(id);
    let data = dir.join("data");
    let actual = match running.hash.take() {
        Some((hashed, hasher)) if hashed == size => Digest::from_sha256(&hasher.finalize()),
        _ => Digest::from_sha256(&hash_file(&data).await?.0.finalize()),
    };
    let result = if &actual == digest {
        let file = tokio::fs::File::open(&data).await.map_err(io("open", &data))?;
        file.sync_all().await.map_err(io("sync", &data))?;
        let _gc = inner.gc_lock.read().await;
        let target = inner.storage.blob_path(digest);
        inner.storage.rename_into(&data, &target).await?;
        inner.storage.touch_blob(digest).await?;
        Ok(size)
    } else {
        Err(RegistryError::new(
            ErrorCode::DigestInvalid,
            format!(
                "the uploaded content ({size} bytes) has digest {actual}, not {digest} as given in ?digest=; \
                 the upload was discarded, upload the blob again"
            ),
        ))
    };
    end_session(inner, id, running).await?;
    result
}

/// Cancels a session (DELETE).
pub(crate) async fn cancel(inner: &Inner, name: &Name, id: &str) -> Result<()> {
    let (running, _) = turn(inner, name, id).await?;
    end_session(inner, id, running).await
}

async fn remove(inner: &Inner, id: &str) -> Result<()> {
    let dir = inner.storage.upload_dir(id);
    match tokio::fs::remove_dir_all(&dir).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("remove", &dir)(e)),
    }
}

/// Parses `Content-Range: <start>-<end>` (also `bytes <start>-<end>/<total>` and `bytes=`).
pub(crate) fn parse_content_range(value: &str) -> Result<(u64, u64)> {
    let invalid = || {
        RegistryError::with_status(
            ErrorCode::BlobUploadInvalid,
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!("cannot read Content-Range {value:?}; send it as <start>-<end>, both inclusive byte offsets"),
        )
    };
    let text = value.trim();
    let text = text
        .strip_prefix("bytes=")
        .or_else(|| text.strip_prefix("bytes "))
        .unwrap_or(text);
    let text = text.split('/').next().unwrap_or(text);
    let (start, end) = text.split_once('-').ok_or_else(invalid)?;
    let start: u64 = start.trim().parse().map_err(|_| invalid())?;
    let end: u64 = end.trim().parse().map_err(|_| invalid())?;
    if end < start {
        return Err(invalid());
    }
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::parse_content_range;

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-99").unwrap(), (0, 99));
        assert_eq!(parse_content_range("bytes 5-9/10").unwrap(), (5, 9));
        assert_eq!(parse_content_range("bytes=5-9").unwrap(), (5, 9));
        for bad in ["", "5", "9-5", "a-b", "-1-2"] {
            assert!(parse_content_range(bad).is_err(), "{bad}");
        }
    }
}
