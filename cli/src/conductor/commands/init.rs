//! `enclii init`: writes a Service Spec from a template.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde_json::json;

use crate::conductor::config::Settings;
use crate::conductor::init::{self, Template};
use crate::conductor::output::{emit, outln};
use crate::conductor::{Failure, exit};

use super::Done;

#[derive(Args, Debug)]
pub struct InitArgs {
    /// The kind of project (default: detected from the files present).
    #[arg(long, value_enum)]
    template: Option<Template>,
    /// The service's name (default: the directory's name).
    #[arg(long)]
    name: Option<String>,
    /// The environment a push to the branch deploys to.
    #[arg(long = "env", default_value = "prod")]
    environment: String,
    /// The port the app listens on (default: the Dockerfile's EXPOSE, else the template's).
    #[arg(long)]
    port: Option<u32>,
    /// The git repository the server builds from (default: `origin`, else this checkout).
    #[arg(long)]
    repository: Option<String>,
    /// The branch that deploys (default: the current one).
    #[arg(long)]
    branch: Option<String>,
    /// Overwrite an existing spec.
    #[arg(long)]
    force: bool,
    /// The spec file to write.
    #[arg(long, default_value = "enclii.yaml")]
    file: PathBuf,
    /// The project's directory.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

pub(super) fn init(settings: &Settings, args: InitArgs) -> Done {
    let plan = init::plan(init::InitOptions {
        dir: args.dir,
        file: args.file,
        template: args.template,
        name: args.name,
        project: settings.project.clone(),
        environment: args.environment,
        port: args.port,
        repository: args.repository,
        branch: args.branch,
        force: args.force,
    })?;
    let write = |path: &Path, text: &str| {
        std::fs::write(path, text).map_err(|e| {
            Failure::new(exit::FAILURE, format!("cannot write {}: {e}", path.display()))
                .hint("check that the directory exists and is writable, or pass --dir / --file")
        })
    };
    write(&plan.spec_path, &plan.spec)?;
    if let Some((path, text)) = &plan.dockerfile {
        write(path, text)?;
    }
    for warning in &plan.warnings {
        eprintln!("warning: {warning}");
    }
    let template = Template::value_variants()
        .iter()
        .find(|t| **t == plan.template)
        .and_then(|t| t.to_possible_value())
        .map(|v| v.get_name().to_string())
        .unwrap_or_default();
    let result = json!({
        "file": plan.spec_path.display().to_string(),
        "template": template,
        "dockerfile": plan.dockerfile.as_ref().map(|(p, _)| p.display().to_string()),
    });
    emit(settings.output, &result, |_| {
        outln!("wrote {} ({template} template)", plan.spec_path.display());
        if let Some((path, _)) = &plan.dockerfile {
            outln!("wrote {}", path.display());
        }
        outln!("next: commit it, then `enclii up` builds HEAD and deploys a preview");
    });
    Ok(())
}
