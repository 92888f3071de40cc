//! Log output to standard error, in batches on the runtime's worker threads: a worker keeps the
//! lines it writes until it runs out of work (it parks), has 16 KiB of them, or holds one for
//! 100 ms, then writes them with one system call. Under load that is one write for many access
//! lines instead of one each; an idle proxy writes every line as soon as its request is done.
//! Other threads (the blocking pool, the main thread) write each line at once.

use std::cell::RefCell;
use std::io::Write;
use std::time::{Duration, Instant};

/// The most a worker holds before writing.
const LIMIT: usize = 16 << 10;
/// The longest a line waits on a busy worker.
const MAX_AGE: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Batch {
    lines: Vec<u8>,
    since: Option<Instant>,
}

impl Batch {
    fn push(&mut self, bytes: &[u8]) {
        let now = Instant::now();
        let since = *self.since.get_or_insert(now);
        self.lines.extend_from_slice(bytes);
        if self.lines.len() >= LIMIT || now.duration_since(since) >= MAX_AGE {
            self.write_out();
        }
    }

    fn write_out(&mut self) {
        if !self.lines.is_empty() {
            // nowhere to report a failed log write
            let _ = std::io::stderr().lock().write_all(&self.lines);
            self.lines.clear();
        }
        self.since = None;
    }
}

thread_local! {
    /// Set on a worker thread once it first parks; other threads write at once.
    static BATCH: RefCell<Option<Batch>> = const { RefCell::new(None) };
}

/// The log writer: standard error, batched on worker threads.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stderr;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stderr {
    type Writer = Stderr;

    fn make_writer(&'a self) -> Self::Writer {
        Stderr
    }
}

impl Write for Stderr {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let batched = BATCH.with(|b| match b.borrow_mut().as_mut() {
            Some(batch) => {
                batch.push(bytes);
                true
            }
            None => false,
        });
        if batched {
            Ok(bytes.len())
        } else {
            std::io::stderr().write(bytes)
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// For the runtime's `on_thread_park`: writes what this worker holds (and from now on batches
/// its lines).
pub fn worker_parks() {
    BATCH.with(|b| {
        b.borrow_mut()
            .get_or_insert_with(Batch::default)
            .write_out()
    });
}

/// For the runtime's `on_thread_stop`: writes what this thread holds.
pub fn thread_stops() {
    BATCH.with(|b| {
        if let Some(batch) = b.borrow_mut().as_mut() {
            batch.write_out();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_writes_when_full_or_old() {
        let mut b = Batch::default();
        b.push(b"line\n");
        assert_eq!(b.lines, b"line\n", "held");
        b.push(&vec![b'x'; LIMIT]);
        assert!(b.lines.is_empty(), "written once full");
        b.push(b"line\n");
        b.since = Some(Instant::now() - MAX_AGE);
        b.push(b"another\n");
        assert!(
            b.lines.is_empty(),
            "written once the first line waited long enough"
        );
    }

    #[test]
    fn only_a_thread_that_parked_batches() {
        std::thread::spawn(|| {
            assert!(BATCH.with(|b| b.borrow().is_none()));
            worker_parks();
            Stderr.write_all(b"held\n").unwrap();
            assert_eq!(BATCH.with(|b| b.borrow().as_ref().unwrap().lines.len()), 5);
            worker_parks();
            assert!(BATCH.with(|b| b.borrow().as_ref().unwrap().lines.is_empty()));
        })
        .join()
        .unwrap();
    }
}
