//! # quiver-masque
//!
//! MASQUE CONNECT-UDP (RFC 9298) over HTTP/3 on [`quiver_h3`]: a proxy and a client.

#![deny(missing_docs)]
