//! The control plane's REST resources, one module each: projects, environments, services (from
//! Service Specs), releases (with pipeline runs and deliveries), deployments and rollback,
//! secrets, routes, custom domains, add-ons, members, tokens and the audit trail. Each handler authorises the caller for
//! one permission on one project, validates, and makes one store call (one transaction, audited).
//! This module holds what they share: the answer types and field validation errors.

pub mod addon_backups;
pub mod addons;
pub mod audit;
pub mod deployments;
pub mod domains;
pub mod environments;
pub mod members;
pub mod projects;
pub mod releases;
pub mod repositories;
pub mod routes;
pub mod secrets;
pub mod services;
pub mod tokens;
pub mod waiting;

use axum::Json;
use axum::http::StatusCode;

use crate::error::{ApiError, FieldError};

/// `?keep_volumes=true` on a deletion: leave the volumes and their data on the target.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Keep {
    #[serde(default)]
    keep_volumes: bool,
}

/// Refuses a user's route or domain on a host the platform generates (see
/// [`enclii_domain::spec::is_platform_host`]): under the preview domain or the base domain;
/// `path` is where the host was given.
fn check_not_platform_host(state: &crate::state::AppState, path: &str, host: &str) -> Result<(), ApiError> {
    let platform = std::iter::once(("preview domain", &*state.preview_domain))
        .chain(state.base_domain.as_deref().map(|d| ("base domain", d)))
        .find(|(_, domain)| enclii_domain::spec::is_platform_host(host, domain));
    let Some((which, domain)) = platform else {
        return Ok(());
    };
    let message = format!(
        "`{host}` is or covers the {which} `{domain}`, whose hosts Enclii generates for the deployments \
         of every project"
    );
    Err(ApiError::invalid(
        format!("{path}: {message}"),
        format!("choose a host outside the {which}; deployments get their generated host without a route"),
        vec![field(path, message)],
    ))
}

type Answer<T> = Result<Json<T>, ApiError>;
type Created<T> = Result<(StatusCode, Json<T>), ApiError>;

fn field(path: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        path: path.to_string(),
        message: message.into(),
    }
}

fn check(path: &str, result: Result<(), String>) -> Result<(), ApiError> {
    result.map_err(|message| {
        ApiError::invalid(
            format!("{path}: {message}"),
            "fix the named field and send again",
            vec![field(path, message)],
        )
    })
}
