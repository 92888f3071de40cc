//! Response bodies: empty, in memory, or streamed; each writes one access-log line when done.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use futures_util::Stream;
use http::{Method, StatusCode};
use http_body::{Frame, SizeHint};

use crate::store::ByteStream;

/// What the access log says about one request.
pub struct RequestLog {
    /// The request method.
    pub method: Method,
    /// The request path.
    pub path: String,
    /// The response status.
    pub status: StatusCode,
    /// Cache outcome, where one applies.
    pub cache: Option<&'static str>,
    /// When the request arrived.
    pub started: Instant,
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
        Body { inner, sent: 0, failed: false, log: None, watch: None }
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

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
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
            let outcome = if self.failed { "aborted" } else { "done" };
            tracing::info!(
                target: "portcullis::access",
                method = %log.method,
                path = %log.path,
                status = log.status.as_u16(),
                bytes = self.sent,
                cache = log.cache.unwrap_or("-"),
                ms = log.started.elapsed().as_secs_f64() * 1000.0,
                outcome,
                "request"
            );
        }
    }
}
