//! The roles matrix, table-driven over every `/v1` route: each role (bound on one project, or on
//! every project with `*`), and a caller without any role, either passes authorisation or gets `403` — exactly as the product's
//! matrix says. A route missing from the table fails the test, so new routes cannot skip it.

mod support;

use std::collections::BTreeSet;

use axum::http::StatusCode;
use enclii_api::auth::{Permission, Role};
use support::{Db, TestApi, api, sha};

/// Who may call a route.
#[derive(Clone, Copy, Debug)]
enum Access {
    /// Any authenticated caller (the handler narrows what they see).
    Anyone,
    /// `permission` on the project `shop`.
    Project(Permission),
    /// `permission` platform-wide: only `*` bindings grant it.
    Platform(Permission),
    /// `permission` on the project of an object found by id: callers who cannot read that project
    /// get `404`, as for a missing id.
    ById(Permission),
}

struct Case {
    method: &'static str,
    /// The concrete URI; `{release}`, `{deployment}`, `{job}`, `{pipeline}`, `{route}`, `{domain}`, `{token}`
    /// are filled in from the fixture.
    uri: &'static str,
    /// The OpenAPI path this exercises.
    template: &'static str,
    body: Option<&'static str>,
    access: Access,
}

const fn case(
    method: &'static str,
    uri: &'static str,
    template: &'static str,
    body: Option<&'static str>,
    access: Access,
) -> Case {
    Case {
        method,
        uri,
        template,
        body,
        access,
    }
}

use Access::*;
use Permission::*;

const SERVICE_JSON: &str = "{service}";

/// Every bearer-authenticated route, in an order where destructive calls come last.
fn cases() -> Vec<Case> {
    vec![
        case("GET", "/v1/projects", "/v1/projects", None, Anyone),
        case(
            "POST",
            "/v1/projects",
            "/v1/projects",
            Some(r#"{"slug":"newp"}"#),
            Platform(ProjectWrite),
        ),
        case(
            "GET",
            "/v1/projects/shop",
            "/v1/projects/{project}",
            None,
            Project(Read),
        ),
        case(
            "PATCH",
            "/v1/projects/shop",
            "/v1/projects/{project}",
            Some(r#"{"name":"Shop"}"#),
            Project(ProjectWrite),
        ),
        case(
            "GET",
            "/v1/projects/shop/environments",
            "/v1/projects/{project}/environments",
            None,
            Project(Read),
        ),
        case(
            "POST",
            "/v1/projects/shop/environments",
            "/v1/projects/{project}/environments",
            Some(r#"{"name":"preview-99"}"#),
            Project(ProjectWrite),
        ),
        case(
            "PATCH",
            "/v1/projects/shop/environments/prod",
            "/v1/projects/{project}/environments/{environment}",
            Some(r#"{"budget_cents":100}"#),
            Project(Govern),
        ),
        case(
            "GET",
            "/v1/projects/shop/services",
            "/v1/projects/{project}/services",
            None,
            Project(Read),
        ),
        case(
            "POST",
            "/v1/projects/shop/services",
            "/v1/projects/{project}/services",
            Some(SERVICE_JSON),
            Project(Deploy),
        ),
        case(
            "GET",
            "/v1/projects/shop/services/api",
            "/v1/projects/{project}/services/{service}",
            None,
            Project(Read),
        ),
        case(
            "PUT",
            "/v1/projects/shop/services/api",
            "/v1/projects/{project}/services/{service}",
            Some(SERVICE_JSON),
            Project(Deploy),
        ),
        case(
            "GET",
            "/v1/projects/shop/services/api/specs",
            "/v1/projects/{project}/services/{service}/specs",
            None,
            Project(Read),
        ),
        case(
            "GET",
            "/v1/projects/shop/services/api/events",
            "/v1/projects/{project}/services/{service}/events",
            None,
            Project(Read),
        ),
        case(
            "GET",
            "/v1/projects/shop/releases",
            "/v1/projects/{project}/releases",
            None,
            Project(Read),
        ),
        case(
            "GET",
            "/v1/projects/shop/services/api/releases",
            "/v1/projects/{project}/services/{service}/releases",
            None,
            Project(Read),
        ),
        case(
            "POST",
            "/v1/projects/shop/services/api/releases",
            "/v1/projects/{project}/services/{service}/releases",
            Some(r#"{"git_sha":"2222222222222222222222222222222222222222"}"#),
            Project(Deploy),
        ),
        case(
            "GET",
            "/v1/projects/shop/pipelines",
            "/v1/projects/{project}/pipelines",
            None,
            Project(Read),
        ),
        case(
            "GET",
            "/v1/projects/shop/deliveries",
            "/v1/projects/{project}/deliveries",
            None,
            Project(Read),
        ),
        case("GET", "/v1/releases/{release}", "/v1/releases/{id}", None, ById(Read)),
        case(
            "POST",
            "/v1/projects/shop/services/api/deployments",
            "/v1/projects/{project}/services/{service}/deployments",
            Some(r#"{"release":{release}}"#),
            Project(Deploy),
        ),
        case(
            "GET",
            "/v1/projects/shop/deployments",
            "/v1/projects/{project}/deployments",
            None,
            Project(Read),
        ),
        case(
            "GET",
            "/v1/deployments/{deployment}",
            "/v1/deployments/{id}",
            None,
            ById(Read),
        ),
        case(
            "POST",
            "/v1/projects/shop/services/api/rollback",
            "/v1/projects/{project}/services/{service}/rollback",
            Some(r#"{"to":{release}}"#),
            Project(Deploy),
        ),
        case(
            "GET",
            "/v1/projects/shop/secrets",
            "/v1/projects/{project}/secrets",
            None,
            Project(Read),
        ),
        case(
            "PUT",
            "/v1/projects/shop/secrets/API_KEY",
            "/v1/projects/{project}/secrets/{name}",
            Some(r#"{"value":"v","service":"api"}"#),
            Project(ServiceSecrets),
        ),
        case(
            "PUT",
            "/v1/projects/shop/secrets/SHARED",
            "/v1/projects/{project}/secrets/{name}",
            Some(r#"{"value":"v"}"#),
            Project(ProjectSecrets),
        ),
        case(
            "PUT",
            "/v1/projects/shop/secrets/PROD_ONLY",
            "/v1/projects/{project}/secrets/{name}",
            Some(r#"{"value":"v","environment":"prod"}"#),
            Project(ProjectSecrets),
        ),
        case(
            "DELETE",
            "/v1/projects/shop/secrets/API_KEY?service=api",
            "/v1/projects/{project}/secrets/{name}",
            None,
            Project(ServiceSecrets),
        ),
        case(
            "DELETE",
            "/v1/projects/shop/secrets/SHARED",
            "/v1/projects/{project}/secrets/{name}",
            None,
            Project(ProjectSecrets),
        ),
        case(
            "GET",
            "/v1/projects/shop/routes",
            "/v1/projects/{project}/routes",
            None,
            Project(Read),
        ),
        case(
            "POST",
            "/v1/projects/shop/routes",
            "/v1/projects/{project}/routes",
            Some(r#"{"service":"api","host":"www.shop.test"}"#),
            Project(Routes),
        ),
        case(
            "DELETE",
            "/v1/projects/shop/routes/{route}",
            "/v1/projects/{project}/routes/{id}",
            None,
            Project(Routes),
        ),
        case(
            "GET",
            "/v1/projects/shop/domains",
            "/v1/projects/{project}/domains",
            None,
            Project(Read),
        ),
        case(
            "POST",
            "/v1/projects/shop/domains",
            "/v1/projects/{project}/domains",
            Some(r#"{"service":"api","host":"new.shop.test"}"#),
            Project(Routes),
        ),
        case(
            "GET",
            "/v1/projects/shop/domains/{domain}",
            "/v1/projects/{project}/domains/{id}",
            None,
            Project(Read),
        ),
        case(
            "POST",
            "/v1/projects/shop/domains/{domain}/verify",
            "/v1/projects/{project}/domains/{id}/verify",
            None,
            Project(Routes),
        ),
        case(
            "DELETE",
            "/v1/projects/shop/domains/{domain}",
            "/v1/projects/{project}/domains/{id}",
            None,
            Project(Routes),
        ),
        case(
            "POST",
            "/v1/projects/shop/environments/prod/addons",
            "/v1/projects/{project}/environments/{environment}/addons",
            Some(r#"{"name":"cache","kind":"redis"}"#),
            Project(Deploy),
        ),
        case(
            "GET",
            "/v1/projects/shop/addons",
            "/v1/projects/{project}/addons",
            None,
            Project(Read),
        ),
        case(
            "GET",
            "/v1/projects/shop/environments/prod/addons/cache",
            "/v1/projects/{project}/environments/{environment}/addons/{addon}",
            None,
            Project(Read),
        ),
        case(
            "GET",
            "/v1/projects/shop/environments/prod/addons/cache/credentials",
            "/v1/projects/{project}/environments/{environment}/addons/{addon}/credentials",
            None,
            Project(ServiceSecrets),
        ),
        case(
            "POST",
            "/v1/projects/shop/environments/prod/addons/cache/rotate",
            "/v1/projects/{project}/environments/{environment}/addons/{addon}/rotate",
            None,
            Project(ServiceSecrets),
        ),
        case(
            "PATCH",
            "/v1/projects/shop/environments/prod/addons/cache",
            "/v1/projects/{project}/environments/{environment}/addons/{addon}",
            Some(r#"{"backup":{"schedule":"0 3 * * *"}}"#),
            Project(Deploy),
        ),
        case(
            "POST",
            "/v1/projects/shop/environments/prod/addons/cache/backups",
            "/v1/projects/{project}/environments/{environment}/addons/{addon}/backups",
            None,
            Project(Deploy),
        ),
        case(
            "GET",
            "/v1/projects/shop/environments/prod/addons/cache/backups",
            "/v1/projects/{project}/environments/{environment}/addons/{addon}/backups",
            None,
            Project(Read),
        ),
        case(
            "POST",
            "/v1/projects/shop/environments/prod/addons/cache/restore",
            "/v1/projects/{project}/environments/{environment}/addons/{addon}/restore",
            Some(r#"{"backup":1}"#),
            Project(Deploy),
        ),
        case(
            "DELETE",
            "/v1/projects/shop/environments/prod/addons/cache",
            "/v1/projects/{project}/environments/{environment}/addons/{addon}",
            None,
            Project(Deploy),
        ),
        case(
            "GET",
            "/v1/projects/shop/repositories",
            "/v1/projects/{project}/repositories",
            None,
            Project(Read),
        ),
        case(
            "POST",
            "/v1/projects/shop/repositories/grant",
            "/v1/projects/{project}/repositories/grant",
            Some(r#"{"repository":"github.com/org/shop","project":"shop"}"#),
            Project(ProjectSecrets),
        ),
        case(
            "POST",
            "/v1/projects/shop/repositories/revoke",
            "/v1/projects/{project}/repositories/revoke",
            Some(r#"{"repository":"github.com/org/shop","project":"shop"}"#),
            Project(ProjectSecrets),
        ),
        case(
            "GET",
            "/v1/projects/shop/members",
            "/v1/projects/{project}/members",
            None,
            Project(Read),
        ),
        case(
            "PUT",
            "/v1/projects/shop/members/user:new",
            "/v1/projects/{project}/members/{subject}",
            Some(r#"{"role":"ReadOnly"}"#),
            Project(Govern),
        ),
        case(
            "DELETE",
            "/v1/projects/shop/members/user:new",
            "/v1/projects/{project}/members/{subject}",
            None,
            Project(Govern),
        ),
        case(
            "PUT",
            "/v1/projects/shop/limits",
            "/v1/projects/{project}/limits",
            Some(r#"{"max_running":4,"jobs_per_minute":60}"#),
            Project(Govern),
        ),
        case(
            "POST",
            "/v1/projects/shop/queue/pause",
            "/v1/projects/{project}/queue/pause",
            None,
            Project(Govern),
        ),
        case(
            "POST",
            "/v1/projects/shop/queue/resume",
            "/v1/projects/{project}/queue/resume",
            None,
            Project(Govern),
        ),
        case(
            "GET",
            "/v1/projects/shop/services/api/logs?tail=5",
            "/v1/projects/{project}/services/{service}/logs",
            None,
            Project(Read),
        ),
        case(
            "GET",
            "/v1/projects/shop/status",
            "/v1/projects/{project}/status",
            None,
            Project(Read),
        ),
        case(
            "POST",
            "/v1/projects/shop/services/api/previews",
            "/v1/projects/{project}/services/{service}/previews",
            Some(r#"{"git_sha":"0123456789abcdef0123456789abcdef01234567","branch":"feature"}"#),
            Project(Deploy),
        ),
        case("GET", "/v1/whoami", "/v1/whoami", None, Anyone),
        case("GET", "/v1/tokens", "/v1/tokens", None, Anyone),
        case(
            "POST",
            "/v1/tokens",
            "/v1/tokens",
            Some(r#"{"name":"mine","scopes":["read"],"project":"shop"}"#),
            Anyone,
        ),
        case("DELETE", "/v1/tokens/{token}", "/v1/tokens/{id}", None, Anyone),
        case("GET", "/v1/audit?project=shop", "/v1/audit", None, Project(Read)),
        case("GET", "/v1/audit", "/v1/audit", None, Platform(Read)),
        case(
            "POST",
            "/v1/jobs",
            "/v1/jobs",
            Some(r#"{"kind":"ping","project":"shop"}"#),
            Project(Govern),
        ),
        case("GET", "/v1/jobs/{job}", "/v1/jobs/{id}", None, ById(Read)),
        case("GET", "/v1/jobs/{job}/logs", "/v1/jobs/{id}/logs", None, ById(Read)),
        case(
            "GET",
            "/v1/jobs/{job}/logs/stream",
            "/v1/jobs/{id}/logs/stream",
            None,
            ById(Read),
        ),
        case(
            "POST",
            "/v1/jobs/{job}/cancel",
            "/v1/jobs/{id}/cancel",
            None,
            ById(Deploy),
        ),
        case(
            "POST",
            "/v1/jobs/{job}/retry",
            "/v1/jobs/{id}/retry",
            None,
            ById(Deploy),
        ),
        case(
            "GET",
            "/v1/pipelines/{pipeline}",
            "/v1/pipelines/{id}",
            None,
            ById(Read),
        ),
        case(
            "POST",
            "/v1/pipelines/{pipeline}/cancel",
            "/v1/pipelines/{id}/cancel",
            None,
            ById(Deploy),
        ),
        case(
            "GET",
            "/v1/pipelines/{pipeline}/stream",
            "/v1/pipelines/{id}/stream",
            None,
            ById(Read),
        ),
        case("GET", "/v1/queue/stats", "/v1/queue/stats", None, Platform(Read)),
        case(
            "GET",
            "/v1/queue/jobs?state=dead",
            "/v1/queue/jobs",
            None,
            Platform(Read),
        ),
        case(
            "GET",
            "/v1/queue/jobs?project=shop&state=available",
            "/v1/queue/jobs",
            None,
            Project(Read),
        ),
        case(
            "GET",
            "/v1/queue/throughput",
            "/v1/queue/throughput",
            None,
            Platform(Read),
        ),
        case("GET", "/v1/queue/workers", "/v1/queue/workers", None, Platform(Read)),
        case("GET", "/v1/queue/controls", "/v1/queue/controls", None, Platform(Read)),
        case("GET", "/v1/queue/stream", "/v1/queue/stream", None, Platform(Read)),
        case(
            "POST",
            "/v1/projects/shop/services/api/jobs/report/runs",
            "/v1/projects/{project}/services/{service}/jobs/{job}/runs",
            None,
            Project(Deploy),
        ),
        case(
            "GET",
            "/v1/projects/shop/services/api/jobs/runs?job=report",
            "/v1/projects/{project}/services/{service}/jobs/runs",
            None,
            Project(Read),
        ),
        case(
            "GET",
            "/v1/cost?project=shop&since=30d",
            "/v1/cost",
            None,
            Project(Read),
        ),
        case(
            "POST",
            "/v1/projects/shop/environments/dev/resume",
            "/v1/projects/{project}/environments/{environment}/resume",
            None,
            Project(Govern),
        ),
        case(
            "DELETE",
            "/v1/projects/shop/environments/stage",
            "/v1/projects/{project}/environments/{environment}",
            None,
            Project(ProjectWrite),
        ),
        case(
            "DELETE",
            "/v1/projects/shop/services/api",
            "/v1/projects/{project}/services/{service}",
            None,
            Project(ProjectWrite),
        ),
        case(
            "DELETE",
            "/v1/projects/shop",
            "/v1/projects/{project}",
            None,
            Project(ProjectDelete),
        ),
    ]
}

/// Routes outside bearer authentication, with how they are protected.
const UNAUTHENTICATED: [(&str, &str); 2] = [
    ("POST", "/v1/webhooks/github"), // HMAC signature
    ("GET", "/v1/openapi.json"),     // public document
];

/// Whether a caller holding `role` on `bound_on` (`shop` or `*`) may call a route.
fn allowed(role: Option<Role>, bound_on: &str, access: Access) -> bool {
    match (role, access) {
        (_, Anyone) => true,
        (Some(role), Project(permission) | ById(permission)) => role.allows(permission),
        (Some(role), Platform(permission)) => bound_on == "*" && role.allows(permission),
        (None, _) => false,
    }
}

struct Fixture {
    release: i64,
    deployment: i64,
    job: i64,
    pipeline: i64,
    route: i64,
    domain: i64,
    service_json: String,
}

async fn fixture(t: &TestApi) -> Fixture {
    t.project_with_service("shop", "org/shop").await;
    let build = t
        .admin(
            "POST",
            "/v1/projects/shop/services/api/releases",
            Some(&format!(r#"{{"git_sha":"{}"}}"#, sha(1))),
        )
        .await;
    let release = build.body["release"]["id"].as_i64().unwrap();
    let pipeline = build.body["pipeline"].as_i64().unwrap();
    let run = t.admin("GET", &format!("/v1/pipelines/{pipeline}"), None).await;
    let job = run.body["steps"][0]["job"].as_i64().unwrap();
    t.finish_signed(release).await;
    let deployment = t
        .admin(
            "POST",
            "/v1/projects/shop/services/api/deployments",
            Some(&format!(r#"{{"release":{release}}}"#)),
        )
        .await;
    let route = t
        .admin(
            "POST",
            "/v1/projects/shop/routes",
            Some(r#"{"service":"api","host":"api.shop.test"}"#),
        )
        .await;
    let domain = t
        .admin(
            "POST",
            "/v1/projects/shop/domains",
            Some(r#"{"service":"api","host":"app.shop.test"}"#),
        )
        .await;
    let service = t.admin("GET", "/v1/projects/shop/services/api", None).await;
    Fixture {
        domain: domain.body["id"].as_i64().unwrap(),
        release,
        deployment: deployment.body["id"].as_i64().unwrap(),
        job,
        pipeline,
        route: route.body["id"].as_i64().unwrap(),
        service_json: service.body["spec"].to_string(),
    }
}

fn fill(text: &str, f: &Fixture, token_id: &str) -> String {
    text.replace("{release}", &f.release.to_string())
        .replace("{deployment}", &f.deployment.to_string())
        .replace("{job}", &f.job.to_string())
        .replace("{pipeline}", &f.pipeline.to_string())
        .replace("{route}", &f.route.to_string())
        .replace("{domain}", &f.domain.to_string())
        .replace("{token}", token_id)
        .replace(SERVICE_JSON, &f.service_json)
}

async fn run_matrix(role: Option<Role>, bound_on: &str) {
    let t = api(Db::Sqlite).await;
    let f = fixture(&t).await;
    let subject = format!("user:{}", role.map_or("outsider", Role::as_str));
    let token = match role {
        Some(role) => t.user(&subject, role.as_str(), bound_on).await,
        None => {
            let token = enclii_auth::token::generate();
            let record = support::token_record(&token, &subject, &support::all_scopes(), None, None);
            t.store.insert_token("test", &record).await.unwrap();
            token.plaintext
        }
    };
    // A second token of the caller's, for the revoke row (revoking the one in use would end the run).
    let spare = enclii_auth::token::generate();
    let record = support::token_record(&spare, &subject, &support::all_scopes(), None, None);
    t.store.insert_token("test", &record).await.unwrap();
    let token_id = spare.id.clone();
    let mut failures = Vec::new();
    for case in cases() {
        let uri = fill(case.uri, &f, &token_id);
        let body = case.body.map(|b| fill(b, &f, &token_id));
        let r = t.call(&token, case.method, &uri, body.as_deref()).await;
        let expect = allowed(role, bound_on, case.access);
        let hidden = matches!(case.access, ById(_)) && role.is_none();
        let ok = if expect {
            r.status != StatusCode::FORBIDDEN && r.status != StatusCode::UNAUTHORIZED
        } else if hidden {
            r.status == StatusCode::NOT_FOUND
        } else {
            r.status == StatusCode::FORBIDDEN
                && r.content_type == "application/problem+json"
                && r.body["hint"].as_str().is_some_and(|h| !h.is_empty())
        };
        if !ok {
            failures.push(format!(
                "{} {uri} ({:?}): expected {}, got {r:?}",
                case.method,
                case.access,
                if expect {
                    "allowed"
                } else if hidden {
                    "404"
                } else {
                    "403"
                }
            ));
        }
    }
    assert!(failures.is_empty(), "{subject} on {bound_on}:\n{}", failures.join("\n"));
}

#[tokio::test]
async fn owner() {
    run_matrix(Some(Role::Owner), "shop").await;
}

#[tokio::test]
async fn admin() {
    run_matrix(Some(Role::Admin), "shop").await;
}

#[tokio::test]
async fn developer() {
    run_matrix(Some(Role::Developer), "shop").await;
}

#[tokio::test]
async fn read_only() {
    run_matrix(Some(Role::ReadOnly), "shop").await;
}

#[tokio::test]
async fn without_a_role() {
    run_matrix(None, "shop").await;
}

#[tokio::test]
async fn platform_admin() {
    run_matrix(Some(Role::Admin), "*").await;
}

#[tokio::test]
async fn platform_read_only() {
    run_matrix(Some(Role::ReadOnly), "*").await;
}

#[test]
fn the_table_covers_every_route_of_the_openapi_document() {
    let doc = serde_json::to_value(enclii_api::openapi()).unwrap();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let mut tested: BTreeSet<(String, String)> = cases()
        .iter()
        .map(|c| (c.method.to_string(), c.template.to_string()))
        .collect();
    tested.extend(UNAUTHENTICATED.iter().map(|(m, p)| (m.to_string(), p.to_string())));
    documented.insert(("GET".into(), "/v1/openapi.json".into()));
    let untested: Vec<_> = documented.difference(&tested).collect();
    let undocumented: Vec<_> = tested.difference(&documented).collect();
    assert!(
        untested.is_empty(),
        "routes missing from the roles matrix: {untested:?}"
    );
    assert!(
        undocumented.is_empty(),
        "matrix rows for routes that do not exist: {undocumented:?}"
    );
}
