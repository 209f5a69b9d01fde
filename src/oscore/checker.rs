//! The external signature checker of RFC 10021 §7.5: verifies group-mode requests and
//! responses from public material only (Gid, algorithms, Signature Encryption Key,
//! member and Group Manager credentials, §12.3). It holds no Sender or Recipient Keys, so
//! it cannot decrypt a payload or forge a message (§14.1).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use super::aad::{self, GroupAad, RequestIds, TbsForm};
use super::alg::{EncAlg, KeyAgreementAlg, SigAlg};
use super::batch::{self, BatchVerifier, SigJob};
use super::cred::Credential;
use super::derive;
use super::error::{ConfigError, OscoreError};
use super::option::{OscoreOption, piv_value};
use super::protect::{KeystreamInput, verify_countersignature};
use super::replay::{ReplayWindow, WindowState};
use crate::cbor;
use crate::coap::MessageView;
use crate::coap::options::OSCORE;

/// The public material of one key epoch of a group (§12.3).
#[derive(Clone, Debug, Default)]
pub struct CheckerConfig {
    /// Gid of the epoch, at most 255 bytes (RFC 8613 §6.1).
    pub gid: Vec<u8>,
    /// AEAD Algorithm, COSE id; `None` when the group uses group mode only (§2.1.1).
    pub alg_aead: Option<i64>,
    /// Group Encryption Algorithm, COSE id (§2.1.7).
    pub alg_group_enc: i64,
    /// Signature Algorithm, COSE id (§2.1.8).
    pub alg_signature: i64,
    /// Pairwise Key Agreement Algorithm, COSE id (§2.1.10).
    pub alg_pairwise_key_agreement: Option<i64>,
    /// The Signature Encryption Key as handed out by the Group Manager...
    pub sig_enc_key: Option<Vec<u8>>,
    /// ...or the Master Secret and Salt to derive it from (§2.1.9).
    pub master_secret: Option<Vec<u8>>,
    /// Needed with `master_secret`, to derive the Signature Encryption Key (§2.1.9).
    pub master_salt: Vec<u8>,
    /// The Group Manager's authentication credential, a CCS (§2.1.6).
    pub gm_cred: Vec<u8>,
    /// Members' credentials by Sender ID.
    pub members: Vec<(Vec<u8>, Vec<u8>)>,
    /// Which ToBeSigned array the group's members sign.
    pub tbs_form: TbsForm,
    /// Key Generation Number of this epoch (§12.2).
    pub key_generation: u64,
}

/// Members a checker knows at most per epoch.
pub(crate) const MAX_MEMBERS: usize = 4096;

/// Verifies the countersignatures of one key epoch.
#[derive(Debug)]
pub struct SignatureChecker {
    gid: Vec<u8>,
    algs_cbor: Vec<u8>,
    sig_enc_key: Vec<u8>,
    enc: EncAlg,
    sig: SigAlg,
    gm_cred: Credential,
    members: HashMap<Vec<u8>, Credential>,
    /// Members whose Ed25519 key lies in the prime-order subgroup: their signatures may
    /// be verified in a batch equation (see `oscore::batch`); others one by one.
    batchable: std::collections::HashSet<Vec<u8>>,
    tbs_form: TbsForm,
    key_generation: u64,
}

/// A request whose countersignature is ready to verify: everything `check_request` does
/// but the verification itself, so that the signatures of several requests can be
/// verified together ([`SignatureChecker::check_requests`]).
#[derive(Debug)]
pub(crate) enum Prepared<'a> {
    /// Pairwise mode: no signature (§8).
    Unverifiable,
    /// Group mode, valid if `tbs` verifies under `cred` with `sig`.
    Signed {
        checked: CheckedRequest,
        cred: &'a Credential,
        tbs: Vec<u8>,
        sig: [u8; 64],
        batchable: bool,
    },
}

impl Prepared<'_> {
    /// The signature job, if there is one.
    pub(crate) fn job(&self) -> Option<SigJob<'_>> {
        match self {
            Prepared::Unverifiable => None,
            Prepared::Signed {
                cred,
                tbs,
                sig,
                batchable,
                ..
            } => Some(SigJob {
                key: cred.public_key(),
                msg: tbs,
                sig,
                batchable: *batchable,
            }),
        }
    }

    /// The verdict, given whether the signature verified.
    pub(crate) fn verdict(self, verified: bool) -> Result<Verdict<CheckedRequest>, OscoreError> {
        match self {
            Prepared::Unverifiable => Ok(Verdict::Unverifiable),
            Prepared::Signed { checked, .. } if verified => Ok(Verdict::Verified(checked)),
            Prepared::Signed { .. } => Err(OscoreError::BadSignature),
        }
    }
}

/// What a checked request is: who sent it, with which Partial IV.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedRequest {
    /// The sender's Sender ID.
    pub kid: Vec<u8>,
    /// As in the OSCORE option: the nonce and the replay window use it.
    pub piv: Vec<u8>,
    /// The Gid the request names.
    pub kid_context: Vec<u8>,
    /// `piv` as a number, the Sender Sequence Number.
    pub seq: u64,
}

/// The outcome of looking at a message: verified, or pairwise mode, which carries no
/// signature and cannot be checked (§8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<T> {
    /// A group-mode message whose countersignature verifies.
    Verified(T),
    /// A pairwise-mode message (§8): for the recipient to authenticate.
    Unverifiable,
}

/// A checked response: the server, its Partial IV if it had one, and the Gid of the
/// Security Context that protected it (the one the response names, else the request's):
/// after a rekey a server's responses come under the new Gid with Partial IVs of the new
/// context (§7.3), so their Response Numbers are kept per that Gid (§5.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedResponse {
    /// The server's Sender ID.
    pub kid: Vec<u8>,
    /// `None` when the response reuses the request's nonce (§7.3).
    pub piv: Option<u64>,
    /// The Gid of the context that protected the response.
    pub gid: Vec<u8>,
}

impl SignatureChecker {
    /// Checks the algorithms and credentials; an error names what is wrong.
    pub fn new(cfg: &CheckerConfig) -> Result<Self, ConfigError> {
        if cfg.gid.len() > 255 {
            return Err(ConfigError::Invalid(
                "Gid longer than 255 bytes (RFC 8613 §6.1)".into(),
            ));
        }
        let enc = EncAlg::from_cose(cfg.alg_group_enc)?;
        let sig = SigAlg::from_cose(cfg.alg_signature)?;
        let aead = cfg.alg_aead.map(EncAlg::from_cose).transpose()?;
        let ka = cfg
            .alg_pairwise_key_agreement
            .map(KeyAgreementAlg::from_cose)
            .transpose()?;
        let sig_enc_key = match (&cfg.sig_enc_key, &cfg.master_secret) {
            (Some(k), _) if k.len() == enc.key_len() => k.clone(),
            (Some(k), _) => {
                return Err(ConfigError::Invalid(format!(
                    "Signature Encryption Key has {} bytes, the Group Encryption Algorithm needs {}",
                    k.len(),
                    enc.key_len()
                )));
            }
            (None, Some(ms)) => derive::derive(
                ms,
                &cfg.master_salt,
                &[],
                Some(&cfg.gid),
                enc.cose_id(),
                "SEKey",
                enc.key_len(),
            ),
            (None, None) => {
                return Err(ConfigError::Invalid(
                    "a signature checker needs the Signature Encryption Key or the Master Secret"
                        .into(),
                ));
            }
        };
        // All four algorithms enter external_aad, set or null (§3.4, §12.3).
        let mut algs_cbor = Vec::new();
        cbor::array(&mut algs_cbor, 4);
        for id in [
            aead.map(EncAlg::cose_id),
            Some(enc.cose_id()),
            Some(sig.cose_id()),
            ka.map(KeyAgreementAlg::cose_id),
        ] {
            match id {
                Some(v) => cbor::int(&mut algs_cbor, v),
                None => cbor::null(&mut algs_cbor),
            }
        }
        if cfg.members.len() > MAX_MEMBERS {
            return Err(ConfigError::Invalid(format!(
                "more than {MAX_MEMBERS} members"
            )));
        }
        let mut members = HashMap::with_capacity(cfg.members.len());
        for (id, cred) in &cfg.members {
            let c = Credential::from_ccs(cred).map_err(|e| {
                ConfigError::BadCredential(format!("member {}: {e}", hex::encode(id)))
            })?;
            if c.public_key().sig_alg() != sig {
                return Err(ConfigError::BadCredential(format!(
                    "member {}: key does not fit signature algorithm {}",
                    hex::encode(id),
                    sig.cose_id()
                )));
            }
            members.insert(id.clone(), c);
        }
        let batchable = members
            .iter()
            .filter(|(_, c)| batch::batchable(c.public_key()))
            .map(|(id, _)| id.clone())
            .collect();
        Ok(SignatureChecker {
            gid: cfg.gid.clone(),
            algs_cbor,
            sig_enc_key,
            enc,
            sig,
            gm_cred: Credential::from_ccs(&cfg.gm_cred)
                .map_err(|e| ConfigError::BadCredential(format!("Group Manager: {e}")))?,
            members,
            batchable,
            tbs_form: cfg.tbs_form,
            key_generation: cfg.key_generation,
        })
    }

    /// The Gid of this epoch.
    pub fn gid(&self) -> &[u8] {
        &self.gid
    }

    /// Key Generation Number of this epoch (§12.2).
    pub fn key_generation(&self) -> u64 {
        self.key_generation
    }

    /// Whether `kid` is a member of this epoch.
    pub fn knows(&self, kid: &[u8]) -> bool {
        self.members.contains_key(kid)
    }

    fn verify(
        &self,
        req: RequestIds,
        oscore_option: &[u8],
        cred: &Credential,
        payload: &[u8],
        ks: KeystreamInput,
    ) -> Result<(), OscoreError> {
        let mut ext = Vec::with_capacity(96 + cred.bytes().len() + self.gm_cred.bytes().len());
        aad::external_aad(
            &mut ext,
            &self.algs_cbor,
            req,
            Some(GroupAad {
                oscore_option,
                sender_cred: cred.bytes(),
                gm_cred: self.gm_cred.bytes(),
            }),
        );
        verify_countersignature(
            &self.sig_enc_key,
            self.tbs_form,
            self.enc.tag_len(),
            self.sig.sig_len(),
            &ext,
            payload,
            ks,
            cred,
        )
        .map(|_| ())
    }

    /// Checks a request datagram. Errors: not OSCORE, malformed, another Gid, unknown kid,
    /// bad signature.
    pub fn check_request(&self, datagram: &[u8]) -> Result<Verdict<CheckedRequest>, OscoreError> {
        let prepared = self.prepare_request(datagram)?;
        let verified = prepared.job().is_none_or(|j| j.key.verify(j.msg, j.sig));
        prepared.verdict(verified)
    }

    /// Checks several request datagrams, their Ed25519 signatures verified together
    /// (`oscore::batch`): the same verdicts as [`check_request`](Self::check_request) on
    /// each, in order, except as `oscore::batch` says for signatures made with a small-order
    /// component by the signing key itself.
    pub fn check_requests(
        &self,
        datagrams: &[&[u8]],
        verifier: &mut BatchVerifier,
    ) -> Vec<Result<Verdict<CheckedRequest>, OscoreError>> {
        let prepared: Vec<_> = datagrams.iter().map(|d| self.prepare_request(d)).collect();
        let jobs: Vec<SigJob<'_>> = prepared
            .iter()
            .filter_map(|p| p.as_ref().ok().and_then(Prepared::job))
            .collect();
        let mut results = verifier.verify(&jobs).into_iter();
        prepared
            .into_iter()
            .map(|p| {
                let p = p?;
                let verified = p.job().is_none() || results.next().unwrap_or(false);
                p.verdict(verified)
            })
            .collect()
    }

    /// Everything [`check_request`](Self::check_request) does but the verification: the
    /// cheap checks in the same order, with the same errors, and the ToBeSigned and the
    /// decrypted signature (§4.1, §5.3).
    pub(crate) fn prepare_request<'s>(
        &'s self,
        datagram: &[u8],
    ) -> Result<Prepared<'s>, OscoreError> {
        let view = MessageView::parse(datagram)?;
        let value = view.option(OSCORE).ok_or(OscoreError::NotProtected)?;
        let o = OscoreOption::parse(value)?;
        let kid_context = o.kid_context.ok_or(OscoreError::MissingKidContext)?;
        if kid_context != self.gid.as_slice() {
            return Err(OscoreError::UnknownGid);
        }
        let (Some(kid), Some(piv)) = (o.kid, o.piv) else {
            return Err(OscoreError::MissingKidOrPiv);
        };
        if !o.group {
            return Ok(Prepared::Unverifiable);
        }
        let cred = self.members.get(kid).ok_or(OscoreError::UnknownKid)?;
        let req = RequestIds {
            kid,
            piv,
            kid_context,
        };
        let mut ext = Vec::with_capacity(96 + cred.bytes().len() + self.gm_cred.bytes().len());
        aad::external_aad(
            &mut ext,
            &self.algs_cbor,
            req,
            Some(GroupAad {
                oscore_option: value,
                sender_cred: cred.bytes(),
                gm_cred: self.gm_cred.bytes(),
            }),
        );
        // As `verify_countersignature`: the signature is the payload's last bytes,
        // encrypted with the keystream of §4.1; at least the code byte and the tag before.
        let payload = view.payload();
        let sig_len = self.sig.sig_len();
        if payload.len() < 1 + self.enc.tag_len() + sig_len {
            return Err(OscoreError::ShortPayload);
        }
        let (ciphertext, enc_sig) = payload.split_at(payload.len() - sig_len);
        let mut sig = [0u8; 64];
        derive::keystream(
            &self.sig_enc_key,
            piv,
            kid,
            kid_context,
            true,
            &mut sig[..sig_len],
        );
        for (s, e) in sig.iter_mut().zip(enc_sig) {
            *s ^= e;
        }
        let mut tbs = Vec::with_capacity(ext.len() + ciphertext.len() + 32);
        aad::to_be_signed(&mut tbs, self.tbs_form, &ext, ciphertext);
        Ok(Prepared::Signed {
            checked: CheckedRequest {
                kid: kid.to_vec(),
                piv: piv.to_vec(),
                kid_context: kid_context.to_vec(),
                seq: piv_value(piv),
            },
            cred,
            tbs,
            sig,
            batchable: self.batchable.contains(kid),
        })
    }

    /// Checks a response to `request` (matched by the caller by token). A response without
    /// 'kid' is identified by `server_hint`, e.g. from its source address (§7.5).
    pub fn check_response(
        &self,
        datagram: &[u8],
        request: &CheckedRequest,
        server_hint: Option<&[u8]>,
    ) -> Result<Verdict<CheckedResponse>, OscoreError> {
        let view = MessageView::parse(datagram)?;
        let value = view.option(OSCORE).ok_or(OscoreError::NotProtected)?;
        let o = OscoreOption::parse(value)?;
        if !o.group {
            return Ok(Verdict::Unverifiable);
        }
        let gid = o.kid_context.unwrap_or(&request.kid_context);
        if gid != self.gid.as_slice() {
            return Err(OscoreError::UnknownGid);
        }
        let kid = o.kid.or(server_hint).ok_or(OscoreError::MissingKidOrPiv)?;
        let cred = self.members.get(kid).ok_or(OscoreError::UnknownKid)?;
        let (ks_piv, ks_id) = match o.piv {
            Some(p) => (p, kid),
            None => (request.piv.as_slice(), request.kid.as_slice()),
        };
        let req = RequestIds {
            kid: &request.kid,
            piv: &request.piv,
            kid_context: &request.kid_context,
        };
        let ks = KeystreamInput {
            piv: ks_piv,
            id: ks_id,
            gid,
            is_request: false,
        };
        self.verify(req, value, cred, view.payload(), ks)?;
        Ok(Verdict::Verified(CheckedResponse {
            kid: kid.to_vec(),
            piv: o.piv.map(piv_value),
            gid: gid.to_vec(),
        }))
    }
}

impl SignatureChecker {
    /// Checks a response to a Deterministic Request (cacheable-oscore-02 §3.4.4) from
    /// public material: it must be in group mode with its own kid and Partial IV (steps
    /// 4, 5; §3.4.5), a Request-Hash in it must be the request's, and its signature must
    /// verify with the request's identifiers (the Deterministic Client `det_kid`, Partial
    /// IV 0, the request's Gid `request_gid`) and the Request-Hash as a class I option.
    /// What a cache can check before it stores the response for every client.
    pub fn check_deterministic_response(
        &self,
        datagram: &[u8],
        det_kid: &[u8],
        request_gid: &[u8],
        request_hash: &[u8],
    ) -> Result<CheckedResponse, OscoreError> {
        let view = MessageView::parse(datagram)?;
        let value = view.option(OSCORE).ok_or(OscoreError::NotProtected)?;
        let o = OscoreOption::parse(value)?;
        if !o.group {
            return Err(OscoreError::Mismatch(
                "a response to a deterministic request must be in group mode",
            ));
        }
        if view
            .option(super::deterministic::REQUEST_HASH)
            .is_some_and(|h| h != request_hash)
        {
            return Err(OscoreError::Mismatch(
                "Request-Hash differs from the request's",
            ));
        }
        let gid = o.kid_context.unwrap_or(request_gid);
        if gid != self.gid.as_slice() {
            return Err(OscoreError::UnknownGid);
        }
        let (Some(kid), Some(piv)) = (o.kid, o.piv) else {
            return Err(OscoreError::MissingKidOrPiv);
        };
        let cred = self.members.get(kid).ok_or(OscoreError::UnknownKid)?;
        let class_i = super::deterministic::class_i_request_hash(request_hash);
        let mut ext = Vec::with_capacity(160 + cred.bytes().len() + self.gm_cred.bytes().len());
        aad::external_aad_with_options(
            &mut ext,
            &self.algs_cbor,
            RequestIds {
                kid: det_kid,
                piv: &[0],
                kid_context: request_gid,
            },
            &class_i,
            Some(GroupAad {
                oscore_option: value,
                sender_cred: cred.bytes(),
                gm_cred: self.gm_cred.bytes(),
            }),
        );
        verify_countersignature(
            &self.sig_enc_key,
            self.tbs_form,
            self.enc.tag_len(),
            self.sig.sig_len(),
            &ext,
            view.payload(),
            KeystreamInput {
                piv,
                id: kid,
                gid,
                is_request: false,
            },
            cred,
        )?;
        Ok(CheckedResponse {
            kid: kid.to_vec(),
            piv: Some(piv_value(piv)),
            gid: gid.to_vec(),
        })
    }
}

/// A checker for one group across rekeying (§12.2, §14.1.1), with the replay filter that
/// stops a captured, validly signed request from being multicast again (groupcomm-proxy
/// §10): a window per (Gid, kid), moved only after the signature verified.
///
/// The windows must outlive the process, or a request captured before a restart passes
/// again after it: every change marks the checker dirty, and `take_dirty` hands the
/// whole state of the current epoch to whoever keeps it on stable storage.
#[derive(Debug)]
pub struct GroupChecker {
    current: SignatureChecker,
    /// The current epoch's windows, which the engines of several forwarding threads share
    /// (see [`SharedWindows`]); a checker made with [`new`](Self::new) has its own.
    windows: SharedWindows,
    previous: Option<SignatureChecker>,
    /// This checker moved the windows (or their epoch) since its last
    /// [`take_dirty`](Self::take_dirty): its admissions wait for a write. A checker that
    /// moved nothing has nothing to wait for, even while another thread's write runs.
    moved: bool,
}

/// The replay windows of one group's current key epoch, shared by every checker of the
/// group (one per forwarding thread), so that a request admitted on one thread is a
/// replay on every other (groupcomm-proxy §10). The epoch (Gid) is part of the shared
/// state: once one thread installed a new epoch, another still checking under the old one
/// admits nothing more (its requests are refused as of an unknown Gid), so no thread
/// forwards under the old epoch after another switched.
///
/// One lock per group, taken per admitted request for the window's update only (the
/// signature is verified before, outside it): see the README's threading section for the
/// measurement behind a plain mutex rather than a sharded map.
#[derive(Debug, Clone, Default)]
pub struct SharedWindows(Arc<Mutex<EpochWindows>>);

#[derive(Debug, Default)]
struct EpochWindows {
    /// The epoch the windows belong to; `None` until a checker claimed them.
    epoch: Option<(Vec<u8>, u64)>,
    /// Ordered by kid, the order the recorded state lists them in: a snapshot (taken
    /// under the lock, once per batch of every thread) walks them without sorting.
    windows: BTreeMap<Vec<u8>, ReplayWindow>,
    /// The windows changed (or the epoch did) since [`GroupChecker::take_dirty`].
    dirty: bool,
}

impl SharedWindows {
    fn lock(&self) -> MutexGuard<'_, EpochWindows> {
        crate::sync::lock(&self.0)
    }

    /// Takes the windows for epoch `(gid, kg)`: the first checker (or one with a newer
    /// epoch) sets it, empty and dirty; one of the epoch already there joins as it is.
    fn claim(&self, gid: &[u8], kg: u64) -> bool {
        let mut w = self.lock();
        let newer = match &w.epoch {
            None => true,
            Some((g, k)) => g.as_slice() != gid && kg > *k,
        };
        if newer {
            w.epoch = Some((gid.to_vec(), kg));
            w.windows.clear();
            // Nothing is on stable storage yet: even empty windows are worth recording,
            // as they name the epoch.
            w.dirty = true;
        }
        newer
    }
}

/// The replay filter's state of a group's current key epoch, as stable storage keeps it:
/// windows are per (Gid, kid), so the Gid and Key Generation Number say which epoch they
/// belong to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayState {
    /// Gid of the epoch the windows belong to.
    pub gid: Vec<u8>,
    /// Key Generation Number of that epoch.
    pub key_generation: u64,
    /// One window per sender, sorted by kid.
    pub windows: Vec<(Vec<u8>, WindowState)>,
}

/// Windows a recorded state may hold at most: every member of an epoch (reloads that
/// replace members keep the windows of the ones that left, so a few times that).
pub(crate) const MAX_RECORDED_WINDOWS: usize = 16 * MAX_MEMBERS;

/// What [`GroupChecker::restore`] did with a recorded state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// Same Gid: the windows are back as they were.
    Windows,
    /// The configured epoch is newer (higher Key Generation Number, another Gid): new
    /// keys, so empty windows; the recorded ones belong to keys no longer in use.
    NewEpoch,
}

/// What a checker of epoch (`gid`, `key_generation`) may do with a recorded state (see
/// [`GroupChecker::restore`]); side-effect free, so that a reload can ask before it
/// changes anything.
pub(crate) fn restore_decision(
    recorded: &ReplayState,
    gid: &[u8],
    key_generation: u64,
) -> Result<Restored, ConfigError> {
    if recorded.gid == gid {
        if recorded.windows.len() > MAX_RECORDED_WINDOWS {
            return Err(ConfigError::Invalid(format!(
                "recorded replay state has {} windows, more than {MAX_RECORDED_WINDOWS}",
                recorded.windows.len()
            )));
        }
        return Ok(Restored::Windows);
    }
    if key_generation > recorded.key_generation {
        return Ok(Restored::NewEpoch);
    }
    Err(ConfigError::Invalid(format!(
        "the recorded replay state is of Gid {} with key generation {}; the configured Gid \
         {} has key generation {}, not higher: the keying material went back, and requests \
         of that epoch could be replayed (a new Gid needs a higher key_generation)",
        hex::encode(&recorded.gid),
        recorded.key_generation,
        hex::encode(gid),
        key_generation
    )))
}

impl GroupChecker {
    /// A group's filter starting from one epoch, with no replay state yet.
    pub fn new(current: SignatureChecker) -> Self {
        Self::with_windows(current, SharedWindows::default())
    }

    /// A group's filter whose replay windows are `windows`, shared with the checkers of
    /// the same group on other forwarding threads: the first to come (or one with a newer
    /// epoch) sets them up for its epoch, the others join them as they are.
    pub fn with_windows(current: SignatureChecker, windows: SharedWindows) -> Self {
        let moved = windows.claim(&current.gid, current.key_generation);
        GroupChecker {
            current,
            windows,
            previous: None,
            moved,
        }
    }

    /// The state of the current epoch's windows.
    pub fn replay_state(&self) -> ReplayState {
        let mut out = ReplayState::default();
        Self::snapshot_into(&self.current, &self.windows.lock(), &mut out);
        out
    }

    /// Writes the windows' state into `out`, reusing its allocations: taken under the
    /// shared lock once per batch of every thread, so it allocates nothing once `out`
    /// has held a state of as many windows, and sorts nothing (the map is ordered).
    fn snapshot_into(current: &SignatureChecker, w: &EpochWindows, out: &mut ReplayState) {
        out.windows.truncate(w.windows.len());
        let had = out.windows.len();
        for (i, (kid, window)) in w.windows.iter().enumerate() {
            if i < had {
                let slot = &mut out.windows[i];
                slot.0.clone_from(kid);
                slot.1 = window.state();
            } else {
                out.windows.push((kid.clone(), window.state()));
            }
        }
        // The shared epoch, which a newer checker on another thread may have moved on.
        match &w.epoch {
            Some((gid, kg)) => {
                out.gid.clone_from(gid);
                out.key_generation = *kg;
            }
            None => {
                out.gid.clone_from(&current.gid);
                out.key_generation = current.key_generation;
            }
        }
    }

    /// The state, if it changed since the last call (on any thread sharing the windows),
    /// written into `out` (see [`snapshot_into`](Self::snapshot_into)); clean afterwards.
    /// Says whether it changed and `out` now holds it.
    pub(crate) fn take_dirty(&mut self, out: &mut ReplayState) -> bool {
        self.moved = false;
        let mut w = self.windows.lock();
        let dirty = std::mem::take(&mut w.dirty);
        if dirty {
            Self::snapshot_into(&self.current, &w, out);
        }
        dirty
    }

    /// Marks the windows changed again: a write of their state failed, and whoever shares
    /// them must write (or hold back) its own admissions.
    pub(crate) fn mark_dirty(&self) {
        self.windows.lock().dirty = true;
    }

    /// Whether this checker moved the windows since its last take (see `moved`).
    pub(crate) fn moved(&self) -> bool {
        self.moved
    }

    /// Takes back a recorded state at start. Same Gid: its windows replace the current
    /// ones. Another Gid under a higher configured Key Generation Number: rekeyed while
    /// stopped, the windows start empty. Anything else means the keying material went
    /// back to an epoch whose replays the windows no longer cover (§2.6.3.2): refused,
    /// and nothing changes.
    pub fn restore(&mut self, recorded: &ReplayState) -> Result<Restored, ConfigError> {
        let decision = restore_decision(recorded, &self.current.gid, self.current.key_generation)?;
        let mut w = self.windows.lock();
        match decision {
            Restored::Windows => {
                w.windows = recorded
                    .windows
                    .iter()
                    .map(|(kid, s)| (kid.clone(), ReplayWindow::from_state(*s)))
                    .collect();
            }
            Restored::NewEpoch => {
                w.windows.clear();
                w.dirty = true;
                self.moved = true;
            }
        }
        Ok(decision)
    }

    /// The newest epoch: the one requests are checked under.
    pub fn current(&self) -> &SignatureChecker {
        &self.current
    }

    /// Installs a new epoch. The old one stays only to check responses to requests already
    /// forwarded; new requests under the old Gid are refused (§2.6.3.2: do not start new
    /// processing with an old context). Windows start empty under the new Gid.
    /// The new epoch must have a higher Key Generation Number and another Gid: going back
    /// to old keying material would reopen replays the windows no longer remember.
    pub fn rekey(&mut self, next: SignatureChecker) -> Result<(), ConfigError> {
        self.check_rekey(&next)?;
        self.install(next);
        Ok(())
    }

    /// Whether [`rekey`](Self::rekey) would accept `next`, changing nothing: a reload
    /// checks every group with this before it changes any (all or nothing).
    pub(crate) fn check_rekey(&self, next: &SignatureChecker) -> Result<(), ConfigError> {
        if next.key_generation <= self.current.key_generation || next.gid == self.current.gid {
            return Err(ConfigError::Invalid(format!(
                "rekeying needs a new Gid and a Key Generation Number above {}",
                self.current.key_generation
            )));
        }
        Ok(())
    }

    /// The rekey itself, for a caller that had [`check_rekey`](Self::check_rekey) accept
    /// `next` with nothing changed since.
    pub(crate) fn install(&mut self, next: SignatureChecker) {
        debug_assert!(self.check_rekey(&next).is_ok());
        // The new epoch's empty windows replace the old ones (on stable storage too, so
        // that a restart under the old keys is refused, see `restore`); a checker of
        // another thread that installed this epoch first has set them up already, and
        // what it admitted since stays.
        self.moved |= self.windows.claim(&next.gid, next.key_generation);
        let old = std::mem::replace(&mut self.current, next);
        self.previous = Some(old);
    }

    /// Replaces the material of the current epoch (new members' credentials, a new
    /// policy) without a new Gid: the replay windows stay, as the keys did not change.
    pub fn update(&mut self, next: SignatureChecker) {
        debug_assert_eq!(next.gid, self.current.gid);
        self.current = next;
    }

    /// Whether responses under `gid` are still checked (the current or previous epoch):
    /// what the proxy remembers of an older epoch's servers can go once this is false.
    pub(crate) fn has_epoch(&self, gid: &[u8]) -> bool {
        self.current.gid == gid || self.previous.as_ref().is_some_and(|p| p.gid == gid)
    }

    /// Ends the grace period of the previous epoch and erases it.
    pub fn drop_previous(&mut self) {
        self.previous = None;
    }

    /// Verifies a request and, only if it verified, records its Partial IV; a replay is
    /// refused. Windows exist only for known members, so the table is bounded by them.
    pub fn admit_request(
        &mut self,
        datagram: &[u8],
    ) -> Result<Verdict<CheckedRequest>, OscoreError> {
        let verdict = self.current.check_request(datagram);
        self.admit_checked(verdict)
    }

    /// [`admit_request`](Self::admit_request) for several datagrams, their signatures
    /// verified together: the replay windows move in the datagrams' order, as if each
    /// had been admitted alone (a replay within the batch is refused like one after it).
    pub fn admit_requests(
        &mut self,
        datagrams: &[&[u8]],
        verifier: &mut BatchVerifier,
    ) -> Vec<Result<Verdict<CheckedRequest>, OscoreError>> {
        self.current
            .check_requests(datagrams, verifier)
            .into_iter()
            .map(|v| self.admit_checked(v))
            .collect()
    }

    /// The replay filter's step of [`admit_request`](Self::admit_request), for a verdict
    /// the current epoch reached on a request (alone or in a batch): only a verified
    /// request moves its sender's window.
    pub(crate) fn admit_checked(
        &mut self,
        verdict: Result<Verdict<CheckedRequest>, OscoreError>,
    ) -> Result<Verdict<CheckedRequest>, OscoreError> {
        let verdict = verdict?;
        if let Verdict::Verified(req) = &verdict {
            let mut shared = self.windows.lock();
            // Another thread installed a newer epoch: nothing more is admitted under this
            // one (§2.6.3.2), here as there.
            if shared
                .epoch
                .as_ref()
                .is_some_and(|(gid, _)| *gid != self.current.gid)
            {
                return Err(OscoreError::UnknownGid);
            }
            // Looked up before inserting, so that the kid is copied only for a new sender.
            let w = match shared.windows.get_mut(req.kid.as_slice()) {
                Some(w) => w,
                None => shared.windows.entry(req.kid.clone()).or_default(),
            };
            w.accept(req.seq)?;
            shared.dirty = true;
            drop(shared);
            self.moved = true;
        }
        Ok(verdict)
    }

    /// [`SignatureChecker::check_deterministic_response`] under whichever epoch
    /// protected the response: the one whose Gid it names, else the request's.
    pub fn check_deterministic_response(
        &self,
        datagram: &[u8],
        det_kid: &[u8],
        request_gid: &[u8],
        request_hash: &[u8],
    ) -> Result<CheckedResponse, OscoreError> {
        let view = MessageView::parse(datagram)?;
        let named = view
            .option(OSCORE)
            .and_then(|v| OscoreOption::parse(v).ok())
            .and_then(|o| o.kid_context.map(<[u8]>::to_vec))
            .unwrap_or_else(|| request_gid.to_vec());
        let epoch = if named == self.current.gid {
            &self.current
        } else {
            self.previous
                .as_ref()
                .filter(|p| p.gid == named)
                .ok_or(OscoreError::UnknownGid)?
        };
        epoch.check_deterministic_response(datagram, det_kid, request_gid, request_hash)
    }

    /// Checks a response under whichever epoch protected it: the epoch whose Gid the
    /// response names, else the request's.
    pub fn check_response(
        &self,
        datagram: &[u8],
        request: &CheckedRequest,
        server_hint: Option<&[u8]>,
    ) -> Result<Verdict<CheckedResponse>, OscoreError> {
        let view = MessageView::parse(datagram)?;
        let named = view
            .option(OSCORE)
            .and_then(|v| OscoreOption::parse(v).ok())
            .and_then(|o| o.kid_context.map(<[u8]>::to_vec))
            .unwrap_or_else(|| request.kid_context.clone());
        let epoch = if named == self.current.gid {
            &self.current
        } else {
            self.previous
                .as_ref()
                .filter(|p| p.gid == named)
                .ok_or(OscoreError::UnknownGid)?
        };
        epoch.check_response(datagram, request, server_hint)
    }
}
