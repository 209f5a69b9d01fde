//! The forwarding engine (groupcomm-proxy-07 §5, RFC 10020 §3.5, RFC 7252 §5.7), sans I/O:
//! datagrams and the current time go in through [`Engine::handle`] and
//! [`Engine::handle_timeout`]; datagrams to send and events come out of
//! [`Engine::poll_output`]; [`Engine::poll_timeout`] says when to call back.

mod cache;
mod chain;
mod filter;
mod member;
mod observe;
mod reconfigure;
mod response;
mod reverse;
mod timers;
mod tokens;

pub use member::SSN_BLOCK;
// What `Shared` holds for every thread (issue 14 point 2, `shared.rs`).
pub(crate) use cache::Store as CacheStore;
pub(crate) use reverse::Servers;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// The engine's maps: hashed with a per-map random seed (keys are partly chosen by
/// clients), faster than SipHash on the forwarding path.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::config::Policy;
use super::config::{GroupSpec, ProxyConfig};
use super::events::{CloseReason, DropReason, Event, RejectReason};
use super::mids::{MessageIds, MidError};
use super::tables::{Bucket, Dedup, Duplicate, EXCHANGE_LIFETIME, NON_LIFETIME};
use crate::coap::build::{self, ACK, CON, NON, RST, code};
use crate::coap::options::{self as opt, is_critical, is_unsafe, read_uint, uint_value};
use crate::coap::uri::{Host, Target, proxy_target};
use crate::coap::{MessageView, Token};
use crate::oscore::checker::CheckedRequest;
use crate::oscore::replay::ResponseNumbers;
use crate::oscore::{ConfigError, GroupChecker, GroupMember, SecurityContext, SignatureChecker};
use chacha20::ChaCha20Rng;
use chacha20::rand_core::{Rng, SeedableRng};
use member::Outer;

/// The engine's randomness, drawn once by the driver from the operating system (the
/// engine itself does no I/O).
#[derive(Clone, Copy)]
pub struct Seed(pub [u8; 32]);

impl From<[u8; 32]> for Seed {
    fn from(bytes: [u8; 32]) -> Self {
        Seed(bytes)
    }
}

/// A deterministic seed for tests and benches: engines built from the same number draw
/// the same tokens and values. Never for production, where 64 bits are too few.
impl From<u64> for Seed {
    fn from(n: u64) -> Self {
        use sha2::Digest;
        Seed(sha2::Sha256::digest(n.to_be_bytes()).into())
    }
}

/// RFC 7252 §4.8 transmission parameters.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_RETRANSMIT: u8 = 4;
/// Period of the sweep that ages deduplication entries and idle clients.
const SWEEP: Duration = Duration::from_secs(5);
/// Devices' CON responses remembered per exchange for deduplication.
const MAX_SEEN_PER_EXCHANGE: usize = 64;

/// Where a datagram came in or goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Link {
    /// A client-facing listener, by index.
    Listener(usize),
    /// An egress socket of a group: the group's index in the configuration and the
    /// port's in its pool (`limits.egress_ports`); the devices' responses arrive on it.
    Group(usize, u16),
    /// A socket toward unicast origins, by port in the pool (one socket per address
    /// family and port in the runtime).
    Unicast(u16),
}

/// A destination of the proxy's messages: the socket they leave by and the peer. Message
/// IDs are per destination (RFC 7252 §4.4). Packed into four words and hashed as such:
/// it is looked up for every message sent, and the derived hashes of `Link` and
/// `SocketAddr` feed the hasher field by field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dest([u64; 4]);

impl Dest {
    fn new(link: Link, to: SocketAddr) -> Self {
        let link = match link {
            Link::Listener(i) => (i as u64) << 2,
            Link::Group(g, p) => ((g as u64) << 18) | ((p as u64) << 2) | 1,
            Link::Unicast(p) => ((p as u64) << 2) | 2,
        };
        let (ip, scope) = match to {
            SocketAddr::V4(a) => ([u32::from(*a.ip()) as u64, 0], 0),
            SocketAddr::V6(a) => {
                let ip = u128::from(*a.ip());
                (
                    [ip as u64, (ip >> 64) as u64],
                    a.scope_id() as u64 | 1 << 32,
                )
            }
        };
        Dest([ip[0], ip[1], (link << 16) | to.port() as u64, scope])
    }
}

impl std::hash::Hash for Dest {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        for w in self.0 {
            h.write_u64(w);
        }
    }
}

/// How the request of an exchange was protected: an Early Stop Request must come with
/// the same (groupcomm-proxy §5.2.3), or anyone who can send from the client's address
/// could end an authenticated client's exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requester {
    /// Known by its address only.
    Address,
    /// Through the proxy's OSCORE layer of `group`, as member `kid`.
    Layer { group: usize, kid: Vec<u8> },
    /// A group-mode request the signature checker verified as from `kid`.
    Signed { kid: Vec<u8> },
}

/// A datagram for the driver to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Transmit {
    /// The socket it leaves by.
    pub link: Link,
    /// Its destination.
    pub to: SocketAddr,
    /// The whole datagram; give the buffer back with [`Engine::recycle`] once sent.
    pub bytes: Vec<u8>,
}

/// What the engine asks of its driver, in order (see [`Engine::poll_output`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send a datagram.
    Transmit(Transmit),
    /// Count or log something that happened (metrics, logs).
    Event(Event),
    /// Record on stable storage that the proxy's Sender Sequence Numbers in `group` may
    /// go up to `up_to`, then call [`Engine::ssn_reserved`] (RFC 10021 §2.6.1.1: no
    /// nonce reuse after a crash).
    ReserveSsn {
        /// The group, by index in the configuration.
        group: usize,
        /// The bound to record.
        up_to: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Group(usize),
    Unicast(SocketAddr),
}

impl Kind {
    fn group(self) -> Option<usize> {
        match self {
            Kind::Group(g) => Some(g),
            Kind::Unicast(_) => None,
        }
    }
}

/// What an exchange forwards to, with the state only that kind has.
#[derive(Debug)]
enum Route {
    /// A group request: until T', every device's response is relayed with Reply-From.
    Group {
        group: usize,
        /// The verified group-mode request, for checking its responses (§7.5). Boxed:
        /// only checked groups have one, and the table stays compact.
        checked: Option<Box<CheckedRequest>>,
        /// Partial IVs of verified responses per server (RFC 10021 §5.3.1).
        numbers: ResponseNumbers,
        /// Devices' CON responses seen, (source, Message ID).
        seen_con: Vec<(SocketAddr, u16)>,
        /// The next proxy of a chain (groupcomm-proxy §8), which the request went to
        /// instead of the group: responses come from it, Reply-From already on.
        via: Option<SocketAddr>,
        /// A Deterministic Request's binding (cacheable-oscore §3.4.4), for checking its
        /// responses before the cache stores them for every client. Boxed, as `checked`.
        deterministic: Option<Box<filter::DetRequest>>,
    },
    /// A unicast request: the first response ends it.
    Unicast {
        origin: SocketAddr,
        /// Message ID of the CON request sent to the origin (an ACK or RST names it).
        con_mid: Option<u16>,
    },
}

impl Route {
    fn kind(&self) -> Kind {
        match self {
            Route::Group { group, .. } => Kind::Group(*group),
            Route::Unicast { origin, .. } => Kind::Unicast(*origin),
        }
    }

    fn group(&self) -> Option<usize> {
        self.kind().group()
    }
}

/// An exchange in flight: a forwarded request whose responses the proxy relays until it
/// ends (named apart from `oscore::Exchange`, the request binding of a protected message).
#[derive(Debug)]
struct InFlight {
    route: Route,
    client: SocketAddr,
    listener: usize,
    client_token: Token,
    client_con: bool,
    started: Instant,
    deadline: Instant,
    responses: u32,
    /// The socket the request left by (a group's or the unicast pool's port).
    egress: Link,
    requester: Requester,
    /// Message IDs of the NON responses relayed to the client, the latest at most
    /// MAX_SEEN_PER_EXCHANGE (an RST names one of them, §5.2.3).
    relayed_non: VecDeque<u16>,
    /// The OSCORE layer shared with the client, for protecting each relayed response
    /// (boxed: only secured exchanges have one).
    outer: Option<Box<Outer>>,
    /// The observation this exchange carries, if its request registered one (see
    /// `observe.rs`; boxed: most exchanges have none).
    observe: Option<Box<observe::Observation>>,
    /// Reverse-proxy mode standing in for the servers (groupcomm-proxy §6.1): the
    /// proxy's address that Reply-From names (see `reverse.rs`).
    stands_in: Option<SocketAddr>,
}

#[derive(Debug)]
struct Pending {
    bytes: Vec<u8>,
    attempts: u8,
    timeout: Duration,
    next: Instant,
    /// The exchange a response to a client belongs to (an RST from the client stops it).
    exchange: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Exchange(u64),
    Retransmit(Link, SocketAddr, u16),
    Sweep,
    /// The grace period of a group's previous key epoch ends.
    DropPrevious(usize),
}

use super::shared::{Client, Shared};

/// Where a request goes, resolved once from its proxy target.
#[derive(Debug, Clone, Copy)]
enum Destination {
    Group(usize),
    Origin(SocketAddr),
}

/// A request on its way out: where it came from and what it carries on.
struct Forward<'a> {
    listener: usize,
    from: SocketAddr,
    view: &'a MessageView<'a>,
    target: Target<'a>,
    /// Hop-Limit decremented (RFC 8768), if the request had one.
    hop_limit: Option<u8>,
}

/// What a new exchange starts with.
struct Opening {
    route: Route,
    listener: usize,
    client: SocketAddr,
    /// The proxy's token for the forwarded request.
    token: u64,
    timeout: Duration,
    /// The socket the request left by.
    egress: Link,
    requester: Requester,
}

/// A response the proxy itself makes (its own resources).
struct Local {
    code: u8,
    options: Vec<(u16, Vec<u8>)>,
    payload: Vec<u8>,
}

/// A request the filter refused.
enum Filtered {
    Drop,
}

/// A refusal: the code, the reason for counting, and what goes into the error response.
struct Reject {
    code: u8,
    reason: RejectReason,
    group: Option<usize>,
    options: Vec<(u16, Vec<u8>)>,
    diagnostic: &'static str,
    /// A diagnostic made at run time, instead of `diagnostic` (the 5.08's, RFC 8768 §4).
    payload: Option<Vec<u8>>,
}

impl Reject {
    fn new(code: u8, reason: RejectReason, diagnostic: &'static str) -> Self {
        Reject {
            code,
            reason,
            group: None,
            options: Vec::new(),
            diagnostic,
            payload: None,
        }
    }
    fn group(mut self, g: usize) -> Self {
        self.group = Some(g);
        self
    }
    /// Max-Age 0: an OSCORE error must not be cached (RFC 8613 §8.2).
    fn no_cache(mut self) -> Self {
        self.options.push((opt::MAX_AGE, Vec::new()));
        self
    }
    /// No CoAP error: what the signature filter drops (see `on_client_datagram`).
    fn silent() -> Self {
        Reject::new(0, RejectReason::SignatureCheck, "")
    }
    fn max_age(mut self, d: Duration) -> Self {
        let secs = d.as_secs_f64().ceil().max(1.0) as u32;
        self.options.push((opt::MAX_AGE, uint_value(secs)));
        self
    }
}

/// The forwarding engine: one proxy's protocol state, driven by datagrams and time.
///
/// The driver feeds it every datagram with [`Engine::handle`] and calls
/// [`Engine::handle_timeout`] when [`Engine::poll_timeout`] says; after each call it
/// takes every [`Output`] with [`Engine::poll_output`] and carries them out in order
/// (replay state first, see [`Engine::take_replay_state`]). The engine does no I/O and
/// reads no clock, so every rule can be tested on a virtual clock.
pub struct Engine {
    cfg: ProxyConfig,
    /// Per group, the signature checker with its replay windows (None: checking off).
    checkers: Vec<Option<GroupChecker>>,
    /// Per group, the proxy's own membership (None: not a member).
    members: Vec<Option<GroupMember>>,
    /// Shutting down: no new exchanges.
    draining: bool,
    exchanges: HashMap<u64, InFlight>,
    /// (client, client token) of every exchange, for early stop and token reuse.
    by_client: HashMap<(SocketAddr, Token), u64>,
    /// What this engine shares with those of the other forwarding threads: the replay
    /// windows, the client table and the exchange count, the token key (`shared.rs`).
    shared: Shared,
    /// The client whose request `admit` let in during the current request: one slot of
    /// the whole proxy's exchange table and of that client's exchanges is taken at the
    /// check itself, so that threads admitting at once cannot pass the bounds together;
    /// `open` turns it into the exchange, and a request that ends without one gives it
    /// back (`process`).
    reserved: Option<IpAddr>,
    dedup: Dedup,
    /// CON messages awaiting their ACK, by destination and Message ID.
    pending: HashMap<(Link, SocketAddr, u16), Pending>,
    /// NON responses relayed to clients, by destination and Message ID: the exchange an
    /// RST to one of them ends.
    relayed_non: HashMap<(Link, SocketAddr, u16), u64>,
    mids: MessageIds<Dest>,
    /// The time of the datagram or timer being handled (given by the caller).
    now: Instant,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    /// Exchange deadlines, earliest first, cleaned lazily (an exchange that ended early
    /// stays until it comes up): the Max-Age of a refusal at a full table without a scan.
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    tokens: tokens::TokenSpace,
    /// Echo values, jitter: a CSPRNG seeded once by the driver (RFC 9175 §2).
    rng: ChaCha20Rng,
    out: VecDeque<Output>,
    /// Buffers of sent datagrams, given back by the driver for the next messages.
    spare: Vec<Vec<u8>>,
    /// Observations: counts per client, rate buckets, ended tokens (`observe.rs`).
    observers: observe::Observers,
    /// Batched signature verification: its CSPRNG and the current receive batch's
    /// verdicts (see `filter.rs`).
    batch: filter::BatchState,
    /// The response cache (groupcomm-proxy §7, see `cache.rs`).
    cache: cache::Cache,
    /// Reverse-proxy mode (`reverse.rs`): per group, the servers follow-ups may name
    /// (bounded by the resources' `max_servers`), and the follow-up being forwarded.
    /// The proxy's: every thread's engine shares them (`Shared::reverse_servers`).
    reverse_servers: std::sync::Arc<std::sync::Mutex<Vec<reverse::Servers>>>,
    reverse_grant: Option<SocketAddr>,
}

/// A message's options on their way into another message: on the stack for the usual
/// handful.
type Options<'a> = smallvec::SmallVec<[(u16, &'a [u8]); 16]>;

/// Spare buffers kept at most (a burst's worth; more are freed).
const MAX_SPARE: usize = 256;

impl Engine {
    /// `seed` keys the token permutation and seeds the engine's CSPRNG (Echo values,
    /// Message ID offsets, retransmission jitter); give it 32 bytes from the operating
    /// system in production so that none of them can be guessed (RFC 9175 §2, §4).
    pub fn new(cfg: ProxyConfig, now: Instant, seed: impl Into<Seed>) -> Result<Self, ConfigError> {
        Self::build(cfg, now, seed.into(), None)
    }

    /// An engine of one of several forwarding threads (`[proxy] threads`): like
    /// [`new`](Self::new), with the state every thread must see the same (replay windows,
    /// client limits, the exchange table's bound, the token key) taken from `shared`,
    /// this engine being `shared`'s thread. Give each engine its own `seed`.
    pub fn with_shared(
        cfg: ProxyConfig,
        now: Instant,
        seed: impl Into<Seed>,
        shared: Shared,
    ) -> Result<Self, ConfigError> {
        Self::build(cfg, now, seed.into(), Some(shared))
    }

    fn build(
        cfg: ProxyConfig,
        now: Instant,
        seed: Seed,
        shared: Option<Shared>,
    ) -> Result<Self, ConfigError> {
        let seed = seed.0;
        let mut rng = ChaCha20Rng::from_seed(seed);
        // The batch equations' coefficients from a stream of their own, so that batching
        // leaves the engine's other random draws as they were.
        let batch_seed: [u8; 32] = {
            use sha2::Digest;
            sha2::Sha256::new()
                .chain_update(b"groxy batch verification coefficients")
                .chain_update(seed)
                .finalize()
                .into()
        };
        // Drawn either way, so that the engine's later draws do not depend on sharing.
        let mut token_key = [0u8; 16];
        rng.fill_bytes(&mut token_key);
        let shared = shared.unwrap_or_else(|| Shared::new(1, token_key));
        let checkers = cfg
            .groups
            .iter()
            .enumerate()
            .map(|(g, spec)| match &spec.security {
                Some(s) if s.policy != Policy::Off => SignatureChecker::new(&s.checker)
                    .map(|c| Some(GroupChecker::with_windows(c, shared.windows(g)))),
                _ => Ok(None),
            })
            .collect::<Result<Vec<_>, _>>()?;
        // The proxy's own membership: its Sender Sequence Numbers, its peers' replay
        // windows and its Echo values are the whole proxy's (`Shared::share_member`), as
        // are its reservations on stable storage (one in flight per group).
        let members = cfg
            .groups
            .iter()
            .enumerate()
            .map(
                |(g, spec)| match spec.security.as_ref().and_then(|s| s.member.as_ref()) {
                    Some(m) => SecurityContext::new(m).map(|mut c| {
                        shared.share_member(g, &mut c, false);
                        Some(GroupMember::new(c))
                    }),
                    None => Ok(None),
                },
            )
            .collect::<Result<Vec<_>, _>>()?;
        // Group-ETag values from a stream of their own, as the batch seed above.
        let etag_seed = {
            use sha2::Digest;
            let d: [u8; 32] = sha2::Sha256::new()
                .chain_update(b"groxy group-etag values")
                .chain_update(seed)
                .finalize()
                .into();
            u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
        };
        let cfg_limits_destinations = cfg.limits.max_destinations;
        // The proxy's cache store and stand-in servers: made by the first engine (with
        // its Group-ETag seed and bounds), the same for every engine after it.
        let store = shared.cache_store(|| {
            cache::Store::new(etag_seed, cfg.cache.max_entries, cfg.cache.max_bytes)
        });
        let reverse_servers = shared.reverse_servers(cfg.groups.len());
        let mut e = Engine {
            checkers,
            members,
            draining: false,
            dedup: Dedup::new(cfg.limits.dedup_capacity, cfg.limits.dedup_per_client),
            cfg,
            exchanges: HashMap::default(),
            by_client: HashMap::default(),
            pending: HashMap::default(),
            relayed_non: HashMap::default(),
            mids: MessageIds::new(cfg_limits_destinations),
            now,
            timers: BinaryHeap::new(),
            deadlines: BinaryHeap::new(),
            tokens: tokens::TokenSpace::part(shared.token_key(), shared.index().0 as u16),
            shared,
            reserved: None,
            rng,
            batch: filter::BatchState::new(batch_seed),
            out: VecDeque::new(),
            spare: Vec::new(),
            observers: observe::Observers::default(),
            cache: cache::Cache::new(store),
            reverse_servers,
            reverse_grant: None,
        };
        e.timers.push(Reverse((now + SWEEP, Timer::Sweep)));
        Ok(e)
    }

    /// How many timers are scheduled (bounded, see `push_timer`).
    pub fn timers(&self) -> usize {
        self.timers.len()
    }

    /// The checker of a group, if its traffic is checked.
    pub fn checker(&self, group: usize) -> Option<&GroupChecker> {
        self.checkers.get(group).and_then(Option::as_ref)
    }

    /// The configuration in force (the latest applied by [`Engine::reconfigure`]).
    pub fn config(&self) -> &ProxyConfig {
        &self.cfg
    }

    /// Exchanges in flight, and the table's capacity: of the whole proxy, every engine
    /// sharing this one's [`Shared`] state counted (`max_exchanges` bounds them together).
    pub fn exchanges(&self) -> (usize, usize) {
        (self.shared.exchanges(), self.cfg.limits.max_exchanges)
    }

    /// This engine's forwarding thread and how many there are (`[proxy] threads`).
    pub fn thread(&self) -> (usize, usize) {
        self.shared.index()
    }

    /// The next thing for the driver to do, oldest first; `None` when there is nothing
    /// left from the calls so far.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Gives back the buffer of a datagram that was sent, to build later ones in.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.spare.len() < MAX_SPARE && buf.capacity() <= 2048 {
            self.spare.push(buf);
        }
    }

    /// [`build::encode`] into a recycled buffer.
    fn encode(
        &mut self,
        mtype: u8,
        code: u8,
        mid: u16,
        token: &[u8],
        opts: &mut [(u16, &[u8])],
        payload: &[u8],
    ) -> Vec<u8> {
        let mut bytes = self.spare.pop().unwrap_or_default();
        build::encode_into(&mut bytes, mtype, code, mid, token, opts, payload);
        bytes
    }

    /// When [`Engine::handle_timeout`] must be called next (the earliest deadline,
    /// retransmission, sweep or end of a key epoch's grace period).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    fn emit(&mut self, e: Event) {
        self.out.push_back(Output::Event(e));
    }

    fn send(&mut self, link: Link, to: SocketAddr, bytes: Vec<u8>) {
        self.out
            .push_back(Output::Transmit(Transmit { link, to, bytes }));
    }

    fn drop_msg(&mut self, reason: DropReason, from: SocketAddr) {
        self.emit(Event::Dropped { reason, from });
    }

    /// A Message ID toward `to` through `link` that no message toward it still live
    /// has (RFC 7252 §4.4), or a counted drop. `priority`: the message belongs to an
    /// admitted exchange (see [`MessageIds`]).
    fn mid_to(&mut self, link: Link, to: SocketAddr, con: bool, priority: bool) -> Option<u16> {
        let lifetime = if con { EXCHANGE_LIFETIME } else { NON_LIFETIME };
        let rng = &mut self.rng;
        match self
            .mids
            .allocate(self.now, Dest::new(link, to), lifetime, priority, || {
                rng.next_u64() as u16
            }) {
            Ok(mid) => Some(mid),
            Err(e) => {
                let reason = match e {
                    MidError::Exhausted { .. } => DropReason::MessageIdsExhausted,
                    MidError::TableFull => DropReason::DestinationsFull,
                };
                self.drop_msg(reason, to);
                None
            }
        }
    }

    /// The first port of the pool (`port` makes its link) with a Message ID free toward
    /// `to`; else a 5.03 with Max-Age until one is free again.
    fn egress_port(&mut self, to: SocketAddr, port: impl Fn(u16) -> Link) -> Result<Link, Reject> {
        let mut free_at: Option<Instant> = None;
        for p in 0..self.cfg.limits.egress_ports.max(1) {
            match self.mids.check(self.now, Dest::new(port(p), to), true) {
                Ok(()) => return Ok(port(p)),
                Err(MidError::Exhausted { free_at: t }) => {
                    free_at = Some(free_at.map_or(t, |f| f.min(t)));
                }
                Err(MidError::TableFull) => {}
            }
        }
        Err(self.mids_exhausted(free_at))
    }

    /// Room toward the client for the responses of a new exchange.
    fn client_room(&mut self, link: Link, client: SocketAddr) -> Result<(), Reject> {
        match self.mids.check(self.now, Dest::new(link, client), true) {
            Ok(()) => Ok(()),
            Err(MidError::Exhausted { free_at }) => Err(self.mids_exhausted(Some(free_at))),
            Err(MidError::TableFull) => Err(self.mids_exhausted(None)),
        }
    }

    fn mids_exhausted(&self, free_at: Option<Instant>) -> Reject {
        let wait = free_at.map_or(SWEEP, |t| t.saturating_duration_since(self.now));
        Reject::new(
            code::SERVICE_UNAVAILABLE,
            RejectReason::MessageIdsExhausted,
            "no Message ID free toward the destination",
        )
        .max_age(wait)
    }

    /// A token of the proxy's, never used before (see [`tokens`]).
    fn token(&mut self) -> u64 {
        self.tokens.issue()
    }

    /// ACK_TIMEOUT * [1, ACK_RANDOM_FACTOR = 1.5] (RFC 7252 §4.8).
    fn jitter(&mut self) -> Duration {
        let r = self.rng.next_u64();
        ACK_TIMEOUT + ACK_TIMEOUT.mul_f64((r % 1000) as f64 / 2000.0)
    }

    /// A datagram arrived on `link` from `from`.
    pub fn handle(&mut self, now: Instant, link: Link, from: SocketAddr, datagram: &[u8]) {
        self.now = now;
        if datagram.len() > self.cfg.limits.max_datagram {
            return self.drop_msg(DropReason::TooLarge, from);
        }
        let view = match MessageView::parse(datagram) {
            Ok(v) => v,
            Err(_) => {
                // RFC 7252 §4.2: a CON with a format error is rejected with an RST.
                if datagram.len() >= 4 && datagram[0] >> 6 == 1 && (datagram[0] >> 4) & 3 == CON {
                    let mid = u16::from_be_bytes([datagram[2], datagram[3]]);
                    self.send(link, from, build::empty(RST, mid));
                }
                return self.drop_msg(DropReason::Malformed, from);
            }
        };
        match link {
            Link::Listener(i) => self.on_client_datagram(now, i, from, &view),
            Link::Group(..) | Link::Unicast(_) => self.on_origin_datagram(now, link, from, &view),
        }
    }

    /// A receive batch: the datagrams one receive call returned on `link`, handled in
    /// order with the same outputs as [`handle`](Self::handle) on each, the signatures of
    /// the group-mode requests among them verified together first (see
    /// [`begin_batch`](Self::begin_batch)). Nothing waits for a batch to fill.
    pub fn handle_batch(&mut self, now: Instant, link: Link, datagrams: &[(SocketAddr, &[u8])]) {
        self.begin_batch(now, link, datagrams);
        for &(from, d) in datagrams {
            self.handle(now, link, from, d);
        }
        self.end_batch();
    }

    fn on_client_datagram(
        &mut self,
        now: Instant,
        listener: usize,
        from: SocketAddr,
        view: &MessageView,
    ) {
        let mtype = view.mtype();
        if mtype == ACK || mtype == RST {
            return self.client_ack_or_reset(Link::Listener(listener), from, view);
        }
        if view.code() == code::EMPTY {
            // A CON ping is answered with an RST (RFC 7252 §4.3).
            if mtype == CON {
                self.send(
                    Link::Listener(listener),
                    from,
                    build::empty(RST, view.message_id()),
                );
            }
            return;
        }
        if !view.is_request() {
            return self.drop_msg(DropReason::UnexpectedMessage, from);
        }
        let mid = view.message_id();
        let con = mtype == CON;
        if let Some(Duplicate(reply)) = self.dedup.lookup(from, mid, now) {
            // RFC 7252 §4.5: a duplicate is not processed again; a CON gets the same reply.
            if let Some(r) = reply {
                self.send(Link::Listener(listener), from, r);
            }
            return self.drop_msg(DropReason::DuplicateRequest, from);
        }
        // A request is processed only if it can be recorded: a full table (other senders
        // cannot evict this one's entries, see `Dedup`) refuses it, as processing it
        // unrecorded could let a retransmission be processed twice.
        if let Err(free_at) = self.dedup.room(from, now) {
            let r = Reject::new(
                code::SERVICE_UNAVAILABLE,
                RejectReason::DedupFull,
                "deduplication table full",
            )
            .max_age(free_at.saturating_duration_since(now));
            if let Some(reply) = self.error_reply(listener, from, con, mid, view.token(), r) {
                self.send(Link::Listener(listener), from, reply);
            }
            return;
        }
        self.client_request(now, listener, from, view);
    }

    /// A request from a client, new to the message layer. oscore-capable-proxies §2.4
    /// steps 5-6: an OSCORE request that names no proxy target outside is for the proxy
    /// itself; its layer comes off first, and after lost state freshness is proven first
    /// (RFC 10021 §9, Echo).
    fn client_request(
        &mut self,
        now: Instant,
        listener: usize,
        from: SocketAddr,
        view: &MessageView,
    ) {
        let (con, mid) = (view.mtype() == CON, view.message_id());
        if !self.is_for_proxy_layer(view) {
            return self.process(now, listener, from, (view, None), (con, mid));
        }
        let (inner_bytes, mut o) = match self.remove_outer_layer(view) {
            Ok(removed) => removed,
            Err(r) => {
                // Not protected: no layer was removed to protect it with (RFC 8613 §8.2).
                if let Some(reply) = self.error_reply(listener, from, con, mid, view.token(), r) {
                    self.send(Link::Listener(listener), from, reply);
                }
                return;
            }
        };
        let Ok(inner) = MessageView::parse(&inner_bytes) else {
            return self.drop_msg(DropReason::Malformed, from);
        };
        if let Err(challenge) = self.check_freshness(&mut o, &inner, (listener, from), con, mid) {
            // Not processed, so not recorded: a retransmission gets a challenge of its own.
            return self.send(Link::Listener(listener), from, challenge);
        }
        self.process(now, listener, from, (&inner, Some(o)), (con, mid));
    }

    /// Checks a request (without the proxy's layer, `outer` if it had one) and forwards
    /// or answers it; the answer goes back under the layer. Recorded for deduplication
    /// only if processed: a refusal is made again, the same, for a retransmission (a
    /// token reuse ended an exchange: processed). `con` and `mid` are the message's.
    fn process(
        &mut self,
        now: Instant,
        listener: usize,
        from: SocketAddr,
        (view, mut outer): (&MessageView, Option<Outer>),
        (con, mid): (bool, u16),
    ) {
        let result = self.request(now, listener, from, view, &mut outer);
        self.release_reservation();
        let processed = match &result {
            Ok(_) => true,
            Err(r) => r.reason == RejectReason::TokenReuse,
        };
        if processed {
            let lifetime = if con { EXCHANGE_LIFETIME } else { NON_LIFETIME };
            self.dedup.record(from, mid, now, lifetime);
        }
        let reply = match result {
            Ok(Some(local)) => {
                let (t, m) = if con {
                    (ACK, mid)
                } else {
                    match self.mid_to(Link::Listener(listener), from, false, false) {
                        Some(m) => (NON, m),
                        None => return,
                    }
                };
                let mut opts: Vec<(u16, &[u8])> = local
                    .options
                    .iter()
                    .map(|(n, v)| (*n, v.as_slice()))
                    .collect();
                Some(build::encode(
                    t,
                    local.code,
                    m,
                    view.token(),
                    &mut opts,
                    &local.payload,
                ))
            }
            Ok(None) if con => Some(build::empty(ACK, mid)),
            Ok(None) => None,
            // A request dropped by the signature filter gets no CoAP error: a CON gets
            // only its empty ACK, which confirms receipt (RFC 7252 §4.2) and says nothing
            // of the check; a NON gets nothing, as servers send no error responses to
            // group requests either (RFC 10021 §7, RFC 10020 §3.1.2).
            Err(r) if r.code == 0 => con.then(|| build::empty(ACK, mid)),
            Err(r) => self.error_reply(listener, from, con, mid, view.token(), r),
        };
        // Whatever answers a request that came through the proxy's own layer goes back
        // through it (oscore-capable-proxies §2.5); an empty ACK is not a response.
        let reply = match (reply, outer.as_mut()) {
            (Some(r), Some(o)) if r.len() > 4 => match self.protect_for_client(o, &r) {
                Some(p) => Some(p),
                None => return self.drop_msg(DropReason::Malformed, from),
            },
            (r, _) => r,
        };
        if let Some(r) = reply {
            if con {
                self.dedup.set_reply(from, mid, r.clone());
            }
            self.send(Link::Listener(listener), from, r);
        }
        // The rest of a set the cache answered with, after the first response.
        self.cache_flush(listener, from, view.token());
    }

    /// An ACK or RST from a client: it must name the Message ID of a message the proxy
    /// sent to that very client on that listener.
    fn client_ack_or_reset(&mut self, link: Link, from: SocketAddr, view: &MessageView) {
        let key = (link, from, view.message_id());
        let exchange = match self.pending.remove(&key) {
            Some(p) => p.exchange,
            // An RST to a NON response (RFC 7252 §4.3) also tells lost interest.
            None if view.mtype() == RST => match self.relayed_non.get(&key) {
                Some(&t) => Some(t),
                None => return self.drop_msg(DropReason::UnmatchedStop, from),
            },
            None => return self.drop_msg(DropReason::UnexpectedMessage, from),
        };
        // An RST to a relayed response means the client lost interest (§5.2.3).
        if view.mtype() == RST
            && let Some(t) = exchange
        {
            self.close(t, CloseReason::EarlyStopReset);
        }
    }

    fn group_by_addr(&self, ip: IpAddr, port: Option<u16>) -> Option<usize> {
        self.cfg
            .groups
            .iter()
            .position(|g| g.addr.ip() == ip && port.is_none_or(|p| p == g.addr.port()))
    }

    fn group_by_name(&self, name: &str) -> Option<usize> {
        self.cfg
            .groups
            .iter()
            .position(|g| g.host_names.iter().any(|h| h == name))
    }

    /// Checks a request and forwards it, or says why not (groupcomm-proxy §5.2.1).
    fn request(
        &mut self,
        now: Instant,
        listener: usize,
        from: SocketAddr,
        view: &MessageView,
        outer: &mut Option<Outer>,
    ) -> Result<Option<Local>, Reject> {
        let mt_number = self.cfg.options.multicast_timeout;
        let mt = view.option(mt_number);
        let key = (from, client_token(view));
        let target = proxy_target(view).map_err(|_| {
            Reject::new(
                code::BAD_REQUEST,
                RejectReason::BadTarget,
                "bad proxy target",
            )
        })?;

        // Early Stop Request (§5.1.3, §5.2.3): GET, the token of an ongoing exchange,
        // Multicast-Timeout 0, no proxy or Uri-* options.
        if target.is_none()
            && view.code() == code::GET
            && mt.is_some_and(|v| read_uint(v) == Some(0))
        {
            let no_uri = !view.options().any(|(n, _)| {
                matches!(
                    n,
                    opt::URI_HOST | opt::URI_PORT | opt::URI_PATH | opt::URI_QUERY
                )
            });
            if let (true, Some(&t)) = (no_uri, self.by_client.get(&key)) {
                // Only with the protection of the request it stops (§5.2.3).
                if self.stop_matches(t, view, outer) {
                    self.close(t, CloseReason::EarlyStopRequest);
                    return Ok(None);
                }
                self.drop_msg(DropReason::UnmatchedStop, from);
                return Err(Reject::new(
                    code::UNAUTHORIZED,
                    RejectReason::NotAllowed,
                    "early stop without the protection of the request",
                ));
            }
        }
        if self.draining {
            return Err(Reject::new(
                code::SERVICE_UNAVAILABLE,
                RejectReason::ShuttingDown,
                "shutting down",
            )
            .max_age(Duration::from_secs(30)));
        }
        for (n, _) in view.options() {
            if self.knows_option(n) {
                continue;
            }
            // RFC 7252 §5.4.1 and §5.7.1: unknown critical options, and unknown unsafe
            // ones a proxy would forward blindly, get 4.02.
            if is_critical(n) {
                return Err(Reject::new(
                    code::BAD_OPTION,
                    RejectReason::UnknownCriticalOption,
                    "unknown critical option",
                ));
            }
            if is_unsafe(n) {
                return Err(Reject::new(
                    code::BAD_OPTION,
                    RejectReason::UnsafeUnknownOption,
                    "unknown unsafe option",
                ));
            }
        }
        let Some(target) = target else {
            // Reverse-proxy mode (groupcomm-proxy §6): a resource of the proxy may stand
            // for a group, or a follow-up name a server it stands in for.
            if let Some(r) = self.reverse_request(now, listener, from, view, outer) {
                return r;
            }
            return self.local_request(view, outer);
        };
        if target.scheme != "coap" {
            return Err(Reject::new(
                code::PROXYING_NOT_SUPPORTED,
                RejectReason::SchemeNotSupported,
                "only coap:// is proxied",
            ));
        }
        // A target that names the proxy itself is served here, never sent to itself.
        if self.names_proxy(&target) {
            return self.local_request(view, outer);
        }
        let destination = self.destination(&target)?;
        // A re-registration or deregistration of a running observation (RFC 7641 §3.3.1,
        // §3.6) is not a token reuse.
        let (dest_group, dest_origin) = match destination {
            Destination::Group(g) => (Some(g), None),
            Destination::Origin(o) => (None, Some(o)),
        };
        let observing = self
            .by_client
            .get(&key)
            .copied()
            .filter(|&t| self.observe_applies(t, view, dest_group, dest_origin));
        // A request with this client's token while one is running (RFC 10020 §3.5.2).
        if let Some(&t) = self.by_client.get(&key)
            && observing.is_none()
        {
            self.close(t, CloseReason::EarlyStopRequest);
            return Err(Reject::new(
                code::BAD_REQUEST,
                RejectReason::TokenReuse,
                "token still in use",
            ));
        }
        let hop_limit = match view.option(opt::HOP_LIMIT).map(read_uint) {
            // RFC 8768 §3: 1 to 255, decremented before forwarding; reaching 0 is 5.08.
            Some(Some(h @ 2..=255)) => Some(h as u8 - 1),
            Some(Some(1)) => {
                let mut r = Reject::new(
                    code::HOP_LIMIT_REACHED,
                    RejectReason::HopLimit,
                    "hop limit reached",
                );
                // RFC 8768 §4: the proxy that detects the loop names itself.
                r.payload = Some(self.cfg.hop_id.as_bytes().to_vec());
                return Err(r);
            }
            // 0 (also the empty value) or above 255: a bad value, not a loop (4.00).
            Some(_) => {
                return Err(Reject::new(
                    code::BAD_REQUEST,
                    RejectReason::HopLimit,
                    "Hop-Limit must be 1 to 255",
                ));
            }
            None => None,
        };
        let out = Forward {
            listener,
            from,
            view,
            target,
            hop_limit,
        };
        if let Some(t) = observing {
            return self.observe_again(now, t, &out, outer).map(|()| None);
        }
        match destination {
            Destination::Group(g) => self.forward_to_group(now, &out, g, mt, outer),
            Destination::Origin(origin) => self.forward_unicast(now, &out, origin, outer),
        }
        // A request the cache answered has its answer there (`cache.rs`).
        .map(|()| self.cache.reply.take())
    }

    /// Where a proxy target leads: a configured group, by multicast address or host name,
    /// or a unicast origin by address; anything else is refused here.
    fn destination(&self, target: &Target<'_>) -> Result<Destination, Reject> {
        match &target.host {
            Host::Ip(ip) if ip.is_multicast() => self
                .group_by_addr(*ip, target.port)
                .map(Destination::Group)
                // RFC 10020 §3.5.1: group URIs not enabled get 5.01.
                .ok_or_else(|| {
                    Reject::new(
                        code::NOT_IMPLEMENTED,
                        RejectReason::GroupNotEnabled,
                        "group not served by this proxy",
                    )
                }),
            Host::Ip(ip) => Ok(Destination::Origin(SocketAddr::new(
                *ip,
                target.port.unwrap_or(5683),
            ))),
            Host::Name(n) => self
                .group_by_name(n)
                .map(Destination::Group)
                .ok_or_else(|| {
                    Reject::new(
                        code::PROXYING_NOT_SUPPORTED,
                        RejectReason::UnknownHost,
                        "unknown host name",
                    )
                }),
        }
    }

    /// A request for the proxy itself: its own resources, served to authenticated
    /// members only.
    fn local_request(
        &mut self,
        view: &MessageView,
        outer: &mut Option<Outer>,
    ) -> Result<Option<Local>, Reject> {
        match outer {
            // §2.1: one layer is what this proxy removes; another one is too many.
            Some(_) if view.option(opt::OSCORE).is_some() => Err(Reject::new(
                code::UNAUTHORIZED,
                RejectReason::TooManyLayers,
                "more OSCORE layers than this proxy removes",
            )),
            Some(o) => Ok(Some(self.local_resource(o, view))),
            None => Err(Reject::new(
                code::NOT_FOUND,
                RejectReason::NotForProxy,
                "this proxy serves its resources over OSCORE only",
            )),
        }
    }

    /// Whether a proxy target names the proxy itself: one of its host names, or an
    /// address and port its listeners are reached at.
    fn names_proxy(&self, target: &Target<'_>) -> bool {
        let local = &self.cfg.local;
        match &target.host {
            Host::Name(n) => local.names.iter().any(|m| m == n),
            Host::Ip(ip) => local.is_local(*ip, target.port.unwrap_or(5683)),
        }
    }

    /// Whether an Early Stop Request carries the protection of the request of exchange
    /// `t`: the same member through the proxy's layer, or a group-mode request verified
    /// as from the same kid, or neither where the request had neither.
    fn stop_matches(&mut self, t: u64, view: &MessageView, outer: &Option<Outer>) -> bool {
        let Some(ex) = self.exchanges.get(&t) else {
            return false;
        };
        let (requester, group) = (ex.requester.clone(), ex.route.group());
        let layer = outer.as_ref().map(|o| o.identity());
        match requester {
            Requester::Address => layer.is_none() && view.option(opt::OSCORE).is_none(),
            Requester::Layer { group, kid } => layer == Some((group, kid.as_slice())),
            Requester::Signed { kid } => {
                layer.is_none()
                    && group.is_some_and(
                        |g| matches!(self.check_request(g, view), Ok(Some(c)) if c.kid == kid),
                    )
            }
        }
    }

    /// When the earliest live exchange ends: the deadlines heap's top, once the entries
    /// of exchanges that ended early are popped (each once: amortised O(log n)).
    fn earliest_deadline(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, token))) = self.deadlines.peek() {
            if self.exchanges.get(&token).is_some_and(|e| e.deadline == at) {
                return Some(at);
            }
            self.deadlines.pop();
        }
        None
    }

    /// The per-client and global caps; called just before an exchange is created.
    fn admit(&mut self, now: Instant, client: IpAddr, group: Option<usize>) -> Result<(), Reject> {
        let l = &self.cfg.limits;
        let (rate, burst, per_client, max_clients, max_ex) = (
            l.client_rate,
            l.client_burst,
            l.max_exchanges_per_client,
            l.max_clients,
            l.max_exchanges,
        );
        let with_group = |r: Reject| match group {
            Some(g) => r.group(g),
            None => r,
        };
        // The whole proxy's table (every thread's exchanges, see `shared.rs`): a slot is
        // taken by the check itself (see `reserved`).
        if !self.shared.try_reserve_exchange(max_ex) {
            // Max-Age: until the earliest exchange ends (of this thread's: another
            // thread's may end sooner, so the client may retry early and be refused again).
            let wait = self
                .earliest_deadline()
                .map_or(Duration::from_secs(1), |t| t.saturating_duration_since(now));
            return Err(with_group(
                Reject::new(
                    code::SERVICE_UNAVAILABLE,
                    RejectReason::TableFull,
                    "exchange table full",
                )
                .max_age(wait),
            ));
        }
        let mut clients = self.shared.clients();
        if !clients.contains_key(&client) && clients.len() >= max_clients {
            drop(clients);
            self.shared.exchange_closed();
            return Err(with_group(
                Reject::new(
                    code::SERVICE_UNAVAILABLE,
                    RejectReason::TooManyClients,
                    "too many clients",
                )
                .max_age(SWEEP),
            ));
        }
        let c = clients.entry(client).or_insert_with(|| Client {
            active: 0,
            bucket: Bucket::full(burst, now),
        });
        if c.active >= per_client {
            drop(clients);
            self.shared.exchange_closed();
            return Err(with_group(
                Reject::new(
                    code::TOO_MANY_REQUESTS,
                    RejectReason::ClientBusy,
                    "too many requests in flight",
                )
                .max_age(Duration::from_secs(1)),
            ));
        }
        if let Err(wait) = c.bucket.take(rate, burst, now) {
            drop(clients);
            self.shared.exchange_closed();
            return Err(with_group(
                Reject::new(
                    code::TOO_MANY_REQUESTS,
                    RejectReason::RateLimited,
                    "request rate limit",
                )
                .max_age(wait),
            ));
        }
        c.active += 1;
        drop(clients);
        self.reserved = Some(client);
        Ok(())
    }

    /// Gives back the slots `admit` took for a request that opened no exchange (answered
    /// from the cache, or refused after the limits).
    fn release_reservation(&mut self) {
        if let Some(ip) = self.reserved.take() {
            self.shared.exchange_closed();
            if let Some(c) = self.shared.clients().get_mut(&ip) {
                c.active = c.active.saturating_sub(1);
            }
        }
    }

    /// Options to carry on: everything but the proxy options, Uri-Host/Port (the group
    /// or origin is the destination address), Multicast-Timeout (removed, §5.2.1 step 4)
    /// and Hop-Limit (re-added decremented); with `own_layer`, also the proxy's Echo.
    fn forwarded_options<'v>(
        &self,
        view: &MessageView<'v>,
        target: &'v Target<'_>,
        hop: &'v Option<[u8; 1]>,
        own_layer: bool,
    ) -> Options<'v> {
        let mt = self.cfg.options.multicast_timeout;
        let mut opts: Options<'v> = view
            .options()
            .filter(|(n, _)| {
                !matches!(
                    *n,
                    opt::PROXY_URI
                        | opt::PROXY_SCHEME
                        | opt::URI_HOST
                        | opt::URI_PORT
                        | opt::HOP_LIMIT
                ) && *n != mt
                    // An Echo inside the proxy's own layer was the proxy's (RFC 10021 §9):
                    // consumed here, it must not reach the next hop (RFC 9175 §2.3).
                    && !(own_layer && *n == opt::ECHO)
            })
            .collect();
        opts.extend(target.uri_options.iter().map(|(n, v)| (*n, &v[..])));
        if let Some(h) = hop {
            opts.push((opt::HOP_LIMIT, h));
        }
        opts
    }

    fn forward_to_group(
        &mut self,
        now: Instant,
        out: &Forward<'_>,
        g: usize,
        mt: Option<&[u8]>,
        outer: &mut Option<Outer>,
    ) -> Result<(), Reject> {
        let (listener, from, view) = (out.listener, out.from, out.view);
        let authenticated = outer.as_ref().map(|o| self.kid_allowed(o, g));
        let spec: &GroupSpec = &self.cfg.groups[g];
        if !spec.enabled {
            return Err(Reject::new(
                code::NOT_IMPLEMENTED,
                RejectReason::GroupNotEnabled,
                "group proxying not enabled",
            )
            .group(g));
        }
        // §5.2.1 step 2: a client authenticated by its OSCORE layer is allowed by its
        // kid; otherwise by its address.
        let allowed =
            authenticated.unwrap_or_else(|| spec.allow.iter().any(|p| p.contains(from.ip())));
        if !allowed {
            return Err(Reject::new(
                code::UNAUTHORIZED,
                RejectReason::NotAllowed,
                "client not allowed for this group",
            )
            .group(g));
        }
        // §5.2.1 step 3: no Multicast-Timeout, 4.00 with an empty one (value 0).
        let Some(mt) = mt else {
            let mut r = Reject::new(
                code::BAD_REQUEST,
                RejectReason::MissingMulticastTimeout,
                "Multicast-Timeout option required",
            )
            .group(g);
            r.options
                .push((self.cfg.options.multicast_timeout, Vec::new()));
            return Err(r);
        };
        let asked = read_uint(mt)
            .map(|s| Duration::from_secs(s as u64))
            .ok_or_else(|| {
                Reject::new(
                    code::BAD_REQUEST,
                    RejectReason::BadMulticastTimeout,
                    "Multicast-Timeout longer than 4 bytes",
                )
                .group(g)
            })?;
        let timeout = asked.min(spec.max_timeout);
        // §8.1: not the last hop, the request goes to the next proxy with T''.
        let via = spec.next_hop.map(|n| n.addr);
        let next_mt = self.chain_timeout(g, timeout)?;
        let dest = via.unwrap_or(spec.addr);
        // Every request that causes a multicast passes the limits, T' = 0 too: it relays
        // nothing but makes every device answer (groupcomm-proxy §10). First, as a full
        // table refuses here at the least cost.
        self.admit(now, from.ip(), Some(g))?;
        // An observation needs T' > 0: with 0 nothing is relayed, so nothing is kept.
        let observes = observe::registers(view) && !timeout.is_zero();
        if observes {
            self.observe_admit(from.ip(), Some(g))?;
        }
        // Message IDs toward the group on some egress port, and toward the client for its
        // responses (RFC 7252 §4.4), before a signature is verified.
        let egress = match via {
            Some(nh) => self.egress_port(nh, Link::Unicast),
            None => self.egress_port(dest, |p| Link::Group(g, p)),
        }
        .map_err(|r| r.group(g))?;
        if !timeout.is_zero() {
            self.client_room(Link::Listener(listener), from)
                .map_err(|r| r.group(g))?;
        }
        // After the cheap checks and the rate limit, so that a flood of forgeries costs
        // its sender its own rate budget before it costs signature verifications.
        let checked = match self.check_request(g, view) {
            Ok(c) => c,
            Err(Filtered::Drop) => {
                self.drop_msg(DropReason::RequestCheckFailed, from);
                return Err(Reject::silent());
            }
        };
        self.signer_allowed(g, checked.as_ref())?;
        let deterministic = self.det_request(g, view);
        // §7.1: after every check a forward passes, a request the cache can answer alone
        // is answered from it; nothing reaches the group.
        let cache_key = (!timeout.is_zero() && via.is_none() && outer.is_none())
            .then(|| self.cache_key(out, Some(g)))
            .flatten();
        if let Some(k) = &cache_key
            && self.cache_serve_group(g, k, view)
        {
            return Ok(());
        }
        let etags = self.cache_etags(cache_key.as_ref(), view);
        let token = self.token();
        let tb = token.to_be_bytes();
        let hop = out.hop_limit.map(|h| [h]);
        let chain_hop = self.chain_hop(g, out.hop_limit);
        let mt_bytes = next_mt.map(|t| uint_value(t.as_secs() as u32));
        let mut opts = match &mt_bytes {
            Some(mt) => self.chain_options(view, &chain_hop, mt, outer.is_some()),
            None => self.forwarded_options(view, &out.target, &hop, outer.is_some()),
        };
        // §7.2.2: the stale stored responses' ETags, for the servers to validate.
        opts.extend(etags.iter().map(|t| (opt::ETAG, t.as_slice())));
        // §5.2.1 step 5: a NON group request (RFC 10020 §3.1.2), the proxy's own token;
        // to a next hop, unicast, CON for a CON client (reliability hop by hop).
        let con = via.is_some() && view.mtype() == CON;
        let mid = self
            .mid_to(egress, dest, con, true)
            .expect("egress_port found room");
        let mtype = if con { CON } else { NON };
        let bytes = self.encode(mtype, view.code(), mid, &tb, &mut opts, view.payload());
        if con {
            self.track(now, egress, dest, mid, bytes.clone(), None);
        }
        let registration = observes.then(|| bytes.clone());
        self.send(egress, dest, bytes);
        match next_mt {
            Some(next) => self.emit(Event::ChainForwarded {
                group: g,
                timeout,
                next,
            }),
            None => self.emit(Event::FanOut {
                group: g,
                timeout,
                asked,
            }),
        }
        // §5.2.1 step 6: with T' = 0 every response is ignored, so nothing is kept.
        if !timeout.is_zero() {
            let requester = requester(outer, checked.as_ref());
            let route = Route::Group {
                group: g,
                checked: checked.map(Box::new),
                numbers: ResponseNumbers::default(),
                seen_con: Vec::new(),
                via,
                deterministic,
            };
            self.open(
                now,
                view,
                Opening {
                    route,
                    listener,
                    client: from,
                    token,
                    timeout,
                    egress,
                    requester,
                },
            );
            if let Some(ex) = self.exchanges.get_mut(&token) {
                ex.outer = outer.take().map(Box::new);
            }
            if let Some(r) = registration {
                self.observe_start(token, r, dest);
            }
            if let Some(k) = cache_key {
                self.cache_fill(token, k, !etags.is_empty(), timeout);
            }
        }
        Ok(())
    }

    fn forward_unicast(
        &mut self,
        now: Instant,
        out: &Forward<'_>,
        origin: SocketAddr,
        outer: &mut Option<Outer>,
    ) -> Result<(), Reject> {
        let (listener, from, view) = (out.listener, out.from, out.view);
        let u = &self.cfg.unicast;
        // A follow-up of the reverse-proxy mode (§6.2) was allowed by its group.
        let granted = self.reverse_granted(origin);
        if !u.enabled && !granted {
            return Err(Reject::new(
                code::PROXYING_NOT_SUPPORTED,
                RejectReason::UnicastNotAllowed,
                "unicast forwarding disabled",
            ));
        }
        if !granted && !u.allow.iter().any(|p| p.contains(from.ip())) {
            return Err(Reject::new(
                code::UNAUTHORIZED,
                RejectReason::NotAllowed,
                "client not allowed to forward",
            ));
        }
        let timeout = u.timeout;
        self.admit(now, from.ip(), None)?;
        let observes = observe::registers(view);
        if observes {
            self.observe_admit(from.ip(), None)?;
        }
        let egress = self.egress_port(origin, Link::Unicast)?;
        self.client_room(Link::Listener(listener), from)?;
        // RFC 7252 §5.7.1: a fresh stored response answers the request (after the checks
        // a forward passes); stale ones with an ETag are revalidated (§5.6.2).
        let cache_key = outer.is_none().then(|| self.cache_key(out, None)).flatten();
        if let Some(k) = &cache_key
            && self.cache_serve_unicast(k)
        {
            return Ok(());
        }
        let etags = self.cache_etags(cache_key.as_ref(), view);
        let token = self.token();
        let tb = token.to_be_bytes();
        let hop = out.hop_limit.map(|h| [h]);
        let mut opts = self.forwarded_options(view, &out.target, &hop, outer.is_some());
        opts.extend(etags.iter().map(|t| (opt::ETAG, t.as_slice())));
        // A CON client gets reliability end to end: CON toward the origin too.
        let con = view.mtype() == CON;
        let mid = self
            .mid_to(egress, origin, con, true)
            .expect("egress_port found room");
        let bytes = self.encode(
            if con { CON } else { NON },
            view.code(),
            mid,
            &tb,
            &mut opts,
            view.payload(),
        );
        if con {
            self.track(now, egress, origin, mid, bytes.clone(), None);
        }
        let registration = observes.then(|| bytes.clone());
        self.send(egress, origin, bytes);
        self.emit(Event::UnicastForward);
        let requester = requester(outer, None);
        self.open(
            now,
            view,
            Opening {
                route: Route::Unicast {
                    origin,
                    con_mid: con.then_some(mid),
                },
                listener,
                client: from,
                token,
                timeout,
                egress,
                requester,
            },
        );
        if let Some(ex) = self.exchanges.get_mut(&token) {
            ex.outer = outer.take().map(Box::new);
        }
        if let Some(r) = registration {
            self.observe_start(token, r, origin);
        }
        if let Some(k) = cache_key {
            self.cache_fill(token, k, !etags.is_empty(), timeout);
        }
        Ok(())
    }

    /// Starts an exchange for the request `view` (its token and type are the client's).
    fn open(&mut self, now: Instant, view: &MessageView, o: Opening) {
        let Opening {
            route,
            listener,
            client,
            token,
            timeout,
            egress,
            requester,
        } = o;
        let deadline = now + timeout;
        let client_token = client_token(view);
        self.exchanges.insert(
            token,
            InFlight {
                route,
                client,
                listener,
                client_token,
                client_con: view.mtype() == CON,
                started: now,
                deadline,
                responses: 0,
                egress,
                requester,
                relayed_non: VecDeque::new(),
                outer: None,
                observe: None,
                stands_in: None,
            },
        );
        self.by_client.insert((client, client_token), token);
        // The slots `admit` took become this exchange's.
        if self.reserved.take().is_none() {
            self.shared.exchange_opened();
            if let Some(c) = self.shared.clients().get_mut(&client.ip()) {
                c.active += 1;
            }
        }
        self.push_timer(deadline, Timer::Exchange(token));
        self.deadlines.push(Reverse((deadline, token)));
        // Bounded by what is live, as the timer heap is (see `push_timer`).
        if self.deadlines.len() > 4 * self.exchanges.len() + 1024 {
            let exchanges = &self.exchanges;
            self.deadlines
                .retain(|Reverse((at, t))| exchanges.get(t).is_some_and(|e| e.deadline == *at));
        }
    }

    /// Ends an exchange and frees its token; later responses count as late (§5.4.1).
    fn close(&mut self, token: u64, reason: CloseReason) {
        // §7.1: at T', stored responses of servers that did not answer go first.
        if reason == CloseReason::Timeout {
            self.cache_at_deadline(token);
        }
        let Some(mut ex) = self.exchanges.remove(&token) else {
            return;
        };
        self.by_client.remove(&(ex.client, ex.client_token));
        self.shared.exchange_closed();
        if let Some(c) = self.shared.clients().get_mut(&ex.client.ip()) {
            c.active = c.active.saturating_sub(1);
        }
        if let Route::Unicast {
            origin,
            con_mid: Some(mid),
        } = ex.route
        {
            self.pending.remove(&(ex.egress, origin, mid));
        }
        self.chain_closed(token, &ex, reason);
        self.cache_closed(token);
        let to_client = Link::Listener(ex.listener);
        for mid in ex.relayed_non {
            self.relayed_non.remove(&(to_client, ex.client, mid));
        }
        self.emit(Event::Closed {
            group: ex.route.group(),
            responses: ex.responses,
            reason,
        });
        if let Some(obs) = ex.observe.take() {
            let at = (ex.client, ex.egress, ex.route.group());
            self.observation_closed(token, obs, at, reason);
        }
    }

    /// The error response to a request: piggybacked in the ACK of a CON, a NON for a NON
    /// (RFC 7252 §5.2); counted. None: no Message ID could be had for the NON (counted).
    fn error_reply(
        &mut self,
        listener: usize,
        client: SocketAddr,
        con: bool,
        mid: u16,
        token: &[u8],
        r: Reject,
    ) -> Option<Vec<u8>> {
        self.emit(Event::Rejected {
            group: r.group,
            reason: r.reason,
            code: r.code,
            client,
        });
        let mut opts: Vec<(u16, &[u8])> =
            r.options.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        let (t, m) = if con {
            (ACK, mid)
        } else {
            (
                NON,
                self.mid_to(Link::Listener(listener), client, false, false)?,
            )
        };
        let diagnostic = r.payload.as_deref().unwrap_or(r.diagnostic.as_bytes());
        Some(build::encode(t, r.code, m, token, &mut opts, diagnostic))
    }

    /// A separate error response to the client of an exchange (as NON: the client's CON
    /// was acknowledged already), under the client's OSCORE layer if its request came
    /// through one (oscore-capable-proxies §2.5: every response, errors too).
    fn reply_error(&mut self, token: u64, c: u8, diagnostic: &str) {
        let Some(ex) = self.exchanges.get_mut(&token) else {
            return;
        };
        let (client, listener, tok) = (ex.client, ex.listener, ex.client_token);
        let mut outer = ex.outer.take();
        let link = Link::Listener(listener);
        let Some(mid) = self.mid_to(link, client, false, true) else {
            return;
        };
        let mut bytes = build::encode(NON, c, mid, tok.as_slice(), &mut [], diagnostic.as_bytes());
        if let Some(o) = outer.as_mut() {
            match self.protect_for_client(o, &bytes) {
                Some(p) => bytes = p,
                None => return self.drop_msg(DropReason::Malformed, client),
            }
        }
        if let Some(ex) = self.exchanges.get_mut(&token) {
            ex.outer = outer;
        }
        self.send(link, client, bytes);
    }

    /// Whether the proxy knows option `n` (RFC 7252 §5.4.1; oscore-capable-proxies §2.2:
    /// an option it protects it must recognise).
    fn knows_option(&self, n: u16) -> bool {
        opt::is_known(n) || self.cfg.options.as_array().contains(&n)
    }
}

/// Who the request of an exchange came from, as far as it was authenticated.
fn requester(outer: &Option<Outer>, checked: Option<&CheckedRequest>) -> Requester {
    match (outer, checked) {
        (Some(o), _) => {
            let (group, kid) = o.identity();
            Requester::Layer {
                group,
                kid: kid.to_vec(),
            }
        }
        (None, Some(c)) => Requester::Signed { kid: c.kid.clone() },
        (None, None) => Requester::Address,
    }
}

/// The token of a parsed message (which has at most 8 bytes, RFC 7252 §3).
fn client_token(view: &MessageView) -> Token {
    Token::new(view.token()).unwrap_or_default()
}
