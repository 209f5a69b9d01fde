//! The proxy's own tokens (RFC 10020 §3.1.5: never reused within MIN_TOKEN_REUSE_TIME):
//! a counter run through a keyed bijection of u64, so that tokens never repeat, are not
//! sequential on the wire, and a token that comes back can be mapped to the count it was
//! issued at. That tells a late response (its exchange ended) from one with a token the
//! proxy never gave out, with no table of freed tokens.

#[derive(Debug)]
pub(super) struct TokenSpace {
    issued: u64,
    key: u64,
}

const M1: u64 = 0x7fb5_d329_728e_a185;
const M2: u64 = 0x81da_def4_bc2d_d44d;

/// The inverse of an odd number modulo 2^64 (Newton's iteration: each step doubles the
/// correct low bits, from 3).
const fn inverse(m: u64) -> u64 {
    let mut x = m;
    let mut i = 0;
    while i < 5 {
        x = x.wrapping_mul(2u64.wrapping_sub(m.wrapping_mul(x)));
        i += 1;
    }
    x
}
const M1_INV: u64 = inverse(M1);
const M2_INV: u64 = inverse(M2);

fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 31)).wrapping_mul(M1);
    x = (x ^ (x >> 27)).wrapping_mul(M2);
    x ^ (x >> 33)
}

/// Undoes `x ^= x >> s`: applying it again with doubled shifts recovers the high bits
/// first and the rest from them.
fn unshift(mut x: u64, s: u32) -> u64 {
    let mut k = s;
    while k < 64 {
        x ^= x >> k;
        k *= 2;
    }
    x
}

fn unmix(mut x: u64) -> u64 {
    x = unshift(x, 33);
    x = unshift(x.wrapping_mul(M2_INV), 27);
    unshift(x.wrapping_mul(M1_INV), 31)
}

impl TokenSpace {
    pub(super) fn new(key: u64) -> Self {
        TokenSpace { issued: 0, key }
    }

    /// A token never issued before.
    pub(super) fn issue(&mut self) -> u64 {
        self.issued += 1;
        mix(self.issued ^ self.key)
    }

    /// Whether `token` is one of the last `window` issued.
    pub(super) fn recent(&self, token: u64, window: usize) -> bool {
        let n = unmix(token) ^ self.key;
        n != 0 && n <= self.issued && self.issued - n < window as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_a_bijection() {
        assert_eq!(M1.wrapping_mul(M1_INV), 1);
        assert_eq!(M2.wrapping_mul(M2_INV), 1);
        let mut x = 0x0123_4567_89ab_cdefu64;
        for _ in 0..10_000 {
            assert_eq!(unmix(mix(x)), x);
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
        }
    }

    #[test]
    fn rfc10020_s3_1_5_tokens_unique_and_recent_ones_recognised() {
        let mut t = TokenSpace::new(0xdead_beef);
        let issued: Vec<u64> = (0..1000).map(|_| t.issue()).collect();
        let mut sorted = issued.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), issued.len());
        assert!(t.recent(issued[999], 1) && !t.recent(issued[998], 1));
        assert!(t.recent(issued[0], 1000) && !t.recent(issued[0], 999));
        // Never issued: not recent, whatever the window.
        assert!(!t.recent(mix(5000 ^ 0xdead_beef), usize::MAX));
        assert!(!t.recent(mix(0xdead_beef), usize::MAX));
    }
}
