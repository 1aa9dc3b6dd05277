//! `enclii`: runs the platform (`enclii server`) and, as later issues land, talks to it.

mod build;
mod deploy;
mod server;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "enclii", version, about = "Enclii: build, prove and deploy — self-hosted")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform: API, worker pool and scheduler (or some of them, with --role).
    Server(Box<server::ServerArgs>),
    /// Check an image's cosign signature in its registry (exit 10 when unsigned or not verified).
    Verify(build::VerifyArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
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
                build::verify(args).await
            }
        }
    });
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
