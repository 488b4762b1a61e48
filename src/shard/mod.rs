//! A shard: one pinned glommio executor that owns its listeners, its clients, a slice of every pool and the
//! timers that look after them. Nothing mutable is shared with other shards; they talk through
//! [`exchange`]. The only cross-shard state is [`Shared`]: the configuration (read-only) and client counters
//! (atomics touched at connect and disconnect, never per query).

pub mod exchange;
mod heap;
pub mod parking;
mod pools;
mod run;
mod users;

pub use heap::counted;
pub use pools::{until, AcquireError, PoolKey};
pub use run::{check, start};

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use glommio::channels::channel_mesh::Senders;

use crate::config::Config;
use crate::net::buffer::BufferPool;
use crate::session::cancel::Registry;
use crate::session::params::Interned;

/// The maintenance tick: pool upkeep, stats, and the clock idle clients park by. Its cost does not grow with
/// the number of clients, and it is the only time an idle shard wakes (shutdown comes as an event).
pub const TICK: Duration = Duration::from_secs(1);

/// The ParameterStatus (name, value) pairs a server reported at login.
pub type ServerParams = Arc<[(String, String)]>;

/// What all shards see.
pub struct Shared {
    pub config: Config,
    pub shutdown: AtomicBool,
    clients: AtomicU32,
    /// Transaction-mode clients keeping their server for session state that cannot move (see `pinning`).
    pub pinned: AtomicU32,
    /// Clients parked (idle, without a task); a gauge.
    pub parked: AtomicU32,
    per_database: Vec<AtomicU32>,
    per_user: Vec<AtomicU32>,
    /// Each pool's ParameterStatus set, learnt from its first server on any shard and told to every client at
    /// login, so a client never waits for a server just to log in. Set once, read without locking.
    params: Vec<OnceLock<ServerParams>>,
    /// Per user configured with a SCRAM verifier only: the ClientKey its clients proved, to log in to PostgreSQL.
    /// Every client of a user proves the same key, so the first one is kept.
    client_keys: Vec<OnceLock<[u8; 32]>>,
    /// Users auth_query found, with indices after the configured ones.
    found: users::FoundUsers,
}

impl Shared {
    pub fn new(config: Config) -> Shared {
        let counters = |n: usize| (0..n).map(|_| AtomicU32::new(0)).collect();
        Shared {
            shutdown: AtomicBool::new(false),
            clients: AtomicU32::new(0),
            pinned: AtomicU32::new(0),
            parked: AtomicU32::new(0),
            per_database: counters(config.databases.len()),
            per_user: counters(Self::user_slots(&config)),
            client_keys: (0..config.users.len()).map(|_| OnceLock::new()).collect(),
            params: (0..config.databases.len() * Self::user_slots(&config))
                .map(|_| OnceLock::new())
                .collect(),
            found: users::FoundUsers::new(config.users.len()),
            config,
        }
    }

    /// Configured users, then room for those auth_query finds.
    fn user_slots(config: &Config) -> usize {
        config.users.len()
            + if config.auth_user.is_some() {
                users::FOUND_USERS
            } else {
                0
            }
    }

    fn pool_index(&self, key: PoolKey) -> usize {
        key.db as usize * Self::user_slots(&self.config) + key.user as usize
    }

    /// A configured user or one auth_query found.
    pub fn user(&self, index: usize) -> Arc<crate::config::User> {
        match self.config.users.get(index) {
            Some(user) => user.clone(),
            None => self
                .found
                .user(index)
                .expect("found users keep their index"),
        }
    }

    pub fn params(&self, key: PoolKey) -> Option<ServerParams> {
        self.params[self.pool_index(key)].get().cloned()
    }

    /// Records what a server of `key` reported, unless an earlier server already did; returns the record.
    pub fn learn_params(&self, key: PoolKey, params: &[(String, String)]) -> ServerParams {
        self.params[self.pool_index(key)]
            .get_or_init(|| params.into())
            .clone()
    }

    /// The periodic "stats:" log line.
    pub fn stats(&self) -> String {
        format!(
            "stats: {} client(s), {} pinned to their server, {} parked",
            self.clients.load(Ordering::Relaxed),
            self.pinned.load(Ordering::Relaxed),
            self.parked.load(Ordering::Relaxed)
        )
    }

    pub fn client_key(&self, user: usize) -> Option<[u8; 32]> {
        match self.client_keys.get(user) {
            Some(key) => key.get().copied(),
            None => self.found.client_key(user),
        }
    }

    pub fn learn_client_key(&self, user: usize, key: [u8; 32]) {
        match self.client_keys.get(user) {
            Some(slot) => {
                let _ = slot.set(key);
            }
            None => self.found.learn_client_key(user, key),
        }
    }

    /// Counts a client against `max_client_conn` and its database's and user's limits; `None` if one is full.
    pub fn admit(self: &Arc<Self>, db: usize, user: usize) -> Option<Admission> {
        let c = &self.config;
        let checks = [
            (&self.clients, Some(c.max_client_conn)),
            (&self.per_database[db], c.databases[db].max_client_conn),
            (
                &self.per_user[user],
                c.users.get(user).and_then(|u| u.max_client_conn),
            ),
        ];
        for (taken, (counter, limit)) in checks.iter().enumerate() {
            let before = counter.fetch_add(1, Ordering::Relaxed);
            if limit.is_some_and(|max| before >= max) {
                for (counter, _) in &checks[..=taken] {
                    counter.fetch_sub(1, Ordering::Relaxed);
                }
                return None;
            }
        }
        Some(Admission {
            shared: self.clone(),
            db: db as u32,
            user: user as u32,
        })
    }
}

/// A client's place under the limits, given back when dropped.
pub struct Admission {
    shared: Arc<Shared>,
    db: u32,
    user: u32,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.shared.clients.fetch_sub(1, Ordering::Relaxed);
        self.shared.per_database[self.db as usize].fetch_sub(1, Ordering::Relaxed);
        self.shared.per_user[self.user as usize].fetch_sub(1, Ordering::Relaxed);
    }
}

/// The shard's connections that have not logged in yet.
#[derive(Default)]
pub struct Logins(Cell<usize>);

impl Logins {
    /// Counts one more login while the guard lives; `None` when `max` are under way already.
    pub fn start(&self, max: usize) -> Option<LoggingIn<'_>> {
        (self.0.get() < max).then(|| {
            self.0.set(self.0.get() + 1);
            LoggingIn(self)
        })
    }
}

pub struct LoggingIn<'a>(&'a Logins);

impl Drop for LoggingIn<'_> {
    fn drop(&mut self) {
        self.0 .0.set(self.0 .0.get() - 1);
    }
}

/// The per-core context every task of a shard holds an `Rc` to.
pub struct Shard {
    pub id: usize,
    pub shards: usize,
    pub shared: Arc<Shared>,
    pub buffers: BufferPool,
    pub clients: Registry,
    /// Its client and server sockets, on its own ring; parked clients live there.
    pub sockets: Rc<crate::ring::Sockets>,
    /// The clock idle clients park by.
    pub parking: parking::Lot,
    /// Client tasks running, for giving back what a burst of them freed.
    tasks: heap::Tasks,
    /// Connections logging in, bounded by `max_logins_per_shard`.
    pub logins: Logins,
    /// Connections for auth_query lookups.
    lookups: users::LookupConnections,
    /// Startup-setting sets shared by this shard's clients.
    pub settings: Interned,
    /// Prepared statements of this shard's transaction-mode clients.
    pub statements: crate::session::statements::Registry,
    pools: RefCell<HashMap<PoolKey, pools::Pool>>,
    peers: Option<Rc<Senders<exchange::Msg>>>,
}

impl Shard {
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    pub fn shutting_down(&self) -> bool {
        self.shared.shutdown.load(Ordering::Relaxed)
    }
}
