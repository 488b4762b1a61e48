//! The shard's loop over its ring: sleeps in glommio until the ring signals its eventfd, then reads every
//! completion there is, waking the tasks whose sockets became ready, resuming parked clients that stirred
//! and starting a login for each new connection.

use std::os::fd::OwnedFd;
use std::rc::Rc;

use super::sys::glommio_reader;
use super::{Arrival, Sockets};
use crate::error;
use crate::session;
use crate::shard::{spawn_client, Shard};

/// Runs for the shard's life.
pub async fn run(shard: Rc<Shard>, sockets: Rc<Sockets>, signal: OwnedFd) {
    let signal = glommio_reader(signal);
    loop {
        if let Err(e) = signal.read_at(0, 8).await {
            error!("shard {}: its sockets cannot be woken: {e}", shard.id);
            return;
        }
        for arrival in sockets.drain() {
            match arrival {
                Arrival::Resume(socket, parked) => {
                    spawn_client(&shard, session::resume(shard.clone(), socket, parked))
                }
                Arrival::Accepted(socket) => {
                    spawn_client(&shard, session::serve(shard.clone(), socket))
                }
            }
        }
    }
}
