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
    /// Nothing now; the asker is noted and served in turn.
    Noted,
}

/// Whose turn it is: a client waiting here, or a peer that asked.
enum Turn<W> {
    Local(W),
    Peer(usize),
}

/// One pool's slice on one shard. `W` names a waiting client, `T` orders waits (a monotonic time).
#[derive(Debug)]
pub struct PoolShard<S, W, T> {
    idle: Vec<S>,
    budget: u32,
    /// This shard's slice of the pool at start, which it drifts back to when quiet.
    initial: u32,
    /// Servers this shard owns: idle, leased or being connected.
    open: u32,
    waiters: VecDeque<(W, T)>,
    /// Peers that asked and were noted, with when their oldest client started waiting.
    wanted_by: VecDeque<(usize, T)>,
    /// Peers we asked and have not heard a give from: asking them again would only duplicate the note.
    asked: Vec<bool>,
    me: usize,
}

impl<S, W: PartialEq, T: Ord + Copy> PoolShard<S, W, T> {
    /// This shard's slice of a pool of `pool_size` over `shards` shards: an even split, the remainder to the
    /// lowest shards, so every shard computes the same split without talking.
    pub fn new(pool_size: u32, shards: usize, me: usize) -> Self {
        let budget = share(pool_size, shards, me);
        PoolShard {
            idle: Vec::new(),
            budget,
            initial: budget,
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

    /// When this shard's longest-waiting client started waiting, to put in asks.
    pub fn oldest_wait(&self) -> Option<T> {
        self.waiters.front().map(|&(_, since)| since)
    }

    /// A client wants a server. Idle servers go last-in first-out: the most recently used one is the warmest.
    pub fn checkout(&mut self, waiter: W, now: T) -> Checkout<S> {
        if let Some(server) = self.idle.pop() {
            return Checkout::Ready(server);
        }
        if self.budget > 0 {
            self.budget -= 1;
            self.open += 1;
            return Checkout::Connect;
        }
        self.waiters.push_back((waiter, now));
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

    /// Once no client waits here, the peers still holding a note for us: tell them to drop it, so they do not
    /// send a server nobody here needs.
    fn peers_to_withdraw(&mut self) -> Vec<usize> {
        if !self.waiters.is_empty() {
            return Vec::new();
        }
        let mut withdraw = Vec::new();
        for (peer, asked) in self.asked.iter_mut().enumerate() {
            if std::mem::take(asked) {
                withdraw.push(peer);
            }
        }
        withdraw
    }

    /// Takes out the waiters that started waiting before `cutoff`, oldest first, with the peers to withdraw asks
    /// from if none is left. The line is in order of arrival, so this stops at the first younger waiter.
    pub fn expire_waits(&mut self, cutoff: T) -> (Vec<W>, Vec<usize>) {
        let mut expired = Vec::new();
        while self
            .waiters
            .front()
            .is_some_and(|&(_, since)| since < cutoff)
        {
            expired.extend(self.waiters.pop_front().map(|(waiter, _)| waiter));
        }
        let withdraw = if expired.is_empty() {
            Vec::new()
        } else {
            self.peers_to_withdraw()
        };
        (expired, withdraw)
    }

    /// A waiter gave up (timeout, disconnect). Returns the peers to withdraw asks from.
    pub fn cancel_wait(&mut self, waiter: &W) -> Vec<usize> {
        self.waiters.retain(|(w, _)| w != waiter);
        self.peers_to_withdraw()
    }

    /// Who has waited longest, a local client or a noted peer, taken out of its line.
    fn next_in_line(&mut self) -> Option<Turn<W>> {
        let local = self.oldest_wait();
        let remote = self.wanted_by.front().map(|&(_, since)| since);
        match (local, remote) {
            (Some(l), Some(r)) if r < l => {
                self.wanted_by.pop_front().map(|(peer, _)| Turn::Peer(peer))
            }
            (Some(_), _) => self
                .waiters
                .pop_front()
                .map(|(waiter, _)| Turn::Local(waiter)),
            (None, _) => self.wanted_by.pop_front().map(|(peer, _)| Turn::Peer(peer)),
        }
    }

    /// A client is done with a healthy server. It goes to whoever has waited longest, here or on a peer.
    /// Also returns the peers to withdraw asks from, if that served the last waiter here.
    pub fn release(&mut self, server: S) -> (Handoff<S, W>, Vec<usize>) {
        match self.next_in_line() {
            Some(Turn::Local(waiter)) => {
                (Handoff::ToWaiter(waiter, server), self.peers_to_withdraw())
            }
            Some(Turn::Peer(peer)) => {
                self.open -= 1;
                (Handoff::ToPeer(peer, server), Vec::new())
            }
            None => {
                self.idle.push(server);
                (Handoff::Idle, Vec::new())
            }
        }
    }

    /// A server owned here is gone (closed, broken, or never connected): its budget is free again.
    pub fn closed(&mut self) -> Freed<W> {
        self.open -= 1;
        self.budget += 1;
        self.place_budget()
    }

    fn place_budget(&mut self) -> Freed<W> {
        let turn = self.next_in_line();
        if turn.is_some() {
            self.budget -= 1;
        }
        match turn {
            Some(Turn::Local(waiter)) => {
                self.open += 1;
                Freed::Connect(waiter)
            }
            Some(Turn::Peer(peer)) => Freed::ToPeer(peer),
            None => Freed::Kept,
        }
    }

    /// `peer` has had a client waiting since `since` and asks for a server.
    pub fn asked_by(&mut self, peer: usize, since: T) -> Answer<S> {
        if let Some(server) = self.idle.pop() {
            self.open -= 1;
            return Answer::GiveServer(server);
        }
        if self.budget > 0 {
            self.budget -= 1;
            return Answer::GiveBudget;
        }
        match self.wanted_by.iter_mut().find(|(p, _)| *p == peer) {
            Some((_, noted)) => *noted = (*noted).min(since),
            None => {
                let at = self.wanted_by.partition_point(|&(_, t)| t <= since);
                self.wanted_by.insert(at, (peer, since));
            }
        }
        Answer::Noted
    }

    /// `peer` no longer has clients waiting.
    pub fn withdrawn_by(&mut self, peer: usize) {
        self.wanted_by.retain(|&(p, _)| p != peer);
    }

    /// A server arrived from `peer`. Returns where it goes, and the peers to ask again (clients still wait)
    /// or to withdraw from (none waits any more).
    pub fn server_from(
        &mut self,
        peer: usize,
        server: S,
    ) -> (Handoff<S, W>, Vec<usize>, Vec<usize>) {
        self.asked[peer] = false;
        self.open += 1;
        let (handoff, withdraw) = self.release(server);
        (handoff, self.ask_again(), withdraw)
    }

    /// Budget arrived from `peer`.
    pub fn budget_from(&mut self, peer: usize) -> (Freed<W>, Vec<usize>, Vec<usize>) {
        self.asked[peer] = false;
        self.budget += 1;
        let freed = self.place_budget();
        let withdraw = match freed {
            Freed::Connect(_) => self.peers_to_withdraw(),
            _ => Vec::new(),
        };
        (freed, self.ask_again(), withdraw)
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
    pub fn take_expired(&mut self, keep: u32, mut expired: impl FnMut(&mut S) -> bool) -> Vec<S> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.idle.len() {
            if self.open - out.len() as u32 > keep && expired(&mut self.idle[i]) {
                out.push(self.idle.remove(i));
            } else {
                i += 1;
            }
        }
        out
    }

    /// Takes the most recently used idle server: for a client, or to close it at shutdown.
    pub fn take_idle(&mut self) -> Option<S> {
        self.idle.pop()
    }

    /// Unused budget beyond this shard's initial slice, taken out to be handed on to the next peer. Budget that
    /// followed busy clients drifts back this way once they are quiet, so every shard can again keep its share
    /// of min_pool_size open; a shard below its slice keeps what it gets.
    pub fn surplus(&mut self) -> u32 {
        if !self.waiters.is_empty() {
            return 0;
        }
        let surplus = (self.budget + self.open)
            .saturating_sub(self.initial)
            .min(self.budget);
        self.budget -= surplus;
        surplus
    }

    /// Spends one unit of budget on a warm-up connection if fewer than `min` servers are open.
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

/// Shard `me`'s part of a per-pool number split over `shards` shards.
pub fn share(n: u32, shards: usize, me: usize) -> u32 {
    let shards = shards as u32;
    n / shards + u32::from((me as u32) < n % shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Servers and waiters are numbers; times are ticks.
    type Shard = PoolShard<u32, u32, u64>;

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
        assert_eq!(s.checkout(1, 0), Checkout::Connect);
        assert_eq!(s.checkout(2, 1), Checkout::Wait { ask: vec![] });
        assert_eq!(s.checkout(3, 2), Checkout::Wait { ask: vec![] });
        assert_eq!(s.release(100).0, Handoff::ToWaiter(2, 100));
        assert_eq!(s.release(100).0, Handoff::ToWaiter(3, 100));
        assert_eq!(s.release(100).0, Handoff::Idle);
        assert_eq!(s.checkout(4, 3), Checkout::Ready(100));
    }

    #[test]
    fn a_timed_out_waiter_leaves_the_line() {
        let mut s = Shard::new(1, 1, 0);
        assert_eq!(s.checkout(1, 0), Checkout::Connect);
        assert!(matches!(s.checkout(2, 1), Checkout::Wait { .. }));
        assert!(matches!(s.checkout(3, 2), Checkout::Wait { .. }));
        s.cancel_wait(&2);
        assert_eq!(s.waiting_count(), 1);
        assert_eq!(s.release(100).0, Handoff::ToWaiter(3, 100));
    }

    #[test]
    fn waits_expire_oldest_first_and_the_last_one_withdraws_the_asks() {
        let mut s = Shard::new(2, 2, 0);
        assert_eq!(s.checkout(1, 0), Checkout::Connect);
        assert_eq!(s.checkout(2, 1), Checkout::Wait { ask: vec![1] });
        assert!(matches!(s.checkout(3, 5), Checkout::Wait { .. }));
        assert_eq!(s.expire_waits(1), (vec![], vec![]));
        assert_eq!(s.expire_waits(5), (vec![2], vec![]), "3 still waits");
        assert_eq!(s.expire_waits(6), (vec![3], vec![1]));
        assert_eq!(s.release(100).0, Handoff::Idle);
    }

    #[test]
    fn a_failed_connect_passes_the_budget_to_the_next_waiter() {
        let mut s = Shard::new(1, 1, 0);
        assert_eq!(s.checkout(1, 0), Checkout::Connect);
        assert!(matches!(s.checkout(2, 1), Checkout::Wait { .. }));
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
        assert_eq!(b.checkout(10, 0), Checkout::Connect);
        assert_eq!(b.release(7).0, Handoff::Idle);
        assert_eq!(a.checkout(1, 1), Checkout::Connect);
        // Shard 0 needs a second server and asks shard 1, which gives its idle one.
        assert_eq!(a.checkout(2, 2), Checkout::Wait { ask: vec![1] });
        let Answer::GiveServer(server) = b.asked_by(0, 2) else {
            panic!("no server given")
        };
        assert_eq!(
            a.server_from(1, server),
            (Handoff::ToWaiter(2, 7), vec![], vec![])
        );
        assert_eq!(units(&[a, b], 0), 2);
    }

    #[test]
    fn the_longest_wait_is_served_first_across_shards() {
        let mut a = Shard::new(2, 2, 0);
        let mut b = Shard::new(2, 2, 1);
        assert_eq!(a.checkout(1, 0), Checkout::Connect);
        assert_eq!(b.checkout(10, 0), Checkout::Connect);
        // Shard 0's client has waited since t=1; shard 1's own client since t=5.
        assert_eq!(a.checkout(2, 1), Checkout::Wait { ask: vec![1] });
        assert_eq!(b.asked_by(0, 1), Answer::Noted);
        assert_eq!(b.checkout(11, 5), Checkout::Wait { ask: vec![0] });
        assert_eq!(a.asked_by(1, 5), Answer::Noted);
        // Shard 1 releases: shard 0's client waited longer, so it gets the server.
        assert_eq!(b.release(8), (Handoff::ToPeer(0, 8), vec![]));
        let (handoff, ask, withdraw) = a.server_from(1, 8);
        assert_eq!(handoff, Handoff::ToWaiter(2, 8));
        // Nobody waits on shard 0 any more: nothing to ask, and no note left to withdraw (the give cleared it).
        assert_eq!((ask, withdraw), (vec![], vec![]));
        // Shard 0 releases next: its note for shard 1 (t=5) comes before keeping the server idle.
        assert_eq!(a.release(9), (Handoff::ToPeer(1, 9), vec![]));
        assert_eq!(b.server_from(0, 9).0, Handoff::ToWaiter(11, 9));
        assert_eq!(units(&[a, b], 0), 2);
    }

    #[test]
    fn a_shard_whose_line_empties_withdraws_its_asks() {
        let mut a = Shard::new(2, 2, 0);
        let mut b = Shard::new(2, 2, 1);
        assert_eq!(a.checkout(1, 0), Checkout::Connect);
        assert_eq!(b.checkout(10, 0), Checkout::Connect);
        assert_eq!(a.checkout(2, 1), Checkout::Wait { ask: vec![1] });
        assert_eq!(b.asked_by(0, 1), Answer::Noted);
        // Shard 0 serves its waiter itself and withdraws the ask; shard 1 then keeps its server.
        assert_eq!(a.release(5), (Handoff::ToWaiter(2, 5), vec![1]));
        b.withdrawn_by(0);
        assert_eq!(b.release(8), (Handoff::Idle, vec![]));
    }

    #[test]
    fn borrowed_budget_drifts_back_when_quiet() {
        let mut a = Shard::new(2, 2, 0);
        let mut b = Shard::new(2, 2, 1);
        assert_eq!(a.checkout(1, 0), Checkout::Connect);
        assert_eq!(a.checkout(2, 0), Checkout::Wait { ask: vec![1] });
        assert_eq!(b.asked_by(0, 0), Answer::GiveBudget);
        assert_eq!(a.budget_from(1), (Freed::Connect(2), vec![], vec![]));
        // Both of a's servers close while idle: a now holds b's unit as spare budget, and hands it on.
        assert_eq!(a.closed(), Freed::Kept);
        assert_eq!(a.closed(), Freed::Kept);
        assert_eq!(a.surplus(), 1);
        assert_eq!(a.surplus(), 0);
        assert_eq!(b.budget_from(0), (Freed::Kept, vec![], vec![]));
        assert_eq!(b.surplus(), 0, "b is back at its slice");
        assert!(b.warm_up(1), "so it can keep its share of min_pool_size");
    }

    #[test]
    fn budget_moves_when_the_giver_has_no_server() {
        let mut a = Shard::new(1, 2, 0);
        let mut b = Shard::new(1, 2, 1);
        assert_eq!(b.checkout(10, 0), Checkout::Wait { ask: vec![0] });
        assert_eq!(a.asked_by(1, 0), Answer::GiveBudget);
        assert_eq!(b.budget_from(0), (Freed::Connect(10), vec![], vec![]));
        assert_eq!(units(&[a, b], 0), 1);
    }

    /// Messages between shards in the simulation below.
    enum Msg {
        Ask(u64),
        Withdraw,
        Server(u32),
        Budget,
    }

    /// Three shards, their clients (leased or waiting) and the messages in flight.
    struct World {
        shards: Vec<Shard>,
        leased: Vec<(usize, u32)>,
        waiting: Vec<(usize, u32)>,
        flight: VecDeque<(usize, usize, Msg)>, // (to, from, message)
    }

    impl World {
        fn post(&mut self, from: usize, to: Vec<usize>, msg: impl Fn() -> Msg) {
            self.flight.extend(to.into_iter().map(|p| (p, from, msg())));
        }

        fn serve(&mut self, shard: usize, waiter: u32, server: u32) {
            self.waiting.retain(|&w| w != (shard, waiter));
            self.leased.push((shard, server));
        }

        fn place_server(&mut self, shard: usize, handoff: Handoff<u32, u32>) {
            match handoff {
                Handoff::ToWaiter(w, s) => self.serve(shard, w, s),
                Handoff::ToPeer(p, s) => self.flight.push_back((p, shard, Msg::Server(s))),
                Handoff::Idle => {}
            }
        }

        fn place_budget(&mut self, shard: usize, freed: Freed<u32>) {
            match freed {
                Freed::Connect(w) => self.serve(shard, w, w + 1000),
                Freed::ToPeer(p) => self.flight.push_back((p, shard, Msg::Budget)),
                Freed::Kept => {}
            }
        }

        fn deliver(&mut self) {
            let Some((to, from, msg)) = self.flight.pop_front() else {
                return;
            };
            let (ask, withdraw) = match msg {
                Msg::Ask(since) => {
                    match self.shards[to].asked_by(from, since) {
                        Answer::GiveServer(s) => self.flight.push_back((from, to, Msg::Server(s))),
                        Answer::GiveBudget => self.flight.push_back((from, to, Msg::Budget)),
                        Answer::Noted => {}
                    }
                    (vec![], vec![])
                }
                Msg::Withdraw => {
                    self.shards[to].withdrawn_by(from);
                    (vec![], vec![])
                }
                Msg::Server(s) => {
                    let (handoff, ask, withdraw) = self.shards[to].server_from(from, s);
                    self.place_server(to, handoff);
                    (ask, withdraw)
                }
                Msg::Budget => {
                    let (freed, ask, withdraw) = self.shards[to].budget_from(from);
                    self.place_budget(to, freed);
                    (ask, withdraw)
                }
            };
            if let Some(since) = self.shards[to].oldest_wait() {
                self.post(to, ask, || Msg::Ask(since));
            }
            self.post(to, withdraw, || Msg::Withdraw);
        }

        /// Servers and budget on all shards and in flight add up to the pool size.
        fn units(&self) -> u32 {
            let carried = self
                .flight
                .iter()
                .filter(|(_, _, m)| matches!(m, Msg::Server(_) | Msg::Budget));
            units(&self.shards, carried.count() as u32)
        }
    }

    #[test]
    fn the_cap_holds_and_no_client_waits_beside_an_idle_server() {
        // A deterministic pseudo-random walk over three shards with messages in flight. After every step the units
        // add up, open servers never exceed the pool, and a shard with noted askers holds nothing idle; whenever
        // all messages have arrived, no client waits while any shard has an idle server or free budget.
        let size = 5;
        let mut world = World {
            shards: (0..3).map(|me| PoolShard::new(size, 3, me)).collect(),
            leased: Vec::new(),
            waiting: Vec::new(),
            flight: VecDeque::new(),
        };
        let (mut next_id, mut seed) = (0u32, 12345u64);
        for tick in 0..50_000u64 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = (seed >> 33) as usize;
            let me = r % 3;
            match (r / 3) % 6 {
                0 | 1 => {
                    next_id += 1;
                    match world.shards[me].checkout(next_id, tick) {
                        Checkout::Ready(s) => world.leased.push((me, s)),
                        Checkout::Connect => world.leased.push((me, next_id + 1000)),
                        Checkout::Wait { ask } => {
                            world.waiting.push((me, next_id));
                            world.post(me, ask, || Msg::Ask(tick));
                        }
                    }
                }
                2 if !world.waiting.is_empty() => {
                    let (owner, w) = world.waiting.swap_remove(r % world.waiting.len());
                    let withdraw = world.shards[owner].cancel_wait(&w);
                    world.post(owner, withdraw, || Msg::Withdraw);
                }
                3 if !world.leased.is_empty() => {
                    let (owner, s) = world.leased.swap_remove(r % world.leased.len());
                    if r.is_multiple_of(7) {
                        let freed = world.shards[owner].closed();
                        world.place_budget(owner, freed);
                    } else {
                        let (handoff, withdraw) = world.shards[owner].release(s);
                        world.place_server(owner, handoff);
                        world.post(owner, withdraw, || Msg::Withdraw);
                    }
                }
                4 => {
                    let surplus = world.shards[me].surplus();
                    world.post(me, vec![(me + 1) % 3; surplus as usize], || Msg::Budget);
                }
                _ => world.deliver(),
            }
            assert_eq!(world.units(), size);
            assert!(world.shards.iter().map(|s| s.open).sum::<u32>() <= size);
            for s in &world.shards {
                assert!(s.wanted_by.is_empty() || (s.idle.is_empty() && s.budget == 0));
            }
            if tick % 500 == 499 {
                while !world.flight.is_empty() {
                    world.deliver();
                }
                if !world.waiting.is_empty() {
                    for s in &world.shards {
                        assert!(
                            s.idle.is_empty() && s.budget == 0,
                            "a client waits beside an idle server"
                        );
                    }
                }
            }
        }
    }
}
