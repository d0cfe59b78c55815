//! Which hosts a function may call: `allowed_outbound_hosts` from its manifest.
//!
//! An entry is `host`, `host:port`, either optionally behind `http://` or `https://`, where
//! `host` may start with `*.` (any subdomain) or be `*` (anything), and `port` may be `*`.
//! Without a port, an entry allows the scheme's default port (80, or 443 for https; both
//! when no scheme is given). Pure logic, so the rules are tested without a network.

use std::fmt;

/// One allowed destination.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    scheme: Option<String>,
    host: String,
    port: Option<PortRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortRule {
    Any,
    Exact(u16),
}

/// The parsed allow-list; empty denies everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts {
    rules: Vec<Rule>,
}

/// An entry that is not a host pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadHost(pub String);

impl fmt::Display for BadHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} is not a host pattern (want host, host:port, or http[s]://host[:port])",
            self.0
        )
    }
}

impl std::error::Error for BadHost {}

impl AllowedHosts {
    /// Parse every entry; the first bad one is the error.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, BadHost> {
        let rules = entries
            .iter()
            .map(|e| parse_rule(e.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(AllowedHosts { rules })
    }

    /// Whether a request to `scheme://host:port` may go out.
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        self.rules.iter().any(|r| {
            let scheme_ok = r.scheme.as_deref().is_none_or(|s| s.eq_ignore_ascii_case(scheme));
            let host_ok = match r.host.strip_prefix("*.") {
                _ if r.host == "*" => true,
                Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
                None => r.host == host,
            };
            let port_ok = match &r.port {
                Some(PortRule::Any) => true,
                Some(PortRule::Exact(p)) => *p == port,
                None => match r.scheme.as_deref() {
                    Some("https") => port == 443,
                    Some(_) => port == 80,
                    None => port == 80 || port == 443,
                },
            };
            scheme_ok && host_ok && port_ok
        })
    }

    /// Whether nothing is allowed.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

fn parse_rule(entry: &str) -> Result<Rule, BadHost> {
    let bad = || BadHost(entry.to_owned());
    let (scheme, rest) = match entry.split_once("://") {
        Some((s, rest)) if s == "http" || s == "https" => (Some(s.to_owned()), rest),
        Some(_) => return Err(bad()),
        None => (None, entry),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains('/') || rest.contains('@') {
        return Err(bad());
    }
    // `[v6]:port`, `host:port`, or a bare host.
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(bad)?;
        (h, after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    let port = match port {
        None => None,
        Some("*") => Some(PortRule::Any),
        Some(p) => Some(PortRule::Exact(p.parse().map_err(|_| bad())?)),
    };
    let valid_host = !host.is_empty()
        && host
            .strip_prefix("*.")
            .unwrap_or(host)
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '*'))
        && (host == "*" || !host.strip_prefix("*.").unwrap_or(host).contains('*'));
    if !valid_host {
        return Err(bad());
    }
    Ok(Rule {
        scheme,
        host: host.to_ascii_lowercase(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_denies_everything() {
        let a = AllowedHosts::parse::<&str>(&[]).unwrap();
        assert!(a.is_empty());
        assert!(!a.allows("http", "127.0.0.1", 80));
    }

    #[test]
    fn exact_host_and_port() {
        let a = AllowedHosts::parse(&["127.0.0.1:8080"]).unwrap();
        assert!(a.allows("http", "127.0.0.1", 8080));
        assert!(!a.allows("http", "127.0.0.1", 8081));
        assert!(!a.allows("http", "127.0.0.2", 8080));
    }

    #[test]
    fn scheme_defaults_its_port() {
        let a = AllowedHosts::parse(&["https://api.example.com"]).unwrap();
        assert!(a.allows("https", "API.example.com", 443));
        assert!(!a.allows("http", "api.example.com", 80));
        assert!(!a.allows("https", "api.example.com", 8443));
        let any = AllowedHosts::parse(&["example.com"]).unwrap();
        assert!(any.allows("http", "example.com", 80) && any.allows("https", "example.com", 443));
    }

    #[test]
    fn wildcards() {
        let a = AllowedHosts::parse(&["*.example.com:*"]).unwrap();
        assert!(a.allows("https", "a.example.com", 1234));
        assert!(!a.allows("https", "example.com", 443));
        assert!(!a.allows("https", "badexample.com", 443));
        let all = AllowedHosts::parse(&["*:*"]).unwrap();
        assert!(all.allows("http", "10.0.0.1", 9));
    }

    #[test]
    fn ipv6() {
        let a = AllowedHosts::parse(&["[::1]:8080"]).unwrap();
        assert!(a.allows("http", "[::1]", 8080));
        assert!(!a.allows("http", "::1", 80));
    }

    #[test]
    fn bad_entries_are_named() {
        for e in ["", "ftp://x", "http://a/b", "a:b", "user@host", "a*b.com"] {
            let err = AllowedHosts::parse(&[e]).unwrap_err();
            assert_eq!(err.0, e);
            assert!(err.to_string().contains("not a host pattern"), "{err}");
        }
    }
}
