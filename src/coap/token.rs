//! A CoAP token held by value: at most 8 bytes (RFC 7252 §5.3.1), so that the tables
//! keyed by a client's token need no allocation per request.

/// A token of 0 to 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Token {
    len: u8,
    bytes: [u8; 8],
}

impl Token {
    /// `None` for more than 8 bytes (a message parsed by `MessageView` never has them).
    pub(crate) fn new(t: &[u8]) -> Option<Token> {
        let mut bytes = [0; 8];
        bytes.get_mut(..t.len())?.copy_from_slice(t);
        Some(Token {
            len: t.len() as u8,
            bytes,
        })
    }

    /// The token's bytes, 0 to 8 of them.
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::Token;

    #[test]
    fn rfc7252_s5_3_1_lengths_0_to_8() {
        for n in 0..=8 {
            let t: Vec<u8> = (1..=n).collect();
            assert_eq!(Token::new(&t).unwrap().as_slice(), &t[..]);
        }
        assert_eq!(Token::new(&[0; 9]), None);
        // Leading zero bytes are significant: [0] is not the empty token.
        assert_ne!(Token::new(&[0]), Token::new(&[]));
    }
}
