//! The client of upstream registries: token and basic auth, timeouts, retries, redirects.

pub mod auth;

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{StreamExt, TryStreamExt};
use http::{header, HeaderMap, Method, StatusCode};

use crate::config::UpstreamConfig;
use crate::error::{Code, RegistryError, Result};
use crate::manifest::{self, MAX_MANIFEST_SIZE};
use crate::metrics::{UpstreamMetrics, UpstreamOutcome};
use crate::names::{Digest, RepoName};
use crate::store::ByteStream;
use auth::{Challenge, Token};

/// A manifest fetched from an upstream.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The exact bytes.
    pub bytes: Bytes,
    /// The media type the upstream declared.
    pub media_type: String,
    /// The digest computed over the bytes.
    pub digest: Digest,
}

/// What a manifest HEAD tells.
#[derive(Debug, Clone)]
pub struct ManifestHead {
    /// `Docker-Content-Digest`, when the upstream sends it.
    pub digest: Option<Digest>,
}

/// A blob body being fetched from an upstream.
pub struct FetchedBlob {
    /// `Content-Length`, when known.
    pub size: Option<u64>,
    /// The body, in chunks.
    pub body: ByteStream,
}

/// One upstream registry.
pub struct Upstream {
    /// The namespace clients use for it.
    pub name: String,
    base: url::Url,
    http: reqwest::Client,
    credentials: Option<(String, String)>,
    tokens: moka::future::Cache<String, Token>,
    retries: u32,
    timeout: Duration,
    /// Whether the upstream offers the atomic signatures extension, and when that was learnt.
    signatures_offered: std::sync::Mutex<Option<(bool, std::time::Instant)>>,
    /// How long that answer is trusted (the cache's `tag_ttl`).
    recheck: Duration,
    metrics: UpstreamMetrics,
}

/// The most pages of an upstream tag list followed.
const MAX_TAG_PAGES: usize = 100;
/// The most bytes of an upstream tag list read, all pages together.
const MAX_TAG_BYTES: usize = 16 << 20;

/// Idle connections kept open per upstream host after a burst of requests.
pub const IDLE_CONNECTIONS: usize = 16;

impl Upstream {
    /// Builds the client for one `[[upstream]]` entry.
    pub fn new(config: &UpstreamConfig) -> anyhow::Result<Upstream> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout.0)
            .read_timeout(config.timeout.0)
            .redirect(reqwest::redirect::Policy::limited(5))
            .pool_max_idle_per_host(IDLE_CONNECTIONS)
            .pool_idle_timeout(Duration::from_secs(30))
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &config.ca_file {
            let certs = reqwest::Certificate::from_pem_bundle(&std::fs::read(ca)?)?;
            if certs.is_empty() {
                anyhow::bail!("ca_file {}: no PEM certificate in it", ca.display());
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let credentials = config
            .username
            .clone()
            .map(|u| (u, config.password.clone().unwrap_or_default()));
        Ok(Upstream {
            name: config.name.clone(),
            base: config.url.clone(),
            http: builder.build()?,
            credentials,
            tokens: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            retries: config.retries,
            timeout: config.timeout.0,
            signatures_offered: std::sync::Mutex::new(None),
            recheck: Duration::from_secs(300),
            metrics: UpstreamMetrics::default(),
        })
    }

    /// Asks whether the upstream offers the atomic signatures extension again after `every`.
    pub fn rechecking(mut self, every: Duration) -> Upstream {
        self.recheck = every;
        self
    }

    /// Counts this upstream's requests, their latency and token fetches in `metrics`.
    pub fn counted(mut self, metrics: UpstreamMetrics) -> Upstream {
        self.metrics = metrics;
        self
    }

    /// Counts an outcome found after the answer (content that did not match its digest).
    pub fn count(&self, outcome: UpstreamOutcome) {
        self.metrics.outcome(outcome);
    }

    /// The registry host (with a port when not the default), as image names write it.
    pub fn host(&self) -> String {
        let host = self.base.host_str().unwrap_or_default();
        match self.base.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        }
    }

    fn url(&self, repo: &RepoName, tail: &str) -> String {
        let base = self.base.as_str().trim_end_matches('/');
        format!("{base}/v2/{repo}/{tail}")
    }

    /// GETs a manifest; `None` when the upstream does not have it.
    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
    ) -> Result<Option<FetchedManifest>> {
        let url = self.url(repo, &format!("manifests/{reference}"));
        let Some(resp) = self
            .send(Method::GET, &url, repo, accept_manifests())
            .await?
        else {
            return Ok(None);
        };
        let declared = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let announced = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_MANIFEST_SIZE as u64)
        {
            return Err(too_large());
        }
        let bytes = read_limited(resp, MAX_MANIFEST_SIZE, "manifest").await?;
        let parsed = manifest::Manifest::parse(&bytes).map_err(|e| {
            RegistryError::upstream(format!("upstream sent an invalid manifest: {}", e.message))
        })?;
        let media_type = match declared
            .as_deref()
            .map(|t| t.split(';').next().unwrap_or("").trim())
        {
            Some(t) if manifest::ALL_TYPES.contains(&t) => t.to_string(),
            _ => parsed.media_type().to_string(),
        };
        let digest = Digest::sha256_of(&bytes);
        if let Some(announced) = announced.filter(|a| a.starts_with("sha256:")) {
            if announced != digest.to_string() {
                self.count(UpstreamOutcome::DigestMismatch);
                return Err(RegistryError::new(
                    Code::DigestInvalid,
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "upstream {} announced manifest {announced} but sent {digest}",
                        self.name
                    ),
                ));
            }
        }
        Ok(Some(FetchedManifest {
            bytes,
            media_type,
            digest,
        }))
    }

    /// HEADs a manifest to learn its current digest; `None` when absent upstream.
    pub async fn head_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
    ) -> Result<Option<ManifestHead>> {
        let url = self.url(repo, &format!("manifests/{reference}"));
        let Some(resp) = self
            .send(Method::HEAD, &url, repo, accept_manifests())
            .await?
        else {
            return Ok(None);
        };
        let digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok(Some(ManifestHead { digest }))
    }

    /// GETs a blob as a stream; `None` when absent upstream.
    pub async fn get_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<FetchedBlob>> {
        let url = self.url(repo, &format!("blobs/{digest}"));
        let Some(resp) = self.send(Method::GET, &url, repo, HeaderMap::new()).await? else {
            return Ok(None);
        };
        let size = resp.content_length();
        let body = resp.bytes_stream().map_err(std::io::Error::other).boxed();
        Ok(Some(FetchedBlob { size, body }))
    }

    /// HEADs a blob for its size; `None` when absent upstream.
    pub async fn head_blob(&self, repo: &RepoName, digest: &Digest) -> Result<Option<u64>> {
        let url = self.url(repo, &format!("blobs/{digest}"));
        let resp = self
            .send(Method::HEAD, &url, repo, HeaderMap::new())
            .await?;
        Ok(resp.map(|r| header_len(r.headers()).unwrap_or(0)))
    }

    /// GETs the OCI 1.1 referrers index of a digest; `None` where the API is not offered.
    pub async fn get_referrers(&self, repo: &RepoName, digest: &Digest) -> Result<Option<Bytes>> {
        let url = self.url(repo, &format!("referrers/{digest}"));
        let mut accept = HeaderMap::new();
        accept.insert(
            header::ACCEPT,
            manifest::OCI_INDEX.parse().expect("static header"),
        );
        // registries without the API answer 404, 400 or 405 for the unknown route
        match self
            .send_with(Method::GET, &url, repo, accept, Absent::AnyClientError)
            .await?
        {
            Some(resp) => Ok(Some(
                read_limited(resp, MAX_MANIFEST_SIZE, "referrers list").await?,
            )),
            None => Ok(None),
        }
    }

    /// GETs the atomic signatures extension list of a digest; `None` where not offered.
    pub async fn get_signatures(&self, repo: &RepoName, digest: &Digest) -> Result<Option<Bytes>> {
        if !self.offers_signatures().await? {
            return Ok(None);
        }
        let base = self.base.as_str().trim_end_matches('/');
        let url = format!("{base}/extensions/v2/{repo}/signatures/{digest}");
        match self
            .send_with(
                Method::GET,
                &url,
                repo,
                HeaderMap::new(),
                Absent::AnyClientError,
            )
            .await?
        {
            Some(resp) => Ok(Some(
                read_limited(resp, MAX_MANIFEST_SIZE, "signature list").await?,
            )),
            None => Ok(None),
        }
    }

    /// Whether the upstream offers the atomic signatures extension: its `/v2/` answer (200 or
    /// 401) carries `X-Registry-Supports-Signatures: 1`, the header containers/image looks for.
    /// Asked again after `recheck`; registries without it are not asked per image.
    async fn offers_signatures(&self) -> Result<bool> {
        if let Some((offered, at)) = *self.signatures_offered.lock().expect("signatures lock") {
            if at.elapsed() < self.recheck {
                return Ok(offered);
            }
        }
        let url = format!("{}/v2/", self.base.as_str().trim_end_matches('/'));
        let resp = match tokio::time::timeout(self.timeout, self.http.get(&url).send()).await {
            Err(_) => {
                return Err(RegistryError::upstream_timeout(format!(
                    "upstream {} did not answer in time",
                    self.name
                )))
            }
            Ok(Err(e)) => return Err(transport_error(&self.name, &e)),
            Ok(Ok(r)) => r,
        };
        let offered = resp
            .headers()
            .get("x-registry-supports-signatures")
            .is_some_and(|v| v.as_bytes() == b"1");
        *self.signatures_offered.lock().expect("signatures lock") =
            Some((offered, std::time::Instant::now()));
        Ok(offered)
    }

    /// Lists the tags of a repository, following `Link` pages within the upstream's own origin
    /// (never to another host), at most [`MAX_TAG_PAGES`] pages and [`MAX_TAG_BYTES`] in all;
    /// `None` when absent upstream.
    pub async fn tags(&self, repo: &RepoName) -> Result<Option<Vec<String>>> {
        #[derive(serde::Deserialize)]
        struct TagList {
            tags: Option<Vec<String>>,
        }
        let mut url = self.url(repo, "tags/list");
        let (mut all, mut bytes) = (Vec::new(), 0usize);
        for page in 1..=MAX_TAG_PAGES {
            let Some(resp) = self.send(Method::GET, &url, repo, HeaderMap::new()).await? else {
                return Ok(None);
            };
            let next = resp
                .headers()
                .get(header::LINK)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_next_link);
            let body = read_limited(resp, MAX_TAG_BYTES.saturating_sub(bytes), "tag list").await?;
            bytes += body.len();
            let list: TagList = serde_json::from_slice(&body).map_err(|e| {
                RegistryError::upstream(format!("upstream sent an invalid tag list: {e}"))
            })?;
            all.extend(list.tags.unwrap_or_default());
            let Some(next) = next else { break };
            let next = self
                .base
                .join(&next)
                .map_err(|e| RegistryError::upstream(format!("bad Link: {e}")))?;
            if next.origin() != self.base.origin() {
                tracing::warn!(upstream = %self.name, %repo, link = %next, "the tag list's next page is on another host; not followed");
                break;
            }
            if page == MAX_TAG_PAGES {
                tracing::warn!(upstream = %self.name, %repo, pages = page, "tag list cut at the page limit");
            }
            url = next.into();
        }
        Ok(Some(all))
    }

    /// Sends an idempotent request with auth and retries; `Ok(None)` for 404.
    async fn send(
        &self,
        method: Method,
        url: &str,
        repo: &RepoName,
        headers: HeaderMap,
    ) -> Result<Option<reqwest::Response>> {
        self.send_with(method, url, repo, headers, Absent::NotFound)
            .await
    }

    /// Like `send`, choosing which answers mean "not there".
    async fn send_with(
        &self,
        method: Method,
        url: &str,
        repo: &RepoName,
        headers: HeaderMap,
        absent: Absent,
    ) -> Result<Option<reqwest::Response>> {
        // tokens are kept per host as well as per scope: one issued for this upstream never
        // goes anywhere else
        let scope = format!("repository:{repo}:pull");
        let origin = url::Url::parse(url)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default();
        let token_key = format!("{origin} {scope}");
        let mut auth = self.cached_auth(&token_key).await;
        let mut attempt = 0;
        let mut authenticated_once = false;
        loop {
            let mut req = self
                .http
                .request(method.clone(), url)
                .headers(headers.clone());
            if let Some(a) = &auth {
                req = req.header(header::AUTHORIZATION, a);
            }
            if let Some(id) = crate::request_id::current() {
                req = req.header("x-request-id", id.as_str());
            }
            let sent = Instant::now();
            let result = tokio::time::timeout(self.timeout, req.send()).await;
            self.metrics.latency.observe(sent.elapsed());
            let resp = match result {
                Err(_) => Err(RegistryError::upstream_timeout(format!(
                    "upstream {} did not answer in time",
                    self.name
                ))),
                Ok(Err(e)) => Err(transport_error(&self.name, &e)),
                Ok(Ok(r)) => Ok(r),
            };
            self.metrics.outcome(match &resp {
                Err(e) if e.status == StatusCode::GATEWAY_TIMEOUT => UpstreamOutcome::Timeout,
                Err(_) => UpstreamOutcome::Error,
                Ok(r) => outcome_of(r.status(), absent),
            });
            let resp = match resp {
                Ok(r) => r,
                Err(e) if attempt < self.retries => {
                    attempt += 1;
                    tracing::debug!(upstream = %self.name, error = %e.message, attempt, "retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match resp.status() {
                s if s.is_success() => return Ok(Some(resp)),
                StatusCode::NOT_FOUND => return Ok(None),
                s if absent == Absent::AnyClientError
                    && s.is_client_error()
                    && !matches!(
                        s,
                        StatusCode::UNAUTHORIZED
                            | StatusCode::FORBIDDEN
                            | StatusCode::TOO_MANY_REQUESTS
                    ) =>
                {
                    return Ok(None)
                }
                StatusCode::UNAUTHORIZED if !authenticated_once => {
                    if resp.url().origin() != self.base.origin() {
                        return Err(RegistryError::upstream(format!(
                            "upstream {} sent us to {} which asks for credentials; they are only ever sent to the upstream",
                            self.name,
                            resp.url().origin().ascii_serialization()
                        )));
                    }
                    authenticated_once = true;
                    auth = Some(
                        self.authenticate(resp.headers(), &scope, &token_key)
                            .await?,
                    );
                }
                // the upstream's refusal of the proxy: a repository it does not have (as Docker
                // Hub says it) or one the proxy's credentials do not open; the client can do
                // nothing about either with credentials of its own, so not a 401
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    return Err(RegistryError::of(
                        Code::Denied,
                        format!("upstream {} refused access to {repo}: it does not exist there, or the proxy's credentials for it do not allow it", self.name),
                    ));
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    let retry_after = resp
                        .headers()
                        .get(header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    let e = RegistryError::of(
                        Code::TooManyRequests,
                        format!("upstream {} is rate limiting", self.name),
                    );
                    return Err(e.with_retry_after(retry_after.map(|s| s.min(3600))));
                }
                s if s.is_server_error() && attempt < self.retries => {
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                }
                s => {
                    return Err(RegistryError::upstream(format!(
                        "upstream {} answered {s}",
                        self.name
                    )))
                }
            }
        }
    }

    async fn cached_auth(&self, token_key: &str) -> Option<String> {
        match self.tokens.get(token_key).await {
            Some(t) if t.expires > Instant::now() => Some(format!("Bearer {}", t.value)),
            _ => None,
        }
    }

    /// Answers a 401 challenge of the upstream: a bearer token from the realm (cached under
    /// `token_key`), or basic credentials.
    async fn authenticate(
        &self,
        headers: &HeaderMap,
        scope: &str,
        token_key: &str,
    ) -> Result<String> {
        let challenge = headers
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(auth::parse_challenge);
        match challenge {
            Some(Challenge::Basic) => match &self.credentials {
                Some((u, p)) => Ok(basic_header(u, p)),
                None => Err(RegistryError::of(
                    Code::Denied,
                    format!("upstream {} requires credentials the proxy was not given (username and password_file)", self.name),
                )),
            },
            Some(Challenge::Bearer { realm, service, scope: challenge_scope }) => {
                let asked = challenge_scope.unwrap_or_else(|| scope.to_string());
                let token = self.fetch_token(&realm, service.as_deref(), &asked).await?;
                let header = format!("Bearer {}", token.value);
                // cached under the host and scope this request needs, which later lookups use
                self.tokens.insert(token_key.to_string(), token).await;
                Ok(header)
            }
            None => Err(RegistryError::upstream(format!("upstream {} sent 401 without a usable challenge", self.name))),
        }
    }

    async fn fetch_token(&self, realm: &str, service: Option<&str>, scope: &str) -> Result<Token> {
        let mut url = url::Url::parse(realm).map_err(|e| {
            RegistryError::upstream(format!(
                "upstream {} sent a bad token realm: {e}",
                self.name
            ))
        })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let mut req = self.http.get(url.clone());
        // the realm may be another host (Docker Hub's is), but credentials go there only over
        // https, or over http when the upstream itself is plain http
        let private = url.scheme() == "https" || self.base.scheme() == "http";
        match &self.credentials {
            Some((u, p)) if private => req = req.basic_auth(u, Some(p)),
            Some(_) => {
                tracing::warn!(upstream = %self.name, realm = %url, "token realm is plain http; asking for a token without the credentials")
            }
            None => {}
        }
        self.metrics.tokens.inc();
        let resp = tokio::time::timeout(self.timeout, req.send())
            .await
            .map_err(|_| {
                RegistryError::upstream_timeout(format!(
                    "token endpoint of {} did not answer",
                    self.name
                ))
            })?
            .map_err(|e| transport_error(&self.name, &e))?;
        if !resp.status().is_success() {
            return Err(RegistryError::of(
                Code::Denied,
                format!(
                    "the token endpoint of {} refused the proxy: {}",
                    self.name,
                    resp.status()
                ),
            ));
        }
        let body = read_limited(resp, 1 << 20, "token answer").await?;
        auth::parse_token(&body).ok_or_else(|| {
            RegistryError::upstream(format!("token endpoint of {} sent no token", self.name))
        })
    }
}

/// How an upstream's answer is counted.
fn outcome_of(status: StatusCode, absent: Absent) -> UpstreamOutcome {
    match status {
        s if s.is_success() => UpstreamOutcome::Ok,
        StatusCode::NOT_FOUND => UpstreamOutcome::NotFound,
        StatusCode::TOO_MANY_REQUESTS => UpstreamOutcome::RateLimited,
        // a first 401 is the challenge of a registry with token auth, answered at once
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => UpstreamOutcome::Denied,
        s if absent == Absent::AnyClientError && s.is_client_error() => UpstreamOutcome::NotFound,
        _ => UpstreamOutcome::Error,
    }
}

/// Which upstream answers mean that the thing asked for is not there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Absent {
    /// Only 404.
    NotFound,
    /// Any 4xx except auth and rate limiting (optional APIs the upstream may not offer).
    AnyClientError,
}

fn accept_manifests() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::ACCEPT,
        manifest::ALL_TYPES
            .join(", ")
            .parse()
            .expect("static header"),
    );
    h
}

fn basic_header(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100 * 4u64.pow(attempt.saturating_sub(1).min(3)))
}

fn too_large() -> RegistryError {
    RegistryError::new(
        Code::ManifestInvalid,
        StatusCode::BAD_GATEWAY,
        format!(
            "upstream manifest exceeds the {} MiB limit",
            MAX_MANIFEST_SIZE >> 20
        ),
    )
}

fn header_len(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn transport_error(name: &str, e: &reqwest::Error) -> RegistryError {
    if e.is_timeout() {
        RegistryError::upstream_timeout(format!("upstream {name} timed out"))
    } else {
        RegistryError::upstream(format!("upstream {name} unreachable: {}", error_chain(e)))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Reads a whole body, failing once it exceeds `limit` bytes (saying what it was).
async fn read_limited(resp: reqwest::Response, limit: usize, what: &str) -> Result<Bytes> {
    let mut body = resp.bytes_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            RegistryError::upstream(format!("upstream body failed: {}", error_chain(&e)))
        })?;
        if buf.len() + chunk.len() > limit {
            return Err(match what {
                "manifest" => too_large(),
                _ => {
                    RegistryError::upstream(format!("upstream {what} exceeds {} KiB", limit >> 10))
                }
            });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Extracts the target of `Link: <...>; rel="next"`.
pub fn parse_next_link(link: &str) -> Option<String> {
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| p.trim().replace(' ', "") == "rel=\"next\"" || p.trim() == "rel=next");
        is_next.then(|| {
            target
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links() {
        assert_eq!(
            parse_next_link(r#"</v2/a/tags/list?last=b&n=2>; rel="next""#).as_deref(),
            Some("/v2/a/tags/list?last=b&n=2")
        );
        assert_eq!(parse_next_link(r#"</x>; rel="prev""#), None);
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        assert!(backoff(1) < backoff(2));
        assert!(backoff(10) <= Duration::from_millis(6400));
    }
}
