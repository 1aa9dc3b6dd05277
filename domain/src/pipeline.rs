//! The pipeline a push to a deployed branch becomes:
//! `clone → build → push → (sbom ∥ sign) → deploy`. A canary deploy schedules its own
//! `canary-analyze` jobs, one per step, when each step's window has passed.

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
                deployment: None,
            },
            &["sbom", "sign"],
        )?);
    }
    let target = req.deploy_to.as_deref().unwrap_or("build-only");
    Ok(NewPipeline {
        project: req.project.clone(),
        name: "build-and-deploy".into(),
        supersede_key: Some(supersede_key(p, &service, &req.branch, req.deploy_to.as_deref())),
        unique_key: Some(format!("commit:{p}/{service}:{target}:{commit}")),
        steps,
    })
}

/// What a build-and-deploy run builds, as every one of its steps' payloads says (`service`,
/// `commit`). A pipeline id alone does not name a release safely: a queue that lost its data
/// (Redis restarted without persistence) hands ids out again, so a release is a run's only when
/// its service and commit are the run's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSubject {
    pub service: String,
    pub commit: String,
}

impl RunSubject {
    pub fn new(service: &str, commit: &str) -> Self {
        Self {
            service: service.to_string(),
            commit: commit.to_string(),
        }
    }

    /// Read from a step's payload; `None` for a job that is not a step of a build.
    pub fn of_payload(payload: &serde_json::Value) -> Option<Self> {
        let field = |name: &str| payload.get(name).and_then(|v| v.as_str());
        Some(Self::new(field("service")?, field("commit")?))
    }

    /// Whether a release of `service` at `commit` is this run's.
    pub fn builds(&self, service: &str, commit: &str) -> bool {
        self.service == service && self.commit.eq_ignore_ascii_case(commit)
    }
}

/// Runs for the same service, branch and target environment supersede each other: a newer push
/// cancels the older run, and closing a pull request cancels its preview's run.
pub fn supersede_key(project: &str, service: &str, branch: &str, environment: Option<&str>) -> String {
    match environment {
        Some(env) => format!("service:{project}/{service}:branch:{branch}:env:{env}"),
        None => format!("service:{project}/{service}:branch:{branch}"),
    }
}

/// What a closed pull request becomes for one service: the teardown of its preview environment,
/// superseding any build of that preview still in flight.
pub fn preview_teardown(
    project: &str,
    service: &str,
    repository: &str,
    branch: &str,
    pull_request: u64,
) -> Result<NewPipeline, QueueError> {
    let environment = format!("preview-{pull_request}");
    let job = jobs::PreviewTeardown {
        service: service.to_string(),
        repository: repository.to_string(),
        pull_request,
        environment: environment.clone(),
    };
    Ok(NewPipeline {
        project: project.to_string(),
        name: "preview-teardown".into(),
        supersede_key: Some(supersede_key(project, service, branch, Some(&environment))),
        unique_key: None,
        steps: vec![step("preview-teardown", project, &job, &[])?],
    })
}

/// The key services and webhooks are matched on: host and path of a repository URL, lowercased,
/// without scheme, credentials, `.git` or trailing slash. `https://github.com/Org/Repo.git`,
/// `git@github.com:org/repo` and `ssh://git@github.com/org/repo` all give `github.com/org/repo`.
pub fn repository_key(url: &str) -> String {
    let url = url.trim();
    let rest = match url.split_once("://") {
        Some((_, rest)) => rest.to_string(),
        // scp-like `git@host:path`
        None => url.replacen(':', "/", 1),
    };
    let rest = rest.rsplit_once('@').map_or(rest.as_str(), |(_, host_path)| host_path);
    let rest = rest.trim_end_matches('/');
    let rest = rest.strip_suffix(".git").unwrap_or(rest);
    rest.to_ascii_lowercase()
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
    fn steps_built_inside_a_trace_carry_it() {
        use enclii_queue::trace::{self, TraceContext};
        let untraced = build_and_deploy(&request(Some("prod"))).unwrap();
        assert!(untraced.steps.iter().all(|s| s.job.payload.get("_trace").is_none()));
        let ctx = TraceContext::new_root();
        let p = trace::sync_scope(ctx, || build_and_deploy(&request(Some("prod")))).unwrap();
        assert_eq!(p.steps.len(), 6);
        for step in &p.steps {
            assert_eq!(trace::from_payload(&step.job.payload), Some(ctx), "{}", step.name);
            crate::jobs::validate(&step.job.kind, &step.job.payload).unwrap();
        }
    }

    #[test]
    fn every_step_names_the_service_and_commit_it_builds() {
        let p = build_and_deploy(&request(Some("prod"))).unwrap();
        let subject = RunSubject::new("api", "0123abcd");
        for step in &p.steps {
            assert_eq!(
                RunSubject::of_payload(&step.job.payload),
                Some(subject.clone()),
                "{}",
                step.name
            );
        }
        assert!(subject.builds("api", "0123ABCD"));
        assert!(!subject.builds("web", "0123abcd") && !subject.builds("api", "fedc"));
        assert_eq!(RunSubject::of_payload(&serde_json::json!({"deployment": 3})), None);
    }

    #[test]
    fn the_pipeline_fans_out_to_sbom_and_sign_and_in_to_deploy() {
        let p = build_and_deploy(&request(Some("prod"))).unwrap();
        let needs = |name: &str| p.steps.iter().find(|s| s.name == name).unwrap().needs.clone();
        assert_eq!(needs("sbom"), ["push"]);
        assert_eq!(needs("sign"), ["push"]);
        assert_eq!(needs("deploy"), ["sbom", "sign"]);
        assert!(
            p.steps.iter().all(|s| s.name != "canary-analyze"),
            "a canary deploy schedules its own analysis"
        );
        assert_eq!(
            p.supersede_key.as_deref(),
            Some("service:solarpunk/api:branch:main:env:prod")
        );
        assert_eq!(p.unique_key.as_deref(), Some("commit:solarpunk/api:prod:0123abcd"));
        assert_eq!(p.steps.iter().find(|s| s.name == "build").unwrap().job.kind, "build");
    }

    #[test]
    fn without_auto_deploy_the_run_ends_at_a_ready_release() {
        let p = build_and_deploy(&request(None)).unwrap();
        assert_eq!(p.steps.len(), 5);
    }

    #[test]
    fn repository_urls_normalise_to_one_key() {
        for url in [
            "https://github.com/Org/Repo.git",
            "https://github.com/org/repo",
            "https://token@github.com/org/repo/",
            "git@github.com:org/repo.git",
            "ssh://git@github.com/org/repo",
        ] {
            assert_eq!(repository_key(url), "github.com/org/repo", "{url}");
        }
    }

    #[test]
    fn a_preview_teardown_supersedes_the_previews_build() {
        let mut req = request(Some("preview-7"));
        req.branch = "feature".into();
        let build = build_and_deploy(&req).unwrap();
        let teardown = preview_teardown("solarpunk", "api", &req.repository, "feature", 7).unwrap();
        assert_eq!(build.supersede_key, teardown.supersede_key);
        assert_eq!(teardown.steps[0].job.kind, "preview-teardown");
    }
}
