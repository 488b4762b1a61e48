//! The shard's coarse clock: when idle clients park and when logins time out, measured in ticks rather than
//! with a glommio timer each. A parked client (an idle client with no task) is an entry of the shard's sockets
//! (`ring::Sockets`) holding its session; its socket's readiness poll resumes it.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::TICK;

/// The bell that tells idle clients when to park.
pub struct Lot {
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

impl Default for Lot {
    fn default() -> Lot {
        Lot {
            // Ahead of every `Asked`'s zero, so the first wait asks.
            ticks: Cell::new(1),
            waiting: RefCell::new(Vec::new()),
        }
    }
}

impl Lot {
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
