//! Option numbers (RFC 7252 §12.2 and later registrations) and how OSCORE treats each one
//! (RFC 8613 §4.1, RFC 8768 as updated by oscore-capable-proxies §3, groupcomm-proxy §2-§3, §7).

pub(crate) const IF_MATCH: u16 = 1;
/// Uri-Host (RFC 7252 §5.10.1).
pub const URI_HOST: u16 = 3;
pub(crate) const ETAG: u16 = 4;
pub(crate) const IF_NONE_MATCH: u16 = 5;
pub(crate) const OBSERVE: u16 = 6;
/// Uri-Port (RFC 7252 §5.10.1).
pub const URI_PORT: u16 = 7;
pub(crate) const LOCATION_PATH: u16 = 8;
/// OSCORE (RFC 8613 §2).
pub const OSCORE: u16 = 9;
/// Uri-Path, one per segment (RFC 7252 §5.10.1).
pub const URI_PATH: u16 = 11;
/// Content-Format (RFC 7252 §5.10.3).
pub const CONTENT_FORMAT: u16 = 12;
/// Max-Age, in seconds (RFC 7252 §5.10.5).
pub const MAX_AGE: u16 = 14;
/// Uri-Query, one per parameter (RFC 7252 §5.10.1).
pub const URI_QUERY: u16 = 15;
/// Hop-Limit (RFC 8768 §3).
pub const HOP_LIMIT: u16 = 16;
pub(crate) const ACCEPT: u16 = 17;
pub(crate) const LOCATION_QUERY: u16 = 20;
pub(crate) const BLOCK2: u16 = 23;
pub(crate) const BLOCK1: u16 = 27;
pub(crate) const SIZE2: u16 = 28;
/// Proxy-Uri (RFC 7252 §5.10.2).
pub const PROXY_URI: u16 = 35;
/// Proxy-Scheme (RFC 7252 §5.10.2).
pub const PROXY_SCHEME: u16 = 39;
pub(crate) const SIZE1: u16 = 60;
/// Echo (RFC 9175 §2.2.1).
pub const ECHO: u16 = 252;
pub(crate) const NO_RESPONSE: u16 = 258;
pub(crate) const REQUEST_TAG: u16 = 292;

/// One option groxy knows: its number and where OSCORE puts it (RFC 8613 §4.1, with
/// Hop-Limit per RFC 8768 and oscore-capable-proxies §3). Whether it is critical or
/// unsafe to forward follows from the number itself ([`is_critical`], [`is_unsafe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Known {
    pub(crate) number: u16,
    pub(crate) class: OptionClass,
}

const fn known(number: u16, class: OptionClass) -> Known {
    Known { number, class }
}

/// The options groxy understands (RFC 7252 §5.10, RFC 7641, RFC 7959, RFC 8613,
/// RFC 8768, RFC 9175, RFC 7967) besides the configured groupcomm-proxy ones, in
/// number order: the one list the engine (unknown critical or unsafe options get 4.02;
/// a response it must protect may carry only these), OSCORE (the class) and the
/// configuration check (a groupcomm-proxy number may not be one of these) consult.
pub(crate) const KNOWN: [Known; 24] = {
    use OptionClass::{Both, E, U};
    [
        known(IF_MATCH, E),
        known(URI_HOST, U),
        known(ETAG, E),
        known(IF_NONE_MATCH, E),
        known(OBSERVE, Both),
        known(URI_PORT, U),
        known(LOCATION_PATH, E),
        known(OSCORE, U),
        known(URI_PATH, E),
        known(CONTENT_FORMAT, E),
        known(MAX_AGE, E),
        known(URI_QUERY, E),
        known(HOP_LIMIT, U),
        known(ACCEPT, E),
        known(LOCATION_QUERY, E),
        known(BLOCK2, E),
        known(BLOCK1, E),
        known(SIZE2, E),
        known(PROXY_URI, U),
        known(PROXY_SCHEME, U),
        known(SIZE1, E),
        known(ECHO, E),
        known(NO_RESPONSE, Both),
        known(REQUEST_TAG, E),
    ]
};

/// The entry of a known option.
pub(crate) fn lookup(number: u16) -> Option<&'static Known> {
    KNOWN
        .binary_search_by_key(&number, |k| k.number)
        .ok()
        .map(|i| &KNOWN[i])
}

/// Whether groxy knows option `number` (besides the configured groupcomm-proxy ones).
pub(crate) fn is_known(number: u16) -> bool {
    lookup(number).is_some()
}

// Default numbers of the groupcomm-proxy options: IANA suggestions (§11.1), so the proxy
// configuration can change them.
/// Multicast-Timeout (groupcomm-proxy §2), suggested number.
pub const MULTICAST_TIMEOUT_DEFAULT: u16 = 2;
pub(crate) const GROUP_ETAG_DEFAULT: u16 = 24;
/// Reply-From (groupcomm-proxy §3), suggested number.
pub const REPLY_FROM_DEFAULT: u16 = 248;

/// Where OSCORE puts an option (RFC 8613 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionClass {
    /// Encrypted and integrity protected: only inside the COSE plaintext.
    E,
    /// Unprotected: only in the outer message, visible to proxies.
    U,
    /// Both an inner (class E) and an outer copy, with their own rules.
    Both,
}

/// The OSCORE class of an option number. Unknown options are class E (RFC 8613 §4.1:
/// "Options that are unknown ... shall be processed as class E"), except the
/// groupcomm-proxy options, which a proxy must see and which that draft makes class U;
/// their numbers are passed in because they are configurable.
pub fn oscore_class(number: u16, proxy_options: &[u16]) -> OptionClass {
    match lookup(number) {
        Some(k) => k.class,
        None if proxy_options.contains(&number) => OptionClass::U,
        None => OptionClass::E,
    }
}

/// Critical options have an odd number (RFC 7252 §5.4.6).
pub(crate) fn is_critical(number: u16) -> bool {
    number & 1 == 1
}

/// Unsafe-to-forward options have bit 1 set (RFC 7252 §5.4.6).
pub(crate) fn is_unsafe(number: u16) -> bool {
    number & 2 == 2
}

/// Appends options in RFC 7252 §3.1 delta encoding. `opts` must be sorted by number
/// (equal numbers keep their order, as repeated options must).
pub fn encode_options<'a, I>(buf: &mut Vec<u8>, opts: I)
where
    I: IntoIterator<Item = (u16, &'a [u8])>,
{
    let mut last = 0u16;
    for (number, value) in opts {
        debug_assert!(number >= last, "options must be sorted");
        let delta = number - last;
        last = number;
        let (dn, dext) = nibble(delta as usize);
        let (ln, lext) = nibble(value.len());
        buf.push((dn << 4) | ln);
        ext(buf, dn, dext);
        ext(buf, ln, lext);
        buf.extend_from_slice(value);
    }
}

fn nibble(v: usize) -> (u8, usize) {
    match v {
        0..=12 => (v as u8, 0),
        13..=268 => (13, v - 13),
        _ => (14, v - 269),
    }
}

fn ext(buf: &mut Vec<u8>, n: u8, e: usize) {
    match n {
        13 => buf.push(e as u8),
        14 => buf.extend_from_slice(&(e as u16).to_be_bytes()),
        _ => {}
    }
}

/// Encodes an unsigned integer option value in the shortest form (RFC 7252 §3.2).
pub fn uint_value(v: u32) -> Vec<u8> {
    let b = v.to_be_bytes();
    let skip = b.iter().take_while(|&&x| x == 0).count();
    b[skip..].to_vec()
}

/// Reads an unsigned integer option value of at most 4 bytes.
pub fn read_uint(v: &[u8]) -> Option<u32> {
    if v.len() > 4 {
        return None;
    }
    Some(v.iter().fold(0u32, |acc, &x| (acc << 8) | x as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one table is in number order (it is binary searched), each number once, and
    /// gives RFC 8613 §4.1's classes: Uri-Host, Uri-Port, OSCORE, Proxy-Uri, Proxy-Scheme
    /// and Hop-Limit (RFC 8768, oscore-capable-proxies §3) outer only, Observe and
    /// No-Response both, the rest inner; an unknown option is inner unless it is one of
    /// the configured groupcomm-proxy options.
    #[test]
    fn rfc8613_s4_1_one_table_of_known_options() {
        assert!(KNOWN.windows(2).all(|w| w[0].number < w[1].number));
        let outer: Vec<u16> = KNOWN
            .iter()
            .filter(|k| k.class == OptionClass::U)
            .map(|k| k.number)
            .collect();
        assert_eq!(
            outer,
            [
                URI_HOST,
                URI_PORT,
                OSCORE,
                HOP_LIMIT,
                PROXY_URI,
                PROXY_SCHEME
            ]
        );
        assert_eq!(oscore_class(OBSERVE, &[]), OptionClass::Both);
        assert_eq!(oscore_class(NO_RESPONSE, &[]), OptionClass::Both);
        assert_eq!(oscore_class(URI_PATH, &[]), OptionClass::E);
        assert_eq!(oscore_class(65000, &[]), OptionClass::E);
        assert_eq!(oscore_class(2, &[2, 24, 248]), OptionClass::U);
        assert!(KNOWN.iter().all(|k| is_known(k.number)));
        assert!(!is_known(2) && !is_known(65000));
    }

    #[test]
    fn rfc8613_s4_1_classes() {
        assert_eq!(oscore_class(URI_PATH, &[]), OptionClass::E);
        assert_eq!(oscore_class(URI_HOST, &[]), OptionClass::U);
        assert_eq!(oscore_class(PROXY_SCHEME, &[]), OptionClass::U);
        assert_eq!(oscore_class(OBSERVE, &[]), OptionClass::Both);
        // Unknown options are class E unless configured as groupcomm-proxy options.
        assert_eq!(oscore_class(248, &[]), OptionClass::E);
        assert_eq!(oscore_class(248, &[2, 24, 248]), OptionClass::U);
    }

    #[test]
    fn rfc7252_s3_1_extended_delta_and_length() {
        let long = [0xaau8; 300];
        let mut b = Vec::new();
        encode_options(
            &mut b,
            [
                (11u16, &b"tv1"[..]),
                (11, &b""[..]),
                (60, &long[..13]),
                (1000, &long[..]),
            ],
        );
        // 11 "tv1"; repeat with delta 0; delta 49 = 13+36, len 13 = 13+0; delta 940 = 14 (671), len 300 = 14 (31)
        assert_eq!(&b[..5], &[0xb3, b't', b'v', b'1', 0x00]);
        assert_eq!(&b[5..8], &[0xdd, 36, 0]);
        let at = 8 + 13;
        assert_eq!(&b[at..at + 5], &[0xee, 0x02, 0x9f, 0x00, 0x1f]);
        assert_eq!(b.len(), at + 5 + 300);
    }

    #[test]
    fn uint_roundtrip() {
        for v in [0u32, 1, 255, 256, 65535, 1 << 24, u32::MAX] {
            assert_eq!(read_uint(&uint_value(v)), Some(v));
        }
        assert!(uint_value(0).is_empty());
        assert_eq!(read_uint(&[1, 2, 3, 4, 5]), None);
    }
}
