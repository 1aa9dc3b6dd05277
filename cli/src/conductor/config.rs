//! The config file: named profiles of server, token and project, at `$ENCLII_CONFIG`, else
//! `$XDG_CONFIG_HOME/enclii/config.toml`, else `~/.config/enclii/config.toml`. It holds tokens,
//! so it is written with mode 0600.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::{Failure, Global, OutputFormat};

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";
const DEFAULT_PROFILE: &str = "default";

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The profile used without `--profile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_profile: Option<String>,
    #[serde(default)]
    pub profiles: BTreeMap<String, Profile>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

pub fn path() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("ENCLII_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(dir).join("enclii").join("config.toml"));
    }
    let home = std::env::var_os("HOME")
        .filter(|p| !p.is_empty())
        .ok_or_else(|| anyhow::anyhow!("HOME is not set: set ENCLII_CONFIG to the config file's path"))?;
    Ok(PathBuf::from(home).join(".config").join("enclii").join("config.toml"))
}

impl ConfigFile {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| {
                Failure::validation(format!("{}: {}", path.display(), e.message()))
                    .hint("fix the file (see docs/cli.md for its format) or point ENCLII_CONFIG elsewhere")
                    .into()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Writes the file (mode 0600, its directory created), replacing it atomically.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let text = toml::to_string_pretty(self).context("cannot write the config as TOML")?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let temporary = path.with_extension(format!("toml.{}.tmp", std::process::id()));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .with_context(|| format!("cannot write {}", temporary.display()))?;
        // An existing file keeps the mode it was created with: make sure of 0600.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path).with_context(|| format!("cannot replace {}", path.display()))?;
        Ok(())
    }

    /// The profile `--profile`/`ENCLII_PROFILE` names, else the default one.
    pub fn profile_name(&self, global: &Global) -> String {
        global
            .profile
            .clone()
            .or_else(|| self.default_profile.clone())
            .unwrap_or_else(|| DEFAULT_PROFILE.to_string())
    }
}

/// What a command runs with: flags and variables first, then the profile, then defaults.
#[derive(Clone, Debug)]
pub struct Settings {
    pub server: String,
    pub token: Option<String>,
    pub project: Option<String>,
    pub output: OutputFormat,
    pub progress: bool,
    pub profile: String,
    pub config_path: PathBuf,
}

impl Settings {
    /// `new_profile`: the command creates the profile (`auth login`), so it need not exist.
    pub fn resolve(global: &Global, new_profile: bool) -> anyhow::Result<Self> {
        let config_path = path()?;
        let file = ConfigFile::load(&config_path)?;
        let profile_name = file.profile_name(global);
        let profile = file.profiles.get(&profile_name).cloned().unwrap_or_default();
        if global.profile.is_some() && !new_profile && !file.profiles.contains_key(&profile_name) {
            return Err(
                Failure::validation(format!("no profile `{profile_name}` in {}", config_path.display()))
                    .hint(format!(
                        "create it with `enclii auth login --profile {profile_name} --server URL`"
                    ))
                    .into(),
            );
        }
        let server = global
            .server
            .clone()
            .or(profile.server)
            .unwrap_or_else(|| DEFAULT_SERVER.to_string());
        Ok(Settings {
            server: server.trim_end_matches('/').to_string(),
            token: global.token.clone().or(profile.token).filter(|t| !t.is_empty()),
            project: global.project.clone().or(profile.project),
            output: global.output,
            progress: global.output == OutputFormat::Text && !global.no_progress,
            profile: profile_name,
            config_path,
        })
    }

    /// The project the command acts on, or a validation failure saying how to name one.
    pub fn project(&self) -> Result<String, Failure> {
        self.project.clone().ok_or_else(|| {
            Failure::validation("no project given")
                .hint("pass --project, set ENCLII_PROJECT, or store one with `enclii auth login --project …`")
        })
    }
}
