//! `enclii addons backup|backups|restore`: backups of an add-on, taken and restored by jobs.

use std::time::Duration;

use serde_json::{Value, json};

use crate::conductor::client::Client;
use crate::conductor::config::Settings;
use crate::conductor::output::{cell, emit, outln, table};

use super::addons::addon_path;

/// How often `--wait` asks again.
const POLL: Duration = Duration::from_secs(1);

fn bytes(value: &Value) -> String {
    match value.as_i64() {
        Some(n) if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1 << 20) as f64),
        Some(n) if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        Some(n) => format!("{n} B"),
        None => "-".into(),
    }
}

fn describe(b: &Value) -> String {
    let mut line = format!(
        "backup {} of {}: {}",
        cell(&b["id"]),
        cell(&b["addon"]),
        cell(&b["status"])
    );
    if b["status"] == "completed" {
        line.push_str(&format!(
            ", {} stored, sha256 {}",
            bytes(&b["size_bytes"]),
            cell(&b["sha256"])
        ));
    }
    if let Some(detail) = b["detail"].as_str() {
        line.push_str(&format!(": {detail}"));
    }
    line
}

pub(super) async fn backup(
    settings: &Settings,
    client: &Client,
    project: &str,
    environment: &str,
    name: &str,
    wait: bool,
) -> anyhow::Result<()> {
    let path = format!("{}/backups", addon_path(project, environment, name));
    let mut backup = client.post(&path, &json!({})).await?;
    while wait && backup["status"] == "running" {
        tokio::time::sleep(POLL).await;
        let list = client.get(&path).await?;
        let id = &backup["id"];
        backup = list
            .as_array()
            .and_then(|l| l.iter().find(|b| &b["id"] == id).cloned())
            .ok_or_else(|| anyhow::anyhow!("backup {id} is no longer listed"))?;
    }
    emit(settings.output, &backup, |b| outln!("{}", describe(b)));
    if backup["status"] == "failed" {
        anyhow::bail!("the backup failed: {}", cell(&backup["detail"]));
    }
    Ok(())
}

pub(super) async fn list(
    settings: &Settings,
    client: &Client,
    project: &str,
    environment: &str,
    name: &str,
) -> anyhow::Result<()> {
    let list = client
        .get(&format!("{}/backups", addon_path(project, environment, name)))
        .await?;
    emit(settings.output, &list, |l| {
        table(
            l,
            &["id", "status", "trigger", "size", "sha256", "created_at", "detail"],
            &[
                "/id",
                "/status",
                "/trigger",
                "/size_bytes",
                "/sha256",
                "/created_at",
                "/detail",
            ],
        )
    });
    Ok(())
}

/// What `enclii addons restore` asks for.
pub(super) struct Restore {
    pub backup: i64,
    pub into: Option<String>,
    pub wait: bool,
}

pub(super) async fn restore(
    settings: &Settings,
    client: &Client,
    project: &str,
    environment: &str,
    name: &str,
    restore: Restore,
) -> anyhow::Result<()> {
    let body = json!({"backup": restore.backup, "into": restore.into});
    let accepted = client
        .post(&format!("{}/restore", addon_path(project, environment, name)), &body)
        .await?;
    let mut answer = accepted.clone();
    if restore.wait {
        let job = format!("/v1/jobs/{}", cell(&accepted["job"]));
        let ended = loop {
            let record = client.get(&job).await?;
            if matches!(
                record["state"].as_str(),
                Some("completed" | "failed" | "dead" | "cancelled")
            ) {
                break record;
            }
            tokio::time::sleep(POLL).await;
        };
        answer["state"] = ended["state"].clone();
        answer["error"] = ended["last_error"].clone();
    }
    emit(settings.output, &answer, |a| {
        let target = cell(&a["addon"]);
        match a["state"].as_str() {
            None => outln!(
                "restoring backup {} into {target} (job {}); `enclii addons restore --wait` waits for it",
                cell(&a["backup"]),
                cell(&a["job"])
            ),
            Some("completed") => outln!("backup {} restored into {target}", cell(&a["backup"])),
            Some(state) => outln!("restoring into {target} ended {state}: {}", cell(&a["error"])),
        }
    });
    if answer["state"].as_str().is_some_and(|s| s != "completed") {
        anyhow::bail!("the restore did not complete: {}", cell(&answer["error"]));
    }
    Ok(())
}
