//! Gives the kernel back the heap memory a burst of client tasks left behind. A client's task (its login, then
//! its relay) is the largest thing it ever holds; once the client parks, ~100 bytes stay. glibc keeps freed
//! memory for reuse and returns only the top of a heap, so after thousands of clients logged in at once and
//! parked, kilobytes per client would stay resident until the next storm.

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;

use super::Shard;
use crate::debug;

/// Tasks that must have ended since the last trim before the heap is trimmed again: a trim walks the heap, so
/// it waits for a burst worth its cost.
const TRIM_AFTER: usize = 1024;

/// The shard's running client tasks, the most there were since the heap was last trimmed, and the tasks whose
/// memory a trim has yet to free: those that ended since, and those that still ran at it.
#[derive(Default)]
pub struct Tasks {
    running: Cell<usize>,
    peak: Cell<usize>,
    ended: Cell<usize>,
}

impl Tasks {
    fn start(&self) -> Running<'_> {
        self.running.set(self.running.get() + 1);
        self.peak.set(self.peak.get().max(self.running.get()));
        Running(self)
    }

    /// On the shard's tick: trims the heap once a burst of tasks is over, that is when enough have ended and
    /// fewer than half the most there were still run. What a burst leaves behind grows with how many tasks
    /// ran at once, far beyond their own size (measured: a 19,000-client storm kept 870 bytes per parked
    /// client with about 500 logins in flight per shard), so the trim does not wait for a large peak.
    pub fn trim_after_burst(&self) {
        let (running, peak, ended) = (self.running.get(), self.peak.get(), self.ended.get());
        if ended >= TRIM_AFTER && running < peak.div_ceil(2) {
            // SAFETY: malloc_trim only hands free pages back; glibc locks each arena while it walks it.
            let released = unsafe { libc::malloc_trim(0) } == 1;
            debug!("{ended} client tasks ended, {running} of at most {peak} still run: heap trimmed (memory released: {released})");
            self.peak.set(running);
            // The tasks still running hold memory of the burst that this trim could not free: they count toward
            // the next trim, which comes once half of them have ended too. Counting from zero, a shard whose
            // burst ended with fewer than TRIM_AFTER tasks left kept their memory (a 19,000-client storm over
            // two shards: 190 bytes per parked client in some runs, over 1,100 in others).
            self.ended.set(running);
        }
    }
}

/// Counts one task while it lives, also when it is dropped unfinished.
struct Running<'a>(&'a Tasks);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.set(self.0.running.get() - 1);
        self.0.ended.set(self.0.ended.get() + 1);
    }
}

/// A client's session (a login, or a parked client that woke), counted in `shard.tasks` while it runs.
pub fn counted(
    shard: &Rc<Shard>,
    session: impl Future<Output = ()> + 'static,
) -> impl Future<Output = ()> + 'static {
    let shard = shard.clone();
    async move {
        let _running = shard.tasks.start();
        session.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heap_is_trimmed_once_a_burst_is_over() {
        let tasks = Tasks::default();
        let mut burst: Vec<_> = (0..2 * TRIM_AFTER).map(|_| tasks.start()).collect();
        burst.truncate(TRIM_AFTER);
        tasks.trim_after_burst();
        assert_eq!(
            tasks.ended.get(),
            TRIM_AFTER,
            "not while half the burst runs"
        );
        burst.truncate(10);
        tasks.trim_after_burst();
        assert_eq!(
            (tasks.ended.get(), tasks.peak.get()),
            (10, 10),
            "trimmed, and counting starts again from what still runs"
        );
        drop(burst);
        tasks.trim_after_burst();
        assert_eq!(
            tasks.ended.get(),
            20,
            "a few tasks ending is not worth a trim"
        );
    }

    #[test]
    fn what_a_trim_left_running_is_trimmed_when_it_ends() {
        let tasks = Tasks::default();
        let mut burst: Vec<_> = (0..2 * TRIM_AFTER).map(|_| tasks.start()).collect();
        // Fewer than TRIM_AFTER still run at the first trim; their memory is freed only by a later one.
        burst.truncate(TRIM_AFTER - 10);
        tasks.trim_after_burst();
        assert_eq!(tasks.peak.get(), TRIM_AFTER - 10, "trimmed mid-burst");
        burst.truncate(TRIM_AFTER / 4);
        tasks.trim_after_burst();
        assert_eq!(
            (tasks.ended.get(), tasks.peak.get()),
            (TRIM_AFTER / 4, TRIM_AFTER / 4),
            "trimmed again once most of the rest ended"
        );
    }
}
