//! Request ids: taken from a well-formed incoming `X-Request-Id` or made up, carried by the
//! task answering the request (and the work it starts), so that log lines, audit records and
//! upstream requests name it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// One request's id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(Id);

/// A made-up id is kept as its number (no allocation per request), a client's as its text.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Id {
    Made([u8; 16]),
    Given(Arc<str>),
}

/// The longest incoming id kept; a longer one is replaced.
const MAX_LEN: usize = 128;

tokio::task_local! {
    static CURRENT: RequestId;
}

impl RequestId {
    /// The client's id when it is 1 to 128 characters of letters, digits and `-_.:`,
    /// else a new one.
    pub fn from_header(value: Option<&[u8]>) -> RequestId {
        match value {
            Some(v) if well_formed(v) => RequestId(Id::Given(Arc::from(
                std::str::from_utf8(v).unwrap_or_default(),
            ))),
            _ => RequestId::new(),
        }
    }

    /// A new id: 16 hex digits, unique in this process and unlikely to repeat in another.
    pub fn new() -> RequestId {
        static BASE: OnceLock<u64> = OnceLock::new();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let base = *BASE.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // an odd multiplier spreads consecutive numbers over the whole range
        let n = base ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut hex = [0u8; 16];
        for (i, b) in hex.iter_mut().enumerate() {
            *b = b"0123456789abcdef"[((n >> (60 - 4 * i)) & 0xf) as usize];
        }
        RequestId(Id::Made(hex))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            // only hex digits were written
            Id::Made(hex) => std::str::from_utf8(hex).unwrap_or_default(),
            Id::Given(text) => text,
        }
    }

    /// Runs `work` with this id as the current one.
    pub async fn scope<F: std::future::Future>(self, work: F) -> F::Output {
        CURRENT.scope(self, work).await
    }
}

impl Default for RequestId {
    fn default() -> Self {
        RequestId::new()
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `work` carrying the current request's id, for a task spawned on its behalf.
pub fn carried<F: std::future::Future>(work: F) -> impl std::future::Future<Output = F::Output> {
    let id = current();
    async move {
        match id {
            Some(id) => id.scope(work).await,
            None => work.await,
        }
    }
}

/// A log line format that names the request being answered: `request_id=<id> ` before a text
/// line, a `"request_id"` member first in a JSON one. The id comes from the task, so no span is
/// made per request.
pub struct WithRequestId<F> {
    inner: F,
    json: bool,
}

impl<F> WithRequestId<F> {
    /// Wraps a line format (`json`: it writes one JSON object per line).
    pub fn new(inner: F, json: bool) -> Self {
        WithRequestId { inner, json }
    }
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithRequestId<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Some(id) = current() else {
            return self.inner.format_event(ctx, writer, event);
        };
        if !self.json {
            write!(writer, "request_id={id} ")?;
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        let inner = tracing_subscriber::fmt::format::Writer::new(&mut line);
        self.inner.format_event(ctx, inner, event)?;
        // the id is made of letters, digits and -_.: only: nothing to escape
        match line.strip_prefix('{') {
            Some(rest) => write!(writer, "{{\"request_id\":\"{id}\",{rest}"),
            None => writer.write_str(&line),
        }
    }
}

/// The id of the request the current task works for, if any.
pub fn current() -> Option<RequestId> {
    CURRENT.try_with(Clone::clone).ok()
}

fn well_formed(v: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_formed_ids_are_kept_and_others_replaced() {
        let kept = RequestId::from_header(Some(b"build-42.step:7_a"));
        assert_eq!(kept.as_str(), "build-42.step:7_a");
        for bad in [
            &b""[..],
            b"has space",
            b"new\nline",
            b"quote\"d",
            b"\xff\xfe",
            &[b'a'; 129],
        ] {
            let id = RequestId::from_header(Some(bad));
            assert_eq!(id.as_str().len(), 16, "{bad:?} replaced");
            assert!(id.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        }
        assert_ne!(RequestId::new(), RequestId::new());
    }

    #[tokio::test]
    async fn the_current_id_is_the_scope_s() {
        assert_eq!(current(), None);
        let id = RequestId::from_header(Some(b"abc"));
        let seen = id.clone().scope(async { current() }).await;
        assert_eq!(seen, Some(id));
    }
}
