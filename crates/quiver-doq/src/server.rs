//! The DoQ forwarding server: runs a [`connection::ServerConnection`] on every connection the
//! endpoint accepts (through [`quiver::serve`], the one server lifecycle), and resolves queries
//! through the upstream resolver and the optional cache. The per-address connection cap is the
//! endpoint's ([`quiver::ServerConfigBuilder::max_connections_per_source`], preset by
//! [`server_config`](crate::server_config)).

mod connection;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use quiver::{Endpoint, ServeEnd};
use tokio::sync::Semaphore;

use crate::cache::{AnswerCache, CachedAnswer, Stored};
use crate::dns::{PADDING_BLOCK_BYTES, error_answer, for_upstream, pad, wants_padding};
use crate::error::DoqConfigError;
use crate::metrics::RcodeCounters;
use crate::stats::ServerStats;
use crate::upstream;
use quiver::SourceShares;

/// How long the server waits for the upstream resolver before answering SERVFAIL. Stub resolvers
/// commonly give up after about five seconds; answering before that lets them see the failure
/// instead of a silence.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);

/// Queries one connection may have open at once (its bidirectional stream limit). 100 is QUIC's
/// customary default and what common DoQ clients expect; more only lets one client hold more
/// upstream sockets.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: usize = 100;

/// Connections one client address may hold at once, the endpoint's per-source cap as
/// [`server_config`](crate::server_config) presets it. A stub resolver needs one; 32 leaves room for
/// several behind one NAT while stopping one address from filling the endpoint.
pub const DEFAULT_MAX_CONNECTIONS_PER_SOURCE: usize = 32;

/// How long a query may take to arrive whole (length prefix, message, FIN) once its stream started.
/// A query is one small message sent at once, so an honest client is done within a few round trips
/// even with loss; five seconds is when stub resolvers give up anyway. A stream still incomplete by
/// then only holds memory (up to 64 KiB of partial message): it is reset with DOQ_PROTOCOL_ERROR,
/// the code RFC 9250 §4.3.3 gives to a peer that "does not indicate the expected STREAM FIN".
pub const DEFAULT_QUERY_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle timeout for DoQ connections. RFC 9250 §5.5 asks servers not to close idle connections too
/// eagerly (clients reuse them) but to reclaim them; 30 s is the common resolver setting.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Upstream queries in flight at once, server-wide, each holding one UDP socket: half of the
/// common 1024 file-descriptor soft limit, leaving the rest for TCP retries and the process. Queries
/// past it wait for a slot, within their upstream timeout.
pub const DEFAULT_MAX_UPSTREAM_IN_FLIGHT: usize = 512;

/// Upstream queries one connection may have in flight; more wait for the connection's own to
/// finish. A stub resolver rarely has more than a handful of cache misses outstanding; 32 is 1/16
/// of [`DEFAULT_MAX_UPSTREAM_IN_FLIGHT`], so one connection cannot take the server's slots.
pub const DEFAULT_MAX_UPSTREAM_PER_CONNECTION: usize = 32;

/// Upstream queries one client address (IPv6: one /64) may have in flight over all its connections;
/// more are answered REFUSED. A quarter of [`DEFAULT_MAX_UPSTREAM_IN_FLIGHT`]: room for a busy
/// resolver or a NAT with several clients, while one host with many connections (up to
/// [`DEFAULT_MAX_CONNECTIONS_PER_SOURCE`]) still leaves three quarters of the slots to the others.
pub const DEFAULT_MAX_UPSTREAM_PER_SOURCE: usize = 128;

/// The answer cache's byte budget by default: none (no cache), so that what a client gets is the
/// upstream's answer byte for byte unless the operator opts in with
/// [`DoqServerBuilder::cache_bytes`].
pub const DEFAULT_CACHE_BYTES: usize = 0;

/// Builds a [`DoqServer`].
///
/// ```
/// use std::time::Duration;
/// let server = quiver_doq::DoqServer::builder("127.0.0.1:53".parse()?)
///     .upstream_timeout(Duration::from_secs(2))
///     .cache_bytes(16 * 1024 * 1024)
///     .build()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct DoqServerBuilder {
    upstream: SocketAddr,
    upstream_timeout: Duration,
    max_queries_per_connection: usize,
    max_upstream_in_flight: usize,
    max_upstream_per_connection: usize,
    max_upstream_per_source: usize,
    cache_bytes: usize,
    query_read_timeout: Duration,
    cache_clock_offset: Arc<AtomicU64>,
}

impl DoqServerBuilder {
    /// How long a query may take to arrive whole before its stream is reset with DOQ_PROTOCOL_ERROR
    /// (default [`DEFAULT_QUERY_READ_TIMEOUT`]).
    pub fn query_read_timeout(mut self, timeout: Duration) -> Self {
        self.query_read_timeout = timeout;
        self
    }

    /// Tests only: the cache's clock runs this many seconds ahead of the real one (so a test can
    /// see TTLs age without waiting).
    #[cfg(feature = "test-util")]
    #[doc(hidden)]
    pub fn cache_clock_offset_seconds(mut self, offset: Arc<AtomicU64>) -> Self {
        self.cache_clock_offset = offset;
        self
    }

    /// How long to wait for the upstream before answering SERVFAIL (default
    /// [`DEFAULT_UPSTREAM_TIMEOUT`]).
    pub fn upstream_timeout(mut self, timeout: Duration) -> Self {
        self.upstream_timeout = timeout;
        self
    }

    /// Queries served at once per connection (default [`DEFAULT_MAX_STREAMS_PER_CONNECTION`]; at
    /// least 1). Streams past it wait, unread, until a query finishes. Set the endpoint's stream
    /// limit to the same number (`quiver_doq::server_config().max_streams(n, 0)`) so clients see it.
    pub fn max_queries_per_connection(mut self, max: usize) -> Self {
        self.max_queries_per_connection = max;
        self
    }

    /// Upstream queries in flight at once, server-wide (each holds a UDP socket; at least 1; default
    /// [`DEFAULT_MAX_UPSTREAM_IN_FLIGHT`]).
    pub fn max_upstream_in_flight(mut self, max: usize) -> Self {
        self.max_upstream_in_flight = max;
        self
    }

    /// Upstream queries one connection may have in flight (at least 1; default
    /// [`DEFAULT_MAX_UPSTREAM_PER_CONNECTION`]). More wait for one of the connection's own to finish,
    /// within their upstream timeout, never for a server-wide slot. Cached answers do not count.
    pub fn max_upstream_per_connection(mut self, max: usize) -> Self {
        self.max_upstream_per_connection = max;
        self
    }

    /// Upstream queries one client address (IPv6: one /64) may have in flight over all its
    /// connections; more are answered REFUSED and counted in [`ServerStats::refused_over_share`] (at
    /// least 1; default [`DEFAULT_MAX_UPSTREAM_PER_SOURCE`]).
    pub fn max_upstream_per_source(mut self, max: usize) -> Self {
        self.max_upstream_per_source = max;
        self
    }

    /// Keeps positive answers for their TTL in at most this many bytes (queries, answers and about
    /// 200 bytes of bookkeeping per entry), evicting those closest to expiry first; an answer larger
    /// than 1/16 of the budget is served but not kept. 0 (the default, [`DEFAULT_CACHE_BYTES`]): no
    /// cache. Evictions and answers too large to keep are counted in [`ServerStats`].
    pub fn cache_bytes(mut self, budget: usize) -> Self {
        self.cache_bytes = budget;
        self
    }

    /// The server; run it with [`DoqServer::serve`].
    ///
    /// # Errors
    /// [`DoqConfigError`] for a limit of zero or a zero timeout: each would make the server answer
    /// nothing.
    pub fn build(self) -> Result<DoqServer, DoqConfigError> {
        if self.max_queries_per_connection == 0 {
            return Err(DoqConfigError::Zero("max_queries_per_connection"));
        }
        if self.max_upstream_in_flight == 0 {
            return Err(DoqConfigError::Zero("max_upstream_in_flight"));
        }
        if self.max_upstream_per_connection == 0 {
            return Err(DoqConfigError::Zero("max_upstream_per_connection"));
        }
        if self.max_upstream_per_source == 0 {
            return Err(DoqConfigError::Zero("max_upstream_per_source"));
        }
        if self.upstream_timeout.is_zero() {
            return Err(DoqConfigError::Zero("upstream_timeout"));
        }
        if self.query_read_timeout.is_zero() {
            return Err(DoqConfigError::Zero("query_read_timeout"));
        }
        Ok(DoqServer {
            shared: Arc::new(ServerShared {
                upstream: self.upstream,
                upstream_timeout: self.upstream_timeout,
                max_queries_per_connection: self.max_queries_per_connection,
                upstream_slots: Semaphore::new(self.max_upstream_in_flight),
                max_upstream_per_connection: self.max_upstream_per_connection,
                source_shares: SourceShares::new(self.max_upstream_per_source),
                cache: (self.cache_bytes > 0).then(|| Mutex::new(AnswerCache::new(self.cache_bytes))),
                cache_clock_offset: self.cache_clock_offset,
                query_read_timeout: self.query_read_timeout,
                counters: Counters::default(),
                rcodes: RcodeCounters::new(),
            }),
        })
    }
}

/// A DNS over QUIC forwarder (RFC 9250).
///
/// Every query arrives on its own stream with message ID 0; the server checks it, forwards it to the
/// upstream resolver with a random ID (UDP, then TCP if the answer is truncated), and answers with
/// the upstream's message, ID set back to 0. What the upstream sees is the client's query with its
/// EDNS padding removed and its advertised UDP size capped at 1232 bytes; what the client gets is
/// the upstream's answer byte for byte, unless the client padded (then the answer is padded) or the
/// answer comes from the cache (re-encoded, TTLs aged). What it answers itself:
///
/// * SERVFAIL when the upstream does not answer within the timeout or refuses (never silence);
/// * FORMERR for a message that does not parse, is a response, or has other than one question;
/// * NOTIMP for opcodes other than QUERY (a forwarder does not relay UPDATE or NOTIFY), and for
///   zone transfers (AXFR, IXFR): RFC 9250 §4.4 carries them over DoQ, but a forwarder that relays
///   them over UDP/TCP one message at a time cannot, and they belong to a primary, not a resolver.
///
/// Protocol violations close the connection with DOQ_PROTOCOL_ERROR (RFC 9250 §4.3.3): a non-zero
/// message ID, a length prefix that does not match the stream, a second message on a stream, the
/// edns-tcp-keepalive option. A client that cancels (STOP_SENDING or RESET_STREAM) stops its query.
///
/// Padding (RFC 9250 §5.4): when a query carries the EDNS(0) padding option, the answer is padded to
/// a multiple of [`PADDING_BLOCK_BYTES`] (RFC 8467's block policy for responses); answers to
/// unpadded queries are left as the upstream sent them.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = quiver_doq::server_config().certificate_pem_files("cert.pem", "key.pem").build()?;
/// let endpoint = quiver::Endpoint::server("[::]:853".parse()?, config)?;
/// quiver_doq::DoqServer::builder("127.0.0.1:53".parse()?).build()?.serve(endpoint).await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DoqServer {
    shared: Arc<ServerShared>,
}

impl std::fmt::Debug for DoqServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DoqServer").field("upstream", &self.shared.upstream).finish_non_exhaustive()
    }
}

impl DoqServer {
    /// Starts building a server that forwards to the resolver at `upstream`.
    pub fn builder(upstream: SocketAddr) -> DoqServerBuilder {
        DoqServerBuilder {
            upstream,
            upstream_timeout: DEFAULT_UPSTREAM_TIMEOUT,
            max_queries_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            max_upstream_in_flight: DEFAULT_MAX_UPSTREAM_IN_FLIGHT,
            max_upstream_per_connection: DEFAULT_MAX_UPSTREAM_PER_CONNECTION,
            max_upstream_per_source: DEFAULT_MAX_UPSTREAM_PER_SOURCE,
            cache_bytes: DEFAULT_CACHE_BYTES,
            query_read_timeout: DEFAULT_QUERY_READ_TIMEOUT,
            cache_clock_offset: Arc::default(),
        }
    }

    /// Serves every connection `endpoint` accepts until the endpoint is closed. Build the endpoint
    /// with [`server_config`](crate::server_config) so it speaks ALPN `doq` and caps connections per
    /// client address.
    ///
    /// # Cancel safety
    /// Dropping the future stops accepting; connections already running go on until they close.
    pub async fn serve(&self, endpoint: Endpoint) {
        self.serve_until(endpoint, std::future::pending(), Duration::ZERO).await;
    }

    /// A drain deadline for [`serve_until`](Self::serve_until) long enough for every query in flight
    /// to get its answer or SERVFAIL: the upstream timeout, plus a second to send it.
    pub fn drain_deadline(&self) -> Duration {
        self.shared.upstream_timeout + Duration::from_secs(1)
    }

    /// As [`serve`](Self::serve) until `shutdown` resolves; then shuts down gracefully through
    /// [`quiver::serve`]: new connections are refused, and every connection takes no new queries,
    /// answers those in flight and closes with DOQ_NO_ERROR; whatever is still open after `drain` is
    /// closed. Returns how it ended ([`ServeEnd::Drained`] when every query in flight was answered in
    /// time).
    ///
    /// # Cancel safety
    /// As [`quiver::serve`]: dropping the future while accepting stops accepting and leaves the
    /// endpoint open; dropping it during the drain leaves the connections draining but nothing
    /// closes what is left at the deadline.
    pub async fn serve_until(
        &self,
        endpoint: Endpoint,
        shutdown: impl Future<Output = ()>,
        drain: Duration,
    ) -> ServeEnd {
        let start_doq = |incoming: quiver::IncomingConnection| {
            count(&self.shared.counters.connections_accepted);
            let source = incoming.peer_addr().ip();
            incoming.start(connection::ServerConnection::new(self.shared.clone(), source));
        };
        quiver::serve(&endpoint, start_doq, shutdown, drain).await
    }

    /// A snapshot of the server's counters.
    pub fn stats(&self) -> ServerStats {
        self.shared.counters.snapshot()
    }
}

#[derive(Default)]
struct Counters {
    connections_accepted: AtomicU64,
    queries: AtomicU64,
    answered_upstream: AtomicU64,
    answered_from_cache: AtomicU64,
    truncated_retried_over_tcp: AtomicU64,
    servfail_timeout: AtomicU64,
    servfail_upstream_error: AtomicU64,
    format_errors: AtomicU64,
    not_implemented: AtomicU64,
    cancelled: AtomicU64,
    protocol_errors: AtomicU64,
    padded_answers: AtomicU64,
    upstream_datagrams_ignored: AtomicU64,
    read_timeouts: AtomicU64,
    internal_errors: AtomicU64,
    refused_over_share: AtomicU64,
    cache_evictions: AtomicU64,
    cache_too_large: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ServerStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        ServerStats {
            connections_accepted: get(&self.connections_accepted),
            queries: get(&self.queries),
            answered_upstream: get(&self.answered_upstream),
            answered_from_cache: get(&self.answered_from_cache),
            truncated_retried_over_tcp: get(&self.truncated_retried_over_tcp),
            servfail_timeout: get(&self.servfail_timeout),
            servfail_upstream_error: get(&self.servfail_upstream_error),
            format_errors: get(&self.format_errors),
            not_implemented: get(&self.not_implemented),
            cancelled: get(&self.cancelled),
            protocol_errors: get(&self.protocol_errors),
            padded_answers: get(&self.padded_answers),
            upstream_datagrams_ignored: get(&self.upstream_datagrams_ignored),
            read_timeouts: get(&self.read_timeouts),
            internal_errors: get(&self.internal_errors),
            refused_over_share: get(&self.refused_over_share),
            cache_evictions: get(&self.cache_evictions),
            cache_too_large: get(&self.cache_too_large),
        }
    }
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What every connection of one server shares.
pub(crate) struct ServerShared {
    upstream: SocketAddr,
    upstream_timeout: Duration,
    max_queries_per_connection: usize,
    upstream_slots: Semaphore,
    pub(crate) max_upstream_per_connection: usize,
    source_shares: Arc<SourceShares>,
    cache: Option<Mutex<AnswerCache>>,
    cache_clock_offset: Arc<AtomicU64>,
    pub(crate) query_read_timeout: Duration,
    counters: Counters,
    pub(crate) rcodes: RcodeCounters,
}

impl ServerShared {
    /// The answer to a well-formed QUERY: from the cache, from the upstream, REFUSED when the
    /// client's address is over its share of the upstream slots (`source`), or SERVFAIL; padded
    /// when the query was. Queries past their connection's share (`connection_share`) wait for it,
    /// within the upstream timeout. The upstream gets
    /// [`for_upstream`]'s form of the query, which is also the cache key (padding does not change
    /// the question).
    async fn resolve(
        &self,
        bytes: Vec<u8>,
        query: Message,
        connection_share: &Arc<Semaphore>,
        source: IpAddr,
    ) -> Vec<u8> {
        let counters = &self.counters;
        let padded = wants_padding(&query);
        let upstream_query = for_upstream(&query, bytes);
        let now = self.cache_now();
        // Only the map lookup holds the lock; encoding the aged answer happens outside it.
        let cached = self.cache.as_ref().and_then(|cache| lock(cache).get(&upstream_query, now));
        let answer = match cached.and_then(|cached| cached.render(now)) {
            Some(answer) => {
                count(&counters.answered_from_cache);
                answer
            }
            None => {
                // A query waits for its connection's share (the connection's own queue, bounded by its
                // stream limit), then takes its source's share or is REFUSED, and only then waits for a
                // server-wide slot: what a client queues past its shares never holds a slot others need.
                let connection_slot =
                    match tokio::time::timeout(self.upstream_timeout, connection_share.acquire()).await {
                        Ok(Ok(slot)) => slot,
                        _ => {
                            count(&counters.servfail_timeout);
                            return self.pad_if(error_answer(&query, ResponseCode::ServFail), padded);
                        }
                    };
                let Some(source_share) = self.source_shares.try_take(source) else {
                    count(&counters.refused_over_share);
                    tracing::debug!(%source, "client address over its share of upstream queries; answering REFUSED");
                    return self.pad_if(error_answer(&query, ResponseCode::Refused), padded);
                };
                let _shares = (connection_slot, source_share);
                let exchange = async {
                    let _slot = self.upstream_slots.acquire().await;
                    upstream::exchange(self.upstream, &upstream_query, &counters.upstream_datagrams_ignored).await
                };
                match tokio::time::timeout(self.upstream_timeout, exchange).await {
                    Ok(Ok(answer)) => {
                        count(&counters.answered_upstream);
                        if answer.via_tcp {
                            count(&counters.truncated_retried_over_tcp);
                        }
                        if let Some(cache) = &self.cache
                            && let Some(parsed) = CachedAnswer::parse(&answer.message, self.cache_now())
                        {
                            let stored = lock(cache).insert(&upstream_query, parsed);
                            match stored {
                                Stored::Kept { evicted } => {
                                    counters.cache_evictions.fetch_add(evicted as u64, Ordering::Relaxed);
                                }
                                Stored::TooLarge => count(&counters.cache_too_large),
                            }
                        }
                        answer.message
                    }
                    Ok(Err(err)) => {
                        tracing::debug!(error = %err, "upstream failed; answering SERVFAIL");
                        count(&counters.servfail_upstream_error);
                        error_answer(&query, ResponseCode::ServFail)
                    }
                    Err(_) => {
                        tracing::debug!(upstream = %self.upstream, "upstream timed out; answering SERVFAIL");
                        count(&counters.servfail_timeout);
                        error_answer(&query, ResponseCode::ServFail)
                    }
                }
            }
        };
        self.pad_if(answer, padded)
    }

    /// The cache's clock: now, plus the test offset (0 outside tests).
    fn cache_now(&self) -> Instant {
        Instant::now() + Duration::from_secs(self.cache_clock_offset.load(Ordering::Relaxed))
    }

    fn pad_if(&self, answer: Vec<u8>, padded: bool) -> Vec<u8> {
        if !padded {
            return answer;
        }
        match pad(&answer, PADDING_BLOCK_BYTES) {
            Some(padded) => {
                count(&self.counters.padded_answers);
                padded
            }
            None => answer,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
