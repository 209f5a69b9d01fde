//! What the engines of several forwarding threads share (`[proxy] threads`): everything
//! whose rule holds for the proxy as a whole rather than for one thread's sockets.
//!
//! * the replay windows per (Gid, kid) of every checked group, with their epoch, so that a
//!   request admitted on one thread is a replay on every other and a rekey on one thread
//!   stops admission under the old epoch on all (`oscore::SharedWindows`);
//! * the per-client state (exchanges in flight, rate bucket) by client IP address, and
//!   the number of exchanges in flight, so that `max_exchanges_per_client`, `client_rate`,
//!   `max_clients` and `max_exchanges` bound the whole proxy; likewise the observations
//!   held, in all and per client (`observe.max_observations`, `observe.max_per_client`);
//! * the token key, with each thread issuing from its own part of the counter space, so
//!   that no two threads ever give out the same token (RFC 10020 §3.1.5).
//! * the response cache's store (groupcomm-proxy §7: a response stored from one
//!   thread's exchange serves a request another thread receives; `max_entries` and
//!   `max_bytes` bound the proxy) and, per group, the servers a reverse-proxy resource
//!   stands in for (§6.2: a follow-up reaching another thread finds the server, under
//!   the same pool slot); what is tied to one exchange in flight stays per engine.
//!
//! Deduplication, Message IDs, pending retransmissions and the observations themselves
//! (with their notification rate buckets) stay per thread:
//! a client endpoint (its 4-tuple) always reaches the same thread's listener, and each
//! thread's egress sockets are its own, so those tables only ever see their own thread's
//! peers (see the README's threading section).
//!
//! * the proxy's own membership per group (`[[group]] security.member`, see
//!   [`Members`]): its Sender Sequence Numbers, its peers' replay windows and the Echo
//!   values it sent, so that no Partial IV is used by two threads, a request accepted on
//!   one thread is a replay on every other, and an Echo value is good once, anywhere.
//!
//! The engine stays sans-I/O and clock-free: these are locks and counters in memory, and
//! an engine made with [`crate::proxy::Engine::new`] has a `Shared` of its own.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use subtle::ConstantTimeEq;

use super::engine::{CacheStore, Servers};
use super::tables::Bucket;
use crate::oscore::SecurityContext;
use crate::oscore::SharedWindows;
use crate::oscore::replay::ReplayWindow;
use crate::oscore::ssn::SsnSource;
use crate::sync::lock;

/// A client address's state, for the whole proxy.
#[derive(Debug)]
pub(crate) struct Client {
    pub(crate) active: usize,
    pub(crate) bucket: Bucket,
}

/// The client table: one lock for the proxy, taken once per request admitted (and once
/// per exchange closed), never while a signature is verified.
pub(crate) type Clients = HashMap<IpAddr, Client, foldhash::fast::RandomState>;

#[derive(Debug)]
struct Inner {
    threads: u16,
    token_key: [u8; 16],
    /// Per group (by index), created on first use: the groups are fixed while running.
    windows: Mutex<Vec<SharedWindows>>,
    clients: Mutex<Clients>,
    exchanges: AtomicUsize,
    /// Observations held, in all and per client address (`[limits.observe]`
    /// `max_observations`, `max_per_client`); an entry only while its client holds one.
    observations: Mutex<(usize, HashMap<IpAddr, usize, foldhash::fast::RandomState>)>,
    members: Members,
    // -- The response cache's store and the reverse-proxy stand-in servers (issue 14
    // point 2): created by the first engine built on this `Shared`, then the same
    // `Arc` for every engine (see `Shared::cache_store`, `Shared::reverse_servers`).
    cache: OnceLock<Arc<Mutex<CacheStore>>>,
    reverse_servers: OnceLock<Arc<Mutex<Vec<Servers>>>>,
    // -- end of the cache and reverse-proxy block.
}

/// The state the engines of one proxy share, and which of them this handle is for: give
/// each engine [`Shared::thread`] of the same value (see [`crate::proxy::Engine::with_shared`]).
#[derive(Debug, Clone)]
pub struct Shared {
    inner: Arc<Inner>,
    thread: u16,
}

impl Shared {
    /// State for `threads` engines (at least 1, at most 256: a thread's token space is
    /// the counter's low 56 bits), keyed by `token_key` (16 bytes from the operating
    /// system in production: tokens must not be guessable, RFC 9175 §4).
    pub fn new(threads: usize, token_key: [u8; 16]) -> Self {
        Shared {
            inner: Arc::new(Inner {
                threads: threads.clamp(1, 256) as u16,
                token_key,
                windows: Mutex::new(Vec::new()),
                clients: Mutex::new(Clients::default()),
                exchanges: AtomicUsize::new(0),
                observations: Mutex::new((0, HashMap::default())),
                members: Members::default(),
                cache: OnceLock::new(),
                reverse_servers: OnceLock::new(),
            }),
            thread: 0,
        }
    }

    /// The handle for engine `index` (0-based, below the thread count).
    pub fn thread(&self, index: usize) -> Shared {
        Shared {
            inner: self.inner.clone(),
            thread: (index as u16).min(self.inner.threads - 1),
        }
    }

    /// This handle's engine, and how many there are.
    pub fn index(&self) -> (usize, usize) {
        (self.thread as usize, self.inner.threads as usize)
    }

    pub(crate) fn token_key(&self) -> [u8; 16] {
        self.inner.token_key
    }

    /// The replay windows of group `g`, the same for every engine.
    pub(crate) fn windows(&self, g: usize) -> SharedWindows {
        let mut w = lock(&self.inner.windows);
        if w.len() <= g {
            w.resize_with(g + 1, SharedWindows::default);
        }
        w[g].clone()
    }

    pub(crate) fn clients(&self) -> MutexGuard<'_, Clients> {
        lock(&self.inner.clients)
    }

    /// Exchanges in flight on every thread.
    pub(crate) fn exchanges(&self) -> usize {
        self.inner.exchanges.load(Ordering::Relaxed)
    }

    /// Takes one slot of the table if fewer than `max` are taken: the check and the
    /// count in one step, so that threads admitting at once never pass `max` together.
    pub(crate) fn try_reserve_exchange(&self, max: usize) -> bool {
        self.inner
            .exchanges
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    pub(crate) fn exchange_opened(&self) {
        self.inner.exchanges.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn exchange_closed(&self) {
        // Never below 0, whatever order the threads' steps land in.
        let _ = self
            .inner
            .exchanges
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
    }

    /// Observations held on every thread, and by `client`.
    pub(crate) fn observations(&self, client: Option<IpAddr>) -> (usize, usize) {
        let o = lock(&self.inner.observations);
        (o.0, client.and_then(|c| o.1.get(&c).copied()).unwrap_or(0))
    }

    pub(crate) fn observation_started(&self, client: IpAddr) {
        let mut o = lock(&self.inner.observations);
        o.0 += 1;
        *o.1.entry(client).or_insert(0) += 1;
    }

    pub(crate) fn observation_released(&self, client: IpAddr) {
        let mut o = lock(&self.inner.observations);
        o.0 = o.0.saturating_sub(1);
        if let Some(n) = o.1.get_mut(&client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                o.1.remove(&client);
            }
        }
    }

    // -- The response cache and the reverse-proxy stand-in servers (issue 14 point 2).

    /// The response cache's store (entries, LRU order, counts, bounds, Group-ETags),
    /// one for the proxy: a response stored by one thread serves a request another
    /// thread receives (groupcomm-proxy §7), and `max_entries`/`max_bytes` bound the
    /// whole proxy. `init` makes it for the first engine asking; later engines get
    /// the same store (one `Mutex`: see the README's threading section for why).
    pub(crate) fn cache_store(&self, init: impl FnOnce() -> CacheStore) -> Arc<Mutex<CacheStore>> {
        self.inner
            .cache
            .get_or_init(|| Arc::new(Mutex::new(init())))
            .clone()
    }

    /// The servers each group's reverse-proxy resources stand in for (groupcomm-proxy
    /// §6.1, §6.2), one table per group for the proxy, at least `groups` long: a
    /// follow-up reaching any thread finds the server another thread's group request
    /// heard from, under the same pool slot.
    pub(crate) fn reverse_servers(&self, groups: usize) -> Arc<Mutex<Vec<Servers>>> {
        let table = self
            .inner
            .reverse_servers
            .get_or_init(Default::default)
            .clone();
        let mut t = lock(&table);
        if t.len() < groups {
            t.resize_with(groups, Servers::default);
        }
        drop(t);
        table
    }
}

// ---------------------------------------------------------------------------------------
// The proxy's own membership (RFC 10021 §2.6.1.1, §9; RFC 8613 §7.4;
// oscore-capable-proxies §2).

/// The proxy's membership state per group, one key epoch (Gid) at a time: the first
/// engine to install an epoch creates it (Sender Sequence Numbers from 0 with nothing
/// reserved, §2.6.3.2; empty windows; no Echo values), every later engine with the same
/// Gid joins it. One lock, taken when a context is installed and for an Echo value
/// (issued or checked): never per protected message, never while verifying.
#[derive(Debug, Default)]
pub(crate) struct Members(Mutex<Vec<Option<MemberEpoch>>>);

#[derive(Debug)]
struct MemberEpoch {
    gid: Vec<u8>,
    key_generation: u64,
    ssn: SsnSource,
    /// Per peer (kid): at most the context's Recipient Contexts (`MAX_RECIPIENTS`).
    windows: HashMap<Vec<u8>, Arc<Mutex<ReplayWindow>>>,
    /// The Echo value sent per peer, at most one each (RFC 10021 §9).
    echoes: HashMap<Vec<u8>, [u8; 8]>,
}

impl Shared {
    /// Makes `ctx`, the proxy's context of group `g`, draw its Sender Sequence Numbers
    /// and keep its peers' replay windows in the state every engine of the proxy shares
    /// for that epoch. `rekeyed`: the epoch comes with a reload (nothing is reserved for
    /// it yet); else it is the configured one at start (restored by the runtime).
    pub(crate) fn share_member(&self, g: usize, ctx: &mut SecurityContext, rekeyed: bool) {
        let mut all = lock(&self.inner.members.0);
        if all.len() <= g {
            all.resize_with(g + 1, || None);
        }
        let gid = ctx.common.gid().to_vec();
        let kg = ctx.common.key_generation;
        let ceiling = rekeyed.then_some(0);
        match &all[g] {
            Some(e) if e.gid == gid => {}
            // An engine late with an older epoch than another already installed (two
            // reloads in a row): it may not send or admit under it.
            Some(e) if e.key_generation > kg => {
                // Nothing reserved, nothing taken.
                ctx.sender.shared = Some(SsnSource::retired());
                ctx.invalidate_replay_windows();
                return;
            }
            prev => {
                let ssn = match prev {
                    Some(e) => e.ssn.next_epoch(ceiling),
                    None => SsnSource::new(ceiling),
                };
                all[g] = Some(MemberEpoch {
                    gid,
                    key_generation: kg,
                    ssn,
                    windows: HashMap::new(),
                    echoes: HashMap::new(),
                });
            }
        }
        let e = all[g].as_mut().expect("set above");
        ctx.sender.shared = Some(e.ssn.clone());
        for (kid, r) in ctx.recipients.iter_mut() {
            let w = e
                .windows
                .entry(kid.clone())
                .or_insert_with(|| Arc::new(Mutex::new(r.replay.clone())))
                .clone();
            r.share_window(w);
        }
    }

    /// Takes the Echo value sent to `kid` of group `g` in epoch `gid` if `echo` is it
    /// (compared in constant time: timing must not tell how much of a guess was right):
    /// each value proves freshness once for the whole proxy.
    pub(crate) fn take_echo(&self, g: usize, gid: &[u8], kid: &[u8], echo: &[u8]) -> bool {
        let mut all = lock(&self.inner.members.0);
        let Some(Some(e)) = all.get_mut(g) else {
            return false;
        };
        let hit = e.gid == gid
            && e.echoes
                .get(kid)
                .is_some_and(|v| bool::from(echo.ct_eq(&v[..])));
        if hit {
            e.echoes.remove(kid);
        }
        hit
    }

    /// Records the Echo value sent to `kid` (replacing an earlier one): one per peer
    /// the proxy has a Recipient Context for, as the caller verified the request.
    pub(crate) fn put_echo(&self, g: usize, gid: &[u8], kid: &[u8], value: [u8; 8]) {
        let mut all = lock(&self.inner.members.0);
        if let Some(Some(e)) = all.get_mut(g)
            && e.gid == gid
            && e.windows.contains_key(kid)
        {
            e.echoes.insert(kid.to_vec(), value);
        }
    }
}
