//! Algorithms by COSE identifier, and keyed cipher instances built once per key so that no
//! key schedule runs per message.
//!
//! Supported: AES-CCM-16-64-128 (10, the OSCORE default and mandatory Group Encryption
//! Algorithm), A128GCM (1), A128CTR (-65534, RFC 9459, the mandatory non-authenticated
//! Group Encryption Algorithm, RFC 10021 §10); EdDSA with Ed25519 (-8) and ES256 (-7);
//! ECDH-SS + HKDF-256 (-27); HKDF SHA-256.

use aes::Aes128;
use aes_gcm::Aes128Gcm;
use ccm::Ccm;
use ccm::aead::{AeadInOut, KeyInit};
use ccm::consts::{U8, U13};
use ctr::cipher::{KeyIvInit, StreamCipher};

use super::error::{ConfigError, OscoreError};

type AesCcm16_64_128 = Ccm<Aes128, U8, U13>;
type Aes128Ctr = ctr::Ctr32BE<Aes128>;

/// A content encryption algorithm: AEAD Algorithm or Group Encryption Algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncAlg {
    /// AES-CCM-16-64-128 (COSE 10): the OSCORE default (RFC 8613 §3.2).
    AesCcm16_64_128,
    /// AES-GCM with a 128-bit key (COSE 1).
    A128Gcm,
    /// Non-authenticated; allowed only as Group Encryption Algorithm (RFC 10021 §2.1.7).
    A128Ctr,
}

impl EncAlg {
    const SUPPORTED: &'static str = "10 (AES-CCM-16-64-128), 1 (A128GCM), -65534 (A128CTR)";

    pub(crate) fn from_cose(id: i64) -> Result<Self, ConfigError> {
        match id {
            10 => Ok(Self::AesCcm16_64_128),
            1 => Ok(Self::A128Gcm),
            -65534 => Ok(Self::A128Ctr),
            _ => Err(ConfigError::UnsupportedAlgorithm {
                what: "encryption",
                id,
                supported: Self::SUPPORTED,
            }),
        }
    }
    pub(crate) fn cose_id(self) -> i64 {
        match self {
            Self::AesCcm16_64_128 => 10,
            Self::A128Gcm => 1,
            Self::A128Ctr => -65534,
        }
    }
    pub(crate) fn key_len(self) -> usize {
        16
    }
    /// Nonce length; 12 for A128CTR per RFC 10021 §2.1.4 and §2.1.7.
    pub(crate) fn nonce_len(self) -> usize {
        match self {
            Self::AesCcm16_64_128 => 13,
            Self::A128Gcm | Self::A128Ctr => 12,
        }
    }
    pub(crate) fn tag_len(self) -> usize {
        match self {
            Self::AesCcm16_64_128 => 8,
            Self::A128Gcm => 16,
            Self::A128Ctr => 0,
        }
    }
    pub(crate) fn is_aead(self) -> bool {
        !matches!(self, Self::A128Ctr)
    }
}

/// A key bound to its algorithm, with the cipher's key schedule already done.
#[derive(Clone)]
pub enum CipherKey {
    /// AES-CCM-16-64-128, key schedule done.
    Ccm(Box<AesCcm16_64_128>),
    /// A128GCM, key schedule done.
    Gcm(Box<Aes128Gcm>),
    /// A128CTR: the raw key, the counter mode needs no more.
    Ctr([u8; 16]),
}

impl std::fmt::Debug for CipherKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str(match self {
            Self::Ccm(_) => "CipherKey(AES-CCM-16-64-128)",
            Self::Gcm(_) => "CipherKey(A128GCM)",
            Self::Ctr(_) => "CipherKey(A128CTR)",
        })
    }
}

impl CipherKey {
    pub(crate) fn new(alg: EncAlg, key: &[u8]) -> Self {
        let k: [u8; 16] = key
            .try_into()
            .expect("derived keys have the algorithm's length");
        match alg {
            EncAlg::AesCcm16_64_128 => Self::Ccm(Box::new(AesCcm16_64_128::new(&k.into()))),
            EncAlg::A128Gcm => Self::Gcm(Box::new(Aes128Gcm::new(&k.into()))),
            EncAlg::A128Ctr => Self::Ctr(k),
        }
    }

    pub(crate) fn alg(&self) -> EncAlg {
        match self {
            Self::Ccm(_) => EncAlg::AesCcm16_64_128,
            Self::Gcm(_) => EncAlg::A128Gcm,
            Self::Ctr(_) => EncAlg::A128Ctr,
        }
    }

    /// Encrypts `buf` in place and appends the tag. `nonce` has the algorithm's length.
    /// No AAD goes to a non-AEAD algorithm (RFC 10021 §10, RFC 9459 §6).
    pub(crate) fn encrypt(
        &self,
        nonce: &[u8],
        aad: &[u8],
        buf: &mut Vec<u8>,
    ) -> Result<(), OscoreError> {
        match self {
            Self::Ccm(c) => {
                let tag = c
                    .encrypt_inout_detached(
                        nonce.try_into().unwrap(),
                        aad,
                        buf.as_mut_slice().into(),
                    )
                    .map_err(|_| OscoreError::Serialize("AEAD input too long".into()))?;
                buf.extend_from_slice(&tag);
            }
            Self::Gcm(c) => {
                let tag = c
                    .encrypt_inout_detached(
                        nonce.try_into().unwrap(),
                        aad,
                        buf.as_mut_slice().into(),
                    )
                    .map_err(|_| OscoreError::Serialize("AEAD input too long".into()))?;
                buf.extend_from_slice(&tag);
            }
            Self::Ctr(k) => ctr_apply(k, nonce, buf),
        }
        Ok(())
    }

    /// Decrypts `buf` (ciphertext with tag) in place and truncates the tag.
    pub(crate) fn decrypt(
        &self,
        nonce: &[u8],
        aad: &[u8],
        buf: &mut Vec<u8>,
    ) -> Result<(), OscoreError> {
        let tag_len = self.alg().tag_len();
        let body = buf
            .len()
            .checked_sub(tag_len)
            .ok_or(OscoreError::DecryptFailed)?;
        let (ct, tag) = buf.split_at_mut(body);
        match self {
            Self::Ccm(c) => c
                .decrypt_inout_detached(
                    nonce.try_into().unwrap(),
                    aad,
                    ct.into(),
                    (&*tag).try_into().unwrap(),
                )
                .map_err(|_| OscoreError::DecryptFailed)?,
            Self::Gcm(c) => c
                .decrypt_inout_detached(
                    nonce.try_into().unwrap(),
                    aad,
                    ct.into(),
                    (&*tag).try_into().unwrap(),
                )
                .map_err(|_| OscoreError::DecryptFailed)?,
            Self::Ctr(k) => ctr_apply(k, nonce, ct),
        }
        buf.truncate(body);
        Ok(())
    }
}

/// AES-CTR with IV = 12-byte nonce || 0x00000000 (RFC 10021 §2.1.7).
fn ctr_apply(key: &[u8; 16], nonce: &[u8], buf: &mut [u8]) {
    let mut iv = [0u8; 16];
    iv[..12].copy_from_slice(nonce);
    let mut c = Aes128Ctr::new(key.into(), &iv.into());
    c.apply_keystream(buf);
}

/// Signature Algorithm (RFC 10021 §2.1.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SigAlg {
    /// EdDSA with Ed25519 (COSE -8).
    EdDsa,
    /// ECDSA with P-256 and SHA-256 (COSE -7).
    Es256,
}

impl SigAlg {
    pub(crate) fn from_cose(id: i64) -> Result<Self, ConfigError> {
        match id {
            -8 => Ok(Self::EdDsa),
            -7 => Ok(Self::Es256),
            _ => Err(ConfigError::UnsupportedAlgorithm {
                what: "signature",
                id,
                supported: "-8 (EdDSA with Ed25519), -7 (ES256)",
            }),
        }
    }
    /// The COSE algorithm identifier.
    pub fn cose_id(self) -> i64 {
        match self {
            Self::EdDsa => -8,
            Self::Es256 => -7,
        }
    }
    /// Length of the signature, and so of the keystream (RFC 10021 §4.2).
    pub(crate) fn sig_len(self) -> usize {
        64
    }
}

/// Pairwise Key Agreement Algorithm (RFC 10021 §2.1.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAgreementAlg {
    /// ECDH-SS + HKDF-256 (COSE -27), the only one this build implements.
    EcdhSsHkdf256,
}

impl KeyAgreementAlg {
    pub(crate) fn from_cose(id: i64) -> Result<Self, ConfigError> {
        match id {
            -27 => Ok(Self::EcdhSsHkdf256),
            _ => Err(ConfigError::UnsupportedAlgorithm {
                what: "pairwise key agreement",
                id,
                supported: "-27 (ECDH-SS + HKDF-256)",
            }),
        }
    }
    pub(crate) fn cose_id(self) -> i64 {
        -27
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsupported_ids_are_config_errors() {
        assert!(matches!(
            EncAlg::from_cose(2),
            Err(ConfigError::UnsupportedAlgorithm { id: 2, .. })
        ));
        assert!(SigAlg::from_cose(-35).is_err());
        assert!(KeyAgreementAlg::from_cose(-28).is_err());
        for id in [10, 1, -65534] {
            assert_eq!(EncAlg::from_cose(id).unwrap().cose_id(), id);
        }
    }

    #[test]
    fn ctr_roundtrip_and_no_tag() {
        let k = CipherKey::new(EncAlg::A128Ctr, &[7; 16]);
        let mut b = b"hello".to_vec();
        k.encrypt(&[1; 12], &[], &mut b).unwrap();
        assert_eq!(b.len(), 5);
        k.decrypt(&[1; 12], &[], &mut b).unwrap();
        assert_eq!(b, b"hello");
    }

    #[test]
    fn ccm_rejects_tampering() {
        let k = CipherKey::new(EncAlg::AesCcm16_64_128, &[7; 16]);
        let mut b = b"hello".to_vec();
        k.encrypt(&[1; 13], b"aad", &mut b).unwrap();
        assert_eq!(b.len(), 13);
        b[0] ^= 1;
        assert_eq!(
            k.decrypt(&[1; 13], b"aad", &mut b),
            Err(OscoreError::DecryptFailed)
        );
    }
}
