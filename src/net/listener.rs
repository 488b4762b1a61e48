//! Each shard's own listener on every configured address. SO_REUSEPORT lets the kernel spread accepts over the
//! shards; the socket is built with socket2 because glommio fixes the backlog at 1,024.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use socket2::{Domain, Protocol, Socket, Type};

/// A listening socket for one shard; the shard adopts it as a glommio listener.
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<OwnedFd> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

/// Client sockets: no Nagle delay (every reply is one write), keepalive to find vanished peers.
pub fn tune_client(stream: &glommio::net::TcpStream) {
    let _ = stream.set_nodelay(true);
}
