//! Messages between shards over the bounded channel mesh. Pool messages carry units of a pool's budget (a
//! server or the right to open one) and must never be lost; asks are bounded by one per (pool, peer); cancels
//! are best effort and dropped when a channel is full, as a lost cancel is also possible in PostgreSQL.

use std::rc::Rc;

use glommio::channels::channel_mesh::Senders;
use glommio::{GlommioError, ResourceType};

use super::{PoolKey, Shard};
use crate::server::Transfer;

pub enum Msg {
    /// The sender has a client waiting on this pool.
    Ask { pool: PoolKey },
    /// A live server, with its unit of budget.
    Server { pool: PoolKey, server: Transfer },
    /// A unit of budget: the receiver may open one more server.
    Budget { pool: PoolKey },
    /// A CancelRequest for a client this shard owns.
    Cancel { pid: u32, secret: u32 },
}

impl Msg {
    fn carries_budget(&self) -> bool {
        matches!(self, Msg::Server { .. } | Msg::Budget { .. })
    }
}

/// Channel slots per pair of shards. Budget-carrying messages in flight never exceed the sum of pool sizes,
/// and if a channel is full anyway they wait in a task rather than being dropped.
pub const CHANNEL_SLOTS: usize = 1024;

pub fn send(peers: &Rc<Senders<Msg>>, to: usize, msg: Msg) {
    let msg = match peers.try_send_to(to, msg) {
        Ok(()) => return,
        Err(GlommioError::WouldBlock(ResourceType::Channel(msg))) => msg,
        Err(e) => {
            crate::error!("cannot reach shard {to}: {e}");
            return;
        }
    };
    if msg.carries_budget() {
        let peers = peers.clone();
        glommio::spawn_local(async move {
            if let Err(e) = peers.send_to(to, msg).await {
                crate::error!(
                    "cannot reach shard {to}: {e}; a pool budget unit is lost until restart"
                );
            }
        })
        .detach();
    } else {
        crate::debug!("channel to shard {to} is full; dropping an ask or cancel");
    }
}

/// Receives everything `from` sends to this shard until the mesh closes.
pub async fn receive(
    shard: Rc<Shard>,
    from: usize,
    rx: glommio::channels::shared_channel::ConnectedReceiver<Msg>,
) {
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Ask { pool } => shard.peer_asks(pool, from),
            Msg::Server { pool, server } => shard.server_from_peer(pool, from, server),
            Msg::Budget { pool } => shard.budget_from_peer(pool, from),
            Msg::Cancel { pid, secret } => shard.cancel_client(pid, secret),
        }
    }
}
