//! Pushed content is never evicted. A push leases each blob it relies on while it makes sure of
//! it (stored, or moved into the store) and pins it; the eviction pass claims each victim
//! before deleting it. A lease waits while its blob is being deleted, a claim fails while the
//! blob is leased or pinned: so an acknowledged push never loses a blob to a pass that picked
//! its victims a moment before.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::names::Digest;

/// Pins, leases and the blobs being evicted.
#[derive(Default)]
pub struct Pins {
    state: Mutex<State>,
    evicted: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    pinned: HashSet<Digest>,
    leases: HashMap<Digest, usize>,
    evicting: HashSet<Digest>,
}

/// A blob kept from eviction while held (see [`Pins::lease`]).
pub struct Lease<'a> {
    pins: &'a Pins,
    digest: Digest,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut s = self.pins.state.lock().expect("pins lock");
        if let Some(n) = s.leases.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                s.leases.remove(&self.digest);
            }
        }
    }
}

impl Lease<'_> {
    /// The leased blob.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }
}

impl Pins {
    /// Pins loaded from the store's records.
    pub fn new(pinned: impl IntoIterator<Item = Digest>) -> Pins {
        Pins {
            state: Mutex::new(State {
                pinned: pinned.into_iter().collect(),
                ..State::default()
            }),
            evicted: tokio::sync::Notify::new(),
        }
    }

    /// Keeps a blob from eviction until the lease is dropped; waits while an eviction of it is
    /// under way (afterwards the blob is simply not there).
    pub async fn lease(&self, digest: &Digest) -> Lease<'_> {
        loop {
            let evicted = self.evicted.notified();
            tokio::pin!(evicted);
            evicted.as_mut().enable();
            {
                let mut s = self.state.lock().expect("pins lock");
                if !s.evicting.contains(digest) {
                    *s.leases.entry(digest.clone()).or_default() += 1;
                    return Lease {
                        pins: self,
                        digest: digest.clone(),
                    };
                }
            }
            evicted.await;
        }
    }

    /// Pins a leased blob (its durable record already written): never evicted from now on;
    /// `then` runs under the same lock (to take it out of the eviction index).
    pub fn pin(&self, lease: &Lease<'_>, then: impl FnOnce()) {
        let mut s = self.state.lock().expect("pins lock");
        s.pinned.insert(lease.digest.clone());
        then();
    }

    /// Runs `f` (to put a blob in the eviction index) unless the blob is pinned, under the lock
    /// that pinning takes: a blob pinned meanwhile is never left in the index.
    pub fn unless_pinned(&self, digest: &Digest, f: impl FnOnce()) {
        let s = self.state.lock().expect("pins lock");
        if !s.pinned.contains(digest) {
            f();
        }
    }

    /// Claims a blob for deletion by the eviction pass: false when it is pinned or leased.
    pub fn claim(&self, digest: &Digest) -> bool {
        let mut s = self.state.lock().expect("pins lock");
        if s.pinned.contains(digest) || s.leases.contains_key(digest) {
            return false;
        }
        s.evicting.insert(digest.clone())
    }

    /// Ends an eviction claimed with [`Pins::claim`].
    pub fn evicted(&self, digest: &Digest) {
        self.state
            .lock()
            .expect("pins lock")
            .evicting
            .remove(digest);
        self.evicted.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn leased_and_pinned_blobs_are_not_claimed_and_leases_wait_for_a_claim() {
        let pins = Arc::new(Pins::new([Digest::sha256_of(b"pinned")]));
        let (a, b) = (Digest::sha256_of(b"a"), Digest::sha256_of(b"b"));
        assert!(!pins.claim(&Digest::sha256_of(b"pinned")));
        let lease = pins.lease(&a).await;
        assert!(!pins.claim(&a), "a leased blob is not evicted");
        pins.pin(&lease, || ());
        drop(lease);
        assert!(!pins.claim(&a), "nor once it is pinned");

        assert!(pins.claim(&b));
        let waiting = {
            let pins = Arc::clone(&pins);
            let b = b.clone();
            tokio::spawn(async move {
                let _lease = pins.lease(&b).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "a lease waits while its blob is being evicted"
        );
        pins.evicted(&b);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .unwrap()
            .unwrap();
        assert!(pins.claim(&b), "free again once the lease is gone");
    }
}
