//! Concurrent callers asking for the same key share one run of the work.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures_util::future::{BoxFuture, FutureExt, Shared};

use crate::error::{RegistryError, Result};

type Runs<K, T> = Arc<Mutex<HashMap<K, Shared<BoxFuture<'static, Result<T>>>>>>;

/// Runs at most one piece of work per key at a time; late callers await the running one.
///
/// The work runs in its own task, so it completes (and fills the cache) even when every
/// caller has gone away. A run that panics is an error for its callers, and its key is free
/// again: the next caller starts a new run.
pub struct SingleFlight<K, T: Clone> {
    inflight: Runs<K, T>,
}

impl<K, T: Clone> Default for SingleFlight<K, T> {
    fn default() -> Self {
        SingleFlight {
            inflight: Arc::default(),
        }
    }
}

/// Frees a key when its run ends, however it ends.
struct Forget<K: Hash + Eq, T: Clone> {
    inflight: Runs<K, T>,
    key: Option<K>,
}

impl<K: Hash + Eq, T: Clone> Drop for Forget<K, T> {
    fn drop(&mut self) {
        if let (Some(key), Ok(mut runs)) = (self.key.take(), self.inflight.lock()) {
            runs.remove(&key);
        }
    }
}

impl<K, T> SingleFlight<K, T>
where
    K: Hash + Eq + Clone + Send + 'static,
    T: Clone + Send + Sync + 'static,
{
    /// Runs `work` for `key`, or joins the run already under way.
    pub async fn run<F>(&self, key: K, work: F) -> Result<T>
    where
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let shared = {
            let mut map = self.inflight.lock().expect("singleflight lock");
            if let Some(existing) = map.get(&key) {
                existing.clone()
            } else {
                let forget = Forget {
                    inflight: Arc::clone(&self.inflight),
                    key: Some(key.clone()),
                };
                // run under the id of the request that started it
                let work = crate::request_id::carried(work);
                let task = tokio::spawn(async move {
                    let _forget = forget;
                    work.await
                });
                let fut = async move {
                    task.await.unwrap_or_else(|e| {
                        Err(RegistryError::internal(format!(
                            "a shared fetch failed: {e}"
                        )))
                    })
                }
                .boxed()
                .shared();
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
                    Ok(runs.fetch_add(1, Ordering::SeqCst) + 100)
                })
                .await
            }));
        }
        for h in handles {
            assert_eq!(h.await.unwrap().unwrap(), 100);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(sf.is_empty());
        // a later call runs again
        assert_eq!(sf.run("k", async { Ok(7) }).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn a_run_that_panics_is_an_error_for_its_callers_and_frees_its_key() {
        let sf: Arc<SingleFlight<&'static str, usize>> = Arc::new(SingleFlight::default());
        let callers: Vec<_> = (0..5)
            .map(|_| {
                let sf = sf.clone();
                tokio::spawn(async move {
                    sf.run("k", async {
                        tokio::time::sleep(Duration::from_millis(30)).await;
                        panic!("a bug in the work")
                    })
                    .await
                })
            })
            .collect();
        for c in callers {
            let e = c
                .await
                .expect("the callers themselves do not panic")
                .unwrap_err();
            assert_eq!(e.status, 500);
        }
        assert!(sf.is_empty(), "the key is not stuck");
        assert_eq!(
            sf.run("k", async { Ok(1) }).await.unwrap(),
            1,
            "the next caller retries"
        );
    }
}
