//! The API client: bearer token, JSON in and out, problem+json answers turned into
//! [`Failure`]s with the API's detail and hint and the exit code of their kind, and a reader of
//! Server-Sent Events streams.

use std::time::Duration;

use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::config::Settings;
use super::{Failure, exit};

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    server: String,
    token: Option<String>,
}

/// One Server-Sent Event: its `event` name (`message` when unnamed) and `data`.
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

fn unreachable(server: &str, e: &reqwest::Error) -> Failure {
    // reqwest's message for a refused connection is "error sending request": name the cause.
    let mut cause = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        cause = inner.to_string();
        source = inner.source();
    }
    Failure::new(
        exit::FAILURE,
        format!("cannot reach the Enclii server at {server}: {cause}"),
    )
    .hint("is the server running? start it with `enclii server`, or pass --server (or ENCLII_SERVER)")
}

impl Client {
    /// A client for the settings' server; `None` token is allowed only for [`Client::anonymous`]
    /// uses — every `/v1` call needs one, so [`Client::new`] refuses early without it.
    pub fn new(settings: &Settings) -> Result<Self, Failure> {
        if settings.token.is_none() {
            return Err(Failure::new(exit::AUTH, "no token: every API call needs one").hint(format!(
                "run `enclii auth login --server {}` (it stores the token in the profile `{}`), or pass --token / set ENCLII_TOKEN",
                settings.server, settings.profile
            )));
        }
        Self::with_token(&settings.server, settings.token.clone())
    }

    pub fn with_token(server: &str, token: Option<String>) -> Result<Self, Failure> {
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            return Err(
                Failure::validation(format!("--server: `{server}` is not an http:// or https:// URL"))
                    .hint("e.g. --server http://127.0.0.1:8080"),
            );
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("enclii/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Failure::new(exit::FAILURE, format!("cannot start the HTTP client: {e}")))?;
        Ok(Client {
            http,
            server: server.trim_end_matches('/').to_string(),
            token,
        })
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, format!("{}{path}", self.server));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        request
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, Failure> {
        let response = request.send().await.map_err(|e| unreachable(&self.server, &e))?;
        if response.status().is_success() {
            Ok(response)
        } else {
            Err(problem(response).await)
        }
    }

    async fn json(&self, request: reqwest::RequestBuilder) -> Result<Value, Failure> {
        let response = self.send(request.timeout(Duration::from_secs(120))).await?;
        if response.status() == StatusCode::NO_CONTENT {
            return Ok(Value::Null);
        }
        let text = response
            .text()
            .await
            .map_err(|e| Failure::new(exit::FAILURE, format!("reading the answer of {}: {e}", self.server)))?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| {
            Failure::new(exit::FAILURE, format!("the server's answer is not JSON ({e})"))
                .hint("is --server the Enclii API (not the router)?")
        })
    }

    pub async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.json(self.request(Method::GET, path)).await
    }

    pub async fn get_query(&self, path: &str, query: &[(&str, String)]) -> Result<Value, Failure> {
        self.json(self.request(Method::GET, path).query(query)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        self.json(self.request(Method::POST, path).json(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        self.json(self.request(Method::PUT, path).json(body)).await
    }

    /// Sends a Service Spec as YAML.
    pub async fn send_spec(&self, method: Method, path: &str, yaml: String) -> Result<Value, Failure> {
        let request = self
            .request(method, path)
            .header(reqwest::header::CONTENT_TYPE, "application/yaml")
            .body(yaml);
        self.json(request).await
    }

    pub async fn delete(&self, path: &str, query: &[(&str, String)]) -> Result<Value, Failure> {
        self.json(self.request(Method::DELETE, path).query(query)).await
    }

    /// Reads an SSE stream, calling `on_event` for each event until it returns `false` or the
    /// server ends the stream.
    pub async fn events(
        &self,
        path: &str,
        query: &[(&str, String)],
        mut on_event: impl FnMut(SseEvent) -> bool,
    ) -> Result<(), Failure> {
        let request = self
            .request(Method::GET, path)
            .query(query)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        let response = self.send(request).await?;
        let mut bytes = response.bytes_stream();
        let mut buffer = String::new();
        while let Some(chunk) = bytes.next().await {
            let chunk = chunk.map_err(|e| Failure::new(exit::FAILURE, format!("the event stream broke: {e}")))?;
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    event: "message".into(),
                    data: String::new(),
                };
                for line in block.lines() {
                    if let Some(name) = line.strip_prefix("event:") {
                        event.event = name.trim().to_string();
                    } else if let Some(data) = line.strip_prefix("data:") {
                        if !event.data.is_empty() {
                            event.data.push('\n');
                        }
                        event.data.push_str(data.strip_prefix(' ').unwrap_or(data));
                    }
                }
                // Keep-alive comments carry no data.
                if !event.data.is_empty() && !on_event(event) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

/// An error answer as a failure: the problem's detail, each failing field, its hint, and the
/// exit code of its kind (validation 10, auth 50, else 1).
async fn problem(response: reqwest::Response) -> Failure {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let detail = body["detail"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("the server answered {status}"));
    let mut message = detail;
    for field in body["errors"].as_array().into_iter().flatten() {
        let line = format!(
            "{}: {}",
            field["path"].as_str().unwrap_or("?"),
            field["message"].as_str().unwrap_or("")
        );
        if !message.contains(&line) {
            message.push_str(&format!("\n  {line}"));
        }
    }
    let code = match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => exit::VALIDATION,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => exit::AUTH,
        _ => exit::FAILURE,
    };
    let mut failure = Failure::new(code, message);
    failure.status = Some(status.as_u16());
    failure.hint = body["hint"].as_str().map(str::to_string).or_else(|| match status {
        StatusCode::UNAUTHORIZED => Some("log in again with `enclii auth login`, or pass a valid --token".into()),
        _ => None,
    });
    failure
}

/// A path segment, escaped (service and secret names are plain, but hosts and subjects may not be).
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
