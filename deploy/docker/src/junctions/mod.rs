//! Junctions: the HTTP router in front of the Docker target.
//!
//! Routes by `Host` (and longest path prefix) to the service bound there; splits a service's
//! traffic between its stable release and a canary by weight; counts requests, 5xx and latency
//! per release (for the canary analysis, kept in memory for [`window::RETAINED_SECS`]) and exports
//! them as Prometheus metrics. A request no backend answers is a 502 and counts as an error of
//! the release it was sent to; a paused service answers 503.
//!
//! With TLS on ([`Junctions::enable_tls`]) a second listener serves [`Junctions::tls_app`] with
//! the certificates of [`tls::Certificates`]; the plain listener then answers ACME HTTP-01
//! challenges and redirects a host that has a certificate to HTTPS (308), unless its route says
//! `tls: {redirect: false}`.

pub mod tls;
pub mod window;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

use enclii_deploy_contract::error::{DeployError, Result};
use enclii_deploy_contract::model::{ReleaseMetrics, RouteBinding, ServiceKey, Track};
use window::Window;

/// The replicas of one release.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backends {
    pub release: i64,
    pub addrs: Vec<SocketAddr>,
    /// The generation of the release's replicas that serve (see the Docker target's replica
    /// names); empty in tables saved before generations: every replica of the release.
    #[serde(default)]
    pub generation: String,
}

/// What one service has in the router: its routes, its stable release, maybe a canary.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub routes: Vec<RouteBinding>,
    pub stable: Option<Backends>,
    /// The canary and its share of the traffic, 0–100.
    pub canary: Option<(Backends, u8)>,
    pub paused: bool,
    /// The newest deployment applied (0: none recorded, as in tables saved before it was kept).
    #[serde(default)]
    pub deployment: i64,
    /// The spec's liveness probe of the releases it serves (`liveness.rs`).
    #[serde(default)]
    pub liveness: Option<enclii_domain::spec::Probe>,
}

#[derive(Default)]
struct Table {
    services: BTreeMap<ServiceKey, Binding>,
    /// host → routes, longest path prefix first.
    hosts: HashMap<String, Vec<HostRoute>>,
}

/// One route of a host in the index.
struct HostRoute {
    path: String,
    key: ServiceKey,
    /// Plain HTTP is redirected to HTTPS once the host has a certificate.
    redirect: bool,
}

impl Table {
    fn reindex(&mut self) {
        self.hosts.clear();
        for (key, binding) in &self.services {
            for route in &binding.routes {
                let entry = self.hosts.entry(route.host.to_ascii_lowercase()).or_default();
                entry.push(HostRoute {
                    path: route.path.clone(),
                    key: key.clone(),
                    redirect: route.tls,
                });
            }
        }
        for routes in self.hosts.values_mut() {
            routes.sort_by(|a, b| b.path.len().cmp(&a.path.len()).then_with(|| a.path.cmp(&b.path)));
        }
    }

    /// The service for `host` and `path`: the host's own routes, else a wildcard one label up
    /// (`*.example.com` serves `app.example.com`, not `a.b.example.com`).
    fn lookup(&self, host: &str, path: &str) -> Option<&HostRoute> {
        let in_host = |host: &str| {
            self.hosts
                .get(host)?
                .iter()
                .find(|route| path_matches(&route.path, path))
        };
        in_host(host).or_else(|| {
            let (_, parent) = host.split_once('.')?;
            in_host(&format!("*.{parent}"))
        })
    }

    /// Whether `host` has any route (its own or a wildcard's).
    fn routes_host(&self, host: &str) -> bool {
        self.hosts.contains_key(host)
            || host
                .split_once('.')
                .is_some_and(|(_, parent)| self.hosts.contains_key(&format!("*.{parent}")))
    }
}

/// `/api` matches `/api`, `/api/` and `/api/x`, not `/apix`.
fn path_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty() || path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

/// The router's state, shared between the Docker target (which changes it) and the HTTP server.
pub struct Junctions {
    table: RwLock<Table>,
    windows: RwLock<HashMap<(ServiceKey, i64), Arc<Window>>>,
    next: AtomicUsize,
    client: Client<HttpConnector, Body>,
    /// `http://` plus the port suffix URLs are printed with, e.g. `:8080` (empty for port 80).
    port_suffix: String,
    /// HTTPS, once enabled at start.
    tls: OnceLock<tls::Tls>,
}

impl Junctions {
    /// `public_port` is the port users reach the router on, for the URLs deploys report.
    pub fn new(public_port: u16) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        Arc::new(Self {
            table: RwLock::new(Table::default()),
            windows: RwLock::new(HashMap::new()),
            next: AtomicUsize::new(0),
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            port_suffix: if public_port == 80 {
                String::new()
            } else {
                format!(":{public_port}")
            },
            tls: OnceLock::new(),
        })
    }

    /// Turns HTTPS on (once; later calls are ignored): serve [`Self::tls_app`] on a TLS listener
    /// with `tls.certificates`' server configuration.
    pub fn enable_tls(&self, tls: tls::Tls) {
        let _ = self.tls.set(tls);
    }

    /// The URL a route serves on: `https://` once its host has a certificate (and its route
    /// redirects plain HTTP there).
    pub fn url(&self, route: &RouteBinding) -> String {
        match self.tls.get() {
            Some(tls) if route.tls && tls.certificates.has(&route.host) => {
                format!("https://{}{}{}", route.host, tls.port_suffix, route.path)
            }
            _ => format!("http://{}{}{}", route.host, self.port_suffix, route.path),
        }
    }

    /// Whether `host` has a route here (a TLS request for it without a certificate may order one).
    pub fn routes_host(&self, host: &str) -> bool {
        self.table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .routes_host(&host.to_ascii_lowercase())
    }

    /// Refuses routes another service already holds (same host and path), naming the holder.
    pub fn check_routes(&self, key: &ServiceKey, routes: &[RouteBinding]) -> Result<()> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        for route in routes {
            if let Some(holder) = table
                .hosts
                .get(&route.host.to_ascii_lowercase())
                .and_then(|paths| paths.iter().find(|held| held.path == route.path && held.key != *key))
                .map(|held| &held.key)
            {
                return Err(DeployError::Refused(format!(
                    "route {}{} is already bound to service `{}` in environment `{}`; remove that route first or choose another host",
                    route.host, route.path, holder.service, holder.environment
                )));
            }
        }
        Ok(())
    }

    /// The service's binding, if it has one.
    pub fn binding(&self, key: &ServiceKey) -> Option<Binding> {
        self.table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .services
            .get(key)
            .cloned()
    }

    /// Every binding (for persisting the table).
    pub fn bindings(&self) -> BTreeMap<ServiceKey, Binding> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).services.clone()
    }

    /// Changes one service's binding; `None` from `change` removes it.
    pub fn update<T>(&self, key: &ServiceKey, change: impl FnOnce(&mut Option<Binding>) -> T) -> T {
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        let mut binding = table.services.remove(key);
        let out = change(&mut binding);
        if let Some(binding) = binding {
            table.services.insert(key.clone(), binding);
        }
        table.reindex();
        out
    }

    /// Replaces the whole table (recovery at start-up).
    pub fn restore(&self, services: BTreeMap<ServiceKey, Binding>) {
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        table.services = services;
        table.reindex();
    }

    fn window(&self, key: &ServiceKey, release: i64) -> Arc<Window> {
        let id = (key.clone(), release);
        if let Some(w) = self.windows.read().unwrap_or_else(|p| p.into_inner()).get(&id) {
            return w.clone();
        }
        self.windows
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_default()
            .clone()
    }

    /// What `release` served over the last `window`.
    pub fn metrics(&self, key: &ServiceKey, release: i64, window: Duration) -> ReleaseMetrics {
        self.window(key, release).summary(window)
    }

    /// Forgets the counters of a release that no longer runs.
    pub fn forget(&self, key: &ServiceKey, release: i64) {
        self.windows
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(key.clone(), release));
    }

    /// The router for the plain-HTTP listener.
    pub fn app(self: &Arc<Self>) -> axum::Router {
        self.entry(false)
    }

    /// The router for the TLS listener (see [`Self::enable_tls`]).
    pub fn tls_app(self: &Arc<Self>) -> axum::Router {
        self.entry(true)
    }

    fn entry(self: &Arc<Self>, secure: bool) -> axum::Router {
        axum::Router::new().fallback(proxy).with_state(Entry {
            junctions: self.clone(),
            secure,
        })
    }

    /// Picks the release and replica for a request (`secure`: it came over TLS).
    fn pick(&self, host: &str, path: &str, secure: bool) -> Pick {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        let Some(route) = table.lookup(host, path) else {
            return Pick::NoRoute;
        };
        if route.redirect
            && !secure
            && let Some(tls) = self.tls.get()
            && tls.certificates.has(host)
        {
            return Pick::ToHttps;
        }
        let key = &route.key;
        let binding = &table.services[key];
        if binding.paused {
            return Pick::Paused;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let (backends, track) = match (&binding.stable, &binding.canary) {
            (Some(stable), Some((canary, percent))) => {
                if rand::random_range(0..100u8) < *percent {
                    (canary, Track::Canary)
                } else {
                    (stable, Track::Stable)
                }
            }
            (Some(stable), None) => (stable, Track::Stable),
            (None, Some((canary, _))) => (canary, Track::Canary),
            (None, None) => return Pick::NoBackend(key.clone()),
        };
        if backends.addrs.is_empty() {
            return Pick::NoBackend(key.clone());
        }
        Pick::Backend {
            key: key.clone(),
            release: backends.release,
            track,
            addrs: rotate(&backends.addrs, n),
        }
    }
}

/// Which listener a request came in on.
#[derive(Clone)]
struct Entry {
    junctions: Arc<Junctions>,
    secure: bool,
}

fn rotate(addrs: &[SocketAddr], n: usize) -> Vec<SocketAddr> {
    let start = n % addrs.len();
    addrs[start..].iter().chain(&addrs[..start]).copied().collect()
}

enum Pick {
    NoRoute,
    /// Plain HTTP for a host with a certificate whose route redirects.
    ToHttps,
    Paused,
    NoBackend(ServiceKey),
    Backend {
        key: ServiceKey,
        release: i64,
        track: Track,
        /// Replicas in the order to try them.
        addrs: Vec<SocketAddr>,
    },
}

fn plain(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response()
}

fn request_host(request: &Request) -> String {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().host())
        .unwrap_or_default();
    // Strip the port (but not from a bracketed IPv6 literal's inside).
    let host = match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    };
    host.to_ascii_lowercase()
}

/// The ACME HTTP-01 answer for a `/.well-known/acme-challenge/<token>` request on the plain
/// listener with TLS on; `None` for any other request.
async fn acme_answer(junctions: &Junctions, path: &str) -> Option<Response> {
    let tls = junctions.tls.get()?;
    let token = path.strip_prefix("/.well-known/acme-challenge/")?;
    if !tls::is_token(token) {
        return Some(plain(StatusCode::NOT_FOUND, "not a challenge token"));
    }
    Some(match tls.challenges.answer(token).await {
        Some(answer) => (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], answer).into_response(),
        None => plain(StatusCode::NOT_FOUND, "no challenge with this token"),
    })
}

/// `308` to the same URL over HTTPS.
fn to_https(junctions: &Junctions, request: &Request, host: &str) -> Response {
    let suffix = junctions.tls.get().map_or("", |tls| tls.port_suffix.as_str());
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    match HeaderValue::from_str(&format!("https://{host}{suffix}{target}")) {
        Ok(location) => (StatusCode::PERMANENT_REDIRECT, [(header::LOCATION, location)]).into_response(),
        Err(_) => plain(
            StatusCode::BAD_REQUEST,
            "the request's host or path cannot be redirected",
        ),
    }
}

async fn proxy(State(entry): State<Entry>, request: Request) -> Response {
    let junctions = &entry.junctions;
    let host = request_host(&request);
    let path = request.uri().path().to_string();
    if !entry.secure
        && let Some(answer) = acme_answer(junctions, &path).await
    {
        return answer;
    }
    let (key, release, track, addrs) = match junctions.pick(&host, &path, entry.secure) {
        Pick::NoRoute => return plain(StatusCode::NOT_FOUND, &format!("no route for {host}{path}")),
        Pick::ToHttps => return to_https(junctions, &request, &host),
        Pick::Paused => {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "this environment is paused (budget reached)",
            );
        }
        Pick::NoBackend(key) => {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("{key} has no running release"),
            );
        }
        Pick::Backend {
            key,
            release,
            track,
            addrs,
        } => (key, release, track, addrs),
    };
    let started = Instant::now();
    let response = forward(junctions, request, &host, &addrs, entry.secure).await;
    let elapsed = started.elapsed();
    let error = response.status().is_server_error();
    junctions.window(&key, release).record(error, elapsed);
    let labels = [
        ("project", key.project.clone()),
        ("environment", key.environment.clone()),
        ("service", key.service.clone()),
        (
            "track",
            if track == Track::Canary { "canary" } else { "stable" }.to_string(),
        ),
    ];
    let class = format!("{}xx", response.status().as_u16() / 100);
    let mut counted = labels.to_vec();
    counted.push(("class", class));
    metrics::counter!("enclii_router_requests_total", &counted).increment(1);
    metrics::histogram!("enclii_router_request_duration_seconds", &labels).record(elapsed.as_secs_f64());
    response
}

/// Sends the request to the first replica that accepts the connection. Only a request whose
/// body is empty is retried on another replica: a streamed body cannot be sent twice.
async fn forward(junctions: &Junctions, request: Request, host: &str, addrs: &[SocketAddr], secure: bool) -> Response {
    let (mut parts, body) = request.into_parts();
    let retryable = parts.method.is_idempotent() && body_is_empty(&parts.headers);
    strip_hop_by_hop(&mut parts.headers);
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let client_addr = parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string());
    if let Some(ip) = client_addr
        && let Ok(value) = HeaderValue::from_str(&ip)
    {
        parts.headers.insert("x-forwarded-for", value);
    }
    if let Ok(value) = HeaderValue::from_str(host) {
        parts.headers.insert("x-forwarded-host", value);
    }
    parts.headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if secure { "https" } else { "http" }),
    );
    let mut body = Some(body);
    let mut last_error = String::new();
    for addr in addrs {
        let Ok(uri) = format!("http://{addr}{path}").parse::<Uri>() else {
            return plain(StatusCode::BAD_REQUEST, "the request path is not a valid URI");
        };
        let mut attempt = axum::http::Request::new(body.take().unwrap_or_else(Body::empty));
        *attempt.method_mut() = parts.method.clone();
        *attempt.uri_mut() = uri;
        *attempt.headers_mut() = parts.headers.clone();
        match junctions.client.request(attempt).await {
            Ok(response) => {
                let (mut head, body) = response.into_parts();
                strip_hop_by_hop(&mut head.headers);
                return Response::from_parts(head, Body::new(body));
            }
            Err(e) => {
                last_error = e.to_string();
                if !(retryable && e.is_connect()) {
                    break;
                }
            }
        }
    }
    tracing::warn!(%host, error = %last_error, "no replica answered");
    plain(StatusCode::BAD_GATEWAY, "the service did not answer")
}

/// Removes the headers that describe one connection, not the message (RFC 9110 §7.6.1): the
/// client's connection and the replica's are separate. Without this a replica's
/// `Connection: close` closed the client's kept-alive connection (a new TLS handshake per
/// request), and a client's stopped the router reusing its connection to the replica.
fn strip_hop_by_hop(headers: &mut axum::http::HeaderMap) {
    let named: Vec<header::HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| header::HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::HeaderName::from_static("keep-alive"),
        header::HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

fn body_is_empty(headers: &axum::http::HeaderMap) -> bool {
    !headers.contains_key(header::TRANSFER_ENCODING)
        && headers.get(header::CONTENT_LENGTH).is_none_or(|v| v.as_bytes() == b"0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: &str, path: &str) -> RouteBinding {
        RouteBinding {
            host: host.into(),
            path: path.into(),
            tls: false,
        }
    }

    #[test]
    fn longest_prefix_wins_and_prefixes_end_at_a_slash() {
        let j = Junctions::new(8080);
        let api = ServiceKey::new("p", "prod", "api");
        let web = ServiceKey::new("p", "prod", "web");
        j.update(&web, |b| {
            *b = Some(Binding {
                routes: vec![route("shop.test", "/")],
                ..Binding::default()
            })
        });
        j.update(&api, |b| {
            *b = Some(Binding {
                routes: vec![route("shop.test", "/api")],
                ..Binding::default()
            })
        });
        let table = j.table.read().unwrap();
        let lookup = |host, path| table.lookup(host, path).map(|r| &r.key);
        assert_eq!(lookup("shop.test", "/api/orders"), Some(&api));
        assert_eq!(lookup("shop.test", "/api"), Some(&api));
        assert_eq!(lookup("shop.test", "/apiary"), Some(&web));
        assert_eq!(lookup("other.test", "/"), None);
    }

    #[test]
    fn a_wildcard_serves_one_label_below_it_and_exact_hosts_win() {
        let j = Junctions::new(8080);
        let any = ServiceKey::new("p", "prod", "any");
        let app = ServiceKey::new("p", "prod", "app");
        j.update(&any, |b| {
            *b = Some(Binding {
                routes: vec![route("*.shop.test", "/")],
                ..Binding::default()
            })
        });
        j.update(&app, |b| {
            *b = Some(Binding {
                routes: vec![route("app.shop.test", "/")],
                ..Binding::default()
            })
        });
        let table = j.table.read().unwrap();
        let lookup = |host, path| table.lookup(host, path).map(|r| &r.key);
        assert_eq!(lookup("app.shop.test", "/"), Some(&app));
        assert_eq!(lookup("blog.shop.test", "/x"), Some(&any));
        assert_eq!(lookup("a.blog.shop.test", "/"), None);
        assert_eq!(lookup("shop.test", "/"), None);
        assert!(table.routes_host("blog.shop.test") && !table.routes_host("shop.test"));
    }

    #[test]
    fn a_route_held_by_another_service_is_refused_with_its_holder() {
        let j = Junctions::new(80);
        let api = ServiceKey::new("p", "prod", "api");
        j.update(&api, |b| {
            *b = Some(Binding {
                routes: vec![route("shop.test", "/")],
                ..Binding::default()
            })
        });
        assert!(j.check_routes(&api, &[route("shop.test", "/")]).is_ok());
        let err = j
            .check_routes(&ServiceKey::new("p", "prod", "web"), &[route("SHOP.test", "/")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("already bound to service `api`"), "{err}");
        assert_eq!(j.url(&route("shop.test", "/")), "http://shop.test/");
    }

    struct Answers;

    #[async_trait::async_trait]
    impl tls::ChallengeAnswers for Answers {
        async fn answer(&self, token: &str) -> Option<String> {
            (token == "tok_0123456789abcdef").then(|| format!("{token}.thumbprint"))
        }
    }

    fn request(host: &str, uri: &str) -> Request {
        axum::http::Request::builder()
            .uri(uri)
            .header(header::HOST, host)
            .body(Body::empty())
            .unwrap()
    }

    #[tokio::test]
    async fn with_tls_plain_http_answers_challenges_and_redirects_hosts_with_a_certificate() {
        let j = Junctions::new(80);
        let (chain, key) = tls::tests::self_signed(&["secure.test", "open.test"]);
        let file = ("test".to_string(), chain.into_bytes(), key.into_bytes());
        let (certificates, _misses) = tls::Certificates::new(&[file]).unwrap();
        j.enable_tls(tls::Tls::new(certificates, Arc::new(Answers), 8443));
        let key = ServiceKey::new("p", "prod", "web");
        let redirecting = |host: &str| RouteBinding {
            tls: true,
            ..route(host, "/")
        };
        j.update(&key, |b| {
            *b = Some(Binding {
                routes: vec![
                    redirecting("secure.test"),
                    route("open.test", "/"),
                    redirecting("bare.test"),
                ],
                paused: true,
                ..Binding::default()
            })
        });
        let plain = Entry {
            junctions: j.clone(),
            secure: false,
        };
        let answer = proxy(
            State(plain.clone()),
            request("any.test", "/.well-known/acme-challenge/tok_0123456789abcdef"),
        )
        .await;
        assert_eq!(answer.status(), StatusCode::OK);
        let body = axum::body::to_bytes(answer.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], b"tok_0123456789abcdef.thumbprint");
        let unknown = proxy(
            State(plain.clone()),
            request("any.test", "/.well-known/acme-challenge/tok_unknown_0123456"),
        )
        .await;
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND);

        // A host with a certificate is sent to HTTPS, path and query kept; over TLS it is served.
        let redirected = proxy(State(plain.clone()), request("secure.test", "/a/b?c=1")).await;
        assert_eq!(redirected.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            redirected.headers()[header::LOCATION],
            "https://secure.test:8443/a/b?c=1"
        );
        let secure = Entry {
            junctions: j.clone(),
            secure: true,
        };
        let served = proxy(State(secure), request("secure.test", "/a/b?c=1")).await;
        assert_eq!(
            served.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "proxied (the service is paused)"
        );
        // `tls: {redirect: false}` and hosts without a certificate stay on plain HTTP.
        for host in ["open.test", "bare.test"] {
            let response = proxy(State(plain.clone()), request(host, "/")).await;
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{host}");
        }
        assert_eq!(j.url(&redirecting("secure.test")), "https://secure.test:8443/");
        assert_eq!(j.url(&redirecting("bare.test")), "http://bare.test/");
        assert_eq!(j.url(&route("open.test", "/")), "http://open.test/");
    }

    #[test]
    fn connection_headers_stay_on_their_side_of_the_router() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("close, x-hop"));
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn canary_weight_splits_traffic() {
        let j = Junctions::new(80);
        let key = ServiceKey::new("p", "prod", "api");
        let backends = |release, port| Backends {
            release,
            addrs: vec![SocketAddr::from(([127, 0, 0, 1], port))],
            generation: String::new(),
        };
        j.update(&key, |b| {
            *b = Some(Binding {
                routes: vec![route("a.test", "/")],
                stable: Some(backends(1, 1000)),
                canary: Some((backends(2, 2000), 20)),
                deployment: 2,
                ..Binding::default()
            })
        });
        let canary = (0..5000)
            .filter(|_| matches!(j.pick("a.test", "/", false), Pick::Backend { release: 2, .. }))
            .count();
        assert!((800..1200).contains(&canary), "{canary} of 5000 went to the 20% canary");
    }
}
