//! The proxy's own tokens (RFC 10020 §3.1.5: never reused within MIN_TOKEN_REUSE_TIME;
//! RFC 9175 §4 and RFC 7252 §5.3.1: not guessable by an off-path attacker).
//!
//! A counter is encrypted with Speck64/128 under a key drawn at start: a keyed
//! pseudorandom permutation of 64-bit values. Being a permutation, tokens never repeat
//! while the counter runs (2^64 issues); being keyed, one observed token (every device of a
//! group sees them) says nothing about the next. Decrypting a token that comes back gives
//! the count it was issued at, which tells a late response (its exchange ended) from one
//! with a token the proxy never gave out, with no table of freed tokens.

use speck_cipher::Speck64_128;
use speck_cipher::cipher::{Array, BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};

pub(super) struct TokenSpace {
    issued: u64,
    /// This thread's part of the counter space, in the counter's top 8 bits (0 for a
    /// single thread: the counter as before). Threads share the key, so their tokens are
    /// images of disjoint counters under one permutation: never equal (`[proxy] threads`).
    part: u64,
    cipher: Speck64_128,
}

/// Counter bits below a thread's part: 2^56 tokens per thread.
const PART_SHIFT: u32 = 56;

impl std::fmt::Debug for TokenSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs and panics.
        f.debug_struct("TokenSpace")
            .field("issued", &self.issued)
            .finish_non_exhaustive()
    }
}

impl TokenSpace {
    #[cfg(test)]
    fn new(key: [u8; 16]) -> Self {
        Self::part(key, 0)
    }

    /// The token space of thread `thread` (below 256) of several sharing `key`.
    pub(super) fn part(key: [u8; 16], thread: u16) -> Self {
        TokenSpace {
            issued: 0,
            part: u64::from(thread.min(255)) << PART_SHIFT,
            cipher: Speck64_128::new(&Array::from(key)),
        }
    }

    fn encrypt(&self, n: u64) -> u64 {
        let mut block = Array::from(n.to_be_bytes());
        self.cipher.encrypt_block(&mut block);
        u64::from_be_bytes(block.into())
    }

    fn decrypt(&self, token: u64) -> u64 {
        let mut block = Array::from(token.to_be_bytes());
        self.cipher.decrypt_block(&mut block);
        u64::from_be_bytes(block.into())
    }

    /// A token never issued before.
    pub(super) fn issue(&mut self) -> u64 {
        // 2^56 issues per thread: not reached at any rate a proxy runs at.
        self.issued = (self.issued + 1) & ((1 << PART_SHIFT) - 1);
        self.encrypt(self.part | self.issued)
    }

    /// Whether `token` is one of the last `window` issued (by this thread).
    pub(super) fn recent(&self, token: u64, window: usize) -> bool {
        let d = self.decrypt(token);
        let n = d & ((1 << PART_SHIFT) - 1);
        d & !((1 << PART_SHIFT) - 1) == self.part
            && n != 0
            && n <= self.issued
            && self.issued - n < window as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 16] = *b"0123456789abcdef";

    #[test]
    fn rfc10020_s3_1_5_tokens_unique_and_recent_ones_recognised() {
        let mut t = TokenSpace::new(KEY);
        let issued: Vec<u64> = (0..1000).map(|_| t.issue()).collect();
        let mut sorted = issued.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), issued.len());
        assert!(t.recent(issued[999], 1) && !t.recent(issued[998], 1));
        assert!(t.recent(issued[0], 1000) && !t.recent(issued[0], 999));
        // Never issued: not recent, whatever the window.
        assert!(!t.recent(t.encrypt(5000), usize::MAX));
        assert!(!t.recent(t.encrypt(0), usize::MAX));
    }

    /// RFC 10020 §3.1.5 across forwarding threads: threads sharing the key issue from
    /// disjoint parts of the counter, so no token of one equals one of another, and each
    /// recognises only its own as recent (a late response comes back to the thread that
    /// sent the request, on its own egress socket).
    #[test]
    fn rfc10020_s3_1_5_threads_never_issue_the_same_token() {
        let (mut a, mut b) = (TokenSpace::part(KEY, 0), TokenSpace::part(KEY, 1));
        let xs: Vec<u64> = (0..20_000).map(|_| a.issue()).collect();
        let ys: Vec<u64> = (0..20_000).map(|_| b.issue()).collect();
        let all: std::collections::HashSet<u64> = xs.iter().chain(&ys).copied().collect();
        assert_eq!(all.len(), 40_000);
        assert!(a.recent(xs[19_999], 1) && !a.recent(ys[19_999], usize::MAX));
        assert!(b.recent(ys[0], 20_000) && !b.recent(xs[0], usize::MAX));
        // Thread 0 of several issues what a single thread does.
        let mut single = TokenSpace::new(KEY);
        assert_eq!(single.issue(), xs[0]);
    }

    /// RFC 9175 §4: a token seen on the wire does not predict the next one. With the
    /// old public mixing function, inverting one token and adding one gave the next; here
    /// consecutive tokens differ in about half their bits, and another key gives another
    /// sequence altogether.
    #[test]
    fn rfc9175_s4_tokens_do_not_predict_each_other() {
        let mut a = TokenSpace::new(KEY);
        let mut b = TokenSpace::new(*b"fedcba9876543210");
        let (xs, ys): (Vec<u64>, Vec<u64>) = (0..4096).map(|_| (a.issue(), b.issue())).unzip();
        assert!(xs.iter().zip(&ys).all(|(x, y)| x != y));
        let flips: u32 = xs.windows(2).map(|w| (w[0] ^ w[1]).count_ones()).sum();
        let mean = flips as f64 / (xs.len() - 1) as f64;
        assert!((28.0..36.0).contains(&mean), "mean bit flips {mean}");
        // Neither the difference nor the xor of consecutive tokens is constant.
        let d: std::collections::HashSet<u64> =
            xs.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
        assert!(d.len() > 4000);
    }
}
