//! The outbound address guard for URLs tenants give us (webhooks, input images).
//!
//! A host is resolved once, every address is checked, and the connection is pinned to the
//! checked addresses, so a DNS answer that changes between check and connect cannot reach a
//! private network. Redirects are never followed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use url::{Host, Url};

/// Why an outbound URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error("URL has no host")]
    NoHost,
    #[error("host could not be resolved")]
    Unresolvable,
    #[error("address {0} is not allowed")]
    Forbidden(IpAddr),
    #[error("port {0} is not allowed")]
    Port(u16),
}

/// What outbound connections may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboundPolicy {
    /// Allow loopback addresses and any port: the local runner's demo only.
    pub allow_loopback: bool,
}

fn ipv4_forbidden(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..=127).contains(&b)) // carrier-grade NAT
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..=19).contains(&b)) // benchmarking
        || a >= 240 // reserved
}

fn ipv6_forbidden(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return ipv4_forbidden(v4);
    }
    let first = ip.segments()[0];
    ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link local
        || (first & 0xffc0) == 0xfec0 // site local (deprecated)
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || first == 0x0064 && ip.segments()[1] == 0xff9b // NAT64 can reach IPv4 space
        || ip.segments()[..6] == [0, 0, 0, 0, 0, 0] // IPv4-compatible
}

impl OutboundPolicy {
    /// Whether one address may be connected to.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        if self.allow_loopback && ip.is_loopback() {
            return true;
        }
        match ip {
            IpAddr::V4(v4) => !ipv4_forbidden(v4),
            IpAddr::V6(v6) => !ipv6_forbidden(v6),
        }
    }

    fn allows_port(&self, port: u16) -> bool {
        self.allow_loopback || port == 443 || port == 80
    }

    /// Resolve `url`'s host and check every address it names.
    ///
    /// # Errors
    /// [`GuardError`] when the host is missing, does not resolve, or names a forbidden address.
    pub async fn resolve(&self, url: &Url) -> Result<Vec<SocketAddr>, GuardError> {
        let port = url.port_or_known_default().ok_or(GuardError::NoHost)?;
        if !self.allows_port(port) {
            return Err(GuardError::Port(port));
        }
        let addrs: Vec<SocketAddr> = match url.host().ok_or(GuardError::NoHost)? {
            // `url` already turned decimal, octal and hex IPv4 spellings into an address.
            Host::Ipv4(ip) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
            Host::Ipv6(ip) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
            Host::Domain(name) => tokio::net::lookup_host((name, port))
                .await
                .map_err(|_| GuardError::Unresolvable)?
                .collect(),
        };
        if addrs.is_empty() {
            return Err(GuardError::Unresolvable);
        }
        if let Some(bad) = addrs.iter().find(|a| !self.allows_ip(a.ip())) {
            return Err(GuardError::Forbidden(bad.ip()));
        }
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn private_and_special_addresses_are_refused_in_every_spelling() {
        let policy = OutboundPolicy::default();
        let hostile = [
            "https://127.0.0.1/",
            "https://2130706433/",
            "https://0x7f000001/",
            "https://0177.0.0.1/",
            "https://10.0.0.1/",
            "https://172.16.5.4/",
            "https://192.168.1.1/",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/",
            "https://0.0.0.0/",
            "https://224.0.0.1/",
            "https://240.0.0.1/",
            "https://[::1]/",
            "https://[::]/",
            "https://[fc00::1]/",
            "https://[fe80::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://[::ffff:169.254.169.254]/",
        ];

        for raw in hostile {
            let url = Url::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert!(
                matches!(policy.resolve(&url).await, Err(GuardError::Forbidden(_))),
                "{raw} must be refused"
            );
        }
    }

    #[tokio::test]
    async fn public_address_on_a_standard_port_is_allowed() {
        let policy = OutboundPolicy::default();
        let url = Url::parse("https://93.184.216.34/hook").unwrap_or_else(|e| panic!("{e}"));

        assert_eq!(policy.resolve(&url).await.map(|a| a.len()), Ok(1));
    }

    #[tokio::test]
    async fn odd_ports_are_refused_unless_local_runs_allow_them() {
        let url = Url::parse("https://93.184.216.34:8443/").unwrap_or_else(|e| panic!("{e}"));

        assert_eq!(
            OutboundPolicy::default().resolve(&url).await,
            Err(GuardError::Port(8443))
        );
        let local = OutboundPolicy {
            allow_loopback: true,
        };
        assert!(local.resolve(&url).await.is_ok());
    }

    #[tokio::test]
    async fn loopback_is_allowed_only_by_the_local_setting() {
        let url = Url::parse("http://127.0.0.1:9000/").unwrap_or_else(|e| panic!("{e}"));
        let local = OutboundPolicy {
            allow_loopback: true,
        };

        assert!(local.resolve(&url).await.is_ok());
        assert!(OutboundPolicy::default().resolve(&url).await.is_err());
    }
}
