//! The client's protocol logic, sans I/O like the engine (`src/proxy/engine`): datagrams
//! and the current time go in through [`Client::handle`] and [`Client::handle_timeout`];
//! datagrams to send come out of [`Client::poll_transmit`], what happened out of
//! [`Client::poll_event`]; [`Client::poll_timeout`] says when to call back. No socket,
//! clock, randomness source or sleep inside: [`super::run`] is the socket loop.
//!
//! A [`Client`] holds several requests (at most `MAX_REQUESTS`, 64), each open until its own
//! end ([`End`]): a group request has many responses (groupcomm-proxy §5.5), and so that
//! a request may later stay open past its first response (an Observe registration) its
//! end is a state of its own, not the arrival of an answer.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chacha20::ChaCha20Rng;
use chacha20::rand_core::{Rng, SeedableRng};

use super::message::{
    DEDUP_CAPACITY, Dedup, EXCHANGE_LIFETIME, NON_LIFETIME, Retransmission, Sent, Step,
    initial_timeout,
};
use super::{ClientRequest, Response, encode_request, protect_request};
use crate::coap::MessageView;
use crate::coap::build::{self, ACK, CON, RST};
use crate::coap::cri::parse_reply_from;
use crate::coap::options as opt;
use crate::oscore::{Exchange, Layer, Mode, SecurityContext};

/// Requests open at once in one client.
pub(crate) const MAX_REQUESTS: usize = 64;

/// A request of this client, as events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The destination.
    pub to: SocketAddr,
    /// A whole CoAP message.
    pub bytes: Vec<u8>,
}

/// Why a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// T = T' + margin passed: the proxy relays nothing after T' (groupcomm-proxy §5.1,
    /// §5.5.1), so the token is freed.
    Timeout,
    /// The request (a CON) went unacknowledged through MAX_RETRANSMIT retransmissions
    /// (RFC 7252 §4.2).
    GaveUp,
    /// The proxy rejected the request message with a Reset (RFC 7252 §4.2, §4.3).
    Reset,
}

/// Why a datagram was not taken as a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discard {
    /// Not a CoAP message.
    Malformed,
    /// Not from the proxy of an open request: never answered, so that the client
    /// reflects nothing to strangers.
    NotFromProxy,
    /// An ACK or RST that names none of the open requests' Message IDs.
    Unmatched,
    /// A response with a token of no open request (rejected with RST if a CON,
    /// groupcomm-proxy §5.5.1, RFC 7252 §4.2).
    UnknownToken,
    /// A message this client cannot process: a request, an Empty CON or NON, a reserved
    /// code class (RFC 7252 §4.2, §4.3; a CON is rejected with RST).
    Rejected,
    /// Seen before within its lifetime (RFC 7252 §4.5); a CON is acknowledged again.
    Duplicate,
    /// Protected, but not by the proxy this request shares the hop layer with
    /// (oscore-capable-proxies §2.6).
    HopLayer,
}

/// Something that happened to a request, or to a datagram that matched none.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// A response to one of the requests.
    Response {
        /// The request it answers.
        request: RequestId,
        /// What the client made of it.
        response: Response,
    },
    /// The proxy asked for proof of freshness with Echo (RFC 10021 §9, RFC 9175 §2.3)
    /// and the request was sent again with it.
    EchoRetry {
        /// The request resent with the Echo value.
        request: RequestId,
    },
    /// The request is over; nothing more is reported for it.
    Ended {
        /// The request that ended.
        request: RequestId,
        /// Why it ended.
        end: End,
    },
    /// A datagram that no request could use.
    Discarded {
        /// Its sender.
        from: SocketAddr,
        /// Why it was discarded.
        why: Discard,
    },
}

/// The layer a request shares with the proxy (oscore-capable-proxies §2.3).
struct Hop {
    kid: Vec<u8>,
    ex: Exchange,
    /// The request under its end-to-end protection only, to send again with Echo.
    end_to_end: Vec<u8>,
    echoed: bool,
}

/// An open request.
struct Open {
    id: RequestId,
    proxy: SocketAddr,
    token: [u8; 8],
    started: Instant,
    deadline: Instant,
    reply_from_option: u16,
    multicast_timeout_option: u16,
    /// The end-to-end protection of the request, to verify every response with.
    e2e: Option<Exchange>,
    hop: Option<Hop>,
    /// The request's messages: the first, and one more after an Echo challenge.
    messages: Vec<Sent>,
}

/// The sans-I/O client.
pub struct Client {
    security: Option<SecurityContext>,
    open: Vec<Open>,
    dedup: Dedup,
    rng: ChaCha20Rng,
    next_mid: u16,
    next_id: u64,
    transmits: VecDeque<Datagram>,
    events: VecDeque<ClientEvent>,
}

impl Client {
    /// `security` protects the requests that ask for OSCORE, its Sender Sequence Number
    /// set already; `seed` (drawn by the driver from the operating system) gives tokens,
    /// Message IDs and retransmission jitter.
    pub fn new(security: Option<SecurityContext>, seed: [u8; 32]) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let next_mid = rng.next_u32() as u16;
        Client {
            security,
            open: Vec::new(),
            dedup: Dedup::new(DEDUP_CAPACITY),
            rng,
            next_mid,
            next_id: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// A client for `req`: its member context (if any), continuing at `req.first_ssn`.
    pub fn for_request(req: &ClientRequest, seed: [u8; 32]) -> Result<Self, String> {
        let security = match &req.oscore {
            Some(c) => {
                let mut ctx = SecurityContext::new(c).map_err(|e| e.to_string())?;
                ctx.sender.ssn = req.first_ssn;
                Some(ctx)
            }
            None => None,
        };
        Ok(Client::new(security, seed))
    }

    /// Sends `req` at `now`: protected end to end if it asks for OSCORE, and wrapped in
    /// the pairwise layer with the proxy if it names `proxy_kid`.
    pub fn request(&mut self, now: Instant, req: &ClientRequest) -> Result<RequestId, String> {
        if self.open.len() >= MAX_REQUESTS {
            return Err(format!("{MAX_REQUESTS} requests open already"));
        }
        let token = self.fresh_token();
        let mid = self.mid();
        let (msg, e2e) = match (&req.oscore, &mut self.security) {
            (Some(_), Some(ctx)) => {
                let (m, ex) = protect_request(req, ctx, mid, &token)?;
                (m, Some(ex))
            }
            (Some(_), None) => return Err("no security context for an OSCORE request".into()),
            (None, _) => (encode_request(req, mid, &token)?, None),
        };
        let (msg, hop) = match (&req.proxy_kid, &mut self.security, &e2e) {
            (Some(kid), Some(ctx), Some(_)) => {
                let (m, ex) = ctx
                    .protect_request_layer(&msg, Mode::Pairwise, Some(kid), Layer::Hop)
                    .map_err(|e| e.to_string())?;
                let hop = Hop {
                    kid: kid.clone(),
                    ex,
                    end_to_end: msg,
                    echoed: false,
                };
                (m, Some(hop))
            }
            _ => (msg, None),
        };
        let id = RequestId(self.next_id);
        self.next_id += 1;
        let deadline = now + Duration::from_secs(req.timeout as u64) + req.margin;
        let mut open = Open {
            id,
            proxy: req.proxy,
            token,
            started: now,
            deadline,
            reply_from_option: req.reply_from_option,
            multicast_timeout_option: req.multicast_timeout_option,
            e2e,
            hop,
            messages: Vec::new(),
        };
        self.send(&mut open, now, mid, msg);
        self.open.push(open);
        Ok(id)
    }

    /// A datagram from `from` at `now`.
    pub fn handle(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        let Ok(v) = MessageView::parse(datagram) else {
            return self.discard(from, Discard::Malformed);
        };
        if !self.open.iter().any(|o| o.proxy == from) {
            return self.discard(from, Discard::NotFromProxy);
        }
        match v.mtype() {
            ACK => self.on_ack(now, from, &v),
            RST => self.on_reset(from, &v),
            _ => self.on_message(now, from, &v),
        }
    }

    /// Timers due at `now`: retransmissions, give-ups, deadlines.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.open.len() {
            let o = &mut self.open[i];
            if o.deadline <= now {
                self.end(i, End::Timeout);
                continue;
            }
            let mut gave_up = false;
            for s in &mut o.messages {
                if let Some(r) = &mut s.retransmission {
                    match r.on_timer(now) {
                        Step::Wait => {}
                        Step::Resend => self.transmits.push_back(Datagram {
                            to: o.proxy,
                            bytes: r.bytes.clone(),
                        }),
                        Step::GiveUp => gave_up = true,
                    }
                }
            }
            if gave_up {
                self.end(i, End::GaveUp);
                continue;
            }
            i += 1;
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due; `None` with no
    /// request open.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.open
            .iter()
            .flat_map(|o| {
                let retransmissions = o
                    .messages
                    .iter()
                    .filter_map(|s| s.retransmission.as_ref().map(|r| r.next));
                std::iter::once(o.deadline).chain(retransmissions)
            })
            .min()
    }

    /// The next datagram to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Datagram> {
        self.transmits.pop_front()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Requests open.
    pub fn open_requests(&self) -> usize {
        self.open.len()
    }

    fn fresh_token(&mut self) -> [u8; 8] {
        loop {
            let mut t = [0u8; 8];
            self.rng.fill_bytes(&mut t);
            // Two open requests never share a token, or their responses would mix.
            if !self.open.iter().any(|o| o.token == t) {
                return t;
            }
        }
    }

    /// Message IDs in sequence from a random start (RFC 7252 §4.4): none repeats before
    /// 65,536 more messages, far more than a client's requests within a lifetime.
    fn mid(&mut self) -> u16 {
        let m = self.next_mid;
        self.next_mid = m.wrapping_add(1);
        m
    }

    fn send(&mut self, o: &mut Open, now: Instant, mid: u16, bytes: Vec<u8>) {
        let con = MessageView::parse(&bytes).is_ok_and(|v| v.mtype() == CON);
        let retransmission = con.then(|| {
            let initial = initial_timeout(self.rng.next_u64());
            Retransmission::new(bytes.clone(), now, initial)
        });
        o.messages.push(Sent {
            mid,
            retransmission,
            answered: false,
        });
        self.transmits.push_back(Datagram { to: o.proxy, bytes });
    }

    fn discard(&mut self, from: SocketAddr, why: Discard) {
        self.events.push_back(ClientEvent::Discarded { from, why });
    }

    fn end(&mut self, i: usize, end: End) {
        let o = self.open.swap_remove(i);
        self.events
            .push_back(ClientEvent::Ended { request: o.id, end });
    }

    /// The open request and its message that `from` acknowledges or resets with `mid`.
    fn find_sent(&self, from: SocketAddr, mid: u16) -> Option<(usize, usize)> {
        self.open.iter().enumerate().find_map(|(i, o)| {
            let s = o.messages.iter().position(|s| s.mid == mid)?;
            (o.proxy == from).then_some((i, s))
        })
    }

    /// An ACK: the message it names is delivered; one that carries a response (RFC 7252
    /// §5.2.1, piggybacked) is processed once.
    fn on_ack(&mut self, now: Instant, from: SocketAddr, v: &MessageView) {
        let Some((i, s)) = self.find_sent(from, v.message_id()) else {
            return self.discard(from, Discard::Unmatched);
        };
        let o = &mut self.open[i];
        o.messages[s].retransmission = None;
        if v.code() == build::code::EMPTY {
            // A separate response follows (RFC 7252 §5.2.2).
            return;
        }
        if v.token() != o.token {
            // RFC 7252 §5.3.2: a piggybacked response carries the request's token.
            return self.discard(from, Discard::UnknownToken);
        }
        if !is_response(v.code()) {
            return self.discard(from, Discard::Rejected);
        }
        if o.messages[s].answered {
            return self.discard(from, Discard::Duplicate);
        }
        o.messages[s].answered = true;
        self.on_response(now, i, v);
    }

    /// An RST: only an Empty one that names a message of an open request counts
    /// (RFC 7252 §4.2); it cancels the request.
    fn on_reset(&mut self, from: SocketAddr, v: &MessageView) {
        if v.code() != build::code::EMPTY {
            return self.discard(from, Discard::Rejected);
        }
        match self.find_sent(from, v.message_id()) {
            Some((i, _)) => self.end(i, End::Reset),
            None => self.discard(from, Discard::Unmatched),
        }
    }

    /// A CON or NON from the proxy: a separate response (RFC 7252 §5.2.2).
    fn on_message(&mut self, now: Instant, from: SocketAddr, v: &MessageView) {
        let con = v.mtype() == CON;
        let mid = v.message_id();
        let reject = |c: &mut Client, why| {
            if con {
                c.transmits.push_back(Datagram {
                    to: from,
                    bytes: build::empty(RST, mid),
                });
            }
            c.discard(from, why);
        };
        if !is_response(v.code()) {
            return reject(self, Discard::Rejected);
        }
        let Some(i) = self
            .open
            .iter()
            .position(|o| o.proxy == from && o.token[..] == *v.token())
        else {
            return reject(self, Discard::UnknownToken);
        };
        let lifetime = if con { EXCHANGE_LIFETIME } else { NON_LIFETIME };
        let first = self.dedup.first(from, mid, now, lifetime);
        if con {
            // Every copy of a CON is acknowledged alike (RFC 7252 §4.5).
            self.transmits.push_back(Datagram {
                to: from,
                bytes: build::empty(ACK, mid),
            });
        }
        if !first {
            return self.discard(from, Discard::Duplicate);
        }
        // A response shows that the request arrived and only its ACK was lost: sending it
        // again would serve no purpose (RFC 7252 §4.2).
        for s in &mut self.open[i].messages {
            s.retransmission = None;
        }
        self.on_response(now, i, v);
    }

    /// A response of open request `i`, past the message layer: the hop layer removed, an
    /// Echo challenge answered, the end-to-end protection verified.
    fn on_response(&mut self, now: Instant, i: usize, outer: &MessageView) {
        let from = self.open[i].proxy;
        let layered;
        let v = match (&mut self.security, &mut self.open[i].hop) {
            (Some(ctx), Some(hop)) if outer.option(opt::OSCORE).is_some() => {
                // oscore-capable-proxies §2.6: the layer with the proxy comes off first.
                let Ok((inner, _)) = ctx.unprotect_response(outer.bytes(), &mut hop.ex) else {
                    return self.discard(from, Discard::HopLayer);
                };
                layered = inner;
                let Ok(v) = MessageView::parse(&layered) else {
                    return self.discard(from, Discard::HopLayer);
                };
                if self.echo_retry(now, i, &v) {
                    return;
                }
                v
            }
            _ => *outer,
        };
        let Client { security, open, .. } = self;
        let o = &mut open[i];
        let mut r = Response {
            code: v.code(),
            reply_from: v.option(o.reply_from_option).and_then(parse_reply_from),
            payload: v.payload().to_vec(),
            elapsed: now.saturating_duration_since(o.started),
            multicast_timeout: v.option(o.multicast_timeout_option).map(<[u8]>::to_vec),
            oscore: None,
        };
        // The proxy's own errors are not protected end to end; members' answers are.
        if let (Some(ctx), Some(ex)) = (security, &mut o.e2e)
            && v.option(opt::OSCORE).is_some()
        {
            r.oscore = Some(match ctx.unprotect_response(v.bytes(), ex) {
                Ok((plain, info)) => match MessageView::parse(&plain) {
                    Ok(pv) => {
                        r.code = pv.code();
                        r.payload = pv.payload().to_vec();
                        Ok((info.mode, info.server_id))
                    }
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            });
        }
        let request = o.id;
        self.events.push_back(ClientEvent::Response {
            request,
            response: r,
        });
    }

    /// RFC 10021 §9 (RFC 9175 §2.3): a 4.01 with Echo from the proxy, which lost its
    /// replay state, asks for proof of freshness; the same end-to-end request goes again
    /// with the Echo value, under a new hop layer and Message ID. Once: a second
    /// challenge is reported as the response it is.
    fn echo_retry(&mut self, now: Instant, i: usize, inner: &MessageView) -> bool {
        let Some(echo) = inner.option(opt::ECHO) else {
            return false;
        };
        let hop = match &self.open[i].hop {
            Some(h) if !h.echoed && inner.code() == build::code::UNAUTHORIZED => h,
            _ => return false,
        };
        let Ok(e2e) = MessageView::parse(&hop.end_to_end) else {
            return false;
        };
        let mid = self.next_mid;
        let mut opts: Vec<(u16, &[u8])> = e2e.options().collect();
        opts.push((opt::ECHO, echo));
        let token = self.open[i].token;
        let retry = build::encode(
            e2e.mtype(),
            e2e.code(),
            mid,
            &token,
            &mut opts,
            e2e.payload(),
        );
        let Some(ctx) = &mut self.security else {
            return false;
        };
        let Ok((bytes, ex)) =
            ctx.protect_request_layer(&retry, Mode::Pairwise, Some(&hop.kid), Layer::Hop)
        else {
            return false;
        };
        self.mid();
        let mut o = self.open.swap_remove(i);
        if let Some(h) = &mut o.hop {
            h.echoed = true;
            h.ex = ex;
        }
        self.send(&mut o, now, mid, bytes);
        self.events
            .push_back(ClientEvent::EchoRetry { request: o.id });
        self.open.push(o);
        true
    }
}

/// A response code: class 2, 4 or 5 (RFC 7252 §3, §12.1); not Empty, a request or a
/// reserved class.
fn is_response(code: u8) -> bool {
    matches!(code >> 5, 2 | 4 | 5)
}
