//! What comes back from devices and origins: acknowledgements, responses matched to
//! their exchange by token, relayed to the client with Reply-From (groupcomm-proxy §5.4).

use std::net::SocketAddr;
use std::time::Instant;

use super::cache::Relay;
use super::{Engine, Kind, Link, MAX_SEEN_PER_EXCHANGE, Options, Route};
use crate::coap::MessageView;
use crate::coap::build::{self, ACK, CON, NON, RST, code};
use crate::coap::cri;
use crate::proxy::events::{CloseReason, DropReason, Event};

impl Engine {
    /// A datagram from a device (on a group link) or a unicast origin.
    pub(super) fn on_origin_datagram(
        &mut self,
        now: Instant,
        link: Link,
        from: SocketAddr,
        view: &MessageView,
    ) {
        let mtype = view.mtype();
        if view.code() == code::EMPTY {
            // An ACK or RST for our CON request to a unicast origin.
            if self
                .pending
                .remove(&(link, from, view.message_id()))
                .is_some()
            {
                if mtype == RST {
                    self.origin_reset(link, from, view.message_id());
                }
                return;
            }
            if mtype == CON {
                self.send(link, from, build::empty(RST, view.message_id()));
            }
            return self.drop_msg(DropReason::UnexpectedMessage, from);
        }
        if !view.is_response() {
            // Devices do not send requests to the proxy's egress port.
            if mtype == CON {
                self.send(link, from, build::empty(RST, view.message_id()));
            }
            return self.drop_msg(DropReason::UnexpectedMessage, from);
        }
        if mtype == ACK {
            self.pending.remove(&(link, from, view.message_id()));
        }
        let token = match <[u8; 8]>::try_from(view.token()) {
            Ok(t) => u64::from_be_bytes(t),
            Err(_) => u64::MAX,
        };
        let matches = self
            .exchanges
            .get(&token)
            .is_some_and(|ex| match (&ex.route, link) {
                (
                    Route::Group {
                        group, via: None, ..
                    },
                    Link::Group(l, _),
                ) => *group == l,
                // A chained group's responses come from its next hop (§8.2).
                (route @ Route::Group { .. }, Link::Unicast(_)) => {
                    Engine::from_next_hop(route, from)
                }
                (Route::Unicast { origin, .. }, Link::Unicast(_)) => *origin == from,
                _ => false,
            });
        if !matches {
            // A CON we cannot use is rejected so the server stops retransmitting.
            // A NON notification of an observation that ended is reset too (RFC 7641
            // §3.6): the device then forgets the proxy's registration.
            if mtype == CON || (mtype == NON && self.observation_ended(token)) {
                self.send(link, from, build::empty(RST, view.message_id()));
            }
            // No exchange is open under it: if the token was issued among the last
            // `late_memory`, its exchange ended (or never needed one: T' = 0).
            let reason = if !self.exchanges.contains_key(&token)
                && self.tokens.recent(token, self.cfg.limits.late_memory)
            {
                DropReason::LateResponse
            } else {
                DropReason::UnknownToken
            };
            return self.drop_msg(reason, from);
        }
        if mtype == CON {
            self.send(link, from, build::empty(ACK, view.message_id()));
            let ex = self.exchanges.get_mut(&token).expect("matched above");
            // A unicast exchange ends at its first response: only groups see more.
            if let Route::Group { seen_con, .. } = &mut ex.route {
                let key = (from, view.message_id());
                if seen_con.contains(&key) {
                    return self.drop_msg(DropReason::DuplicateRequest, from);
                }
                if seen_con.len() >= MAX_SEEN_PER_EXCHANGE {
                    seen_con.remove(0);
                }
                seen_con.push(key);
            }
        }
        let storable = match self.check_response(token, view) {
            Ok(s) => s,
            Err(reason) => return self.drop_msg(reason, from),
        };
        // Stored on its way to the client (groupcomm-proxy §7); a 2.03 to the proxy's
        // revalidation goes on as the stored representation it refreshed (§7.2).
        match self.cache_response(token, from, view, storable) {
            Relay::Stored(stored) => match MessageView::parse(&stored) {
                Ok(v) => self.relay(now, token, from, &v),
                Err(_) => self.relay(now, token, from, view),
            },
            Relay::Original => self.relay(now, token, from, view),
            Relay::Nothing => self.drop_msg(DropReason::UnexpectedMessage, from),
        }
    }

    /// §5.4.1: each response goes to the client under its token; group responses with
    /// Reply-From naming the origin server.
    pub(super) fn relay(&mut self, now: Instant, token: u64, from: SocketAddr, view: &MessageView) {
        let reply_from_no = self.cfg.options.reply_from;
        // RFC 8768 §4 (a 5.08's diagnostic), §8.1 (a next hop's 5.05): see `chain.rs`.
        let Some(amended) = self.amend_relayed(token, view) else {
            return self.drop_msg(DropReason::HopLoop, from);
        };
        // An observation's notification: ordered per device, rate-limited per client,
        // and at times CON for the interest check (RFC 7641 §3.4, §4.5).
        let observing = self.is_observation(token);
        let via = self
            .exchanges
            .get(&token)
            .and_then(|ex| Engine::next_hop_of(&ex.route));
        // Through a chain every notification comes from the next hop: the device is the
        // one its Reply-From names, for the ordering per device (RFC 7641 §3.4).
        let device = match via {
            Some(_) => view
                .option(reply_from_no)
                .and_then(cri::parse_reply_from)
                .unwrap_or(from),
            None => from,
        };
        let interest_check = if observing {
            match self.observe_notification(token, device, view) {
                Some(check) => check,
                None => return,
            }
        } else {
            false
        };
        let ex = self.exchanges.get(&token).expect("caller checked");
        let (kind, client, listener, con, started) = (
            ex.route.kind(),
            ex.client,
            ex.listener,
            ex.client_con,
            ex.started,
        );
        // A CON client gets CON responses while the retransmission table has room.
        let con =
            (con || interest_check) && self.pending.len() < self.cfg.limits.max_retransmissions;
        let to_client = Link::Listener(listener);
        let Some(mid) = self.mid_to(to_client, client, con, true) else {
            return;
        };
        // §8.2: from a next hop, Reply-From names the origin server already; it is passed
        // on untouched, and none is added where it has none. §6.1: a reverse proxy may
        // name itself instead (`reverse.rs`).
        let reply_from = (matches!(kind, Kind::Group(_)) && via.is_none())
            .then(|| self.reply_from_value(token, from));
        let ex = self.exchanges.get_mut(&token).expect("caller checked");
        ex.responses += 1;
        let mt_no = self.cfg.options.multicast_timeout;
        let mut opts: Options = view
            .options()
            .filter(|(n, _)| *n != reply_from_no || via.is_some())
            .filter(|(n, _)| *n != mt_no || amended.multicast_timeout.is_none())
            .collect();
        if let Some(rf) = &reply_from {
            opts.push((reply_from_no, rf));
        }
        if let Some(mt) = &amended.multicast_timeout {
            opts.push((mt_no, mt));
        }
        let client_token = ex.client_token;
        let mut outer = ex.outer.take();
        let t = if con { CON } else { NON };
        // oscore-capable-proxies §2.2: a response the proxy protects must carry only
        // options it recognises; otherwise the client gets 5.02 (Bad Gateway) instead.
        let unknown = outer.is_some() && opts.iter().any(|(n, _)| !self.knows_option(*n));
        let mut bytes = if unknown {
            let diagnostic = b"response carried an option the proxy does not recognise";
            build::encode(
                t,
                code::BAD_GATEWAY,
                mid,
                client_token.as_slice(),
                &mut [],
                diagnostic,
            )
        } else {
            let payload = amended.payload.as_deref().unwrap_or(view.payload());
            self.encode(
                t,
                view.code(),
                mid,
                client_token.as_slice(),
                &mut opts,
                payload,
            )
        };
        if let Some(o) = outer.as_mut() {
            let protected = if observing {
                self.protect_notification(o, &bytes)
            } else {
                self.protect_for_client(o, &bytes)
            };
            match protected {
                Some(p) => bytes = p,
                None => {
                    if let Some(ex) = self.exchanges.get_mut(&token) {
                        ex.outer = outer;
                    }
                    return self.drop_msg(DropReason::Malformed, from);
                }
            }
        }
        if let Some(ex) = self.exchanges.get_mut(&token) {
            ex.outer = outer;
        }
        if con {
            self.track(now, to_client, client, mid, bytes.clone(), Some(token));
        } else if let Some(ex) = self.exchanges.get_mut(&token)
            && matches!(ex.route, Route::Group { .. })
        {
            // Remembered so that an RST to it ends the exchange (§5.2.3); a unicast
            // exchange ends with this response anyway.
            if ex.relayed_non.len() >= MAX_SEEN_PER_EXCHANGE
                && let Some(old) = ex.relayed_non.pop_front()
            {
                self.relayed_non.remove(&(to_client, client, old));
            }
            ex.relayed_non.push_back(mid);
            self.relayed_non.insert((to_client, client, mid), token);
        }
        self.send(to_client, client, bytes);
        self.emit(Event::Relayed {
            group: kind.group(),
            after: now.saturating_duration_since(started),
        });
        let goes_on = observing && self.observe_after(token, con, interest_check);
        if let Kind::Unicast(_) = kind
            && !goes_on
        {
            self.close(token, CloseReason::UnicastAnswered);
        }
    }

    pub(super) fn origin_reset(&mut self, link: Link, origin: SocketAddr, mid: u16) {
        let token = self
            .exchanges
            .iter()
            .find(|(_, ex)| {
                ex.egress == link
                    && matches!(ex.route, Route::Unicast { origin: o, con_mid: Some(m) }
                        if o == origin && m == mid)
            })
            .map(|(t, _)| *t);
        if let Some(t) = token {
            self.reply_error(t, code::BAD_GATEWAY, "origin reset the request");
            self.close(t, CloseReason::OriginReset);
        }
    }
}
