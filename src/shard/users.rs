//! Users that are not in the configuration but that `auth_query` found in PostgreSQL. Each gets an index after
//! the configured users, so pools, counters and limits address it like a configured one. What the lookup said
//! (the stored password, or that there is none) is trusted for `auth_query_cache_ttl`, shared by all shards, so
//! a storm of logins costs one lookup per user per TTL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Shard;
use crate::config::{derive_secrets, AuthType, User};
use crate::server::connect;
use crate::warn;

/// Most distinct users auth_query can bring in over the life of the process (each keeps an index).
pub const FOUND_USERS: usize = 1024;

pub struct FoundUsers {
    /// Indices of found users start here.
    first: usize,
    by_name: Mutex<HashMap<String, Lookup>>,
    slots: Vec<Mutex<Option<Found>>>,
}

/// The last lookup of a name: whether PostgreSQL had a password for it, and the index the name has had since it
/// was first found (kept while it is missing, so it comes back to its own pools).
struct Lookup {
    index: Option<usize>,
    found: bool,
    at: Instant,
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
            by_name: Mutex::new(HashMap::new()),
            slots: (0..FOUND_USERS).map(|_| Mutex::new(None)).collect(),
        }
    }

    pub fn cached(&self, name: &str, ttl: Duration, now: Instant) -> Cached {
        let by_name = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        match by_name.get(name) {
            Some(l) if now.duration_since(l.at) < ttl => match (l.found, l.index) {
                (true, Some(index)) => Cached::Found(index),
                _ => Cached::Missing,
            },
            _ => Cached::Unknown,
        }
    }

    /// Records a lookup of `name`: the user it found (`None`: no password). Returns the user's index, `None` when
    /// missing, or `Err` when all FOUND_USERS indices are taken.
    pub fn record(
        &self,
        name: &str,
        user: Option<User>,
        now: Instant,
    ) -> Result<Option<usize>, String> {
        let mut by_name = self.by_name.lock().unwrap_or_else(|e| e.into_inner());
        let known = by_name.get(name).and_then(|l| l.index);
        let index = match (user, known) {
            (None, _) => None,
            (Some(user), known) => {
                // A name keeps its index across lookups, so its pools and counters stay its own.
                let index = match known {
                    Some(index) => index,
                    None => {
                        let taken = by_name.values().filter(|l| l.index.is_some()).count();
                        if taken == FOUND_USERS {
                            return Err(format!(
                                "more than {FOUND_USERS} users found by auth_query"
                            ));
                        }
                        self.first + taken
                    }
                };
                let mut slot = self.slots[index - self.first]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
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
        let lookup = Lookup {
            index: index.or(known),
            found: index.is_some(),
            at: now,
        };
        by_name.insert(name.to_owned(), lookup);
        Ok(index)
    }

    fn slot(&self, index: usize) -> std::sync::MutexGuard<'_, Option<Found>> {
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
        let auth = self.shared.user(auth_user);
        let limit = config.server_connect_timeout;
        let client_key = self.shared.client_key(auth_user);
        let mut server = connect::connect(&config.databases[db], &auth, client_key, limit)
            .await
            .map_err(|e| format!("auth_query: cannot log in as \"{}\": {e}", auth.name))?;
        let answer = server
            .query_params(&config.auth_query, &[name], limit)
            .await
            .ok_or("auth_query failed; see the PostgreSQL log")?;
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
        found.record(name, user, Instant::now())
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
            found.record("alice", Some(user("alice", "a")), t0),
            Ok(Some(3))
        );
        assert_eq!(found.record("bob", None, t0), Ok(None));
        assert_eq!(found.cached("alice", ttl, t0 + ttl / 2), Cached::Found(3));
        assert_eq!(found.cached("bob", ttl, t0 + ttl / 2), Cached::Missing);
        assert_eq!(found.cached("alice", ttl, t0 + ttl), Cached::Unknown);
        // The ClientKey survives a lookup that finds the same password, not one that finds a new one.
        found.learn_client_key(3, [7; 32]);
        found
            .record("alice", Some(user("alice", "a")), t0 + ttl)
            .unwrap();
        assert_eq!(found.client_key(3), Some([7; 32]));
        found
            .record("alice", Some(user("alice", "changed")), t0 + ttl)
            .unwrap();
        assert_eq!(found.client_key(3), None);
        assert!(matches!(
            found.user(3).unwrap().server_password,
            ServerPassword::Plain(ref p) if p == "changed"
        ));
        // Gone from PostgreSQL, then back: the same index.
        assert_eq!(found.record("alice", None, t0), Ok(None));
        assert_eq!(
            found.record("alice", Some(user("alice", "x")), t0),
            Ok(Some(3))
        );
        assert_eq!(
            found.record("carol", Some(user("carol", "c")), t0),
            Ok(Some(4))
        );
    }
}
