//! CRIs (Constrained Resource Identifiers, draft-ietf-core-href-27) for the Reply-From option
//! (groupcomm-proxy §3): `[scheme-id, [host-ip, port]]` with path, query and fragment left
//! off as trailing defaults. coap is scheme number 0, so scheme-id -1.

use std::net::{IpAddr, SocketAddr};

use crate::cbor;

pub(crate) const SCHEME_COAP: i64 = -1;

/// The Reply-From value for an origin server at `addr` reached over plain CoAP: a CBOR
/// sequence of one CRI with scheme and authority only (§5.4.1 step 1). An IPv6 zone
/// (scope id) becomes the CRI zone-id.
pub fn reply_from(addr: SocketAddr) -> Vec<u8> {
    let mut b = Vec::with_capacity(24);
    cbor::array(&mut b, 2);
    cbor::int(&mut b, SCHEME_COAP);
    match addr {
        SocketAddr::V4(a) => {
            cbor::array(&mut b, 2);
            cbor::bytes(&mut b, &a.ip().octets());
        }
        SocketAddr::V6(a) if a.scope_id() != 0 => {
            cbor::array(&mut b, 3);
            cbor::bytes(&mut b, &a.ip().octets());
            cbor::text(&mut b, &a.scope_id().to_string());
        }
        SocketAddr::V6(a) => {
            cbor::array(&mut b, 2);
            cbor::bytes(&mut b, &a.ip().octets());
        }
    }
    cbor::int(&mut b, addr.port() as i64);
    b
}

/// Reads back the address of a Reply-From value written by [`reply_from`] (what a client
/// does in §5.5.1 step 3). Host names and other schemes are not addresses: `None`.
pub fn parse_reply_from(v: &[u8]) -> Option<SocketAddr> {
    let mut d = minicbor::Decoder::new(v);
    if d.array().ok()?? < 2 || d.i64().ok()? != SCHEME_COAP {
        return None;
    }
    let n = d.array().ok()??;
    let ip = match d.bytes().ok()? {
        b if b.len() == 4 => IpAddr::from(<[u8; 4]>::try_from(b).ok()?),
        b if b.len() == 16 => IpAddr::from(<[u8; 16]>::try_from(b).ok()?),
        _ => return None,
    };
    let mut port = 5683;
    let mut scope = 0;
    for _ in 1..n {
        match d.datatype().ok()? {
            minicbor::data::Type::String => scope = d.str().ok()?.parse().ok()?,
            _ => port = d.u16().ok()?,
        }
    }
    Some(match ip {
        IpAddr::V6(v6) => SocketAddr::V6(std::net::SocketAddrV6::new(v6, port, 0, scope)),
        v4 => SocketAddr::new(v4, port),
    })
}

// Reverse-proxy mode (groupcomm-proxy §6.1, issue 16): the second element of Reply-From.

/// A CRI reference `//host:port` (draft-ietf-core-href §5.1: scheme null, the authority,
/// path and the rest left off): what a client of a reverse proxy standing in for the
/// servers turns into Uri-Host and Uri-Port (groupcomm-proxy §6.2). The port is always
/// given, so that the client always includes Uri-Port.
pub fn authority_reference(addr: SocketAddr) -> Vec<u8> {
    let mut b = Vec::with_capacity(24);
    cbor::array(&mut b, 2);
    cbor::null(&mut b);
    match addr {
        SocketAddr::V6(a) if a.scope_id() != 0 => {
            cbor::array(&mut b, 3);
            cbor::bytes(&mut b, &a.ip().octets());
            cbor::text(&mut b, &a.scope_id().to_string());
        }
        SocketAddr::V6(a) => {
            cbor::array(&mut b, 2);
            cbor::bytes(&mut b, &a.ip().octets());
        }
        SocketAddr::V4(a) => {
            cbor::array(&mut b, 2);
            cbor::bytes(&mut b, &a.ip().octets());
        }
    }
    cbor::int(&mut b, addr.port() as i64);
    b
}

/// The two elements of a Reply-From value: the CRI and, if present, the CRI reference
/// after it (groupcomm-proxy §3, §6.1), as the addresses [`parse_reply_from`] and
/// [`authority_reference`] write; `None` for anything else.
pub fn parse_reply_from_pair(v: &[u8]) -> Option<(SocketAddr, Option<SocketAddr>)> {
    let mut d = minicbor::Decoder::new(v);
    d.skip().ok()?;
    let first_len = d.position();
    let first = parse_reply_from(&v[..first_len])?;
    if first_len == v.len() {
        return Some((first, None));
    }
    let rest = &v[first_len..];
    let mut d = minicbor::Decoder::new(rest);
    if d.array().ok()?? != 2 || d.datatype().ok()? != minicbor::data::Type::Null {
        return None;
    }
    d.null().ok()?;
    let at = d.position();
    // The authority has the shape of a CRI's: read it as one with the coap scheme.
    let mut cri = Vec::with_capacity(rest.len());
    cbor::array(&mut cri, 2);
    cbor::int(&mut cri, SCHEME_COAP);
    cri.extend_from_slice(&rest[at..]);
    Some((first, Some(parse_reply_from(&cri)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn href_cri_for_ipv4_and_ipv6() {
        // [-1, [h'c0000201', 5683]]
        let v = reply_from("192.0.2.1:5683".parse().unwrap());
        assert_eq!(hex::encode(&v), "822082 44c0000201 191633".replace(' ', ""));
        assert_eq!(
            parse_reply_from(&v),
            Some("192.0.2.1:5683".parse().unwrap())
        );
        let v6: SocketAddr = "[2001:db8::1]:61616".parse().unwrap();
        let b = reply_from(v6);
        assert_eq!(&b[..4], &[0x82, 0x20, 0x82, 0x50]);
        assert_eq!(parse_reply_from(&b), Some(v6));
        // groupcomm-proxy §3: 5 to 1034 bytes.
        assert!((5..=1034).contains(&v.len()) && (5..=1034).contains(&b.len()));
    }

    #[test]
    fn reply_from_with_a_cri_reference() {
        // groupcomm-proxy §6.1, Appendix A.1: [-1, [P, port]] then [null, [S, port]].
        let p: SocketAddr = "192.0.2.1:5683".parse().unwrap();
        let s: SocketAddr = "10.0.0.7:61616".parse().unwrap();
        let r = authority_reference(s);
        assert_eq!(hex::encode(&r), "82f682440a000007 19f0b0".replace(' ', ""));
        let mut v = reply_from(p);
        v.extend_from_slice(&r);
        assert_eq!(parse_reply_from_pair(&v), Some((p, Some(s))));
        assert_eq!(parse_reply_from_pair(&reply_from(s)), Some((s, None)));
        let v6: SocketAddr = "[fe80::1%3]:5683".parse().unwrap();
        let mut v = reply_from(p);
        v.extend_from_slice(&authority_reference(v6));
        assert_eq!(parse_reply_from_pair(&v), Some((p, Some(v6))));
    }
}
