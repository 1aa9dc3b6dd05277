//! The GitHub webhook events Enclii reacts to, parsed from the `X-GitHub-Event` header and the
//! raw JSON body. Parsing is tolerant of the many fields GitHub sends that Enclii does not use,
//! and strict about the ones it does: a missing or malformed field is an error naming its path
//! in the payload (`pull_request.head.sha`). Signature checking (`X-Hub-Signature-256`) is the
//! caller's job and must happen before this.

use chrono::{DateTime, FixedOffset};
use serde::Deserialize;

use crate::pipeline::repository_key;
use crate::spec::{ROOT_PATH, from_json};

/// A webhook delivery Enclii understands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GithubEvent {
    /// Sent when a webhook is created.
    Ping {
        zen: Option<String>,
        hook_id: Option<i64>,
    },
    Push(PushEvent),
    PullRequest(PullRequestEvent),
    /// An event type Enclii ignores; its body is not parsed.
    Other {
        event: String,
    },
}

/// A malformed payload: which event, which field (`(root)` for the body as a whole) and what is
/// wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{event}` payload: {path}: {message}")]
pub struct WebhookPayloadError {
    pub event: String,
    pub path: String,
    pub message: String,
}

/// The repository an event is about.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Repository {
    /// `owner/name`.
    pub full_name: String,
    pub clone_url: String,
    pub html_url: String,
}

/// Commits pushed to a branch or tag, or a ref created or deleted.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct PushEvent {
    pub repository: Repository,
    /// The full ref, e.g. `refs/heads/main` or `refs/tags/v1.0`.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The ref's commit after the push (all zeros when the ref was deleted).
    pub after: String,
    /// The ref's commit before the push (all zeros when the ref was created).
    pub before: String,
    #[serde(default)]
    pub created: bool,
    #[serde(default)]
    pub deleted: bool,
    #[serde(default)]
    pub forced: bool,
    /// Absent (`null`) when the ref was deleted.
    #[serde(default)]
    pub head_commit: Option<HeadCommit>,
    #[serde(default)]
    pub pusher: Option<Pusher>,
}

impl PushEvent {
    /// The branch name for a push to `refs/heads/<branch>`; `None` for tags and other refs.
    pub fn branch(&self) -> Option<&str> {
        self.git_ref.strip_prefix("refs/heads/").filter(|b| !b.is_empty())
    }

    /// The tag name for a push to `refs/tags/<tag>`.
    pub fn tag(&self) -> Option<&str> {
        self.git_ref.strip_prefix("refs/tags/").filter(|t| !t.is_empty())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct HeadCommit {
    #[serde(default)]
    pub message: Option<String>,
    /// When the commit was made, as GitHub reports it (RFC 3339 with an offset).
    #[serde(default)]
    pub timestamp: Option<DateTime<FixedOffset>>,
    #[serde(default)]
    pub author: Option<CommitAuthor>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct CommitAuthor {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Pusher {
    #[serde(default)]
    pub name: Option<String>,
}

/// What happened to a pull request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PullRequestAction {
    Opened,
    Reopened,
    /// New commits were pushed to the head branch.
    Synchronize,
    /// Closed, merged or not (see [`PullRequestEvent::merged`]).
    Closed,
    Other(String),
}

impl PullRequestAction {
    pub fn as_str(&self) -> &str {
        match self {
            PullRequestAction::Opened => "opened",
            PullRequestAction::Reopened => "reopened",
            PullRequestAction::Synchronize => "synchronize",
            PullRequestAction::Closed => "closed",
            PullRequestAction::Other(other) => other,
        }
    }
}

impl From<&str> for PullRequestAction {
    fn from(s: &str) -> Self {
        match s {
            "opened" => PullRequestAction::Opened,
            "reopened" => PullRequestAction::Reopened,
            "synchronize" => PullRequestAction::Synchronize,
            "closed" => PullRequestAction::Closed,
            other => PullRequestAction::Other(other.to_string()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullRequestEvent {
    pub action: PullRequestAction,
    pub number: u64,
    /// The base repository (the one the pull request targets).
    pub repository: Repository,
    pub head: PullRequestHead,
    pub base: PullRequestBase,
    /// Whether a `closed` pull request was merged.
    pub merged: bool,
    /// When the pull request last changed (every event GitHub sends for it moves this forward).
    pub updated_at: Option<DateTime<FixedOffset>>,
}

impl PullRequestEvent {
    /// The preview environment for this pull request: `preview-<number>`.
    pub fn preview_environment(&self) -> String {
        format!("preview-{}", self.number)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullRequestHead {
    pub sha: String,
    /// The head branch name (no `refs/heads/` prefix).
    pub git_ref: String,
    /// The head repository's clone URL (a fork's for cross-repository pull requests); `None`
    /// when that repository was deleted.
    pub clone_url: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PullRequestBase {
    /// The base branch name.
    pub git_ref: String,
}

#[derive(Deserialize)]
struct PingWire {
    #[serde(default)]
    zen: Option<String>,
    #[serde(default)]
    hook_id: Option<i64>,
}

#[derive(Deserialize)]
struct PullRequestWire {
    action: String,
    number: u64,
    repository: Repository,
    pull_request: PullRequestBody,
}

#[derive(Deserialize)]
struct PullRequestBody {
    head: HeadWire,
    base: BaseWire,
    #[serde(default)]
    merged: Option<bool>,
    #[serde(default)]
    updated_at: Option<DateTime<FixedOffset>>,
}

#[derive(Deserialize)]
struct HeadWire {
    sha: String,
    #[serde(rename = "ref")]
    git_ref: String,
    #[serde(default)]
    repo: Option<HeadRepoWire>,
}

#[derive(Deserialize)]
struct HeadRepoWire {
    #[serde(default)]
    clone_url: Option<String>,
}

#[derive(Deserialize)]
struct BaseWire {
    #[serde(rename = "ref")]
    git_ref: String,
}

/// Parses a webhook delivery given its `X-GitHub-Event` header and raw body. Event types other
/// than `ping`, `push` and `pull_request` give [`GithubEvent::Other`] without parsing the body.
pub fn parse_event(event: &str, body: &[u8]) -> Result<GithubEvent, WebhookPayloadError> {
    let event = event.trim();
    let fail = |path: &str, message: String| WebhookPayloadError {
        event: event.to_string(),
        path: path.to_string(),
        message,
    };
    match event {
        "ping" => {
            let ping: PingWire = decode(event, body)?;
            Ok(GithubEvent::Ping {
                zen: ping.zen,
                hook_id: ping.hook_id,
            })
        }
        "push" => {
            let push: PushEvent = decode(event, body)?;
            check_repository(&push.repository).map_err(|(p, m)| fail(&p, m))?;
            if !push.git_ref.starts_with("refs/") || push.git_ref.len() <= "refs/".len() {
                return Err(fail(
                    "ref",
                    format!("must be a full ref like refs/heads/main (got {:?})", push.git_ref),
                ));
            }
            check_sha(&push.after).map_err(|m| fail("after", m))?;
            check_sha(&push.before).map_err(|m| fail("before", m))?;
            Ok(GithubEvent::Push(push))
        }
        "pull_request" => {
            let pr: PullRequestWire = decode(event, body)?;
            if pr.number == 0 {
                return Err(fail("number", "must be greater than 0".into()));
            }
            check_repository(&pr.repository).map_err(|(p, m)| fail(&p, m))?;
            let PullRequestBody {
                head,
                base,
                merged,
                updated_at,
            } = pr.pull_request;
            check_sha(&head.sha).map_err(|m| fail("pull_request.head.sha", m))?;
            if head.git_ref.is_empty() {
                return Err(fail("pull_request.head.ref", "must not be empty".into()));
            }
            if base.git_ref.is_empty() {
                return Err(fail("pull_request.base.ref", "must not be empty".into()));
            }
            Ok(GithubEvent::PullRequest(PullRequestEvent {
                action: PullRequestAction::from(pr.action.as_str()),
                number: pr.number,
                repository: pr.repository,
                head: PullRequestHead {
                    sha: head.sha,
                    git_ref: head.git_ref,
                    clone_url: head.repo.and_then(|r| r.clone_url),
                },
                base: PullRequestBase { git_ref: base.git_ref },
                merged: merged.unwrap_or(false),
                updated_at,
            }))
        }
        other => Ok(GithubEvent::Other {
            event: other.to_string(),
        }),
    }
}

/// Deserializes a JSON body, locating any error.
fn decode<T: serde::de::DeserializeOwned>(event: &str, body: &[u8]) -> Result<T, WebhookPayloadError> {
    let fail = |path: String, message: String| WebhookPayloadError {
        event: event.to_string(),
        path,
        message,
    };
    if body.starts_with(b"payload=") {
        let hint = "the body is form-encoded: set the webhook's content type to application/json";
        return Err(fail(ROOT_PATH.to_string(), hint.to_string()));
    }
    from_json(body).map_err(|(path, message)| fail(path, message))
}

fn check_repository(repo: &Repository) -> Result<(), (String, String)> {
    for (field, value) in [
        ("full_name", &repo.full_name),
        ("clone_url", &repo.clone_url),
        ("html_url", &repo.html_url),
    ] {
        if value.trim().is_empty() {
            return Err((format!("repository.{field}"), "must not be empty".into()));
        }
    }
    Ok(())
}

/// A commit SHA: 40 hex characters (SHA-1), or 64 for SHA-256 repositories.
fn check_sha(sha: &str) -> Result<(), String> {
    if matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(format!("must be a 40- or 64-character hex commit SHA (got {sha:?})"))
    }
}

/// What a delivery asks of the control plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebhookIntent {
    /// A push to a branch: build (and deploy) every service that tracks this repository and branch.
    Push {
        repository: String,
        branch: String,
        sha: String,
        /// The branch's commit before the push (all zeros for a new branch).
        before: String,
        /// The head commit's time, from the signed body.
        at_ms: Option<i64>,
    },
    /// A pull request opened, reopened or synchronised: build and deploy its preview.
    Preview {
        repository: String,
        number: u64,
        branch: String,
        sha: String,
        /// The pull request's `updated_at`, from the signed body.
        at_ms: Option<i64>,
    },
    /// A pull request closed: tear its preview down.
    Teardown {
        repository: String,
        number: u64,
        branch: String,
        /// The pull request's `updated_at`, from the signed body.
        at_ms: Option<i64>,
    },
    /// Nothing to do (ping, other events, tags, branch deletions).
    Ignore { outcome: String },
}

/// Where a delivery moves a ref. The delivery id is not signed, the body is: a captured delivery
/// re-sent with a fresh id carries its old body, so what the body says about the ref's history
/// tells a replayed or late delivery from a new one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefMove {
    /// `refs/heads/<branch>` for a push, `refs/pull/<n>/head` for a pull request.
    pub git_ref: String,
    /// The ref's commit after the event; empty for a closed pull request.
    pub sha: String,
    /// The commit the ref held before, when the event says (a push's `before`).
    pub before: Option<String>,
    /// When it happened, as the signed body says (milliseconds since the epoch).
    pub at_ms: Option<i64>,
}

/// The SHA GitHub sends as `after` when a ref is deleted.
const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

impl WebhookIntent {
    /// The repository (as [`repository_key`]) the intent concerns; `None` for [`WebhookIntent::Ignore`].
    pub fn repository(&self) -> Option<&str> {
        match self {
            WebhookIntent::Push { repository, .. }
            | WebhookIntent::Preview { repository, .. }
            | WebhookIntent::Teardown { repository, .. } => Some(repository),
            WebhookIntent::Ignore { .. } => None,
        }
    }

    /// The ref this intent moves, and how; `None` for [`WebhookIntent::Ignore`].
    pub fn ref_move(&self) -> Option<RefMove> {
        let pull = |number: &u64| format!("refs/pull/{number}/head");
        match self {
            WebhookIntent::Push {
                branch,
                sha,
                before,
                at_ms,
                ..
            } => Some(RefMove {
                git_ref: format!("refs/heads/{branch}"),
                sha: sha.clone(),
                before: Some(before.clone()),
                at_ms: *at_ms,
            }),
            WebhookIntent::Preview { number, sha, at_ms, .. } => Some(RefMove {
                git_ref: pull(number),
                sha: sha.clone(),
                before: None,
                at_ms: *at_ms,
            }),
            WebhookIntent::Teardown { number, at_ms, .. } => Some(RefMove {
                git_ref: pull(number),
                sha: String::new(),
                before: None,
                at_ms: *at_ms,
            }),
            WebhookIntent::Ignore { .. } => None,
        }
    }
}

impl From<GithubEvent> for WebhookIntent {
    /// What an event asks of Enclii.
    fn from(event: GithubEvent) -> Self {
        match event {
            GithubEvent::Ping { .. } => WebhookIntent::Ignore { outcome: "pong".into() },
            GithubEvent::Other { event } => WebhookIntent::Ignore {
                outcome: format!("ignored: Enclii does not act on `{event}` events"),
            },
            GithubEvent::Push(push) => match push.branch() {
                _ if push.deleted || push.after == ZERO_SHA => WebhookIntent::Ignore {
                    outcome: "ignored: a branch or tag deletion".into(),
                },
                None => WebhookIntent::Ignore {
                    outcome: format!("ignored: `{}` is not a branch", push.git_ref),
                },
                Some(branch) => WebhookIntent::Push {
                    repository: repository_key(&push.repository.html_url),
                    branch: branch.to_string(),
                    sha: push.after.to_ascii_lowercase(),
                    before: push.before.to_ascii_lowercase(),
                    at_ms: push
                        .head_commit
                        .as_ref()
                        .and_then(|c| c.timestamp)
                        .map(|t| t.timestamp_millis()),
                },
            },
            GithubEvent::PullRequest(pr) => {
                let repository = repository_key(&pr.repository.html_url);
                let at_ms = pr.updated_at.map(|t| t.timestamp_millis());
                match pr.action {
                    PullRequestAction::Opened | PullRequestAction::Reopened | PullRequestAction::Synchronize => {
                        WebhookIntent::Preview {
                            repository,
                            number: pr.number,
                            branch: pr.head.git_ref,
                            sha: pr.head.sha.to_ascii_lowercase(),
                            at_ms,
                        }
                    }
                    PullRequestAction::Closed => WebhookIntent::Teardown {
                        repository,
                        number: pr.number,
                        branch: pr.head.git_ref,
                        at_ms,
                    },
                    other => WebhookIntent::Ignore {
                        outcome: format!("ignored: pull_request action `{}`", other.as_str()),
                    },
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    const SHA_A: &str = "6dcb09b5b57875f334f61aebed695e2e4193db5e";
    const SHA_B: &str = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c";
    const ZERO: &str = "0000000000000000000000000000000000000000";

    fn repository() -> Value {
        json!({
            "id": 1296269,
            "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5",
            "name": "repo",
            "full_name": "org/repo",
            "private": false,
            "owner": {"login": "org", "id": 1, "type": "Organization"},
            "html_url": "https://github.com/org/repo",
            "clone_url": "https://github.com/org/repo.git",
            "ssh_url": "git@github.com:org/repo.git",
            "default_branch": "main",
            "pushed_at": 1700000000
        })
    }

    fn push(git_ref: &str, before: &str, after: &str, deleted: bool) -> Value {
        let head_commit = if deleted {
            Value::Null
        } else {
            json!({
                "id": after,
                "tree_id": "f9d2a07e9488b91af2641b26b9407fe22a451433",
                "distinct": true,
                "message": "Fix the checkout\n\nLonger body.",
                "timestamp": "2024-05-01T12:00:00Z",
                "author": {"name": "Ada", "email": "ada@example.com", "username": "ada"},
                "committer": {"name": "GitHub", "email": "noreply@github.com", "username": "web-flow"},
                "added": [], "removed": [], "modified": ["src/main.rs"]
            })
        };
        json!({
            "ref": git_ref,
            "before": before,
            "after": after,
            "repository": repository(),
            "pusher": {"name": "ada", "email": "ada@example.com"},
            "sender": {"login": "ada", "id": 2},
            "created": before == ZERO,
            "deleted": deleted,
            "forced": false,
            "base_ref": null,
            "compare": "https://github.com/org/repo/compare/6dcb09b5b578...0d1a26e67d8f",
            "commits": [],
            "head_commit": head_commit
        })
    }

    fn pull_request(action: &str, merged: Option<bool>) -> Value {
        json!({
            "action": action,
            "number": 42,
            "pull_request": {
                "url": "https://api.github.com/repos/org/repo/pulls/42",
                "id": 1,
                "number": 42,
                "state": if action == "closed" { "closed" } else { "open" },
                "title": "Add checkout",
                "user": {"login": "ada"},
                "head": {
                    "label": "ada:feature/checkout",
                    "ref": "feature/checkout",
                    "sha": SHA_B,
                    "user": {"login": "ada"},
                    "repo": {"full_name": "ada/repo", "clone_url": "https://github.com/ada/repo.git"}
                },
                "base": {
                    "label": "org:main",
                    "ref": "main",
                    "sha": SHA_A,
                    "repo": repository()
                },
                "merged": merged,
                "merge_commit_sha": null,
                "draft": false
            },
            "before": SHA_A,
            "after": SHA_B,
            "repository": repository(),
            "sender": {"login": "ada"}
        })
    }

    fn parse(event: &str, body: &Value) -> Result<GithubEvent, WebhookPayloadError> {
        parse_event(event, body.to_string().as_bytes())
    }

    fn parse_push(body: &Value) -> PushEvent {
        match parse("push", body).unwrap() {
            GithubEvent::Push(p) => p,
            other => panic!("{other:?}"),
        }
    }

    fn parse_pr(body: &Value) -> PullRequestEvent {
        match parse("pull_request", body).unwrap() {
            GithubEvent::PullRequest(p) => p,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ping() {
        let body = json!({
            "zen": "Keep it logically awesome.",
            "hook_id": 109948940,
            "hook": {"type": "Repository", "id": 109948940, "events": ["push", "pull_request"], "config": {"content_type": "json"}},
            "repository": repository(),
            "sender": {"login": "ada"}
        });
        assert_eq!(
            parse("ping", &body).unwrap(),
            GithubEvent::Ping {
                zen: Some("Keep it logically awesome.".into()),
                hook_id: Some(109948940)
            }
        );
        assert_eq!(
            parse("ping", &json!({})).unwrap(),
            GithubEvent::Ping {
                zen: None,
                hook_id: None
            }
        );
    }

    #[test]
    fn push_to_a_branch() {
        let p = parse_push(&push("refs/heads/main", SHA_A, SHA_B, false));
        assert_eq!(p.branch(), Some("main"));
        assert_eq!(p.tag(), None);
        assert_eq!((p.before.as_str(), p.after.as_str()), (SHA_A, SHA_B));
        assert!(!p.deleted && !p.created);
        assert_eq!(p.repository.full_name, "org/repo");
        assert_eq!(p.repository.clone_url, "https://github.com/org/repo.git");
        assert_eq!(p.repository.html_url, "https://github.com/org/repo");
        let head = p.head_commit.unwrap();
        assert_eq!(head.message.as_deref(), Some("Fix the checkout\n\nLonger body."));
        assert_eq!(head.author.unwrap().name.as_deref(), Some("Ada"));
        assert_eq!(p.pusher.unwrap().name.as_deref(), Some("ada"));
        let nested = parse_push(&push("refs/heads/feature/a", ZERO, SHA_B, false));
        assert_eq!(nested.branch(), Some("feature/a"));
        assert!(nested.created);
    }

    #[test]
    fn push_of_a_tag() {
        let p = parse_push(&push("refs/tags/v1.2.0", ZERO, SHA_B, false));
        assert_eq!(p.branch(), None);
        assert_eq!(p.tag(), Some("v1.2.0"));
    }

    #[test]
    fn branch_deletion() {
        let p = parse_push(&push("refs/heads/old", SHA_A, ZERO, true));
        assert!(p.deleted);
        assert_eq!(p.after, ZERO);
        assert_eq!(p.head_commit, None);
        assert_eq!(p.branch(), Some("old"));
    }

    #[test]
    fn sha256_repositories() {
        let long = "a".repeat(64);
        assert_eq!(parse_push(&push("refs/heads/main", SHA_A, &long, false)).after, long);
    }

    #[test]
    fn pull_request_opened_synchronize_closed() {
        let p = parse_pr(&pull_request("opened", Some(false)));
        assert_eq!(p.action, PullRequestAction::Opened);
        assert_eq!(p.number, 42);
        assert_eq!(p.preview_environment(), "preview-42");
        assert_eq!(p.head.sha, SHA_B);
        assert_eq!(p.head.git_ref, "feature/checkout");
        assert_eq!(p.head.clone_url.as_deref(), Some("https://github.com/ada/repo.git"));
        assert_eq!(p.base.git_ref, "main");
        assert_eq!(p.repository.full_name, "org/repo");
        assert!(!p.merged);

        assert_eq!(
            parse_pr(&pull_request("synchronize", None)).action,
            PullRequestAction::Synchronize
        );
        assert_eq!(
            parse_pr(&pull_request("reopened", None)).action,
            PullRequestAction::Reopened
        );
        let closed = parse_pr(&pull_request("closed", Some(true)));
        assert_eq!(closed.action, PullRequestAction::Closed);
        assert!(closed.merged);
        let labeled = parse_pr(&pull_request("labeled", Some(false)));
        assert_eq!(labeled.action, PullRequestAction::Other("labeled".into()));
        assert_eq!(labeled.action.as_str(), "labeled");

        let mut from_deleted_fork = pull_request("closed", Some(false));
        from_deleted_fork["pull_request"]["head"]["repo"] = Value::Null;
        assert_eq!(parse_pr(&from_deleted_fork).head.clone_url, None);
    }

    #[test]
    fn other_events_are_not_parsed() {
        assert_eq!(
            parse_event("issues", b"not even json").unwrap(),
            GithubEvent::Other { event: "issues".into() }
        );
    }

    #[track_caller]
    fn rejects(event: &str, body: &Value, path: &str, needle: &str) {
        let e = parse(event, body).unwrap_err();
        assert_eq!((e.event.as_str(), e.path.as_str()), (event, path), "{e}");
        assert!(e.message.contains(needle), "{e}");
    }

    #[test]
    fn errors_name_the_field() {
        let mut body = push("refs/heads/main", SHA_A, SHA_B, false);
        body["after"] = "abc123".into();
        rejects("push", &body, "after", "40- or 64-character hex");
        body["after"] = "g".repeat(40).into();
        rejects("push", &body, "after", "hex");

        let mut body = push("refs/heads/main", SHA_A, SHA_B, false);
        body.as_object_mut().unwrap().remove("ref");
        rejects("push", &body, "ref", "missing field `ref`");

        let mut body = push("refs/heads/main", SHA_A, SHA_B, false);
        body["repository"].as_object_mut().unwrap().remove("clone_url");
        rejects("push", &body, "repository.clone_url", "missing field");

        let mut body = push("main", SHA_A, SHA_B, false);
        rejects("push", &body, "ref", "full ref");
        body["ref"] = "refs/heads/main".into();
        body["repository"]["full_name"] = 7.into();
        rejects("push", &body, "repository.full_name", "invalid type");

        let mut body = pull_request("opened", None);
        body["number"] = 0.into();
        rejects("pull_request", &body, "number", "greater than 0");
        body["number"] = (-3).into();
        rejects("pull_request", &body, "number", "invalid value");

        let mut body = pull_request("opened", None);
        body["pull_request"]["head"]["sha"] = "HEAD".into();
        rejects("pull_request", &body, "pull_request.head.sha", "hex");
        body["pull_request"]["head"].as_object_mut().unwrap().remove("sha");
        rejects("pull_request", &body, "pull_request.head.sha", "missing field `sha`");

        let mut body = pull_request("opened", None);
        body["pull_request"]["base"].as_object_mut().unwrap().remove("ref");
        rejects("pull_request", &body, "pull_request.base.ref", "missing field `ref`");

        let e = parse_event("push", b"payload=%7B%7D").unwrap_err();
        assert!(e.message.contains("application/json"), "{e}");
        let e = parse_event("push", b"").unwrap_err();
        assert_eq!(e.path, ROOT_PATH);
        let e = parse_event("push", b"[]").unwrap_err();
        assert_eq!(e.path, ROOT_PATH);
        let e = parse_event("pull_request", b"{\"action\": \"opened\"} trailing").unwrap_err();
        assert_eq!(e.path, "number", "{e}");
        let e = parse_event("ping", b"{\"zen\": \"\xff\"}").unwrap_err();
        assert_eq!(e.path, "zen", "{e}");
        assert_eq!(
            e.to_string(),
            format!("invalid `ping` payload: {}: {}", e.path, e.message)
        );
    }

    #[test]
    fn events_become_intents_that_name_their_repository() {
        let push = |after: &str, git_ref: &str| {
            let body = serde_json::json!({
                "ref": git_ref, "after": after, "before": "0".repeat(40), "deleted": false,
                "repository": {
                    "full_name": "org/shop",
                    "clone_url": "https://github.com/org/shop.git",
                    "html_url": "https://github.com/org/shop",
                },
            });
            WebhookIntent::from(parse_event("push", body.to_string().as_bytes()).unwrap())
        };
        let sha = "A".repeat(40);
        let intent = push(&sha, "refs/heads/main");
        assert_eq!(
            intent,
            WebhookIntent::Push {
                repository: "github.com/org/shop".into(),
                branch: "main".into(),
                sha: "a".repeat(40),
                before: "0".repeat(40),
                at_ms: None,
            }
        );
        assert_eq!(intent.repository(), Some("github.com/org/shop"));
        let deletion = push(ZERO_SHA, "refs/heads/main");
        assert!(matches!(deletion, WebhookIntent::Ignore { .. }), "{deletion:?}");
        assert_eq!(deletion.repository(), None);
        assert!(matches!(push(&sha, "refs/tags/v1"), WebhookIntent::Ignore { .. }));
    }

    #[test]
    fn intents_carry_the_signed_history_of_their_ref() {
        let mut body = push("refs/heads/main", SHA_A, SHA_B, false);
        body["head_commit"]["timestamp"] = "2015-05-05T19:40:15-04:00".into();
        let intent = WebhookIntent::from(parse_event("push", body.to_string().as_bytes()).unwrap());
        let moved = intent.ref_move().unwrap();
        assert_eq!(moved.git_ref, "refs/heads/main");
        assert_eq!((moved.sha.as_str(), moved.before.as_deref()), (SHA_B, Some(SHA_A)));
        assert_eq!(moved.at_ms, Some(1_430_869_215_000));

        body["head_commit"]["timestamp"] = "yesterday".into();
        let err = parse_event("push", body.to_string().as_bytes()).unwrap_err();
        assert_eq!(err.path, "head_commit.timestamp", "{err}");
    }
}
