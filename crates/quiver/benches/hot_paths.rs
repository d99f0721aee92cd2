//! Micro-benchmarks of the per-datagram hot paths: the router's header classification and connection
//! ID lookup, and the GSO batcher. `cargo bench -p quiver` prints time per operation.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use quiver::internals::{CidTable, ProducedPacket, fill_batch};

/// A deterministic 16-byte connection ID in the router's format (router byte, then "random" bytes).
fn cid(index: u64) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    let mixed = index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    bytes[1..9].copy_from_slice(&mixed.to_le_bytes());
    bytes[9..].copy_from_slice(&mixed.rotate_left(29).to_le_bytes()[..7]);
    bytes
}

fn cid_lookup(c: &mut Criterion) {
    let mut table = CidTable::default();
    for index in 0..10_000u64 {
        table.insert(&cid(index), index);
    }
    let hits: Vec<[u8; 16]> = (0..1024).map(|index| cid(index * 7 % 10_000)).collect();
    let misses: Vec<[u8; 16]> = (0..1024).map(|index| cid(1_000_000 + index)).collect();
    let mut group = c.benchmark_group("cid_table_10k");
    group.throughput(Throughput::Elements(hits.len() as u64));
    group.bench_function("lookup_hit", |bench| {
        bench.iter(|| hits.iter().filter(|key| table.get(black_box(&key[..])).is_some()).count())
    });
    group.bench_function("lookup_miss", |bench| {
        bench.iter(|| misses.iter().filter(|key| table.get(black_box(&key[..])).is_some()).count())
    });
    group.finish();
}

fn gso_batcher(c: &mut Criterion) {
    let destination: SocketAddr = ([127, 0, 0, 1], 4433).into();
    let source: SocketAddr = ([127, 0, 0, 1], 50000).into();
    let now = Instant::now();
    let mut buffer = vec![0u8; 64_000];
    let mut group = c.benchmark_group("gso_batcher");
    // A full run: 47 packets of 1350 bytes, the bulk-transfer case.
    group.throughput(Throughput::Elements(47));
    group.bench_function("full_run_1350", |bench| {
        bench.iter(|| {
            let mut left = 47;
            fill_batch(&mut buffer, 1350, 64, now, |out: &mut [u8]| {
                if left == 0 {
                    return None;
                }
                left -= 1;
                out[0] = 0x40;
                Some(ProducedPacket { len: 1350, from: source, to: destination, at: now })
            })
        })
    });
    group.throughput(Throughput::Elements(1));
    // One small packet, then nothing: the request/response case.
    group.bench_function("single_small", |bench| {
        bench.iter(|| {
            let mut left = 1;
            fill_batch(&mut buffer, 1350, 64, now, |out: &mut [u8]| {
                if left == 0 {
                    return None;
                }
                left -= 1;
                out[0] = 0x40;
                Some(ProducedPacket { len: 120, from: source, to: destination, at: now })
            })
        })
    });
    group.finish();
}

criterion_group!(benches, cid_lookup, gso_batcher);
criterion_main!(benches);
