//! The shard's side of every pool: performs what [`crate::pool::PoolShard`] decides. Leasing a server,
//! giving it back, connecting on freed budget, and the messages peers send about pools.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::exchange::{self, Msg};
use super::Shard;
use crate::pool::{share, Answer, Checkout, Freed, Handoff, PoolShard};
use crate::proto::message::ErrorFields;
use crate::server::connect::{self, ConnectError};
use crate::server::{Server, Transfer};
use crate::{debug, info, warn};

/// A pool: (database index, user index) in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub db: u32,
    pub user: u32,
}

/// What a waiting client receives.
enum Grant {
    Server(Box<Server>),
    /// Budget: open a new server.
    Connect,
    /// query_wait_timeout passed first.
    Expired,
}

/// A waiting client, as the pool core's line holds it: the slot its grant is put in.
struct Waiter(Rc<GrantSlot>);

impl PartialEq for Waiter {
    fn eq(&self, other: &Waiter) -> bool {
        Rc::ptr_eq(&self.0, &other.0)
    }
}

/// A one-shot hand-over between the shard and one waiting client task.
#[derive(Default)]
struct GrantSlot {
    grant: RefCell<Option<Grant>>,
    waker: RefCell<Option<Waker>>,
}

impl Waiter {
    fn grant(self, grant: Grant) {
        *self.0.grant.borrow_mut() = Some(grant);
        if let Some(waker) = self.0.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

impl Future for &GrantSlot {
    type Output = Grant;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Grant> {
        match self.grant.borrow_mut().take() {
            Some(grant) => Poll::Ready(grant),
            None => {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

pub(super) struct Pool {
    core: PoolShard<Box<Server>, Waiter, Instant>,
    /// Server connection attempts wait until then after failures.
    retry_at: Instant,
    retry_delay: Duration,
}

#[derive(Debug)]
pub enum AcquireError {
    /// No server within query_wait_timeout.
    Timeout,
    /// PostgreSQL refused pgherd's login.
    Rejected(ErrorFields),
    /// pgherd cannot log in to PostgreSQL for this pool (e.g. no usable password).
    Unusable(String),
}

const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);

/// Runs `fut` until `deadline`; `None` if the deadline came first.
pub async fn until<T>(deadline: Instant, fut: impl Future<Output = T>) -> Option<T> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return None;
    }
    glommio::timer::timeout(left, async { Ok(fut.await) })
        .await
        .ok()
}

/// A client's wait for a server: resolves to what the shard grants it. Dropped unfinished (the client's login
/// timed out, its task ended), it leaves the line, and a grant that already landed goes back to the pool, so
/// no server or budget is lost with it.
struct Waiting<'a> {
    shard: &'a Shard,
    key: PoolKey,
    slot: Option<Rc<GrantSlot>>,
}

impl Future for Waiting<'_> {
    type Output = Grant;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Grant> {
        let slot = self.slot.as_deref().expect("polled after it resolved");
        let grant = std::task::ready!(Pin::new(&mut &*slot).poll(cx));
        self.slot = None;
        Poll::Ready(grant)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        let (shard, key, waiter) = (self.shard, self.key, Waiter(slot));
        let withdraw = shard.pool(key, |p| p.core.cancel_wait(&waiter));
        shard.withdraw(key, withdraw);
        let landed = waiter.0.grant.borrow_mut().take();
        match landed {
            Some(Grant::Server(server)) => shard.release(key, server),
            Some(Grant::Connect) => shard.server_gone(key),
            Some(Grant::Expired) | None => {}
        }
    }
}

/// One unit of a pool's budget spent on a server connection still being opened. Unless the server is made, the
/// unit is freed when this is dropped: on failure, and when the attempt itself is abandoned.
struct Attempt<'a> {
    shard: &'a Shard,
    key: PoolKey,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.shard.server_gone(self.key);
    }
}

impl Shard {
    fn pool<R>(&self, key: PoolKey, f: impl FnOnce(&mut Pool) -> R) -> R {
        let mut pools = self.pools.borrow_mut();
        let pool = pools.entry(key).or_insert_with(|| Pool {
            core: PoolShard::new(
                self.config().databases[key.db as usize].pool_size,
                self.shards,
                self.id,
            ),
            retry_at: Instant::now(),
            retry_delay: Duration::ZERO,
        });
        f(pool)
    }

    /// A server for a client of `key`, within query_wait_timeout. Never hands out a server that died while idle.
    pub async fn acquire(&self, key: PoolKey) -> Result<Box<Server>, AcquireError> {
        while let Some(server) = self.pool(key, |p| p.core.take_idle()) {
            if let Some(server) = self.alive(key, server) {
                return Ok(server);
            }
        }
        self.wait_or_connect(key).await
    }

    /// `server` unless it died while idle, in which case its budget is freed.
    fn alive(&self, key: PoolKey, mut server: Box<Server>) -> Option<Box<Server>> {
        if server.is_alive() {
            return Some(server);
        }
        debug!("closing a server that died while idle");
        self.server_gone(key);
        None
    }

    async fn wait_or_connect(&self, key: PoolKey) -> Result<Box<Server>, AcquireError> {
        // Waits end on the shard's tick (`expire_waits`); connecting uses what is left of the same time.
        let now = Instant::now();
        let deadline = now + self.config().query_wait_timeout;
        loop {
            let slot = Rc::new(GrantSlot::default());
            let grant = match self.pool(key, |p| p.core.checkout(Waiter(slot.clone()), now)) {
                Checkout::Ready(server) => Grant::Server(server),
                Checkout::Connect => Grant::Connect,
                Checkout::Wait { ask } => {
                    // No timer per wait: the shard's tick expires waits (see `expire_waits`).
                    self.ask(key, ask);
                    let waiting = Waiting {
                        shard: self,
                        key,
                        slot: Some(slot),
                    };
                    waiting.await
                }
            };
            match grant {
                Grant::Server(server) => {
                    if let Some(server) = self.alive(key, server) {
                        return Ok(server);
                    }
                }
                Grant::Expired => return Err(AcquireError::Timeout),
                // Boxed: connecting is rare, and its state would otherwise be part of every client's task.
                Grant::Connect => match Box::pin(self.connect(key, deadline)).await {
                    Ok(server) => return Ok(server),
                    Err(ConnectError::Rejected(e)) if !connect::is_transient(&e) => {
                        return Err(AcquireError::Rejected(e))
                    }
                    Err(ConnectError::Unsupported(why)) => return Err(AcquireError::Unusable(why)),
                    Err(_) if Instant::now() >= deadline => return Err(AcquireError::Timeout),
                    Err(_) => {}
                },
            }
        }
    }

    /// Opens a server on budget already taken for it. The budget goes back if it fails, and also if the attempt
    /// is dropped unfinished (the client's login timed out while PostgreSQL was slow or down).
    async fn connect(&self, key: PoolKey, deadline: Instant) -> Result<Box<Server>, ConnectError> {
        let attempt = Attempt { shard: self, key };
        let retry_at = self.pool(key, |p| p.retry_at);
        if until(
            deadline,
            glommio::timer::sleep(retry_at.saturating_duration_since(Instant::now())),
        )
        .await
        .is_none()
        {
            return Err(ConnectError::Io(std::io::ErrorKind::TimedOut.into()));
        }
        let config = self.config();
        let (db, user) = (
            &config.databases[key.db as usize],
            &*self.shared.user(key.user as usize),
        );
        let client_key = self.shared.client_key(key.user as usize);
        match connect::connect(db, user, client_key, config.server_connect_timeout).await {
            Ok(server) => {
                // The budget is the server's now.
                std::mem::forget(attempt);
                self.pool(key, |p| {
                    if !p.retry_delay.is_zero() {
                        info!(
                            "server {}:{} for {}@{} is reachable again",
                            db.host, db.port, user.name, db.name
                        );
                    }
                    p.retry_delay = Duration::ZERO;
                });
                self.shared.learn_params(key, &server.params);
                Ok(Box::new(server))
            }
            Err(e) => {
                let max = config.server_login_retry;
                self.pool(key, |p| {
                    if p.retry_delay.is_zero() {
                        warn!(
                            "server {}:{} for {}@{}: {e}",
                            db.host, db.port, user.name, db.name
                        );
                    }
                    p.retry_delay = (p.retry_delay * 2).clamp(FIRST_RETRY_DELAY, max);
                    p.retry_at = Instant::now() + p.retry_delay;
                });
                Err(e)
            }
        }
    }

    /// The ParameterStatus set clients of `key` are told at login, connecting a server first if none ever was.
    pub async fn server_params(&self, key: PoolKey) -> Result<super::ServerParams, AcquireError> {
        if let Some(params) = self.shared.params(key) {
            return Ok(params);
        }
        let server = self.acquire(key).await?;
        let params = self.shared.learn_params(key, &server.params);
        self.release(key, server);
        Ok(params)
    }

    /// A client is done with a healthy, idle server.
    pub fn release(&self, key: PoolKey, mut server: Box<Server>) {
        server.idle_since = Instant::now();
        let (handoff, withdraw) = self.pool(key, |p| p.core.release(server));
        self.place_server(key, handoff);
        self.withdraw(key, withdraw);
    }

    fn place_server(&self, key: PoolKey, handoff: Handoff<Box<Server>, Waiter>) {
        match handoff {
            Handoff::ToWaiter(waiter, server) => waiter.grant(Grant::Server(server)),
            Handoff::ToPeer(peer, server) => match server.into_transfer() {
                Ok(server) => self.send_to_peer(peer, Msg::Server { pool: key, server }),
                Err(e) => {
                    warn!("cannot hand a server to shard {peer}: {e}; giving its budget instead");
                    self.send_to_peer(peer, Msg::Budget { pool: key });
                }
            },
            Handoff::Idle => {}
        }
    }

    /// A server of `key` owned here was closed (or never opened): its budget is free.
    pub fn server_gone(&self, key: PoolKey) {
        let freed = self.pool(key, |p| p.core.closed());
        self.place_budget(key, freed);
    }

    fn place_budget(&self, key: PoolKey, freed: Freed<Waiter>) {
        match freed {
            Freed::Connect(waiter) => waiter.grant(Grant::Connect),
            Freed::ToPeer(peer) => self.send_to_peer(peer, Msg::Budget { pool: key }),
            Freed::Kept => {}
        }
    }

    fn ask(&self, key: PoolKey, peers: Vec<usize>) {
        if peers.is_empty() {
            return;
        }
        let since = self
            .pool(key, |p| p.core.oldest_wait())
            .unwrap_or_else(Instant::now);
        for peer in peers {
            self.send_to_peer(peer, Msg::Ask { pool: key, since });
        }
    }

    fn withdraw(&self, key: PoolKey, peers: Vec<usize>) {
        for peer in peers {
            self.send_to_peer(peer, Msg::Withdraw { pool: key });
        }
    }

    pub(super) fn send_to_peer(&self, peer: usize, msg: Msg) {
        let peers = self
            .peers
            .as_ref()
            .expect("a single shard has no peers to send to");
        exchange::send(peers, peer, msg);
    }

    pub(super) fn peer_asks(&self, key: PoolKey, peer: usize, since: Instant) {
        match self.pool(key, |p| p.core.asked_by(peer, since)) {
            Answer::GiveServer(server) => self.place_server(key, Handoff::ToPeer(peer, server)),
            Answer::GiveBudget => self.send_to_peer(peer, Msg::Budget { pool: key }),
            Answer::Noted => {}
        }
    }

    pub(super) fn peer_withdraws(&self, key: PoolKey, peer: usize) {
        self.pool(key, |p| p.core.withdrawn_by(peer));
    }

    pub(super) fn server_from_peer(&self, key: PoolKey, peer: usize, server: Transfer) {
        let server = Box::new(Server::from_transfer(server));
        let (handoff, ask, withdraw) = self.pool(key, |p| p.core.server_from(peer, server));
        self.place_server(key, handoff);
        self.ask(key, ask);
        self.withdraw(key, withdraw);
    }

    pub(super) fn budget_from_peer(&self, key: PoolKey, peer: usize) {
        let (freed, ask, withdraw) = self.pool(key, |p| p.core.budget_from(peer));
        self.place_budget(key, freed);
        self.ask(key, ask);
        self.withdraw(key, withdraw);
    }

    /// Creates, on this shard, every pool whose database keeps warm servers, so upkeep fills them before the
    /// first client comes.
    pub(super) fn create_warm_pools(&self) {
        let config = self.config();
        for (db, database) in config.databases.iter().enumerate() {
            if database.min_pool_size > 0 {
                for user in 0..config.users.len() {
                    self.pool(
                        PoolKey {
                            db: db as u32,
                            user: user as u32,
                        },
                        |_| (),
                    );
                }
            }
        }
    }

    /// Ends the waits older than query_wait_timeout, closes idle servers that died, idled past
    /// server_idle_timeout or lived past server_lifetime (keeping this shard's share of min_pool_size), then
    /// opens servers up to that share.
    pub(super) fn look_after_pools(self: &Rc<Self>) {
        let config = self.config();
        let now = Instant::now();
        let keys: Vec<PoolKey> = self.pools.borrow().keys().copied().collect();
        for key in keys {
            if let Some(cutoff) = now.checked_sub(config.query_wait_timeout) {
                let (expired, withdraw) = self.pool(key, |p| p.core.expire_waits(cutoff));
                for waiter in expired {
                    waiter.grant(Grant::Expired);
                }
                self.withdraw(key, withdraw);
            }
            let min = share(
                config.databases[key.db as usize].min_pool_size,
                self.shards,
                self.id,
            );
            let expired = self.pool(key, |p| {
                p.core.take_expired(min, |s| {
                    now.duration_since(s.idle_since) >= config.server_idle_timeout
                        || now.duration_since(s.created) >= config.server_lifetime
                        || !s.is_alive()
                })
            });
            for server in expired {
                drop(server);
                self.server_gone(key);
            }
            let surplus = self.pool(key, |p| p.core.surplus());
            for _ in 0..surplus {
                self.send_to_peer((self.id + 1) % self.shards, Msg::Budget { pool: key });
            }
            while self.pool(key, |p| p.core.warm_up(min)) {
                let shard = self.clone();
                crate::isolation::spawn("a min_pool_size connection", async move {
                    let deadline = Instant::now() + shard.config().server_connect_timeout;
                    if let Ok(server) = shard.connect(key, deadline).await {
                        shard.release(key, server);
                    }
                });
            }
        }
    }

    /// Closes every idle server (at shutdown).
    pub(super) fn close_idle_servers(&self) {
        let keys: Vec<PoolKey> = self.pools.borrow().keys().copied().collect();
        for key in keys {
            while let Some(server) = self.pool(key, |p| p.core.take_idle()) {
                drop(server);
                self.pool(key, |p| p.core.closed());
            }
        }
    }
}
