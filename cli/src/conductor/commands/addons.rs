//! `enclii addons`: databases (PostgreSQL, Redis) beside a project environment's services.

use clap::Subcommand;
use serde_json::{Value, json};

use crate::conductor::client::{Client, segment};
use crate::conductor::config::Settings;
use crate::conductor::output::{cell, emit, outln, table};

use super::{Done, project_path};

#[derive(Subcommand, Debug)]
pub enum AddonsCommand {
    /// Create an add-on in an environment (provisioned in the background; `ls` shows when it is ready).
    Create {
        /// Its name, unique in the environment; services reach it at `<name>.internal`.
        name: String,
        /// `postgres` or `redis`.
        #[arg(long)]
        kind: String,
        /// The environment.
        #[arg(long = "env", default_value = "prod")]
        environment: String,
        /// A major version (default: the newest offered).
        #[arg(long)]
        version: Option<String>,
        /// Another image with the official image's interface.
        #[arg(long)]
        image: Option<String>,
        /// The data volume's size, e.g. 10Gi (Kubernetes).
        #[arg(long)]
        size: Option<String>,
        /// Back it up on this schedule (5-field cron, UTC), e.g. "0 3 * * *".
        #[arg(long)]
        backup_schedule: Option<String>,
        /// How many scheduled backups to keep (default 7).
        #[arg(long, requires = "backup_schedule")]
        backup_keep: Option<u32>,
    },
    /// Back an add-on up now (`pg_dump` or an RDB snapshot, encrypted, to the artefact store).
    Backup {
        name: String,
        #[arg(long = "env", default_value = "prod")]
        environment: String,
        /// Wait until it is stored (or failed).
        #[arg(long)]
        wait: bool,
    },
    /// An add-on's backups, newest first.
    Backups {
        name: String,
        #[arg(long = "env", default_value = "prod")]
        environment: String,
    },
    /// Restore a backup into the add-on (or, with --into, another add-on of its kind).
    Restore {
        name: String,
        #[arg(long = "env", default_value = "prod")]
        environment: String,
        /// The backup's id (see `enclii addons backups`).
        #[arg(long)]
        backup: i64,
        /// Restore into this add-on of the environment instead.
        #[arg(long)]
        into: Option<String>,
        /// Wait until the restore job ended.
        #[arg(long)]
        wait: bool,
    },
    /// Set or remove an add-on's backup schedule.
    Schedule {
        name: String,
        #[arg(long = "env", default_value = "prod")]
        environment: String,
        /// 5-field cron, UTC, e.g. "0 3 * * *".
        #[arg(long, required_unless_present = "off")]
        schedule: Option<String>,
        /// How many backups to keep (default 7).
        #[arg(long)]
        keep: Option<u32>,
        /// Remove the schedule.
        #[arg(long, conflicts_with = "schedule")]
        off: bool,
    },
    /// The project's add-ons (one environment with --env).
    #[command(alias = "list")]
    Ls {
        #[arg(long = "env")]
        environment: Option<String>,
    },
    /// Print an add-on's login and connection variables (the read is audited).
    Credentials {
        name: String,
        #[arg(long = "env", default_value = "prod")]
        environment: String,
    },
    /// Replace an add-on's password; the services that read it roll to the new one, and the old
    /// one stops working after ENCLII_ADDON_RETIRE_SECONDS.
    Rotate {
        name: String,
        #[arg(long = "env", default_value = "prod")]
        environment: String,
    },
    /// Open `psql` or `redis-cli` on the add-on (on the node running it), else print its URL.
    Connect {
        name: String,
        #[arg(long = "env", default_value = "prod")]
        environment: String,
    },
    /// Delete an add-on and its data.
    #[command(alias = "remove")]
    Rm {
        name: String,
        #[arg(long = "env", default_value = "prod")]
        environment: String,
        /// Delete even while services' specs read it.
        #[arg(long)]
        force: bool,
        /// Keep its data volume.
        #[arg(long)]
        keep_data: bool,
    },
}

pub(super) fn addon_path(project: &str, environment: &str, name: &str) -> String {
    format!(
        "{}/environments/{}/addons/{}",
        project_path(project),
        segment(environment),
        segment(name)
    )
}

pub(super) fn state(addon: &Value) -> String {
    match addon["detail"].as_str() {
        Some(detail) => format!("{}: {detail}", cell(&addon["status"])),
        None => cell(&addon["status"]),
    }
}

pub(super) async fn addons(settings: &Settings, command: AddonsCommand) -> Done {
    let client = Client::new(settings)?;
    let project = settings.project()?;
    match command {
        AddonsCommand::Create {
            name,
            kind,
            environment,
            version,
            image,
            size,
            backup_schedule,
            backup_keep,
        } => {
            let path = format!(
                "{}/environments/{}/addons",
                project_path(&project),
                segment(&environment)
            );
            let backup = backup_schedule.map(|schedule| json!({"schedule": schedule, "keep": backup_keep}));
            let body = json!({"name": name, "kind": kind, "version": version, "image": image, "size": size,
                              "backup": backup});
            let addon = client.post(&path, &body).await?;
            emit(settings.output, &addon, |a| {
                outln!(
                    "add-on {} ({} {}) in {}: {}; services read it with `envFrom: [{{addon: {}}}]` or `fromAddon`",
                    cell(&a["name"]),
                    cell(&a["kind"]),
                    cell(&a["version"]),
                    cell(&a["environment"]),
                    state(a),
                    cell(&a["name"])
                )
            });
        }
        AddonsCommand::Ls { environment } => {
            let query: Vec<(&str, String)> = environment.into_iter().map(|e| ("environment", e)).collect();
            let list = client
                .get_query(&format!("{}/addons", project_path(&project)), &query)
                .await?;
            emit(settings.output, &list, |l| {
                table(
                    l,
                    &[
                        "name",
                        "environment",
                        "kind",
                        "version",
                        "status",
                        "host",
                        "services",
                        "detail",
                    ],
                    &[
                        "/name",
                        "/environment",
                        "/kind",
                        "/version",
                        "/status",
                        "/host",
                        "/services",
                        "/detail",
                    ],
                )
            });
        }
        AddonsCommand::Credentials { name, environment } => {
            let credentials = client
                .get(&format!("{}/credentials", addon_path(&project, &environment, &name)))
                .await?;
            emit(settings.output, &credentials, |c| {
                if let Some(variables) = c["variables"].as_object() {
                    for (variable, value) in variables {
                        outln!("{variable}={}", cell(value));
                    }
                }
                if let Some(url) = c["external_url"].as_str() {
                    outln!("# from the node running it: {url}");
                }
            });
        }
        AddonsCommand::Rotate { name, environment } => {
            let addon = client
                .post(
                    &format!("{}/rotate", addon_path(&project, &environment, &name)),
                    &json!({}),
                )
                .await?;
            emit(settings.output, &addon, |a| {
                outln!(
                    "add-on {}: rotating to generation {} ({}); its services roll once the new login works",
                    cell(&a["name"]),
                    cell(&a["generation"]),
                    state(a)
                )
            });
        }
        AddonsCommand::Connect { name, environment } => {
            let addon = client.get(&addon_path(&project, &environment, &name)).await?;
            let credentials = client
                .get(&format!("{}/credentials", addon_path(&project, &environment, &name)))
                .await?;
            let url = credentials["external_url"]
                .as_str()
                .or(credentials["url"].as_str())
                .unwrap_or_default()
                .to_string();
            let client_program = match addon["kind"].as_str() {
                Some("postgres") => "psql",
                _ => "redis-cli",
            };
            let args: Vec<String> = match client_program {
                "psql" => vec![url.clone()],
                _ => vec!["-u".into(), url.clone()],
            };
            match std::process::Command::new(client_program).args(&args).status() {
                Ok(status) => {
                    if !status.success() {
                        anyhow::bail!("{client_program} ended with {status}");
                    }
                }
                Err(_) => outln!("{client_program} is not installed here; connect with:\n{url}"),
            }
        }
        AddonsCommand::Backup {
            name,
            environment,
            wait,
        } => super::addon_backups::backup(settings, &client, &project, &environment, &name, wait).await?,
        AddonsCommand::Backups { name, environment } => {
            super::addon_backups::list(settings, &client, &project, &environment, &name).await?
        }
        AddonsCommand::Restore {
            name,
            environment,
            backup,
            into,
            wait,
        } => {
            let restore = super::addon_backups::Restore { backup, into, wait };
            super::addon_backups::restore(settings, &client, &project, &environment, &name, restore).await?
        }
        AddonsCommand::Schedule {
            name,
            environment,
            schedule,
            keep,
            off,
        } => {
            let policy = (!off).then(|| json!({"schedule": schedule, "keep": keep}));
            let addon = client
                .patch(&addon_path(&project, &environment, &name), &json!({"backup": policy}))
                .await?;
            emit(settings.output, &addon, |a| match a["backup"]["schedule"].as_str() {
                Some(schedule) => outln!(
                    "add-on {}: backed up on `{schedule}` (UTC), keeping {}",
                    cell(&a["name"]),
                    cell(&a["backup"]["keep"])
                ),
                None => outln!("add-on {}: no scheduled backups", cell(&a["name"])),
            });
        }
        AddonsCommand::Rm {
            name,
            environment,
            force,
            keep_data,
        } => {
            let query = [("force", force.to_string()), ("keep_data", keep_data.to_string())];
            client
                .delete(&addon_path(&project, &environment, &name), &query)
                .await?;
            emit(
                settings.output,
                &json!({"name": name, "environment": environment, "removed": true}),
                |_| match keep_data {
                    true => outln!("add-on {name} removed from {environment}; its data volume is kept"),
                    false => outln!("add-on {name} and its data removed from {environment}"),
                },
            );
        }
    }
    Ok(())
}
