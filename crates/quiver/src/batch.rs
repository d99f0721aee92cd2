//! The GSO batcher: packs the packets quiche produces into as few send calls as possible.
//!
//! One send call carries a run of equal-size datagrams to one destination (the kernel splits it: UDP
//! generic segmentation offload); a shorter datagram may end a run. A packet that cannot join the run
//! (another destination, a larger size, or a release time beyond the pacing horizon) is left right
//! after the run in the same buffer for the caller to deal with. This module does no IO, so it can be
//! tested and benchmarked alone.

use std::net::SocketAddr;
use std::time::Instant;

/// A packet quiche produced: its length, path and earliest release time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducedPacket {
    /// Bytes written.
    pub len: usize,
    /// The local address it must leave from (the path's, during a migration not always the current
    /// socket's).
    pub from: SocketAddr,
    /// Where it goes.
    pub to: SocketAddr,
    /// When the congestion controller's pacer wants it sent.
    pub at: Instant,
}

/// A packet that was produced but could not join the run: it sits in the buffer right after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldPacket {
    /// Its bytes are `buffer[run_len..run_len + len]`.
    pub len: usize,
    /// The local address it must leave from.
    pub from: SocketAddr,
    /// Where it goes.
    pub to: SocketAddr,
    /// When it may leave.
    pub at: Instant,
}

/// What one [`fill_batch`] call produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    /// Bytes of the run, at the start of the buffer.
    pub len: usize,
    /// Size of every datagram of the run but possibly the last.
    pub segment_size: usize,
    /// Datagrams in the run.
    pub segments: usize,
    /// The run's destination; `None` when the run is empty.
    pub destination: Option<SocketAddr>,
    /// The local address the run leaves from (meaningful when `destination` is set).
    pub source: Option<SocketAddr>,
    /// A packet that must be sent on its own or later.
    pub held: Option<HeldPacket>,
    /// The producer said it has nothing more to send.
    pub exhausted: bool,
}

/// Fills `buffer` with one run of packets from `produce`, which writes one packet into the slice it is
/// given and returns it, or `None` when it has nothing more (quiche's `Done`, or an error).
///
/// At most `max_segments` packets of at most `mtu` bytes each go into the run. Packets whose release
/// time is after `pacing_horizon` end the run and are held.
pub fn fill_batch(
    buffer: &mut [u8],
    mtu: usize,
    max_segments: usize,
    pacing_horizon: Instant,
    mut produce: impl FnMut(&mut [u8]) -> Option<ProducedPacket>,
) -> Batch {
    let mut batch =
        Batch { len: 0, segment_size: 0, segments: 0, destination: None, source: None, held: None, exhausted: false };
    let mtu = mtu.max(1);
    while batch.segments < max_segments.max(1) && batch.len + mtu <= buffer.len() {
        let Some(packet) = produce(&mut buffer[batch.len..batch.len + mtu]) else {
            batch.exhausted = true;
            break;
        };
        let hold = HeldPacket { len: packet.len, from: packet.from, to: packet.to, at: packet.at };
        if packet.at > pacing_horizon {
            batch.held = Some(hold);
            break;
        }
        match batch.destination {
            None => {
                batch.destination = Some(packet.to);
                batch.source = Some(packet.from);
                batch.segment_size = packet.len;
                batch.len = packet.len;
                batch.segments = 1;
            }
            Some(to) if to == packet.to && batch.source == Some(packet.from) && packet.len <= batch.segment_size => {
                batch.len += packet.len;
                batch.segments += 1;
                if packet.len < batch.segment_size {
                    // A short datagram can only end a GSO run.
                    break;
                }
            }
            Some(_) => {
                batch.held = Some(hold);
                break;
            }
        }
    }
    batch
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A producer that writes each size in turn, filling the packet with its index.
    fn producer(packets: Vec<(usize, SocketAddr, Instant)>) -> impl FnMut(&mut [u8]) -> Option<ProducedPacket> {
        let mut next = packets.into_iter().enumerate();
        move |out: &mut [u8]| {
            let (index, (len, to, at)) = next.next()?;
            out[..len].fill(index as u8);
            Some(ProducedPacket { len, from: addr(9), to, at })
        }
    }

    #[test]
    fn equal_packets_form_one_run_and_a_short_one_ends_it() {
        let now = Instant::now();
        let mut buffer = vec![0u8; 64_000];
        let packets = vec![(1200, addr(1), now), (1200, addr(1), now), (500, addr(1), now), (1200, addr(1), now)];
        let mut produce = producer(packets);
        let batch = fill_batch(&mut buffer, 1350, 64, now, &mut produce);
        assert_eq!((batch.len, batch.segment_size, batch.segments), (2900, 1200, 3));
        assert_eq!(batch.destination, Some(addr(1)));
        assert!(!batch.exhausted && batch.held.is_none());
        assert_eq!(&buffer[1200..2400], &[1u8; 1200][..]);
        let batch = fill_batch(&mut buffer, 1350, 64, now, &mut produce);
        assert_eq!((batch.len, batch.segments, batch.exhausted), (1200, 1, true));
    }

    #[test]
    fn another_destination_or_a_larger_packet_is_held() {
        let now = Instant::now();
        let mut buffer = vec![0u8; 64_000];
        let batch = fill_batch(&mut buffer, 1350, 64, now, producer(vec![(900, addr(1), now), (900, addr(2), now)]));
        assert_eq!(batch.held, Some(HeldPacket { len: 900, from: addr(9), to: addr(2), at: now }));
        assert_eq!(&buffer[900..1800], &[1u8; 900][..], "the held packet follows the run");
        let batch = fill_batch(&mut buffer, 1350, 64, now, producer(vec![(900, addr(1), now), (1000, addr(1), now)]));
        assert_eq!(batch.held.map(|held| held.len), Some(1000));
    }

    #[test]
    fn a_packet_from_another_local_address_is_held() {
        let now = Instant::now();
        let mut buffer = vec![0u8; 64_000];
        let packets = [(900, addr(9)), (900, addr(8))];
        let mut next = packets.into_iter();
        let batch = fill_batch(&mut buffer, 1350, 64, now, |_out: &mut [u8]| {
            let (len, from) = next.next()?;
            Some(ProducedPacket { len, from, to: addr(1), at: now })
        });
        assert_eq!((batch.segments, batch.source), (1, Some(addr(9))));
        assert_eq!(batch.held.map(|held| held.from), Some(addr(8)));
    }

    #[test]
    fn packets_due_after_the_horizon_are_held() {
        let now = Instant::now();
        let later = now + Duration::from_millis(5);
        let mut buffer = vec![0u8; 64_000];
        let batch =
            fill_batch(&mut buffer, 1350, 64, now, producer(vec![(1200, addr(1), now), (1200, addr(1), later)]));
        assert_eq!(batch.segments, 1);
        assert_eq!(batch.held.map(|held| held.at), Some(later));
    }

    #[test]
    fn runs_respect_segment_and_buffer_limits() {
        let now = Instant::now();
        let many = vec![(1350, addr(1), now); 100];
        let mut buffer = vec![0u8; 64_000];
        assert_eq!(fill_batch(&mut buffer, 1350, 10, now, producer(many.clone())).segments, 10);
        assert_eq!(fill_batch(&mut buffer, 1350, 64, now, producer(many)).segments, 47, "64,000 / 1,350 slots");
        let batch = fill_batch(&mut buffer, 1350, 64, now, producer(Vec::new()));
        assert_eq!((batch.destination, batch.exhausted), (None, true));
    }
}
