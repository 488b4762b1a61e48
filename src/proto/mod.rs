//! The PostgreSQL wire protocol as pure code over bytes: framing, the few message bodies the pooler must
//! read, and encoders for the messages it originates. Nothing here touches a socket.

pub mod encode;
pub mod frame;
pub mod message;
pub mod sqlstate;

/// Protocol 3.0 as carried in the StartupMessage version field.
pub const PROTOCOL_3_0: u32 = 3 << 16;
/// Special "versions" that open the startup packet of a request instead of a session.
pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;

/// PostgreSQL refuses startup packets over 10,000 bytes (MAX_STARTUP_PACKET_LENGTH); so do we.
pub const MAX_STARTUP_LEN: usize = 10_000;
/// Ceiling on any message length field: PostgreSQL's own is 1 GB - 1 (MaxAllocSize).
pub const MAX_MESSAGE_LEN: usize = (1 << 30) - 1;
/// Messages read whole during login (passwords, SASL, server auth requests) are small; bound them.
pub const MAX_LOGIN_MESSAGE_LEN: usize = 64 * 1024;
