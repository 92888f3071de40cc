//! Concurrent callers asking for the same key share one run of the work.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures_util::future::{BoxFuture, FutureExt, Shared};

/// Runs at most one piece of work per key at a time; late callers await the running one.
///
/// The work runs in its own task, so it completes (and fills the cache) even when every
/// caller has gone away.
pub struct SingleFlight<K, V: Clone> {
    inflight: Arc<Mutex<HashMap<K, Shared<BoxFuture<'static, V>>>>>,
}

impl<K, V: Clone> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight { inflight: Arc::default() }
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Runs `work` for `key`, or joins the run already under way.
    pub async fn run<F>(&self, key: K, work: F) -> V
    where
        F: Future<Output = V> + Send + 'static,
    {
        let shared = {
            let mut map = self.inflight.lock().expect("singleflight lock");
            if let Some(existing) = map.get(&key) {
                existing.clone()
            } else {
                let inflight = Arc::clone(&self.inflight);
                let k = key.clone();
                let task = tokio::spawn(async move {
                    let v = work.await;
                    inflight.lock().expect("singleflight lock").remove(&k);
                    v
                });
                let fut = async move { task.await.expect("singleflight task panicked") }.boxed().shared();
                map.insert(key, fut.clone());
                fut
            }
        };
        shared.await
    }

    /// How many runs are under way (for tests and metrics).
    pub fn len(&self) -> usize {
        self.inflight.lock().expect("singleflight lock").len()
    }

    /// Whether no run is under way.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let sf: Arc<SingleFlight<&'static str, usize>> = Arc::new(SingleFlight::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for _ in 0..20 {
            let (sf, runs) = (sf.clone(), runs.clone());
            handles.push(tokio::spawn(async move {
                sf.run("k", async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    runs.fetch_add(1, Ordering::SeqCst) + 100
                })
                .await
            }));
        }
        for h in handles {
            assert_eq!(h.await.unwrap(), 100);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(sf.is_empty());
        // a later call runs again
        assert_eq!(sf.run("k", async { 7 }).await, 7);
    }
}
