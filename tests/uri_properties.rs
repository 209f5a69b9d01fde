//! Property tests of the Proxy-Uri decomposition (RFC 7252 §6.4, RFC 3986 §3): a URI built
//! from parts, with any characters percent-encoded, parses back into exactly those parts,
//! and no input makes the parser panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use groxy::coap::options::{URI_PATH, URI_QUERY};
use groxy::coap::uri::{Host, parse_proxy_uri};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum H {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
    Name(String),
}

/// Characters left as they are in a path segment or query parameter; everything else is
/// percent-encoded (RFC 3986 §2.1: upper- or lowercase hex).
fn unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-._~!$'()*+,;=:@".contains(&c)
}

fn encode(part: &[u8], upper: bool) -> String {
    let mut s = String::new();
    for &c in part {
        if unreserved(c) {
            s.push(c as char);
        } else if upper {
            s.push_str(&format!("%{c:02X}"));
        } else {
            s.push_str(&format!("%{c:02x}"));
        }
    }
    s
}

fn host() -> impl Strategy<Value = H> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|b| H::V4(Ipv4Addr::from(b))),
        any::<[u8; 16]>().prop_map(|b| H::V6(Ipv6Addr::from(b))),
        // A registered name: letters, digits, '-' and '.', not all digits and dots.
        "[a-zA-Z][a-zA-Z0-9.-]{0,20}".prop_map(H::Name),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn rfc7252_s6_4_parts_come_back(
        scheme in "[a-zA-Z][a-zA-Z0-9+.-]{0,8}",
        h in host(),
        port in proptest::option::of(any::<u16>()),
        path in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..8), 0..5),
        query in proptest::option::of(proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..8), 1..4)),
        upper in any::<bool>(),
        fragment in proptest::option::of("[a-z]{0,5}"),
    ) {
        let host = match &h {
            H::V4(a) => a.to_string(),
            H::V6(a) => format!("[{a}]"),
            H::Name(n) => n.clone(),
        };
        let mut uri = format!("{scheme}://{host}");
        if let Some(p) = port {
            uri.push_str(&format!(":{p}"));
        }
        for seg in &path {
            uri.push('/');
            uri.push_str(&encode(seg, upper));
        }
        if let Some(q) = &query {
            uri.push('?');
            let params: Vec<String> = q.iter().map(|p| encode(p, upper)).collect();
            uri.push_str(&params.join("&"));
        }
        if let Some(f) = &fragment {
            uri.push('#');
            uri.push_str(f);
        }
        let t = parse_proxy_uri(uri.as_bytes()).unwrap();
        prop_assert_eq!(&*t.scheme, scheme.to_ascii_lowercase());
        match (&h, &t.host) {
            (H::V4(a), Host::Ip(IpAddr::V4(b))) => prop_assert_eq!(a, b),
            (H::V6(a), Host::Ip(IpAddr::V6(b))) => prop_assert_eq!(a, b),
            (H::Name(a), Host::Name(b)) => prop_assert_eq!(a.to_ascii_lowercase(), b.to_string()),
            (a, b) => prop_assert!(false, "host {:?} parsed as {:?}", a, b),
        }
        prop_assert_eq!(t.port, port);
        let mut want: Vec<(u16, Vec<u8>)> = Vec::new();
        // A path of one empty segment ("/") is the empty path (§6.4 step 8).
        if !(path.len() == 1 && path[0].is_empty()) {
            want.extend(path.iter().map(|s| (URI_PATH, s.clone())));
        }
        if let Some(q) = &query {
            want.extend(q.iter().map(|p| (URI_QUERY, p.clone())));
        }
        let got: Vec<(u16, Vec<u8>)> = t.uri_options.iter().map(|(n, v)| (*n, v.to_vec())).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn arbitrary_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = parse_proxy_uri(&bytes);
    }

    #[test]
    fn uri_like_input_never_panics(s in "[a-z]{0,4}(:(//?)?)?[\\[\\]a-z0-9.:%@/?&#]{0,30}") {
        let _ = parse_proxy_uri(s.as_bytes());
    }
}
