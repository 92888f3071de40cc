//! What users pushed: tags, manifest links and referrers, kept as metadata records.
//!
//! `pushed/<ns>/<repo>/_tags/<tag>` holds a digest; `_manifests/<alg>-<hex>` marks a manifest
//! pushed to the repository; `_referrers/<subject alg-hex>/<alg-hex>` holds a descriptor.

use std::sync::Arc;

use crate::error::Result;
use crate::manifest::Descriptor;
use crate::names::{Digest, RepoName, Tag};
use crate::store::Store;

/// Pushed tags, manifests and referrers, per namespace and repository.
#[derive(Clone)]
pub struct Records {
    store: Arc<dyn Store>,
    /// Pushed-tag look-ups (including "not pushed"), kept in memory: every pull by tag asks.
    /// This process is the only writer of tag records, and every write goes through here.
    tags: moka::sync::Cache<String, Option<Digest>>,
}

fn key(ns: &str, repo: &RepoName, rest: &str) -> String {
    format!("pushed/{ns}/{repo}/{rest}")
}

impl Records {
    /// Records over a store.
    pub fn new(store: Arc<dyn Store>) -> Records {
        Records {
            store,
            tags: moka::sync::Cache::new(100_000),
        }
    }

    /// The digest a pushed tag points at.
    pub async fn tag(&self, ns: &str, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        let k = key(ns, repo, &format!("_tags/{tag}"));
        if let Some(known) = self.tags.get(&k) {
            return Ok(known);
        }
        let digest = match self.store.get_meta(&k).await? {
            Some(raw) => std::str::from_utf8(&raw)
                .ok()
                .and_then(|s| s.trim().parse().ok()),
            None => None,
        };
        self.tags.insert(k, digest.clone());
        Ok(digest)
    }

    /// Points a pushed tag at a digest (durably, before the push is acknowledged).
    pub async fn set_tag(
        &self,
        ns: &str,
        repo: &RepoName,
        tag: &Tag,
        digest: &Digest,
    ) -> Result<()> {
        let k = key(ns, repo, &format!("_tags/{tag}"));
        self.tags.invalidate(&k);
        let written = self.store.put_meta(&k, digest.to_string().as_bytes()).await;
        self.tags.invalidate(&k);
        written?;
        Ok(())
    }

    /// Every pushed tag of a repository.
    pub async fn tags(&self, ns: &str, repo: &RepoName) -> Result<Vec<String>> {
        Ok(self.store.list_meta(&key(ns, repo, "_tags")).await?)
    }

    /// Marks a manifest as pushed to a repository.
    pub async fn link_manifest(&self, ns: &str, repo: &RepoName, digest: &Digest) -> Result<()> {
        self.store
            .put_meta(
                &key(ns, repo, &format!("_manifests/{}", digest.tag_prefix())),
                b"",
            )
            .await?;
        Ok(())
    }

    /// Whether a manifest was pushed to a repository.
    pub async fn has_manifest(&self, ns: &str, repo: &RepoName, digest: &Digest) -> Result<bool> {
        Ok(self
            .store
            .get_meta(&key(
                ns,
                repo,
                &format!("_manifests/{}", digest.tag_prefix()),
            ))
            .await?
            .is_some())
    }

    /// Marks a blob as pushed to (or mounted into) a repository.
    pub async fn link_blob(&self, ns: &str, repo: &RepoName, digest: &Digest) -> Result<()> {
        self.store
            .put_meta(
                &key(ns, repo, &format!("_blobs/{}", digest.tag_prefix())),
                b"",
            )
            .await?;
        Ok(())
    }

    /// Whether a blob was pushed to (or mounted into) a repository.
    pub async fn has_blob(&self, ns: &str, repo: &RepoName, digest: &Digest) -> Result<bool> {
        Ok(self
            .store
            .get_meta(&key(ns, repo, &format!("_blobs/{}", digest.tag_prefix())))
            .await?
            .is_some())
    }

    /// Every manifest pushed to a repository.
    pub async fn manifests(&self, ns: &str, repo: &RepoName) -> Result<Vec<Digest>> {
        let names = self.store.list_meta(&key(ns, repo, "_manifests")).await?;
        Ok(names
            .iter()
            .filter_map(|n| n.replacen('-', ":", 1).parse().ok())
            .collect())
    }

    /// Removes a blob's push record from a repository.
    pub async fn unlink_blob(&self, ns: &str, repo: &RepoName, digest: &Digest) -> Result<()> {
        self.store
            .delete_meta(&key(ns, repo, &format!("_blobs/{}", digest.tag_prefix())))
            .await?;
        Ok(())
    }

    /// Records a pushed manifest that names `subject`.
    pub async fn add_referrer(
        &self,
        ns: &str,
        repo: &RepoName,
        subject: &Digest,
        d: &Descriptor,
    ) -> Result<()> {
        let json = serde_json::to_vec(d).map_err(crate::error::RegistryError::internal)?;
        let k = key(
            ns,
            repo,
            &format!(
                "_referrers/{}/{}",
                subject.tag_prefix(),
                d.digest.tag_prefix()
            ),
        );
        self.store.put_meta(&k, &json).await?;
        Ok(())
    }

    /// The pushed referrers of a subject.
    pub async fn referrers(
        &self,
        ns: &str,
        repo: &RepoName,
        subject: &Digest,
    ) -> Result<Vec<Descriptor>> {
        let dir = key(ns, repo, &format!("_referrers/{}", subject.tag_prefix()));
        let mut out = Vec::new();
        for name in self.store.list_meta(&dir).await? {
            if let Some(raw) = self.store.get_meta(&format!("{dir}/{name}")).await? {
                if let Ok(d) = serde_json::from_slice::<Descriptor>(&raw) {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// Removes a pushed tag; false when there was none.
    pub async fn delete_tag(&self, ns: &str, repo: &RepoName, tag: &Tag) -> Result<bool> {
        let k = key(ns, repo, &format!("_tags/{tag}"));
        let existed = self.store.get_meta(&k).await?.is_some();
        let deleted = self.store.delete_meta(&k).await;
        self.tags.invalidate(&k);
        deleted?;
        Ok(existed)
    }

    /// Removes a pushed manifest from a repository: its link, the tags pointing at it, and its
    /// referrer entry under `subject`; false when it was not pushed here.
    pub async fn delete_manifest(
        &self,
        ns: &str,
        repo: &RepoName,
        digest: &Digest,
        subject: Option<&Digest>,
    ) -> Result<bool> {
        if !self.has_manifest(ns, repo, digest).await? {
            return Ok(false);
        }
        for tag in self.tags(ns, repo).await? {
            let Ok(t) = tag.parse::<Tag>() else { continue };
            if self.tag(ns, repo, &t).await?.as_ref() == Some(digest) {
                self.delete_tag(ns, repo, &t).await?;
            }
        }
        if let Some(s) = subject {
            let k = key(
                ns,
                repo,
                &format!("_referrers/{}/{}", s.tag_prefix(), digest.tag_prefix()),
            );
            self.store.delete_meta(&k).await?;
        }
        self.store
            .delete_meta(&key(
                ns,
                repo,
                &format!("_manifests/{}", digest.tag_prefix()),
            ))
            .await?;
        Ok(true)
    }

    /// Stores a pushed atomic signature (one JSON object) of a manifest.
    pub async fn add_signature(
        &self,
        ns: &str,
        repo: &RepoName,
        digest: &Digest,
        name: &str,
        json: &[u8],
    ) -> Result<()> {
        let id = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(name.as_bytes()));
        let k = key(
            ns,
            repo,
            &format!("_signatures/{}/{id}", digest.tag_prefix()),
        );
        self.store.put_meta(&k, json).await?;
        Ok(())
    }

    /// The pushed atomic signatures of a manifest.
    pub async fn signatures(
        &self,
        ns: &str,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Vec<serde_json::Value>> {
        let dir = key(ns, repo, &format!("_signatures/{}", digest.tag_prefix()));
        let mut out = Vec::new();
        for name in self.store.list_meta(&dir).await? {
            if let Some(raw) = self.store.get_meta(&format!("{dir}/{name}")).await? {
                if let Ok(v) = serde_json::from_slice(&raw) {
                    out.push(v);
                }
            }
        }
        Ok(out)
    }

    /// Marks a blob as pushed content: never evicted.
    pub async fn pin(&self, digest: &Digest) -> Result<()> {
        self.store
            .put_meta(&format!("pinned/{}", digest.tag_prefix()), b"")
            .await?;
        Ok(())
    }

    /// Every pinned blob.
    pub async fn pinned(&self) -> Result<Vec<Digest>> {
        let names = self.store.list_meta("pinned").await?;
        Ok(names
            .iter()
            .filter_map(|n| n.replacen('-', ":", 1).parse().ok())
            .collect())
    }
}
