//! The time budget of one evaluation. A module's `timeout` counts the CPU time of the thread
//! running it, so that waiting does not count: not for a host call fetching from the upstream,
//! nor for a core on a busy machine. Whatever it waits for, an evaluation ends `WAIT_LIMIT`
//! after its timeout.

use std::time::{Duration, Instant};

/// How much longer than its timeout an evaluation may take in all, waiting included.
pub const WAIT_LIMIT: Duration = Duration::from_secs(30);

/// The CPU time one evaluation may still use, measured on the thread that runs it.
pub struct Budget {
    cpu_start: Duration,
    cpu: Duration,
    wall_end: Instant,
}

impl Budget {
    /// Starts a budget of `cpu` on the calling thread (the one that will run the module).
    pub fn start(cpu: Duration) -> Budget {
        Budget {
            cpu_start: thread_cpu_time(),
            cpu,
            wall_end: Instant::now() + cpu + WAIT_LIMIT,
        }
    }

    /// The CPU time used so far (on the calling thread, which must be the one that started it).
    pub fn used(&self) -> Duration {
        thread_cpu_time().saturating_sub(self.cpu_start)
    }

    /// The CPU time left, or `None` once it is spent or the wall-clock limit has passed.
    pub fn remaining(&self) -> Option<Duration> {
        if Instant::now() >= self.wall_end {
            return None;
        }
        let used = thread_cpu_time().saturating_sub(self.cpu_start);
        self.cpu.checked_sub(used).filter(|left| !left.is_zero())
    }
}

/// The CPU time the calling thread has used.
#[cfg(unix)]
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(not(unix))]
fn thread_cpu_time() -> Duration {
    use std::sync::OnceLock;
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_does_not_spend_the_budget_but_running_does() {
        let budget = Budget::start(Duration::from_millis(20));
        std::thread::sleep(Duration::from_millis(60));
        assert!(
            budget.remaining().is_some(),
            "sleeping three times the budget left it unspent"
        );
        let started = Instant::now();
        while budget.remaining().is_some() {
            std::hint::black_box(started.elapsed());
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "a spinning thread spends its budget"
            );
        }
    }
}
