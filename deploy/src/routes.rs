//! `route-sync`: applies a service's routes in one environment to the target without a deploy,
//! after a route, or a custom domain's route, was added or removed (the store enqueues it with
//! the change, for services deployed there).

use std::sync::Arc;

use async_trait::async_trait;
use enclii_deploy_contract::model::ServiceKey;
use enclii_domain::jobs::RouteSync;
use enclii_worker::{JobContext, JobError, Registry, TypedHandler};
use tracing::info;

use crate::handlers::{Deployer, Failure, job_error, route_bindings};

struct Routes(Arc<Deployer>);

impl Routes {
    async fn sync(&self, job: RouteSync, ctx: &JobContext) -> Result<(), Failure> {
        let key = ServiceKey::new(&ctx.job.project, &job.environment, &job.service);
        let routes = route_bindings(self.0.store().service_routes(&key).await?);
        let live = self.0.target().apply_routes(&key, &routes).await.map_err(job_error)?;
        if live {
            info!(service = %key.service, environment = %key.environment, routes = routes.len(), "routes applied");
        } else {
            info!(
                service = %key.service,
                environment = %key.environment,
                target = self.0.target().name(),
                "routes apply at the service's next deploy on this target"
            );
        }
        Ok(())
    }
}

#[async_trait]
impl TypedHandler<RouteSync> for Routes {
    async fn handle(&self, job: RouteSync, ctx: &JobContext) -> Result<(), JobError> {
        self.sync(job, ctx).await.map_err(|Failure(e)| e)
    }
}

/// Registers `route-sync`.
pub(crate) fn register(registry: &mut Registry, deployer: Arc<Deployer>) {
    registry.register_typed::<RouteSync, _>(Routes(deployer));
}
