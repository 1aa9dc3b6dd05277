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

#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
}

/// Shows whether a token is there, never the token.
pub fn redacted(token: &Option<String>) -> &'static str {
    if token.is_some() { "Some(<redacted>)" } else { "None" }
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("server", &self.server)
            .field("token", &format_args!("{}", redacted(&self.token)))
            .field("project", &self.project)
            .finish()
    }
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
            Ok(text) => {
                let file: Self = toml::from_str(&text).map_err(|e| {
                    Failure::validation(format!("{}: {}", path.display(), e.message()))
                        .hint("fix the file (see docs/cli.md for its format) or point ENCLII_CONFIG elsewhere")
                })?;
                file.warn_if_readable(path);
                Ok(file)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// A file with tokens that others may read: say so (it is the user's file to fix).
    fn warn_if_readable(&self, path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let has_token = self.profiles.values().any(|p| p.token.is_some());
        if let Ok(meta) = std::fs::metadata(path)
            && has_token
            && meta.permissions().mode() & 0o077 != 0
        {
            eprintln!(
                "warning: {} holds tokens but others may read it (mode {:o}): run `chmod 600 {}`",
                path.display(),
                meta.permissions().mode() & 0o777,
                path.display()
            );
        }
    }

    /// Writes the file (mode 0600 from its creation, its directory created 0700), replacing it
    /// atomically: a new file beside it, synced, renamed over it. A symlinked config file is
    /// replaced where the link points.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let text = toml::to_string_pretty(self).context("cannot write the config as TOML")?;
        let path = match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                std::fs::canonicalize(path).with_context(|| format!("cannot follow the link {}", path.display()))?
            }
            _ => path.to_path_buf(),
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        // A leftover of a crashed run may have any mode: never reuse it.
        let _ = std::fs::remove_file(&temporary);
        let written = (|| -> anyhow::Result<()> {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temporary)
                .with_context(|| format!("cannot write {}", temporary.display()))?;
            file.write_all(text.as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("cannot write {}", temporary.display()))?;
            std::fs::rename(&temporary, &path).with_context(|| format!("cannot replace {}", path.display()))?;
            // The rename is durable once the directory is.
            if let Ok(dir) = std::fs::File::open(dir) {
                let _ = dir.sync_all();
            }
            Ok(())
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        written
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

/// What a command runs with: flags and variables first, then the profile, then defaults. The
/// profile's token goes only to the profile's server.
#[derive(Clone)]
pub struct Settings {
    pub server: String,
    pub token: Option<String>,
    /// The token came from --token or ENCLII_TOKEN (not from the profile).
    pub token_given: bool,
    /// Set when the profile's token was held back because --server names another server.
    pub profile_server: Option<String>,
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
            .or_else(|| profile.server.clone())
            .unwrap_or_else(|| DEFAULT_SERVER.to_string())
            .trim_end_matches('/')
            .to_string();
        let given = global.token.clone().filter(|t| !t.is_empty());
        let profile_server = profile.server.as_deref().map(|s| s.trim_end_matches('/').to_string());
        // A token is a credential for one server: never send the profile's to another one (a
        // profile without a server names none, so its token goes wherever --server says).
        let (profile_token, held_back) = match (profile.token.filter(|t| !t.is_empty()), profile_server) {
            (Some(_), Some(other)) if other != server => (None, Some(other)),
            (token, _) => (token, None),
        };
        Ok(Settings {
            server,
            token_given: given.is_some(),
            profile_server: if given.is_some() { None } else { held_back },
            token: given.or(profile_token),
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

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("server", &self.server)
            .field("token", &format_args!("{}", redacted(&self.token)))
            .field("project", &self.project)
            .field("output", &self.output)
            .field("profile", &self.profile)
            .field("config_path", &self.config_path)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_token() {
        let profile = Profile {
            server: Some("http://x".into()),
            token: Some("enclii_pat_secret".into()),
            project: None,
        };
        let shown = format!(
            "{profile:?} {:?}",
            ConfigFile {
                default_profile: None,
                profiles: [("p".to_string(), profile.clone())].into(),
            }
        );
        assert!(
            !shown.contains("enclii_pat_secret") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn saved_file_is_0600_in_a_0700_directory_and_replaces_a_link_target() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("enclii-config-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("new").join("config.toml");
        let mut file = ConfigFile::default();
        file.profiles.insert(
            "default".into(),
            Profile {
                token: Some("t".into()),
                ..Default::default()
            },
        );
        file.save(&path).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.join("new")), 0o700);
        let link = dir.join("link.toml");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        file.save(&link).unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(
            std::fs::read_dir(dir.join("new")).unwrap().count(),
            1,
            "no temporary file left"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
