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

/// How long an event stream may stay silent: the API sends a keep-alive comment every 15 s, so
/// a minute of nothing means the connection is dead (a proxy dropped it, the host went away).
/// `ENCLII_STREAM_IDLE_SECONDS` changes it.
fn sse_idle() -> Duration {
    let seconds = std::env::var("ENCLII_STREAM_IDLE_SECONDS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(60);
    Duration::from_secs(seconds)
}

/// One Server-Sent Event: its `event` name (`message` when unnamed) and `data`.
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

/// `url` without any `user:password@` in it, for messages.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) if scheme.is_empty() => format!("…@{}", &rest[at + 1..]),
        Some(at) => format!("{scheme}://…@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

fn unreachable(server: &str, e: &reqwest::Error) -> Failure {
    // reqwest's message for a refused connection is "error sending request": name the cause.
    let mut cause = e.to_string();
    if e.is_timeout() {
        cause = "no answer in time".into();
    }
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

/// A body that broke off while it was read.
fn broken(what: &str, e: reqwest::Error) -> Failure {
    Failure::new(exit::FAILURE, format!("{what}: {}", e.without_url()))
        .hint("the connection to the server broke: run the command again")
}

impl Client {
    /// A client for the settings' server; `None` token is allowed only for [`Client::anonymous`]
    /// uses — every `/v1` call needs one, so [`Client::new`] refuses early without it.
    pub fn new(settings: &Settings) -> Result<Self, Failure> {
        if settings.token.is_none() {
            let message = match &settings.profile_server {
                Some(other) => format!(
                    "no token for {}: the token of profile `{}` is for {}, and is not sent elsewhere",
                    redact(&settings.server),
                    settings.profile,
                    redact(other)
                ),
                None => "no token: every API call needs one".into(),
            };
            return Err(Failure::new(exit::AUTH, message).hint(format!(
                "run `enclii auth login --server {}` (it stores the token in the profile `{}`), or pass --token / set ENCLII_TOKEN",
                redact(&settings.server),
                settings.profile
            )));
        }
        Self::with_token(&settings.server, settings.token.clone())
    }

    pub fn with_token(server: &str, token: Option<String>) -> Result<Self, Failure> {
        if !(server.starts_with("http://") || server.starts_with("https://")) {
            return Err(Failure::validation(format!(
                "--server: `{}` is not an http:// or https:// URL",
                redact(server)
            ))
            .hint("e.g. --server http://127.0.0.1:8080"));
        }
        if redact(server) != server {
            // A password in the URL would end up in the config file and in messages; the API
            // takes a bearer token, never basic credentials.
            return Err(
                Failure::validation(format!("--server: `{}` has credentials in it", redact(server))).hint(
                    "drop the `user:password@` part: the token (--token or `enclii auth login`) is the credential",
                ),
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
            .map_err(|e| broken(&format!("reading the answer of {}", self.server), e))?;
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

    pub async fn patch(&self, path: &str, body: &Value) -> Result<Value, Failure> {
        self.json(self.request(Method::PATCH, path).json(body)).await
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
    /// server ends the stream. A stream silent for longer than [`sse_idle`] (not even a
    /// keep-alive) fails rather than hang.
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
        let idle = sse_idle();
        let response = tokio::time::timeout(idle, self.send(request))
            .await
            .map_err(|_| silent(&self.server, idle))??;
        let mut bytes = response.bytes_stream();
        // Bytes, not text: a chunk may end inside a UTF-8 character.
        let mut buffer: Vec<u8> = Vec::new();
        loop {
            let chunk = match tokio::time::timeout(idle, bytes.next()).await {
                Err(_) => return Err(silent(&self.server, idle)),
                Ok(None) => break,
                Ok(Some(chunk)) => chunk.map_err(|e| broken("the event stream broke", e))?,
            };
            buffer.extend(chunk.iter().filter(|b| **b != b'\r'));
            while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = buffer.drain(..end + 2).collect();
                let block = String::from_utf8_lossy(&raw);
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

fn silent(server: &str, idle: Duration) -> Failure {
    Failure::new(
        exit::FAILURE,
        format!(
            "the event stream from {server} was silent for {} s (no keep-alive): the connection is gone",
            idle.as_secs()
        ),
    )
    .hint(
        "check that the server is up (and that no proxy buffers or cuts text/event-stream), then run the command again",
    )
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
    for field in super::output::items(&body["errors"]) {
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
        StatusCode::FORBIDDEN => Some("ask an owner of the project for a token with the needed scope".into()),
        s if s.is_server_error() => Some("the server failed: its log says why; try again later".into()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_cut_out_of_urls() {
        assert_eq!(redact("http://a:b@host:1/x?y@z"), "http://…@host:1/x?y@z");
        assert_eq!(redact("https://host/p@th"), "https://host/p@th");
        assert_eq!(redact("user:pw@host"), "…@host");
        assert!(Client::with_token("http://a:b@host", None).is_err());
    }
}
