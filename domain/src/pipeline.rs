//! The pipeline a push to a deployed branch becomes:
//! `clone → build → push → (sbom ∥ sign) → deploy → canary-analyze`.

use enclii_queue::{JobKind, NewJob, NewPipeline, PipelineStep, QueueError};

use crate::jobs;

/// What a build-and-deploy run is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildRequest {
    pub project: String,
    pub service: String,
    pub repository: String,
    pub branch: String,
    pub commit: String,
    pub dockerfile: String,
    pub context: String,
    pub image: String,
    /// Deploy to this environment when the release is ready (the service's auto-deploy setting).
    pub deploy_to: Option<String>,
}

fn step<J: JobKind>(name: &str, project: &str, job: &J, needs: &[&str]) -> Result<PipelineStep, QueueError> {
    Ok(PipelineStep {
        name: name.to_string(),
        job: NewJob::typed(project, job)?,
        needs: needs.iter().map(|n| n.to_string()).collect(),
    })
}

/// The pipeline for one commit. The same (service, commit) is enqueued at most once (unique key);
/// a newer commit on the same service and branch supersedes an unfinished older run.
pub fn build_and_deploy(req: &BuildRequest) -> Result<NewPipeline, QueueError> {
    let p = req.project.as_str();
    let (service, commit) = (req.service.clone(), req.commit.clone());
    let mut steps = vec![
        step(
            "clone",
            p,
            &jobs::Clone {
                service: service.clone(),
                repository: req.repository.clone(),
                commit: commit.clone(),
                branch: Some(req.branch.clone()),
            },
            &[],
        )?,
        step(
            "build",
            p,
            &jobs::Build {
                service: service.clone(),
                commit: commit.clone(),
                dockerfile: req.dockerfile.clone(),
                context: req.context.clone(),
            },
            &["clone"],
        )?,
        step(
            "push",
            p,
            &jobs::Push {
                service: service.clone(),
                commit: commit.clone(),
                image: req.image.clone(),
            },
            &["build"],
        )?,
        step(
            "sbom",
            p,
            &jobs::Sbom {
                service: service.clone(),
                commit: commit.clone(),
                image: req.image.clone(),
            },
            &["push"],
        )?,
        step(
            "sign",
            p,
            &jobs::Sign {
                service: service.clone(),
                commit: commit.clone(),
                image: req.image.clone(),
            },
            &["push"],
        )?,
    ];
    if let Some(environment) = &req.deploy_to {
        steps.push(step(
            "deploy",
            p,
            &jobs::Deploy {
                service: service.clone(),
                environment: environment.clone(),
                commit: commit.clone(),
            },
            &["sbom", "sign"],
        )?);
        steps.push(step(
            "canary-analyze",
            p,
            &jobs::CanaryAnalyze {
                service: service.clone(),
                environment: environment.clone(),
                commit: commit.clone(),
                steps: vec![10, 100],
                max_error_rate: 0.02,
                window_secs: 120,
            },
            &["deploy"],
        )?);
    }
    Ok(NewPipeline {
        project: req.project.clone(),
        name: "build-and-deploy".into(),
        supersede_key: Some(format!("service:{p}/{service}:branch:{}", req.branch)),
        unique_key: Some(format!("commit:{p}/{service}:{commit}")),
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(deploy_to: Option<&str>) -> BuildRequest {
        BuildRequest {
            project: "solarpunk".into(),
            service: "api".into(),
            repository: "https://github.com/org/repo".into(),
            branch: "main".into(),
            commit: "0123abcd".into(),
            dockerfile: "Dockerfile".into(),
            context: ".".into(),
            image: "registry.example/org/api:0123abcd".into(),
            deploy_to: deploy_to.map(String::from),
        }
    }

    #[test]
    fn the_pipeline_fans_out_to_sbom_and_sign_and_in_to_deploy() {
        let p = build_and_deploy(&request(Some("prod"))).unwrap();
        let needs = |name: &str| p.steps.iter().find(|s| s.name == name).unwrap().needs.clone();
        assert_eq!(needs("sbom"), ["push"]);
        assert_eq!(needs("sign"), ["push"]);
        assert_eq!(needs("deploy"), ["sbom", "sign"]);
        assert_eq!(needs("canary-analyze"), ["deploy"]);
        assert_eq!(p.supersede_key.as_deref(), Some("service:solarpunk/api:branch:main"));
        assert_eq!(p.unique_key.as_deref(), Some("commit:solarpunk/api:0123abcd"));
        assert_eq!(p.steps.iter().find(|s| s.name == "build").unwrap().job.kind, "build");
    }

    #[test]
    fn without_auto_deploy_the_run_ends_at_a_ready_release() {
        let p = build_and_deploy(&request(None)).unwrap();
        assert_eq!(p.steps.len(), 5);
    }
}
