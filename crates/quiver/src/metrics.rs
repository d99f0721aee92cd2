//! Metrics through the [`metrics`] facade: the names quiver records under, their descriptions, and
//! [`EndpointMetrics`], which copies an endpoint's counters into the installed recorder.
//!
//! Nothing is recorded unless the application installs a recorder (`metrics::set_global_recorder`,
//! or an exporter that does it, such as `metrics-exporter-prometheus`); without one every call here is
//! a no-op. Install it before building endpoints. Two kinds of figures, chosen so that no datagram and
//! no request pays for metrics:
//!
//! - **Endpoint counters** stay where they are on the hot path (the relaxed atomics behind
//!   [`Endpoint::stats`](crate::Endpoint::stats)) and are copied into the recorder when the application
//!   calls [`EndpointMetrics::publish`], typically right before each scrape.
//! - **Per-connection figures** are recorded once per connection by its task: the handshake duration
//!   when the handshake completes; RTT, congestion window, lost and retransmitted packets when it
//!   closes (so a connection that is still open is not in them yet).
//!
//! Every metric is listed, with its unit and labels, in `docs/metrics.md`.
//!
//! ```no_run
//! # fn demo(endpoint: quiver::Endpoint) {
//! // After installing a recorder:
//! quiver::metrics::describe();
//! let published = quiver::metrics::EndpointMetrics::new();
//! // Before each scrape:
//! published.publish(&endpoint.stats());
//! # }
//! ```

use std::time::Duration;

use metrics::{Label, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

use crate::stats::{ConnectionStats, DropReason, EndpointStats};

/// Counter: UDP datagrams read from the endpoint's sockets.
pub const DATAGRAMS_RECEIVED: &str = "quiver_datagrams_received_total";
/// Counter: bytes in those datagrams.
pub const RECEIVED_BYTES: &str = "quiver_received_bytes_total";
/// Counter: datagrams handed to a connection.
pub const DATAGRAMS_DELIVERED: &str = "quiver_datagrams_delivered_total";
/// Counter: datagrams passed to the router of another socket of the same endpoint.
pub const DATAGRAMS_FORWARDED: &str = "quiver_datagrams_forwarded_total";
/// Counter, label `reason` ([`DropReason::as_str`]): datagrams dropped.
pub const DATAGRAMS_DROPPED: &str = "quiver_datagrams_dropped_total";
/// Counter: UDP datagrams written.
pub const DATAGRAMS_SENT: &str = "quiver_datagrams_sent_total";
/// Counter: bytes in those datagrams.
pub const SENT_BYTES: &str = "quiver_sent_bytes_total";
/// Counter: send calls the kernel refused.
pub const SEND_ERRORS: &str = "quiver_send_errors_total";
/// Counter: server connections that completed the handshake and entered the accept queue.
pub const CONNECTIONS_ACCEPTED: &str = "quiver_connections_accepted_total";
/// Counter, label `reason`: server connection attempts refused (`backlog_full`, `connection_limit`,
/// `accept_failed`, `invalid_initial`).
pub const CONNECTIONS_REJECTED: &str = "quiver_connections_rejected_total";
/// Counter: client connections started.
pub const CONNECTIONS_OPENED: &str = "quiver_connections_opened_total";
/// Counter: connections (either role) whose task has ended.
pub const CONNECTIONS_CLOSED: &str = "quiver_connections_closed_total";
/// Gauge: connections (either role) whose task is running.
pub const CONNECTIONS_ACTIVE: &str = "quiver_connections_active";
/// Counter: handshakes abandoned at their deadline (a server's slow or stalling clients, a client's
/// unanswered attempts).
pub const HANDSHAKE_TIMEOUTS: &str = "quiver_handshake_timeouts_total";
/// Counter: connections closed at once because quiche could not build their packets.
pub const CONNECTIONS_SEND_FAILED: &str = "quiver_connections_send_failed_total";
/// Histogram: time from a connection's creation to the handshake's completion.
pub const HANDSHAKE_DURATION: &str = "quiver_handshake_duration_seconds";
/// Summary: smoothed RTT of each connection when it closed.
pub const CONNECTION_RTT: &str = "quiver_connection_rtt_seconds";
/// Summary: congestion window of each connection when it closed.
pub const CONNECTION_CWND: &str = "quiver_connection_cwnd_bytes";
/// Counter: packets declared lost, added when their connection closes.
pub const PACKETS_LOST: &str = "quiver_packets_lost_total";
/// Counter: packets retransmitted, added when their connection closes.
pub const PACKETS_RETRANSMITTED: &str = "quiver_packets_retransmitted_total";

/// Bucket bounds for [`HANDSHAKE_DURATION`], in seconds: a loopback handshake takes about a
/// millisecond, an intercontinental one a few hundred; past a few seconds something is wrong.
pub const HANDSHAKE_DURATION_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Datagram drops that mean a connection attempt was refused, and the `reason` label they get in
/// [`CONNECTIONS_REJECTED`].
const REJECTIONS: [(DropReason, &str); 3] = [
    (DropReason::ConnectionLimit, "connection_limit"),
    (DropReason::AcceptFailed, "accept_failed"),
    (DropReason::InvalidInitial, "invalid_initial"),
];

/// Registers the description and unit of every metric above with the installed recorder (exporters
/// print them as `# HELP` lines). Call once, after installing the recorder.
pub fn describe() {
    describe_counter!(DATAGRAMS_RECEIVED, Unit::Count, "UDP datagrams read from the endpoint's sockets");
    describe_counter!(RECEIVED_BYTES, Unit::Bytes, "Bytes in the UDP datagrams read");
    describe_counter!(DATAGRAMS_DELIVERED, Unit::Count, "Datagrams handed to a connection");
    describe_counter!(DATAGRAMS_FORWARDED, Unit::Count, "Datagrams passed to the router of a sibling socket");
    describe_counter!(DATAGRAMS_DROPPED, Unit::Count, "Datagrams dropped, by reason");
    describe_counter!(DATAGRAMS_SENT, Unit::Count, "UDP datagrams written");
    describe_counter!(SENT_BYTES, Unit::Bytes, "Bytes in the UDP datagrams written");
    describe_counter!(SEND_ERRORS, Unit::Count, "UDP send calls the kernel refused");
    describe_counter!(CONNECTIONS_ACCEPTED, Unit::Count, "Server connections that completed the handshake");
    describe_counter!(CONNECTIONS_REJECTED, Unit::Count, "Server connection attempts refused, by reason");
    describe_counter!(CONNECTIONS_OPENED, Unit::Count, "Client connections started");
    describe_counter!(CONNECTIONS_CLOSED, Unit::Count, "Connections whose task has ended");
    describe_gauge!(CONNECTIONS_ACTIVE, Unit::Count, "Connections whose task is running");
    describe_counter!(HANDSHAKE_TIMEOUTS, Unit::Count, "Handshakes abandoned at their deadline");
    describe_histogram!(HANDSHAKE_DURATION, Unit::Seconds, "Time from connection creation to handshake completion");
    describe_histogram!(CONNECTION_RTT, Unit::Seconds, "Smoothed RTT of each connection when it closed");
    describe_histogram!(CONNECTION_CWND, Unit::Bytes, "Congestion window of each connection when it closed");
    describe_counter!(PACKETS_LOST, Unit::Count, "Packets declared lost (added when the connection closes)");
    describe_counter!(PACKETS_RETRANSMITTED, Unit::Count, "Packets retransmitted (added when the connection closes)");
}

/// Copies an endpoint's counters ([`EndpointStats`]) into the installed recorder.
///
/// The counters are absolute: publishing the same or an older snapshot never makes a counter go
/// backwards. Give each endpoint of a process its own labels (for example `endpoint="dns"`), or their
/// figures would overwrite each other.
#[derive(Debug, Clone, Default)]
pub struct EndpointMetrics {
    labels: Vec<Label>,
}

impl EndpointMetrics {
    /// Publishes without labels (one endpoint per process).
    pub fn new() -> Self {
        Self::default()
    }

    /// Publishes with these labels on every metric, e.g. `[("endpoint", "public")]`.
    pub fn with_labels<K, V>(labels: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<metrics::SharedString>,
        V: Into<metrics::SharedString>,
    {
        Self { labels: labels.into_iter().map(|(key, value)| Label::new(key, value)).collect() }
    }

    fn labels_with(&self, key: &'static str, value: &'static str) -> Vec<Label> {
        let mut labels = self.labels.clone();
        labels.push(Label::from_static_parts(key, value));
        labels
    }

    /// Sets every endpoint metric from `stats`.
    pub fn publish(&self, stats: &EndpointStats) {
        let labels = &self.labels;
        counter!(DATAGRAMS_RECEIVED, labels.iter()).absolute(stats.datagrams_received);
        counter!(RECEIVED_BYTES, labels.iter()).absolute(stats.bytes_received);
        counter!(DATAGRAMS_DELIVERED, labels.iter()).absolute(stats.datagrams_delivered);
        counter!(DATAGRAMS_FORWARDED, labels.iter()).absolute(stats.datagrams_forwarded);
        counter!(DATAGRAMS_SENT, labels.iter()).absolute(stats.datagrams_sent);
        counter!(SENT_BYTES, labels.iter()).absolute(stats.bytes_sent);
        counter!(SEND_ERRORS, labels.iter()).absolute(stats.send_errors);
        counter!(CONNECTIONS_ACCEPTED, labels.iter()).absolute(stats.connections_accepted);
        counter!(CONNECTIONS_OPENED, labels.iter()).absolute(stats.connections_opened);
        counter!(CONNECTIONS_CLOSED, labels.iter()).absolute(stats.connections_closed);
        counter!(HANDSHAKE_TIMEOUTS, labels.iter()).absolute(stats.handshake_timeouts);
        counter!(CONNECTIONS_SEND_FAILED, labels.iter()).absolute(stats.connections_send_failed);
        gauge!(CONNECTIONS_ACTIVE, labels.iter()).set(stats.active_connections as f64);
        // Every reason, zeros included: a series that appears only after the first drop is hard to alert on.
        for reason in DropReason::ALL {
            counter!(DATAGRAMS_DROPPED, self.labels_with("reason", reason.as_str())).absolute(stats.dropped(reason));
        }
        counter!(CONNECTIONS_REJECTED, self.labels_with("reason", "backlog_full"))
            .absolute(stats.connections_refused_backlog);
        for (reason, label) in REJECTIONS {
            counter!(CONNECTIONS_REJECTED, self.labels_with("reason", label)).absolute(stats.dropped(reason));
        }
    }
}

/// A connection's handshake completed after `duration`.
pub(crate) fn handshake_completed(duration: Duration) {
    histogram!(HANDSHAKE_DURATION).record(duration.as_secs_f64());
}

/// A connection closed with these final figures.
pub(crate) fn connection_closed(stats: &ConnectionStats) {
    histogram!(CONNECTION_RTT).record(stats.rtt.as_secs_f64());
    histogram!(CONNECTION_CWND).record(stats.cwnd_bytes as f64);
    counter!(PACKETS_LOST).increment(stats.packets_lost);
    counter!(PACKETS_RETRANSMITTED).increment(stats.packets_retransmitted);
}
