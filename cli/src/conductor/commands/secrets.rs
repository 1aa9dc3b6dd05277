//! `enclii secrets`: set, list, remove (values are never printed).

use clap::Subcommand;
use serde_json::json;

use crate::conductor::Failure;
use crate::conductor::client::{Client, segment};
use crate::conductor::config::Settings;
use crate::conductor::output::{cell, emit, outln, table};

use super::{Done, project_path, read_hidden};

#[derive(Subcommand, Debug)]
pub enum SecretsCommand {
    /// Set a secret: `NAME` alone reads the value from stdin (not echoed; keeps it out of the
    /// shell history and the process list), `NAME=value` takes it from the argument.
    Set {
        /// `NAME` or `NAME=value`.
        assignment: String,
        /// Only for this service (default: every service of the project).
        #[arg(long)]
        service: Option<String>,
        /// Only in this environment (default: every environment).
        #[arg(long = "env")]
        environment: Option<String>,
    },
    /// Names, scopes and versions (never values).
    List {
        /// Only this service's (and the project-wide ones it sees).
        #[arg(long)]
        service: Option<String>,
        /// Only this environment's.
        #[arg(long = "env")]
        environment: Option<String>,
    },
    /// Remove a secret (name the same --service and --env it was set with).
    #[command(alias = "remove")]
    Rm {
        /// The secret's name.
        name: String,
        /// The service it was set for.
        #[arg(long)]
        service: Option<String>,
        /// The environment it was set for.
        #[arg(long = "env")]
        environment: Option<String>,
    },
}

fn place(service: Option<String>, environment: Option<String>) -> Vec<(&'static str, String)> {
    let mut query = Vec::new();
    if let Some(s) = service {
        query.push(("service", s));
    }
    if let Some(e) = environment {
        query.push(("environment", e));
    }
    query
}

pub(super) async fn secrets(settings: &Settings, command: SecretsCommand) -> Done {
    let client = Client::new(settings)?;
    let project = settings.project()?;
    match command {
        SecretsCommand::Set {
            assignment,
            service,
            environment,
        } => {
            let (name, value) = match assignment.split_once('=') {
                Some((name, value)) => (name.to_string(), value.to_string()),
                None => {
                    let Some(value) = read_hidden(&format!("value of {assignment}: "))? else {
                        return Err(Failure::validation(format!("no value for {assignment}: stdin is empty"))
                            .hint(format!(
                                "pipe the value in (`printf %s \"$VALUE\" | enclii secrets set {assignment}`), or pass {assignment}=VALUE"
                            ))
                            .into());
                    };
                    (assignment, value)
                }
            };
            if name.is_empty() {
                return Err(Failure::validation("the secret has no name")
                    .hint("write NAME=value, or NAME alone to read the value from stdin")
                    .into());
            }
            let body = json!({"value": value, "service": service, "environment": environment});
            let meta = client
                .put(&format!("{}/secrets/{}", project_path(&project), segment(&name)), &body)
                .await?;
            emit(settings.output, &meta, |m| {
                outln!("secret {name} set (version {})", cell(&m["version"]))
            });
        }
        SecretsCommand::List { service, environment } => {
            let list = client
                .get_query(
                    &format!("{}/secrets", project_path(&project)),
                    &place(service, environment),
                )
                .await?;
            emit(settings.output, &list, |l| {
                table(
                    l,
                    &["name", "environment", "service", "version", "updated by"],
                    &["/name", "/environment", "/service", "/version", "/updated_by"],
                )
            });
        }
        SecretsCommand::Rm {
            name,
            service,
            environment,
        } => {
            client
                .delete(
                    &format!("{}/secrets/{}", project_path(&project), segment(&name)),
                    &place(service, environment),
                )
                .await?;
            emit(settings.output, &json!({"name": name, "removed": true}), |_| {
                outln!("secret {name} removed")
            });
        }
    }
    Ok(())
}
