//! Helpers that Quiver's tests share, in one place instead of a copy per test file.
//!
//! Dev-only (`publish = false`): every crate of the workspace lists it under `[dev-dependencies]`.
//! It depends on no Quiver crate, so a crate's unit tests may use it too, and everything here is
//! about the test's surroundings, never about a protocol:
//!
//! - [`guard`]: the one timeout that bounds every wait ([`GUARD`], [`guarded`], [`wait_until`]) and
//!   test logging ([`init_tracing`]);
//! - [`relay`]: UDP relays on loopback that impair traffic ([`relay::lossy`]), change the path
//!   mid-connection ([`relay::path_change`]) or hold one direction ([`relay::gated`]);
//! - [`process`]: a child process killed on drop whose output lines a test can wait for (the
//!   harness of the `quiver` binary's tests);
//! - [`netns`]: running one test again inside a network namespace of its own;
//! - [`tool`]: what a test needs from outside the repository (Chromium, tshark, aioquic, ...), and
//!   the one decision of what a missing one means: a failure under `CI=true`, a skip notice otherwise;
//! - [`handshake_staller`]: a quiche client that starts handshakes and never finishes them (it
//!   discards every packet of the server), the attack on a server's handshake slots;
//! - [`udp`]: a UDP responder or echo server on loopback, on a thread of its own;
//! - `attacker` (feature `attacker`): a hostile HTTP/3 client on quiche for the adversarial tests
//!   and `bench/attack.sh` (partial and slow handshakes, stream exhaustion, header bombs, tiny DATA
//!   frames, unread responses, idle connections);
//! - `quinn_client` (feature `quinn`): a quinn endpoint that trusts one certificate, the
//!   independent peer of the interop tests.

#![deny(missing_docs)]

#[cfg(feature = "attacker")]
pub mod attacker;
pub mod guard;
pub mod handshake_staller;
pub mod netns;
pub mod process;
#[cfg(feature = "quinn")]
mod quinn_peer;
pub mod relay;
pub mod tool;
pub mod udp;

pub use guard::{GUARD, guarded, guarded_for, init_tracing, wait_until, wait_until_async};
#[cfg(feature = "quinn")]
pub use quinn_peer::quinn_client;
pub use tool::{Tool, require};
