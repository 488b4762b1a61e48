//! Sockets: listeners, socket options, and the buffers bytes pass through.

pub mod buffer;
pub mod listener;
