//! The structures that enter encryption and signing: external_aad (RFC 8613 §5.4 for plain
//! OSCORE, RFC 10021 §3.4 for both group and pairwise mode), the COSE Enc_structure
//! (RFC 9052 §5.3) and the countersignature's ToBeSigned (RFC 9338 §3.3).

use crate::cbor;

/// Which ToBeSigned array the countersignature covers. See DIGEST §1.6: the two
/// interoperating implementations sign five elements; a literal reading of RFC 9338 §3.3
/// drops sign_protected and signs four.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TbsForm {
    /// `["CounterSignature0", h'', h'', external_aad, ciphertext]` (aiocoap, Californium).
    #[default]
    FiveElement,
    /// `["CounterSignature0", h'', external_aad, ciphertext]`.
    FourElement,
}

/// The request-bound part of external_aad (RFC 10021 §3.4): always the original request's.
#[derive(Debug, Clone, Copy)]
pub struct RequestIds<'a> {
    /// The request's sender's kid.
    pub kid: &'a [u8],
    /// The request's Partial IV.
    pub piv: &'a [u8],
    /// The request's kid context: the Gid in Group OSCORE.
    pub kid_context: &'a [u8],
}

/// Group parts of external_aad; `None` gives the 5-element RFC 8613 array.
#[derive(Debug, Clone, Copy)]
pub struct GroupAad<'a> {
    /// The OSCORE option value of this message (RFC 10021 §3.4).
    pub oscore_option: &'a [u8],
    /// The sender's authentication credential, as the group uses it (RFC 10021 §2.4).
    pub sender_cred: &'a [u8],
    /// The Group Manager's authentication credential (RFC 10021 §2.1.6).
    pub gm_cred: &'a [u8],
}

/// Writes external_aad. `algs` is the pre-encoded `algorithms` element: `[alg_aead]` for
/// RFC 8613, the 4-element array with nulls for RFC 10021.
pub fn external_aad(out: &mut Vec<u8>, algs: &[u8], req: RequestIds, group: Option<GroupAad>) {
    external_aad_with_options(out, algs, req, &[], group)
}

/// [`external_aad`] whose `options` element holds `class_i`, the serialized class I
/// options (RFC 8613 §5.4); only responses to deterministic requests have any
/// (Request-Hash, cacheable-oscore §3.4.4).
pub fn external_aad_with_options(
    out: &mut Vec<u8>,
    algs: &[u8],
    req: RequestIds,
    class_i: &[u8],
    group: Option<GroupAad>,
) {
    cbor::array(out, if group.is_some() { 9 } else { 5 });
    cbor::int(out, 1);
    out.extend_from_slice(algs);
    cbor::bytes(out, req.kid);
    cbor::bytes(out, req.piv);
    cbor::bytes(out, class_i);
    if let Some(g) = group {
        cbor::bytes(out, req.kid_context);
        cbor::bytes(out, g.oscore_option);
        cbor::bytes(out, g.sender_cred);
        cbor::bytes(out, g.gm_cred);
    }
}

/// `["Encrypt0", h'', external_aad]`, the AAD of the AEAD (RFC 8613 §5.4).
pub fn enc_structure(out: &mut Vec<u8>, external_aad: &[u8]) {
    cbor::array(out, 3);
    cbor::text(out, "Encrypt0");
    cbor::bytes(out, &[]);
    cbor::bytes(out, external_aad);
}

/// The countersignature's ToBeSigned (RFC 10021 §3.1 with RFC 9338 §3.3).
pub fn to_be_signed(out: &mut Vec<u8>, form: TbsForm, external_aad: &[u8], ciphertext: &[u8]) {
    match form {
        TbsForm::FiveElement => {
            cbor::array(out, 5);
            cbor::text(out, "CounterSignature0");
            cbor::bytes(out, &[]);
            cbor::bytes(out, &[]);
        }
        TbsForm::FourElement => {
            cbor::array(out, 4);
            cbor::text(out, "CounterSignature0");
            cbor::bytes(out, &[]);
        }
    }
    cbor::bytes(out, external_aad);
    cbor::bytes(out, ciphertext);
}
