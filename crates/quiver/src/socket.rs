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

/// A UDP socket with the per-platform state `quinn-udp` needs.
#[derive(Debug)]
pub(crate) struct QuicSocket {
    io: tokio::net::UdpSocket,
    state: UdpSocketState,
    local_addr: SocketAddr,
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
        Ok(Self { io, state, local_addr })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How many equal-size datagrams one send call may carry (1 without GSO).
    pub(crate) fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    /// How many datagrams one receive buffer may hold when the kernel coalesces them (GRO).
    pub(crate) fn gro_segments(&self) -> usize {
        self.state.gro_segments()
    }

    /// Receives a batch of datagrams.
    ///
    /// # Cancel safety
    /// Cancel safe: data is only taken from the socket in the same poll that returns it.
    pub(crate) async fn recv(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> io::Result<usize> {
        loop {
            self.io.readable().await?;
            match self.io.try_io(Interest::READABLE, || self.state.recv((&self.io).into(), bufs, meta)) {
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
        loop {
            self.io.writable().await?;
            match self.io.try_io(Interest::WRITABLE, || self.state.try_send((&self.io).into(), transmit)) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                result => return result,
            }
        }
    }

    /// Sends one datagram if the socket has room now; used for replies the router makes (Version
    /// Negotiation), which are never worth waiting for.
    pub(crate) fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.io.try_io(Interest::WRITABLE, || self.state.try_send((&self.io).into(), transmit))
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
