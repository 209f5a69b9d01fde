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
}
