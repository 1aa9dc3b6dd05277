//! `POST /v1/webhooks/github`: verify the signature, parse, rate-limit per project, and hand the
//! delivery to the store, which persists it and enqueues its pipelines in one transaction.

use crate::views::WebhookOutcome;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use enclii_domain::github::{GithubEvent, parse_event};
use enclii_store::{WebhookAcceptance, WebhookDelivery, WebhookIntent};

use crate::auth::check_rate;
use crate::error::ApiError;
use crate::extract::RawBody;
use crate::state::AppState;

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Receives a GitHub delivery. `202` with what was enqueued; `200` for a delivery seen before.
#[utoipa::path(post, path = "/v1/webhooks/github", tag = "webhooks",
    request_body(content = String, description = "A GitHub webhook payload", content_type = "application/json"),
    params(
        ("X-Hub-Signature-256" = String, Header, description = "sha256=<HMAC of the body with the webhook secret>"),
        ("X-GitHub-Event" = String, Header, description = "push, pull_request, ping, …"),
        ("X-GitHub-Delivery" = String, Header, description = "The delivery's unique id"),
    ),
    responses(
        (status = 202, body = WebhookOutcome), (status = 200, body = WebhookOutcome, description = "a redelivery"),
        (status = 401, body = crate::Problem, description = "missing or bad signature"),
        (status = 429, body = crate::Problem)))]
pub async fn github(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<WebhookOutcome>), ApiError> {
    let Some(secret) = state.webhook_secret.as_deref() else {
        return Err(ApiError::unauthorized(
            "webhooks_disabled",
            "GitHub webhooks are not configured on this server",
            "set ENCLII_GITHUB_WEBHOOK_SECRET to the secret configured on the GitHub webhook",
        ));
    };
    let signature = header(&headers, "x-hub-signature-256").ok_or_else(|| {
        ApiError::unauthorized(
            "signature_missing",
            "the X-Hub-Signature-256 header is missing",
            "configure a secret on the GitHub webhook (GitHub signs deliveries only when it has one)",
        )
    })?;
    if !enclii_auth::github_signature::verify_github_signature(secret.as_bytes(), &body, signature) {
        return Err(ApiError::unauthorized(
            "signature_invalid",
            "the X-Hub-Signature-256 signature does not match the body",
            "the webhook's secret on GitHub must equal ENCLII_GITHUB_WEBHOOK_SECRET",
        ));
    }
    let missing = |name: &str| {
        ApiError::bad_request(
            "header_missing",
            format!("the {name} header is missing"),
            "GitHub sends it on every delivery; is this request from GitHub?",
        )
    };
    let event = header(&headers, "x-github-event").ok_or_else(|| missing("X-GitHub-Event"))?;
    let delivery_id = header(&headers, "x-github-delivery").ok_or_else(|| missing("X-GitHub-Delivery"))?;
    if delivery_id.is_empty() || delivery_id.len() > 100 {
        return Err(ApiError::bad_request(
            "header_invalid",
            "X-GitHub-Delivery must be 1–100 characters",
            "GitHub sends a GUID",
        ));
    }
    let parsed = parse_event(event, &body).map_err(|e| {
        ApiError::bad_request(
            "invalid_payload",
            e.to_string(),
            "send the payload GitHub produced, unchanged",
        )
    })?;
    let action = match &parsed {
        GithubEvent::PullRequest(pr) => Some(pr.action.as_str().to_string()),
        _ => None,
    };
    let delivery = WebhookDelivery {
        delivery_id: delivery_id.to_string(),
        event: event.to_string(),
        action,
        intent: WebhookIntent::from(parsed),
    };
    // Per-project webhook budgets, asked by the store once per project the delivery concerns
    // (inside its transaction, where it reads the repository's services anyway).
    let refusal = std::sync::Mutex::new(None);
    let budget = |project: &str| match check_rate(
        &state.webhook_limiter,
        &project.to_string(),
        &format!("project `{project}`'s webhooks"),
    ) {
        Ok(()) => true,
        Err(e) => {
            *refusal.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(e);
            false
        }
    };
    let outcome = match state.store.accept_webhook_within(&delivery, &budget).await? {
        WebhookAcceptance::Accepted(outcome) => outcome,
        WebhookAcceptance::Refused { projects } => {
            let refusal = refusal.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
            return Err(refusal.unwrap_or_else(|| ApiError::RateLimited {
                retry_after: std::time::Duration::from_secs(1),
                detail: format!("too many requests for the webhooks of {}", projects.join(", ")),
                hint: None,
            }));
        }
    };
    tracing::info!(delivery = %outcome.delivery_id, event, outcome = %outcome.outcome,
                   duplicate = outcome.duplicate, "GitHub delivery");
    let status = if outcome.duplicate {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((status, Json(outcome.into())))
}
