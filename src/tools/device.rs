//! A simulated group member for demos, tests and load runs: joins a multicast group,
//! answers a few resources from its own unicast address (RFC 10020 §3.1).
//!
//! Besides `/hello`, `/echo` and `/.well-known/core` it serves `/counter`, observable
//! (RFC 7641): a counter that goes up by one every `notify_interval`, notified to each
//! registered observer; and `/large`, a representation of `large_bytes` bytes served
//! block-wise (RFC 7959 §2.2, §2.4) in whatever block size a request asks, 1,024 bytes
//! at most. The observers are the one table a device keeps ([`Settings::max_observers`]).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::coap::MessageView;
use crate::coap::build::{self, ACK, CON, NON, RST, code};
use crate::coap::options as opt;
use crate::oscore::{ContextConfig, Exchange, GroupMember, Mode, SecurityContext};
use crate::runtime::sockets::{self, Interface};

/// What a simulated device is and how it answers.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// In the answer to /hello (`hello from NAME`) and in log lines.
    pub name: String,
    /// Multicast group address and port to join.
    pub group: SocketAddr,
    /// The interface the group is joined on.
    pub interface: Interface,
    /// Unicast address the device answers from (and serves unicast requests on).
    pub bind: SocketAddr,
    /// Responses to group requests wait a random time up to this (RFC 10020 §3.6.1's
    /// Leisure), spreading the answers of many devices.
    pub leisure: Duration,
    /// A fixed delay before every answer to a group request (a slow device).
    pub delay: Duration,
    /// Group OSCORE membership: requests must be protected, and responses are protected
    /// in this mode (aiocoap answers group-mode requests in pairwise mode).
    pub oscore: Option<(ContextConfig, Mode)>,
}

/// How `/counter` and `/large` behave (`groxy device --notify-interval` and the rest).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `/counter` goes up by one this often, and every observer is notified.
    pub notify_interval: Duration,
    /// Every this many notifications one is Confirmable (RFC 7641 §4.5: the server
    /// learns that the observer is still there). An observer that has not acknowledged
    /// the previous CON when the next is due is removed. 0: all NON.
    pub con_every: u32,
    /// Observers kept at most (the device's one table). A registration past it is
    /// answered as a plain GET, without Observe: not registered (RFC 7641 §4.1).
    pub max_observers: usize,
    /// Size of the `/large` representation in bytes.
    pub large_bytes: usize,
    /// For tests of the proxy's filters: with OSCORE, after every third NON
    /// notification the device also sends the previous one again under a new Message
    /// ID (a replay: the same Partial IV, RFC 10021 §5.3.1) and a copy of the current
    /// one with a bit of its countersignature flipped (a forgery, §7.5). Neither may
    /// reach the client.
    pub misbehave: bool,
    /// For tests of a caching proxy (groupcomm-proxy §7): `/hello` answers carry this
    /// Max-Age and an ETag of the representation, and a GET of `/hello` naming that ETag
    /// gets 2.03 (RFC 7252 §5.10.6, §5.9.1.3). None: neither option (Max-Age 60).
    pub hello_max_age: Option<u32>,
    /// With OSCORE: the Sender ID of the group's Deterministic Client; requests under it
    /// with a Request-Hash are Deterministic Requests (cacheable-oscore §3.4.3), answered
    /// only for GET and FETCH, signed, with an outer Max-Age (§3.4.4). `None`: such a
    /// request fails as one of an unknown kid.
    pub deterministic_kid: Option<Vec<u8>>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            notify_interval: Duration::from_secs(1),
            con_every: 10,
            max_observers: 64,
            large_bytes: 3000,
            misbehave: false,
            hello_max_age: None,
            deterministic_kid: None,
        }
    }
}

/// Largest block a device sends: SZX 6, 1,024 bytes (RFC 7959 §2.2; SZX 7 is reserved).
const MAX_SZX: u8 = 6;

/// Message IDs of a notification remembered per observer, so that an RST naming one of
/// them ends the observation (RFC 7641 §3.6, §4.5).
const RECENT_MIDS: usize = 8;

/// One registered observer of `/counter` (RFC 7641 §4.1): its endpoint and token,
/// and with OSCORE the request's exchange, under which each notification is protected
/// with a Partial IV of its own (RFC 8613 §4.1.3.5.2).
struct Observer {
    peer: SocketAddr,
    token: Vec<u8>,
    exchange: Option<Exchange>,
    mode: Mode,
    /// The Message ID of the last CON notification while it is unacknowledged.
    con_pending: Option<u16>,
    recent_mids: VecDeque<u16>,
    /// The last protected NON notification, for `misbehave`.
    last: Option<Vec<u8>>,
}

/// What a request does to the observer table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ObserveAction {
    None,
    /// GET /counter with Observe 0 (RFC 7641 §3.1).
    Register,
    /// GET /counter with Observe 1 (RFC 7641 §3.6).
    Deregister,
}

/// An answer and what it does to the observer table.
struct Answer {
    bytes: Vec<u8>,
    action: ObserveAction,
}

/// Something a device logs with `--log-requests` besides the datagrams: an observer
/// added or removed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObserveLog {
    /// `registered`, `deregistered`, `reset`, `not_acknowledged`, `table_full`.
    pub event: &'static str,
    /// The observer's endpoint.
    pub peer: SocketAddr,
    /// Its token, hex.
    pub token: String,
}

/// The device's resources and observers, without sockets: datagrams in, datagrams out.
pub struct Resources {
    name: String,
    settings: Settings,
    counter: u32,
    large: Vec<u8>,
    observers: Vec<Observer>,
    next_mid: u16,
    notifications: u64,
    log: Vec<ObserveLog>,
}

impl Resources {
    /// A device named `name`; `mid_start` (random in the device) starts its Message IDs.
    pub fn new(name: &str, settings: Settings, mid_start: u16) -> Self {
        let mut large = format!("large from {name}:").into_bytes();
        let mut i = 0u32;
        while large.len() < settings.large_bytes {
            large.extend_from_slice(format!(" {i:05}").as_bytes());
            i += 1;
        }
        large.truncate(settings.large_bytes);
        Resources {
            name: name.to_string(),
            settings,
            counter: 0,
            large,
            observers: Vec::new(),
            next_mid: mid_start,
            notifications: 0,
            log: Vec::new(),
        }
    }

    /// The `/large` representation.
    pub fn large(&self) -> &[u8] {
        &self.large
    }

    /// Observers registered.
    pub fn observers(&self) -> usize {
        self.observers.len()
    }

    /// What happened to observers since the last call.
    pub fn take_log(&mut self) -> Vec<ObserveLog> {
        std::mem::take(&mut self.log)
    }

    fn note(&mut self, event: &'static str, peer: SocketAddr, token: &[u8]) {
        self.log.push(ObserveLog {
            event,
            peer,
            token: hex::encode(token),
        });
    }

    /// A datagram from `from` (on the group socket if `multicast`): the answer to send
    /// back, if any. With `member`, requests must be Group OSCORE protected and answers
    /// are protected in `mode` (a pairwise request gets a pairwise answer).
    pub fn handle(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        multicast: bool,
        member: Option<(&mut GroupMember, Mode)>,
    ) -> Option<Vec<u8>> {
        let v = MessageView::parse(datagram).ok()?;
        if v.code() == code::EMPTY && matches!(v.mtype(), ACK | RST) {
            self.on_empty(from, v.mtype(), v.message_id());
            return None;
        }
        match member {
            None => {
                let a = self.answer(&v, multicast)?;
                self.observe(from, &v, a.action, None, Mode::Group);
                Some(a.bytes)
            }
            Some((m, _)) if self.is_deterministic(&v) => {
                self.deterministic(m.current_mut(), datagram, &v, multicast)
            }
            Some((m, mode)) => {
                // A member verifies the request (RFC 10021 §7.2, §8.4) and answers the
                // plaintext; nothing goes back for one that fails, as servers send no
                // error responses to group requests (§7, RFC 10020 §3.1.2).
                let (plain, mut ex) = m.unprotect_request(datagram).ok()?;
                let pv = MessageView::parse(&plain).ok()?;
                let a = self.answer(&pv, multicast)?;
                let mode = if ex.mode == Mode::Pairwise {
                    Mode::Pairwise
                } else {
                    mode
                };
                let bytes = m.protect_response(&a.bytes, &mut ex, mode, false).ok()?;
                // The exchange after the first response: every later notification gets
                // a Partial IV of its own.
                self.observe(from, &pv, a.action, Some(ex), mode);
                Some(bytes)
            }
        }
    }

    fn is_deterministic(&self, v: &MessageView) -> bool {
        self.settings
            .deterministic_kid
            .as_deref()
            .is_some_and(|k| crate::oscore::deterministic::is_deterministic_request(v, k))
    }

    /// A Deterministic Request (cacheable-oscore §3.4.3): verified without a replay
    /// window (it is meant to be repeated), answered only if safe (GET or FETCH, §6;
    /// otherwise a protected 4.01), the answer protected per §3.4.4. No observation is
    /// registered from one: it has no client to notify. A request that fails gets an
    /// unprotected 4.00 with Max-Age 0 by unicast, nothing when sent to the group (§3.4.5).
    fn deterministic(
        &mut self,
        ctx: &mut SecurityContext,
        datagram: &[u8],
        v: &MessageView,
        multicast: bool,
    ) -> Option<Vec<u8>> {
        let kid = self.settings.deterministic_kid.clone()?;
        let (plain, mut det) = match ctx.unprotect_deterministic_request(datagram, &kid) {
            Ok(r) => r,
            Err(_) if multicast => return None,
            Err(_) => {
                let (t, mid) = reply_type(v);
                let zero: &[u8] = &[];
                return Some(build::encode(
                    t,
                    code::BAD_REQUEST,
                    mid,
                    v.token(),
                    &mut [(opt::MAX_AGE, zero)],
                    b"Decryption failed",
                ));
            }
        };
        let pv = MessageView::parse(&plain).ok()?;
        let answer = if crate::oscore::deterministic::is_safe_method(pv.code()) {
            self.answer(&pv, multicast)?.bytes
        } else {
            let (t, mid) = reply_type(&pv);
            build::encode(t, code::UNAUTHORIZED, mid, pv.token(), &mut [], &[])
        };
        ctx.protect_deterministic_response(&answer, &mut det).ok()
    }

    fn on_empty(&mut self, from: SocketAddr, mtype: u8, mid: u16) {
        let Some(i) = self
            .observers
            .iter()
            .position(|o| o.peer == from && o.recent_mids.contains(&mid))
        else {
            return;
        };
        if mtype == ACK {
            if self.observers[i].con_pending == Some(mid) {
                self.observers[i].con_pending = None;
            }
        } else {
            // RFC 7641 §3.6: an RST to a notification ends the observation.
            let o = self.observers.swap_remove(i);
            self.note("reset", o.peer, &o.token);
        }
    }

    fn observe(
        &mut self,
        from: SocketAddr,
        req: &MessageView,
        action: ObserveAction,
        exchange: Option<Exchange>,
        mode: Mode,
    ) {
        let token = req.token().to_vec();
        // RFC 7641 §4.1: the same endpoint and token is the same observer; a
        // registration again replaces the entry, a deregistration removes it.
        let at = self
            .observers
            .iter()
            .position(|o| o.peer == from && o.token == token);
        match action {
            ObserveAction::None => {}
            ObserveAction::Deregister => {
                if let Some(i) = at {
                    self.observers.swap_remove(i);
                    self.note("deregistered", from, &token);
                }
            }
            ObserveAction::Register => {
                let o = Observer {
                    peer: from,
                    token: token.clone(),
                    exchange,
                    mode,
                    con_pending: None,
                    recent_mids: VecDeque::new(),
                    last: None,
                };
                match at {
                    Some(i) => self.observers[i] = o,
                    None => self.observers.push(o),
                }
                self.note("registered", from, &token);
            }
        }
    }

    /// The counter goes up and every observer gets a notification: `(to, datagram)`.
    pub fn tick(&mut self, mut member: Option<&mut GroupMember>) -> Vec<(SocketAddr, Vec<u8>)> {
        self.counter = self.counter.wrapping_add(1);
        self.notifications += 1;
        let con = self.settings.con_every > 0
            && self
                .notifications
                .is_multiple_of(u64::from(self.settings.con_every));
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.observers.len() {
            if con && self.observers[i].con_pending.is_some() {
                // RFC 7641 §4.5: the client did not acknowledge the last CON
                // notification; it is no longer interested.
                let o = self.observers.swap_remove(i);
                self.note("not_acknowledged", o.peer, &o.token);
                continue;
            }
            let mid = self.next_mid;
            self.next_mid = mid.wrapping_add(1);
            let plain = self.counter_response(if con { CON } else { NON }, mid, i);
            let o = &mut self.observers[i];
            let bytes = match (&mut member, &mut o.exchange) {
                (Some(m), Some(ex)) => match m.protect_response(&plain, ex, o.mode, false) {
                    Ok(b) => b,
                    Err(_) => {
                        i += 1;
                        continue;
                    }
                },
                _ => plain,
            };
            if con {
                o.con_pending = Some(mid);
            }
            if o.recent_mids.len() == RECENT_MIDS {
                o.recent_mids.pop_front();
            }
            o.recent_mids.push_back(mid);
            let bad = self.settings.misbehave
                && o.exchange.is_some()
                && !con
                && self.notifications.is_multiple_of(3);
            let mut extra = Vec::new();
            if bad && let Some(prev) = &o.last {
                let mut replay = prev.clone();
                let mut forged = bytes.clone();
                for (d, k) in [(&mut replay, 1u16), (&mut forged, 2)] {
                    // A Message ID of its own, or the proxy's deduplication would take
                    // it for a retransmission before any check.
                    let m = mid.wrapping_add(0x8000).wrapping_add(k).to_be_bytes();
                    d[2..4].copy_from_slice(&m);
                }
                if let Some(b) = forged.last_mut() {
                    *b ^= 1;
                }
                extra.push(replay);
                extra.push(forged);
            }
            if !con {
                o.last = Some(bytes.clone());
            }
            out.push((o.peer, bytes));
            out.extend(extra.into_iter().map(|d| (o.peer, d)));
            i += 1;
        }
        out
    }

    /// The Observe value: the counter in 24 bits (RFC 7641 §4.4), one up per change.
    fn observe_seq(&self) -> u32 {
        self.counter & 0x00ff_ffff
    }

    fn counter_response(&self, t: u8, mid: u16, observer: usize) -> Vec<u8> {
        let seq = opt::uint_value(self.observe_seq());
        let text = opt::uint_value(0);
        let payload = self.counter.to_string();
        build::encode(
            t,
            code::CONTENT,
            mid,
            &self.observers[observer].token,
            &mut [(opt::OBSERVE, &seq), (opt::CONTENT_FORMAT, &text)],
            payload.as_bytes(),
        )
    }

    /// What the device answers to a request, or nothing. Error responses to group
    /// requests are suppressed (RFC 10020 §3.1.2).
    fn answer(&self, v: &MessageView, multicast: bool) -> Option<Answer> {
        if !v.is_request() || !matches!(v.mtype(), CON | NON) {
            return None;
        }
        let path: Vec<&[u8]> = v
            .options()
            .filter(|(n, _)| *n == opt::URI_PATH)
            .map(|(_, p)| p)
            .collect();
        let text_plain = opt::uint_value(0);
        let link_format = opt::uint_value(40);
        let mut extra: Vec<(u16, Vec<u8>)> = Vec::new();
        let mut action = ObserveAction::None;
        let (c, payload, cf): (u8, Vec<u8>, Option<&[u8]>) = match (v.code(), path.as_slice()) {
            (code::GET, [b".well-known", b"core"]) => (
                code::CONTENT,
                b"</hello>;rt=\"groxy.hello\",</echo>,</counter>;obs,</large>".to_vec(),
                Some(&link_format),
            ),
            (code::GET, [b"hello"]) => {
                let body = format!("hello from {}", self.name).into_bytes();
                match self.settings.hello_max_age {
                    Some(age) => {
                        let tag = etag(&body).to_vec();
                        let valid = v.options().any(|(n, t)| n == opt::ETAG && t == tag);
                        extra.push((opt::MAX_AGE, opt::uint_value(age)));
                        extra.push((opt::ETAG, tag));
                        if valid {
                            // RFC 7252 §5.9.1.3: 2.03 with the ETag, no payload.
                            (VALID, Vec::new(), None)
                        } else {
                            (code::CONTENT, body, Some(&text_plain))
                        }
                    }
                    None => (code::CONTENT, body, Some(&text_plain)),
                }
            }
            (code::GET, [b"counter"]) => {
                match v.option(opt::OBSERVE).map(opt::read_uint) {
                    Some(Some(0)) => {
                        let full = self.observers.len() >= self.settings.max_observers
                            && !self.observers.iter().any(|o| o.token == v.token());
                        if !full {
                            action = ObserveAction::Register;
                            extra.push((opt::OBSERVE, opt::uint_value(self.observe_seq())));
                        }
                    }
                    Some(Some(1)) => action = ObserveAction::Deregister,
                    _ => {}
                }
                (
                    code::CONTENT,
                    self.counter.to_string().into_bytes(),
                    Some(&text_plain),
                )
            }
            (code::GET, [b"large"]) => match self.block(v) {
                Ok((payload, block2)) => {
                    extra.push((opt::BLOCK2, block2));
                    extra.push((opt::SIZE2, opt::uint_value(self.large.len() as u32)));
                    extra.push((opt::ETAG, etag(&self.large).to_vec()));
                    (code::CONTENT, payload, Some(&text_plain))
                }
                Err(_) if multicast => return None,
                Err(c) => (c, Vec::new(), None),
            },
            (code::POST, [b"echo"]) => (code::CHANGED, v.payload().to_vec(), None),
            (_, [b"hello"] | [b"echo"] | [b"counter"] | [b"large"]) if !multicast => {
                (code::METHOD_NOT_ALLOWED, Vec::new(), None)
            }
            _ if multicast => return None,
            _ => (code::NOT_FOUND, Vec::new(), None),
        };
        let mut opts: Vec<(u16, &[u8])> = extra.iter().map(|(n, v)| (*n, &v[..])).collect();
        if let Some(cf) = cf {
            opts.push((opt::CONTENT_FORMAT, cf));
        }
        // NON for NON; a CON gets a piggybacked ACK (RFC 7252 §5.2.1).
        let (t, mid) = if v.mtype() == CON {
            (ACK, v.message_id())
        } else {
            (NON, v.message_id() ^ 0x5a5a)
        };
        Some(Answer {
            bytes: build::encode(t, c, mid, v.token(), &mut opts, &payload),
            action,
        })
    }

    /// The block of `/large` a request asks for (RFC 7959 §2.2, §2.4): block 0 of at
    /// most 1,024 bytes without a Block2 option, else NUM at the size asked, capped at
    /// 1,024 (a server may use a smaller size than asked). Its Block2 value comes along.
    fn block(&self, v: &MessageView) -> Result<(Vec<u8>, Vec<u8>), u8> {
        let (num, szx) = match v.option(opt::BLOCK2) {
            None => (0, MAX_SZX),
            Some(b) => {
                let b = opt::read_uint(b)
                    .filter(|b| *b < 1 << 24)
                    .ok_or(code::BAD_OPTION)?;
                // SZX 7 is reserved: 4.00 (RFC 7959 §2.2). Every other size is served
                // as asked (all are at most MAX_SZX).
                if b & 7 == 7 {
                    return Err(code::BAD_REQUEST);
                }
                (b >> 4, (b & 7) as u8)
            }
        };
        let size = 1usize << (szx + 4);
        let start = (num as usize).checked_mul(size).ok_or(code::BAD_OPTION)?;
        if start >= self.large.len() && start > 0 {
            // No such block: 4.02, as for a Block2 value the server cannot honour.
            return Err(code::BAD_OPTION);
        }
        let end = (start + size).min(self.large.len());
        let more = end < self.large.len();
        let value = (num << 4) | if more { 8 } else { 0 } | u32::from(szx);
        Ok((self.large[start..end].to_vec(), opt::uint_value(value)))
    }
}

/// 2.03 Valid (RFC 7252 §5.9.1.3).
const VALID: u8 = 0x43;

/// A strong ETag of the representation (RFC 7252 §5.10.6), so that a client reassembling
/// blocks can tell they are of one version (RFC 7959 §2.4): its length and a checksum.
fn etag(body: &[u8]) -> [u8; 4] {
    let mut h: u32 = 0x811c_9dc5;
    for b in body {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    h.to_be_bytes()
}

/// The type and Message ID of a reply: a piggybacked ACK for a CON, else a NON of its own
/// (RFC 7252 §5.2), as [`Resources::answer`] does.
fn reply_type(v: &MessageView) -> (u8, u16) {
    if v.mtype() == CON {
        (ACK, v.message_id())
    } else {
        (NON, v.message_id() ^ 0x5a5a)
    }
}

/// What a device answers to a request, or nothing. Error responses to group requests are
/// suppressed (RFC 10020 §3.1.2).
pub fn respond(name: &str, request: &[u8], multicast: bool) -> Option<Vec<u8>> {
    let v = MessageView::parse(request).ok()?;
    Resources::new(name, Settings::default(), 0)
        .answer(&v, multicast)
        .map(|a| a.bytes)
}

/// A simulated group member: its sockets and, with OSCORE, its member contexts.
pub struct Device {
    cfg: DeviceConfig,
    member: Option<GroupMember>,
    group_socket: UdpSocket,
    unicast: Arc<UdpSocket>,
    log_requests: bool,
    settings: Settings,
    member_file: Option<std::path::PathBuf>,
}

impl Device {
    /// Joins the group and binds the unicast socket.
    pub fn bind(cfg: DeviceConfig) -> io::Result<Self> {
        let g = sockets::multicast_receiver(cfg.group, &cfg.interface)
            .map_err(|e| io::Error::new(e.kind(), format!("join {}: {e}", cfg.group)))?;
        let u = sockets::shared_unicast(cfg.bind)
            .map_err(|e| io::Error::new(e.kind(), format!("bind {}: {e}", cfg.bind)))?;
        let member = match &cfg.oscore {
            Some((c, _)) => Some(GroupMember::new(
                SecurityContext::new(c).map_err(|e| io::Error::other(e.to_string()))?,
            )),
            None => None,
        };
        Ok(Device {
            member,
            group_socket: UdpSocket::from_std(g)?,
            unicast: Arc::new(UdpSocket::from_std(u)?),
            cfg,
            log_requests: false,
            settings: Settings::default(),
            member_file: None,
        })
    }

    /// With OSCORE: on SIGHUP this member file is read again as the group's next key
    /// epoch (RFC 10021 §12.2): new requests need it, and the notifications of every
    /// observation go on under it, with the new Gid named and a Partial IV of their
    /// own (§7.3).
    pub(crate) fn rekey_on_sighup(&mut self, file: std::path::PathBuf) {
        self.member_file = Some(file);
    }

    fn rekey(&mut self) {
        let (Some(file), Some(member)) = (&self.member_file, &mut self.member) else {
            return;
        };
        let next = crate::settings::security::MemberFile::load(file)
            .map_err(|e| e.join("; "))
            .and_then(|c| SecurityContext::new(&c).map_err(|e| e.to_string()))
            .and_then(|ctx| member.rekey(ctx, &[]).map_err(|e| e.to_string()));
        match next {
            Ok(()) => {
                let kg = member.current().common.key_generation;
                tracing::info!(event = "rekeyed", key_generation = kg);
                self.log(serde_json::json!({"device": self.cfg.name, "rekeyed": kg}));
            }
            Err(e) => tracing::warn!(event = "rekey_refused", error = %e),
        }
    }

    /// How `/counter` and `/large` behave (defaults: [`Settings::default`]).
    pub fn settings(&mut self, s: Settings) {
        self.settings = s;
    }

    /// Prints one JSON line per received datagram on stdout (`groxy device
    /// --log-requests`): the device's name, the sender, the socket it came in on (`group`
    /// or `unicast`), the datagram in hex, and whether the device answers it; and one
    /// per observer added or removed (`observe`: registered, deregistered, reset,
    /// not_acknowledged). Lets a test show from the device's side what reached it, and
    /// what did not.
    pub(crate) fn log_requests(&mut self, on: bool) {
        self.log_requests = on;
    }

    pub(crate) fn unicast_addr(&self) -> io::Result<SocketAddr> {
        self.unicast.local_addr()
    }

    fn log(&self, line: serde_json::Value) {
        if self.log_requests {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}").and_then(|()| out.flush());
        }
    }

    /// Serves until the task is dropped.
    pub async fn run(mut self) -> io::Result<()> {
        let mut gbuf = vec![0u8; 2048];
        let mut ubuf = vec![0u8; 2048];
        // Leisure jitter and the first Message ID: seeded per device so that devices on
        // one host spread out.
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        let mut rng = u64::from_ne_bytes(seed) | 1;
        let mut res = Resources::new(&self.cfg.name, self.settings.clone(), rng as u16);
        let mut ticks = tokio::time::interval_at(
            tokio::time::Instant::now() + self.settings.notify_interval,
            self.settings.notify_interval.max(Duration::from_millis(1)),
        );
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hangup = match &self.member_file {
            Some(_) => Some(tokio::signal::unix::signal(
                tokio::signal::unix::SignalKind::hangup(),
            )?),
            None => None,
        };
        loop {
            let (n, from, multicast) = tokio::select! {
                r = self.group_socket.recv_from(&mut gbuf) => { let (n, f) = r?; (n, f, true) }
                r = self.unicast.recv_from(&mut ubuf) => { let (n, f) = r?; (n, f, false) }
                _ = async { hangup.as_mut().expect("guarded").recv().await }, if hangup.is_some() => {
                    self.rekey();
                    continue;
                }
                _ = ticks.tick() => {
                    for (to, d) in res.tick(self.member.as_mut()) {
                        let _ = self.unicast.send_to(&d, to).await;
                    }
                    for l in res.take_log() {
                        self.log(serde_json::json!({
                            "device": self.cfg.name, "observe": l.event,
                            "from": l.peer.to_string(), "token": l.token,
                        }));
                    }
                    continue;
                }
            };
            let req = if multicast { &gbuf[..n] } else { &ubuf[..n] };
            let member = match (&mut self.member, &self.cfg.oscore) {
                (Some(m), Some((_, mode))) => Some((m, *mode)),
                _ => None,
            };
            let resp = res.handle(from, req, multicast, member);
            if self.log_requests {
                self.log(serde_json::json!({
                "device": self.cfg.name,
                "from": from.to_string(),
                "via": if multicast { "group" } else { "unicast" },
                "bytes": hex::encode(req),
                "answered": resp.is_some(),
                }));
            }
            for l in res.take_log() {
                self.log(serde_json::json!({
                    "device": self.cfg.name, "observe": l.event,
                    "from": l.peer.to_string(), "token": l.token,
                }));
            }
            let Some(resp) = resp else {
                continue;
            };
            if multicast && !(self.cfg.leisure.is_zero() && self.cfg.delay.is_zero()) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let delay =
                    self.cfg.delay + self.cfg.leisure.mul_f64((rng % 10_000) as f64 / 10_000.0);
                let sock = self.unicast.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = sock.send_to(&resp, from).await;
                });
            } else {
                let _ = self.unicast.send_to(&resp, from).await;
            }
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc10020_s3_1_2_no_error_responses_to_group_requests() {
        let get = |path: &[u8], t| {
            build::encode(t, code::GET, 1, &[9], &mut [(opt::URI_PATH, path)], &[])
        };
        let r = respond("d1", &get(b"hello", NON), true).unwrap();
        let v = MessageView::parse(&r).unwrap();
        assert_eq!(
            (v.code(), v.payload(), v.token(), v.mtype()),
            (code::CONTENT, &b"hello from d1"[..], &[9u8][..], NON)
        );
        assert!(respond("d1", &get(b"missing", NON), true).is_none());
        let r = respond("d1", &get(b"missing", CON), false).unwrap();
        let v = MessageView::parse(&r).unwrap();
        assert_eq!(
            (v.code(), v.mtype(), v.message_id()),
            (code::NOT_FOUND, ACK, 1)
        );
        let post = build::encode(
            NON,
            code::POST,
            2,
            &[1],
            &mut [(opt::URI_PATH, &b"echo"[..])],
            b"ping",
        );
        assert_eq!(
            MessageView::parse(&respond("d", &post, true).unwrap())
                .unwrap()
                .payload(),
            b"ping"
        );
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:40000".parse().unwrap()
    }

    fn get(path: &[u8], token: &[u8], extra: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut o: Vec<(u16, &[u8])> = vec![(opt::URI_PATH, path)];
        o.extend(extra.iter().map(|(n, v)| (*n, &v[..])));
        build::encode(NON, code::GET, 3, token, &mut o, &[])
    }

    fn observe_of(d: &[u8]) -> Option<u32> {
        MessageView::parse(d)
            .unwrap()
            .option(opt::OBSERVE)
            .and_then(opt::read_uint)
    }

    /// RFC 7641 §3.1, §4.4: a registration is answered with Observe and the observer
    /// gets one notification per change, its Observe value one up each time, under its
    /// token; every `con_every`-th is CON (§4.5). §3.6: Observe 1 deregisters.
    #[test]
    fn rfc7641_s4_registration_notifications_deregistration() {
        let s = Settings {
            con_every: 3,
            ..Settings::default()
        };
        let mut r = Resources::new("d", s, 100);
        let first = r
            .handle(
                peer(),
                &get(b"counter", &[7], &[(opt::OBSERVE, vec![])]),
                true,
                None,
            )
            .unwrap();
        assert_eq!(observe_of(&first), Some(0));
        assert_eq!(r.observers(), 1);
        let mut types = Vec::new();
        for k in 1..=6u32 {
            let n = r.tick(None);
            assert_eq!(n.len(), 1);
            let v = MessageView::parse(&n[0].1).unwrap();
            assert_eq!((v.token(), observe_of(&n[0].1)), (&[7u8][..], Some(k)));
            assert_eq!(v.payload(), k.to_string().as_bytes());
            types.push(v.mtype());
            if v.mtype() == CON {
                r.handle(peer(), &build::empty(ACK, v.message_id()), false, None);
            }
        }
        assert_eq!(types, [NON, NON, CON, NON, NON, CON]);
        let bye = r
            .handle(
                peer(),
                &get(b"counter", &[7], &[(opt::OBSERVE, vec![1])]),
                false,
                None,
            )
            .unwrap();
        assert_eq!(
            observe_of(&bye),
            None,
            "a plain response to a deregistration"
        );
        assert_eq!(r.observers(), 0);
        assert!(r.tick(None).is_empty());
        assert_eq!(r.take_log().last().unwrap().event, "deregistered");
    }

    /// RFC 7641 §3.6: an RST to a notification ends the observation; §4.5: so does a CON
    /// notification left unacknowledged; §4.1: the table is bounded, a registration past
    /// it is answered without Observe; the same token again replaces the entry.
    #[test]
    fn rfc7641_s3_6_reset_unacknowledged_and_table_bound() {
        let s = Settings {
            con_every: 1,
            max_observers: 2,
            ..Settings::default()
        };
        let mut r = Resources::new("d", s, 0);
        let reg = |t: u8| get(b"counter", &[t], &[(opt::OBSERVE, vec![])]);
        r.handle(peer(), &reg(1), true, None);
        r.handle(peer(), &reg(1), true, None);
        r.handle(peer(), &reg(2), true, None);
        let third = r.handle(peer(), &reg(3), true, None).unwrap();
        assert_eq!((r.observers(), observe_of(&third)), (2, None));
        let n = r.tick(None);
        assert_eq!(n.len(), 2);
        let mid = |d: &[u8]| MessageView::parse(d).unwrap().message_id();
        let tok = |d: &[u8]| MessageView::parse(d).unwrap().token().to_vec();
        let (a, b) = (&n[0].1, &n[1].1);
        // One RSTs its notification; the other does not acknowledge its CON.
        r.handle(peer(), &build::empty(RST, mid(a)), false, None);
        assert_eq!(r.observers(), 1);
        let left = tok(b);
        assert!(r.tick(None).is_empty(), "the unacknowledged one is gone");
        let log: Vec<_> = r.take_log().into_iter().map(|l| l.event).collect();
        assert_eq!(
            log,
            [
                "registered",
                "registered",
                "registered",
                "reset",
                "not_acknowledged"
            ]
        );
        assert_eq!(r.observers(), 0, "{left:?}");
    }

    /// RFC 7959 §2.2, §2.4: /large in the size asked (block NUM at NUM * size), M set
    /// until the last, Size2 and one ETag; without Block2 1,024-byte blocks; SZX 7 4.00.
    #[test]
    fn rfc7959_s2_4_large_in_any_block_size() {
        let r = Resources::new("d", Settings::default(), 0);
        let body = r.large().to_vec();
        assert_eq!(body.len(), 3000);
        for szx in 0..=6u32 {
            let size = 16usize << szx;
            let mut got = Vec::new();
            let mut etags = std::collections::HashSet::new();
            for num in 0.. {
                let req = get(
                    b"large",
                    &[1],
                    &[(opt::BLOCK2, opt::uint_value(num << 4 | szx))],
                );
                let a = r.answer(&MessageView::parse(&req).unwrap(), false).unwrap();
                let v = MessageView::parse(&a.bytes).unwrap();
                let b2 = opt::read_uint(v.option(opt::BLOCK2).unwrap()).unwrap();
                assert_eq!((b2 >> 4, b2 & 7), (num, szx));
                assert!(v.payload().len() <= size);
                etags.insert(v.option(opt::ETAG).unwrap().to_vec());
                got.extend_from_slice(v.payload());
                if b2 & 8 == 0 {
                    break;
                }
                assert_eq!(v.payload().len(), size);
            }
            assert_eq!(got, body, "szx {szx}");
            assert_eq!(etags.len(), 1);
        }
        let plain = get(b"large", &[1], &[]);
        let a = r
            .answer(&MessageView::parse(&plain).unwrap(), false)
            .unwrap();
        let v = MessageView::parse(&a.bytes).unwrap();
        assert_eq!(opt::read_uint(v.option(opt::BLOCK2).unwrap()), Some(8 | 6));
        assert_eq!(opt::read_uint(v.option(opt::SIZE2).unwrap()), Some(3000));
        let bad = get(b"large", &[1], &[(opt::BLOCK2, vec![7])]);
        let a = r.answer(&MessageView::parse(&bad).unwrap(), false).unwrap();
        assert_eq!(
            MessageView::parse(&a.bytes).unwrap().code(),
            code::BAD_REQUEST
        );
        let past = get(
            b"large",
            &[1],
            &[(opt::BLOCK2, opt::uint_value(100 << 4 | 6))],
        );
        assert!(
            r.answer(&MessageView::parse(&past).unwrap(), true)
                .is_none()
        );
    }

    /// `--hello-max-age` (issue 16, for testing a caching proxy): /hello carries that
    /// Max-Age and an ETag; a GET naming the ETag gets 2.03 with both, no payload (RFC
    /// 7252 §5.9.1.3, §5.10.6).
    #[test]
    fn rfc7252_s5_10_6_hello_max_age_and_etag_validation() {
        let s = Settings {
            hello_max_age: Some(4),
            ..Settings::default()
        };
        let mut r = Resources::new("d", s, 0);
        let first = r
            .handle(peer(), &get(b"hello", &[1], &[]), true, None)
            .unwrap();
        let v = MessageView::parse(&first).unwrap();
        assert_eq!(v.code(), code::CONTENT);
        assert_eq!(v.option(opt::MAX_AGE), Some(&[4][..]));
        let tag = v.option(opt::ETAG).unwrap().to_vec();
        let again = r
            .handle(
                peer(),
                &get(b"hello", &[2], &[(opt::ETAG, tag.clone())]),
                true,
                None,
            )
            .unwrap();
        let v = MessageView::parse(&again).unwrap();
        assert_eq!(v.code(), VALID);
        assert_eq!(v.option(opt::ETAG), Some(tag.as_slice()));
        assert!(v.payload().is_empty());
        // Without the flag: neither option.
        let mut plain = Resources::new("d", Settings::default(), 0);
        let a = plain
            .handle(peer(), &get(b"hello", &[3], &[]), true, None)
            .unwrap();
        assert!(MessageView::parse(&a).unwrap().option(opt::ETAG).is_none());
    }
}
