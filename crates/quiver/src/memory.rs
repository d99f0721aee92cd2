//! An in-memory datagram network for unit tests: endpoints bind addresses on a [`MemoryNetwork`]
//! instead of UDP sockets, so routers and connection tasks run unchanged, without a socket and
//! without the kernel's timing. Test builds only: the release path has no trace of it.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use quinn_udp::{RecvMeta, Transmit};
use tokio::sync::mpsc;

/// Datagrams one in-memory socket holds unread before more are dropped, as a full UDP receive buffer
/// drops them.
const INBOX_DATAGRAMS: usize = 4096;

type Datagram = (Vec<u8>, SocketAddr);

/// A set of in-memory sockets that can reach each other by address.
#[derive(Debug, Clone, Default)]
pub(crate) struct MemoryNetwork {
    sockets: Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Datagram>>>>,
    next_port: Arc<AtomicU16>,
}

impl MemoryNetwork {
    /// Binds `addr` (port 0 picks an unused port).
    pub(crate) fn bind(&self, mut addr: SocketAddr) -> io::Result<MemorySocket> {
        if addr.port() == 0 {
            addr.set_port(40_000 + self.next_port.fetch_add(1, Ordering::Relaxed));
        }
        let mut sockets = self.sockets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if sockets.contains_key(&addr) {
            return Err(io::Error::from(io::ErrorKind::AddrInUse));
        }
        let (sender, inbox) = mpsc::channel(INBOX_DATAGRAMS);
        sockets.insert(addr, sender.clone());
        Ok(MemorySocket { addr, network: self.clone(), own_sender: sender, inbox: tokio::sync::Mutex::new(inbox) })
    }

    /// Frees `addr` for a new socket, as when a server restarts behind the same address and has lost
    /// its state: the old socket stays open but receives nothing more, and sends nothing on its own.
    pub(crate) fn release(&self, addr: SocketAddr) {
        self.sockets.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&addr);
    }

    /// Delivers one datagram to `to` as if `from` had sent it; dropped when nobody is bound there or
    /// its inbox is full.
    pub(crate) fn inject(&self, from: SocketAddr, to: SocketAddr, datagram: &[u8]) {
        let sockets = self.sockets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(socket) = sockets.get(&to) {
            let _ = socket.try_send((datagram.to_vec(), from));
        }
    }
}

/// One bound address of a [`MemoryNetwork`].
#[derive(Debug)]
pub(crate) struct MemorySocket {
    addr: SocketAddr,
    network: MemoryNetwork,
    /// The sender of its own inbox: keeps the inbox open after [`MemoryNetwork::release`], and tells
    /// its own entry in the network from that of a later socket at the same address.
    own_sender: mpsc::Sender<Datagram>,
    /// Only the router reads; the lock only satisfies `&self`.
    inbox: tokio::sync::Mutex<mpsc::Receiver<Datagram>>,
}

impl MemorySocket {
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Receives at least one datagram, and as many more as are queued and fit `bufs`.
    ///
    /// # Cancel safety
    /// Cancel safe: a datagram is only taken from the inbox in the poll that returns it.
    pub(crate) async fn recv(&self, bufs: &mut [io::IoSliceMut<'_>], meta: &mut [RecvMeta]) -> io::Result<usize> {
        let mut inbox = self.inbox.lock().await;
        let Some(first) = inbox.recv().await else { return Err(io::ErrorKind::BrokenPipe.into()) };
        let mut next = Some(first);
        let mut count = 0;
        while let Some((datagram, from)) = next.take() {
            let (Some(buf), Some(slot)) = (bufs.get_mut(count), meta.get_mut(count)) else { break };
            let len = datagram.len().min(buf.len());
            buf[..len].copy_from_slice(&datagram[..len]);
            slot.addr = from;
            slot.len = len;
            slot.stride = len;
            slot.dst_ip = None;
            count += 1;
            if count < bufs.len().min(meta.len()) {
                next = inbox.try_recv().ok();
            }
        }
        Ok(count)
    }

    /// Sends one datagram, or each segment of a GSO batch.
    pub(crate) fn send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let segment = transmit.segment_size.unwrap_or(transmit.contents.len()).max(1);
        for datagram in transmit.contents.chunks(segment) {
            self.network.inject(self.addr, transmit.destination, datagram);
        }
        Ok(())
    }
}

impl Drop for MemorySocket {
    fn drop(&mut self) {
        let mut sockets = self.network.sockets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if sockets.get(&self.addr).is_some_and(|entry| entry.same_channel(&self.own_sender)) {
            sockets.remove(&self.addr);
        }
    }
}
