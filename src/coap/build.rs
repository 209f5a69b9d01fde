//! Serializing CoAP messages (RFC 7252 §3) from parts, for the paths that build messages
//! from borrowed pieces of others into reused buffers, without a parsed packet in between.

use super::options::encode_options;

/// Confirmable (RFC 7252 §4.2).
pub const CON: u8 = 0;
/// Non-confirmable (RFC 7252 §4.3).
pub const NON: u8 = 1;
/// Acknowledgement (RFC 7252 §4.2).
pub const ACK: u8 = 2;
/// Reset (RFC 7252 §4.2, §4.3).
pub const RST: u8 = 3;

/// Response codes the proxy sends (RFC 7252 §12.1.2, RFC 8516, RFC 8768).
pub mod code {
    /// 0.00, an empty message (RFC 7252 §4.1).
    pub const EMPTY: u8 = 0x00;
    /// 0.01 (RFC 7252 §5.8.1).
    pub const GET: u8 = 0x01;
    /// 0.02 (RFC 7252 §5.8.2).
    pub const POST: u8 = 0x02;
    /// 2.04 (RFC 7252 §5.9.1.4).
    pub const CHANGED: u8 = 0x44;
    /// 2.05 (RFC 7252 §5.9.1.5).
    pub const CONTENT: u8 = 0x45;
    /// 4.00 (RFC 7252 §5.9.2.1).
    pub const BAD_REQUEST: u8 = 0x80;
    /// 4.01 (RFC 7252 §5.9.2.2); with Echo, a freshness challenge (RFC 9175 §2.3).
    pub const UNAUTHORIZED: u8 = 0x81;
    /// 4.02 (RFC 7252 §5.9.2.3).
    pub const BAD_OPTION: u8 = 0x82;
    /// 4.04 (RFC 7252 §5.9.2.5).
    pub const NOT_FOUND: u8 = 0x84;
    pub(crate) const METHOD_NOT_ALLOWED: u8 = 0x85;
    /// 4.29 (RFC 8516).
    pub const TOO_MANY_REQUESTS: u8 = 0x9d;
    /// 5.01 (RFC 7252 §5.9.3.2).
    pub const NOT_IMPLEMENTED: u8 = 0xa1;
    /// 5.02 (RFC 7252 §5.9.3.3).
    pub const BAD_GATEWAY: u8 = 0xa2;
    /// 5.03 (RFC 7252 §5.9.3.4).
    pub const SERVICE_UNAVAILABLE: u8 = 0xa3;
    /// 5.04 (RFC 7252 §5.9.3.5).
    pub const GATEWAY_TIMEOUT: u8 = 0xa4;
    /// 5.05 (RFC 7252 §5.9.3.6).
    pub const PROXYING_NOT_SUPPORTED: u8 = 0xa5;
    /// 5.08 (RFC 8768 §3, §6.1).
    pub const HOP_LIMIT_REACHED: u8 = 0xa8;

    /// "c.dd" form for logs.
    pub(crate) fn dotted(code: u8) -> String {
        format!("{}.{:02}", code >> 5, code & 0x1f)
    }
}

/// Serializes a message. `opts` need not be sorted; equal numbers keep their order.
pub fn encode(
    mtype: u8,
    code: u8,
    mid: u16,
    token: &[u8],
    opts: &mut [(u16, &[u8])],
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(&mut out, mtype, code, mid, token, opts, payload);
    out
}

/// [`encode`] into `out` (cleared first), so that a buffer can be used again.
pub fn encode_into(
    out: &mut Vec<u8>,
    mtype: u8,
    code: u8,
    mid: u16,
    token: &[u8],
    opts: &mut [(u16, &[u8])],
    payload: &[u8],
) {
    debug_assert!(token.len() <= 8);
    // Usually sorted already (copied from a message in order, additions last).
    if !opts.is_sorted_by_key(|(n, _)| *n) {
        opts.sort_by_key(|(n, _)| *n);
    }
    let size =
        4 + token.len() + payload.len() + 1 + opts.iter().map(|(_, v)| v.len() + 3).sum::<usize>();
    out.clear();
    out.reserve(size);
    out.push(0x40 | (mtype << 4) | token.len() as u8);
    out.push(code);
    out.extend_from_slice(&mid.to_be_bytes());
    out.extend_from_slice(token);
    encode_options(out, opts.iter().copied());
    if !payload.is_empty() {
        out.push(0xff);
        out.extend_from_slice(payload);
    }
}

/// An empty ACK or RST (RFC 7252 §4.2, §4.3).
pub fn empty(mtype: u8, mid: u16) -> Vec<u8> {
    vec![0x40 | (mtype << 4), 0, (mid >> 8) as u8, mid as u8]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coap::MessageView;

    #[test]
    fn encode_sorts_options_and_marks_payload() {
        let m = encode(
            NON,
            code::CONTENT,
            7,
            &[1, 2],
            &mut [(12, &[0][..]), (2, &[])],
            b"x",
        );
        let v = MessageView::parse(&m).unwrap();
        assert_eq!(v.mtype(), NON);
        assert_eq!(v.token(), &[1, 2]);
        assert_eq!(v.options().map(|(n, _)| n).collect::<Vec<_>>(), vec![2, 12]);
        assert_eq!(v.payload(), b"x");
        assert_eq!(empty(ACK, 0x1234), vec![0x60, 0, 0x12, 0x34]);
        assert_eq!(code::dotted(code::GATEWAY_TIMEOUT), "5.04");
    }
}
