//! Parked clients: idle clients that hold no task and no glommio stream, only an entry in the shard's slab (the
//! socket and the session) and a one-shot poll on a ring of the shard's own. A glommio task with its stream costs
//! ~750 bytes per idle client (ARCHITECTURE.md); an entry costs a tenth of that. The ring signals an eventfd
//! that one task of the shard reads through glommio, so a shard with only parked clients sleeps; each
//! completion (bytes, hang-up, or the shutdown's SHUT_RD) takes the entry out and resumes it as a task.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use glommio::io::BufferedFile;
use io_uring::{opcode, types, IoUring};
use slab::Slab;

use super::{Shard, TICK};
use crate::error;
use crate::session::Parked;

/// Submissions are pushed one at a time and submitted at once, so the queue never holds more than a few.
const SUBMISSION_DEPTH: u32 = 64;
/// Wake-ups that can wait to be read at once; more (a shutdown waking every parked client) wait in the kernel
/// and are read when this many have been.
const COMPLETION_DEPTH: u32 = 4096;

/// A shard's ring and the eventfd it signals, made before the shards start so a host without io_uring stops
/// pgherd at start-up.
pub struct Ring {
    ring: IoUring,
    signal: OwnedFd,
}

impl Ring {
    pub fn new() -> io::Result<Ring> {
        let ring = IoUring::builder()
            .setup_cqsize(COMPLETION_DEPTH)
            .build(SUBMISSION_DEPTH)?;
        let signal = eventfd()?;
        ring.submitter().register_eventfd(signal.as_raw_fd())?;
        Ok(Ring { ring, signal })
    }
}

/// An eventfd for a glommio task to read. Blocking on purpose: glommio's read of it then waits in the kernel
/// instead of failing with EAGAIN.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd(2) with valid flags; the result is checked before it is owned.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The eventfd handed to glommio, for a task to wait on with `read_at(0, 8)`.
pub fn glommio_reader(fd: OwnedFd) -> BufferedFile {
    // SAFETY: the eventfd is ours; glommio owns it from here.
    unsafe { BufferedFile::from_raw_fd(fd.into_raw_fd()) }
}

/// The shard's parked clients, and the bell that tells idle clients when to park.
pub struct Lot {
    ring: RefCell<IoUring>,
    parked: RefCell<Slab<Parked>>,
    /// Shard ticks so far: the clock that `client_park_after` and `client_login_timeout` are measured with.
    ticks: Cell<u64>,
    /// Tasks with a [`TickTimer`] that asked since the last tick, woken at the next one to look at the count. A
    /// glommio timer per client per transaction cost more than the rest of the transaction's bookkeeping, and
    /// one per login about 4 % of an md5 login's CPU.
    waiting: RefCell<Vec<Waker>>,
}

/// When a timer last asked to be woken at a tick: it asks at most once per tick, however often it is polled.
#[derive(Default)]
pub struct Asked(Cell<u64>);

impl Lot {
    /// The lot, and the eventfd to give [`wake_parked`].
    pub fn new(ring: Ring) -> (Lot, OwnedFd) {
        let lot = Lot {
            ring: RefCell::new(ring.ring),
            parked: RefCell::new(Slab::new()),
            ticks: Cell::new(1),
            waiting: RefCell::new(Vec::new()),
        };
        (lot, ring.signal)
    }

    /// The shard's tick: wakes the timers that asked since the last one.
    pub fn tick(&self) {
        self.ticks.set(self.ticks.get() + 1);
        for waker in self.waiting.take() {
            waker.wake();
        }
    }

    /// Resolves once `after` has passed, measured in whole ticks (so between `after` and `after` + one tick).
    /// Dropped early (the idle client stirred, the login ended), it may leave a waker that wakes its task once,
    /// harmlessly.
    fn after<'a>(&'a self, after: Duration, asked: &'a Asked) -> TickTimer<'a> {
        let ticks = after.as_nanos().div_ceil(TICK.as_nanos()).max(1) as u64;
        TickTimer {
            lot: self,
            until: self.ticks.get() + ticks + 1,
            asked,
        }
    }

    /// `fut`'s output, or `None` if `limit` (measured in ticks, as by [`Lot::after`]) passes first. `asked` may
    /// outlive the call: a client that waits again and again (an idle client between transactions) then asks
    /// to be woken once per tick at most.
    pub async fn within<T>(
        &self,
        limit: Duration,
        asked: &Asked,
        fut: impl Future<Output = T>,
    ) -> Option<T> {
        let expired = self.after(limit, asked);
        futures_lite::future::or(async { Some(fut.await) }, async {
            expired.await;
            None
        })
        .await
    }

    /// Parks a client until its socket is readable or hung up; gives it back if the ring refuses.
    pub fn park(&self, client: Parked) -> Result<(), Parked> {
        let mut parked = self.parked.borrow_mut();
        let entry = parked.vacant_entry();
        let readable = (libc::POLLIN | libc::POLLRDHUP) as u32;
        let poll = opcode::PollAdd::new(types::Fd(client.fd()), readable)
            .build()
            .user_data(entry.key() as u64);
        let mut ring = self.ring.borrow_mut();
        // SAFETY: the entry names a descriptor the slab keeps open until its completion is read.
        let pushed = unsafe { ring.submission().push(&poll) }.is_ok();
        if !pushed || ring.submit().is_err() {
            return Err(client);
        }
        entry.insert(client);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.parked.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes out the clients whose polls completed.
    fn woken(&self) -> Vec<Parked> {
        let mut ring = self.ring.borrow_mut();
        let mut parked = self.parked.borrow_mut();
        let mut woken = Vec::new();
        loop {
            woken.extend(
                ring.completion()
                    .filter_map(|done| parked.try_remove(done.user_data() as usize)),
            );
            // Completions beyond the queue wait in the kernel until the queue has room and it is asked.
            if !ring.submission().cq_overflow() || ring.submit().is_err() {
                return woken;
            }
        }
    }
}

pub struct TickTimer<'a> {
    lot: &'a Lot,
    until: u64,
    asked: &'a Asked,
}

impl Future for TickTimer<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let now = self.lot.ticks.get();
        if now >= self.until {
            return Poll::Ready(());
        }
        if self.asked.0.get() != now {
            self.asked.0.set(now);
            self.lot.waiting.borrow_mut().push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Resumes parked clients as their sockets wake, for the shard's life.
pub async fn wake_parked(shard: Rc<Shard>, signal: OwnedFd) {
    let signal = glommio_reader(signal);
    loop {
        if let Err(e) = signal.read_at(0, 8).await {
            error!("shard {}: parked clients cannot be woken: {e}", shard.id);
            return;
        }
        for client in shard.parking.woken() {
            super::spawn_client(&shard, crate::session::resume(shard.clone(), client));
        }
    }
}
