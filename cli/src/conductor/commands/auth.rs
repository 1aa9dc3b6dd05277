//! `enclii auth`: log in and create tokens.

use clap::Subcommand;
use serde_json::json;

use crate::conductor::client::Client;
use crate::conductor::config::{ConfigFile, Settings};
use crate::conductor::output::{cell, emit, outln, time};
use crate::conductor::{Failure, exit};

use super::{Done, read_hidden};

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

pub(super) async fn auth(settings: &Settings, command: AuthCommand) -> Done {
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
