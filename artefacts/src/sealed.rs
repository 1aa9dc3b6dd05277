//! Sealed streams: a byte stream of any length encrypted in bounded memory with a data key of
//! its own (AES-256-GCM over 1 MiB chunks, the STREAM construction of Hoang, Reyhanitabar,
//! Rogaway and Vizár). The data key itself is sealed elsewhere by the master key (Lockbox).
//!
//! Layout: `ENCLSEA1`, a 7-byte random nonce prefix, then chunks of `u32 length (big endian) ||
//! ciphertext`. Chunk `i`'s nonce is `prefix || i (u32 BE) || last (0 or 1)`, so reordered,
//! dropped or truncated chunks fail to open. Every chunk holds [`CHUNK`] plaintext bytes except
//! the last, which holds fewer (possibly none) and is the only one sealed as last.
//!
//! `aes-gcm`'s own `stream` module would do the same; it needs a newer `aead` generation than
//! the store's sealing uses, so these forty lines are ours.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MAGIC: &[u8; 8] = b"ENCLSEA1";
const PREFIX: usize = 7;
/// Plaintext bytes per chunk.
pub const CHUNK: usize = 1024 * 1024;
const TAG: usize = 16;

/// A data key for one sealed stream. Its `Debug` never shows the bytes.
#[derive(Clone)]
pub struct DataKey([u8; 32]);

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

impl DataKey {
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Self(key)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealError> {
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| SealError::Corrupt(format!("a data key is 32 bytes, this one is {}", bytes.len())))?;
        Ok(Self(key))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&Key::<Aes256Gcm>::from(self.0))
    }
}

/// What sealing a stream produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// Bytes read from the source.
    pub plain_bytes: u64,
    /// Bytes written: the size of the stored artefact.
    pub sealed_bytes: u64,
    /// SHA-256 (lowercase hex) of the bytes written.
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("reading the stream failed: {0}")]
    Read(#[source] std::io::Error),
    #[error("writing the stream failed: {0}")]
    Write(#[source] std::io::Error),
    /// Not a sealed stream of this key: tampered, truncated, or another key.
    #[error("the sealed stream does not open: {0}")]
    Corrupt(String),
}

fn nonce(prefix: &[u8; PREFIX], index: u32, last: bool) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[..PREFIX].copy_from_slice(prefix);
    nonce[PREFIX..11].copy_from_slice(&index.to_be_bytes());
    nonce[11] = u8::from(last);
    nonce
}

/// Reads up to `buffer.len()` bytes, fewer only at the end of the stream.
async fn fill(src: &mut (impl AsyncRead + Unpin), buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match src.read(&mut buffer[filled..]).await? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// A writer that counts and hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: AsyncWrite + Unpin> Hashing<W> {
    async fn write(&mut self, data: &[u8]) -> Result<(), SealError> {
        self.inner.write_all(data).await.map_err(SealError::Write)?;
        self.hash.update(data);
        self.bytes += data.len() as u64;
        Ok(())
    }
}

/// Encrypts everything `src` yields into `dst` (shut down at the end, so a pipe's reader sees
/// its end only after the last chunk).
pub async fn seal(
    key: &DataKey,
    mut src: impl AsyncRead + Unpin,
    dst: impl AsyncWrite + Unpin,
) -> Result<Sealed, SealError> {
    let cipher = key.cipher();
    let mut prefix = [0u8; PREFIX];
    rand::rng().fill_bytes(&mut prefix);
    let mut out = Hashing {
        inner: dst,
        hash: Sha256::new(),
        bytes: 0,
    };
    out.write(MAGIC).await?;
    out.write(&prefix).await?;
    let (mut buffer, mut plain_bytes) = (vec![0u8; CHUNK], 0u64);
    for index in 0u32.. {
        let read = fill(&mut src, &mut buffer).await.map_err(SealError::Read)?;
        plain_bytes += read as u64;
        let last = read < CHUNK;
        let sealed = cipher
            .encrypt(
                &Nonce::from(nonce(&prefix, index, last)),
                Payload::from(&buffer[..read]),
            )
            .map_err(|_| SealError::Corrupt("encryption failed".into()))?;
        out.write(&(sealed.len() as u32).to_be_bytes()).await?;
        out.write(&sealed).await?;
        if last {
            break;
        }
    }
    out.inner.shutdown().await.map_err(SealError::Write)?;
    Ok(Sealed {
        plain_bytes,
        sealed_bytes: out.bytes,
        sha256: hex(&out.hash.finalize()[..]),
    })
}

/// Decrypts a sealed stream from `src` into `dst`; returns the plaintext bytes written. Fails
/// on the first chunk that does not open, and when the stream ends before its last chunk.
pub async fn open(
    key: &DataKey,
    mut src: impl AsyncRead + Unpin,
    mut dst: impl AsyncWrite + Unpin,
) -> Result<u64, SealError> {
    let cipher = key.cipher();
    let mut head = [0u8; MAGIC.len() + PREFIX];
    if fill(&mut src, &mut head).await.map_err(SealError::Read)? < head.len() || &head[..MAGIC.len()] != MAGIC {
        return Err(SealError::Corrupt("it does not start like a sealed stream".into()));
    }
    let prefix: [u8; PREFIX] = head[MAGIC.len()..].try_into().expect("the slice is PREFIX bytes long");
    let (mut buffer, mut written) = (vec![0u8; CHUNK + TAG], 0u64);
    for index in 0u32.. {
        let mut length = [0u8; 4];
        if fill(&mut src, &mut length).await.map_err(SealError::Read)? < 4 {
            return Err(SealError::Corrupt(format!(
                "it ends after {index} chunks, before its last one"
            )));
        }
        let length = u32::from_be_bytes(length) as usize;
        if !(TAG..=CHUNK + TAG).contains(&length) {
            return Err(SealError::Corrupt(format!("chunk {index} claims {length} bytes")));
        }
        if fill(&mut src, &mut buffer[..length]).await.map_err(SealError::Read)? < length {
            return Err(SealError::Corrupt(format!("chunk {index} is cut short")));
        }
        let last = length - TAG < CHUNK;
        let plain = cipher
            .decrypt(
                &Nonce::from(nonce(&prefix, index, last)),
                Payload::from(&buffer[..length]),
            )
            .map_err(|_| SealError::Corrupt(format!("chunk {index} fails authentication (another key, or altered)")))?;
        dst.write_all(&plain).await.map_err(SealError::Write)?;
        written += plain.len() as u64;
        if last {
            break;
        }
    }
    dst.shutdown().await.map_err(SealError::Write)?;
    Ok(written)
}

/// The size and SHA-256 (lowercase hex) of everything `src` yields.
pub async fn digest(mut src: impl AsyncRead + Unpin) -> Result<(u64, String), SealError> {
    let (mut hash, mut bytes, mut buffer) = (Sha256::new(), 0u64, vec![0u8; 256 * 1024]);
    loop {
        match src.read(&mut buffer).await.map_err(SealError::Read)? {
            0 => return Ok((bytes, hex(&hash.finalize()[..]))),
            n => {
                hash.update(&buffer[..n]);
                bytes += n as u64;
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sealed(key: &DataKey, plain: &[u8]) -> (Vec<u8>, Sealed) {
        let mut out = Vec::new();
        let report = seal(key, plain, &mut out).await.unwrap();
        (out, report)
    }

    #[tokio::test]
    async fn a_sealed_stream_opens_to_what_went_in_at_every_chunk_boundary() {
        let key = DataKey::generate();
        for size in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK] {
            let plain: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let (stored, report) = sealed(&key, &plain).await;
            assert_eq!(report.plain_bytes, size as u64);
            assert_eq!(report.sealed_bytes, stored.len() as u64);
            assert_eq!(
                digest(stored.as_slice()).await.unwrap(),
                (report.sealed_bytes, report.sha256.clone())
            );
            let mut back = Vec::new();
            assert_eq!(open(&key, stored.as_slice(), &mut back).await.unwrap(), size as u64);
            assert!(back == plain, "size {size} came back different");
        }
    }

    #[tokio::test]
    async fn altered_truncated_or_foreign_streams_do_not_open() {
        let key = DataKey::generate();
        let plain = vec![7u8; CHUNK + 10];
        let (stored, _) = sealed(&key, &plain).await;
        let fails = |stored: Vec<u8>, key: DataKey| async move {
            open(&key, stored.as_slice(), &mut Vec::new())
                .await
                .unwrap_err()
                .to_string()
        };
        let mut flipped = stored.clone();
        flipped[40] ^= 1;
        assert!(fails(flipped, key.clone()).await.contains("fails authentication"));
        // Cut right after the first (full) chunk: it opens, but the last chunk is missing.
        let first_chunk_end = MAGIC.len() + PREFIX + 4 + CHUNK + TAG;
        assert!(
            fails(stored[..first_chunk_end].to_vec(), key.clone())
                .await
                .contains("before its last one")
        );
        assert!(
            fails(stored.clone(), DataKey::generate())
                .await
                .contains("fails authentication")
        );
        assert!(fails(b"plain text".to_vec(), key).await.contains("does not start like"));
    }
}
