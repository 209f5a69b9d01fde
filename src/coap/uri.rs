//! The request target of a forward-proxy request (RFC 7252 §5.7.2, §6.4; RFC 10020 §3.5.1):
//! either a Proxy-Uri, or Proxy-Scheme with Uri-Host, Uri-Port, Uri-Path and Uri-Query.

use std::borrow::Cow;
use std::net::IpAddr;

use smallvec::SmallVec;
use thiserror::Error;

use super::options::{PROXY_SCHEME, PROXY_URI, URI_HOST, URI_PATH, URI_PORT, URI_QUERY, read_uint};
use super::view::MessageView;

/// Where a request is to be forwarded. Its parts borrow from the request wherever they
/// can (no escapes to decode, no case to fold), so that parsing it allocates nothing on
/// the forwarding path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    /// Lowercased (RFC 3986 §3.1).
    pub scheme: Cow<'a, str>,
    /// An IP literal or a registered name (RFC 3986 §3.2.2).
    pub host: Host<'a>,
    /// `None` when the URI or Uri-Port gives none: the scheme's default applies.
    pub port: Option<u16>,
    /// Uri-Path and Uri-Query options taken out of a Proxy-Uri; with Proxy-Scheme they
    /// stay in the request as they are.
    pub uri_options: SmallVec<[(u16, Cow<'a, [u8]>); 4]>,
}

/// The host of a [`Target`] (RFC 3986 §3.2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host<'a> {
    /// An IPv4 or IPv6 literal (the brackets of the latter removed).
    Ip(IpAddr),
    /// A registered name, lowercased (RFC 3986 §3.2.2: case-insensitive).
    Name(Cow<'a, str>),
}

/// `s` lowercased, borrowed when it has no uppercase letters.
fn lowercase(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// Why a request's target cannot be taken from its options (RFC 7252 §5.10.2, §6.4).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TargetError {
    /// RFC 7252 §5.10.2: a request carries one form of the target, not both.
    #[error("both Proxy-Uri and Proxy-Scheme are present")]
    BothForms,
    /// The Proxy-Uri fails the decomposition of RFC 7252 §6.4 (the reason in words).
    #[error("Proxy-Uri is not an absolute URI: {0}")]
    BadUri(&'static str),
    /// RFC 7252 §5.10.2: Proxy-Scheme needs Uri-Host to name the server.
    #[error("Proxy-Scheme without Uri-Host")]
    MissingHost,
    /// Not an unsigned integer of at most 65535 (RFC 7252 §5.10.1, §3.2).
    #[error("Uri-Port is not a port number")]
    BadPort,
    /// RFC 7252 §5.10.1: Uri-Host is a string option.
    #[error("Uri-Host is not valid UTF-8")]
    BadHost,
}

/// The proxy target of a request; `None` when it carries neither Proxy-Uri nor
/// Proxy-Scheme, i.e. it is addressed to the proxy itself.
pub(crate) fn proxy_target<'a>(view: &MessageView<'a>) -> Result<Option<Target<'a>>, TargetError> {
    let proxy_uri = view.option(PROXY_URI);
    let scheme = view.option(PROXY_SCHEME);
    match (proxy_uri, scheme) {
        (Some(_), Some(_)) => Err(TargetError::BothForms),
        (Some(uri), None) => parse_proxy_uri(uri).map(Some),
        (None, Some(scheme)) => {
            let host = view.option(URI_HOST).ok_or(TargetError::MissingHost)?;
            let host = std::str::from_utf8(host).map_err(|_| TargetError::BadHost)?;
            let port = view
                .option(URI_PORT)
                .map(|p| {
                    read_uint(p)
                        .and_then(|v| u16::try_from(v).ok())
                        .ok_or(TargetError::BadPort)
                })
                .transpose()?;
            let scheme = std::str::from_utf8(scheme)
                .map(lowercase)
                .unwrap_or_else(|_| Cow::Owned(String::from_utf8_lossy(scheme).into_owned()));
            Ok(Some(Target {
                scheme,
                host: parse_host(Cow::Borrowed(host)),
                port,
                uri_options: SmallVec::new(),
            }))
        }
        (None, None) => Ok(None),
    }
}

fn parse_host(h: Cow<'_, str>) -> Host<'_> {
    let bare = h
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(&h);
    // Most hosts are IPv4 literals: only those are tried as one, only a host with a ':'
    // as IPv6, and everything else is a name.
    let ip = if bare.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
        bare.parse::<std::net::Ipv4Addr>().map(IpAddr::V4).ok()
    } else if bare.contains(':') {
        bare.parse::<std::net::Ipv6Addr>().map(IpAddr::V6).ok()
    } else {
        None
    };
    match ip {
        Some(ip) => Host::Ip(ip),
        None => Host::Name(match h {
            Cow::Borrowed(b) => lowercase(b),
            Cow::Owned(o) => Cow::Owned(o.to_ascii_lowercase()),
        }),
    }
}

/// Parses `scheme://host[:port][/path][?query]` (RFC 3986 §3) into a [`Target`] whose
/// path segments and query parameters become Uri-Path and Uri-Query (RFC 7252 §6.4).
///
/// Every request with a Proxy-Uri comes through here, so it scans the bytes once per
/// part and copies nothing that needs no decoding.
pub fn parse_proxy_uri(bytes: &[u8]) -> Result<Target<'_>, TargetError> {
    let s = std::str::from_utf8(bytes).map_err(|_| TargetError::BadUri("not UTF-8"))?;
    let b = s.as_bytes();
    let is_scheme_char = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.');
    let colon = b
        .iter()
        .position(|&c| !is_scheme_char(c))
        .ok_or(TargetError::BadUri("no scheme://"))?;
    if !b[colon..].starts_with(b"://") {
        return Err(TargetError::BadUri(if b[colon] == b':' {
            "no scheme://"
        } else {
            "bad scheme"
        }));
    }
    if colon == 0 {
        return Err(TargetError::BadUri("bad scheme"));
    }
    let scheme = &s[..colon];
    let rest = &s[colon + 3..];
    let rest = rest.find('#').map_or(rest, |i| &rest[..i]);
    // The authority ends at the first '/' or '?'; on the way, note what it holds.
    let (mut auth_end, mut last_colon, mut at) = (rest.len(), None, false);
    for (i, &c) in rest.as_bytes().iter().enumerate() {
        match c {
            b'/' | b'?' => {
                auth_end = i;
                break;
            }
            b':' => last_colon = Some(i),
            b'@' => at = true,
            _ => {}
        }
    }
    if at {
        return Err(TargetError::BadUri("userinfo is not allowed"));
    }
    let (authority, path_query) = rest.split_at(auth_end);
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or(TargetError::BadUri("unclosed ["))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or(TargetError::BadUri("junk after ]"))?,
            ),
        };
        // A zone in a URI is percent-encoded as %25 (RFC 6874).
        let h = h.replace("%25", "%");
        let ip = h.split('%').next().unwrap_or_default();
        (
            Host::Ip(
                ip.parse()
                    .map_err(|_| TargetError::BadUri("bad IPv6 literal"))?,
            ),
            port,
        )
    } else {
        let (h, p) = match last_colon {
            Some(i) => (&authority[..i], Some(&authority[i + 1..])),
            None => (authority, None),
        };
        if h.is_empty() {
            return Err(TargetError::BadUri("empty host"));
        }
        // Decoded bytes are taken as Latin-1 characters: a name with escapes is not one
        // of the configured host names anyway.
        let host = match percent_decode(h)? {
            Cow::Borrowed(_) => Cow::Borrowed(h),
            Cow::Owned(o) => Cow::Owned(o.iter().map(|&b| b as char).collect()),
        };
        (parse_host(host), p)
    };
    let port = port
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.parse::<u16>()
                .map_err(|_| TargetError::BadUri("bad port"))
        })
        .transpose()?;
    let (path, query) = match path_query.find('?') {
        Some(i) => (&path_query[..i], Some(&path_query[i + 1..])),
        None => (path_query, None),
    };
    let mut uri_options = SmallVec::new();
    // "/" alone is the empty path (RFC 7252 §6.4 step 8).
    if !path.is_empty() && path != "/" {
        for seg in path[1..].split('/') {
            uri_options.push((URI_PATH, percent_decode(seg)?));
        }
    }
    if let Some(q) = query {
        for param in q.split('&') {
            uri_options.push((URI_QUERY, percent_decode(param)?));
        }
    }
    Ok(Target {
        scheme: lowercase(scheme),
        host,
        port,
        uri_options,
    })
}

/// `s` with its %-escapes decoded (RFC 3986 §2.1); borrowed when it has none.
fn percent_decode(s: &str) -> Result<Cow<'_, [u8]>, TargetError> {
    let b = s.as_bytes();
    if !b.contains(&b'%') {
        return Ok(Cow::Borrowed(b));
    }
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .ok_or(TargetError::BadUri("truncated %-escape"))?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).unwrap_or("zz"), 16)
                .map_err(|_| TargetError::BadUri("bad %-escape"))?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coap::build;

    #[test]
    fn rfc7252_s6_4_proxy_uri_decomposition() {
        let t = parse_proxy_uri(b"coap://224.0.1.187:5683/r/a%20b?x=1&y").unwrap();
        assert_eq!(t.scheme, "coap");
        assert_eq!(t.host, Host::Ip("224.0.1.187".parse().unwrap()));
        assert_eq!(t.port, Some(5683));
        let opts: Vec<(u16, &[u8])> = t.uri_options.iter().map(|(n, v)| (*n, &v[..])).collect();
        assert_eq!(
            opts,
            vec![
                (URI_PATH, &b"r"[..]),
                (URI_PATH, b"a b"),
                (URI_QUERY, b"x=1"),
                (URI_QUERY, b"y")
            ]
        );
        // Nothing to decode or fold: the parts borrow from the request.
        assert!(matches!(t.scheme, Cow::Borrowed(_)));
        assert!(matches!(t.uri_options[0].1, Cow::Borrowed(_)));
        assert!(matches!(t.uri_options[1].1, Cow::Owned(_)));
        let t = parse_proxy_uri(b"COAP://[ff05::fd]/").unwrap();
        assert_eq!((&*t.scheme, t.port), ("coap", None));
        assert_eq!(t.host, Host::Ip("ff05::fd".parse().unwrap()));
        assert!(t.uri_options.is_empty());
        let t = parse_proxy_uri(b"coap://All-Lights.example:61616").unwrap();
        assert_eq!(t.host, Host::Name("all-lights.example".into()));
        for bad in [
            &b"coap:/x"[..],
            b"coap://",
            b"coap://[ff05::fd",
            b"coap://h:99999/",
            b"coap://u@h/",
            b"coap://h/%zz",
        ] {
            assert!(
                parse_proxy_uri(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn proxy_scheme_form_and_missing_forms() {
        let m = build::encode(
            build::NON,
            build::code::GET,
            1,
            &[],
            &mut [
                (URI_HOST, &b"ff05::fd"[..]),
                (URI_PORT, &[0x16, 0x33]),
                (PROXY_SCHEME, b"coap"),
                (URI_PATH, b"x"),
            ],
            &[],
        );
        let t = proxy_target(&MessageView::parse(&m).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(t.host, Host::Ip("ff05::fd".parse().unwrap()));
        assert_eq!(t.port, Some(5683));
        assert!(t.uri_options.is_empty());
        let plain = build::encode(
            build::NON,
            build::code::GET,
            1,
            &[],
            &mut [(URI_PATH, &b"x"[..])],
            &[],
        );
        assert_eq!(
            proxy_target(&MessageView::parse(&plain).unwrap()).unwrap(),
            None
        );
        let no_host = build::encode(
            build::NON,
            1,
            1,
            &[],
            &mut [(PROXY_SCHEME, &b"coap"[..])],
            &[],
        );
        assert_eq!(
            proxy_target(&MessageView::parse(&no_host).unwrap()),
            Err(TargetError::MissingHost)
        );
    }
}
