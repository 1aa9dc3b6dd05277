//! Backups and restores of add-ons on the Docker target, streamed through `docker exec` with the
//! image's own tools: the dump never lands on the worker's disk and is never held in memory.
//!
//! - PostgreSQL: `pg_dump -Fc` out, `pg_restore --clean --if-exists --single-transaction` in
//!   (a failed restore changes nothing; objects the dump does not hold are left alone).
//! - Redis: `redis-cli --rdb` (written to a file in the container first: on standard output
//!   redis-cli 7.0 leaves the transfer's 40-byte EOF mark at the end of the RDB), then `cat`.
//!   A restore checks the RDB with `redis-check-rdb`, places it as `/data/restore.rdb` and
//!   restarts the container; the container's start script
//!   ([`REDIS_RESTORE_ON_START`]) makes it the base of a fresh append-only file, because Redis 7
//!   with `--appendonly yes` ignores `dump.rdb` at start.

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use enclii_deploy_contract::error::{DeployError, Result};
use enclii_deploy_contract::model::AddonWorkload;
use enclii_domain::addons::AddonKind;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::info;

use crate::addons::{Exec, OUTPUT_LIMIT, container_name};
use crate::engine::DockerTarget;

/// Part of the Redis container's start script: a complete `/data/restore.rdb` (renamed there
/// only after it passed `redis-check-rdb`) replaces the data as the base of a new append-only
/// file (the manifest format of Redis 7's multi-part AOF).
pub(crate) const REDIS_RESTORE_ON_START: &str = "if [ -s /data/restore.rdb ]; then \
     rm -rf /data/appendonlydir /data/dump.rdb && mkdir /data/appendonlydir && \
     mv /data/restore.rdb /data/appendonlydir/appendonly.aof.1.base.rdb && \
     : > /data/appendonlydir/appendonly.aof.1.incr.aof && \
     printf 'file appendonly.aof.1.base.rdb seq 1 type b\\nfile appendonly.aof.1.incr.aof seq 1 type i\\n' \
     > /data/appendonlydir/appendonly.aof.manifest; fi; ";

/// Takes the RDB into a file in the container, then prints it (see the module's note).
const REDIS_DUMP: &str = "f=/data/.enclii-backup.rdb; rm -f \"$f\"; \
     redis-cli --no-auth-warning --user \"$ENCLII_USER\" --rdb \"$f\" >&2 && cat \"$f\"; rc=$?; rm -f \"$f\"; exit $rc";

/// Receives an RDB on standard input and keeps it only if `redis-check-rdb` accepts it.
const REDIS_RECEIVE: &str = "p=/data/restore.rdb.part; cat > \"$p\" && \
     if out=$(redis-check-rdb \"$p\" 2>&1); then mv \"$p\" /data/restore.rdb; \
     else echo \"$out\" | tail -n 3 >&2; rm -f \"$p\"; exit 1; fi";

impl DockerTarget {
    /// Runs `cmd` in `container`, feeding `stdin` from `source` and streaming its standard
    /// output into `sink` (both optional); returns the exit code and (the first 64 KiB of) its
    /// standard error, plus its standard output when there is no sink.
    pub(crate) async fn exec_streaming(
        &self,
        container: &str,
        cmd: &[&str],
        env: Vec<String>,
        source: Option<&mut (dyn AsyncRead + Send + Unpin)>,
        mut sink: Option<&mut (dyn AsyncWrite + Send + Unpin)>,
    ) -> Result<Exec> {
        let options = CreateExecOptions {
            cmd: Some(cmd.iter().map(|c| c.to_string()).collect()),
            env: Some(env),
            attach_stdin: Some(source.is_some()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            ..Default::default()
        };
        let what = format!("running `{}` in {container}", cmd.first().copied().unwrap_or_default());
        let created = self
            .docker
            .create_exec(container, options)
            .await
            .map_err(|e| DeployError::docker(format!("{what}: {e}"), e))?;
        let started = self
            .docker
            .start_exec(&created.id, None)
            .await
            .map_err(|e| DeployError::docker(format!("{what}: {e}"), e))?;
        let StartExecResults::Attached {
            output: mut stream,
            mut input,
        } = started
        else {
            return Err(DeployError::docker_message(format!(
                "{what}: the engine did not attach"
            )));
        };
        let feed = async {
            if let Some(source) = source {
                tokio::io::copy(source, &mut input)
                    .await
                    .map_err(|e| DeployError::docker_message(format!("{what}: sending its input: {e}")))?;
                input.shutdown().await.ok();
            }
            drop(input);
            Ok::<_, DeployError>(())
        };
        let drain = async {
            let mut text = String::new();
            while let Some(chunk) = stream.next().await {
                match chunk.map_err(|e| DeployError::docker(format!("{what}: {e}"), e))? {
                    LogOutput::StdOut { message } if sink.is_some() => {
                        if let Some(sink) = sink.as_mut() {
                            sink.write_all(&message).await.map_err(|e| {
                                DeployError::docker_message(format!("{what}: passing on its output: {e}"))
                            })?;
                        }
                    }
                    other if text.len() < OUTPUT_LIMIT => text.push_str(&String::from_utf8_lossy(&other.into_bytes())),
                    _ => {}
                }
            }
            if let Some(sink) = sink.as_mut() {
                sink.shutdown()
                    .await
                    .map_err(|e| DeployError::docker_message(format!("{what}: closing its output: {e}")))?;
            }
            Ok::<_, DeployError>(text)
        };
        let ((), text) = tokio::try_join!(feed, drain)?;
        let inspect = self
            .docker
            .inspect_exec(&created.id)
            .await
            .map_err(|e| DeployError::docker(format!("{what}: {e}"), e))?;
        Ok(Exec {
            code: inspect.exit_code.unwrap_or(-1),
            output: text.trim().to_string(),
        })
    }

    pub(crate) async fn backup_addon_container(
        &self,
        addon: &AddonWorkload,
        sink: &mut (dyn AsyncWrite + Send + Unpin),
    ) -> Result<()> {
        let name = container_name(&addon.key);
        let login = &addon.credentials;
        let exec = match addon.kind {
            AddonKind::Postgres => {
                let database = login.database.as_deref().unwrap_or("app");
                let cmd = ["pg_dump", "-Fc", "-U", login.user.as_str(), "-d", database];
                self.exec_streaming(&name, &cmd, vec![], None, Some(sink)).await?
            }
            AddonKind::Redis => {
                let env = vec![
                    format!("ENCLII_USER={}", login.user),
                    format!("REDISCLI_AUTH={}", login.password),
                ];
                self.exec_streaming(&name, &["sh", "-c", REDIS_DUMP], env, None, Some(sink))
                    .await?
            }
        };
        if exec.code != 0 {
            return Err(DeployError::Refused(format!(
                "the backup tool in {name} failed (exit {}): {}",
                exec.code,
                last_lines(&exec.output)
            )));
        }
        info!(addon = %addon.key, "add-on backed up");
        Ok(())
    }

    pub(crate) async fn restore_addon_container(
        &self,
        addon: &AddonWorkload,
        source: &mut (dyn AsyncRead + Send + Unpin),
    ) -> Result<()> {
        let name = container_name(&addon.key);
        let login = &addon.credentials;
        let exec = match addon.kind {
            AddonKind::Postgres => {
                let database = login.database.as_deref().unwrap_or("app");
                let cmd = [
                    "pg_restore",
                    "--clean",
                    "--if-exists",
                    "--no-owner",
                    "--no-privileges",
                    "--single-transaction",
                    "--exit-on-error",
                    "-U",
                    login.user.as_str(),
                    "-d",
                    database,
                ];
                self.exec_streaming(&name, &cmd, vec![], Some(source), None).await?
            }
            AddonKind::Redis => {
                self.exec_streaming(&name, &["sh", "-c", REDIS_RECEIVE], vec![], Some(source), None)
                    .await?
            }
        };
        if exec.code != 0 {
            return Err(DeployError::Refused(format!(
                "restoring into {name} failed (exit {}), its data is unchanged: {}",
                exec.code,
                last_lines(&exec.output)
            )));
        }
        if addon.kind == AddonKind::Redis {
            let options = bollard::query_parameters::RestartContainerOptionsBuilder::default()
                .t(10)
                .build();
            self.docker
                .restart_container(&name, Some(options))
                .await
                .map_err(|e| DeployError::docker(format!("restarting {name} to load the restored data: {e}"), e))?;
            self.wait_addon_up(&name, addon.kind).await?;
        }
        self.await_login(&name, addon).await?;
        info!(addon = %addon.key, "add-on restored");
        Ok(())
    }
}

/// The last lines of a tool's error output (where it says what went wrong).
fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" / ")
}
