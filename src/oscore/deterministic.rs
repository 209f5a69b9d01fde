//! Deterministic Requests (draft-amsuess-core-cacheable-oscore-02 §3): a GET or FETCH that
//! every member of a group protects to the same bytes, under the Sender ID of the group's
//! Deterministic Client, so that a proxy can cache the (group-mode, signed) response.
//!
//! The key of such a request is derived from a hash of the request itself (§3.2): the
//! Deterministic Client's Sender Key (every member can derive it from the Master Secret,
//! §3.4.1), then HKDF with that hash as IKM (§3.4.2 step 3). The nonce is fixed (Partial IV
//! 0), which is safe only because the key is new for every distinct request. There is no
//! source authentication of the request and no replay protection (§2, §6): a server must
//! answer it only if it is side-effect free ([`is_safe_method`]).

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::aad::RequestIds;
use super::alg::CipherKey;
use super::context::SecurityContext;
use super::derive;
use super::error::OscoreError;
use super::option::{OscoreOption, piv_bytes, piv_value};
use super::protect::{Exchange, KeystreamInput, Mode, ResponseInfo, assemble, reassemble, split};
use super::replay::ResponseNumbers;
use crate::coap::MessageView;
use crate::coap::options::{self as opt, encode_options};

/// The Request-Hash option (cacheable-oscore §3.3, IANA TBD548; the number aiocoap 0.4.17
/// and the Appendix F vectors use): elective, safe-to-forward, part of the cache key.
pub const REQUEST_HASH: u16 = 548;

/// SHA-256 (COSE -16), the only `det_hash_alg` (§4) implemented: Appendix F's and the one
/// aiocoap 0.4.17 hard-codes.
pub const HASH_SHA256: i64 = -16;

/// Length of a Request-Hash under SHA-256.
pub const HASH_LEN: usize = 32;

/// The Partial IV of every deterministic request (§3.4.2 step 1).
const DET_PIV: [u8; 1] = [0];

/// Outer Max-Age of a response without an inner one: RFC 7252 §5.10.5's default (§3.4.4 step 9).
const DEFAULT_MAX_AGE: u32 = 60;

/// A deterministic request as its client and its server keep it for the responses: the
/// request's identifiers (the Deterministic Client's kid, Partial IV 0, the Gid) and its
/// Request-Hash, which binds every response to it (§3.4.4).
#[derive(Debug, Clone)]
pub struct DeterministicExchange {
    /// The request's identifiers, as for any OSCORE exchange (mode: pairwise, §3.4.2).
    pub exchange: Exchange,
    /// The Request-Hash value.
    pub hash: Vec<u8>,
}

/// Whether a request code is safe in the REST sense (RFC 7252 §5.8, RFC 8132 §2): the only
/// ones a server may process from a deterministic request (§3.4.3, §6).
pub fn is_safe_method(code: u8) -> bool {
    matches!(code, 0x01 | 0x05)
}

/// Whether a message is a deterministic request of the Deterministic Client `det_kid`
/// (§3.4.3 step 2): its OSCORE option names that kid and it carries a Request-Hash. It
/// says nothing of its validity; a proxy without the group's keys can check no more.
pub fn is_deterministic_request(view: &MessageView, det_kid: &[u8]) -> bool {
    view.option(REQUEST_HASH).is_some()
        && view
            .option(opt::OSCORE)
            .and_then(|v| OscoreOption::parse(v).ok())
            .is_some_and(|o| !o.group && o.kid == Some(det_kid))
}

/// The hash H of §3.4.2 step 2 over the Deterministic Client's Sender Key, the serialized
/// aad_array and the COSE plaintext. The payload is not self-delimiting, so only a
/// non-malleable hash may be used (SHA-256 is).
pub fn request_hash(sender_key: &[u8], aad_array: &[u8], plaintext: &[u8]) -> [u8; HASH_LEN] {
    let mut h = Sha256::new();
    h.update(sender_key);
    h.update(aad_array);
    h.update(plaintext);
    h.finalize().into()
}

impl SecurityContext {
    /// The Deterministic Client's Sender Key (§3.4.1): derived like any Sender Key of the
    /// group from its Sender ID, so every member holds it.
    pub fn deterministic_sender_key(&self, det_kid: &[u8]) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.common.derive_key(det_kid))
    }

    /// The pairwise-mode AEAD key K of one deterministic request (§3.4.2 step 3, §3.4.3
    /// step 4): RFC 10021 §2.5.1's derivation with the Sender Key as salt, the hash as
    /// IKM and the Deterministic Client's Sender ID in the info.
    fn deterministic_key(&self, det_kid: &[u8], hash: &[u8]) -> Result<CipherKey, OscoreError> {
        let g = self.group_common()?;
        let aead = g.alg_aead.ok_or(OscoreError::PairwiseModeUnavailable)?;
        let base = self.deterministic_sender_key(det_kid);
        let info = derive::info(
            det_kid,
            self.common.id_context.as_deref(),
            aead.cose_id(),
            "Key",
            aead.key_len(),
        );
        let k = Zeroizing::new(derive::pairwise_key(
            &base,
            hash,
            &[],
            &[],
            &info,
            aead.key_len(),
        ));
        Ok(CipherKey::new(aead, &k))
    }

    /// The request's external_aad (§3.4.2 step 1): pairwise mode, 'sender_cred' empty.
    fn deterministic_request_aad(&self, det_kid: &[u8], oscore_option: &[u8]) -> Vec<u8> {
        let req = RequestIds {
            kid: det_kid,
            piv: &DET_PIV,
            kid_context: self.common.gid(),
        };
        self.external_aad_with_options(req, &[], oscore_option, &[])
    }

    /// Composes the deterministic request for the plain request `msg` (§3.4.2) under the
    /// Deterministic Client's Sender ID `det_kid`: the same `msg` gives the same bytes on
    /// every call and every member (no Sender Sequence Number is used). The outer code is
    /// FETCH (step 8); the Request-Hash goes outside, class U (§3.3).
    pub fn protect_deterministic_request(
        &self,
        msg: &[u8],
        det_kid: &[u8],
    ) -> Result<(Vec<u8>, DeterministicExchange), OscoreError> {
        if det_kid.len() > self.common.max_id_len() {
            return Err(OscoreError::Mismatch(
                "Deterministic Client Sender ID longer than the nonce allows",
            ));
        }
        let proxy_options = self.proxy_options;
        let s = split(msg, &proxy_options, super::protect::Layer::EndToEnd)?;
        if s.view.option(REQUEST_HASH).is_some() {
            return Err(OscoreError::Mismatch(
                "the plain request already carries a Request-Hash",
            ));
        }
        if !is_safe_method(s.view.code()) {
            return Err(OscoreError::Mismatch(
                "a deterministic request must be safe (GET or FETCH, cacheable-oscore §3.4.3)",
            ));
        }
        let gid = self.common.gid().to_vec();
        let oscore_opt = OscoreOption {
            group: false,
            piv: Some(&DET_PIV),
            kid_context: Some(&gid),
            kid: Some(det_kid),
        }
        .encode();
        let ext_aad = self.deterministic_request_aad(det_kid, &oscore_opt);
        let base = self.deterministic_sender_key(det_kid);
        let hash = request_hash(&base, &ext_aad, &s.plaintext);
        let key = self.deterministic_key(det_kid, &hash)?;
        let mut buf = s.plaintext;
        self.seal(&key, det_kid, &DET_PIV, &ext_aad, &mut buf)?;
        let mut outer = s.outer;
        outer.push((opt::OSCORE, &oscore_opt));
        outer.push((REQUEST_HASH, &hash));
        let out = assemble(&s.view, 0x05, outer, &buf);
        Ok((out, self.deterministic_exchange(det_kid, &hash)))
    }

    fn deterministic_exchange(&self, det_kid: &[u8], hash: &[u8]) -> DeterministicExchange {
        DeterministicExchange {
            exchange: Exchange {
                mode: Mode::Pairwise,
                kid: det_kid.to_vec(),
                piv: DET_PIV.to_vec(),
                kid_context: self.common.gid().to_vec(),
                peer: None,
                responses_sent: 0,
                response_numbers: ResponseNumbers::default(),
                fresh: false,
            },
            hash: hash.to_vec(),
        }
    }

    /// Verifies a deterministic request (§3.4.3): the kid must be `det_kid` and the
    /// Partial IV 0; the key comes from its Request-Hash; there is no replay check (step 5);
    /// the hash recomputed from the decrypted request must equal the Request-Hash (else
    /// [`OscoreError::DecryptFailed`]: a guessed tag cannot poison caches). The caller must
    /// then refuse an unsafe method ([`is_safe_method`]) with a protected 4.01.
    pub fn unprotect_deterministic_request(
        &self,
        msg: &[u8],
        det_kid: &[u8],
    ) -> Result<(Vec<u8>, DeterministicExchange), OscoreError> {
        // The kid goes into the nonce (RFC 10021 §2.2): a longer one does not fit.
        if det_kid.len() > self.common.max_id_len() {
            return Err(OscoreError::Mismatch(
                "Deterministic Client Sender ID longer than the nonce allows",
            ));
        }
        let view = MessageView::parse(msg)?;
        // The outer code is not protected (RFC 8613 §4.2); the inner one is the request's.
        if !view.is_request() {
            return Err(OscoreError::Mismatch("not a request"));
        }
        let oscore_value = view.option(opt::OSCORE).ok_or(OscoreError::NotProtected)?;
        let o = OscoreOption::parse(oscore_value)?;
        if o.group {
            return Err(OscoreError::Mismatch(
                "a deterministic request is in pairwise mode",
            ));
        }
        let (Some(kid), Some(piv)) = (o.kid, o.piv) else {
            return Err(OscoreError::MissingKidOrPiv);
        };
        if kid != det_kid {
            return Err(OscoreError::Mismatch(
                "not the Deterministic Client's Sender ID",
            ));
        }
        if piv_value(piv) != 0 {
            return Err(OscoreError::Mismatch(
                "a deterministic request's Partial IV is 0",
            ));
        }
        let kc = o.kid_context.ok_or(OscoreError::MissingKidContext)?;
        if kc != self.common.gid() {
            return Err(OscoreError::UnknownGid);
        }
        let hash = view
            .option(REQUEST_HASH)
            .ok_or(OscoreError::Mismatch("no Request-Hash option"))?;
        if hash.len() != HASH_LEN {
            return Err(OscoreError::Mismatch("Request-Hash is not a SHA-256 hash"));
        }
        // The received option value, not a re-encoding: it is what the client hashed.
        let ext_aad = self.deterministic_request_aad(det_kid, oscore_value);
        let key = self.deterministic_key(det_kid, hash)?;
        let mut buf = view.payload().to_vec();
        self.open(&key, kid, piv, &ext_aad, &mut buf)?;
        let base = self.deterministic_sender_key(det_kid);
        if request_hash(&base, &ext_aad, &buf)[..] != *hash {
            return Err(OscoreError::DecryptFailed);
        }
        // Request-Hash is an outer-only option here (class U, §3.3); the plain request
        // has the inner options only.
        let plain = reassemble(&view, &buf, &self.proxy_options)?;
        Ok((plain, self.deterministic_exchange(det_kid, hash)))
    }

    /// Protects the response to a deterministic request (§3.4.4): group mode with the
    /// server's own Partial IV and kid (steps 4, 5; §3.4.5), Request-Hash as a class I
    /// option (step 2) elided from the message (step 7), outer code 2.05 (step 6) and an
    /// outer Max-Age equal to the inner one or 60 (step 9). An inner Max-Age of 0 is
    /// refused (step 1).
    pub fn protect_deterministic_response(
        &mut self,
        msg: &[u8],
        det: &mut DeterministicExchange,
    ) -> Result<Vec<u8>, OscoreError> {
        self.group_common()?;
        // The application may have set the Request-Hash (step 2): it must be the request's,
        // and it is class I, so neither in the plaintext nor sent (step 7).
        let view = MessageView::parse(msg)?;
        if view.option(REQUEST_HASH).is_some_and(|h| h != det.hash) {
            return Err(OscoreError::Mismatch(
                "the response's Request-Hash differs from the request's",
            ));
        }
        let mut kept: Vec<(u16, &[u8])> =
            view.options().filter(|(n, _)| *n != REQUEST_HASH).collect();
        let msg = crate::coap::build::encode(
            view.mtype(),
            view.code(),
            view.message_id(),
            view.token(),
            &mut kept,
            view.payload(),
        );
        let proxy_options = self.proxy_options;
        let s = split(&msg, &proxy_options, super::protect::Layer::EndToEnd)?;
        let inner_max_age = s.view.option(opt::MAX_AGE);
        if inner_max_age.is_some_and(|v| v.iter().all(|b| *b == 0)) {
            return Err(OscoreError::Mismatch(
                "Max-Age 0 in a response to a deterministic request (cacheable-oscore §3.4.4)",
            ));
        }
        let default_age = crate::coap::options::uint_value(DEFAULT_MAX_AGE);
        let outer_age: Vec<u8> = inner_max_age.map_or(default_age, <[u8]>::to_vec);
        let gid = self.common.gid().to_vec();
        let context_changed = gid != det.exchange.kid_context;
        let (pb, pn) = piv_bytes(self.next_ssn()?);
        let piv = pb[..pn].to_vec();
        let sender_id = self.sender.id.clone();
        let oscore_opt = OscoreOption {
            group: true,
            piv: Some(&piv),
            kid_context: context_changed.then_some(gid.as_slice()),
            kid: Some(&sender_id),
        }
        .encode();
        let own_cred = self
            .sender
            .cred
            .as_ref()
            .map(|c| c.bytes().to_vec())
            .unwrap_or_default();
        let class_i = class_i_request_hash(&det.hash);
        let req = RequestIds {
            kid: &det.exchange.kid,
            piv: &det.exchange.piv,
            kid_context: &det.exchange.kid_context,
        };
        let ext_aad = self.external_aad_with_options(req, &class_i, &oscore_opt, &own_cred);
        let mut buf = s.plaintext;
        let key = self.sender.cipher.clone();
        self.seal(&key, &sender_id, &piv, &ext_aad, &mut buf)?;
        let ks = KeystreamInput {
            piv: &piv,
            id: &sender_id,
            gid: &gid,
            is_request: false,
        };
        self.countersign(&ext_aad, ks, &mut buf)?;
        let mut outer: Vec<(u16, &[u8])> = s
            .outer
            .into_iter()
            .filter(|(n, _)| *n != opt::OBSERVE)
            .collect();
        outer.push((opt::OSCORE, &oscore_opt));
        outer.push((opt::MAX_AGE, &outer_age));
        det.exchange.responses_sent = det.exchange.responses_sent.saturating_add(1);
        Ok(assemble(&s.view, 0x45, outer, &buf))
    }

    /// Verifies a response to a deterministic request (§3.4.4, client steps 1-3): it must
    /// be in group mode (only a signature authenticates it: the request's key is the
    /// group's); its kid must be `server` when one server was asked, and present when a
    /// group was (§3.4.5); a Request-Hash in it must equal the request's; the signature and
    /// tag are checked with the Request-Hash as a class I option, and its Partial IV
    /// against the server's earlier responses in this exchange (RFC 10021 §5.3.1).
    pub fn unprotect_deterministic_response(
        &mut self,
        msg: &[u8],
        det: &mut DeterministicExchange,
        server: Option<&[u8]>,
    ) -> Result<(Vec<u8>, ResponseInfo), OscoreError> {
        let view = MessageView::parse(msg)?;
        let oscore_value = view.option(opt::OSCORE).ok_or(OscoreError::NotProtected)?;
        let o = OscoreOption::parse(oscore_value)?;
        if !o.group {
            return Err(OscoreError::Mismatch(
                "a response to a deterministic request must be in group mode",
            ));
        }
        let server_id: Vec<u8> = match (o.kid, server) {
            (Some(k), Some(s)) if k != s => {
                return Err(OscoreError::Mismatch("response from another server"));
            }
            (Some(k), _) => k.to_vec(),
            (None, Some(s)) => s.to_vec(),
            (None, None) => return Err(OscoreError::MissingKidOrPiv),
        };
        if view.option(REQUEST_HASH).is_some_and(|h| h != det.hash) {
            return Err(OscoreError::Mismatch(
                "Request-Hash differs from the request's",
            ));
        }
        if o.kid_context.is_some_and(|kc| kc != self.common.gid()) {
            return Err(OscoreError::UnknownGid);
        }
        let piv = o.piv.ok_or(OscoreError::Mismatch(
            "a response to a deterministic request carries its own Partial IV",
        ))?;
        let seq = Some(piv_value(piv));
        let ctx_gid = self.common.gid().to_vec();
        det.exchange
            .response_numbers
            .check(&ctx_gid, &server_id, seq)?;
        let recipient = self
            .recipients
            .get(&server_id)
            .ok_or(OscoreError::UnknownKid)?;
        let cred = recipient.cred.as_ref().ok_or(OscoreError::UnknownKid)?;
        let class_i = class_i_request_hash(&det.hash);
        let req = RequestIds {
            kid: &det.exchange.kid,
            piv: &det.exchange.piv,
            kid_context: &det.exchange.kid_context,
        };
        let ext_aad = self.external_aad_with_options(req, &class_i, oscore_value, cred.bytes());
        let g = self.group_common()?;
        let gid = o.kid_context.unwrap_or(self.common.gid());
        let ct = self.verify_group_payload(
            g,
            &ext_aad,
            view.payload(),
            KeystreamInput {
                piv,
                id: &server_id,
                gid,
                is_request: false,
            },
            cred,
        )?;
        let mut buf = ct.to_vec();
        self.open(&recipient.cipher, &server_id, piv, &ext_aad, &mut buf)?;
        det.exchange
            .response_numbers
            .accept(&ctx_gid, &server_id, seq)?;
        let plain = reassemble(&view, &buf, &self.proxy_options)?;
        Ok((
            plain,
            ResponseInfo {
                mode: Mode::Group,
                server_id,
                piv: seq,
            },
        ))
    }
}

/// The serialized class I options of a response: the Request-Hash alone (§3.4.4 step 2),
/// encoded as options are in a message, deltas from 0 (RFC 8613 §5.4).
pub(crate) fn class_i_request_hash(hash: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hash.len() + 4);
    encode_options(&mut out, [(REQUEST_HASH, hash)]);
    out
}

/// The serialized aad_array of a Deterministic Request of `det_kid` in `ctx`'s group
/// (§3.4.2 step 1), the input of the hash beside the Sender Key and the plaintext: for
/// tests against the draft's vectors and for tools that show it.
#[doc(hidden)]
pub fn request_aad_array(ctx: &SecurityContext, det_kid: &[u8]) -> Vec<u8> {
    let gid = ctx.common.gid().to_vec();
    let oscore_opt = OscoreOption {
        group: false,
        piv: Some(&DET_PIV),
        kid_context: Some(&gid),
        kid: Some(det_kid),
    }
    .encode();
    ctx.deterministic_request_aad(det_kid, &oscore_opt)
}
