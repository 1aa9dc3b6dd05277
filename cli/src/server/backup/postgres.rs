//! Restoring a control plane on PostgreSQL from a `pg_dump` file: `pg_restore --clean
//! --if-exists --no-owner` for the custom format, `psql` for a plain SQL dump. The password of
//! the URL goes to the tools through `PGPASSWORD`, not their command line (which `ps` shows).

use std::io::Read;
use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, bail};
use sqlx::Connection;

use crate::server::announce;

/// How a custom-format dump starts (`pg_dump -Fc`).
const CUSTOM_MAGIC: &[u8] = b"PGDMP";
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];

/// Whether `path` is a control-plane snapshot (gzip) rather than a `pg_dump` file.
pub fn is_snapshot(path: &Path) -> anyhow::Result<bool> {
    starts_with(path, GZIP_MAGIC)
}

fn starts_with(path: &Path, magic: &[u8]) -> anyhow::Result<bool> {
    let mut head = Vec::with_capacity(magic.len());
    std::fs::File::open(path)
        .and_then(|file| file.take(magic.len() as u64).read_to_end(&mut head))
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(head == magic)
}

/// The URL without its password, and the password (percent-decoded) when it has one.
fn split_password(url: &str) -> (String, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), None);
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return (url.to_string(), None);
    };
    let Some((user, password)) = userinfo.split_once(':') else {
        return (url.to_string(), None);
    };
    (
        format!("{scheme}://{user}@{host}{tail}"),
        Some(percent_decode(password)),
    )
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Tables the database already holds outside PostgreSQL's own schemas.
async fn tables(url: &str) -> anyhow::Result<i64> {
    let mut connection = sqlx::PgConnection::connect(url)
        .await
        .context("cannot connect to the PostgreSQL database of --database-url (is it up, and does it exist?)")?;
    let count: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_one(&mut connection)
    .await
    .context("cannot list the tables of the PostgreSQL database")?;
    let _ = connection.close().await;
    Ok(count)
}

/// Restores the database at `url` from the dump `path`.
pub async fn restore(url: &str, path: &Path, force: bool) -> anyhow::Result<()> {
    let custom = starts_with(path, CUSTOM_MAGIC)?;
    let existing = tables(url).await?;
    if existing > 0 && !force {
        bail!(
            "the PostgreSQL database of --database-url already holds {existing} tables: pass --force to replace them (pg_restore --clean drops what the dump holds), or restore into an empty database"
        );
    }
    let (url, password) = split_password(url);
    let dump = path.display().to_string();
    let (tool, args): (&str, Vec<&str>) = match custom {
        true => (
            "pg_restore",
            vec![
                "--clean",
                "--if-exists",
                "--no-owner",
                "--exit-on-error",
                "--single-transaction",
                "-d",
                &url,
                &dump,
            ],
        ),
        false => (
            "psql",
            vec![
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "--single-transaction",
                "-d",
                &url,
                "-f",
                &dump,
            ],
        ),
    };
    let mut command = tokio::process::Command::new(tool);
    command.args(&args).stdin(Stdio::null()).stdout(Stdio::null());
    if let Some(password) = password {
        command.env("PGPASSWORD", password);
    }
    let output = match command.output().await {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{tool} is not installed: install PostgreSQL's client tools (Debian/Ubuntu: apt-get install postgresql-client; use the major version of the server or newer)"
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot run {tool}")),
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last: Vec<&str> = stderr.lines().rev().take(5).collect();
        bail!(
            "{tool} failed ({}) restoring {dump}: {}{}",
            output.status,
            last.into_iter().rev().collect::<Vec<_>>().join(" / "),
            match custom {
                true => "",
                false =>
                    "; a plain dump restores over existing tables only when taken with pg_dump --clean --if-exists",
            }
        );
    }
    announce(&format!(
        "restored the PostgreSQL database from {dump} with {tool}; start the servers with the ENCLII_MASTER_KEY its secrets are sealed with"
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_leaves_the_url_decoded() {
        assert_eq!(
            split_password("postgres://enclii:p%40ss:w@db:5432/enclii?sslmode=require"),
            (
                "postgres://enclii@db:5432/enclii?sslmode=require".to_string(),
                Some("p@ss:w".to_string())
            )
        );
        assert_eq!(
            split_password("postgres://enclii@db/enclii"),
            ("postgres://enclii@db/enclii".to_string(), None)
        );
        assert_eq!(
            split_password("postgres:///enclii"),
            ("postgres:///enclii".to_string(), None)
        );
    }
}
