//! What quiver records through the `metrics` facade: per-connection figures from the connection tasks,
//! and the endpoint counters `EndpointMetrics` publishes. Read back from an in-memory recorder.

mod support;

use std::collections::HashMap;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};
use quiver::metrics::{self as names, EndpointMetrics};
use quiver::{DropReason, Endpoint, EndpointStats};
use support::echo::EchoClient;
use support::*;

/// "name{k=v,...}" for a recorded key, labels in the order they were given.
fn render(key: &CompositeKey) -> String {
    let key = key.key();
    let labels: Vec<String> = key.labels().map(|label| format!("{}={}", label.key(), label.value())).collect();
    if labels.is_empty() { key.name().to_owned() } else { format!("{}{{{}}}", key.name(), labels.join(",")) }
}

#[test]
fn connections_and_endpoints_record_what_they_did() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // A current-thread runtime inside the local recorder: every task runs on this thread, so
    // everything recorded lands in this test's recorder and no other test's.
    let (server_stats, client_stats): (EndpointStats, EndpointStats) = metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let identity = identity();
            let server = spawn_echo_server(server_builder(&identity).build().unwrap());
            let client = Endpoint::client(loopback(), client_builder(&identity).build().unwrap()).unwrap();
            let (app, results) = EchoClient::new(vec![payload(30_000, 5)]);
            let connection = guarded("connect", client.connect(server.local_addr(), "localhost", app)).await.unwrap();
            guarded("echo", results).await.unwrap();
            guarded("close", connection.closed()).await;
            guarded("client idle", client.wait_idle()).await;
            guarded("server idle", server.wait_idle()).await;
            let (server_stats, client_stats) = (server.stats(), client.stats());
            EndpointMetrics::new().publish(&server_stats);
            EndpointMetrics::with_labels([("endpoint", "client")]).publish(&client_stats);
            (server_stats, client_stats)
        })
    });
    let recorded: HashMap<String, (MetricKind, DebugValue)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (render(&key), (key.kind(), value)))
        .collect();
    let counter = |name: &str| match recorded.get(name) {
        Some((MetricKind::Counter, DebugValue::Counter(value))) => *value,
        other => panic!("{name}: {other:?} among {:?}", recorded.keys()),
    };
    let samples = |name: &str| match recorded.get(name) {
        Some((MetricKind::Histogram, DebugValue::Histogram(values))) => values.len(),
        other => panic!("{name}: {other:?}"),
    };

    // Each connection (client and server side) recorded its handshake, and its final figures on close.
    assert_eq!(samples(names::HANDSHAKE_DURATION), 2);
    assert_eq!(samples(names::CONNECTION_RTT), 2);
    assert_eq!(samples(names::CONNECTION_CWND), 2);
    assert_eq!(counter(names::PACKETS_LOST), 0, "nothing is lost on loopback at this size");
    assert!(recorded.contains_key(names::PACKETS_RETRANSMITTED));

    // The endpoint counters are copied exactly, every drop reason included.
    assert_eq!(counter(names::DATAGRAMS_RECEIVED), server_stats.datagrams_received);
    assert_eq!(counter(names::RECEIVED_BYTES), server_stats.bytes_received);
    assert_eq!(counter(names::DATAGRAMS_SENT), server_stats.datagrams_sent);
    assert_eq!(counter(names::CONNECTIONS_ACCEPTED), 1);
    assert_eq!(counter(names::CONNECTIONS_CLOSED), 1);
    for reason in DropReason::ALL {
        let name = format!("{}{{reason={}}}", names::DATAGRAMS_DROPPED, reason.as_str());
        assert_eq!(counter(&name), server_stats.dropped(reason), "{name}");
    }
    assert_eq!(counter(&format!("{}{{reason=backlog_full}}", names::CONNECTIONS_REJECTED)), 0);
    assert!(
        matches!(recorded.get(names::CONNECTIONS_ACTIVE), Some((MetricKind::Gauge, DebugValue::Gauge(active))) if active.0 == 0.0)
    );
    // The client endpoint's copy carries its label.
    assert_eq!(counter(&format!("{}{{endpoint=client}}", names::CONNECTIONS_OPENED)), client_stats.connections_opened);
    assert_eq!(client_stats.connections_opened, 1);
}
