//! Egress: where a request may go. A URL built from incident text could point anywhere, so
//! after the URL is rendered its host is checked against the connector's `allow_hosts`, and
//! the addresses actually connected to are checked by the connector's own DNS resolver (a
//! DNS answer that changes between a check and the connect cannot slip through). Link-local
//! and cloud metadata addresses are always refused; loopback and private ranges when the
//! connector says `allow_private = false`.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use crate::connector::Egress;

use super::SetupFailure;

/// A request not sent because of where it would go. Found in a reqwest error's sources.
#[derive(Debug, Clone, thiserror::Error)]
#[error("refused: {0}")]
pub struct Refused(pub String);

/// Why `ip` may not be connected to, if it may not.
pub fn forbidden(ip: IpAddr, allow_private: bool) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => embedded_ipv4(v6).map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if o[0] == 169 && o[1] == 254 {
                return Some("a link-local address (cloud metadata lives at 169.254.169.254)");
            }
            if o == [100, 100, 100, 200] {
                return Some("a cloud metadata address");
            }
            if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() || o[0] == 0 {
                return Some("not a unicast address");
            }
            if allow_private {
                return None;
            }
            if v4.is_loopback() {
                return Some("a loopback address (allow_private = false)");
            }
            let cgnat = o[0] == 100 && (64..128).contains(&o[1]);
            if v4.is_private() || cgnat {
                return Some("a private address (allow_private = false)");
            }
            None
        }
        IpAddr::V6(v6) => {
            let metadata: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);
            if v6 == metadata {
                return Some("a cloud metadata address");
            }
            let s = v6.segments();
            if (s[0] & 0xffc0) == 0xfe80 {
                return Some("a link-local address");
            }
            if v6.is_unspecified() || v6.is_multicast() {
                return Some("not a unicast address");
            }
            if allow_private {
                return None;
            }
            if v6.is_loopback() {
                return Some("a loopback address (allow_private = false)");
            }
            if (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfec0 {
                return Some("a private address (allow_private = false)");
            }
            None
        }
    }
}

/// The IPv4 address an IPv6 address carries, in the forms that route to it: IPv4-mapped
/// (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) and 6to4
/// (`2002:AABB:CCDD::`).
fn embedded_ipv4(v6: Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = v6.segments();
    let tail =
        std::net::Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..6] == [0, 0, 0, 0, 0, 0] && !v6.is_loopback() && !v6.is_unspecified() {
        return Some(tail);
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return Some(tail);
    }
    if s[0] == 0x2002 {
        return Some(std::net::Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

fn host_allowed(host: &str, allow_hosts: &[String]) -> bool {
    if allow_hosts.is_empty() {
        return true;
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    allow_hosts
        .iter()
        .any(|allowed| match allowed.strip_prefix("*.") {
            Some(domain) => host.len() > domain.len() && host.ends_with(&format!(".{domain}")),
            None => host == *allowed,
        })
}

/// Checks a rendered URL's host: on the allow list, and, when it is an address, an address
/// that may be connected to. (Names are checked again when they resolve.)
pub fn check_url(egress: &Egress, url: &reqwest::Url) -> Result<(), Refused> {
    let host = url
        .host_str()
        .ok_or_else(|| Refused("the URL names no host".into()))?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if !host_allowed(bare, &egress.allow_hosts) {
        return Err(Refused(format!("host {bare:?} is not in allow_hosts")));
    }
    if let Ok(ip) = bare.parse::<IpAddr>()
        && let Some(why) = forbidden(ip, egress.allow_private)
    {
        return Err(Refused(format!("{ip} is {why}")));
    }
    Ok(())
}

/// Resolves names and keeps only the addresses the connector may connect to.
struct GuardedResolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })?
                .collect();
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| match forbidden(addr.ip(), allow_private) {
                    Some(why) => {
                        refused = Some(format!("{host} resolves to {} which is {why}", addr.ip()));
                        false
                    }
                    None => true,
                })
                .collect();
            if allowed.is_empty() {
                let why = refused.unwrap_or_else(|| format!("{host} resolves to no address"));
                return Err(Box::new(Refused(why)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The HTTP client of one connector, from its egress settings: its resolver, redirect policy,
/// trusted CAs and client certificate.
pub fn client(settings: &Egress) -> Result<reqwest::Client, SetupFailure> {
    let egress = settings.clone();
    let max = egress.follow_redirects;
    let redirects = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > max || max == 0 {
            return attempt.stop();
        }
        match check_url(&egress, attempt.url()) {
            Ok(()) => attempt.follow(),
            Err(refused) => attempt.error(refused),
        }
    });
    // No proxy from the environment: a proxy would resolve names itself, out of the reach of
    // the resolver's checks.
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .redirect(redirects)
        .user_agent(concat!("incident-gateway/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .dns_resolver(Arc::new(GuardedResolver {
            allow_private: settings.allow_private,
        }));
    if let Some(ca) = &settings.tls_ca_file {
        let pem = super::read_ca(ca)?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| SetupFailure::HttpCa {
                path: ca.clone(),
                source,
            })?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    if let Some(identity) = &settings.client_identity {
        // Read and checked at load; this parses the same bytes again.
        let id = reqwest::Identity::from_pem(&identity.pem).map_err(|source| {
            SetupFailure::Identity {
                path: identity.cert_file.clone(),
                source,
            }
        })?;
        builder = builder.identity(id);
    }
    builder.build().map_err(SetupFailure::HttpClient)
}

/// The refusal inside a send error, if the error is one.
pub fn refusal<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut current: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = current {
        if let Some(r) = err.downcast_ref::<Refused>() {
            return Some(r);
        }
        current = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_and_link_local_are_always_refused() {
        for ip in [
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "fd00:ec2::254",
            "fe80::1",
            "0.0.0.0",
            "::a9fe:a9fe",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::",
            "100.100.100.200",
        ] {
            assert!(forbidden(ip.parse().unwrap(), true).is_some(), "{ip}");
        }
    }

    #[test]
    fn private_ranges_follow_the_setting() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "::1",
            "fd12::1",
            "fec0::1",
            "64:ff9b::a00:1",
        ] {
            assert!(forbidden(ip.parse().unwrap(), true).is_none(), "{ip}");
            assert!(forbidden(ip.parse().unwrap(), false).is_some(), "{ip}");
        }
        assert!(forbidden("93.184.216.34".parse().unwrap(), false).is_none());
    }

    #[test]
    fn allow_hosts_exact_and_wildcard() {
        let allow = vec![
            "api.example.com".to_string(),
            "*.service-now.com".to_string(),
        ];
        assert!(host_allowed("API.example.com", &allow));
        assert!(host_allowed("acme.service-now.com", &allow));
        assert!(!host_allowed("service-now.com", &allow));
        assert!(!host_allowed("evil.com", &allow));
        assert!(!host_allowed("api.example.com.evil.com", &allow));
        assert!(host_allowed("anything", &[]));
    }
}
