//! The proxy refuses every address of its own host, not only the special-purpose ranges: run in a
//! network namespace of its own (`quiver_test_support::netns`), where the test can give the host a
//! public address after the proxy started.

mod support;

use http::StatusCode;
use quiver_masque::{ProxyConfig, TunnelError};
use quiver_test_support::netns::{ip, run_inside};
use support::{guarded, start_proxy};

const TEST_NAME: &str = "a_public_address_of_this_host_is_refused";

#[test]
fn a_public_address_of_this_host_is_refused() {
    if !run_inside(TEST_NAME) {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        // The default policy: any public address. The proxy starts before the host has the address.
        let proxy = start_proxy(ProxyConfig::builder());
        let client = proxy.client(true);
        let run = async {
            // Public addresses, given to this host's loopback device inside the namespace.
            assert!(ip(&["addr", "add", "9.9.9.9/32", "dev", "lo"]));
            assert!(ip(&["-6", "addr", "add", "2620:fe::9/128", "dev", "lo", "nodad"]));
            for own in ["9.9.9.9:53", "[2620:fe::9]:53"] {
                match client.open(&own.parse().unwrap()).await {
                    Err(TunnelError::Refused { status: StatusCode::FORBIDDEN, proxy_status, .. }) => {
                        let proxy_status = proxy_status.unwrap_or_default();
                        assert!(proxy_status.contains("the proxy's own host"), "{own}: {proxy_status}");
                    }
                    other => panic!("{own}: expected 403, got {other:?}"),
                }
            }
            assert_eq!(proxy.proxy.stats().refused_policy, 2);
        };
        guarded("the test's exchange", run).await;
    });
}
