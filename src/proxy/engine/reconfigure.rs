//! Changing a running engine: a new configuration (SIGHUP), rekeying groups on the way
//! (RFC 10021 §2.6.3.2, §12.2), and draining before exit (SIGTERM).

use std::time::{Duration, Instant};

use super::{Engine, Timer};
use crate::oscore::{GroupChecker, GroupMember, SecurityContext, SignatureChecker};
use crate::proxy::config::{Policy, ProxyConfig};

impl Engine {
    /// Applies a new configuration atomically, or changes nothing and says why: every
    /// group's new state is built and checked before any group is changed. The groups
    /// must be the same (names and addresses: their sockets stay); everything else may
    /// change. A group whose Gid changed is rekeyed: new requests are checked under the
    /// new epoch at once, exchanges in flight finish, and the old epoch is kept for the
    /// group's maximum Multicast-Timeout and then erased.
    pub fn reconfigure(&mut self, now: Instant, mut cfg: ProxyConfig) -> Result<(), String> {
        // The sockets stay bound across a reload, and what they are bound to (filled in by
        // the runtime at bind, not read from the file) stays what names the proxy.
        cfg.local.listen = self.cfg.local.listen.clone();
        cfg.local.host_addrs = self.cfg.local.host_addrs.clone();
        if cfg.groups.len() != self.cfg.groups.len()
            || cfg
                .groups
                .iter()
                .zip(&self.cfg.groups)
                .any(|(a, b)| a.name != b.name || a.addr != b.addr)
        {
            return Err("the set of groups (names, addresses) changed: restart to apply".into());
        }
        // Build everything first, so that a failure leaves the running state untouched.
        let mut checkers = Vec::with_capacity(cfg.groups.len());
        let mut members = Vec::with_capacity(cfg.groups.len());
        for (g, spec) in cfg.groups.iter().enumerate() {
            let name = &spec.name;
            let sec = spec.security.as_ref().filter(|s| s.policy != Policy::Off);
            checkers.push(match sec {
                Some(s) => Some(
                    SignatureChecker::new(&s.checker).map_err(|e| format!("group {name}: {e}"))?,
                ),
                None => None,
            });
            members.push(
                match spec.security.as_ref().and_then(|s| s.member.as_ref()) {
                    Some(m) => {
                        let same = self.members[g].as_ref().is_some_and(|cur| {
                            cur.current().common.gid()
                                == m.id_context.as_deref().unwrap_or_default()
                        });
                        // The same epoch keeps its context: sequence numbers and windows.
                        if same {
                            None
                        } else {
                            Some(
                                SecurityContext::new(m)
                                    .map_err(|e| format!("group {name}: membership: {e}"))?,
                            )
                        }
                    }
                    None => None,
                },
            );
            // Every condition a rekey below can fail on, for the checker and the
            // membership of every group kind (a member-only group with policy off has no
            // checker to be refused by), so that the loop that applies cannot fail
            // half-way with earlier groups already changed.
            if let (Some(next), Some(cur)) = (&checkers[g], &self.checkers[g])
                && next.gid() != cur.current().gid()
            {
                cur.check_rekey(next)
                    .map_err(|e| format!("group {name}: {e}"))?;
            }
            if let (Some(next), Some(cur)) = (&members[g], &self.members[g]) {
                cur.check_rekey(next)
                    .map_err(|e| format!("group {name}: membership: {e}"))?;
            }
        }
        // Nothing below fails: everything was checked above.
        for (g, (next, member)) in checkers.into_iter().zip(members).enumerate() {
            let grace = cfg.groups[g].max_timeout.max(Duration::from_secs(1));
            match (next, self.checkers[g].as_mut()) {
                (Some(next), Some(cur)) if next.gid() != cur.current().gid() => {
                    cur.install(next);
                    self.push_timer(now + grace, Timer::DropPrevious(g));
                }
                (Some(next), Some(cur)) => cur.update(next),
                (Some(next), None) => {
                    self.checkers[g] =
                        Some(GroupChecker::with_windows(next, self.shared.windows(g)))
                }
                (None, _) => self.checkers[g] = None,
            }
            let keeps = cfg.groups[g]
                .security
                .as_ref()
                .is_some_and(|s| s.member.is_some());
            match (member, self.members[g].as_mut()) {
                (Some(ctx), Some(cur)) => {
                    // Peers no longer in the group are stale (§2.6.3.2).
                    let stale: Vec<Vec<u8>> = cur
                        .current()
                        .recipients
                        .keys()
                        .filter(|k| !ctx.recipients.contains_key(*k))
                        .cloned()
                        .collect();
                    cur.install(ctx, &stale);
                    self.after_member_rekey(g, now + grace);
                }
                (Some(ctx), None) => {
                    self.members[g] = Some(GroupMember::new(ctx));
                    self.after_member_rekey(g, now + grace);
                }
                (None, _) if !keeps => self.members[g] = None,
                (None, _) => {}
            }
        }
        self.cfg = cfg;
        // Shrunk cache bounds evict down to them at once (issue 16).
        self.cache_resize();
        Ok(())
    }

    /// A new member epoch starts at Sender Sequence Number 0 (§2.6.3.2) with its first
    /// block still to be reserved; Echo values of the old epoch are void (§9). The first
    /// thread to apply the epoch creates its shared state, once for the whole proxy;
    /// the others join it (`Shared::share_member`).
    fn after_member_rekey(&mut self, g: usize, drop_at: Instant) {
        if let Some(m) = self.members[g].as_mut() {
            let c = m.current_mut();
            c.sender.ssn_ceiling = Some(0);
            self.shared.share_member(g, c, true);
        }
        self.maybe_reserve(g);
        self.push_timer(drop_at, Timer::DropPrevious(g));
    }

    /// The grace period of a group's previous key epoch is over.
    pub(super) fn drop_previous_epoch(&mut self, g: usize) {
        if let Some(c) = self.checkers.get_mut(g).and_then(Option::as_mut) {
            c.drop_previous();
        }
        if let Some(m) = self.members.get_mut(g).and_then(Option::as_mut) {
            m.drop_previous();
        }
    }

    /// Stops intake before exit: new requests get 5.03, exchanges in flight run on;
    /// observations end at once, each group or origin deregistered (their
    /// deregistrations are in the output), so that the drain does not wait on them.
    pub fn drain(&mut self) {
        self.draining = true;
        self.end_observations(crate::proxy::events::CloseReason::Shutdown);
    }
}
