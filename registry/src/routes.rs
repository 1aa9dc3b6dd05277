//! The HTTP side: Basic auth, then one handler per (route, method). Paths are parsed in
//! `names::route`; the work is done in `uploads`, `manifests`, `referrers` and `gc`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use axum::routing::any;
use base64::Engine as _;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
use tokio_util::io::ReaderStream;

use crate::error::{ErrorCode, RegistryError, Result, io};
use crate::names::{self, Digest, Name, Route};
use crate::{Inner, Registry, gc, manifests, referrers, uploads};

pub(crate) fn router(registry: Registry) -> Router {
    Router::new()
        .route("/v2", any(dispatch))
        .route("/v2/", any(dispatch))
        .route("/v2/{*rest}", any(dispatch))
        .with_state(registry)
}

async fn dispatch(State(registry): State<Registry>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut response = handle(&registry.inner, request)
        .await
        .unwrap_or_else(|e| e.into_response());
    response.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static("registry/2.0"),
    );
    tracing::debug!(%method, %path, status = response.status().as_u16(), "registry request");
    response
}

async fn handle(inner: &Arc<Inner>, request: Request) -> Result<Response> {
    let (parts, body) = request.into_parts();
    authenticate(inner, &parts.headers)?;
    let path = parts.uri.path();
    let rest = path.strip_prefix("/v2").unwrap_or(path);
    let route = names::route(rest.strip_prefix('/').unwrap_or(rest))?;
    let query: HashMap<String, String> = Query::try_from_uri(&parts.uri).map(|q| q.0).unwrap_or_default();
    let headers = &parts.headers;
    let head = parts.method == Method::HEAD;
    match (route, parts.method.clone()) {
        (Route::Base, Method::GET | Method::HEAD) => Ok(json(StatusCode::OK, "{}".into(), "application/json")),
        (Route::Blob(_, digest), Method::HEAD) => {
            let _gc = inner.gc_lock.read().await;
            let size = inner
                .storage
                .touch_blob(&digest)
                .await?
                .ok_or_else(|| blob_unknown(&digest))?;
            Ok(described(StatusCode::OK, "application/octet-stream", size, &digest)
                .body(Body::empty())
                .unwrap_or_default())
        }
        (Route::Blob(_, digest), Method::GET) => get_blob(inner, &digest, headers).await,
        (Route::Blob(_, digest), Method::DELETE) => {
            let shared = Arc::clone(inner);
            tokio::task::spawn_blocking(move || gc::delete_blob(&shared, &digest))
                .await
                .unwrap_or_else(|e| Err(crate::storage::panicked(e)))?;
            Ok(status(StatusCode::ACCEPTED))
        }
        (Route::UploadStart(name), Method::POST) => start_upload(inner, &name, &query, body).await,
        (Route::Upload(name, id), Method::GET) => {
            let size = uploads::size(inner, &name, &id).await?;
            Ok(session(StatusCode::NO_CONTENT, &name, &id, size))
        }
        (Route::Upload(name, id), Method::PATCH) => {
            let range = match headers.get(header::CONTENT_RANGE) {
                Some(value) => Some(uploads::parse_content_range(value.to_str().unwrap_or_default())?),
                None => None,
            };
            let (shared, session_name, session_id) = (Arc::clone(inner), name.clone(), id.clone());
            let appended =
                uploads::detached(
                    async move { uploads::append(&shared, &session_name, &session_id, range, body).await },
                );
            match appended.await {
                Ok(size) => Ok(session(StatusCode::ACCEPTED, &name, &id, size)),
                Err(e @ RegistryError::Rejected { status, .. }) if status == StatusCode::RANGE_NOT_SATISFIABLE => {
                    // Say where the upload stands, so the client can resume.
                    let mut response = e.into_response();
                    if let Ok(size) = uploads::size(inner, &name, &id).await {
                        let resume = session(StatusCode::ACCEPTED, &name, &id, size);
                        for (key, value) in resume.headers() {
                            if key != header::CONTENT_LENGTH {
                                response.headers_mut().insert(key, value.clone());
                            }
                        }
                    }
                    Ok(response)
                }
                Err(e) => Err(e),
            }
        }
        (Route::Upload(name, id), Method::PUT) => {
            let digest = digest_param(&query)?;
            let (shared, session_name, blob) = (Arc::clone(inner), name.clone(), digest.clone());
            uploads::detached(async move { uploads::finish(&shared, &session_name, &id, &blob, body).await }).await?;
            Ok(blob_created(&name, &digest))
        }
        (Route::Upload(name, id), Method::DELETE) => {
            uploads::cancel(inner, &name, &id).await?;
            Ok(status(StatusCode::NO_CONTENT))
        }
        (Route::Manifest(name, reference), Method::GET | Method::HEAD) => {
            let found = manifests::find(inner, &name, &reference).await?;
            let builder = described(StatusCode::OK, &found.media_type, found.size, &found.digest);
            if head {
                return Ok(builder.body(Body::empty()).unwrap_or_default());
            }
            let file = tokio::fs::File::open(&found.path)
                .await
                .map_err(io("open", &found.path))?;
            Ok(builder
                .body(Body::from_stream(ReaderStream::new(file.take(found.size))))
                .unwrap_or_default())
        }
        (Route::Manifest(name, reference), Method::PUT) => {
            let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
            let stored = manifests::put(inner, &name, &reference, content_type, body).await?;
            let mut response = Response::builder()
                .status(StatusCode::CREATED)
                .header(header::LOCATION, format!("/v2/{name}/manifests/{}", stored.digest))
                .header("Docker-Content-Digest", stored.digest.to_string());
            if let Some(subject) = &stored.subject {
                response = response.header("OCI-Subject", subject.to_string());
            }
            Ok(response.body(Body::empty()).unwrap_or_default())
        }
        (Route::Manifest(name, reference), Method::DELETE) => {
            manifests::delete(inner, &name, &reference).await?;
            Ok(status(StatusCode::ACCEPTED))
        }
        (Route::Tags(name), Method::GET | Method::HEAD) => list_tags(inner, &name, &query).await,
        (Route::Referrers(name, subject), Method::GET | Method::HEAD) => {
            let artifact_type = query.get("artifactType").map(String::as_str);
            let found = referrers::list(inner, &name, &subject, artifact_type).await?;
            let index = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": manifests::OCI_INDEX,
                "manifests": found,
            });
            let mut response = json(StatusCode::OK, index.to_string(), manifests::OCI_INDEX);
            if artifact_type.is_some() {
                response
                    .headers_mut()
                    .insert("OCI-Filters-Applied", HeaderValue::from_static("artifactType"));
            }
            Ok(response)
        }
        (_, method) => Err(RegistryError::new(
            ErrorCode::Unsupported,
            format!("{method} is not supported on {path}"),
        )),
    }
}

fn authenticate(inner: &Inner, headers: &HeaderMap) -> Result<()> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(RegistryError::new(
            ErrorCode::Unauthorized,
            "authentication required: log in with the registry credentials Enclii generated \
             (docker login <host>) and send them as HTTP Basic auth",
        ));
    };
    let valid = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, encoded)| base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok())
        .and_then(|decoded| String::from_utf8(decoded).ok())
        .is_some_and(|pair| {
            pair.split_once(':')
                .is_some_and(|(user, password)| inner.credentials.matches(user, password))
        });
    if valid {
        Ok(())
    } else {
        Err(RegistryError::new(
            ErrorCode::Unauthorized,
            "wrong username or password for this registry; use the credentials Enclii generated",
        ))
    }
}

fn status(status: StatusCode) -> Response {
    (status, Body::empty()).into_response()
}

fn json(status: StatusCode, body: String, content_type: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

/// A response describing content: type, length and digest.
fn described(status: StatusCode, content_type: &str, size: u64, digest: &Digest) -> axum::http::response::Builder {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, size)
        .header("Docker-Content-Digest", digest.to_string())
        .header(header::ETAG, format!("\"{digest}\""))
}

fn blob_unknown(digest: &Digest) -> RegistryError {
    RegistryError::new(
        ErrorCode::BlobUnknown,
        format!("blob {digest} is not in this registry; upload it first"),
    )
}

fn digest_param(query: &HashMap<String, String>) -> Result<Digest> {
    match query.get("digest") {
        Some(digest) => Digest::parse(digest),
        None => Err(RegistryError::new(
            ErrorCode::DigestInvalid,
            "completing an upload needs ?digest=sha256:<hex> of the whole blob",
        )),
    }
}

/// 202 with where the session is and how far it got (`Range: 0-<last byte>`).
fn session(status: StatusCode, name: &Name, id: &str, size: u64) -> Response {
    Response::builder()
        .status(status)
        .header(header::LOCATION, format!("/v2/{name}/blobs/uploads/{id}"))
        .header(header::RANGE, format!("0-{}", size.saturating_sub(1)))
        .header("Docker-Upload-UUID", id)
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .unwrap_or_default()
}

fn blob_created(name: &Name, digest: &Digest) -> Response {
    Response::builder()
        .status(StatusCode::CREATED)
        .header(header::LOCATION, format!("/v2/{name}/blobs/{digest}"))
        .header("Docker-Content-Digest", digest.to_string())
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .unwrap_or_default()
}

/// POST to `/blobs/uploads/`: a mount, a monolithic upload, or a new session.
async fn start_upload(
    inner: &Arc<Inner>,
    name: &Name,
    query: &HashMap<String, String>,
    body: Body,
) -> Result<Response> {
    if let Some(mount) = query.get("mount") {
        let digest = Digest::parse(mount)?;
        // Blobs are global: whatever `from` says, a stored blob is available to every repository.
        let _gc = inner.gc_lock.read().await;
        if inner.storage.touch_blob(&digest).await?.is_some() {
            return Ok(blob_created(name, &digest));
        }
    }
    let id = uploads::start(inner, name).await?;
    if query.contains_key("digest") && !query.contains_key("mount") {
        let digest = digest_param(query)?;
        let (shared, session_name, blob) = (Arc::clone(inner), name.clone(), digest.clone());
        uploads::detached(async move { uploads::finish(&shared, &session_name, &id, &blob, body).await }).await?;
        return Ok(blob_created(name, &digest));
    }
    Ok(session(StatusCode::ACCEPTED, name, &id, 0))
}

async fn get_blob(inner: &Inner, digest: &Digest, headers: &HeaderMap) -> Result<Response> {
    let path = inner.storage.blob_path(digest);
    let mut file = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(blob_unknown(digest)),
        Err(e) => return Err(io("open", &path)(e)),
    };
    let size = file.metadata().await.map_err(io("read", &path))?.len();
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_range(v, size));
    let Some(range) = range else {
        let stream = ReaderStream::new(file.take(size));
        return Ok(described(StatusCode::OK, "application/octet-stream", size, digest)
            .body(Body::from_stream(stream))
            .unwrap_or_default());
    };
    let Some((start, end)) = range else {
        return Ok(Response::builder()
            .status(StatusCode::RANGE_NOT_SATISFIABLE)
            .header(header::CONTENT_RANGE, format!("bytes */{size}"))
            .body(Body::empty())
            .unwrap_or_default());
    };
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(io("seek in", &path))?;
    let length = end - start + 1;
    Ok(
        described(StatusCode::PARTIAL_CONTENT, "application/octet-stream", length, digest)
            .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"))
            .body(Body::from_stream(ReaderStream::new(file.take(length))))
            .unwrap_or_default(),
    )
}

/// `Range: bytes=<start>-[<end>]`: `None` to ignore (absent, malformed, several ranges),
/// `Some(None)` when it cannot be satisfied.
fn parse_range(value: &str, size: u64) -> Option<Option<(u64, u64)>> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end = match end.trim() {
        "" => size.saturating_sub(1),
        end => end.parse::<u64>().ok()?.min(size.saturating_sub(1)),
    };
    Some((start < size && start <= end).then_some((start, end)))
}

async fn list_tags(inner: &Inner, name: &Name, query: &HashMap<String, String>) -> Result<Response> {
    let n = match query.get("n") {
        Some(n) => Some(n.parse::<usize>().map_err(|_| {
            RegistryError::new(
                ErrorCode::PaginationNumberInvalid,
                format!("n={n:?} is not a number; ask for n=<count> tags per page"),
            )
        })?),
        None => None,
    };
    let last = query.get("last");
    let mut tags = manifests::list_tags(inner, name).await?;
    if let Some(last) = last {
        tags.retain(|tag| tag > last);
    }
    let more = n.is_some_and(|n| tags.len() > n);
    if let Some(n) = n {
        tags.truncate(n);
    }
    let body = serde_json::json!({ "name": name.as_str(), "tags": tags }).to_string();
    let mut response = json(StatusCode::OK, body, "application/json");
    if more && let (Some(n), Some(last)) = (n, tags.last()) {
        let link = format!("</v2/{name}/tags/list?n={n}&last={last}>; rel=\"next\"");
        if let Ok(link) = HeaderValue::from_str(&link) {
            response.headers_mut().insert(header::LINK, link);
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Some((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Some((90, 99))));
        assert_eq!(parse_range("bytes=90-1000", 100), Some(Some((90, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Some(None));
        assert_eq!(parse_range("bytes=0-1,3-4", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}
