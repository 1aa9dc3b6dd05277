//! `enclii domains`: custom domains, routed once their owner proves them in DNS.

use clap::Subcommand;
use serde_json::{Value, json};

use crate::conductor::client::Client;
use crate::conductor::config::Settings;
use crate::conductor::output::{cell, emit, outln, table};

use super::{Done, project_path};

#[derive(Subcommand, Debug)]
pub enum DomainsCommand {
    /// Claim a host for a service; prints the DNS records that prove and route it.
    Add {
        /// The host, e.g. shop.example.com, or one wildcard level: *.example.com.
        host: String,
        /// The service that answers.
        #[arg(long)]
        service: String,
        /// The service's environment (default: its own).
        #[arg(long = "env")]
        environment: Option<String>,
        /// The path prefix routed to the service.
        #[arg(long)]
        path: Option<String>,
    },
    /// The project's domains and their state.
    #[command(alias = "list")]
    Ls,
    /// Check a domain's ownership record again now (a failed domain gets a new deadline).
    Verify {
        /// The domain's id (see `domains ls`).
        id: i64,
    },
    /// Remove a domain and its route (its certificate is kept until it expires, unless
    /// --delete-certificate).
    #[command(alias = "remove")]
    Rm {
        /// The domain's id.
        id: i64,
        /// Delete the host's TLS certificate now too.
        #[arg(long)]
        delete_certificate: bool,
    },
}

/// The records to create, as lines for a person.
fn records(domain: &Value) -> String {
    let line = |record: &Value, why: &str| {
        format!(
            "  {:<5} {}  →  {}   ({why})",
            cell(&record["type"]),
            cell(&record["name"]),
            cell(&record["value"])
        )
    };
    format!(
        "{}\n{}",
        line(&domain["ownership"], "proves you own it"),
        line(&domain["target"], "sends its traffic to Enclii")
    )
}

fn state(domain: &Value) -> String {
    let status = match domain["detail"].as_str() {
        Some(detail) => format!("{}: {detail}", cell(&domain["status"])),
        None => cell(&domain["status"]),
    };
    let certificate = &domain["certificate"];
    match (certificate["status"].as_str(), certificate["error"].as_str()) {
        (None, _) => status,
        (Some("failed"), Some(error)) => format!("{status}; certificate failed: {}", cell(&json!(error))),
        (Some(state), _) => format!("{status}; certificate {state}"),
    }
}

pub(super) async fn domains(settings: &Settings, command: DomainsCommand) -> Done {
    let client = Client::new(settings)?;
    let project = settings.project()?;
    let path = format!("{}/domains", project_path(&project));
    match command {
        DomainsCommand::Add {
            host,
            service,
            environment,
            path: prefix,
        } => {
            let body = json!({"host": host, "service": service, "environment": environment, "path": prefix});
            let domain = client.post(&path, &body).await?;
            emit(settings.output, &domain, |d| {
                outln!(
                    "domain {}: {} → {} ({}), {}; create these DNS records:\n{}\nIt is checked with backoff until \
                     found, and routed then; `enclii domains verify {}` checks now.",
                    cell(&d["id"]),
                    cell(&d["host"]),
                    cell(&d["service"]),
                    cell(&d["environment"]),
                    cell(&d["status"]),
                    records(d),
                    cell(&d["id"])
                )
            });
        }
        DomainsCommand::Ls => {
            let list = client.get(&path).await?;
            emit(settings.output, &list, |l| {
                table(
                    l,
                    &[
                        "id",
                        "host",
                        "path",
                        "service",
                        "environment",
                        "status",
                        "certificate",
                        "TXT record",
                    ],
                    &[
                        "/id",
                        "/host",
                        "/path",
                        "/service",
                        "/environment",
                        "/status",
                        "/certificate/status",
                        "/ownership/name",
                    ],
                )
            });
        }
        DomainsCommand::Verify { id } => {
            let domain = client.post(&format!("{path}/{id}/verify"), &json!({})).await?;
            emit(settings.output, &domain, |d| {
                outln!("domain {id} ({}): {}\n{}", cell(&d["host"]), state(d), records(d))
            });
        }
        DomainsCommand::Rm { id, delete_certificate } => {
            let query = [("delete_certificate", delete_certificate.to_string())];
            client.delete(&format!("{path}/{id}"), &query).await?;
            emit(
                settings.output,
                &json!({"id": id, "removed": true}),
                |_| match delete_certificate {
                    true => outln!("domain {id}, its route and its certificate removed"),
                    false => {
                        outln!("domain {id} and its route removed (its certificate, if any, is kept until it expires)")
                    }
                },
            );
        }
    }
    Ok(())
}
