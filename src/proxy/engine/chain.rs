//! Chains of proxies (groupcomm-proxy §8): a group with a `next_hop` is reached through
//! another proxy. The request goes there as an ordinary forward-proxy request that keeps
//! the group URI, with the Multicast-Timeout lowered by this hop's margin (§8.1) and the
//! Hop-Limit on (RFC 8768 §3); every response of the next hop is relayed until this hop's
//! T', its Reply-From untouched (§8.2); an early stop goes along (§8.1.2).
//!
//! T, the time before the proxy's token may be used again (§8.1 step 4.2, T' < T), is
//! unbounded here: the proxy never issues a token twice (see `tokens.rs`).

use std::net::SocketAddr;
use std::time::Duration;

use super::{Engine, InFlight, Options, Reject, Route};
use crate::coap::MessageView;
use crate::coap::build::{NON, code};
use crate::coap::options::{self as opt, read_uint, uint_value};
use crate::proxy::events::{CloseReason, Event, RejectReason};

impl Engine {
    /// T'' for the next hop of group `g` from this hop's T' (`timeout`, after
    /// `max_timeout`): T' minus the margin, at least 1 s (§8.1 step 4.3: T'' < T' by at
    /// least the round trip toward the previous hop, T'' < T by the one toward the
    /// next). None: the group is not chained. No T'' possible: 5.05 with the least T'
    /// this hop accepts in its Multicast-Timeout. T' = 0 is passed on as 0 (step 4.2-4.3
    /// apply only to T' > 0).
    pub(super) fn chain_timeout(
        &self,
        g: usize,
        timeout: Duration,
    ) -> Result<Option<Duration>, Reject> {
        let Some(nh) = self.cfg.groups[g].next_hop else {
            return Ok(None);
        };
        if timeout.is_zero() {
            return Ok(Some(Duration::ZERO));
        }
        let next = timeout.saturating_sub(nh.margin);
        if next >= Duration::from_secs(1) {
            return Ok(Some(Duration::from_secs(next.as_secs())));
        }
        let least = (nh.margin + Duration::from_secs(1)).as_secs();
        let mut r = Reject::new(
            code::PROXYING_NOT_SUPPORTED,
            RejectReason::ChainTimeout,
            "Multicast-Timeout too short for the next hop",
        )
        .group(g);
        r.options.push((
            self.cfg.options.multicast_timeout,
            uint_value(u32::try_from(least).unwrap_or(u32::MAX)),
        ));
        Err(r)
    }

    /// The Hop-Limit toward the next hop: the request's, decremented (checked by the
    /// caller to stay above 0), or the group's initial value where it had none (RFC
    /// 8768 §3: a proxy inserts one when relaying a request without).
    pub(super) fn chain_hop(&self, g: usize, decremented: Option<u8>) -> [u8; 1] {
        let initial = self.cfg.groups[g].next_hop.map_or(16, |n| n.hop_limit);
        [decremented.unwrap_or(initial)]
    }

    /// Options of the request to the next hop: all of the request's, the target ones
    /// included (Proxy-Uri, or Proxy-Scheme with Uri-Host and the rest: the next proxy
    /// needs the group URI), with Multicast-Timeout set to T'' (`mt`) and Hop-Limit to
    /// `hop`; with `own_layer`, without the proxy's Echo (RFC 9175 §2.3).
    pub(super) fn chain_options<'v>(
        &self,
        view: &MessageView<'v>,
        hop: &'v [u8; 1],
        mt: &'v [u8],
        own_layer: bool,
    ) -> Options<'v> {
        let mt_no = self.cfg.options.multicast_timeout;
        let mut opts: Options<'v> = view
            .options()
            .filter(|(n, _)| *n != opt::HOP_LIMIT && *n != mt_no && !(own_layer && *n == opt::ECHO))
            .collect();
        opts.push((mt_no, mt));
        opts.push((opt::HOP_LIMIT, hop));
        opts
    }

    /// Whether a response on a unicast link is the next hop's for exchange `ex`.
    pub(super) fn from_next_hop(route: &Route, from: SocketAddr) -> bool {
        matches!(route, Route::Group { via: Some(nh), .. } if *nh == from)
    }

    /// The next hop of a chained exchange, if any.
    pub(super) fn next_hop_of(route: &Route) -> Option<SocketAddr> {
        match route {
            Route::Group { via, .. } => *via,
            Route::Unicast { .. } => None,
        }
    }

    /// A chained exchange was closed: if by the client's early stop (an Early Stop
    /// Request or an RST, §5.2.3), the next hop is asked to stop too, with an Early Stop
    /// Request under the token of the forwarded request (§8.1.2, §5.1.3: GET,
    /// Multicast-Timeout 0, no Uri options), so the proxies behind stop relaying.
    pub(super) fn chain_closed(&mut self, token: u64, ex: &InFlight, reason: CloseReason) {
        let Some(nh) = Self::next_hop_of(&ex.route) else {
            return;
        };
        if !matches!(
            reason,
            CloseReason::EarlyStopRequest | CloseReason::EarlyStopReset
        ) {
            return;
        }
        let Some(mid) = self.mid_to(ex.egress, nh, false, true) else {
            return;
        };
        let mut opts = [(self.cfg.options.multicast_timeout, &[][..])];
        let bytes = self.encode(NON, code::GET, mid, &token.to_be_bytes(), &mut opts, &[]);
        self.send(ex.egress, nh, bytes);
        self.emit(Event::ChainStopped {
            group: ex.route.group().unwrap_or(0),
        });
    }

    /// What a relayed response carries differently from what came, or `None`: it is not
    /// relayed.
    ///
    /// RFC 8768 §4: a 5.08 whose diagnostic names this proxy (its identifiers are
    /// separated by spaces) is not relayed; any other gets this proxy's identifier
    /// prepended, where the message stays within 1152 bytes (RFC 7252 §4.6, the size
    /// that needs no knowledge of the path MTU), else it goes on as it came.
    ///
    /// §8.1 step 4.3: a 5.05 from the next hop with the least T' it accepts is relayed
    /// as this hop's own, with the least T' this hop accepts (the next hop's plus the
    /// margin). The updated request this hop MAY send instead is not sent: its T'' would
    /// have to exceed T' - margin, which this hop already chose, eating into the time
    /// kept for the way back to the client.
    pub(super) fn amend_relayed(&self, token: u64, view: &MessageView) -> Option<Amended> {
        let mut a = Amended::default();
        if view.code() == code::HOP_LIMIT_REACHED && view.option(opt::OSCORE).is_none() {
            let id = self.cfg.hop_id.as_bytes();
            let payload = view.payload();
            if payload.split(|b| *b == b' ').any(|p| p == id) {
                return None;
            }
            if view.bytes().len() + id.len() < 1152 {
                let mut p = Vec::with_capacity(id.len() + 1 + payload.len());
                p.extend_from_slice(id);
                if !payload.is_empty() {
                    p.push(b' ');
                    p.extend_from_slice(payload);
                }
                a.payload = Some(p);
            }
        }
        let mt_no = self.cfg.options.multicast_timeout;
        if view.code() == code::PROXYING_NOT_SUPPORTED
            && let Some(least) = view.option(mt_no).and_then(read_uint)
            && let Some(g) = self
                .exchanges
                .get(&token)
                .filter(|ex| Self::next_hop_of(&ex.route).is_some())
                .and_then(|ex| ex.route.group())
            && let Some(nh) = self.cfg.groups[g].next_hop
        {
            let mine = u64::from(least) + nh.margin.as_secs();
            a.multicast_timeout = Some(uint_value(u32::try_from(mine).unwrap_or(u32::MAX)));
        }
        Some(a)
    }
}

/// See [`Engine::amend_relayed`]: what replaces the payload and the Multicast-Timeout of
/// a relayed response, where anything does.
#[derive(Debug, Default)]
pub(super) struct Amended {
    pub(super) payload: Option<Vec<u8>>,
    pub(super) multicast_timeout: Option<Vec<u8>>,
}
