//! The OSCORE option value (RFC 8613 §6.1) with the Group Flag of RFC 10021 §4.1.
//!
//! Flag byte: 0x80 extension (reserved here), 0x40 reserved, 0x20 Group Flag, 0x10 h
//! (kid context present), 0x08 k (kid present), 0x07 n (Partial IV length, 6 and 7
//! reserved). Then the Partial IV, a length byte and the kid context, and the kid as the
//! rest of the value.

use super::error::OptionError;

pub(crate) const FLAG_RESERVED: u8 = 0xc0;
pub(crate) const FLAG_GROUP: u8 = 0x20;
pub(crate) const FLAG_KID_CONTEXT: u8 = 0x10;
pub(crate) const FLAG_KID: u8 = 0x08;
pub(crate) const MAX_PIV_LEN: usize = 5;

/// A borrowed, parsed OSCORE option value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OscoreOption<'a> {
    /// Group Flag: 1 = group mode, 0 = pairwise mode or plain OSCORE (RFC 10021 §4.1).
    pub group: bool,
    /// The Partial IV, 1 to 5 bytes when present (RFC 8613 §6.1).
    pub piv: Option<&'a [u8]>,
    /// The kid context: the Gid in Group OSCORE (RFC 10021 §3.2).
    pub kid_context: Option<&'a [u8]>,
    /// The kid: the sender's Sender ID.
    pub kid: Option<&'a [u8]>,
}

impl<'a> OscoreOption<'a> {
    /// Parses an option value; the empty value has every flag zero.
    pub fn parse(value: &'a [u8]) -> Result<Self, OptionError> {
        let Some((&flags, mut rest)) = value.split_first() else {
            return Ok(Self::default());
        };
        if flags & FLAG_RESERVED != 0 {
            return Err(OptionError::ReservedBits(flags & FLAG_RESERVED));
        }
        if flags == 0 {
            return Err(OptionError::NonMinimal);
        }
        let n = (flags & 0x07) as usize;
        if n > MAX_PIV_LEN {
            return Err(OptionError::PivLength(n as u8));
        }
        if rest.len() < n {
            return Err(OptionError::Truncated);
        }
        let piv = if n > 0 {
            let (p, r) = rest.split_at(n);
            rest = r;
            Some(p)
        } else {
            None
        };
        let kid_context = if flags & FLAG_KID_CONTEXT != 0 {
            let (&s, r) = rest.split_first().ok_or(OptionError::Truncated)?;
            if r.len() < s as usize {
                return Err(OptionError::Truncated);
            }
            let (c, r) = r.split_at(s as usize);
            rest = r;
            Some(c)
        } else {
            None
        };
        let kid = if flags & FLAG_KID != 0 {
            Some(rest)
        } else if rest.is_empty() {
            None
        } else {
            return Err(OptionError::TrailingBytes);
        };
        Ok(OscoreOption {
            group: flags & FLAG_GROUP != 0,
            piv,
            kid_context,
            kid,
        })
    }

    /// Appends the encoded value. A PIV must already be in its minimal form (see
    /// [`piv_bytes`]); the kid context must be at most 255 bytes.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let n = self.piv.map_or(0, |p| p.len()) as u8;
        let mut flags = n;
        if self.group {
            flags |= FLAG_GROUP;
        }
        if self.kid_context.is_some() {
            flags |= FLAG_KID_CONTEXT;
        }
        if self.kid.is_some() {
            flags |= FLAG_KID;
        }
        if flags == 0 {
            return;
        }
        out.push(flags);
        if let Some(p) = self.piv {
            out.extend_from_slice(p);
        }
        if let Some(c) = self.kid_context {
            debug_assert!(c.len() <= 255, "contexts refuse longer ID Contexts");
            out.push(c.len() as u8);
            out.extend_from_slice(c);
        }
        if let Some(k) = self.kid {
            out.extend_from_slice(k);
        }
    }

    /// The option value; the inverse of [`parse`](Self::parse).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16);
        self.encode_into(&mut v);
        v
    }
}

/// Minimal big-endian encoding of a sequence number as Partial IV (RFC 8613 §6.1: leading
/// zero bytes removed, but 0 is encoded as one zero byte). Returns the buffer and length.
pub fn piv_bytes(seq: u64) -> ([u8; 8], usize) {
    let b = seq.to_be_bytes();
    let skip = b.iter().take(7).take_while(|&&x| x == 0).count();
    let mut out = [0u8; 8];
    out[..8 - skip].copy_from_slice(&b[skip..]);
    (out, 8 - skip)
}

/// Reads a Partial IV as a number.
pub(crate) fn piv_value(piv: &[u8]) -> u64 {
    piv.iter().fold(0u64, |acc, &b| (acc << 8) | b as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 10021 §4.3.1 and §4.3.2 option values.
    #[test]
    fn s4_3_examples() {
        let req = OscoreOption {
            group: true,
            piv: Some(&[5]),
            kid_context: Some(b"Dal"),
            kid: Some(&[0x25]),
        };
        assert_eq!(hex::encode(req.encode()), "39050344616c25");
        assert_eq!(OscoreOption::parse(&req.encode()).unwrap(), req);
        let resp = OscoreOption {
            group: true,
            kid: Some(&[0x52]),
            ..Default::default()
        };
        assert_eq!(hex::encode(resp.encode()), "2852");
        let preq = OscoreOption {
            group: false,
            ..req
        };
        assert_eq!(hex::encode(preq.encode()), "19050344616c25");
        // Pairwise response without PIV and kid: flag byte 0x00, sent as an empty option.
        assert!(OscoreOption::default().encode().is_empty());
        assert_eq!(OscoreOption::parse(&[]).unwrap(), OscoreOption::default());
    }

    #[test]
    fn rfc8613_s6_1_malformed() {
        assert_eq!(
            OscoreOption::parse(&[0x80]).unwrap_err(),
            OptionError::ReservedBits(0x80)
        );
        assert_eq!(
            OscoreOption::parse(&[0x06, 1, 2, 3, 4, 5, 6]).unwrap_err(),
            OptionError::PivLength(6)
        );
        assert_eq!(
            OscoreOption::parse(&[0x03, 1]).unwrap_err(),
            OptionError::Truncated
        );
        assert_eq!(
            OscoreOption::parse(&[0x11, 1, 4, 1]).unwrap_err(),
            OptionError::Truncated
        );
        assert_eq!(
            OscoreOption::parse(&[0x01, 1, 9]).unwrap_err(),
            OptionError::TrailingBytes
        );
        assert_eq!(
            OscoreOption::parse(&[0x00]).unwrap_err(),
            OptionError::NonMinimal
        );
        // An empty kid is legal (RFC 8613 Appendix C.1.2 has the empty Sender ID).
        let o = OscoreOption::parse(&[0x09, 0x14]).unwrap();
        assert_eq!(o.kid, Some(&[][..]));
    }

    #[test]
    fn piv_minimal_encoding() {
        let (b, n) = piv_bytes(0);
        assert_eq!(&b[..n], &[0]);
        let (b, n) = piv_bytes(0x14);
        assert_eq!(&b[..n], &[0x14]);
        let (b, n) = piv_bytes(0x01_0203_0405);
        assert_eq!(&b[..n], &[1, 2, 3, 4, 5]);
        assert_eq!(piv_value(&[1, 2, 3, 4, 5]), 0x01_0203_0405);
    }
}
