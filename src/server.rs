//! Serving the API on a listener, with graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::attachments::Attachments;
use crate::auth::Auth;
use crate::cache::Cache;
use crate::config::Config;
use crate::http::Api;
use crate::metrics::Metrics;
use crate::policy::Policies;
use crate::push::uploads::Uploads;
use crate::store::fs::FsStore;
use crate::store::Store;
use crate::verify::Verifier;

/// The proxy's services over one store: the cache and the attachment resolver.
pub struct Services {
    /// The pull-through cache.
    pub cache: Arc<Cache>,
    /// The attachment resolver.
    pub attachments: Arc<Attachments>,
    /// Every metric, counted by the services.
    pub metrics: Arc<Metrics>,
}

/// Opens the store and builds the services; `shared` leaves a running proxy's spool alone.
pub async fn services(config: &Config, shared: bool) -> anyhow::Result<Services> {
    let open = if shared {
        FsStore::open_shared
    } else {
        FsStore::open
    };
    let store: Arc<dyn Store> = Arc::new(open(&config.storage.path).map_err(|e| {
        anyhow::anyhow!(
            "cannot open storage at {}: {e}",
            config.storage.path.display()
        )
    })?);
    let metrics = Metrics::new();
    let cache = Cache::new(config, store, Arc::clone(&metrics)).await?;
    let attachments = Attachments::new(config, Arc::clone(&cache));
    Ok(Services {
        cache,
        attachments,
        metrics,
    })
}

/// Builds the API from a configuration: opens the store and indexes it.
pub async fn build(config: &Config) -> anyhow::Result<Arc<Api>> {
    let Services {
        cache,
        attachments,
        metrics,
    } = services(config, false).await?;
    let uploads = Uploads::open(
        config.storage.path.join("uploads"),
        Arc::clone(&cache),
        config.storage.upload_ttl.0,
    )?;
    let auth = Arc::new(Auth::new(&config.auth, Arc::clone(&metrics)));
    let verifier = Verifier::new(
        Arc::clone(&cache),
        Arc::clone(&attachments),
        config.policy_host.attachment_wait.0,
    );
    let policies = {
        let (config, cache, attachments) =
            (config.clone(), Arc::clone(&cache), Arc::clone(&attachments));
        tokio::task::spawn_blocking(move || Policies::new(&config, cache, attachments, verifier))
            .await??
    };
    Ok(Arc::new(
        Api::new(
            cache,
            attachments,
            uploads,
            auth,
            policies,
            config.storage.allow_delete,
        )
        .with_body_timeout(config.server.body_timeout.0)
        .with_default_upstream(config.server.default_upstream.clone()),
    ))
}

/// Serves `GET /metrics` on a listener of its own until the process ends: the Prometheus text
/// format, or OpenMetrics when the scraper's `Accept` asks for it.
pub async fn serve_metrics(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let metrics = Arc::clone(&metrics);
                async move { Ok::<_, std::convert::Infallible>(metrics_response(&req, &metrics)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn metrics_response<B>(
    req: &hyper::Request<B>,
    metrics: &Metrics,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    use http::{header, Method, StatusCode};
    let reply = |status: StatusCode, kind: &'static str, body: String| {
        let mut r = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut()
            .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
        r.headers_mut().insert(
            header::X_CONTENT_TYPE_OPTIONS,
            header::HeaderValue::from_static("nosniff"),
        );
        r
    };
    if req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "only /metrics is here\n".into(),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET /metrics\n".into(),
        );
    }
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    if crate::metrics::wants_openmetrics(accept) {
        reply(
            StatusCode::OK,
            crate::metrics::OPENMETRICS,
            metrics.encode(true),
        )
    } else {
        reply(
            StatusCode::OK,
            crate::metrics::PROMETHEUS_TEXT,
            metrics.encode(false),
        )
    }
}

/// The client's address, attached to each request.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::SocketAddr);

/// How often an HTTP/2 connection is pinged, and how long the answer may take.
const H2_KEEP_ALIVE: Duration = Duration::from_secs(20);

/// How connections are served.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// How long in-flight requests may run on after shutdown begins.
    pub grace: Duration,
    /// How long a client may take to send its first byte (or finish the TLS handshake), its
    /// request headers, and over HTTP/2 its first request.
    pub header: Duration,
    /// How long a connection with no request in flight stays open.
    pub idle: Duration,
    /// How long a response may make no progress (a client not reading) before its connection
    /// is dropped.
    pub stall: Duration,
    /// The most client connections open at once; beyond it new ones wait to be accepted.
    pub max_connections: usize,
}

impl Limits {
    /// The limits of `[server]`, with `max_connections` sized to the process's file
    /// descriptor limit when not set.
    pub fn of(server: &crate::config::ServerConfig) -> Limits {
        Limits {
            grace: server.shutdown_grace.0,
            header: server.header_timeout.0,
            idle: server.idle_timeout.0,
            stall: server.body_timeout.0,
            max_connections: server
                .max_connections
                .unwrap_or_else(|| default_max_connections(fd_limit())),
        }
    }
}

/// Two descriptors per client connection (its socket, and a blob file or an upstream socket
/// it may hold), after a reserve for the process itself.
fn default_max_connections(fd_limit: u64) -> usize {
    (fd_limit.saturating_sub(64) / 2).clamp(16, 65_536) as usize
}

/// The soft limit on open file descriptors, raised to the hard limit first (as Go's runtime
/// does): a proxy holds a descriptor per connection.
pub fn fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a struct of the right layout
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}

/// What a connection is doing, for closing it once idle and dropping it once stalled: counters
/// and times (milliseconds since the connection began), atomics only, no wake-ups on the
/// request path.
struct Activity {
    began: Instant,
    in_flight: AtomicUsize,
    requests: AtomicUsize,
    /// When the last request ended.
    last: AtomicU64,
    /// Responses handed to the connection and not yet done with.
    responding: AtomicUsize,
    /// When a response last sent a chunk (or started).
    progress: AtomicU64,
}

/// Why a connection is ended by the server.
enum Ending {
    /// No request in flight for its limit: closed gracefully.
    Idle,
    /// A response made no progress for the stall limit (the client does not read): dropped.
    Stalled,
}

/// One request of a connection, in flight until its response body is done with.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.last.store(self.0.now(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response being sent: its progress is the connection's.
struct Responding(InFlight);

impl Responding {
    fn new(request: InFlight) -> Responding {
        let activity = &request.0;
        activity.progress.store(activity.now(), Ordering::Relaxed);
        activity.responding.fetch_add(1, Ordering::SeqCst);
        Responding(request)
    }
}

impl crate::http::body::Watch for Responding {
    fn progressed(&self) {
        let activity = &(self.0).0;
        activity.progress.store(activity.now(), Ordering::Relaxed);
    }
}

impl Drop for Responding {
    fn drop(&mut self) {
        (self.0).0.responding.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            began: Instant::now(),
            in_flight: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            last: AtomicU64::new(0),
            responding: AtomicUsize::new(0),
            progress: AtomicU64::new(0),
        })
    }

    fn now(&self) -> u64 {
        self.began.elapsed().as_millis() as u64
    }

    fn since(&self, at: &AtomicU64) -> Duration {
        Duration::from_millis(self.now().saturating_sub(at.load(Ordering::Relaxed)))
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(self))
    }

    /// Resolves once the connection has had no request in flight for its limit (the header
    /// timeout until a first request arrives, the idle timeout after), or once a response it
    /// sends has made no progress for the stall limit. It looks again at least every half of
    /// the shortest limit, so what began or ended while it slept is seen soon enough.
    async fn ending(&self, limits: Limits) -> Ending {
        let tick = limits.header.min(limits.idle).min(limits.stall) / 2;
        loop {
            let wait = if self.in_flight.load(Ordering::SeqCst) > 0 {
                let still = self.since(&self.progress);
                if self.responding.load(Ordering::SeqCst) == 0 {
                    limits.stall // the handler is at work
                } else if still >= limits.stall {
                    return Ending::Stalled;
                } else {
                    limits.stall - still
                }
            } else {
                let limit = if self.requests.load(Ordering::SeqCst) == 0 {
                    limits.header
                } else {
                    limits.idle
                };
                let quiet = self.since(&self.last);
                if quiet >= limit {
                    return Ending::Idle;
                }
                limit - quiet
            };
            tokio::time::sleep(wait.min(tick)).await;
        }
    }
}

/// Serves until `shutdown` resolves, then drains in-flight requests for up to `limits.grace`.
pub async fn run(
    listener: TcpListener,
    api: Arc<Api>,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE)
        .keep_alive_timeout(H2_KEEP_ALIVE);
    let builder = Arc::new(builder);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut errors = AcceptErrors::default();
    tokio::pin!(shutdown);
    loop {
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    "max_connections reached; new connections wait until one closes"
                );
                tokio::select! {
                    slot = Arc::clone(&slots).acquire_owned() => slot.expect("never closed"),
                    () = &mut shutdown => break,
                }
            }
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        errors.note(&e);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let conn = Connection { api: Arc::clone(&api), builder: Arc::clone(&builder), limits, stopping: stopping.clone(), peer };
                tokio::spawn(conn.serve(stream, tls.clone(), slot));
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down; draining in-flight requests");
    let started = Instant::now();
    let _ = stop.send(true);
    let everyone = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.grace, slots.acquire_many(everyone))
        .await
        .is_err()
    {
        tracing::warn!("grace period over; closing remaining connections");
    }
    // what was served is cached before the process ends (within what is left of the grace)
    if tokio::time::timeout(limits.grace.saturating_sub(started.elapsed()), api.settle())
        .await
        .is_err()
    {
        tracing::warn!("grace period over; blob downloads still under way are dropped");
    }
}

/// Accept errors (out of descriptors, say) are logged at most once a second; accepting goes on.
#[derive(Default)]
struct AcceptErrors {
    logged: Option<Instant>,
    since: usize,
}

impl AcceptErrors {
    fn note(&mut self, e: &std::io::Error) {
        self.since += 1;
        if self
            .logged
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            tracing::warn!(error = %e, failures = self.since, "accept failed; going on");
            self.logged = Some(Instant::now());
            self.since = 0;
        }
    }
}

/// One client connection.
struct Connection {
    api: Arc<Api>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Limits,
    stopping: tokio::sync::watch::Receiver<bool>,
    peer: std::net::SocketAddr,
}

impl Connection {
    /// Serves the connection; it holds `slot` until it closes. Whatever the protocol, a client
    /// must send its first byte (or finish the TLS handshake) within the header timeout.
    async fn serve(
        self,
        stream: TcpStream,
        tls: Option<TlsAcceptor>,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) {
        let peer = self.peer;
        let header = self.limits.header;
        match tls {
            None => match tokio::time::timeout(header, stream.peek(&mut [0u8; 1])).await {
                Ok(Ok(n)) if n > 0 => self.http(stream).await,
                Ok(_) => {}
                Err(_) => tracing::debug!(%peer, "client sent nothing in time; closed"),
            },
            Some(acceptor) => match tokio::time::timeout(header, acceptor.accept(stream)).await {
                Ok(Ok(s)) => self.http(s).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            },
        }
        drop(slot);
    }

    /// Serves HTTP/1 or HTTP/2 until the client closes, the connection is idle too long, or
    /// the server shuts down (gracefully: requests in flight finish).
    async fn http<IO>(mut self, io: IO)
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (peer, activity, api) = (self.peer, Activity::new(), Arc::clone(&self.api));
        let tracked = Arc::clone(&activity);
        let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            let (api, in_flight) = (Arc::clone(&api), tracked.begin());
            req.extensions_mut().insert(ClientAddr(peer));
            async move {
                Ok::<_, std::convert::Infallible>(
                    api.handle(req)
                        .await
                        .map(|b| b.watched(Responding::new(in_flight))),
                )
            }
        });
        let conn = self
            .builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        tokio::pin!(conn);
        let mut closing = *self.stopping.borrow();
        if closing {
            conn.as_mut().graceful_shutdown();
        }
        // an idle connection is asked to close, and dropped if the client does not let it
        // (an HTTP/2 client that never answers the closing ping)
        let mut idle_close: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(e) = done {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = self.stopping.changed(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                ending = activity.ending(self.limits), if !closing => match ending {
                    Ending::Idle => {
                        tracing::debug!(%peer, "idle connection closed");
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                        idle_close = Some(Box::pin(tokio::time::sleep(self.limits.header)));
                    }
                    Ending::Stalled => {
                        tracing::info!(%peer, "a response made no progress (the client does not read); connection dropped");
                        return;
                    }
                },
                () = async { idle_close.as_mut().expect("set").await }, if idle_close.is_some() => {
                    tracing::debug!(%peer, "idle connection dropped");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_default_to_what_the_descriptor_limit_allows() {
        assert_eq!(default_max_connections(1024), 480);
        assert_eq!(default_max_connections(40), 16);
        assert_eq!(default_max_connections(u64::MAX), 65_536);
    }
}
