//! Engine events as tracing events: one structured event per rejected or dropped message,
//! rate-limited per kind so a flood cannot flood the log; what was suppressed is counted
//! and reported with the next event that gets through.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::coap::build::code;
use crate::proxy::Event;

/// Events of one kind logged per second at most.
const PER_SECOND: u32 = 10;

#[derive(Default)]
pub(crate) struct EventLog {
    windows: HashMap<&'static str, (Instant, u32, u64)>,
}

impl EventLog {
    fn allow(&mut self, kind: &'static str, now: Instant) -> Option<u64> {
        let w = self.windows.entry(kind).or_insert((now, 0, 0));
        if now.duration_since(w.0) >= Duration::from_secs(1) {
            *w = (now, 0, w.2);
        }
        if w.1 < PER_SECOND {
            w.1 += 1;
            let suppressed = std::mem::take(&mut w.2);
            Some(suppressed)
        } else {
            w.2 += 1;
            None
        }
    }

    pub(crate) fn record(
        &mut self,
        now: Instant,
        e: &Event,
        group_name: impl Fn(Option<usize>) -> String,
    ) {
        match e {
            Event::Rejected {
                group,
                reason,
                code: c,
                client,
            } => {
                if let Some(s) = self.allow(reason.as_str(), now) {
                    tracing::info!(event = "rejected", reason = reason.as_str(), code = %code::dotted(*c), group = %group_name(*group), %client, suppressed = s);
                }
            }
            Event::Dropped { reason, from } => {
                if let Some(s) = self.allow(reason.as_str(), now) {
                    tracing::info!(event = "dropped", reason = reason.as_str(), %from, suppressed = s);
                }
            }
            Event::FanOut { group, timeout, .. } => {
                tracing::debug!(event = "fan_out", group = %group_name(Some(*group)), timeout_s = timeout.as_secs());
            }
            Event::Relayed { group, after } => {
                tracing::trace!(event = "relayed", group = %group_name(*group), after_ms = after.as_millis() as u64);
            }
            Event::Closed {
                group,
                responses,
                reason,
            } => {
                tracing::debug!(event = "closed", group = %group_name(*group), responses, reason = ?reason);
            }
            Event::UnicastForward => tracing::trace!(event = "unicast_forward"),
            Event::ObserveStarted { group } => {
                tracing::debug!(event = "observe_started", group = %group_name(*group));
            }
            Event::ObserveRefreshed { group } => {
                tracing::debug!(event = "observe_refreshed", group = %group_name(*group));
            }
            Event::Notified { group, .. } => {
                tracing::trace!(event = "notified", group = %group_name(*group));
            }
            Event::NotificationDropped {
                group,
                reason,
                from,
            } => {
                if let Some(s) = self.allow(reason.as_str(), now) {
                    tracing::info!(event = "notification_dropped", group = %group_name(*group), reason = reason.as_str(), %from, suppressed = s);
                }
            }
            Event::ObserveEnded {
                group,
                reason,
                deregistered,
            } => {
                tracing::debug!(event = "observe_ended", group = %group_name(*group), reason = reason.as_str(), deregistered);
            }
            Event::ConfigReload { ok } => tracing::info!(event = "config_reload", ok),
            Event::ChainForwarded {
                group,
                timeout,
                next,
            } => {
                tracing::debug!(event = "chain_forwarded", group = %group_name(Some(*group)), timeout_s = timeout.as_secs(), next_s = next.as_secs());
            }
            Event::ChainStopped { group } => {
                tracing::debug!(event = "chain_stopped", group = %group_name(Some(*group)));
            }
            Event::Cache { group, what } => {
                tracing::debug!(event = "cache", group = %group_name(*group), what = what.as_str());
            }
            // Reverse-proxy mode (issue 16).
            Event::Reverse { group, action } => {
                tracing::debug!(event = "reverse", group = %group_name(Some(*group)), action = action.as_str());
            }
            Event::Checked {
                group,
                request,
                result,
                enforced,
            } => {
                if !result.passed()
                    && let Some(s) = self.allow(result.as_str(), now)
                {
                    tracing::info!(event = "check_failed", group = %group_name(Some(*group)), request, result = result.as_str(), enforced, suppressed = s);
                }
            }
        }
    }
}
