//! The signature filters (RFC 10021 §7.5): requests before any fan-out, responses
//! before they are relayed, under the group's policy.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::{Destination, Engine, Filtered, Link, Reject, Route, client_token};
use crate::coap::MessageView;
use crate::coap::build::{CON, NON, code};
use crate::coap::options::{self as opt, is_critical, is_unsafe, read_uint};
use crate::coap::uri::proxy_target;
use crate::oscore::batch::{BatchStats, BatchVerifier, SigJob};
use crate::oscore::checker::{CheckedRequest, Prepared};
use crate::oscore::deterministic;
use crate::oscore::option::OscoreOption;
use crate::oscore::{ConfigError, GroupChecker, OscoreError, ReplayState, Restored, Verdict};
use crate::proxy::config::Policy;
use crate::proxy::events::{CheckResult, DropReason, Event, RejectReason};

impl Engine {
    /// The request filter, before any fan-out: group-mode requests are verified and pass
    /// the replay window; under `enforce` anything else is dropped, under `monitor` it is
    /// forwarded and counted.
    pub(super) fn check_request(
        &mut self,
        g: usize,
        view: &MessageView,
    ) -> Result<Option<CheckedRequest>, Filtered> {
        // A verdict reached with the rest of the receive batch, if this request was in it.
        let batched = self.batch.take(g, view.bytes());
        if self.checkers.get(g).is_some_and(Option::is_some)
            && let Some(dk) = self.deterministic_kid(g)
            && deterministic::is_deterministic_request(view, dk)
        {
            let dk = dk.to_vec();
            return self.check_deterministic(g, view, &dk);
        }
        let Some(checker) = self.checkers.get_mut(g).and_then(Option::as_mut) else {
            return Ok(None);
        };
        let admitted = match batched {
            Some(verdict) => checker.admit_checked(verdict),
            None => checker.admit_request(view.bytes()),
        };
        let (result, checked) = match admitted {
            Ok(Verdict::Verified(c)) => (CheckResult::Valid, Some(c)),
            Ok(Verdict::Unverifiable) => (CheckResult::Unverifiable, None),
            Err(e) => (check_result(&e), None),
        };
        let enforced = self.enforced(g);
        self.emit(Event::Checked {
            group: g,
            request: true,
            result,
            enforced,
        });
        match result {
            CheckResult::Valid => Ok(checked),
            _ if enforced => Err(Filtered::Drop),
            _ => Ok(None),
        }
    }

    /// The group's Deterministic Client's Sender ID, if configured.
    fn deterministic_kid(&self, g: usize) -> Option<&[u8]> {
        self.cfg
            .deterministic_kids
            .get(g)
            .and_then(Option::as_deref)
    }

    /// The request filter for a Deterministic Request (cacheable-oscore-02 §3.4.2): it
    /// carries no signature and is meant to be repeated (§6), so neither the signature
    /// check nor the replay window applies, and it authenticates no sender (so no
    /// `allow_kids` either). What the proxy can check, it does: the form the draft fixes
    /// (outer FETCH, step 8; pairwise mode, the configured kid, Partial IV 0 and the
    /// group's Gid, step 1; a SHA-256 Request-Hash, §3.3); and where the proxy is a member
    /// of the group it holds the Deterministic Client's Sender Key (§3.4.1) and checks
    /// the request as a server would (§3.4.3): decryption, the recomputed Request-Hash
    /// (so that no one without the group's keys can put a request in front of the
    /// devices, or a response under another request's hash into a cache) and a safe
    /// method (§6: a Deterministic Request must not change state). Anything else is
    /// dropped under `enforce`, counted under `monitor`.
    fn check_deterministic(
        &mut self,
        g: usize,
        view: &MessageView,
        dk: &[u8],
    ) -> Result<Option<CheckedRequest>, Filtered> {
        let result = self.deterministic_result(g, view, dk);
        let enforced = self.enforced(g);
        self.emit(Event::Checked {
            group: g,
            request: true,
            result,
            enforced,
        });
        match result {
            CheckResult::Deterministic => Ok(None),
            _ if enforced => Err(Filtered::Drop),
            _ => Ok(None),
        }
    }

    fn deterministic_result(&self, g: usize, view: &MessageView, dk: &[u8]) -> CheckResult {
        let Some(o) = view
            .option(opt::OSCORE)
            .and_then(|v| OscoreOption::parse(v).ok())
        else {
            return CheckResult::Malformed;
        };
        // 0.05 FETCH (RFC 8132), the outer code of every Deterministic Request.
        if view.code() != 0x05
            || o.piv.is_none_or(|p| p.iter().any(|b| *b != 0))
            || view
                .option(deterministic::REQUEST_HASH)
                .is_none_or(|h| h.len() != deterministic::HASH_LEN)
        {
            return CheckResult::Malformed;
        }
        let gid = self.checkers[g].as_ref().map(|c| c.current().gid());
        if o.kid_context.is_none() || o.kid_context != gid {
            return CheckResult::UnknownGid;
        }
        let Some(member) = self.members.get(g).and_then(Option::as_ref) else {
            return CheckResult::Deterministic;
        };
        match member
            .current()
            .unprotect_deterministic_request(view.bytes(), dk)
        {
            Ok((plain, _))
                if MessageView::parse(&plain)
                    .is_ok_and(|p| deterministic::is_safe_method(p.code())) =>
            {
                CheckResult::Deterministic
            }
            Ok(_) => CheckResult::DeterministicInvalid,
            Err(OscoreError::UnknownGid) => CheckResult::UnknownGid,
            Err(_) => CheckResult::DeterministicInvalid,
        }
    }

    /// groupcomm-proxy §10.1: the signature checker authenticates a group request's
    /// sender, so where the group lists `allow_kids` the kid it verified must be on the
    /// list, like the kid of the proxy's own layer. An allow-list is an authorization
    /// decision, not a check result: refused under `monitor` as under `enforce`. A request
    /// that did not verify has no authenticated kid; `monitor` forwards it as it forwards
    /// every check failure, `enforce` has dropped it already.
    pub(super) fn signer_allowed(
        &self,
        g: usize,
        checked: Option<&CheckedRequest>,
    ) -> Result<(), Reject> {
        let list = self.cfg.groups[g]
            .security
            .as_ref()
            .and_then(|s| s.allow_kids.as_ref());
        match (checked, list) {
            (Some(c), Some(list)) if !list.contains(&c.kid) => Err(Reject::new(
                code::UNAUTHORIZED,
                RejectReason::KidNotAllowed,
                "kid not allowed for this group",
            )
            .group(g)),
            _ => Ok(()),
        }
    }

    /// The replay state of every group whose windows changed since the last call (a
    /// rekeyed group's new, empty epoch included), each a whole snapshot of the group's
    /// current epoch.
    ///
    /// The contract with the driver: call this after handling a batch and before sending
    /// any datagram it produced, and put every state on stable storage first (synced).
    /// A group request is multicast only after the window that admitted it moved, so a
    /// state written before the send covers every request sent; after a crash, restored
    /// with [`restore_replay`](Self::restore_replay), none of them passes again. If a
    /// write fails, nothing queued for that group since the last successful write may
    /// leave. Since each state is whole, a failed write needs no retry: the next change
    /// writes everything again, and what the failed one covered never left.
    pub fn take_replay_state(&mut self) -> Vec<(usize, ReplayState)> {
        let mut states = Vec::new();
        let changed = self.take_replay_state_into(&mut states);
        changed
            .into_iter()
            .map(|g| (g, std::mem::take(&mut states[g])))
            .collect()
    }

    /// [`take_replay_state`](Self::take_replay_state) into `states` (indexed by group,
    /// grown as needed), reusing what they hold: the driver calls this once per batch,
    /// and a group's state is as many windows as it has senders, so reused buffers keep
    /// the snapshot (taken under the lock the threads share) free of allocations.
    /// Returns the groups whose state changed; `states[g]` holds each.
    pub fn take_replay_state_into(&mut self, states: &mut Vec<ReplayState>) -> Vec<usize> {
        let mut changed = Vec::new();
        for (g, c) in self.checkers.iter_mut().enumerate() {
            let Some(c) = c.as_mut() else { continue };
            if states.len() <= g {
                states.resize_with(g + 1, ReplayState::default);
            }
            if c.take_dirty(&mut states[g]) {
                changed.push(g);
            }
        }
        changed
    }

    /// Whether this engine moved any group's replay windows (admitted a request, or
    /// installed or restored an epoch) since its last
    /// [`take_replay_state`](Self::take_replay_state): if not, nothing it queued depends on
    /// a write, and with several threads it need not wait for another thread's.
    pub fn replay_pending(&self) -> bool {
        self.checkers.iter().flatten().any(GroupChecker::moved)
    }

    /// A write of group `g`'s state from [`take_replay_state`](Self::take_replay_state)
    /// failed: its windows count as changed again, for every engine that shares them
    /// (`[proxy] threads`), so that the next take hands them out again.
    pub fn replay_unsaved(&mut self, g: usize) {
        if let Some(c) = self.checkers.get(g).and_then(Option::as_ref) {
            c.mark_dirty();
        }
    }

    /// Takes back a group's recorded replay state at start (see
    /// [`GroupChecker::restore`]): the same Gid restores the windows, a newer configured
    /// epoch starts empty (and is dirty, so that it is recorded), older or equal keying
    /// material under another Gid is refused. A group without a checker ignores it.
    pub fn restore_replay(
        &mut self,
        group: usize,
        recorded: &ReplayState,
    ) -> Result<Option<Restored>, ConfigError> {
        match self.checkers.get_mut(group).and_then(Option::as_mut) {
            Some(c) => c.restore(recorded).map(Some),
            None => Ok(None),
        }
    }

    /// The groups whose requests are checked (policy enforce or monitor): those with
    /// replay state to keep.
    pub fn checked_groups(&self) -> Vec<usize> {
        (0..self.checkers.len())
            .filter(|&g| self.checkers[g].is_some())
            .collect()
    }

    /// Whether group `g`'s filter drops what fails (policy enforce).
    pub fn enforced(&self, g: usize) -> bool {
        self.cfg.groups[g]
            .security
            .as_ref()
            .is_some_and(|s| s.policy == Policy::Enforce)
    }

    /// The response filter: group-mode responses to a verified request are verified with
    /// the request's Partial IV and kid context (§7.5) and pass the Response Numbers of
    /// their server under the context that protected them (§5.3.1); pairwise-mode ones
    /// cannot be checked and are relayed. Responses to a Deterministic Request are
    /// checked apart (`check_deterministic_response`). Ok: relayed, with whether the
    /// cache may store it for other clients.
    pub(super) fn check_response(
        &mut self,
        token: u64,
        view: &MessageView,
    ) -> Result<Storable, DropReason> {
        let Some(ex) = self.exchanges.get(&token) else {
            return Ok(Storable::Yes);
        };
        if let Route::Group {
            group,
            deterministic: Some(det),
            ..
        } = &ex.route
        {
            let (g, det) = (*group, det.clone());
            return self.check_deterministic_response(token, g, &det, view);
        }
        let Route::Group {
            group: g,
            checked: Some(req),
            ..
        } = &ex.route
        else {
            return Ok(Storable::Yes);
        };
        let g = *g;
        let Some(checker) = self.checkers.get(g).and_then(Option::as_ref) else {
            return Ok(Storable::Yes);
        };
        let verdict = checker.check_response(view.bytes(), req, None);
        let (result, drop) = match verdict {
            Ok(Verdict::Verified(r)) => {
                // Per server and Security Context that protected the response (§5.3.1):
                // the Gid the response names, not the request's, so that a server's
                // new-epoch Partial IVs (§7.3) are neither taken for replays of its
                // old-epoch ones nor let those replays through.
                let fresh = match self.exchanges.get_mut(&token).map(|ex| &mut ex.route) {
                    Some(Route::Group { numbers, .. }) => {
                        numbers.accept(&r.gid, &r.kid, r.piv).is_ok()
                    }
                    _ => true,
                };
                if fresh {
                    (CheckResult::Valid, None)
                } else {
                    (CheckResult::Replay, Some(DropReason::ResponseReplay))
                }
            }
            Ok(Verdict::Unverifiable) => (CheckResult::Unverifiable, None),
            Err(e) => (check_result(&e), Some(DropReason::ResponseCheckFailed)),
        };
        let enforced = self.enforced(g);
        self.emit(Event::Checked {
            group: g,
            request: false,
            result,
            enforced,
        });
        match drop {
            Some(reason) if enforced => Err(reason),
            _ => Ok(Storable::Yes),
        }
    }

    /// What the engine keeps of a Deterministic Request forwarded to group `g` for
    /// checking its responses: None if it is not one (the group's `deterministic_kid`
    /// unset, or not that kid's form, `is_deterministic_request`).
    pub(super) fn det_request(&self, g: usize, view: &MessageView) -> Option<Box<DetRequest>> {
        let dk = self.deterministic_kid(g)?;
        if !deterministic::is_deterministic_request(view, dk) {
            return None;
        }
        let o = OscoreOption::parse(view.option(opt::OSCORE)?).ok()?;
        // A Request-Hash of another length than SHA-256's (the filter drops it under
        // enforce, monitor forwards it) binds no response that could verify: kept empty,
        // so that the exchange holds at most a Gid, a kid (bounded by the OSCORE
        // option) and 32 bytes, and its responses are never stored.
        let hash = view
            .option(deterministic::REQUEST_HASH)
            .filter(|h| h.len() == deterministic::HASH_LEN)
            .unwrap_or_default();
        Some(Box::new(DetRequest {
            kid: dk.to_vec(),
            gid: o.kid_context.unwrap_or_default().to_vec(),
            hash: hash.to_vec(),
        }))
    }

    /// A response to a Deterministic Request (cacheable-oscore §3.4.4, groupcomm-proxy
    /// §7.4.1): the cache would serve it to every later client, who could not tell a
    /// forgery from anyone on the group's network apart from the server's answer before
    /// it has it; so where the group has a checker it is verified from public material
    /// (group mode, the server's credential, the signature with the Request-Hash as a
    /// class I option, `GroupChecker::check_deterministic_response`) and passes the
    /// exchange's Response Numbers, as other group-mode responses do. Under enforce what
    /// fails is dropped; under monitor it is relayed but not stored. Without a checker
    /// nothing can verify it: stored only where `[cache] unverified_deterministic` says
    /// so. A verified one is stored only if its Partial IV is newer than what its server
    /// had stored before (`cache.rs`: the request's Partial IV is always 0, so an older
    /// answer replayed into a later exchange verifies again).
    fn check_deterministic_response(
        &mut self,
        token: u64,
        g: usize,
        det: &DetRequest,
        view: &MessageView,
    ) -> Result<Storable, DropReason> {
        let Some(checker) = self.checkers.get(g).and_then(Option::as_ref) else {
            return Ok(if self.cfg.cache.unverified_deterministic {
                Storable::Yes
            } else {
                Storable::No
            });
        };
        let verdict = if det.hash.len() == deterministic::HASH_LEN {
            checker.check_deterministic_response(view.bytes(), &det.kid, &det.gid, &det.hash)
        } else {
            Err(OscoreError::Mismatch(
                "no valid Request-Hash in the request",
            ))
        };
        let (result, drop, storable) = match verdict {
            Ok(r) => {
                let fresh = match self.exchanges.get_mut(&token).map(|ex| &mut ex.route) {
                    Some(Route::Group { numbers, .. }) => {
                        numbers.accept(&r.gid, &r.kid, r.piv).is_ok()
                    }
                    _ => true,
                };
                match (fresh, r.piv) {
                    (true, Some(piv)) => (
                        CheckResult::Valid,
                        None,
                        Storable::Verified {
                            gid: r.gid,
                            kid: r.kid,
                            piv,
                        },
                    ),
                    (true, None) => (CheckResult::Valid, None, Storable::No),
                    (false, _) => (
                        CheckResult::Replay,
                        Some(DropReason::ResponseReplay),
                        Storable::No,
                    ),
                }
            }
            Err(e) => (
                check_result(&e),
                Some(DropReason::ResponseCheckFailed),
                Storable::No,
            ),
        };
        let enforced = self.enforced(g);
        self.emit(Event::Checked {
            group: g,
            request: false,
            result,
            enforced,
        });
        match drop {
            Some(reason) if enforced => Err(reason),
            _ => Ok(storable),
        }
    }
}

/// A Deterministic Request's binding, kept in its exchange (cacheable-oscore §3.4.4): the
/// Deterministic Client's kid, the request's Gid and its Request-Hash (32 bytes, or
/// empty where the request had none of that length).
#[derive(Debug, Clone)]
pub(super) struct DetRequest {
    kid: Vec<u8>,
    gid: Vec<u8>,
    hash: Vec<u8>,
}

/// Whether the cache may store a response it relays for other clients.
#[derive(Debug)]
pub(super) enum Storable {
    /// As any response of its exchange (what the cache's own rules allow).
    Yes,
    /// Not: a response to a Deterministic Request that nothing verified.
    No,
    /// A verified response to a Deterministic Request, from server `kid` under `gid` with
    /// Partial IV `piv`: stored only if newer than that server's last one stored.
    Verified {
        gid: Vec<u8>,
        kid: Vec<u8>,
        piv: u64,
    },
}

/// The verdicts of one receive batch's group-mode requests, reached together by
/// [`Engine::begin_batch`] and taken one by one as each request reaches the filter.
pub(super) struct BatchState {
    verifier: BatchVerifier,
    /// (group, datagram, verdict): the datagram's bytes identify it when its check comes
    /// (a request that reaches the filter by another path, e.g. from inside the proxy's
    /// own layer, finds nothing and is verified alone).
    verdicts: Vec<(usize, Vec<u8>, Option<VerdictResult>)>,
    /// Entries of `verdicts` in use (the buffers beyond are kept for the next batch).
    len: usize,
}

type VerdictResult = Result<Verdict<CheckedRequest>, OscoreError>;

/// Datagrams of one batch whose signatures are verified together at most: the driver's
/// `recvmmsg` batch is 32; more only makes the equations, and bisection, longer.
const MAX_BATCH: usize = 64;

impl std::fmt::Debug for BatchState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchState")
            .field("pending", &self.len)
            .finish_non_exhaustive()
    }
}

impl BatchState {
    /// `seed`: the batch equations' coefficients (see `oscore::batch`).
    pub(super) fn new(seed: [u8; 32]) -> Self {
        BatchState {
            verifier: BatchVerifier::new(seed),
            verdicts: Vec::new(),
            len: 0,
        }
    }

    fn clear(&mut self) {
        self.len = 0;
    }

    fn push(&mut self, g: usize, datagram: &[u8], verdict: VerdictResult) {
        if self.len == self.verdicts.len() {
            self.verdicts.push((g, Vec::new(), None));
        }
        let e = &mut self.verdicts[self.len];
        e.0 = g;
        e.1.clear();
        e.1.extend_from_slice(datagram);
        e.2 = Some(verdict);
        self.len += 1;
    }

    /// The verdict reached for `datagram` under group `g`'s current epoch, once.
    fn take(&mut self, g: usize, datagram: &[u8]) -> Option<VerdictResult> {
        self.verdicts[..self.len]
            .iter_mut()
            .find(|(h, d, v)| *h == g && v.is_some() && d.as_slice() == datagram)
            .and_then(|e| e.2.take())
    }
}

impl Engine {
    /// The first step of [`handle_batch`](Self::handle_batch), for a driver that hands
    /// the datagrams to [`handle`](Self::handle) itself (to time or flush each): the
    /// signatures of the group-mode requests among `datagrams` (what one receive call
    /// returned on `link`) are verified together. The driver must then call `handle`
    /// for each datagram, in order, and [`end_batch`](Self::end_batch), with no other
    /// call in between; the outputs are the same as without this step.
    ///
    /// Only requests that would reach the filter now are verified here: the cheap
    /// checks before it (message layer, target, options, allow-list, Multicast-Timeout)
    /// pass, and the sender's rate budget, exchange share and the exchange table have room
    /// for them, counting the earlier ones of the batch. A request refused between these
    /// and the filter (no Message ID free, a duplicate made by the batch's own processing)
    /// has cost one signature's share of a batch equation.
    pub fn begin_batch(&mut self, now: Instant, link: Link, datagrams: &[(SocketAddr, &[u8])]) {
        self.batch.clear();
        if !matches!(link, Link::Listener(_)) || self.checkers.iter().all(Option::is_none) {
            return;
        }
        let mut picked: Vec<(usize, usize)> = Vec::new();
        let mut spent: Vec<(IpAddr, usize)> = Vec::new();
        // The table of verdicts is bounded by the driver's receive batch; a caller
        // handing over more has the rest verified one by one, as without a batch.
        for (i, &(from, d)) in datagrams.iter().enumerate().take(MAX_BATCH) {
            // A second copy of a message in the batch is a duplicate for the message layer.
            let mid = |d: &[u8]| (d.len() >= 4).then(|| [d[2], d[3]]);
            if datagrams[..i]
                .iter()
                .any(|&(f, e)| f == from && mid(e) == mid(d))
            {
                continue;
            }
            let Some(g) = self.would_check(now, from, d) else {
                continue;
            };
            let n = match spent.iter_mut().find(|(ip, _)| *ip == from.ip()) {
                Some((_, n)) => n,
                None => {
                    spent.push((from.ip(), 0));
                    &mut spent.last_mut().expect("just pushed").1
                }
            };
            if !budget_allows(self, now, from.ip(), *n + 1, picked.len() + 1) {
                continue;
            }
            *n += 1;
            picked.push((i, g));
        }
        // A request alone is verified where it is checked, as without a batch.
        if picked.len() < 2 {
            return;
        }
        let checkers = &self.checkers;
        let prepared: Vec<(usize, usize, Result<Prepared<'_>, OscoreError>)> = picked
            .iter()
            .map(|&(i, g)| {
                let c = checkers[g].as_ref().expect("would_check saw it");
                (i, g, c.current().prepare_request(datagrams[i].1))
            })
            .collect();
        let jobs: Vec<SigJob<'_>> = prepared
            .iter()
            .filter_map(|(_, _, p)| p.as_ref().ok().and_then(Prepared::job))
            .collect();
        let mut verified = self.batch.verifier.verify(&jobs).into_iter();
        let verdicts: Vec<(usize, usize, VerdictResult)> = prepared
            .into_iter()
            .map(|(i, g, p)| {
                let v = p.map(|p| {
                    let ok = p.job().is_none() || verified.next().unwrap_or(false);
                    p.verdict(ok)
                });
                (i, g, v.and_then(|v| v))
            })
            .collect();
        for (i, g, v) in verdicts {
            self.batch.push(g, datagrams[i].1, v);
        }
    }

    /// The last step of a batch begun with [`begin_batch`](Self::begin_batch): verdicts
    /// not taken are forgotten.
    pub fn end_batch(&mut self) {
        self.batch.clear();
    }

    /// The work batched verification has done (signatures, equations, single
    /// verifications), for benches and tests.
    pub fn batch_stats(&self) -> BatchStats {
        self.batch.verifier.stats()
    }

    /// The group whose filter `datagram` from `from` would reach now, if it is a
    /// group-mode request for a checked group: the checks `handle` makes before the
    /// filter, in a form that changes nothing.
    fn would_check(&mut self, now: Instant, from: SocketAddr, d: &[u8]) -> Option<usize> {
        if d.len() > self.cfg.limits.max_datagram || self.draining {
            return None;
        }
        let view = MessageView::parse(d).ok()?;
        let t = view.mtype();
        if !(t == CON || t == NON) || view.code() == code::EMPTY || !view.is_request() {
            return None;
        }
        if self.dedup.lookup(from, view.message_id(), now).is_some()
            || self.dedup.room(from, now).is_err()
            || self.is_for_proxy_layer(&view)
        {
            return None;
        }
        let o = OscoreOption::parse(view.option(opt::OSCORE)?).ok()?;
        let (gid, kid) = (o.kid_context?, o.kid?);
        if !o.group {
            return None;
        }
        let target = proxy_target(&view).ok()??;
        if target.scheme != "coap" || self.names_proxy(&target) {
            return None;
        }
        let Ok(Destination::Group(g)) = self.destination(&target) else {
            return None;
        };
        let c = self.checkers.get(g)?.as_ref()?.current();
        if c.gid() != gid || !c.knows(kid) {
            return None;
        }
        if view
            .options()
            .any(|(n, _)| !self.knows_option(n) && (is_critical(n) || is_unsafe(n)))
        {
            return None;
        }
        if self.by_client.contains_key(&(from, client_token(&view))) {
            return None;
        }
        if !matches!(view.option(opt::HOP_LIMIT), None | Some([2..=u8::MAX])) {
            return None;
        }
        let spec = &self.cfg.groups[g];
        if !spec.enabled || !spec.allow.iter().any(|p| p.contains(from.ip())) {
            return None;
        }
        read_uint(view.option(self.cfg.options.multicast_timeout)?)?;
        Some(g)
    }
}

/// Whether the limits the request will pass before the filter have room for `n`
/// requests of client `ip` and `total` of the batch: what keeps a sender from having
/// more signatures verified in a batch than its rate budget would let reach the filter.
fn budget_allows(e: &mut Engine, now: Instant, ip: IpAddr, n: usize, total: usize) -> bool {
    let l = &e.cfg.limits;
    if e.shared.exchanges() + total > l.max_exchanges {
        return false;
    }
    let mut clients = e.shared.clients();
    let known = clients.len();
    match clients.get_mut(&ip) {
        Some(c) => {
            c.active + n <= l.max_exchanges_per_client
                && c.bucket.available(l.client_rate, l.client_burst, now) >= n as f64
        }
        None => {
            known < l.max_clients && n <= l.max_exchanges_per_client && l.client_burst >= n as f64
        }
    }
}

pub(super) fn check_result(e: &OscoreError) -> CheckResult {
    match e {
        OscoreError::BadSignature | OscoreError::ShortPayload => CheckResult::BadSignature,
        OscoreError::UnknownGid => CheckResult::UnknownGid,
        OscoreError::UnknownKid => CheckResult::UnknownKid,
        OscoreError::NotProtected => CheckResult::NotProtected,
        OscoreError::Replay | OscoreError::TooOld => CheckResult::Replay,
        _ => CheckResult::Malformed,
    }
}
