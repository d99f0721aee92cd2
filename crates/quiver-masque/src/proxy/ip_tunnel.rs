//! CONNECT-IP (RFC 9484) on the proxy side: which requests get a lease of the IP gateway, and how
//! the client's address requests are answered. The relay itself is shared with CONNECT-UDP
//! ([`super::relay`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::Bytes;
use http::{Request, StatusCode};
use quiver_h3::RecvBody;

use super::config::ProxyConfig;
use super::refusal::Refusal;
use crate::ip::capsule::{AddressEntry, IpCapsule, IpNetwork};
use crate::ip::gateway::IpLease;

/// The IP-specific checks of a CONNECT-IP request, in order: CONNECT-IP enabled (else 501), the
/// full-tunnel scope (else 400).
pub(crate) fn check_ip_request(config: &ProxyConfig, request: &Request<RecvBody>) -> Result<(), Refusal> {
    if config.ip_gateway.is_none() {
        let details = "CONNECT-IP is not enabled on this proxy";
        return Err(Refusal::new(StatusCode::NOT_IMPLEMENTED, Some("proxy_configuration_error"), details, |c| {
            &c.refused_malformed
        }));
    }
    let path = request.uri().path_and_query().map_or("/", |path| path.as_str());
    if !crate::ip::is_full_tunnel_path(path) {
        let details = format!("{path}: only the full-tunnel scope {} is supported", crate::ip::IP_TUNNEL_PATH);
        return Err(Refusal::new(StatusCode::BAD_REQUEST, Some("http_request_error"), details, |c| {
            &c.refused_malformed
        }));
    }
    Ok(())
}

/// One address of the gateway's pool for a new tunnel; 503 when none is left or the gateway stopped.
pub(crate) fn lease_address(config: &ProxyConfig) -> Result<IpLease, Refusal> {
    let unavailable = |details: &str| {
        Refusal::new(StatusCode::SERVICE_UNAVAILABLE, Some("connection_limit_reached"), details, |c| &c.refused_limit)
    };
    let Some(gateway) = &config.ip_gateway else {
        return Err(unavailable("CONNECT-IP is not enabled on this proxy"));
    };
    gateway.lease().ok_or_else(|| {
        if gateway.is_stopped() {
            unavailable("CONNECT-IP stopped: the proxy cannot read its TUN device")
        } else {
            unavailable("the address pool is exhausted")
        }
    })
}

/// The capsules that open an IP tunnel (RFC 9484 §4.7): the client learns its address and routes
/// before it can send anything.
pub(crate) fn opening_capsules(lease: &IpLease) -> [Bytes; 2] {
    let assign =
        IpCapsule::AddressAssign(vec![AddressEntry { request_id: 0, network: IpNetwork::host(lease.address) }]);
    [assign.encode(), IpCapsule::RouteAdvertisement(lease.gateway().routes().to_vec()).encode()]
}

/// What to send back for a capsule (other than DATAGRAM) on an IP tunnel holding `lease`: an
/// ADDRESS_ASSIGN for an ADDRESS_REQUEST, nothing for the rest. `Err` when the capsule is malformed.
pub(crate) fn answer_capsule(lease: &IpLease, capsule_type: u64, value: &[u8]) -> Result<Option<Bytes>, String> {
    match IpCapsule::decode(capsule_type, value).map_err(|err| err.to_string())? {
        Some(IpCapsule::AddressRequest(requests)) => {
            Ok(Some(IpCapsule::AddressAssign(answer_address_requests(lease.address, &requests)).encode()))
        }
        // The client's own addresses and routes change nothing here: every packet is checked
        // against the leased address and the gateway's routes.
        Some(IpCapsule::AddressAssign(_) | IpCapsule::RouteAdvertisement(_)) | None => Ok(None),
    }
}

/// The ADDRESS_ASSIGN that answers `requests` on a tunnel holding `leased` (RFC 9484 §4.7.1). A
/// request is met when it asks for the leased address's family and either any address (all zeros) or
/// a network holding the leased one: its entry carries the lease. Others cannot be met (one address
/// per tunnel): their entry carries the all-zero address with the full prefix length, as the RFC asks.
/// The lease is always in the answer (request ID 0 if no request got it), because an ADDRESS_ASSIGN
/// lists every address the client holds.
fn answer_address_requests(leased: IpAddr, requests: &[AddressEntry]) -> Vec<AddressEntry> {
    let unspecified = |family: IpAddr| -> IpAddr {
        if family.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() }
    };
    let mut entries: Vec<AddressEntry> = requests
        .iter()
        .map(|request| {
            let asked = request.network;
            let met = asked.address.is_ipv4() == leased.is_ipv4()
                && (asked.address.is_unspecified() || asked.contains(leased));
            let address = if met { leased } else { unspecified(asked.address) };
            AddressEntry { request_id: request.request_id, network: IpNetwork::host(address) }
        })
        .collect();
    if !entries.iter().any(|entry| entry.network.address == leased) {
        entries.insert(0, AddressEntry { request_id: 0, network: IpNetwork::host(leased) });
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_requests_get_the_lease_or_the_all_zero_answer() {
        let leased: IpAddr = "10.89.0.2".parse().unwrap();
        let request = |id: u64, network: &str| AddressEntry { request_id: id, network: network.parse().unwrap() };
        let answer = answer_address_requests(
            leased,
            &[request(1, "0.0.0.0/32"), request(2, "10.89.0.0/24"), request(3, "::/128"), request(4, "10.1.0.0/16")],
        );
        let shown: Vec<String> = answer.iter().map(|entry| format!("{} {}", entry.request_id, entry.network)).collect();
        assert_eq!(shown, ["1 10.89.0.2/32", "2 10.89.0.2/32", "3 ::/128", "4 0.0.0.0/32"]);
        // Nothing met: the lease is still listed, unsolicited.
        let answer = answer_address_requests(leased, &[request(7, "192.0.2.9/32")]);
        let shown: Vec<String> = answer.iter().map(|entry| format!("{} {}", entry.request_id, entry.network)).collect();
        assert_eq!(shown, ["0 10.89.0.2/32", "7 0.0.0.0/32"]);
    }
}
