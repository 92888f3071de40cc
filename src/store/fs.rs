//! The local-disk store: `blobs/<alg>/<hex>`, `meta/<key>`, `tmp/` for spool files.

use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::StreamExt;

use super::{too_large, BlobInfo, ByteStream, Store, SMALL_LIMIT};
use crate::names::Digest;

/// The size of each chunk read from disk and sent to a client.
pub const READ_CHUNK: usize = 256 * 1024;

/// Blobs (or ranges) at least this large are served from a memory map.
const MAP_THRESHOLD: u64 = 1 << 20;

/// The slice size of a mapped blob's stream. hyper queues up to 16 slices per connection for
/// one vectored write, so 64 KiB slices keep at most ~1 MiB per connection in flight.
const MAP_CHUNK: usize = 64 * 1024;

/// How many slices behind the one being handed out pages are released: past hyper's queue, so
/// released pages have been written and are not faulted in again.
const MAP_RELEASE_BEHIND: usize = 32;

/// Reads a small range whole.
fn read_range(file: std::fs::File, offset: u64, len: u64) -> io::Result<ByteStream> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0; len as usize];
    file.read_exact_at(&mut buf, offset)?;
    Ok(futures_util::stream::once(async move { Ok(Bytes::from(buf)) }).boxed())
}

/// Streams a range of a stored blob from a read-only memory map, in `MAP_CHUNK` slices: the
/// bytes go from the page cache to the socket with one copy and no blocking-pool hop per chunk.
/// Pages well behind the slice handed out are released from the mapping (they refault from the
/// page cache if ever needed again), so resident memory stays small whatever the blob size. Stored blobs are never
/// modified in place (written once, renamed into place), so the mapping stays valid.
fn mapped_stream(file: &std::fs::File, offset: u64, len: u64) -> io::Result<ByteStream> {
    // SAFETY: blob files are immutable once stored (see above); unlinking does not unmap
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(offset)
            .len(len as usize)
            .map(file)?
    };
    let _ = map.advise(memmap2::Advice::Sequential);
    let map = std::sync::Arc::new(map);
    let all = Bytes::from_owner(MapOwner(std::sync::Arc::clone(&map)));
    let chunks = (len as usize).div_ceil(MAP_CHUNK);
    Ok(futures_util::stream::iter((0..chunks).map(move |i| {
        if i >= MAP_RELEASE_BEHIND + 8 && i % 8 == 0 {
            let behind = (i - MAP_RELEASE_BEHIND - 8) * MAP_CHUNK;
            // SAFETY: DontNeed on a read-only shared file mapping only drops page-table
            // entries; a later read refaults the same bytes from the (immutable) file
            let _ = unsafe {
                map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    behind,
                    8 * MAP_CHUNK,
                )
            };
        }
        let start = i * MAP_CHUNK;
        Ok(all.slice(start..(start + MAP_CHUNK).min(all.len())))
    }))
    .boxed())
}

/// Lets `Bytes` own a shared memory map.
struct MapOwner(std::sync::Arc<memmap2::Mmap>);

impl AsRef<[u8]> for MapOwner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Content and metadata in a directory on local disk.
pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    /// Opens (creating if needed) a store under `root`, sweeping spool files left by a crash.
    pub fn open(root: &Path) -> io::Result<FsStore> {
        for dir in ["blobs/sha256", "blobs/sha512", "meta", "tmp"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        let store = FsStore {
            root: root.to_path_buf(),
        };
        store.sweep_spool()?;
        Ok(store)
    }

    /// Opens a store another process may be serving from: nothing is swept.
    pub fn open_shared(root: &Path) -> io::Result<FsStore> {
        for dir in ["blobs/sha256", "blobs/sha512", "meta", "tmp"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        Ok(FsStore {
            root: root.to_path_buf(),
        })
    }

    /// Removes every leftover spool file: none of them was ever visible as content.
    fn sweep_spool(&self) -> io::Result<()> {
        for entry in std::fs::read_dir(self.root.join("tmp"))? {
            let path = entry?.path();
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if let Err(e) = removed {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove leftover spool file");
            }
        }
        Ok(())
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    fn meta_path(&self, key: &str) -> io::Result<PathBuf> {
        let rel = Path::new(key);
        let safe = !key.is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)));
        if !safe {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unsafe metadata key {key:?}"),
            ));
        }
        Ok(self.root.join("meta").join(rel))
    }
}

/// Writes a file atomically: a spool file, fsync, rename, fsync of the directory.
pub async fn write_atomic(spool_dir: &Path, path: &Path, value: &[u8]) -> io::Result<()> {
    write_renamed(spool_dir, path, value, true).await
}

/// Writes a file through a spool file and a rename; with `durable`, fsyncs the file before
/// the rename and the directory after it.
async fn write_renamed(
    spool_dir: &Path,
    path: &Path,
    value: &[u8],
    durable: bool,
) -> io::Result<()> {
    let tmp = spool_dir.join(format!("meta-{}", uuid::Uuid::new_v4()));
    let (tmp2, path2, value) = (tmp.clone(), path.to_path_buf(), value.to_vec());
    let result = tokio::task::spawn_blocking(move || -> io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp2)?;
        f.write_all(&value)?;
        if durable {
            f.sync_all()?;
        }
        let parent = path2.parent().expect("record paths have a parent");
        std::fs::create_dir_all(parent)?;
        std::fs::rename(&tmp2, &path2)?;
        if durable {
            std::fs::File::open(parent)?.sync_all()?;
        }
        Ok(())
    })
    .await
    .map_err(io::Error::other)?;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

fn not_found_is_none<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[async_trait::async_trait]
impl Store for FsStore {
    async fn blob_size(&self, digest: &Digest) -> io::Result<Option<u64>> {
        Ok(not_found_is_none(tokio::fs::metadata(self.blob_path(digest)).await)?.map(|m| m.len()))
    }

    async fn read_blob(
        &self,
        digest: &Digest,
        offset: u64,
        len: Option<u64>,
    ) -> io::Result<Option<ByteStream>> {
        let path = self.blob_path(digest);
        let opened = tokio::task::spawn_blocking(move || -> io::Result<Option<ByteStream>> {
            let Some(file) = not_found_is_none(std::fs::File::open(&path))? else {
                return Ok(None);
            };
            let size = file.metadata()?.len();
            let available = size.saturating_sub(offset);
            let len = len.map_or(available, |n| n.min(available));
            if len < MAP_THRESHOLD {
                return Ok(Some(read_range(file, offset, len)?));
            }
            Ok(Some(mapped_stream(&file, offset, len)?))
        });
        opened.await.map_err(io::Error::other)?
    }

    async fn read_small(&self, digest: &Digest) -> io::Result<Option<Bytes>> {
        use tokio::io::AsyncReadExt;
        let Some(file) = not_found_is_none(tokio::fs::File::open(self.blob_path(digest)).await)?
        else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        file.take(SMALL_LIMIT + 1).read_to_end(&mut bytes).await?;
        if bytes.len() as u64 > SMALL_LIMIT {
            return Err(too_large());
        }
        Ok(Some(Bytes::from(bytes)))
    }

    async fn ingest(&self, file: &Path, digest: &Digest, durable: bool) -> io::Result<()> {
        let (file, target) = (file.to_path_buf(), self.blob_path(digest));
        tokio::task::spawn_blocking(move || {
            let dir = target
                .parent()
                .expect("blob paths have a parent")
                .to_path_buf();
            if target.try_exists()? {
                std::fs::remove_file(&file)?;
                // stored before without a sync (cached content): made durable now, as asked
                if durable {
                    std::fs::File::open(&target)?.sync_all()?;
                    std::fs::File::open(&dir)?.sync_all()?;
                }
                return Ok(());
            }
            std::fs::rename(&file, &target)?;
            if durable {
                std::fs::File::open(&dir)?.sync_all()?;
            }
            Ok(())
        })
        .await
        .map_err(io::Error::other)?
    }

    async fn sync_blob(&self, digest: &Digest) -> io::Result<()> {
        let path = self.blob_path(digest);
        tokio::task::spawn_blocking(move || {
            let Some(file) = not_found_is_none(std::fs::File::open(&path))? else {
                return Ok(());
            };
            file.sync_all()?;
            std::fs::File::open(path.parent().expect("blob paths have a parent"))?.sync_all()
        })
        .await
        .map_err(io::Error::other)?
    }

    async fn delete_blob(&self, digest: &Digest) -> io::Result<()> {
        not_found_is_none(tokio::fs::remove_file(self.blob_path(digest)).await).map(|_| ())
    }

    async fn list_blobs(&self) -> io::Result<Vec<BlobInfo>> {
        let root = self.root.join("blobs");
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for alg in ["sha256", "sha512"] {
                for entry in std::fs::read_dir(root.join(alg))? {
                    let entry = entry?;
                    let name = format!("{alg}:{}", entry.file_name().to_string_lossy());
                    let Ok(digest) = name.parse::<Digest>() else {
                        continue;
                    };
                    let meta = entry.metadata()?;
                    let last_access = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    out.push(BlobInfo {
                        digest,
                        size: meta.len(),
                        last_access,
                    });
                }
            }
            Ok(out)
        })
        .await
        .map_err(io::Error::other)?
    }

    async fn touch(&self, digest: &Digest) -> io::Result<()> {
        let path = self.blob_path(digest);
        tokio::task::spawn_blocking(move || {
            filetime::set_file_mtime(&path, filetime::FileTime::now())
        })
        .await
        .map_err(io::Error::other)?
    }

    async fn get_meta(&self, key: &str) -> io::Result<Option<Bytes>> {
        Ok(not_found_is_none(tokio::fs::read(self.meta_path(key)?).await)?.map(Bytes::from))
    }

    async fn put_meta(&self, key: &str, value: &[u8]) -> io::Result<()> {
        write_atomic(&self.spool_dir(), &self.meta_path(key)?, value).await
    }

    async fn put_cache_meta(&self, key: &str, value: &[u8]) -> io::Result<()> {
        write_renamed(&self.spool_dir(), &self.meta_path(key)?, value, false).await
    }

    async fn delete_meta(&self, key: &str) -> io::Result<()> {
        not_found_is_none(tokio::fs::remove_file(self.meta_path(key)?).await).map(|_| ())
    }

    async fn list_meta(&self, prefix: &str) -> io::Result<Vec<String>> {
        let dir = self.meta_path(prefix)?;
        let Some(mut rd) = not_found_is_none(tokio::fs::read_dir(dir).await)? else {
            return Ok(Vec::new());
        };
        let mut names = Vec::new();
        while let Some(entry) = rd.next_entry().await? {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn spool_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn free_space(&self) -> Option<u64> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.root.as_os_str().as_bytes()).ok()?;
        let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated path and a statvfs struct of the right layout
        if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
            return None;
        }
        Some(stat.f_bavail as u64 * stat.f_frsize as u64)
    }

    async fn ready(&self) -> io::Result<()> {
        let probe = self
            .spool_dir()
            .join(format!("ready-{}", uuid::Uuid::new_v4()));
        tokio::fs::write(&probe, b"ok").await?;
        tokio::fs::remove_file(&probe).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(b: &[u8]) -> Digest {
        Digest::sha256_of(b)
    }

    #[tokio::test]
    async fn ingest_read_range_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let d = digest_of(b"hello world");
        assert!(store.blob_size(&d).await.unwrap().is_none());
        let spool = store.spool_dir().join("x");
        std::fs::write(&spool, b"hello world").unwrap();
        store.ingest(&spool, &d, true).await.unwrap();
        assert!(!spool.exists());
        assert_eq!(store.blob_size(&d).await.unwrap(), Some(11));
        let mut s = store.read_blob(&d, 6, Some(3)).await.unwrap().unwrap();
        let mut got = Vec::new();
        while let Some(c) = s.next().await {
            got.extend_from_slice(&c.unwrap());
        }
        assert_eq!(got, b"wor");
        assert_eq!(store.list_blobs().await.unwrap().len(), 1);
        store.delete_blob(&d).await.unwrap();
        assert!(store.read_small(&d).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_large_blob_is_never_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        for (len, whole) in [(SMALL_LIMIT, true), (SMALL_LIMIT + 1, false)] {
            let bytes = vec![7u8; len as usize];
            let d = digest_of(&bytes);
            let spool = store.spool_dir().join("x");
            std::fs::write(&spool, &bytes).unwrap();
            store.ingest(&spool, &d, false).await.unwrap();
            match store.read_small(&d).await {
                Ok(Some(b)) => assert!(whole && b.len() as u64 == len),
                Err(e) => assert!(!whole && e.kind() == io::ErrorKind::InvalidData),
                Ok(None) => panic!("stored"),
            }
        }
    }

    #[tokio::test]
    async fn meta_records_and_unsafe_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        store.put_meta("tags/up/a/b/v1", b"x").await.unwrap();
        store.put_meta("tags/up/a/b/v2", b"y").await.unwrap();
        assert_eq!(
            store.get_meta("tags/up/a/b/v1").await.unwrap().unwrap(),
            &b"x"[..]
        );
        assert_eq!(
            store.list_meta("tags/up/a/b").await.unwrap(),
            vec!["v1", "v2"]
        );
        for bad in ["../escape", "/abs", "a/../../b", ""] {
            assert!(store.put_meta(bad, b"z").await.is_err(), "{bad}");
        }
        assert!(!dir.path().join("escape").exists());
    }

    #[tokio::test]
    async fn leftover_spool_files_are_swept_on_open() {
        let dir = tempfile::tempdir().unwrap();
        drop(FsStore::open(dir.path()).unwrap());
        std::fs::write(dir.path().join("tmp/partial"), b"half a blob").unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        assert_eq!(std::fs::read_dir(store.spool_dir()).unwrap().count(), 0);
    }
}
