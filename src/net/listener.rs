//! Each shard's own listener on every configured address, with what its client sockets inherit: no Nagle delay
//! (every reply is one write) and keepalive. SO_REUSEPORT lets the kernel spread accepts over the
//! shards; the socket is built with socket2 because glommio fixes the backlog at 1,024.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};

/// A listening socket for one shard; the shard adopts it as a glommio listener.
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<OwnedFd> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Accepted sockets inherit these from the listener (Linux copies the listener's TCP state), which saves
    // five system calls per login.
    socket.set_nodelay(true)?;
    let (idle, interval, probes) = KEEPALIVE;
    socket.set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(idle)
            .with_interval(interval)
            .with_retries(probes),
    )?;
    // For `accept_waiting`. glommio's accept works on it as well: it waits on its ring for a connection.
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// A connection the kernel has completed on `listener` (made by `bind`), or `None` when none is waiting. One
/// accept4(2): glommio's accept makes the listener non-blocking around each accept(2) with three fcntl(2) calls,
/// so pgherd waits through it only when no connection is waiting.
pub fn accept_waiting(listener: RawFd) -> Option<io::Result<OwnedFd>> {
    // SAFETY: accept4(2) on a listening socket; the peer's address is not asked for.
    let fd = unsafe {
        libc::accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    if fd >= 0 {
        // SAFETY: a new descriptor nothing else owns.
        return Some(Ok(unsafe { OwnedFd::from_raw_fd(fd) }));
    }
    let e = io::Error::last_os_error();
    (e.kind() != io::ErrorKind::WouldBlock).then_some(Err(e))
}

/// Whether a failed accept concerned only the connection it would have returned (it was reset before it was
/// taken), so the next can be taken at once.
pub fn only_that_connection(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EPROTO | libc::EINTR)
    )
}

/// Keepalive for client sockets (set on the listener, inherited by each accepted socket): a peer that vanished without a FIN (a killed VM, a dropped NAT entry) is found
/// after 300 s + 4 × 30 s instead of the kernel's default 2 h 11 min, and probes stay cheap: one per idle client
/// every 300 s, about 3,300 probes/s at a million idle clients (10^6 / 300).
const KEEPALIVE: (Duration, Duration, u32) = (Duration::from_secs(300), Duration::from_secs(30), 4);
