//! Security Contexts (RFC 8613 §3, RFC 10021 §2): the Common Context, this endpoint's
//! Sender Context and a Recipient Context per peer. All keys are derived once, when the
//! context is built or a peer is added; pairwise keys on first use, then cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use zeroize::Zeroizing;

use super::aad::TbsForm;
use super::alg::{CipherKey, EncAlg, KeyAgreementAlg, SigAlg};
use super::cred::{Credential, PrivateKey};
use super::derive;
use super::error::{ConfigError, OscoreError};
use super::replay::ReplayWindow;
use super::ssn::SsnSource;
use crate::cbor;
use crate::sync::lock;

/// Largest Sender Sequence Number: Partial IVs are at most 5 bytes (RFC 8613 §7.2.1).
pub const MAX_SSN: u64 = (1 << 40) - 1;

/// Recipient Contexts one group context holds at most; adding more is refused, so a
/// misconfiguration or a flood of new kids cannot grow the table without bound.
pub const MAX_RECIPIENTS: usize = 4096;

/// Everything needed to build a context, as configured or handed out by a Group Manager.
#[derive(Clone, Debug, Default)]
pub struct ContextConfig {
    /// Master Secret (RFC 8613 §3.1).
    pub master_secret: Vec<u8>,
    /// Master Salt, possibly empty (RFC 8613 §3.1).
    pub master_salt: Vec<u8>,
    /// ID Context; the Gid in a group.
    pub id_context: Option<Vec<u8>>,
    /// AEAD Algorithm, a COSE id (RFC 10021 §2.1.1); `None`: not set in the Common
    /// Context (no pairwise mode in a group).
    pub alg_aead: Option<i64>,
    /// Group Encryption Algorithm (§2.1.7); `None`: no group mode.
    pub alg_group_enc: Option<i64>,
    /// Signature Algorithm (§2.1.8), with the Group Encryption Algorithm.
    pub alg_signature: Option<i64>,
    /// Pairwise Key Agreement Algorithm (§2.1.10), with the AEAD Algorithm.
    pub alg_pairwise_key_agreement: Option<i64>,
    /// Group Manager credential; its presence makes this a Group OSCORE context.
    pub gm_cred: Option<Vec<u8>>,
    /// This endpoint's Sender ID.
    pub sender_id: Vec<u8>,
    /// This endpoint's private key (group contexts).
    pub private_key: Option<Vec<u8>>,
    /// This endpoint's credential, a CCS holding the private key's public key.
    pub sender_cred: Option<Vec<u8>>,
    /// Peers: (Sender ID, credential; empty credential for plain OSCORE).
    pub recipients: Vec<(Vec<u8>, Vec<u8>)>,
    /// Which ToBeSigned this group signs (see [`TbsForm`]).
    pub tbs_form: TbsForm,
    /// Key Generation Number of this key epoch (RFC 10021 §12.2).
    pub key_generation: u64,
}

/// The group-specific Common Context parameters (RFC 10021 §2.1.5-§2.1.10).
#[derive(Debug)]
pub struct GroupCommon {
    /// AEAD Algorithm, for pairwise mode (§2.1.1).
    pub alg_aead: Option<EncAlg>,
    /// Group Encryption Algorithm, for group mode (§2.1.7).
    pub alg_group_enc: Option<EncAlg>,
    /// Signature Algorithm, for group mode (§2.1.8).
    pub alg_signature: Option<SigAlg>,
    /// Pairwise Key Agreement Algorithm (§2.1.10).
    pub alg_ka: Option<KeyAgreementAlg>,
    /// The Group Manager's credential, part of every external_aad (§3.4).
    pub gm_cred: Credential,
    /// Signature Encryption Key (§2.1.9); set when group mode is.
    pub sig_enc_key: Option<Vec<u8>>,
    /// Which ToBeSigned the group signs.
    pub tbs_form: TbsForm,
}

/// The Common Context (RFC 8613 §3.1, RFC 10021 §2.1).
#[derive(Debug)]
pub struct CommonContext {
    /// ID Context: the Gid in a group.
    pub id_context: Option<Vec<u8>>,
    /// Common IV, as long as the longest nonce in use (§2.1).
    pub common_iv: Vec<u8>,
    /// The algorithm named in key derivation (Group Encryption Algorithm if set, §2.3).
    pub key_alg: EncAlg,
    /// The `algorithms` element of external_aad, encoded once.
    pub algs_cbor: Vec<u8>,
    /// The group parameters; `None` for plain OSCORE.
    pub group: Option<GroupCommon>,
    /// Key Generation Number of this epoch (RFC 10021 §12.2).
    pub key_generation: u64,
    master_secret: Zeroizing<Vec<u8>>,
    master_salt: Zeroizing<Vec<u8>>,
}

impl CommonContext {
    /// The Gid (ID Context), empty if none.
    pub fn gid(&self) -> &[u8] {
        self.id_context.as_deref().unwrap_or(&[])
    }

    /// Nonce (RFC 8613 §5.2, RFC 10021 §3.3) for `id_piv` and `piv`, of the algorithm's length.
    pub fn nonce(&self, alg: EncAlg, id_piv: &[u8], piv: &[u8], out: &mut [u8; 13]) -> usize {
        let n = alg.nonce_len();
        out.fill(0);
        out[0] = id_piv.len() as u8;
        let id_end = n - 5;
        out[id_end - id_piv.len()..id_end].copy_from_slice(id_piv);
        out[n - piv.len()..n].copy_from_slice(piv);
        for (o, iv) in out[..n].iter_mut().zip(&self.common_iv) {
            *o ^= iv;
        }
        n
    }

    pub(crate) fn derive_key(&self, id: &[u8]) -> Vec<u8> {
        derive::derive(
            &self.master_secret,
            &self.master_salt,
            id,
            self.id_context.as_deref(),
            self.key_alg.cose_id(),
            "Key",
            self.key_alg.key_len(),
        )
    }

    /// Max Sender ID length: smallest nonce length minus 6 (RFC 10021 §2.2).
    pub fn max_id_len(&self) -> usize {
        let mut n = self.key_alg.nonce_len();
        if let Some(g) = &self.group {
            for a in [g.alg_aead, g.alg_group_enc].into_iter().flatten() {
                n = n.min(a.nonce_len());
            }
        }
        n - 6
    }
}

/// This endpoint's Sender Context (RFC 8613 §3.1, RFC 10021 §2.2).
#[derive(Debug)]
pub struct SenderContext {
    /// Sender ID.
    pub id: Vec<u8>,
    /// Sender Key.
    pub key: Zeroizing<Vec<u8>>,
    /// Key for this endpoint's messages in group mode (or plain OSCORE).
    pub cipher: CipherKey,
    /// The private key group-mode messages are signed with.
    pub private_key: Option<PrivateKey>,
    /// This endpoint's credential (in the external_aad of what it sends, §3.4).
    pub cred: Option<Credential>,
    /// Next Sender Sequence Number; one space for both modes (RFC 10021 §2.5.3).
    pub ssn: u64,
    /// Numbers from here on are not yet recorded on stable storage: they must not be
    /// used, so that a crash never leads to nonce reuse (RFC 10021 §2.6.1.1). `None`:
    /// no persistence (tests, ephemeral clients).
    pub ssn_ceiling: Option<u64>,
    /// The numbers' source when several engines protect under this context (the proxy's
    /// membership with `[proxy] threads`): then [`SecurityContext::next_ssn`] takes from
    /// it, and `ssn`/`ssn_ceiling` above only mirror the last number taken.
    pub(crate) shared: Option<SsnSource>,
}

/// A peer's Recipient Context (RFC 8613 §3.1, RFC 10021 §2.3).
#[derive(Debug)]
pub struct RecipientContext {
    /// Recipient ID: the peer's Sender ID.
    pub id: Vec<u8>,
    /// Recipient Key.
    pub key: Zeroizing<Vec<u8>>,
    /// The Recipient Key as a keyed cipher.
    pub cipher: CipherKey,
    /// The peer's credential (its signatures verify against it).
    pub cred: Option<Credential>,
    /// Replay window of the peer's requests (RFC 8613 §7.4); unused while `shared` is set.
    pub replay: ReplayWindow,
    pairwise: Option<PairwiseKeys>,
    /// The window every engine sharing this peer uses instead of `replay` (the proxy's
    /// membership with several threads): a request accepted by one is a replay on all.
    shared: Option<Arc<Mutex<ReplayWindow>>>,
}

impl RecipientContext {
    /// Runs `f` on the window in use: the shared one if set, else the context's own.
    fn window<R>(&mut self, f: impl FnOnce(&mut ReplayWindow) -> R) -> R {
        match &self.shared {
            Some(w) => f(&mut lock(w)),
            None => f(&mut self.replay),
        }
    }

    /// As [`window`](Self::window), reading only.
    fn read_window<R>(&self, f: impl FnOnce(&ReplayWindow) -> R) -> R {
        match &self.shared {
            Some(w) => f(&lock(w)),
            None => f(&self.replay),
        }
    }

    /// Whether the replay window holds state (not lost, RFC 10021 §2.6.1.2).
    pub(crate) fn window_valid(&self) -> bool {
        self.read_window(ReplayWindow::is_valid)
    }

    /// The early, side-effect free check (a cheap reject before any crypto).
    pub(crate) fn window_check(&self, seq: u64) -> Result<(), OscoreError> {
        self.read_window(|w| w.check(seq))
    }

    /// Checks again and records `seq` in one step under the window's lock: of two
    /// engines that both passed the early check, only one gets past this (RFC 8613 §7.4).
    pub(crate) fn window_accept(&mut self, seq: u64) -> Result<(), OscoreError> {
        self.window(|w| w.accept(seq))
    }

    /// From now on the window is `w`, shared with whoever else holds it.
    pub(crate) fn share_window(&mut self, w: Arc<Mutex<ReplayWindow>>) {
        self.shared = Some(w);
    }
}

/// The two pairwise keys with one peer (RFC 10021 §2.5.1).
#[derive(Debug)]
pub struct PairwiseKeys {
    /// Pairwise Sender Key toward the peer.
    pub sender: CipherKey,
    /// Pairwise Recipient Key from the peer.
    pub recipient: CipherKey,
}

/// A complete Security Context of this endpoint: plain OSCORE or a Group OSCORE member.
#[derive(Debug)]
pub struct SecurityContext {
    /// The Common Context.
    pub common: CommonContext,
    /// This endpoint's Sender Context.
    pub sender: SenderContext,
    /// The peers' Recipient Contexts by Recipient ID, at most [`MAX_RECIPIENTS`].
    pub recipients: HashMap<Vec<u8>, RecipientContext>,
    /// Option numbers treated as class U besides RFC 8613's (the groupcomm-proxy options).
    pub proxy_options: [u16; 3],
}

fn opt_alg<T>(
    id: Option<i64>,
    parse: fn(i64) -> Result<T, ConfigError>,
) -> Result<Option<T>, ConfigError> {
    id.map(parse).transpose()
}

impl GroupCommon {
    /// The group's algorithms, checked for a mode that can work (RFC 10021 §2.1), its Group
    /// Manager's credential and the Signature Encryption Key (§2.1.9).
    fn new(
        cfg: &ContextConfig,
        alg_aead: Option<EncAlg>,
        gm: &[u8],
    ) -> Result<GroupCommon, ConfigError> {
        let alg_group_enc = opt_alg(cfg.alg_group_enc, EncAlg::from_cose)?;
        let alg_signature = opt_alg(cfg.alg_signature, SigAlg::from_cose)?;
        let alg_ka = opt_alg(cfg.alg_pairwise_key_agreement, KeyAgreementAlg::from_cose)?;
        if alg_group_enc.is_some() != alg_signature.is_some() {
            return Err(ConfigError::Invalid(
                "group mode needs both the Group Encryption and the Signature Algorithm (RFC 10021 §2.1.7, §2.1.8)".into(),
            ));
        }
        if alg_aead.is_some() != alg_ka.is_some() {
            return Err(ConfigError::Invalid(
                "pairwise mode needs both the AEAD and the Pairwise Key Agreement Algorithm (RFC 10021 §2.1.1, §2.1.10)".into(),
            ));
        }
        if alg_group_enc.is_none() && alg_aead.is_none() {
            return Err(ConfigError::Invalid(
                "neither group nor pairwise mode is set".into(),
            ));
        }
        if cfg.id_context.is_none() {
            return Err(ConfigError::Invalid(
                "a group context needs its Gid as ID Context".into(),
            ));
        }
        let sig_enc_key = alg_group_enc.map(|enc| {
            derive::derive(
                &cfg.master_secret,
                &cfg.master_salt,
                &[],
                cfg.id_context.as_deref(),
                enc.cose_id(),
                "SEKey",
                enc.key_len(),
            )
        });
        Ok(GroupCommon {
            alg_aead,
            alg_group_enc,
            alg_signature,
            alg_ka,
            gm_cred: Credential::from_ccs(gm).map_err(|e| prefix(e, "Group Manager credential"))?,
            sig_enc_key,
            tbs_form: cfg.tbs_form,
        })
    }

    /// The algorithm that keys the Sender and Recipient Keys, the Common IV's length (the
    /// longest nonce of the algorithms in use) and the external_aad's algorithms array
    /// (RFC 10021 §2.1, §3.4).
    fn key_alg_iv_and_algs(&self) -> (EncAlg, usize, Vec<u8>) {
        let key_alg = match (self.alg_group_enc, self.alg_aead) {
            (Some(a), _) | (None, Some(a)) => a,
            // GroupCommon::new refuses a group with neither mode.
            (None, None) => EncAlg::AesCcm16_64_128,
        };
        let iv_len = [self.alg_aead, self.alg_group_enc]
            .into_iter()
            .flatten()
            .map(EncAlg::nonce_len)
            .max()
            .unwrap_or(13);
        let mut algs = Vec::new();
        cbor::array(&mut algs, 4);
        let ids = [
            self.alg_aead.map(EncAlg::cose_id),
            self.alg_group_enc.map(EncAlg::cose_id),
            self.alg_signature.map(SigAlg::cose_id),
            self.alg_ka.map(KeyAgreementAlg::cose_id),
        ];
        for id in ids {
            match id {
                Some(v) => cbor::int(&mut algs, v),
                None => cbor::null(&mut algs),
            }
        }
        (key_alg, iv_len, algs)
    }
}

impl CommonContext {
    /// The Common Context (RFC 8613 §3.2.1): its key algorithm, Common IV and the
    /// algorithms the external_aad names.
    fn new(cfg: &ContextConfig, alg_aead: Option<EncAlg>, group: Option<GroupCommon>) -> Self {
        let (key_alg, iv_len, algs_cbor) = match &group {
            None => {
                let a = alg_aead.unwrap_or(EncAlg::AesCcm16_64_128);
                let mut algs = Vec::new();
                cbor::array(&mut algs, 1);
                cbor::int(&mut algs, a.cose_id());
                (a, a.nonce_len(), algs)
            }
            Some(g) => g.key_alg_iv_and_algs(),
        };
        let common_iv = derive::derive(
            &cfg.master_secret,
            &cfg.master_salt,
            &[],
            cfg.id_context.as_deref(),
            key_alg.cose_id(),
            "IV",
            iv_len,
        );
        CommonContext {
            id_context: cfg.id_context.clone(),
            common_iv,
            key_alg,
            algs_cbor,
            group,
            key_generation: cfg.key_generation,
            master_secret: Zeroizing::new(cfg.master_secret.clone()),
            master_salt: Zeroizing::new(cfg.master_salt.clone()),
        }
    }
}

/// A group member's private key and credential, which must hold its public key
/// (RFC 10021 §2.4).
fn signing_identity(
    cfg: &ContextConfig,
    sig: SigAlg,
) -> Result<(Option<PrivateKey>, Option<Credential>), ConfigError> {
    let pk = cfg
        .private_key
        .as_deref()
        .map(|k| PrivateKey::from_bytes(sig, k))
        .transpose()?;
    let cred = cfg
        .sender_cred
        .as_deref()
        .map(Credential::from_ccs)
        .transpose()
        .map_err(|e| prefix(e, "own credential"))?;
    let (Some(k), Some(c)) = (&pk, &cred) else {
        return Err(ConfigError::Invalid(
            "a group member needs its private key and credential".into(),
        ));
    };
    if !same_key(&k.public_key(), c.public_key()) {
        return Err(ConfigError::BadCredential(
            "own credential does not hold the public key of the private key".into(),
        ));
    }
    Ok((pk, cred))
}

impl SecurityContext {
    /// Derives a Security Context from its configuration (RFC 8613 §3.2, RFC 10021 §2):
    /// the group's algorithms and Signature Encryption Key, the Common Context, the
    /// Sender Context with its signing key, then one Recipient Context per peer.
    pub fn new(cfg: &ContextConfig) -> Result<Self, ConfigError> {
        // The kid context length is one byte in the OSCORE option (RFC 8613 §6.1).
        if cfg.id_context.as_ref().is_some_and(|c| c.len() > 255) {
            return Err(ConfigError::Invalid(
                "ID Context (Gid) longer than 255 bytes (RFC 8613 §6.1)".into(),
            ));
        }
        let alg_aead = opt_alg(cfg.alg_aead, EncAlg::from_cose)?;
        if alg_aead.is_some_and(|a| !a.is_aead()) {
            return Err(ConfigError::Invalid(
                "the AEAD Algorithm must be an AEAD; A128CTR is only a Group Encryption Algorithm"
                    .into(),
            ));
        }
        let group = match &cfg.gm_cred {
            None => None,
            Some(gm) => Some(GroupCommon::new(cfg, alg_aead, gm)?),
        };
        let common = CommonContext::new(cfg, alg_aead, group);
        if cfg.sender_id.len() > common.max_id_len() {
            return Err(ConfigError::Invalid(format!(
                "Sender ID of {} bytes is longer than the nonce allows ({})",
                cfg.sender_id.len(),
                common.max_id_len()
            )));
        }
        let (private_key, cred) = match &common.group {
            None => (None, None),
            Some(g) => signing_identity(cfg, g.alg_signature.unwrap_or(SigAlg::EdDsa))?,
        };
        let key = Zeroizing::new(common.derive_key(&cfg.sender_id));
        let sender = SenderContext {
            id: cfg.sender_id.clone(),
            cipher: CipherKey::new(common.key_alg, &key),
            key,
            private_key,
            cred,
            ssn: 0,
            ssn_ceiling: None,
            shared: None,
        };
        let mut ctx = SecurityContext {
            common,
            sender,
            recipients: HashMap::new(),
            proxy_options: super::protect::DEFAULT_PROXY_OPTIONS,
        };
        for (id, cred) in &cfg.recipients {
            ctx.add_recipient(id, (!cred.is_empty()).then_some(cred.as_slice()))?;
        }
        Ok(ctx)
    }

    /// Replaces the bytes of the Group Manager's credential, keeping its key (see
    /// [`Credential::with_bytes_for_vectors`]): for vectors whose credential does not parse.
    #[doc(hidden)]
    pub fn set_gm_cred_bytes_for_vectors(&mut self, bytes: &[u8]) {
        if let Some(g) = self.common.group.as_mut() {
            g.gm_cred = g.gm_cred.with_bytes_for_vectors(bytes);
        }
    }

    /// Whether this is a Group OSCORE context.
    pub fn is_group(&self) -> bool {
        self.common.group.is_some()
    }

    /// The group parameters, if a group context.
    pub fn group(&self) -> Option<&GroupCommon> {
        self.common.group.as_ref()
    }

    /// Adds (or replaces) the Recipient Context of a peer.
    pub fn add_recipient(&mut self, id: &[u8], cred: Option<&[u8]>) -> Result<(), ConfigError> {
        if id.len() > self.common.max_id_len() {
            return Err(ConfigError::Invalid(format!(
                "Recipient ID {} is longer than the nonce allows",
                hex::encode(id)
            )));
        }
        if id == self.sender.id.as_slice() {
            return Err(ConfigError::Invalid(format!(
                "Recipient ID {} equals this endpoint's Sender ID",
                hex::encode(id)
            )));
        }
        if !self.recipients.contains_key(id) && self.recipients.len() >= MAX_RECIPIENTS {
            return Err(ConfigError::Invalid(format!(
                "more than {MAX_RECIPIENTS} recipient contexts"
            )));
        }
        let cred = match (cred, self.is_group()) {
            (Some(c), true) => {
                let c = Credential::from_ccs(c).map_err(|e| {
                    prefix(e, &format!("credential of Sender ID {}", hex::encode(id)))
                })?;
                // A key on another curve could never verify or agree on a key with us.
                let want = self.group().and_then(|g| g.alg_signature).or_else(|| {
                    self.sender
                        .private_key
                        .as_ref()
                        .map(|k| k.public_key().sig_alg())
                });
                if want.is_some_and(|w| w != c.public_key().sig_alg()) {
                    return Err(ConfigError::BadCredential(format!(
                        "credential of Sender ID {} is on another curve than the group's",
                        hex::encode(id)
                    )));
                }
                Some(c)
            }
            (None, true) => {
                return Err(ConfigError::Invalid(format!(
                    "group member {} has no credential",
                    hex::encode(id)
                )));
            }
            (_, false) => None,
        };
        let key = Zeroizing::new(self.common.derive_key(id));
        self.recipients.insert(
            id.to_vec(),
            RecipientContext {
                id: id.to_vec(),
                cipher: CipherKey::new(self.common.key_alg, &key),
                key,
                cred,
                replay: ReplayWindow::new(),
                pairwise: None,
                shared: None,
            },
        );
        Ok(())
    }

    /// Drops the Recipient Contexts of stale Sender IDs (RFC 10021 §2.6.3.2).
    pub fn remove_recipients(&mut self, ids: &[Vec<u8>]) {
        for id in ids {
            self.recipients.remove(id);
        }
    }

    /// Marks every Replay Window invalid, as after a restart that lost them (RFC 10021
    /// §2.6.1.1, §2.6.1.2): requests are refused until a window is re-established.
    pub fn invalidate_replay_windows(&mut self) {
        for r in self.recipients.values_mut() {
            r.window(|w| *w = ReplayWindow::invalid());
        }
    }

    /// Re-establishes the window of `kid` at `seq`, once freshness was proven by the Echo
    /// exchange of RFC 10021 §9.
    pub fn reinit_replay_window(&mut self, kid: &[u8], seq: u64) -> Result<(), OscoreError> {
        let r = self
            .recipients
            .get_mut(kid)
            .ok_or(OscoreError::UnknownKid)?;
        r.window(|w| w.reinit(seq));
        Ok(())
    }

    /// Takes the next Sender Sequence Number.
    pub fn next_ssn(&mut self) -> Result<u64, OscoreError> {
        if let Some(src) = &self.sender.shared {
            let s = src.take()?;
            self.sender.ssn = s + 1;
            return Ok(s);
        }
        let s = self.sender.ssn;
        if s > MAX_SSN {
            return Err(OscoreError::SequenceExhausted);
        }
        if self.sender.ssn_ceiling.is_some_and(|c| s >= c) {
            return Err(OscoreError::SequenceNotReserved);
        }
        self.sender.ssn = s + 1;
        Ok(s)
    }

    /// The pairwise keys with `peer`, derived on first use (RFC 10021 §2.5.1).
    pub fn pairwise_keys(&mut self, peer: &[u8]) -> Result<&PairwiseKeys, OscoreError> {
        let g = self
            .common
            .group
            .as_ref()
            .ok_or(OscoreError::PairwiseModeUnavailable)?;
        let (Some(aead), Some(_)) = (g.alg_aead, g.alg_ka) else {
            return Err(OscoreError::PairwiseModeUnavailable);
        };
        let r = self
            .recipients
            .get_mut(peer)
            .ok_or(OscoreError::UnknownKid)?;
        if r.pairwise.is_none() {
            let own = self
                .sender
                .private_key
                .as_ref()
                .ok_or(OscoreError::NoSenderContext)?;
            let own_cred = self
                .sender
                .cred
                .as_ref()
                .ok_or(OscoreError::NoSenderContext)?;
            let peer_cred = r.cred.as_ref().ok_or(OscoreError::UnknownKid)?;
            let shared = Zeroizing::new(own.ecdh(peer_cred.public_key())?);
            let gid = self.common.id_context.as_deref();
            let len = aead.key_len();
            let s_info = derive::info(&self.sender.id, gid, aead.cose_id(), "Key", len);
            let r_info = derive::info(&r.id, gid, aead.cose_id(), "Key", len);
            let sk = Zeroizing::new(derive::pairwise_key(
                &self.sender.key,
                own_cred.bytes(),
                peer_cred.bytes(),
                &shared[..],
                &s_info,
                len,
            ));
            let rk = Zeroizing::new(derive::pairwise_key(
                &r.key,
                peer_cred.bytes(),
                own_cred.bytes(),
                &shared[..],
                &r_info,
                len,
            ));
            r.pairwise = Some(PairwiseKeys {
                sender: CipherKey::new(aead, &sk),
                recipient: CipherKey::new(aead, &rk),
            });
        }
        Ok(r.pairwise.as_ref().expect("set above"))
    }
}

fn prefix(e: ConfigError, what: &str) -> ConfigError {
    match e {
        ConfigError::BadCredential(m) => ConfigError::BadCredential(format!("{what}: {m}")),
        other => other,
    }
}

fn same_key(a: &super::cred::PublicKey, b: &super::cred::PublicKey) -> bool {
    use super::cred::PublicKey::*;
    match (a, b) {
        (Ed25519(x), Ed25519(y)) => x == y,
        (P256(x), P256(y)) => x == y,
        _ => false,
    }
}
