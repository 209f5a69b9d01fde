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

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chacha20::ChaCha20Rng;
use chacha20::rand_core::{Rng, SeedableRng};

use super::message::{
    DEDUP_CAPACITY, Dedup, EXCHANGE_LIFETIME, NON_LIFETIME, Retransmission, Sent, Step,
    initial_timeout,
};
use super::{
    ClientRequest, Response, encode_request, protect_deterministic, protect_request, szx_of,
};
use crate::coap::MessageView;
use crate::coap::build::{self, ACK, CON, RST};
use crate::coap::cri::parse_reply_from;
use crate::coap::options as opt;
use crate::oscore::deterministic::DeterministicExchange;
use crate::oscore::option::OscoreOption;
use crate::oscore::{Exchange, GroupMember, Layer, Mode, SecurityContext};

/// Requests open at once in one client (block-wise follow-ups included).
pub(crate) const MAX_REQUESTS: usize = 64;

/// Sources (devices) whose last notification an observation remembers, for the order
/// of RFC 7641 §3.4; past it the one heard from longest ago is forgotten (its next
/// notification is then taken as fresh).
pub(crate) const MAX_SOURCES: usize = 1024;

/// Representations one request reassembles at once (one per server).
pub(crate) const MAX_ASSEMBLIES: usize = 64;

/// Largest representation reassembled: past it the transfer is abandoned.
pub(crate) const MAX_BODY: usize = 1 << 20;

/// Times a transfer starts again from block 0 when the representation changed under it
/// (another ETag, RFC 7959 §2.4) before it is abandoned.
const MAX_RESTARTS: u8 = 3;

/// RFC 7641 §3.4: a notification older than this than the last one is fresh whatever
/// its sequence number.
const OBSERVE_WRAP: Duration = Duration::from_secs(128);

/// 4.08 Request Entity Incomplete (RFC 7959 §2.9.2).
const REQUEST_ENTITY_INCOMPLETE: u8 = 0x88;

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
    /// An observation was deregistered (RFC 7641 §3.6) and its last responses are in.
    Deregistered,
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
    /// A notification older than the last one reported from its source (RFC 7641
    /// §3.4), or one that came after the observation was deregistered.
    Stale,
    /// A block-wise transfer from one server that could not be completed (its
    /// follow-up unanswered or refused room, the representation too large or changing
    /// under it, RFC 7959 §2.4); what came of it is dropped.
    Incomplete,
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

/// What an observation keeps of each source (RFC 7641 §3.4): the last sequence number
/// reported, with OSCORE the last Partial IV (RFC 8613 §4.1.3.5.2), and when.
struct Seen {
    source: SocketAddr,
    /// The Gid the last one was protected under (RFC 10021 §7.3), empty without OSCORE.
    gid: Vec<u8>,
    seq: u32,
    piv: Option<u64>,
    at: Instant,
}

/// An observation's state.
struct Observing {
    seen: VecDeque<Seen>,
    deregistered: bool,
}

/// One server's representation being reassembled from Block2 responses (RFC 7959 §2.4).
struct Assembly {
    /// The server: Reply-From, or the sender without a proxy.
    source: SocketAddr,
    /// In order from byte 0.
    data: Vec<u8>,
    /// Blocks that came before the ones in front of them, by offset.
    pending: BTreeMap<usize, Vec<u8>>,
    /// Total length, once the last block (M unset) is in.
    total: Option<usize>,
    etag: Option<Vec<u8>>,
    /// The server's Sender ID, for pairwise follow-ups with OSCORE.
    kid: Option<Vec<u8>>,
    /// The first block's response, reported with the whole payload.
    first: Response,
    restarts: u8,
}

/// What a follow-up request of a block-wise transfer belongs to.
struct FollowUp {
    parent: RequestId,
    source: SocketAddr,
}

/// A request's datagram, its end-to-end exchange and its hop layer, if any.
type Built = (Vec<u8>, Option<Exchange>, Option<Hop>);

/// An open request.
struct Open {
    id: RequestId,
    proxy: SocketAddr,
    token: [u8; 8],
    started: Instant,
    /// `None` while an observation runs: it has no end of its own.
    deadline: Option<Instant>,
    /// The request as sent, to build its deregistration and follow-ups from.
    req: ClientRequest,
    observing: Option<Observing>,
    assemblies: Vec<Assembly>,
    follow_up: Option<FollowUp>,
    /// Ended while follow-ups were open: reported when the last of them ends.
    ended: Option<End>,
    reply_from_option: u16,
    multicast_timeout_option: u16,
    /// The end-to-end protection of the request, to verify every response with.
    e2e: Option<Exchange>,
    /// A Deterministic Request's exchange and Request-Hash (cacheable-oscore §3.4.4).
    det: Option<DeterministicExchange>,
    hop: Option<Hop>,
    /// The request's messages: the first, and one more after an Echo challenge.
    messages: Vec<Sent>,
}

/// The sans-I/O client.
pub struct Client {
    /// The member's contexts: the current epoch and, after [`Client::rekey`], the one
    /// before, so that responses to requests sent before the rekey still verify.
    security: Option<GroupMember>,
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
            security: security.map(GroupMember::new),
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
        let mut req = req.clone();
        if req.observe {
            // RFC 7641 §3.1: Observe 0 registers.
            req.extra.push((opt::OBSERVE, Vec::new()));
        }
        if let Some(size) = req.block_size {
            // RFC 7959 §2.4: block 0 in the size wanted.
            req.extra
                .push((opt::BLOCK2, opt::uint_value(u32::from(szx_of(size)?))));
        }
        let token = self.fresh_token();
        self.open_request(now, req, token, None)
    }

    fn open_request(
        &mut self,
        now: Instant,
        req: ClientRequest,
        token: [u8; 8],
        follow_up: Option<FollowUp>,
    ) -> Result<RequestId, String> {
        let req = &req;
        if self.open.len() >= MAX_REQUESTS {
            return Err(format!("{MAX_REQUESTS} requests open already"));
        }
        let mid = self.mid();
        let (msg, e2e, hop, det) = match (&req.deterministic, &req.oscore, &self.security) {
            (Some(kid), Some(_), Some(member)) => {
                let (m, d) = protect_deterministic(req, member.current(), mid, &token, kid)?;
                (m, None, None, Some(d))
            }
            (Some(_), _, _) => {
                return Err("a deterministic request needs a member context (--oscore)".into());
            }
            (None, _, _) => {
                let (m, e, h) = self.build(req, mid, &token)?;
                (m, e, h, None)
            }
        };
        let id = RequestId(self.next_id);
        self.next_id += 1;
        let deadline = now + Duration::from_secs(req.timeout as u64) + req.margin;
        let mut open = Open {
            id,
            proxy: req.proxy,
            token,
            started: now,
            deadline: (!req.observe).then_some(deadline),
            req: req.clone(),
            observing: req.observe.then(|| Observing {
                seen: VecDeque::new(),
                deregistered: false,
            }),
            assemblies: Vec::new(),
            follow_up,
            ended: None,
            reply_from_option: req.reply_from_option,
            multicast_timeout_option: req.multicast_timeout_option,
            e2e,
            det,
            hop,
            messages: Vec::new(),
        };
        self.send(&mut open, now, mid, msg);
        self.open.push(open);
        Ok(id)
    }

    /// The request's datagram: protected end to end if it asks for OSCORE, wrapped in
    /// the pairwise layer with the proxy if it names `proxy_kid`.
    fn build(&mut self, req: &ClientRequest, mid: u16, token: &[u8; 8]) -> Result<Built, String> {
        let (msg, e2e) = match (&req.oscore, &mut self.security) {
            (Some(_), Some(member)) => {
                let (m, ex) = protect_request(req, member.current_mut(), mid, token)?;
                (m, Some(ex))
            }
            (Some(_), None) => return Err("no security context for an OSCORE request".into()),
            (None, _) => (encode_request(req, mid, token)?, None),
        };
        let (msg, hop) = match (&req.proxy_kid, &mut self.security, &e2e) {
            (Some(kid), Some(member), Some(_)) if !req.direct => {
                let (m, ex) = member
                    .current_mut()
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
        Ok((msg, e2e, hop))
    }

    /// Ends observation `id` (RFC 7641 §3.6): a GET with Observe 1 and the same token,
    /// options and target, as a new message (through the proxy a group deregistration,
    /// RFC 10020 §3.7). The request then ends ([`End::Deregistered`]) at its response
    /// when sent directly, or after T' + margin through the proxy, which relays each
    /// device's answer; notifications still in flight are discarded as stale.
    pub fn deregister(&mut self, now: Instant, id: RequestId) -> Result<(), String> {
        let Some(i) = self
            .open
            .iter()
            .position(|o| o.id == id && o.observing.is_some() && o.ended.is_none())
        else {
            return Err(format!("no observation {}", id.0));
        };
        if self.open[i]
            .observing
            .as_ref()
            .is_some_and(|s| s.deregistered)
        {
            return Ok(());
        }
        let mut req = self.open[i].req.clone();
        req.extra.retain(|(n, _)| *n != opt::OBSERVE);
        req.extra.push((opt::OBSERVE, opt::uint_value(1)));
        let token = self.open[i].token;
        let mid = self.mid();
        let (msg, e2e, hop) = self.build(&req, mid, &token)?;
        let mut o = self.open.swap_remove(i);
        if e2e.is_some() {
            o.e2e = e2e;
        }
        o.hop = hop;
        // The registration is not sent again once its deregistration is on its way.
        for s in &mut o.messages {
            s.retransmission = None;
        }
        if let Some(obs) = &mut o.observing {
            obs.deregistered = true;
        }
        let wait = if req.direct {
            req.margin
        } else {
            Duration::from_secs(u64::from(req.timeout)) + req.margin
        };
        o.deadline = Some(now + wait);
        self.send(&mut o, now, mid, msg);
        self.open.push(o);
        Ok(())
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
            if o.deadline.is_some_and(|d| d <= now) {
                let end = if o.observing.is_some() {
                    End::Deregistered
                } else {
                    End::Timeout
                };
                self.end(i, end);
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
                o.deadline.into_iter().chain(retransmissions)
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

    /// A new key epoch of the group (RFC 10021 §12.2): what the client sends from now on
    /// is protected under `next`; responses are verified under the epoch whose Gid they
    /// name, so notifications of an observation registered before the rekey verify
    /// both before and after the server moves to the new one (§7.3).
    pub fn rekey(&mut self, next: SecurityContext) -> Result<(), String> {
        match &mut self.security {
            Some(m) => m.rekey(next, &[]).map_err(|e| e.to_string()),
            None => Err("no security context to rekey".into()),
        }
    }

    /// Requests open (follow-ups of block-wise transfers included).
    pub fn open_requests(&self) -> usize {
        self.open.len()
    }

    /// The open observations (for a driver that deregisters them at its end).
    pub fn observations(&self) -> Vec<RequestId> {
        self.open
            .iter()
            .filter(|o| o.observing.as_ref().is_some_and(|s| !s.deregistered))
            .filter(|o| o.ended.is_none())
            .map(|o| o.id)
            .collect()
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

    /// Ends open request `i`. A request with follow-ups still open ends when the last
    /// of them does; a follow-up ends without an event of its own, its transfer
    /// abandoned unless it completed.
    fn end(&mut self, i: usize, end: End) {
        let id = self.open[i].id;
        if self.has_follow_ups(id) {
            let o = &mut self.open[i];
            o.ended = Some(end);
            o.deadline = None;
            for s in &mut o.messages {
                s.retransmission = None;
            }
            return;
        }
        let o = self.open.swap_remove(i);
        match o.follow_up {
            Some(f) => {
                self.abandon(f.parent, f.source);
                self.end_parent_if_done(f.parent);
            }
            None => self
                .events
                .push_back(ClientEvent::Ended { request: o.id, end }),
        }
    }

    fn has_follow_ups(&self, id: RequestId) -> bool {
        self.open
            .iter()
            .any(|o| o.follow_up.as_ref().is_some_and(|f| f.parent == id))
    }

    /// A request whose end waited for its follow-ups ends when the last is gone.
    fn end_parent_if_done(&mut self, parent: RequestId) {
        if self.has_follow_ups(parent) {
            return;
        }
        if let Some(i) = self.open.iter().position(|o| o.id == parent)
            && let Some(end) = self.open[i].ended
        {
            self.open.swap_remove(i);
            self.events.push_back(ClientEvent::Ended {
                request: parent,
                end,
            });
        }
    }

    /// Drops the transfer from `source` of request `parent`.
    fn abandon(&mut self, parent: RequestId, source: SocketAddr) {
        if let Some(p) = self.open.iter_mut().find(|o| o.id == parent) {
            let before = p.assemblies.len();
            p.assemblies.retain(|a| a.source != source);
            if p.assemblies.len() != before {
                self.events.push_back(ClientEvent::Discarded {
                    from: source,
                    why: Discard::Incomplete,
                });
            }
        }
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
        if self.open[i].ended.is_some() {
            // Its time is up; only its follow-ups still run.
            return self.discard(from, Discard::Stale);
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
            observe: v.option(opt::OBSERVE).and_then(opt::read_uint),
            oscore: None,
        };
        let mut block2 = v.option(opt::BLOCK2).and_then(opt::read_uint);
        let mut etag = v.option(opt::ETAG).map(<[u8]>::to_vec);
        let mut piv = None;
        // With OSCORE the epoch a notification was protected under: the Gid its option
        // names (a server names the new one after a rekey, §7.3), else the request's.
        let mut epoch = (Vec::new(), Vec::new());
        // A Deterministic Request's responses: group mode, bound by the Request-Hash
        // (cacheable-oscore §3.4.4); any server of the group may answer (§3.4.5).
        if let (Some(ctx), Some(det)) = (security.as_mut(), &mut o.det)
            && v.option(opt::OSCORE).is_some()
        {
            r.oscore = Some(
                match ctx
                    .current_mut()
                    .unprotect_deterministic_response(v.bytes(), det, None)
                {
                    Ok((plain, info)) => match MessageView::parse(&plain) {
                        Ok(pv) => {
                            r.code = pv.code();
                            r.payload = pv.payload().to_vec();
                            // §3.4.4 step 4: an inner Observe is ignored here.
                            r.observe = None;
                            Ok((info.mode, info.server_id))
                        }
                        Err(e) => Err(e.to_string()),
                    },
                    Err(e) => Err(e.to_string()),
                },
            );
        }
        // The proxy's own errors are not protected end to end; members' answers are.
        if let (Some(ctx), Some(ex)) = (security, &mut o.e2e)
            && v.option(opt::OSCORE).is_some()
        {
            r.oscore = Some(match ctx.unprotect_response(v.bytes(), ex) {
                Ok((plain, info)) => match MessageView::parse(&plain) {
                    Ok(pv) => {
                        r.code = pv.code();
                        r.payload = pv.payload().to_vec();
                        // Only the inner Observe, Block2 and ETag are protected
                        // (RFC 8613 §4.1.3.5, §4.1.3.4).
                        // It says whether this is a notification; the number shown
                        // is the outer one, which the inner need not repeat (RFC 8613
                        // §4.1.3.5.2: the order is the Partial IV's).
                        r.observe = pv
                            .option(opt::OBSERVE)
                            .and_then(opt::read_uint)
                            .map(|inner| r.observe.unwrap_or(inner));
                        block2 = pv.option(opt::BLOCK2).and_then(opt::read_uint);
                        etag = pv.option(opt::ETAG).map(<[u8]>::to_vec);
                        piv = info.piv;
                        let named = v
                            .option(opt::OSCORE)
                            .and_then(|o| OscoreOption::parse(o).ok())
                            .and_then(|o| o.kid_context.map(<[u8]>::to_vec));
                        epoch = (
                            named.unwrap_or_else(|| ex.kid_context.clone()),
                            ctx.current().common.gid().to_vec(),
                        );
                        Ok((info.mode, info.server_id))
                    }
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.to_string()),
            });
        }
        let source = r.reply_from.unwrap_or(from);
        // A notification that failed verification is reported as such but does not
        // move the order: a forged one with a high number must not make the genuine
        // ones look stale.
        let verified = !matches!(r.oscore, Some(Err(_)));
        if let (Some(obs), Some(seq), true) = (&mut o.observing, r.observe, verified)
            && (obs.deregistered || !fresh(obs, source, seq, piv, epoch, now))
        {
            return self.discard(source, Discard::Stale);
        }
        let wants_blocks = o.follow_up.is_some() || block2.is_some_and(|b| b & 8 != 0);
        if wants_blocks && r.observe.is_none() && matches!(r.code >> 5, 2) {
            return self.on_block(now, i, r, block2.unwrap_or(0), etag);
        }
        if let Some(f) = &o.follow_up {
            let (parent, src) = (f.parent, f.source);
            self.open.swap_remove(i);
            if r.code == REQUEST_ENTITY_INCOMPLETE && self.restart(now, parent, src) {
                // RFC 7959 §2.4 lets a server keep no state between blocks, and one
                // that keeps it per requester (aiocoap does) refuses a block past 0
                // asked from another endpoint than block 0 (through the proxy, its
                // unicast egress, not the group's) with 4.08: start again at block 0,
                // from where the rest is asked.
                return;
            }
            // A follow-up answered with an error: the transfer is over, the error is
            // the server's answer.
            if let Some(p) = self.open.iter_mut().find(|p| p.id == parent) {
                p.assemblies.retain(|a| a.source != src);
            }
            self.events.push_back(ClientEvent::Response {
                request: parent,
                response: r,
            });
            return self.end_parent_if_done(parent);
        }
        let request = o.id;
        let done = o.req.direct && o.observing.as_ref().is_some_and(|s| s.deregistered);
        self.events.push_back(ClientEvent::Response {
            request,
            response: r,
        });
        if done {
            // Sent straight to the server: its answer to the deregistration is the last.
            self.end(i, End::Deregistered);
        }
    }

    /// A Block2 response (RFC 7959 §2.4) of request `i` (the request or one of its
    /// follow-ups): into its server's representation, which is reported whole once
    /// complete; until then the next block is asked of that server, in the size the
    /// server used (RFC 7959 §2.4: the client follows the server's size).
    fn on_block(
        &mut self,
        now: Instant,
        i: usize,
        r: Response,
        block2: u32,
        etag: Option<Vec<u8>>,
    ) {
        let (num, more, szx) = (block2 >> 4, block2 & 8 != 0, (block2 & 7) as u8);
        let (parent, source) = match self.open[i].follow_up.take() {
            Some(f) => {
                // A follow-up has one response; it is done.
                self.open.swap_remove(i);
                (f.parent, f.source)
            }
            None => (self.open[i].id, r.reply_from.unwrap_or(self.open[i].proxy)),
        };
        let Some(p) = self.open.iter().position(|o| o.id == parent) else {
            return;
        };
        let kid = match &r.oscore {
            Some(Ok((_, kid))) => Some(kid.clone()),
            _ => None,
        };
        let mut next = None;
        let mut complete = None;
        let mut abandon = szx == 7;
        {
            let o = &mut self.open[p];
            let at = o.assemblies.iter().position(|a| a.source == source);
            let at = match at {
                Some(k) => Some(k),
                None if num == 0 && o.assemblies.len() < MAX_ASSEMBLIES => {
                    o.assemblies.push(Assembly {
                        source,
                        data: Vec::new(),
                        pending: BTreeMap::new(),
                        total: None,
                        etag: etag.clone(),
                        kid: kid.clone(),
                        first: Response {
                            payload: Vec::new(),
                            ..r.clone()
                        },
                        restarts: 0,
                    });
                    Some(o.assemblies.len() - 1)
                }
                None => None,
            };
            match at {
                None => abandon = true,
                Some(k) if !abandon => {
                    let a = &mut o.assemblies[k];
                    let size = 16usize << szx;
                    let offset = (num as usize).saturating_mul(size);
                    if a.etag != etag {
                        // RFC 7959 §2.4: blocks of another version of the
                        // representation; start again from block 0.
                        a.restarts += 1;
                        a.data.clear();
                        a.pending.clear();
                        a.total = None;
                        a.etag = etag.clone();
                        if a.restarts > MAX_RESTARTS {
                            abandon = true;
                        } else if num != 0 {
                            next = Some((0u32, szx));
                        }
                    }
                    if !abandon && next.is_none() {
                        if num == 0 {
                            // A restart's block 0 came by unicast, without Reply-From:
                            // the server stays the one the group response named.
                            let named = a.first.reply_from;
                            a.first = Response {
                                payload: Vec::new(),
                                ..r.clone()
                            };
                            a.first.reply_from = a.first.reply_from.or(named);
                        }
                        insert_block(a, offset, &r.payload);
                        if !more {
                            a.total = Some(offset + r.payload.len());
                        }
                        let held: usize = a.pending.values().map(Vec::len).sum();
                        if a.data.len() + held > MAX_BODY {
                            abandon = true;
                        } else if a.total == Some(a.data.len()) {
                            complete = Some(k);
                        } else {
                            // The next block after what is in order, in the size the
                            // server used, made smaller if the bytes so far are not a
                            // whole number of such blocks (a size change, §2.4).
                            let mut z = szx;
                            while z > 0 && !a.data.len().is_multiple_of(16usize << z) {
                                z -= 1;
                            }
                            next = Some(((a.data.len() >> (z + 4)) as u32, z));
                        }
                    }
                }
                Some(_) => {}
            }
            if let Some(k) = complete {
                let a = o.assemblies.swap_remove(k);
                let mut whole = a.first;
                whole.payload = a.data;
                whole.elapsed = now.saturating_duration_since(o.started);
                self.events.push_back(ClientEvent::Response {
                    request: parent,
                    response: whole,
                });
            }
        }
        if abandon {
            self.abandon(parent, source);
        } else if let Some((n, z)) = next {
            let busy = self.open.iter().any(|o| {
                o.follow_up
                    .as_ref()
                    .is_some_and(|f| f.parent == parent && f.source == source)
            });
            if !busy && self.follow_up(now, p, source, n, z).is_err() {
                self.abandon(parent, source);
            }
        }
        self.end_parent_if_done(parent);
    }

    /// Starts the transfer from `source` again at block 0 (by a follow-up), at most
    /// `MAX_RESTARTS` times; false if it may not.
    fn restart(&mut self, now: Instant, parent: RequestId, source: SocketAddr) -> bool {
        let Some(p) = self.open.iter().position(|o| o.id == parent) else {
            return false;
        };
        let Some(a) = self.open[p]
            .assemblies
            .iter_mut()
            .find(|a| a.source == source)
        else {
            return false;
        };
        if a.restarts >= MAX_RESTARTS {
            return false;
        }
        a.restarts += 1;
        a.data.clear();
        a.pending.clear();
        a.total = None;
        let szx = self.open[p]
            .req
            .block_size
            .and_then(|n| szx_of(n).ok())
            .unwrap_or(6);
        self.follow_up(now, p, source, 0, szx).is_ok()
    }

    /// Asks `source` for block `num` of size exponent `szx` of request `p`'s resource:
    /// directly, or through the proxy as a unicast request to the address Reply-From
    /// gave (RFC 10020 §3.8); with OSCORE in pairwise mode with that server.
    fn follow_up(
        &mut self,
        now: Instant,
        p: usize,
        source: SocketAddr,
        num: u32,
        szx: u8,
    ) -> Result<RequestId, String> {
        let parent = &self.open[p];
        let mut req = parent.req.clone();
        req.observe = false;
        req.extra
            .retain(|(n, _)| *n != opt::OBSERVE && *n != opt::BLOCK2);
        req.extra
            .push((opt::BLOCK2, opt::uint_value(num << 4 | u32::from(szx))));
        if req.direct {
            req.proxy = source;
        } else {
            req.uri = format!("coap://{source}{}", path_and_query(&req.uri));
            req.unicast = true;
        }
        if req.oscore.is_some() {
            req.pairwise_peer = parent
                .assemblies
                .iter()
                .find(|a| a.source == source)
                .and_then(|a| a.kid.clone());
        }
        let follow_up = FollowUp {
            parent: parent.id,
            source,
        };
        let token = self.fresh_token();
        self.open_request(now, req, token, Some(follow_up))
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
        let Some(member) = &mut self.security else {
            return false;
        };
        let Ok((bytes, ex)) = member.current_mut().protect_request_layer(
            &retry,
            Mode::Pairwise,
            Some(&hop.kid),
            Layer::Hop,
        ) else {
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

/// RFC 7641 §3.4: whether a notification from `source` is newer than the last one
/// reported from it, and if so it becomes the last. With OSCORE the Partial IV orders
/// them (RFC 8613 §4.1.3.5.2).
///
/// `epoch` is the notification's Gid and the client's current one: a server's Partial
/// IVs start again under a new Gid, so its first notification under the current epoch
/// is newer than any under an older one, and one under an older one after that is not.
fn fresh(
    obs: &mut Observing,
    source: SocketAddr,
    seq: u32,
    piv: Option<u64>,
    (gid, current): (Vec<u8>, Vec<u8>),
    now: Instant,
) -> bool {
    let Some(k) = obs.seen.iter().position(|s| s.source == source) else {
        if obs.seen.len() >= MAX_SOURCES {
            obs.seen.pop_front();
        }
        obs.seen.push_back(Seen {
            source,
            gid,
            seq,
            piv,
            at: now,
        });
        return true;
    };
    let last = &obs.seen[k];
    let moved = last.gid != gid;
    let newer = match (last.piv, piv) {
        _ if moved => gid == current,
        (Some(a), Some(b)) => b > a,
        // RFC 8613 §4.1.3.5.2: a notification without Partial IV (the first, on the
        // request's nonce) is the oldest; and the inner Observe carries no order there
        // (aiocoap sends 0 in every one).
        (None, Some(_)) => true,
        (Some(_), None) => false,
        (None, None) => {
            let (v1, v2) = (last.seq, seq);
            (v1 < v2 && v2 - v1 < 1 << 23)
                || (v1 > v2 && v1 - v2 > 1 << 23)
                || now > last.at + OBSERVE_WRAP
        }
    };
    if newer {
        let mut s = obs.seen.remove(k).expect("present");
        s.seq = seq;
        s.piv = if moved { piv } else { piv.or(s.piv) };
        s.gid = gid;
        s.at = now;
        // Most recently heard last, so that the table forgets the longest silent.
        obs.seen.push_back(s);
    }
    newer
}

/// Puts a block at its offset: in order it extends the representation (and any blocks
/// that waited for it follow), ahead of it it waits, behind it (a duplicate) it adds
/// only what is new.
fn insert_block(a: &mut Assembly, offset: usize, payload: &[u8]) {
    if offset > a.data.len() {
        a.pending.insert(offset, payload.to_vec());
        return;
    }
    let end = offset + payload.len();
    if end > a.data.len() {
        let skip = a.data.len() - offset;
        a.data.extend_from_slice(&payload[skip..]);
    }
    while let Some((&off, _)) = a.pending.first_key_value() {
        if off > a.data.len() {
            break;
        }
        let (off, b) = a.pending.pop_first().expect("present");
        if off + b.len() > a.data.len() {
            let skip = a.data.len() - off;
            a.data.extend_from_slice(&b[skip..]);
        }
    }
}

/// The path and query of a URI (`/large?x`), to send to one server of a group.
fn path_and_query(uri: &str) -> &str {
    let rest = uri.find("://").map_or(uri, |k| &uri[k + 3..]);
    rest.find(['/', '?']).map_or("", |k| &rest[k..])
}
