//! A local QUIC interop runner: the cases of the interop runner (github quic-interop/quic-interop-runner),
//! run without Docker or the ns-3 simulator.
//!
//! Endpoints are processes that follow the runner's endpoint contract ([`endpoints`]); between them sits a
//! UDP relay on loopback ([`relay`]) that applies the simulator's impairments from a seeded RNG and records
//! every datagram ([`record`]). Checks read that record, in cleartext ([`checks`], [`quic`]) or decrypted by
//! tshark from the pcaps the relay writes ([`pcap`], [`tshark`]) with the endpoints' key logs, so no
//! endpoint is trusted to report on itself. [`cases`] defines the cases, [`run`] runs a cell, [`report`]
//! prints the matrix.
//!
//! The crate deliberately depends on no other crate of this workspace, so it can test any stack.

#![deny(missing_docs)]

pub mod cases;
pub mod certs;
pub mod checks;
pub mod endpoints;
pub mod pcap;
pub mod quic;
pub mod record;
pub mod relay;
pub mod report;
pub mod run;
pub mod tshark;
