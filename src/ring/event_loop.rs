//! The shard's loop over its ring, and the sessions it runs. Each iteration reads every completion there is
//! (marking sockets ready, resuming parked clients that stirred, starting a login for each new connection),
//! polls the sessions that were woken, and submits what they armed in one system call. A session is a client
//! from its login to the moment it parks or leaves; it is polled by this loop, not spawned as a glommio task,
//! so a socket becoming ready costs a push onto the loop's ready list rather than a task wake-up.
//!
//! With nothing ready the loop sleeps in glommio until the ring signals its eventfd or something of glommio's
//! (a timer, a server granted through the channel mesh) wakes a session. While busy it yields to glommio's
//! other tasks after each iteration; glommio's own I/O (timers, the mesh) is then polled when its preemption
//! timer fires.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::OwnedFd;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use slab::Slab;

use super::sys::{self, glommio_reader};
use super::{Arrival, Sockets};
use crate::session;
use crate::shard::{counted, Shard};
use crate::{error, isolation};

/// Runs for the shard's life.
pub async fn run(shard: Rc<Shard>, sockets: Rc<Sockets>, signal: OwnedFd) {
    let signal = glommio_reader(signal);
    let sessions = Sessions::default();
    let mut bell = Box::pin(signal.read_at(0, 8));
    loop {
        sockets.begin_batch();
        let arrivals = sockets.drain();
        let mut worked = !arrivals.is_empty();
        for arrival in arrivals {
            match arrival {
                Arrival::Resume(socket, parked) => sessions.start(Box::pin(counted(
                    &shard,
                    session::resume(shard.clone(), socket, parked),
                ))),
                Arrival::Accepted(socket) => sessions.start(Box::pin(counted(
                    &shard,
                    session::serve(shard.clone(), socket),
                ))),
            }
        }
        worked |= sessions.run_ready();
        sockets.end_batch();
        if worked {
            // glommio's other tasks (spawned by sessions, woken by them) run before the next iteration.
            futures_lite::future::yield_now().await;
            continue;
        }
        let rang = std::future::poll_fn(|cx| {
            if let Poll::Ready(read) = bell.as_mut().poll(cx) {
                return Poll::Ready(Some(read));
            }
            if ready::any() {
                return Poll::Ready(None);
            }
            ready::sleep(cx.waker());
            Poll::Pending
        })
        .await;
        ready::awake();
        if let Some(read) = rang {
            if let Err(e) = read {
                error!("shard {}: its sockets cannot be woken: {e}", shard.id);
                return;
            }
            bell = Box::pin(signal.read_at(0, 8));
        }
    }
}

type Session = Pin<Box<dyn Future<Output = ()>>>;

/// The shard's running sessions, each with the generation its wakers carry, so a waker of a session that has
/// ended does not poll the one that took its slot.
#[derive(Default)]
struct Sessions {
    slab: RefCell<Slab<(u32, Option<Session>)>>,
    next_gen: Cell<u32>,
}

impl Sessions {
    fn start(&self, session: Session) {
        let gen = self.next_gen.get().wrapping_add(1);
        self.next_gen.set(gen);
        let slot = self.slab.borrow_mut().insert((gen, Some(session)));
        ready::push(id(slot, gen));
    }

    /// Polls every session woken since the last call; true if there was one.
    fn run_ready(&self) -> bool {
        let woken = ready::take();
        let any = !woken.is_empty();
        for &id in &woken {
            let (slot, gen) = (id as usize & 0xffff_ffff, (id >> 32) as u32);
            // Out of the slab while it runs: what it does may start or end other sessions.
            let Some(mut session) = self
                .slab
                .borrow_mut()
                .get_mut(slot)
                .filter(|(g, _)| *g == gen)
                .and_then(|(_, s)| s.take())
            else {
                continue;
            };
            let waker = ready::waker(id);
            let mut cx = Context::from_waker(&waker);
            let polled =
                std::panic::catch_unwind(AssertUnwindSafe(|| session.as_mut().poll(&mut cx)));
            let mut slab = self.slab.borrow_mut();
            match polled {
                Ok(Poll::Pending) => slab[slot].1 = Some(session),
                Ok(Poll::Ready(())) => {
                    slab.remove(slot);
                }
                Err(panic) => {
                    slab.remove(slot);
                    drop(slab);
                    let panic = isolation::message(&*panic);
                    error!("bug: a client session panicked: {panic}; that client alone has ended");
                    // Dropped after the log line: its destructors may panic too, and are caught the same way.
                    let dropped = std::panic::catch_unwind(AssertUnwindSafe(|| drop(session)));
                    if dropped.is_err() {
                        error!("bug: a client session panicked again while being dropped");
                    }
                }
            }
        }
        ready::recycle(woken);
        any
    }
}

/// What a session's waker does.
pub(super) fn wake(id: usize) {
    ready::push(id as u64)
}

fn id(slot: usize, gen: u32) -> u64 {
    u64::from(gen) << 32 | slot as u64
}

/// The loop's ready list: sessions woken since it last looked, by id. Wakers carry only the id, so making,
/// cloning and dropping them allocates nothing. They belong to the shard's thread: a session's wakers are
/// handed only to the shard's own sockets, timers and pools.
mod ready {
    use super::*;

    thread_local! {
        static READY: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
        /// The loop's own waker while it sleeps.
        static SLEEPING: RefCell<Option<Waker>> = const { RefCell::new(None) };
    }

    pub fn push(id: u64) {
        READY.with(|r| r.borrow_mut().push(id));
        if let Some(waker) = SLEEPING.with(|s| s.borrow_mut().take()) {
            waker.wake();
        }
    }

    pub fn any() -> bool {
        READY.with(|r| !r.borrow().is_empty())
    }

    pub fn take() -> Vec<u64> {
        READY.with(|r| std::mem::take(&mut *r.borrow_mut()))
    }

    /// Gives the list's allocation back for the next round.
    pub fn recycle(mut used: Vec<u64>) {
        READY.with(|r| {
            let mut ready = r.borrow_mut();
            if ready.is_empty() {
                used.clear();
                *ready = used;
            }
        });
    }

    pub fn sleep(waker: &Waker) {
        SLEEPING.with(|s| *s.borrow_mut() = Some(waker.clone()));
    }

    pub fn awake() {
        SLEEPING.with(|s| s.borrow_mut().take());
    }

    pub fn waker(id: u64) -> Waker {
        sys::waker_of(id as usize)
    }
}
