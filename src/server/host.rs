//! The `Host` check of the listeners that serve credentials (the DNS-rebinding guard).
//!
//! Owns: [`HostPolicy`], which the main listener (credentials, sessions, AppSync) and the IMDS
//! listener apply to every request before routing.
//!
//! Promises: a request is served only when its `Host` header — and, for an absolute-form
//! request target, the target's authority too — names
//! - a loopback IP literal (`127.0.0.0/8`, `::1`, `::ffff:127.x.y.z`), any port;
//! - `localhost` (any case, optional trailing dot), any port;
//! - the listener's own IP when it is bound to a specific address (an SDK pointed at
//!   `http://169.254.170.2/` sends that);
//! - a name listed in the listener's `allowed_hosts` (case-insensitive), any port.
//!
//! Anything else — another name, a missing or repeated `Host`, a malformed port — is
//! `403 HostNotAllowed`. A web page that rebinds its own DNS name to 127.0.0.1 makes the browser
//! send that name as `Host`, so it is refused even though the TCP connection is local.

use std::net::{IpAddr, SocketAddr};

use axum::http::{Request, header};
use axum::response::Response;

use super::client_error;

/// Which `Host` values a listener answers to.
#[derive(Debug, Clone)]
pub struct HostPolicy {
    /// Extra names (lowercase, no trailing dot) from `allowed_hosts`.
    names: Vec<String>,
    /// The listener's own IP, when bound to a specific address.
    listen: Option<IpAddr>,
    /// `ip:port` of the listener: what SDKs pointed at it send, checked first.
    listen_authority: String,
    /// The setting that extends the list, for the refusal message.
    setting: &'static str,
}

impl HostPolicy {
    /// The policy of a listener bound to `listen`, with `allowed` names from `setting`.
    pub fn new(allowed: &[String], listen: SocketAddr, setting: &'static str) -> Self {
        Self {
            names: allowed.iter().map(|n| normalize(n)).collect(),
            listen: (!listen.ip().is_unspecified()).then_some(listen.ip()),
            listen_authority: listen.to_string(),
            setting,
        }
    }

    /// Whether an authority (`host[:port]`) is one this listener answers to.
    pub fn allows(&self, authority: &str) -> bool {
        let Some(host) = host_of(authority) else {
            return false;
        };
        if let Some(inner) = host.strip_prefix('[') {
            // Bracketed: an IPv6 literal and nothing else.
            return inner
                .strip_suffix(']')
                .and_then(|ip| ip.parse::<IpAddr>().ok())
                .is_some_and(|ip| self.allows_ip(ip));
        }
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.allows_ip(ip);
        }
        let name = normalize(host);
        name == "localhost" || self.names.contains(&name)
    }

    fn allows_ip(&self, ip: IpAddr) -> bool {
        let loopback = match ip {
            IpAddr::V4(v4) => v4.is_loopback(),
            IpAddr::V6(v6) => {
                v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            }
        };
        loopback || self.listen == Some(ip) || self.names.contains(&ip.to_string())
    }

    /// The refusal for `request`, or `None` when its Host is allowed.
    pub(crate) fn refusal<B>(&self, request: &Request<B>) -> Option<Response> {
        let mut hosts = request.headers().get_all(header::HOST).iter();
        let (Some(host), None) = (hosts.next(), hosts.next()) else {
            return Some(self.refuse("the request must carry exactly one Host header"));
        };
        // Fast path: exactly the listen address, as SDKs send it.
        if host.as_bytes() == self.listen_authority.as_bytes()
            && self.listen.is_some()
            && request.uri().authority().is_none()
        {
            return None;
        }
        let Ok(host) = host.to_str() else {
            return Some(self.refuse("the Host header is not visible ASCII"));
        };
        if !self.allows(host) {
            return Some(self.refuse(&format!("the Host {:?} is not allowed", shown(host))));
        }
        if let Some(authority) = request.uri().authority()
            && !self.allows(authority.as_str())
        {
            return Some(self.refuse(&format!(
                "the request target's host {:?} is not allowed",
                shown(authority.as_str())
            )));
        }
        None
    }

    fn refuse(&self, what: &str) -> Response {
        tracing::debug!(reason = what, "request refused: Host not allowed");
        client_error(
            403,
            "HostNotAllowed",
            format!(
                "{what}: this listener answers to loopback addresses, localhost, its own \
                 address and the names in {} (a web page reaching it through DNS rebinding \
                 sends its own name)",
                self.setting
            ),
        )
    }
}

/// The host part of `host[:port]` (brackets kept for IPv6); `None` when the port is not a
/// number.
fn host_of(authority: &str) -> Option<&str> {
    let (host, port) = match authority.rfind(':') {
        // `[::1]` without a port: the last colon is inside the brackets.
        Some(i) if !authority.ends_with(']') => (authority.get(..i)?, authority.get(i + 1..)?),
        _ => (authority, ""),
    };
    let port_ok = port.is_empty() || (port.len() <= 5 && port.parse::<u16>().is_ok());
    (port_ok && !host.is_empty()).then_some(host)
}

fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// At most 100 characters of a caller-supplied value, for messages.
fn shown(value: &str) -> String {
    value.chars().take(100).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_localhost_own_address_and_configured_names_are_allowed() {
        let p = HostPolicy::new(
            &["Creds.Internal".to_owned(), "10.1.2.3".to_owned()],
            "169.254.170.2:80".parse().expect("addr"),
            "server.allowed_hosts",
        );
        for ok in [
            "127.0.0.1",
            "127.0.0.1:8900",
            "127.9.9.9:1",
            "[::1]",
            "[::1]:8904",
            "[::ffff:127.0.0.1]:80",
            "localhost",
            "LOCALHOST:8900",
            "localhost.",
            "localhost.:80",
            "169.254.170.2",
            "169.254.170.2:80",
            "creds.internal",
            "CREDS.INTERNAL.:443",
            "10.1.2.3:9",
            "localhost:",
        ] {
            assert!(p.allows(ok), "{ok}");
        }
        for refused in [
            "",
            ":80",
            "evil.example",
            "evil.example:8900",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "localhost:abc",
            "localhost:99999",
            "127.0.0.1:80:80",
            "[::2]",
            "[::1",
            "[localhost]",
            "::1",
            "10.0.0.1",
            "0.0.0.0",
            "user@localhost",
            "169.254.170.3",
            "creds.internal.evil",
        ] {
            assert!(!p.allows(refused), "{refused}");
        }
    }

    #[test]
    fn an_unspecified_listen_address_adds_nothing() {
        let p = HostPolicy::new(&[], "0.0.0.0:8900".parse().expect("addr"), "x");
        assert!(!p.allows("0.0.0.0:8900"));
        assert!(!p.allows("10.0.0.5:8900"));
        assert!(p.allows("127.0.0.1:8900"));
    }

    fn request(host: &[&str], uri: &str) -> Request<()> {
        let mut b = Request::get(uri);
        for h in host {
            b = b.header(header::HOST, *h);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn missing_repeated_and_absolute_form_hosts_are_checked() {
        let p = HostPolicy::new(&[], "127.0.0.1:8900".parse().expect("addr"), "x");
        assert!(
            p.refusal(&request(&["127.0.0.1:8900"], "/v1/credentials"))
                .is_none()
        );
        assert!(p.refusal(&request(&[], "/v1/credentials")).is_some());
        assert!(
            p.refusal(&request(&["127.0.0.1", "evil.example"], "/"))
                .is_some()
        );
        assert!(
            p.refusal(&request(
                &["127.0.0.1"],
                "http://evil.example/v1/credentials"
            ))
            .is_some()
        );
        assert!(
            p.refusal(&request(
                &["localhost"],
                "http://127.0.0.1:8900/v1/credentials"
            ))
            .is_none()
        );
        let refused = p
            .refusal(&request(&["evil.example"], "/"))
            .expect("refused");
        assert_eq!(refused.status(), 403);
    }
}
