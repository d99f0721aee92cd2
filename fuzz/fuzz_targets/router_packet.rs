//! The router's packet path: every datagram a router reads goes through `classify`, a routing-table
//! lookup, and for an Initial of no known connection `quiche::accept` + `recv`, or Version Negotiation
//! for an unknown version. Here the same calls run on arbitrary bytes, with the router's real server
//! `quiche::Config`, and `classify` is checked against quiche's own header parser.

#![no_main]

use std::cell::RefCell;
use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use quiver::internals::{CidTable, MIN_INITIAL_DCID_LEN, PacketKind, classify, long_header_scid, router_index};
use quiver::{LOCAL_CID_LEN, quiche};

/// RFC 9000 §17.2: the longest connection ID QUIC v1 allows.
const MAX_V1_CID_LEN: usize = 20;

thread_local! {
    /// Built once: a server config with a self-signed identity, exactly as `Endpoint::server` makes it.
    static SERVER_CONFIG: RefCell<quiche::Config> = RefCell::new(server_config());
}

fn server_config() -> quiche::Config {
    let config = quiver::ServerConfig::builder()
        .alpn([b"h3".as_slice()])
        .self_signed(["localhost"])
        .build()
        .expect("a self-signed server config always builds");
    quiver::internals::server_quiche_config(&config).expect("the router's quiche config always builds")
}

fuzz_target!(|data: &[u8]| {
    let kind = classify(data);
    check_classification(data, kind.as_ref());
    check_against_quiche(data, kind.as_ref());
    route_through_table(data, kind.as_ref());
    let Some(PacketKind::Long { version, dcid, is_initial }) = kind else { return };
    if !quiche::version_is_supported(version) {
        // The router answers with a 256-byte buffer; quiche must refuse, not overrun, huge CIDs.
        if let Some(scid) = long_header_scid(data) {
            let mut out = [0u8; 256];
            let _ = quiche::negotiate_version(
                &quiche::ConnectionId::from_ref(scid),
                &quiche::ConnectionId::from_ref(dcid),
                &mut out,
            );
        }
    } else if is_initial && dcid.len() >= MIN_INITIAL_DCID_LEN {
        accept(data);
    }
});

/// `classify` reads only what the wire says, at the offsets RFC 8999 fixes.
fn check_classification(data: &[u8], kind: Option<&PacketKind<'_>>) {
    match kind {
        None => {}
        Some(PacketKind::Short { dcid }) => {
            assert_eq!(data[0] & 0x80, 0, "short header needs the long-header bit clear");
            assert_eq!(*dcid, &data[1..1 + LOCAL_CID_LEN]);
            assert_eq!(router_index(dcid), Some(usize::from(dcid[0])));
        }
        Some(PacketKind::Long { version, dcid, is_initial }) => {
            assert_ne!(data[0] & 0x80, 0);
            assert_eq!(*version, u32::from_be_bytes([data[1], data[2], data[3], data[4]]));
            assert_eq!(dcid.len(), usize::from(data[5]));
            assert_eq!(*dcid, &data[6..6 + dcid.len()]);
            assert_eq!(*is_initial, data[0] & 0x30 == 0);
            if quiche::version_is_supported(*version) {
                assert!(dcid.len() <= MAX_V1_CID_LEN, "a v1 DCID over 20 bytes was classified");
            }
            if let Some(scid) = long_header_scid(data) {
                let at = 7 + dcid.len();
                assert_eq!(scid.len(), usize::from(data[at - 1]));
                assert_eq!(scid, &data[at..at + scid.len()]);
            }
        }
    }
}

/// Where quiche's parser (which `quiche::accept` and every connection use) finds a v1 or short header,
/// the router must find the same destination connection ID, or it would route the packet elsewhere.
fn check_against_quiche(data: &[u8], kind: Option<&PacketKind<'_>>) {
    let mut copy = data.to_vec();
    let Ok(header) = quiche::Header::from_slice(&mut copy, LOCAL_CID_LEN) else { return };
    if header.ty == quiche::Type::VersionNegotiation {
        return;
    }
    match kind {
        Some(PacketKind::Short { dcid }) => {
            assert_eq!(header.ty, quiche::Type::Short);
            assert_eq!(&header.dcid[..], *dcid);
        }
        Some(PacketKind::Long { version, dcid, .. }) => {
            assert_ne!(header.ty, quiche::Type::Short);
            assert_eq!(header.version, *version);
            assert_eq!(&header.dcid[..], *dcid);
            if let Some(scid) = long_header_scid(data) {
                assert_eq!(&header.scid[..], scid);
            }
        }
        None => panic!("quiche parsed a {:?} header that the router drops as unparseable", header.ty),
    }
}

/// Insert, look up and remove the classified DCID in a routing table, as the router and its
/// connections do; IDs over 20 bytes are never routable.
fn route_through_table(data: &[u8], kind: Option<&PacketKind<'_>>) {
    let dcid = match kind {
        Some(PacketKind::Short { dcid } | PacketKind::Long { dcid, .. }) => *dcid,
        None => data.get(..data.len().min(24)).unwrap_or_default(),
    };
    let mut table = CidTable::default();
    table.insert(dcid, data.len());
    let routable = dcid.len() <= MAX_V1_CID_LEN;
    assert_eq!(table.get(dcid), routable.then_some(&data.len()));
    assert_eq!(table.len(), usize::from(routable));
    if let Some(shorter) = dcid.len().checked_sub(1) {
        assert_eq!(table.get(&dcid[..shorter]), None, "a prefix of a mapped ID must not route");
    }
    assert_eq!(table.remove(dcid), routable.then_some(data.len()));
    assert!(table.is_empty());
}

/// The router's accept path: `quiche::accept` with a fresh server CID, then the first datagram.
fn accept(data: &[u8]) {
    let local: SocketAddr = "127.0.0.1:4433".parse().expect("literal address");
    let peer: SocketAddr = "127.0.0.1:50000".parse().expect("literal address");
    let scid = quiche::ConnectionId::from_vec(vec![0x01; LOCAL_CID_LEN]);
    SERVER_CONFIG.with_borrow_mut(|config| {
        let Ok(mut conn) = quiche::accept(&scid, None, local, peer, config) else { return };
        let mut packet = data.to_vec();
        let _ = conn.recv(&mut packet, quiche::RecvInfo { from: peer, to: local });
        // Whatever it made of the packet, the connection can still produce its next flight or close.
        let mut out = vec![0u8; 1350];
        while let Ok((written, _)) = conn.send(&mut out) {
            assert!(written <= out.len());
        }
    });
}
