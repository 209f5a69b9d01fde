//! Batched countersignature verification: the Ed25519 signatures of one receive batch
//! checked with one multi-scalar equation instead of one double-scalar multiplication
//! each, with the same accept/reject decisions as `verify_strict` (see below for the one,
//! probabilistic, exception and why it is safe).
//!
//! For signatures (R_i, s_i) by keys A_i on messages M_i, with k_i = SHA-512(R_i || A_i ||
//! M_i) mod L, `verify_strict` accepts exactly when s_i is canonical (< L), R_i decodes,
//! neither R_i nor A_i has small order, and the encoding of [s_i]B - [k_i]A_i equals R_i's
//! bytes. The last condition holds exactly when R_i is canonically encoded and the point
//! E_i = R_i + [k_i]A_i - [s_i]B is the identity. The first conditions are checked here
//! per signature, exactly as `verify_strict` does (canonical R is a byte comparison: the
//! only non-canonical encodings are y >= p, and a sign bit on x = 0, whose points (0, ±1)
//! have small order and are refused anyway); the last is checked for a whole set at once:
//! sum_i z_i E_i = 0 for secret random 128-bit z_i. Terms of one key are merged: the
//! equation has one point per signature (R_i), one per distinct key and the base point.
//!
//! Equivalence: a set whose every signature passes `verify_strict` always passes the
//! equation (each E_i is 0). If some E_i has a component of prime order L, the equation
//! holds with probability about 2^-128 (the z_i are drawn after the signatures are known
//! and never leave the process). The exception: E_i may be a nonzero point of small order
//! when R_i carries a small-order component (keys with one never enter an equation: they
//! are verified one by one). Such a signature can only be made with the signing key
//! itself (s_i = r + k_i a must be known for the R_i that k_i hashes), it satisfies the
//! cofactored equation of RFC 8032 §5.1.7, and `verify_strict` refuses it; here it passes
//! with probability at most 1/2 if it lands in an equation that holds, and is refused when
//! it is checked alone. Accepting it authenticates the same member as surely, and the
//! replay window keys on the Partial IV, not on the signature's bytes, so a member cannot
//! gain a second admission from it either.
//!
//! A set whose equation fails is split in halves, each checked the same way; a failed set
//! of at most `LEAF` signatures has each checked with `verify_strict` itself, so every
//! decision to refuse is `verify_strict`'s. A half whose sibling passed after their parent failed is known to
//! hold a bad signature and is split without an equation of its own.

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use sha2::{Digest, Sha512};

use super::cred::PublicKey;

/// A failed set of at most this many signatures is checked one by one.
const LEAF: usize = 4;

/// One signature to verify.
#[derive(Clone, Copy, Debug)]
pub struct SigJob<'a> {
    /// The signer's key.
    pub key: &'a PublicKey,
    /// What was signed (the ToBeSigned array).
    pub msg: &'a [u8],
    /// The signature, 64 bytes.
    pub sig: &'a [u8],
    /// Whether the key lies in the prime-order subgroup, so that its signatures may enter
    /// an equation (see the module docs); others are verified one by one.
    pub batchable: bool,
}

/// What verifications cost, counted since the verifier was made: the work a batch (and a
/// forger in it) causes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Signatures handed in.
    pub signatures: u64,
    /// Batch equations evaluated.
    pub equations: u64,
    /// Signatures in those equations, summed (one signature counts once per equation).
    pub equation_terms: u64,
    /// Single verifications (`verify_strict`, or an ES256 verification).
    pub singles: u64,
}

/// Verifies sets of signatures together. Holds the CSPRNG the equations' coefficients
/// come from, seeded by the caller (the engine draws no randomness of its own).
pub struct BatchVerifier {
    rng: chacha20::ChaCha20Rng,
    stats: BatchStats,
}

impl std::fmt::Debug for BatchVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The generator's state is secret: the coefficients must not be predictable.
        f.debug_struct("BatchVerifier")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// A signature that passed the per-signature checks of `verify_strict`, ready for an
/// equation.
struct Term<'a> {
    index: usize,
    job: SigJob<'a>,
    vk: &'a ed25519_dalek::VerifyingKey,
    r: EdwardsPoint,
    s: Scalar,
    k: Scalar,
}

impl BatchVerifier {
    /// A verifier whose coefficients come from `seed` (32 bytes the attacker cannot
    /// know: the engine derives them from the driver's seed).
    pub fn new(seed: [u8; 32]) -> Self {
        use chacha20::rand_core::SeedableRng;
        BatchVerifier {
            rng: chacha20::ChaCha20Rng::from_seed(seed),
            stats: BatchStats::default(),
        }
    }

    /// The work done so far.
    pub fn stats(&self) -> BatchStats {
        self.stats
    }

    /// Verifies every job; the result is per job, in order, and is `verify_strict`'s (or
    /// ES256's) decision except as the module docs say.
    pub fn verify(&mut self, jobs: &[SigJob<'_>]) -> Vec<bool> {
        self.stats.signatures += jobs.len() as u64;
        let mut out = vec![false; jobs.len()];
        let eddsa = jobs
            .iter()
            .filter(|j| j.batchable && matches!(j.key, PublicKey::Ed25519(_)))
            .count();
        let mut terms = Vec::with_capacity(eddsa);
        for (index, job) in jobs.iter().enumerate() {
            match job.key {
                // Two or more go into an equation; one alone is checked as before.
                PublicKey::Ed25519(vk) if job.batchable && eddsa > 1 => {
                    if let Some(t) = term(index, *job, vk) {
                        terms.push(t);
                    }
                    // else refused by a per-signature check of verify_strict: stays false
                }
                // ES256 has no batch equation here (an ECDSA signature gives only R's
                // x coordinate; its batch forms need extra data the signer does not send):
                // verified one by one behind the same interface.
                _ => {
                    self.stats.singles += 1;
                    out[index] = job.key.verify(job.msg, job.sig);
                }
            }
        }
        self.settle(&terms, false, &mut out);
        out
    }

    /// Decides every term of `terms`; says whether all passed. `known_bad`: the caller
    /// knows an equation over `terms` fails, so none is evaluated.
    fn settle(&mut self, terms: &[Term<'_>], known_bad: bool, out: &mut [bool]) -> bool {
        match terms {
            [] => true,
            [t] => {
                self.stats.singles += 1;
                let ok = t.job.key.verify(t.job.msg, t.job.sig);
                out[t.index] = ok;
                ok
            }
            _ => {
                if !known_bad && self.equation(terms) {
                    for t in terms {
                        out[t.index] = true;
                    }
                    return true;
                }
                // A small failed set: its members checked alone cost about what the two
                // more levels of equations would (and bound a forger's cost).
                if terms.len() <= LEAF {
                    let mut all = true;
                    for t in terms {
                        self.stats.singles += 1;
                        let ok = t.job.key.verify(t.job.msg, t.job.sig);
                        out[t.index] = ok;
                        all &= ok;
                    }
                    return all;
                }
                let (left, right) = terms.split_at(terms.len() / 2);
                let left_ok = self.settle(left, false, out);
                // The whole failed and the left half passed: the right one holds the bad
                // signature, so its own equation would only fail again.
                let right_ok = self.settle(right, left_ok, out);
                left_ok && right_ok
            }
        }
    }

    /// sum_i z_i (R_i + [k_i]A_i - [s_i]B) == identity, one point per distinct key.
    fn equation(&mut self, terms: &[Term<'_>]) -> bool {
        use chacha20::rand_core::Rng;
        self.stats.equations += 1;
        self.stats.equation_terms += terms.len() as u64;
        let mut scalars = Vec::with_capacity(terms.len() + 8);
        let mut points = Vec::with_capacity(terms.len() + 8);
        let mut keys: Vec<(&[u8; 32], EdwardsPoint, Scalar)> = Vec::new();
        let mut base = Scalar::ZERO;
        for t in terms {
            let z = Scalar::from(
                (u128::from(self.rng.next_u64()) << 64) | u128::from(self.rng.next_u64()),
            );
            base -= z * t.s;
            scalars.push(z);
            points.push(t.r);
            let zk = z * t.k;
            match keys.iter_mut().find(|(b, ..)| *b == t.vk.as_bytes()) {
                Some((_, _, acc)) => *acc += zk,
                None => keys.push((t.vk.as_bytes(), t.vk.to_edwards(), zk)),
            }
        }
        scalars.push(base);
        points.push(ED25519_BASEPOINT_POINT);
        for (_, a, acc) in keys {
            scalars.push(acc);
            points.push(a);
        }
        EdwardsPoint::vartime_multiscalar_mul(scalars, points).is_identity()
    }
}

/// The per-signature checks of `verify_strict`, in its order; `None` where it refuses.
fn term<'a>(
    index: usize,
    job: SigJob<'a>,
    vk: &'a ed25519_dalek::VerifyingKey,
) -> Option<Term<'a>> {
    let sig: &[u8; 64] = job.sig.try_into().ok()?;
    let r_bytes: [u8; 32] = sig[..32].try_into().ok()?;
    let s_bytes: [u8; 32] = sig[32..].try_into().ok()?;
    // s < L (ed25519-dalek's check_scalar).
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes))?;
    if !canonical_y(&r_bytes) {
        return None;
    }
    let r = CompressedEdwardsY(r_bytes).decompress()?;
    if r.is_small_order() || vk.to_edwards().is_small_order() {
        return None;
    }
    debug_assert_eq!(r.compress().to_bytes(), r_bytes);
    let h: [u8; 64] = Sha512::new()
        .chain_update(r_bytes)
        .chain_update(vk.as_bytes())
        .chain_update(job.msg)
        .finalize()
        .into();
    Some(Term {
        index,
        job,
        vk,
        r,
        s,
        k: Scalar::from_bytes_mod_order_wide(&h),
    })
}

/// Whether the y coordinate (the low 255 bits, little-endian) is below p = 2^255 - 19.
fn canonical_y(b: &[u8; 32]) -> bool {
    !(b[31] & 0x7f == 0x7f && b[1..31].iter().all(|&x| x == 0xff) && b[0] >= 0xed)
}

/// Whether an Ed25519 key may have its signatures batched: in the prime-order subgroup,
/// so that no small-order part of it can cancel in an equation (see the module docs).
pub(crate) fn batchable(key: &PublicKey) -> bool {
    match key {
        PublicKey::Ed25519(vk) => vk.to_edwards().is_torsion_free(),
        PublicKey::P256(_) => false,
    }
}

#[cfg(test)]
mod tests {
    //! RFC 8032 §5.1.7 verification, batched: the decisions of `verify_strict` (which adds
    //! canonical s and R and no small-order R or A to §5.1.7), and the work bisection costs.
    use super::*;
    use crate::oscore::alg::SigAlg;
    use crate::oscore::cred::PrivateKey;
    use curve25519_dalek::constants::EIGHT_TORSION;

    struct Signed {
        key: PublicKey,
        msg: Vec<u8>,
        sig: [u8; 64],
    }

    fn signed(key: &PrivateKey, i: usize) -> Signed {
        let msg = format!("ToBeSigned number {i}").into_bytes();
        Signed {
            key: key.public_key(),
            sig: key.sign(&msg),
            msg,
        }
    }

    fn jobs(s: &[Signed]) -> Vec<SigJob<'_>> {
        s.iter()
            .map(|s| SigJob {
                key: &s.key,
                msg: &s.msg,
                sig: &s.sig,
                batchable: batchable(&s.key),
            })
            .collect()
    }

    /// `verify_strict`'s decisions, one by one.
    fn strict(s: &[Signed]) -> Vec<bool> {
        s.iter().map(|s| s.key.verify(&s.msg, &s.sig)).collect()
    }

    fn forge(s: &mut Signed) {
        s.sig[40] ^= 1;
    }

    fn keys(n: usize) -> Vec<PrivateKey> {
        (0..n)
            .map(|_| PrivateKey::generate(SigAlg::EdDsa))
            .collect()
    }

    #[test]
    fn all_valid_one_equation_no_single() {
        let k = keys(3);
        let s: Vec<_> = (0..32).map(|i| signed(&k[i % 3], i)).collect();
        let mut v = BatchVerifier::new([1; 32]);
        assert_eq!(v.verify(&jobs(&s)), vec![true; 32]);
        let st = v.stats();
        assert_eq!((st.equations, st.equation_terms, st.singles), (1, 32, 0));
    }

    #[test]
    fn one_forged_is_found_honest_ones_pass() {
        let k = keys(2);
        for at in [0, 13, 31] {
            let mut s: Vec<_> = (0..32).map(|i| signed(&k[i % 2], i)).collect();
            forge(&mut s[at]);
            let mut v = BatchVerifier::new([2; 32]);
            let got = v.verify(&jobs(&s));
            assert_eq!(got, strict(&s), "forgery at {at}");
            assert_eq!(got.iter().filter(|b| !**b).count(), 1);
            let st = v.stats();
            // Bisection: one path from the root (32) to the forgery's set of 4, each
            // level an equation over its half and at most one over the sibling
            // (16+16, 8+8, 4+4), then those 4 alone: at most 32 + 2 * 28 terms, 4 singles.
            assert!(st.singles <= 4, "{st:?}");
            assert!(st.equation_terms <= 32 + 2 * 28, "{st:?}");
            eprintln!("one forged at {at} in 32: {st:?}");
        }
    }

    #[test]
    fn many_forged_are_all_found() {
        let k = keys(4);
        let mut s: Vec<_> = (0..32).map(|i| signed(&k[i % 4], i)).collect();
        for i in (0..32).step_by(3) {
            forge(&mut s[i]);
        }
        let mut v = BatchVerifier::new([3; 32]);
        assert_eq!(v.verify(&jobs(&s)), strict(&s));
        let mut s: Vec<_> = (0..32).map(|i| signed(&k[i % 4], i)).collect();
        s.iter_mut().for_each(forge);
        let mut v = BatchVerifier::new([4; 32]);
        assert_eq!(v.verify(&jobs(&s)), vec![false; 32]);
        let st = v.stats();
        // Every forgery checked alone once; the equations down to the sets of 4 cover
        // each signature once per level (32, 16, 8, 4: 4 levels).
        assert_eq!(st.singles, 32);
        assert_eq!(st.equation_terms, 4 * 32, "{st:?}");
        eprintln!("32 forged in 32: {st:?}");
    }

    /// verify_strict refuses a non-canonical s (s + L), which the group equation alone
    /// could not tell from s: the per-signature check refuses it, so does the batch.
    #[test]
    fn non_canonical_s_refused_in_a_batch() {
        let k = keys(1);
        let mut s: Vec<_> = (0..4).map(|i| signed(&k[0], i)).collect();
        // L = 2^252 + 27742317777372353535851937790883648493 (RFC 8032 §5.1), little-endian.
        let l: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x10,
        ];
        let mut carry = 0u16;
        for (b, l) in s[1].sig[32..].iter_mut().zip(l) {
            let t = *b as u16 + l as u16 + carry;
            *b = t as u8;
            carry = t >> 8;
        }
        assert_eq!(carry, 0);
        let mut v = BatchVerifier::new([5; 32]);
        assert_eq!(v.verify(&jobs(&s)), vec![true, false, true, true]);
        assert_eq!(strict(&s), vec![true, false, true, true]);
    }

    /// Small-order R (the identity, with s = 0: [0]B - [k]A = R fails, but the cofactored
    /// and cofactorless checks differ on such inputs) and a non-canonical encoding of it.
    #[test]
    fn small_order_and_non_canonical_r_refused() {
        let k = keys(1);
        let mut s: Vec<_> = (0..4).map(|i| signed(&k[0], i)).collect();
        s[0].sig[..32].copy_from_slice(&EIGHT_TORSION[0].compress().to_bytes());
        s[0].sig[32..].fill(0);
        // y = p + 1 encodes the identity non-canonically.
        let mut noncanon = [0xffu8; 32];
        noncanon[0] = 0xee;
        noncanon[31] = 0x7f;
        assert!(!canonical_y(&noncanon));
        s[2].sig[..32].copy_from_slice(&noncanon);
        let mut v = BatchVerifier::new([6; 32]);
        assert_eq!(v.verify(&jobs(&s)), vec![false, true, false, true]);
        assert_eq!(strict(&s), vec![false, true, false, true]);
        // The canonical boundary: y = p - 1 is canonical.
        let mut below = noncanon;
        below[0] = 0xec;
        assert!(canonical_y(&below));
    }

    /// The documented exception: a signer that adds a small-order point to R makes a
    /// signature verify_strict refuses but the cofactored equation accepts. Alone it is
    /// refused; in a batch its decision may go either way, and never an honest one's.
    #[test]
    fn torsioned_r_by_the_key_holder() {
        use curve25519_dalek::constants::ED25519_BASEPOINT_TABLE;
        let a = Scalar::from_bytes_mod_order([7; 32]);
        let big_a = &a * ED25519_BASEPOINT_TABLE;
        let key = PublicKey::Ed25519(
            ed25519_dalek::VerifyingKey::from_bytes(&big_a.compress().to_bytes()).unwrap(),
        );
        assert!(batchable(&key));
        let mk = |i: u8| {
            let msg = vec![i; 40];
            let r = Scalar::from_bytes_mod_order([i.wrapping_add(9); 32]);
            let big_r = &r * ED25519_BASEPOINT_TABLE + EIGHT_TORSION[4];
            let rb = big_r.compress().to_bytes();
            let h: [u8; 64] = Sha512::new()
                .chain_update(rb)
                .chain_update(big_a.compress().to_bytes())
                .chain_update(&msg)
                .finalize()
                .into();
            let s = r + Scalar::from_bytes_mod_order_wide(&h) * a;
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(&rb);
            sig[32..].copy_from_slice(s.as_bytes());
            Signed {
                key: key.clone(),
                msg,
                sig,
            }
        };
        let odd = mk(1);
        assert!(
            !odd.key.verify(&odd.msg, &odd.sig),
            "verify_strict refuses it"
        );
        let mut v = BatchVerifier::new([7; 32]);
        assert_eq!(v.verify(&jobs(std::slice::from_ref(&odd))), vec![false]);
        let k = keys(1);
        let mut s: Vec<_> = (0..7).map(|i| signed(&k[0], i)).collect();
        s.push(odd);
        let got = v.verify(&jobs(&s));
        assert_eq!(
            &got[..7],
            &[true; 7],
            "honest signatures pass whatever the odd one does"
        );
    }

    #[test]
    fn es256_behind_the_same_interface() {
        let p = PrivateKey::generate(SigAlg::Es256);
        let e = keys(1);
        let mut s: Vec<_> = (0..6)
            .map(|i| signed(if i % 2 == 0 { &p } else { &e[0] }, i))
            .collect();
        forge(&mut s[2]);
        let mut v = BatchVerifier::new([8; 32]);
        assert_eq!(v.verify(&jobs(&s)), strict(&s));
        assert_eq!(strict(&s), vec![true, true, false, true, true, true]);
        // The three ES256 signatures one by one, the three Ed25519 ones in one equation.
        let st = v.stats();
        assert_eq!((st.singles, st.equations), (3, 1));
    }
}
