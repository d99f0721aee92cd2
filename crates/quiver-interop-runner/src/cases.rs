//! The test cases: files, scenario (relay impairments), the TESTCASE each role is given, and checks.
//!
//! Sizes and scenarios follow the interop runner's `testcases_quic.py`; `--quick` shrinks the long ones
//! (each such case says so in [`Case::size_note`], which the report prints).

use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;

use crate::relay::{Blackhole, Impairments, RateBurst, RebindPlan};

const KB: usize = 1000;
const MB: usize = 1000 * KB;

/// Every case, in the order reports list them.
pub const ALL_CASES: &[&str] = &[
    "handshake",
    "transfer",
    "multiplexing",
    "longrtt",
    "chacha20",
    "retry",
    "resumption",
    "zerortt",
    "http3",
    "keyupdate",
    "handshakeloss",
    "transferloss",
    "handshakecorruption",
    "transfercorruption",
    "blackhole",
    "amplificationlimit",
    "ipv6",
    "rebind-port",
    "rebind-addr",
    "connectionmigration",
];

/// A property to check after the files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Exactly this many handshakes (server Initial SCIDs).
    Handshakes(usize),
    /// A Retry was sent and its token used.
    Retry,
    /// Second handshake without a Certificate (needs tshark).
    Resumption,
    /// 0-RTT sent, little 1-RTT from the client.
    ZeroRtt {
        /// Most client 1-RTT payload bytes allowed.
        max_one_rtt_bytes: usize,
    },
    /// Both sides used key phase 1 (needs tshark).
    KeyUpdate,
    /// Only ChaCha20 offered and chosen (needs tshark).
    ChaCha20,
    /// Server stream limit at most 1000 (needs tshark).
    StreamLimit,
    /// Server stayed within 3x before validation, and sent the large chain.
    Amplification,
    /// Server saw several paths (`addresses`: several IPs), each validated (PATH_CHALLENGE needs tshark).
    ServerPaths {
        /// Also require several client IP addresses.
        addresses: bool,
    },
    /// The client itself sent from several addresses.
    ClientMigrated,
}

/// A file the server serves and the client must download byte-exact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSpec {
    /// File name (also the URL path).
    pub name: String,
    /// Size in bytes.
    pub size: usize,
}

/// One fully specified case.
#[derive(Clone, Debug)]
pub struct Case {
    /// Case name.
    pub name: &'static str,
    /// TESTCASE given to the server.
    pub server_testcase: &'static str,
    /// TESTCASE given to the client.
    pub client_testcase: &'static str,
    /// Run over [::1] instead of 127.0.0.1.
    pub ipv6: bool,
    /// Certificates in the chain (the leaf included).
    pub cert_chain: usize,
    /// Files to serve.
    pub files: Vec<FileSpec>,
    /// Set when `--quick` made the case smaller than the runner's.
    pub size_note: Option<String>,
    /// The relay's impairments.
    pub impairments: Impairments,
    /// Time the client gets.
    pub timeout: Duration,
    /// Properties checked after the files.
    pub checks: Vec<Check>,
}

fn slug(rng: &mut StdRng, len: usize) -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
    (0..len).map(|_| LETTERS[rng.random_range(0..LETTERS.len())] as char).collect()
}

fn files(rng: &mut StdRng, sizes: &[usize]) -> Vec<FileSpec> {
    sizes.iter().map(|size| FileSpec { name: slug(rng, 12), size: *size }).collect()
}

fn loss(rate: u32, corrupt: bool) -> Impairments {
    let rule = RateBurst { percent: rate, max_burst: Some(3) };
    let mut impairments = Impairments::simple_p2p();
    if corrupt {
        impairments.corrupt_to_server = rule;
        impairments.corrupt_to_client = rule;
    } else {
        impairments.drop_to_server = rule;
        impairments.drop_to_client = rule;
    }
    impairments
}

/// The case named `name`, or `None` if there is no such case. File names come from `rng`.
pub fn case(name: &str, quick: bool, rng: &mut StdRng) -> Option<Case> {
    let name: &'static str = ALL_CASES.iter().find(|c| **c == name)?;
    let mut case = Case {
        name,
        server_testcase: name,
        client_testcase: name,
        ipv6: false,
        cert_chain: 1,
        files: files(rng, &[KB]),
        size_note: None,
        impairments: Impairments::simple_p2p(),
        timeout: Duration::from_secs(60),
        checks: vec![Check::Handshakes(1)],
    };
    let shrink = |full: &[usize], small: &[usize], rng: &mut StdRng| -> (Vec<FileSpec>, Option<String>) {
        let pick = if quick { small } else { full };
        let note = quick.then(|| format!("quick: files {small:?} B instead of {full:?} B"));
        (files(rng, pick), note)
    };
    match name {
        "handshake" => {}
        "transfer" => {
            (case.files, case.size_note) = shrink(&[2 * MB, 3 * MB, 5 * MB], &[200 * KB, 300 * KB, 500 * KB], rng);
        }
        "multiplexing" => {
            case.server_testcase = "transfer";
            case.client_testcase = "transfer";
            let count = if quick { 200 } else { 1999 };
            case.files = files(rng, &vec![32; count]);
            case.size_note = quick.then(|| "quick: 200 files of 32 B instead of 1999".to_string());
            case.checks.push(Check::StreamLimit);
        }
        "longrtt" => {
            case.server_testcase = "handshake";
            case.client_testcase = "handshake";
            case.impairments.delay = Duration::from_millis(750);
        }
        "chacha20" => {
            (case.files, case.size_note) = shrink(&[3 * MB], &[300 * KB], rng);
            case.checks.push(Check::ChaCha20);
        }
        "retry" => {
            case.files = files(rng, &[10 * KB]);
            case.checks.push(Check::Retry);
        }
        "resumption" => {
            case.files = files(rng, &[5 * KB, 10 * KB]);
            case.checks = vec![Check::Handshakes(2), Check::Resumption];
        }
        "zerortt" => {
            // 40 files of 32 B with 250-character names: requests that went in 1-RTT would show.
            const NAME_LEN: usize = 250;
            const COUNT: usize = 40;
            case.files = (0..COUNT).map(|_| FileSpec { name: slug(rng, NAME_LEN), size: 32 }).collect();
            case.checks = vec![Check::Handshakes(2), Check::ZeroRtt { max_one_rtt_bytes: NAME_LEN * COUNT / 2 }];
        }
        "http3" => case.files = files(rng, &[5 * KB, 10 * KB, 500 * KB]),
        "keyupdate" => {
            // Local extension: the server is also asked to update its keys (the runner sends it "transfer").
            (case.files, case.size_note) = shrink(&[3 * MB], &[MB], rng);
            case.checks.push(Check::KeyUpdate);
        }
        "handshakeloss" | "handshakecorruption" => {
            case.server_testcase = "multiconnect";
            case.client_testcase = "multiconnect";
            let count = if quick { 10 } else { 50 };
            case.files = files(rng, &vec![KB; count]);
            case.size_note = quick.then(|| "quick: 10 connections instead of 50".to_string());
            case.impairments = loss(30, name == "handshakecorruption");
            case.timeout = Duration::from_secs(if quick { 120 } else { 300 });
            case.checks = vec![Check::Handshakes(count)];
        }
        "transferloss" | "transfercorruption" => {
            case.server_testcase = "transfer";
            case.client_testcase = "transfer";
            (case.files, case.size_note) = shrink(&[2 * MB], &[500 * KB], rng);
            case.impairments = loss(2, name == "transfercorruption");
        }
        "blackhole" => {
            case.server_testcase = "transfer";
            case.client_testcase = "transfer";
            let (on, off) = if quick { (1, 2) } else { (5, 2) };
            (case.files, case.size_note) = shrink(&[10 * MB], &[3 * MB], rng);
            if quick {
                case.size_note = Some("quick: 3 MB instead of 10 MB, on=1s instead of 5s".into());
            }
            case.impairments.blackhole =
                Some(Blackhole { on: Duration::from_secs(on), off: Duration::from_secs(off), repeat: 1 });
        }
        "amplificationlimit" => {
            case.server_testcase = "transfer";
            case.client_testcase = "transfer";
            case.cert_chain = 9;
            case.files = files(rng, &[5 * KB]);
            case.impairments.droplist_to_server = [2, 3, 4, 5, 6, 7].into_iter().collect();
            case.checks.push(Check::Amplification);
        }
        "ipv6" => {
            case.server_testcase = "transfer";
            case.client_testcase = "transfer";
            case.ipv6 = true;
            case.files = files(rng, &[5 * KB, 10 * KB]);
        }
        "rebind-port" | "rebind-addr" => {
            case.server_testcase = "transfer";
            case.client_testcase = "transfer";
            (case.files, case.size_note) = shrink(&[10 * MB], &[3 * MB], rng);
            let (first, every) = if quick { (500, 1000) } else { (1000, 5000) };
            if quick {
                case.size_note = Some("quick: 3 MB instead of 10 MB, rebinds at 0.5s then every 1s".into());
            }
            let addresses = name == "rebind-addr";
            case.impairments.rebind = Some(RebindPlan {
                first: Duration::from_millis(first),
                every: Some(Duration::from_millis(every)),
                new_address: addresses,
            });
            case.checks.push(Check::ServerPaths { addresses });
        }
        "connectionmigration" => {
            // Local extension: no stack here offers a preferred address, so the client migrates actively
            // and the server just transfers.
            case.server_testcase = "transfer";
            case.client_testcase = "connectionmigration";
            case.files = files(rng, &[2 * MB]);
            case.checks.extend([Check::ClientMigrated, Check::ServerPaths { addresses: false }]);
        }
        _ => return None,
    }
    Some(case)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn every_case_is_defined_with_the_runner_mapping() {
        let mut rng = StdRng::seed_from_u64(1);
        for name in ALL_CASES {
            let full = case(name, false, &mut rng).unwrap();
            assert!(full.size_note.is_none(), "{name}");
            assert!(!full.files.is_empty());
        }
        let get = |name| case(name, false, &mut StdRng::seed_from_u64(1)).unwrap();
        assert_eq!(get("longrtt").client_testcase, "handshake");
        assert_eq!(get("blackhole").server_testcase, "transfer");
        assert_eq!(get("handshakeloss").files.len(), 50);
        assert_eq!(get("keyupdate").server_testcase, "keyupdate");
        assert_eq!(get("connectionmigration").client_testcase, "connectionmigration");
        assert_eq!(get("connectionmigration").server_testcase, "transfer");
        assert_eq!(get("amplificationlimit").cert_chain, 9);
        assert!(get("ipv6").ipv6);
        assert_eq!(get("zerortt").files[0].name.len(), 250);
        assert!(case("nope", false, &mut StdRng::seed_from_u64(1)).is_none());
        let quick = case("handshakeloss", true, &mut StdRng::seed_from_u64(1)).unwrap();
        assert_eq!(quick.files.len(), 10);
        assert!(quick.size_note.is_some());
    }
}
