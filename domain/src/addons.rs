//! Add-ons: databases a project environment runs beside its services (PostgreSQL, Redis), what
//! a user may ask for, the credentials Enclii generates for them and the variables a service
//! reads to connect (`DATABASE_URL`, `PGHOST`, … and `REDIS_URL`, `REDISHOST`, …).

use std::fmt;

use serde::{Deserialize, Serialize};

/// What runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddonKind {
    Postgres,
    Redis,
}

impl AddonKind {
    pub const ALL: [AddonKind; 2] = [AddonKind::Postgres, AddonKind::Redis];

    pub fn as_str(self) -> &'static str {
        match self {
            AddonKind::Postgres => "postgres",
            AddonKind::Redis => "redis",
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| format!("unknown add-on kind `{text}`; expected one of: postgres, redis"))
    }

    /// The major versions Enclii provisions; the first is the default.
    pub fn versions(self) -> &'static [&'static str] {
        match self {
            AddonKind::Postgres => &["16", "17", "15", "14", "13"],
            AddonKind::Redis => &["7", "6"],
        }
    }

    pub fn default_version(self) -> &'static str {
        self.versions()[0]
    }

    /// The official image of `version` (the default when the user names none).
    pub fn default_image(self, version: &str) -> String {
        format!("{}:{version}", self.as_str())
    }

    /// The port it listens on inside its network.
    pub fn port(self) -> u16 {
        match self {
            AddonKind::Postgres => 5432,
            AddonKind::Redis => 6379,
        }
    }

    /// The keys `fromAddon.key` may name.
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            AddonKind::Postgres => &["url", "host", "port", "user", "password", "database"],
            AddonKind::Redis => &["url", "host", "port", "user", "password"],
        }
    }

    /// Checks a version the user asked for.
    pub fn check_version(self, version: &str) -> Result<(), String> {
        if self.versions().contains(&version) {
            return Ok(());
        }
        Err(format!(
            "{} version `{version}` is not offered; choose one of: {}",
            self.as_str(),
            self.versions().join(", ")
        ))
    }

    /// The backup format: `pg_dump`'s custom format, or Redis's RDB snapshot.
    pub fn backup_format(self) -> &'static str {
        match self {
            AddonKind::Postgres => "pgdump",
            AddonKind::Redis => "rdb",
        }
    }
}

impl fmt::Display for AddonKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who connects and with what. Never logged (`Debug` hides the password).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddonCredentials {
    pub user: String,
    pub password: String,
    /// PostgreSQL's database (Redis has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

impl fmt::Debug for AddonCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddonCredentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("database", &self.database)
            .finish()
    }
}

/// The login role of rotation `generation`: rotations alternate between two roles, so the
/// previous credentials keep working while services roll to the new ones (the "alternating
/// users" strategy), then are retired.
pub fn generation_user(generation: i64) -> String {
    if generation % 2 == 1 { "app" } else { "app_alt" }.to_string()
}

impl AddonCredentials {
    /// Fresh credentials of rotation `generation`: a 32-character random password.
    pub fn generate(kind: AddonKind, generation: i64) -> Self {
        Self {
            user: generation_user(generation),
            password: random_password(),
            database: (kind == AddonKind::Postgres).then(|| "app".to_string()),
        }
    }
}

/// 32 characters of `[A-Za-z0-9]` (~190 bits), safe in a URL without escaping.
pub fn random_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..32)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Where a service reaches an add-on: the host on the environment's network and the port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddonEndpoint {
    pub host: String,
    pub port: u16,
}

impl AddonEndpoint {
    /// Where an add-on answers on its environment's network on the Docker target (and by
    /// default): `<name>.internal` at the kind's port.
    pub fn on_network(name: &str, kind: AddonKind) -> Self {
        Self {
            host: format!("{name}.internal"),
            port: kind.port(),
        }
    }
}

/// The value of `key` (one of [`AddonKind::keys`]) for a service connecting at `endpoint`.
pub fn connection_value(
    kind: AddonKind,
    endpoint: &AddonEndpoint,
    credentials: &AddonCredentials,
    key: &str,
) -> Option<String> {
    let AddonEndpoint { host, port } = endpoint;
    let AddonCredentials { user, password, .. } = credentials;
    let database = credentials.database.as_deref().unwrap_or("");
    Some(match (kind, key) {
        (AddonKind::Postgres, "url") => format!("postgres://{user}:{password}@{host}:{port}/{database}"),
        // redis-cli and most clients want a user in the URL with ACLs.
        (AddonKind::Redis, "url") => format!("redis://{user}:{password}@{host}:{port}"),
        (_, "host") => host.clone(),
        (_, "port") => port.to_string(),
        (_, "user") => user.clone(),
        (_, "password") => password.clone(),
        (AddonKind::Postgres, "database") => database.to_string(),
        _ => return None,
    })
}

/// The variables `envFrom: [{addon: …}]` gives, as the official images' clients read them
/// (and as Railway names them): `(variable, key)`.
pub fn standard_variables(kind: AddonKind) -> &'static [(&'static str, &'static str)] {
    match kind {
        AddonKind::Postgres => &[
            ("DATABASE_URL", "url"),
            ("PGHOST", "host"),
            ("PGPORT", "port"),
            ("PGUSER", "user"),
            ("PGPASSWORD", "password"),
            ("PGDATABASE", "database"),
        ],
        AddonKind::Redis => &[
            ("REDIS_URL", "url"),
            ("REDISHOST", "host"),
            ("REDISPORT", "port"),
            ("REDISUSER", "user"),
            ("REDISPASSWORD", "password"),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> AddonCredentials {
        AddonCredentials {
            user: "app".into(),
            password: "pw".into(),
            database: Some("app".into()),
        }
    }

    #[test]
    fn urls_carry_what_clients_need() {
        let at = AddonEndpoint {
            host: "db.internal".into(),
            port: 5432,
        };
        assert_eq!(
            connection_value(AddonKind::Postgres, &at, &creds(), "url").unwrap(),
            "postgres://app:pw@db.internal:5432/app"
        );
        let redis = AddonCredentials {
            database: None,
            ..creds()
        };
        assert_eq!(
            connection_value(AddonKind::Redis, &at, &redis, "url").unwrap(),
            "redis://app:pw@db.internal:5432"
        );
        assert_eq!(connection_value(AddonKind::Redis, &at, &redis, "database"), None);
        for kind in AddonKind::ALL {
            for key in kind.keys() {
                assert!(connection_value(kind, &at, &creds(), key).is_some(), "{kind} {key}");
            }
            for (_, key) in standard_variables(kind) {
                assert!(kind.keys().contains(key));
            }
        }
    }

    #[test]
    fn versions_and_kinds_are_named_when_refused() {
        assert_eq!(AddonKind::parse("redis"), Ok(AddonKind::Redis));
        assert!(AddonKind::parse("mysql").unwrap_err().contains("postgres, redis"));
        assert!(AddonKind::Postgres.check_version("16").is_ok());
        assert!(AddonKind::Postgres.check_version("9").unwrap_err().contains("16, 17"));
        assert_eq!(AddonKind::Redis.default_image("7"), "redis:7");
    }

    #[test]
    fn rotations_alternate_roles_and_passwords_are_fresh() {
        assert_eq!(generation_user(1), "app");
        assert_eq!(generation_user(2), "app_alt");
        assert_eq!(generation_user(3), "app");
        let (a, b) = (random_password(), random_password());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(!format!("{:?}", creds()).contains("pw\""));
    }
}

/// The most backups an add-on's schedule keeps.
pub const MAX_BACKUPS_KEPT: u32 = 366;

/// An add-on's backup schedule: a 5-field cron expression (UTC) and how many completed backups
/// to keep (the oldest beyond that are deleted after each new one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupPolicy {
    /// e.g. `0 3 * * *` (every day at 03:00 UTC).
    pub schedule: String,
    /// Completed backups to keep, 1 to 366 (default 7).
    #[serde(default = "default_keep")]
    pub keep: u32,
}

fn default_keep() -> u32 {
    7
}

impl BackupPolicy {
    /// Checks the schedule and the count; the error names the field and what to write.
    pub fn validate(&self) -> Result<(), String> {
        crate::spec::validate_cron(&self.schedule).map_err(|e| format!("backup.schedule: {e}"))?;
        if !(1..=MAX_BACKUPS_KEPT).contains(&self.keep) {
            return Err(format!(
                "backup.keep: {} is out of range; keep between 1 and {MAX_BACKUPS_KEPT} backups",
                self.keep
            ));
        }
        Ok(())
    }
}
