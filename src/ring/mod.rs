//! The shard's own io_uring and the sockets it drives: client and server connections are read and written
//! with plain non-blocking system calls when a multishot poll on this ring says they are ready, and new
//! connections arrive through a multishot accept. glommio still runs the shard (tasks, timers, the channel
//! mesh); this ring signals it through an eventfd when it has completions (`event_loop`).

pub mod event_loop;
mod sockets;
mod sys;

pub use sockets::{Arrival, Socket, Sockets, SLOT_SIZE};
pub use sys::{eventfd, glommio_reader, Uring};
