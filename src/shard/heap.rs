//! Gives the kernel back the heap memory a burst of client tasks left behind. A client's task (its login, then
//! its relay) is the largest thing it ever holds; once the client parks, ~100 bytes stay. glibc keeps freed
//! memory for reuse and returns only the top of a heap, so after thousands of clients logged in at once and
//! parked, kilobytes per client would stay resident until the next storm.

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;

use super::Shard;
use crate::debug;

/// Tasks that must have ended since the shard's high-water mark before the heap is trimmed: smaller dips are
/// soon reused and not worth a walk over the heap.
const TRIM_AFTER: usize = 1024;

/// The shard's running client tasks, and the most there were since the heap was last trimmed.
#[derive(Default)]
pub struct Tasks {
    running: Cell<usize>,
    peak: Cell<usize>,
}

impl Tasks {
    fn start(&self) -> Running<'_> {
        self.running.set(self.running.get() + 1);
        self.peak.set(self.peak.get().max(self.running.get()));
        Running(self)
    }

    /// On the shard's tick: trims the heap when a burst of tasks has ended.
    pub fn trim_after_burst(&self) {
        let (running, peak) = (self.running.get(), self.peak.get());
        if peak - running >= TRIM_AFTER {
            // SAFETY: malloc_trim only hands free pages back; glibc locks each arena while it walks it.
            let released = unsafe { libc::malloc_trim(0) } == 1;
            debug!("client tasks fell from {peak} to {running}: heap trimmed (memory released: {released})");
            self.peak.set(running);
        }
    }
}

/// Counts one task while it lives, also when it is dropped unfinished.
struct Running<'a>(&'a Tasks);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.set(self.0.running.get() - 1);
    }
}

/// Spawns a client's task (a login, or a parked client that woke), counted in `shard.tasks`.
pub fn spawn_client(shard: &Rc<Shard>, task: impl Future<Output = ()> + 'static) {
    let shard = shard.clone();
    glommio::spawn_local(async move {
        let _running = shard.tasks.start();
        task.await
    })
    .detach();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heap_is_trimmed_once_after_a_burst_and_not_for_a_dip() {
        let tasks = Tasks::default();
        let burst: Vec<_> = (0..TRIM_AFTER + 10).map(|_| tasks.start()).collect();
        assert_eq!(tasks.peak.get(), TRIM_AFTER + 10);
        drop(burst);
        assert_eq!(tasks.running.get(), 0);
        tasks.trim_after_burst();
        assert_eq!(
            tasks.peak.get(),
            0,
            "a burst that ended resets the high-water mark"
        );
        let dip: Vec<_> = (0..TRIM_AFTER - 1).map(|_| tasks.start()).collect();
        drop(dip);
        tasks.trim_after_burst();
        assert_eq!(
            tasks.peak.get(),
            TRIM_AFTER - 1,
            "a smaller dip is left for reuse"
        );
    }
}
