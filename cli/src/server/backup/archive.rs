//! The snapshot file: a gzip-compressed tar whose first entry, `manifest.json`, lists every
//! other entry with its size and SHA-256. Unpacking checks each file against the manifest as it
//! is written, then reads the gzip stream to its end so that its CRC-32 is checked too: a byte
//! changed anywhere stops a restore before anything in the data directory moves.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, bail};
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The manifest format this version writes, and the newest it reads.
pub const FORMAT: u32 = 1;
const MANIFEST: &str = "manifest.json";
/// The largest manifest read (a few hundred bytes in practice).
const MANIFEST_LIMIT: u64 = 1 << 20;

#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub enclii_version: String,
    /// A fingerprint of the master key the snapshot's secrets are sealed with (never the key
    /// itself): a restore checks that the server will open them with the same key.
    pub master_key_fingerprint: Option<String>,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

impl Manifest {
    pub fn holds(&self, name: &str) -> bool {
        self.files.iter().any(|f| f.name == name)
    }

    /// Total bytes of the files.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// A writer that hashes and counts what goes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W> Hashing<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    fn finish(self) -> (u64, String) {
        (self.size, format!("{:x}", self.hasher.finalize()))
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        self.size += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Opens a new file only its owner can read (public keys excepted).
pub fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode_of(path))
        .open(path)
}

/// `*.pub` files stay readable, as the server writes them; everything else is 0600.
fn mode_of(path: &Path) -> u32 {
    match path.extension().is_some_and(|e| e == "pub") {
        true => 0o644,
        false => 0o600,
    }
}

fn describe(name: &str, path: &Path) -> anyhow::Result<FileEntry> {
    let mut file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hashing = Hashing::new(io::sink());
    io::copy(&mut file, &mut hashing).with_context(|| format!("cannot read {}", path.display()))?;
    let (size, sha256) = hashing.finish();
    Ok(FileEntry {
        name: name.to_string(),
        size,
        sha256,
    })
}

/// Writes `files` (name in the archive, path of a copy nobody else writes to) and their manifest
/// to the new file `out` (0600); returns the manifest with the files' sizes and checksums.
pub fn pack(mut manifest: Manifest, files: &[(String, PathBuf)], out: &Path) -> anyhow::Result<Manifest> {
    manifest.files = files
        .iter()
        .map(|(name, path)| describe(name, path))
        .collect::<anyhow::Result<_>>()?;
    let written = || format!("cannot write the snapshot {}", out.display());
    let file = create_private(out).with_context(written)?;
    let mut tar = tar::Builder::new(GzEncoder::new(BufWriter::new(file), Compression::default()));
    let json = serde_json::to_vec_pretty(&manifest)?;
    append(&mut tar, MANIFEST, json.len() as u64, json.as_slice()).with_context(written)?;
    for (entry, (_, path)) in manifest.files.iter().zip(files) {
        let source = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        append(&mut tar, &entry.name, entry.size, source.take(entry.size)).with_context(written)?;
    }
    let file = tar
        .into_inner()
        .and_then(|gz| gz.finish())
        .and_then(|buffered| buffered.into_inner().map_err(io::IntoInnerError::into_error))
        .with_context(written)?;
    file.sync_all().with_context(written)?;
    Ok(manifest)
}

fn append<W: Write>(tar: &mut tar::Builder<W>, name: &str, size: u64, data: impl Read) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(mode_of(Path::new(name)));
    header.set_mtime(chrono::Utc::now().timestamp().max(0) as u64);
    header.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut header, name, data)
}

/// Unpacks the snapshot `archive` into the empty directory `staging`, checking every file
/// against the manifest; only files named in `allowed` may be in it. `what` names the backup in
/// messages.
pub fn unpack_verified(archive: &Path, staging: &Path, allowed: &[&str], what: &str) -> anyhow::Result<Manifest> {
    let file = File::open(archive).with_context(|| format!("cannot read the backup {what}"))?;
    let mut gz = GzDecoder::new(BufReader::new(file));
    let manifest = unpack_entries(&mut gz, staging, allowed, what)?;
    // tar stops at its end-of-archive blocks; gzip's trailer (the CRC-32 of it all) comes after.
    io::copy(&mut gz, &mut io::sink()).map_err(|e| damaged(what, e))?;
    Ok(manifest)
}

fn damaged(what: &str, e: io::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "the backup {what} is damaged: it does not read as a gzip-compressed tar ({e}); its gzip checksum or structure no longer matches what was written; use another backup"
    )
}

fn unpack_entries(gz: &mut impl Read, staging: &Path, allowed: &[&str], what: &str) -> anyhow::Result<Manifest> {
    let mut tar = tar::Archive::new(gz);
    let mut entries = tar.entries().map_err(|e| damaged(what, e))?;
    let not_ours = || format!("{what} is not an enclii control-plane backup (it does not start with {MANIFEST})");
    let mut first = match entries.next() {
        Some(entry) => entry.map_err(|e| damaged(what, e))?,
        None => bail!(not_ours()),
    };
    if entry_name(&first).as_deref() != Some(MANIFEST) {
        bail!(not_ours());
    }
    let mut json = Vec::new();
    (&mut first)
        .take(MANIFEST_LIMIT)
        .read_to_end(&mut json)
        .map_err(|e| damaged(what, e))?;
    let manifest: Manifest =
        serde_json::from_slice(&json).with_context(|| format!("{what}: its {MANIFEST} cannot be read"))?;
    if manifest.format > FORMAT {
        bail!(
            "{what} was written by enclii {} in backup format {}; this enclii reads format {FORMAT} and older: restore it with that version or newer",
            manifest.enclii_version,
            manifest.format
        );
    }
    for file in &manifest.files {
        if !allowed.contains(&file.name.as_str()) {
            bail!(
                "{what}: its manifest lists `{}`, which is not a file a control-plane backup holds",
                file.name
            );
        }
    }
    let mut seen = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| damaged(what, e))?;
        let name = entry_name(&entry).unwrap_or_default();
        let Some(expected) = manifest.files.iter().find(|f| f.name == name) else {
            bail!("{what} holds `{name}`, which its manifest does not list");
        };
        if seen.contains(&name) || entry.header().entry_type() != tar::EntryType::Regular {
            bail!("{what} holds `{name}` twice or not as a plain file");
        }
        let path = staging.join(&name);
        let file = create_private(&path).with_context(|| format!("cannot write {}", path.display()))?;
        let mut hashing = Hashing::new(BufWriter::new(file));
        // One byte more than listed is enough to tell a longer file.
        io::copy(&mut (&mut entry).take(expected.size + 1), &mut hashing).map_err(|e| damaged(what, e))?;
        hashing
            .flush()
            .with_context(|| format!("cannot write {}", path.display()))?;
        let (size, sha256) = hashing.finish();
        if size != expected.size || sha256 != expected.sha256 {
            bail!(
                "the backup {what} is damaged or was changed: {name} has SHA-256 {sha256} ({size} bytes), its manifest says {} ({} bytes); use another backup",
                expected.sha256,
                expected.size
            );
        }
        seen.push(name);
    }
    if let Some(missing) = manifest.files.iter().find(|f| !seen.contains(&f.name)) {
        bail!(
            "the backup {what} is incomplete: its manifest lists {}, which it does not hold; use another backup",
            missing.name
        );
    }
    Ok(manifest)
}

/// The entry's name when it is one plain file name (no directories, no `..`).
fn entry_name<R: Read>(entry: &tar::Entry<'_, R>) -> Option<String> {
    let path = entry.path().ok()?;
    let mut components = path.components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(name)), None) => name.to_str().map(str::to_string),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("enclii_archive_{name}_{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn manifest() -> Manifest {
        Manifest {
            format: FORMAT,
            created_at: "2026-12-08T00:00:00Z".into(),
            enclii_version: "0.1.0".into(),
            master_key_fingerprint: None,
            files: Vec::new(),
        }
    }

    #[test]
    fn a_packed_snapshot_unpacks_with_every_file_checked() {
        let dir = temp_dir("roundtrip");
        std::fs::write(dir.join("a.key"), b"alpha").unwrap();
        std::fs::write(dir.join("b.pub"), b"beta").unwrap();
        let files = [
            ("master.key".to_string(), dir.join("a.key")),
            ("cosign.pub".to_string(), dir.join("b.pub")),
        ];
        let out = dir.join("out.tar.gz");
        let packed = pack(manifest(), &files, &out).unwrap();
        assert_eq!(packed.size(), 9);
        let staging = dir.join("staging");
        std::fs::create_dir(&staging).unwrap();
        let unpacked = unpack_verified(&out, &staging, &["master.key", "cosign.pub"], "test").unwrap();
        assert_eq!(unpacked.files.len(), 2);
        assert_eq!(std::fs::read(staging.join("master.key")).unwrap(), b"alpha");

        // A file the caller does not allow is refused before anything is written.
        let other = dir.join("other");
        std::fs::create_dir(&other).unwrap();
        let e = unpack_verified(&out, &other, &["master.key"], "test").unwrap_err();
        assert!(e.to_string().contains("`cosign.pub`, which is not a file"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_archive_without_a_manifest_is_not_a_backup() {
        let dir = temp_dir("foreign");
        let out = dir.join("foreign.tar.gz");
        let mut tar = tar::Builder::new(GzEncoder::new(File::create(&out).unwrap(), Compression::fast()));
        append(&mut tar, "enclii.db", 2, &b"db"[..]).unwrap();
        tar.into_inner().unwrap().finish().unwrap();
        let e = unpack_verified(&out, &dir, &["enclii.db"], "foreign.tar.gz").unwrap_err();
        assert!(e.to_string().contains("is not an enclii control-plane backup"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
