//! Content-addressed storage of blobs and manifests, plus small metadata records.
//!
//! The [`Store`] trait is what the cache layer talks to; [`fs::FsStore`] keeps everything on
//! local disk. Content enters a store only through [`Store::ingest`], which takes a local file
//! whose digest the caller has already verified: a store never holds a byte that does not
//! match its digest, and never shows a partial blob.

pub mod fs;

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::stream::BoxStream;

use crate::names::Digest;

/// The largest blob read whole into memory (manifests, signature payloads, configs).
pub const SMALL_LIMIT: u64 = 4 << 20;

/// The error for a blob over [`SMALL_LIMIT`] asked for whole.
pub fn too_large() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("larger than {} MiB, not read", SMALL_LIMIT >> 20),
    )
}

/// A stream of a blob's bytes in bounded chunks.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// What a store knows about one blob.
#[derive(Debug, Clone)]
pub struct BlobInfo {
    /// The blob's digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last read (approximate: updated at most once a minute).
    pub last_access: SystemTime,
}

/// Storage of verified content and metadata; implemented by local disk, later object storage.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// The size of a stored blob, or `None` when absent.
    async fn blob_size(&self, digest: &Digest) -> io::Result<Option<u64>>;

    /// Streams `len` bytes (all when `None`) of a blob from `offset`, or `None` when absent.
    async fn read_blob(
        &self,
        digest: &Digest,
        offset: u64,
        len: Option<u64>,
    ) -> io::Result<Option<ByteStream>>;

    /// Reads a whole small blob (a manifest) into memory, or `None` when absent; a blob over
    /// [`SMALL_LIMIT`] is an `InvalidData` error, read no further.
    async fn read_small(&self, digest: &Digest) -> io::Result<Option<Bytes>>;

    /// Moves a local file whose content the caller verified (and made durable) to match
    /// `digest` into the store; with `durable`, the move itself survives a power loss once this
    /// returns (for what clients pushed; cached content can be fetched again).
    async fn ingest(&self, file: &Path, digest: &Digest, durable: bool) -> io::Result<()>;

    /// Stores small verified content (a manifest) under `digest` through a synced spool file;
    /// `durable` as for [`Store::ingest`].
    async fn put_small(&self, digest: &Digest, bytes: &Bytes, durable: bool) -> io::Result<()> {
        let spool = self
            .spool_dir()
            .join(format!("small-{}", uuid::Uuid::new_v4()));
        let (path, b) = (spool.clone(), bytes.clone());
        let written = tokio::task::spawn_blocking(move || -> io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&path)?;
            f.write_all(&b)?;
            f.sync_all()
        })
        .await
        .map_err(io::Error::other)?;
        let stored = match written {
            Ok(()) => self.ingest(&spool, digest, durable).await,
            Err(e) => Err(e),
        };
        if stored.is_err() {
            let _ = tokio::fs::remove_file(&spool).await;
        }
        stored
    }

    /// Makes a stored blob durable (its bytes and its entry), if it is stored; for content kept
    /// as cache that a push now relies on.
    async fn sync_blob(&self, digest: &Digest) -> io::Result<()>;

    /// Removes a blob.
    async fn delete_blob(&self, digest: &Digest) -> io::Result<()>;

    /// Lists every stored blob, for the eviction index.
    async fn list_blobs(&self) -> io::Result<Vec<BlobInfo>>;

    /// Records that a blob was read (for least-recently-used eviction across restarts).
    async fn touch(&self, digest: &Digest) -> io::Result<()>;

    /// Reads a metadata record.
    async fn get_meta(&self, key: &str) -> io::Result<Option<Bytes>>;

    /// Writes a metadata record atomically and durably (it survives a power loss once this
    /// returns): for what clients pushed.
    async fn put_meta(&self, key: &str, value: &[u8]) -> io::Result<()>;

    /// Writes a metadata record atomically, without waiting for the disk: for what the cache
    /// can learn again from the upstream (a crash never leaves a torn record, a power loss may
    /// lose the latest one).
    async fn put_cache_meta(&self, key: &str, value: &[u8]) -> io::Result<()> {
        self.put_meta(key, value).await
    }

    /// Removes a metadata record.
    async fn delete_meta(&self, key: &str) -> io::Result<()>;

    /// Lists the record names directly under a key prefix (like a directory listing).
    async fn list_meta(&self, prefix: &str) -> io::Result<Vec<String>>;

    /// A local directory for spool files that will be ingested (same filesystem when possible).
    fn spool_dir(&self) -> PathBuf;

    /// Free bytes where the store writes, when it can tell.
    fn free_space(&self) -> Option<u64> {
        None
    }

    /// Whether the store can currently be written (for readiness).
    async fn ready(&self) -> io::Result<()>;
}
