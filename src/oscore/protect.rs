//! Protecting and verifying messages: RFC 8613 §8 for plain OSCORE, RFC 10021 §7 (group
//! mode) and §8 (pairwise mode). Messages go in and out as serialized CoAP datagrams.

use super::aad::{self, GroupAad, RequestIds};
use super::alg::CipherKey;
use super::context::{GroupCommon, SecurityContext};
use super::derive;
use super::error::OscoreError;
use super::option::{OscoreOption, piv_bytes, piv_value};
use super::replay::ResponseNumbers;
use crate::coap::options::{self as opt, OptionClass, encode_options, oscore_class};
use crate::coap::{MessageView, split_options};

/// How a message is protected (RFC 10021 §4.1 Group Flag). Plain OSCORE contexts only
/// have [`Mode::Pairwise`], which there means RFC 8613 with the Sender and Recipient Keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Group mode: group keys and a countersignature (RFC 10021 §7).
    Group,
    /// Pairwise mode: keys derived for one pair of members (RFC 10021 §8), or plain OSCORE.
    Pairwise,
}

/// What a client and a server keep of a request while its exchange lasts (RFC 10021 §5.1,
/// §7.1-§7.4): the request's kid, Partial IV and kid context, which enter the external_aad
/// and nonce of every response even after the Sender ID or Gid changed.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The mode the request was protected in; responses normally use the same.
    pub mode: Mode,
    /// The request's sender's Sender ID.
    pub kid: Vec<u8>,
    /// The request's Partial IV.
    pub piv: Vec<u8>,
    /// The request's kid context (the Gid in Group OSCORE).
    pub kid_context: Vec<u8>,
    /// Client side: the server a pairwise request went to.
    pub peer: Option<Vec<u8>>,
    /// Server side: responses protected so far.
    pub responses_sent: u32,
    /// Client side: Response Numbers per server (§5.3.1).
    pub(crate) response_numbers: ResponseNumbers,
    /// Server side: false when the request verified but its freshness is unknown, the
    /// sender's replay window being invalid after lost state (RFC 10021 §2.6.1.2); the
    /// caller then runs the Echo exchange of §9 before acting on it.
    pub fresh: bool,
}

/// What a verified response tells about its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseInfo {
    /// The mode the response was protected in.
    pub mode: Mode,
    /// The Sender ID of the server that protected it.
    pub server_id: Vec<u8>,
    /// Its Partial IV as a number; `None` when it used the request's nonce.
    pub piv: Option<u64>,
}

/// Numbers of options a proxy must see, made class U (groupcomm-proxy §2, §3, §7.3):
/// Multicast-Timeout, Group-ETag, Reply-From by default.
pub const DEFAULT_PROXY_OPTIONS: [u16; 3] = [
    opt::MULTICAST_TIMEOUT_DEFAULT,
    opt::GROUP_ETAG_DEFAULT,
    opt::REPLY_FROM_DEFAULT,
];

/// Which OSCORE layer a protection is (oscore-capable-proxies §2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// Between the application endpoints: class U options stay outside for proxies.
    EndToEnd,
    /// Between a client and the proxy next to it: the options the proxy consumes (Proxy-*,
    /// Uri-Host/Port, Multicast-Timeout), those it adds for the client (Reply-From) and an
    /// inner OSCORE option are all for this hop's endpoints only, so every outer-only
    /// option is processed as class E (oscore-capable-proxies §2.2 steps 4-8).
    Hop,
}

/// The parts an unprotected message splits into.
pub(super) struct Split<'a> {
    pub(super) view: MessageView<'a>,
    pub(super) plaintext: Vec<u8>,
    pub(super) outer: Vec<(u16, &'a [u8])>,
}

pub(super) fn split<'a>(
    msg: &'a [u8],
    proxy_options: &[u16],
    layer: Layer,
) -> Result<Split<'a>, OscoreError> {
    let view = MessageView::parse(msg)?;
    let mut plaintext = Vec::with_capacity(msg.len() + 8);
    plaintext.push(view.code());
    let mut inner = Vec::with_capacity(8);
    let mut outer = Vec::with_capacity(8);
    for (n, v) in view.options() {
        match oscore_class(n, proxy_options) {
            OptionClass::E => inner.push((n, v)),
            OptionClass::U if layer == Layer::Hop => inner.push((n, v)),
            OptionClass::U => {
                if n == opt::PROXY_URI {
                    return Err(OscoreError::ProxyUriUnsupported);
                }
                if n == opt::OSCORE {
                    return Err(OscoreError::Mismatch("message is already OSCORE protected"));
                }
                outer.push((n, v));
            }
            OptionClass::Both => {
                inner.push((n, v));
                outer.push((n, v));
            }
        }
    }
    encode_options(&mut plaintext, inner);
    if !view.payload().is_empty() {
        plaintext.push(0xff);
        plaintext.extend_from_slice(view.payload());
    }
    Ok(Split {
        view,
        plaintext,
        outer,
    })
}

/// Serializes the outer message: the view's type, message ID and token with new code,
/// options and payload.
pub(super) fn assemble(
    view: &MessageView,
    code: u8,
    mut opts: Vec<(u16, &[u8])>,
    payload: &[u8],
) -> Vec<u8> {
    crate::coap::build::encode(
        view.mtype(),
        code,
        view.message_id(),
        view.token(),
        &mut opts,
        payload,
    )
}

fn has_observe(opts: &[(u16, &[u8])]) -> bool {
    opts.iter().any(|(n, _)| *n == opt::OBSERVE)
}

/// Rebuilds the unprotected message from the outer message and the decrypted plaintext.
pub(super) fn reassemble(
    view: &MessageView,
    plaintext: &[u8],
    proxy_options: &[u16],
) -> Result<Vec<u8>, OscoreError> {
    let (&code, rest) = plaintext.split_first().ok_or(OscoreError::BadPlaintext)?;
    let (inner, payload) = split_options(rest).map_err(|_| OscoreError::BadPlaintext)?;
    let mut opts: Vec<(u16, &[u8])> = view
        .options()
        .filter(|(n, _)| match oscore_class(*n, proxy_options) {
            OptionClass::U => *n != opt::OSCORE,
            // Only the inner copy is protected between the endpoints; the outer one is for
            // intermediaries (RFC 8613 §4.1.3.5), so an outer one alone is not trusted.
            OptionClass::Both => false,
            // Outer class E options are not protected and so not trusted (RFC 8613 §4.1).
            OptionClass::E => false,
        })
        .collect();
    opts.extend(inner.iter().copied());
    Ok(assemble(view, code, opts, payload))
}

impl SecurityContext {
    pub(super) fn group_common(&self) -> Result<&GroupCommon, OscoreError> {
        self.common
            .group
            .as_ref()
            .ok_or(OscoreError::GroupModeUnavailable)
    }

    /// Builds external_aad for a message whose OSCORE option value is `oscore_option`
    /// and whose sender has credential `sender_cred` (group contexts only).
    fn external_aad(&self, req: RequestIds, oscore_option: &[u8], sender_cred: &[u8]) -> Vec<u8> {
        self.external_aad_with_options(req, &[], oscore_option, sender_cred)
    }

    /// [`external_aad`](Self::external_aad) with the serialized class I options in its
    /// `options` element (RFC 10021 §3.4; cacheable-oscore §3.4.4 puts Request-Hash there).
    pub(super) fn external_aad_with_options(
        &self,
        req: RequestIds,
        class_i: &[u8],
        oscore_option: &[u8],
        sender_cred: &[u8],
    ) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(64 + class_i.len() + oscore_option.len() + sender_cred.len() + 64);
        let group = self.common.group.as_ref().map(|g| GroupAad {
            oscore_option,
            sender_cred,
            gm_cred: g.gm_cred.bytes(),
        });
        aad::external_aad_with_options(&mut out, &self.common.algs_cbor, req, class_i, group);
        out
    }

    /// The nonce and AAD of a message for `key` (RFC 10021 §3.3, §3.4): the Enc_structure
    /// for an AEAD, nothing for a non-AEAD Group Encryption Algorithm (§10, RFC 9459 §6).
    fn nonce_and_aad(
        &self,
        key: &CipherKey,
        id_piv: &[u8],
        piv: &[u8],
        ext_aad: &[u8],
    ) -> ([u8; 13], usize, Vec<u8>) {
        let mut nonce = [0u8; 13];
        let n = self.common.nonce(key.alg(), id_piv, piv, &mut nonce);
        let mut enc = Vec::new();
        if key.alg().is_aead() {
            enc.reserve(ext_aad.len() + 16);
            aad::enc_structure(&mut enc, ext_aad);
        }
        (nonce, n, enc)
    }

    /// Encrypts the plaintext in `buf` in place with `key`.
    pub(super) fn seal(
        &self,
        key: &CipherKey,
        id_piv: &[u8],
        piv: &[u8],
        ext_aad: &[u8],
        buf: &mut Vec<u8>,
    ) -> Result<(), OscoreError> {
        let (nonce, n, enc) = self.nonce_and_aad(key, id_piv, piv, ext_aad);
        key.encrypt(&nonce[..n], &enc, buf)
    }

    /// Decrypts and verifies the ciphertext in `buf` in place with `key`.
    pub(super) fn open(
        &self,
        key: &CipherKey,
        id_piv: &[u8],
        piv: &[u8],
        ext_aad: &[u8],
        buf: &mut Vec<u8>,
    ) -> Result<(), OscoreError> {
        let (nonce, n, enc) = self.nonce_and_aad(key, id_piv, piv, ext_aad);
        key.decrypt(&nonce[..n], &enc, buf)
    }

    /// Appends the encrypted countersignature (RFC 10021 §3.1, §4.1, §4.2).
    pub(super) fn countersign(
        &self,
        ext_aad: &[u8],
        ks: KeystreamInput,
        buf: &mut Vec<u8>,
    ) -> Result<(), OscoreError> {
        let g = self.group_common()?;
        let sek = g
            .sig_enc_key
            .as_deref()
            .ok_or(OscoreError::GroupModeUnavailable)?;
        let key = self
            .sender
            .private_key
            .as_ref()
            .ok_or(OscoreError::NoSenderContext)?;
        let mut tbs = Vec::with_capacity(ext_aad.len() + buf.len() + 32);
        aad::to_be_signed(&mut tbs, g.tbs_form, ext_aad, buf);
        let mut sig = key.sign(&tbs);
        let mut stream = [0u8; 64];
        derive::keystream(sek, ks.piv, ks.id, ks.gid, ks.is_request, &mut stream);
        for (s, k) in sig.iter_mut().zip(stream) {
            *s ^= k;
        }
        buf.extend_from_slice(&sig);
        Ok(())
    }

    /// Protects a request. `peer` is the recipient of a pairwise-mode request (for plain
    /// OSCORE, the one recipient); group mode ignores it.
    pub fn protect_request(
        &mut self,
        msg: &[u8],
        mode: Mode,
        peer: Option<&[u8]>,
    ) -> Result<(Vec<u8>, Exchange), OscoreError> {
        self.protect_request_layer(msg, mode, peer, Layer::EndToEnd)
    }

    /// [`protect_request`](Self::protect_request) as the given layer.
    pub fn protect_request_layer(
        &mut self,
        msg: &[u8],
        mode: Mode,
        peer: Option<&[u8]>,
        layer: Layer,
    ) -> Result<(Vec<u8>, Exchange), OscoreError> {
        let proxy_options = self.proxy_options;
        let Split {
            view,
            mut plaintext,
            mut outer,
        } = split(msg, &proxy_options, layer)?;
        if mode == Mode::Group {
            self.group_common()?;
        }
        let ssn = self.next_ssn()?;
        let (pivb, pn) = piv_bytes(ssn);
        let piv = &pivb[..pn];
        let gid = self.common.id_context.clone();
        let is_group_ctx = self.is_group();
        let oscore_opt = OscoreOption {
            group: mode == Mode::Group,
            piv: Some(piv),
            kid_context: gid.as_deref(),
            kid: Some(&self.sender.id),
        }
        .encode();
        let sender_id = self.sender.id.clone();
        let own_cred = self
            .sender
            .cred
            .as_ref()
            .map(|c| c.bytes().to_vec())
            .unwrap_or_default();
        let req = RequestIds {
            kid: &sender_id,
            piv,
            kid_context: gid.as_deref().unwrap_or(&[]),
        };
        let ext_aad = self.external_aad(req, &oscore_opt, &own_cred);
        match mode {
            Mode::Group => {
                let key = self.sender.cipher.clone();
                self.seal(&key, &sender_id, piv, &ext_aad, &mut plaintext)?;
                let ks = KeystreamInput {
                    piv,
                    id: &sender_id,
                    gid: req.kid_context,
                    is_request: true,
                };
                self.countersign(&ext_aad, ks, &mut plaintext)?;
            }
            Mode::Pairwise if is_group_ctx => {
                let peer = peer.ok_or(OscoreError::Mismatch(
                    "pairwise request without a recipient",
                ))?;
                let key = self.pairwise_keys(peer)?.sender.clone();
                self.seal(&key, &sender_id, piv, &ext_aad, &mut plaintext)?;
            }
            Mode::Pairwise => {
                let key = self.sender.cipher.clone();
                self.seal(&key, &sender_id, piv, &ext_aad, &mut plaintext)?;
            }
        }
        let code = if has_observe(&outer) { 0x05 } else { 0x02 };
        outer.push((opt::OSCORE, &oscore_opt));
        let out = assemble(&view, code, outer, &plaintext);
        let exchange = Exchange {
            mode,
            kid: sender_id,
            piv: piv.to_vec(),
            kid_context: gid.unwrap_or_default(),
            peer: peer.map(<[u8]>::to_vec).or_else(|| {
                (!is_group_ctx)
                    .then(|| self.recipients.keys().next().cloned())
                    .flatten()
            }),
            responses_sent: 0,
            response_numbers: ResponseNumbers::default(),
            fresh: true,
        };
        Ok((out, exchange))
    }

    /// Verifies and decrypts a request addressed to this endpoint (RFC 10021 §7.2, §8.4;
    /// RFC 8613 §8.2). The signature is checked before decryption, and the replay window
    /// moves only after everything verified.
    pub fn unprotect_request(&mut self, msg: &[u8]) -> Result<(Vec<u8>, Exchange), OscoreError> {
        let view = MessageView::parse(msg)?;
        let oscore_value = view.option(opt::OSCORE).ok_or(OscoreError::NotProtected)?;
        let o = OscoreOption::parse(oscore_value)?;
        let (Some(kid), Some(piv)) = (o.kid, o.piv) else {
            return Err(OscoreError::MissingKidOrPiv);
        };
        let mode = if o.group { Mode::Group } else { Mode::Pairwise };
        if self.is_group() {
            let kc = o.kid_context.ok_or(OscoreError::MissingKidContext)?;
            if kc != self.common.gid() {
                return Err(OscoreError::UnknownGid);
            }
            // RFC 10021 §7.2: do not process requests that carry one's own Sender ID.
            if kid == self.sender.id.as_slice() {
                return Err(OscoreError::OwnSenderId);
            }
        } else if o.group {
            return Err(OscoreError::GroupModeUnavailable);
        } else if o
            .kid_context
            .is_some_and(|kc| Some(kc) != self.common.id_context.as_deref())
        {
            return Err(OscoreError::UnknownGid);
        }
        let seq = piv_value(piv);
        let recipient = self.recipients.get(kid).ok_or(OscoreError::UnknownKid)?;
        // With an invalid window the request is still verified, for the Echo exchange.
        let window_valid = recipient.window_valid();
        if window_valid {
            recipient.window_check(seq)?;
        }
        let sender_cred = recipient.cred.as_ref().map(|c| c.bytes()).unwrap_or(&[]);
        let kid_context = o.kid_context.unwrap_or(&[]);
        let req = RequestIds {
            kid,
            piv,
            kid_context,
        };
        let ext_aad = self.external_aad(req, oscore_value, sender_cred);
        let mut buf;
        match mode {
            Mode::Group => {
                let g = self.group_common()?;
                let ciphertext = self.verify_group_payload(
                    g,
                    &ext_aad,
                    view.payload(),
                    KeystreamInput {
                        piv,
                        id: kid,
                        gid: kid_context,
                        is_request: true,
                    },
                    recipient.cred.as_ref().ok_or(OscoreError::UnknownKid)?,
                )?;
                buf = ciphertext.to_vec();
                let key = &self.recipients[kid].cipher;
                self.open(key, kid, piv, &ext_aad, &mut buf)?;
            }
            Mode::Pairwise => {
                buf = view.payload().to_vec();
                if self.is_group() {
                    let key = self.pairwise_keys(kid)?.recipient.clone();
                    self.open(&key, kid, piv, &ext_aad, &mut buf)?;
                } else {
                    let key = &self.recipients[kid].cipher;
                    self.open(key, kid, piv, &ext_aad, &mut buf)?;
                }
            }
        }
        if window_valid {
            // The final check-and-set: another engine sharing the window may have taken
            // `seq` since the early check (then: Replay).
            self.recipients
                .get_mut(kid)
                .expect("looked up above")
                .window_accept(seq)?;
        }
        let plain = reassemble(&view, &buf, &self.proxy_options)?;
        let exchange = Exchange {
            mode,
            kid: kid.to_vec(),
            piv: piv.to_vec(),
            kid_context: kid_context.to_vec(),
            peer: None,
            responses_sent: 0,
            response_numbers: ResponseNumbers::default(),
            fresh: window_valid,
        };
        Ok((plain, exchange))
    }

    /// Verifies the encrypted countersignature of a group-mode payload and returns the
    /// ciphertext it covers (RFC 10021 §7.2 step order: verify before decrypting).
    pub(super) fn verify_group_payload<'p>(
        &self,
        g: &GroupCommon,
        ext_aad: &[u8],
        payload: &'p [u8],
        ks: KeystreamInput,
        cred: &super::cred::Credential,
    ) -> Result<&'p [u8], OscoreError> {
        let sek = g
            .sig_enc_key
            .as_deref()
            .ok_or(OscoreError::GroupModeUnavailable)?;
        let enc = g.alg_group_enc.ok_or(OscoreError::GroupModeUnavailable)?;
        let sig_len = g.alg_signature.map_or(64, |s| s.sig_len());
        verify_countersignature(
            sek,
            g.tbs_form,
            enc.tag_len(),
            sig_len,
            ext_aad,
            payload,
            ks,
            cred,
        )
    }

    /// Protects a response to `exchange` (RFC 10021 §7.3, §8.5; RFC 8613 §8.3). The first
    /// response reuses the request's nonce unless `fresh_piv` asks otherwise or the
    /// context changed since the request; every later one carries its own Partial IV
    /// (§5.3.1). After a Gid change the new Gid goes in 'kid context' (§7.3).
    pub fn protect_response(
        &mut self,
        msg: &[u8],
        exchange: &mut Exchange,
        mode: Mode,
        fresh_piv: bool,
    ) -> Result<Vec<u8>, OscoreError> {
        self.protect_response_layer(msg, exchange, mode, fresh_piv, Layer::EndToEnd)
    }

    /// [`protect_response`](Self::protect_response) as the given layer.
    pub fn protect_response_layer(
        &mut self,
        msg: &[u8],
        exchange: &mut Exchange,
        mode: Mode,
        fresh_piv: bool,
        layer: Layer,
    ) -> Result<Vec<u8>, OscoreError> {
        let proxy_options = self.proxy_options;
        let Split {
            view,
            mut plaintext,
            mut outer,
        } = split(msg, &proxy_options, layer)?;
        let gid = self.common.gid().to_vec();
        let context_changed = self.is_group() && gid != exchange.kid_context;
        let own_piv = fresh_piv || context_changed || exchange.responses_sent > 0;
        let ssn_piv = if own_piv {
            let (b, n) = piv_bytes(self.next_ssn()?);
            Some(b[..n].to_vec())
        } else {
            None
        };
        let sender_id = self.sender.id.clone();
        let oscore_opt = OscoreOption {
            group: mode == Mode::Group,
            piv: ssn_piv.as_deref(),
            kid_context: context_changed.then_some(gid.as_slice()),
            // Group contexts always name the responder (RFC 10021 §3.2); plain OSCORE
            // responses carry no kid (RFC 8613 §6.1).
            kid: self.is_group().then_some(sender_id.as_slice()),
        }
        .encode();
        let own_cred = self
            .sender
            .cred
            .as_ref()
            .map(|c| c.bytes().to_vec())
            .unwrap_or_default();
        let req = RequestIds {
            kid: &exchange.kid,
            piv: &exchange.piv,
            kid_context: &exchange.kid_context,
        };
        let ext_aad = self.external_aad(req, &oscore_opt, &own_cred);
        let (id_piv, piv): (&[u8], &[u8]) = match &ssn_piv {
            Some(p) => (&sender_id, p),
            None => (&exchange.kid, &exchange.piv),
        };
        match mode {
            Mode::Group => {
                self.group_common()?;
                let key = self.sender.cipher.clone();
                self.seal(&key, id_piv, piv, &ext_aad, &mut plaintext)?;
                let ks = KeystreamInput {
                    piv,
                    id: id_piv,
                    gid: &gid,
                    is_request: false,
                };
                self.countersign(&ext_aad, ks, &mut plaintext)?;
            }
            Mode::Pairwise if self.is_group() => {
                let key = self.pairwise_keys(&exchange.kid)?.sender.clone();
                self.seal(&key, id_piv, piv, &ext_aad, &mut plaintext)?;
            }
            Mode::Pairwise => {
                let key = self.sender.cipher.clone();
                self.seal(&key, id_piv, piv, &ext_aad, &mut plaintext)?;
            }
        }
        let code = if has_observe(&outer) { 0x45 } else { 0x44 };
        outer.push((opt::OSCORE, &oscore_opt));
        exchange.responses_sent = exchange.responses_sent.saturating_add(1);
        Ok(assemble(&view, code, outer, &plaintext))
    }

    /// Verifies and decrypts a response within `exchange` (RFC 10021 §7.4, §8.6), with
    /// replay protection by Response Numbers (§5.3.1).
    pub fn unprotect_response(
        &mut self,
        msg: &[u8],
        exchange: &mut Exchange,
    ) -> Result<(Vec<u8>, ResponseInfo), OscoreError> {
        let view = MessageView::parse(msg)?;
        let oscore_value = view.option(opt::OSCORE).ok_or(OscoreError::NotProtected)?;
        let o = OscoreOption::parse(oscore_value)?;
        let mode = if o.group { Mode::Group } else { Mode::Pairwise };
        if o.kid_context.is_some_and(|kc| kc != self.common.gid()) {
            return Err(OscoreError::UnknownGid);
        }
        let server: Vec<u8> = match (o.kid, &exchange.peer) {
            (Some(k), _) => k.to_vec(),
            (None, Some(p)) => p.clone(),
            (None, None) => return Err(OscoreError::MissingKidOrPiv),
        };
        let seq = o.piv.map(piv_value);
        let ctx_gid = self.common.gid().to_vec();
        exchange.response_numbers.check(&ctx_gid, &server, seq)?;
        let recipient = self
            .recipients
            .get(&server)
            .ok_or(OscoreError::UnknownKid)?;
        let sender_cred = recipient.cred.as_ref().map(|c| c.bytes()).unwrap_or(&[]);
        let req = RequestIds {
            kid: &exchange.kid,
            piv: &exchange.piv,
            kid_context: &exchange.kid_context,
        };
        let ext_aad = self.external_aad(req, oscore_value, sender_cred);
        let (id_piv, piv): (&[u8], &[u8]) = match o.piv {
            Some(p) => (&server, p),
            None => (&exchange.kid, &exchange.piv),
        };
        let mut buf;
        match mode {
            Mode::Group => {
                let g = self.group_common()?;
                let gid = o.kid_context.unwrap_or(self.common.gid());
                let ct = self.verify_group_payload(
                    g,
                    &ext_aad,
                    view.payload(),
                    KeystreamInput {
                        piv,
                        id: id_piv,
                        gid,
                        is_request: false,
                    },
                    recipient.cred.as_ref().ok_or(OscoreError::UnknownKid)?,
                )?;
                buf = ct.to_vec();
                self.open(&recipient.cipher, id_piv, piv, &ext_aad, &mut buf)?;
            }
            Mode::Pairwise => {
                buf = view.payload().to_vec();
                if self.is_group() {
                    let key = self.pairwise_keys(&server)?.recipient.clone();
                    self.open(&key, id_piv, piv, &ext_aad, &mut buf)?;
                } else {
                    self.open(&recipient.cipher, id_piv, piv, &ext_aad, &mut buf)?;
                }
            }
        }
        exchange.response_numbers.accept(&ctx_gid, &server, seq)?;
        let plain = reassemble(&view, &buf, &self.proxy_options)?;
        Ok((
            plain,
            ResponseInfo {
                mode,
                server_id: server,
                piv: seq,
            },
        ))
    }
}

/// Inputs of the countersignature keystream (RFC 10021 §4.2).
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeystreamInput<'a> {
    /// The Partial IV used to protect the message (the request's for a response without one).
    pub piv: &'a [u8],
    /// Sender ID of the endpoint that generated that Partial IV.
    pub id: &'a [u8],
    /// Gid of the context that protected the message.
    pub gid: &'a [u8],
    pub is_request: bool,
}

/// Decrypts and verifies the countersignature at the end of a group-mode payload; returns
/// the ciphertext before it. Shared by members and by the external checker (§7.5).
#[allow(clippy::too_many_arguments)]
pub(crate) fn verify_countersignature<'p>(
    sig_enc_key: &[u8],
    form: aad::TbsForm,
    tag_len: usize,
    sig_len: usize,
    ext_aad: &[u8],
    payload: &'p [u8],
    ks: KeystreamInput,
    cred: &super::cred::Credential,
) -> Result<&'p [u8], OscoreError> {
    // At least the code byte of the plaintext, the tag, and the signature.
    if payload.len() < 1 + tag_len + sig_len {
        return Err(OscoreError::ShortPayload);
    }
    let (ciphertext, enc_sig) = payload.split_at(payload.len() - sig_len);
    let mut sig = [0u8; 64];
    derive::keystream(
        sig_enc_key,
        ks.piv,
        ks.id,
        ks.gid,
        ks.is_request,
        &mut sig[..sig_len],
    );
    for (s, e) in sig.iter_mut().zip(enc_sig) {
        *s ^= e;
    }
    let mut tbs = Vec::with_capacity(ext_aad.len() + ciphertext.len() + 32);
    aad::to_be_signed(&mut tbs, form, ext_aad, ciphertext);
    if cred.public_key().verify(&tbs, &sig[..sig_len]) {
        Ok(ciphertext)
    } else {
        Err(OscoreError::BadSignature)
    }
}
