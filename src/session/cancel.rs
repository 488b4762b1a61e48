//! Cancel keys. The BackendKeyData a client gets from pgherd names the shard that owns it (top bits of the
//! process id), so a CancelRequest arriving on any shard can be routed there; the owner cancels the server
//! query only while that client holds the server, so a stale key never touches another client's query.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::RawFd;

use crate::auth::random;
use crate::server::BackendKey;

/// Bits of a client process id below the shard number.
const SHARD_SHIFT: u32 = 24;

pub fn shard_of(pid: u32) -> usize {
    (pid >> SHARD_SHIFT) as usize
}

/// Every logged-in client has one: kept small, since idle clients are most of them.
pub struct Entry {
    secret: u32,
    /// The client's socket, so shutdown can wake an idle client.
    fd: RawFd,
}

/// The shard's logged-in clients by process id.
#[derive(Default)]
pub struct Registry {
    entries: RefCell<HashMap<u32, Entry>>,
    /// The server each client that holds one holds now: at most one per server, so the many idle clients do
    /// not carry room for an address.
    servers: RefCell<HashMap<u32, BackendKey>>,
    next: Cell<u32>,
}

impl Registry {
    /// Registers a client; returns its process id and secret key.
    pub fn register(&self, shard: usize, fd: RawFd) -> (u32, u32) {
        let mut entries = self.entries.borrow_mut();
        let pid = loop {
            let seq = self.next.get().wrapping_add(1) & ((1 << SHARD_SHIFT) - 1);
            self.next.set(seq);
            let pid = (shard as u32) << SHARD_SHIFT | seq;
            // Zero is no valid process id, and ids still in use after a wrap are skipped.
            if seq != 0 && !entries.contains_key(&pid) {
                break pid;
            }
        };
        let secret = u32::from_ne_bytes(random::bytes());
        entries.insert(pid, Entry { secret, fd });
        (pid, secret)
    }

    pub fn unregister(&self, pid: u32) {
        self.entries.borrow_mut().remove(&pid);
        self.servers.borrow_mut().remove(&pid);
    }

    pub fn set_server(&self, pid: u32, server: Option<BackendKey>) {
        let mut servers = self.servers.borrow_mut();
        match server {
            Some(key) => servers.insert(pid, key),
            None => servers.remove(&pid),
        };
    }

    /// The server to cancel for a CancelRequest, if the key is right and the client holds a server.
    pub fn target(&self, pid: u32, secret: u32) -> Option<BackendKey> {
        let entries = self.entries.borrow();
        let entry = entries.get(&pid)?;
        // Compare without an early exit so timing does not reveal how much of the secret matched.
        if entry.secret ^ secret != 0 {
            return None;
        }
        self.servers.borrow().get(&pid).copied()
    }

    pub fn len(&self) -> usize {
        self.entries.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops reading from clients that hold no server, so they wake (parked ones too), see the shutdown and
    /// leave.
    pub fn wake_idle_for_shutdown(&self) {
        let servers = self.servers.borrow();
        for (_, entry) in self
            .entries
            .borrow()
            .iter()
            .filter(|(pid, _)| !servers.contains_key(pid))
        {
            // SAFETY: shutdown(2) on a socket fd owned by a live client task or a parked entry.
            unsafe { libc::shutdown(entry.fd, libc::SHUT_RD) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_route_to_their_shard_and_need_a_held_server() {
        let r = Registry::default();
        let (pid, secret) = r.register(5, -1);
        assert_eq!(shard_of(pid), 5);
        assert_eq!(r.target(pid, secret).map(|k| k.pid), None, "no server held");
        let key = BackendKey {
            addr: "127.0.0.1:5432".parse().unwrap(),
            pid: 42,
            secret: 7,
        };
        r.set_server(pid, Some(key));
        assert_eq!(r.target(pid, secret).map(|k| k.pid), Some(42));
        assert!(r.target(pid, secret ^ 1).is_none(), "wrong secret");
        r.set_server(pid, None);
        assert!(r.target(pid, secret).is_none(), "server released");
        r.unregister(pid);
        assert!(r.is_empty());
    }

    #[test]
    fn ids_are_unique_per_shard() {
        let r = Registry::default();
        let (a, _) = r.register(1, -1);
        let (b, _) = r.register(1, -1);
        assert_ne!(a, b);
    }
}
