//! A UDP relay between one client and a server, on loopback, that can change what the server sees
//! mid-connection: a new source port (NAT rebinding) or a new server behind the same client-facing
//! address (a restart). Changes happen after a given number of client datagrams, so tests depend on
//! packet counts, not on timing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::UdpSocket;
use tokio::sync::{Mutex, Notify};

/// What to do once the client has sent a number of datagrams through the relay.
#[derive(Debug, Clone, Copy)]
pub enum Change {
    /// Send to the server from a new socket (a new source port), as a NAT rebinding does.
    Rebind,
    /// Send to another server from now on.
    Retarget(SocketAddr),
}

struct Upstream {
    socket: Arc<UdpSocket>,
    target: SocketAddr,
}

pub struct Relay {
    front_addr: SocketAddr,
    changed: Arc<Notify>,
    changes_done: Arc<AtomicU64>,
    client_datagrams: Arc<AtomicU64>,
}

impl Relay {
    /// A relay to `server` that applies `change` after the client's `after_datagrams`-th datagram.
    pub async fn start(server: SocketAddr, change: Option<(u64, Change)>) -> Self {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay front"));
        let front_addr = front.local_addr().expect("front address");
        let upstream = Arc::new(Mutex::new(Upstream {
            socket: Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay back")),
            target: server,
        }));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let changed = Arc::new(Notify::new());
        let changes_done = Arc::new(AtomicU64::new(0));
        let client_datagrams = Arc::new(AtomicU64::new(0));
        spawn_backward(upstream.clone(), front.clone(), client.clone()).await;
        {
            let (upstream, changed, changes_done, client_datagrams) =
                (upstream.clone(), changed.clone(), changes_done.clone(), client_datagrams.clone());
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 65_536];
                loop {
                    let Ok((len, from)) = front.recv_from(&mut buffer).await else { return };
                    *client.lock().await = Some(from);
                    let count = client_datagrams.fetch_add(1, Ordering::Relaxed) + 1;
                    if let Some((after, change)) = change
                        && count == after
                    {
                        let mut upstream_now = upstream.lock().await;
                        let rebind = matches!(change, Change::Rebind);
                        match change {
                            Change::Rebind => {
                                upstream_now.socket =
                                    Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind new back"));
                            }
                            Change::Retarget(target) => upstream_now.target = target,
                        }
                        drop(upstream_now);
                        if rebind {
                            spawn_backward(upstream.clone(), front.clone(), client.clone()).await;
                        }
                        changes_done.fetch_add(1, Ordering::Relaxed);
                        changed.notify_waiters();
                    }
                    let (socket, target) = {
                        let upstream = upstream.lock().await;
                        (upstream.socket.clone(), upstream.target)
                    };
                    let _ = socket.send_to(&buffer[..len], target).await;
                }
            });
        }
        Self { front_addr, changed, changes_done, client_datagrams }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.front_addr
    }

    /// Datagrams the client has sent so far.
    pub fn client_datagrams(&self) -> u64 {
        self.client_datagrams.load(Ordering::Relaxed)
    }

    /// Resolves once the change has happened.
    pub async fn changed(&self) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.changes_done.load(Ordering::Relaxed) > 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Forwards what the current server sends to `socket` back to the client. Runs for the life of the
/// socket: after a rebind the old mapping keeps working (as a NAT's does for a while), and after a
/// retarget whatever the old server still sends is ignored (it is gone, for the client).
async fn spawn_backward(upstream: Arc<Mutex<Upstream>>, front: Arc<UdpSocket>, client: Arc<Mutex<Option<SocketAddr>>>) {
    let socket = upstream.lock().await.socket.clone();
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 65_536];
        loop {
            let Ok((len, from)) = socket.recv_from(&mut buffer).await else { return };
            if from != upstream.lock().await.target {
                continue;
            }
            if let Some(client) = *client.lock().await {
                let _ = front.send_to(&buffer[..len], client).await;
            }
        }
    });
}
