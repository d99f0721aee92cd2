//! A graceful shutdown of the proxy (`Proxy::serve_until`): an open tunnel keeps relaying through
//! the drain, new connections are refused, and the tunnel ends when the deadline closes its
//! connection.

mod support;

use std::time::Duration;

use quiver_masque::TunnelError;
use support::{echo_exchange, guarded, loopback_config, start_proxy_until, udp_echo};

/// How long open tunnels may run after the shutdown signal. Long enough for the exchanges below on a
/// loaded machine; the test waits for it to pass once.
const DRAIN_DEADLINE: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_tunnels_relay_until_the_deadline_and_new_connections_are_refused() {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async {
        let _ = stopped.await;
    };
    let (proxy, serving) = start_proxy_until(loopback_config(), shutdown, DRAIN_DEADLINE);
    let echo = udp_echo().await;
    let target = format!("127.0.0.1:{}", echo.port()).parse().unwrap();
    let run = async {
        let client = proxy.client(true);
        let mut tunnel = client.open(&target).await.unwrap();
        echo_exchange(&mut tunnel, 10, 5, |_| 100).await;

        stop.send(()).unwrap();
        // Draining: the open tunnel still relays both ways.
        echo_exchange(&mut tunnel, 10, 5, |_| 100).await;
        // A new connection is refused (the endpoint refuses its handshake, or drops it from the
        // accept queue), so no new tunnel opens.
        let latecomer = proxy.client(true);
        assert!(latecomer.open(&target).await.is_err(), "a tunnel opened during the drain");
        // At the deadline the proxy closes the connection under the tunnel.
        loop {
            match tunnel.recv().await {
                Ok(_) => continue,
                Err(TunnelError::ConnectionLost(_) | TunnelError::Closed) => break,
                Err(other) => panic!("unexpected tunnel end: {other}"),
            }
        }
        assert_eq!(serving.await.unwrap(), quiver::ServeEnd::DeadlinePassed);
        assert_eq!(proxy.endpoint.stats().active_connections, 0);
    };
    guarded("the tunnel through the drain", run).await;
}
