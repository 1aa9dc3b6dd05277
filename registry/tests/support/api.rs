//! Talking to the registry over HTTP in tests: an authenticated client, the OCI error body,
//! headers, and raw requests (for paths an HTTP client would normalise).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{TestRegistry, random_hex, sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

pub struct Api<'a> {
    pub registry: &'a TestRegistry,
    http: reqwest::Client,
}

impl<'a> Api<'a> {
    pub fn new(registry: &'a TestRegistry) -> Self {
        Self {
            registry,
            http: reqwest::Client::new(),
        }
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.registry.url(path))
            .basic_auth(self.registry.user(), Some(self.registry.password()))
    }

    /// Uploads a blob in one request; returns its digest.
    pub async fn blob(&self, name: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let response = self
            .request(Method::POST, &format!("/v2/{name}/blobs/uploads/?digest={digest}"))
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "{}",
            response.text().await.unwrap()
        );
        digest
    }

    /// Sends `method path` with no body.
    pub async fn send(&self, method: Method, path: &str) -> reqwest::Response {
        self.request(method, path).send().await.unwrap()
    }

    /// GETs `path` and returns its body as JSON (whatever the status).
    pub async fn json(&self, path: &str) -> Value {
        self.send(Method::GET, path).await.json().await.unwrap()
    }

    /// The answer to `GET /v2/<name>/tags/list` (`{"name": …, "tags": […]}`).
    pub async fn tags(&self, name: &str) -> Value {
        self.json(&format!("/v2/{name}/tags/list")).await
    }

    /// Sends `method path` with no body and checks that it is refused with `status` and the OCI
    /// error code `expected`; returns the error's message.
    pub async fn refused(&self, method: Method, path: &str, status: StatusCode, expected: &str) -> String {
        refused(self.send(method, path).await, status, expected).await
    }

    /// The referrers of `subject` in `name` (`GET /v2/<name>/referrers/<subject>`): an image index.
    pub async fn referrers(&self, name: &str, subject: &str) -> Value {
        self.json(&format!("/v2/{name}/referrers/{subject}")).await
    }

    /// Starts an upload session in `name` (`POST /v2/<name>/blobs/uploads/`, no body).
    pub async fn start_upload(&self, name: &str) -> reqwest::Response {
        self.send(Method::POST, &format!("/v2/{name}/blobs/uploads/")).await
    }

    /// Sends a chunk of an upload (PATCH `location`), with `Content-Range: <range>` if given.
    pub async fn patch(&self, location: &str, range: Option<&str>, chunk: &[u8]) -> reqwest::Response {
        let mut request = self.request(Method::PATCH, location).body(chunk.to_vec());
        if let Some(range) = range {
            request = request.header("Content-Range", range);
        }
        request.send().await.unwrap()
    }

    /// PUTs `body` as the manifest `name:reference`, of media type `content_type`.
    pub async fn put_manifest(
        &self,
        name: &str,
        reference: &str,
        content_type: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.request(Method::PUT, &format!("/v2/{name}/manifests/{reference}"))
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// Pushes an image manifest of `config` and `layers` (already uploaded) as `name:reference`.
    pub async fn manifest(&self, name: &str, reference: &str, manifest: &Value) -> reqwest::Response {
        self.put_manifest(name, reference, OCI_MANIFEST, serde_json::to_vec(manifest).unwrap())
            .await
    }

    /// Uploads a config and one layer and returns a manifest of them.
    pub async fn image(&self, name: &str) -> Value {
        let config = self.blob(name, br#"{"architecture":"amd64","os":"linux"}"#).await;
        let layer_data = random_hex(64);
        let layer = self.blob(name, layer_data.as_bytes()).await;
        json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 37 },
            "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": layer_data.len() }],
        })
    }

    /// Uploads an [`Api::image`] and pushes its manifest as `name:tag` (which must succeed);
    /// returns the manifest and its digest.
    pub async fn push_image(&self, name: &str, tag: &str) -> (Value, String) {
        let manifest = self.image(name).await;
        let pushed = self.manifest(name, tag, &manifest).await;
        assert_eq!(pushed.status(), StatusCode::CREATED, "{}", pushed.text().await.unwrap());
        let digest = sha256(&serde_json::to_vec(&manifest).unwrap());
        (manifest, digest)
    }
}

/// The OCI error code of a response (and that the body has the spec's shape).
pub async fn code(response: reqwest::Response) -> (StatusCode, String, String) {
    let status = response.status();
    let body: Value = response.json().await.expect("an OCI error body");
    let error = &body["errors"][0];
    assert!(error["detail"].is_null(), "{body}");
    (
        status,
        error["code"].as_str().unwrap_or_default().to_owned(),
        error["message"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Checks that `response` is the OCI error `expected` with `status`; returns the error's message.
pub async fn refused(response: reqwest::Response, status: StatusCode, expected: &str) -> String {
    let url = response.url();
    let target = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    let (got_status, got_code, message) = code(response).await;
    assert_eq!(
        (got_status, got_code.as_str()),
        (status, expected),
        "{target}: {message}"
    );
    message
}

pub fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Opens a connection and sends the head of a raw, authenticated HTTP/1.1 request: `method path`
/// with the `headers` given (each `Name: value`); the body, if any, is the caller's to write.
pub async fn raw_request(registry: &TestRegistry, method: &str, path: &str, headers: &[&str]) -> tokio::net::TcpStream {
    use base64::Engine as _;
    use tokio::io::AsyncWriteExt as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", registry.user(), registry.password()));
    let mut stream = tokio::net::TcpStream::connect(registry.addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n");
    for header in headers {
        request.push_str(&format!("{header}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

/// A raw HTTP/1.1 GET (for paths an HTTP client would normalise); returns the status line.
pub async fn raw_get(registry: &TestRegistry, path: &str) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut stream = raw_request(registry, "GET", path, &["Connection: close"]).await;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.lines().next().unwrap_or_default().to_owned()
}
