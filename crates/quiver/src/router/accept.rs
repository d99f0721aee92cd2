//! The server side of a router: a client's Initial becomes a connection task, after admission.
//!
//! Everything before `quiche::accept` is cheap and stateless: a spoofed flood costs a header parse,
//! an HMAC and at most one small Retry packet per datagram. The first packet is then processed here,
//! before any task exists: an Initial that does not decrypt costs one failed AEAD open and no
//! allocation beyond the discarded connection state.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use tokio::sync::mpsc;
use tracing::Instrument;

use super::Router;
use super::admission::{self, Admission, InitialFacts, InitialHeader, Load, Policy, Token, Unknown};
use crate::config::ServerConfig;
use crate::connection::{self, ConnectionCore, CoreParts, IncomingConnection};
use crate::route::Route;
use crate::stats::DropReason;
use crate::token::{RetryTokens, TokenError, ValidatedToken};

/// The server half of a router: how to accept.
pub(crate) struct ServerRole {
    pub(crate) quiche_config: quiche::Config,
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) policy: Policy,
    pub(crate) accept_queue: mpsc::Sender<IncomingConnection>,
    pub(crate) retry_tokens: RetryTokens,
}

impl ServerRole {
    pub(crate) fn new(
        config: Arc<ServerConfig>,
        accept_queue: mpsc::Sender<IncomingConnection>,
    ) -> Result<Self, crate::error::ConfigError> {
        Ok(Self {
            quiche_config: config.quiche_config()?,
            retry_tokens: RetryTokens::new(config.secret.clone()),
            policy: Policy::of(&config),
            config,
            accept_queue,
        })
    }
}

impl Router {
    /// Admits (or not) a client's first Initial and starts its connection.
    pub(super) fn on_initial(&mut self, data: &mut [u8], from: SocketAddr, to: SocketAddr) {
        let shared = self.shared.clone();
        let counters = &shared.counters;
        let header = (data.len() >= admission::MIN_INITIAL_DATAGRAM_BYTES)
            .then(|| quiche::Header::from_slice(data, crate::cid::LOCAL_CID_LEN).ok())
            .flatten();
        let mut validated = None;
        let facts = InitialFacts {
            header: header.as_ref().map(|header| InitialHeader {
                dcid_bytes: header.dcid.len(),
                // We only ever issue Retry tokens (quiche sends no NEW_TOKEN). See `token` for which
                // tokens count as ours; any other is handled as no token (RFC 9000 §8.1.3).
                token: match (header.token.as_deref().filter(|token| !token.is_empty()), self.server.as_ref()) {
                    (None, _) | (_, None) => Token::Absent,
                    (Some(token), Some(server)) => {
                        match server.retry_tokens.validate(token, from, &header.dcid, SystemTime::now()) {
                            Ok(token) => {
                                validated = Some(token);
                                Token::Valid
                            }
                            Err(TokenError::Foreign) => {
                                tracing::trace!(%from, "Initial with a token not of ours; handled as none");
                                Token::Absent
                            }
                            Err(err) => {
                                tracing::debug!(%from, ?err, "Initial with an invalid Retry token");
                                Token::Invalid
                            }
                        }
                    }
                },
            }),
        };
        let load = || Load {
            draining: shared.is_draining(),
            handshakes_in_flight: counters.handshakes_in_flight.load(Ordering::Relaxed) as usize,
            active_connections: counters.active_connections.load(Ordering::Relaxed),
            source_rate_ok: shared.source_rates.as_ref().is_none_or(|rates| rates.allow(from.ip(), Instant::now())),
            source_handshakes_full: shared.source_handshakes.as_ref().is_some_and(|sources| sources.is_full(from.ip())),
        };
        let policy = self.server.as_ref().map(|server| server.policy);
        match admission::admit(Unknown::Initial(facts), data.len(), policy.as_ref(), load) {
            Admission::Accept => {}
            Admission::Retry => {
                if let Some(header) = &header {
                    self.send_retry(header, from);
                }
                return;
            }
            Admission::Refuse(reason) => return self.refuse(data, from, to, reason),
            Admission::Drop(reason) => return counters.drop(reason),
            Admission::VersionNegotiation | Admission::StatelessReset => return,
        }
        // Admission dropped every Initial whose header did not parse.
        let Some(header) = header else { return };
        // The admission checks that reserve: a connection slot and a handshake slot for this source,
        // given back when the connection (the handshake) ends, or below if it never starts. Admission
        // saw room for the handshake, but another router of the endpoint may have taken it since.
        if shared.source_connections.as_ref().is_some_and(|sources| !sources.try_add(from.ip())) {
            return self.refuse(data, from, to, DropReason::SourceConnectionLimit);
        }
        if shared.source_handshakes.as_ref().is_some_and(|sources| !sources.try_add(from.ip())) {
            shared.forget_connection(from.ip());
            return self.refuse(data, from, to, DropReason::SourceHandshakeLimit);
        }
        let dcid = header.dcid.clone().into_owned();
        self.start_connection(data, from, to, dcid, validated);
    }

    /// Creates the connection for an admitted Initial, feeds it the Initial and spawns its task.
    fn start_connection(
        &mut self,
        data: &mut [u8],
        from: SocketAddr,
        to: SocketAddr,
        dcid: quiche::ConnectionId<'static>,
        validated: Option<ValidatedToken>,
    ) {
        let shared = self.shared.clone();
        let counters = &shared.counters;
        // The connection gives the source's slots back when it ends; until it exists, this does.
        let forget_source = || {
            shared.forget_connection(from.ip());
            shared.forget_handshake(from.ip());
        };
        // After a Retry the client addresses us by the ID our Retry gave it; keep it as our ID.
        let (scid, client_dcid, odcid) = match validated {
            Some(validated) => (dcid, None, Some(validated.original_dcid)),
            None => (self.handle.cids.generate(), Some(dcid.to_vec()), None),
        };
        let Some(server) = self.server.as_mut() else { return forget_source() };
        let reset_token = server.config.stateless_reset.then(|| self.handle.cids.reset_token(&scid));
        server.quiche_config.set_stateless_reset_token(reset_token);
        let odcid_ref = odcid.as_ref().map(|odcid| quiche::ConnectionId::from_ref(odcid));
        let mut conn = match quiche::accept(&scid, odcid_ref.as_ref(), to, from, &mut server.quiche_config) {
            Ok(conn) => conn,
            Err(err) => {
                tracing::debug!(error = %err, %from, "quiche refused an Initial");
                forget_source();
                counters.drop(DropReason::AcceptFailed);
                return;
            }
        };
        if let Some(keylog) = &server.config.keylog {
            conn.set_keylog(keylog.writer());
        }
        let qlog = server.config.transport.qlog_dir.as_ref().map(|dir| crate::qlog::attach(&mut conn, dir));
        let processed = conn.recv(data, quiche::RecvInfo { from, to });
        if processed.is_err() || conn.stats().recv == 0 {
            forget_source();
            counters.drop(DropReason::InvalidInitial);
            return;
        }
        counters.datagrams_delivered.fetch_add(1, Ordering::Relaxed);
        if let Some(qlog) = qlog {
            qlog.open();
        }

        let accept_queue = server.accept_queue.clone();
        let handshake_timeout = server.config.handshake_timeout;
        let (route, inbound_rx) = Route::new(server.config.transport.connection_queue_datagrams);
        self.map(&scid, route.clone());
        if let Some(client_dcid) = &client_dcid {
            self.map(client_dcid, route.clone());
        }
        let core = ConnectionCore::new(CoreParts {
            conn: Box::new(conn),
            inbound: inbound_rx,
            route: &route,
            router: self.handle.clone(),
            shared: self.shared.clone(),
            odcid: client_dcid,
            handshake_timeout: Some(handshake_timeout),
            source: Some(from.ip()),
            session_store: None,
        });
        let span = tracing::info_span!("conn", scid = %core.trace_id(), peer = %from, alpn = tracing::field::Empty);
        tokio::spawn(connection::run_server(core, accept_queue).instrument(span));
    }
}
