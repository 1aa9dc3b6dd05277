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

    /// Pushes an image manifest of `config` and `layers` (already uploaded) as `name:reference`.
    pub async fn manifest(&self, name: &str, reference: &str, manifest: &Value) -> reqwest::Response {
        self.request(Method::PUT, &format!("/v2/{name}/manifests/{reference}"))
            .header("Content-Type", OCI_MANIFEST)
            .body(serde_json::to_vec(manifest).unwrap())
            .send()
            .await
            .unwrap()
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

pub fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// A raw HTTP/1.1 request; returns the status line.
pub async fn raw_get(registry: &TestRegistry, path: &str) -> String {
    use base64::Engine as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", registry.user(), registry.password()));
    let mut stream = tokio::net::TcpStream::connect(registry.addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.lines().next().unwrap_or_default().to_owned()
}
