//! Observations through the proxy (RFC 7641; groupcomm-proxy §5.2.2, §5.4.2; RFC 10020
//! §3.7). An observation is an exchange (`InFlight`) with an [`Observation`] attached:
//! the proxy registers under its own token (one multicast, or one request to a unicast
//! origin, RFC 7641 §5) and relays every notification under the client's token. At T'
//! the exchange is kept while any device answered 2.xx with Observe, else freed as any
//! other (§5.4.2). It ends on the client's deregistration, an RST, an Early Stop Request,
//! a missed interest check (RFC 7641 §4.5), every device ending, idleness or shutdown.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::{
    Engine, Forward, HashMap, HashSet, Kind, Link, Options, Reject, Route, Timer, requester,
};
use crate::coap::MessageView;
use crate::coap::build::{CON, NON, code};
use crate::coap::options::{self as opt, read_uint};
use crate::proxy::events::{CloseReason, DropReason, Event, NotificationDrop, RejectReason};
use crate::proxy::tables::Bucket;

use super::member::Outer;

/// Observe sequence numbers are 24 bits (RFC 7641 §4.4); §3.4 compares them modulo 2^24.
const SEQ_HALF: u32 = 1 << 23;
const SEQ_MASK: u32 = (1 << 24) - 1;
/// RFC 7641 §3.4: a notification more than 128 s after the last one is newer whatever
/// its number.
const REORDER_AGE: Duration = Duration::from_secs(128);
/// Max-Age of the 5.03 at a full observation table: observations have no deadline to
/// wait for, so a client is asked to come back after a minute.
const FULL_RETRY: Duration = Duration::from_secs(60);
/// FETCH (RFC 8132), observable like GET (RFC 10020 §3.7).
const FETCH: u8 = 0x05;

/// What the proxy knows of one device (or the origin) of an observation.
#[derive(Debug, Clone, Copy)]
struct Device {
    /// The Observe number of the last notification relayed from it, and when.
    seq: Option<u32>,
    at: Instant,
    /// It answered 2.xx with Observe and has not ended its notifications since.
    live: bool,
}

/// The observation state of an exchange (boxed in `InFlight`: most exchanges have none).
#[derive(Debug)]
pub(super) struct Observation {
    /// Per device, for the ordering of RFC 7641 §3.4; at most `observe.max_devices`.
    devices: HashMap<SocketAddr, Device>,
    /// The registration as sent to the group or origin: sent again with Observe 1 when
    /// the proxy ends the observation (unprotected requests only, see `deregister`).
    registration: Vec<u8>,
    /// Where the registration went (the group's address or the origin).
    dest: SocketAddr,
    /// T' has passed: the exchange lives on as an observation.
    past_deadline: bool,
    /// The last CON notification to the client (RFC 7641 §4.5).
    last_con: Instant,
    /// The last notification relayed.
    last_notified: Instant,
}

impl Observation {
    fn any_live(&self) -> bool {
        self.devices.values().any(|d| d.live)
    }
}

/// The engine's observations: how many, per client, and the tokens of those that ended.
#[derive(Debug, Default)]
pub(super) struct Observers {
    held: usize,
    /// Per client address: observations held and the notification rate bucket. An entry
    /// exists only while the client holds one, so the map is bounded by
    /// `observe.max_observations`.
    clients: HashMap<IpAddr, Observer>,
    /// Tokens of observations that ended, the latest `observe.max_observations`: a NON
    /// notification under one gets an RST (RFC 7641 §3.6), as a CON one does anyway.
    ended: VecDeque<u64>,
    /// The same tokens, for the lookup.
    ended_set: HashSet<u64>,
}

#[derive(Debug)]
struct Observer {
    held: usize,
    bucket: Bucket,
}

/// The Observe option of a message as a number, if it has a valid one.
fn observe_value(view: &MessageView) -> Option<u32> {
    view.option(opt::OBSERVE)
        .and_then(|v| (v.len() <= 3).then(|| read_uint(v)).flatten())
}

/// Whether a request registers an observation (RFC 7641 §3.1: GET, or FETCH, with
/// Observe 0).
pub(super) fn registers(view: &MessageView) -> bool {
    matches!(view.code(), code::GET | FETCH) && observe_value(view) == Some(0)
}

/// RFC 7641 §3.4: whether notification `v2` at `t2` is newer than `v1` at `t1`.
fn newer(v1: u32, t1: Instant, v2: u32, t2: Instant) -> bool {
    let (v1, v2) = (v1 & SEQ_MASK, v2 & SEQ_MASK);
    (v1 < v2 && v2 - v1 < SEQ_HALF) || (v1 > v2 && v1 - v2 > SEQ_HALF) || t2 > t1 + REORDER_AGE
}

impl Engine {
    /// Observations held, and the table's capacity: of the whole proxy, every engine
    /// sharing this one's state counted (`max_observations` bounds them together).
    pub fn observations(&self) -> (usize, usize) {
        (
            self.shared.observations(None).0,
            self.cfg.limits.observe.max_observations,
        )
    }

    /// The observation bounds, for a request that registers one; called after the
    /// exchange limits (an observation is an exchange too).
    pub(super) fn observe_admit(&self, client: IpAddr, group: Option<usize>) -> Result<(), Reject> {
        let l = &self.cfg.limits.observe;
        let with_group = |r: Reject| match group {
            Some(g) => r.group(g),
            None => r,
        };
        // The whole proxy's counts (every thread's observations, see `shared.rs`).
        let (held, mine) = self.shared.observations(Some(client));
        if held >= l.max_observations {
            return Err(with_group(
                Reject::new(
                    code::SERVICE_UNAVAILABLE,
                    RejectReason::ObservationsFull,
                    "observation table full",
                )
                .max_age(FULL_RETRY),
            ));
        }
        if mine >= l.max_per_client {
            return Err(with_group(
                Reject::new(
                    code::TOO_MANY_REQUESTS,
                    RejectReason::ClientObservations,
                    "too many observations",
                )
                .max_age(FULL_RETRY),
            ));
        }
        Ok(())
    }

    /// Attaches an observation to the exchange just opened under `token`.
    pub(super) fn observe_start(&mut self, token: u64, registration: Vec<u8>, dest: SocketAddr) {
        let now = self.now;
        let burst = self.cfg.limits.observe.notification_burst;
        let Some(ex) = self.exchanges.get_mut(&token) else {
            return;
        };
        ex.observe = Some(Box::new(Observation {
            devices: HashMap::default(),
            registration,
            dest,
            past_deadline: false,
            last_con: now,
            last_notified: now,
        }));
        let group = ex.route.group();
        let ip = ex.client.ip();
        self.observers.held += 1;
        self.shared.observation_started(ip);
        self.observers
            .clients
            .entry(ip)
            .or_insert_with(|| Observer {
                held: 0,
                bucket: Bucket::full(burst, now),
            })
            .held += 1;
        self.emit(Event::ObserveStarted { group });
    }

    /// Whether a request under the token of running exchange `t` re-registers or
    /// deregisters its observation (RFC 7641 §3.3.1, §3.6): the exchange observes, the
    /// request has Observe 0 or 1 and goes where the observation's registration went.
    pub(super) fn observe_applies(
        &self,
        t: u64,
        view: &MessageView,
        group: Option<usize>,
        origin: Option<SocketAddr>,
    ) -> bool {
        let Some(ex) = self.exchanges.get(&t) else {
            return false;
        };
        ex.observe.is_some()
            && matches!(view.code(), code::GET | FETCH)
            && matches!(observe_value(view), Some(0 | 1))
            && match ex.route.kind() {
                Kind::Group(g) => group == Some(g),
                Kind::Unicast(o) => origin == Some(o),
            }
    }

    /// A re-registration (Observe 0: the request goes out again under the observation's
    /// token, no second observation) or the client's deregistration (Observe 1: it goes
    /// out under that token, and the exchange relays the answers until the new request's
    /// T', as an ordinary one). Only with the protection of the registration, as an
    /// Early Stop Request (groupcomm-proxy §5.2.3).
    pub(super) fn observe_again(
        &mut self,
        now: Instant,
        t: u64,
        out: &Forward<'_>,
        outer: &mut Option<Outer>,
    ) -> Result<(), Reject> {
        let view = out.view;
        let (kind, egress, ip, want) = {
            let ex = &self.exchanges[&t];
            (
                ex.route.kind(),
                ex.egress,
                ex.client.ip(),
                ex.requester.clone(),
            )
        };
        let group = kind.group();
        // The re-registration causes a multicast: the client's fan-out rate applies.
        let (rate, burst) = (self.cfg.limits.client_rate, self.cfg.limits.client_burst);
        let taken = self
            .shared
            .clients()
            .get_mut(&ip)
            .map(|c| c.bucket.take(rate, burst, now));
        if let Some(Err(wait)) = taken {
            let r = Reject::new(
                code::TOO_MANY_REQUESTS,
                RejectReason::RateLimited,
                "request rate limit",
            )
            .max_age(wait);
            return Err(match group {
                Some(g) => r.group(g),
                None => r,
            });
        }
        let checked = match group {
            Some(g) => match self.check_request(g, view) {
                Ok(c) => c,
                Err(super::Filtered::Drop) => {
                    self.drop_msg(DropReason::RequestCheckFailed, out.from);
                    return Err(Reject::silent());
                }
            },
            None => None,
        };
        if requester(outer, checked.as_ref()) != want {
            self.drop_msg(DropReason::UnmatchedStop, out.from);
            return Err(Reject::new(
                code::UNAUTHORIZED,
                RejectReason::NotAllowed,
                "observation update without the protection of the registration",
            ));
        }
        let dest = self.exchanges[&t]
            .observe
            .as_ref()
            .map(|o| o.dest)
            .expect("observe_applies checked");
        let con = group.is_none() && view.mtype() == CON;
        let Some(mid) = self.mid_to(egress, dest, con, true) else {
            return Err(self.mids_exhausted(None));
        };
        let hop = out.hop_limit.map(|h| [h]);
        // Through a chain (groupcomm-proxy §8.1.1) the update goes to the next hop as a
        // forward-proxy request, with T'' as the registration had.
        let chained = kind
            .group()
            .filter(|_| Engine::next_hop_of(&self.exchanges[&t].route).is_some());
        let chain_hop = chained.map(|g| self.chain_hop(g, out.hop_limit));
        let next_mt = match chained {
            Some(g) => {
                let asked = view
                    .option(self.cfg.options.multicast_timeout)
                    .and_then(read_uint)
                    .map_or(Duration::ZERO, |s| Duration::from_secs(s as u64))
                    .min(self.cfg.groups[g].max_timeout);
                self.chain_timeout(g, asked)?
                    .map(|d| crate::coap::options::uint_value(d.as_secs() as u32))
            }
            None => None,
        };
        let mut opts = match (&next_mt, &chain_hop) {
            (Some(mt), Some(h)) => self.chain_options(view, h, mt, outer.is_some()),
            _ => self.forwarded_options(view, &out.target, &hop, outer.is_some()),
        };
        let tb = t.to_be_bytes();
        let bytes = self.encode(
            if con { CON } else { NON },
            view.code(),
            mid,
            &tb,
            &mut opts,
            view.payload(),
        );
        if con {
            self.track(now, egress, dest, mid, bytes.clone(), None);
        }
        let deregisters = observe_value(view) == Some(1);
        // The T' of a group deregistration: its Multicast-Timeout, capped as any other.
        let timeout = match kind {
            Kind::Group(g) => view
                .option(self.cfg.options.multicast_timeout)
                .and_then(read_uint)
                .map_or(Duration::ZERO, |s| Duration::from_secs(s as u64))
                .min(self.cfg.groups[g].max_timeout),
            Kind::Unicast(_) => self.cfg.unicast.timeout,
        };
        let ex = self.exchanges.get_mut(&t).expect("checked above");
        if let (Route::Group { checked: c, .. }, Some(new)) = (&mut ex.route, checked) {
            // Notifications to the new request are bound to it (RFC 8613 §4.1.3.5).
            *c = Some(Box::new(new));
        }
        if let Route::Unicast { con_mid, .. } = &mut ex.route {
            *con_mid = con.then_some(mid);
        }
        if let Some(o) = outer.take() {
            ex.outer = Some(Box::new(o));
        }
        if deregisters {
            let obs = ex.observe.take().expect("observe_applies checked");
            ex.deadline = now + timeout;
            let deadline = ex.deadline;
            drop(obs);
            self.observation_released(ip);
            self.push_timer(deadline, Timer::Exchange(t));
            self.deadlines.push(std::cmp::Reverse((deadline, t)));
            self.emit(Event::ObserveEnded {
                group,
                reason: CloseReason::Deregistered,
                deregistered: true,
            });
        } else {
            if let Some(o) = ex.observe.as_mut() {
                o.registration.clear();
                o.registration.extend_from_slice(&bytes);
            }
            self.emit(Event::ObserveRefreshed { group });
        }
        self.send(egress, dest, bytes);
        Ok(())
    }

    /// A notification (any response) of observation `token` from `from`: whether to
    /// relay it, and whether as CON for the interest check. Updates the device's state.
    pub(super) fn observe_notification(
        &mut self,
        token: u64,
        from: SocketAddr,
        view: &MessageView,
    ) -> Option<bool> {
        let now = self.now;
        let l = &self.cfg.limits.observe;
        let (rate, burst, max_devices, interest) = (
            l.notification_rate,
            l.notification_burst,
            l.max_devices,
            l.interest_check,
        );
        let ex = self.exchanges.get(&token)?;
        let (group, ip) = (ex.route.group(), ex.client.ip());
        let obs = ex.observe.as_ref()?;
        let seq = observe_value(view);
        let drop = match obs.devices.get(&from) {
            None if obs.devices.len() >= max_devices => Some(NotificationDrop::DevicesFull),
            Some(Device {
                seq: Some(v1), at, ..
            }) if seq.is_some_and(|v2| !newer(*v1, *at, v2, now)) => {
                Some(NotificationDrop::Reordered)
            }
            _ => None,
        };
        let drop = drop.or_else(|| {
            let c = self.observers.clients.get_mut(&ip)?;
            c.bucket
                .take(rate, burst, now)
                .err()
                .map(|_| NotificationDrop::RateLimited)
        });
        if let Some(reason) = drop {
            self.emit(Event::NotificationDropped {
                group,
                reason,
                from,
            });
            return None;
        }
        let live = view.code() >> 5 == 2 && seq.is_some();
        let obs = self.exchanges.get_mut(&token)?.observe.as_mut()?;
        obs.devices.insert(from, Device { seq, at: now, live });
        obs.last_notified = now;
        Some(now >= obs.last_con + interest)
    }

    /// After a notification was sent: a CON one resets the interest check's clock; an
    /// observation whose every device ended after T' (or a unicast one whose origin
    /// ended) closes (§5.4.2). Returns whether the exchange goes on as an observation.
    pub(super) fn observe_after(&mut self, token: u64, con: bool, interest_check: bool) -> bool {
        let now = self.now;
        let Some(ex) = self.exchanges.get_mut(&token) else {
            return false;
        };
        let unicast = matches!(ex.route, Route::Unicast { .. });
        let group = ex.route.group();
        let Some(obs) = ex.observe.as_mut() else {
            return false;
        };
        if con {
            obs.last_con = now;
        }
        let (live, past_deadline) = (obs.any_live(), obs.past_deadline);
        self.emit(Event::Notified {
            group,
            interest_check,
        });
        if !live && (unicast || past_deadline) {
            self.close(token, CloseReason::NotificationsEnded);
            return false;
        }
        unicast && live
    }

    /// The deadline of an observing exchange came: at T' it lives on while a device is
    /// live (re-armed to end when idle for `observe.interest_check`); later, it ends when
    /// idle. Returns false when the exchange is to end as an ordinary one (nothing live).
    pub(super) fn observe_deadline(&mut self, t: u64, now: Instant) -> bool {
        let interest = self.cfg.limits.observe.interest_check;
        let Some(ex) = self.exchanges.get_mut(&t) else {
            return true;
        };
        let Some(obs) = ex.observe.as_mut() else {
            return false;
        };
        if !obs.any_live() {
            return false;
        }
        obs.past_deadline = true;
        let idle_at = obs.last_notified + interest;
        if idle_at <= now {
            self.close(t, CloseReason::ObserveIdle);
            return true;
        }
        // Not in `deadlines`: the Max-Age of a refusal at a full table is the wait for
        // an ordinary exchange to end, not the day an idle observation might.
        ex.deadline = idle_at;
        self.push_timer(idle_at, Timer::Exchange(t));
        true
    }

    /// Whether exchange `t` is an observation.
    pub(super) fn is_observation(&self, t: u64) -> bool {
        self.exchanges.get(&t).is_some_and(|e| e.observe.is_some())
    }

    /// One observation fewer for `client`.
    fn observation_released(&mut self, client: IpAddr) {
        self.observers.held = self.observers.held.saturating_sub(1);
        self.shared.observation_released(client);
        if let Some(c) = self.observers.clients.get_mut(&client) {
            c.held = c.held.saturating_sub(1);
            if c.held == 0 {
                self.observers.clients.remove(&client);
            }
        }
    }

    /// The exchange of an observation was closed (see `close`): counted, its token
    /// remembered, and the group (or origin) deregistered if a device is still live.
    pub(super) fn observation_closed(
        &mut self,
        token: u64,
        obs: Box<Observation>,
        (client, egress, group): (SocketAddr, Link, Option<usize>),
        reason: CloseReason,
    ) {
        self.observation_released(client.ip());
        let cap = self.cfg.limits.observe.max_observations.max(1);
        while self.observers.ended.len() >= cap {
            if let Some(old) = self.observers.ended.pop_front() {
                self.observers.ended_set.remove(&old);
            }
        }
        self.observers.ended.push_back(token);
        self.observers.ended_set.insert(token);
        let deregistered = obs.any_live() && self.deregister(token, &obs, egress);
        let reason = match reason {
            CloseReason::UnicastAnswered => CloseReason::NotificationsEnded,
            CloseReason::UnicastTimeout => CloseReason::Timeout,
            r => r,
        };
        self.emit(Event::ObserveEnded {
            group,
            reason,
            deregistered,
        });
    }

    /// RFC 7641 §3.6 (RFC 10020 §3.7 for a group): the registration sent again with
    /// Observe 1 under the proxy's token. Only for an unprotected registration: the proxy
    /// cannot protect a request of the client's OSCORE context (nor resend its Partial
    /// IV, which a server would refuse as a replay); those devices are told with an RST
    /// to their next notification instead.
    fn deregister(&mut self, token: u64, obs: &Observation, egress: Link) -> bool {
        let Ok(reg) = MessageView::parse(&obs.registration) else {
            return false;
        };
        if reg.option(opt::OSCORE).is_some() {
            return false;
        }
        let Some(mid) = self.mid_to(egress, obs.dest, false, true) else {
            return false;
        };
        let one = [1u8];
        let mut opts: Options = reg
            .options()
            .map(|(n, v)| {
                if n == opt::OBSERVE {
                    (n, &one[..])
                } else {
                    (n, v)
                }
            })
            .collect();
        let bytes = self.encode(
            NON,
            reg.code(),
            mid,
            &token.to_be_bytes(),
            &mut opts,
            reg.payload(),
        );
        self.send(egress, obs.dest, bytes);
        true
    }

    /// Whether `token` is that of an observation that ended (its devices' notifications
    /// get an RST).
    pub(super) fn observation_ended(&self, token: u64) -> bool {
        self.observers.ended_set.contains(&token)
    }

    /// Ends every observation (SIGTERM, before the drain completes): each group or
    /// origin is deregistered.
    pub(super) fn end_observations(&mut self, reason: CloseReason) {
        let tokens: Vec<u64> = self
            .exchanges
            .iter()
            .filter(|(_, e)| e.observe.is_some())
            .map(|(t, _)| *t)
            .collect();
        for t in tokens {
            self.close(t, reason);
        }
    }
}
