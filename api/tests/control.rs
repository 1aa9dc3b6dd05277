//! The control plane end to end through the HTTP router, on PostgreSQL and on SQLite: projects,
//! environments, services from Service Specs, releases, deployments, rollback, secrets, routes,
//! tokens, audit, rate limits and the OpenAPI document.

mod support;

use axum::http::StatusCode;
use enclii_api::auth::RateLimit;
use enclii_store::{ReleaseOutcome, SecretScope};
use serde_json::json;
use support::{Db, api, api_with, service_yaml, sha};

async fn projects_environments_and_services(db: Db) {
    let t = api(db).await;
    let r = t
        .admin("POST", "/v1/projects", Some(r#"{"slug":"shop","name":"The Shop"}"#))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let r = t.admin("POST", "/v1/projects", Some(r#"{"slug":"shop"}"#)).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );
    assert!(r.body["detail"].as_str().unwrap().contains("already exists"));
    let r = t.admin("POST", "/v1/projects", Some(r#"{"slug":"Bad Slug"}"#)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
    assert_eq!(r.body["errors"][0]["path"], "slug");

    let envs = t.admin("GET", "/v1/projects/shop/environments", None).await;
    let names: Vec<&str> = envs
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dev", "prod", "stage"]);
    let r = t
        .admin("POST", "/v1/projects/shop/environments", Some(r#"{"name":"qa"}"#))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
    let r = t
        .admin(
            "POST",
            "/v1/projects/shop/environments",
            Some(r#"{"name":"preview-12","budget_cents":5000}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let r = t
        .admin(
            "PATCH",
            "/v1/projects/shop/environments/prod",
            Some(r#"{"budget_cents":100000,"region":"eu"}"#),
        )
        .await;
    assert_eq!((r.status, &r.body["budget_cents"]), (StatusCode::OK, &json!(100000)));

    // A service from YAML; an invalid spec names every bad field and changes nothing.
    let bad = service_yaml("shop", "api", "org/shop")
        .replace("min: 1, max: 3", "min: 5, max: 2")
        .replace("ports: [3000]", "ports: [0]");
    let r = t.apply_yaml(&t.admin, "shop", &bad).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
    assert_eq!(r.content_type, "application/problem+json");
    let paths: Vec<&str> = r.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"spec.runtime.replicas.min"), "{paths:?}");
    assert!(paths.contains(&"spec.runtime.ports[0]"), "{paths:?}");
    assert!(r.body["detail"].as_str().unwrap().contains("must be ≤ max (got 5 > 2)"));
    let unknown = service_yaml("shop", "api", "org/shop").replace("ports:", "portz:");
    let r = t.apply_yaml(&t.admin, "shop", &unknown).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.body["detail"].as_str().unwrap().contains("spec.runtime"), "{r:?}");
    assert_eq!(t.admin("GET", "/v1/projects/shop/services", None).await.body, json!([]));

    let r = t
        .apply_yaml(&t.admin, "shop", &service_yaml("other", "api", "org/shop"))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.body["errors"][0]["path"], "metadata.project");

    let r = t
        .apply_yaml(&t.admin, "shop", &service_yaml("shop", "api", "org/shop"))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    assert_eq!(r.body["repository"], "github.com/org/shop");
    assert_eq!(r.body["spec"]["spec"]["runtime"]["replicas"]["max"], 3);
    // Applying again (as JSON this time) is an update: a new spec version.
    let spec_json = serde_json::to_string(&r.body["spec"])
        .unwrap()
        .replace("\"max\":3", "\"max\":8");
    let r = t.admin("PUT", "/v1/projects/shop/services/api", Some(&spec_json)).await;
    assert_eq!(
        (r.status, &r.body["spec_version"]),
        (StatusCode::OK, &json!(2)),
        "{r:?}"
    );
    let versions = t.admin("GET", "/v1/projects/shop/services/api/specs", None).await;
    assert_eq!(versions.body.as_array().unwrap().len(), 2);
    assert_eq!(versions.body[0]["spec"]["spec"]["runtime"]["replicas"]["max"], 8);
    let r = t.admin("PUT", "/v1/projects/shop/services/web", Some(&spec_json)).await;
    assert_eq!(
        (r.status, &r.body["errors"][0]["path"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("metadata.name"))
    );

    let r = t.admin("GET", "/v1/projects/nope/services", None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains("project `nope` does not exist")
    );
    let r = t.admin("DELETE", "/v1/projects/shop/services/api", None).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    assert_eq!(r.body["teardown_jobs"].as_array().map(Vec::len), Some(1), "{r:?}");
    let r = t.admin("DELETE", "/v1/projects/shop", None).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    assert_eq!(
        t.admin("GET", "/v1/projects/shop", None).await.status,
        StatusCode::NOT_FOUND
    );
}

async fn releases_deployments_and_rollback(db: Db) {
    let t = api(db).await;
    t.project_with_service("shop", "org/shop").await;
    let build = |n: u32| format!(r#"{{"git_sha":"{}"}}"#, sha(n));
    let first = t
        .admin("POST", "/v1/projects/shop/services/api/releases", Some(&build(1)))
        .await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{first:?}");
    assert_eq!(first.body["release"]["status"], "building");
    assert_eq!(
        first.body["release"]["image"],
        format!("registry.example/shop/api:{}", sha(1))
    );
    let again = t
        .admin("POST", "/v1/projects/shop/services/api/releases", Some(&build(1)))
        .await;
    assert_eq!(again.body["duplicate"], true, "the same commit is not built twice");
    assert_eq!(again.body["release"]["id"], first.body["release"]["id"]);
    let bad_sha = t
        .admin(
            "POST",
            "/v1/projects/shop/services/api/releases",
            Some(r#"{"git_sha":"main"}"#),
        )
        .await;
    assert_eq!(bad_sha.status, StatusCode::UNPROCESSABLE_ENTITY);

    // The pipeline is visible with its steps.
    let pipeline_id = first.body["pipeline"].as_i64().unwrap();
    let p = t.admin("GET", &format!("/v1/pipelines/{pipeline_id}"), None).await;
    let steps: Vec<&str> = p.body["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["clone", "build", "push", "sbom", "sign", "deploy"]);

    // A release that is still building cannot be deployed.
    let release = first.body["release"]["id"].as_i64().unwrap();
    let r = t
        .admin(
            "POST",
            "/v1/projects/shop/services/api/deployments",
            Some(&format!(r#"{{"release":{release}}}"#)),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{r:?}");
    assert!(r.body["detail"].as_str().unwrap().contains("is building, not ready"));

    // The build workers report it ready (issue 4); then it deploys, with the spec's strategy.
    let outcome = ReleaseOutcome {
        digest: Some(format!("sha256:{}", "a".repeat(64))),
        signature: Some(format!("registry.example/shop/api:sha256-{}.sig", "a".repeat(64))),
        ..Default::default()
    };
    t.store.finish_release(release, &outcome).await.unwrap();
    assert!(
        t.store.finish_release(release, &outcome).await.is_err(),
        "releases are immutable once finished"
    );
    let r = t
        .admin(
            "POST",
            "/v1/projects/shop/services/api/deployments",
            Some(&format!(r#"{{"release":{release}}}"#)),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    assert_eq!(
        (r.body["strategy"].as_str(), r.body["environment"].as_str()),
        (Some("canary"), Some("prod"))
    );
    let job = r.body["job_id"].as_i64().unwrap();
    let job = t.admin("GET", &format!("/v1/jobs/{job}"), None).await;
    assert_eq!(
        (job.body["kind"].as_str(), job.body["payload"]["commit"].as_str()),
        (Some("deploy"), Some(sha(1).as_str()))
    );

    // The deploy policy: a ready release without a signature is refused.
    let unsigned = t
        .admin("POST", "/v1/projects/shop/services/api/releases", Some(&build(3)))
        .await;
    let unsigned = unsigned.body["release"]["id"].as_i64().unwrap();
    let digest_only = ReleaseOutcome {
        digest: outcome.digest.clone(),
        ..Default::default()
    };
    t.store.finish_release(unsigned, &digest_only).await.unwrap();
    let r = t
        .admin(
            "POST",
            "/v1/projects/shop/services/api/deployments",
            Some(&format!(r#"{{"release":{unsigned}}}"#)),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{r:?}");
    assert!(r.body["detail"].as_str().unwrap().contains("is not signed"), "{r:?}");

    // A second release, then a rollback to the first.
    let second = t
        .admin("POST", "/v1/projects/shop/services/api/releases", Some(&build(2)))
        .await;
    let second_id = second.body["release"]["id"].as_i64().unwrap();
    t.store.finish_release(second_id, &outcome).await.unwrap();
    t.admin(
        "POST",
        "/v1/projects/shop/services/api/deployments",
        Some(&format!(r#"{{"release":{second_id}}}"#)),
    )
    .await;
    let r = t
        .admin(
            "POST",
            "/v1/projects/shop/services/api/rollback",
            Some(&format!(r#"{{"to":{release}}}"#)),
        )
        .await;
    assert_eq!(
        (r.status, &r.body["reason"], &r.body["release_id"]),
        (StatusCode::ACCEPTED, &json!("rollback"), &json!(release))
    );
    let list = t.admin("GET", "/v1/projects/shop/deployments?service=api", None).await;
    assert_eq!(list.body.as_array().unwrap().len(), 3);
    let releases = t.admin("GET", "/v1/projects/shop/services/api/releases", None).await;
    assert_eq!(releases.body.as_array().unwrap().len(), 3, "two signed, one unsigned");
    let r = t
        .admin("POST", "/v1/projects/shop/services/api/rollback", Some(r#"{"to":999}"#))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let audit = t
        .admin("GET", "/v1/audit?project=shop&action=deployment.rollback", None)
        .await;
    assert_eq!(audit.body.as_array().unwrap().len(), 1);
}

async fn secrets_are_sealed_versioned_and_never_returned(db: Db) {
    let t = api(db).await;
    t.project_with_service("shop", "org/shop").await;
    let value = "s3cr3t-value-do-not-leak";
    let r = t
        .admin(
            "PUT",
            "/v1/projects/shop/secrets/DATABASE_URL",
            Some(&format!(
                r#"{{"value":"{value}","service":"api","environment":"prod"}}"#
            )),
        )
        .await;
    assert_eq!((r.status, &r.body["version"]), (StatusCode::OK, &json!(1)), "{r:?}");
    let r = t
        .admin(
            "PUT",
            "/v1/projects/shop/secrets/DATABASE_URL",
            Some(r#"{"value":"rotated","service":"api","environment":"prod"}"#),
        )
        .await;
    assert_eq!(r.body["version"], 2);
    let r = t
        .admin("PUT", "/v1/projects/shop/secrets/bad-name", Some(r#"{"value":"x"}"#))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = t
        .admin(
            "PUT",
            "/v1/projects/shop/secrets/X",
            Some(r#"{"value":"x","service":"nope"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    let list = t.admin("GET", "/v1/projects/shop/secrets", None).await;
    let text = list.body.to_string();
    assert!(!text.contains(value) && !text.contains("rotated"), "{text}");
    assert_eq!(list.body[0]["version"], 2);
    let audit = t.admin("GET", "/v1/audit?project=shop&entity_type=secret", None).await;
    assert_eq!(audit.body.as_array().unwrap().len(), 2);
    assert!(!audit.body.to_string().contains(value));

    // Workers get the current value; the database only holds it sealed.
    let scope = SecretScope {
        project: "shop".into(),
        environment: Some("prod".into()),
        service: Some("api".into()),
    };
    assert_eq!(
        t.store.reveal_secret(&scope, "DATABASE_URL").await.unwrap().unwrap(),
        b"rotated"
    );
    let r = t
        .admin(
            "DELETE",
            "/v1/projects/shop/secrets/DATABASE_URL?service=api&environment=prod",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(t.admin("GET", "/v1/projects/shop/secrets", None).await.body, json!([]));
    assert!(t.store.reveal_secret(&scope, "DATABASE_URL").await.unwrap().is_none());
}

async fn routes_refuse_conflicts(db: Db) {
    let t = api(db).await;
    t.project_with_service("shop", "org/shop").await;
    t.project_with_service("blog", "org/blog").await;
    let r = t
        .admin(
            "POST",
            "/v1/projects/shop/routes",
            Some(r#"{"service":"api","host":"api.shop.test","path":"/"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let r = t
        .admin(
            "POST",
            "/v1/projects/blog/routes",
            Some(r#"{"service":"api","host":"api.shop.test","path":"/"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let detail = r.body["detail"].as_str().unwrap();
    assert!(detail.contains("already routed to another project"), "{detail}");
    assert!(
        !detail.contains("shop/prod/api"),
        "another tenant's names are not disclosed: {detail}"
    );
    let r = t
        .admin(
            "POST",
            "/v1/projects/blog/routes",
            Some(r#"{"service":"api","host":"not a host","path":"/"}"#),
        )
        .await;
    assert_eq!(
        (r.status, &r.body["errors"][0]["path"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("host"))
    );
    // A spec claiming a taken route is refused as a whole.
    let yaml = service_yaml("blog", "api", "org/blog") + "  routes: [ { host: api.shop.test, path: / } ]\n";
    let r = t.apply_yaml(&t.admin, "blog", &yaml).await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{r:?}");
    assert!(r.body["detail"].as_str().unwrap().starts_with("spec.routes[0]:"));
    let spec = t.admin("GET", "/v1/projects/blog/services/api", None).await;
    assert_eq!(spec.body["spec_version"], 1, "nothing half-applied");
    let routes = t.admin("GET", "/v1/projects/shop/routes", None).await;
    let id = routes.body[0]["id"].as_i64().unwrap();
    assert_eq!(
        t.admin("DELETE", &format!("/v1/projects/shop/routes/{id}"), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(t.apply_yaml(&t.admin, "blog", &yaml).await.status, StatusCode::OK);
}

async fn tokens_scopes_expiry_and_revocation(db: Db) {
    let t = api(db).await;
    t.project_with_service("shop", "org/shop").await;
    let dev = t.user("user:dev", "Developer", "shop").await;
    let r = t.call("", "GET", "/v1/projects", None).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("unauthenticated"))
    );
    let r = t.call("enclii_pat_nope", "GET", "/v1/projects", None).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_token"))
    );

    // A read-only token of the developer: it can read, not deploy.
    let r = t
        .call(
            &dev,
            "POST",
            "/v1/tokens",
            Some(r#"{"name":"ci","scopes":["read"],"expires_in_days":1}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let read_only = r.body["token"].as_str().unwrap().to_string();
    let id = r.body["id"].as_str().unwrap().to_string();
    assert!(
        !t.call(&dev, "GET", "/v1/tokens", None)
            .await
            .body
            .to_string()
            .contains(&read_only)
    );
    assert_eq!(
        t.call(&read_only, "GET", "/v1/projects/shop", None).await.status,
        StatusCode::OK
    );
    let r = t
        .call(
            &read_only,
            "POST",
            "/v1/projects/shop/services/api/releases",
            Some(&format!(r#"{{"git_sha":"{}"}}"#, sha(1))),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(
        r.body["detail"].as_str().unwrap().contains("lacks the `deploy` scope"),
        "{r:?}"
    );
    // Nobody mints a scope they do not hold.
    let r = t
        .call(
            &dev,
            "POST",
            "/v1/tokens",
            Some(r#"{"name":"x","scopes":["govern"],"project":"shop"}"#),
        )
        .await;
    assert_eq!(
        (r.status, &r.body["errors"][0]["path"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("scopes[0]"))
    );
    let r = t
        .call(&dev, "POST", "/v1/tokens", Some(r#"{"name":"x","scopes":["flyy"]}"#))
        .await;
    assert!(r.body["detail"].as_str().unwrap().contains("unknown scope `flyy`"));

    let r = t.call(&dev, "DELETE", &format!("/v1/tokens/{id}"), None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = t.call(&read_only, "GET", "/v1/projects/shop", None).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("token_revoked"))
    );

    let expired = enclii_auth::token::generate();
    let record = support::token_record(&expired, "user:dev", &support::all_scopes(), None, Some(1));
    t.store.insert_token("test", &record).await.unwrap();
    let r = t.call(&expired.plaintext, "GET", "/v1/projects", None).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("token_expired"))
    );

    // A token restricted to one project cannot see another.
    t.admin("POST", "/v1/projects", Some(r#"{"slug":"blog"}"#)).await;
    let r = t
        .admin(
            "POST",
            "/v1/tokens",
            Some(r#"{"name":"shop-only","scopes":["read"],"project":"shop"}"#),
        )
        .await;
    let shop_only = r.body["token"].as_str().unwrap().to_string();
    assert_eq!(
        t.call(&shop_only, "GET", "/v1/projects/shop", None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        t.call(&shop_only, "GET", "/v1/projects/blog", None).await.status,
        StatusCode::FORBIDDEN
    );
    let visible = t.call(&shop_only, "GET", "/v1/projects", None).await;
    assert_eq!(visible.body.as_array().unwrap().len(), 1);
    // A token never outlives the token that created it.
    let short = t
        .admin(
            "POST",
            "/v1/tokens",
            Some(r#"{"name":"short","scopes":["read","tokens"],"expires_in_days":1}"#),
        )
        .await;
    let short_token = short.body["token"].as_str().unwrap().to_string();
    let child = t
        .call(
            &short_token,
            "POST",
            "/v1/tokens",
            Some(r#"{"name":"long","scopes":["read"],"expires_in_days":300}"#),
        )
        .await;
    assert_eq!(child.status, StatusCode::CREATED, "{child:?}");
    assert!(child.body["expires_at"].as_i64() <= short.body["expires_at"].as_i64());
    // A project-restricted token cannot act platform-wide, not even to read.
    assert_eq!(
        t.call(&shop_only, "GET", "/v1/queue/stats", None).await.status,
        StatusCode::FORBIDDEN
    );
    let me = t.call(&dev, "GET", "/v1/whoami", None).await;
    assert_eq!(
        (me.body["subject"].as_str(), me.body["roles"][0]["role"].as_str()),
        (Some("user:dev"), Some("Developer"))
    );
}

async fn rate_limits_answer_429_with_retry_after(db: Db) {
    let t = api_with(
        db,
        RateLimit {
            per_minute: 60,
            burst: 3,
        },
    )
    .await;
    for _ in 0..3 {
        assert_eq!(t.admin("GET", "/v1/whoami", None).await.status, StatusCode::OK);
    }
    let r = t.admin("GET", "/v1/whoami", None).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("rate_limited"))
    );
    let wait: u64 = r.retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&wait), "{wait}");
    // Another token has its own budget.
    t.admin("GET", "/v1/whoami", None).await;
    let other = t.user("user:other", "ReadOnly", "*").await;
    assert_eq!(t.call(&other, "GET", "/v1/whoami", None).await.status, StatusCode::OK);
}

async fn nobody_acts_above_their_rank_and_deleted_projects_leave_nothing_behind(db: Db) {
    let t = api(db).await;
    t.admin("POST", "/v1/projects", Some(r#"{"slug":"shop"}"#)).await;
    let owner = t.user("user:owner", "Owner", "shop").await;
    let admin = t.user("user:admin2", "Admin", "shop").await;
    let r = t
        .call(
            &admin,
            "PUT",
            "/v1/projects/shop/members/user:owner",
            Some(r#"{"role":"ReadOnly"}"#),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "an Admin cannot demote an Owner: {r:?}"
    );
    let r = t
        .call(&admin, "DELETE", "/v1/projects/shop/members/user:owner", None)
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "nor remove one");
    let r = t
        .call(
            &admin,
            "PUT",
            "/v1/projects/shop/members/user:owner",
            Some(r#"{"role":"Owner"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "nor grant Owner");
    let r = t
        .call(
            &owner,
            "PUT",
            "/v1/projects/shop/members/user:new",
            Some(r#"{"role":"Developer"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = t
        .call(
            &admin,
            "PUT",
            "/v1/projects/shop/members/user:new",
            Some(r#"{"role":"ReadOnly"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "an Admin manages those below: {r:?}");

    // A token restricted to the project dies with it; the members do not carry over to a new one.
    let scoped = t
        .admin(
            "POST",
            "/v1/tokens",
            Some(r#"{"name":"ci","scopes":["read"],"project":"shop"}"#),
        )
        .await;
    let scoped = scoped.body["token"].as_str().unwrap().to_string();
    assert_eq!(
        t.call(&owner, "DELETE", "/v1/projects/shop", None).await.status,
        StatusCode::ACCEPTED
    );
    t.admin("POST", "/v1/projects", Some(r#"{"slug":"shop"}"#)).await;
    let r = t.call(&scoped, "GET", "/v1/projects/shop", None).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("token_revoked"))
    );
    assert_eq!(
        t.call(&owner, "GET", "/v1/projects/shop", None).await.status,
        StatusCode::FORBIDDEN
    );
}

/// Deleting an environment: refused while a service is at home in it (naming it) and to roles
/// below Admin; otherwise its work is cancelled (deploys, runs building for it — never a pending
/// teardown), its deployments end torn down, its routes and secrets go, a `teardown` job per
/// service deployed there is queued, and the deletion is audited. Created again, it starts empty.
async fn deleting_an_environment_cancels_its_work_and_leaves_nothing_behind(db: Db) {
    let t = &api(db).await;
    t.project_with_service("shop", "org/shop").await;
    let web_in = |environment: &str| {
        service_yaml("shop", "web", "org/shop").replace("environment: prod", &format!("environment: {environment}"))
    };
    let r = t.apply_yaml(&t.admin, "shop", &web_in("stage")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    // A build of `web` for stage, still running when the environment goes.
    let build = |n: u32| format!(r#"{{"git_sha":"{}"}}"#, sha(n));
    let web_build = t
        .admin("POST", "/v1/projects/shop/services/web/releases", Some(&build(1)))
        .await;
    assert_eq!(web_build.status, StatusCode::ACCEPTED, "{web_build:?}");
    let web_release = web_build.body["release"]["id"].as_i64().unwrap();
    let web_pipeline = web_build.body["pipeline"].as_i64().unwrap();

    let r = t.admin("DELETE", "/v1/projects/shop/environments/stage", None).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict")),
        "{r:?}"
    );
    let detail = r.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("home to service `web`") && detail.contains("metadata.environment"),
        "{detail}"
    );
    for role in ["ReadOnly", "Developer"] {
        let token = t.user(&format!("user:{role}"), role, "shop").await;
        let r = t
            .call(&token, "DELETE", "/v1/projects/shop/environments/stage", None)
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{role}: {r:?}");
    }
    for uri in [
        "/v1/projects/shop/environments/preview-9",
        "/v1/projects/nope/environments/stage",
    ] {
        assert_eq!(
            t.admin("DELETE", uri, None).await.status,
            StatusCode::NOT_FOUND,
            "{uri}"
        );
    }

    // `web` moves to prod (its build for stage keeps running); `api` is deployed to stage, with a
    // route and secrets there, and a route and a secret in prod.
    assert_eq!(
        t.apply_yaml(&t.admin, "shop", &web_in("prod")).await.status,
        StatusCode::OK
    );
    let api_build = t
        .admin("POST", "/v1/projects/shop/services/api/releases", Some(&build(2)))
        .await;
    let release = api_build.body["release"]["id"].as_i64().unwrap();
    let api_pipeline = api_build.body["pipeline"].as_i64().unwrap();
    t.finish_signed(release).await;
    let deployment = t
        .admin(
            "POST",
            "/v1/projects/shop/services/api/deployments",
            Some(&format!(r#"{{"release":{release},"environment":"stage"}}"#)),
        )
        .await;
    assert_eq!(deployment.status, StatusCode::ACCEPTED, "{deployment:?}");
    let deploy_job = deployment.body["job_id"].as_i64().unwrap();
    for (body, status) in [
        (
            r#"{"service":"api","environment":"stage","host":"api.stage.shop.test"}"#,
            StatusCode::CREATED,
        ),
        (r#"{"service":"api","host":"api.shop.test"}"#, StatusCode::CREATED),
    ] {
        assert_eq!(
            t.admin("POST", "/v1/projects/shop/routes", Some(body)).await.status,
            status
        );
    }
    let secret_value = "stage-only-value-do-not-leak";
    for (name, place) in [
        ("SHARED", r#""environment":"stage""#),
        ("DATABASE_URL", r#""environment":"stage","service":"api""#),
        ("PROD_ONLY", r#""environment":"prod""#),
    ] {
        let body = format!(r#"{{"value":"{secret_value}",{place}}}"#);
        let r = t
            .admin("PUT", &format!("/v1/projects/shop/secrets/{name}"), Some(&body))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{name}: {r:?}");
    }
    // A teardown an earlier deletion queued in stage is never cancelled.
    let r = t
        .apply_yaml(
            &t.admin,
            "shop",
            &service_yaml("shop", "old", "org/shop").replace("environment: prod", "environment: stage"),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let old = t.admin("DELETE", "/v1/projects/shop/services/old", None).await;
    let old_teardown = old.body["teardown_jobs"][0].as_i64().unwrap();

    let r = t.admin("DELETE", "/v1/projects/shop/environments/stage", None).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{r:?}");
    let ids = |value: &serde_json::Value| -> Vec<i64> {
        value.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect()
    };
    let cancelled = ids(&r.body["cancelled_jobs"]);
    let teardown = ids(&r.body["teardown_jobs"]);
    assert!(cancelled.contains(&deploy_job), "the deploy to stage: {cancelled:?}");
    assert!(!cancelled.contains(&old_teardown), "{cancelled:?}");
    let steps = |pipeline: i64| async move {
        let run = t.admin("GET", &format!("/v1/pipelines/{pipeline}"), None).await;
        run.body["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["job"].as_i64().unwrap())
            .collect::<Vec<i64>>()
    };
    for job in steps(web_pipeline).await {
        assert!(
            cancelled.contains(&job),
            "the build for stage, step {job}: {cancelled:?}"
        );
    }
    for job in steps(api_pipeline).await {
        assert!(
            !cancelled.contains(&job),
            "prod's build, step {job}, goes on: {cancelled:?}"
        );
    }
    assert_eq!(teardown.len(), 1, "api was deployed to stage: {r:?}");
    let job = t.admin("GET", &format!("/v1/jobs/{}", teardown[0]), None).await;
    assert_eq!(job.body["kind"], "teardown");
    let payload = &job.body["payload"];
    assert_eq!(
        [
            &payload["service"],
            &payload["environment"],
            &payload["whole_environment"],
            &payload["keep_volumes"]
        ],
        [&json!("api"), &json!("stage"), &json!(true), &json!(false)],
        "{payload}"
    );
    let state = |id: i64| async move { t.admin("GET", &format!("/v1/jobs/{id}"), None).await.body["state"].clone() };
    assert_eq!(state(deploy_job).await, "cancelled");
    assert_eq!(state(old_teardown).await, "available");
    let d = t
        .admin("GET", &format!("/v1/deployments/{}", deployment.body["id"]), None)
        .await;
    assert_eq!(d.body["status"], "torn_down", "{d:?}");
    let web = t.admin("GET", &format!("/v1/releases/{web_release}"), None).await;
    assert_eq!(
        web.body["status"], "superseded",
        "not rebuilt by the reconciler: {web:?}"
    );

    let names = |body: &serde_json::Value| -> Vec<String> {
        body.as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect()
    };
    let envs = t.admin("GET", "/v1/projects/shop/environments", None).await;
    assert_eq!(names(&envs.body), ["dev", "prod"]);
    let audit = t
        .admin("GET", "/v1/audit?project=shop&action=environment.delete", None)
        .await;
    assert_eq!(audit.body.as_array().unwrap().len(), 1, "{audit:?}");
    assert_eq!(audit.body[0]["entity"], "shop/stage");
    assert_eq!(audit.body[0]["diff"]["keep_volumes"], false);
    assert_eq!(ids(&audit.body[0]["diff"]["teardown_jobs"]), teardown);
    assert_eq!(ids(&audit.body[0]["diff"]["cancelled_jobs"]), cancelled);
    let everything = t.admin("GET", "/v1/audit?project=shop", None).await;
    assert!(!everything.body.to_string().contains(secret_value));

    // Created again under the name, it has none of the old routes or secrets; prod keeps its own.
    let r = t
        .admin("POST", "/v1/projects/shop/environments", Some(r#"{"name":"stage"}"#))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let secrets = t
        .admin("GET", "/v1/projects/shop/secrets?environment=stage", None)
        .await;
    assert_eq!(secrets.body, json!([]));
    let secrets = t.admin("GET", "/v1/projects/shop/secrets", None).await;
    assert_eq!(names(&secrets.body), ["PROD_ONLY"]);
    let routes = t.admin("GET", "/v1/projects/shop/routes", None).await;
    let hosts: Vec<&str> = routes
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["api.shop.test"]);
    let scope = SecretScope {
        project: "shop".into(),
        environment: Some("stage".into()),
        service: None,
    };
    assert!(t.store.reveal_secret(&scope, "SHARED").await.unwrap().is_none());
}

async fn audit_records_every_change_immutably(db: Db) {
    let t = api(db).await;
    t.project_with_service("shop", "org/shop").await;
    t.admin("PATCH", "/v1/projects/shop", Some(r#"{"name":"Shop 2"}"#))
        .await;
    let all = t.admin("GET", "/v1/audit?project=shop", None).await;
    let actions: Vec<&str> = all
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["project.update", "service.create", "project.create"]);
    assert_eq!(all.body[0]["diff"]["name"], json!({"from": "shop", "to": "Shop 2"}));
    assert_eq!(all.body[0]["actor"], "user:admin");
    let newest = all.body[0]["id"].as_i64().unwrap();
    let older = t
        .admin("GET", &format!("/v1/audit?project=shop&before={newest}&limit=1"), None)
        .await;
    assert_eq!(older.body[0]["action"], "service.create");
    let reader = t.user("user:reader", "ReadOnly", "shop").await;
    assert_eq!(
        t.call(&reader, "GET", "/v1/audit?project=shop", None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        t.call(&reader, "GET", "/v1/audit", None).await.status,
        StatusCode::FORBIDDEN
    );
}

async fn openapi_document_describes_the_api(db: Db) {
    let t = api(db).await;
    let r = t.call("", "GET", "/v1/openapi.json", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = r.body["paths"].as_object().unwrap();
    for path in [
        "/v1/projects",
        "/v1/webhooks/github",
        "/v1/projects/{project}/services/{service}",
        "/v1/audit",
    ] {
        assert!(paths.contains_key(path), "{path}");
    }
    assert!(r.body["components"]["schemas"]["Problem"].is_object());
    let operations = every_operation_declares_its_parameters_and_problems(&r.body);
    assert!(operations >= 64, "{operations} operations");
    assert_eq!(t.call("", "GET", "/health/ready", None).await.status, StatusCode::OK);
}

/// Every `{param}` of every path is declared as a path parameter (with a type and a
/// description) by each of its operations and nothing else is `in: path`; every operation
/// documents its failures as `application/problem+json` (at least 400, 401, 404 and 429); no error answer is plain `application/json`; no integer is
/// declared `int32` while the handler reads a `u32` (utoipa's sign of one: `minimum: 0` and no
/// `maximum`). Returns how many operations it checked.
fn every_operation_declares_its_parameters_and_problems(doc: &serde_json::Value) -> usize {
    let resolve = |value: &serde_json::Value| -> serde_json::Value {
        match value["$ref"].as_str() {
            Some(reference) => {
                let pointer = reference.trim_start_matches('#');
                doc.pointer(pointer)
                    .unwrap_or_else(|| panic!("dangling {reference}"))
                    .clone()
            }
            None => value.clone(),
        }
    };
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let template: Vec<&str> = path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        for (method, operation) in item.as_object().unwrap() {
            operations += 1;
            let at = format!("{} {path}", method.to_uppercase());
            let parameters: Vec<serde_json::Value> = operation["parameters"]
                .as_array()
                .map(|ps| ps.iter().map(&resolve).collect())
                .unwrap_or_default();
            let declared: Vec<&str> = parameters
                .iter()
                .filter(|p| p["in"] == "path")
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            for name in &template {
                let p = parameters
                    .iter()
                    .find(|p| p["in"] == "path" && p["name"] == *name)
                    .unwrap_or_else(|| panic!("{at}: path parameter `{name}` is not declared"));
                assert_eq!(p["required"], true, "{at}: `{name}`");
                assert!(p["schema"]["type"].is_string(), "{at}: `{name}` has no type: {p}");
                assert!(
                    p["description"].as_str().is_some_and(|d| !d.is_empty()),
                    "{at}: `{name}` has no description"
                );
            }
            for name in &declared {
                assert!(
                    template.contains(name),
                    "{at}: `{name}` is declared in: path but is not in the path"
                );
            }
            let responses = operation["responses"].as_object().unwrap();
            for status in ["400", "401", "404", "429"] {
                assert!(responses.contains_key(status), "{at}: no {status} documented");
            }
            for (status, response) in responses {
                let response = resolve(response);
                assert!(response["description"].is_string(), "{at} {status}: no description");
                if status.starts_with('4') || status.starts_with('5') {
                    let content = response["content"].as_object();
                    assert_eq!(
                        content.map(|c| c.keys().collect::<Vec<_>>()),
                        Some(vec![&"application/problem+json".to_string()]),
                        "{at} {status}: errors are problem+json only"
                    );
                    assert_eq!(
                        response["content"]["application/problem+json"]["schema"]["$ref"],
                        "#/components/schemas/Problem",
                        "{at} {status}"
                    );
                }
            }
        }
    }
    fn no_unsigned_int32(at: &str, value: &serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                if map.get("format").and_then(|f| f.as_str()) == Some("int32") {
                    assert!(
                        !(map.get("minimum").is_some_and(|m| m == 0) && map.get("maximum").is_none()),
                        "{at}: int32 with minimum 0 and no maximum (a u32 the schema says is an i32)"
                    );
                }
                for (key, child) in map {
                    no_unsigned_int32(&format!("{at}/{key}"), child);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| no_unsigned_int32(at, i)),
            _ => {}
        }
    }
    no_unsigned_int32("", doc);
    operations
}

on_both_databases!(
    projects_environments_and_services,
    releases_deployments_and_rollback,
    secrets_are_sealed_versioned_and_never_returned,
    routes_refuse_conflicts,
    tokens_scopes_expiry_and_revocation,
    nobody_acts_above_their_rank_and_deleted_projects_leave_nothing_behind,
    deleting_an_environment_cancels_its_work_and_leaves_nothing_behind,
    rate_limits_answer_429_with_retry_after,
    audit_records_every_change_immutably,
    openapi_document_describes_the_api,
);
