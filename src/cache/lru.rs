//! The in-memory index of cached blobs used for least-recently-used eviction.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::names::Digest;
use crate::store::BlobInfo;

/// How stale a blob's on-disk access time may get before it is refreshed.
const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

struct Entry {
    size: u64,
    last_access: SystemTime,
    last_touch: SystemTime,
}

/// Sizes and access times of cached blobs, and the total against the cap.
pub struct LruIndex {
    max_size: u64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Digest, Entry>,
    total: u64,
}

impl LruIndex {
    /// Builds the index from what the store holds.
    pub fn new(max_size: u64, blobs: Vec<BlobInfo>) -> LruIndex {
        let mut inner = Inner::default();
        for b in blobs {
            inner.total += b.size;
            inner.entries.insert(
                b.digest,
                Entry {
                    size: b.size,
                    last_access: b.last_access,
                    last_touch: b.last_access,
                },
            );
        }
        LruIndex {
            max_size,
            inner: Mutex::new(inner),
        }
    }

    /// Records a newly stored blob.
    pub fn insert(&self, digest: Digest, size: u64) {
        let now = SystemTime::now();
        let mut inner = self.inner.lock().expect("lru lock");
        if inner
            .entries
            .insert(
                digest,
                Entry {
                    size,
                    last_access: now,
                    last_touch: now,
                },
            )
            .is_none()
        {
            inner.total += size;
        }
    }

    /// Records a read; true when the on-disk access time should be refreshed.
    pub fn accessed(&self, digest: &Digest) -> bool {
        let now = SystemTime::now();
        let mut inner = self.inner.lock().expect("lru lock");
        let Some(e) = inner.entries.get_mut(digest) else {
            return false;
        };
        e.last_access = now;
        if now.duration_since(e.last_touch).unwrap_or_default() >= TOUCH_INTERVAL {
            e.last_touch = now;
            return true;
        }
        false
    }

    /// Forgets a blob (after it was deleted).
    pub fn remove(&self, digest: &Digest) {
        let mut inner = self.inner.lock().expect("lru lock");
        if let Some(e) = inner.entries.remove(digest) {
            inner.total -= e.size;
        }
    }

    /// The size of an indexed blob (0 when not indexed).
    pub fn size_of(&self, digest: &Digest) -> u64 {
        let inner = self.inner.lock().expect("lru lock");
        inner.entries.get(digest).map_or(0, |e| e.size)
    }

    /// The bytes currently indexed.
    pub fn total(&self) -> u64 {
        self.inner.lock().expect("lru lock").total
    }

    /// The least recently used blobs whose removal brings the total to 90% of the cap.
    pub fn victims(&self) -> Vec<Digest> {
        let inner = self.inner.lock().expect("lru lock");
        if inner.total <= self.max_size {
            return Vec::new();
        }
        let target = self.max_size / 10 * 9;
        let mut by_age: Vec<(&Digest, &Entry)> = inner.entries.iter().collect();
        by_age.sort_by_key(|(_, e)| e.last_access);
        let mut total = inner.total;
        let mut out = Vec::new();
        for (d, e) in by_age {
            if total <= target {
                break;
            }
            total -= e.size;
            out.push(d.clone());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(i: u8) -> Digest {
        Digest::sha256_of(&[i])
    }

    #[test]
    fn evicts_least_recently_used_first() {
        let lru = LruIndex::new(100, Vec::new());
        lru.insert(d(1), 40);
        std::thread::sleep(Duration::from_millis(5));
        lru.insert(d(2), 40);
        std::thread::sleep(Duration::from_millis(5));
        assert!(lru.victims().is_empty());
        lru.accessed(&d(1));
        lru.insert(d(3), 40);
        assert_eq!(lru.total(), 120);
        assert_eq!(lru.victims(), vec![d(2)]);
        lru.remove(&d(2));
        assert_eq!(lru.total(), 80);
        assert!(lru.victims().is_empty());
    }

    #[test]
    fn loads_existing_blobs() {
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        let new = SystemTime::UNIX_EPOCH + Duration::from_secs(20);
        let lru = LruIndex::new(
            10,
            vec![
                BlobInfo {
                    digest: d(1),
                    size: 8,
                    last_access: new,
                },
                BlobInfo {
                    digest: d(2),
                    size: 8,
                    last_access: old,
                },
            ],
        );
        assert_eq!(lru.victims(), vec![d(2)]);
        assert!(lru.accessed(&d(1)), "an old on-disk time is refreshed");
        assert!(!lru.accessed(&d(1)), "but not twice in a row");
    }
}
