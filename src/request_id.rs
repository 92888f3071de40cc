//! Request ids: taken from a well-formed incoming `X-Request-Id` or made up, carried by the
//! task answering the request (and the work it starts), so that log lines, audit records and
//! upstream requests name it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// One request's id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(Arc<str>);

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
            Some(v) if well_formed(v) => {
                RequestId(Arc::from(std::str::from_utf8(v).unwrap_or_default()))
            }
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
        RequestId(Arc::from(format!(
            "{:016x}",
            base ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        )))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
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
        f.write_str(&self.0)
    }
}

/// `work` carrying the current request's id and log span, for a task spawned on its behalf.
pub fn carried<F: std::future::Future>(work: F) -> impl std::future::Future<Output = F::Output> {
    use tracing::Instrument;
    let id = current();
    async move {
        match id {
            Some(id) => id.scope(work).await,
            None => work.await,
        }
    }
    .instrument(tracing::Span::current())
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
