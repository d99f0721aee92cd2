//! A relay that changes what the server sees mid-connection: a new source port (NAT rebinding) or a
//! new server behind the same client-facing address (a restart). Changes happen after a given number
//! of client datagrams, so tests depend on packet counts, not on timing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::UdpSocket;
use tokio::sync::{Mutex, Notify};

use super::{ClientAddress, MAX_DATAGRAM_BYTES};

/// What to do once the client has sent a number of datagrams through the relay.
#[derive(Debug, Clone, Copy)]
pub enum Change {
    /// Send to the server from a new socket (a new source port), as a NAT rebinding does.
    Rebind,
    /// Send to another server from now on.
    Retarget(SocketAddr),
}

/// When the relay changes the path.
#[derive(Debug, Clone, Copy)]
enum Schedule {
    /// At most one change, after the given client datagram.
    Once(Option<(u64, Change)>),
    /// A rebinding after every `datagrams` client datagrams, `times` times.
    Every { datagrams: u64, times: u64 },
}

impl Schedule {
    /// The change to apply after the client's `count`-th datagram, if any.
    fn change_at(self, count: u64) -> Option<Change> {
        match self {
            Self::Once(Some((after, change))) if count == after => Some(change),
            Self::Once(_) => None,
            Self::Every { datagrams, times } => {
                (count.is_multiple_of(datagrams) && count / datagrams <= times).then_some(Change::Rebind)
            }
        }
    }
}

/// The relay's server side: the socket it sends from, and the server it sends to.
struct ServerSide {
    socket: Arc<UdpSocket>,
    target: SocketAddr,
}

/// A running relay (its tasks live as long as the runtime).
pub struct PathChangeRelay {
    front_addr: SocketAddr,
    changed: Arc<Notify>,
    changes_done: Arc<AtomicU64>,
    client_datagrams: Arc<AtomicU64>,
}

impl PathChangeRelay {
    /// A relay to `server` that applies `change` after the client's `after_datagrams`-th datagram
    /// (`change` is `Some((after_datagrams, change))`; `None` relays unchanged).
    pub async fn start(server: SocketAddr, change: Option<(u64, Change)>) -> Self {
        Self::start_scheduled(server, Schedule::Once(change)).await
    }

    /// A relay to `server` that rebinds (a new source port toward the server, as a NAT does) after
    /// every `every_datagrams` client datagrams, `times` times in all: the server sees the client
    /// come from `times + 1` addresses in turn. [`changed`](Self::changed) resolves after the first;
    /// [`changes`](Self::changes) counts them.
    pub async fn start_rebinding(server: SocketAddr, every_datagrams: u64, times: u64) -> Self {
        Self::start_scheduled(server, Schedule::Every { datagrams: every_datagrams.max(1), times }).await
    }

    async fn start_scheduled(server: SocketAddr, schedule: Schedule) -> Self {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay front"));
        let front_addr = front.local_addr().expect("front address");
        let server_side = Arc::new(Mutex::new(ServerSide {
            socket: Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind relay back")),
            target: server,
        }));
        let client = ClientAddress::default();
        let changed = Arc::new(Notify::new());
        let changes_done = Arc::new(AtomicU64::new(0));
        let client_datagrams = Arc::new(AtomicU64::new(0));
        spawn_toward_client(server_side.clone(), front.clone(), client.clone()).await;
        {
            let (server_side, changed, changes_done, client_datagrams) =
                (server_side.clone(), changed.clone(), changes_done.clone(), client_datagrams.clone());
            tokio::spawn(async move {
                let mut buffer = vec![0u8; MAX_DATAGRAM_BYTES];
                loop {
                    let Ok((len, from)) = front.recv_from(&mut buffer).await else { return };
                    client.remember(from);
                    let count = client_datagrams.fetch_add(1, Ordering::Relaxed) + 1;
                    if let Some(change) = schedule.change_at(count) {
                        let mut now = server_side.lock().await;
                        match change {
                            Change::Rebind => {
                                now.socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind new back"));
                            }
                            Change::Retarget(target) => now.target = target,
                        }
                        drop(now);
                        if matches!(change, Change::Rebind) {
                            spawn_toward_client(server_side.clone(), front.clone(), client.clone()).await;
                        }
                        changes_done.fetch_add(1, Ordering::Relaxed);
                        changed.notify_waiters();
                    }
                    let (socket, target) = {
                        let now = server_side.lock().await;
                        (now.socket.clone(), now.target)
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

    /// Changes applied so far.
    pub fn changes(&self) -> u64 {
        self.changes_done.load(Ordering::Relaxed)
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

/// Forwards what the current server sends to the server-side socket back to the client. Runs for the
/// life of the socket: after a rebind the old mapping keeps working (as a NAT's does for a while),
/// and after a retarget whatever the old server still sends is ignored (it is gone, for the client).
async fn spawn_toward_client(server_side: Arc<Mutex<ServerSide>>, front: Arc<UdpSocket>, client: ClientAddress) {
    let socket = server_side.lock().await.socket.clone();
    tokio::spawn(async move {
        let mut buffer = vec![0u8; MAX_DATAGRAM_BYTES];
        loop {
            let Ok((len, from)) = socket.recv_from(&mut buffer).await else { return };
            if from != server_side.lock().await.target {
                continue;
            }
            if let Some(client) = client.get() {
                let _ = front.send_to(&buffer[..len], client).await;
            }
        }
    });
}
