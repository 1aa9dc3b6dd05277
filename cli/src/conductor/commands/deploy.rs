//! `enclii up`, `deploy`, `rollback` and `releases`: builds, deployments and the releases they take.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde_json::{Value, json};

use crate::conductor::client::Client;
use crate::conductor::config::Settings;
use crate::conductor::output::{cell, emit, outln, print_rows, rows, time};
use crate::conductor::progress::Waiter;
use crate::conductor::{Failure, exit};

use super::{Done, LocalSpec, head, missing, project_path, required_id, seconds, service_path, target_service};

#[derive(Args, Debug)]
pub struct UpArgs {
    /// The service (default: metadata.name of the spec file).
    #[arg(long)]
    service: Option<String>,
    /// The Service Spec; the service is created from it when the server does not have it yet.
    #[arg(long, default_value = "enclii.yaml")]
    file: PathBuf,
    /// The preview's number (`preview-<n>`; default: one per branch).
    #[arg(long)]
    preview: Option<u64>,
    /// Give up waiting after this long (exit 40), e.g. 900, 15m.
    #[arg(long, value_parser = seconds, default_value = "15m")]
    timeout: Duration,
}

/// Creates the service from the local spec when the server does not know it yet.
async fn ensure_service(
    client: &Client,
    settings: &Settings,
    project: &str,
    service: &str,
    local: Option<LocalSpec>,
) -> Result<(), Failure> {
    let path = service_path(project, service);
    match client.get(&path).await {
        Ok(_) => Ok(()),
        Err(e) if e.status == Some(404) => {
            let Some((_, text)) = local else {
                return Err(e.hint("create it with `enclii init` and `enclii up` in its directory"));
            };
            if settings.progress {
                eprintln!("• creating service {service} in project {project} from its spec");
            }
            client
                .send_spec(
                    reqwest::Method::POST,
                    &format!("{}/services", project_path(project)),
                    text,
                )
                .await?;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

pub(super) async fn up(settings: &Settings, args: UpArgs) -> Done {
    let client = Client::new(settings)?;
    let (project, service, local) = target_service(settings, args.service, &args.file)?;
    let (sha, branch) = head(settings.progress)?;
    ensure_service(&client, settings, &project, &service, local).await?;
    let mut body = json!({"git_sha": sha, "branch": branch});
    if let Some(n) = args.preview {
        body["number"] = json!(n);
    }
    let started = client
        .post(&format!("{}/previews", service_path(&project, &service)), &body)
        .await?;
    let environment = started["environment"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| missing("/environment"))?;
    let release = required_id(&started, "/release/id")?;
    let pipeline = started["pipeline"].as_i64().unwrap_or_default();
    if settings.progress {
        eprintln!(
            "• building {} ({branch}) as release {release} for {environment}",
            sha.get(..12).unwrap_or(&sha)
        );
    }
    let mut waiter = Waiter::new(&client, settings.progress, Some(args.timeout));
    waiter.build(release, pipeline).await?;
    let deployment = if started["duplicate"].as_bool() == Some(true) {
        // Built before: deploy it again (the preview may have been torn down since).
        client
            .post(
                &format!("{}/deployments", service_path(&project, &service)),
                &json!({"release": release, "environment": environment}),
            )
            .await
            .map_err(|e| refused(e, &service))?
    } else {
        waiter.deployment_of(&project, &service, release, &environment).await?
    };
    let id = required_id(&deployment, "/id")?;
    let done = waiter.deployment(id).await?;
    let url = done["url"].clone();
    let result = json!({"project": project, "service": service, "environment": environment,
                        "release": release, "deployment": id, "git_sha": sha, "url": url});
    emit(settings.output, &result, |_| outln!("{}", cell(&url)));
    Ok(())
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Strategy {
    Rolling,
    Canary,
}

#[derive(Args, Debug)]
pub struct DeployArgs {
    /// The service (default: metadata.name of ./enclii.yaml).
    service: Option<String>,
    /// The environment (default: the service's own).
    #[arg(long = "env")]
    environment: Option<String>,
    /// The ready release to deploy; without it, this checkout's HEAD is built first.
    #[arg(long)]
    release: Option<i64>,
    /// How to roll it out (default: the spec's `deploy.strategy`).
    #[arg(long, value_enum)]
    strategy: Option<Strategy>,
    /// Wait until the deployment ends (exit 30 when it fails).
    #[arg(long)]
    wait: bool,
    /// Give up waiting (for the build, and with --wait the deployment) after this long
    /// (exit 40), e.g. 900, 15m.
    #[arg(long, value_parser = seconds, default_value = "15m")]
    timeout: Duration,
    #[arg(long, default_value = "enclii.yaml", hide = true)]
    file: PathBuf,
}

/// A deployment the API refuses (409: the release is not ready, not signed, …) is a failed
/// deployment (30); a release that does not exist says where to find the service's releases.
fn refused(e: Failure, service: &str) -> Failure {
    match e.status {
        Some(409) => Failure {
            code: exit::DEPLOY,
            ..e
        },
        Some(404) if e.message.starts_with("release") => {
            e.hint(format!("see the service's releases with `enclii releases {service}`"))
        }
        _ => e,
    }
}

fn strategy_name(strategy: Strategy) -> &'static str {
    match strategy {
        Strategy::Rolling => "rolling",
        Strategy::Canary => "canary",
    }
}

fn print_deployment(settings: &Settings, deployment: &Value) {
    emit(settings.output, deployment, |d| {
        outln!(
            "deployment {} of release {} to {}: {}{}",
            cell(&d["id"]),
            cell(&d["release_id"]),
            cell(&d["environment"]),
            cell(&d["status"]),
            d["url"].as_str().map(|u| format!(" — {u}")).unwrap_or_default()
        )
    });
}

pub(super) async fn deploy(settings: &Settings, args: DeployArgs) -> Done {
    let client = Client::new(settings)?;
    let (project, service, _) = target_service(settings, args.service, &args.file)?;
    let mut waiter = Waiter::new(&client, settings.progress, Some(args.timeout));
    let release = match args.release {
        Some(id) => id,
        None => {
            let (sha, branch) = head(settings.progress)?;
            let started = client
                .post(
                    &format!("{}/releases", service_path(&project, &service)),
                    &json!({"git_sha": sha, "branch": branch, "deploy": false}),
                )
                .await?;
            let id = required_id(&started, "/release/id")?;
            if settings.progress {
                eprintln!("• building {} as release {id}", sha.get(..12).unwrap_or(&sha));
            }
            waiter
                .build(id, started["pipeline"].as_i64().unwrap_or_default())
                .await?;
            id
        }
    };
    let mut body = json!({"release": release});
    if let Some(env) = &args.environment {
        body["environment"] = json!(env);
    }
    if let Some(strategy) = args.strategy {
        body["strategy"] = json!(strategy_name(strategy));
    }
    let deployment = client
        .post(&format!("{}/deployments", service_path(&project, &service)), &body)
        .await
        .map_err(|e| refused(e, &service))?;
    finish_deployment(settings, &mut waiter, deployment, args.wait).await
}

/// Prints a deployment the API just made, after following it to its end with `--wait`.
async fn finish_deployment(settings: &Settings, waiter: &mut Waiter, deployment: Value, wait: bool) -> Done {
    let deployment = if wait {
        waiter.deployment(required_id(&deployment, "/id")?).await?
    } else {
        deployment
    };
    print_deployment(settings, &deployment);
    Ok(())
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// The service.
    service: String,
    /// The earlier ready release to deploy again (see `enclii releases SERVICE`).
    #[arg(long)]
    to: i64,
    /// The environment (default: the service's own).
    #[arg(long = "env")]
    environment: Option<String>,
    /// Wait until the deployment ends (exit 30 when it fails).
    #[arg(long)]
    wait: bool,
    /// With --wait: give up waiting after this long (exit 40), e.g. 300, 5m.
    #[arg(long, value_parser = seconds, default_value = "5m")]
    timeout: Duration,
}

pub(super) async fn rollback(settings: &Settings, args: RollbackArgs) -> Done {
    let client = Client::new(settings)?;
    let project = settings.project()?;
    let mut body = json!({"to": args.to});
    if let Some(env) = &args.environment {
        body["environment"] = json!(env);
    }
    let deployment = client
        .post(&format!("{}/rollback", service_path(&project, &args.service)), &body)
        .await
        .map_err(|e| refused(e, &args.service))?;
    let mut waiter = Waiter::new(&client, settings.progress, Some(args.timeout));
    finish_deployment(settings, &mut waiter, deployment, args.wait).await
}

#[derive(Args, Debug)]
pub struct ReleasesArgs {
    /// The service (default: metadata.name of ./enclii.yaml).
    service: Option<String>,
    /// How many, newest first.
    #[arg(long, default_value_t = 20)]
    limit: u32,
    #[arg(long, default_value = "enclii.yaml", hide = true)]
    file: PathBuf,
}

pub(super) async fn releases(settings: &Settings, args: ReleasesArgs) -> Done {
    let client = Client::new(settings)?;
    let (project, service, _) = target_service(settings, args.service, &args.file)?;
    let list = client
        .get_query(
            &format!("{}/releases", service_path(&project, &service)),
            &[("limit", args.limit.to_string())],
        )
        .await?;
    emit(settings.output, &list, |releases| {
        let rows = rows(releases, |r| {
            let sha = r["git_sha"].as_str().unwrap_or("-");
            vec![
                cell(&r["id"]),
                cell(&r["status"]),
                cell(&r["environment"]),
                cell(&r["branch"]),
                sha.get(..12).unwrap_or(sha).to_string(),
                time(&r["created_at"]),
                // A failed release's failure; a building one's reason to wait, if any.
                cell(if r["failure"].is_null() {
                    &r["waiting"]
                } else {
                    &r["failure"]
                }),
            ]
        });
        print_rows(&["id", "status", "env", "branch", "commit", "created", "reason"], rows);
    });
    Ok(())
}
