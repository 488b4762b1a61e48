//! Pool decisions as plain data. One [`PoolShard`] per (database, user) pool per shard holds that shard's slice
//! of the pool: idle servers, unused budget (connections it may still open), its FIFO of waiting clients and
//! the peers that asked it for a server. It never does I/O; the shard performs what it answers.
//!
//! Why the global cap holds exactly: a pool's `pool_size` is split into per-shard budgets at start. A server
//! exists only against one unit of budget, and a unit moves between shards only inside a message (as budget or
//! as a live server), so the units in all shards and in flight always add up to `pool_size`.
//!
//! Why no client waits while another shard has an idle server: a shard that queues a client asks every peer it
//! has not asked yet. A peer with an idle server or budget gives it at once; otherwise it notes the asker and
//! gives it the next server it releases or the next budget it frees, before keeping either for itself idle.
//! A peer with noted askers therefore never holds an idle server or free budget.

use std::collections::VecDeque;

/// What a client that wants a server does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Checkout<S> {
    /// Use this idle server.
    Ready(S),
    /// Open a new server connection: one unit of budget is now spent on it.
    Connect,
    /// Wait in line; ask these peers for a server or budget.
    Wait { ask: Vec<usize> },
}

/// Where a server that a client no longer needs, or that arrived from a peer, goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Handoff<S, W> {
    ToWaiter(W, S),
    ToPeer(usize, S),
    Idle,
}

/// Where a freed unit of budget goes (after a server closed or a connect failed).
#[derive(Debug, PartialEq, Eq)]
pub enum Freed<W> {
    /// This waiter should connect, on the budget just freed.
    Connect(W),
    /// Send the budget to this peer.
    ToPeer(usize),
    Kept,
}

/// A peer's answer to an ask.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer<S> {
    GiveServer(S),
    GiveBudget,
    /// Nothing now; the asker is noted and will be served first.
    Noted,
}

#[derive(Debug)]
pub struct PoolShard<S, W> {
    idle: Vec<S>,
    budget: u32,
    /// Servers this shard owns: idle, leased or being connected.
    open: u32,
    waiters: VecDeque<W>,
    /// Peers that asked and were noted, oldest first.
    wanted_by: VecDeque<usize>,
    /// Peers we asked and have not heard a give from: asking them again would only duplicate the note.
    asked: Vec<bool>,
    me: usize,
}

impl<S, W: PartialEq> PoolShard<S, W> {
    /// This shard's slice of a pool of `pool_size` over `shards` shards: an even split, the remainder to the
    /// lowest shards, so every shard computes the same split without talking.
    pub fn new(pool_size: u32, shards: usize, me: usize) -> Self {
        let n = shards as u32;
        let budget = pool_size / n + u32::from((me as u32) < pool_size % n);
        PoolShard {
            idle: Vec::new(),
            budget,
            open: 0,
            waiters: VecDeque::new(),
            wanted_by: VecDeque::new(),
            asked: vec![false; shards],
            me,
        }
    }

    pub fn idle_count(&self) -> usize {
        self.idle.len()
    }

    pub fn open_count(&self) -> u32 {
        self.open
    }

    pub fn waiting_count(&self) -> usize {
        self.waiters.len()
    }

    /// A client wants a server. Idle servers go last-in first-out: the most recently used one is the warmest.
    pub fn checkout(&mut self, waiter: W) -> Checkout<S> {
        if let Some(server) = self.idle.pop() {
            return Checkout::Ready(server);
        }
        if self.budget > 0 {
            self.budget -= 1;
            self.open += 1;
            return Checkout::Connect;
        }
        self.waiters.push_back(waiter);
        Checkout::Wait {
            ask: self.peers_to_ask(),
        }
    }

    fn peers_to_ask(&mut self) -> Vec<usize> {
        let me = self.me;
        let mut ask = Vec::new();
        for (peer, asked) in self.asked.iter_mut().enumerate() {
            if peer != me && !*asked {
                *asked = true;
                ask.push(peer);
            }
        }
        ask
    }

    /// A waiter gave up (timeout, disconnect). Asks already sent stay: a server they bring waits idle here.
    pub fn cancel_wait(&mut self, waiter: &W) {
        self.waiters.retain(|w| w != waiter);
    }

    /// A client is done with a healthy server.
    pub fn release(&mut self, server: S) -> Handoff<S, W> {
        if let Some(waiter) = self.waiters.pop_front() {
            return Handoff::ToWaiter(waiter, server);
        }
        if let Some(peer) = self.wanted_by.pop_front() {
            self.open -= 1;
            return Handoff::ToPeer(peer, server);
        }
        self.idle.push(server);
        Handoff::Idle
    }

    /// A server owned here is gone (closed, broken, or never connected): its budget is free again.
    pub fn closed(&mut self) -> Freed<W> {
        self.open -= 1;
        self.budget += 1;
        self.place_budget()
    }

    fn place_budget(&mut self) -> Freed<W> {
        if let Some(waiter) = self.waiters.pop_front() {
            self.budget -= 1;
            self.open += 1;
            return Freed::Connect(waiter);
        }
        if let Some(peer) = self.wanted_by.pop_front() {
            self.budget -= 1;
            return Freed::ToPeer(peer);
        }
        Freed::Kept
    }

    /// `peer` has a waiting client and asks for a server.
    pub fn asked_by(&mut self, peer: usize) -> Answer<S> {
        if let Some(server) = self.idle.pop() {
            self.open -= 1;
            return Answer::GiveServer(server);
        }
        if self.budget > 0 {
            self.budget -= 1;
            return Answer::GiveBudget;
        }
        if !self.wanted_by.contains(&peer) {
            self.wanted_by.push_back(peer);
        }
        Answer::Noted
    }

    /// A server arrived from `peer`. Returns where it goes, and the peers to ask again if clients still wait.
    pub fn server_from(&mut self, peer: usize, server: S) -> (Handoff<S, W>, Vec<usize>) {
        self.asked[peer] = false;
        self.open += 1;
        let handoff = self.release(server);
        (handoff, self.ask_again())
    }

    /// Budget arrived from `peer`.
    pub fn budget_from(&mut self, peer: usize) -> (Freed<W>, Vec<usize>) {
        self.asked[peer] = false;
        self.budget += 1;
        let freed = self.place_budget();
        (freed, self.ask_again())
    }

    fn ask_again(&mut self) -> Vec<usize> {
        if self.waiters.is_empty() {
            Vec::new()
        } else {
            self.peers_to_ask()
        }
    }

    /// Removes idle servers for which `expired` holds, keeping at least `keep` servers open; the caller closes
    /// them and calls [`PoolShard::closed`] for each.
    pub fn take_expired(&mut self, keep: u32, mut expired: impl FnMut(&S) -> bool) -> Vec<S> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.idle.len() {
            if self.open - out.len() as u32 > keep && expired(&self.idle[i]) {
                out.push(self.idle.remove(i));
            } else {
                i += 1;
            }
        }
        out
    }

    /// Takes the next idle server, for a health check before use.
    pub fn take_idle(&mut self) -> Option<S> {
        self.idle.pop()
    }

    /// Budget the shard may still spend on warm-up connections to reach `min` open servers.
    pub fn warm_up(&mut self, min: u32) -> bool {
        if self.open < min && self.budget > 0 && self.waiters.is_empty() {
            self.budget -= 1;
            self.open += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Shard = PoolShard<u32, u32>;

    /// Servers and budget on all shards and in flight add up to the pool size.
    fn units(shards: &[Shard], in_flight: u32) -> u32 {
        shards.iter().map(|s| s.budget + s.open).sum::<u32>() + in_flight
    }

    #[test]
    fn budget_splits_exactly_over_shards() {
        for size in [1, 2, 5, 7, 20] {
            for n in [1, 2, 3, 16] {
                let shards: Vec<Shard> = (0..n).map(|me| PoolShard::new(size, n, me)).collect();
                assert_eq!(units(&shards, 0), size, "size {size} over {n}");
            }
        }
    }

    #[test]
    fn waiters_are_served_first_in_first_out() {
        let mut s = Shard::new(1, 1, 0);
        assert_eq!(s.checkout(1), Checkout::Connect);
        assert_eq!(s.checkout(2), Checkout::Wait { ask: vec![] });
        assert_eq!(s.checkout(3), Checkout::Wait { ask: vec![] });
        assert_eq!(s.release(100), Handoff::ToWaiter(2, 100));
        assert_eq!(s.release(100), Handoff::ToWaiter(3, 100));
        assert_eq!(s.release(100), Handoff::Idle);
        assert_eq!(s.checkout(4), Checkout::Ready(100));
    }

    #[test]
    fn a_timed_out_waiter_leaves_the_line() {
        let mut s = Shard::new(1, 1, 0);
        assert_eq!(s.checkout(1), Checkout::Connect);
        assert!(matches!(s.checkout(2), Checkout::Wait { .. }));
        assert!(matches!(s.checkout(3), Checkout::Wait { .. }));
        s.cancel_wait(&2);
        assert_eq!(s.waiting_count(), 1);
        assert_eq!(s.release(100), Handoff::ToWaiter(3, 100));
    }

    #[test]
    fn a_failed_connect_passes_the_budget_to_the_next_waiter() {
        let mut s = Shard::new(1, 1, 0);
        assert_eq!(s.checkout(1), Checkout::Connect);
        assert!(matches!(s.checkout(2), Checkout::Wait { .. }));
        assert_eq!(s.closed(), Freed::Connect(2));
        assert_eq!(s.open_count(), 1);
        assert_eq!(s.closed(), Freed::Kept);
        assert_eq!(s.open_count(), 0);
    }

    #[test]
    fn an_idle_server_on_another_shard_reaches_a_waiter() {
        // Pool of 2 over 2 shards: one unit each.
        let mut a = Shard::new(2, 2, 0);
        let mut b = Shard::new(2, 2, 1);
        assert_eq!(b.checkout(10), Checkout::Connect);
        assert_eq!(b.release(7), Handoff::Idle);
        assert_eq!(a.checkout(1), Checkout::Connect);
        // Shard 0 needs a second server and asks shard 1, which gives its idle one.
        assert_eq!(a.checkout(2), Checkout::Wait { ask: vec![1] });
        let Answer::GiveServer(server) = b.asked_by(0) else {
            panic!("no server given")
        };
        assert_eq!(a.server_from(1, server), (Handoff::ToWaiter(2, 7), vec![]));
        assert_eq!(units(&[a, b], 0), 2);
    }

    #[test]
    fn a_noted_asker_gets_the_next_release_before_the_idle_list() {
        let mut a = Shard::new(2, 2, 0);
        let mut b = Shard::new(2, 2, 1);
        assert_eq!(a.checkout(1), Checkout::Connect);
        assert_eq!(b.checkout(10), Checkout::Connect);
        assert_eq!(a.checkout(2), Checkout::Wait { ask: vec![1] });
        assert_eq!(b.asked_by(0), Answer::Noted);
        // Asking again while noted is not repeated.
        assert_eq!(a.checkout(3), Checkout::Wait { ask: vec![] });
        assert_eq!(b.release(8), Handoff::ToPeer(0, 8));
        let (handoff, ask) = a.server_from(1, 8);
        assert_eq!(handoff, Handoff::ToWaiter(2, 8));
        // Client 3 still waits, so shard 1 is asked again.
        assert_eq!(ask, vec![1]);
        assert_eq!(units(&[a, b], 0), 2);
    }

    #[test]
    fn budget_moves_when_the_giver_has_no_server() {
        let mut a = Shard::new(1, 2, 0);
        let mut b = Shard::new(1, 2, 1);
        assert_eq!(b.checkout(10), Checkout::Wait { ask: vec![0] });
        assert_eq!(a.asked_by(1), Answer::GiveBudget);
        assert_eq!(b.budget_from(0), (Freed::Connect(10), vec![]));
        assert_eq!(units(&[a, b], 0), 1);
    }

    #[test]
    fn the_cap_holds_under_any_interleaving() {
        // A deterministic pseudo-random walk over three shards with messages in flight; after every step the
        // units add up, and open servers never exceed the pool.
        let size = 5;
        let mut shards: Vec<Shard> = (0..3).map(|me| PoolShard::new(size, 3, me)).collect();
        let mut leased: Vec<(usize, u32)> = Vec::new();
        let mut flight: VecDeque<(usize, usize, Option<u32>)> = VecDeque::new(); // (to, from, server)
        let mut asks: VecDeque<(usize, usize)> = VecDeque::new(); // (to, from)
        let mut next_id = 0;
        let mut seed = 12345u64;
        for _ in 0..20_000 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = (seed >> 33) as usize;
            let shard = r % 3;
            match (r / 3) % 5 {
                0 | 1 => {
                    next_id += 1;
                    match shards[shard].checkout(next_id) {
                        Checkout::Ready(s) => leased.push((shard, s)),
                        Checkout::Connect => leased.push((shard, next_id + 1000)),
                        Checkout::Wait { ask } => asks.extend(ask.into_iter().map(|p| (p, shard))),
                    }
                }
                2 if !leased.is_empty() => {
                    let (owner, s) = leased.swap_remove(r % leased.len());
                    if r.is_multiple_of(7) {
                        match shards[owner].closed() {
                            Freed::Connect(_) => leased.push((owner, s)),
                            Freed::ToPeer(p) => flight.push_back((p, owner, None)),
                            Freed::Kept => {}
                        }
                    } else {
                        match shards[owner].release(s) {
                            Handoff::ToWaiter(_, s) => leased.push((owner, s)),
                            Handoff::ToPeer(p, s) => flight.push_back((p, owner, Some(s))),
                            Handoff::Idle => {}
                        }
                    }
                }
                3 => {
                    if let Some((to, from)) = asks.pop_front() {
                        match shards[to].asked_by(from) {
                            Answer::GiveServer(s) => flight.push_back((from, to, Some(s))),
                            Answer::GiveBudget => flight.push_back((from, to, None)),
                            Answer::Noted => {}
                        }
                    }
                }
                _ => {
                    if let Some((to, from, server)) = flight.pop_front() {
                        let ask = match server {
                            Some(s) => {
                                let (h, ask) = shards[to].server_from(from, s);
                                match h {
                                    Handoff::ToWaiter(_, s) => leased.push((to, s)),
                                    Handoff::ToPeer(p, s) => flight.push_back((p, to, Some(s))),
                                    Handoff::Idle => {}
                                }
                                ask
                            }
                            None => {
                                let (f, ask) = shards[to].budget_from(from);
                                match f {
                                    Freed::Connect(w) => leased.push((to, w + 1000)),
                                    Freed::ToPeer(p) => flight.push_back((p, to, None)),
                                    Freed::Kept => {}
                                }
                                ask
                            }
                        };
                        asks.extend(ask.into_iter().map(|p| (p, to)));
                    }
                }
            }
            assert_eq!(units(&shards, flight.len() as u32), size);
            assert!(shards.iter().map(|s| s.open).sum::<u32>() <= size);
            for s in &shards {
                assert!(s.wanted_by.is_empty() || (s.idle.is_empty() && s.budget == 0));
            }
        }
    }
}
