//! Authentication credentials (RFC 10021 §2.4) and the keys inside them.
//!
//! A credential is kept as the exact bytes it was distributed as, because those bytes enter
//! the external_aad and the pairwise key derivation; the public key is read from it once.
//! Supported format: CCS (an untagged CWT Claims Set, RFC 8392) whose 'cnf' claim (8)
//! holds a COSE_Key (1): OKP/Ed25519 or EC2/P-256.

use std::sync::Arc;

use ed25519_dalek::{Signer, Verifier};
use minicbor::Decoder;
use minicbor::data::Type;

use super::alg::SigAlg;
use super::error::ConfigError;

/// A public key usable for signatures and (mapped or directly) for ECDH.
#[derive(Clone, Debug)]
pub enum PublicKey {
    /// An Ed25519 key (RFC 8032), for EdDSA; mapped to X25519 for ECDH (RFC 10021 §2.5.2).
    Ed25519(ed25519_dalek::VerifyingKey),
    /// A P-256 key, for ES256 and ECDH.
    P256(p256::PublicKey),
}

impl PublicKey {
    pub(crate) fn sig_alg(&self) -> SigAlg {
        match self {
            Self::Ed25519(_) => SigAlg::EdDsa,
            Self::P256(_) => SigAlg::Es256,
        }
    }

    /// Verifies a 64-byte signature. Ed25519 uses the strict check (canonical S, no
    /// small-order R or key) so that a verified message cannot be re-signed into another.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        match self {
            Self::Ed25519(vk) => {
                let Ok(bytes) = <[u8; 64]>::try_from(sig) else {
                    return false;
                };
                vk.verify_strict(msg, &ed25519_dalek::Signature::from_bytes(&bytes))
                    .is_ok()
            }
            Self::P256(pk) => {
                let Ok(sig) = p256::ecdsa::Signature::from_slice(sig) else {
                    return false;
                };
                p256::ecdsa::VerifyingKey::from(pk)
                    .verify(msg, &sig)
                    .is_ok()
            }
        }
    }
}

/// An authentication credential: its opaque bytes and the public key read from them.
#[derive(Clone, Debug)]
pub struct Credential {
    bytes: Arc<[u8]>,
    key: PublicKey,
}

impl Credential {
    /// Parses a CCS. Every failure names what is wrong.
    pub fn from_ccs(bytes: &[u8]) -> Result<Self, ConfigError> {
        let key = parse_ccs(bytes).map_err(ConfigError::BadCredential)?;
        Ok(Credential {
            bytes: bytes.into(),
            key,
        })
    }

    /// The same public key under other bytes. Only for a Group Manager credential in
    /// published vectors whose key is not a valid point (cacheable-oscore-02 Appendix F):
    /// a member uses only the bytes of that credential (in external_aad, RFC 10021 §3.4).
    #[doc(hidden)]
    pub fn with_bytes_for_vectors(&self, bytes: &[u8]) -> Self {
        Credential {
            bytes: bytes.into(),
            key: self.key.clone(),
        }
    }

    /// Builds a minimal CCS (`{2: subject, 8: {1: COSE_Key}}`, the shape the vectors use)
    /// around a public key.
    pub fn ccs_for(subject: &str, key: &PublicKey) -> Self {
        let mut b = Vec::with_capacity(128);
        b.push(0xa2);
        crate::cbor::int(&mut b, 2);
        crate::cbor::text(&mut b, subject);
        crate::cbor::int(&mut b, 8);
        b.push(0xa1);
        crate::cbor::int(&mut b, 1);
        match key {
            PublicKey::Ed25519(vk) => {
                b.push(0xa4);
                for v in [1, 1, 3, -8, -1, 6, -2] {
                    crate::cbor::int(&mut b, v);
                }
                crate::cbor::bytes(&mut b, vk.as_bytes());
            }
            PublicKey::P256(pk) => {
                use p256::elliptic_curve::sec1::ToSec1Point;
                let point = pk.to_sec1_point(false);
                b.push(0xa5);
                for v in [1, 2, 3, -7, -1, 1, -2] {
                    crate::cbor::int(&mut b, v);
                }
                crate::cbor::bytes(&mut b, point.x().expect("uncompressed"));
                crate::cbor::int(&mut b, -3);
                crate::cbor::bytes(&mut b, point.y().expect("uncompressed"));
            }
        }
        Credential {
            bytes: b.into(),
            key: key.clone(),
        }
    }

    /// The credential's bytes as the group uses them: the CCS that enters external_aad and pairwise keys.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// The key the credential carries.
    pub fn public_key(&self) -> &PublicKey {
        &self.key
    }
}

fn parse_ccs(bytes: &[u8]) -> Result<PublicKey, String> {
    let mut d = Decoder::new(bytes);
    let n = definite_map(&mut d, "the CCS")?;
    let mut key = None;
    for _ in 0..n {
        let label = int_label(&mut d, "CCS")?;
        if label == 8 {
            let m = definite_map(&mut d, "the 'cnf' claim (8)")?;
            for _ in 0..m {
                if int_label(&mut d, "cnf")? == 1 {
                    key = Some(parse_cose_key(&mut d)?);
                } else {
                    d.skip().map_err(|e| format!("cnf: {e}"))?;
                }
            }
        } else {
            d.skip().map_err(|e| format!("CCS claim {label}: {e}"))?;
        }
    }
    if d.position() != bytes.len() {
        return Err(format!(
            "{} trailing bytes after the CCS map",
            bytes.len() - d.position()
        ));
    }
    key.ok_or_else(|| "no COSE_Key in a 'cnf' claim (8) with label 1".into())
}

fn definite_map(d: &mut Decoder, what: &str) -> Result<u64, String> {
    match d.map() {
        Ok(Some(n)) => Ok(n),
        Ok(None) => Err(format!("{what} is an indefinite-length map")),
        Err(e) => Err(format!("{what} is not a CBOR map: {e}")),
    }
}

fn int_label(d: &mut Decoder, what: &str) -> Result<i64, String> {
    d.i64()
        .map_err(|e| format!("{what}: label is not an integer: {e}"))
}

fn parse_cose_key(d: &mut Decoder) -> Result<PublicKey, String> {
    let n = definite_map(d, "the COSE_Key")?;
    let (mut kty, mut crv, mut alg) = (None, None, None);
    let (mut x, mut y): (Option<&[u8]>, Option<&[u8]>) = (None, None);
    for _ in 0..n {
        let label = int_label(d, "COSE_Key")?;
        let int = |d: &mut Decoder| d.i64().map_err(|e| format!("COSE_Key label {label}: {e}"));
        match label {
            1 => kty = Some(int(d)?),
            3 => alg = Some(int(d)?),
            -1 => crv = Some(int(d)?),
            -2 => x = Some(d.bytes().map_err(|e| format!("COSE_Key x: {e}"))?),
            -3 => {
                if d.datatype().map_err(|e| e.to_string())? == Type::Bool {
                    return Err("compressed EC2 points (y as bool) are not supported".into());
                }
                y = Some(d.bytes().map_err(|e| format!("COSE_Key y: {e}"))?)
            }
            _ => d
                .skip()
                .map_err(|e| format!("COSE_Key label {label}: {e}"))?,
        }
    }
    match (kty, crv) {
        (Some(1), Some(6)) => {
            if alg.is_some_and(|a| a != -8) {
                return Err(format!(
                    "Ed25519 key with alg {} instead of -8",
                    alg.unwrap()
                ));
            }
            let x: [u8; 32] = x
                .ok_or("OKP key without x")?
                .try_into()
                .map_err(|_| "Ed25519 x is not 32 bytes")?;
            let vk = ed25519_dalek::VerifyingKey::from_bytes(&x)
                .map_err(|_| "Ed25519 x is not a valid curve point")?;
            // A small-order key would make signatures meaningless and its X25519 map
            // degenerate (RFC 10021 §2.5.2.1: abort if y = ±1).
            if vk.is_weak() {
                return Err("Ed25519 key is of small order".into());
            }
            Ok(PublicKey::Ed25519(vk))
        }
        (Some(2), Some(1)) => {
            if alg.is_some_and(|a| a != -7) {
                return Err(format!("P-256 key with alg {} instead of -7", alg.unwrap()));
            }
            let (x, y) = (x.ok_or("EC2 key without x")?, y.ok_or("EC2 key without y")?);
            if x.len() != 32 || y.len() != 32 {
                return Err("P-256 x and y must be 32 bytes each".into());
            }
            let mut sec1 = [0u8; 65];
            sec1[0] = 4;
            sec1[1..33].copy_from_slice(x);
            sec1[33..].copy_from_slice(y);
            let pk = p256::PublicKey::from_sec1_bytes(&sec1)
                .map_err(|_| "P-256 point is not on the curve")?;
            Ok(PublicKey::P256(pk))
        }
        (Some(k), Some(c)) => Err(format!(
            "key type {k} with curve {c} is not supported (OKP/Ed25519 or EC2/P-256)"
        )),
        (None, _) => Err("COSE_Key without kty (1)".into()),
        (_, None) => Err("COSE_Key without crv (-1)".into()),
    }
}

/// A private key of this endpoint: its own signatures and ECDH.
#[derive(Clone)]
pub enum PrivateKey {
    /// An Ed25519 seed (RFC 8032 §5.1.5).
    Ed25519(ed25519_dalek::SigningKey),
    /// A P-256 scalar.
    P256(p256::SecretKey),
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ed25519(_) => "PrivateKey(Ed25519)",
            Self::P256(_) => "PrivateKey(P-256)",
        })
    }
}

impl PrivateKey {
    /// An Ed25519 seed (RFC 8032 private key) or a P-256 scalar, both 32 bytes.
    pub fn from_bytes(alg: SigAlg, bytes: &[u8]) -> Result<Self, ConfigError> {
        let b: [u8; 32] = bytes.try_into().map_err(|_| {
            ConfigError::BadPrivateKey(format!("{} bytes, expected 32", bytes.len()))
        })?;
        match alg {
            SigAlg::EdDsa => Ok(Self::Ed25519(ed25519_dalek::SigningKey::from_bytes(&b))),
            SigAlg::Es256 => p256::SecretKey::from_slice(&b)
                .map(Self::P256)
                .map_err(|_| ConfigError::BadPrivateKey("not a valid P-256 scalar".into())),
        }
    }

    /// A fresh key from the operating system's randomness.
    pub fn generate(alg: SigAlg) -> Self {
        loop {
            let mut b = [0u8; 32];
            getrandom::fill(&mut b).expect("operating system randomness");
            if let Ok(k) = Self::from_bytes(alg, &b) {
                return k;
            }
        }
    }

    /// The 32 bytes that [`from_bytes`](Self::from_bytes) takes back.
    pub fn to_bytes(&self) -> [u8; 32] {
        match self {
            Self::Ed25519(k) => k.to_bytes(),
            Self::P256(k) => k.to_bytes().into(),
        }
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        match self {
            Self::Ed25519(k) => PublicKey::Ed25519(k.verifying_key()),
            Self::P256(k) => PublicKey::P256(k.public_key()),
        }
    }

    /// Signs; ES256 uses deterministic nonces (RFC 6979), which RFC 10021 §2.1.8 allows.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        match self {
            Self::Ed25519(k) => k.sign(msg).to_bytes(),
            Self::P256(k) => {
                let sk = p256::ecdsa::SigningKey::from(k);
                let sig: p256::ecdsa::Signature = sk.sign(msg);
                sig.to_bytes().into()
            }
        }
    }

    /// Static-static ECDH (RFC 10021 §2.5.1): X25519 with both Ed25519 keys mapped to
    /// Montgomery form (§2.5.2.1), or P-256 ECDH (the x-coordinate).
    pub fn ecdh(&self, peer: &PublicKey) -> Result<[u8; 32], ConfigError> {
        match (self, peer) {
            (Self::Ed25519(k), PublicKey::Ed25519(p)) => {
                let shared =
                    x25519_dalek::x25519(k.to_scalar_bytes(), p.to_montgomery().to_bytes());
                if shared == [0u8; 32] {
                    return Err(ConfigError::BadCredential(
                        "X25519 shared secret is zero (peer key of small order)".into(),
                    ));
                }
                Ok(shared)
            }
            (Self::P256(k), PublicKey::P256(p)) => {
                Ok((*k.diffie_hellman(p).raw_secret_bytes()).into())
            }
            _ => Err(ConfigError::BadCredential(
                "peer key is on a different curve than this endpoint's key".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(b: &[u8]) -> String {
        match Credential::from_ccs(b) {
            Err(ConfigError::BadCredential(m)) => m,
            other => panic!("expected BadCredential, got {other:?}"),
        }
    }

    // RFC 10021 §2.4: a credential that cannot give a public key is refused, and the
    // error says why.
    #[test]
    fn bad_ccs_errors_name_the_problem() {
        assert!(err(&[0x82, 0x01, 0x02]).contains("not a CBOR map"));
        assert!(err(&[0xa1, 0x02, 0x61, b'x']).contains("no COSE_Key"));
        assert!(err(&[0xa0, 0x00]).contains("trailing bytes"));
        assert!(err(&[0xa1, 0x08]).contains("cnf"));
        // kty OKP, crv X25519 (4): not a signature key.
        assert!(
            err(&hex::decode("a108a101a2010120 04".replace(' ', "")).unwrap())
                .contains("not supported")
        );
        // Ed25519 x of 31 bytes.
        let mut short = hex::decode("a108a101a30101200621581f").unwrap();
        short.extend([7u8; 31]);
        assert!(err(&short).contains("not 32 bytes"));
        // The identity point (y = 1) is of small order (§2.5.2.1: abort if y = ±1).
        let mut ident = hex::decode("a108a101a301012006215820").unwrap();
        let mut y1 = [0u8; 32];
        y1[0] = 1;
        ident.extend(y1);
        assert!(err(&ident).contains("small order"));
        // Ed25519 key labelled with ES256.
        let mut wrong_alg = hex::decode("a108a101a40101032620062158 20".replace(' ', "")).unwrap();
        wrong_alg.extend(PrivateKey::generate(SigAlg::EdDsa).to_bytes());
        assert!(err(&wrong_alg).contains("alg -7"));
    }

    #[test]
    fn ccs_roundtrip_for_both_curves() {
        for alg in [SigAlg::EdDsa, SigAlg::Es256] {
            let k = PrivateKey::generate(alg);
            let c = Credential::ccs_for("n", &k.public_key());
            let back = Credential::from_ccs(c.bytes()).unwrap();
            assert_eq!(back.public_key().sig_alg(), alg);
            let sig = k.sign(b"msg");
            assert!(back.public_key().verify(b"msg", &sig));
            assert!(!back.public_key().verify(b"msh", &sig));
        }
    }
}
