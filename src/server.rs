//! Serving the API on a listener, with graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::attachments::Attachments;
use crate::auth::Auth;
use crate::cache::Cache;
use crate::config::Config;
use crate::http::Api;
use crate::policy::Policies;
use crate::push::uploads::Uploads;
use crate::verify::Verifier;
use crate::store::fs::FsStore;
use crate::store::Store;

/// The proxy's services over one store: the cache and the attachment resolver.
pub struct Services {
    /// The pull-through cache.
    pub cache: Arc<Cache>,
    /// The attachment resolver.
    pub attachments: Arc<Attachments>,
}

/// Opens the store and builds the services; `shared` leaves a running proxy's spool alone.
pub async fn services(config: &Config, shared: bool) -> anyhow::Result<Services> {
    let open = if shared { FsStore::open_shared } else { FsStore::open };
    let store: Arc<dyn Store> = Arc::new(
        open(&config.storage.path).map_err(|e| anyhow::anyhow!("cannot open storage at {}: {e}", config.storage.path.display()))?,
    );
    let cache = Cache::new(config, store).await?;
    let attachments = Attachments::new(config, Arc::clone(&cache));
    Ok(Services { cache, attachments })
}

/// Builds the API from a configuration: opens the store and indexes it.
pub async fn build(config: &Config) -> anyhow::Result<Arc<Api>> {
    let Services { cache, attachments } = services(config, false).await?;
    let uploads = Uploads::open(config.storage.path.join("uploads"), Arc::clone(&cache), config.storage.upload_ttl.0)?;
    let auth = Arc::new(Auth::new(&config.auth));
    let verifier = Verifier::new(Arc::clone(&cache), Arc::clone(&attachments), config.policy_host.attachment_wait.0);
    let policies = {
        let (config, cache, attachments) = (config.clone(), Arc::clone(&cache), Arc::clone(&attachments));
        tokio::task::spawn_blocking(move || Policies::new(&config, cache, attachments, verifier)).await??
    };
    Ok(Arc::new(Api::new(cache, attachments, uploads, auth, policies, config.storage.allow_delete).with_body_timeout(config.server.body_timeout.0)))
}

/// The client's address, attached to each request.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::SocketAddr);

/// How long a client may take for the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How connections are served: the drain period after shutdown, the header deadline.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// How long in-flight requests may run on after shutdown begins.
    pub grace: Duration,
    /// How long a client may take to send its request headers.
    pub header: Duration,
}

/// Serves until `shutdown` resolves, then drains in-flight requests for up to `timeouts.grace`.
pub async fn run(listener: TcpListener, api: Arc<Api>, tls: Option<TlsAcceptor>, timeouts: Timeouts, shutdown: impl Future<Output = ()>) {
    let grace = timeouts.grace;
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(timeouts.header);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let api = Arc::clone(&api);
                let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    let api = Arc::clone(&api);
                    req.extensions_mut().insert(ClientAddr(peer));
                    async move { Ok::<_, std::convert::Infallible>(api.handle(req).await) }
                });
                match &tls {
                    None => {
                        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
                        tokio::spawn(async move {
                            if let Err(e) = conn.await {
                                tracing::debug!(%peer, error = %e, "connection ended with an error");
                            }
                        });
                    }
                    Some(acceptor) => {
                        let (acceptor, builder, watcher) = (acceptor.clone(), Arc::clone(&builder), graceful.watcher());
                        tokio::spawn(async move {
                            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                            };
                            let conn = watcher.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
                            if let Err(e) = conn.await {
                                tracing::debug!(%peer, error = %e, "connection ended with an error");
                            }
                        });
                    }
                }
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down; draining in-flight requests");
    let started = std::time::Instant::now();
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!("grace period over; closing remaining connections");
    }
    // what was served is cached before the process ends (within what is left of the grace)
    if tokio::time::timeout(grace.saturating_sub(started.elapsed()), api.settle()).await.is_err() {
        tracing::warn!("grace period over; blob downloads still under way are dropped");
    }
}
