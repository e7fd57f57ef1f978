//! The outbound address guard for URLs tenants give us (webhooks, input images).
//!
//! A host is resolved once, every address is checked, and the connection is pinned to the
//! checked addresses, so a DNS answer that changes between check and connect cannot reach a
//! private network. Redirects are never followed.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use ipnet::{Ipv4Net, Ipv6Net};
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
    #[error("port {0} is not allowed; use the scheme's standard port")]
    Port(u16),
    #[error("URL must use https")]
    Scheme,
    #[error("URL must not carry credentials")]
    Credentials,
}

/// Answers the guard's DNS questions. Injectable, so a test can play a DNS server whose answer
/// changes between two lookups.
#[async_trait]
pub trait Resolver: Send + Sync {
    /// Every address `host` names, with `port` attached.
    ///
    /// # Errors
    /// When the name does not resolve.
    async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>>;
}

/// The operating system's resolver.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

#[async_trait]
impl Resolver for SystemResolver {
    async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// A shared resolver handle that can sit inside `Debug` types.
#[derive(Clone)]
pub struct SharedResolver(pub Arc<dyn Resolver>);

impl fmt::Debug for SharedResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedResolver(..)")
    }
}

impl Default for SharedResolver {
    fn default() -> Self {
        Self(Arc::new(SystemResolver))
    }
}

/// What outbound connections may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutboundPolicy {
    /// Allow loopback addresses, plain http and any port: the local runner's demo only.
    pub allow_loopback: bool,
    /// Refuse everything but loopback: for fuzzing and test runs, which must never send
    /// traffic off the machine whatever URLs they register.
    pub loopback_only: bool,
}

/// IPv4 blocks no tenant URL may reach: everything that is not the public internet.
const BLOCKED_V4: &[(&str, &str)] = &[
    ("0.0.0.0/8", "this network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "carrier-grade NAT"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local and cloud metadata"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "6to4 relay"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved and broadcast"),
];

/// IPv6 blocks no tenant URL may reach. The ones that embed an IPv4 address (mapped,
/// compatible, NAT64, 6to4, Teredo) are refused whole: they are ways to reach IPv4 space
/// while looking like IPv6.
const BLOCKED_V6: &[(&str, &str)] = &[
    ("::/96", "unspecified, loopback and IPv4-compatible"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("64:ff9b::/96", "NAT64"),
    ("64:ff9b:1::/48", "local NAT64"),
    ("100::/64", "discard-only"),
    ("2001::/23", "IETF protocol assignments and Teredo"),
    ("2001:db8::/32", "documentation"),
    ("2002::/16", "6to4"),
    ("3fff::/20", "documentation"),
    ("fc00::/7", "unique local"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
];

static V4_NETS: LazyLock<Vec<(Ipv4Net, &'static str)>> = LazyLock::new(|| {
    BLOCKED_V4
        .iter()
        .filter_map(|(net, why)| Some((net.parse().ok()?, *why)))
        .collect()
});

static V6_NETS: LazyLock<Vec<(Ipv6Net, &'static str)>> = LazyLock::new(|| {
    BLOCKED_V6
        .iter()
        .filter_map(|(net, why)| Some((net.parse().ok()?, *why)))
        .collect()
});

/// The block an address falls in, if any.
pub fn blocked_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => V4_NETS
            .iter()
            .find_map(|(net, why)| net.contains(&v4).then_some(*why)),
        IpAddr::V6(v6) => V6_NETS
            .iter()
            .find_map(|(net, why)| net.contains(&v6).then_some(*why)),
    }
}

impl OutboundPolicy {
    /// Whether one address may be connected to.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        if self.loopback_only && !ip.is_loopback() {
            return false;
        }
        if self.allow_loopback && ip.is_loopback() {
            return true;
        }
        blocked_reason(ip).is_none()
    }

    /// Check the URL's shape: https (plain http only for local runs), no credentials, and the
    /// scheme's standard port (any port for local runs).
    ///
    /// # Errors
    /// [`GuardError`] naming the first rule broken.
    pub fn check_url(&self, url: &Url) -> Result<u16, GuardError> {
        match url.scheme() {
            "https" => {}
            "http" if self.allow_loopback => {}
            _ => return Err(GuardError::Scheme),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(GuardError::Credentials);
        }
        let port = url.port_or_known_default().ok_or(GuardError::NoHost)?;
        if !self.allow_loopback && url.port().is_some_and(|p| p != 443) {
            return Err(GuardError::Port(port));
        }
        Ok(port)
    }

    /// Resolve `url`'s host with the system resolver and check every address it names.
    ///
    /// # Errors
    /// [`GuardError`] when the URL breaks a rule, the host does not resolve, or any address it
    /// names is forbidden.
    pub async fn resolve(&self, url: &Url) -> Result<Vec<SocketAddr>, GuardError> {
        self.resolve_with(url, &SystemResolver).await
    }

    /// [`OutboundPolicy::resolve`] with a chosen resolver. Connect only to the addresses it
    /// returns: resolving again would let a rebinding DNS server pick a different answer.
    ///
    /// # Errors
    /// As [`OutboundPolicy::resolve`].
    pub async fn resolve_with(
        &self,
        url: &Url,
        resolver: &dyn Resolver,
    ) -> Result<Vec<SocketAddr>, GuardError> {
        let port = self.check_url(url)?;
        let addrs: Vec<SocketAddr> = match url.host().ok_or(GuardError::NoHost)? {
            // `url` already turned decimal, octal and hex IPv4 spellings into an address.
            Host::Ipv4(ip) => vec![SocketAddr::new(IpAddr::V4(ip), port)],
            Host::Ipv6(ip) => vec![SocketAddr::new(IpAddr::V6(ip), port)],
            Host::Domain(name) => resolver
                .lookup(name, port)
                .await
                .map_err(|_| GuardError::Unresolvable)?,
        };
        if addrs.is_empty() {
            return Err(GuardError::Unresolvable);
        }
        // One bad address refuses the whole name: a mixed answer is how rebinding starts.
        if let Some(bad) = addrs.iter().find(|a| !self.allows_ip(a.ip())) {
            return Err(GuardError::Forbidden(bad.ip()));
        }
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Answers from a fixed table, as a DNS server under the tenant's control could.
    struct TableResolver(HashMap<&'static str, Vec<IpAddr>>);

    #[async_trait]
    impl Resolver for TableResolver {
        async fn lookup(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
            let ips = self.0.get(host).ok_or(std::io::ErrorKind::NotFound)?;
            Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
        }
    }

    fn ip(raw: &str) -> IpAddr {
        raw.parse().unwrap_or_else(|e| panic!("{raw}: {e}"))
    }

    fn hostile_dns() -> TableResolver {
        TableResolver(HashMap::from([
            ("localhost", vec![ip("127.0.0.1"), ip("::1")]),
            ("metadata.attacker.test", vec![ip("169.254.169.254")]),
            ("intranet.attacker.test", vec![ip("10.1.2.3")]),
            (
                "mixed.attacker.test",
                vec![ip("93.184.216.34"), ip("192.168.0.10")],
            ),
            ("ula.attacker.test", vec![ip("fd00::1")]),
            ("mapped.attacker.test", vec![ip("::ffff:10.0.0.1")]),
            ("public.example.test", vec![ip("93.184.216.34")]),
            ("public6.example.test", vec![ip("2606:2800:220:1::1")]),
        ]))
    }

    #[test]
    fn loopback_only_refuses_every_public_address() {
        let policy = OutboundPolicy {
            allow_loopback: true,
            loopback_only: true,
        };

        assert!(policy.allows_ip("127.0.0.1".parse().expect("ip")));
        assert!(policy.allows_ip("::1".parse().expect("ip")));
        assert!(!policy.allows_ip("93.184.216.34".parse().expect("ip")));
        assert!(!policy.allows_ip("2606:2800:220:1::1".parse().expect("ip")));
    }

    #[tokio::test]
    async fn hostile_urls_are_refused_with_the_reason() {
        let policy = OutboundPolicy::default();
        let dns = hostile_dns();
        let forbidden = |raw: &str| GuardError::Forbidden(ip(raw));
        let table: Vec<(&str, GuardError)> = vec![
            ("https://127.0.0.1/", forbidden("127.0.0.1")),
            ("https://127.1/", forbidden("127.0.0.1")),
            ("https://2130706433/", forbidden("127.0.0.1")),
            ("https://0x7f000001/", forbidden("127.0.0.1")),
            ("https://0x7f.0.0.1/", forbidden("127.0.0.1")),
            ("https://0177.0.0.1/", forbidden("127.0.0.1")),
            ("https://017700000001/", forbidden("127.0.0.1")),
            ("https://10.0.0.1/", forbidden("10.0.0.1")),
            ("https://172.16.5.4/", forbidden("172.16.5.4")),
            ("https://192.168.1.1/", forbidden("192.168.1.1")),
            (
                "https://169.254.169.254/latest/meta-data",
                forbidden("169.254.169.254"),
            ),
            ("https://2852039166/", forbidden("169.254.169.254")),
            ("https://0xa9fea9fe/", forbidden("169.254.169.254")),
            ("https://100.64.0.1/", forbidden("100.64.0.1")),
            ("https://100.127.255.254/", forbidden("100.127.255.254")),
            ("https://0.0.0.0/", forbidden("0.0.0.0")),
            ("https://0/", forbidden("0.0.0.0")),
            ("https://224.0.0.1/", forbidden("224.0.0.1")),
            ("https://239.255.255.250/", forbidden("239.255.255.250")),
            ("https://240.0.0.1/", forbidden("240.0.0.1")),
            ("https://255.255.255.255/", forbidden("255.255.255.255")),
            ("https://192.0.0.8/", forbidden("192.0.0.8")),
            ("https://198.18.0.1/", forbidden("198.18.0.1")),
            ("https://[::1]/", forbidden("::1")),
            ("https://[::]/", forbidden("::")),
            ("https://[fc00::1]/", forbidden("fc00::1")),
            ("https://[fd12:3456::1]/", forbidden("fd12:3456::1")),
            ("https://[fe80::1]/", forbidden("fe80::1")),
            ("https://[ff02::1]/", forbidden("ff02::1")),
            ("https://[::ffff:127.0.0.1]/", forbidden("::ffff:127.0.0.1")),
            (
                "https://[::ffff:169.254.169.254]/",
                forbidden("::ffff:169.254.169.254"),
            ),
            ("https://[::ffff:7f00:1]/", forbidden("::ffff:127.0.0.1")),
            ("https://[::127.0.0.1]/", forbidden("::127.0.0.1")),
            ("https://[64:ff9b::a00:1]/", forbidden("64:ff9b::a00:1")),
            ("https://[2002:a00:1::]/", forbidden("2002:a00:1::")),
            ("https://[2001::1]/", forbidden("2001::1")),
            ("https://localhost/", forbidden("127.0.0.1")),
            (
                "https://metadata.attacker.test/",
                forbidden("169.254.169.254"),
            ),
            ("https://intranet.attacker.test/", forbidden("10.1.2.3")),
            ("https://mixed.attacker.test/", forbidden("192.168.0.10")),
            ("https://ula.attacker.test/", forbidden("fd00::1")),
            (
                "https://mapped.attacker.test/",
                forbidden("::ffff:10.0.0.1"),
            ),
            ("https://nowhere.attacker.test/", GuardError::Unresolvable),
            ("http://public.example.test/", GuardError::Scheme),
            ("ftp://public.example.test/", GuardError::Scheme),
            (
                "https://user:pw@public.example.test/",
                GuardError::Credentials,
            ),
            (
                "https://token@public.example.test/",
                GuardError::Credentials,
            ),
            ("https://public.example.test:8443/", GuardError::Port(8443)),
            ("https://public.example.test:80/", GuardError::Port(80)),
            ("https://public.example.test:22/", GuardError::Port(22)),
        ];

        for (raw, expected) in table {
            let url = Url::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));

            let outcome = policy.resolve_with(&url, &dns).await;

            assert_eq!(outcome, Err(expected), "{raw}");
        }
    }

    #[tokio::test]
    async fn public_hosts_on_the_standard_port_are_allowed() {
        let policy = OutboundPolicy::default();
        let dns = hostile_dns();

        for raw in [
            "https://93.184.216.34/hook",
            "https://public.example.test/hook?token=abc",
            "https://public.example.test:443/hook",
            "https://public6.example.test/hook",
            "https://[2606:2800:220:1::1]/hook",
        ] {
            let url = Url::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));

            assert!(policy.resolve_with(&url, &dns).await.is_ok(), "{raw}");
        }
    }

    #[tokio::test]
    async fn local_runs_allow_loopback_http_and_any_port_but_nothing_else_private() {
        let local = OutboundPolicy {
            allow_loopback: true,
            loopback_only: false,
        };
        let dns = hostile_dns();
        let url = |raw: &str| Url::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));

        assert!(local
            .resolve_with(&url("http://127.0.0.1:9000/"), &dns)
            .await
            .is_ok());
        assert!(local
            .resolve_with(&url("http://localhost:9000/"), &dns)
            .await
            .is_ok());
        assert!(local
            .resolve_with(&url("https://public.example.test:8443/"), &dns)
            .await
            .is_ok());
        assert_eq!(
            local
                .resolve_with(&url("http://10.0.0.1:9000/"), &dns)
                .await,
            Err(GuardError::Forbidden(ip("10.0.0.1")))
        );
        assert_eq!(
            local
                .resolve_with(&url("http://169.254.169.254/"), &dns)
                .await,
            Err(GuardError::Forbidden(ip("169.254.169.254")))
        );
        assert!(OutboundPolicy::default()
            .resolve_with(&url("https://127.0.0.1/"), &dns)
            .await
            .is_err());
    }

    #[test]
    fn every_block_in_the_tables_parses() {
        assert_eq!(V4_NETS.len(), BLOCKED_V4.len());
        assert_eq!(V6_NETS.len(), BLOCKED_V6.len());
    }
}
