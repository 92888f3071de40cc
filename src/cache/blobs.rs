//! Blobs of the cache: served under a repository only where they belong there (see
//! [`super::links`]), from the store, else from the one fill of the blob under way.
//!
//! A fill is shared by the requests of one upstream repository. A request from another
//! repository of the same upstream joins it only once its own repository is confirmed to hold
//! the blob (a `HEAD` upstream), waits for it to be stored rather than streaming it, and fetches
//! on its own if that fill fails: one repository's answer never decides another's.

use std::sync::Arc;

use super::fill::{self, Fill, FillState};
use super::links::Kind;
use super::{blob_unknown, resolve_range, ByteRange, Cache, CacheStatus, RangeSpec, ServedBlob};
use crate::error::{Code, RegistryError, Result};
use crate::names::{Digest, RepoName};
use crate::upstream::Upstream;

/// The fills under way, by upstream and digest.
pub(super) type FillKey = (String, Digest);

/// One fill under way: the repository it fetches from, and its state.
pub(super) struct Running {
    repo: RepoName,
    fill: Arc<Fill>,
}

/// A range as asked for, if any.
type Wanted = Option<RangeSpec>;

impl Cache {
    /// The size of a blob of `<ns>/<repo>`: stored, else an upstream HEAD.
    pub async fn blob_size(
        &self,
        ns: &str,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<(u64, CacheStatus)> {
        let (name, upstream) = self.namespace(ns)?;
        if let Some(size) = self.store.blob_size(digest).await? {
            if self
                .blob_belongs(&name, upstream.as_ref(), repo, digest)
                .await?
            {
                return Ok((size, CacheStatus::Hit));
            }
            return Err(blob_unknown(digest));
        }
        let Some(upstream) = upstream else {
            return Err(blob_unknown(digest));
        };
        match upstream.head_blob(repo, digest).await? {
            Some(size) => {
                self.link(&name, repo, Kind::Blob, digest);
                Ok((size, CacheStatus::Miss))
            }
            None => Err(blob_unknown(digest)),
        }
    }

    /// Streams a blob (or a range of it): stored, else from the one upstream fill.
    pub async fn blob(
        &self,
        ns: &str,
        repo: &RepoName,
        digest: &Digest,
        range: Wanted,
    ) -> Result<(ServedBlob, Option<ByteRange>)> {
        let (name, upstream) = self.namespace(ns)?;
        // the stored copy is served only where it belongs: linked, or (held for another
        // repository) confirmed by this one's upstream; otherwise this repository's own fill
        // decides, whatever another repository's fill stores meanwhile
        let mut belongs = self.links.contains(&name, repo, Kind::Blob, digest).await?;
        if !belongs && self.store.blob_size(digest).await?.is_some() {
            let Some(up) = &upstream else {
                return Err(blob_unknown(digest));
            };
            if !self.confirm(up, repo, Kind::Blob, digest).await? {
                return Err(blob_unknown(digest));
            }
            belongs = true;
        }
        if belongs {
            if let Some(found) = self.local_blob(digest, range).await? {
                return Ok(found);
            }
        }
        let Some(upstream) = upstream else {
            return Err(blob_unknown(digest));
        };
        if self.low_on_space() && !self.filling(&upstream, digest) {
            return self.pass_through(&upstream, repo, digest, range).await;
        }
        for attempt in 0..2 {
            let (fill, ours) = self.fill_for(&upstream, repo, digest, attempt == 0).await?;
            // a whole blob is teed from this repository's download; a range, or another
            // repository's download, waits for the blob to be stored
            let stream = ours && range.is_none();
            let settled = fill
                .settle(digest, |state| match state {
                    FillState::Streaming { size, .. } if stream => Some(Ok(Some(*size))),
                    FillState::Verified { size } if stream => Some(Ok(Some(Some(*size)))),
                    FillState::Complete { .. } => Some(Ok(None)),
                    _ => None,
                })
                .await;
            match settled {
                Ok(Some(size)) => {
                    return Ok((
                        ServedBlob {
                            size,
                            body: fill.reader(),
                            status: CacheStatus::Miss,
                        },
                        None,
                    ))
                }
                Ok(None) => {
                    return self
                        .local_blob(digest, range)
                        .await?
                        .ok_or_else(|| blob_unknown(digest))
                }
                Err(e) if ours || attempt > 0 => return Err(e),
                Err(e) => {
                    tracing::debug!(%digest, error = %e.message, "another repository's fill failed; fetching our own")
                }
            }
        }
        Err(blob_unknown(digest))
    }

    /// Makes sure a blob of `<ns>/<repo>` is in the store: fetched once from there if missing.
    pub async fn ensure_blob(&self, ns: &str, repo: &RepoName, digest: &Digest) -> Result<()> {
        let (name, upstream) = self.namespace(ns)?;
        if self.store.blob_size(digest).await?.is_some() {
            return match self
                .blob_belongs(&name, upstream.as_ref(), repo, digest)
                .await?
            {
                true => Ok(()),
                false => Err(blob_unknown(digest)),
            };
        }
        let Some(upstream) = upstream else {
            return Err(blob_unknown(digest));
        };
        for attempt in 0..2 {
            let (fill, ours) = self.fill_for(&upstream, repo, digest, attempt == 0).await?;
            match fill
                .settle(digest, |state| {
                    matches!(state, FillState::Complete { .. }).then_some(Ok(()))
                })
                .await
            {
                Err(e) if !ours && attempt == 0 => {
                    tracing::debug!(%digest, error = %e.message, "another repository's fill failed; fetching our own")
                }
                done => return done,
            }
        }
        Err(blob_unknown(digest))
    }

    /// Whether a blob held here may be served under `<ns>/<repo>`: linked there, else (for a
    /// proxied repository) confirmed by the upstream.
    async fn blob_belongs(
        &self,
        ns: &str,
        upstream: Option<&Arc<Upstream>>,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<bool> {
        if self.links.contains(ns, repo, Kind::Blob, digest).await? {
            return Ok(true);
        }
        match upstream {
            Some(up) => self.confirm(up, repo, Kind::Blob, digest).await,
            None => Ok(false),
        }
    }

    /// Whether free disk space is below `storage.min_free`.
    fn low_on_space(&self) -> bool {
        self.store
            .free_space()
            .is_some_and(|free| free < self.min_free)
    }

    fn filling(&self, upstream: &Upstream, digest: &Digest) -> bool {
        self.fills
            .lock()
            .expect("fills lock")
            .contains_key(&(upstream.name.clone(), digest.clone()))
    }

    /// Streams a blob from the upstream without caching it (the disk is nearly full).
    async fn pass_through(
        &self,
        upstream: &Upstream,
        repo: &RepoName,
        digest: &Digest,
        range: Wanted,
    ) -> Result<(ServedBlob, Option<ByteRange>)> {
        if range.is_some() {
            return Err(RegistryError::new(
                Code::Internal,
                http::StatusCode::INSUFFICIENT_STORAGE,
                "the proxy's storage is full; ranges of uncached blobs cannot be served",
            ));
        }
        tracing::warn!(%digest, "storage below min_free; streaming from upstream without caching");
        let blob = upstream
            .get_blob(repo, digest)
            .await?
            .ok_or_else(|| blob_unknown(digest))?;
        let size = blob.size;
        let body = fill::verified_stream(blob, digest.clone(), self.idle_timeout);
        Ok((
            ServedBlob {
                size,
                body,
                status: CacheStatus::Miss,
            },
            None,
        ))
    }

    async fn local_blob(
        &self,
        digest: &Digest,
        range: Wanted,
    ) -> Result<Option<(ServedBlob, Option<ByteRange>)>> {
        let Some(size) = self.store.blob_size(digest).await? else {
            return Ok(None);
        };
        let range = match range {
            None => None,
            Some(r) => Some(resolve_range(r, size)?),
        };
        let (offset, len) = range.map_or((0, None), |r| (r.start, Some(r.end - r.start + 1)));
        let Some(body) = self.store.read_blob(digest, offset, len).await? else {
            return Ok(None);
        };
        self.note_access(digest);
        Ok(Some((
            ServedBlob {
                size: Some(size),
                body,
                status: CacheStatus::Hit,
            },
            range,
        )))
    }

    /// The fill of a blob of one upstream: joined (true when it fetches from `repo` itself;
    /// another repository's only once the upstream confirmed `repo` holds the blob too), else
    /// started for `repo`.
    async fn fill_for(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        digest: &Digest,
        share: bool,
    ) -> Result<(Arc<Fill>, bool)> {
        let key = (upstream.name.clone(), digest.clone());
        let fill = Arc::new(Fill::default());
        let joined = {
            let mut fills = self.fills.lock().expect("fills lock");
            match fills.get(&key) {
                Some(r) if &r.repo == repo => return Ok((Arc::clone(&r.fill), true)),
                // after another repository's fill failed: a fetch of our own, unlisted, so a
                // later fill of that repository cannot fail this request again
                Some(_) if !share => None,
                Some(r) => Some(Arc::clone(&r.fill)),
                None => {
                    let running = Running {
                        repo: repo.clone(),
                        fill: Arc::clone(&fill),
                    };
                    fills.insert(key.clone(), running);
                    None
                }
            }
        };
        let Some(joined) = joined else {
            self.spawn_fill(upstream, repo, key, Arc::clone(&fill));
            return Ok((fill, true));
        };
        match self.confirm(upstream, repo, Kind::Blob, digest).await? {
            true => Ok((joined, false)),
            false => Err(blob_unknown(digest)),
        }
    }

    /// Runs a fill of `key` from `<upstream>/<repo>` in the background.
    fn spawn_fill(&self, upstream: &Arc<Upstream>, repo: &RepoName, key: FillKey, fill: Arc<Fill>) {
        let (this, up, repo) = (self.self_arc(), Arc::clone(upstream), repo.clone());
        self.spawn_background(async move {
            use futures_util::FutureExt;
            let run = std::panic::AssertUnwindSafe(this.run_fill(&up, &repo, &key, &fill));
            if run.catch_unwind().await.is_err() {
                // never a stuck fill: its key is free again, its waiters get an error
                this.forget_fill(&key, &fill);
                fill.fail(RegistryError::internal("a blob fill panicked"));
            }
        });
    }

    /// Removes a fill from the ones under way, if it is still the one under its key.
    fn forget_fill(&self, key: &FillKey, fill: &Fill) {
        let mut fills = self.fills.lock().expect("fills lock");
        if fills
            .get(key)
            .is_some_and(|r| std::ptr::eq(Arc::as_ptr(&r.fill), fill))
        {
            fills.remove(key);
        }
    }

    async fn run_fill(
        &self,
        upstream: &Arc<Upstream>,
        repo: &RepoName,
        key: &FillKey,
        fill: &Fill,
    ) {
        let digest = &key.1;
        // stored by a fill that finished between the caller's look-up and this one, perhaps
        // for another repository: this one must hold it too
        if let Ok(Some(size)) = self.store.blob_size(digest).await {
            self.forget_fill(key, fill);
            match self
                .blob_belongs(&upstream.name, Some(upstream), repo, digest)
                .await
            {
                Ok(true) => fill.complete(size),
                Ok(false) => fill.not_found(),
                Err(e) => fill.fail(e),
            }
            return;
        }
        let spool = self
            .store
            .spool_dir()
            .join(format!("blob-{}", uuid::Uuid::new_v4()));
        let fills = &self.metrics.cache.fills;
        fills.inc();
        let _counted = Decrement(fills);
        let outcome = match upstream.get_blob(repo, digest).await {
            Ok(None) => Ok(None),
            Ok(Some(blob)) => fill
                .download(blob, digest, spool.clone(), self.idle_timeout)
                .await
                .inspect_err(|e| {
                    if e.code == crate::error::Code::DigestInvalid {
                        upstream.count(crate::metrics::UpstreamOutcome::DigestMismatch);
                    }
                })
                .map(Some),
            Err(e) => Err(e),
        };
        let outcome = match outcome {
            Ok(Some(size)) => match self.store.ingest(&spool, digest, false).await {
                Ok(()) => Ok(Some(size)),
                Err(e) => {
                    let _ = tokio::fs::remove_file(&spool).await;
                    Err(RegistryError::from(e))
                }
            },
            other => other,
        };
        self.forget_fill(key, fill);
        match outcome {
            Ok(Some(size)) => {
                self.link(&upstream.name, repo, Kind::Blob, digest);
                self.index_cached(digest, size);
                fill.complete(size);
                tracing::debug!(%digest, size, "blob cached");
            }
            Ok(None) => fill.not_found(),
            Err(e) => {
                tracing::warn!(%digest, error = %e.message, "blob fill failed; nothing cached");
                fill.fail(e);
            }
        }
    }
}

/// Takes one off a gauge when dropped (a fill ended, however it ended).
struct Decrement<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
