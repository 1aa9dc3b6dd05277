//! What one tenant may do to another, and what careless input does, through the HTTP API on
//! PostgreSQL and on SQLite: repository claims and grants, credentials in repository URLs,
//! platform secrets at service scope, and free text bounded and printable.

mod support;

use axum::http::StatusCode;
use serde_json::{Value, json};
use support::{Db, TestApi, api, push_payload, service_yaml, sha};

async fn create_project(t: &TestApi, slug: &str) {
    let r = t
        .admin("POST", "/v1/projects", Some(&format!(r#"{{"slug":"{slug}"}}"#)))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
}

fn grant_body(repository: &str, project: &str) -> String {
    json!({"repository": repository, "project": project}).to_string()
}

async fn a_repository_belongs_to_the_first_project_until_it_grants_access(db: Db) {
    let t = api(db).await;
    t.project_with_service("alpha", "org/shop").await;
    create_project(&t, "beta").await;
    let dev = t.user("user:mallory", "Developer", "beta").await;

    // A Developer of beta names alpha's repository: refused, told whom to ask.
    let r = t
        .apply_yaml(&dev, "beta", &service_yaml("beta", "api", "org/shop"))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT, "{r:?}");
    let detail = r.body["detail"].as_str().unwrap();
    assert!(
        detail.contains("belongs to project `alpha`") && detail.contains("repositories/grant"),
        "{detail}"
    );
    assert_eq!(t.admin("GET", "/v1/projects/beta/services", None).await.body, json!([]));

    // alpha's pushes build in alpha only.
    let push = t
        .webhook("push", "d-1", &push_payload("org/shop", "main", &sha(1)))
        .await;
    assert_eq!(push.body["pipelines"].as_array().unwrap().len(), 1, "{push:?}");

    // Only alpha's Admin can grant; a Developer of beta cannot grant itself.
    let r = t
        .call(
            &dev,
            "POST",
            "/v1/projects/alpha/repositories/grant",
            Some(&grant_body("github.com/org/shop", "beta")),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{r:?}");
    let r = t
        .admin(
            "POST",
            "/v1/projects/beta/repositories/grant",
            Some(&grant_body("github.com/org/shop", "beta")),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "beta does not hold it: {r:?}");
    let r = t
        .admin(
            "POST",
            "/v1/projects/alpha/repositories/grant",
            Some(&grant_body("https://github.com/org/shop", "beta")),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
    let r = t
        .apply_yaml(&dev, "beta", &service_yaml("beta", "api", "org/shop"))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{r:?}");
    let push = t
        .webhook("push", "d-2", &push_payload("org/shop", "main", &sha(2)))
        .await;
    assert_eq!(push.body["pipelines"].as_array().unwrap().len(), 2, "{push:?}");

    let listed = t.admin("GET", "/v1/projects/alpha/repositories", None).await;
    assert_eq!(
        listed.body,
        json!([{"repository": "github.com/org/shop", "owner": "alpha", "granted_to": ["beta"]}])
    );

    // Revoked: beta's service stays but builds nothing from alpha's pushes.
    let r = t
        .admin(
            "POST",
            "/v1/projects/alpha/repositories/revoke",
            Some(&grant_body("github.com/org/shop", "beta")),
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{r:?}");
    let push = t
        .webhook("push", "d-3", &push_payload("org/shop", "main", &sha(3)))
        .await;
    assert_eq!(push.body["pipelines"].as_array().unwrap().len(), 1, "{push:?}");
    let audit = t.admin("GET", "/v1/audit?action=repository.grant", None).await;
    assert_eq!(audit.body.as_array().unwrap().len(), 1);
}

async fn credentials_in_repository_urls_are_refused_and_never_echoed(db: Db) {
    let t = api(db).await;
    create_project(&t, "shop").await;
    let yaml =
        service_yaml("shop", "api", "org/shop").replace("https://github.com/", "https://deploy:hunter2@github.com/");
    let r = t.apply_yaml(&t.admin.clone(), "shop", &yaml).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
    let text = r.body.to_string();
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("GIT_TOKEN"), "{text}");
    assert_eq!(t.admin("GET", "/v1/projects/shop/services", None).await.body, json!([]));
    let audit = t.admin("GET", "/v1/audit", None).await;
    assert!(!audit.body.to_string().contains("hunter2"));
}

async fn platform_secrets_are_reserved_to_project_and_environment_scopes(db: Db) {
    let t = api(db).await;
    t.project_with_service("shop", "org/shop").await;
    let dev = t.user("user:dev", "Developer", "shop").await;
    for name in ["GIT_TOKEN", "COSIGN_PRIVATE_KEY", "COSIGN_PASSWORD"] {
        let body = json!({"value": "x", "service": "api"}).to_string();
        let r = t
            .call(&dev, "PUT", &format!("/v1/projects/shop/secrets/{name}"), Some(&body))
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {r:?}");
        assert_eq!(r.body["errors"][0]["path"], "service", "{r:?}");
    }
    let r = t
        .admin(
            "PUT",
            "/v1/projects/shop/secrets/GIT_TOKEN",
            Some(r#"{"value":"ghp_x"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "the project scope takes it: {r:?}");
    let r = t
        .call(
            &dev,
            "PUT",
            "/v1/projects/shop/secrets/API_KEY",
            Some(r#"{"value":"x","service":"api"}"#),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "other names stay settable per service: {r:?}");
}

async fn free_text_is_bounded_and_printable(db: Db) {
    let t = api(db).await;
    t.project_with_service("shop", "org/shop").await;
    let refused = |r: &support::Response, field: &str| {
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{field}: {r:?}");
        assert_eq!(r.body["errors"][0]["path"], field, "{r:?}");
        assert!(r.body.to_string().len() < 2_000, "the error does not echo the input");
    };
    let huge = "n".repeat(100_000);
    for name in [
        huge.as_str(),
        "nul\u{0}",
        "ansi\u{1b}[2J",
        "rtl\u{202e}gpj.exe",
        " padded ",
    ] {
        let r = t
            .admin(
                "POST",
                "/v1/projects",
                Some(&json!({"slug": "other", "name": name}).to_string()),
            )
            .await;
        refused(&r, "name");
        let r = t
            .admin("PATCH", "/v1/projects/shop", Some(&json!({"name": name}).to_string()))
            .await;
        refused(&r, "name");
    }
    let r = t
        .admin(
            "POST",
            "/v1/projects/shop/environments",
            Some(r#"{"name":"stage","region":"eu\u202ewest"}"#),
        )
        .await;
    refused(&r, "region");
    let r = t
        .admin(
            "POST",
            "/v1/projects/shop/services/api/releases",
            Some(&json!({"git_sha": sha(1), "branch": "main\u{202e}"}).to_string()),
        )
        .await;
    refused(&r, "branch");
    let r = t
        .admin(
            "POST",
            "/v1/projects/shop/routes",
            Some(
                &json!({"service": "api", "host": "shop.example.com", "path": format!("/{}", "a".repeat(5000))})
                    .to_string(),
            ),
        )
        .await;
    refused(&r, "path");
    let r = t
        .admin(
            "POST",
            "/v1/projects",
            Some(&json!({"slug": "fine", "name": "Café — Prod"}).to_string()),
        )
        .await;
    assert_eq!(
        (r.status, &r.body["name"]),
        (StatusCode::CREATED, &Value::from("Café — Prod"))
    );
}

async fn platform_generated_hosts_are_reserved(db: Db) {
    let t = api(db).await;
    t.project_with_service("shop", "org/shop").await;
    for host in [
        "api-preview-7.preview.localhost",
        "*.localhost",
        "*.preview.localhost",
        "preview.localhost",
    ] {
        let body = json!({"service": "api", "host": host}).to_string();
        let r = t.admin("POST", "/v1/projects/shop/routes", Some(&body)).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{host}: {r:?}");
        assert_eq!(r.body["errors"][0]["path"], "host", "{r:?}");
    }
    let yaml = service_yaml("shop", "web", "org/shop").replace(
        "  deploy:",
        "  routes: [ { host: web-preview-1.preview.localhost } ]\n  deploy:",
    );
    let r = t.apply_yaml(&t.admin.clone(), "shop", &yaml).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
    assert_eq!(r.body["errors"][0]["path"], "spec.routes[0].host", "{r:?}");
    let ok = json!({"service": "api", "host": "shop.localhost"}).to_string();
    assert_eq!(
        t.admin("POST", "/v1/projects/shop/routes", Some(&ok)).await.status,
        StatusCode::CREATED
    );
}

on_both_databases!(
    platform_generated_hosts_are_reserved,
    a_repository_belongs_to_the_first_project_until_it_grants_access,
    credentials_in_repository_urls_are_refused_and_never_echoed,
    platform_secrets_are_reserved_to_project_and_environment_scopes,
    free_text_is_bounded_and_printable,
);
