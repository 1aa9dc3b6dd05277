//! Streamed artefacts: uploads of any size in bounded memory, visible only once committed.
//!
//! On S3 a stream goes up as a multipart upload of [`PART`]-sized parts and becomes an object at
//! `CompleteMultipartUpload`; an upload never completed is not listed (S3 keeps its parts until
//! it is aborted, which [`PendingArtefact`] does when dropped uncommitted; a bucket lifecycle rule
//! `AbortIncompleteMultipartUpload` cleans up after a killed process). In a directory a stream is
//! written to `<key>.partial-<n>`, which listings skip, and renamed to the key at commit.

use std::path::PathBuf;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::store::{contained, dir_error, s3_error};
use crate::{ArtefactError, ArtefactStore};

/// The size of one multipart part (S3 wants at least 5 MiB for all parts but the last).
const PART: usize = 8 * 1024 * 1024;
/// Parts uploaded at once.
const IN_FLIGHT: usize = 4;

type PartSent = (
    i32,
    Result<
        aws_sdk_s3::operation::upload_part::UploadPartOutput,
        aws_sdk_s3::error::SdkError<aws_sdk_s3::operation::upload_part::UploadPartError>,
    >,
);

/// A finished part upload as the part to list at completion, or why it failed.
fn joined(done: Option<Result<PartSent, tokio::task::JoinError>>, key: &str) -> Result<CompletedPart, ArtefactError> {
    let (number, sent) = done
        .ok_or_else(|| s3_error("upload of", key, "no part upload was running"))?
        .map_err(|e| s3_error("upload of a part of", key, e))?;
    let sent = sent.map_err(|e| s3_error("upload of a part of", key, aws_sdk_s3::error::DisplayErrorContext(e)))?;
    Ok(CompletedPart::builder()
        .set_e_tag(sent.e_tag().map(str::to_string))
        .part_number(number)
        .build())
}

/// An uploaded stream not yet visible under its key: [`commit`](Self::commit) publishes it,
/// dropping it (or [`abort`](Self::abort)) throws it away.
pub struct PendingArtefact {
    key: String,
    /// Bytes uploaded.
    pub size: u64,
    state: Pending,
}

enum Pending {
    S3 {
        client: Client,
        bucket: String,
        upload_id: String,
        parts: Vec<CompletedPart>,
    },
    Directory {
        partial: PathBuf,
        path: PathBuf,
    },
    Done,
}

impl ArtefactStore {
    /// Uploads everything `reader` yields under `key`, holding at most one part in memory; the
    /// key appears only when the returned [`PendingArtefact`] is committed.
    pub async fn put_stream(
        &self,
        key: &str,
        mut reader: impl AsyncRead + Unpin,
        content_type: &str,
    ) -> Result<PendingArtefact, ArtefactError> {
        match self {
            ArtefactStore::S3 { client, bucket } => {
                let created = client
                    .create_multipart_upload()
                    .bucket(bucket)
                    .key(key)
                    .content_type(content_type)
                    .send()
                    .await
                    .map_err(|e| s3_error("starting the upload of", key, aws_sdk_s3::error::DisplayErrorContext(e)))?;
                let upload_id = created
                    .upload_id()
                    .ok_or_else(|| s3_error("starting the upload of", key, "the server returned no upload id"))?
                    .to_string();
                let mut pending = PendingArtefact {
                    key: key.to_string(),
                    size: 0,
                    state: Pending::S3 {
                        client: client.clone(),
                        bucket: bucket.clone(),
                        upload_id,
                        parts: Vec::new(),
                    },
                };
                pending.upload_parts(&mut reader).await?;
                Ok(pending)
            }
            ArtefactStore::Directory { root } => {
                let path = contained(root, key)?;
                let parent = path.parent().unwrap_or(root);
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| dir_error("creating", parent, e))?;
                let partial = path.with_extension(format!("partial-{}", rand::random::<u64>()));
                // From here on, dropping `pending` removes the partial file.
                let mut pending = PendingArtefact {
                    key: key.to_string(),
                    size: 0,
                    state: Pending::Directory {
                        partial: partial.clone(),
                        path,
                    },
                };
                let mut file = tokio::fs::File::create(&partial)
                    .await
                    .map_err(|e| dir_error("creating", &partial, e))?;
                pending.size = tokio::io::copy(&mut reader, &mut file)
                    .await
                    .map_err(|e| dir_error("writing", &partial, e))?;
                file.flush().await.map_err(|e| dir_error("writing", &partial, e))?;
                file.sync_all().await.map_err(|e| dir_error("syncing", &partial, e))?;
                Ok(pending)
            }
        }
    }

    /// Reads the artefact at `key` as a stream.
    pub async fn get_stream(&self, key: &str) -> Result<Box<dyn AsyncRead + Send + Unpin>, ArtefactError> {
        match self {
            ArtefactStore::S3 { client, bucket } => {
                let object = client
                    .get_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| s3_error("download of", key, aws_sdk_s3::error::DisplayErrorContext(e)))?;
                Ok(Box::new(object.body.into_async_read()))
            }
            ArtefactStore::Directory { root } => {
                let path = contained(root, key)?;
                let file = tokio::fs::File::open(&path)
                    .await
                    .map_err(|e| dir_error("reading", &path, e))?;
                Ok(Box::new(file))
            }
        }
    }
}

impl PendingArtefact {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Reads `reader` in parts and uploads up to [`IN_FLIGHT`] of them at a time (the next part
    /// is read while the previous ones travel), so memory stays at `IN_FLIGHT + 1` parts.
    async fn upload_parts(&mut self, reader: &mut (impl AsyncRead + Unpin)) -> Result<(), ArtefactError> {
        let Pending::S3 {
            client,
            bucket,
            upload_id,
            parts,
        } = &mut self.state
        else {
            return Ok(());
        };
        let mut in_flight = tokio::task::JoinSet::new();
        for number in 1.. {
            let mut part = Vec::with_capacity(PART);
            (&mut *reader)
                .take(PART as u64)
                .read_to_end(&mut part)
                .await
                .map_err(|e| s3_error("reading what to upload to", &self.key, e))?;
            // An upload needs one part, even an empty one.
            if part.is_empty() && number > 1 {
                break;
            }
            while in_flight.len() >= IN_FLIGHT {
                parts.push(joined(in_flight.join_next().await, &self.key)?);
            }
            let length = part.len();
            let send = client
                .upload_part()
                .bucket(bucket.as_str())
                .key(&self.key)
                .upload_id(upload_id.as_str())
                .part_number(number)
                .body(ByteStream::from(part))
                .send();
            in_flight.spawn(async move { (number, send.await) });
            self.size += length as u64;
            if length < PART {
                break;
            }
        }
        while let Some(done) = in_flight.join_next().await {
            parts.push(joined(Some(done), &self.key)?);
        }
        parts.sort_by_key(|p| p.part_number());
        Ok(())
    }

    /// Makes the upload visible under its key.
    pub async fn commit(mut self) -> Result<(), ArtefactError> {
        match std::mem::replace(&mut self.state, Pending::Done) {
            Pending::S3 {
                client,
                bucket,
                upload_id,
                parts,
            } => {
                let completed = client
                    .complete_multipart_upload()
                    .bucket(&bucket)
                    .key(&self.key)
                    .upload_id(&upload_id)
                    .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                    .send()
                    .await;
                if let Err(e) = completed {
                    // Some S3-compatible servers (moto 5) answer a successful completion with a
                    // document the SDK cannot parse: the object, whole, is what counts.
                    let stored = client.head_object().bucket(&bucket).key(&self.key).send().await;
                    let whole = stored.is_ok_and(|head| head.content_length() == Some(self.size as i64));
                    if !whole {
                        return Err(s3_error("completing the upload of", &self.key, sdk_message(&e)));
                    }
                }
            }
            Pending::Directory { partial, path } => {
                if let Err(e) = tokio::fs::rename(&partial, &path).await {
                    let _ = tokio::fs::remove_file(&partial).await;
                    return Err(dir_error("storing", &path, e));
                }
            }
            Pending::Done => {}
        }
        Ok(())
    }

    /// Throws the upload away now (dropping does the same, in the background on S3).
    pub async fn abort(mut self) {
        match std::mem::replace(&mut self.state, Pending::Done) {
            Pending::S3 {
                client,
                bucket,
                upload_id,
                ..
            } => abort_s3(client, bucket, self.key.clone(), upload_id).await,
            Pending::Directory { partial, .. } => {
                let _ = tokio::fs::remove_file(&partial).await;
            }
            Pending::Done => {}
        }
    }
}

async fn abort_s3(client: Client, bucket: String, key: String, upload_id: String) {
    if let Err(e) = client
        .abort_multipart_upload()
        .bucket(&bucket)
        .key(&key)
        .upload_id(&upload_id)
        .send()
        .await
    {
        tracing::warn!(%key, error = %aws_sdk_s3::error::DisplayErrorContext(e), "could not abort an unfinished upload; a lifecycle rule will");
    }
}

impl Drop for PendingArtefact {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.state, Pending::Done) {
            Pending::S3 {
                client,
                bucket,
                upload_id,
                ..
            } => {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(abort_s3(client, bucket, self.key.clone(), upload_id));
                }
            }
            Pending::Directory { partial, .. } => {
                let _ = std::fs::remove_file(partial);
            }
            Pending::Done => {}
        }
    }
}

/// The SDK error's own message and causes, cut short (its `Debug` and `DisplayErrorContext`
/// repeat the whole response).
fn sdk_message<E: std::error::Error>(e: &E) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message = format!("{message}: {cause}");
        source = cause.source();
    }
    message.chars().take(400).collect()
}
