//! The proxy as a full group member for the traffic it terminates (RFC 10021 §8;
//! oscore-capable-proxies §2): the OSCORE layer a client shares with the proxy comes off
//! incoming requests, and every answer to such a request goes back under it.

use chacha20::rand_core::Rng;

use super::{Engine, Local, Reject};
use crate::coap::MessageView;
use crate::coap::build::{self, code};
use crate::coap::options as opt;
use crate::oscore::option::OscoreOption;
use crate::oscore::{Exchange, Layer, OscoreError};
use crate::proxy::events::RejectReason;

/// The layer a request came in under: which group context removed it, and the request
/// binding that protects every answer (RFC 10021 §8.5).
#[derive(Debug)]
pub(super) struct Outer {
    group: usize,
    ex: Exchange,
}

impl Outer {
    /// The member this layer authenticated: its group and Sender ID.
    pub(super) fn identity(&self) -> (usize, &[u8]) {
        (self.group, &self.ex.kid)
    }
}

impl Engine {
    /// An OSCORE request with no proxy target outside is addressed to the proxy, if it
    /// is a member of any group.
    pub(super) fn is_for_proxy_layer(&self, view: &MessageView) -> bool {
        self.members.iter().any(Option::is_some)
            && view.option(opt::OSCORE).is_some()
            && view.option(opt::PROXY_URI).is_none()
            && view.option(opt::PROXY_SCHEME).is_none()
    }

    /// Verifies and decrypts the proxy's layer with the context the kid context names.
    /// Failures get the codes of RFC 8613 §8.2 (and RFC 10021 §8.4), unprotected.
    pub(super) fn remove_outer_layer(
        &mut self,
        view: &MessageView,
    ) -> Result<(Vec<u8>, Outer), Reject> {
        let value = view.option(opt::OSCORE).unwrap_or_default();
        let o = OscoreOption::parse(value).map_err(|_| {
            Reject::new(
                code::BAD_OPTION,
                RejectReason::OscoreLayer,
                "bad OSCORE option",
            )
            .no_cache()
        })?;
        let not_found = || {
            Reject::new(
                code::UNAUTHORIZED,
                RejectReason::OscoreLayer,
                "Security context not found",
            )
            .no_cache()
        };
        let gid = o.kid_context.ok_or_else(not_found)?;
        let group = self
            .members
            .iter()
            .position(|m| m.as_ref().is_some_and(|m| m.current().common.gid() == gid))
            .ok_or_else(not_found)?;
        // A later epoch installed by another thread (a reload this engine has not applied
        // yet): this one admits nothing under the old Gid, as if it were unknown.
        if self.member_ssn(group).is_some_and(|s| s.is_retired()) {
            return Err(not_found().group(group));
        }
        let member = self.members[group].as_mut().expect("found above");
        match member.unprotect_request(view.bytes()) {
            Ok((inner, ex)) => Ok((inner, Outer { group, ex })),
            Err(e) => Err(match e {
                OscoreError::UnknownKid | OscoreError::UnknownGid => not_found().group(group),
                OscoreError::Replay | OscoreError::TooOld | OscoreError::ReplayWindowInvalid => {
                    Reject::new(
                        code::UNAUTHORIZED,
                        RejectReason::OscoreLayer,
                        "Replay detected",
                    )
                    .no_cache()
                    .group(group)
                }
                OscoreError::Option(_)
                | OscoreError::MissingKidOrPiv
                | OscoreError::MissingKidContext => Reject::new(
                    code::BAD_OPTION,
                    RejectReason::OscoreLayer,
                    "bad OSCORE option",
                )
                .no_cache()
                .group(group),
                _ => Reject::new(
                    code::BAD_REQUEST,
                    RejectReason::OscoreLayer,
                    "Decryption failed",
                )
                .no_cache()
                .group(group),
            }),
        }
    }

    /// Protects an answer to the client under the layer its request came in: pairwise
    /// mode, every outer-only option inside (oscore-capable-proxies §2.2, §2.5), a fresh
    /// Partial IV from the second answer on (§2.5.1).
    pub(super) fn protect_for_client(&mut self, outer: &mut Outer, msg: &[u8]) -> Option<Vec<u8>> {
        let member = self.members.get_mut(outer.group)?.as_mut()?;
        let mode = outer.ex.mode;
        let protected = member
            .current_mut()
            .protect_response_layer(msg, &mut outer.ex, mode, false, Layer::Hop)
            .ok();
        self.maybe_reserve(outer.group);
        protected
    }

    /// [`protect_for_client`](Self::protect_for_client) for a notification of an
    /// observation: every one with a Partial IV of the proxy's own, the first too
    /// (oscore-capable-proxies §2.5.1; RFC 8613 §8.3: notifications never reuse the
    /// request's nonce).
    pub(super) fn protect_notification(
        &mut self,
        outer: &mut Outer,
        msg: &[u8],
    ) -> Option<Vec<u8>> {
        let member = self.members.get_mut(outer.group)?.as_mut()?;
        let mode = outer.ex.mode;
        let protected = member
            .current_mut()
            .protect_response_layer(msg, &mut outer.ex, mode, true, Layer::Hop)
            .ok();
        self.maybe_reserve(outer.group);
        protected
    }

    /// Whether the client authenticated by `outer` may send group requests to group `g`:
    /// it must be a member of that very group, and on its `allow_kids` list if it has one.
    pub(super) fn kid_allowed(&self, outer: &Outer, g: usize) -> bool {
        if outer.group != g {
            return false;
        }
        match self.cfg.groups[g]
            .security
            .as_ref()
            .and_then(|s| s.allow_kids.as_ref())
        {
            Some(list) => list.contains(&outer.ex.kid),
            None => true,
        }
    }

    /// The proxy's own resources (a member's pairwise requests to it, RFC 10021 §8).
    pub(super) fn local_resource(&self, _outer: &Outer, view: &MessageView) -> Local {
        let path: Vec<&[u8]> = view
            .options()
            .filter(|(n, _)| *n == opt::URI_PATH)
            .map(|(_, v)| v)
            .collect();
        let link_format = opt::uint_value(40);
        let json = opt::uint_value(50);
        let (c, cf, payload) = match (view.code(), path.as_slice()) {
            (code::GET, [b".well-known", b"core"]) => (
                code::CONTENT,
                Some(link_format),
                b"</groups>;rt=\"groxy.groups\";ct=50,</status>;rt=\"groxy.status\";ct=50".to_vec(),
            ),
            (code::GET, [b"groups"]) => {
                let groups: Vec<_> = self
                    .cfg
                    .groups
                    .iter()
                    .map(|g| {
                        serde_json::json!({
                            "name": g.name,
                            "uri": format!("coap://{}", g.addr),
                            "enabled": g.enabled,
                            "policy": g.security.as_ref().map(|s| s.policy.as_str()),
                        })
                    })
                    .collect();
                (
                    code::CONTENT,
                    Some(json),
                    serde_json::to_vec(&groups).unwrap_or_default(),
                )
            }
            (code::GET, [b"status"]) => {
                let (active, capacity) = self.exchanges();
                let status = serde_json::json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "exchanges": active,
                    "capacity": capacity,
                    "groups": self.cfg.groups.len(),
                });
                (
                    code::CONTENT,
                    Some(json),
                    serde_json::to_vec(&status).unwrap_or_default(),
                )
            }
            (_, [b".well-known", b"core"] | [b"groups"] | [b"status"]) => {
                (code::METHOD_NOT_ALLOWED, None, Vec::new())
            }
            _ => (code::NOT_FOUND, None, Vec::new()),
        };
        Local {
            code: c,
            options: cf
                .map(|v| vec![(opt::CONTENT_FORMAT, v)])
                .unwrap_or_default(),
            payload,
        }
    }
}

/// Sender Sequence Numbers reserved on stable storage at a time; a new reservation is
/// asked for when half of a block is used.
pub const SSN_BLOCK: u64 = 4096;

impl Engine {
    /// RFC 10021 §9: a verified request whose sender's replay window is invalid (state
    /// was lost) is acted on only with the Echo value the proxy sent it; otherwise it gets
    /// 4.01 with a fresh Echo, protected with the proxy's own Partial IV. With the
    /// value echoed, the window restarts at the request's Partial IV.
    pub(super) fn check_freshness(
        &mut self,
        outer: &mut Outer,
        inner: &MessageView,
        (listener, from): (usize, std::net::SocketAddr),
        con: bool,
        mid: u16,
    ) -> Result<(), Vec<u8>> {
        if outer.ex.fresh {
            return Ok(());
        }
        // The Echo values are the whole proxy's: a retry that reaches another thread is
        // accepted there, and a value is taken once (`Shared::take_echo`).
        let gid = outer.ex.kid_context.clone();
        if let Some(echo) = inner.option(opt::ECHO)
            && self
                .shared
                .take_echo(outer.group, &gid, &outer.ex.kid, echo)
        {
            let seq = crate::oscore::option::piv_value(&outer.ex.piv);
            if let Some(m) = self.members.get_mut(outer.group).and_then(Option::as_mut) {
                let _ = m.current_mut().reinit_replay_window(&outer.ex.kid, seq);
            }
            outer.ex.fresh = true;
            return Ok(());
        }
        // RFC 9175 §2.3: unpredictable, from the engine's CSPRNG.
        let mut value = [0u8; 8];
        self.rng.fill_bytes(&mut value);
        self.shared
            .put_echo(outer.group, &gid, &outer.ex.kid, value);
        self.emit(crate::proxy::Event::Rejected {
            group: Some(outer.group),
            reason: RejectReason::EchoChallenge,
            code: code::UNAUTHORIZED,
            client: "0.0.0.0:0".parse().expect("literal"),
        });
        let (t, m) = if con {
            (build::ACK, mid)
        } else {
            let link = super::Link::Listener(listener);
            (
                build::NON,
                self.mid_to(link, from, false, false).ok_or_else(Vec::new)?,
            )
        };
        let reply = build::encode(
            t,
            code::UNAUTHORIZED,
            m,
            inner.token(),
            &mut [(opt::ECHO, &value[..])],
            &[],
        );
        let member = self
            .members
            .get_mut(outer.group)
            .and_then(Option::as_mut)
            .ok_or_else(Vec::new)?;
        let mode = outer.ex.mode;
        member
            .current_mut()
            .protect_response_layer(&reply, &mut outer.ex, mode, true, Layer::Hop)
            .map_err(|_| Vec::new())
            .and_then(Err)
    }

    /// Restores the proxy's membership state in `group` after a start: Sender Sequence
    /// Numbers continue at `next_ssn` and may go up to `ceiling` (already on stable
    /// storage); with `lost_state`, every peer's replay window is invalid until Echo.
    pub fn restore_member(&mut self, group: usize, next_ssn: u64, ceiling: u64, lost_state: bool) {
        if let Some(m) = self.members.get_mut(group).and_then(Option::as_mut) {
            let c = m.current_mut();
            c.sender.ssn = next_ssn;
            c.sender.ssn_ceiling = Some(ceiling);
            // Once, for every engine of the proxy (the runtime restores on its first
            // thread only): the numbers and the windows are shared.
            if let Some(s) = &c.sender.shared {
                s.restore(next_ssn, ceiling);
            }
            if lost_state {
                c.invalidate_replay_windows();
            }
        }
    }

    /// Stable storage now allows Sender Sequence Numbers up to `up_to` in `group`.
    pub fn ssn_reserved(&mut self, group: usize, up_to: u64) {
        if let Some(m) = self.members.get_mut(group).and_then(Option::as_mut) {
            let c = m.current_mut();
            c.sender.ssn_ceiling = Some(c.sender.ssn_ceiling.map_or(up_to, |x| x.max(up_to)));
            if let Some(s) = &c.sender.shared {
                s.raise(up_to);
                s.end_reservation();
            }
        }
    }

    /// The reservation asked for in `group` could not be written: nothing is raised, and
    /// the next answer (on any thread) asks again.
    pub fn ssn_reservation_failed(&mut self, group: usize) {
        if let Some(s) = self.member_ssn(group) {
            s.end_reservation();
        }
    }

    /// Where the proxy's Sender Sequence Numbers in `group` come from (its current
    /// epoch's space, shared by every thread), if it is a member.
    fn member_ssn(&self, group: usize) -> Option<&crate::oscore::ssn::SsnSource> {
        self.members
            .get(group)?
            .as_ref()?
            .current()
            .sender
            .shared
            .as_ref()
    }

    /// The key epoch of the proxy's membership in `group`: its Key Generation Number
    /// and Gid (what the `.ssn` file records beside the bound).
    pub fn member_epoch(&self, group: usize) -> Option<(u64, Vec<u8>)> {
        let c = &self.members.get(group)?.as_ref()?.current().common;
        Some((c.key_generation, c.gid().to_vec()))
    }

    /// The groups the proxy is a member of.
    pub fn member_groups(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&g| self.members[g].is_some())
            .collect()
    }

    /// Asks for the next reservation once half of the current block is used, if no
    /// other reservation of the group is in flight on any thread: one writer of the
    /// `.ssn` file at a time, and each bound at or above the last (never down).
    pub(super) fn maybe_reserve(&mut self, group: usize) {
        let Some(s) = self.member_ssn(group) else {
            return;
        };
        if let Some(up_to) = s.begin_reservation(SSN_BLOCK) {
            self.out
                .push_back(super::Output::ReserveSsn { group, up_to });
        }
    }
}
