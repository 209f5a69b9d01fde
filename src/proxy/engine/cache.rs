//! The response cache (groupcomm-proxy-07 §7, RFC 7252 §5.6, RFC 8132 §2.3), on the
//! engine's virtual clock like everything else.
//!
//! An entry is one request (its destination, method, Cache-Key options and payload) with
//! the responses stored for it: one for a unicast origin, one per server for a group
//! request (§7: "a cache entry is associated with one server"), each keyed by the
//! address it came from, which is what Reply-From names (§5.4.1: the option is added
//! before caching; it is made again from that address when served).
//!
//! - A unicast request is served from a fresh stored response of its origin, also one a
//!   group request stored for that server (§7, first bullet).
//! - A group request is served from the cache alone only when the set is complete: the
//!   group's `members` (config: the proxy has no way of its own to know them, §7.1)
//!   each have a fresh response stored. Without configured members it is always
//!   forwarded. Served, every stored response goes to the client under its token with
//!   its Reply-From and Max-Age lowered by its age (RFC 7252 §5.6.1).
//!   Forwarded, it uses the fresh stored responses too: those about to go stale before
//!   T' at once, the others at T' for the servers that did not answer (§7.1).
//! - Stale responses with an ETag are revalidated: the forwarded request carries their
//!   ETags (RFC 7252 §5.6.2; groupcomm-bis §3.2.2 for a group request, §7.2); a 2.03
//!   refreshes the stored response and the client gets the stored representation.
//! - A complete set has a Group-ETag (§7.3), offered with the responses served from the
//!   cache alone; a group request naming it gets one 2.03, and no 2.03 otherwise.
//! - Nothing is stored for requests through the proxy's own OSCORE layer, Observe
//!   registrations, methods other than GET and FETCH, T' = 0, chained groups, or
//!   end-to-end protected requests other than deterministic ones (§7.4.1).
//!
//! Bounded in stored responses and in bytes; past either bound the least recently used
//! entries go first.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::filter::Storable;
use super::{Engine, Forward, HashMap, Link, Local};
use crate::coap::MessageView;
use crate::coap::build::{self, NON, code};
use crate::coap::cri;
use crate::coap::options::{self as opt, read_uint, uint_value};
use crate::oscore::deterministic::is_deterministic_request;
use crate::proxy::config::GroupCache;
use crate::proxy::events::{CacheEvent, Event};
use crate::sync::lock;

/// 0.05 FETCH (RFC 8132 §2): safe, cacheable with its payload in the key (§2.3).
const FETCH: u8 = 0x05;
/// 2.03 Valid (RFC 7252 §5.9.1.3).
const VALID: u8 = 0x43;
/// RFC 7252 §5.10.5: a response without Max-Age is fresh for 60 s.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(60);
/// ETags a forwarded request carries for revalidation at most (groupcomm-bis §3.2.2
/// allows several; more would only grow the request toward the datagram bound).
const MAX_REVALIDATION_ETAGS: usize = 8;
/// What a stored response costs besides its bytes (bookkeeping), for `max_bytes`.
const OVERHEAD: usize = 64;

/// Where the request of an entry went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum To {
    Group(usize),
    Origin(SocketAddr),
}

/// The Cache-Key of a request (RFC 7252 §5.6): destination, then method, the options
/// that are part of the key (number, length, value each) and the payload.
pub(super) type Key = (To, Vec<u8>);

/// One server's stored response. Held by `Arc` (`Entry::responses`), so that serving
/// it takes a reference count under the store's lock, and the copies toward the client
/// are made after the lock is released.
#[derive(Debug, Clone)]
struct Stored {
    server: SocketAddr,
    code: u8,
    /// Without Max-Age (made again when served) and Reply-From (made from `server`).
    options: Vec<(u16, Vec<u8>)>,
    payload: Vec<u8>,
    at: Instant,
    max_age: Duration,
    size: usize,
    /// The kid a group's checker verified it from, for a Deterministic Request's answer.
    kid: Option<Vec<u8>>,
}

impl Stored {
    /// How long it stays fresh from `now`; None: stale.
    /// On an engine whose `now` is earlier than `at` (see [`Store`]), as just stored.
    fn left(&self, now: Instant) -> Option<Duration> {
        let end = self.at + self.max_age;
        (end > now).then(|| (end - now).min(self.max_age))
    }

    fn etag(&self) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|(n, _)| *n == opt::ETAG)
            .map(|(_, v)| v.as_slice())
    }

    fn same_content(&self, code: u8, options: &[(u16, Vec<u8>)], payload: &[u8]) -> bool {
        self.code == code && self.options == options && self.payload == payload
    }
}

#[derive(Debug)]
struct Entry {
    responses: Vec<Arc<Stored>>,
    /// Its position in `Cache::lru`.
    used: u64,
    /// The Group-ETag of the set (§7.3): changed whenever a response of the set changes.
    group_etag: u64,
}

/// What an exchange in flight stores its responses under.
#[derive(Debug)]
struct Filling {
    key: Key,
    /// The proxy added ETags of its own: a 2.03 is for the proxy, not the client.
    revalidating: bool,
    /// Servers whose fresh stored response existed when the group request went out and
    /// that have not answered it yet: at T' their stored responses go to the client
    /// (§7.1, the extension of §5.4.1).
    waiting: Vec<SocketAddr>,
}

/// What goes to the client for a response of a filling exchange.
pub(super) enum Relay {
    /// The response as it came.
    Original,
    /// The stored representation a 2.03 to the proxy's revalidation refreshed.
    Stored(Vec<u8>),
    /// Nothing: a 2.03 to an ETag of the proxy's own that names nothing stored for that
    /// server (evicted meanwhile, or a server without an entry whose representation has
    /// the same ETag as another's). The client sent no ETag, so a 2.03 would tell it
    /// nothing it could use.
    Nothing,
}

/// The store of the cache, one for the whole proxy (`Shared::cache_store`): every
/// forwarding thread serves from and stores into it, so that a response stored from an
/// exchange of one thread answers a request another thread receives (§7), and its
/// bounds (`max_entries`, `max_bytes`) hold for the proxy. Behind one `Mutex`, taken for
/// lookups and updates only: nothing slow (no signature check, no relaying, no encoding
/// of a response toward a client) happens while it is held.
///
/// The time of an entry is the `now` of the engine that stored or revalidated it. The
/// engines of a proxy take their `now` from the same clock (the runtime's monotonic
/// clock), so the one `Instant` means the same moment on every thread; where an engine's
/// `now` is earlier than an entry's (engines given different clocks, as tests may), the
/// entry counts as just stored there: never fresher than the Max-Age it was stored with
/// (RFC 7252 §5.6.1), and stale once that engine's clock passes `at + max_age`.
#[derive(Debug)]
pub(crate) struct Store {
    entries: HashMap<Key, Entry>,
    /// Least recently used first.
    lru: BTreeMap<u64, Key>,
    tick: u64,
    bytes: usize,
    stored: usize,
    /// The next Group-ETag value: from the seed of the first engine, so that a restarted
    /// proxy does not give a different set a value a client still holds; one counter for
    /// the proxy, so that two threads never give two sets the same value.
    next_etag: u64,
    /// The newest verified Partial IV stored from each server of a group's Deterministic
    /// Requests, by (group, Gid, kid): every such request has Partial IV 0, so a server's
    /// older answer replayed into a later exchange verifies again, and stored it would
    /// bring old content back (or keep it fresh past its Max-Age). At most
    /// `max_entries` servers; past it a new server's answers are not stored. In the
    /// store, so that a replay reaching another thread is known there too.
    det_pivs: HashMap<(usize, Vec<u8>, Vec<u8>), u64>,
    /// The bounds in force (`[cache] max_entries`, `max_bytes`), for the whole proxy: set
    /// when the store is made and by the first engine applying a reload (`cache_resize`),
    /// and from then on seen by every engine.
    max_entries: usize,
    max_bytes: usize,
    /// `stored` and `bytes` as of the last update, readable without the lock: the
    /// metrics read them after every datagram on every thread (`Engine::cache_usage`).
    usage: Arc<[AtomicUsize; 2]>,
}

/// An engine's own part of the cache: what belongs to its exchanges in flight and to
/// the request it is handling (the store is the proxy's).
pub(super) struct Cache {
    store: Arc<Mutex<Store>>,
    usage: Arc<[AtomicUsize; 2]>,
    /// By the proxy's token; bounded by the exchange table (removed at close).
    filling: HashMap<u64, Filling>,
    /// The answer to the request being handled when the cache gave it (piggybacked or a
    /// NON, as any local reply), and the set's further responses, sent after it.
    pub(super) reply: Option<Local>,
    deferred: Vec<Local>,
    /// The request being handled is a reverse-proxy one standing in for the servers
    /// (groupcomm-proxy §6.1): its Reply-From names the proxy, which the stored responses
    /// (made with the servers' Reply-From) cannot, so they are stored but not served.
    pub(super) stand_in: bool,
}

impl Store {
    pub(super) fn new(etag_seed: u64, max_entries: usize, max_bytes: usize) -> Self {
        Store {
            entries: HashMap::default(),
            lru: BTreeMap::new(),
            tick: 0,
            bytes: 0,
            stored: 0,
            next_etag: etag_seed,
            det_pivs: HashMap::default(),
            max_entries,
            max_bytes,
            usage: Arc::default(),
        }
    }

    /// Makes the counts readable without the lock (after every change of them).
    fn publish(&self) {
        self.usage[0].store(self.stored, Ordering::Relaxed);
        self.usage[1].store(self.bytes, Ordering::Relaxed);
    }

    fn touch(&mut self, key: &Key) {
        self.tick += 1;
        if let Some(e) = self.entries.get_mut(key) {
            self.lru.remove(&e.used);
            e.used = self.tick;
            self.lru.insert(self.tick, key.clone());
        }
    }

    fn etag(&mut self) -> u64 {
        self.next_etag = self.next_etag.wrapping_add(1);
        self.next_etag
    }

    /// Removes an entry; the groups of its responses, one per response, for counting.
    fn remove(&mut self, key: &Key) -> usize {
        let Some(e) = self.entries.remove(key) else {
            return 0;
        };
        if self.lru.get(&e.used) == Some(key) {
            self.lru.remove(&e.used);
        }
        for s in &e.responses {
            self.bytes = self.bytes.saturating_sub(s.size);
        }
        self.stored = self.stored.saturating_sub(e.responses.len());
        e.responses.len()
    }

    /// Forgets what `server` has stored under `key`.
    fn forget(&mut self, key: &Key, server: SocketAddr) {
        let Some(e) = self.entries.get_mut(key) else {
            return;
        };
        if let Some(i) = e.responses.iter().position(|s| s.server == server) {
            let old = e.responses.swap_remove(i);
            self.bytes = self.bytes.saturating_sub(old.size);
            self.stored = self.stored.saturating_sub(1);
            e.group_etag = self.next_etag.wrapping_add(1);
            self.next_etag = e.group_etag;
        }
        if e.responses.is_empty() {
            self.remove(key);
        }
    }

    /// Evicts least recently used entries until the bounds hold; `keep` goes last. The
    /// group (None: an origin) of each response evicted, for the events.
    fn evict(&mut self, keep: Option<&Key>) -> Vec<Option<usize>> {
        let mut evicted = Vec::new();
        while self.stored > self.max_entries || self.bytes > self.max_bytes {
            let lru = &self.lru;
            let victim = lru
                .iter()
                .find(|(_, k)| Some(*k) != keep)
                .or_else(|| lru.iter().next())
                .map(|(t, _)| *t);
            // Out of the LRU first, so that every turn of the loop shrinks it.
            let Some(k) = victim.and_then(|t| self.lru.remove(&t)) else {
                break;
            };
            let n = self.remove(&k);
            evicted.extend(std::iter::repeat_n(group_of(&k), n));
        }
        evicted
    }

    /// Empties the store (the cache turned off): the group of each response removed.
    fn clear(&mut self) -> Vec<Option<usize>> {
        let keys: Vec<Key> = self.lru.values().cloned().collect();
        let mut removed = Vec::new();
        for k in keys {
            let n = self.remove(&k);
            removed.extend(std::iter::repeat_n(group_of(&k), n));
        }
        self.det_pivs.clear();
        removed
    }
}

/// The group an entry's request went to; None for an origin.
fn group_of(key: &Key) -> Option<usize> {
    match key.0 {
        To::Group(g) => Some(g),
        To::Origin(_) => None,
    }
}

impl Cache {
    pub(super) fn new(store: Arc<Mutex<Store>>) -> Self {
        let usage = lock(&store).usage.clone();
        Cache {
            store,
            usage,
            filling: HashMap::default(),
            reply: None,
            deferred: Vec::new(),
            stand_in: false,
        }
    }
}

/// Whether a request is a Deterministic Request of the group's Deterministic Client
/// `kid` (cacheable-oscore-02 §3, groupcomm-proxy §7.4.1), the only end-to-end protected
/// requests whose responses are cached: outer FETCH (§3.4.2 step 8), the OSCORE option
/// in pairwise mode with that kid and a Request-Hash (`is_deterministic_request`, §3.4.3
/// step 2). The OSCORE option value, the Request-Hash and the payload are then part of
/// the Cache-Key like any other option (they are what makes requests from different
/// clients the same, §3.3). Whether it is genuine is the request filter's to check
/// (where the proxy is a member, `filter.rs`) before anything is stored or served.
pub(crate) fn deterministic_request(kid: Option<&[u8]>, view: &MessageView) -> bool {
    kid.is_some_and(|k| view.code() == FETCH && is_deterministic_request(view, k))
}

/// RFC 7252 §5.4.6: NoCacheKey options are those with bits 0x1e of the number 0x1c.
fn no_cache_key(n: u16) -> bool {
    n & 0x1e == 0x1c
}

/// RFC 7252 §5.9: the codes whose responses are cacheable (2.05, and errors, which are
/// cacheable with their Max-Age); 2.01, 2.02, 2.04 are not, 2.03 only updates.
fn cacheable_code(c: u8) -> bool {
    c == code::CONTENT || matches!(c >> 5, 4 | 5)
}

impl Engine {
    fn group_cache(&self, g: usize) -> GroupCache {
        self.cfg.cache.groups.get(g).cloned().unwrap_or_default()
    }

    /// The Cache-Key of a request on its way out, or None where it must not be cached:
    /// cache off, the proxy's own OSCORE layer on it, not GET or FETCH, an Observe
    /// registration, or protected end to end and not deterministic (§7.4).
    pub(super) fn cache_key(&self, out: &Forward<'_>, group: Option<usize>) -> Option<Key> {
        if !self.cfg.cache.enabled {
            return None;
        }
        let view = out.view;
        if !matches!(view.code(), code::GET | FETCH) || view.option(opt::OBSERVE).is_some() {
            return None;
        }
        if view.option(opt::OSCORE).is_some()
            && !group.is_some_and(|g| {
                let kid = self
                    .cfg
                    .deterministic_kids
                    .get(g)
                    .and_then(Option::as_deref);
                deterministic_request(kid, view)
            })
        {
            return None;
        }
        let to = match (group, &out.target) {
            (Some(g), _) => To::Group(g),
            (None, t) => match self.destination(t) {
                Ok(super::Destination::Origin(o)) => To::Origin(o),
                _ => return None,
            },
        };
        // The options as forwarded: Uri-Path and Uri-Query whether the client sent them
        // or a Proxy-Uri, no proxy options, no Hop-Limit. The Group-ETag is the client's
        // validator of the set (§7.3), not part of what the servers answer.
        let ge = self.cfg.options.group_etag;
        let mut k = vec![view.code()];
        for (n, v) in self.forwarded_options(view, &out.target, &None, false) {
            if no_cache_key(n) || n == ge {
                continue;
            }
            k.extend_from_slice(&n.to_be_bytes());
            k.extend_from_slice(&(v.len() as u16).to_be_bytes());
            k.extend_from_slice(v);
        }
        // RFC 8132 §2.3: FETCH's payload is part of the key (GET's is kept too: a GET
        // with a payload is not the same request).
        k.push(0xff);
        k.extend_from_slice(view.payload());
        Some((to, k))
    }

    /// Tries to answer a group request from the cache alone (§7.1, §7.3). True: the
    /// answer is in `cache.reply` (and `cache.deferred`); false: forward it.
    pub(super) fn cache_serve_group(&mut self, g: usize, key: &Key, view: &MessageView) -> bool {
        self.cache.reply = None;
        self.cache.deferred.clear();
        let members = self.group_cache(g).members;
        if members.is_empty() || self.cache.stand_in {
            return false;
        }
        let now = self.now;
        let mut st = lock(&self.cache.store);
        let Some(e) = st.entries.get(key) else {
            return false;
        };
        // The set J (§7.3), in the order of the configured members; complete or nothing.
        let mut set = Vec::with_capacity(members.len());
        for m in &members {
            match e.responses.iter().find(|s| s.server == *m) {
                Some(s) => match s.left(now) {
                    Some(left) => set.push((s.clone(), left)),
                    None => return false,
                },
                None => return false,
            }
        }
        let ge = e.group_etag.to_be_bytes().to_vec();
        st.touch(key);
        // The answers are made without the store.
        drop(st);
        let ge_no = self.cfg.options.group_etag;
        let shortest = set.iter().map(|(_, l)| *l).min().unwrap_or_default();
        let matched = view
            .options()
            .any(|(n, v)| n == ge_no && v == ge.as_slice());
        let mut answers = Vec::new();
        if matched {
            // §7.3: one 2.03 with the Group-ETag, no payload; its Max-Age the set's
            // shortest freshness, which the client's copies take on (RFC 7252 §5.9.1.3).
            answers.push(Local {
                code: VALID,
                options: vec![(ge_no, ge), (opt::MAX_AGE, max_age(shortest))],
                payload: Vec::new(),
            });
        } else {
            let rf_no = self.cfg.options.reply_from;
            for (s, left) in set {
                let mut options = s.options.clone();
                options.push((opt::MAX_AGE, max_age(left)));
                options.push((rf_no, cri::reply_from(s.server)));
                // §7.3: a 2.05 from a complete set may carry the set's Group-ETag, once.
                if s.code == code::CONTENT {
                    options.push((ge_no, ge.clone()));
                }
                options.sort_by_key(|(n, _)| *n);
                answers.push(Local {
                    code: s.code,
                    options,
                    payload: s.payload.clone(),
                });
            }
        }
        let mut answers = answers.into_iter();
        self.cache.reply = answers.next();
        self.cache.deferred.extend(answers);
        self.emit(Event::Cache {
            group: Some(g),
            what: if matched {
                CacheEvent::GroupEtagValid
            } else {
                CacheEvent::Hit
            },
        });
        true
    }

    /// Tries to answer a unicast request from the cache: the origin's fresh response to
    /// this request, or one a group request stored from it (§7: the unicast URI with the
    /// response's source in place of the group's authority).
    pub(super) fn cache_serve_unicast(&mut self, key: &Key) -> bool {
        self.cache.reply = None;
        self.cache.deferred.clear();
        let To::Origin(origin) = key.0 else {
            return false;
        };
        let now = self.now;
        let mut found = None;
        let candidates = std::iter::once(key.clone())
            .chain((0..self.cfg.groups.len()).map(|g| (To::Group(g), key.1.clone())));
        let mut st = lock(&self.cache.store);
        for k in candidates {
            if let Some(e) = st.entries.get(&k)
                && let Some(s) = e
                    .responses
                    .iter()
                    .find(|s| s.server == origin && s.left(now).is_some())
            {
                found = Some((k, s.clone()));
                break;
            }
        }
        let Some((k, s)) = found else {
            return false;
        };
        st.touch(&k);
        // The answer is made without the store.
        drop(st);
        let mut options = s.options.clone();
        options.push((opt::MAX_AGE, max_age(s.left(now).unwrap_or_default())));
        options.sort_by_key(|(n, _)| *n);
        let local = Local {
            code: s.code,
            options,
            payload: s.payload.clone(),
        };
        self.cache.reply = Some(local);
        self.emit(Event::Cache {
            group: None,
            what: CacheEvent::Hit,
        });
        true
    }

    /// The ETags of the stale stored responses of `key` to revalidate with the forwarded
    /// request (RFC 7252 §5.6.2; §7.2.1, §7.2.2): none where the client sent ETags of its
    /// own (then a 2.03 is the client's).
    pub(super) fn cache_etags(&self, key: Option<&Key>, view: &MessageView) -> Vec<Vec<u8>> {
        let (Some(key), None) = (key, view.option(opt::ETAG)) else {
            return Vec::new();
        };
        let st = lock(&self.cache.store);
        let Some(e) = st.entries.get(key) else {
            return Vec::new();
        };
        let mut etags: Vec<Vec<u8>> = Vec::new();
        for s in &e.responses {
            if s.left(self.now).is_none()
                && let Some(t) = s.etag()
                && !etags.iter().any(|e| e == t)
                && etags.len() < MAX_REVALIDATION_ETAGS
            {
                etags.push(t.to_vec());
            }
        }
        etags
    }

    /// The exchange `token` was opened for a cacheable request: its responses are
    /// stored under `key` (a miss: nothing answered it from the cache).
    ///
    /// A group request forwarded with fresh stored responses of some servers uses them
    /// too (§7.1, extending §5.2.1 step 6): one whose residual lifetime L is below T' goes
    /// to the client at once (it would be stale by T'); the others wait, and at T' those
    /// of servers that did not answer are sent (see `cache_at_deadline`).
    pub(super) fn cache_fill(
        &mut self,
        token: u64,
        key: Key,
        revalidating: bool,
        timeout: std::time::Duration,
    ) {
        let group = group_of(&key);
        let (mut now_, mut waiting) = (Vec::new(), Vec::new());
        let st = lock(&self.cache.store);
        if group.is_some()
            && !self.cache.stand_in
            && let Some(e) = st.entries.get(&key)
        {
            for s in &e.responses {
                match s.left(self.now) {
                    Some(l) if l < timeout => now_.push(s.server),
                    Some(_) => waiting.push(s.server),
                    None => {}
                }
            }
        }
        drop(st);
        self.emit(Event::Cache {
            group,
            what: CacheEvent::Miss,
        });
        self.cache.filling.insert(
            token,
            Filling {
                key: key.clone(),
                revalidating,
                waiting,
            },
        );
        for server in now_ {
            self.cache_relay_stored(token, &key, server);
        }
    }

    /// At T' of exchange `token` (just before it closes): the stored responses of the
    /// servers that were fresh when the request went out and did not answer (§7.1).
    pub(super) fn cache_at_deadline(&mut self, token: u64) {
        let Some(f) = self.cache.filling.get_mut(&token) else {
            return;
        };
        let waiting = std::mem::take(&mut f.waiting);
        let key = f.key.clone();
        for server in waiting {
            self.cache_relay_stored(token, &key, server);
        }
    }

    /// Relays `server`'s stored response under `key`, if still fresh, as a response of
    /// exchange `token` (with its Reply-From and Max-Age aged, as any relayed response).
    fn cache_relay_stored(&mut self, token: u64, key: &Key, server: SocketAddr) {
        let now = self.now;
        let st = lock(&self.cache.store);
        let found = st
            .entries
            .get(key)
            .and_then(|e| e.responses.iter().find(|s| s.server == server))
            .cloned();
        // Encoding and relaying (protection toward the client included) happen without
        // the store.
        drop(st);
        let Some(s) = found else {
            return;
        };
        let Some(left) = s.left(now) else {
            return;
        };
        let mut opts: Vec<(u16, &[u8])> =
            s.options.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        let age = max_age(left);
        opts.push((opt::MAX_AGE, &age));
        let bytes = build::encode(NON, s.code, 0, &token.to_be_bytes(), &mut opts, &s.payload);
        if let Ok(v) = MessageView::parse(&bytes) {
            self.relay(now, token, server, &v);
        }
    }

    /// The exchange `token` ended: its later responses are not stored.
    pub(super) fn cache_closed(&mut self, token: u64) {
        self.cache.filling.remove(&token);
    }

    /// A response of exchange `token` from `from`, about to be relayed: stored if it
    /// may be; a 2.03 to the proxy's revalidation refreshes the stored response, and
    /// what is relayed instead is the stored representation (returned, as a message).
    ///
    /// `storable` is the response filter's say (`filter.rs`): a response to a
    /// Deterministic Request that nothing verified is relayed and not stored (nor does it
    /// touch what is stored: a forgery must not evict a server's verified answer).
    pub(super) fn cache_response(
        &mut self,
        token: u64,
        from: SocketAddr,
        view: &MessageView,
        storable: Storable,
    ) -> Relay {
        let Some(f) = self.cache.filling.get_mut(&token) else {
            return Relay::Original;
        };
        // It answered: its stored response is not sent at T' (§7.1).
        f.waiting.retain(|s| *s != from);
        let group = match f.key.0 {
            To::Group(g) => g,
            To::Origin(_) => usize::MAX,
        };
        let kid = match storable {
            Storable::Yes => None,
            Storable::No => return Relay::Original,
            Storable::Verified { gid, kid, piv } => {
                if !self.det_newer(group, gid, kid.clone(), piv) {
                    return Relay::Original;
                }
                Some(kid)
            }
        };
        match self.cache_store(token, from, view, kid) {
            Some(Some(bytes)) => Relay::Stored(bytes),
            Some(None) => Relay::Original,
            None => Relay::Nothing,
        }
    }

    /// Whether a verified answer of server `kid` under `gid` with Partial IV `piv` is
    /// newer than any it had stored for group `g` (recorded if so): a replay of one
    /// already stored (the same Partial IV) or of an older one is not stored again.
    /// Answers to different requests reordered on the way lose a store, never more.
    fn det_newer(&mut self, g: usize, gid: Vec<u8>, kid: Vec<u8>, piv: u64) -> bool {
        let mut st = lock(&self.cache.store);
        let bound = st.max_entries;
        let key = (g, gid, kid);
        if st.det_pivs.len() >= bound && !st.det_pivs.contains_key(&key) {
            // Full: first forget the servers of epochs no checker accepts any more (a
            // rekeyed group's old Gid), whose answers can no longer verify, so that
            // rekeys alone never fill the table. (A field read per entry: no check.)
            let checkers = &self.checkers;
            st.det_pivs.retain(|(h, gid, _), _| {
                checkers
                    .get(*h)
                    .and_then(Option::as_ref)
                    .is_some_and(|c| c.has_epoch(gid))
            });
        }
        let pivs = &mut st.det_pivs;
        let full = pivs.len() >= bound;
        match pivs.get_mut(&key) {
            Some(top) if *top >= piv => false,
            Some(top) => {
                *top = piv;
                true
            }
            None if full => false,
            None => {
                pivs.insert(key, piv);
                true
            }
        }
    }

    /// `cache_response`: Some(None) relays the original, Some(bytes) those, None nothing.
    fn cache_store(
        &mut self,
        token: u64,
        from: SocketAddr,
        view: &MessageView,
        kid: Option<Vec<u8>>,
    ) -> Option<Option<Vec<u8>>> {
        let Some(f) = self.cache.filling.get(&token) else {
            return Some(None);
        };
        let (key, revalidating) = (f.key.clone(), f.revalidating);
        let group = group_of(&key);
        if view.option(opt::OBSERVE).is_some() {
            return Some(None);
        }
        let now = self.now;
        let max_age_of = |v: &MessageView| {
            v.option(opt::MAX_AGE).map_or(Some(DEFAULT_MAX_AGE), |m| {
                read_uint(m).map(|s| Duration::from_secs(s.into()))
            })
        };
        if view.code() == VALID {
            if !revalidating {
                return Some(None);
            }
            let etag = view.option(opt::ETAG)?;
            let new_age = max_age_of(view)
                .unwrap_or(DEFAULT_MAX_AGE)
                .min(self.cfg.cache.max_age);
            let mut st = lock(&self.cache.store);
            let e = st.entries.get_mut(&key)?;
            let s = e
                .responses
                .iter_mut()
                .find(|s| s.server == from && s.etag() == Some(etag))?;
            // RFC 7252 §5.9.1.3: the stored response is fresh again, with the 2.03's
            // Max-Age; its content is unchanged, and so is the set's Group-ETag. (A copy
            // only where another thread is serving the old one at this moment.)
            let fresh = Arc::make_mut(s);
            fresh.at = now;
            fresh.max_age = new_age;
            let s = s.clone();
            st.touch(&key);
            drop(st);
            let mut opts: Vec<(u16, &[u8])> =
                s.options.iter().map(|(n, v)| (*n, v.as_slice())).collect();
            let age = uint_value(new_age.as_secs().min(u32::MAX as u64) as u32);
            opts.push((opt::MAX_AGE, &age));
            let bytes = build::encode(NON, s.code, 0, view.token(), &mut opts, &s.payload);
            self.emit(Event::Cache {
                group,
                what: CacheEvent::Revalidated,
            });
            return Some(Some(bytes));
        }
        if !cacheable_code(view.code()) {
            return Some(None);
        }
        // With the group's members known, only theirs are stored: others' cannot make a
        // set complete, and a flood of them from forged addresses would evict the rest.
        if let Some(g) = group {
            let members = self.cfg.cache.groups.get(g).map(|c| &c.members);
            if members.is_some_and(|m| !m.is_empty() && !m.contains(&from)) {
                return Some(None);
            }
        }
        // The stored response is made before the store is locked.
        let rf_no = self.cfg.options.reply_from;
        let options: Vec<(u16, Vec<u8>)> = view
            .options()
            .filter(|(n, _)| *n != opt::MAX_AGE && *n != rf_no)
            .map(|(n, v)| (n, v.to_vec()))
            .collect();
        let payload = view.payload();
        let cap = self.cfg.cache.max_age;
        let age = max_age_of(view).map(|a| a.min(cap));
        let size = OVERHEAD
            + key.1.len()
            + payload.len()
            + options.iter().map(|(_, v)| v.len() + 4).sum::<usize>();
        let mut st = lock(&self.cache.store);
        let c = &mut *st;
        let (max_entries, max_bytes) = (c.max_entries, c.max_bytes);
        // Max-Age 0 (or unreadable) is not to be stored (RFC 7252 §5.6.1), and what is
        // stored for that server is no longer current.
        let Some(age) = age.filter(|a| !a.is_zero() && size <= max_bytes && max_entries > 0) else {
            c.forget(&key, from);
            c.publish();
            return Some(None);
        };
        drop(st);
        let new = Arc::new(Stored {
            server: from,
            code: view.code(),
            options,
            payload: payload.to_vec(),
            at: now,
            max_age: age,
            size,
            kid,
        });
        let mut st = lock(&self.cache.store);
        let c = &mut *st;
        let tick = c.tick + 1;
        let fresh_etag = c.etag();
        let e = c.entries.entry(key.clone()).or_insert_with(|| Entry {
            responses: Vec::new(),
            used: tick,
            group_etag: fresh_etag,
        });
        let mut changed = true;
        if let Some(i) = e.responses.iter().position(|s| s.server == from) {
            let old = e.responses.swap_remove(i);
            changed = !old.same_content(new.code, &new.options, &new.payload);
            c.bytes = c.bytes.saturating_sub(old.size);
            c.stored = c.stored.saturating_sub(1);
        }
        // A verified server's answer is held under one address only, the one its newest
        // answer came from: a copy relayed from another member's address (which nothing
        // in the answer names) cannot fill that member's place in a set (§7.1) while
        // the member's own answers are dropped as replays of it.
        if new.kid.is_some()
            && let Some(i) = e
                .responses
                .iter()
                .position(|s| s.server != from && s.kid == new.kid)
        {
            let old = e.responses.swap_remove(i);
            c.bytes = c.bytes.saturating_sub(old.size);
            c.stored = c.stored.saturating_sub(1);
            changed = true;
        }
        // §7.3: the Group-ETag changes whenever a response of the set does.
        if changed {
            e.group_etag = fresh_etag;
        }
        e.responses.push(new);
        c.bytes += size;
        c.stored += 1;
        c.lru.insert(e.used, key.clone());
        c.touch(&key);
        // The bounds are the proxy's: what every thread stored counts.
        let evicted = c.evict(Some(&key));
        c.publish();
        drop(st);
        self.emit(Event::Cache {
            group,
            what: CacheEvent::Stored,
        });
        self.emit_evicted(evicted);
        Some(None)
    }

    fn emit_evicted(&mut self, groups: Vec<Option<usize>>) {
        for group in groups {
            self.emit(Event::Cache {
                group,
                what: CacheEvent::Evicted,
            });
        }
    }

    /// After a new configuration (SIGHUP): shrunk bounds evict down to them; a cache
    /// turned off is emptied. The store is the proxy's, so the first engine applying the
    /// reload does it (and counts the evictions); on the others it finds nothing left
    /// to do. The bounds, set in the store, hold for every engine from then on.
    pub(super) fn cache_resize(&mut self) {
        let mut st = lock(&self.cache.store);
        st.max_entries = self.cfg.cache.max_entries;
        st.max_bytes = self.cfg.cache.max_bytes;
        let removed = if self.cfg.cache.enabled {
            st.evict(None)
        } else {
            st.clear()
        };
        st.publish();
        drop(st);
        if !self.cfg.cache.enabled {
            self.cache.filling.clear();
        }
        self.emit_evicted(removed);
    }

    /// Sends the further responses of a set served from the cache, after the first
    /// (the reply to the request itself), each as a NON under the client's token.
    pub(super) fn cache_flush(&mut self, listener: usize, client: SocketAddr, token: &[u8]) {
        let link = Link::Listener(listener);
        for l in std::mem::take(&mut self.cache.deferred) {
            let Some(mid) = self.mid_to(link, client, false, true) else {
                // No Message ID free toward the client (RFC 7252 §4.4): the rest of the
                // set is not sent, and each response left out is counted.
                self.drop_msg(
                    crate::proxy::events::DropReason::MessageIdsExhausted,
                    client,
                );
                continue;
            };
            let mut opts: Vec<(u16, &[u8])> =
                l.options.iter().map(|(n, v)| (*n, v.as_slice())).collect();
            let bytes = self.encode(NON, l.code, mid, token, &mut opts, &l.payload);
            self.send(link, client, bytes);
        }
    }

    /// Stored responses and their bytes, for the metrics: of the whole proxy (the store
    /// every thread shares), as of its last update, read without the store's lock.
    pub fn cache_usage(&self) -> (usize, usize) {
        let u = &self.cache.usage;
        (u[0].load(Ordering::Relaxed), u[1].load(Ordering::Relaxed))
    }
}

/// A Max-Age value for `left` of freshness: whole seconds, rounded down (RFC 7252
/// §5.6.1: never fresher than the origin allowed).
fn max_age(left: Duration) -> Vec<u8> {
    uint_value(left.as_secs().min(u32::MAX as u64) as u32)
}
