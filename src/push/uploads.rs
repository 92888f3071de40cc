//! Blob upload sessions: kept on disk so they survive a restart, verified before they become
//! visible, removed when finished, cancelled or expired.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::cache::links::Kind;
use crate::cache::Cache;
use crate::error::{Code, RegistryError, Result};
use crate::manifest::{self, Descriptor, Manifest, MAX_MANIFEST_SIZE};
use crate::names::{Algorithm, Digest, Reference, RepoName};
use crate::store::ByteStream;

#[derive(Serialize, Deserialize)]
struct Session {
    ns: String,
    repo: String,
    created: u64,
}

/// Upload sessions under `<storage>/uploads/<id>/{session.json,data}`.
pub struct Uploads {
    dir: PathBuf,
    cache: Arc<Cache>,
    ttl: Duration,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

fn unknown_upload() -> RegistryError {
    RegistryError::of(Code::BlobUploadUnknown, "blob upload unknown")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Uploads {
    /// Opens the upload area, removing sessions older than `ttl`.
    pub fn open(dir: PathBuf, cache: Arc<Cache>, ttl: Duration) -> std::io::Result<Arc<Uploads>> {
        std::fs::create_dir_all(&dir)?;
        let uploads = Arc::new(Uploads {
            dir,
            cache,
            ttl,
            locks: Mutex::default(),
        });
        uploads.sweep(true);
        let weak = Arc::downgrade(&uploads);
        let every = ttl.clamp(Duration::from_secs(1), Duration::from_secs(600));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(u) = weak.upgrade() else { return };
                let _ = tokio::task::spawn_blocking(move || u.sweep(false)).await;
            }
        });
        Ok(uploads)
    }

    /// Removes abandoned sessions: older than the TTL or unreadable, and at opening also those
    /// a stop left half-made (no data).
    fn sweep(&self, opening: bool) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let session = std::fs::read(e.path().join("session.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<Session>(&b).ok());
            let expired =
                session.is_none_or(|s| now().saturating_sub(s.created) > self.ttl.as_secs());
            let torn = opening && !e.path().join("data").exists();
            if expired || torn {
                tracing::info!(upload = %e.file_name().to_string_lossy(), "removing expired upload");
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    fn lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(
            self.locks
                .lock()
                .expect("upload locks")
                .entry(id.to_string())
                .or_default(),
        )
    }

    fn session_dir(&self, id: &str) -> Result<PathBuf> {
        let ok = id.len() == 36 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
        if !ok {
            return Err(unknown_upload());
        }
        Ok(self.dir.join(id))
    }

    /// Checks the session exists and belongs to this repository.
    async fn check(&self, id: &str, ns: &str, repo: &RepoName) -> Result<PathBuf> {
        let dir = self.session_dir(id)?;
        let raw = tokio::fs::read(dir.join("session.json"))
            .await
            .map_err(|_| unknown_upload())?;
        let s: Session = serde_json::from_slice(&raw).map_err(|_| unknown_upload())?;
        if s.ns != ns
            || s.repo != repo.as_str()
            || !tokio::fs::try_exists(dir.join("data"))
                .await
                .unwrap_or(false)
        {
            return Err(unknown_upload());
        }
        Ok(dir)
    }

    /// Starts a session; returns its id.
    pub async fn start(&self, ns: &str, repo: &RepoName) -> Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        let dir = self.dir.join(&id);
        tokio::fs::create_dir_all(&dir).await?;
        tokio::fs::write(dir.join("data"), b"").await?;
        let session = Session {
            ns: ns.to_string(),
            repo: repo.to_string(),
            created: now(),
        };
        let json = serde_json::to_vec(&session).map_err(RegistryError::internal)?;
        crate::store::fs::write_atomic(&dir, &dir.join("session.json"), &json).await?;
        Ok(id)
    }

    /// The bytes received so far.
    pub async fn size(&self, id: &str, ns: &str, repo: &RepoName) -> Result<u64> {
        let dir = self.check(id, ns, repo).await?;
        Ok(tokio::fs::metadata(dir.join("data")).await?.len())
    }

    /// Checks the session and takes its lock; checked again under the lock, as a request that
    /// held it before may have finished or cancelled the session.
    async fn locked(
        &self,
        id: &str,
        ns: &str,
        repo: &RepoName,
    ) -> Result<(PathBuf, tokio::sync::OwnedMutexGuard<()>)> {
        self.check(id, ns, repo).await?;
        let guard = self.lock(id).lock_owned().await;
        let dir = self.check(id, ns, repo).await?;
        Ok((dir, guard))
    }

    /// Appends a chunk; `start`, from `Content-Range`, must be the current size (else 416).
    pub async fn append(
        &self,
        id: &str,
        ns: &str,
        repo: &RepoName,
        start: Option<u64>,
        body: ByteStream,
    ) -> Result<u64> {
        let (dir, _guard) = self.locked(id, ns, repo).await?;
        let size = tokio::fs::metadata(dir.join("data")).await?.len();
        if start.is_some_and(|s| s != size) {
            return Err(RegistryError::new(
                Code::BlobUploadInvalid,
                http::StatusCode::RANGE_NOT_SATISFIABLE,
                format!(
                    "chunk starts at {}, upload has {size} bytes",
                    start.unwrap_or(0)
                ),
            ));
        }
        append_stream(dir.join("data"), body).await
    }

    /// Finishes a session: appends the last chunk, checks the digest, moves the blob into the
    /// store (pinned) and removes the session. On a mismatch nothing is stored.
    pub async fn finish(
        &self,
        id: &str,
        ns: &str,
        repo: &RepoName,
        digest: &Digest,
        body: ByteStream,
    ) -> Result<()> {
        let (dir, _guard) = self.locked(id, ns, repo).await?;
        let data = dir.join("data");
        append_stream(data.clone(), body).await?;
        let actual = hash_file(data.clone(), digest.algorithm()).await?;
        if &actual != digest {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            return Err(RegistryError::of(
                Code::DigestInvalid,
                format!("content is {actual}, not {digest}"),
            ));
        }
        let lease = self.cache.lease(digest).await;
        // the store takes a second name of the data: until the session is removed below, a stop
        // leaves it whole, and the client's retried PUT finishes it
        let spool = self.cache.store().spool_dir().join(id);
        tokio::task::spawn_blocking({
            let (data, spool) = (data.clone(), spool.clone());
            move || {
                std::fs::hard_link(&data, &spool)
                    .or_else(|_| std::fs::copy(&data, &spool).map(drop))
            }
        })
        .await
        .map_err(RegistryError::internal)??;
        self.cache.store().ingest(&spool, digest, true).await?;
        self.cache.pin(&lease).await?;
        let (name, _) = self.cache.namespace(ns)?;
        self.cache
            .link_pushed(&name, repo, Kind::Blob, digest)
            .await?;
        remove_session(&dir).await?;
        self.locks.lock().expect("upload locks").remove(id);
        Ok(())
    }

    /// Cancels a session.
    pub async fn cancel(&self, id: &str, ns: &str, repo: &RepoName) -> Result<()> {
        let (dir, _guard) = self.locked(id, ns, repo).await?;
        remove_session(&dir).await?;
        self.locks.lock().expect("upload locks").remove(id);
        Ok(())
    }
}

/// Removes a session's directory, its record first: a stop half-way leaves no session that
/// looks alive.
async fn remove_session(dir: &std::path::Path) -> std::io::Result<()> {
    tokio::fs::remove_file(dir.join("session.json")).await?;
    match tokio::fs::remove_dir_all(dir).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

async fn append_stream(path: PathBuf, mut body: ByteStream) -> Result<u64> {
    let mut file = Some(
        tokio::task::spawn_blocking({
            let p = path.clone();
            move || open_unshared(&p)
        })
        .await
        .map_err(RegistryError::internal)??,
    );
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            RegistryError::of(Code::BlobUploadInvalid, format!("upload body failed: {e}"))
        })?;
        let mut f = file.take().expect("file present");
        f = tokio::task::spawn_blocking(move || f.write_all(&chunk).map(|_| f))
            .await
            .map_err(RegistryError::internal)??;
        file = Some(f);
    }
    let f = file.expect("file present");
    let size = tokio::task::spawn_blocking(move || {
        f.sync_all()?;
        f.metadata().map(|m| m.len())
    })
    .await
    .map_err(RegistryError::internal)??;
    Ok(size)
}

/// Opens a session's data for appending. After a stop or an error inside `finish`, the data may
/// also be a stored blob (a second name of the same file): it is copied first, so an append
/// never changes what the store serves.
fn open_unshared(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata(path)?.nlink() > 1 {
        let copy = path.with_extension("unshared");
        std::fs::copy(path, &copy)?;
        std::fs::rename(&copy, path)?;
    }
    std::fs::OpenOptions::new().append(true).open(path)
}

async fn hash_file(path: PathBuf, alg: Algorithm) -> Result<Digest> {
    let d = tokio::task::spawn_blocking(move || -> std::io::Result<Digest> {
        let mut f = std::fs::File::open(path)?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut h256 = sha2::Sha256::new();
        let mut h512 = sha2::Sha512::new();
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            match alg {
                Algorithm::Sha256 => h256.update(&buf[..n]),
                Algorithm::Sha512 => h512.update(&buf[..n]),
            }
        }
        Ok(match alg {
            Algorithm::Sha256 => Digest::from_raw(alg, &h256.finalize()),
            Algorithm::Sha512 => Digest::from_raw(alg, &h512.finalize()),
        })
    })
    .await
    .map_err(RegistryError::internal)??;
    Ok(d)
}

/// What a manifest push produced.
pub struct Pushed {
    /// The manifest's digest.
    pub digest: Digest,
    /// The digest of its subject, if any.
    pub subject: Option<Digest>,
}

/// Validates and stores a pushed manifest: every referenced blob or child must exist (locally,
/// or upstream for a proxied repository); the tag is recorded; a subject makes it a referrer.
pub async fn put_manifest(
    cache: &Cache,
    ns: &str,
    repo: &RepoName,
    reference: &Reference,
    content_type: Option<&str>,
    body: Bytes,
) -> Result<Pushed> {
    if body.len() > MAX_MANIFEST_SIZE {
        return Err(RegistryError::new(
            Code::ManifestInvalid,
            http::StatusCode::PAYLOAD_TOO_LARGE,
            "manifest exceeds 4 MiB",
        ));
    }
    let (name, _) = cache.namespace(ns)?;
    let m = Manifest::parse(&body)?;
    let media_type = match content_type.map(|t| t.split(';').next().unwrap_or("").trim()) {
        Some(t) if manifest::ALL_TYPES.contains(&t) => t.to_string(),
        _ => m.media_type().to_string(),
    };
    if m.media_type
        .as_deref()
        .is_some_and(|declared| declared != media_type)
    {
        return Err(RegistryError::of(
            Code::ManifestInvalid,
            "Content-Type differs from the manifest's mediaType",
        ));
    }
    let digest = match reference {
        Reference::Digest(d) if d.algorithm() == Algorithm::Sha512 => {
            Digest::from_raw(Algorithm::Sha512, &sha2::Sha512::digest(&body))
        }
        _ => Digest::sha256_of(&body),
    };
    if let Reference::Digest(d) = reference {
        if d != &digest {
            return Err(RegistryError::of(
                Code::DigestInvalid,
                format!("manifest is {digest}, not {d}"),
            ));
        }
    }
    // what the manifest names is leased (kept from eviction) from the moment it is found until
    // it is pinned: an acknowledged manifest never names a blob that is gone
    let mut leases = Vec::new();
    for d in m.config.iter().chain(m.layers.iter()) {
        leases.push(cache.lease(&d.digest).await);
        if cache.ensure_blob(ns, repo, &d.digest).await.is_err() {
            return Err(RegistryError::of(
                Code::ManifestBlobUnknown,
                format!("blob unknown to registry: {}", d.digest),
            ));
        }
    }
    for child in &m.manifests {
        leases.push(cache.lease(&child.digest).await);
        if cache
            .manifest(ns, repo, &Reference::Digest(child.digest.clone()))
            .await
            .is_err()
        {
            return Err(RegistryError::of(
                Code::ManifestBlobUnknown,
                format!("manifest unknown to registry: {}", child.digest),
            ));
        }
    }
    for lease in &leases {
        cache.pin(lease).await?;
    }
    for d in m.config.iter().chain(m.layers.iter()) {
        cache
            .link_pushed(&name, repo, Kind::Blob, &d.digest)
            .await?;
    }
    cache.store_pushed_manifest(&digest, &body).await?;
    cache
        .link_pushed(&name, repo, Kind::Manifest, &digest)
        .await?;
    if let Reference::Tag(tag) = reference {
        cache.records.set_tag(&name, repo, tag, &digest).await?;
    }
    let subject = m.subject.as_ref().map(|s| s.digest.clone());
    if let Some(s) = &subject {
        let descriptor = Descriptor {
            media_type: media_type.clone(),
            digest: digest.clone(),
            size: body.len() as i64,
            artifact_type: m
                .artifact_type
                .clone()
                .or_else(|| m.config.as_ref().map(|c| c.media_type.clone())),
            annotations: m.annotations.clone(),
            platform: None,
        };
        cache
            .records
            .add_referrer(&name, repo, s, &descriptor)
            .await?;
    }
    Ok(Pushed { digest, subject })
}

/// Deletes a pushed manifest (by digest) or a pushed tag. The bytes stay in the store as
/// ordinary cached content. Returns the subject whose referrers changed, if any.
pub async fn delete_manifest(
    cache: &Cache,
    ns: &str,
    repo: &RepoName,
    reference: &Reference,
) -> Result<Option<Digest>> {
    let (name, _) = cache.namespace(ns)?;
    let unknown = || {
        RegistryError::of(
            Code::ManifestUnknown,
            format!("no pushed manifest {repo}:{reference}"),
        )
    };
    match reference {
        Reference::Tag(t) => {
            if cache.records.delete_tag(&name, repo, t).await? {
                Ok(None)
            } else {
                Err(unknown())
            }
        }
        Reference::Digest(d) => {
            // read no more than a manifest can be: the digest may name a large layer
            let subject = match cache.store().read_small(d).await {
                Ok(Some(bytes)) => Manifest::parse(&bytes)
                    .ok()
                    .and_then(|m| m.subject.map(|s| s.digest)),
                Ok(None) => None,
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => None,
                Err(e) => return Err(e.into()),
            };
            if cache
                .records
                .delete_manifest(&name, repo, d, subject.as_ref())
                .await?
            {
                cache.unlink_manifest(&name, repo, d).await?;
                Ok(subject)
            } else {
                Err(unknown())
            }
        }
    }
}

/// Deletes a blob from a local repository: it is no longer served there (its bytes stay for
/// the other repositories that hold them). Refused while a manifest pushed to the repository
/// names it.
pub async fn delete_blob(cache: &Cache, ns: &str, repo: &RepoName, digest: &Digest) -> Result<()> {
    if !cache.holds_pushed(ns, repo, Kind::Blob, digest).await? {
        return Err(RegistryError::of(
            Code::BlobUnknown,
            format!("blob unknown: {digest}"),
        ));
    }
    for m in cache.records.manifests(ns, repo).await? {
        let Some(bytes) = cache.store().read_small(&m).await? else {
            continue;
        };
        let Ok(parsed) = Manifest::parse(&bytes) else {
            continue;
        };
        if parsed
            .config
            .iter()
            .chain(&parsed.layers)
            .any(|d| &d.digest == digest)
        {
            return Err(RegistryError::of(
                Code::Denied,
                format!(
                    "blob {digest} is named by manifest {m} of {repo}; delete the manifest first"
                ),
            ));
        }
    }
    cache.records.unlink_blob(ns, repo, digest).await?;
    cache.unlink(ns, repo, Kind::Blob, digest).await
}

/// Stores an atomic signature pushed with the signatures extension:
/// `{"version":2,"type":"atomic","name":"<digest>@<id>","content":"<base64>"}`.
pub async fn put_signature(
    cache: &Cache,
    ns: &str,
    repo: &RepoName,
    digest: &Digest,
    body: Bytes,
) -> Result<()> {
    let invalid =
        |m: &str| RegistryError::of(Code::ManifestInvalid, format!("invalid signature: {m}"));
    let v: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| invalid(&e.to_string()))?;
    if v["version"] != 2 || v["type"] != "atomic" {
        return Err(invalid("version must be 2 and type \"atomic\""));
    }
    let name = v["name"].as_str().ok_or_else(|| invalid("name missing"))?;
    if !name.starts_with(&format!("{digest}@")) {
        return Err(invalid("name must be <digest>@<unique id> for this digest"));
    }
    let content = v["content"]
        .as_str()
        .ok_or_else(|| invalid("content missing"))?;
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(content)
        .map_err(|_| invalid("content is not base64"))?;
    let (canonical, _) = cache.namespace(ns)?;
    cache
        .records
        .add_signature(&canonical, repo, digest, name, &body)
        .await
}

/// Makes a stored blob part of a repository (a cross-repository mount): pinned and linked;
/// false when the blob is not (or no longer) stored.
pub async fn link_mounted(
    cache: &Cache,
    ns: &str,
    repo: &RepoName,
    digest: &Digest,
) -> Result<bool> {
    let (name, _) = cache.namespace(ns)?;
    let lease = cache.lease(digest).await;
    if cache.store().blob_size(digest).await?.is_none() {
        return Ok(false);
    }
    cache.pin(&lease).await?;
    cache.link_pushed(&name, repo, Kind::Blob, digest).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appending_to_data_the_store_also_names_leaves_the_stored_blob_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (data, stored) = (dir.path().join("data"), dir.path().join("blob"));
        std::fs::write(&data, b"all of it").unwrap();
        std::fs::hard_link(&data, &stored).unwrap();
        open_unshared(&data)
            .unwrap()
            .write_all(b" and more")
            .unwrap();
        assert_eq!(std::fs::read(&stored).unwrap(), b"all of it");
        assert_eq!(std::fs::read(&data).unwrap(), b"all of it and more");
    }
}
