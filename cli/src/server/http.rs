//! Serving HTTP (the API and the Junctions router) with limits `axum::serve` lacks: a client
//! must finish a request head within the header timeout once it has started one, a connection
//! on which no byte moves for the idle timeout is closed, and one client address holds at most
//! so many connections. Without them, slow-loris clients (a byte every few seconds) and idle
//! connections were held forever.
//!
//! HTTP/1.1 only: hyper's HTTP/2 (and its version detection, which waits for the preface) has no
//! header timeout, and no client of Enclii's speaks h2c.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use clap::Args;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Connection limits of the HTTP listeners (API and router alike).
#[derive(Args, Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Time a client has to send a request's head (request line and headers) once its first byte
    /// arrived; a slower client is disconnected. `10s`, `500ms`, `1m` (a bare number is seconds).
    #[arg(long = "http-header-timeout", env = "ENCLII_HTTP_HEADER_TIMEOUT", default_value = "10s",
          value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// A connection on which no byte moves for this long is closed: a kept-alive connection
    /// waiting for its next request, a stalled upload, a client that stopped reading. Keep it
    /// above 15 s, the keep-alive interval of event streams.
    #[arg(long = "http-idle-timeout", env = "ENCLII_HTTP_IDLE_TIMEOUT", default_value = "60s",
          value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Connections one client address may hold open at once; more are closed as they arrive.
    /// `0` is no limit (behind a proxy every client has the proxy's address).
    #[arg(
        long = "http-max-conns-per-ip",
        env = "ENCLII_HTTP_MAX_CONNS_PER_IP",
        default_value_t = 256
    )]
    pub max_conns_per_ip: usize,
}

/// `10s`, `250ms`, `2m` or a number of seconds; never zero.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration: write e.g. 10s, 500ms or 2m"))?;
    let duration = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        other => return Err(format!("unknown unit `{other}` in `{text}`: use ms, s or m")),
    };
    if duration.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(duration)
}

/// Serves `app` on `listener` until `shutdown`, then stops accepting, lets every connection finish
/// its request in flight (new requests are refused) and returns once all have closed — as
/// `axum::serve(…).with_graceful_shutdown(…)` does. Requests carry the client's
/// `ConnectInfo<SocketAddr>`.
pub async fn serve(listener: TcpListener, app: axum::Router, limits: HttpLimits, shutdown: CancellationToken) {
    serve_with(listener, app, limits, None, shutdown).await;
}

/// [`serve`] over TLS: each connection's handshake must end within the header timeout.
pub async fn serve_tls(
    listener: TcpListener,
    app: axum::Router,
    limits: HttpLimits,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    serve_with(listener, app, limits, Some(acceptor), shutdown).await;
}

async fn serve_with(
    listener: TcpListener,
    app: axum::Router,
    limits: HttpLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) {
    let per_ip = Arc::new(PerIp::new(limits.max_conns_per_ip));
    let connections = TaskTracker::new();
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    // hyper's own header timer runs from when a connection starts waiting for a head, idle time
    // included: a backstop beyond both of ours, never the first to fire.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout + limits.header_timeout);
    let builder = Arc::new(builder);
    loop {
        let (stream, remote) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        // Responses go out as soon as they are written: with Nagle's algorithm a response written
        // in two pieces (head, then body) waited ~40 ms for the client's delayed ACK on a
        // kept-alive connection.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%remote, error = %e, "could not set TCP_NODELAY");
        }
        let Some(slot) = per_ip.acquire(remote.ip()) else {
            refused(remote.ip(), limits.max_conns_per_ip);
            drop(stream);
            continue;
        };
        let (app, builder, shutdown, tls) = (app.clone(), builder.clone(), shutdown.clone(), tls.clone());
        connections.spawn(async move {
            let clock = Arc::new(Clock::new());
            let stream = Metered {
                stream,
                clock: clock.clone(),
            };
            match tls {
                None => connection(stream, clock, remote, app, &builder, limits, shutdown).await,
                Some(acceptor) => match tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => connection(stream, clock, remote, app, &builder, limits, shutdown).await,
                    Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%remote, "TLS handshake not complete within the header timeout"),
                },
            }
            drop(slot);
        });
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Serves one connection until it ends, its client is too slow or idle, or shutdown has let its
/// request in flight finish.
async fn connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    clock: Arc<Clock>,
    remote: SocketAddr,
    app: axum::Router,
    builder: &Builder<TokioExecutor>,
    limits: HttpLimits,
    shutdown: CancellationToken,
) {
    let io = TokioIo::new(stream);
    let requests = clock.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(remote));
        let busy = requests.request_started();
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await.unwrap_or_else(|never| match never {});
            Ok::<_, Infallible>(response.map(|body| Body::new(Tracked { body, _busy: busy })))
        }
    });
    // No HTTP upgrades: nothing served takes one, and an upgraded connection would leave these
    // limits (and its address's slot) behind.
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        let (deadline, why) = clock.deadline(&limits);
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::trace!(%remote, error = %e, "connection ended with an error");
                }
                return;
            }
            () = shutdown.cancelled(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            () = clock.head_began.notified() => {}
            () = tokio::time::sleep_until(deadline) => {
                // Activity since the deadline was computed moved it later: look again.
                if clock.deadline(&limits).0 <= Instant::now() {
                    tracing::debug!(%remote, "closing a connection: {why}");
                    return;
                }
            }
        }
    }
}

/// What a connection did last, from its bytes and its requests.
struct Clock {
    state: Mutex<ClockState>,
    /// Woken when a head begins: the only event that brings the deadline nearer.
    head_began: Notify,
}

struct ClockState {
    /// The last byte read or written, or the end of the last response.
    last_io: Instant,
    /// Requests whose response has not ended (hyper handles one at a time per connection).
    busy: usize,
    /// When the first byte of a request head arrived, until the head is complete.
    head_since: Option<Instant>,
}

impl Clock {
    fn new() -> Self {
        Self {
            state: Mutex::new(ClockState {
                last_io: Instant::now(),
                busy: 0,
                head_since: None,
            }),
            head_began: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) {
        let now = Instant::now();
        let mut state = self.lock();
        state.last_io = now;
        // Bytes while no request is being handled begin the next request's head.
        if state.busy == 0 && state.head_since.is_none() {
            state.head_since = Some(now);
            self.head_began.notify_one();
        }
    }

    fn wrote(&self) {
        self.lock().last_io = Instant::now();
    }

    /// The head is complete (hyper calls the service); busy until the response has ended.
    fn request_started(self: &Arc<Self>) -> Busy {
        let mut state = self.lock();
        state.busy += 1;
        state.head_since = None;
        Busy(self.clone())
    }

    /// When the connection is to be closed unless something happens first, and why.
    fn deadline(&self, limits: &HttpLimits) -> (Instant, &'static str) {
        let state = self.lock();
        let idle = (state.last_io + limits.idle_timeout, "idle timeout");
        match state.head_since {
            Some(since) if state.busy == 0 && since + limits.header_timeout < idle.0 => (
                since + limits.header_timeout,
                "request head not complete within the header timeout",
            ),
            _ => idle,
        }
    }
}

/// A request in flight, from its complete head to the end (or drop) of its response body.
struct Busy(Arc<Clock>);

impl Drop for Busy {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.busy -= 1;
        state.last_io = Instant::now();
    }
}

/// A response body that keeps its request counted as in flight until it ends.
struct Tracked {
    body: Body,
    _busy: Busy,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket, noting on the connection's clock every byte that moves.
struct Metered {
    stream: TcpStream,
    clock: Arc<Clock>,
}

impl AsyncRead for Metered {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.read();
        }
        polled
    }
}

impl AsyncWrite for Metered {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.wrote();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.wrote();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Open connections per client address.
struct PerIp {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    fn new(max: usize) -> Self {
        Self {
            max,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for one more connection from `ip`, or `None` when it holds the maximum.
    fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        // An IPv4 client on a dual-stack socket is the same client as over IPv4.
        let ip = ip.to_canonical();
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(ip).or_insert(0);
        if self.max != 0 && *count >= self.max {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            per_ip: self.clone(),
            ip,
        })
    }
}

struct IpSlot {
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.per_ip.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Logs a refused connection: at most one warning a minute (a flood must not flood the log too),
/// the rest at debug.
fn refused(ip: IpAddr, max: usize) {
    static LAST_WARNED: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST_WARNED.load(Ordering::Relaxed);
    if now >= last + 60
        && LAST_WARNED
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(%ip, max, "refused a connection: this client address holds the most connections allowed (ENCLII_HTTP_MAX_CONNS_PER_IP; further refusals this minute are logged at debug)");
    } else {
        tracing::debug!(%ip, max, "refused a connection: too many from this client address");
    }
}

/// An accept error: a connection that failed before it was accepted is no concern; anything else
/// (out of file descriptors) is logged and retried after a pause, as `axum::serve` does.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset) {
        return;
    }
    tracing::error!(error = %e, "cannot accept connections; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_with_or_without_a_unit() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5h").is_err());
    }

    #[test]
    fn one_address_holds_at_most_its_share_and_gets_slots_back() {
        let per_ip = Arc::new(PerIp::new(2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let first = per_ip.acquire(a).unwrap();
        let _second = per_ip.acquire(mapped).expect("the same client over IPv6-mapped");
        assert!(per_ip.acquire(a).is_none());
        assert!(
            per_ip.acquire("10.0.0.2".parse().unwrap()).is_some(),
            "others are not limited"
        );
        drop(first);
        assert!(per_ip.acquire(a).is_some(), "a closed connection frees its slot");
        assert!(Arc::new(PerIp::new(0)).acquire(a).is_some(), "0 is no limit");
    }
}
