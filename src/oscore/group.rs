//! A group member across rekeying (RFC 10021 §2.6.3.2, §12.2): the latest Security Context
//! protects everything and alone accepts new requests; the previous one stays, for a
//! grace period the caller ends, only to verify responses in exchanges it started.

use super::context::SecurityContext;
use super::error::{ConfigError, OscoreError};
use super::option::OscoreOption;
use super::protect::{Exchange, Mode, ResponseInfo};
use crate::coap::MessageView;
use crate::coap::options::OSCORE;

/// One member's contexts of a group: the current key epoch and, during the grace period after a rekey, the previous one.
#[derive(Debug)]
pub struct GroupMember {
    current: SecurityContext,
    previous: Option<SecurityContext>,
}

impl GroupMember {
    /// A member with one epoch and no previous one.
    pub fn new(ctx: SecurityContext) -> Self {
        GroupMember {
            current: ctx,
            previous: None,
        }
    }

    /// The latest epoch's context.
    pub fn current(&self) -> &SecurityContext {
        &self.current
    }

    pub(crate) fn current_mut(&mut self) -> &mut SecurityContext {
        &mut self.current
    }

    /// Installs the context of a new key epoch, built from the new Gid and Master Secret
    /// (so its Sender Sequence Number is 0 and its replay windows are valid and empty),
    /// and removes the Recipient Contexts of stale Sender IDs (§2.6.3.2, §12.2.1.2).
    /// The new context must have a higher Key Generation Number and another Gid, so
    /// that no (key, nonce) pair of the old epoch can come back.
    pub fn rekey(&mut self, next: SecurityContext, stale: &[Vec<u8>]) -> Result<(), ConfigError> {
        self.check_rekey(&next)?;
        self.install(next, stale);
        Ok(())
    }

    /// Whether [`rekey`](Self::rekey) would accept `next`, changing nothing: a reload
    /// checks every group with this before it changes any (all or nothing).
    pub(crate) fn check_rekey(&self, next: &SecurityContext) -> Result<(), ConfigError> {
        let cur = &self.current.common;
        if next.common.key_generation <= cur.key_generation || next.common.gid() == cur.gid() {
            return Err(ConfigError::Invalid(format!(
                "rekeying needs a new Gid and a Key Generation Number above {}",
                cur.key_generation
            )));
        }
        Ok(())
    }

    /// The rekey itself, for a caller that had [`check_rekey`](Self::check_rekey) accept
    /// `next` with nothing changed since.
    pub(crate) fn install(&mut self, mut next: SecurityContext, stale: &[Vec<u8>]) {
        debug_assert!(self.check_rekey(&next).is_ok());
        next.remove_recipients(stale);
        let old = std::mem::replace(&mut self.current, next);
        self.previous = Some(old);
    }

    /// Ends the grace period: the old epoch's keys are dropped (and zeroized).
    pub fn drop_previous(&mut self) {
        self.previous = None;
    }

    /// Protects a request under the current epoch (RFC 10021 §7.1, §8.3).
    pub fn protect_request(
        &mut self,
        msg: &[u8],
        mode: Mode,
        peer: Option<&[u8]>,
    ) -> Result<(Vec<u8>, Exchange), OscoreError> {
        self.current.protect_request(msg, mode, peer)
    }

    /// Only the latest context starts new processing; a request under the previous Gid is
    /// refused like one of an unknown group.
    pub fn unprotect_request(&mut self, msg: &[u8]) -> Result<(Vec<u8>, Exchange), OscoreError> {
        self.current.unprotect_request(msg)
    }

    /// Always the latest Sender Context; a request verified under an older Gid gets a
    /// Partial IV and the new Gid in its response (§7.3).
    pub fn protect_response(
        &mut self,
        msg: &[u8],
        exchange: &mut Exchange,
        mode: Mode,
        fresh_piv: bool,
    ) -> Result<Vec<u8>, OscoreError> {
        self.current
            .protect_response(msg, exchange, mode, fresh_piv)
    }

    /// Picks the epoch whose Gid the response names, else the request's.
    pub fn unprotect_response(
        &mut self,
        msg: &[u8],
        exchange: &mut Exchange,
    ) -> Result<(Vec<u8>, ResponseInfo), OscoreError> {
        let view = MessageView::parse(msg)?;
        let value = view.option(OSCORE).ok_or(OscoreError::NotProtected)?;
        let named = OscoreOption::parse(value)?
            .kid_context
            .unwrap_or(&exchange.kid_context)
            .to_vec();
        if named == self.current.common.gid() {
            return self.current.unprotect_response(msg, exchange);
        }
        match &mut self.previous {
            Some(p) if named == p.common.gid() => p.unprotect_response(msg, exchange),
            _ => Err(OscoreError::UnknownGid),
        }
    }
}
