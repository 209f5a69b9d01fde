//! The Prometheus metrics of a running proxy, fed by the driver's [`Observer`] hook.
//!
//! Every label is bounded: group names come from the configuration (plus `unicast` for
//! requests that name no configured group), and outcome, reason, code, direction, result
//! and policy from the engine's enumerations. No client address, token or kid ever
//! becomes a label value, so a flood of clients cannot grow the series count.
//!
//! The hot path touches only pre-resolved handles (atomics): every per-group child is
//! made once in [`Metrics::new`] and kept in a `Vec` indexed by group; reasons and results
//! are found by a short linear search over handles (made at start for the values known
//! today, on first use for any the engine gains), and codes by indexing an array. No
//! label lookup or hashing happens per datagram once a series exists.

use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use crate::coap::build::code;
use crate::proxy::events::CacheEvent;
use crate::proxy::events::NotificationDrop;
use crate::proxy::{
    CheckResult, CloseReason, DropReason, Engine, Event, Policy, ProxyConfig, RejectReason,
};
use crate::runtime::Observer;

/// The `group` label of requests and exchanges that belong to no configured group:
/// unicast forwarding, and requests refused before their target resolved to a group. The
/// logs use the same word.
pub(crate) const UNICAST: &str = "unicast";

/// Multicast-Timeout values clients ask for are whole seconds; 0 is "fire and forget".
const TIMEOUT_BUCKETS: &[f64] = &[
    0.0, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 3600.0,
];
/// From a device on the same link (ms) to a sleepy one answering near the timeout.
const DELAY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// An Ed25519 verification is some 50 µs, a P-256 one a few hundred.
const VERIFY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
];

/// Error codes the engine answers with; made at start so that the series exist at 0.
const ERROR_CODES: [u8; 11] = [
    code::BAD_REQUEST,
    code::UNAUTHORIZED,
    code::BAD_OPTION,
    code::NOT_FOUND,
    code::TOO_MANY_REQUESTS,
    code::NOT_IMPLEMENTED,
    code::BAD_GATEWAY,
    code::SERVICE_UNAVAILABLE,
    code::GATEWAY_TIMEOUT,
    code::PROXYING_NOT_SUPPORTED,
    code::HOP_LIMIT_REACHED,
];

/// Children of a labeled counter keyed by a small enumeration, found by a linear search
/// (a handful of entries: cheaper than hashing) and made on first use.
#[derive(Clone)]
struct Children<K> {
    items: Vec<(K, IntCounter)>,
}

impl<K: Copy + PartialEq> Children<K> {
    fn new() -> Self {
        Children { items: Vec::new() }
    }

    fn with(keys: &[K], make: impl Fn(K) -> IntCounter) -> Self {
        Children {
            items: keys.iter().map(|&k| (k, make(k))).collect(),
        }
    }

    fn inc(&mut self, key: K, make: impl FnOnce() -> IntCounter) {
        match self.items.iter().find(|(k, _)| *k == key) {
            Some((_, c)) => c.inc(),
            None => {
                let c = make();
                c.inc();
                self.items.push((key, c));
            }
        }
    }
}

/// Handles of one group's checks, made only for groups whose traffic is checked.
#[derive(Clone)]
struct Checks {
    /// [request, response]
    results: [Children<CheckResult>; 2],
    policy: Policy,
    verify: [Histogram; 2],
    replays: IntCounter,
    key_generation: IntGauge,
}

/// Handles of what only a configured group does.
#[derive(Clone)]
struct FanOuts {
    fanouts: IntCounter,
    lowered: IntCounter,
    asked: Histogram,
}

/// Pre-resolved handles of one group (or of `unicast`, the last entry).
#[derive(Clone)]
struct GroupHandles {
    name: String,
    forwarded: IntCounter,
    rejected: IntCounter,
    /// Only where the signature filter runs, the one thing that drops requests.
    dropped: Option<IntCounter>,
    relayed: IntCounter,
    delay: Histogram,
    /// None for `unicast`, so that no pseudo-group series that can never move are shown.
    fan: Option<FanOuts>,
    checks: Option<Checks>,
    rejections: Children<RejectReason>,
    closed: Children<CloseReason>,
}

/// The metrics registry and the observer that feeds it. Give the observer to
/// [`crate::runtime::Proxy::observe`] and `Metrics::registry` to the HTTP endpoint.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    groups: Vec<GroupHandles>,
    rejections: IntCounterVec,
    closed: IntCounterVec,
    errors: IntCounterVec,
    error_codes: Vec<Option<IntCounter>>,
    checks: IntCounterVec,
    dropped_vec: IntCounterVec,
    dropped: Children<DropReason>,
    decryption: IntCounter,
    late: IntCounter,
    active: IntGauge,
    capacity: IntGauge,
    reloads: IntCounterVec,
    /// The check event of the datagram being handled, to time its verification.
    pending_check: Option<(usize, usize)>,
    /// Observations (issue 12), per group as `groups`.
    observe: ObserveMetrics,
    /// Chains of proxies (issue 16): requests sent to a next hop, early stops passed on.
    chain_forwarded: IntCounterVec,
    chain_stopped: IntCounterVec,
    /// The response cache (issue 16).
    cache: CacheMetrics,
    /// Reverse-proxy mode (issue 16): group requests to its resources, follow-ups,
    /// servers forgotten at `max_servers`.
    reverse: IntCounterVec,
}

/// Pre-resolved handles of one group's (or `unicast`'s) observations.
#[derive(Clone)]
struct ObserveHandles {
    started: IntCounter,
    refreshed: IntCounter,
    notified: IntCounter,
    interest_checks: IntCounter,
    dropped: Children<NotificationDrop>,
    ended: Children<CloseReason>,
}

/// How observations end (the `CloseReason`s an `ObserveEnded` event carries).
const OBSERVE_ENDS: [CloseReason; 8] = [
    CloseReason::Deregistered,
    CloseReason::EarlyStopReset,
    CloseReason::EarlyStopRequest,
    CloseReason::InterestLapsed,
    CloseReason::ObserveIdle,
    CloseReason::Shutdown,
    CloseReason::NotificationsEnded,
    CloseReason::Timeout,
];

/// The observation metrics: a gauge of those held and counters by group and reason.
#[derive(Clone)]
struct ObserveMetrics {
    active: IntGauge,
    capacity: IntGauge,
    dropped: IntCounterVec,
    ended: IntCounterVec,
    groups: Vec<ObserveHandles>,
}

impl ObserveMetrics {
    fn new(r: &Registry, cfg: &ProxyConfig) -> Self {
        let started = counter_vec(
            r,
            "groxy_observations_started_total",
            "Observations started through the proxy (RFC 7641; groupcomm-proxy section 5.2.2).",
            &["group"],
        );
        let refreshed = counter_vec(
            r,
            "groxy_observations_refreshed_total",
            "Re-registrations of a running observation (RFC 7641 section 3.3.1): sent on, no \
             second observation.",
            &["group"],
        );
        let notified = counter_vec(
            r,
            "groxy_notifications_relayed_total",
            "Notifications of observations relayed to clients (also in \
             groxy_responses_relayed_total).",
            &["group"],
        );
        let interest = counter_vec(
            r,
            "groxy_notifications_interest_checks_total",
            "Notifications sent as CON to check the client's interest (RFC 7641 section 4.5).",
            &["group"],
        );
        let dropped = counter_vec(
            r,
            "groxy_notifications_dropped_total",
            "Notifications not relayed, by reason (the signature filter's drops are in \
             groxy_dropped_total).",
            &["group", "reason"],
        );
        let ended = counter_vec(
            r,
            "groxy_observations_ended_total",
            "Observations ended, by reason.",
            &["group", "reason"],
        );
        let active = gauge(r, "groxy_observations_active", "Observations held.");
        let capacity = gauge(
            r,
            "groxy_observations_capacity",
            "Size of the observation table (observe.max_observations); when full, new \
             observations get 5.03.",
        );
        capacity.set(cfg.limits.observe.max_observations as i64);
        let groups = cfg
            .groups
            .iter()
            .map(|g| g.name.as_str())
            .chain(std::iter::once(UNICAST))
            .map(|name| ObserveHandles {
                started: started.with_label_values(&[name]),
                refreshed: refreshed.with_label_values(&[name]),
                notified: notified.with_label_values(&[name]),
                interest_checks: interest.with_label_values(&[name]),
                // Made at start: the dashboard's queries find every series in a scrape.
                dropped: Children::with(NotificationDrop::ALL, |r| {
                    dropped.with_label_values(&[name, r.as_str()])
                }),
                ended: Children::with(&OBSERVE_ENDS, |r| {
                    ended.with_label_values(&[name, r.as_str()])
                }),
            })
            .collect();
        ObserveMetrics {
            active,
            capacity,
            dropped,
            ended,
            groups,
        }
    }

    /// Counts an observation event; false for every other event.
    fn event(&mut self, names: &[GroupHandles], e: &Event) -> bool {
        let group = match *e {
            Event::ObserveStarted { group }
            | Event::ObserveRefreshed { group }
            | Event::Notified { group, .. }
            | Event::NotificationDropped { group, .. }
            | Event::ObserveEnded { group, .. } => group,
            _ => return false,
        };
        let i = group_index(names, group);
        let name = names[i].name.as_str();
        let (dropped, ended) = (&self.dropped, &self.ended);
        let h = &mut self.groups[i];
        match *e {
            Event::ObserveStarted { .. } => h.started.inc(),
            Event::ObserveRefreshed { .. } => h.refreshed.inc(),
            Event::Notified { interest_check, .. } => {
                h.notified.inc();
                if interest_check {
                    h.interest_checks.inc();
                }
            }
            Event::NotificationDropped { reason, .. } => h.dropped.inc(reason, || {
                dropped.with_label_values(&[name, reason.as_str()])
            }),
            Event::ObserveEnded { reason, .. } => h
                .ended
                .inc(reason, || ended.with_label_values(&[name, reason.as_str()])),
            _ => {}
        }
        true
    }
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(v.clone())).expect("registered once");
    v
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let v = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid metric");
    r.register(Box::new(v.clone())).expect("registered once");
    v
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone())).expect("registered once");
    g
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("registered once");
    c
}

impl Metrics {
    /// Registers every metric for this configuration in a registry of its own (several
    /// proxies in one process, as in tests, do not collide).
    pub fn new(cfg: &ProxyConfig) -> Self {
        let r = Registry::new();
        // The standard process_* metrics (CPU, resident memory, open fds, start time).
        #[cfg(target_os = "linux")]
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("registered once");

        let info = IntGaugeVec::new(
            Opts::new(
                "groxy_build_info",
                "Always 1; the version of the running groxy.",
            ),
            &["version"],
        )
        .expect("valid metric");
        r.register(Box::new(info.clone())).expect("registered once");
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);

        let requests = counter_vec(
            &r,
            "groxy_requests_total",
            "Client requests by outcome: forwarded (fanned out or sent to a unicast origin), \
             rejected (answered with an error code) or dropped (by the signature filter).",
            &["group", "outcome"],
        );
        let rejections = counter_vec(
            &r,
            "groxy_requests_rejected_total",
            "Client requests answered with an error code, by reason.",
            &["group", "reason"],
        );
        let fanouts = counter_vec(
            &r,
            "groxy_fanouts_total",
            "Group requests sent to a group as one multicast request.",
            &["group"],
        );
        let lowered = counter_vec(
            &r,
            "groxy_multicast_timeout_lowered_total",
            "Fan-outs whose Multicast-Timeout was lowered to the group's max_timeout.",
            &["group"],
        );
        let relayed = counter_vec(
            &r,
            "groxy_responses_relayed_total",
            "Responses relayed to clients (group responses carry Reply-From).",
            &["group"],
        );
        let closed = counter_vec(
            &r,
            "groxy_exchanges_closed_total",
            "Exchanges ended, by reason.",
            &["group", "reason"],
        );
        let late = counter(
            &r,
            "groxy_late_responses_total",
            "Responses that arrived after their exchange ended (also in groxy_dropped_total \
             with reason late_response); the engine does not know their group.",
        );
        let checks = counter_vec(
            &r,
            "groxy_signature_checks_total",
            "Countersignature checks of group-mode traffic (RFC 10021 section 7.5), by \
             direction and result; policy says whether failures are dropped (enforce) or \
             forwarded (monitor).",
            &["group", "direction", "result", "policy"],
        );
        let replays = counter_vec(
            &r,
            "groxy_replays_dropped_total",
            "Validly signed requests or responses dropped because their Partial IV was seen \
             already (enforce policy).",
            &["group"],
        );
        let verify = histogram_vec(
            &r,
            "groxy_signature_verification_seconds",
            "Time the engine took for a datagram whose signature it checked, measured by the \
             driver around the engine call; the verification dominates it.",
            &["group", "direction"],
            VERIFY_BUCKETS,
        );
        let key_generation = IntGaugeVec::new(
            Opts::new(
                "groxy_key_generation",
                "Key Generation Number of the group's active key material (checked groups).",
            ),
            &["group"],
        )
        .expect("valid metric");
        r.register(Box::new(key_generation.clone()))
            .expect("registered once");
        let decryption = counter(
            &r,
            "groxy_decryption_failures_total",
            "Requests to the proxy's own OSCORE layer that failed to decrypt (answered 4.00, \
             RFC 8613 section 8.2). The proxy decrypts only where a group makes it a member; \
             where it only checks signatures this stays 0.",
        );
        let errors = counter_vec(
            &r,
            "groxy_error_responses_total",
            "Error responses the proxy itself sent to clients, by CoAP code.",
            &["code"],
        );
        let dropped_vec = counter_vec(
            &r,
            "groxy_dropped_total",
            "Datagrams dropped without an answer, by reason.",
            &["reason"],
        );
        let active = gauge(&r, "groxy_exchanges_active", "Exchanges in flight.");
        let capacity = gauge(
            &r,
            "groxy_exchanges_capacity",
            "Size of the exchange table (limits.max_exchanges); when full, requests get 5.03.",
        );
        // Right from the start, not only once traffic makes the driver report the engine.
        capacity.set(cfg.limits.max_exchanges as i64);
        let asked = histogram_vec(
            &r,
            "groxy_multicast_timeout_seconds",
            "Multicast-Timeout asked for by clients, before the group's max_timeout applies.",
            &["group"],
            TIMEOUT_BUCKETS,
        );
        let delay = histogram_vec(
            &r,
            "groxy_response_delay_seconds",
            "Time from forwarding a request to relaying a response to it.",
            &["group"],
            DELAY_BUCKETS,
        );
        let reloads = counter_vec(
            &r,
            "groxy_config_reloads_total",
            "Configuration reloads (SIGHUP) by result; a failed one leaves the running configuration.",
            &["result"],
        );
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
        }

        let names = cfg
            .groups
            .iter()
            .map(|g| (g.name.as_str(), g.security.as_ref(), true))
            .chain(std::iter::once((UNICAST, None, false)));
        let groups = names
            .map(|(name, security, is_group)| {
                let checked = security.filter(|s| s.policy != Policy::Off);
                let checks = checked.map(|s| {
                    let p = s.policy;
                    let dir = |d: &str| {
                        Children::with(CheckResult::ALL, |res| {
                            checks.with_label_values(&[name, d, res.as_str(), p.as_str()])
                        })
                    };
                    Checks {
                        results: [dir("request"), dir("response")],
                        policy: p,
                        verify: [
                            verify.with_label_values(&[name, "request"]),
                            verify.with_label_values(&[name, "response"]),
                        ],
                        replays: replays.with_label_values(&[name]),
                        key_generation: {
                            let g = key_generation.with_label_values(&[name]);
                            g.set(s.checker.key_generation as i64);
                            g
                        },
                    }
                });
                GroupHandles {
                    name: name.to_string(),
                    forwarded: requests.with_label_values(&[name, "forwarded"]),
                    rejected: requests.with_label_values(&[name, "rejected"]),
                    dropped: checked.map(|_| requests.with_label_values(&[name, "dropped"])),
                    relayed: relayed.with_label_values(&[name]),
                    delay: delay.with_label_values(&[name]),
                    fan: is_group.then(|| FanOuts {
                        fanouts: fanouts.with_label_values(&[name]),
                        lowered: lowered.with_label_values(&[name]),
                        asked: asked.with_label_values(&[name]),
                    }),
                    checks,
                    rejections: Children::new(),
                    closed: Children::new(),
                }
            })
            .collect();

        let mut error_codes = vec![None; 256];
        for c in ERROR_CODES {
            error_codes[c as usize] = Some(errors.with_label_values(&[&code::dotted(c)]));
        }
        let r2 = r.clone();
        Metrics {
            dropped: Children::with(DropReason::ALL, |d| {
                dropped_vec.with_label_values(&[d.as_str()])
            }),
            dropped_vec,
            checks,
            decryption,
            registry: r,
            groups,
            rejections,
            closed,
            errors,
            error_codes,
            late,
            active,
            capacity,
            reloads,
            pending_check: None,
            observe: ObserveMetrics::new(&r2, cfg),
            chain_forwarded: counter_vec(
                &r2,
                "groxy_chain_forwarded_total",
                "Group requests sent to the group's next_hop proxy instead of the group \
                 (groupcomm-proxy section 8.1); also in groxy_requests_total as forwarded.",
                &["group"],
            ),
            chain_stopped: counter_vec(
                &r2,
                "groxy_chain_early_stops_total",
                "Early stops of a client passed on to the next_hop proxy (groupcomm-proxy \
                 section 8.1.2).",
                &["group"],
            ),
            cache: CacheMetrics::new(&r2, cfg),
            reverse: counter_vec(
                &r2,
                "groxy_reverse_total",
                "Reverse-proxy mode (groupcomm-proxy section 6): group_request (a request to \
                 a [[reverse]] resource), follow_up (forwarded to the server it names, \
                 section 6.2), server_forgotten (at max_servers).",
                &["group", "action"],
            ),
        }
    }

    /// The registry to expose (a cheap clone sharing the same metrics).
    pub(crate) fn registry(&self) -> Registry {
        self.registry.clone()
    }

    /// The HTTP bridge's metrics (issue 13), registered in this registry.
    pub fn http(&self) -> HttpMetrics {
        HttpMetrics::new(&self.registry)
    }

    fn group(&mut self, g: Option<usize>) -> &mut GroupHandles {
        let i = group_index(&self.groups, g);
        &mut self.groups[i]
    }

    fn error_response(&mut self, c: u8) {
        let errors = &self.errors;
        self.error_codes[c as usize]
            .get_or_insert_with(|| errors.with_label_values(&[&code::dotted(c)]))
            .inc();
    }
}

/// The entry of a group, `unicast` (the last) for none. An index the configuration did
/// not have cannot come from the engine; counting it as unicast beats a panic on the
/// forwarding thread.
fn group_index(groups: &[GroupHandles], g: Option<usize>) -> usize {
    let last = groups.len() - 1;
    g.filter(|&i| i < last).unwrap_or(last)
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Observer for Metrics {
    fn event(&mut self, e: &Event) {
        if self.observe.event(&self.groups, e) {
            return;
        }
        match *e {
            Event::ConfigReload { ok } => {
                let result = if ok { "success" } else { "failure" };
                self.reloads.with_label_values(&[result]).inc();
            }
            Event::Rejected {
                group,
                reason,
                code,
                ..
            } => {
                let rejections = &self.rejections;
                let i = group_index(&self.groups, group);
                let h = &mut self.groups[i];
                h.rejected.inc();
                let name = &h.name;
                h.rejections.inc(reason, || {
                    rejections.with_label_values(&[name.as_str(), reason.as_str()])
                });
                // A failure of the proxy's own layer that is a decryption failure (RFC 8613
                // §8.2: 4.00).
                if reason == RejectReason::OscoreLayer && code == code::BAD_REQUEST {
                    self.decryption.inc();
                }
                self.error_response(code);
            }
            Event::FanOut {
                group,
                timeout,
                asked,
            } => {
                let h = self.group(Some(group));
                h.forwarded.inc();
                if let Some(f) = &h.fan {
                    f.fanouts.inc();
                    f.asked.observe(seconds(asked));
                    if timeout < asked {
                        f.lowered.inc();
                    }
                }
            }
            Event::UnicastForward => self.group(None).forwarded.inc(),
            Event::ChainForwarded { group, .. } => {
                let h = self.group(Some(group));
                h.forwarded.inc();
                let name = h.name.clone();
                self.chain_forwarded
                    .with_label_values(&[name.as_str()])
                    .inc();
            }
            Event::ChainStopped { group } => {
                let name = self.group(Some(group)).name.clone();
                self.chain_stopped.with_label_values(&[name.as_str()]).inc();
            }
            Event::Cache { group, what } => {
                let i = group_index(&self.groups, group);
                self.cache.count(i, what);
            }
            // Reverse-proxy mode (issue 16).
            Event::Reverse { group, action } => {
                let name = self.group(Some(group)).name.clone();
                self.reverse
                    .with_label_values(&[name.as_str(), action.as_str()])
                    .inc();
            }
            Event::Relayed { group, after } => {
                let h = self.group(group);
                h.relayed.inc();
                h.delay.observe(seconds(after));
            }
            Event::Dropped { reason, .. } => {
                let v = &self.dropped_vec;
                self.dropped
                    .inc(reason, || v.with_label_values(&[reason.as_str()]));
                if reason == DropReason::LateResponse {
                    self.late.inc();
                }
            }
            Event::Closed { group, reason, .. } => {
                // The engine sends these errors itself when it gives up on an origin.
                match reason {
                    CloseReason::UnicastTimeout => self.error_response(code::GATEWAY_TIMEOUT),
                    CloseReason::OriginReset => self.error_response(code::BAD_GATEWAY),
                    _ => {}
                }
                let closed = &self.closed;
                let i = group_index(&self.groups, group);
                let h = &mut self.groups[i];
                let name = &h.name;
                h.closed.inc(reason, || {
                    closed.with_label_values(&[name.as_str(), reason.as_str()])
                });
            }
            // Counted by `self.observe` above.
            Event::ObserveStarted { .. }
            | Event::ObserveRefreshed { .. }
            | Event::Notified { .. }
            | Event::NotificationDropped { .. }
            | Event::ObserveEnded { .. } => {}
            Event::Checked {
                group,
                request,
                result,
                enforced,
            } => {
                let dir = if request { 0 } else { 1 };
                let checks = &self.checks;
                let i = group_index(&self.groups, Some(group));
                let h = &mut self.groups[i];
                if request
                    && !result.passed()
                    && enforced
                    && let Some(d) = &h.dropped
                {
                    d.inc();
                }
                let name = &h.name;
                if let Some(c) = &mut h.checks {
                    let (d, p) = (["request", "response"][dir], c.policy.as_str());
                    c.results[dir].inc(result, || {
                        checks.with_label_values(&[name.as_str(), d, result.as_str(), p])
                    });
                    if result == CheckResult::Replay && enforced {
                        c.replays.inc();
                    }
                    self.pending_check = Some((group, dir));
                }
            }
        }
    }

    /// The counters and histograms are shared handles (atomics): each thread's copy
    /// adds to the same series, with no lock between the threads. Only the check being
    /// timed is a thread's own.
    fn fork(&self) -> Option<Box<dyn Observer>> {
        let mut m = self.clone();
        m.pending_check = None;
        Some(Box::new(m))
    }

    fn handled(&mut self, engine: &Engine, took: Option<Duration>) {
        let (active, capacity) = engine.exchanges();
        self.active.set(active as i64);
        self.capacity.set(capacity as i64);
        let (stored, bytes) = engine.cache_usage();
        self.cache.entries.set(stored as i64);
        self.cache.bytes.set(bytes as i64);
        let c = &engine.config().cache;
        let on = i64::from(c.enabled);
        self.cache.cap_entries.set(on * c.max_entries as i64);
        self.cache.cap_bytes.set(on * c.max_bytes as i64);
        let (held, room) = engine.observations();
        self.observe.active.set(held as i64);
        self.observe.capacity.set(room as i64);
        if let (Some((g, dir)), Some(t)) = (self.pending_check.take(), took)
            && let Some(c) = self.groups.get(g).and_then(|h| h.checks.as_ref())
        {
            c.verify[dir].observe(seconds(t));
        }
        for (i, h) in self.groups.iter().enumerate() {
            if let (Some(c), Some(k)) = (&h.checks, engine.checker(i)) {
                c.key_generation.set(k.current().key_generation() as i64);
            }
        }
    }
}

// ---- Response cache (issue 16) ----

/// `groxy_cache_events_total{group,event}` (hits, misses, Group-ETag 2.03s,
/// revalidations, stores, evictions; per group as `groups`, `unicast` last) and the
/// gauges of what is held against the bounds.
#[derive(Clone)]
struct CacheMetrics {
    /// Per group index, per `CacheEvent::ALL` index: made at start.
    events: Vec<Vec<IntCounter>>,
    entries: IntGauge,
    bytes: IntGauge,
    /// The bounds in force (a SIGHUP may change them).
    cap_entries: IntGauge,
    cap_bytes: IntGauge,
}

impl CacheMetrics {
    fn new(r: &Registry, cfg: &ProxyConfig) -> Self {
        let v = counter_vec(
            r,
            "groxy_cache_events_total",
            "Response cache events (groupcomm-proxy section 7): hit (answered from the \
             cache alone), miss (forwarded), group_etag_valid (one 2.03 for a matching \
             Group-ETag), revalidated (a server's 2.03 refreshed a stale response), \
             stored, evicted (one per response, at the bounds or a resize).",
            &["group", "event"],
        );
        let events = cfg
            .groups
            .iter()
            .map(|g| g.name.as_str())
            .chain(std::iter::once(UNICAST))
            .map(|name| {
                CacheEvent::ALL
                    .iter()
                    .map(|e| v.with_label_values(&[name, e.as_str()]))
                    .collect()
            })
            .collect();
        let entries = gauge(
            r,
            "groxy_cache_entries",
            "Responses stored in the cache (bound: cache.max_entries).",
        );
        let bytes = gauge(
            r,
            "groxy_cache_bytes",
            "Bytes of responses stored in the cache (bound: cache.max_bytes).",
        );
        let cap_entries = gauge(
            r,
            "groxy_cache_max_entries",
            "cache.max_entries (0: the cache is off).",
        );
        let cap_bytes = gauge(
            r,
            "groxy_cache_max_bytes",
            "cache.max_bytes (0: the cache is off).",
        );
        CacheMetrics {
            events,
            entries,
            bytes,
            cap_entries,
            cap_bytes,
        }
    }

    fn count(&self, group: usize, what: CacheEvent) {
        if let (Some(g), Some(i)) = (
            self.events.get(group),
            CacheEvent::ALL.iter().position(|e| *e == what),
        ) {
            g[i].inc();
        }
    }
}

// ---- HTTP-to-CoAP bridge (issue 13) ----

/// The HTTP bridge's metrics: its requests by status and group, streamed responses,
/// open connections, and what it refused before the engine saw anything.
#[derive(Clone)]
pub struct HttpMetrics {
    /// `groxy_http_requests_total{status,group}`.
    pub(crate) requests: IntCounterVec,
    /// `groxy_http_streamed_responses_total`.
    pub(crate) streamed: IntCounter,
    /// `groxy_http_connections`.
    pub(crate) connections: IntGauge,
    /// `groxy_http_refused_total{reason}`: connections and requests refused by the
    /// bridge's own limits (connections, requests, tls, header_timeout,
    /// header_too_large, malformed, connection_error, message_ids).
    pub(crate) refused: IntCounterVec,
    /// `groxy_http_late_responses_total`: responses for an HTTP request already over.
    pub(crate) late: IntCounter,
    /// `groxy_http_stopped_total`: exchanges (observations too) the bridge stopped in
    /// the engine because their HTTP client disconnected before their end.
    pub(crate) stopped: IntCounter,
}

impl HttpMetrics {
    /// Registers them in `r`.
    pub fn new(r: &Registry) -> Self {
        HttpMetrics {
            requests: counter_vec(
                r,
                "groxy_http_requests_total",
                "HTTP requests answered by the HTTP-to-CoAP bridge, by status and group (none: no group).",
                &["status", "group"],
            ),
            streamed: counter(
                r,
                "groxy_http_streamed_responses_total",
                "HTTP responses delivered streamed (multipart/mixed, chunked).",
            ),
            connections: gauge(r, "groxy_http_connections", "Open HTTP connections."),
            refused: counter_vec(
                r,
                "groxy_http_refused_total",
                "Connections and requests the HTTP bridge refused or closed before the engine, by reason.",
                &["reason"],
            ),
            late: counter(
                r,
                "groxy_http_late_responses_total",
                "CoAP responses for an HTTP request that had already ended.",
            ),
            stopped: counter(
                r,
                "groxy_http_stopped_total",
                "Exchanges and observations stopped in the engine (Early Stop Request or RST) because their HTTP client disconnected.",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Encoder;

    fn text(m: &Metrics) -> String {
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&m.registry().gather(), &mut out)
            .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn events_land_in_their_series_and_no_address_becomes_a_label() {
        let mut m = Metrics::new(&ProxyConfig::default());
        let client = "192.0.2.7:40000".parse().unwrap();
        m.event(&Event::FanOut {
            group: 0,
            timeout: Duration::from_secs(60),
            asked: Duration::from_secs(90),
        });
        m.event(&Event::Relayed {
            group: Some(0),
            after: Duration::from_millis(30),
        });
        m.event(&Event::Rejected {
            group: None,
            reason: RejectReason::NotForProxy,
            code: code::NOT_FOUND,
            client,
        });
        m.event(&Event::Dropped {
            reason: DropReason::LateResponse,
            from: client,
        });
        m.event(&Event::Closed {
            group: None,
            responses: 0,
            reason: CloseReason::UnicastTimeout,
        });
        let t = text(&m);
        for line in [
            "groxy_fanouts_total{group=\"all-coap-nodes\"} 1",
            "groxy_multicast_timeout_lowered_total{group=\"all-coap-nodes\"} 1",
            "groxy_requests_total{group=\"all-coap-nodes\",outcome=\"forwarded\"} 1",
            "groxy_responses_relayed_total{group=\"all-coap-nodes\"} 1",
            "groxy_requests_total{group=\"unicast\",outcome=\"rejected\"} 1",
            "groxy_requests_rejected_total{group=\"unicast\",reason=\"not_for_proxy\"} 1",
            "groxy_error_responses_total{code=\"4.04\"} 1",
            "groxy_error_responses_total{code=\"5.04\"} 1",
            "groxy_late_responses_total 1",
            "groxy_dropped_total{reason=\"late_response\"} 1",
            "groxy_exchanges_closed_total{group=\"unicast\",reason=\"unicast_timeout\"} 1",
            "groxy_build_info{version=\"",
            "groxy_decryption_failures_total 0",
            "groxy_config_reloads_total{result=\"failure\"} 0",
        ] {
            assert!(t.contains(line), "missing {line:?} in\n{t}");
        }
        assert!(!t.contains("192.0.2.7"), "a client address became a label");
        // No pseudo-group fan-out series for unicast.
        assert!(!t.contains("groxy_fanouts_total{group=\"unicast\"}"));
    }

    /// Issue 16: cache events by group and kind; held entries and bytes against the
    /// bounds in force, from the engine after each call.
    #[test]
    fn cache_events_and_gauges() {
        let mut cfg = ProxyConfig::default();
        cfg.cache.enabled = true;
        cfg.cache.max_entries = 77;
        let mut m = Metrics::new(&cfg);
        m.event(&Event::Cache {
            group: Some(0),
            what: CacheEvent::Hit,
        });
        m.event(&Event::Cache {
            group: None,
            what: CacheEvent::Evicted,
        });
        let e = Engine::new(cfg, std::time::Instant::now(), 1u64).unwrap();
        m.handled(&e, None);
        let t = text(&m);
        for line in [
            "groxy_cache_events_total{event=\"hit\",group=\"all-coap-nodes\"} 1",
            "groxy_cache_events_total{event=\"evicted\",group=\"unicast\"} 1",
            "groxy_cache_events_total{event=\"revalidated\",group=\"all-coap-nodes\"} 0",
            "groxy_cache_entries 0",
            "groxy_cache_bytes 0",
            "groxy_cache_max_entries 77",
        ] {
            assert!(t.contains(line), "missing {line:?} in\n{t}");
        }
    }
}
