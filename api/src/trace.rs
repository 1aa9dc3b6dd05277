//! Request tracing: every request runs in an `http_request` span (trace id, method, the matched
//! route template, status) and inside its trace's task-local scope (`enclii_queue::trace`), so
//! jobs and pipelines it enqueues carry the trace (`_trace`) to the workers. The trace continues
//! the caller's `traceparent` header when it sends a valid one; otherwise a new trace starts. The
//! response's `traceparent` header names the request's span, for callers to quote.

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use enclii_queue::trace::{self, TraceContext};
use tracing::Instrument;
use tracing::field::Empty;

/// The W3C Trace Context header, read on requests and written on responses.
pub(crate) const TRACEPARENT: &str = "traceparent";

/// Probes and scrapes are not traced: they would be most of the spans and say nothing.
fn untraced(path: &str) -> bool {
    matches!(path, "/health" | "/health/live" | "/health/ready" | "/metrics")
}

/// The middleware (`axum::middleware::from_fn`), added with `Router::layer` so that the matched
/// route is known.
pub(crate) async fn layer(request: Request, next: Next) -> Response {
    // The route template (`/v1/jobs/{id}`), never the path with ids in it: bounded cardinality.
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|matched| matched.as_str().to_string());
    if route.as_deref().is_some_and(untraced) {
        return next.run(request).await;
    }
    let parent = request
        .headers()
        .get(TRACEPARENT)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<TraceContext>().ok());
    let span = tracing::info_span!(
        "http_request",
        trace_id = Empty,
        method = %request.method(),
        path = route.as_deref().unwrap_or("<unmatched>"),
        status = Empty,
        otel.kind = "server",
    );
    let ctx = trace::attach(&span, parent);
    let mut response = trace::scope(ctx, next.run(request)).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("status", status);
    span.in_scope(|| tracing::debug!(status, "request handled"));
    if let Ok(value) = HeaderValue::from_str(&ctx.to_string()) {
        response.headers_mut().insert(TRACEPARENT, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    fn app() -> Router {
        Router::new()
            .route(
                "/v1/things/{id}",
                get(|| async { trace::current().map(|ctx| ctx.to_string()).unwrap_or_default() }),
            )
            .route("/health", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn(layer))
    }

    async fn call(app: Router, path: &str, traceparent: Option<&str>) -> (Option<String>, String) {
        let mut request = Request::get(path);
        if let Some(value) = traceparent {
            request = request.header(TRACEPARENT, value);
        }
        let response = app.oneshot(request.body(Body::empty()).unwrap()).await.unwrap();
        let header = response
            .headers()
            .get(TRACEPARENT)
            .map(|v| v.to_str().unwrap().to_string());
        let body = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        (header, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_request_continues_the_callers_trace_and_names_its_span() {
        let caller = TraceContext::new_root();
        let (header, inside) = call(app(), "/v1/things/7", Some(&caller.to_string())).await;
        let header: TraceContext = header.expect("a traceparent header").parse().unwrap();
        assert_eq!(header.trace_id, caller.trace_id);
        assert_ne!(header.span_id, caller.span_id, "the request is a span of its own");
        assert_eq!(inside, header.to_string(), "the handler runs in the request's trace");
    }

    /// A subscriber that keeps every span name and field value it is shown, as text.
    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    struct Fields<'a>(&'a mut Vec<String>);

    impl tracing::field::Visit for Fields<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0.push(format!("{}={value:?}", field.name()));
        }
    }

    impl tracing::Subscriber for Capture {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            let mut seen = self.0.lock().unwrap();
            seen.push(format!("span {}", span.metadata().name()));
            span.record(&mut Fields(&mut seen));
            tracing::span::Id::from_u64(seen.len() as u64)
        }
        fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
            values.record(&mut Fields(&mut self.0.lock().unwrap()));
        }
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            event.record(&mut Fields(&mut self.0.lock().unwrap()));
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[tokio::test]
    async fn the_request_span_records_neither_query_strings_nor_credentials() {
        let seen = std::sync::Arc::default();
        let _guard = tracing::subscriber::set_default(Capture(std::sync::Arc::clone(&seen)));
        for uri in ["/v1/things/s3cr3t-id?token=s3cr3t-query", "/nowhere?token=s3cr3t-query"] {
            let request = Request::get(uri)
                .header("authorization", "Bearer s3cr3t-token")
                .header("cookie", "session=s3cr3t-cookie")
                .body(Body::empty())
                .unwrap();
            let response = app().oneshot(request).await.unwrap();
            assert!(response.headers().contains_key(TRACEPARENT));
        }
        let seen = seen.lock().unwrap();
        assert!(seen.iter().any(|s| s == "span http_request"), "{seen:?}");
        assert!(seen.iter().any(|s| s == "path=\"/v1/things/{id}\""), "{seen:?}");
        assert!(seen.iter().any(|s| s == "path=\"<unmatched>\""), "{seen:?}");
        assert!(seen.iter().any(|s| s.starts_with("trace_id=")), "{seen:?}");
        assert!(!seen.iter().any(|s| s.contains("s3cr3t")), "{seen:?}");
    }

    #[tokio::test]
    async fn a_request_without_a_valid_traceparent_starts_a_trace() {
        let (header, inside) = call(app(), "/v1/things/7", None).await;
        let header: TraceContext = header.unwrap().parse().unwrap();
        assert_eq!(inside, header.to_string());
        let (other, _) = call(app(), "/v1/things/7", Some("00-zz-bad")).await;
        assert_ne!(
            other.unwrap().parse::<TraceContext>().unwrap().trace_id,
            header.trace_id
        );
        let (probe, _) = call(app(), "/health", None).await;
        assert_eq!(probe, None, "probes are not traced");
        let (unmatched, _) = call(app(), "/nowhere", None).await;
        assert!(unmatched.is_some(), "unmatched paths are traced, as `<unmatched>`");
    }
}
