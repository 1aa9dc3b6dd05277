//! The Conductor's commands: arguments and what each one asks the API.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::Duration;

use clap::{Args, CommandFactory, Subcommand, ValueEnum};
use enclii_domain::spec::{ServiceSpec, SpecFormat};
use serde_json::{Value, json};

use super::client::{Client, segment};
use super::config::{ConfigFile, Settings};
use super::init::{self, Template};
use super::output::{cell, emit, print_rows, table, time};
use super::progress::Waiter;
use super::{Command, Failure, Global, OutputFormat, exit};

/// Runs one Conductor command; returns the exit code.
pub async fn run<C: CommandFactory>(global: Global, command: Command) -> anyhow::Result<u8> {
    if let Command::Completions(args) = &command {
        let mut cli = C::command();
        clap_complete::generate(args.shell, &mut cli, "enclii", &mut std::io::stdout());
        return Ok(0);
    }
    let logging_in = matches!(command, Command::Auth(AuthCommand::Login));
    let settings = Settings::resolve(&global, logging_in)?;
    match command {
        Command::Init(args) => init(&settings, args),
        Command::Up(args) => up(&settings, args).await,
        Command::Deploy(args) => deploy(&settings, args).await,
        Command::Logs(args) => logs(&settings, args).await,
        Command::Ps(args) => ps(&settings, args).await,
        Command::Secrets(command) => secrets(&settings, command).await,
        Command::Scale(args) => scale(&settings, args).await,
        Command::Routes(command) => routes(&settings, command).await,
        Command::Jobs(command) => jobs(&settings, command).await,
        Command::Rollback(args) => rollback(&settings, args).await,
        Command::Cost(args) => cost(&settings, args).await,
        Command::Auth(command) => auth(&settings, command).await,
        Command::Queue(command) => queue(&settings, command).await,
        Command::Completions(_) => unreachable!("handled above"),
    }?;
    Ok(0)
}

type Done = anyhow::Result<()>;

fn seconds(s: &str) -> Result<Duration, String> {
    let (digits, unit) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        _ => (s, 1),
    };
    digits
        .parse::<u64>()
        .map(|n| Duration::from_secs(n * unit))
        .map_err(|_| format!("`{s}` is not a duration such as 90, 90s, 15m or 1h"))
}

/// A Service Spec read from a file, and its text.
type LocalSpec = (ServiceSpec, String);

/// The local Service Spec (`enclii.yaml`), when there is one; a broken one is a validation error.
fn local_spec(file: &Path) -> Result<Option<LocalSpec>, Failure> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Failure::new(
                exit::FAILURE,
                format!("cannot read {}: {e}", file.display()),
            ));
        }
    };
    let spec = ServiceSpec::parse(&text, SpecFormat::Yaml).map_err(|errors| {
        Failure::validation(format!("{} is not a valid Service Spec: {errors}", file.display()))
            .hint("fix the named fields (or write a fresh one with `enclii init --force`)")
    })?;
    Ok(Some((spec, text)))
}

/// The project and service a command acts on: flags first, then the local spec, then the profile.
fn target_service(
    settings: &Settings,
    service: Option<String>,
    file: &Path,
) -> Result<(String, String, Option<LocalSpec>), Failure> {
    let local = local_spec(file)?;
    let project = match (&settings.project, &local) {
        (Some(p), _) => p.clone(),
        (None, Some((spec, _))) => spec.metadata.project.clone(),
        (None, None) => settings.project()?,
    };
    let service = match (service, &local) {
        (Some(s), _) => s,
        (None, Some((spec, _))) => spec.metadata.name.clone(),
        (None, None) => {
            return Err(Failure::validation("no service given")
                .hint(format!("name it, or run this where {} is", file.display())));
        }
    };
    Ok((project, service, local))
}

fn git(args: &[&str]) -> Result<String, Failure> {
    let out = Process::new("git")
        .args(args)
        .output()
        .map_err(|e| Failure::new(exit::FAILURE, format!("cannot run git: {e}")).hint("install git"))?;
    if !out.status.success() {
        return Err(Failure::validation(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
        .hint("run this inside a git checkout with at least one commit"));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The checkout's HEAD commit and branch; warns when there are uncommitted changes (the server
/// builds the commit, not the working tree).
fn head(progress: bool) -> Result<(String, String), Failure> {
    let sha = git(&["rev-parse", "HEAD"])?;
    let branch = git(&["rev-parse", "--abbrev-ref", "HEAD"])?;
    let branch = if branch == "HEAD" { "main".to_string() } else { branch };
    if progress && !git(&["status", "--porcelain", "--untracked-files=no"])?.is_empty() {
        eprintln!(
            "note: uncommitted changes are not deployed: the server builds commit {}",
            &sha[..12]
        );
    }
    Ok((sha, branch))
}

// --- init ---------------------------------------------------------------------------------------

#[derive(Args, Debug)]
pub struct InitArgs {
    /// The kind of project (default: detected from the files present).
    #[arg(long, value_enum)]
    template: Option<Template>,
    /// The service's name (default: the directory's name).
    #[arg(long)]
    name: Option<String>,
    /// The environment a push to the branch deploys to.
    #[arg(long = "env", default_value = "prod")]
    environment: String,
    /// The port the app listens on (default: the Dockerfile's EXPOSE, else the template's).
    #[arg(long)]
    port: Option<u32>,
    /// The git repository the server builds from (default: `origin`, else this checkout).
    #[arg(long)]
    repository: Option<String>,
    /// The branch that deploys (default: the current one).
    #[arg(long)]
    branch: Option<String>,
    /// Overwrite an existing spec.
    #[arg(long)]
    force: bool,
    /// The spec file to write.
    #[arg(long, default_value = "enclii.yaml")]
    file: PathBuf,
    /// The project's directory.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

fn init(settings: &Settings, args: InitArgs) -> Done {
    let plan = init::plan(init::InitOptions {
        dir: args.dir,
        file: args.file,
        template: args.template,
        name: args.name,
        project: settings.project.clone(),
        environment: args.environment,
        port: args.port,
        repository: args.repository,
        branch: args.branch,
        force: args.force,
    })?;
    std::fs::write(&plan.spec_path, &plan.spec)?;
    if let Some((path, text)) = &plan.dockerfile {
        std::fs::write(path, text)?;
    }
    for warning in &plan.warnings {
        eprintln!("warning: {warning}");
    }
    let template = Template::value_variants()
        .iter()
        .find(|t| **t == plan.template)
        .and_then(|t| t.to_possible_value())
        .map(|v| v.get_name().to_string())
        .unwrap_or_default();
    let result = json!({
        "file": plan.spec_path.display().to_string(),
        "template": template,
        "dockerfile": plan.dockerfile.as_ref().map(|(p, _)| p.display().to_string()),
    });
    emit(settings.output, &result, |_| {
        println!("wrote {} ({template} template)", plan.spec_path.display());
        if let Some((path, _)) = &plan.dockerfile {
            println!("wrote {}", path.display());
        }
        println!("next: commit it, then `enclii up` builds HEAD and deploys a preview");
    });
    Ok(())
}

// --- up and deploy ------------------------------------------------------------------------------

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
    let path = format!("/v1/projects/{project}/services/{service}");
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
                .send_spec(reqwest::Method::POST, &format!("/v1/projects/{project}/services"), text)
                .await?;
            Ok(())
        }
        Err(e) => Err(e),
    }
}

async fn up(settings: &Settings, args: UpArgs) -> Done {
    let client = Client::new(settings)?;
    let (project, service, local) = target_service(settings, args.service, &args.file)?;
    let (sha, branch) = head(settings.progress)?;
    ensure_service(&client, settings, &project, &service, local).await?;
    let mut body = json!({"git_sha": sha, "branch": branch});
    if let Some(n) = args.preview {
        body["number"] = json!(n);
    }
    let started = client
        .post(&format!("/v1/projects/{project}/services/{service}/previews"), &body)
        .await?;
    let environment = started["environment"].as_str().unwrap_or_default().to_string();
    let release = started["release"]["id"].as_i64().unwrap_or_default();
    let pipeline = started["pipeline"].as_i64().unwrap_or_default();
    if settings.progress {
        eprintln!(
            "• building {} ({branch}) as release {release} for {environment}",
            &sha[..12.min(sha.len())]
        );
    }
    let mut waiter = Waiter::new(&client, settings.progress, Some(args.timeout));
    waiter.build(release, pipeline).await?;
    let deployment = if started["duplicate"].as_bool() == Some(true) {
        // Built before: deploy it again (the preview may have been torn down since).
        client
            .post(
                &format!("/v1/projects/{project}/services/{service}/deployments"),
                &json!({"release": release, "environment": environment}),
            )
            .await?
    } else {
        waiter.deployment_of(&project, &service, release, &environment).await?
    };
    let id = deployment["id"].as_i64().unwrap_or_default();
    let done = waiter.deployment(id).await?;
    let url = done["url"].clone();
    let result = json!({"project": project, "service": service, "environment": environment,
                        "release": release, "deployment": id, "git_sha": sha, "url": url});
    emit(settings.output, &result, |_| println!("{}", cell(&url)));
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
    /// Default: the spec's `deploy.strategy`.
    #[arg(long, value_enum)]
    strategy: Option<Strategy>,
    /// Wait until the deployment ends (exit 30 when it fails).
    #[arg(long)]
    wait: bool,
    /// Give up waiting after this long (exit 40).
    #[arg(long, value_parser = seconds, default_value = "15m")]
    timeout: Duration,
    #[arg(long, default_value = "enclii.yaml", hide = true)]
    file: PathBuf,
}

/// A deployment the API refuses (409: the release is not ready, not signed, …) is a failed
/// deployment (30).
fn refused(e: Failure) -> Failure {
    if e.status == Some(409) {
        Failure {
            code: exit::DEPLOY,
            ..e
        }
    } else {
        e
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
        println!(
            "deployment {} of release {} to {}: {}{}",
            cell(&d["id"]),
            cell(&d["release_id"]),
            cell(&d["environment"]),
            cell(&d["status"]),
            d["url"].as_str().map(|u| format!(" — {u}")).unwrap_or_default()
        )
    });
}

async fn deploy(settings: &Settings, args: DeployArgs) -> Done {
    let client = Client::new(settings)?;
    let (project, service, _) = target_service(settings, args.service, &args.file)?;
    let mut waiter = Waiter::new(&client, settings.progress, Some(args.timeout));
    let release = match args.release {
        Some(id) => id,
        None => {
            let (sha, branch) = head(settings.progress)?;
            let started = client
                .post(
                    &format!("/v1/projects/{project}/services/{service}/releases"),
                    &json!({"git_sha": sha, "branch": branch, "deploy": false}),
                )
                .await?;
            let id = started["release"]["id"].as_i64().unwrap_or_default();
            if settings.progress {
                eprintln!("• building {} as release {id}", &sha[..12.min(sha.len())]);
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
        .post(&format!("/v1/projects/{project}/services/{service}/deployments"), &body)
        .await
        .map_err(refused)?;
    let deployment = if args.wait {
        waiter.deployment(deployment["id"].as_i64().unwrap_or_default()).await?
    } else {
        deployment
    };
    print_deployment(settings, &deployment);
    Ok(())
}

#[derive(Args, Debug)]
pub struct RollbackArgs {
    service: String,
    /// The earlier ready release to deploy again.
    #[arg(long)]
    to: i64,
    #[arg(long = "env")]
    environment: Option<String>,
    /// Wait until the deployment ends (exit 30 when it fails).
    #[arg(long)]
    wait: bool,
    #[arg(long, value_parser = seconds, default_value = "5m")]
    timeout: Duration,
}

async fn rollback(settings: &Settings, args: RollbackArgs) -> Done {
    let client = Client::new(settings)?;
    let project = settings.project()?;
    let mut body = json!({"to": args.to});
    if let Some(env) = &args.environment {
        body["environment"] = json!(env);
    }
    let deployment = client
        .post(
            &format!("/v1/projects/{project}/services/{}/rollback", args.service),
            &body,
        )
        .await
        .map_err(refused)?;
    let deployment = if args.wait {
        let mut waiter = Waiter::new(&client, settings.progress, Some(args.timeout));
        waiter.deployment(deployment["id"].as_i64().unwrap_or_default()).await?
    } else {
        deployment
    };
    print_deployment(settings, &deployment);
    Ok(())
}

// --- logs and ps --------------------------------------------------------------------------------

#[derive(Args, Debug)]
pub struct LogsArgs {
    service: String,
    /// Keep printing new lines as the replicas print them.
    #[arg(short, long)]
    follow: bool,
    #[arg(long = "env")]
    environment: Option<String>,
    /// Only lines matching this regular expression.
    #[arg(long)]
    grep: Option<String>,
    /// Lines to start with.
    #[arg(long, default_value_t = 100)]
    tail: u32,
}

fn print_log_line(format: OutputFormat, line: &Value) {
    match format {
        OutputFormat::Json => println!("{line}"),
        OutputFormat::Text => println!(
            "{} {} │ {}",
            line["timestamp"]
                .as_str()
                .map(|t| t.get(..19).unwrap_or(t))
                .unwrap_or("-"),
            cell(&line["replica"]),
            line["line"].as_str().unwrap_or("")
        ),
    }
}

async fn logs(settings: &Settings, args: LogsArgs) -> Done {
    let client = Client::new(settings)?;
    let project = settings.project()?;
    let path = format!("/v1/projects/{project}/services/{}/logs", args.service);
    let mut query = vec![("tail", args.tail.to_string())];
    if let Some(env) = args.environment {
        query.push(("environment", env));
    }
    if let Some(grep) = args.grep {
        query.push(("grep", grep));
    }
    if args.follow {
        query.push(("follow", "true".into()));
        let format = settings.output;
        client
            .events(&path, &query, |event| {
                if event.event == "line"
                    && let Ok(line) = serde_json::from_str::<Value>(&event.data)
                {
                    print_log_line(format, &line);
                }
                true
            })
            .await?;
        return Ok(());
    }
    let lines = client.get_query(&path, &query).await?;
    emit(settings.output, &lines, |lines| {
        for line in lines.as_array().into_iter().flatten() {
            print_log_line(OutputFormat::Text, line);
        }
    });
    Ok(())
}

#[derive(Args, Debug)]
pub struct PsArgs {
    /// Every service in this environment (default: each service's own).
    #[arg(long = "env")]
    environment: Option<String>,
}

async fn ps(settings: &Settings, args: PsArgs) -> Done {
    let client = Client::new(settings)?;
    let project = settings.project()?;
    let mut query = Vec::new();
    if let Some(env) = args.environment {
        query.push(("environment", env));
    }
    let status = client
        .get_query(&format!("/v1/projects/{project}/status"), &query)
        .await?;
    emit(settings.output, &status, |services| {
        let rows = services
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                vec![
                    cell(&s["service"]),
                    cell(&s["environment"]),
                    cell(&s["release"]),
                    format!("{}/{}", cell(&s["replicas_ready"]), cell(&s["replicas_desired"])),
                    cell(&s["health"]),
                    s["p95_ms"].as_f64().map_or("-".into(), |ms| format!("{ms:.0}ms")),
                    s["error_rate"]
                        .as_f64()
                        .map_or("-".into(), |r| format!("{:.2}%", r * 100.0)),
                    s["canary_percent"].as_i64().map_or("-".into(), |p| format!("{p}%")),
                    cell(&s["url"]),
                ]
            })
            .collect();
        print_rows(
            &[
                "service", "env", "release", "replicas", "health", "p95", "errors", "canary", "url",
            ],
            rows,
        );
    });
    Ok(())
}

// --- secrets ------------------------------------------------------------------------------------

#[derive(Subcommand, Debug)]
pub enum SecretsCommand {
    /// Set a secret: `NAME=value`, or `NAME` alone to read the value from stdin.
    Set {
        assignment: String,
        #[arg(long)]
        service: Option<String>,
        #[arg(long = "env")]
        environment: Option<String>,
    },
    /// Names, scopes and versions (never values).
    List {
        #[arg(long)]
        service: Option<String>,
        #[arg(long = "env")]
        environment: Option<String>,
    },
    /// Remove a secret.
    #[command(alias = "remove")]
    Rm {
        name: String,
        #[arg(long)]
        service: Option<String>,
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

async fn secrets(settings: &Settings, command: SecretsCommand) -> Done {
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
                    let mut value = String::new();
                    if std::io::stdin().is_terminal() {
                        eprint!("value of {assignment}: ");
                    }
                    std::io::stdin().lock().read_line(&mut value)?;
                    (assignment, value.trim_end_matches(['\n', '\r']).to_string())
                }
            };
            let body = json!({"value": value, "service": service, "environment": environment});
            let meta = client
                .put(&format!("/v1/projects/{project}/secrets/{}", segment(&name)), &body)
                .await?;
            emit(settings.output, &meta, |m| {
                println!("secret {name} set (version {})", cell(&m["version"]))
            });
        }
        SecretsCommand::List { service, environment } => {
            let list = client
                .get_query(&format!("/v1/projects/{project}/secrets"), &place(service, environment))
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
                    &format!("/v1/projects/{project}/secrets/{}", segment(&name)),
                    &place(service, environment),
                )
                .await?;
            emit(settings.output, &json!({"name": name, "removed": true}), |_| {
                println!("secret {name} removed")
            });
        }
    }
    Ok(())
}

// --- scale --------------------------------------------------------------------------------------

#[derive(Args, Debug)]
pub struct ScaleArgs {
    service: String,
    #[arg(long)]
    min: Option<u32>,
    #[arg(long)]
    max: Option<u32>,
}

async fn scale(settings: &Settings, args: ScaleArgs) -> Done {
    if args.min.is_none() && args.max.is_none() {
        return Err(Failure::validation("nothing to change")
            .hint("pass --min, --max or both")
            .into());
    }
    let client = Client::new(settings)?;
    let project = settings.project()?;
    let path = format!("/v1/projects/{project}/services/{}", args.service);
    let current = client.get(&path).await?;
    let mut spec = current["spec"].clone();
    let replicas = &mut spec["spec"]["runtime"]["replicas"];
    if !replicas.is_object() {
        *replicas = json!({"min": 1, "max": 1});
    }
    if let Some(min) = args.min {
        replicas["min"] = json!(min);
    }
    if let Some(max) = args.max {
        replicas["max"] = json!(max);
    }
    let updated = client.put(&path, &spec).await?;
    emit(settings.output, &updated, |u| {
        println!(
            "{}: replicas {}..{} (spec version {}); running replicas change at the next deploy",
            args.service,
            cell(&u["spec"]["spec"]["runtime"]["replicas"]["min"]),
            cell(&u["spec"]["spec"]["runtime"]["replicas"]["max"]),
            cell(&u["spec_version"])
        )
    });
    Ok(())
}

// --- routes -------------------------------------------------------------------------------------

#[derive(Subcommand, Debug)]
pub enum RoutesCommand {
    /// Route a host (and path prefix) to a service.
    Add {
        #[arg(long)]
        host: String,
        #[arg(long, default_value = "/")]
        path: String,
        #[arg(long)]
        service: String,
        #[arg(long = "env")]
        environment: Option<String>,
        /// Serve plain HTTP only (Kubernetes: no certificate).
        #[arg(long)]
        no_tls: bool,
    },
    List,
    /// Remove a route by its id (see `routes list`).
    #[command(alias = "remove")]
    Rm {
        id: i64,
    },
}

async fn routes(settings: &Settings, command: RoutesCommand) -> Done {
    let client = Client::new(settings)?;
    let project = settings.project()?;
    let path = format!("/v1/projects/{project}/routes");
    match command {
        RoutesCommand::Add {
            host,
            path: prefix,
            service,
            environment,
            no_tls,
        } => {
            let body = json!({"host": host, "path": prefix, "service": service,
                              "environment": environment, "tls": !no_tls});
            let route = client.post(&path, &body).await?;
            emit(settings.output, &route, |r| {
                println!(
                    "route {}: {}{} → {} ({}); reaches the service at its next deploy",
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
                println!("route {id} removed")
            });
        }
    }
    Ok(())
}

// --- jobs ---------------------------------------------------------------------------------------

#[derive(Subcommand, Debug)]
pub enum JobsCommand {
    /// Run one of the service's jobs (spec.jobs) now.
    Run {
        name: String,
        #[arg(long)]
        service: String,
    },
    /// The service's job runs, newest first.
    List {
        #[arg(long)]
        service: String,
        /// Only this job's runs.
        #[arg(long)]
        job: Option<String>,
    },
}

async fn jobs(settings: &Settings, command: JobsCommand) -> Done {
    let client = Client::new(settings)?;
    let project = settings.project()?;
    match command {
        JobsCommand::Run { name, service } => {
            let run = client
                .post(
                    &format!("/v1/projects/{project}/services/{service}/jobs/{}/runs", segment(&name)),
                    &Value::Null,
                )
                .await?;
            emit(settings.output, &run, |r| {
                println!(
                    "run {} of {name} queued (job {})",
                    cell(&r["id"]),
                    cell(&r["queue_job_id"])
                )
            });
        }
        JobsCommand::List { service, job } => {
            let mut query = Vec::new();
            if let Some(job) = job {
                query.push(("job", job));
            }
            let runs = client
                .get_query(&format!("/v1/projects/{project}/services/{service}/jobs/runs"), &query)
                .await?;
            emit(settings.output, &runs, |r| {
                table(
                    r,
                    &["id", "job", "trigger", "status", "attempt", "exit"],
                    &["/id", "/job", "/trigger", "/status", "/attempt", "/exit_code"],
                )
            });
        }
    }
    Ok(())
}

// --- cost ---------------------------------------------------------------------------------------

#[derive(Args, Debug)]
pub struct CostArgs {
    /// The period: `30d`, `12h`, `90m` ago, or an RFC 3339 time.
    #[arg(long, default_value = "30d")]
    since: String,
}

async fn cost(settings: &Settings, args: CostArgs) -> Done {
    let client = Client::new(settings)?;
    let project = settings.project()?;
    let report = client
        .get_query("/v1/cost", &[("project", project), ("since", args.since)])
        .await?;
    emit(settings.output, &report, |r| {
        table(
            &r["lines"],
            &["environment", "service", "cpu h", "ram GiB·h", "cents"],
            &[
                "/environment",
                "/service",
                "/cpu_hours",
                "/ram_gib_hours",
                "/cost_cents",
            ],
        );
        println!(
            "total since {}: {:.2} cents",
            time(&r["since"]),
            r["total_cents"].as_f64().unwrap_or(0.0)
        );
    });
    Ok(())
}

// --- auth ---------------------------------------------------------------------------------------

#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Check a token (--token, else read from stdin) and store it, with --server and --project,
    /// in the profile (--profile, default `default`).
    Login,
    /// Personal access tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token; it is printed once.
    Create {
        #[arg(long, default_value = "cli")]
        name: String,
        /// Comma-separated: read, deploy, secrets.service, secrets.project, routes,
        /// project.write, govern, project.delete.
        #[arg(long, value_delimiter = ',', default_value = "read")]
        scopes: Vec<String>,
        /// Days until it expires (`90` or `90d`; at most 365).
        #[arg(long, value_parser = days, default_value = "90")]
        expires: u32,
    },
}

fn days(s: &str) -> Result<u32, String> {
    s.strip_suffix('d')
        .unwrap_or(s)
        .parse()
        .map_err(|_| format!("`{s}` is not a number of days such as 30 or 30d"))
}

async fn auth(settings: &Settings, command: AuthCommand) -> Done {
    match command {
        AuthCommand::Login => {
            let token = match &settings.token {
                Some(token) => token.clone(),
                None => {
                    if std::io::stdin().is_terminal() {
                        eprint!("token: ");
                    }
                    let mut line = String::new();
                    std::io::stdin().lock().read_line(&mut line)?;
                    line.trim().to_string()
                }
            };
            if token.is_empty() {
                return Err(Failure::new(exit::AUTH, "no token given")
                    .hint("pass --token, or pipe it in: `echo $TOKEN | enclii auth login`")
                    .into());
            }
            let client = Client::with_token(&settings.server, Some(token.clone()))?;
            let me = client.get("/v1/whoami").await?;
            let mut file = ConfigFile::load(&settings.config_path)?;
            let profile = file.profiles.entry(settings.profile.clone()).or_default();
            profile.server = Some(settings.server.clone());
            profile.token = Some(token);
            if settings.project.is_some() {
                profile.project = settings.project.clone();
            }
            if file.default_profile.is_none() {
                file.default_profile = Some(settings.profile.clone());
            }
            file.save(&settings.config_path)?;
            let result = json!({"subject": me["subject"], "server": settings.server, "profile": settings.profile,
                                "config": settings.config_path.display().to_string()});
            emit(settings.output, &result, |_| {
                println!(
                    "logged in to {} as {} (profile `{}` in {})",
                    settings.server,
                    cell(&me["subject"]),
                    settings.profile,
                    settings.config_path.display()
                )
            });
        }
        AuthCommand::Token(TokenCommand::Create { name, scopes, expires }) => {
            let client = Client::new(settings)?;
            let body = json!({"name": name, "scopes": scopes, "project": settings.project,
                              "expires_in_days": expires});
            let created = client.post("/v1/tokens", &body).await?;
            emit(settings.output, &created, |c| {
                // The one time the token is shown: it is the command's result.
                println!("{}", cell(&c["token"]));
                eprintln!(
                    "token {} ({}) expires {}; it is shown only this once",
                    cell(&c["id"]),
                    c["scopes"]
                        .as_array()
                        .map(|s| s.iter().map(cell).collect::<Vec<_>>().join(","))
                        .unwrap_or_default(),
                    time(&c["expires_at"])
                );
            });
        }
    }
    Ok(())
}

// --- queue --------------------------------------------------------------------------------------

#[derive(Subcommand, Debug)]
pub enum QueueCommand {
    /// Depth per kind, project and state.
    Stats,
    /// Dead jobs (attempts exhausted), newest first.
    /// Only one project's with --project.
    Dead {
        #[arg(long)]
        kind: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Run a dead or cancelled job again.
    Retry { job: i64 },
    /// Cancel a job (a running one is asked to stop).
    Cancel { job: i64 },
    /// Stop claiming the project's jobs (running ones finish).
    Pause { project: String },
    /// Claim the project's jobs again.
    Resume { project: String },
    /// Worker processes and their heartbeats.
    Workers,
}

async fn queue(settings: &Settings, command: QueueCommand) -> Done {
    let client = Client::new(settings)?;
    match command {
        QueueCommand::Stats => {
            let stats = client.get("/v1/queue/stats").await?;
            emit(settings.output, &stats, |s| {
                println!("{}", serde_json::to_string_pretty(s).unwrap_or_default())
            });
        }
        QueueCommand::Dead { kind, limit } => {
            let mut query = vec![("state", "dead".to_string()), ("limit", limit.to_string())];
            if let Some(p) = settings.project.clone() {
                query.push(("project", p));
            }
            if let Some(k) = kind {
                query.push(("kind", k));
            }
            let jobs = client.get_query("/v1/queue/jobs", &query).await?;
            emit(settings.output, &jobs, |j| {
                table(
                    j,
                    &["id", "kind", "project", "attempt", "finished", "error"],
                    &["/id", "/kind", "/project", "/attempt", "/finished_at", "/last_error"],
                )
            });
        }
        QueueCommand::Retry { job } | QueueCommand::Cancel { job } => {
            let action = if matches!(command, QueueCommand::Retry { .. }) {
                "retry"
            } else {
                "cancel"
            };
            let result = client.post(&format!("/v1/jobs/{job}/{action}"), &Value::Null).await?;
            emit(settings.output, &result, |r| {
                println!("job {job}: {}", cell(&r["result"]))
            });
        }
        QueueCommand::Pause { ref project } | QueueCommand::Resume { ref project } => {
            let action = if matches!(command, QueueCommand::Pause { .. }) {
                "pause"
            } else {
                "resume"
            };
            let result = client
                .post(&format!("/v1/projects/{project}/queue/{action}"), &Value::Null)
                .await?;
            emit(settings.output, &result, |r| {
                let paused = r["paused"].as_bool().unwrap_or(false);
                println!("project {project}: queue {}", if paused { "paused" } else { "running" })
            });
        }
        QueueCommand::Workers => {
            let workers = client.get("/v1/queue/workers").await?;
            emit(settings.output, &workers, |w| {
                table(
                    w,
                    &["id", "host", "running", "concurrency", "last seen"],
                    &["/id", "/host", "/running", "/concurrency", "/last_seen"],
                )
            });
        }
    }
    Ok(())
}

// --- completions --------------------------------------------------------------------------------

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    shell: clap_complete::Shell,
}
