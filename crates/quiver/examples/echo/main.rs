//! Echo over raw QUIC streams, with Quiver on both sides.
//!
//! ```text
//! cargo run --example echo -- server 127.0.0.1:4433
//! cargo run --example echo -- client 127.0.0.1:4433 "hello, quic"
//! ```
//! The server generates a self-signed certificate; the client skips verification (development only).

#[allow(dead_code)] // shared with the tests, which use more of it
mod protocol;

use std::net::SocketAddr;

use protocol::{ALPN, EchoClient, EchoServer};
use quiver::{ClientConfig, Endpoint, ServerConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["server", addr] => serve(addr.parse()?).await,
        ["client", addr, message] => request(addr.parse()?, message).await,
        _ => {
            eprintln!("usage: echo server ADDR | echo client ADDR MESSAGE");
            std::process::exit(2);
        }
    }
}

async fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let config = ServerConfig::builder().alpn([ALPN]).self_signed(["localhost", "127.0.0.1"]).build()?;
    println!("certificate SPKI sha256 pin: {}", config.identity().spki_sha256_base64());
    let endpoint = Endpoint::server(addr, config)?;
    println!("echo server listening on {}", endpoint.local_addr());
    while let Some(incoming) = endpoint.accept().await {
        println!("connection from {}", incoming.peer_addr());
        incoming.start(EchoServer::new());
    }
    Ok(())
}

async fn request(addr: SocketAddr, message: &str) -> anyhow::Result<()> {
    let config = ClientConfig::builder().alpn([ALPN]).insecure_skip_verification().build()?;
    let bind: SocketAddr = if addr.is_ipv4() { "0.0.0.0:0".parse()? } else { "[::]:0".parse()? };
    let endpoint = Endpoint::client(bind, config)?;
    let (client, results) = EchoClient::new(vec![message.as_bytes().to_vec()]);
    let connection = endpoint.connect(addr, "localhost", client).await?;
    let echoed = results.await?;
    println!("{}", String::from_utf8_lossy(&echoed[0]));
    connection.closed().await;
    Ok(())
}
