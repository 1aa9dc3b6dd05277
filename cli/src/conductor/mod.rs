//! Conductor: the `enclii` commands that talk to a running platform (`init`, `up`, `deploy`,
//! `logs`, `ps`, `secrets`, …). Each command is a few API calls through [`client::Client`];
//! results go to stdout (text or `--output json`), progress and errors to stderr, and the exit
//! code says what kind of failure it was ([`exit`]).

mod client;
mod commands;
mod config;
mod init;
mod output;
mod progress;

use std::fmt;

use clap::{Args, Subcommand, ValueEnum};

pub use commands::run;
pub use output::printable;

/// Exit codes: scripts branch on these.
pub mod exit {
    pub const FAILURE: u8 = 1;
    /// Bad input: a flag, a spec, a 400/422 from the API.
    pub const VALIDATION: u8 = 10;
    pub const BUILD: u8 = 20;
    pub const DEPLOY: u8 = 30;
    pub const TIMEOUT: u8 = 40;
    /// No token, a bad token, or not allowed (401/403).
    pub const AUTH: u8 = 50;
}

/// A failure with its exit code, what happened and what to do about it.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
    pub hint: Option<String>,
    /// The HTTP status of the API's answer, when the failure is one.
    pub status: Option<u16>,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            hint: None,
            status: None,
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(exit::VALIDATION, message)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// Options of every Conductor command (each also read from its `ENCLII_*` variable, then from
/// the config file's profile). Its `Debug` does not show the token.
#[derive(Args, Clone)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// The platform's API, e.g. http://127.0.0.1:8080.
    #[arg(long, global = true, env = "ENCLII_SERVER")]
    pub server: Option<String>,
    /// A personal access token (`enclii_pat_…`); prefer ENCLII_TOKEN or `enclii auth login`, as
    /// an argument shows in the process list and the shell history.
    #[arg(long, global = true, env = "ENCLII_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The config file profile to use (default: the file's `default_profile`, else `default`).
    #[arg(long, global = true, env = "ENCLII_PROFILE")]
    pub profile: Option<String>,
    /// The project to act on.
    #[arg(long, global = true, env = "ENCLII_PROJECT")]
    pub project: Option<String>,
    /// `json`: machine-readable results on stdout (and no progress lines).
    #[arg(long, global = true, env = "ENCLII_OUTPUT", value_enum, default_value = "text")]
    pub output: OutputFormat,
    /// No progress lines on stderr while waiting.
    #[arg(long, global = true)]
    pub no_progress: bool,
}

impl fmt::Debug for Global {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Global")
            .field("server", &self.server)
            .field("token", &format_args!("{}", config::redacted(&self.token)))
            .field("profile", &self.profile)
            .field("project", &self.project)
            .field("output", &self.output)
            .field("no_progress", &self.no_progress)
            .finish()
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write a Service Spec (enclii.yaml) for the project in this directory.
    Init(commands::InitArgs),
    /// Build this directory's git HEAD and deploy it to a preview environment; print its URL.
    Up(commands::UpArgs),
    /// Deploy a release (or build HEAD and deploy it) to an environment.
    Deploy(commands::DeployArgs),
    /// A service's runtime log (its replicas' output).
    Logs(commands::LogsArgs),
    /// Services as they run: release, replicas, health, P95 latency, error rate.
    Ps(commands::PsArgs),
    /// What a service's replicas did on their own: exits the engine restarted, restarts after
    /// failed liveness probes (newest first).
    Events(commands::EventsArgs),
    /// Secrets (Lockbox): set, list, remove. Values are never printed.
    #[command(subcommand)]
    Secrets(commands::SecretsCommand),
    /// Change a service's replica range (a new spec version; the running release is deployed again
    /// with it, reason `scale`).
    Scale(commands::ScaleArgs),
    /// Routes: hosts and paths to services.
    #[command(subcommand)]
    Routes(commands::RoutesCommand),
    /// Custom domains: add (with the DNS records that prove you own it), list, verify, remove.
    #[command(subcommand)]
    Domains(commands::DomainsCommand),
    /// Add-ons (PostgreSQL, Redis): create, list, credentials, rotate, connect, remove.
    #[command(subcommand)]
    Addons(commands::AddonsCommand),
    /// A service's jobs (spec.jobs): run one now, list runs.
    #[command(subcommand)]
    Jobs(commands::JobsCommand),
    /// Deploy an earlier ready release of a service again.
    Rollback(commands::RollbackArgs),
    /// A service's releases (builds), newest first: what `deploy --release` and `rollback --to` take.
    Releases(commands::ReleasesArgs),
    /// What the project's services cost.
    Cost(commands::CostArgs),
    /// Log in (store a token in the config profile) and create tokens.
    #[command(subcommand)]
    Auth(commands::AuthCommand),
    /// The job queue, for operators: depth, jobs, retry, cancel, pause, limits, workers, throughput.
    #[command(subcommand)]
    Queue(commands::QueueCommand),
    /// Shell completions: `enclii completions bash > /etc/bash_completion.d/enclii`.
    Completions(commands::CompletionsArgs),
}
