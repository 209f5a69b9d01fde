//! A zero-copy, validating view of a CoAP datagram (RFC 7252 §3). The signature checker and
//! the forwarding engine read messages through it without building a parsed packet (written
//! by hand for that: no crate offers a borrowed, allocation-free view).

use thiserror::Error;

/// Why a datagram is not a well-formed CoAP message (RFC 7252 §3, §4.2 "message format error").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ViewError {
    /// Fewer than 4 bytes, or fewer than the token length says (RFC 7252 §3).
    #[error("datagram shorter than the 4-byte header")]
    TooShort,
    /// RFC 7252 §3: an unknown version is silently ignored.
    #[error("CoAP version is not 1")]
    Version,
    /// RFC 7252 §3: lengths 9 to 15 are a message format error.
    #[error("token length 9-15 is reserved")]
    TokenLength,
    /// An option's extended delta or length, or its value, runs past the datagram.
    #[error("option runs past the end of the datagram")]
    Truncated,
    /// RFC 7252 §3.1: 15 is reserved except as the payload marker 0xff.
    #[error("option delta or length nibble 15 is reserved")]
    ReservedNibble,
    /// A delta sums past 65535.
    #[error("option number exceeds 65535")]
    OptionNumber,
    /// RFC 7252 §3: a marker followed by a zero-length payload is a format error.
    #[error("payload marker followed by an empty payload")]
    EmptyPayload,
}

/// The parsed frame of a datagram; option values and payload stay in the datagram.
#[derive(Debug, Clone, Copy)]
pub struct MessageView<'a> {
    bytes: &'a [u8],
    token_end: usize,
    options_end: usize,
    payload_start: usize,
}

impl<'a> MessageView<'a> {
    /// Parses and validates the whole datagram, options included.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ViewError> {
        if bytes.len() < 4 {
            return Err(ViewError::TooShort);
        }
        if bytes[0] >> 6 != 1 {
            return Err(ViewError::Version);
        }
        let tkl = (bytes[0] & 0x0f) as usize;
        if tkl > 8 {
            return Err(ViewError::TokenLength);
        }
        let token_end = 4 + tkl;
        if bytes.len() < token_end {
            return Err(ViewError::TooShort);
        }
        let mut it = OptionIter {
            rest: &bytes[token_end..],
            number: 0,
        };
        for opt in &mut it {
            opt?;
        }
        let rest = it.rest;
        let options_end = bytes.len() - rest.len();
        let payload_start = if rest.is_empty() {
            bytes.len()
        } else {
            // The iterator stops on the 0xff marker only.
            if rest.len() == 1 {
                return Err(ViewError::EmptyPayload);
            }
            options_end + 1
        };
        Ok(MessageView {
            bytes,
            token_end,
            options_end,
            payload_start,
        })
    }

    /// The whole datagram.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// Message type: 0 CON, 1 NON, 2 ACK, 3 RST.
    pub fn mtype(&self) -> u8 {
        (self.bytes[0] >> 4) & 0x03
    }
    /// The code as one byte, class in the top 3 bits (RFC 7252 §3, §12.1).
    pub fn code(&self) -> u8 {
        self.bytes[1]
    }
    /// RFC 7252 §3.
    pub fn message_id(&self) -> u16 {
        u16::from_be_bytes([self.bytes[2], self.bytes[3]])
    }
    /// 0 to 8 bytes (RFC 7252 §5.3.1).
    pub fn token(&self) -> &'a [u8] {
        &self.bytes[4..self.token_end]
    }
    /// A code of class 0 other than 0.00 (RFC 7252 §12.1.1).
    pub fn is_request(&self) -> bool {
        let c = self.code();
        c != 0 && c >> 5 == 0
    }
    /// A code of class 2 to 7 (RFC 7252 §12.1.2).
    pub fn is_response(&self) -> bool {
        self.code() >> 5 >= 2
    }
    /// Options in order; the view was validated, so every item is `Ok`.
    pub fn options(&self) -> impl Iterator<Item = (u16, &'a [u8])> + 'a {
        OptionIter {
            rest: &self.bytes[self.token_end..self.options_end],
            number: 0,
        }
        .map_while(Result::ok)
    }
    /// The first value of an option, if present.
    pub fn option(&self, number: u16) -> Option<&'a [u8]> {
        self.options()
            .take_while(|(n, _)| *n <= number)
            .find(|(n, _)| *n == number)
            .map(|(_, v)| v)
    }
    /// Everything after the payload marker; empty without one.
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[self.payload_start..]
    }
}

/// Options as (number, value) pairs in message order.
pub(crate) type OptionList<'a> = Vec<(u16, &'a [u8])>;

/// Splits option bytes followed by an optional payload marker and payload, the layout of
/// a message after its header and of the OSCORE plaintext after its code (RFC 8613 §5.3).
pub fn split_options(bytes: &[u8]) -> Result<(OptionList<'_>, &[u8]), ViewError> {
    let mut it = OptionIter {
        rest: bytes,
        number: 0,
    };
    let mut opts = Vec::with_capacity(8);
    for o in &mut it {
        opts.push(o?);
    }
    let payload = match it.rest {
        [] => &[][..],
        [0xff] => return Err(ViewError::EmptyPayload),
        [_, p @ ..] => p,
    };
    Ok((opts, payload))
}

struct OptionIter<'a> {
    rest: &'a [u8],
    number: u32,
}

impl<'a> Iterator for OptionIter<'a> {
    type Item = Result<(u16, &'a [u8]), ViewError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (&first, mut rest) = self.rest.split_first()?;
        if first == 0xff {
            return None;
        }
        let item = (|| {
            let delta = read_ext(first >> 4, &mut rest)?;
            let len = read_ext(first & 0x0f, &mut rest)? as usize;
            let number = self.number + delta;
            if number > u16::MAX as u32 {
                return Err(ViewError::OptionNumber);
            }
            if rest.len() < len {
                return Err(ViewError::Truncated);
            }
            let (value, r) = rest.split_at(len);
            Ok((number, value, r))
        })();
        match item {
            Ok((number, value, r)) => {
                self.number = number;
                self.rest = r;
                Some(Ok((number as u16, value)))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

/// Reads an extended option delta or length for nibble `nib` (RFC 7252 §3.1).
fn read_ext(nib: u8, rest: &mut &[u8]) -> Result<u32, ViewError> {
    match nib {
        0..=12 => Ok(nib as u32),
        13 => {
            let (&b, r) = rest.split_first().ok_or(ViewError::Truncated)?;
            *rest = r;
            Ok(13 + b as u32)
        }
        14 => {
            if rest.len() < 2 {
                return Err(ViewError::Truncated);
            }
            let v = u16::from_be_bytes([rest[0], rest[1]]) as u32;
            *rest = &rest[2..];
            Ok(269 + v)
        }
        _ => Err(ViewError::ReservedNibble),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_group_oscore_request_vector() {
        // M1 protected_coap of the Group OSCORE vectors: NON POST, token 4a, OSCORE option.
        let b = hex::decode("510212344a9739050344616c25ffd0bd").unwrap();
        let v = MessageView::parse(&b).unwrap();
        assert_eq!(v.mtype(), 1);
        assert_eq!(v.code(), 0x02);
        assert_eq!(v.message_id(), 0x1234);
        assert_eq!(v.token(), &[0x4a]);
        assert_eq!(v.option(9).unwrap(), hex::decode("39050344616c25").unwrap());
        assert_eq!(v.payload(), &[0xd0, 0xbd]);
        assert!(v.is_request());
    }

    #[test]
    fn rfc7252_s3_format_errors() {
        assert_eq!(
            MessageView::parse(&[0x40, 1, 0]).unwrap_err(),
            ViewError::TooShort
        );
        assert_eq!(
            MessageView::parse(&[0x80, 1, 0, 0]).unwrap_err(),
            ViewError::Version
        );
        assert_eq!(
            MessageView::parse(&[0x49, 1, 0, 0]).unwrap_err(),
            ViewError::TokenLength
        );
        assert_eq!(
            MessageView::parse(&[0x40, 1, 0, 0, 0xff]).unwrap_err(),
            ViewError::EmptyPayload
        );
        assert_eq!(
            MessageView::parse(&[0x40, 1, 0, 0, 0xf1, 0]).unwrap_err(),
            ViewError::ReservedNibble
        );
        assert_eq!(
            MessageView::parse(&[0x40, 1, 0, 0, 0x13, 0]).unwrap_err(),
            ViewError::Truncated
        );
    }
}
