//! Which proxy a remote identity request goes through, from the environment, with the rules of
//! curl (and of reqwest, which the runtimes used before)
//!
//! - https targets: `HTTPS_PROXY` (or `https_proxy`), else `ALL_PROXY` (or `all_proxy`);
//!   http targets: `HTTP_PROXY` (or `http_proxy`), else `ALL_PROXY`. `HTTP_PROXY` is never
//!   used for https.
//! - Not in a CGI process (`REQUEST_METHOD` set): a request's `Proxy` header would set
//!   `HTTP_PROXY` there ("httpoxy"), so no proxy variable is trusted.
//! - `NO_PROXY` (or `no_proxy`): comma-separated; `*` matches every host; an IP address or a
//!   CIDR block (`10.0.0.0/8`, `fd00::/8`) matches addresses in it; any other entry is a
//!   domain that matches itself and its subdomains (`example.com`, `.example.com` and
//!   `*.example.com` are the same entry).
//! - An unusable proxy variable (not a URL, a SOCKS proxy) is ignored with a warning that
//!   names the variable, never its value (a proxy URL may hold a password).
//!
//! ureq connects through the chosen proxy (CONNECT for https); only the choice is made here,
//! because ureq reads a single proxy for every scheme and its `NO_PROXY` matches domains
//! exactly.

use std::net::IpAddr;

/// One value per target scheme, and the `NO_PROXY` list
#[derive(Debug)]
pub(super) struct Proxies<T> {
    pub(super) https: Option<T>,
    pub(super) http: Option<T>,
    no_proxy: NoProxy,
}

impl Proxies<ureq::Proxy> {
    /// The proxies the environment sets now
    pub(super) fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        if var("REQUEST_METHOD").is_some() {
            return Self {
                https: None,
                http: None,
                no_proxy: NoProxy::default(),
            };
        }
        let first = |names: [&'static str; 2]| {
            names.into_iter().find_map(|name| {
                var(name)
                    .filter(|v| !v.trim().is_empty())
                    .map(|v| (name, v))
            })
        };
        let parse = |found: Option<(&'static str, String)>| {
            let (name, value) = found?;
            match ureq::Proxy::new(value.trim()) {
                Ok(proxy)
                    if matches!(
                        proxy.protocol(),
                        ureq::ProxyProtocol::Http | ureq::ProxyProtocol::Https
                    ) =>
                {
                    Some(proxy)
                }
                _ => {
                    tracing::warn!(
                        variable = name,
                        "ignoring a proxy variable that is not an http or https proxy URL"
                    );
                    None
                }
            }
        };
        let all = parse(first(["ALL_PROXY", "all_proxy"]));
        let https = parse(first(["HTTPS_PROXY", "https_proxy"])).or_else(|| all.clone());
        let http = parse(first(["HTTP_PROXY", "http_proxy"])).or(all);
        let no_proxy = first(["NO_PROXY", "no_proxy"])
            .map(|(_, v)| NoProxy::parse(&v))
            .unwrap_or_default();
        Self {
            https,
            http,
            no_proxy,
        }
    }
}

impl<T> Proxies<T> {
    /// The same choice over other values (an agent per proxy)
    pub(super) fn map<U>(self, mut f: impl FnMut(T) -> U) -> Proxies<U> {
        Proxies {
            https: self.https.map(&mut f),
            http: self.http.map(&mut f),
            no_proxy: self.no_proxy,
        }
    }

    /// The proxy for a remote `host` (`https` or plain http), if any
    pub(super) fn for_target(&self, https: bool, host: &str) -> Option<&T> {
        let proxy = if https { &self.https } else { &self.http };
        proxy.as_ref().filter(|_| !self.no_proxy.matches(host))
    }
}

#[derive(Debug, Default)]
struct NoProxy {
    entries: Vec<Entry>,
}

#[derive(Debug, PartialEq)]
enum Entry {
    All,
    Ip(IpAddr),
    Net(IpAddr, u8),
    Domain(String),
}

impl NoProxy {
    fn parse(list: &str) -> Self {
        let entries = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|entry| {
                if entry == "*" {
                    return Entry::All;
                }
                if let Ok(ip) = entry.parse::<IpAddr>() {
                    return Entry::Ip(ip);
                }
                if let Some((ip, len)) = entry.split_once('/') {
                    if let (Ok(ip), Ok(len)) = (ip.parse::<IpAddr>(), len.parse::<u8>()) {
                        let max = if ip.is_ipv4() { 32 } else { 128 };
                        if len <= max {
                            return Entry::Net(ip, len);
                        }
                    }
                }
                let domain = entry.trim_start_matches('*').trim_start_matches('.');
                Entry::Domain(domain.to_ascii_lowercase())
            })
            .collect();
        Self { entries }
    }

    fn matches(&self, host: &str) -> bool {
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let ip = bare.parse::<IpAddr>().ok();
        let host = bare.trim_end_matches('.').to_ascii_lowercase();
        self.entries.iter().any(|entry| match (entry, ip) {
            (Entry::All, _) => true,
            (Entry::Ip(want), Some(ip)) => *want == ip,
            (Entry::Net(net, len), Some(ip)) => in_net(ip, *net, *len),
            (Entry::Domain(d), None) => {
                !d.is_empty()
                    && (host == *d
                        || host
                            .strip_suffix(d.as_str())
                            .is_some_and(|rest| rest.ends_with('.')))
            }
            _ => false,
        })
    }
}

fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use super::*;

    fn proxies(vars: &[(&str, &str)]) -> Proxies<ureq::Proxy> {
        let vars: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Proxies::from_vars(|name| vars.get(name).cloned())
    }

    fn port(p: Option<&ureq::Proxy>) -> Option<u16> {
        p.map(ureq::Proxy::port)
    }

    #[test]
    fn scheme_specific_variables_then_all_proxy() {
        let p = proxies(&[("HTTPS_PROXY", "http://127.0.0.1:1")]);
        assert_eq!(port(p.for_target(true, "login.example")), Some(1));
        assert_eq!(port(p.for_target(false, "login.example")), None);

        let p = proxies(&[("HTTP_PROXY", "http://127.0.0.1:2")]);
        assert_eq!(port(p.for_target(true, "login.example")), None);
        assert_eq!(port(p.for_target(false, "login.example")), Some(2));

        let p = proxies(&[
            ("all_proxy", "http://127.0.0.1:3"),
            ("https_proxy", "http://127.0.0.1:4"),
        ]);
        assert_eq!(port(p.for_target(true, "login.example")), Some(4));
        assert_eq!(port(p.for_target(false, "login.example")), Some(3));
    }

    #[test]
    fn cgi_and_unusable_values_mean_no_proxy() {
        let p = proxies(&[
            ("HTTPS_PROXY", "http://127.0.0.1:1"),
            ("REQUEST_METHOD", "GET"),
        ]);
        assert!(p.for_target(true, "login.example").is_none());
        let p = proxies(&[("HTTPS_PROXY", "socks5://127.0.0.1:1")]);
        assert!(p.for_target(true, "login.example").is_none());
        let p = proxies(&[("HTTPS_PROXY", "  ")]);
        assert!(p.for_target(true, "login.example").is_none());
    }

    #[test]
    fn no_proxy_rules() {
        let list =
            NoProxy::parse(" example.test, .other.test,*.third.test, 10.0.0.0/8, ::1, fd00::/8");
        for host in [
            "example.test",
            "login.example.test",
            "LOGIN.Example.Test",
            "other.test",
            "a.other.test",
            "x.third.test",
            "10.1.2.3",
            "[::1]",
            "[fd00::5]",
        ] {
            assert!(list.matches(host), "{host} bypasses the proxy");
        }
        for host in [
            "notexample.test",
            "example.test.evil",
            "11.0.0.1",
            "[::2]",
            "test",
        ] {
            assert!(!list.matches(host), "{host} goes through the proxy");
        }
        assert!(NoProxy::parse("*").matches("anything.test"));
        assert!(!NoProxy::parse("").matches("anything.test"));
        assert!(NoProxy::parse("0.0.0.0/0").matches("192.0.2.1"));
    }
}
