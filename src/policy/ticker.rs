//! The epoch ticker: advances every policy engine's epoch each `EPOCH_TICK` while a module
//! runs, so that timeouts fire, and sleeps while none does (an idle proxy is not woken for it).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use wasmtime::{Engine, EngineWeak};

use super::EPOCH_TICK;

static ENGINES: Mutex<Vec<EngineWeak>> = Mutex::new(Vec::new());
static RUNNING: AtomicUsize = AtomicUsize::new(0);
static THREAD: OnceLock<Thread> = OnceLock::new();

/// Has the ticker advance `engine`'s epoch from now on (starting the ticker thread once).
pub fn register(engine: &Engine) -> std::io::Result<()> {
    ENGINES.lock().expect("engines lock").push(engine.weak());
    if THREAD.get().is_none() {
        let handle = std::thread::Builder::new()
            .name("policy-epoch".into())
            .spawn(tick)?;
        let _ = THREAD.set(handle.thread().clone());
    }
    Ok(())
}

/// Marks a module as running until the returned guard is dropped.
pub fn running() -> Running {
    if RUNNING.fetch_add(1, Ordering::SeqCst) == 0 {
        if let Some(t) = THREAD.get() {
            t.unpark();
        }
    }
    Running(())
}

/// A module is running while this lives.
pub struct Running(());

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
    }
}

fn tick() {
    loop {
        if RUNNING.load(Ordering::SeqCst) == 0 {
            std::thread::park_timeout(Duration::from_secs(10));
            ENGINES
                .lock()
                .expect("engines lock")
                .retain(|w| w.upgrade().is_some());
            continue;
        }
        std::thread::sleep(EPOCH_TICK);
        let engines: Vec<Engine> = ENGINES
            .lock()
            .expect("engines lock")
            .iter()
            .filter_map(EngineWeak::upgrade)
            .collect();
        for e in engines {
            e.increment_epoch();
        }
    }
}
