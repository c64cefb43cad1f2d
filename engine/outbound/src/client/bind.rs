//! The TCP connect from a chosen source address (egress pools).
//!
//! glommio's `TcpStream::connect` makes its own socket and cannot bind it first. So a connect
//! from a source address makes the socket itself (socket2, the version glommio converts
//! from), binds it to `(source, 0)`, starts a non-blocking connect and hands the socket to
//! glommio. glommio has no "wait until writable" of its own; a zero-byte send does it: while
//! the handshake is in flight (SYN_SENT) Linux answers it with `EAGAIN`, so glommio waits on
//! the ring for `POLLOUT`, then the retried send returns 0 once connected or the connect's own
//! error (refused, unreachable) once it failed. The caller's connect timeout bounds the wait,
//! and dropping the stream closes the socket.
//!
//! Without a source the engine keeps glommio's io_uring connect (one submission, no extra
//! syscalls). Port 0 lets the kernel pick the local port at bind, so each source address has
//! its own ephemeral range (about 28,000 ports by default) for all its connections at once;
//! `IP_BIND_ADDRESS_NO_PORT` would share ports across destinations, but needs an unsafe
//! setsockopt this crate does not make.

use std::net::{IpAddr, SocketAddr};

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use socket2_glommio::{Domain, Protocol, SockAddr, Socket, Type};

/// Connects to `addr`, from `source` when given.
pub(super) async fn connect_tcp(
    addr: SocketAddr,
    source: Option<IpAddr>,
) -> std::io::Result<TcpStream> {
    match source {
        None => TcpStream::connect(addr).await.map_err(std::io::Error::from),
        Some(source) => connect_from(addr, source).await,
    }
}

async fn connect_from(addr: SocketAddr, source: IpAddr) -> std::io::Result<TcpStream> {
    if source.is_ipv4() != addr.is_ipv4() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("source address {source} cannot reach {addr} (another address family)"),
        ));
    }
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket
        .bind(&SockAddr::from(SocketAddr::new(source, 0)))
        .map_err(|e| std::io::Error::new(e.kind(), format!("bind to {source}: {e}")))?;
    match socket.connect(&SockAddr::from(addr)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let mut stream = TcpStream::from(socket);
    stream.write(&[]).await?;
    Ok(stream)
}
