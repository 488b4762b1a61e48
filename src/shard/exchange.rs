//! Messages between shards over the bounded channel mesh. Pool messages must never be lost: servers and
//! budget are units of a pool's cap, and a lost ask could leave a client waiting beside an idle server. They
//! are bounded by construction (units by pool_size, asks and withdrawals by one per pool and peer), and if a
//! channel is full anyway they wait in a task. Cancels are best effort and dropped when a channel is full, as a
//! lost cancel is also possible with PostgreSQL itself.

use std::rc::Rc;
use std::time::Instant;

use glommio::channels::channel_mesh::Senders;
use glommio::{GlommioError, ResourceType};

use super::{PoolKey, Shard};
use crate::server::Transfer;

pub enum Msg {
    /// The sender has had a client waiting on this pool since `since`.
    Ask { pool: PoolKey, since: Instant },
    /// The sender no longer has clients waiting on this pool.
    Withdraw { pool: PoolKey },
    /// A live server, with its unit of budget.
    Server { pool: PoolKey, server: Transfer },
    /// A unit of budget: the receiver may open one more server.
    Budget { pool: PoolKey },
    /// A CancelRequest for a client this shard owns.
    Cancel { pid: u32, secret: u32 },
}

impl Msg {
    fn must_arrive(&self) -> bool {
        !matches!(self, Msg::Cancel { .. })
    }
}

/// Channel slots per pair of shards.
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
    if msg.must_arrive() {
        let peers = peers.clone();
        crate::isolation::spawn("a message to another shard", async move {
            if let Err(e) = peers.send_to(to, msg).await {
                crate::error!(
                    "cannot reach shard {to}: {e}; a pool budget unit is lost until restart"
                );
            }
        });
    } else {
        crate::debug!("channel to shard {to} is full; dropping a cancel request");
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
            Msg::Ask { pool, since } => shard.peer_asks(pool, from, since),
            Msg::Withdraw { pool } => shard.peer_withdraws(pool, from),
            Msg::Server { pool, server } => shard.server_from_peer(pool, from, server),
            Msg::Budget { pool } => shard.budget_from_peer(pool, from),
            Msg::Cancel { pid, secret } => shard.cancel_client(pid, secret),
        }
    }
}
