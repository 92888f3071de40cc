//! The registry HTTP API: parses requests into routes, calls the cache, maps results and
//! errors to responses. No business logic lives here.

pub mod body;
pub mod route;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};

use crate::attachments::Attachments;
use crate::auth::{Access, Auth};
use crate::cache::{ByteRange, Cache, CacheStatus, RangeSpec};
use crate::error::{Code, RegistryError, Result};
use crate::policy::Policies;
use crate::push::uploads::{self, Uploads};
use crate::registry::{Caller, Registry};
use crate::request_id::RequestId;
use crate::store::ByteStream;
use body::{Body, RequestLog};
use route::{Name, Route};

/// The header carrying a request's id, both ways (and to upstreams).
const X_REQUEST_ID: &str = "x-request-id";

/// The header every registry response carries.
const API_VERSION: (&str, &str) = ("docker-distribution-api-version", "registry/2.0");

/// The registry API over the pull-through cache.
pub struct Api {
    cache: Arc<Cache>,
    attachments: Arc<Attachments>,
    uploads: Arc<Uploads>,
    auth: Arc<Auth>,
    registry: Registry,
    body_timeout: std::time::Duration,
    default_upstream: Option<String>,
}

/// What a handler produced, before the access-log wrapper.
struct Reply {
    response: Response<Body>,
    cache: Option<CacheStatus>,
}

impl From<Response<Body>> for Reply {
    fn from(response: Response<Body>) -> Self {
        Reply {
            response,
            cache: None,
        }
    }
}

impl Api {
    /// Builds the API over a cache and the attachment resolver.
    pub fn new(
        cache: Arc<Cache>,
        attachments: Arc<Attachments>,
        uploads: Arc<Uploads>,
        auth: Arc<Auth>,
        policies: Arc<Policies>,
        allow_delete: bool,
    ) -> Api {
        let registry = Registry::new(
            Arc::clone(&cache),
            Arc::clone(&attachments),
            Arc::clone(&auth),
            policies,
            allow_delete,
        );
        Api {
            cache,
            attachments,
            uploads,
            auth,
            registry,
            body_timeout: std::time::Duration::from_secs(60),
            default_upstream: None,
        }
    }

    /// Sets how long a request body may pause between bytes before the request fails.
    pub fn with_body_timeout(mut self, timeout: std::time::Duration) -> Api {
        self.body_timeout = timeout;
        self
    }

    /// Whether the store takes writes (readiness).
    pub async fn store_ready(&self) -> std::io::Result<()> {
        self.cache.store().ready().await
    }

    /// Sends paths whose first segment names no namespace to this upstream.
    pub fn with_default_upstream(mut self, upstream: Option<String>) -> Api {
        self.default_upstream = upstream;
        self
    }

    /// The namespace a request names: containerd's `?ns=`, else the default upstream's when
    /// the path's first segment names no namespace (Docker's mirror convention), else none
    /// (the first segment is the namespace).
    fn namespace_of(&self, path: &str, query: Option<&str>) -> Option<String> {
        let rest = path
            .strip_prefix("/v2/")
            .or_else(|| path.strip_prefix("/extensions/v2/"));
        let first = rest.and_then(|r| r.split('/').next()).unwrap_or_default();
        if let Some(ns) = query_param(query, "ns") {
            // containerd's override_path form may write the namespace out under another of its
            // names (an alias): it is the namespace all the same
            let canonical = self.cache.canonical_namespace(first).map(str::to_string);
            if first != ns
                && canonical.is_some()
                && canonical.as_deref() == self.cache.canonical_namespace(&ns)
            {
                return Some(first.to_string());
            }
            return Some(ns);
        }
        let default = self.default_upstream.as_ref()?;
        rest?;
        self.cache
            .canonical_namespace(first)
            .is_none()
            .then(|| default.clone())
    }

    /// Waits until the work the cache started after its answers has ended (for shutdown).
    pub async fn settle(&self) {
        self.cache.settle().await
    }

    /// Every metric of the process.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        self.cache.metrics()
    }

    /// The policy engine (for reloads).
    pub fn policies(&self) -> &Arc<Policies> {
        self.registry.policies()
    }

    /// Authenticates the request and checks it may do what its route does.
    async fn authorize<B>(
        &self,
        req: &Request<B>,
        route: &Route,
        client: &str,
    ) -> Result<Option<String>> {
        let header = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let user = self.auth.authenticate(header, client).await?;
        let write = !matches!(*req.method(), Method::GET | Method::HEAD);
        let name = match route {
            Route::Health | Route::Ready => return Ok(user),
            Route::Base if user.is_none() && self.auth.has_users() => {
                return Err(RegistryError::of(
                    Code::Unauthorized,
                    "sign in to push; pulls may stay anonymous",
                ));
            }
            Route::Base => return Ok(user),
            Route::Manifest { name, .. } | Route::Blob { name, .. } | Route::Tags { name } => name,
            Route::Referrers { name, .. } | Route::Signatures { name, .. } => name,
            Route::Upload { name, .. } => {
                self.auth
                    .authorize(user.as_deref(), &self.scope(name), Access::Write)?;
                return Ok(user);
            }
        };
        let access = if write { Access::Write } else { Access::Read };
        self.auth
            .authorize(user.as_deref(), &self.scope(name), access)?;
        Ok(user)
    }

    fn scope(&self, name: &Name) -> String {
        self.registry.scope(&name.namespace, &name.repo)
    }

    /// Answers one request; never fails (errors become OCI error responses). The request's id
    /// (its client's `X-Request-Id` when well-formed) is echoed, logged and carried by the work
    /// done for it.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display + Send,
    {
        let id = RequestId::from_header(req.headers().get(X_REQUEST_ID).map(|v| v.as_bytes()));
        id.clone().scope(Box::pin(self.answer(req, id))).await
    }

    async fn answer<B>(&self, req: Request<B>, id: RequestId) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display + Send,
    {
        let started = Instant::now();
        let metrics = self.cache.metrics();
        metrics.http.started();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let mut caller = Caller {
            client: req
                .extensions()
                .get::<crate::server::ClientAddr>()
                .map(|c| c.0.to_string())
                .unwrap_or_default(),
            user: None,
            user_agent: req
                .headers()
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        };
        // a body left unread (a request refused before it was read) is read and discarded, so
        // that the client, still sending, gets the answer rather than a reset connection
        let idle = self.body_timeout;
        let req = req.map(|b| body::Drained::new(b, idle));
        let read = matches!(method, Method::GET | Method::HEAD);
        let ns = self.namespace_of(&path, req.uri().query());
        let route =
            route::parse(&path, ns.as_deref()).map_err(|e| impossible_manifest(e, read, &path));
        // the query too: containerd names the registry in it (?ns=)
        let logged_path = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let mut log = RequestLog::new(
            id.clone(),
            method.clone(),
            logged_path,
            started,
            Arc::clone(metrics),
        );
        if let Ok(route) = &route {
            log.route = route.index();
            // what only JSON lines write is not gathered for text ones
            let target = body::every_field().then(|| route.target()).flatten();
            if let Some((name, reference)) = target {
                log.upstream = self.cache.is_upstream(&name.namespace);
                log.namespace = name.namespace.clone();
                log.repository = name.repo.to_string();
                log.reference = reference;
            }
        }
        let reply = match route {
            Ok(route) => match self.authorize(&req, &route, &caller.client).await {
                Ok(user) => {
                    caller.user = user;
                    log.user.clone_from(&caller.user);
                    self.dispatch(req, route, &caller).await
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let Reply {
            mut response,
            cache,
        } = match reply {
            Ok(r) => r,
            Err(e) => error_response(&e, &method).into(),
        };
        let headers = response.headers_mut();
        // room for the three made at once (a map growing on every response costs)
        headers.reserve(3);
        headers.insert(
            HeaderName::from_static(API_VERSION.0),
            HeaderValue::from_static(API_VERSION.1),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        if let Ok(v) = HeaderValue::from_str(id.as_str()) {
            headers.insert(HeaderName::from_static(X_REQUEST_ID), v);
        }
        if let (Some(status), Some(kind)) = (cache, log.kind()) {
            metrics.cache.outcome(kind, status);
        }
        log.status = response.status();
        log.cache = cache;
        log.client = caller.client;
        log.user_agent = caller.user_agent;
        response.map(|b| b.logged(log))
    }

    async fn dispatch<B>(&self, req: Request<B>, route: Route, caller: &Caller) -> Result<Reply>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Display + Send,
    {
        let user = caller.user.clone();
        let method = req.method().clone();
        let method = &method;
        let read = method == Method::GET || method == Method::HEAD;
        match route {
            Route::Upload { name, id } => {
                Box::pin(self.upload(req, &name, id.as_deref(), user.as_deref())).await
            }
            Route::Manifest { name, reference } if method == Method::PUT => {
                Box::pin(self.put_manifest(req, &name, &reference, caller)).await
            }
            Route::Blob { name, digest } if method == Method::DELETE => {
                Box::pin(
                    self.registry
                        .delete_blob(&name.namespace, &name.repo, &digest),
                )
                .await?;
                Ok(empty(StatusCode::ACCEPTED).into())
            }
            Route::Manifest { name, reference } if method == Method::DELETE => {
                Box::pin(
                    self.registry
                        .delete_manifest(&name.namespace, &name.repo, &reference),
                )
                .await?;
                Ok(empty(StatusCode::ACCEPTED).into())
            }
            Route::Base if read => {
                let mut r = json(StatusCode::OK, Bytes::from_static(b"{}"), method);
                r.headers_mut().insert(
                    "x-registry-supports-signatures",
                    HeaderValue::from_static("1"),
                );
                Ok(r.into())
            }
            Route::Health if read => {
                Ok(json(StatusCode::OK, Bytes::from_static(b"{}"), method).into())
            }
            Route::Ready if read => Box::pin(self.ready(method)).await,
            Route::Manifest { name, reference } if read => {
                let accept = header_values(req.headers(), header::ACCEPT);
                let m = self
                    .registry
                    .pull_manifest(caller, &name.namespace, &name.repo, &reference, &accept)
                    .await?;
                let r = Response::builder()
                    .status(StatusCode::OK)
                    .header(header::CONTENT_TYPE, &m.media_type)
                    .header("docker-content-digest", m.digest.to_string())
                    .header(header::ETAG, format!("\"{}\"", m.digest))
                    .header(header::CONTENT_LENGTH, m.bytes.len());
                let body = if method == Method::HEAD {
                    Body::empty()
                } else {
                    Body::full(m.bytes)
                };
                Ok(Reply {
                    response: r.body(body).map_err(RegistryError::internal)?,
                    cache: Some(m.status),
                })
            }
            Route::Blob { name, digest } if read => Box::pin(self.blob(&req, &name, &digest)).await,
            Route::Tags { name } if read => Box::pin(self.tags(&req, &name)).await,
            Route::Referrers { name, digest } if read => {
                Box::pin(self.referrers(&req, &name, &digest)).await
            }
            Route::Signatures { name, digest } if method == Method::PUT => {
                let body = read_body(req.into_body(), 1 << 20, self.body_timeout).await?;
                Box::pin(uploads::put_signature(
                    &self.cache,
                    &name.namespace,
                    &name.repo,
                    &digest,
                    body,
                ))
                .await?;
                Ok(empty(StatusCode::CREATED).into())
            }
            Route::Signatures { name, digest } if read => {
                let list = Box::pin(self.cache.atomic_signatures(
                    &name.namespace,
                    &name.repo,
                    &digest,
                ))
                .await?;
                Ok(json(StatusCode::OK, list, method).into())
            }
            _ => Err(RegistryError::of(
                Code::Unsupported,
                format!("method {method} not allowed here"),
            )),
        }
    }

    async fn ready(&self, method: &Method) -> Result<Reply> {
        match self.cache.store().ready().await {
            Ok(()) => Ok(json(
                StatusCode::OK,
                Bytes::from_static(br#"{"ready":true}"#),
                method,
            )
            .into()),
            Err(e) => {
                tracing::warn!(error = %e, "store not writable");
                Ok(json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Bytes::from_static(br#"{"ready":false}"#),
                    method,
                )
                .into())
            }
        }
    }

    async fn blob<B>(
        &self,
        req: &Request<B>,
        name: &Name,
        digest: &crate::names::Digest,
    ) -> Result<Reply> {
        let base = Response::builder()
            .header("docker-content-digest", digest.to_string())
            .header(header::ACCEPT_RANGES, "bytes")
            .header(header::CONTENT_TYPE, "application/octet-stream");
        if req.method() == Method::HEAD {
            let (size, status) = self
                .cache
                .blob_size(&name.namespace, &name.repo, digest)
                .await?;
            let r = base
                .status(StatusCode::OK)
                .header(header::CONTENT_LENGTH, size)
                .body(Body::empty());
            return Ok(Reply {
                response: r.map_err(RegistryError::internal)?,
                cache: Some(status),
            });
        }
        let range = req
            .headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_range);
        let (blob, served_range) = self
            .cache
            .blob(&name.namespace, &name.repo, digest, range)
            .await?;
        let mut r = base;
        match (served_range, blob.size) {
            (Some(ByteRange { start, end }), Some(size)) => {
                r = r
                    .status(StatusCode::PARTIAL_CONTENT)
                    .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"))
                    .header(header::CONTENT_LENGTH, end - start + 1);
            }
            (_, size) => {
                r = r.status(StatusCode::OK);
                if let Some(size) = size {
                    r = r.header(header::CONTENT_LENGTH, size);
                }
            }
        }
        let response = r
            .body(Body::stream(blob.body))
            .map_err(RegistryError::internal)?;
        Ok(Reply {
            response,
            cache: Some(blob.status),
        })
    }

    async fn upload<B>(
        &self,
        req: Request<B>,
        name: &Name,
        id: Option<&str>,
        user: Option<&str>,
    ) -> Result<Reply>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Display + Send,
    {
        let (ns, repo) = (&name.namespace, &name.repo);
        self.cache.namespace(ns)?;
        let query = req.uri().query().map(str::to_string);
        let digest = query_param(query.as_deref(), "digest")
            .map(|d| d.parse::<crate::names::Digest>())
            .transpose()?;
        let method = req.method().clone();
        let content_range = req
            .headers()
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = body_stream(req.into_body(), self.body_timeout);
        match (method, id) {
            (Method::POST, None) => {
                if let (Some(mount), Some(from)) = (
                    query_param(query.as_deref(), "mount"),
                    query_param(query.as_deref(), "from"),
                ) {
                    let mount: crate::names::Digest = mount.parse()?;
                    if self.registry.mount(user, &from, ns, repo, &mount).await {
                        return Ok(blob_created(name, &mount).into());
                    }
                }
                let id = self.uploads.start(ns, repo).await?;
                match digest {
                    Some(d) => {
                        self.uploads.finish(&id, ns, repo, &d, body).await?;
                        Ok(blob_created(name, &d).into())
                    }
                    None => Ok(upload_status(StatusCode::ACCEPTED, name, &id, 0).into()),
                }
            }
            (Method::PATCH, Some(id)) => {
                let start = content_range
                    .as_deref()
                    .map(parse_content_range)
                    .transpose()?;
                let size = self.uploads.append(id, ns, repo, start, body).await?;
                Ok(upload_status(StatusCode::ACCEPTED, name, id, size).into())
            }
            (Method::PUT, Some(id)) => {
                let d = digest.ok_or_else(|| {
                    RegistryError::of(
                        Code::DigestInvalid,
                        "the digest query parameter is required",
                    )
                })?;
                self.uploads.finish(id, ns, repo, &d, body).await?;
                Ok(blob_created(name, &d).into())
            }
            (Method::GET, Some(id)) => {
                let size = self.uploads.size(id, ns, repo).await?;
                Ok(upload_status(StatusCode::NO_CONTENT, name, id, size).into())
            }
            (Method::DELETE, Some(id)) => {
                self.uploads.cancel(id, ns, repo).await?;
                Ok(empty(StatusCode::NO_CONTENT).into())
            }
            (m, _) => Err(RegistryError::of(
                Code::Unsupported,
                format!("method {m} not allowed here"),
            )),
        }
    }

    async fn put_manifest<B>(
        &self,
        req: Request<B>,
        name: &Name,
        reference: &crate::names::Reference,
        caller: &Caller,
    ) -> Result<Reply>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Display + Send,
    {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = read_body(
            req.into_body(),
            crate::manifest::MAX_MANIFEST_SIZE,
            self.body_timeout,
        )
        .await?;
        let pushed = self
            .registry
            .push_manifest(
                caller,
                &name.namespace,
                &name.repo,
                reference,
                content_type.as_deref(),
                body,
            )
            .await?;
        let mut r = empty(StatusCode::CREATED);
        let h = r.headers_mut();
        h.insert(
            header::LOCATION,
            hv(&format!("/v2/{}/manifests/{}", name.full, pushed.digest))?,
        );
        h.insert("docker-content-digest", hv(&pushed.digest.to_string())?);
        if let Some(s) = pushed.subject {
            h.insert("oci-subject", hv(&s.to_string())?);
        }
        Ok(r.into())
    }

    async fn referrers<B>(
        &self,
        req: &Request<B>,
        name: &Name,
        digest: &crate::names::Digest,
    ) -> Result<Reply> {
        // media types hold no spaces: a '+' sent unencoded (decoded as a space) is a '+'
        let filter = query_param(req.uri().query(), "artifactType").map(|t| t.replace(' ', "+"));
        let list = self
            .attachments
            .referrers(&name.namespace, &name.repo, digest, filter.as_deref())
            .await?;
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": crate::manifest::OCI_INDEX,
            "manifests": list,
        });
        let mut r = json(StatusCode::OK, Bytes::from(body.to_string()), req.method());
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::manifest::OCI_INDEX),
        );
        if filter.is_some() {
            r.headers_mut().insert(
                "oci-filters-applied",
                HeaderValue::from_static("artifactType"),
            );
        }
        Ok(r.into())
    }

    async fn tags<B>(&self, req: &Request<B>, name: &Name) -> Result<Reply> {
        let query = req.uri().query();
        let n = match query_param(query, "n") {
            None => None,
            Some(v) => Some(v.parse::<usize>().map_err(|_| {
                RegistryError::of(Code::SizeInvalid, format!("invalid page size n={v:?}"))
            })?),
        };
        let last = query_param(query, "last");
        let all = self.cache.tags(&name.namespace, &name.repo).await?;
        let (page, more) = paginate(&all, n, last.as_deref());
        let body = serde_json::json!({"name": name.full, "tags": page});
        let mut response = json(StatusCode::OK, Bytes::from(body.to_string()), req.method());
        if let (true, Some(n), Some(last)) = (more, n, page.last()) {
            let mut link = format!("</v2/{}/tags/list?n={n}&last={last}", name.full);
            if let Some(ns) = query_param(query, "ns") {
                link.push_str(&format!("&ns={ns}"));
            }
            link.push_str(">; rel=\"next\"");
            response.headers_mut().insert(
                header::LINK,
                HeaderValue::from_str(&link).map_err(RegistryError::internal)?,
            );
        }
        Ok(response.into())
    }
}

/// One page of a sorted tag list: the tags after `last`, at most `n`; and whether more follow.
pub fn paginate<'a>(
    all: &'a [String],
    n: Option<usize>,
    last: Option<&str>,
) -> (&'a [String], bool) {
    let start = match last {
        Some(l) => all.partition_point(|t| t.as_str() <= l),
        None => 0,
    };
    let rest = &all[start..];
    match n {
        Some(n) if n < rest.len() => (&rest[..n], true),
        _ => (rest, false),
    }
}

fn hv(s: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(s).map_err(RegistryError::internal)
}

fn empty(status: StatusCode) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .expect("static response parts")
}

fn blob_created(name: &Name, digest: &crate::names::Digest) -> Response<Body> {
    let mut r = empty(StatusCode::CREATED);
    let location = format!("/v2/{}/blobs/{digest}", name.full);
    r.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("valid names"),
    );
    r.headers_mut().insert(
        "docker-content-digest",
        HeaderValue::from_str(&digest.to_string()).expect("valid digest"),
    );
    r
}

fn upload_status(status: StatusCode, name: &Name, id: &str, size: u64) -> Response<Body> {
    let mut r = empty(status);
    let h = r.headers_mut();
    let location = format!("/v2/{}/blobs/uploads/{id}", name.full);
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("valid names"),
    );
    h.insert(
        header::RANGE,
        HeaderValue::from_str(&format!("0-{}", size.saturating_sub(1))).expect("digits"),
    );
    h.insert(
        "docker-upload-uuid",
        HeaderValue::from_str(id).expect("uuid"),
    );
    r
}

/// Parses `Content-Range: <start>-<end>` (OCI) or `bytes <start>-<end>/<total>`; the start.
fn parse_content_range(v: &str) -> Result<u64> {
    let spec = v.trim().trim_start_matches("bytes").trim();
    let (start, end) = spec
        .split('/')
        .next()
        .unwrap_or("")
        .split_once('-')
        .unwrap_or(("", ""));
    match (start.trim().parse::<u64>(), end.trim().parse::<u64>()) {
        (Ok(s), Ok(e)) if e >= s => Ok(s),
        _ => Err(RegistryError::new(
            Code::BlobUploadInvalid,
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!("invalid Content-Range {v:?}"),
        )),
    }
}

/// A request body as a stream of chunks; a pause longer than `idle` ends it with an error.
fn body_stream<B>(body: B, idle: std::time::Duration) -> ByteStream
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display + Send,
{
    use futures_util::StreamExt;
    let frames = http_body_util::BodyStream::new(body).filter_map(|frame| async move {
        match frame {
            Ok(f) => f.into_data().ok().map(Ok),
            Err(e) => Some(Err(std::io::Error::other(e.to_string()))),
        }
    });
    futures_util::stream::unfold(
        (Box::pin(frames), false),
        move |(mut frames, done)| async move {
            if done {
                return None;
            }
            match tokio::time::timeout(idle, frames.next()).await {
                Ok(Some(item)) => Some((item, (frames, false))),
                Ok(None) => None,
                Err(_) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the request body stalled",
                    )),
                    (frames, true),
                )),
            }
        },
    )
    .boxed()
}

/// Reads a whole request body of at most `limit` bytes.
async fn read_body<B>(body: B, limit: usize, idle: std::time::Duration) -> Result<Bytes>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display + Send,
{
    use futures_util::StreamExt;
    let mut s = body_stream(body, idle);
    let mut buf = bytes::BytesMut::new();
    while let Some(chunk) = s.next().await {
        let chunk = chunk.map_err(|e| {
            RegistryError::of(Code::ManifestInvalid, format!("request body failed: {e}"))
        })?;
        if buf.len() + chunk.len() > limit {
            return Err(RegistryError::new(
                Code::ManifestInvalid,
                StatusCode::PAYLOAD_TOO_LARGE,
                "manifest exceeds 4 MiB",
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

fn json(status: StatusCode, body: Bytes, method: &Method) -> Response<Body> {
    let len = body.len();
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::full(body)
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, len)
        .body(body)
        .expect("static response parts")
}

/// A read of a manifest by a reference that is no valid tag names no manifest: 404
/// `MANIFEST_UNKNOWN`, as the distribution spec's conformance suite expects (a push with such
/// a tag stays 400 `MANIFEST_INVALID`).
fn impossible_manifest(e: RegistryError, read: bool, path: &str) -> RegistryError {
    if read && e.code == Code::ManifestInvalid && path.rsplit('/').nth(1) == Some("manifests") {
        return RegistryError::of(
            Code::ManifestUnknown,
            format!("manifest unknown: {}", e.message),
        );
    }
    e
}

/// The OCI error response for an error.
pub fn error_response(e: &RegistryError, method: &Method) -> Response<Body> {
    if e.status.is_server_error() {
        tracing::warn!(code = e.code.as_str(), status = e.status.as_u16(), error = %e.message, "request failed");
    }
    let mut r = json(e.status, Bytes::from(e.body()), method);
    if e.status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"portcullis\""),
        );
    }
    if let Some(seconds) = e.retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    r
}

fn header_values(h: &HeaderMap, name: header::HeaderName) -> Vec<String> {
    h.get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect()
}

/// A query parameter's decoded value.
fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// Parses a single `bytes=<start>-[<end>]` or `bytes=-<n>` range; anything else (several
/// ranges, other units) is ignored and the whole blob served, as RFC 9110 allows.
pub fn parse_range(v: &str) -> Option<RangeSpec> {
    let spec = v.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    if start.trim().is_empty() {
        return Some(RangeSpec::Last(end.trim().parse().ok()?));
    }
    let start = start.trim().parse().ok()?;
    let end = match end.trim() {
        "" => None,
        e => Some(e.parse().ok()?),
    };
    Some(RangeSpec::From { start, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(
            parse_range("bytes=0-99"),
            Some(RangeSpec::From {
                start: 0,
                end: Some(99)
            })
        );
        assert_eq!(
            parse_range("bytes=100-"),
            Some(RangeSpec::From {
                start: 100,
                end: None
            })
        );
        assert_eq!(parse_range("bytes=-5"), Some(RangeSpec::Last(5)));
        assert_eq!(parse_range("bytes=-x"), None);
        assert_eq!(parse_range("bytes=0-1,5-6"), None);
        assert_eq!(parse_range("items=0-1"), None);
    }

    #[test]
    fn pagination() {
        let all: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        assert_eq!(paginate(&all, Some(2), None), (&all[0..2], true));
        assert_eq!(paginate(&all, Some(2), Some("b")), (&all[2..4], false));
        assert_eq!(paginate(&all, None, Some("bb")), (&all[2..4], false));
        assert_eq!(paginate(&all, Some(0), None), (&all[0..0], true));
        assert_eq!(paginate(&all, Some(10), Some("d")), (&all[4..4], false));
    }
}
