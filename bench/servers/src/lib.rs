//! What the peer benchmark servers share: the `/bytes/N` route and a throwaway certificate. Each server
//! answers `GET /bytes/N` with N bytes (content-length set) and anything else with 404, like the demo
//! site of `quiver serve`, so one load generator drives all of them identically.

use bytes::Bytes;

/// Body chunks are slices of one static buffer: no allocation per chunk, as in `quiver serve`.
pub static CHUNK: [u8; 64 * 1024] = [b'q'; 64 * 1024];

/// The N of `/bytes/N`, or `None` for any other path.
pub fn requested_bytes(path: &[u8]) -> Option<u64> {
    std::str::from_utf8(path.strip_prefix(b"/bytes/")?).ok()?.parse().ok()
}

/// Splits `len` bytes into static chunks.
pub fn chunks(len: u64) -> impl Iterator<Item = Bytes> {
    let mut remaining = len;
    std::iter::from_fn(move || {
        if remaining == 0 {
            return None;
        }
        let take = remaining.min(CHUNK.len() as u64) as usize;
        remaining -= take as u64;
        Some(Bytes::from_static(&CHUNK[..take]))
    })
}

/// A self-signed certificate for localhost: (certificate DER, PKCS#8 key DER, certificate PEM, key PEM).
pub fn self_signed() -> (Vec<u8>, Vec<u8>, String, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("generate a certificate");
    (
        certified.cert.der().to_vec(),
        certified.signing_key.serialize_der(),
        certified.cert.pem(),
        certified.signing_key.serialize_pem(),
    )
}

/// The listen address from the first argument (default `127.0.0.1:4433`).
pub fn listen_addr() -> std::net::SocketAddr {
    std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:4433".into()).parse().expect("listen address IP:PORT")
}
