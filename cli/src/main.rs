//! `enclii`: runs the platform (`enclii server`) and talks to it (the Conductor commands:
//! `init`, `up`, `deploy`, `logs`, `ps`, … — see `conductor`).

mod build;
mod conductor;
mod deploy;
mod server;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "enclii",
    version,
    about = "Enclii: build, prove and deploy — self-hosted",
    after_help = "Exit codes: 0 done, 10 bad input (flag, spec, 400/422), 20 build failed, 30 deploy failed \
                  or refused, 40 --timeout passed, 50 no/bad token or not allowed, 1 anything else.\n\
                  Settings come from flags, then ENCLII_* variables, then the config profile (see `enclii auth login`)."
)]
struct Cli {
    #[command(flatten)]
    global: conductor::Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform: API, worker pool and scheduler (or some of them, with --role).
    Server(Box<server::ServerArgs>),
    /// Check an image's cosign signature in its registry (exit 10 when unsigned or not verified).
    Verify(build::VerifyArgs),
    #[command(flatten)]
    Conductor(conductor::Command),
}

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // Help and version are not failures; a bad flag or value is a validation error.
            let code = if e.use_stderr() { conductor::exit::VALIDATION } else { 0 };
            return std::process::ExitCode::from(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => server::run(*args).await.map(|()| 0),
            Command::Verify(args) => {
                enclii_signing::install_crypto_provider();
                build::verify(args, cli.global.output == conductor::OutputFormat::Json).await
            }
            Command::Conductor(command) => {
                enclii_signing::install_crypto_provider();
                conductor::run::<Cli>(cli.global, command).await
            }
        }
    });
    // Leave streaming tasks behind rather than wait for them.
    runtime.shutdown_background();
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => match e.downcast_ref::<conductor::Failure>() {
            Some(failure) => {
                // The message and hint may quote the server: no control characters reach the terminal.
                let lines: Vec<String> = failure.message.lines().map(conductor::printable).collect();
                eprintln!("error: {}", lines.join("\n"));
                if let Some(hint) = &failure.hint {
                    eprintln!("hint: {}", conductor::printable(hint));
                }
                std::process::ExitCode::from(failure.code)
            }
            None => {
                eprintln!("error: {e:#}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{Cli, Command};

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// `--output` is global: a subcommand's own `--output` of another type once made clap panic
    /// when that subcommand was parsed (`enclii verify … --output json`).
    #[test]
    fn verify_takes_the_global_output() {
        let cli = Cli::try_parse_from(["enclii", "verify", "reg/p/s:t", "--key", "k.pub", "--output", "json"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(cli.command, Command::Verify(_)));
        assert_eq!(cli.global.output, super::conductor::OutputFormat::Json);
    }
}
