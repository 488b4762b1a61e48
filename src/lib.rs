//! pgherd: a thread-per-core PostgreSQL connection pooler on glommio.
//!
//! Pure code (no sockets, no glommio): [`proto`], [`auth`], [`pool`], [`session::state`], [`config`].
//! I/O at the edges ([`host`] reads limits; its arithmetic is pure): [`shard`] (executors, the mesh, pools' I/O), [`net`], [`server`], [`session`].

pub mod auth;
pub mod config;
#[cfg(test)]
pub mod fuzzing;
pub mod host;
pub mod isolation;
pub mod log;
pub mod net;
pub mod pool;
pub mod proto;
pub mod ring;
pub mod server;
pub mod session;
pub mod shard;
