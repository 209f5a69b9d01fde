//! Timers: exchange deadlines, retransmissions of CON messages (RFC 7252 §4.2), the
//! sweep of aged table entries, and the end of a previous key epoch's grace period.

use super::*;

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
                Timer::Retransmit(to, mid) => {
                    pending.get(&(*to, *mid)).is_some_and(|p| p.next == *at)
                }
                Timer::Sweep | Timer::DropPrevious(_) => true,
            });
        }
    }

    /// Registers a CON for retransmission (RFC 7252 §4.2). At the table's bound the
    /// message is sent once without retransmission.
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
        self.pending.insert(
            (to, mid),
            Pending {
                link,
                bytes,
                attempts: 0,
                timeout,
                next,
                exchange,
            },
        );
        self.push_timer(next, Timer::Retransmit(to, mid));
        true
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((at, timer))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Exchange(t) => {
                    let due = self.exchanges.get(&t).is_some_and(|ex| ex.deadline <= now);
                    if !due {
                        continue;
                    }
                    let kind = self.exchanges[&t].kind;
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
                Timer::Retransmit(to, mid) => {
                    let Some(p) = self.pending.get_mut(&(to, mid)) else {
                        continue;
                    };
                    if p.next > now {
                        continue;
                    }
                    if p.attempts >= MAX_RETRANSMIT {
                        self.pending.remove(&(to, mid));
                        self.drop_msg(DropReason::GaveUpRetransmitting, to);
                        continue;
                    }
                    p.attempts += 1;
                    p.timeout *= 2;
                    p.next = now + p.timeout;
                    let (link, bytes, next) = (p.link, p.bytes.clone(), p.next);
                    self.push_timer(next, Timer::Retransmit(to, mid));
                    self.send(link, to, bytes);
                }
                Timer::DropPrevious(g) => self.drop_previous_epoch(g),
                Timer::Sweep => {
                    self.dedup.expire(now);
                    let (rate, burst) = (self.cfg.limits.client_rate, self.cfg.limits.client_burst);
                    self.clients
                        .retain(|_, c| c.active > 0 || !c.bucket.is_full(rate, burst, now));
                    self.push_timer(now + SWEEP, Timer::Sweep);
                }
            }
        }
    }
}
