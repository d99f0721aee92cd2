//! One tunnel's relay: a task per tunnel that moves payloads between the client (HTTP Datagrams, or
//! DATAGRAM capsules on the request stream) and the far end (a connected UDP socket for
//! CONNECT-UDP, an address leased on the IP gateway for CONNECT-IP), until the client closes, the
//! connection goes, or the tunnel is idle.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response};
use http_body_util::BodyExt;
use quiver_h3::datagram::{CAPSULE_DATAGRAM, Capsule, encode_capsule};
use quiver_h3::{BodyError, DatagramError, DatagramFlow, RecvBody};
use tokio::net::UdpSocket;
use tokio::sync::OwnedSemaphorePermit;

use super::ip_tunnel;
use super::shared::ProxyShared;
use crate::CONTEXT_UDP_PAYLOAD;
use crate::body::{CapsuleReader, CapsuleSender, ChannelBody};
use crate::ip::gateway::{ForwardRefused, IpLease};
use quiver::SourceShare;

/// Datagrams a relay reads from its socket per wake-up before letting other tunnels run.
const RECV_BATCH: usize = 64;

/// One permit of the connection's tunnel limit, one of its address's share and one of the proxy's,
/// held for the tunnel's life.
pub(crate) type TunnelPermits = (OwnedSemaphorePermit, SourceShare, OwnedSemaphorePermit);

/// A UDP socket connected to `address`, for one CONNECT-UDP tunnel.
pub(crate) async fn connect_udp(address: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: IpAddr = if address.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
    let socket = UdpSocket::bind(SocketAddr::new(local, 0)).await?;
    socket.connect(address).await?;
    Ok(socket)
}

thread_local! {
    /// One receive buffer per worker thread, large enough for any UDP datagram (so a read is never
    /// truncated) without a 64 KiB buffer per tunnel: relays use it only between awaits.
    static RECV_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; 65_536]);
}

/// Answers 200 and relays between the request's stream and datagrams and `far` until the tunnel
/// ends.
pub(crate) fn start(
    proxy: Arc<ProxyShared>,
    request: Request<RecvBody>,
    far: FarEnd,
    permits: TunnelPermits,
) -> Response<ChannelBody> {
    let flow = DatagramFlow::take_from(request.extensions());
    let (downloads, body) = ChannelBody::channel();
    proxy.counters.tunnels_opened.fetch_add(1, Ordering::Relaxed);
    proxy.counters.tunnels_active.fetch_add(1, Ordering::Relaxed);
    let relay = Relay { proxy, far, flow, downloads, _permits: permits };
    tokio::spawn(relay.run(request.into_body()));
    let mut response = Response::new(body);
    response.headers_mut().insert(HeaderName::from_static("capsule-protocol"), HeaderValue::from_static("?1"));
    response
}

/// Where a tunnel's payloads go: a UDP socket connected to the target (CONNECT-UDP), or an address
/// leased on the IP gateway (CONNECT-IP).
pub(crate) enum FarEnd {
    Udp(UdpSocket),
    Ip(IpLease),
}

/// Something from the far end.
enum Arrival {
    /// The UDP socket has datagrams to read.
    UdpReadable,
    /// A packet from the TUN device; `None` once the gateway stopped.
    Packet(Option<Bytes>),
}

impl FarEnd {
    /// # Cancel safety
    /// Cancel safe.
    async fn arrival(&mut self) -> Arrival {
        match self {
            Self::Udp(socket) => {
                let _ = socket.readable().await;
                Arrival::UdpReadable
            }
            Self::Ip(lease) => Arrival::Packet(lease.packets.recv().await),
        }
    }
}

/// One tunnel: its far end on one side, its datagram flow and stream on the other.
struct Relay {
    proxy: Arc<ProxyShared>,
    far: FarEnd,
    /// `None` when the connection has no QUIC datagrams: then everything goes as capsules.
    flow: Option<DatagramFlow>,
    downloads: CapsuleSender,
    _permits: TunnelPermits,
}

/// Why a relay ended.
#[derive(Debug)]
enum RelayEnd {
    ClientClosed,
    ClientReset(u64),
    /// The connection ended under the tunnel.
    ConnectionClosed,
    Idle,
    Malformed(String),
    GatewayStopped,
}

impl Relay {
    async fn run(mut self, uploads: RecvBody) {
        let end = self.relay(uploads).await;
        tracing::debug!(?end, "tunnel closed");
        let counters = &self.proxy.counters;
        counters.tunnels_active.fetch_sub(1, Ordering::Relaxed);
        match end {
            RelayEnd::Idle => {
                counters.tunnels_idle_closed.fetch_add(1, Ordering::Relaxed);
            }
            RelayEnd::Malformed(reason) => {
                // RFC 9297 §3.3: a malformed capsule stream is a malformed request: reset it.
                self.downloads.abort(reason);
            }
            RelayEnd::ClientReset(code) => tracing::debug!(code, "client reset the tunnel"),
            RelayEnd::ClientClosed | RelayEnd::ConnectionClosed | RelayEnd::GatewayStopped => {}
        }
        // Dropping `downloads` finishes our side of the stream (FIN) unless it was aborted above;
        // dropping the far end frees its socket or returns its address to the pool.
    }

    async fn relay(&mut self, mut uploads: RecvBody) -> RelayEnd {
        if let FarEnd::Ip(lease) = &self.far {
            for capsule in ip_tunnel::opening_capsules(lease) {
                let _ = self.downloads.try_send(capsule);
            }
        }
        let idle_timeout = self.proxy.config.idle_timeout;
        let idle = tokio::time::sleep(idle_timeout);
        tokio::pin!(idle);
        let mut decoder = CapsuleReader::new();
        let mut flow = self.flow.take();
        let end = loop {
            tokio::select! {
                datagram = crate::next_datagram(&mut flow) => match datagram {
                    // Only a datagram that goes on keeps the tunnel open: one dropped (policy,
                    // malformed, unknown context) must not let a client hold a tunnel with junk.
                    Some(datagram) => {
                        if self.relay_to_far_end(&datagram) {
                            idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                        }
                    }
                    // The stream's datagram side is gone; its end arrives on the stream.
                    None => flow = None,
                },
                frame = uploads.frame() => match frame {
                    Some(Ok(frame)) => {
                        let Some(data) = frame.data_ref() else { continue };
                        decoder.push(data);
                        loop {
                            match decoder.next_capsule() {
                                Ok(Some(capsule)) if capsule.capsule_type == CAPSULE_DATAGRAM => {
                                    if self.relay_to_far_end(&capsule.value) {
                                        idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                                    }
                                }
                                Ok(Some(capsule)) => {
                                    if let Err(malformed) = self.on_capsule(&capsule) {
                                        return RelayEnd::Malformed(malformed);
                                    }
                                }
                                Ok(None) => break,
                                Err(too_large) => return RelayEnd::Malformed(too_large.to_string()),
                            }
                        }
                    }
                    // RFC 9297 §3.3: a stream that ends inside a capsule is malformed.
                    None => match decoder.finish() {
                        Ok(()) => break RelayEnd::ClientClosed,
                        Err(truncated) => break RelayEnd::Malformed(truncated),
                    },
                    Some(Err(BodyError::Reset(code))) => break RelayEnd::ClientReset(code),
                    Some(Err(_)) => break RelayEnd::ConnectionClosed,
                },
                arrival = self.far.arrival() => {
                    let relayed = match arrival {
                        Arrival::UdpReadable => self.relay_from_target(flow.as_ref()),
                        Arrival::Packet(Some(packet)) => {
                            self.relay_to_client(flow.as_ref(), crate::context_zero_datagram(&packet));
                            true
                        }
                        Arrival::Packet(None) => break RelayEnd::GatewayStopped,
                    };
                    if relayed {
                        idle.as_mut().reset(tokio::time::Instant::now() + idle_timeout);
                    }
                    if self.downloads.is_closed() {
                        break RelayEnd::ClientClosed;
                    }
                }
                () = &mut idle => break RelayEnd::Idle,
            }
        };
        self.flow = flow;
        end
    }

    /// A capsule other than DATAGRAM. Unknown types are skipped (RFC 9297 §3.2); on an IP tunnel an
    /// ADDRESS_REQUEST is answered ([`ip_tunnel::answer_capsule`]). `Err` when the capsule is malformed.
    fn on_capsule(&self, capsule: &Capsule) -> Result<(), String> {
        let FarEnd::Ip(lease) = &self.far else { return Ok(()) };
        if let Some(answer) = ip_tunnel::answer_capsule(lease, capsule.capsule_type, &capsule.value)?
            && self.downloads.try_send(answer).is_err()
        {
            self.proxy.counters.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Sends one HTTP Datagram payload from the client to the far end; false (and counted) when it
    /// was dropped.
    fn relay_to_far_end(&self, payload: &[u8]) -> bool {
        let counters = &self.proxy.counters;
        let Some((context, inner)) = crate::split_context(payload) else {
            counters.dropped_malformed.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        if context != CONTEXT_UDP_PAYLOAD {
            counters.dropped_unknown_context.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let sent = match &self.far {
            FarEnd::Udp(socket) => socket.try_send(inner).map(drop).map_err(|err| match err.kind() {
                std::io::ErrorKind::WouldBlock => &counters.dropped_queue_full,
                _ => &counters.dropped_send_failed,
            }),
            FarEnd::Ip(lease) => lease.forward(inner, &self.proxy.config.policy, &self.proxy.this_host).map_err(
                |refused| match refused {
                    ForwardRefused::Malformed => &counters.dropped_malformed,
                    ForwardRefused::Spoofed => &counters.dropped_not_routed,
                    ForwardRefused::Denied => &counters.dropped_policy,
                    ForwardRefused::QueueFull => &counters.dropped_queue_full,
                    ForwardRefused::Failed => &counters.dropped_send_failed,
                },
            ),
        };
        match sent {
            Ok(()) => {
                counters.datagrams_to_target.fetch_add(1, Ordering::Relaxed);
                counters.bytes_to_target.fetch_add(inner.len() as u64, Ordering::Relaxed);
                true
            }
            Err(counter) => {
                counter.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Relays what the target sent, up to a batch; true if anything arrived.
    fn relay_from_target(&self, flow: Option<&DatagramFlow>) -> bool {
        let FarEnd::Udp(socket) = &self.far else { return false };
        let mut received = false;
        for _ in 0..RECV_BATCH {
            let frame = RECV_BUFFER.with_borrow_mut(|buffer| match socket.try_recv(buffer) {
                Ok(length) => Some(Ok(crate::context_zero_datagram(&buffer[..length]))),
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => None,
                Err(err) => Some(Err(err)),
            });
            match frame {
                None => break,
                // An ICMP error for an earlier send (port unreachable): the tunnel stays, the
                // client's next datagram may find the target up.
                Some(Err(err)) => tracing::trace!(error = %err, "target socket error"),
                Some(Ok(frame)) => {
                    received = true;
                    self.relay_to_client(flow, frame);
                }
            }
        }
        received
    }

    /// Sends one HTTP Datagram payload (context ID included) to the client, as a QUIC datagram or
    /// a capsule; drops and counts it when it does not fit or the queue is full.
    fn relay_to_client(&self, flow: Option<&DatagramFlow>, frame: Vec<u8>) {
        let counters = &self.proxy.counters;
        let inner_length = frame.len() - 1;
        // RFC 9297 §2.1.1: HTTP Datagrams only to a client whose SETTINGS enabled them; else a capsule.
        let sent = match flow.filter(|flow| flow.peer_enabled()) {
            Some(flow) => flow.send(&frame).map_err(|err| match err {
                DatagramError::TooLarge { .. } => &counters.dropped_too_large,
                _ => &counters.dropped_queue_full,
            }),
            None => self
                .downloads
                .try_send(encode_capsule(CAPSULE_DATAGRAM, &frame))
                .map_err(|_| &counters.dropped_queue_full),
        };
        match sent {
            Ok(()) => {
                counters.datagrams_from_target.fetch_add(1, Ordering::Relaxed);
                counters.bytes_from_target.fetch_add(inner_length as u64, Ordering::Relaxed);
            }
            Err(counter) => {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
