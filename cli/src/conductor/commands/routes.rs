//! `enclii routes`: hosts and paths to services.

use clap::Subcommand;
use serde_json::json;

use crate::conductor::client::Client;
use crate::conductor::config::Settings;
use crate::conductor::output::{cell, emit, outln, table};

use super::{Done, project_path};

#[derive(Subcommand, Debug)]
pub enum RoutesCommand {
    /// Route a host (and path prefix) to a service.
    Add {
        /// The host name, e.g. shop.example.com: a verified custom domain of the project must
        /// cover it (`enclii domains add`), unless it is a reserved name such as `*.test` or
        /// `*.localhost`.
        #[arg(long)]
        host: String,
        /// The path prefix.
        #[arg(long, default_value = "/")]
        path: String,
        /// The service that answers.
        #[arg(long)]
        service: String,
        /// The service's environment (default: its own).
        #[arg(long = "env")]
        environment: Option<String>,
        /// Keep answering plain HTTP once the host has a certificate (by default plain HTTP
        /// redirects to HTTPS).
        #[arg(long, alias = "no-tls")]
        no_redirect: bool,
    },
    /// The project's routes.
    List,
    /// Remove a route by its id (see `routes list`).
    #[command(alias = "remove")]
    Rm {
        /// The route's id.
        id: i64,
    },
}

pub(super) async fn routes(settings: &Settings, command: RoutesCommand) -> Done {
    let client = Client::new(settings)?;
    let project = settings.project()?;
    let path = format!("{}/routes", project_path(&project));
    match command {
        RoutesCommand::Add {
            host,
            path: prefix,
            service,
            environment,
            no_redirect,
        } => {
            let body = json!({"host": host, "path": prefix, "service": service,
                              "environment": environment, "tls": {"redirect": !no_redirect}});
            let route = client.post(&path, &body).await?;
            emit(settings.output, &route, |r| {
                outln!(
                    "route {}: {}{} → {} ({}); applied now if the service runs, else at its next deploy",
                    cell(&r["id"]),
                    cell(&r["host"]),
                    cell(&r["path"]),
                    cell(&r["service"]),
                    cell(&r["environment"])
                )
            });
        }
        RoutesCommand::List => {
            let list = client.get(&path).await?;
            emit(settings.output, &list, |l| {
                table(
                    l,
                    &["id", "host", "path", "service", "environment", "tls"],
                    &["/id", "/host", "/path", "/service", "/environment", "/tls"],
                )
            });
        }
        RoutesCommand::Rm { id } => {
            client.delete(&format!("{path}/{id}"), &[]).await?;
            emit(settings.output, &json!({"id": id, "removed": true}), |_| {
                outln!("route {id} removed")
            });
        }
    }
    Ok(())
}
