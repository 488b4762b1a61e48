//! Users that are not in the configuration but that `auth_query` found in PostgreSQL. Each gets an index after
//! the configured users, so pools, counters and limits address it like a configured one. What the lookup said
//! (the stored password, or that there is none) is trusted for `auth_query_cache_ttl`, shared by all shards, so
//! a storm of logins costs one lookup per user per TTL.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use glommio::sync::Semaphore;

use super::Shard;
use crate::config::{derive_secrets, AuthType, User};
use crate::server::{connect, Server};
use crate::warn;

/// Most distinct users auth_query can bring in over the life of the process (each keeps an index).
pub const FOUND_USERS: usize = 1024;

/// PostgreSQL role names are at most this long (NAMEDATALEN - 1): a longer name is no user, and is not looked
/// up.
const MAX_NAME: usize = 63;

pub struct FoundUsers {
    /// Indices of found users start here.
    first: usize,
    lookups: Mutex<Lookups>,
    slots: Vec<Mutex<Option<Found>>>,
}

/// What lookups said, bounded: a flood of unknown names costs at most `capacity` entries.
#[derive(Default)]
struct Lookups {
    /// The index each found name has had since it was first found (kept while it is missing, or dropped from
    /// `recent`, so it comes back to its own pools); at most FOUND_USERS.
    indices: HashMap<String, usize>,
    /// Recent lookups, found or not; the least recently used are dropped beyond the configured size.
    recent: HashMap<String, Lookup>,
    clock: u64,
}

/// The last lookup of a name: whether PostgreSQL had a password for it, when, and when it was last used.
struct Lookup {
    found: bool,
    at: Instant,
    used: u64,
}

impl Lookups {
    /// Makes room for one more entry in `recent`: beyond `capacity`, the least recently used eighth goes, so
    /// the cost of finding them is spread over many lookups.
    fn make_room(&mut self, capacity: usize) {
        if self.recent.len() < capacity {
            return;
        }
        let mut used: Vec<u64> = self.recent.values().map(|l| l.used).collect();
        let drop = (capacity / 8).max(1).min(used.len());
        let (_, &mut threshold, _) = used.select_nth_unstable(drop - 1);
        self.recent.retain(|_, l| l.used > threshold);
    }
}

struct Found {
    user: Arc<User>,
    /// The ClientKey its clients proved, for SCRAM pass-through; forgotten when the password changes.
    client_key: Option<[u8; 32]>,
}

/// What the cache knows of a name.
#[derive(Debug, PartialEq, Eq)]
pub enum Cached {
    Found(usize),
    Missing,
    /// Never looked up, or too long ago.
    Unknown,
}

impl FoundUsers {
    pub fn new(configured: usize) -> FoundUsers {
        FoundUsers {
            first: configured,
            lookups: Mutex::new(Lookups::default()),
            slots: (0..FOUND_USERS).map(|_| Mutex::new(None)).collect(),
        }
    }

    fn lookups(&self) -> std::sync::MutexGuard<'_, Lookups> {
        self.lookups.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn cached(&self, name: &str, ttl: Duration, now: Instant) -> Cached {
        let mut lookups = self.lookups();
        lookups.clock += 1;
        let (clock, index) = (lookups.clock, lookups.indices.get(name).copied());
        match lookups.recent.get_mut(name) {
            Some(l) if now.duration_since(l.at) < ttl => {
                l.used = clock;
                match (l.found, index) {
                    (true, Some(index)) => Cached::Found(index),
                    _ => Cached::Missing,
                }
            }
            _ => Cached::Unknown,
        }
    }

    /// Records a lookup of `name`: the user it found (`None`: no password), keeping at most `capacity` lookups.
    /// Returns the user's index, `None` when missing, or `Err` when all FOUND_USERS indices are taken.
    pub fn record(
        &self,
        name: &str,
        user: Option<User>,
        now: Instant,
        capacity: usize,
    ) -> Result<Option<usize>, String> {
        let mut lookups = self.lookups();
        let known = lookups.indices.get(name).copied();
        let index = match user {
            None => None,
            Some(user) => {
                // A name keeps its index across lookups, so its pools and counters stay its own.
                let index = match known {
                    Some(index) => index,
                    None if lookups.indices.len() >= FOUND_USERS => {
                        return Err(format!("more than {FOUND_USERS} users found by auth_query"));
                    }
                    None => {
                        let index = self.first + lookups.indices.len();
                        lookups.indices.insert(name.to_owned(), index);
                        index
                    }
                };
                let mut slot = self.slot(index);
                let same = slot
                    .as_ref()
                    .is_some_and(|f| f.user.server_password == user.server_password);
                let client_key = slot.as_ref().and_then(|f| f.client_key).filter(|_| same);
                *slot = Some(Found {
                    user: Arc::new(user),
                    client_key,
                });
                Some(index)
            }
        };
        if !lookups.recent.contains_key(name) {
            lookups.make_room(capacity);
        }
        lookups.clock += 1;
        let lookup = Lookup {
            found: index.is_some(),
            at: now,
            used: lookups.clock,
        };
        lookups.recent.insert(name.to_owned(), lookup);
        Ok(index)
    }

    fn slot(&self, index: usize) -> std::sync::MutexGuard<'_, Option<Found>> {
        // Found users' indices are made by `record` (first..first + FOUND_USERS) and reach pool keys only
        // from there: no client bytes choose one.
        self.slots[index - self.first]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub fn user(&self, index: usize) -> Option<Arc<User>> {
        self.slot(index).as_ref().map(|f| f.user.clone())
    }

    pub fn client_key(&self, index: usize) -> Option<[u8; 32]> {
        self.slot(index).as_ref().and_then(|f| f.client_key)
    }

    pub fn learn_client_key(&self, index: usize, key: [u8; 32]) {
        if let Some(found) = self.slot(index).as_mut() {
            found.client_key.get_or_insert(key);
        }
    }
}

impl Shard {
    /// The index of user `name`, not in [users], as auth_query finds it in database `db` (from the cache when
    /// fresh); `None` when it has no password there. `Err` when the lookup itself failed.
    pub async fn find_user(&self, db: usize, name: &str) -> Result<Option<usize>, String> {
        let config = self.config();
        let auth_user = config.auth_user.ok_or("auth_query is off")?;
        let found = &self.shared.found;
        match found.cached(name, config.auth_query_cache_ttl, Instant::now()) {
            Cached::Found(index) => return Ok(Some(index)),
            Cached::Missing => return Ok(None),
            Cached::Unknown => {}
        }
        if name.len() > MAX_NAME {
            return Ok(None);
        }
        let limit = config.server_connect_timeout;
        let deadline = Instant::now() + limit;
        let connections = self.lookups.of(db, config.auth_query_connections);
        let permit = super::until(deadline, connections.permits.acquire_permit(1))
            .await
            .and_then(Result::ok)
            .ok_or("auth_query: no lookup connection became free in time")?;
        let idle = connections.idle.borrow_mut().pop();
        let mut server = match idle {
            Some(server) => server,
            None => {
                let auth = self.shared.user(auth_user);
                let client_key = self.shared.client_key(auth_user);
                connect::connect(&config.databases[db], &auth, client_key, limit)
                    .await
                    .map_err(|e| format!("auth_query: cannot log in as \"{}\": {e}", auth.name))?
            }
        };
        let answer = server
            .query_params(&config.auth_query, &[name], limit)
            .await
            .ok_or("auth_query failed; see the PostgreSQL log")?;
        // Only a connection that answered cleanly is kept for the next lookup.
        connections.idle.borrow_mut().push(server);
        drop(permit);
        let password = answer
            .rows
            .first()
            .and_then(|row| row.get(1).cloned().flatten());
        let user = password.and_then(|password| {
            // The client proves the password the way it is stored, as PostgreSQL would ask.
            let auth = match config.auth_type {
                AuthType::Trust => AuthType::Trust,
                _ if password.starts_with("SCRAM-SHA-256$") => AuthType::ScramSha256,
                _ => AuthType::Md5,
            };
            match derive_secrets(name, &password, auth) {
                Ok((client_auth, server_password)) => Some(User {
                    name: name.to_owned(),
                    client_auth,
                    server_password,
                    pool_mode: None,
                    max_client_conn: None,
                }),
                Err(why) => {
                    warn!("auth_query: user \"{name}\" cannot log in: {why}");
                    None
                }
            }
        });
        found.record(name, user, Instant::now(), config.auth_query_cache_size)
    }
}

/// A shard's connections for auth_query lookups, per database: at most `auth_query_connections` each, kept
/// open between lookups, so a storm of unknown names opens no more PostgreSQL sessions than that.
#[derive(Default)]
pub struct LookupConnections {
    per_db: RefCell<HashMap<usize, Rc<DbLookups>>>,
}

struct DbLookups {
    permits: Semaphore,
    idle: RefCell<Vec<Server>>,
}

impl LookupConnections {
    fn of(&self, db: usize, most: usize) -> Rc<DbLookups> {
        self.per_db
            .borrow_mut()
            .entry(db)
            .or_insert_with(|| {
                Rc::new(DbLookups {
                    permits: Semaphore::new(most as u64),
                    idle: RefCell::new(Vec::new()),
                })
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServerPassword;

    fn user(name: &str, password: &str) -> User {
        let (client_auth, server_password) = derive_secrets(name, password, AuthType::Md5).unwrap();
        User {
            name: name.into(),
            client_auth,
            server_password,
            pool_mode: None,
            max_client_conn: None,
        }
    }

    #[test]
    fn lookups_are_trusted_for_the_ttl_and_names_keep_their_index() {
        let found = FoundUsers::new(3);
        let (t0, ttl) = (Instant::now(), Duration::from_secs(60));
        assert_eq!(found.cached("alice", ttl, t0), Cached::Unknown);
        assert_eq!(
            found.record("alice", Some(user("alice", "a")), t0, 100),
            Ok(Some(3))
        );
        assert_eq!(found.record("bob", None, t0, 100), Ok(None));
        assert_eq!(found.cached("alice", ttl, t0 + ttl / 2), Cached::Found(3));
        assert_eq!(found.cached("bob", ttl, t0 + ttl / 2), Cached::Missing);
        assert_eq!(found.cached("alice", ttl, t0 + ttl), Cached::Unknown);
        // The ClientKey survives a lookup that finds the same password, not one that finds a new one.
        found.learn_client_key(3, [7; 32]);
        found
            .record("alice", Some(user("alice", "a")), t0 + ttl, 100)
            .unwrap();
        assert_eq!(found.client_key(3), Some([7; 32]));
        found
            .record("alice", Some(user("alice", "changed")), t0 + ttl, 100)
            .unwrap();
        assert_eq!(found.client_key(3), None);
        assert!(matches!(
            found.user(3).unwrap().server_password,
            ServerPassword::Plain(ref p) if p == "changed"
        ));
        // Gone from PostgreSQL, then back: the same index.
        assert_eq!(found.record("alice", None, t0, 100), Ok(None));
        assert_eq!(
            found.record("alice", Some(user("alice", "x")), t0, 100),
            Ok(Some(3))
        );
        assert_eq!(
            found.record("carol", Some(user("carol", "c")), t0, 100),
            Ok(Some(4))
        );
    }

    #[test]
    fn lookups_are_bounded_least_recently_used_first_and_indices_survive() {
        let found = FoundUsers::new(0);
        let (t0, ttl) = (Instant::now(), Duration::from_secs(60));
        found
            .record("kept", Some(user("kept", "k")), t0, 16)
            .unwrap();
        for i in 0..1000 {
            // A flood of unknown names; "kept" is used all along.
            found.record(&format!("nobody{i}"), None, t0, 16).unwrap();
            assert_eq!(found.cached("kept", ttl, t0), Cached::Found(0));
            assert!(found.lookups().recent.len() <= 16);
        }
        assert_eq!(found.cached("nobody0", ttl, t0), Cached::Unknown);
        assert_eq!(found.cached("nobody999", ttl, t0), Cached::Missing);
        // Dropped from the cache, a found user comes back to its own index.
        for i in 0..100 {
            found.record(&format!("x{i}"), None, t0, 16).unwrap();
        }
        assert_eq!(found.cached("kept", ttl, t0), Cached::Unknown);
        assert_eq!(
            found.record("kept", Some(user("kept", "k")), t0, 16),
            Ok(Some(0))
        );
        assert_eq!(found.lookups().indices.len(), 1);
    }
}
