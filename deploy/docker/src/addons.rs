//! Add-ons on the Docker target: one container per add-on (`enclii-addon-<project>-<env>-<name>`)
//! from the official image's interface (`postgres`, `redis`), its data on a named volume, on the
//! environment's network under the alias `<name>.internal`, restarted by the engine.
//!
//! Everything the target does inside an add-on goes through `docker exec` with the image's own
//! clients (`pg_isready`, `psql`, `redis-cli`): no database driver in the worker, and the same
//! path serves any registry image that follows the official interface. Passwords reach `psql`
//! on its standard input and `redis-cli` in `REDISCLI_AUTH`, never in a command line; the Redis
//! ACL file holds only SHA-256 hashes.
//!
//! Logins alternate between two roles across rotations (`app`, `app_alt`): converging a new
//! generation sets the other role's password while the current one keeps working, and retiring
//! disables the old role (`NOLOGIN` / ACL `off`) and ends its sessions.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, PortBinding, RestartPolicy};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveVolumeOptionsBuilder};
use enclii_deploy_contract::error::{DeployError, Result};
use enclii_deploy_contract::model::{AddonKey, AddonWorkload, ServiceKey};
use enclii_domain::addons::{AddonCredentials, AddonEndpoint, AddonKind};
use sha2::{Digest, Sha256};
use tracing::info;

use crate::engine::{
    DockerTarget, LABEL_ENVIRONMENT, LABEL_MANAGED, LABEL_OWNER, LABEL_PROJECT, LABEL_ROLE, docker_error, is_not_found,
};

/// Names the add-on on its container and volume.
pub(crate) const LABEL_ADDON: &str = "dev.enclii.addon";
/// The most of an exec's output kept (the rest is dropped).
pub(crate) const OUTPUT_LIMIT: usize = 64 * 1024;
/// How long an add-on may take to accept connections (a first PostgreSQL start runs initdb).
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// How often a starting add-on is checked (each check is one `docker exec`).
const POLL: Duration = Duration::from_millis(200);

/// What one command in the add-on's container printed and how it ended.
pub(crate) struct Exec {
    pub code: i64,
    pub output: String,
}

pub(crate) fn container_name(key: &AddonKey) -> String {
    format!("enclii-addon-{}-{}-{}", key.project, key.environment, key.name)
}

fn volume_name(key: &AddonKey) -> String {
    format!("{}-data", container_name(key))
}

/// The environment's network is named by project and environment only.
fn network_key(key: &AddonKey) -> ServiceKey {
    ServiceKey::new(&key.project, &key.environment, &key.name)
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The Redis ACL rule of a login: every command and key, authenticated by the password's hash.
fn redis_acl(credentials: &AddonCredentials) -> String {
    format!(
        "{} on resetpass #{} ~* &* +@all",
        credentials.user,
        sha256_hex(&credentials.password)
    )
}

/// SQL that makes `credentials`' role log in with its password (a superuser, as the official
/// image's `POSTGRES_USER` is). Role names are Enclii's own and passwords alphanumeric.
fn postgres_login_sql(credentials: &AddonCredentials) -> String {
    let AddonCredentials { user, password, .. } = credentials;
    format!(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{user}') THEN CREATE ROLE \"{user}\"; \
         END IF; END $$;\nALTER ROLE \"{user}\" WITH LOGIN SUPERUSER PASSWORD '{password}';\n"
    )
}

impl DockerTarget {
    /// Runs `cmd` in `container` with `env` and `stdin`: its exit code and (the first 64 KiB of)
    /// its stdout and stderr, interleaved.
    pub(crate) async fn exec(
        &self,
        container: &str,
        cmd: &[&str],
        env: Vec<String>,
        stdin: Option<&[u8]>,
    ) -> Result<Exec> {
        let mut input = stdin;
        let source = input
            .as_mut()
            .map(|bytes| bytes as &mut (dyn tokio::io::AsyncRead + Send + Unpin));
        self.exec_streaming(container, cmd, env, source, None).await
    }

    /// Creates and starts the add-on's container unless it exists (started again if stopped).
    async fn ensure_addon_container(&self, addon: &AddonWorkload) -> Result<String> {
        let name = container_name(&addon.key);
        match self.docker.inspect_container(&name, None).await {
            Ok(inspect) => {
                if !inspect.state.and_then(|s| s.running).unwrap_or(false) {
                    self.docker
                        .start_container(&name, None)
                        .await
                        .map_err(|e| DeployError::docker(format!("starting {name}: {e}"), e))?;
                }
                return Ok(name);
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(docker_error("inspecting an add-on")(e)),
        }
        self.ensure_image(&addon.image).await?;
        let network = self.ensure_network(&network_key(&addon.key)).await?;
        let labels = HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_PROJECT.to_string(), addon.key.project.clone()),
            (LABEL_ENVIRONMENT.to_string(), addon.key.environment.clone()),
            (LABEL_ADDON.to_string(), addon.key.name.clone()),
            (LABEL_ROLE.to_string(), "addon".to_string()),
            (LABEL_OWNER.to_string(), self.owner()),
        ]);
        let port = addon.kind.port();
        let credentials = &addon.credentials;
        let (data_dir, env, cmd) = match addon.kind {
            AddonKind::Postgres => (
                "/var/lib/postgresql/data",
                vec![
                    format!("POSTGRES_USER={}", credentials.user),
                    format!("POSTGRES_PASSWORD={}", credentials.password),
                    format!("POSTGRES_DB={}", credentials.database.as_deref().unwrap_or("app")),
                ],
                None,
            ),
            // The ACL file is written once, holding hashes only; the image's entrypoint then
            // hands /data to the redis user and drops root.
            AddonKind::Redis => (
                "/data",
                vec![format!(
                    "ENCLII_ACL=user default off\nuser {}\n",
                    redis_acl(credentials)
                )],
                Some(vec![
                    "sh".to_string(),
                    "-c".to_string(),
                    format!(
                        "[ -s /data/users.acl ] || printf '%s' \"$ENCLII_ACL\" > /data/users.acl; {}\
                         exec docker-entrypoint.sh redis-server --aclfile /data/users.acl --appendonly yes",
                        crate::addon_backups::REDIS_RESTORE_ON_START
                    ),
                ]),
            ),
        };
        let body = ContainerCreateBody {
            image: Some(addon.image.clone()),
            env: Some(env),
            cmd,
            labels: Some(labels),
            exposed_ports: Some(vec![format!("{port}/tcp")]),
            host_config: Some(HostConfig {
                // Published on the host's loopback (as replicas are) for `enclii addons connect`
                // on the node; services use the network.
                port_bindings: Some(HashMap::from([(
                    format!("{port}/tcp"),
                    Some(vec![PortBinding {
                        host_ip: Some(self.config.publish_ip.to_string()),
                        host_port: Some(String::new()),
                    }]),
                )])),
                network_mode: Some(network.clone()),
                restart_policy: Some(RestartPolicy {
                    name: Some(bollard::models::RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                mounts: Some(vec![Mount {
                    target: Some(data_dir.to_string()),
                    source: Some(volume_name(&addon.key)),
                    typ: Some(MountType::VOLUME),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            networking_config: Some(Self::network_endpoint(
                &network,
                Some(&AddonEndpoint::on_network(&addon.key.name, addon.kind).host),
            )),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        match self.docker.create_container(Some(options), body).await {
            Ok(_) => {}
            // A concurrent attempt created it: start what is there.
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 409, .. }) => {}
            Err(e) => return Err(DeployError::docker(format!("creating {name}: {e}"), e)),
        }
        self.docker
            .start_container(&name, None)
            .await
            .map_err(|e| DeployError::docker(format!("starting {name}: {e}"), e))?;
        info!(addon = %addon.key, kind = %addon.kind, "add-on container started");
        Ok(name)
    }

    /// Polls until the server answers on its TCP port inside the container (a PostgreSQL being
    /// initialised listens on its socket only, so this is the final server).
    pub(crate) async fn wait_addon_up(&self, name: &str, kind: AddonKind) -> Result<()> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let probe = match kind {
                AddonKind::Postgres => {
                    self.exec(name, &["pg_isready", "-h", "127.0.0.1", "-q"], vec![], None)
                        .await
                }
                AddonKind::Redis => {
                    self.exec(name, &["redis-cli", "-h", "127.0.0.1", "PING"], vec![], None)
                        .await
                }
            };
            let up = |exec: &Exec| match kind {
                AddonKind::Postgres => exec.code == 0,
                // Without a login Redis answers NOAUTH: it is up.
                AddonKind::Redis => ["PONG", "NOAUTH", "WRONGPASS"].iter().any(|a| exec.output.contains(a)),
            };
            let last = match probe {
                Ok(exec) if up(&exec) => return Ok(()),
                Ok(exec) => format!("exit {}: {}", exec.code, exec.output),
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                let tail = self.log_tail(name).await;
                return Err(DeployError::Refused(format!(
                    "{name} did not accept connections within {} s ({last}){tail}",
                    READY_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Runs `work` (SQL for PostgreSQL; one `redis-cli` command per line for Redis) as the first
    /// of `logins` that works (the previous login during a rotation, else the current one).
    async fn admin(&self, name: &str, kind: AddonKind, logins: &[&AddonCredentials], work: &str) -> Result<()> {
        let mut last = String::new();
        for login in logins {
            match self.admin_as(name, kind, login, work).await? {
                Ok(()) => return Ok(()),
                Err(why) => last = format!("as `{}`: {why}", login.user),
            }
        }
        Err(DeployError::Refused(format!(
            "{name} refused an administrative command {last}"
        )))
    }

    async fn admin_as(
        &self,
        name: &str,
        kind: AddonKind,
        login: &AddonCredentials,
        work: &str,
    ) -> Result<std::result::Result<(), String>> {
        let failed = |exec: &Exec| {
            exec.code != 0
                || ["ERROR", "ERR ", "WRONGPASS", "NOAUTH"]
                    .iter()
                    .any(|e| exec.output.contains(e))
        };
        match kind {
            AddonKind::Postgres => {
                let database = login.database.as_deref().unwrap_or("app");
                let exec = self
                    .exec(
                        name,
                        &[
                            "psql",
                            "-v",
                            "ON_ERROR_STOP=1",
                            "-qAt",
                            "-U",
                            &login.user,
                            "-d",
                            database,
                        ],
                        vec![],
                        Some(work.as_bytes()),
                    )
                    .await?;
                Ok(if failed(&exec) {
                    Err(format!("exit {}: {}", exec.code, exec.output))
                } else {
                    Ok(())
                })
            }
            AddonKind::Redis => {
                for line in work.lines() {
                    let mut args = vec!["redis-cli", "--no-auth-warning", "--user", &login.user];
                    args.extend(line.split(' '));
                    let exec = self
                        .exec(name, &args, vec![format!("REDISCLI_AUTH={}", login.password)], None)
                        .await?;
                    if failed(&exec) {
                        let command = line.split(' ').take(2).collect::<Vec<_>>().join(" ");
                        return Ok(Err(format!("{command}: exit {}: {}", exec.code, exec.output)));
                    }
                }
                Ok(Ok(()))
            }
        }
    }

    /// Whether the current login works over TCP, as a service would connect.
    pub(crate) async fn login_works(&self, name: &str, kind: AddonKind, login: &AddonCredentials) -> Result<Exec> {
        match kind {
            AddonKind::Postgres => {
                let database = login.database.as_deref().unwrap_or("app");
                self.exec(
                    name,
                    &[
                        "psql",
                        "-h",
                        "127.0.0.1",
                        "-U",
                        &login.user,
                        "-d",
                        database,
                        "-tAc",
                        "SELECT 1",
                    ],
                    vec![format!("PGPASSWORD={}", login.password)],
                    None,
                )
                .await
            }
            AddonKind::Redis => {
                self.exec(
                    name,
                    &[
                        "redis-cli",
                        "--no-auth-warning",
                        "-h",
                        "127.0.0.1",
                        "--user",
                        &login.user,
                        "PING",
                    ],
                    vec![format!("REDISCLI_AUTH={}", login.password)],
                    None,
                )
                .await
            }
        }
    }

    pub(crate) async fn provision_addon_container(&self, addon: &AddonWorkload) -> Result<()> {
        let name = self.ensure_addon_container(addon).await?;
        self.wait_addon_up(&name, addon.kind).await?;
        let current = &addon.credentials;
        let logins: Vec<&AddonCredentials> = addon.previous.iter().chain(std::iter::once(current)).collect();
        let work = match addon.kind {
            AddonKind::Postgres => postgres_login_sql(current),
            AddonKind::Redis => format!("ACL SETUSER {}\nACL SAVE", redis_acl(current)),
        };
        self.admin(&name, addon.kind, &logins, &work).await?;
        self.await_login(&name, addon).await
    }

    /// Returns once the add-on accepts its current login over TCP, as a service would connect.
    pub(crate) async fn await_login(&self, name: &str, addon: &AddonWorkload) -> Result<()> {
        let current = &addon.credentials;
        // Right after the final start PostgreSQL may still say "starting up" for a moment.
        let mut last = String::new();
        for _ in 0..50 {
            let exec = self.login_works(name, addon.kind, current).await?;
            let ok = match addon.kind {
                AddonKind::Postgres => exec.code == 0 && exec.output == "1",
                AddonKind::Redis => exec.output == "PONG",
            };
            if ok {
                info!(addon = %addon.key, user = %current.user, "add-on ready");
                return Ok(());
            }
            last = exec.output;
            tokio::time::sleep(POLL).await;
        }
        Err(DeployError::Refused(format!(
            "{name} does not accept login `{}` after setting it: {last}",
            current.user
        )))
    }

    pub(crate) async fn retire_addon(&self, addon: &AddonWorkload, user: &str) -> Result<()> {
        if user == addon.credentials.user {
            return Ok(());
        }
        let name = container_name(&addon.key);
        let work = match addon.kind {
            AddonKind::Postgres => format!(
                "ALTER ROLE \"{user}\" WITH NOLOGIN PASSWORD NULL;\n\
                 SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = '{user}';\n"
            ),
            AddonKind::Redis => format!("ACL SETUSER {user} off resetpass\nACL SAVE\nCLIENT KILL USER {user}"),
        };
        self.admin(&name, addon.kind, &[&addon.credentials], &work).await?;
        info!(addon = %addon.key, %user, "previous add-on login retired");
        Ok(())
    }

    pub(crate) async fn addon_published_addr(&self, key: &AddonKey) -> Result<Option<std::net::SocketAddr>> {
        let name = container_name(key);
        match self.docker.inspect_container(&name, None).await {
            Ok(_) => self.published_addr(&name).await,
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(docker_error("inspecting an add-on")(e)),
        }
    }

    pub(crate) async fn remove_addon_container(&self, key: &AddonKey, keep_data: bool) -> Result<()> {
        self.remove_container(&container_name(key)).await?;
        if !keep_data {
            let options = RemoveVolumeOptionsBuilder::default().force(true).build();
            match self.docker.remove_volume(&volume_name(key), Some(options)).await {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(docker_error("removing an add-on's volume")(e)),
            }
        }
        self.remove_network_if_unused(&network_key(key)).await?;
        info!(addon = %key, keep_data, "add-on removed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_acl_files_and_command_lines() {
        let login = AddonCredentials {
            user: "app".into(),
            password: "s3cret".into(),
            database: None,
        };
        let acl = redis_acl(&login);
        assert!(!acl.contains("s3cret"));
        assert!(
            acl.starts_with("app on resetpass #") && acl.ends_with(" ~* &* +@all"),
            "{acl}"
        );
        assert_eq!(
            container_name(&AddonKey {
                project: "shop".into(),
                environment: "prod".into(),
                name: "db".into()
            }),
            "enclii-addon-shop-prod-db"
        );
    }
}
