//! The socket layer: the only code that touches UDP sockets.
//!
//! `quinn-udp` does the platform work (recvmmsg, GRO, GSO, ECN, packet info); this module adds
//! readiness with Tokio and socket options.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;

/// Kernel socket buffer we ask for, each way. Bulk transfer at 1 GB/s with a few ms of scheduling
/// jitter needs several MB; the kernel caps the request at `net.core.{r,w}mem_max` unless we are
/// privileged, in which case the `*_FORCE` options lift the cap.
pub(crate) const SOCKET_BUFFER_BYTES: usize = 8 * 1024 * 1024;

/// Largest payload one send call carries: a GSO batch must fit one UDP datagram's 16-bit length
/// (65,535 minus IP and UDP headers). 64,000 leaves room for either address family, and fits a
/// [`LARGE_BUFFER_BYTES`](crate::buffer::LARGE_BUFFER_BYTES) buffer.
pub(crate) const SEND_BATCH_BYTES: usize = 64_000;

/// A UDP socket with the per-platform state `quinn-udp` needs (or, in unit tests, an address on an
/// in-memory network).
#[derive(Debug)]
pub(crate) struct QuicSocket {
    kind: SocketKind,
    local_addr: SocketAddr,
}

/// What carries the datagrams. Outside tests there is one variant, so every `match` below compiles
/// to the UDP path alone: the seam costs the hot path nothing.
#[derive(Debug)]
enum SocketKind {
    Udp {
        io: tokio::net::UdpSocket,
        state: UdpSocketState,
    },
    #[cfg(test)]
    Memory(crate::memory::MemorySocket),
}

impl QuicSocket {
    /// Binds a non-blocking UDP socket, optionally with `SO_REUSEPORT` so several sockets share a port.
    pub(crate) fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<Self> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        #[cfg(unix)]
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        #[cfg(not(unix))]
        let _ = reuse_port;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        grow_buffers(&socket);
        let std_socket: std::net::UdpSocket = socket.into();
        let state = UdpSocketState::new((&std_socket).into())?;
        let io = tokio::net::UdpSocket::from_std(std_socket)?;
        let local_addr = io.local_addr()?;
        Ok(Self { kind: SocketKind::Udp { io, state }, local_addr })
    }

    /// A socket on an in-memory network (unit tests).
    #[cfg(test)]
    pub(crate) fn memory(network: &crate::memory::MemoryNetwork, addr: SocketAddr) -> io::Result<Self> {
        let socket = network.bind(addr)?;
        Ok(Self { local_addr: socket.local_addr(), kind: SocketKind::Memory(socket) })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How many equal-size datagrams one send call may carry (1 without GSO).
    pub(crate) fn max_gso_segments(&self) -> usize {
        match &self.kind {
            SocketKind::Udp { state, .. } => state.max_gso_segments(),
            #[cfg(test)]
            SocketKind::Memory(_) => 1,
        }
    }

    /// How many datagrams one receive buffer may hold when the kernel coalesces them (GRO).
    pub(crate) fn gro_segments(&self) -> usize {
        match &self.kind {
            SocketKind::Udp { state, .. } => state.gro_segments(),
            #[cfg(test)]
            SocketKind::Memory(_) => 1,
        }
    }

    /// Receives a batch of datagrams.
    ///
    /// # Cancel safety
    /// Cancel safe: data is only taken from the socket in the same poll that returns it.
    pub(crate) async fn recv(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> io::Result<usize> {
        let (io, state) = match &self.kind {
            SocketKind::Udp { io, state } => (io, state),
            #[cfg(test)]
            SocketKind::Memory(socket) => return socket.recv(bufs, meta).await,
        };
        loop {
            io.readable().await?;
            match io.try_io(Interest::READABLE, || state.recv(io.into(), bufs, meta)) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                result => return result,
            }
        }
    }

    /// Sends one datagram, or a GSO batch when `segment_size` is set.
    ///
    /// # Cancel safety
    /// Cancel safe: the datagram is either handed to the kernel whole or not at all.
    pub(crate) async fn send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let (io, state) = match &self.kind {
            SocketKind::Udp { io, state } => (io, state),
            #[cfg(test)]
            SocketKind::Memory(socket) => return socket.send(transmit),
        };
        loop {
            io.writable().await?;
            match io.try_io(Interest::WRITABLE, || state.try_send(io.into(), transmit)) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                result => return result,
            }
        }
    }

    /// Sends one datagram if the socket has room now; used for replies the router makes (Version
    /// Negotiation), which are never worth waiting for.
    pub(crate) fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        match &self.kind {
            SocketKind::Udp { io, state } => io.try_io(Interest::WRITABLE, || state.try_send(io.into(), transmit)),
            #[cfg(test)]
            SocketKind::Memory(socket) => socket.send(transmit),
        }
    }
}

fn grow_buffers(socket: &socket2::Socket) {
    // Best effort: a smaller buffer only costs throughput, never correctness.
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let force = |option: libc::c_int| {
            let bytes = SOCKET_BUFFER_BYTES as libc::c_int;
            // SAFETY: plain setsockopt on a socket we own, with a correctly sized int argument.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    option,
                    (&bytes as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                ) == 0
            }
        };
        if !force(libc::SO_RCVBUFFORCE) {
            let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
        }
        if !force(libc::SO_SNDBUFFORCE) {
            let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bind_reports_port_and_sends_to_itself() {
        let socket = QuicSocket::bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let addr = socket.local_addr();
        assert_ne!(addr.port(), 0);
        let payload = b"hello";
        socket
            .send(&Transmit { destination: addr, ecn: None, contents: payload, segment_size: None, src_ip: None })
            .await
            .unwrap();
        let mut storage = vec![0u8; 2048];
        let mut bufs = [IoSliceMut::new(&mut storage)];
        let mut meta = [RecvMeta::default()];
        let count = socket.recv(&mut bufs, &mut meta).await.unwrap();
        assert_eq!(count, 1);
        assert_eq!(&storage[..meta[0].len], payload);
        assert_eq!(meta[0].addr, addr);
    }
}
