//! Response bodies: empty, in memory, or streamed; each writes one access-log line when done.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_util::Stream;
use http::{Method, StatusCode};
use http_body::{Frame, SizeHint};

use crate::cache::CacheStatus;
use crate::metrics::{Kind, Metrics, ROUTES};
use crate::request_id::RequestId;
use crate::store::ByteStream;
use std::sync::Arc;

/// What the access log says about one request, and what its end counts.
pub struct RequestLog {
    /// The request's id.
    pub id: RequestId,
    /// The request method.
    pub method: Method,
    /// The request path, with its query.
    pub path: String,
    /// The route, an index into [`ROUTES`].
    pub route: usize,
    /// The namespace, repository and reference (tag or digest) named, where the route names them.
    pub namespace: String,
    /// See `namespace`.
    pub repository: String,
    /// See `namespace`.
    pub reference: String,
    /// Whether the namespace is an upstream's.
    pub upstream: bool,
    /// The client's address.
    pub client: String,
    /// The signed-in user.
    pub user: Option<String>,
    /// The client's User-Agent.
    pub user_agent: Option<String>,
    /// The response status.
    pub status: StatusCode,
    /// Cache outcome, where one applies.
    pub cache: Option<CacheStatus>,
    /// When the request arrived.
    pub started: Instant,
    /// Where the request's end is counted.
    pub metrics: Arc<Metrics>,
}

impl RequestLog {
    /// The record of a request just arrived.
    pub fn new(
        id: RequestId,
        method: Method,
        path: String,
        started: Instant,
        metrics: Arc<Metrics>,
    ) -> RequestLog {
        RequestLog {
            id,
            method,
            path,
            route: ROUTES.len() - 1,
            namespace: String::new(),
            repository: String::new(),
            reference: String::new(),
            upstream: false,
            client: String::new(),
            user: None,
            user_agent: None,
            status: StatusCode::OK,
            cache: None,
            started,
            metrics,
        }
    }

    /// The kind of content the route serves, for the cache's counts.
    pub fn kind(&self) -> Option<Kind> {
        match ROUTES[self.route] {
            "blob" => Some(Kind::Blob),
            "manifest" => Some(Kind::Manifest),
            _ => None,
        }
    }

    fn write(&self, sent: u64, failed: bool) {
        let took = self.started.elapsed();
        let outcome = if failed { "aborted" } else { "done" };
        if every_field() {
            self.write_every_field(sent, outcome, took);
        } else {
            // text lines: the path names the route, namespace, repository and reference
            tracing::info!(
                target: "portcullis::access",
                request_id = %self.id,
                client = %self.client,
                user = self.user.as_deref().unwrap_or("-"),
                method = %self.method,
                path = %self.path,
                status = self.status.as_u16(),
                bytes = sent,
                cache = self.cache.map_or("-", CacheStatus::as_str),
                ms = took.as_secs_f64() * 1000.0,
                outcome,
                "request"
            );
        }
        let http = &self.metrics.http;
        http.ended(&self.method, self.route, self.status.as_u16(), took);
        if let Some(status) = self.cache {
            self.metrics.cache.served(status == CacheStatus::Miss, sent);
        }
    }

    fn write_every_field(&self, sent: u64, outcome: &str, took: std::time::Duration) {
        tracing::info!(
            target: "portcullis::access",
            request_id = %self.id,
            client = %self.client,
            user = self.user.as_deref().unwrap_or("-"),
            user_agent = self.user_agent.as_deref().unwrap_or("-"),
            method = %self.method,
            path = %self.path,
            route = ROUTES[self.route],
            namespace = or_dash(&self.namespace),
            repository = or_dash(&self.repository),
            reference = or_dash(&self.reference),
            status = self.status.as_u16(),
            bytes = sent,
            cache = self.cache.map_or("-", CacheStatus::as_str),
            upstream = if self.upstream { self.namespace.as_str() } else { "-" },
            ms = took.as_secs_f64() * 1000.0,
            outcome,
            "request"
        );
    }
}

static EVERY_FIELD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes every field on access lines (for JSON logs: route, namespace, repository, reference,
/// upstream and user agent besides what text lines have).
pub fn log_every_field(on: bool) {
    EVERY_FIELD.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether access lines carry every field.
pub fn every_field() -> bool {
    EVERY_FIELD.load(std::sync::atomic::Ordering::Relaxed)
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

enum Inner {
    Empty,
    Full(Option<Bytes>),
    Stream(ByteStream),
}

/// A response body.
pub struct Body {
    inner: Inner,
    sent: u64,
    failed: bool,
    log: Option<RequestLog>,
    /// Told of each chunk sent, and dropped with the body (the connection watches its
    /// responses' progress this way).
    watch: Option<Box<dyn Watch>>,
}

/// What watches a response's progress: told of every chunk handed to the connection.
pub trait Watch: Send {
    /// A chunk was handed to the connection.
    fn progressed(&self);
}

impl Body {
    fn new(inner: Inner) -> Body {
        Body {
            inner,
            sent: 0,
            failed: false,
            log: None,
            watch: None,
        }
    }

    /// No body (HEAD, 204).
    pub fn empty() -> Body {
        Body::new(Inner::Empty)
    }

    /// A body held in memory.
    pub fn full(b: Bytes) -> Body {
        Body::new(Inner::Full(Some(b)))
    }

    /// A streamed body; an error from the stream aborts the response.
    pub fn stream(s: ByteStream) -> Body {
        Body::new(Inner::Stream(s))
    }

    /// Tells `watch` of each chunk sent, and holds it until the body is dropped.
    pub fn watched(mut self, watch: impl Watch + 'static) -> Body {
        self.watch = Some(Box::new(watch));
        self
    }

    /// Attaches the access-log line written when the body ends or is dropped.
    pub fn logged(mut self, log: RequestLog) -> Body {
        self.log = Some(log);
        self
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        let next = match &mut this.inner {
            Inner::Empty => Poll::Ready(None),
            Inner::Full(b) => Poll::Ready(b.take().map(Ok)),
            Inner::Stream(s) => Pin::new(s).poll_next(cx),
        };
        match next {
            Poll::Ready(Some(Ok(b))) => {
                this.sent += b.len() as u64;
                if let Some(w) = &this.watch {
                    w.progressed();
                }
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Poll::Ready(Some(Err(e))) => {
                this.failed = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Empty => true,
            Inner::Full(b) => b.is_none(),
            Inner::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Empty => SizeHint::with_exact(0),
            Inner::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Full(None) => SizeHint::with_exact(0),
            Inner::Stream(_) => SizeHint::default(),
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            log.write(self.sent, self.failed);
        }
    }
}

/// How much of a request body left unread is read and discarded before the connection is left
/// to close (beyond it, a client still sending may see its connection reset).
pub const DRAIN_LIMIT: u64 = 16 << 20;

/// How long an unread request body is read and discarded at most.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// A request body that, when dropped before its end (the request was refused, or answered
/// without it), is read to its end in the background, up to [`DRAIN_LIMIT`] bytes and
/// [`DRAIN_TIME`]: the client, still sending, then reads the answer instead of finding its
/// connection reset, and the connection stays usable.
pub struct Drained<B: http_body::Body + Send + Unpin + 'static> {
    inner: Option<B>,
    ended: bool,
    /// How long the body may pause before the draining gives up.
    idle: std::time::Duration,
}

impl<B: http_body::Body + Send + Unpin + 'static> Drained<B> {
    /// Wraps a request body; draining gives up when it pauses for `idle`.
    pub fn new(inner: B, idle: std::time::Duration) -> Drained<B> {
        Drained {
            inner: Some(inner),
            ended: false,
            idle,
        }
    }
}

impl<B: http_body::Body + Send + Unpin + 'static> http_body::Body for Drained<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_default()
    }
}

impl<B: http_body::Body + Send + Unpin + 'static> Drop for Drained<B> {
    fn drop(&mut self) {
        let Some(mut body) = self.inner.take() else {
            return;
        };
        if self.ended || body.is_end_stream() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let idle = self.idle;
        tokio::spawn(async move {
            use http_body_util::BodyExt;
            let _ = tokio::time::timeout(DRAIN_TIME, async {
                let mut read = 0u64;
                while let Ok(Some(Ok(frame))) = tokio::time::timeout(idle, body.frame()).await {
                    if let Some(data) = frame.data_ref() {
                        read += bytes::Buf::remaining(data) as u64;
                    }
                    if read > DRAIN_LIMIT {
                        break;
                    }
                }
            })
            .await;
        });
    }
}
