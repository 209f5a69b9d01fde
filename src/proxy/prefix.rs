//! Address prefixes for allow-lists (`10.0.0.0/8`, `2001:db8::/32`, a bare address).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IPv4 or IPv6 prefix; an IPv4 prefix also matches IPv4-mapped IPv6 addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(p), IpAddr::V4(a)) => mask_eq(&p.octets(), &a.octets(), self.len),
            (IpAddr::V6(p), IpAddr::V6(a)) => mask_eq(&p.octets(), &a.octets(), self.len),
            _ => false,
        }
    }
}

fn mask_eq(p: &[u8], a: &[u8], len: u8) -> bool {
    let full = (len / 8) as usize;
    if p[..full] != a[..full] {
        return false;
    }
    let rest = len % 8;
    rest == 0 || {
        let m = 0xffu8 << (8 - rest);
        p[full] & m == a[full] & m
    }
}

impl FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match l {
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|&n| n <= max)
                .ok_or_else(|| format!("prefix length {l:?} is not 0..={max}"))?,
            None => max,
        };
        Ok(Prefix { addr, len })
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_by_bits() {
        // A /15 spans two /16s: 10.2.x and 10.3.x, not 10.1.x.
        let p: Prefix = "10.2.0.0/15".parse().unwrap();
        assert!(!p.contains("10.1.255.1".parse().unwrap()));
        assert!(p.contains("10.3.2.3".parse().unwrap()));
        assert!(p.contains("::ffff:10.2.2.3".parse().unwrap()));
        let v6: Prefix = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("10.1.2.3".parse().unwrap()));
        let any: Prefix = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains("192.0.2.1".parse().unwrap()));
        assert!("1.2.3.4/33".parse::<Prefix>().is_err());
        assert_eq!("::1".parse::<Prefix>().unwrap().to_string(), "::1/128");
    }
}
