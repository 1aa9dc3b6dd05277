//! The Conductor's commands: arguments and what each one asks the API.

mod addon_backups;
mod addons;
mod auth;
mod cost;
mod deploy;
mod domains;
mod init;
mod jobs;
mod logs;
mod queue;
mod routes;
mod scale;
mod secrets;

use std::io::{BufRead, IsTerminal};
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::time::Duration;

use clap::{Args, CommandFactory};
use enclii_domain::spec::{ServiceSpec, SpecFormat};
use serde_json::Value;

use super::client::segment;
use super::config::Settings;
use super::{Command, Failure, Global, exit};

pub use addons::AddonsCommand;
use addons::addons;
pub use auth::AuthCommand;
use auth::auth;
pub use cost::CostArgs;
use cost::cost;
pub use deploy::{DeployArgs, ReleasesArgs, RollbackArgs, UpArgs};
use deploy::{deploy, releases, rollback, up};
pub use domains::DomainsCommand;
use domains::domains;
pub use init::InitArgs;
use init::init;
pub use jobs::JobsCommand;
use jobs::jobs;
pub use logs::{EventsArgs, LogsArgs, PsArgs};
use logs::{events, logs, ps};
pub use queue::QueueCommand;
use queue::queue;
pub use routes::RoutesCommand;
use routes::routes;
pub use scale::ScaleArgs;
use scale::scale;
pub use secrets::SecretsCommand;
use secrets::secrets;

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
        Command::Events(args) => events(&settings, args).await,
        Command::Secrets(command) => secrets(&settings, command).await,
        Command::Scale(args) => scale(&settings, args).await,
        Command::Routes(command) => routes(&settings, command).await,
        Command::Domains(command) => domains(&settings, command).await,
        Command::Addons(command) => addons(&settings, command).await,
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
