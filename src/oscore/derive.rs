//! Key derivation: RFC 8613 §3.2.1 as extended by RFC 10021 §2.1.9, §2.3, §2.5.1 and §4.2.
//! Everything here runs when a context is built or a peer first appears, never per message,
//! except [`keystream`], which depends on each message's Partial IV.

use hkdf::Hkdf;
use sha2::Sha256;

use crate::cbor;

/// HKDF-SHA-256 (the mandatory HKDF, RFC 8613 §3.2.1, RFC 10021 §10) into `out`.
pub(crate) fn hkdf(salt: &[u8], ikm: &[u8], info: &[u8], out: &mut [u8]) {
    Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, out)
        .expect("OSCORE output lengths are far below 255 * 32");
}

/// The HKDF info of RFC 8613 §3.2.1: `[id, id_context, alg_aead, type, L]`. RFC 10021 §2.3
/// sets `id_context` to the Gid and `alg_aead` to the Group Encryption Algorithm when set;
/// §2.1.9 uses the same shape with id = h'' and type "SEKey".
pub fn info(id: &[u8], id_context: Option<&[u8]>, alg: i64, kind: &str, len: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(24 + id.len() + id_context.map_or(0, |c| c.len()));
    cbor::array(&mut b, 5);
    cbor::bytes(&mut b, id);
    match id_context {
        Some(c) => cbor::bytes(&mut b, c),
        None => cbor::null(&mut b),
    }
    cbor::int(&mut b, alg);
    cbor::text(&mut b, kind);
    cbor::int(&mut b, len as i64);
    b
}

/// Sender Key, Recipient Key or Common IV from the Master Secret and Salt.
pub fn derive(
    secret: &[u8],
    salt: &[u8],
    id: &[u8],
    id_context: Option<&[u8]>,
    alg: i64,
    kind: &str,
    len: usize,
) -> Vec<u8> {
    let mut out = vec![0u8; len];
    hkdf(
        salt,
        secret,
        &info(id, id_context, alg, kind, len),
        &mut out,
    );
    out
}

/// Pairwise key (RFC 10021 §2.5.1): HKDF(salt = the Sender or Recipient Key, IKM = the two
/// credentials in the order of the key's direction followed by the shared secret,
/// info = that key's own info with the AEAD Algorithm).
pub fn pairwise_key(
    base_key: &[u8],
    first_cred: &[u8],
    second_cred: &[u8],
    shared_secret: &[u8],
    info: &[u8],
    len: usize,
) -> Vec<u8> {
    let mut ikm = Vec::with_capacity(first_cred.len() + second_cred.len() + shared_secret.len());
    ikm.extend_from_slice(first_cred);
    ikm.extend_from_slice(second_cred);
    ikm.extend_from_slice(shared_secret);
    let mut out = vec![0u8; len];
    hkdf(base_key, &ikm, info, &mut out);
    out
}

/// Keystream for the encrypted countersignature (RFC 10021 §4.2): HKDF(salt = Partial IV,
/// IKM = Signature Encryption Key, info = [id, id_context, type, L]), where `id` is the
/// Sender ID of the endpoint that generated the Partial IV and `is_request` gives type.
pub fn keystream(
    sig_enc_key: &[u8],
    piv: &[u8],
    id: &[u8],
    gid: &[u8],
    is_request: bool,
    out: &mut [u8],
) {
    let mut info = Vec::with_capacity(8 + id.len() + gid.len());
    cbor::array(&mut info, 4);
    cbor::bytes(&mut info, id);
    cbor::bytes(&mut info, gid);
    cbor::boolean(&mut info, is_request);
    cbor::int(&mut info, out.len() as i64);
    hkdf(piv, sig_enc_key, &info, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_shapes_match_rfc10021_vectors() {
        // Group OSCORE vectors: Common IV info and Signature Encryption Key info.
        assert_eq!(
            hex::encode(info(b"", Some(b"Dal"), 10, "IV", 13)),
            "85404344616c0a6249560d"
        );
        assert_eq!(
            hex::encode(info(b"", Some(b"Dal"), 10, "SEKey", 16)),
            "85404344616c0a6553454b657910"
        );
    }
}
