//! The data directory is private: it holds the SQLite database (every token hash, sealed secret
//! and audit event), the master key and the signing key, so only the server's user may enter it
//! (0700) and read its files (0600). A directory created by an older version, or by hand, is
//! tightened at start, and each change is logged.

use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Permission bits of group and others.
const SHARED: u32 = 0o077;

/// Creates `dir` (0700) or makes an existing one private: the directory loses group and other
/// access, and so does every file directly in it (the database with its `-wal`/`-shm`, keys,
/// the router table) but public keys (`*.pub`). Subdirectories (build workspaces) are left as
/// they are: nobody else can reach them through a 0700 parent. A change that fails (a file owned
/// by another user) is logged, not fatal.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    tighten(dir, 0o700);
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let public = entry.path().extension().is_some_and(|e| e == "pub");
        if entry.file_type()?.is_file() && !public {
            tighten(&entry.path(), 0o600);
        }
    }
    Ok(())
}

/// Takes group and other bits off `path` (keeping its owner's), logging what changed.
fn tighten(path: &Path, wanted: u32) {
    let mode = match fs::metadata(path) {
        Ok(meta) => meta.permissions().mode() & 0o7777,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read permissions");
            return;
        }
    };
    if mode & SHARED == 0 {
        return;
    }
    let private = mode & !SHARED;
    match fs::set_permissions(path, Permissions::from_mode(private)) {
        // The directory matters most (while it is 0700 nothing in it can be reached); a file
        // written since the last start (the router table) is ordinary, hence only `info`.
        Ok(()) if path.is_dir() => tracing::warn!(
            path = %path.display(),
            from = format!("{mode:04o}"),
            to = format!("{private:04o}"),
            "made the data directory private (for the server's user only)"
        ),
        Ok(()) => tracing::info!(
            path = %path.display(),
            from = format!("{mode:04o}"),
            to = format!("{private:04o}"),
            "made a file of the data directory private"
        ),
        Err(e) => tracing::warn!(
            path = %path.display(),
            mode = format!("{mode:04o}"),
            error = %e,
            "cannot make private; others may read it (fix the owner, or chmod {wanted:o} it)"
        ),
    }
}

/// Creates an empty file readable by its owner only, unless it exists. SQLite creates its
/// database with the process umask (usually 0644) and gives the `-wal` and `-shm` files the
/// database's mode, so the database is created here first.
pub fn create_private(path: &Path) -> io::Result<()> {
    match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes a new file only its owner can read.
pub(crate) fn write_private(path: &Path, contents: &str) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    io::Write::write_all(&mut file, contents.as_bytes())
}
