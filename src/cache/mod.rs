//! The pull-through cache: local store first, else the upstream, then fill the store.
//!
//! Manifests by digest are immutable and served from the store once fetched. Tag resolutions
//! are trusted for `tag_ttl`, then revalidated with a HEAD; when the upstream is unreachable
//! or answers 429/5xx, the last known resolution is served (stale). Concurrent misses for the
//! same manifest, tag or blob share one upstream request.

mod blobs;
pub mod fill;
pub mod links;
pub mod lru;
pub mod pins;
pub mod singleflight;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::error::{Code, RegistryError, Result};
use crate::manifest::{self, is_attachment_tag, Manifest};
use crate::metrics::{self, Metrics};
use crate::names::{Digest, Reference, RepoName, Tag};
use crate::push::records::Records;
use crate::store::{ByteStream, Store};
use crate::upstream::{FetchedManifest, Upstream};
use links::{Kind, Links};
use lru::LruIndex;
use pins::{Lease, Pins};
use singleflight::SingleFlight;

/// How a request was served, for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// From the local store.
    Hit,
    /// Fetched from the upstream (or joined a fetch under way).
    Miss,
    /// A tag revalidated upstream, the content itself local.
    Revalidated,
    /// Served from the store because the upstream failed.
    Stale,
}

impl CacheStatus {
    /// The word written in the access log.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Revalidated => "revalidated",
            CacheStatus::Stale => "stale",
        }
    }
}

/// A manifest ready to serve.
#[derive(Debug, Clone)]
pub struct ServedManifest {
    /// The exact bytes.
    pub bytes: Bytes,
    /// Its media type.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// The image it refers to (its `subject` field), if any.
    pub subject: Option<Digest>,
    /// Whether it is an attachment by its content ([`Manifest::is_attachment`]).
    pub attachment: bool,
    /// How it was served.
    pub status: CacheStatus,
}

/// What serving a manifest needs to know of its content, parsed once per digest.
#[derive(Clone)]
struct ManifestFacts {
    media_type: Arc<str>,
    subject: Option<Digest>,
    attachment: bool,
}

/// A blob ready to stream.
pub struct ServedBlob {
    /// The total size, when known.
    pub size: Option<u64>,
    /// The requested bytes.
    pub body: ByteStream,
    /// How it was served.
    pub status: CacheStatus,
}

/// A byte range `start..=end` of a blob, already checked against its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// Last byte, inclusive.
    pub end: u64,
}

/// The persisted resolution of a tag.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TagRecord {
    digest: Digest,
    /// Seconds since the epoch when the upstream last confirmed it.
    checked_at: u64,
}

type TagKey = (String, RepoName, Tag);

/// The pull-through cache over all configured upstreams.
pub struct Cache {
    store: Arc<dyn Store>,
    upstreams: HashMap<String, Arc<Upstream>>,
    aliases: HashMap<String, String>,
    locals: std::collections::HashSet<String>,
    /// What users pushed (tags, manifest links, referrers, pinned blobs).
    pub records: Records,
    pins: Pins,
    tag_ttl: Duration,
    idle_timeout: Duration,
    min_free: u64,
    manifests: moka::future::Cache<Digest, Bytes>,
    /// The facts of each manifest served, so that serving one does not parse it each time.
    facts: moka::sync::Cache<Digest, ManifestFacts>,
    /// Attachment manifests whose layers were looked at: inert payloads or not.
    inert: moka::sync::Cache<Digest, bool>,
    tags: moka::future::Cache<TagKey, TagRecord>,
    /// Upstream tag lists, for `tag_ttl`, weighed by their size.
    tag_lists: moka::future::Cache<(String, RepoName), Arc<Option<Vec<String>>>>,
    missing: moka::future::Cache<TagKey, ()>,
    manifest_flights: SingleFlight<(String, RepoName, Digest), (Bytes, CacheStatus)>,
    tag_flights: SingleFlight<TagKey, (TagRecord, CacheStatus)>,
    fills: Mutex<HashMap<blobs::FillKey, blobs::Running>>,
    links: Links,
    lru: LruIndex,
    evicting: tokio::sync::Mutex<()>,
    background: Background,
    weak: std::sync::Weak<Cache>,
    metrics: Arc<Metrics>,
}

/// Work the cache finishes after answering (blob fills, manifest and tag records), counted so
/// that a graceful shutdown can wait for it.
#[derive(Default)]
struct Background {
    running: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
}

impl Cache {
    /// Builds the cache over a store, indexing what the store already holds.
    pub async fn new(
        config: &Config,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<Cache>> {
        let mut upstreams = HashMap::new();
        let mut aliases = HashMap::new();
        for u in &config.upstreams {
            upstreams.insert(
                u.name.clone(),
                Arc::new(
                    Upstream::new(u)?
                        .rechecking(config.cache.tag_ttl.0)
                        .counted(metrics.upstream(&u.name)),
                ),
            );
            for a in &u.aliases {
                aliases.insert(a.clone(), u.name.clone());
            }
        }
        let idle_timeout = config
            .upstreams
            .iter()
            .map(|u| u.timeout.0)
            .max()
            .unwrap_or(Duration::from_secs(30));
        let records = Records::new(Arc::clone(&store));
        let store_for_links = Arc::clone(&store);
        let pinned: std::collections::HashSet<Digest> =
            records.pinned().await?.into_iter().collect();
        let cached = store
            .list_blobs()
            .await?
            .into_iter()
            .filter(|b| !pinned.contains(&b.digest))
            .collect();
        let pins = Pins::new(pinned);
        let lru = LruIndex::new(config.storage.max_size.0, cached);
        let memory = config.cache.memory.0;
        let cache = Arc::new_cyclic(|weak| Cache {
            store,
            upstreams,
            aliases,
            locals: config.locals.iter().map(|l| l.name.clone()).collect(),
            records,
            pins,
            tag_ttl: config.cache.tag_ttl.0,
            idle_timeout,
            min_free: config.storage.min_free.0,
            manifests: moka::future::Cache::builder()
                .weigher(|_, v: &Bytes| v.len().try_into().unwrap_or(u32::MAX))
                .max_capacity(memory)
                .build(),
            facts: moka::sync::Cache::new(100_000),
            inert: moka::sync::Cache::new(100_000),
            tags: moka::future::Cache::builder().max_capacity(100_000).build(),
            tag_lists: moka::future::Cache::builder()
                .weigher(|_, v: &Arc<Option<Vec<String>>>| {
                    let bytes: usize = v.iter().flatten().map(|t| t.len() + 24).sum();
                    u32::try_from(bytes + 64).unwrap_or(u32::MAX)
                })
                .max_capacity(32 << 20)
                .time_to_live(config.cache.tag_ttl.0)
                .build(),
            missing: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(config.cache.attachment_ttl.0)
                .build(),
            manifest_flights: SingleFlight::default(),
            tag_flights: SingleFlight::default(),
            fills: Mutex::default(),
            links: Links::new(Arc::clone(&store_for_links), 200_000),
            lru,
            evicting: tokio::sync::Mutex::new(()),
            background: Background::default(),
            weak: weak.clone(),
            metrics: Arc::clone(&metrics),
        });
        let weak = Arc::downgrade(&cache);
        metrics.on_scrape(move |m| {
            if let Some(cache) = weak.upgrade() {
                m.cache
                    .space("local", cache.lru.total(), cache.store.free_space());
            }
        });
        Ok(cache)
    }

    /// Every metric of the process.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Runs `work` after the answer, counted until it ends (see [`Cache::settle`]).
    fn spawn_background(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        use futures_util::FutureExt;
        use std::sync::atomic::Ordering;
        self.background.running.fetch_add(1, Ordering::SeqCst);
        let this = self.self_arc();
        // the work goes on under the id of the request that started it
        let work = crate::request_id::carried(work);
        tokio::spawn(async move {
            // a panic in the work must not leave the count up (shutdown would wait for ever)
            if std::panic::AssertUnwindSafe(work)
                .catch_unwind()
                .await
                .is_err()
            {
                tracing::error!("work after an answer panicked");
            }
            if this.background.running.fetch_sub(1, Ordering::SeqCst) == 1 {
                this.background.idle.notify_waiters();
            }
        });
    }

    /// Waits until the work started after answers (fills, cache records) has ended.
    pub async fn settle(&self) {
        loop {
            let idle = self.background.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self
                .background
                .running
                .load(std::sync::atomic::Ordering::SeqCst)
                == 0
            {
                return;
            }
            idle.await;
        }
    }

    /// The store underneath (for readiness checks).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Maps a namespace (upstream name, or containerd's `ns` host) to its upstream.
    pub fn upstream(&self, namespace: &str) -> Result<Arc<Upstream>> {
        let name = self
            .aliases
            .get(namespace)
            .map(String::as_str)
            .unwrap_or(namespace);
        self.upstreams.get(name).cloned().ok_or_else(|| {
            RegistryError::of(
                Code::NameUnknown,
                format!("no upstream or namespace named {namespace:?}"),
            )
        })
    }

    /// Whether a namespace is an upstream's (by its name or an alias).
    pub fn is_upstream(&self, namespace: &str) -> bool {
        self.upstreams.contains_key(namespace) || self.aliases.contains_key(namespace)
    }

    /// The canonical name of a namespace (resolving aliases), if it is configured.
    pub fn canonical_namespace<'a>(&'a self, namespace: &'a str) -> Option<&'a str> {
        if self.locals.contains(namespace) {
            return Some(namespace);
        }
        let name = self
            .aliases
            .get(namespace)
            .map(String::as_str)
            .unwrap_or(namespace);
        self.upstreams.get_key_value(name).map(|(k, _)| k.as_str())
    }

    /// Resolves a namespace: `Some(upstream)` for a proxied one, `None` for a local one.
    pub fn namespace(&self, namespace: &str) -> Result<(String, Option<Arc<Upstream>>)> {
        if self.locals.contains(namespace) {
            return Ok((namespace.to_string(), None));
        }
        let up = self.upstream(namespace)?;
        Ok((up.name.clone(), Some(up)))
    }

    /// Keeps a blob from eviction while a push makes sure of it (see [`Pins`]).
    pub async fn lease(&self, digest: &Digest) -> Lease<'_> {
        self.pins.lease(digest).await
    }

    /// Marks a leased blob as pushed content, durably: it is never evicted, and a copy stored
    /// earlier as cache (without a sync) is synced now.
    pub async fn pin(&self, lease: &Lease<'_>) -> Result<()> {
        self.store.sync_blob(lease.digest()).await?;
        self.records.pin(lease.digest()).await?;
        self.pins.pin(lease, || self.lru.remove(lease.digest()));
        Ok(())
    }

    /// Stores a manifest pushed by a client (verified bytes), pinned and durable.
    pub async fn store_pushed_manifest(&self, digest: &Digest, bytes: &Bytes) -> Result<()> {
        let lease = self.lease(digest).await;
        self.pin(&lease).await?;
        self.store.put_small(digest, bytes, true).await?;
        self.remember_manifest(digest, bytes).await;
        Ok(())
    }

    /// A manifest as served, its content parsed once per digest (the bytes are the digest's).
    fn served(&self, bytes: Bytes, digest: Digest, status: CacheStatus) -> Result<ServedManifest> {
        let facts = match self.facts.get(&digest) {
            Some(f) => f,
            None => {
                let parsed = Manifest::parse(&bytes)?;
                let attachment = parsed.is_attachment();
                let f = ManifestFacts {
                    media_type: parsed.media_type().into(),
                    subject: parsed.subject.map(|s| s.digest),
                    attachment,
                };
                self.facts.insert(digest.clone(), f.clone());
                f
            }
        };
        Ok(ServedManifest {
            bytes,
            media_type: facts.media_type.to_string(),
            digest,
            subject: facts.subject,
            attachment: facts.attachment,
            status,
        })
    }

    /// Serves a manifest by tag or digest.
    pub async fn manifest(
        &self,
        ns: &str,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<ServedManifest> {
        let (name, upstream) = self.namespace(ns)?;
        match (reference, upstream) {
            (Reference::Digest(d), Some(up)) => {
                let (bytes, status) = self.manifest_by_digest(&up, repo, d, false).await?;
                self.served(bytes, d.clone(), status)
            }
            (Reference::Digest(d), None) => {
                let linked = self.links.contains(&name, repo, Kind::Manifest, d).await?;
                match self.held_manifest(d).await? {
                    Some(bytes) if linked => self.served(bytes, d.clone(), CacheStatus::Hit),
                    _ => Err(manifest_unknown(repo, d)),
                }
            }
            (Reference::Tag(tag), upstream) => {
                let pushed = self.records.tag(&name, repo, tag).await?;
                match (pushed, upstream) {
                    (Some(d), Some(up)) if is_attachment_tag(tag.as_str()) => {
                        Box::pin(self.merged_attachment(&up, repo, tag, d)).await
                    }
                    (Some(d), _) => {
                        let bytes = self
                            .held_manifest(&d)
                            .await?
                            .ok_or_else(|| manifest_unknown(repo, &d))?;
                        self.served(bytes, d, CacheStatus::Hit)
                    }
                    (None, Some(up)) => self.upstream_tag(&up, repo, tag).await,
                    (None, None) => Err(RegistryError::of(
                        Code::ManifestUnknown,
                        format!("manifest unknown: {repo}:{tag}"),
                    )),
                }
            }
        }
    }

    /// A tag of a proxied repository: its cached resolution, revalidated upstream after the TTL.
    async fn upstream_tag(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<ServedManifest> {
        let key = (upstream.name.clone(), repo.clone(), tag.clone());
        let (record, tag_status) = self.resolve_tag(upstream, key).await?;
        self.metrics.cache.outcome(metrics::Kind::Tag, tag_status);
        let (bytes, status) = self
            .manifest_by_digest(upstream, repo, &record.digest, true)
            .await?;
        let status = if status == CacheStatus::Hit {
            tag_status
        } else {
            status
        };
        self.served(bytes, record.digest, status)
    }

    /// A pushed attachment tag of a proxied repository: the pushed manifest, with the layers only
    /// the upstream's version has appended (so no upstream signature is lost, and what a client
    /// pushed back after appending to this view wins).
    async fn merged_attachment(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        tag: &Tag,
        local: Digest,
    ) -> Result<ServedManifest> {
        let local_bytes = self
            .held_manifest(&local)
            .await?
            .ok_or_else(|| manifest_unknown(repo, &local))?;
        let theirs = match self.upstream_tag(upstream, repo, tag).await {
            Ok(m) if m.attachment => m,
            Ok(_) => {
                tracing::warn!(%repo, %tag, "the upstream's version is no attachment by its content; not merged");
                return self.served(local_bytes, local, CacheStatus::Hit);
            }
            Err(e) => {
                tracing::debug!(%repo, %tag, error = %e.message, "no upstream version to merge");
                return self.served(local_bytes, local, CacheStatus::Hit);
            }
        };
        let mut ours: serde_json::Value =
            serde_json::from_slice(&local_bytes).map_err(RegistryError::internal)?;
        let their_layers = serde_json::from_slice::<serde_json::Value>(&theirs.bytes)
            .ok()
            .and_then(|v| v.get("layers").and_then(|l| l.as_array().cloned()))
            .unwrap_or_default();
        let Some(layers) = ours.get_mut("layers").and_then(|l| l.as_array_mut()) else {
            return self.served(local_bytes, local, CacheStatus::Hit);
        };
        let known: std::collections::HashSet<String> = layers
            .iter()
            .filter_map(|l| l.get("digest").and_then(|d| d.as_str()).map(str::to_string))
            .collect();
        let extra: Vec<serde_json::Value> = their_layers
            .into_iter()
            .filter(|l| {
                l.get("digest")
                    .and_then(|d| d.as_str())
                    .is_some_and(|d| !known.contains(d))
            })
            .collect();
        if extra.is_empty() {
            return self.served(local_bytes, local, CacheStatus::Hit);
        }
        layers.extend(extra);
        let bytes = Bytes::from(serde_json::to_vec(&ours).map_err(RegistryError::internal)?);
        let digest = Digest::sha256_of(&bytes);
        self.keep_manifest(&digest, &bytes).await;
        self.link(&upstream.name, repo, Kind::Manifest, &digest);
        self.served(bytes, digest, theirs.status)
    }

    /// Serves a manifest in a media type the client accepts (an index falls back to linux/amd64).
    pub async fn manifest_for(
        &self,
        ns: &str,
        repo: &RepoName,
        reference: &Reference,
        accept: &[String],
    ) -> Result<ServedManifest> {
        let m = self.manifest(ns, repo, reference).await?;
        if manifest::accepts(accept, &m.media_type) {
            return Ok(m);
        }
        let child = manifest::is_index(&m.media_type)
            .then(|| Manifest::parse(&m.bytes).ok())
            .flatten();
        if let Some(d) = child.as_ref().and_then(platform_fallback) {
            let c = Box::pin(self.manifest(ns, repo, &Reference::Digest(d))).await?;
            if manifest::accepts(accept, &c.media_type) {
                return Ok(c);
            }
        }
        Err(RegistryError::of(
            Code::ManifestUnknown,
            format!(
                "manifest is {} and the request's Accept header does not allow it",
                m.media_type
            ),
        ))
    }

    /// A manifest by digest of a proxied repository: from memory or the store when it belongs
    /// there (`known_here`: the repository's own tag resolves to it, and is linked when the tag
    /// is learnt; else linked, else confirmed by the upstream), else one upstream fetch shared
    /// by that repository's requests.
    async fn manifest_by_digest(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        known_here: bool,
    ) -> Result<(Bytes, CacheStatus)> {
        let ns = upstream.name.as_str();
        let linked = known_here
            || self
                .links
                .contains(ns, repo, Kind::Manifest, digest)
                .await?;
        if let Some(b) = self.held_manifest(digest).await? {
            if !linked && !self.confirm(upstream, repo, Kind::Manifest, digest).await? {
                return Err(manifest_unknown(repo, digest));
            }
            return Ok((b, CacheStatus::Hit));
        }
        let (up, repo2, d) = (Arc::clone(upstream), repo.clone(), digest.clone());
        let this = self.self_arc();
        // boxed: the upstream path is rare and would otherwise deepen every request's future
        self.manifest_flights
            .run(
                (up.name.clone(), repo.clone(), digest.clone()),
                Box::pin(async move {
                    // a run that finished between the caller's look-up and this one kept it already
                    if this
                        .links
                        .contains(&up.name, &repo2, Kind::Manifest, &d)
                        .await?
                    {
                        if let Some(b) = this.held_manifest(&d).await? {
                            return Ok((b, CacheStatus::Hit));
                        }
                    }
                    let fetched = up
                        .get_manifest(&repo2, &d.to_string())
                        .await?
                        .ok_or_else(|| manifest_unknown(&repo2, &d))?;
                    if !digest_matches(&fetched, &d) {
                        up.count(metrics::UpstreamOutcome::DigestMismatch);
                        return Err(RegistryError::new(
                            Code::DigestInvalid,
                            http::StatusCode::BAD_GATEWAY,
                            format!("upstream manifest does not match digest {d}"),
                        ));
                    }
                    this.keep_manifest(&d, &fetched.bytes).await;
                    this.link(&up.name, &repo2, Kind::Manifest, &d);
                    Ok((fetched.bytes, CacheStatus::Miss))
                }),
            )
            .await
    }

    /// A manifest held here (memory, else the store), whatever repository it belongs to; what
    /// is too large for a manifest (a layer's digest asked for as a manifest) is never read.
    async fn held_manifest(&self, digest: &Digest) -> Result<Option<Bytes>> {
        if let Some(b) = self.manifests.get(digest).await {
            self.lru.accessed(digest);
            return Ok(Some(b));
        }
        match self.store.blob_size(digest).await? {
            Some(size) if size <= manifest::MAX_MANIFEST_SIZE as u64 => {}
            Some(size) => {
                tracing::debug!(%digest, size, "asked for as a manifest, but too large to be one");
                return Ok(None);
            }
            None => return Ok(None),
        }
        let Some(b) = self.store.read_small(digest).await? else {
            return Ok(None);
        };
        self.note_access(digest);
        self.remember_manifest(digest, &b).await;
        Ok(Some(b))
    }

    /// Links content to a repository: in memory now, its record shortly after (a lost record
    /// only costs a `HEAD` upstream later).
    fn link(&self, ns: &str, repo: &RepoName, kind: Kind, digest: &Digest) {
        if !self.links.remember(ns, repo, kind, digest) {
            return;
        }
        let (this, ns, repo, d) = (
            self.self_arc(),
            ns.to_string(),
            repo.clone(),
            digest.clone(),
        );
        self.spawn_background(async move {
            if let Err(e) = this.links.record(&ns, &repo, kind, &d).await {
                tracing::debug!(%repo, digest = %d, error = %e, "could not record a link");
            }
        });
    }

    /// Asks the upstream whether `repo` holds content this proxy holds (for another repository,
    /// perhaps); links it when it does.
    async fn confirm(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        kind: Kind,
        digest: &Digest,
    ) -> Result<bool> {
        let found = match kind {
            Kind::Manifest => upstream
                .head_manifest(repo, &digest.to_string())
                .await?
                .is_some(),
            Kind::Blob => upstream.head_blob(repo, digest).await?.is_some(),
        };
        if found {
            self.link(&upstream.name, repo, kind, digest);
        } else {
            tracing::info!(upstream = %upstream.name, %repo, %digest, "held here, but not in this repository upstream: not served");
        }
        Ok(found)
    }

    /// Whether every layer of a manifest that claims to be an attachment is a payload by its
    /// bytes, not an archive or executable dressed as one: each layer is fetched from the
    /// repository if need be and its first bytes looked at. Remembered per manifest once known.
    pub async fn payloads_are_inert(
        &self,
        ns: &str,
        repo: &RepoName,
        digest: &Digest,
        bytes: &Bytes,
    ) -> bool {
        if let Some(known) = self.inert.get(digest) {
            return known;
        }
        let Ok(parsed) = Manifest::parse(bytes) else {
            return false;
        };
        for layer in &parsed.layers {
            if self.ensure_blob(ns, repo, &layer.digest).await.is_err() {
                return false; // not known now; asked again next time
            }
            let head = match self.store.read_blob(&layer.digest, 0, Some(512)).await {
                Ok(Some(mut body)) => {
                    use futures_util::StreamExt;
                    match body.next().await {
                        Some(Ok(chunk)) => chunk.slice(..chunk.len().min(512)),
                        None => Bytes::new(),
                        Some(Err(_)) => return false,
                    }
                }
                _ => return false,
            };
            if portcullis_classify::looks_like_archive(&head) {
                tracing::warn!(%repo, %digest, layer = %layer.digest, "an attachment's layer is an archive or executable: decided as an image");
                self.inert.insert(digest.clone(), false);
                return false;
            }
        }
        self.inert.insert(digest.clone(), true);
        true
    }

    /// Links pushed (or mounted) content to a repository, durably: the push record first.
    pub async fn link_pushed(
        &self,
        ns: &str,
        repo: &RepoName,
        kind: Kind,
        digest: &Digest,
    ) -> Result<()> {
        match kind {
            Kind::Manifest => self.records.link_manifest(ns, repo, digest).await?,
            Kind::Blob => self.records.link_blob(ns, repo, digest).await?,
        }
        self.links.remember(ns, repo, kind, digest);
        Ok(())
    }

    /// Forgets a pushed manifest's link (it was deleted).
    pub async fn unlink_manifest(&self, ns: &str, repo: &RepoName, digest: &Digest) -> Result<()> {
        self.unlink(ns, repo, Kind::Manifest, digest).await
    }

    /// Forgets a link (what it linked was deleted from the repository).
    pub async fn unlink(
        &self,
        ns: &str,
        repo: &RepoName,
        kind: Kind,
        digest: &Digest,
    ) -> Result<()> {
        Ok(self.links.forget(ns, repo, kind, digest).await?)
    }

    /// Whether content is linked to a repository.
    pub async fn holds_pushed(
        &self,
        ns: &str,
        repo: &RepoName,
        kind: Kind,
        digest: &Digest,
    ) -> Result<bool> {
        self.links.contains(ns, repo, kind, digest).await
    }

    /// Counts a newly stored cached blob towards the size cap (pushed content is never evicted).
    fn index_cached(&self, digest: &Digest, size: u64) {
        self.pins
            .unless_pinned(digest, || self.lru.insert(digest.clone(), size));
        self.evict_if_needed();
    }

    /// Keeps a manifest in memory, within `[cache] memory` (enforced at once: inserts are off
    /// the warm path, which only reads).
    async fn remember_manifest(&self, digest: &Digest, bytes: &Bytes) {
        self.manifests.insert(digest.clone(), bytes.clone()).await;
        self.manifests.run_pending_tasks().await;
    }

    /// Keeps verified manifest bytes from the upstream: in memory now, on disk shortly after
    /// (the client does not wait for the disk; a failed write only costs a later refetch).
    pub async fn keep_manifest(&self, digest: &Digest, bytes: &Bytes) {
        self.remember_manifest(digest, bytes).await;
        let (this, d, b) = (self.self_arc(), digest.clone(), bytes.clone());
        self.spawn_background(async move {
            match this.store.put_small(&d, &b, false).await {
                Ok(()) => this.index_cached(&d, b.len() as u64),
                Err(e) => {
                    tracing::warn!(digest = %d, error = %e, "could not cache a manifest on disk")
                }
            }
        });
    }

    /// Resolves a tag to a digest: fresh record, else revalidate (shared), else stale.
    async fn resolve_tag(
        &self,
        upstream: &Arc<Upstream>,
        key: TagKey,
    ) -> Result<(TagRecord, CacheStatus)> {
        if self.missing.contains_key(&key) {
            let (_, repo, tag) = &key;
            return Err(RegistryError::of(
                Code::ManifestUnknown,
                format!("manifest unknown: {repo}:{tag}"),
            ));
        }
        if let Some(fresh) = self.tags.get(&key).await.filter(|r| self.is_fresh(r)) {
            return Ok((fresh, CacheStatus::Hit));
        }
        let (up, this, k) = (Arc::clone(upstream), self.self_arc(), key.clone());
        // boxed: the upstream path is rare and would otherwise deepen every request's future
        self.tag_flights
            .run(
                key,
                Box::pin(async move {
                    // from disk after a restart; or a run that finished just before this one
                    let known = this.load_tag(&k).await?;
                    match known {
                        Some(r) if this.is_fresh(&r) => Ok((r, CacheStatus::Hit)),
                        known => this.revalidate_tag(&up, &k, known).await,
                    }
                }),
            )
            .await
    }

    /// Whether a tag record was confirmed upstream within the TTL.
    fn is_fresh(&self, record: &TagRecord) -> bool {
        now_secs().saturating_sub(record.checked_at) < self.tag_ttl.as_secs().max(1)
    }

    async fn revalidate_tag(
        &self,
        upstream: &Upstream,
        key: &TagKey,
        known: Option<TagRecord>,
    ) -> Result<(TagRecord, CacheStatus)> {
        let (_, repo, tag) = key;
        if known.is_none() {
            // nothing to compare a HEAD with: one GET answers
            return self.fetch_tag(upstream, key, None).await;
        }
        let head = match upstream.head_manifest(repo, tag.as_str()).await {
            Ok(h) => h,
            Err(e) if e.is_upstream_failure() && known.is_some() => {
                tracing::warn!(upstream = %upstream.name, %repo, %tag, error = %e.message, "upstream failed; serving stale tag");
                return Ok((known.expect("checked"), CacheStatus::Stale));
            }
            Err(e) => return Err(e),
        };
        let Some(head) = head else {
            return Err(self.tag_gone(key).await?);
        };
        if let (Some(k), Some(d)) = (&known, &head.digest) {
            if &k.digest == d {
                let record = TagRecord {
                    digest: d.clone(),
                    checked_at: now_secs(),
                };
                self.save_tag(key, &record).await?;
                return Ok((record, CacheStatus::Revalidated));
            }
        }
        self.fetch_tag(upstream, key, known).await
    }

    /// The tag's manifest fetched upstream and recorded; `known` is served if the upstream fails.
    async fn fetch_tag(
        &self,
        upstream: &Upstream,
        key: &TagKey,
        known: Option<TagRecord>,
    ) -> Result<(TagRecord, CacheStatus)> {
        let (_, repo, tag) = key;
        let fetched = match upstream.get_manifest(repo, tag.as_str()).await {
            Ok(Some(f)) => f,
            Ok(None) => return Err(self.tag_gone(key).await?),
            Err(e) if e.is_upstream_failure() && known.is_some() => {
                return Ok((known.expect("checked"), CacheStatus::Stale));
            }
            Err(e) => return Err(e),
        };
        self.keep_manifest(&fetched.digest, &fetched.bytes).await;
        let record = TagRecord {
            digest: fetched.digest.clone(),
            checked_at: now_secs(),
        };
        self.save_tag(key, &record).await?;
        self.link(&upstream.name, repo, Kind::Manifest, &record.digest);
        Ok((record, CacheStatus::Miss))
    }

    /// Forgets a tag the upstream no longer has (remembering missing attachment tags for a
    /// while) and returns the error for the client.
    async fn tag_gone(&self, key: &TagKey) -> Result<RegistryError> {
        self.forget_tag(key).await?;
        let (_, repo, tag) = key;
        if is_attachment_tag(tag.as_str()) {
            self.missing.insert(key.clone(), ()).await;
        }
        Ok(RegistryError::of(
            Code::ManifestUnknown,
            format!("manifest unknown: {repo}:{tag}"),
        ))
    }

    fn tag_meta_key((ns, repo, tag): &TagKey) -> String {
        format!("tags/{ns}/{repo}/_tags/{tag}")
    }

    async fn load_tag(&self, key: &TagKey) -> Result<Option<TagRecord>> {
        if let Some(r) = self.tags.get(key).await {
            return Ok(Some(r));
        }
        let Some(raw) = self.store.get_meta(&Self::tag_meta_key(key)).await? else {
            return Ok(None);
        };
        let Ok(record) = serde_json::from_slice::<TagRecord>(&raw) else {
            tracing::warn!(key = %Self::tag_meta_key(key), "ignoring unreadable tag record");
            return Ok(None);
        };
        self.tags.insert(key.clone(), record.clone()).await;
        let (ns, repo, _) = key;
        self.link(ns, repo, Kind::Manifest, &record.digest);
        Ok(Some(record))
    }

    /// Records a tag's resolution: in memory now, on disk shortly after (the client does not
    /// wait; a lost record only costs a revalidation).
    async fn save_tag(&self, key: &TagKey, record: &TagRecord) -> Result<()> {
        let json = serde_json::to_vec(record).map_err(RegistryError::internal)?;
        self.tags.insert(key.clone(), record.clone()).await;
        let (store, meta_key) = (Arc::clone(&self.store), Self::tag_meta_key(key));
        self.spawn_background(async move {
            if let Err(e) = store.put_cache_meta(&meta_key, &json).await {
                tracing::warn!(key = %meta_key, error = %e, "could not record a tag on disk");
            }
        });
        Ok(())
    }

    async fn forget_tag(&self, key: &TagKey) -> Result<()> {
        self.tags.invalidate(key).await;
        self.store.delete_meta(&Self::tag_meta_key(key)).await?;
        Ok(())
    }

    /// The upstream's OCI referrers of a digest (`None` where it has no referrers API);
    /// kept on disk and served from there when the upstream fails.
    pub async fn upstream_referrers(
        &self,
        ns: &str,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<Vec<manifest::Descriptor>>> {
        let Some(upstream) = self.namespace(ns)?.1 else {
            return Ok(Some(Vec::new()));
        };
        let key = format!(
            "referrers/{}/{repo}/_referrers/{}",
            upstream.name,
            digest.tag_prefix()
        );
        let raw = match upstream.get_referrers(repo, digest).await {
            Ok(Some(bytes)) => {
                self.store.put_cache_meta(&key, &bytes).await?;
                Some(bytes)
            }
            Ok(None) => None,
            Err(e) if e.is_upstream_failure() => self.store.get_meta(&key).await?,
            Err(e) => return Err(e),
        };
        let Some(raw) = raw else { return Ok(None) };
        let index = Manifest::parse(&raw).map_err(|e| {
            RegistryError::upstream(format!("upstream referrers list is invalid: {}", e.message))
        })?;
        Ok(Some(index.manifests))
    }

    /// The upstream's atomic signatures of a digest (`{"signatures":[...]}`), mirrored to disk;
    /// an empty list where the upstream offers none.
    pub async fn atomic_signatures(
        &self,
        ns: &str,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Bytes> {
        let (name, upstream) = self.namespace(ns)?;
        let mut list = match upstream {
            Some(up) => self.upstream_signatures(&up, repo, digest).await?,
            None => Vec::new(),
        };
        for s in self.records.signatures(&name, repo, digest).await? {
            if !list.contains(&s) {
                list.push(s);
            }
        }
        let body = serde_json::json!({ "signatures": list });
        Ok(Bytes::from(body.to_string()))
    }

    async fn upstream_signatures(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Vec<serde_json::Value>> {
        let key = format!(
            "signatures/{}/{repo}/_signatures/{}",
            upstream.name,
            digest.tag_prefix()
        );
        let fetched = match upstream.get_signatures(repo, digest).await {
            Ok(Some(bytes))
                if serde_json::from_slice::<serde_json::Value>(&bytes)
                    .is_ok_and(|v| v["signatures"].is_array()) =>
            {
                self.store.put_cache_meta(&key, &bytes).await?;
                Some(bytes)
            }
            Ok(_) => None,
            Err(e) if e.is_upstream_failure() => self.store.get_meta(&key).await?,
            Err(e) => return Err(e),
        };
        let list = fetched
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["signatures"].as_array().cloned())
            .unwrap_or_default();
        Ok(list)
    }

    /// Lists a repository's tags: the upstream's, or the locally known ones when it fails.
    pub async fn tags(&self, ns: &str, repo: &RepoName) -> Result<Vec<String>> {
        let (name, upstream) = self.namespace(ns)?;
        let pushed = self.records.tags(&name, repo).await?;
        let unknown = || {
            RegistryError::of(
                Code::NameUnknown,
                format!("repository {ns}/{repo} not known"),
            )
        };
        let Some(upstream) = upstream else {
            return if pushed.is_empty() {
                Err(unknown())
            } else {
                Ok(pushed)
            };
        };
        let mut tags = match self.upstream_tags(&upstream, repo).await {
            Ok(Some(t)) => t,
            Ok(None) if pushed.is_empty() => return Err(unknown()),
            Ok(None) => Vec::new(),
            Err(e) if e.is_upstream_failure() => {
                let local = self
                    .store
                    .list_meta(&format!("tags/{}/{repo}/_tags", upstream.name))
                    .await?;
                if local.is_empty() && pushed.is_empty() {
                    return Err(e);
                }
                local
            }
            Err(e) => return Err(e),
        };
        tags.extend(pushed);
        tags.sort();
        tags.dedup();
        Ok(tags)
    }

    /// An upstream repository's tag list, fetched once per `tag_ttl` (concurrent askers share
    /// one fetch).
    async fn upstream_tags(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
    ) -> Result<Option<Vec<String>>> {
        let key = (upstream.name.clone(), repo.clone());
        let (up, r) = (Arc::clone(upstream), repo.clone());
        let list = self
            .tag_lists
            .try_get_with(key, async move { up.tags(&r).await.map(Arc::new) })
            .await
            .map_err(|e: Arc<RegistryError>| (*e).clone())?;
        Ok(list.as_ref().clone())
    }

    fn note_access(&self, digest: &Digest) {
        if self.lru.accessed(digest) {
            let (store, d) = (Arc::clone(&self.store), digest.clone());
            tokio::spawn(async move {
                if let Err(e) = store.touch(&d).await {
                    tracing::debug!(digest = %d, error = %e, "cannot refresh access time");
                }
            });
        }
    }

    /// Starts an eviction pass when the cache is over its size cap (one pass at a time). Each
    /// victim is claimed before it is deleted: one a push leased or pinned meanwhile is kept.
    fn evict_if_needed(&self) {
        if self.lru.victims().is_empty() {
            return;
        }
        let this = self.self_arc();
        tokio::spawn(async move {
            let Ok(_guard) = this.evicting.try_lock() else {
                return;
            };
            for digest in this.lru.victims() {
                if !this.pins.claim(&digest) {
                    continue;
                }
                let size = this.lru.size_of(&digest);
                let deleted = this.store.delete_blob(&digest).await;
                if deleted.is_ok() {
                    this.metrics.cache.evictions.inc();
                    this.metrics.cache.evicted_bytes.inc_by(size);
                    this.lru.remove(&digest);
                    this.manifests.invalidate(&digest).await;
                }
                this.pins.evicted(&digest);
                match deleted {
                    Ok(()) => tracing::info!(%digest, "evicted"),
                    Err(e) => tracing::warn!(%digest, error = %e, "eviction failed"),
                }
            }
        });
    }

    fn self_arc(&self) -> Arc<Cache> {
        self.weak.upgrade().expect("cache alive while serving")
    }
}

/// Whether fetched bytes hash to the requested digest, in the digest's own algorithm.
fn digest_matches(fetched: &FetchedManifest, wanted: &Digest) -> bool {
    use sha2::Digest as _;
    match wanted.algorithm() {
        crate::names::Algorithm::Sha256 => &fetched.digest == wanted,
        crate::names::Algorithm::Sha512 => {
            &Digest::from_raw(wanted.algorithm(), &sha2::Sha512::digest(&fetched.bytes)) == wanted
        }
    }
}

fn manifest_unknown(repo: &RepoName, digest: &Digest) -> RegistryError {
    RegistryError::of(
        Code::ManifestUnknown,
        format!("manifest unknown: {repo}@{digest}"),
    )
}

fn blob_unknown(digest: &Digest) -> RegistryError {
    RegistryError::of(Code::BlobUnknown, format!("blob unknown: {digest}"))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A byte range as a client asks for it (RFC 9110).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// `bytes=<start>-[<end>]`.
    From {
        /// First byte.
        start: u64,
        /// Last byte, inclusive; to the end when absent.
        end: Option<u64>,
    },
    /// `bytes=-<n>`: the last `n` bytes.
    Last(u64),
}

/// Checks a requested range against a blob's size (RFC 9110 semantics).
pub fn resolve_range(spec: RangeSpec, size: u64) -> Result<ByteRange> {
    let (start, end) = match spec {
        RangeSpec::From { start, end } => (start, end),
        RangeSpec::Last(0) => {
            return Err(RegistryError::of(
                Code::RangeInvalid,
                "an empty suffix range selects nothing",
            ))
        }
        RangeSpec::Last(n) => (size.saturating_sub(n), None),
    };
    if start >= size {
        return Err(RegistryError::of(
            Code::RangeInvalid,
            format!("range starts at {start}, blob has {size} bytes"),
        ));
    }
    let end = end.unwrap_or(size - 1).min(size - 1);
    if end < start {
        return Err(RegistryError::of(
            Code::RangeInvalid,
            "range end before start",
        ));
    }
    Ok(ByteRange { start, end })
}

/// Picks what to answer a client whose `Accept` does not admit an index: the linux/amd64 child.
pub fn platform_fallback(index: &Manifest) -> Option<Digest> {
    index
        .manifests
        .iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
        .map(|m| m.digest.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let from = |start, end| RangeSpec::From { start, end };
        assert_eq!(
            resolve_range(from(0, Some(9)), 100).unwrap(),
            ByteRange { start: 0, end: 9 }
        );
        assert_eq!(
            resolve_range(from(90, None), 100).unwrap(),
            ByteRange { start: 90, end: 99 }
        );
        assert_eq!(
            resolve_range(from(90, Some(500)), 100).unwrap(),
            ByteRange { start: 90, end: 99 }
        );
        assert_eq!(resolve_range(from(100, None), 100).unwrap_err().status, 416);
        assert!(resolve_range(from(5, Some(4)), 100).is_err());
        assert_eq!(
            resolve_range(RangeSpec::Last(10), 100).unwrap(),
            ByteRange { start: 90, end: 99 }
        );
        assert_eq!(
            resolve_range(RangeSpec::Last(500), 100).unwrap(),
            ByteRange { start: 0, end: 99 },
            "more than there is: all of it"
        );
        assert_eq!(
            resolve_range(RangeSpec::Last(0), 100).unwrap_err().code,
            Code::RangeInvalid
        );
    }
}
