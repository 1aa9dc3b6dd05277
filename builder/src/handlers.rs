//! The job handlers of the build steps, and what every step does around its work: find the
//! release (its run's, `run.rs`), record the step's start and end, keep its log, archive the log, and on the last failed
//! attempt fail the release with the step's message.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use bollard::Docker;
use enclii_domain::jobs;
use enclii_domain::pipeline::RunSubject;
use enclii_domain::secrets::is_platform_secret;
use enclii_domain::spec::{BuildType, ServiceSpec};
use enclii_signing::{Secret, SigningKey};
use enclii_store::{Artefact, Release, ReleaseOutcome, SecretScope, StepEnd, StepStatus, Store};
use enclii_worker::{JobContext, JobError, Registry, TypedHandler};

use crate::run::{RECORD_WAIT, StepRelease, release_for_step, stop_rest_of_run};
use crate::workspace::{Workspace, contained};
use crate::{ArtefactStore, BuildConfig, JobLog, StepError, detect, docker, git, lockfiles, sbom};

/// The build steps' shared state: one per worker process.
pub struct BuildSteps {
    store: Arc<Store>,
    config: BuildConfig,
    artefacts: ArtefactStore,
    docker: Docker,
}

/// Registers the `clone`, `build`, `push`, `sbom` and `sign` handlers.
pub fn register(registry: &mut Registry, steps: Arc<BuildSteps>) {
    registry
        .register_typed::<jobs::Clone, _>(Steps(steps.clone()))
        .register_typed::<jobs::Build, _>(Steps(steps.clone()))
        .register_typed::<jobs::Push, _>(Steps(steps.clone()))
        .register_typed::<jobs::Sbom, _>(Steps(steps.clone()))
        .register_typed::<jobs::Sign, _>(Steps(steps));
}

struct Steps(Arc<BuildSteps>);

/// What a step's work produced: a short result for the step's record and its artefact, if any.
struct StepDone {
    detail: String,
    artefact: Option<Artefact>,
}

impl StepDone {
    fn detail(detail: String) -> Self {
        StepDone { detail, artefact: None }
    }
}

/// Sets the flag when dropped: a blocking git transfer stops when its job's future goes away.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Marks a started step as stopped when its future is dropped before it finished (the pool aborts
/// a job's task on cancellation, on the kind's timeout and at the end of a shutdown's grace).
struct StepGuard {
    store: Arc<Store>,
    release: i64,
    step: &'static str,
    /// (job id, attempt): only this attempt's row is touched.
    attempt: (i64, i32),
    finished: bool,
}

impl Drop for StepGuard {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let (store, release, step, attempt) = (self.store.clone(), self.release, self.step, self.attempt);
        tokio::spawn(async move {
            let detail = "stopped before it finished (cancelled, timed out, or its worker shut down)";
            let end = StepEnd {
                step,
                status: StepStatus::Failed,
                detail: Some(detail),
                log_uri: None,
                artefact: None,
            };
            let _ = store.finish_release_step(release, attempt, &end).await;
        });
    }
}

/// A Lockbox secret for the release's service, from the narrowest scope that has it: the service
/// in the release's environment, the service, the environment, the project.
pub async fn lockbox_secret(store: &Store, release: &Release, name: &str) -> Result<Option<Secret>, StepError> {
    let scope = |environment: Option<&str>, service: Option<&str>| SecretScope {
        project: release.project.clone(),
        environment: environment.map(str::to_string),
        service: service.map(str::to_string),
    };
    let env = Some(release.environment.as_str());
    let service = Some(release.service.as_str());
    // Platform secrets are reserved to the project and environment scopes: a service-scoped one
    // (set before that rule, or directly in the database) is never read.
    let service_scopes = if is_platform_secret(name) {
        vec![]
    } else {
        vec![scope(env, service), scope(None, service)]
    };
    for scope in service_scopes.into_iter().chain([scope(env, None), scope(None, None)]) {
        if let Some(value) = store.reveal_secret(&scope, name).await? {
            let value = String::from_utf8(value)
                .map_err(|_| StepError::fatal(format!("secret {name} is not UTF-8 text; set it again as text")))?;
            return Ok(Some(Secret::new(value)));
        }
    }
    Ok(None)
}

/// The project's own signing key (secrets `COSIGN_PRIVATE_KEY`, `COSIGN_PASSWORD`), if it set one:
/// `sign` signs with it and the deploy policy verifies with it.
pub async fn project_signing_key(store: &Store, release: &Release) -> Result<Option<SigningKey>, StepError> {
    let Some(pem) = lockbox_secret(store, release, "COSIGN_PRIVATE_KEY").await? else {
        return Ok(None);
    };
    let password = lockbox_secret(store, release, "COSIGN_PASSWORD").await?;
    SigningKey::from_pem(pem.expose().as_bytes(), password.as_ref())
        .map(Some)
        .map_err(|e| StepError::fatal(format!("the project secret COSIGN_PRIVATE_KEY is unusable: {e}")))
}

/// The run a release was loaded for (steps only see releases found by their run).
fn run_of(release: &Release) -> i64 {
    release.pipeline_id.unwrap_or_default()
}

/// The engine-local tag `build` gives a release's image.
fn local_tag(release: &Release) -> String {
    format!(
        "enclii-build/{}/{}:release-{}",
        release.project, release.service, release.id
    )
}

fn source_key(release: &Release) -> String {
    format!(
        "sources/{}/{}/{}-{}.tar.gz",
        release.project, release.service, release.id, release.git_sha
    )
}

use enclii_domain::image::pinned;

impl BuildSteps {
    /// Connects to the artefact store (creating its bucket) and the Docker engine.
    pub async fn new(store: Arc<Store>, config: BuildConfig) -> Result<Self, StepError> {
        let artefacts = ArtefactStore::connect(&config.artefacts).await?;
        let docker = docker::connect(&config)?;
        std::fs::create_dir_all(&config.workspace_root).map_err(|e| {
            StepError::fatal(format!(
                "cannot create the build workspace root {}: {e}",
                config.workspace_root.display()
            ))
        })?;
        Ok(BuildSteps {
            store,
            config,
            artefacts,
            docker,
        })
    }

    /// Runs one step of a release's pipeline around `work`, which returns the step's detail.
    /// Deletes archived step logs and source archives older than the retention; SBOMs stay
    /// (a release's inventory lives as long as the release). Returns how many went.
    pub async fn prune_artefacts(&self) -> Result<usize, StepError> {
        self.artefacts
            .prune(&["logs/", "sources/"], self.config.artefact_retention)
            .await
            .map_err(StepError::from)
    }

    /// `run` is what the step's payload says its run builds: the release is the run's only if it
    /// is that service and commit ([`release_for_step`]).
    async fn step<F, Fut>(&self, ctx: &JobContext, step: &'static str, run: RunSubject, work: F) -> Result<(), JobError>
    where
        F: FnOnce(Release, JobLog) -> Fut,
        Fut: Future<Output = Result<StepDone, StepError>>,
    {
        let job = &ctx.job;
        let Some(pipeline) = job.pipeline else {
            return Err(JobError::abort(format!(
                "a `{step}` job runs as a step of a release's pipeline; build a commit (POST /v1/projects/{{p}}/services/{{s}}/releases) instead of enqueueing it alone"
            )));
        };
        let release = match release_for_step(&self.store, pipeline, job, &run, RECORD_WAIT).await {
            Ok(StepRelease::Work(release)) => *release,
            Ok(StepRelease::Skip { reason, stop_run }) => {
                tracing::info!(pipeline, step, %reason, "step skipped");
                if stop_run && let Err(e) = stop_rest_of_run(self.store.queue().as_ref(), pipeline, job.id).await {
                    tracing::warn!(pipeline, error = %e, "could not stop the rest of a run without a release");
                }
                return Ok(());
            }
            Err(e) => return Err(StepError::from(e).into_job_error()),
        };
        let attempt = job.attempt as i32;
        self.store
            .start_release_step(release.id, step, job.id, attempt)
            .await
            .map_err(|e| StepError::from(e).into_job_error())?;
        let mut guard = StepGuard {
            store: self.store.clone(),
            release: release.id,
            step,
            attempt: (job.id, attempt),
            finished: false,
        };
        // The registry password is masked from the start; each step adds what it reveals.
        let known = self
            .config
            .registry
            .password
            .iter()
            .map(|p| p.expose().to_string())
            .collect();
        let writer = JobLog::open(self.store.clone(), job.id, known)
            .await
            .map_err(|e| StepError::from(e).into_job_error())?;
        let log = writer.log().clone();
        log.line(format!(
            "== {step} · release {} of {}/{} at {} · attempt {}/{}",
            release.id, release.project, release.service, release.git_sha, job.attempt, job.policy.max_attempts
        ));
        let started = Instant::now();
        // Failure messages are stored and shown like log lines: mask them the same way.
        let result = work(release.clone(), log.clone()).await.map_err(|e| StepError {
            message: log.redact(&e.message),
            ..e
        });
        match &result {
            Ok(done) => log.line(format!(
                "== {step} done in {} ms: {}",
                started.elapsed().as_millis(),
                done.detail
            )),
            Err(e) => log.line(format!(
                "== {step} failed after {} ms: {}",
                started.elapsed().as_millis(),
                e.message
            )),
        }
        drop(log);
        let text = writer.finish().await;
        let key = format!(
            "logs/{}/{}/{step}-job{}-attempt{}.log",
            release.project, release.id, job.id, job.attempt
        );
        let log_uri = match self
            .artefacts
            .put(&key, text.into_bytes(), "text/plain; charset=utf-8")
            .await
        {
            Ok(uri) => Some(uri),
            Err(e) => {
                tracing::warn!(error = %e, "could not archive a step log (its lines stay in the database)");
                None
            }
        };
        guard.finished = true;
        let attempt = (job.id, attempt);
        // The step ends and its artefact is recorded in one transaction (the release may become
        // ready there); if that is refused (a newer run took the release over), the step failed.
        let error = match result {
            Ok(done) => {
                let end = StepEnd {
                    step,
                    status: StepStatus::Succeeded,
                    detail: Some(&done.detail),
                    log_uri: log_uri.as_deref(),
                    artefact: done.artefact.as_ref().map(|a| (run_of(&release), a)),
                };
                match self.store.finish_release_step(release.id, attempt, &end).await {
                    Ok(()) => return Ok(()),
                    Err(e) => StepError::from(e),
                }
            }
            Err(e) => e,
        };
        let end = StepEnd {
            step,
            status: StepStatus::Failed,
            detail: Some(&error.message),
            log_uri: log_uri.as_deref(),
            artefact: None,
        };
        self.store
            .finish_release_step(release.id, attempt, &end)
            .await
            .map_err(|e| StepError::from(e).into_job_error())?;
        if !error.retryable || ctx.is_last_attempt() {
            let outcome = ReleaseOutcome {
                failure: Some(error.message.clone()),
                ..Default::default()
            };
            if let Err(e) = self.store.finish_release(release.id, &outcome).await {
                tracing::warn!(release = release.id, error = %e, "could not mark the release failed");
            }
        }
        Err(error.into_job_error())
    }

    async fn secret(&self, release: &Release, name: &str) -> Result<Option<Secret>, StepError> {
        lockbox_secret(&self.store, release, name).await
    }

    /// The platform's git token, for a clone of `repository` by `project`: only to the hosts it
    /// is for, not to any URL a spec names, and only for a repository the project holds (its
    /// claim or a grant), never for another project's.
    async fn platform_git_token(&self, project: &str, repository: &str) -> Result<Option<Secret>, StepError> {
        let Some(token) = &self.config.git_token else {
            return Ok(None);
        };
        let host = git::host(repository);
        if !self
            .config
            .git_token_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(&host))
        {
            return Ok(None);
        }
        let key = enclii_domain::pipeline::repository_key(repository);
        Ok(self.store.holds_repository(project, &key).await?.then(|| token.clone()))
    }

    async fn spec(&self, release: &Release) -> Result<ServiceSpec, StepError> {
        let service = self.store.service(&release.project, &release.service).await?;
        serde_json::from_value(service.spec_json()).map_err(|e| {
            StepError::fatal(format!(
                "the service's stored spec is unreadable ({e}); apply the Service Spec again"
            ))
        })
    }

    async fn unpack_source(&self, release: &Release, into: &Path) -> Result<PathBuf, StepError> {
        let archive = self.artefacts.get(&source_key(release)).await?;
        let dir = into.join("src");
        std::fs::create_dir_all(&dir).map_err(|e| StepError::transient(format!("workspace: {e}")))?;
        let target = dir.clone();
        tokio::task::spawn_blocking(move || git::unpack(&archive, &target))
            .await
            .map_err(|e| StepError::transient(format!("unpacking the source: {e}")))??;
        Ok(dir)
    }

    // --- the steps ---------------------------------------------------------------------------

    async fn clone_commit(
        &self,
        job: &jobs::Clone,
        ctx: &JobContext,
        release: Release,
        log: JobLog,
    ) -> Result<StepDone, StepError> {
        let token = match self.secret(&release, "GIT_TOKEN").await? {
            Some(token) => Some(token),
            None => self.platform_git_token(&release.project, &job.repository).await?,
        };
        if let Some(token) = &token {
            log.mask(token.expose());
        }
        let workspace = Workspace::create(&self.config.workspace_root, ctx.job.id, ctx.job.attempt)?;
        let dir = workspace.path().join("src");
        let cancelled = Arc::new(AtomicBool::new(false));
        let _stop_on_drop = CancelOnDrop(cancelled.clone());
        let (repository, commit, branch) = (job.repository.clone(), job.commit.clone(), job.branch.clone());
        let schemes = self.config.allowed_git_schemes.clone();
        let (fetch_log, fetch_dir, flag) = (log.clone(), dir.clone(), cancelled.clone());
        let mut fetch = tokio::task::spawn_blocking(move || {
            let request = git::CloneRequest {
                repository: &repository,
                commit: &commit,
                branch: branch.as_deref(),
                token: token.as_ref().map(|t| t.expose()),
                allowed_schemes: &schemes,
            };
            let sha = git::fetch_commit(&request, &fetch_dir, &fetch_log, flag)?;
            let archive = git::archive_tree(&fetch_dir)?;
            Ok::<_, StepError>((sha, archive))
        });
        let (sha, archive) = tokio::select! {
            done = &mut fetch => done.map_err(|e| StepError::transient(format!("clone failed: {e}")))??,
            _ = tokio::time::sleep(self.config.clone_timeout) => {
                cancelled.store(true, Ordering::Relaxed);
                // The transfer stops at its next progress callback; do not wait on a dead server.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(10), fetch).await;
                return Err(StepError::transient(format!(
                    "clone failed: timed out after {}s fetching {}; is the repository very large or the server slow?",
                    self.config.clone_timeout.as_secs(), git::redact_url(&job.repository)
                )));
            }
        };
        let size = archive.len();
        let uri = self
            .artefacts
            .put(&source_key(&release), archive, "application/gzip")
            .await?;
        Ok(StepDone::detail(format!("{sha}: {size} bytes archived to {uri}")))
    }

    async fn build_image(&self, ctx: &JobContext, release: Release, log: JobLog) -> Result<StepDone, StepError> {
        let workspace = Workspace::create(&self.config.workspace_root, ctx.job.id, ctx.job.attempt)?;
        let src = self.unpack_source(&release, workspace.path()).await?;
        let spec = self.spec(&release).await?.spec.build;
        let context = contained(&src, &spec.context, "build context")?;
        let detected = match spec.build_type {
            BuildType::Auto => true,
            // The default name missing: try detection before failing.
            BuildType::Dockerfile => spec.dockerfile == "Dockerfile" && !src.join("Dockerfile").exists(),
        };
        let (dockerfile, dockerfile_name) = if detected {
            let (kind, text) = detect::detect_dockerfile(&context).ok_or_else(|| {
                StepError::fatal(format!(
                    "build failed: no Dockerfile at `{}` and nothing to detect a build from (Cargo.toml, go.mod or package.json in `{}`); add a Dockerfile or set spec.build.dockerfile",
                    spec.dockerfile, spec.context
                ))
            })?;
            log.line(format!(
                "no Dockerfile: detected a {kind} project; building with a generated Dockerfile"
            ));
            let path = workspace.path().join("Dockerfile.detected");
            std::fs::write(&path, &text).map_err(|e| StepError::transient(format!("workspace: {e}")))?;
            (path, "Dockerfile (generated)".to_string())
        } else {
            (
                contained(&src, &spec.dockerfile, "Dockerfile")?,
                spec.dockerfile.clone(),
            )
        };
        let dockerfile_text = std::fs::read_to_string(&dockerfile).unwrap_or_default();
        let secrets = self
            .build_secrets(&release, &spec.secrets, workspace.path(), &log)
            .await?;
        // A tag of this release's own: releases of one commit for two environments share the
        // registry tag, and `push` gives it to exactly this build's image just before pushing.
        let tag = local_tag(&release);
        let iidfile = workspace.path().join("image.id");
        if let Some(applied) = crate::limits::apply(&self.config).map_err(StepError::fatal)? {
            log.line(applied);
        }
        let labels = vec![
            ("org.opencontainers.image.revision".into(), release.git_sha.clone()),
            (
                "org.opencontainers.image.source".into(),
                git::redact_url(&release.repository),
            ),
            ("dev.enclii.release".into(), release.id.to_string()),
        ];
        let request = docker::BuildRequest {
            dockerfile: &dockerfile,
            context: &context,
            tag: &tag,
            args: &spec.args,
            secrets: &secrets,
            labels,
            iidfile: &iidfile,
            dockerfile_name: &dockerfile_name,
            dockerfile_text: &dockerfile_text,
        };
        log.line(format!("building {tag} with BuildKit on {}", self.config.docker_host));
        // Our own deadline ends before the kind's, so a timed-out build is recorded, not just dropped.
        let limit = ctx
            .job
            .policy
            .timeout
            .saturating_sub(std::time::Duration::from_secs(60));
        let timeout = self.config.build_timeout.min(limit);
        let image_id = docker::build(&self.config, timeout, &request, &log, &ctx.cancel).await?;
        Ok(StepDone::detail(format!("{tag} ({image_id})")))
    }

    /// Writes each build secret to a 0600 file in the workspace (removed with it) and masks it.
    async fn build_secrets(
        &self,
        release: &Release,
        names: &[String],
        workspace: &Path,
        log: &JobLog,
    ) -> Result<Vec<(String, PathBuf)>, StepError> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let mut files = Vec::new();
        if names.is_empty() {
            return Ok(files);
        }
        let dir = workspace.join("secrets");
        std::fs::create_dir_all(&dir).map_err(|e| StepError::transient(format!("workspace: {e}")))?;
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        for name in names {
            let value = self.secret(release, name).await?.ok_or_else(|| {
                StepError::fatal(format!(
                    "build failed: build secret {name} is not set; set it with `enclii secrets set {name}=… --service {} --env {}`",
                    release.service, release.environment
                ))
            })?;
            log.mask(value.expose());
            let path = dir.join(name);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| StepError::transient(format!("workspace: {e}")))?;
            std::io::Write::write_all(&mut file, value.expose().as_bytes())
                .map_err(|e| StepError::transient(format!("workspace: {e}")))?;
            files.push((name.clone(), path));
        }
        Ok(files)
    }

    async fn push_image(&self, release: Release, log: JobLog) -> Result<StepDone, StepError> {
        let reference = docker::image_reference(&self.config.registry, &release.image);
        docker::retag(&self.docker, &local_tag(&release), &reference).await?;
        log.line(format!("pushing {reference}"));
        let digest = docker::push(&self.docker, &self.config.registry, &reference, &log).await?;
        let builder = docker::builder_name(&self.docker).await?;
        Ok(StepDone {
            detail: pinned(&reference, &digest),
            artefact: Some(Artefact::Image {
                digest,
                image: reference,
                builder,
            }),
        })
    }

    /// The pushed image pinned by digest, for the steps after `push`.
    fn pushed(&self, release: &Release) -> Result<(String, String), StepError> {
        let digest = release
            .digest
            .clone()
            .ok_or_else(|| StepError::transient("the image's digest is not recorded yet (push has not finished)"))?;
        Ok((pinned(&release.image, &digest), digest))
    }

    async fn inventory(&self, ctx: &JobContext, release: Release, log: JobLog) -> Result<StepDone, StepError> {
        let (image, digest) = self.pushed(&release)?;
        let workspace = Workspace::create(&self.config.workspace_root, ctx.job.id, ctx.job.attempt)?;
        let src = self.unpack_source(&release, workspace.path()).await?;
        let mut packages = {
            let src = src.clone();
            tokio::task::spawn_blocking(move || lockfiles::scan_repository(&src))
                .await
                .map_err(|e| StepError::transient(format!("scanning lockfiles: {e}")))?
        };
        let lock_count = packages.len();
        let files = docker::read_image_files(
            &self.docker,
            &image,
            // `/etc/os-release` is a symlink on Debian and Ubuntu; its target is read too.
            &[
                "/etc/os-release",
                "/usr/lib/os-release",
                "/var/lib/dpkg/status",
                "/lib/apk/db/installed",
            ],
        )
        .await?;
        let distro = files
            .get("/etc/os-release")
            .or_else(|| files.get("/usr/lib/os-release"))
            .and_then(|f| {
                String::from_utf8_lossy(f)
                    .lines()
                    .find_map(|l| l.strip_prefix("ID=").map(|v| v.trim_matches('"').to_string()))
            })
            .unwrap_or_else(|| "debian".into());
        if let Some(status) = files.get("/var/lib/dpkg/status") {
            packages.extend(lockfiles::dpkg_status(&String::from_utf8_lossy(status), &distro));
        }
        if let Some(installed) = files.get("/lib/apk/db/installed") {
            packages.extend(lockfiles::apk_installed(&String::from_utf8_lossy(installed)));
        }
        log.line(format!(
            "{lock_count} locked dependencies, {} OS packages",
            packages.len() - lock_count
        ));
        let json = sbom::cyclonedx_json(&sbom::Inventory {
            image: &image,
            digest: &digest,
            repository: &git::redact_url(&release.repository),
            git_sha: &release.git_sha,
            packages,
        })
        .map_err(StepError::fatal)?;
        let key = format!(
            "sboms/{}/{}/{}.cdx.json",
            release.project,
            release.service,
            digest.trim_start_matches("sha256:")
        );
        let uri = self
            .artefacts
            .put(&key, json.clone(), "application/vnd.cyclonedx+json")
            .await?;
        let attached = enclii_signing::attach_sbom(&self.config.registry.auth_for(&image), &image, &json)
            .await
            .map_err(|e| StepError::transient(format!("sbom: attaching to {image}: {e}")))?;
        log.line(format!("stored {uri}; attached as {attached}"));
        Ok(StepDone {
            detail: uri.clone(),
            artefact: Some(Artefact::Sbom { uri }),
        })
    }

    async fn sign_image(&self, release: Release, log: JobLog) -> Result<StepDone, StepError> {
        let (image, _) = self.pushed(&release)?;
        let key = match project_signing_key(&self.store, &release).await? {
            Some(key) => {
                log.line("signing with the project's key (secret COSIGN_PRIVATE_KEY)");
                key
            }
            None => self.config.signing_key.clone(),
        };
        let annotations = BTreeMap::from([
            ("dev.enclii.release".to_string(), release.id.to_string()),
            ("dev.enclii.git-sha".to_string(), release.git_sha.clone()),
            (
                "dev.enclii.repository".to_string(),
                git::redact_url(&release.repository),
            ),
        ]);
        let signature = enclii_signing::sign(&self.config.registry.auth_for(&image), &image, &key, annotations)
            .await
            .map_err(|e| StepError::transient(format!("sign failed: {e}")))?;
        log.line(format!("signed {image}; signature {}", signature.reference));
        Ok(StepDone {
            detail: signature.reference.clone(),
            artefact: Some(Artefact::Signature {
                reference: signature.reference,
            }),
        })
    }
}

#[async_trait]
impl TypedHandler<jobs::Clone> for Steps {
    async fn handle(&self, job: jobs::Clone, ctx: &JobContext) -> Result<(), JobError> {
        self.0
            .step(
                ctx,
                "clone",
                RunSubject::new(&job.service, &job.commit),
                |release, log| self.0.clone_commit(&job, ctx, release, log),
            )
            .await
    }
}

/// The steps after `clone` need nothing from their payload but what it builds: the release says
/// the rest.
macro_rules! release_step {
    ($kind:ty, $name:literal, |$steps:ident, $ctx:ident, $release:ident, $log:ident| $work:expr) => {
        #[async_trait]
        impl TypedHandler<$kind> for Steps {
            async fn handle(&self, job: $kind, $ctx: &JobContext) -> Result<(), JobError> {
                let $steps = &self.0;
                let run = RunSubject::new(&job.service, &job.commit);
                $steps.step($ctx, $name, run, |$release, $log| $work).await
            }
        }
    };
}

release_step!(jobs::Build, "build", |steps, ctx, release, log| steps
    .build_image(ctx, release, log));
release_step!(jobs::Push, "push", |steps, ctx, release, log| steps
    .push_image(release, log));
release_step!(jobs::Sbom, "sbom", |steps, ctx, release, log| steps
    .inventory(ctx, release, log));
release_step!(jobs::Sign, "sign", |steps, ctx, release, log| steps
    .sign_image(release, log));
