//! `enclii init`: a Service Spec for the project in a directory, from a template chosen by the
//! files present (or `--template`), checked with the API's own parser before it is written.

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::ValueEnum;
use enclii_domain::spec::{ServiceSpec, SpecFormat};

use super::Failure;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Template {
    /// package.json: built by detection (no Dockerfile needed).
    Node,
    /// requirements.txt or pyproject.toml: a Dockerfile is written too.
    Python,
    /// go.mod: built by detection.
    Go,
    /// Cargo.toml: built by detection.
    Rust,
    /// index.html: served by busybox httpd (a Dockerfile is written too).
    Static,
    /// The directory's own Dockerfile.
    Dockerfile,
}

impl Template {
    /// The template the files in `dir` call for: a Dockerfile wins, then the language markers.
    pub fn detect(dir: &Path) -> Option<Template> {
        let has = |name: &str| dir.join(name).exists();
        if has("Dockerfile") {
            Some(Template::Dockerfile)
        } else if has("package.json") {
            Some(Template::Node)
        } else if has("requirements.txt") || has("pyproject.toml") {
            Some(Template::Python)
        } else if has("go.mod") {
            Some(Template::Go)
        } else if has("Cargo.toml") {
            Some(Template::Rust)
        } else if has("index.html") {
            Some(Template::Static)
        } else {
            None
        }
    }

    fn default_port(self) -> u32 {
        match self {
            Template::Node => 3000,
            Template::Python => 8000,
            Template::Go | Template::Rust | Template::Static | Template::Dockerfile => 8080,
        }
    }

    /// A Dockerfile the template needs when the directory has none (the builder detects Node,
    /// Go and Rust projects by itself).
    fn dockerfile(self, dir: &Path, port: u32) -> Option<String> {
        match self {
            Template::Python => {
                let entry = ["main.py", "app.py", "server.py"]
                    .into_iter()
                    .find(|f| dir.join(f).exists())
                    .unwrap_or("main.py");
                Some(format!(
                    "FROM python:3.12-slim\nWORKDIR /app\nCOPY . .\n\
                     RUN if [ -f requirements.txt ]; then pip install --no-cache-dir -r requirements.txt; \
                     elif [ -f pyproject.toml ]; then pip install --no-cache-dir .; fi\n\
                     ENV PORT={port}\nEXPOSE {port}\nCMD [\"python\", \"{entry}\"]\n"
                ))
            }
            Template::Static => Some(format!(
                "FROM busybox:stable\nCOPY . /www\nEXPOSE {port}\nCMD [\"httpd\", \"-f\", \"-p\", \"{port}\", \"-h\", \"/www\"]\n"
            )),
            _ => None,
        }
    }
}

pub struct InitPlan {
    pub spec_path: PathBuf,
    pub spec: String,
    pub dockerfile: Option<(PathBuf, String)>,
    pub template: Template,
    pub warnings: Vec<String>,
}

pub struct InitOptions {
    pub dir: PathBuf,
    pub file: PathBuf,
    pub template: Option<Template>,
    pub name: Option<String>,
    pub project: Option<String>,
    pub environment: String,
    pub port: Option<u32>,
    pub repository: Option<String>,
    pub branch: Option<String>,
    pub force: bool,
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).current_dir(dir).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

/// `EXPOSE <port>` of a Dockerfile, if it has one.
fn exposed_port(dockerfile: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(dockerfile).ok()?;
    text.lines().find_map(|line| {
        let rest = line
            .trim()
            .strip_prefix("EXPOSE ")
            .or_else(|| line.trim().strip_prefix("expose "))?;
        rest.split_whitespace().next()?.split('/').next()?.parse().ok()
    })
}

/// A slug from a directory name: `My_App` → `my-app`.
fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars().map(|c| c.to_ascii_lowercase()) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').chars().take(63).collect()
}

fn yaml_string(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

pub fn plan(options: InitOptions) -> Result<InitPlan, Failure> {
    let dir = &options.dir;
    let spec_path = dir.join(&options.file);
    if spec_path.exists() && !options.force {
        return Err(
            Failure::validation(format!("{} already exists", spec_path.display())).hint("pass --force to overwrite it")
        );
    }
    let template = match options.template.or_else(|| Template::detect(dir)) {
        Some(t) => t,
        None => {
            return Err(Failure::validation(format!(
                "cannot tell what kind of project {} is (no Dockerfile, package.json, requirements.txt, \
                 pyproject.toml, go.mod, Cargo.toml or index.html)",
                dir.display()
            ))
            .hint("choose one with --template node|python|go|rust|static|dockerfile"));
        }
    };
    let mut warnings = Vec::new();
    let dockerfile_path = dir.join("Dockerfile");
    let port = options
        .port
        .or_else(|| exposed_port(&dockerfile_path))
        .unwrap_or_else(|| template.default_port());
    let dockerfile = match template.dockerfile(dir, port) {
        Some(text) if !dockerfile_path.exists() => Some((dockerfile_path.clone(), text)),
        _ => None,
    };
    if template == Template::Dockerfile && !dockerfile_path.exists() {
        warnings.push("there is no Dockerfile yet: write one before `enclii up`".to_string());
    }
    let dir_name = std::fs::canonicalize(dir)
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().to_string()))
        .unwrap_or_default();
    let name = options.name.unwrap_or_else(|| slug(&dir_name));
    let project = options.project.unwrap_or_else(|| name.clone());
    let repository = options
        .repository
        .or_else(|| git(dir, &["remote", "get-url", "origin"]))
        .or_else(|| git(dir, &["rev-parse", "--show-toplevel"]).map(|top| format!("file://{top}")));
    let branch = options
        .branch
        .or_else(|| git(dir, &["rev-parse", "--abbrev-ref", "HEAD"]).filter(|b| b != "HEAD"))
        .unwrap_or_else(|| "main".into());
    let build = match template {
        Template::Node | Template::Go | Template::Rust if dockerfile_path.exists() => {
            "{ type: dockerfile, dockerfile: Dockerfile, context: . }"
        }
        Template::Node | Template::Go | Template::Rust => "{ type: auto, context: . }",
        _ => "{ type: dockerfile, dockerfile: Dockerfile, context: . }",
    };
    let source = match &repository {
        Some(repository) => format!(
            "  source:  {{ git: {{ repository: {}, branch: {} }} }}\n",
            yaml_string(repository),
            yaml_string(&branch)
        ),
        None => {
            warnings.push(
                "this directory is not a git repository: add spec.source.git.repository before `enclii up`".into(),
            );
            String::new()
        }
    };
    let spec = format!(
        "# Service Spec: see docs/cli.md and the README's Concepts. `enclii up` builds this\n\
         # directory's git HEAD and deploys it to a preview environment.\n\
         apiVersion: enclii.dev/v1\n\
         kind: Service\n\
         metadata: {{ project: {project}, environment: {environment}, name: {name} }}\n\
         spec:\n\
         \x20 build:   {build}\n\
         {source}\
         \x20 runtime:\n\
         \x20   ports: [{port}]\n\
         \x20   cpu: 250m\n\
         \x20   memory: 256Mi\n\
         \x20   replicas: {{ min: 1, max: 2 }}\n\
         \x20 health:  {{ readiness: {{ tcpSocket: {port} }} }}\n",
        project = yaml_string(&project),
        environment = yaml_string(&options.environment),
        name = yaml_string(&name),
    );
    ServiceSpec::parse(&spec, SpecFormat::Yaml).map_err(|errors| {
        Failure::validation(format!("the generated spec is not valid: {errors}"))
            .hint("fix it with --name, --project, --environment or --port")
    })?;
    Ok(InitPlan {
        spec_path,
        spec,
        dockerfile,
        template,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_of_directory_names() {
        assert_eq!(slug("My_App"), "my-app");
        assert_eq!(slug("--x--"), "x");
    }

    #[test]
    fn every_template_makes_a_valid_spec() {
        let dir = std::env::temp_dir().join(format!("enclii-init-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for template in Template::value_variants() {
            let plan = plan(InitOptions {
                dir: dir.clone(),
                file: "enclii.yaml".into(),
                template: Some(*template),
                name: Some("web".into()),
                project: Some("shop".into()),
                environment: "prod".into(),
                port: None,
                repository: Some("https://example.com/org/web".into()),
                branch: None,
                force: false,
            })
            .unwrap_or_else(|f| panic!("{template:?}: {f}"));
            assert!(plan.spec.contains("name: \"web\""), "{}", plan.spec);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
