//! Blob fills: one upstream download per missing blob, teed to every waiting client.
//!
//! A fill receives the upstream body into memory and, alongside, writes it to a spool file,
//! hashing it as it goes. Clients read the newest bytes straight from memory and older ones
//! from the spool file, but are always held one byte short of the end until the digest matched;
//! if it does not (or the upstream fails), their responses end in an error and nothing is
//! stored. Memory per fill is bounded (`MAX_BACKLOG` not yet written plus `WINDOW` written),
//! whatever the blob's size.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use sha2::Digest as _;
use tokio::sync::{mpsc, watch};

use crate::error::{Code, RegistryError, Result};
use crate::names::{Algorithm, Digest};
use crate::store::ByteStream;
use crate::upstream::FetchedBlob;

/// Bytes received but not yet written to the spool file before the download waits for the disk.
const MAX_BACKLOG: u64 = 1 << 20;
/// Bytes already written that stay in memory for clients trailing just behind the download.
const WINDOW: u64 = 256 * 1024;
/// How much a client that fell behind a fill reads from its spool file at a time: a herd of
/// a hundred holds a hundred of these at once.
const FOLLOW_CHUNK: u64 = 64 * 1024;
/// The most bytes one spool write takes at once.
const WRITE_BATCH: usize = 512 * 1024;
/// Bytes written to the spool file before the disk is asked to start writing them out.
const FLUSH_AFTER: u64 = 1 << 20;

/// Where a fill stands.
#[derive(Debug, Clone)]
pub enum FillState {
    /// Waiting for the upstream's response.
    Starting,
    /// Bytes are arriving: `received` from the upstream, `written` of them in the spool file.
    Streaming {
        /// Bytes received so far.
        received: u64,
        /// Bytes in the spool file so far.
        written: u64,
        /// The announced size, if any.
        size: Option<u64>,
    },
    /// Every byte arrived and the digest matched; the blob is being made durable and moved
    /// into the store. Clients may finish.
    Verified {
        /// The blob's size.
        size: u64,
    },
    /// The digest matched and the blob is in the store.
    Complete {
        /// The blob's size.
        size: u64,
    },
    /// The upstream does not have the blob.
    NotFound,
    /// The fill failed; nothing was stored.
    Failed(RegistryError),
}

/// One fill under way, shared by every client waiting for the blob.
pub struct Fill {
    state: watch::Sender<FillState>,
    spool: OnceLock<Arc<File>>,
    recent: Mutex<Recent>,
}

/// The newest bytes of a fill, contiguous: `chunks` hold the bytes from offset `start` on.
#[derive(Default)]
struct Recent {
    start: u64,
    len: u64,
    chunks: VecDeque<Bytes>,
}

impl Recent {
    fn push(&mut self, chunk: Bytes) {
        self.len += chunk.len() as u64;
        self.chunks.push_back(chunk);
    }

    /// Drops the oldest chunks that are on disk, keeping at least `WINDOW` bytes of them.
    fn trim(&mut self, written: u64) {
        while let Some(front) = self.chunks.front() {
            let n = front.len() as u64;
            let end = self.start + n;
            let written_kept = written.saturating_sub(self.start);
            if end > written || written_kept - n < WINDOW {
                break;
            }
            self.chunks.pop_front();
            self.start = end;
            self.len -= n;
        }
    }

    /// The bytes from `pos` up to (not including) `limit`, from one chunk, if still in memory.
    fn slice(&self, pos: u64, limit: u64) -> Option<Bytes> {
        if pos < self.start || pos >= self.start + self.len {
            return None;
        }
        let mut offset = self.start;
        for chunk in &self.chunks {
            let end = offset + chunk.len() as u64;
            if pos < end {
                let from = (pos - offset) as usize;
                let to = (limit.min(end) - offset) as usize;
                return Some(chunk.slice(from..to));
            }
            offset = end;
        }
        None
    }
}

impl Default for Fill {
    fn default() -> Self {
        Fill {
            state: watch::channel(FillState::Starting).0,
            spool: OnceLock::new(),
            recent: Mutex::default(),
        }
    }
}

/// The hasher for a digest's algorithm.
pub(crate) enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub(crate) fn new(alg: Algorithm) -> Hasher {
        match alg {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub(crate) fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(b),
            Hasher::Sha512(h) => h.update(b),
        }
    }

    pub(crate) fn finish(self, alg: Algorithm) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest::from_raw(alg, &h.finalize()),
            Hasher::Sha512(h) => Digest::from_raw(alg, &h.finalize()),
        }
    }
}

impl Fill {
    /// The current state, for waiting clients.
    pub fn subscribe(&self) -> watch::Receiver<FillState> {
        self.state.subscribe()
    }

    /// Downloads `blob` into `spool`, verifying `digest`; on success the caller ingests it.
    ///
    /// Returns the size. On any error the spool file is removed and the state is Failed.
    pub async fn download(
        &self,
        blob: FetchedBlob,
        digest: &Digest,
        spool: PathBuf,
        idle: Duration,
    ) -> Result<u64> {
        let result = self.download_inner(blob, digest, &spool, idle).await;
        if let Err(e) = &result {
            let _ = tokio::fs::remove_file(&spool).await;
            self.fail(e.clone());
        }
        result
    }

    async fn download_inner(
        &self,
        blob: FetchedBlob,
        digest: &Digest,
        spool: &Path,
        idle: Duration,
    ) -> Result<u64> {
        let path = spool.to_path_buf();
        let (writer, reader) = blocking(move || {
            let w = File::create(&path)?;
            let r = File::open(&path)?;
            Ok((w, r))
        })
        .await?;
        let _ = self.spool.set(Arc::new(reader));
        let size = blob.size;
        self.state.send_replace(FillState::Streaming {
            received: 0,
            written: 0,
            size,
        });

        let alg = digest.algorithm();
        let (tx, rx) = mpsc::unbounded_channel();
        let (received, (writer, hasher, written)) = tokio::try_join!(
            self.receive(blob, tx, idle),
            self.write(writer, Hasher::new(alg), rx)
        )?;
        debug_assert_eq!(received, written);
        if size.is_some_and(|s| written != s) {
            return Err(RegistryError::upstream("upstream blob body was truncated"));
        }
        let actual = hasher.finish(alg);
        if &actual != digest {
            tracing::warn!(expected = %digest, %actual, "upstream blob does not match its digest");
            return Err(RegistryError::new(
                Code::DigestInvalid,
                http::StatusCode::BAD_GATEWAY,
                format!("upstream content does not match digest {digest}"),
            ));
        }
        // clients get their last bytes now; durability is the store's business, not theirs
        self.state
            .send_replace(FillState::Verified { size: written });
        blocking(move || writer.sync_all()).await?;
        Ok(written)
    }

    /// Receives the upstream body into memory, handing each chunk to the writer; waits for the
    /// disk when more than `MAX_BACKLOG` bytes are not yet written. Returns the bytes received.
    async fn receive(
        &self,
        mut blob: FetchedBlob,
        tx: mpsc::UnboundedSender<Bytes>,
        idle: Duration,
    ) -> Result<u64> {
        let mut progress = self.subscribe();
        let mut received = 0u64;
        loop {
            while self.backlog(received) > MAX_BACKLOG {
                if progress.changed().await.is_err() {
                    return Err(RegistryError::internal("blob fill vanished"));
                }
            }
            let next = tokio::time::timeout(idle, blob.body.next())
                .await
                .map_err(|_| {
                    RegistryError::upstream_timeout("upstream stalled while sending a blob")
                })?;
            let chunk = match next {
                Some(Ok(chunk)) if chunk.is_empty() => continue,
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => {
                    return Err(RegistryError::upstream(format!(
                        "upstream blob body failed: {e}"
                    )))
                }
                None => return Ok(received),
            };
            received += chunk.len() as u64;
            if blob.size.is_some_and(|s| received > s) {
                return Err(RegistryError::upstream(
                    "upstream sent more bytes than it announced",
                ));
            }
            self.recent.lock().expect("recent lock").push(chunk.clone());
            if tx.send(chunk).is_err() {
                return Err(RegistryError::internal("blob writer stopped"));
            }
            self.state.send_modify(|s| {
                if let FillState::Streaming { received: r, .. } = s {
                    *r = received;
                }
            });
        }
    }

    /// Bytes received but not yet in the spool file.
    fn backlog(&self, received: u64) -> u64 {
        match &*self.state.borrow() {
            FillState::Streaming { written, .. } => received.saturating_sub(*written),
            _ => 0,
        }
    }

    /// Writes and hashes the chunks in order, in batches, off the async threads.
    async fn write(
        &self,
        file: File,
        hasher: Hasher,
        mut rx: mpsc::UnboundedReceiver<Bytes>,
    ) -> Result<(File, Hasher, u64)> {
        let mut spool = Spool {
            file,
            hasher,
            written: 0,
            flushed: 0,
        };
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            let mut n = batch[0].len();
            while n < WRITE_BATCH {
                match rx.try_recv() {
                    Ok(c) => {
                        n += c.len();
                        batch.push(c);
                    }
                    Err(_) => break,
                }
            }
            spool = write_batch(spool, batch).await?;
            let written = spool.written;
            self.recent.lock().expect("recent lock").trim(written);
            self.state.send_modify(|s| {
                if let FillState::Streaming { written: w, .. } = s {
                    *w = written;
                }
            });
        }
        Ok((spool.file, spool.hasher, spool.written))
    }

    /// Waits until `decide` answers for the current state; the fill's end always gets an answer
    /// (NotFound and Failed become errors unless `decide` handles them).
    pub async fn settle<T>(
        &self,
        digest: &Digest,
        mut decide: impl FnMut(&FillState) -> Option<Result<T>>,
    ) -> Result<T> {
        let mut rx = self.subscribe();
        loop {
            let state = rx.borrow_and_update().clone();
            if let Some(answer) = decide(&state) {
                return answer;
            }
            match state {
                FillState::NotFound => {
                    return Err(RegistryError::of(
                        Code::BlobUnknown,
                        format!("blob unknown: {digest}"),
                    ))
                }
                FillState::Failed(e) => return Err(e),
                _ => {}
            }
            if rx.changed().await.is_err() {
                return Err(RegistryError::internal("blob fill vanished"));
            }
        }
    }

    /// Marks the fill complete: the blob is in the store.
    pub fn complete(&self, size: u64) {
        self.forget_recent();
        self.state.send_replace(FillState::Complete { size });
    }

    /// Marks the fill failed.
    pub fn fail(&self, e: RegistryError) {
        self.forget_recent();
        self.state.send_replace(FillState::Failed(e));
    }

    /// Frees the bytes held in memory; readers go on from the file.
    fn forget_recent(&self) {
        *self.recent.lock().expect("recent lock") = Recent::default();
    }

    /// Marks the blob as absent upstream.
    pub fn not_found(&self) {
        self.state.send_replace(FillState::NotFound);
    }

    /// Streams the blob to one client: the newest bytes from memory, older ones from the spool.
    pub fn reader(self: &Arc<Self>) -> ByteStream {
        let rx = self.subscribe();
        let fill = Arc::clone(self);
        futures_util::stream::unfold((fill, rx, 0u64), |(fill, mut rx, pos)| async move {
            loop {
                let state = rx.borrow_and_update().clone();
                let (limit, finished) = match state {
                    FillState::Starting => (0, false),
                    FillState::Streaming { received, .. } => (received.saturating_sub(1), false),
                    FillState::Verified { size } | FillState::Complete { size } => (size, true),
                    FillState::NotFound => {
                        return Some((
                            Err(io::Error::other("blob vanished upstream")),
                            (fill, rx, pos),
                        ))
                    }
                    FillState::Failed(e) => {
                        return Some((Err(io::Error::other(e.message)), (fill, rx, u64::MAX)))
                    }
                };
                if pos == u64::MAX {
                    return None;
                }
                if pos < limit {
                    return match fill.read_at(pos, limit).await {
                        Ok(c) => {
                            let next = pos + c.len() as u64;
                            Some((Ok(c), (fill, rx, next)))
                        }
                        Err(e) => Some((Err(e), (fill, rx, u64::MAX))),
                    };
                }
                if finished {
                    return None;
                }
                if rx.changed().await.is_err() {
                    return Some((
                        Err(io::Error::other("blob fill ended unexpectedly")),
                        (fill, rx, u64::MAX),
                    ));
                }
            }
        })
        .boxed()
    }

    /// Bytes from `pos` towards `limit`: from memory if still there, else from the spool file
    /// (which holds everything that left memory).
    async fn read_at(&self, pos: u64, limit: u64) -> io::Result<Bytes> {
        if let Some(chunk) = self.recent.lock().expect("recent lock").slice(pos, limit) {
            return Ok(chunk);
        }
        let file = Arc::clone(self.spool.get().expect("spool set before streaming"));
        let len = (limit - pos).min(FOLLOW_CHUNK) as usize;
        blocking(move || {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, pos)?;
            Ok(Bytes::from(buf))
        })
        .await
    }
}

/// The spool file being written: the hash so far, and how much of it the disk was asked to take.
struct Spool {
    file: File,
    hasher: Hasher,
    written: u64,
    flushed: u64,
}

impl Spool {
    /// Hashes and appends `batch`; every `FLUSH_AFTER` bytes, starts the disk writing them.
    fn append(&mut self, batch: &[Bytes]) -> io::Result<()> {
        use std::io::Write;
        for chunk in batch {
            self.hasher.update(chunk);
            self.file.write_all(chunk)?;
            self.written += chunk.len() as u64;
        }
        if self.written - self.flushed >= FLUSH_AFTER {
            start_writeback(&self.file, self.flushed, self.written - self.flushed);
            self.flushed = self.written;
        }
        Ok(())
    }
}

/// Asks the kernel to start writing a range of `file` to disk without waiting for it, so the
/// final fsync has little left to do and the disk is not asked for the whole blob at once.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on an open descriptor; a failure only skips the hint
    let _ = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as i64,
            len as i64,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

async fn write_batch(mut spool: Spool, batch: Vec<Bytes>) -> io::Result<Spool> {
    blocking(move || {
        spool.append(&batch)?;
        Ok(spool)
    })
    .await
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(io::Error::other)?
}

/// Streams an upstream blob straight to the client (nothing cached), checking its size and
/// digest as it goes: a mismatch, a short body or a stall ends the stream with an error. The
/// last chunk is held back until the digest matched (a server stops reading a body once it
/// has sent its announced length, so a wrong last chunk would otherwise reach the client as a
/// clean response).
pub fn verified_stream(blob: FetchedBlob, digest: Digest, idle: Duration) -> ByteStream {
    struct St {
        body: ByteStream,
        hasher: Option<Hasher>,
        held: Option<Bytes>,
        seen: u64,
        size: Option<u64>,
        digest: Digest,
    }
    let fail = |mut st: St, e: io::Error| {
        st.hasher = None;
        st.held = None;
        Some((Err(e), st))
    };
    let st = St {
        body: blob.body,
        hasher: Some(Hasher::new(digest.algorithm())),
        held: None,
        seen: 0,
        size: blob.size,
        digest,
    };
    futures_util::stream::unfold(st, move |mut st| async move {
        loop {
            st.hasher.as_ref()?;
            let chunk = match tokio::time::timeout(idle, st.body.next()).await {
                Err(_) => {
                    return fail(
                        st,
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            "upstream stalled while sending a blob",
                        ),
                    )
                }
                Ok(Some(Err(e))) => return fail(st, e),
                Ok(Some(Ok(chunk))) => chunk,
                Ok(None) => {
                    let got = st
                        .hasher
                        .take()
                        .expect("checked above")
                        .finish(st.digest.algorithm());
                    if st.size.is_some_and(|n| n != st.seen) || got != st.digest {
                        return fail(
                            st,
                            io::Error::other("upstream blob does not match its digest"),
                        );
                    }
                    return st.held.take().map(|last| (Ok(last), st));
                }
            };
            st.seen += chunk.len() as u64;
            if st.size.is_some_and(|n| st.seen > n) {
                return fail(
                    st,
                    io::Error::other("upstream sent more bytes than it announced"),
                );
            }
            st.hasher.as_mut().expect("checked above").update(&chunk);
            if chunk.is_empty() {
                continue;
            }
            if let Some(previous) = st.held.replace(chunk) {
                return Some((Ok(previous), st));
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob_of(chunks: Vec<io::Result<Bytes>>, size: Option<u64>) -> FetchedBlob {
        FetchedBlob {
            size,
            body: futures_util::stream::iter(chunks).boxed(),
        }
    }

    async fn collect(mut s: ByteStream) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn good_blob_streams_to_reader() {
        let dir = tempfile::tempdir().unwrap();
        let data = vec![7u8; 600_000];
        let digest = Digest::sha256_of(&data);
        let fill = Arc::new(Fill::default());
        let reader = fill.reader();
        let blob = blob_of(
            vec![
                Ok(Bytes::from(data[..300_000].to_vec())),
                Ok(Bytes::from(data[300_000..].to_vec())),
            ],
            Some(600_000),
        );
        let f2 = fill.clone();
        let dl = tokio::spawn(async move {
            let n = f2
                .download(blob, &digest, dir.path().join("s"), Duration::from_secs(5))
                .await
                .unwrap();
            f2.complete(n);
            dir
        });
        assert_eq!(collect(reader).await.unwrap(), data);
        dl.await.unwrap();
    }

    #[tokio::test]
    async fn readers_get_every_byte_from_memory_or_the_spool_file() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let digest = Digest::sha256_of(&data);
        let fill = Arc::new(Fill::default());
        let early = fill.reader();
        let chunks = data
            .chunks(10_000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let n = fill.download(
            blob_of(chunks, None),
            &digest,
            dir.path().join("s"),
            Duration::from_secs(5),
        );
        let (n, got) = tokio::join!(n, collect(early));
        assert_eq!(n.unwrap(), data.len() as u64);
        assert_eq!(got.unwrap(), data, "a reader keeping up");
        // a reader that joins after the download left memory reads the file
        assert_eq!(collect(fill.reader()).await.unwrap(), data, "a late reader");
        fill.complete(data.len() as u64);
        assert_eq!(
            collect(fill.reader()).await.unwrap(),
            data,
            "a reader after completion"
        );
    }

    #[test]
    fn recent_keeps_a_window_of_written_bytes_and_slices_within_chunks() {
        let mut r = Recent::default();
        for i in 0..8u8 {
            r.push(Bytes::from(vec![i; 100_000]));
        }
        r.trim(300_000);
        assert_eq!(r.start, 0, "fewer than WINDOW written bytes: all kept");
        r.trim(800_000);
        assert_eq!(
            800_000 - r.start,
            300_000,
            "whole chunks are dropped while WINDOW stays"
        );
        assert!(
            r.slice(100_000, 800_000).is_none(),
            "dropped bytes are not in memory"
        );
        let s = r.slice(550_000, 560_000).unwrap();
        assert_eq!(s.len(), 10_000);
        assert!(s.iter().all(|&b| b == 5));
        assert_eq!(r.slice(750_000, 800_000).unwrap().len(), 50_000);
        assert!(r.slice(800_000, 900_000).is_none());
    }

    #[tokio::test]
    async fn wrong_digest_aborts_reader_and_removes_spool() {
        let dir = tempfile::tempdir().unwrap();
        let digest = Digest::sha256_of(b"expected");
        let fill = Arc::new(Fill::default());
        let reader = fill.reader();
        let spool = dir.path().join("s");
        let err = fill
            .download(
                blob_of(vec![Ok(Bytes::from_static(b"impostor"))], Some(8)),
                &digest,
                spool.clone(),
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code, Code::DigestInvalid);
        assert!(!spool.exists());
        let got = collect(reader).await;
        assert!(got.is_err(), "the reader must not complete");
    }

    #[tokio::test]
    async fn a_verified_stream_holds_its_last_chunk_until_the_digest_matched() {
        let good = b"0123456789".to_vec();
        let digest = Digest::sha256_of(&good);
        let chunks = |b: &[u8]| {
            vec![
                Ok(Bytes::copy_from_slice(&b[..6])),
                Ok(Bytes::copy_from_slice(&b[6..])),
            ]
        };
        let mut s = verified_stream(
            blob_of(chunks(&good), Some(10)),
            digest.clone(),
            Duration::from_secs(5),
        );
        assert_eq!(s.next().await.unwrap().unwrap(), &good[..6]);
        assert_eq!(s.next().await.unwrap().unwrap(), &good[6..]);
        assert!(s.next().await.is_none());

        let mut wrong = good.clone();
        wrong[9] ^= 1;
        let mut s = verified_stream(
            blob_of(chunks(&wrong), Some(10)),
            digest,
            Duration::from_secs(5),
        );
        assert_eq!(
            s.next().await.unwrap().unwrap(),
            &wrong[..6],
            "all but the last chunk flow"
        );
        assert!(
            s.next().await.unwrap().is_err(),
            "the last chunk of a wrong blob never leaves"
        );
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn truncated_and_stalled_bodies_fail() {
        let dir = tempfile::tempdir().unwrap();
        let digest = Digest::sha256_of(b"0123456789");
        let fill = Fill::default();
        let e = fill
            .download(
                blob_of(vec![Ok(Bytes::from_static(b"01234"))], Some(10)),
                &digest,
                dir.path().join("a"),
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert!(e.message.contains("truncated"), "{e}");

        let fill = Fill::default();
        let stalled = FetchedBlob {
            size: Some(10),
            body: futures_util::stream::pending().boxed(),
        };
        let e = fill
            .download(
                stalled,
                &digest,
                dir.path().join("b"),
                Duration::from_millis(50),
            )
            .await
            .unwrap_err();
        assert_eq!(e.status, http::StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
