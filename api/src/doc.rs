//! What every operation of the OpenAPI document shares, added once after the routes are
//! collected (`routes::openapi`): the `application/problem+json` answers of each kind of failure
//! (shared responses under `components/responses`, referenced by every operation they apply to),
//! problem answers an operation names itself moved to `application/problem+json`, and a
//! description for every response (OpenAPI requires one).

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, Response, ResponseBuilder};

/// The media type of every error answer.
pub(crate) const PROBLEM_JSON: &str = "application/problem+json";

/// What decides which shared failures an operation can answer.
struct Facts {
    /// It reads a bearer token (all but the GitHub webhook, which is signed instead).
    bearer: bool,
    /// It takes parameters (in the path or the query): their values can be invalid (422).
    parameters: bool,
    /// It reads a request body (too large: 413; invalid values: 422).
    body: bool,
    /// It changes state (a conflict with the current state is a 409).
    changes: bool,
}

/// A failure shared by many operations: its status, its name under `components/responses`,
/// what it means, and which operations can answer it.
struct Shared {
    status: &'static str,
    name: &'static str,
    description: &'static str,
    applies: fn(&Facts) -> bool,
}

const SHARED: &[Shared] = &[
    Shared {
        status: "400",
        name: "BadRequest",
        description: "A path parameter, query parameter, header or the body does not parse (the problem names \
                      which, its value and the type it needs)",
        applies: |_| true,
    },
    Shared {
        status: "401",
        name: "Unauthorized",
        description: "No valid credentials: a missing, malformed, expired or revoked bearer token (or, for \
                      webhooks, a missing or bad signature)",
        applies: |_| true,
    },
    Shared {
        status: "403",
        name: "Forbidden",
        description: "The caller's role or the token's scopes or project restriction do not allow this",
        applies: |f| f.bearer,
    },
    Shared {
        status: "404",
        name: "NotFound",
        description: "A resource named in the path, the query or the body does not exist (or no route matches)",
        applies: |_| true,
    },
    Shared {
        status: "409",
        name: "Conflict",
        description: "The change conflicts with the current state (the problem says what and how to resolve it)",
        applies: |f| f.changes,
    },
    Shared {
        status: "413",
        name: "TooLarge",
        description: "The request body is larger than 1 MiB",
        applies: |f| f.body,
    },
    Shared {
        status: "422",
        name: "Invalid",
        description: "The request is well-formed but names invalid values; `errors` lists every failing field",
        applies: |f| f.body || f.parameters,
    },
    Shared {
        status: "429",
        name: "RateLimited",
        description: "Too many requests (or failed authentications from this address): retry after the \
                      `Retry-After` header's seconds",
        applies: |_| true,
    },
    Shared {
        status: "500",
        name: "Internal",
        description: "An internal error (logged with the request's trace id)",
        applies: |_| true,
    },
    Shared {
        status: "503",
        name: "Unavailable",
        description: "The database, the queue backend or a part this process does not run (e.g. a deploy target) \
                      is unavailable",
        applies: |_| true,
    },
];

/// Completes the document: shared problem responses on every operation they apply to, every
/// problem answer as `application/problem+json`, a description on every response.
pub(crate) fn complete(doc: &mut OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    for shared in SHARED {
        let mut response = ResponseBuilder::new()
            .description(shared.description)
            .content(PROBLEM_JSON, problem_content());
        if shared.status == "429" {
            response = response.header(
                "Retry-After",
                HeaderBuilder::new()
                    .schema(Some(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1))))
                    .description(Some("Seconds to wait before trying again"))
                    .build(),
            );
        }
        components
            .responses
            .insert(shared.name.to_string(), RefOr::T(response.build()));
    }
    for (path, item) in doc.paths.paths.iter_mut() {
        let bearer = !path.starts_with("/v1/webhooks/");
        let operations = [
            (&mut item.get, false),
            (&mut item.head, false),
            (&mut item.post, true),
            (&mut item.put, true),
            (&mut item.patch, true),
            (&mut item.delete, true),
        ];
        for (operation, changes) in operations {
            let Some(operation) = operation else { continue };
            let facts = Facts {
                bearer,
                parameters: operation.parameters.as_ref().is_some_and(|p| !p.is_empty()),
                body: operation.request_body.is_some(),
                changes,
            };
            complete_operation(operation, &facts);
        }
    }
}

fn complete_operation(operation: &mut Operation, facts: &Facts) {
    let responses = &mut operation.responses.responses;
    for (status, response) in responses.iter_mut() {
        let RefOr::T(response) = response else { continue };
        if status.starts_with('4') || status.starts_with('5') {
            as_problem(response);
        }
        if response.description.is_empty() {
            response.description = reason(status).to_string();
        }
    }
    for shared in SHARED {
        if (shared.applies)(facts) && !responses.contains_key(shared.status) {
            responses.insert(
                shared.status.to_string(),
                RefOr::Ref(Ref::from_response_name(shared.name)),
            );
        }
    }
}

/// An operation's own error answer (its description kept) as `application/problem+json`.
fn as_problem(response: &mut Response) {
    response.content.shift_remove("application/json");
    response
        .content
        .entry(PROBLEM_JSON.to_string())
        .or_insert_with(|| RefOr::T(problem_content()));
}

fn problem_content() -> Content {
    Content::new(Some(Ref::from_schema_name("Problem")))
}

fn reason(status: &str) -> &'static str {
    status
        .parse::<u16>()
        .ok()
        .and_then(|code| axum::http::StatusCode::from_u16(code).ok())
        .and_then(|code| code.canonical_reason())
        .unwrap_or("Answer")
}
