//! A local UDP port forwarded through a CONNECT-UDP proxy: [`UdpForwarder`].
//!
//! Every local peer (source address) that sends to the forwarder's socket gets its own tunnel to the
//! one target, so answers go back to whoever asked. Flows end after an idle time; past
//! [`MAX_LOCAL_FLOWS`] the least recently used is closed. What a caller may want to tell a user
//! (a tunnel that would not open, one that ended, datagrams dropped) arrives as [`ForwardEvent`]s.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::client::{MasqueClient, TunnelError};
use crate::target::Target;

/// Local peers (source addresses) forwarded at once, one tunnel each; past it the least recently
/// used flow is closed. A DNS stub resolver uses a fresh source port per query, and the proxy allows
/// 256 tunnels per connection by default.
pub const MAX_LOCAL_FLOWS: usize = 256;
/// Datagrams from one local peer queued while its tunnel opens (one round trip): a burst of DNS
/// retries fits. Local peers only, so at most 256 x 16 x 64 KiB even for pathological payloads.
const FLOW_QUEUE: usize = 16;
/// A flow's dropped datagrams are reported at most this often (the first at once, then a count), so
/// a flood of drops cannot flood whoever listens to the events.
pub const DROP_REPORT_INTERVAL: Duration = Duration::from_secs(10);
/// Default idle time after which a local peer's tunnel is closed.
pub const DEFAULT_FLOW_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Something about one local peer's flow that a user may want to see.
#[derive(Debug)]
#[non_exhaustive]
pub enum ForwardEvent {
    /// The tunnel for `peer` could not be opened; its queued datagrams are dropped.
    OpenFailed {
        /// The local peer.
        peer: SocketAddr,
        /// Why the proxy did not open it.
        error: TunnelError,
    },
    /// The tunnel for `peer` ended; the peer's next datagram opens a new one. Not sent when the
    /// connection to the proxy merely went idle.
    Ended {
        /// The local peer.
        peer: SocketAddr,
        /// Why it ended.
        error: TunnelError,
    },
    /// Datagrams from `peer` were dropped (rate-limited: see [`DROP_REPORT_INTERVAL`]).
    Dropped {
        /// The local peer.
        peer: SocketAddr,
        /// Drops since the last report.
        count: u64,
        /// Size of the last dropped datagram.
        last_payload_bytes: usize,
        /// Why the last one was dropped.
        error: TunnelError,
    },
}

/// Receives [`ForwardEvent`]s; called from the flows' tasks, so keep it quick.
type EventSink = Arc<dyn Fn(ForwardEvent) + Send + Sync>;

/// The local socket could not be read any more.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the local UDP socket: {0}")]
pub struct ForwardError(#[source] pub std::io::Error);

/// Forwards a local UDP port to one target through a proxy, one tunnel per local peer.
///
/// ```no_run
/// use quiver_masque::{MasqueClient, UdpForwarder};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = MasqueClient::new("https://proxy.example", quiver_masque::client_config().build()?)?;
/// let forwarder = UdpForwarder::bind("127.0.0.1:5353".parse()?, client, "dns.example:53".parse()?)
///     .await?
///     .on_event(|event| eprintln!("{event:?}"));
/// println!("forwarding udp://{}", forwarder.local_addr());
/// forwarder.run().await?;
/// # Ok(()) }
/// ```
pub struct UdpForwarder {
    socket: Arc<UdpSocket>,
    local_addr: SocketAddr,
    client: MasqueClient,
    target: Arc<Target>,
    idle_timeout: Duration,
    events: EventSink,
}

impl std::fmt::Debug for UdpForwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpForwarder")
            .field("local_addr", &self.local_addr)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl UdpForwarder {
    /// Binds the local socket (port 0 picks one; see [`local_addr`](Self::local_addr)).
    ///
    /// # Errors
    /// The socket could not be bound.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is bound unless this returns.
    pub async fn bind(listen: SocketAddr, client: MasqueClient, target: Target) -> std::io::Result<Self> {
        let socket = UdpSocket::bind(listen).await?;
        let local_addr = socket.local_addr()?;
        Ok(Self {
            socket: Arc::new(socket),
            local_addr,
            client,
            target: Arc::new(target),
            idle_timeout: DEFAULT_FLOW_IDLE_TIMEOUT,
            events: Arc::new(|_| {}),
        })
    }

    /// Closes a local peer's tunnel after this long without a datagram either way (default
    /// [`DEFAULT_FLOW_IDLE_TIMEOUT`]).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Calls `sink` with every [`ForwardEvent`] (default: none are reported).
    pub fn on_event(mut self, sink: impl Fn(ForwardEvent) + Send + Sync + 'static) -> Self {
        self.events = Arc::new(sink);
        self
    }

    /// The local address datagrams are forwarded from.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Forwards until the local socket fails.
    ///
    /// # Errors
    /// [`ForwardError`] when the local socket cannot be read.
    ///
    /// # Cancel safety
    /// Dropping the future stops reading the local socket; each flow's task ends once its queue is
    /// gone, closing its tunnel.
    pub async fn run(self) -> Result<(), ForwardError> {
        let mut flows: HashMap<SocketAddr, LocalFlow> = HashMap::new();
        let mut buffer = vec![0u8; 65_536];
        loop {
            let (length, peer) = match self.socket.recv_from(&mut buffer).await {
                Ok(received) => received,
                // ICMP errors for earlier answers to peers that went away; the socket is fine.
                Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(err) => return Err(ForwardError(err)),
            };
            let payload = Bytes::copy_from_slice(&buffer[..length]);
            let now = Instant::now();
            if let Some(flow) = flows.get_mut(&peer).filter(|flow| !flow.queue.is_closed()) {
                flow.last_datagram = now;
                if flow.queue.try_send(payload).is_err() {
                    tracing::debug!(%peer, "flow queue full; datagram dropped");
                }
                continue;
            }
            if flows.len() >= MAX_LOCAL_FLOWS {
                flows.retain(|_, flow| !flow.queue.is_closed());
            }
            if flows.len() >= MAX_LOCAL_FLOWS
                && let Some(oldest) = least_recently_used(&flows)
            {
                // Dropping its queue ends the flow task, which closes its tunnel.
                flows.remove(&oldest);
                tracing::debug!(peer = %oldest, "every flow slot taken; closing the least recently used");
            }
            let (queue, datagrams) = mpsc::channel(FLOW_QUEUE);
            let _ = queue.try_send(payload);
            flows.insert(peer, LocalFlow { queue, last_datagram: now });
            let flow = Flow {
                socket: self.socket.clone(),
                client: self.client.clone(),
                target: self.target.clone(),
                peer,
                idle_timeout: self.idle_timeout,
                events: self.events.clone(),
            };
            tokio::spawn(flow.run(datagrams));
        }
    }
}

/// The forwarder's handle on one peer's flow task.
struct LocalFlow {
    queue: mpsc::Sender<Bytes>,
    last_datagram: Instant,
}

/// The peer whose flow has gone longest without a datagram: the one to close when every slot is taken
/// (a DNS stub uses a fresh source port per query, so old flows are rarely needed again).
fn least_recently_used(flows: &HashMap<SocketAddr, LocalFlow>) -> Option<SocketAddr> {
    flows.iter().min_by_key(|(_, flow)| flow.last_datagram).map(|(peer, _)| *peer)
}

/// Counts a flow's dropped datagrams and says when to report them: the first at once, then at most
/// once per [`DROP_REPORT_INTERVAL`] with how many were dropped since the last report.
#[derive(Debug, Default)]
struct DropReport {
    unreported: u64,
    last_report: Option<Instant>,
}

impl DropReport {
    /// Counts one drop at `now`; `Some(count)` when it is time to report `count` drops.
    fn dropped(&mut self, now: Instant) -> Option<u64> {
        self.unreported += 1;
        if self.last_report.is_some_and(|last| now.duration_since(last) < DROP_REPORT_INTERVAL) {
            return None;
        }
        self.last_report = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }
}

/// One local peer's tunnel.
struct Flow {
    socket: Arc<UdpSocket>,
    client: MasqueClient,
    target: Arc<Target>,
    peer: SocketAddr,
    idle_timeout: Duration,
    events: EventSink,
}

impl Flow {
    async fn run(self, mut datagrams: mpsc::Receiver<Bytes>) {
        let peer = self.peer;
        let mut tunnel = match self.client.open(&self.target).await {
            Ok(tunnel) => tunnel,
            Err(error) => {
                (self.events)(ForwardEvent::OpenFailed { peer, error });
                return;
            }
        };
        tracing::debug!(%peer, target = %self.target, quic_datagrams = tunnel.uses_quic_datagrams(), "tunnel open");
        let idle = tokio::time::sleep(self.idle_timeout);
        tokio::pin!(idle);
        let mut drops = DropReport::default();
        loop {
            tokio::select! {
                next = datagrams.recv() => {
                    let Some(payload) = next else { return };
                    idle.as_mut().reset(tokio::time::Instant::now() + self.idle_timeout);
                    if let Err(error) = tunnel.send(&payload)
                        && let Some(count) = drops.dropped(Instant::now())
                    {
                        (self.events)(ForwardEvent::Dropped { peer, count, last_payload_bytes: payload.len(), error });
                    }
                }
                received = tunnel.recv() => match received {
                    Ok(payload) => {
                        idle.as_mut().reset(tokio::time::Instant::now() + self.idle_timeout);
                        let _ = self.socket.send_to(&payload, peer).await;
                    }
                    // A connection idle for the QUIC idle timeout ends quietly: nothing was lost.
                    Err(TunnelError::ConnectionLost(quiver::ConnectionError::IdleTimeout)) => {
                        tracing::debug!(%peer, "connection to the proxy idle; closing");
                        return;
                    }
                    Err(error) => {
                        (self.events)(ForwardEvent::Ended { peer, error });
                        return;
                    }
                },
                () = &mut idle => {
                    tracing::debug!(%peer, "tunnel idle; closing");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_reported_at_most_once_per_interval() {
        let start = Instant::now();
        let mut report = DropReport::default();
        assert_eq!(report.dropped(start), Some(1), "the first drop at once");
        for _ in 0..999 {
            assert_eq!(report.dropped(start + Duration::from_secs(1)), None);
        }
        assert_eq!(report.dropped(start + DROP_REPORT_INTERVAL), Some(1000), "then a count");
    }

    #[test]
    fn the_flow_idle_longest_is_closed_first() {
        let now = Instant::now();
        let flow = |seconds_ago: u64| LocalFlow {
            queue: mpsc::channel(1).0,
            last_datagram: now.checked_sub(Duration::from_secs(seconds_ago)).unwrap_or(now),
        };
        let mut flows = HashMap::new();
        assert_eq!(least_recently_used(&flows), None);
        flows.insert("127.0.0.1:1000".parse().unwrap(), flow(1));
        flows.insert("127.0.0.1:2000".parse().unwrap(), flow(30));
        flows.insert("127.0.0.1:3000".parse().unwrap(), flow(5));
        assert_eq!(least_recently_used(&flows), Some("127.0.0.1:2000".parse().unwrap()));
    }
}
