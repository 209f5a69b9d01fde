//! Timers: exchange deadlines, retransmissions of CON messages (RFC 7252 §4.2), the
//! sweep of aged table entries, and the end of a previous key epoch's grace period.

use std::cmp::Reverse;
use std::net::SocketAddr;
use std::time::Instant;

use super::{Engine, Kind, Link, MAX_RETRANSMIT, Pending, SWEEP, Timer};
use crate::coap::build::code;
use crate::proxy::events::{CloseReason, DropReason};

impl Engine {
    /// Schedules a timer. Timers of exchanges that ended early stay in the heap until
    /// due; so that the heap stays bounded by what is live (not by rate x timeout), it is
    /// compacted whenever it grows past four times the live timers.
    pub(super) fn push_timer(&mut self, at: Instant, timer: Timer) {
        self.timers.push(Reverse((at, timer)));
        let live = self.exchanges.len() + self.pending.len() + self.cfg.groups.len() + 1;
        if self.timers.len() > 4 * live + 1024 {
            let (exchanges, pending) = (&self.exchanges, &self.pending);
            self.timers.retain(|Reverse((at, t))| match t {
                Timer::Exchange(tok) => exchanges.get(tok).is_some_and(|e| e.deadline == *at),
                Timer::Retransmit(link, to, mid) => pending
                    .get(&(*link, *to, *mid))
                    .is_some_and(|p| p.next == *at),
                Timer::Sweep | Timer::DropPrevious(_) => true,
            });
        }
    }

    /// Registers a CON for retransmission (RFC 7252 §4.2). At the table's bound the
    /// message is sent once without retransmission. A live entry is never replaced:
    /// Message IDs are not reused toward a destination within their lifetime (see
    /// [`super::MessageIds`]), so a clash would be a bug, and the earlier message keeps
    /// its retransmissions.
    pub(super) fn track(
        &mut self,
        now: Instant,
        link: Link,
        to: SocketAddr,
        mid: u16,
        bytes: Vec<u8>,
        exchange: Option<u64>,
    ) -> bool {
        if self.pending.len() >= self.cfg.limits.max_retransmissions {
            return false;
        }
        let timeout = self.jitter();
        let next = now + timeout;
        match self.pending.entry((link, to, mid)) {
            std::collections::hash_map::Entry::Occupied(_) => {
                debug_assert!(false, "Message ID {mid} toward {to} reused while pending");
                return false;
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Pending {
                    bytes,
                    attempts: 0,
                    timeout,
                    next,
                    exchange,
                });
            }
        }
        self.push_timer(next, Timer::Retransmit(link, to, mid));
        true
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        while let Some(&Reverse((at, timer))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Exchange(t) => {
                    let due = self.exchanges.get(&t).is_some_and(|ex| ex.deadline <= now);
                    if !due || self.observe_deadline(t, now) {
                        continue;
                    }
                    let kind = self.exchanges[&t].route.kind();
                    match kind {
                        Kind::Group(_) => self.close(t, CloseReason::Timeout),
                        Kind::Unicast(_) => {
                            self.reply_error(
                                t,
                                code::GATEWAY_TIMEOUT,
                                "origin did not answer in time",
                            );
                            self.close(t, CloseReason::UnicastTimeout);
                        }
                    }
                }
                Timer::Retransmit(link, to, mid) => {
                    let Some(p) = self.pending.get_mut(&(link, to, mid)) else {
                        continue;
                    };
                    if p.next > now {
                        continue;
                    }
                    if p.attempts >= MAX_RETRANSMIT {
                        let exchange = self
                            .pending
                            .remove(&(link, to, mid))
                            .and_then(|p| p.exchange);
                        self.drop_msg(DropReason::GaveUpRetransmitting, to);
                        // An unacknowledged CON notification: the client lost interest
                        // (RFC 7641 §4.5).
                        if let Some(t) = exchange.filter(|&t| self.is_observation(t)) {
                            self.close(t, CloseReason::InterestLapsed);
                        }
                        continue;
                    }
                    p.attempts += 1;
                    p.timeout *= 2;
                    p.next = now + p.timeout;
                    let (bytes, next) = (p.bytes.clone(), p.next);
                    self.push_timer(next, Timer::Retransmit(link, to, mid));
                    self.send(link, to, bytes);
                }
                Timer::DropPrevious(g) => self.drop_previous_epoch(g),
                Timer::Sweep => {
                    self.dedup.expire(now);
                    self.mids.expire(now);
                    let (rate, burst) = (self.cfg.limits.client_rate, self.cfg.limits.client_burst);
                    self.shared
                        .clients()
                        .retain(|_, c| c.active > 0 || !c.bucket.is_full(rate, burst, now));
                    self.push_timer(now + SWEEP, Timer::Sweep);
                }
            }
        }
    }
}
