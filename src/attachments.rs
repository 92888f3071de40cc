//! Cosign attachments next to every image: signatures, attestations, SBOMs and OCI referrers.
//!
//! When a manifest is pulled, its attachments are resolved from the upstream alongside (never
//! in front of) the answer: the `sha256-<hex>.sig/.att/.sbom` tags, and the OCI 1.1 referrers
//! (the API, else the `sha256-<hex>` fallback tag). Each attachment's manifest and blobs go
//! into the cache, digest-checked like all content, so verification against the proxy works
//! when the upstream is gone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use serde::Serialize;

use crate::cache::singleflight::SingleFlight;
use crate::cache::{Cache, ServedManifest};
use crate::config::{AttachmentKind, Config};
use crate::error::{Code, RegistryError, Result};
use crate::manifest::{Descriptor, Manifest};
use crate::names::{Digest, Reference, RepoName};

/// The most attachments resolved for one image (what an upstream lists beyond is ignored).
pub const MAX_ATTACHMENTS: usize = 64;

/// Attachment manifests (with their blobs) fetched at once, for all images together.
const CONCURRENT_FETCHES: usize = 16;

/// How long a resolved set is reused before the (cheap, cached) resolution runs again.
const SET_TTL: Duration = Duration::from_secs(5);

/// How long a manifest GET waits before its attachments are looked up in the background
/// (anything that needs them, a policy or a client asking, looks them up at once).
const PREFETCH_DELAY: Duration = Duration::from_millis(300);

/// What an attachment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A `.sig` signature manifest.
    Signature,
    /// A `.att` attestation manifest.
    Attestation,
    /// A `.sbom` SBOM manifest.
    Sbom,
    /// An OCI referrer (e.g. a cosign v3 bundle).
    Referrer,
}

/// Takes an image off the scheduled look-ups when its look-up ends (or is dropped).
struct Unschedule<'a>(&'a Attachments, &'a SetKey);

impl Drop for Unschedule<'_> {
    fn drop(&mut self) {
        self.0
            .scheduled
            .lock()
            .expect("scheduled look-ups")
            .remove(self.1);
    }
}

/// One attachment of an image.
#[derive(Debug, Clone, Serialize)]
pub struct Attachment {
    /// What it is.
    pub kind: Kind,
    /// The tag it was found under, for the tag scheme.
    pub tag: Option<String>,
    /// The attachment manifest's descriptor, with its artifact type and annotations.
    pub descriptor: Descriptor,
}

/// All attachments found for one image manifest.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AttachmentSet {
    /// The attachments, tag-scheme ones first.
    pub items: Vec<Attachment>,
}

impl AttachmentSet {
    /// Roughly the memory a set takes (annotations come from the upstream), for cache weighers.
    pub fn weight(&self) -> usize {
        let annotations = |d: &Descriptor| {
            d.annotations.as_ref().map_or(0, |a| {
                a.iter()
                    .map(|(k, v)| k.len() + v.to_string().len() + 32)
                    .sum()
            })
        };
        64 + self
            .items
            .iter()
            .map(|a| {
                256 + a.descriptor.media_type.len()
                    + a.descriptor.artifact_type.as_ref().map_or(0, String::len)
                    + annotations(&a.descriptor)
            })
            .sum::<usize>()
    }
}

type SetKey = (String, RepoName, Digest);

/// Resolves, caches and serves the attachments of proxied images.
pub struct Attachments {
    cache: Arc<Cache>,
    kinds: HashMap<String, Vec<AttachmentKind>>,
    flights: SingleFlight<SetKey, Arc<AttachmentSet>>,
    sets: moka::future::Cache<SetKey, Arc<AttachmentSet>>,
    wait: Duration,
    fetching: tokio::sync::Semaphore,
    /// Images whose background look-up is scheduled: one each, however many GETs ask.
    scheduled: std::sync::Mutex<std::collections::HashSet<SetKey>>,
}

impl Attachments {
    /// Builds the resolver from the per-upstream `attachments` settings.
    pub fn new(config: &Config, cache: Arc<Cache>) -> Arc<Attachments> {
        let kinds = config
            .upstreams
            .iter()
            .map(|u| (u.name.clone(), u.attachments.clone()))
            .collect();
        Arc::new(Attachments {
            cache,
            kinds,
            flights: SingleFlight::default(),
            sets: moka::future::Cache::builder()
                .weigher(|_, set: &Arc<AttachmentSet>| {
                    u32::try_from(set.weight()).unwrap_or(u32::MAX)
                })
                .max_capacity(32 << 20)
                .time_to_live(SET_TTL)
                .build(),
            wait: config.cache.attachment_wait.0,
            fetching: tokio::sync::Semaphore::new(CONCURRENT_FETCHES),
            scheduled: std::sync::Mutex::default(),
        })
    }

    fn kinds_for(&self, ns: &str) -> &[AttachmentKind] {
        if matches!(self.cache.namespace(ns), Ok((_, None))) {
            return &AttachmentKind::ALL; // local namespaces: only local lookups
        }
        self.cache
            .canonical_namespace(ns)
            .and_then(|n| self.kinds.get(n))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Forgets the resolved set of an image (after something was pushed for it).
    pub async fn invalidate(&self, ns: &str, repo: &RepoName, digest: &Digest) {
        self.sets
            .invalidate(&(ns.to_string(), repo.clone(), digest.clone()))
            .await;
    }

    /// Starts resolving an image's attachments in the background after it was served.
    pub async fn prefetch(self: &Arc<Self>, ns: &str, repo: &RepoName, served: &ServedManifest) {
        if self.kinds_for(ns).is_empty() {
            return;
        }
        let key = (ns.to_string(), repo.clone(), served.digest.clone());
        // no attachments of attachments
        if self.sets.contains_key(&key) || served.attachment {
            return;
        }
        if !self
            .scheduled
            .lock()
            .expect("scheduled look-ups")
            .insert(key.clone())
        {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let _done = Unschedule(&this, &key);
            // after the pull that asked for the manifest has fetched its blobs: the lookups
            // (several upstream requests) would otherwise compete with it
            tokio::time::sleep(PREFETCH_DELAY).await;
            let _ = this.resolve(&key.0, &key.1, &key.2).await;
        });
    }

    /// Resolves an image's attachments now (one resolution per image at a time).
    pub async fn resolve(
        self: &Arc<Self>,
        ns: &str,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Arc<AttachmentSet>> {
        let key = (ns.to_string(), repo.clone(), digest.clone());
        if let Some(set) = self.sets.get(&key).await {
            return Ok(set);
        }
        let this = Arc::clone(self);
        let k = key.clone();
        // boxed: resolving asks the upstream, and would otherwise deepen every request's future
        self.flights
            .run(
                key,
                Box::pin(async move {
                    let set = Arc::new(this.resolve_now(&k.0, &k.1, &k.2).await?);
                    this.sets.insert(k, Arc::clone(&set)).await;
                    Ok(set)
                }),
            )
            .await
    }

    /// Waits for an image's attachments, at most `deadline` (for callers that need them).
    pub async fn wait_for(
        self: &Arc<Self>,
        ns: &str,
        repo: &RepoName,
        digest: &Digest,
        deadline: Duration,
    ) -> Result<Arc<AttachmentSet>> {
        tokio::time::timeout(deadline, self.resolve(ns, repo, digest))
            .await
            .map_err(|_| {
                RegistryError::upstream_timeout(format!(
                    "attachments of {digest} not resolved within {deadline:?}"
                ))
            })?
    }

    /// The merged referrers of a digest: upstream referrers plus tag-scheme attachments,
    /// without duplicates, optionally filtered by artifact type.
    pub async fn referrers(
        self: &Arc<Self>,
        ns: &str,
        repo: &RepoName,
        digest: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>> {
        self.cache.namespace(ns)?;
        let set = match self.wait_for(ns, repo, digest, self.wait).await {
            Ok(set) => set,
            Err(e) => {
                tracing::warn!(%digest, error = %e.message, "referrers answered without attachments");
                Arc::new(AttachmentSet::default())
            }
        };
        let mut seen = std::collections::HashSet::new();
        Ok(set
            .items
            .iter()
            .map(|a| a.descriptor.clone())
            .filter(|d| seen.insert(d.digest.clone()))
            .filter(|d| artifact_type.is_none_or(|t| d.artifact_type.as_deref() == Some(t)))
            .collect())
    }

    async fn resolve_now(
        &self,
        ns: &str,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<AttachmentSet> {
        let kinds = self.kinds_for(ns).to_vec();
        let tagged = kinds
            .iter()
            .filter_map(|k| k.suffix().map(|s| (*k, s)))
            .map(|(k, suffix)| {
                let tag = format!("{}{suffix}", digest.tag_prefix());
                self.fetch_tagged(ns, repo, k, tag)
            });
        let tagged = join_all(tagged);
        let referrers = async {
            if kinds.contains(&AttachmentKind::Referrers) {
                self.fetch_referrers(ns, repo, digest).await
            } else {
                Vec::new()
            }
        };
        let pushed = async {
            let name = self.cache.canonical_namespace(ns).unwrap_or(ns).to_string();
            self.cache
                .records
                .referrers(&name, repo, digest)
                .await
                .unwrap_or_default()
        };
        let (tagged, referrers, pushed) = tokio::join!(tagged, referrers, pushed);
        let mut items: Vec<Attachment> = tagged.into_iter().flatten().collect();
        items.extend(referrers);
        items.extend(pushed.into_iter().map(|descriptor| Attachment {
            kind: Kind::Referrer,
            tag: None,
            descriptor,
        }));
        if items.len() > MAX_ATTACHMENTS {
            tracing::warn!(%repo, %digest, found = items.len(), "more attachments than {MAX_ATTACHMENTS}; the rest are ignored");
            items.truncate(MAX_ATTACHMENTS);
        }
        tracing::debug!(%repo, %digest, found = items.len(), "attachments resolved");
        let counted = &self.cache.metrics().attachments;
        for item in &items {
            counted.resolved(item.kind as usize);
        }
        if items.is_empty() {
            counted.missing.inc();
        }
        Ok(AttachmentSet { items })
    }

    /// Fetches one tag-scheme attachment with its blobs; `None` when there is none.
    async fn fetch_tagged(
        &self,
        ns: &str,
        repo: &RepoName,
        kind: AttachmentKind,
        tag: String,
    ) -> Option<Attachment> {
        let reference: Reference = tag.parse().ok()?;
        let _turn = self.fetching.acquire().await.ok()?;
        let served = match self.cache.manifest(ns, repo, &reference).await {
            Ok(m) => m,
            Err(e) if e.code == Code::ManifestUnknown => return None,
            Err(e) => {
                self.cache.metrics().attachments.fetch_errors.inc();
                tracing::warn!(%repo, %tag, error = %e.message, "cannot fetch attachment");
                return None;
            }
        };
        let manifest = Manifest::parse(&served.bytes).ok()?;
        self.fetch_blobs(ns, repo, &manifest).await;
        let kind = match kind {
            AttachmentKind::Sig => Kind::Signature,
            AttachmentKind::Att => Kind::Attestation,
            AttachmentKind::Sbom => Kind::Sbom,
            AttachmentKind::Referrers => Kind::Referrer,
        };
        let descriptor = Descriptor {
            media_type: served.media_type.clone(),
            digest: served.digest.clone(),
            size: served.bytes.len() as i64,
            artifact_type: Some(artifact_type_of(&manifest)),
            annotations: manifest.annotations.clone(),
            platform: None,
        };
        Some(Attachment {
            kind,
            tag: Some(tag),
            descriptor,
        })
    }

    /// Fetches the referrers (API, else fallback tag) and each referrer's manifest and blobs.
    async fn fetch_referrers(&self, ns: &str, repo: &RepoName, digest: &Digest) -> Vec<Attachment> {
        let listed = match self.cache.upstream_referrers(ns, repo, digest).await {
            Ok(Some(list)) => list,
            Ok(None) => self.fallback_referrers(ns, repo, digest).await,
            Err(e) => {
                self.cache.metrics().attachments.fetch_errors.inc();
                tracing::warn!(%repo, %digest, error = %e.message, "cannot list referrers");
                Vec::new()
            }
        };
        if listed.len() > MAX_ATTACHMENTS {
            tracing::warn!(%repo, %digest, listed = listed.len(), "more referrers than {MAX_ATTACHMENTS}; the rest are ignored");
        }
        let fetched = listed
            .into_iter()
            .take(MAX_ATTACHMENTS)
            .map(|d| async move {
                let _turn = self.fetching.acquire().await.ok()?;
                let served = self
                    .cache
                    .manifest(ns, repo, &Reference::Digest(d.digest.clone()))
                    .await;
                match served.ok().and_then(|m| Manifest::parse(&m.bytes).ok()) {
                    Some(m) => {
                        self.fetch_blobs(ns, repo, &m).await;
                        let mut d = d;
                        d.artifact_type = d.artifact_type.or_else(|| Some(artifact_type_of(&m)));
                        Some(Attachment {
                            kind: Kind::Referrer,
                            tag: None,
                            descriptor: d,
                        })
                    }
                    None => {
                        self.cache.metrics().attachments.fetch_errors.inc();
                        tracing::warn!(%repo, digest = %d.digest, "cannot fetch referrer manifest");
                        None
                    }
                }
            });
        join_all(fetched).await.into_iter().flatten().collect()
    }

    /// The referrers tag schema: an index tagged `sha256-<hex>`.
    async fn fallback_referrers(
        &self,
        ns: &str,
        repo: &RepoName,
        digest: &Digest,
    ) -> Vec<Descriptor> {
        let Ok(reference) = digest.tag_prefix().parse::<Reference>() else {
            return Vec::new();
        };
        match self.cache.manifest(ns, repo, &reference).await {
            Ok(m) => Manifest::parse(&m.bytes)
                .map(|i| i.manifests)
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    async fn fetch_blobs(&self, ns: &str, repo: &RepoName, manifest: &Manifest) {
        let blobs = manifest.config.iter().chain(manifest.layers.iter()).map(|d| async move {
            if let Err(e) = self.cache.ensure_blob(ns, repo, &d.digest).await {
                self.cache.metrics().attachments.fetch_errors.inc();
                tracing::warn!(%repo, digest = %d.digest, error = %e.message, "cannot fetch attachment blob");
            }
        });
        join_all(blobs).await;
    }
}

/// The artifact type an attachment is presented with: its own, else its first layer's type.
pub fn artifact_type_of(m: &Manifest) -> String {
    m.artifact_type
        .clone()
        .or_else(|| m.layers.first().map(|l| l.media_type.clone()))
        .or_else(|| m.config.as_ref().map(|c| c.media_type.clone()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(json: &str) -> Manifest {
        Manifest::parse(json.as_bytes()).unwrap()
    }

    const CFG: &str = r#"{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}"#;

    #[test]
    fn artifact_types() {
        let sig = manifest(&format!(
            r#"{{"schemaVersion":2,"config":{CFG},"layers":[{{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}}]}}"#
        ));
        assert_eq!(
            artifact_type_of(&sig),
            "application/vnd.dev.cosign.simplesigning.v1+json"
        );
        let bundle = manifest(&format!(
            r#"{{"schemaVersion":2,"artifactType":"application/vnd.dev.sigstore.bundle.v0.3+json","config":{CFG},"layers":[]}}"#
        ));
        assert_eq!(
            artifact_type_of(&bundle),
            "application/vnd.dev.sigstore.bundle.v0.3+json"
        );
    }
}
