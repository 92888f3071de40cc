//! Which repositories each manifest and blob belongs to. Content is served under
//! `<namespace>/<repository>` only where it is known to belong: fetched from that upstream
//! repository, confirmed there by the upstream, or pushed or mounted there. What a manifest
//! merely names is not linked: an upstream may accept a manifest naming blobs it does not hold
//! (foreign layers), and one repository's manifest must not open another's content.
//!
//! A link is an empty record, `links/<ns>/<repo>/_manifests|_blobs/<alg>-<hex>` for what the
//! upstream showed (not synced: it can be learnt again), and the push records'
//! `pushed/<ns>/<repo>/_manifests|_blobs/...` for what clients pushed (synced by them). Look-ups
//! go to memory first, so a warm request does not touch the disk for them.

use std::sync::Arc;

use sha2::Digest as _;

use crate::error::Result;
use crate::names::{Digest, RepoName};
use crate::store::Store;

/// Manifests and blobs are linked apart: a blob pushed into a repository is not a manifest of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A manifest (served by `manifests/<digest>`).
    Manifest,
    /// A blob: a config or a layer (served by `blobs/<digest>`).
    Blob,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Manifest => "_manifests",
            Kind::Blob => "_blobs",
        }
    }
}

/// The links of every repository, memory first over the store's records.
pub struct Links {
    store: Arc<dyn Store>,
    /// Known answers (present or absent), by a hash of the link.
    known: moka::sync::Cache<[u8; 16], bool>,
}

/// The memory key of a link: a hash, so an entry costs the same whatever the names' length.
fn memory_key(ns: &str, repo: &RepoName, kind: Kind, digest: &Digest) -> [u8; 16] {
    let mut h = sha2::Sha256::new();
    for part in [
        ns,
        "\0",
        repo.as_str(),
        "\0",
        kind.dir(),
        "\0",
        digest.algorithm().as_str(),
        digest.hex(),
    ] {
        h.update(part.as_bytes());
    }
    let full = h.finalize();
    let mut key = [0u8; 16];
    key.copy_from_slice(&full[..16]);
    key
}

fn record(root: &str, ns: &str, repo: &RepoName, kind: Kind, digest: &Digest) -> String {
    format!("{root}/{ns}/{repo}/{}/{}", kind.dir(), digest.tag_prefix())
}

impl Links {
    /// Links over a store, with up to `capacity` answers kept in memory.
    pub fn new(store: Arc<dyn Store>, capacity: u64) -> Links {
        Links {
            store,
            known: moka::sync::Cache::new(capacity),
        }
    }

    /// Whether `digest` belongs to `<ns>/<repo>` as a `kind`.
    pub async fn contains(
        &self,
        ns: &str,
        repo: &RepoName,
        kind: Kind,
        digest: &Digest,
    ) -> Result<bool> {
        let key = memory_key(ns, repo, kind, digest);
        if let Some(known) = self.known.get(&key) {
            return Ok(known);
        }
        let mut found = false;
        for root in ["links", "pushed"] {
            if self
                .store
                .get_meta(&record(root, ns, repo, kind, digest))
                .await?
                .is_some()
            {
                found = true;
                break;
            }
        }
        if found {
            self.known.insert(key, true);
            return Ok(true);
        }
        // a link remembered meanwhile (a push) is never overwritten by this look-up's absence
        Ok(self.known.entry(key).or_insert(false).into_value())
    }

    /// Remembers a link in memory; true when it was not known to hold already (the caller then
    /// records it with [`Links::record`]).
    pub fn remember(&self, ns: &str, repo: &RepoName, kind: Kind, digest: &Digest) -> bool {
        let key = memory_key(ns, repo, kind, digest);
        if self.known.get(&key) == Some(true) {
            return false;
        }
        self.known.insert(key, true);
        true
    }

    /// Writes the record of a link learnt from the upstream (not synced; unless it exists).
    pub async fn record(
        &self,
        ns: &str,
        repo: &RepoName,
        kind: Kind,
        digest: &Digest,
    ) -> std::io::Result<()> {
        let key = record("links", ns, repo, kind, digest);
        if self.store.get_meta(&key).await?.is_none() {
            self.store.put_cache_meta(&key, b"").await?;
        }
        Ok(())
    }

    /// Forgets a link (a pushed manifest was deleted): memory and the upstream-learnt record.
    pub async fn forget(
        &self,
        ns: &str,
        repo: &RepoName,
        kind: Kind,
        digest: &Digest,
    ) -> std::io::Result<()> {
        self.known.invalidate(&memory_key(ns, repo, kind, digest));
        self.store
            .delete_meta(&record("links", ns, repo, kind, digest))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn links_are_per_repository_and_kind_and_survive_a_new_index() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(crate::store::fs::FsStore::open(dir.path()).unwrap());
        let links = Links::new(Arc::clone(&store), 1000);
        let (a, b): (RepoName, RepoName) = ("team/a".parse().unwrap(), "team/b".parse().unwrap());
        let d = Digest::sha256_of(b"layer");
        assert!(!links.contains("up", &a, Kind::Blob, &d).await.unwrap());
        assert!(links.remember("up", &a, Kind::Blob, &d), "new in memory");
        assert!(
            !links.remember("up", &a, Kind::Blob, &d),
            "known the second time"
        );
        links.record("up", &a, Kind::Blob, &d).await.unwrap();
        assert!(links.contains("up", &a, Kind::Blob, &d).await.unwrap());
        assert!(
            !links.contains("up", &b, Kind::Blob, &d).await.unwrap(),
            "another repository"
        );
        assert!(
            !links.contains("other", &a, Kind::Blob, &d).await.unwrap(),
            "another namespace"
        );
        assert!(
            !links.contains("up", &a, Kind::Manifest, &d).await.unwrap(),
            "a blob is no manifest"
        );

        let fresh = Links::new(Arc::clone(&store), 1000);
        assert!(
            fresh.contains("up", &a, Kind::Blob, &d).await.unwrap(),
            "read back from its record"
        );
        store
            .put_meta(
                &format!("pushed/internal/{b}/_manifests/{}", d.tag_prefix()),
                b"",
            )
            .await
            .unwrap();
        assert!(
            fresh
                .contains("internal", &b, Kind::Manifest, &d)
                .await
                .unwrap(),
            "a push record links"
        );
        fresh.forget("up", &a, Kind::Blob, &d).await.unwrap();
        assert!(!fresh.contains("up", &a, Kind::Blob, &d).await.unwrap());
    }
}
