//! Add-ons on the deploy target: `addon-provision` (start, or converge to rotated credentials),
//! `addon-retire` (disable the login before a rotation) and `addon-remove` (a deleted add-on),
//! and how a deploy resolves a spec's `fromAddon` / `envFrom: addon` into the service's secret
//! environment.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use enclii_deploy_contract::Target;
use enclii_deploy_contract::model::{AddonKey, AddonWorkload, SecretEnv, SecretValue, ServiceKey};
use enclii_domain::addons::{connection_value, generation_user, standard_variables};
use enclii_domain::jobs::{AddonProvision, AddonRemove, AddonRetire};
use enclii_domain::spec::Spec;
use enclii_store::{AddonAccess, AddonStatus, ProvisionOutcome, Store};
use enclii_worker::{JobContext, JobError, Registry, TypedHandler};
use tracing::info;

use crate::addon_backups::{StageError, restore_from};
use crate::handlers::{Failure, job_error};
use enclii_artefacts::ArtefactConfig;

/// Who provisions add-ons in the audit trail.
pub(crate) const ACTOR: &str = "system:addons";

fn addon_key(access: &AddonAccess) -> AddonKey {
    AddonKey {
        project: access.addon.project.clone(),
        environment: access.addon.environment.clone(),
        name: access.addon.name.clone(),
    }
}

pub(crate) fn workload(access: &AddonAccess) -> AddonWorkload {
    AddonWorkload {
        key: addon_key(access),
        kind: access.kind,
        image: access.addon.image.clone(),
        size_bytes: access.addon.size_mib.map(|m| m.max(0) as u64 * 1024 * 1024),
        credentials: access.credentials.clone(),
        previous: access.previous.clone(),
    }
}

#[derive(Clone)]
struct Addons {
    store: Arc<Store>,
    target: Arc<dyn Target>,
    /// How long the login before a rotation keeps working after the new one is applied.
    retire_after: Duration,
    /// Where backups are kept (a preview's add-on may start from one).
    artefacts: Option<ArtefactConfig>,
}

impl Addons {
    async fn provision(&self, job: AddonProvision, ctx: &JobContext) -> Result<(), Failure> {
        let Some(access) = self.store.addon_for_job(job.addon, job.generation).await? else {
            info!(
                addon = job.addon,
                generation = job.generation,
                "add-on gone or rotated again; nothing to do"
            );
            return Ok(());
        };
        let outcome = match self.target.provision_addon(&workload(&access)).await {
            Ok(()) => match self.seed(&access, job.generation).await {
                Ok(()) => ProvisionOutcome::Ready,
                Err(e) if e.is_transient() && !ctx.is_last_attempt() => {
                    return Err(JobError::Retry(e.to_string()).into());
                }
                Err(e) => ProvisionOutcome::Failed(e.to_string()),
            },
            // A refusal (no such image, a login the server refuses) does not heal by retrying;
            // neither does any failure on the last attempt: say why on the add-on.
            Err(e) if e.is_permanent() || ctx.is_last_attempt() => ProvisionOutcome::Failed(e.to_string()),
            Err(e) => return Err(job_error(e).into()),
        };
        self.store
            .record_addon_provision(ACTOR, job.addon, job.generation, &outcome, self.retire_after)
            .await?;
        match outcome {
            ProvisionOutcome::Ready => Ok(()),
            ProvisionOutcome::Failed(why) => Err(JobError::Abort(why).into()),
        }
    }

    /// A preview's add-on made with `seedAddons` is restored from the parent's backup on its
    /// first provisioning, before it is ready (and before the preview's services start).
    async fn seed(&self, access: &AddonAccess, generation: i64) -> Result<(), StageError> {
        let Some(backup) = access.addon.seed_backup.filter(|_| generation == 1) else {
            return Ok(());
        };
        let Some(work) = self.store.restore_for_job(backup, access.addon.id).await.map_err(|e| {
            StageError::Target(enclii_deploy_contract::error::DeployError::Refused(format!(
                "reading backup {backup} to seed from: {e}"
            )))
        })?
        else {
            return Ok(());
        };
        restore_from(self.target.as_ref(), self.artefacts.as_ref(), &work)
            .await
            .map_err(|e| e.context(format!("seeding from backup {backup} of {}", work.backup.environment)))?;
        info!(addon = %access.addon.name, environment = %access.addon.environment, backup, "preview add-on seeded");
        Ok(())
    }

    async fn retire(&self, job: AddonRetire) -> Result<(), Failure> {
        let Some(access) = self.store.addon_for_job(job.addon, job.generation).await? else {
            return Ok(());
        };
        if access.previous.is_none() {
            return Ok(());
        }
        let old = generation_user(job.generation - 1);
        self.target
            .retire_addon_login(&workload(&access), &old)
            .await
            .map_err(job_error)?;
        self.store.record_addon_retired(job.addon, job.generation).await?;
        Ok(())
    }

    async fn remove(&self, job: AddonRemove, ctx: &JobContext) -> Result<(), Failure> {
        let key = AddonKey {
            project: ctx.job.project.clone(),
            environment: job.environment,
            name: job.name,
        };
        self.target.remove_addon(&key, job.keep_data).await.map_err(job_error)?;
        Ok(())
    }
}

#[async_trait]
impl TypedHandler<AddonProvision> for Addons {
    async fn handle(&self, job: AddonProvision, ctx: &JobContext) -> Result<(), JobError> {
        self.provision(job, ctx).await.map_err(|Failure(e)| e)
    }
}

#[async_trait]
impl TypedHandler<AddonRetire> for Addons {
    async fn handle(&self, job: AddonRetire, _ctx: &JobContext) -> Result<(), JobError> {
        self.retire(job).await.map_err(|Failure(e)| e)
    }
}

#[async_trait]
impl TypedHandler<AddonRemove> for Addons {
    async fn handle(&self, job: AddonRemove, ctx: &JobContext) -> Result<(), JobError> {
        self.remove(job, ctx).await.map_err(|Failure(e)| e)
    }
}

/// Registers `addon-provision`, `addon-retire` and `addon-remove`.
pub(crate) fn register(
    registry: &mut Registry,
    store: Arc<Store>,
    target: Arc<dyn Target>,
    retire_after: Duration,
    artefacts: Option<ArtefactConfig>,
) {
    let addons = Addons {
        store,
        target,
        retire_after,
        artefacts,
    };
    registry
        .register_typed::<AddonProvision, _>(addons.clone())
        .register_typed::<AddonRetire, _>(addons.clone())
        .register_typed::<AddonRemove, _>(addons);
}

/// The variables the spec reads from add-ons, as one secret environment per add-on
/// (`<service>-addon-<name>`): `envFrom: [{addon}]` gives the kind's standard variables, `fromAddon` one
/// key under the variable's own name. A missing add-on, or one that failed, refuses the deploy
/// naming the field; one still provisioning is waited for (the deploy is retried).
pub(crate) fn addon_env(
    target: &dyn Target,
    key: &ServiceKey,
    spec: &Spec,
    addons: &[AddonAccess],
) -> Result<Vec<SecretEnv>, JobError> {
    let find = |field: String, name: &str| -> Result<&AddonAccess, JobError> {
        let access = addons.iter().find(|a| a.addon.name == name).ok_or_else(|| {
            JobError::Abort(format!(
                "{field}: add-on `{name}` does not exist in environment `{}`; create it with `enclii addons \
                 create {name} --kind postgres|redis --env {}`",
                key.environment, key.environment
            ))
        })?;
        match access.addon.status {
            AddonStatus::Ready => Ok(access),
            AddonStatus::Provisioning => Err(JobError::Retry(format!(
                "{field}: add-on `{name}` is still provisioning; the deploy waits for it"
            ))),
            AddonStatus::Failed => Err(JobError::Abort(format!(
                "{field}: add-on `{name}` failed: {}; see `enclii addons ls --env {}`",
                access.addon.detail.as_deref().unwrap_or("no reason recorded"),
                key.environment
            ))),
        }
    };
    let mut out: Vec<SecretEnv> = Vec::new();
    let mut push = |access: &AddonAccess, variable: &str, key_name: &str, field: String| -> Result<(), JobError> {
        let endpoint = target.addon_endpoint(&addon_key(access), access.kind);
        let value = connection_value(access.kind, &endpoint, &access.credentials, key_name).ok_or_else(|| {
            JobError::Abort(format!(
                "{field}: a {} add-on has no key `{key_name}`; it has: {}",
                access.kind,
                access.kind.keys().join(", ")
            ))
        })?;
        // Per service: on Kubernetes each SecretEnv is a Secret object its service owns.
        let name = format!("{}-addon-{}", key.service, access.addon.name);
        let entry = (variable.to_string(), SecretValue::new(value));
        match out.iter_mut().find(|s| s.name == name) {
            Some(secret) => secret.entries.push(entry),
            None => out.push(SecretEnv {
                name,
                entries: vec![entry],
            }),
        }
        Ok(())
    };
    for (index, from) in spec.env_from.iter().enumerate() {
        let Some(name) = &from.addon else { continue };
        let field = format!("spec.envFrom[{index}].addon");
        let access = find(field.clone(), name)?;
        for (variable, key_name) in standard_variables(access.kind) {
            push(access, variable, key_name, field.clone())?;
        }
    }
    for (index, var) in spec.env.iter().enumerate() {
        let Some(reference) = &var.from_addon else { continue };
        let field = format!("spec.env[{index}].fromAddon");
        let access = find(format!("{field}.name"), &reference.name)?;
        push(access, &var.name, &reference.key, format!("{field}.key"))?;
    }
    Ok(out)
}
