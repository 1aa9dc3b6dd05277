//! Trace context carried through the queue: a W3C `traceparent` ([`TraceContext`]), the trace the
//! current task works for (a tokio task-local: [`scope`], [`current`]), and the reserved payload
//! key [`PAYLOAD_KEY`] (`"_trace"`) that carries it from the code that enqueues a job to the worker
//! that runs it.
//!
//! A job created inside a traced scope ([`NewJob::new`](crate::NewJob::new), and so
//! [`NewJob::typed`](crate::NewJob::typed) and every pipeline step) gets `"_trace":
//! "<traceparent>"` added to its payload (when the payload is a JSON object without one). Workers
//! read it back ([`from_payload`]) to parent the job's span, and remove it ([`without_trace`])
//! before decoding the payload into its kind's type, so `deny_unknown_fields` payloads keep
//! working. No backend stores it apart: it is part of the payload.
//!
//! This module knows nothing of OpenTelemetry. A process that exports spans installs a
//! [`SpanLinker`] ([`set_span_linker`]) so that the ids [`attach`] hands out are the exported
//! spans' own.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::OnceLock;

use rand::Rng;

/// The payload key that carries a job's trace (a `traceparent` string). Reserved: no job kind may
/// have a field of this name.
pub const PAYLOAD_KEY: &str = "_trace";

/// The `sampled` trace flag.
pub const SAMPLED: u8 = 0x01;

/// A W3C trace context (`traceparent`, version `00`): the trace, the span that is the parent of
/// whatever is done next, and the trace flags.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

/// Why a `traceparent` was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid traceparent: {0}")]
pub struct InvalidTraceparent(&'static str);

impl TraceContext {
    /// A new trace (random, non-zero ids), sampled.
    pub fn new_root() -> Self {
        Self {
            trace_id: nonzero(),
            span_id: nonzero(),
            flags: SAMPLED,
        }
    }

    /// A new span of the same trace, with the same flags.
    pub fn child(&self) -> Self {
        Self {
            span_id: nonzero(),
            ..*self
        }
    }

    pub fn is_sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The trace id as 32 lowercase hex digits (what logs and exporters show).
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The span id as 16 lowercase hex digits.
    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }

    /// Parses a `traceparent` header value. Version `00` must be exactly
    /// `00-<32 hex>-<16 hex>-<2 hex>`; later versions may append `-…` fields, which are ignored;
    /// version `ff`, upper-case hex and all-zero ids are invalid (W3C Trace Context, §3.2).
    pub fn parse(value: &str) -> Result<Self, InvalidTraceparent> {
        let value = value.trim_matches([' ', '\t']);
        let bytes = value.as_bytes();
        if bytes.len() < 55 {
            return Err(InvalidTraceparent("shorter than 55 characters"));
        }
        let version = decode::<1>(&bytes[..2]).ok_or(InvalidTraceparent("the version is not two hex digits"))?[0];
        if version == 0xff {
            return Err(InvalidTraceparent("version ff is forbidden"));
        }
        if version == 0 && bytes.len() != 55 {
            return Err(InvalidTraceparent("version 00 is exactly 55 characters"));
        }
        if bytes.len() > 55 && bytes[55] != b'-' {
            return Err(InvalidTraceparent("fields after the flags must follow a `-`"));
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return Err(InvalidTraceparent("fields are not separated by `-`"));
        }
        let trace_id = decode::<16>(&bytes[3..35]).ok_or(InvalidTraceparent("the trace id is not 32 hex digits"))?;
        let span_id = decode::<8>(&bytes[36..52]).ok_or(InvalidTraceparent("the parent id is not 16 hex digits"))?;
        let flags = decode::<1>(&bytes[53..55]).ok_or(InvalidTraceparent("the flags are not two hex digits"))?[0];
        if trace_id == [0; 16] {
            return Err(InvalidTraceparent("the trace id is all zeros"));
        }
        if span_id == [0; 8] {
            return Err(InvalidTraceparent("the parent id is all zeros"));
        }
        Ok(Self {
            trace_id,
            span_id,
            flags,
        })
    }
}

/// `00-<trace id>-<span id>-<flags>`.
impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            Hex(&self.trace_id),
            Hex(&self.span_id),
            self.flags
        )
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceContext({self})")
    }
}

impl FromStr for TraceContext {
    type Err = InvalidTraceparent;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for TraceContext {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for TraceContext {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

fn nonzero<const N: usize>() -> [u8; N] {
    let mut rng = rand::rng();
    loop {
        let bytes: [u8; N] = rng.random();
        if bytes != [0; N] {
            return bytes;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    Hex(bytes).to_string()
}

/// Bytes as lowercase hex digits, formatted without an intermediate `String`.
struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 64];
        let mut len = 0;
        for chunk in self.0.chunks(32) {
            for (i, b) in chunk.iter().enumerate() {
                buf[2 * i] = DIGITS[(b >> 4) as usize];
                buf[2 * i + 1] = DIGITS[(b & 0xf) as usize];
                len = 2 * (i + 1);
            }
            // Only ASCII hex digits were written.
            f.write_str(std::str::from_utf8(&buf[..len]).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

/// Lowercase hex only, exactly `2 * N` digits.
fn decode<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = digit(s[2 * i])? << 4 | digit(s[2 * i + 1])?;
    }
    Some(out)
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// Runs `future` with `ctx` as the current trace: jobs it creates carry `ctx` as their parent.
/// Task-local: a task spawned inside does not inherit it (wrap the spawned future too).
pub fn scope<F: Future>(ctx: TraceContext, future: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(ctx, future)
}

/// Runs `f` with `ctx` as the current trace (synchronous code, tests).
pub fn sync_scope<R>(ctx: TraceContext, f: impl FnOnce() -> R) -> R {
    CURRENT.sync_scope(ctx, f)
}

/// The trace the current task works for, if it runs inside [`scope`].
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(|ctx| *ctx).ok()
}

/// Adds the current trace to `payload` under [`PAYLOAD_KEY`], unless there is no current trace,
/// the payload is not a JSON object, or it already carries one.
pub fn stamp(payload: &mut serde_json::Value) {
    if let (Some(ctx), Some(object)) = (current(), payload.as_object_mut()) {
        object
            .entry(PAYLOAD_KEY)
            .or_insert_with(|| serde_json::Value::String(ctx.to_string()));
    }
}

/// The trace a job's payload carries; `None` when it has none or it is not a valid `traceparent`.
pub fn from_payload(payload: &serde_json::Value) -> Option<TraceContext> {
    payload.get(PAYLOAD_KEY)?.as_str()?.parse().ok()
}

/// The payload without [`PAYLOAD_KEY`], for decoding into the kind's type (borrowed when it has
/// none).
pub fn without_trace(payload: &serde_json::Value) -> Cow<'_, serde_json::Value> {
    match payload.as_object() {
        Some(object) if object.contains_key(PAYLOAD_KEY) => {
            let mut object = object.clone();
            object.remove(PAYLOAD_KEY);
            Cow::Owned(serde_json::Value::Object(object))
        }
        _ => Cow::Borrowed(payload),
    }
}

/// Connects a `tracing` span to a trace in an exporter (OpenTelemetry): makes `parent` the span's
/// parent (or starts a new trace when `None`) and returns the span's own context — the trace id
/// and the span id the exporter gave it. `None` when the span is not exported (disabled, or no
/// exporter layer), and [`attach`] then makes up the ids.
pub type SpanLinker = fn(&tracing::Span, Option<TraceContext>) -> Option<TraceContext>;

static LINKER: OnceLock<SpanLinker> = OnceLock::new();

/// Installs the process's [`SpanLinker`] (once; later calls are ignored and return `false`).
pub fn set_span_linker(linker: SpanLinker) -> bool {
    LINKER.set(linker).is_ok()
}

/// Makes `span` the next span of `parent`'s trace (a new trace when `None`): returns the context
/// to run its work under (the span's own id, so that what it enqueues are its children) and
/// records its trace id in the span's `trace_id` field (declare it, e.g. as
/// `trace_id = tracing::field::Empty`).
pub fn attach(span: &tracing::Span, parent: Option<TraceContext>) -> TraceContext {
    let linked = LINKER.get().and_then(|link| link(span, parent));
    let ctx = linked.unwrap_or_else(|| parent.map_or_else(TraceContext::new_root, |p| p.child()));
    // Formatted only by a subscriber that takes it: no allocation per job when spans are off.
    span.record("trace_id", tracing::field::display(Hex(&ctx.trace_id)));
    ctx
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_a_traceparent() {
        let ctx: TraceContext = VALID.parse().unwrap();
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.span_id_hex(), "00f067aa0ba902b7");
        assert_eq!(ctx.flags, 1);
        assert!(ctx.is_sampled());
        assert_eq!(ctx.to_string(), VALID);
        let unsampled = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.is_sampled());
        // Surrounding blanks are allowed in a header value.
        assert_eq!(TraceContext::parse(&format!(" {VALID}\t")).unwrap(), ctx);
    }

    #[test]
    fn a_later_version_may_carry_more_fields() {
        let ctx = TraceContext::parse(&format!("01{}-what-comes-next", &VALID[2..])).unwrap();
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        // Formatted as the version this code speaks.
        assert_eq!(ctx.to_string(), VALID);
        assert!(TraceContext::parse(&format!("01{}", &VALID[2..])).is_ok());
        assert!(TraceContext::parse(&format!("01{}x", &VALID[2..])).is_err());
    }

    #[test]
    fn invalid_traceparents_are_refused() {
        let invalid = [
            ("", "shorter"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", "shorter"),
            ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "version ff"),
            (
                "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "version is not",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                "exactly 55",
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "trace id is all zeros",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                "parent id is all zeros",
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "trace id is not",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
                "not separated",
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
                "not separated",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
                "parent id is not",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
                "flags are not",
            ),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1", "shorter"),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902\u{e9}-01",
                "parent id is not",
            ),
        ];
        for (value, why) in invalid {
            let err = TraceContext::parse(value).expect_err(value).to_string();
            assert!(err.contains(why), "{value:?}: {err} (expected {why:?})");
        }
    }

    #[test]
    fn roots_and_children() {
        let root = TraceContext::new_root();
        assert!(root.is_sampled());
        assert_ne!(root.trace_id, [0; 16]);
        assert_ne!(root.span_id, [0; 8]);
        assert_ne!(TraceContext::new_root().trace_id, root.trace_id);
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.span_id, root.span_id);
        assert_eq!(TraceContext::parse(&root.to_string()).unwrap(), root);
        let json = serde_json::to_value(root).unwrap();
        assert_eq!(json, json!(root.to_string()));
        assert_eq!(serde_json::from_value::<TraceContext>(json).unwrap(), root);
    }

    #[tokio::test]
    async fn the_scope_stamps_payloads() {
        let mut outside = json!({"a": 1});
        stamp(&mut outside);
        assert_eq!(outside, json!({"a": 1}));
        assert_eq!(current(), None);

        let ctx = TraceContext::new_root();
        let (stamped, scalar, kept) = scope(ctx, async {
            assert_eq!(current(), Some(ctx));
            let mut payload = json!({"a": 1});
            stamp(&mut payload);
            let mut scalar = json!(1);
            stamp(&mut scalar);
            let mut kept = json!({"_trace": "mine"});
            stamp(&mut kept);
            (payload, scalar, kept)
        })
        .await;
        assert_eq!(stamped, json!({"a": 1, "_trace": ctx.to_string()}));
        assert_eq!(scalar, json!(1));
        assert_eq!(kept, json!({"_trace": "mine"}));
        assert_eq!(from_payload(&stamped), Some(ctx));
        assert_eq!(from_payload(&kept), None);
        assert_eq!(without_trace(&stamped).as_ref(), &json!({"a": 1}));
        assert!(matches!(without_trace(&outside), Cow::Borrowed(_)));
    }

    #[test]
    fn attach_without_a_linker_makes_up_ids() {
        let span = tracing::info_span!("test", trace_id = tracing::field::Empty);
        let parent = TraceContext::new_root();
        let child = attach(&span, Some(parent));
        assert_eq!(child.trace_id, parent.trace_id);
        assert_ne!(child.span_id, parent.span_id);
        let root = attach(&span, None);
        assert_ne!(root.trace_id, parent.trace_id);
    }
}
