//! DoQ forwarding throughput on loopback: a `DoqClient` sends QUERIES queries, IN_FLIGHT at a time,
//! over one connection to a `DoqServer` that forwards each to the scripted `TestUpstream` over UDP.
//! Prints queries per second and latency percentiles.
//!
//! ```text
//! cargo run --release -p quiver-doq --features test-util --example doq_load -- 20000 100
//! ```

use std::time::{Duration, Instant};

use quiver_doq::test_util::TestUpstream;
use quiver_doq::{DoqClient, DoqServer, RecordType};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).map(|arg| arg.parse()).collect::<Result<_, _>>()?;
    let (queries, in_flight) = match args.as_slice() {
        [] => (20_000, 100),
        [queries] => (*queries, 100),
        [queries, in_flight, ..] => (*queries, (*in_flight).max(1)),
    };
    let upstream = TestUpstream::start().await?;
    let config = quiver_doq::server_config().self_signed(["localhost"]).build()?;
    let endpoint = quiver::Endpoint::server("127.0.0.1:0".parse()?, config)?;
    let server = DoqServer::builder(upstream.addr()).build()?;
    let (serving, accepting) = (server.clone(), endpoint.clone());
    tokio::spawn(async move { serving.serve(accepting).await });
    let config = quiver_doq::client_config().insecure_skip_verification().build()?;
    let client = DoqClient::builder(endpoint.local_addr()).build(config)?;
    client.query("warmup.test.", RecordType::A).await?;

    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..in_flight {
        let client = client.clone();
        let share = queries / in_flight + usize::from(worker < queries % in_flight);
        workers.spawn(async move {
            let mut latencies = Vec::with_capacity(share);
            for index in 0..share {
                let asked = Instant::now();
                let answer = client.query(&format!("w{worker}q{index}.test."), RecordType::A).await?;
                anyhow::ensure!(answer.answers.len() == 1, "query {worker}/{index}: no answer");
                latencies.push(asked.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        });
    }
    let mut latencies: Vec<Duration> = Vec::with_capacity(queries);
    while let Some(done) = workers.join_next().await {
        latencies.extend(done??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1000.0;
    let stats = server.stats();
    println!(
        "{queries} queries, {in_flight} in flight, 1 connection: {:.0} queries/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        queries as f64 / elapsed.as_secs_f64(),
        percentile(0.5),
        percentile(0.99),
        percentile(1.0)
    );
    println!(
        "server: {} connections, {} answered upstream, {} SERVFAIL",
        stats.connections_accepted,
        stats.answered_upstream,
        stats.servfail_timeout + stats.servfail_upstream_error
    );
    endpoint.close();
    Ok(())
}
