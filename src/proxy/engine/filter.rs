//! The signature filters (RFC 10021 §7.5): requests before any fan-out, responses
//! before they are relayed, under the group's policy.

use super::{Engine, Filtered, Reject, Route};
use crate::coap::MessageView;
use crate::coap::build::code;
use crate::oscore::checker::CheckedRequest;
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
        let Some(checker) = self.checkers.get_mut(g).and_then(Option::as_mut) else {
            return Ok(None);
        };
        let (result, checked) = match checker.admit_request(view.bytes()) {
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
        let mut out = Vec::new();
        for (g, c) in self.checkers.iter_mut().enumerate() {
            if let Some(s) = c.as_mut().and_then(GroupChecker::take_dirty) {
                out.push((g, s));
            }
        }
        out
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
    /// cannot be checked and are relayed.
    pub(super) fn check_response(
        &mut self,
        token: u64,
        view: &MessageView,
    ) -> Result<(), DropReason> {
        let Some(ex) = self.exchanges.get(&token) else {
            return Ok(());
        };
        let Route::Group {
            group: g,
            checked: Some(req),
            ..
        } = &ex.route
        else {
            return Ok(());
        };
        let g = *g;
        let Some(checker) = self.checkers.get(g).and_then(Option::as_ref) else {
            return Ok(());
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
            _ => Ok(()),
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
