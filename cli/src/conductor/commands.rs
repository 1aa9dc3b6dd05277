//! The Conductor's commands: arguments and what each one asks the API.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::time::Duration;

use clap::{Args, CommandFactory, Subcommand, ValueEnum};
use enclii_domain::spec::{ServiceSpec, SpecFormat};
use serde_json::{Value, json};

use super::client::{Client, segment};
use super::config::{ConfigFile, Settings};
use super::init::{self, Template};
use super::output::{cell, emit, items, number, outln, print_rows, printable, rows, table, time};
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
        Command::Releases(args) => releases(&settings, args).await,
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
    let too_long = || format!("`{s}` is too long: at most {}h", MAX_WAIT.as_secs() / 3600);
    let n = digits
        .parse::<u64>()
        .map_err(|_| format!("`{s}` is not a duration such as 90, 90s, 15m or 1h"))?;
    let secs = n.checked_mul(unit).ok_or_else(too_long)?;
    let duration = Duration::from_secs(secs);
    if duration > MAX_WAIT {
        return Err(too_long());
    }
    Ok(duration)
}

/// The longest `--timeout`: a week.
const MAX_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// `/v1/projects/{project}`, the name escaped.
fn project_path(project: &str) -> String {
    format!("/v1/projects/{}", segment(project))
}

/// `/v1/projects/{project}/services/{service}`, the names escaped.
fn service_path(project: &str, service: &str) -> String {
    format!("{}/services/{}", project_path(project), segment(service))
}

/// A field the API's answer must have is missing: a server this CLI does not know.
fn missing(pointer: &str) -> Failure {
    Failure::new(
        exit::FAILURE,
        format!(
            "the server's answer has no `{}`",
            pointer.trim_start_matches('/').replace('/', ".")
        ),
    )
    .hint("is --server an Enclii API of the same version as this CLI (`enclii --version`)?")
}

/// A number the API's answer must have.
fn required_id(value: &Value, pointer: &str) -> Result<i64, Failure> {
    value
        .pointer(pointer)
        .and_then(Value::as_i64)
        .ok_or_else(|| missing(pointer))
}

/// Reads one line from stdin without echoing it on a terminal (tokens, secret values); `None`
/// at the end of the input.
fn read_hidden(prompt: &str) -> anyhow::Result<Option<String>> {
    let stdin = std::io::stdin();
    let terminal = stdin.is_terminal();
    let stty = |arg: &str| {
        let _ = Process::new("stty")
            .arg(arg)
            .stdin(Stdio::inherit())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    };
    if terminal {
        eprint!("{prompt}");
        stty("-echo");
    }
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if terminal {
        stty("echo");
        eprintln!();
    }
    Ok((read? > 0).then(|| line.trim_end_matches(['\n', '\r']).to_string()))
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
            sha.get(..12).unwrap_or(&sha)
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
    let write = |path: &Path, text: &str| {
        std::fs::write(path, text).map_err(|e| {
            Failure::new(exit::FAILURE, format!("cannot write {}: {e}", path.display()))
                .hint("check that the directory exists and is writable, or pass --dir / --file")
        })
    };
    write(&plan.spec_path, &plan.spec)?;
    if let Some((path, text)) = &plan.dockerfile {
        write(path, text)?;
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
        outln!("wrote {} ({template} template)", plan.spec_path.display());
        if let Some((path, _)) = &plan.dockerfile {
            outln!("wrote {}", path.display());
        }
        outln!("next: commit it, then `enclii up` builds HEAD and deploys a preview");
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
        Some(404) if e.hint.is_none() && e.message.starts_with("release") => {
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

async fn rollback(settings: &Settings, args: RollbackArgs) -> Done {
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

async fn releases(settings: &Settings, args: ReleasesArgs) -> Done {
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
                cell(&r["failure"]),
            ]
        });
        print_rows(&["id", "status", "env", "branch", "commit", "created", "failure"], rows);
    });
    Ok(())
}

// --- logs and ps --------------------------------------------------------------------------------

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The service.
    service: String,
    /// Keep printing new lines as the replicas print them (until Ctrl-C).
    #[arg(short, long)]
    follow: bool,
    /// The environment (default: the service's own).
    #[arg(long = "env")]
    environment: Option<String>,
    /// Only lines matching this regular expression.
    #[arg(long)]
    grep: Option<String>,
    /// How many of the latest lines to show first.
    #[arg(long, default_value_t = 100)]
    tail: u32,
}

fn print_log_line(format: OutputFormat, line: &Value) {
    match format {
        OutputFormat::Json => outln!("{line}"),
        OutputFormat::Text => outln!(
            "{} {} │ {}",
            line["timestamp"]
                .as_str()
                .map(|t| t.get(..19).unwrap_or(t))
                .unwrap_or("-"),
            cell(&line["replica"]),
            printable(line["line"].as_str().unwrap_or(""))
        ),
    }
}

async fn logs(settings: &Settings, args: LogsArgs) -> Done {
    let client = Client::new(settings)?;
    let project = settings.project()?;
    let path = format!("{}/logs", service_path(&project, &args.service));
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
        for line in items(lines) {
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
        .get_query(&format!("{}/status", project_path(&project)), &query)
        .await?;
    emit(settings.output, &status, |services| {
        let rows = rows(services, |s| {
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
        });
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

// --- scale --------------------------------------------------------------------------------------

#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// The service.
    service: String,
    /// The fewest replicas (default: unchanged).
    #[arg(long)]
    min: Option<u32>,
    /// The most replicas (default: unchanged).
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
    let path = service_path(&project, &args.service);
    let current = client.get(&path).await?;
    let mut spec = current["spec"].clone();
    // The service's spec document, with its replica range changed (built up where absent;
    // anything but objects on the way is an answer this CLI does not know).
    let replicas = ["spec", "runtime", "replicas"]
        .into_iter()
        .try_fold(&mut spec, |node, key| {
            let object = node.as_object_mut()?;
            Some(object.entry(key).or_insert_with(|| json!({})))
        })
        .and_then(Value::as_object_mut)
        .ok_or_else(|| missing("/spec/spec/runtime/replicas"))?;
    for (key, value) in [("min", args.min), ("max", args.max)] {
        let value = value.or_else(|| replicas.get(key).and_then(Value::as_u64).map(|v| v as u32));
        replicas.insert(key.into(), json!(value.unwrap_or(1)));
    }
    let updated = client.put(&path, &spec).await?;
    emit(settings.output, &updated, |u| {
        outln!(
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
        /// The host name, e.g. shop.example.com.
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
        /// Serve plain HTTP only (Kubernetes: no certificate).
        #[arg(long)]
        no_tls: bool,
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

async fn routes(settings: &Settings, command: RoutesCommand) -> Done {
    let client = Client::new(settings)?;
    let project = settings.project()?;
    let path = format!("{}/routes", project_path(&project));
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
                outln!(
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
                outln!("route {id} removed")
            });
        }
    }
    Ok(())
}

// --- jobs ---------------------------------------------------------------------------------------

#[derive(Subcommand, Debug)]
pub enum JobsCommand {
    /// Run one of the service's jobs (spec.jobs) now; prints the run and its queue job.
    Run {
        /// The job's name in spec.jobs.
        name: String,
        /// The service whose spec has the job.
        #[arg(long)]
        service: String,
    },
    /// The service's job runs, newest first.
    List {
        /// The service.
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
                    &format!("{}/jobs/{}/runs", service_path(&project, &service), segment(&name)),
                    &Value::Null,
                )
                .await?;
            emit(settings.output, &run, |r| {
                outln!(
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
                .get_query(&format!("{}/jobs/runs", service_path(&project, &service)), &query)
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
        outln!(
            "total since {}: {} cents",
            time(&r["since"]),
            number(&r["total_cents"], 2)
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
        /// A name to recognise it by.
        #[arg(long, default_value = "cli")]
        name: String,
        /// Comma-separated: read, deploy, secrets.service, secrets.project, routes,
        /// project.write, govern, project.delete. With --project, it acts only on that project.
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
            // Only a token given now: the profile's stored one may be for another server.
            let token = match settings.token.clone().filter(|_| settings.token_given) {
                Some(token) => token,
                None => read_hidden("token: ")?.unwrap_or_default().trim().to_string(),
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
                outln!(
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
                outln!("{}", cell(&c["token"]));
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
    /// Depth per kind, project and state, and how long the oldest available job has waited.
    Stats,
    /// Jobs by state, newest first (--project narrows to one project): find one to cancel.
    Jobs {
        /// Comma-separated states: available, running, completed, dead, cancelled
        /// (default: available,running).
        #[arg(long, default_value = "available,running")]
        state: String,
        /// Only jobs of this kind, e.g. build, deploy, job-run.
        #[arg(long)]
        kind: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Dead jobs (attempts exhausted), newest first (--project narrows to one project).
    Dead {
        /// Only jobs of this kind, e.g. build, deploy, job-run.
        #[arg(long)]
        kind: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Run a dead or cancelled job again.
    Retry {
        /// The job's id (see `queue dead`).
        job: i64,
    },
    /// Cancel a job (a running one is asked to stop).
    Cancel {
        /// The job's id (see `queue jobs`).
        job: i64,
    },
    /// Stop claiming the project's jobs (running ones finish; new ones wait).
    Pause {
        /// The project's slug.
        project: String,
    },
    /// Claim the project's jobs again.
    Resume {
        /// The project's slug.
        project: String,
    },
    /// Worker processes and their heartbeats.
    Workers,
    /// Per-project limits and pauses (projects without any are not listed).
    #[command(visible_alias = "limits")]
    Controls,
    /// Jobs finished per minute, retries, and run and start latency percentiles.
    Throughput {
        /// The window in minutes (1 to 180).
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..=180))]
        minutes: u32,
    },
}

/// `state`, `kind`, `project` and `limit` of a `/v1/queue/jobs` query.
fn jobs_query(settings: &Settings, state: String, kind: Option<String>, limit: u32) -> Vec<(&'static str, String)> {
    let mut query = vec![("state", state), ("limit", limit.to_string())];
    if let Some(p) = settings.project.clone() {
        query.push(("project", p));
    }
    if let Some(k) = kind {
        query.push(("kind", k));
    }
    query
}

/// Seconds as text with one decimal, `-` when there is no value.
fn secs(value: &Value) -> String {
    match number(value, 1).as_str() {
        "-" => "-".into(),
        n => format!("{n}s"),
    }
}

async fn queue(settings: &Settings, command: QueueCommand) -> Done {
    let client = Client::new(settings)?;
    match command {
        QueueCommand::Stats => {
            let stats = client.get("/v1/queue/stats").await?;
            emit(settings.output, &stats, |s| {
                table(
                    &s["depth"],
                    &["kind", "project", "state", "jobs"],
                    &["/kind", "/project", "/state", "/count"],
                );
                let oldest = rows(&s["oldest_available_seconds"], |pair| {
                    vec![cell(&pair[0]), secs(&pair[1])]
                });
                if !oldest.is_empty() {
                    outln!("");
                    print_rows(&["kind", "oldest available"], oldest);
                }
            });
        }
        QueueCommand::Jobs { state, kind, limit } => {
            let jobs = client
                .get_query("/v1/queue/jobs", &jobs_query(settings, state, kind, limit))
                .await?;
            emit(settings.output, &jobs, |j| {
                table(
                    j,
                    &["id", "kind", "project", "state", "attempt", "run at", "worker"],
                    &["/id", "/kind", "/project", "/state", "/attempt", "/run_at", "/worker"],
                )
            });
        }
        QueueCommand::Dead { kind, limit } => {
            let jobs = client
                .get_query("/v1/queue/jobs", &jobs_query(settings, "dead".into(), kind, limit))
                .await?;
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
            let result = client
                .post(&format!("/v1/jobs/{job}/{action}"), &Value::Null)
                .await
                .map_err(|e| match (e.status, action) {
                    (Some(409), "retry") if e.hint.is_none() => {
                        e.hint("only dead or cancelled jobs are retried: see them with `enclii queue dead`")
                    }
                    (Some(404), _) if e.hint.is_none() => {
                        e.hint("see the queue's jobs with `enclii queue jobs --state available,running,dead`")
                    }
                    _ => e,
                })?;
            emit(settings.output, &result, |r| {
                outln!("job {job}: {}", cell(&r["result"]).replace('_', " "))
            });
        }
        QueueCommand::Pause { ref project } | QueueCommand::Resume { ref project } => {
            let action = if matches!(command, QueueCommand::Pause { .. }) {
                "pause"
            } else {
                "resume"
            };
            let result = client
                .post(&format!("{}/queue/{action}", project_path(project)), &Value::Null)
                .await?;
            emit(settings.output, &result, |r| {
                let paused = r["paused"].as_bool().unwrap_or(false);
                outln!("project {project}: queue {}", if paused { "paused" } else { "running" })
            });
        }
        QueueCommand::Workers => {
            let workers = client.get("/v1/queue/workers").await?;
            emit(settings.output, &workers, |w| {
                table(
                    w,
                    &["id", "host", "status", "running", "concurrency", "last seen"],
                    &["/id", "/host", "/status", "/running", "/concurrency", "/last_seen"],
                )
            });
        }
        QueueCommand::Controls => {
            let controls = client.get("/v1/queue/controls").await?;
            emit(settings.output, &controls, |c| {
                let rows = rows(c, |c| {
                    let limit = |v: &Value| v.as_i64().map_or("unlimited".into(), |n| n.to_string());
                    vec![
                        cell(&c["project"]),
                        if c["paused"].as_bool() == Some(true) {
                            "paused"
                        } else {
                            "running"
                        }
                        .into(),
                        limit(&c["max_running"]),
                        limit(&c["jobs_per_minute"]),
                        time(&c["updated_at"]),
                        cell(&c["updated_by"]),
                    ]
                });
                print_rows(&["project", "queue", "max running", "jobs/min", "updated", "by"], rows);
            });
        }
        QueueCommand::Throughput { minutes } => {
            let report = client
                .get_query("/v1/queue/throughput", &[("minutes", minutes.to_string())])
                .await?;
            emit(settings.output, &report, |r| {
                let rows = rows(&r["buckets"], |b| {
                    vec![
                        time(&b["minute"]),
                        cell(&b["completed"]),
                        cell(&b["dead"]),
                        cell(&b["cancelled"]),
                        cell(&b["retried"]),
                        secs(&b["run_p95_seconds"]),
                        secs(&b["start_p95_seconds"]),
                    ]
                });
                print_rows(
                    &[
                        "minute",
                        "completed",
                        "dead",
                        "cancelled",
                        "retried",
                        "run p95",
                        "start p95",
                    ],
                    rows,
                );
                outln!(
                    "last {} min: run p50 {} p95 {}, start p50 {} p95 {}{}",
                    cell(&r["minutes"]),
                    secs(&r["run_p50_seconds"]),
                    secs(&r["run_p95_seconds"]),
                    secs(&r["start_p50_seconds"]),
                    secs(&r["start_p95_seconds"]),
                    if r["truncated"].as_bool() == Some(true) {
                        " (more jobs than were read: counts are a lower bound)"
                    } else {
                        ""
                    }
                );
            });
        }
    }
    Ok(())
}

// --- completions --------------------------------------------------------------------------------

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    shell: clap_complete::Shell,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_their_limits() {
        assert_eq!(seconds("90"), Ok(Duration::from_secs(90)));
        assert_eq!(seconds("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(seconds("2h"), Ok(Duration::from_secs(7200)));
        assert!(seconds("1.5m").is_err() && seconds("").is_err() && seconds("m").is_err());
        assert!(seconds("18446744073709551615h").unwrap_err().contains("too long"));
        assert!(seconds("169h").is_err());
    }
}
