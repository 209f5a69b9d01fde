//! The engine's bounded tables, each with what happens at its bound written down.

use std::collections::VecDeque;

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// RFC 7252 §4.8.2: how long a CON and a NON Message ID must be remembered.
pub(crate) const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);
pub(crate) const NON_LIFETIME: Duration = Duration::from_secs(145);

/// Time in whole seconds since a table's first use: entries that expire by the second
/// stay small (u32) and are never forgotten early (expiries round up).
#[derive(Debug, Default)]
pub(crate) struct Seconds {
    base: Option<Instant>,
}

impl Seconds {
    /// `t` in whole seconds since the first call, rounded down or up.
    pub(crate) fn at(&mut self, t: Instant, up: bool) -> u32 {
        let base = *self.base.get_or_insert(t);
        let d = t.saturating_duration_since(base);
        let s = d.as_secs() + u64::from(up && d.subsec_nanos() > 0);
        s.min(u32::MAX as u64) as u32
    }

    /// The instant of second `s` (after a first call to [`Self::at`]).
    pub(crate) fn instant(&self, s: u32) -> Option<Instant> {
        self.base.map(|b| b + Duration::from_secs(s as u64))
    }
}

/// Message deduplication (RFC 7252 §4.5): (sender, Message ID) pairs seen recently, with
/// the reply sent to a CON so that a retransmission gets the same reply.
///
/// No sender can make the table forget another's entries: each sender address has a
/// share of at most `per_sender` entries (one that sends more within a lifetime replaces
/// its own oldest), and when the whole table is full a sender below its share cannot get
/// a new entry until one expires ([`Dedup::room`] says so, and the engine refuses the
/// request with 5.03 rather than process it unrecorded). Only requests that the proxy
/// processed are recorded (see the engine): a refusal needs no entry, as refusing again
/// is the same answer.
///
/// Consulted for every request and sized to hold a client's whole `client_rate` for
/// EXCHANGE_LIFETIME, so an entry is small: entries of one lifetime class expire in the
/// order they were recorded, so each sender address (its IP and scope, kept once in a
/// slot) has two rings (NON, CON) of (port and Message ID, expiry second), 8 bytes, and
/// the table has one index of (slot, port and Message ID), 8 bytes plus the hash table's
/// control byte: 17 bytes per entry with both at full load, at most ~37 just after they
/// grew (see [`Dedup::heap_bytes`]; benches/forward.rs prints it: 26.7 at ~1 M entries
/// of 1,024 senders, where the table before was 130). A sender's expired entries leave its rings whenever
/// it is looked up, so the index says exactly what is live for that sender; the sweep
/// ([`Dedup::expire`]) frees those of senders gone quiet. The few replies to CONs are
/// kept aside.
#[derive(Debug)]
pub(crate) struct Dedup {
    /// Sender address -> its slot in `slots`.
    senders: HashMap<Sender, u32>,
    slots: Vec<Slot>,
    /// Slots of senders that had nothing left, for reuse.
    free: Vec<u32>,
    /// Every recorded entry (at most `capacity` + `per_sender`).
    index: HashSet<IKey>,
    replies: HashMap<IKey, Box<[u8]>>,
    capacity: usize,
    per_sender: usize,
    clock: Seconds,
    /// The earliest expiry among the entries, as of the last [`Dedup::expire`] (the
    /// engine's sweep): a full table is not scanned per request.
    next_expiry: u32,
    /// The last sender found, as lookup, room and record come in that order for one
    /// request: one map probe instead of three.
    last: Option<(Sender, u32)>,
}

type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// A sender address: the IP as two words (a u128 would align to 16 bytes) and the IPv6
/// scope with the top bit telling IPv6 from IPv4. Its share is per address, as the
/// per-client limits are.
type Sender = ([u64; 2], u32);

/// One sender's entries, oldest first per lifetime class: (port << 16 | Message ID,
/// expiry second). Index 0: NON_LIFETIME, 1: EXCHANGE_LIFETIME.
#[derive(Debug, Default)]
struct Slot {
    sender: Sender,
    /// In use (a sender maps to it), rather than on the free list.
    live: bool,
    rings: [VecDeque<(u32, u32)>; 2],
}

impl Slot {
    fn held(&self) -> usize {
        self.rings[0].len() + self.rings[1].len()
    }
}

/// An entry of the index: the sender's slot and port << 16 | Message ID, hashed as one
/// word (8 bytes, aligned to 4: the index's buckets are 8 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IKey {
    slot: u32,
    port_mid: u32,
}

impl std::hash::Hash for IKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write_u64((self.slot as u64) << 32 | self.port_mid as u64);
    }
}

fn sender_of(from: SocketAddr) -> Sender {
    match from {
        SocketAddr::V4(a) => ([u32::from(*a.ip()) as u64, 0], 0),
        SocketAddr::V6(a) => {
            let ip = u128::from(*a.ip());
            ([ip as u64, (ip >> 64) as u64], a.scope_id() | 1 << 31)
        }
    }
}

fn port_mid(from: SocketAddr, mid: u16) -> u32 {
    (from.port() as u32) << 16 | mid as u32
}

/// What [`Dedup::lookup`] found: a duplicate, with a copy of the reply given to it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Duplicate(pub Option<Vec<u8>>);

impl Dedup {
    pub(crate) fn new(capacity: usize, per_sender: usize) -> Self {
        Dedup {
            senders: HashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            index: HashSet::default(),
            replies: HashMap::default(),
            capacity,
            per_sender: per_sender.clamp(1, capacity.max(1)),
            clock: Seconds::default(),
            next_expiry: 0,
            last: None,
        }
    }

    /// The slot of `sender`, if it holds entries.
    fn slot_of(&mut self, sender: Sender) -> Option<u32> {
        if let Some((s, i)) = self.last
            && s == sender
        {
            return Some(i);
        }
        let i = *self.senders.get(&sender)?;
        self.last = Some((sender, i));
        Some(i)
    }

    /// Drops the entries of slot `i` that expired by second `now_s` (its rings' fronts).
    fn age(&mut self, i: u32, now_s: u32) {
        let (index, replies) = (&mut self.index, &mut self.replies);
        for ring in &mut self.slots[i as usize].rings {
            while let Some(&(pm, exp)) = ring.front() {
                if exp > now_s {
                    break;
                }
                ring.pop_front();
                let k = IKey {
                    slot: i,
                    port_mid: pm,
                };
                index.remove(&k);
                if !replies.is_empty() {
                    replies.remove(&k);
                }
            }
        }
    }

    /// Whether the message was seen within its lifetime (nothing is recorded).
    pub(crate) fn lookup(&mut self, from: SocketAddr, mid: u16, now: Instant) -> Option<Duplicate> {
        let now_s = self.clock.at(now, false);
        let slot = self.slot_of(sender_of(from))?;
        self.age(slot, now_s);
        let k = IKey {
            slot,
            port_mid: port_mid(from, mid),
        };
        if !self.index.contains(&k) {
            return None;
        }
        Some(Duplicate(self.replies.get(&k).map(|r| r.to_vec())))
    }

    /// Whether a new message from `from` can be recorded now; if not, when the table's
    /// next entry expires (it is freed by the [`Dedup::expire`] after that). No scan:
    /// refusing costs no more than a lookup.
    pub(crate) fn room(&mut self, from: SocketAddr, now: Instant) -> Result<(), Instant> {
        let held = match self.slot_of(sender_of(from)) {
            Some(i) => self.slots[i as usize].held(),
            None => 0,
        };
        if held >= self.per_sender || self.index.len() < self.capacity {
            return Ok(());
        }
        let at = self.clock.instant(self.next_expiry).unwrap_or(now);
        Err(at.max(now))
    }

    /// Records a message (after [`Self::lookup`] found none and [`Self::room`] allowed
    /// it). A sender at its share forgets its own entry closest to expiry early; nobody
    /// else's.
    pub(crate) fn record(&mut self, from: SocketAddr, mid: u16, now: Instant, lifetime: Duration) {
        // The clock's base is the first time it is given: `now`, not the expiry.
        let now_s = self.clock.at(now, false);
        let expires = self.clock.at(now + lifetime, true);
        let sender = sender_of(from);
        let i = match self.slot_of(sender) {
            Some(i) => i,
            None => {
                let i = match self.free.pop() {
                    Some(i) => {
                        let s = &mut self.slots[i as usize];
                        (s.sender, s.live) = (sender, true);
                        i
                    }
                    None => {
                        self.slots.push(Slot {
                            sender,
                            live: true,
                            ..Slot::default()
                        });
                        (self.slots.len() - 1) as u32
                    }
                };
                self.senders.insert(sender, i);
                self.last = Some((sender, i));
                i
            }
        };
        self.age(i, now_s);
        let pm = port_mid(from, mid);
        if !self.index.insert(IKey {
            slot: i,
            port_mid: pm,
        }) {
            // Still live: the caller looked it up first, so this is not reached; the
            // entry keeps its first expiry (its ring record is the one that removes it).
            return;
        }
        let slot = &mut self.slots[i as usize];
        if slot.held() >= self.per_sender {
            // The front closest to expiry: the entry whose early end matters least.
            let r = match (slot.rings[0].front(), slot.rings[1].front()) {
                (Some(a), Some(b)) => usize::from(b.1 < a.1),
                (None, _) => 1,
                _ => 0,
            };
            if let Some((old, _)) = slot.rings[r].pop_front() {
                let k = IKey {
                    slot: i,
                    port_mid: old,
                };
                self.index.remove(&k);
                self.replies.remove(&k);
            }
        }
        let class = usize::from(lifetime > NON_LIFETIME);
        slot.rings[class].push_back((pm, expires));
        debug_assert!(self.index.len() <= self.capacity + self.per_sender);
    }

    pub(crate) fn set_reply(&mut self, from: SocketAddr, mid: u16, reply: Vec<u8>) {
        let Some(slot) = self.slot_of(sender_of(from)) else {
            return;
        };
        let k = IKey {
            slot,
            port_mid: port_mid(from, mid),
        };
        if self.index.contains(&k) {
            self.replies.insert(k, reply.into_boxed_slice());
        }
    }

    /// Forgets what has outlived its lifetime, and senders with nothing left; gives
    /// back memory that a past peak left unused.
    pub(crate) fn expire(&mut self, now: Instant) {
        let now_s = self.clock.at(now, false);
        let mut next = u32::MAX;
        for i in 0..self.slots.len() as u32 {
            if !self.slots[i as usize].live {
                continue;
            }
            self.age(i, now_s);
            let slot = &mut self.slots[i as usize];
            if slot.held() == 0 {
                self.senders.remove(&slot.sender);
                *slot = Slot::default();
                self.free.push(i);
                continue;
            }
            for ring in &mut slot.rings {
                if let Some(f) = ring.front() {
                    next = next.min(f.1);
                }
                if ring.capacity() > 4 * ring.len() + 64 {
                    ring.shrink_to(2 * ring.len());
                }
            }
        }
        self.last = None;
        self.next_expiry = if next == u32::MAX { now_s } else { next };
        if self.index.capacity() > 4 * self.index.len() + 4096 {
            self.index.shrink_to(2 * self.index.len());
        }
    }

    /// The heap this table holds, by its containers' capacities (hashbrown: a bucket of
    /// the element's size and one control byte per bucket, buckets a power of two at
    /// most 7/8 full).
    pub(crate) fn heap_bytes(&self) -> usize {
        fn table(cap: usize, elem: usize) -> usize {
            if cap == 0 {
                return 0;
            }
            let buckets = if cap < 8 {
                (cap + 1).next_power_of_two()
            } else {
                (cap * 8 / 7).next_power_of_two()
            };
            buckets * (elem + 1) + 16
        }
        let rings: usize = self
            .slots
            .iter()
            .map(|s| (s.rings[0].capacity() + s.rings[1].capacity()) * 8)
            .sum();
        table(self.index.capacity(), size_of::<IKey>())
            + table(
                self.senders.capacity(),
                size_of::<Sender>() + size_of::<u32>(),
            )
            + table(self.replies.capacity(), size_of::<(IKey, Box<[u8]>)>())
            + self.replies.values().map(|r| r.len()).sum::<usize>()
            + self.slots.capacity() * size_of::<Slot>()
            + self.free.capacity() * 4
            + rings
    }

    /// Entries held (live, or expired and not yet swept).
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

/// The deduplication table alone, as the engine uses it per request, for
/// benches/forward.rs to measure its cost and memory. Not an API.
#[doc(hidden)]
#[derive(Debug)]
pub struct DedupBench(Dedup);

#[doc(hidden)]
impl DedupBench {
    pub fn new(capacity: usize, per_sender: usize) -> Self {
        DedupBench(Dedup::new(capacity, per_sender))
    }

    /// What the engine does for a request: look up, check room, record (NON or CON
    /// lifetime). `Some(true)`: new and recorded; `Some(false)`: a duplicate; `None`:
    /// no room (5.03).
    pub fn request(&mut self, from: SocketAddr, mid: u16, now: Instant, con: bool) -> Option<bool> {
        if self.0.lookup(from, mid, now).is_some() {
            return Some(false);
        }
        self.0.room(from, now).ok()?;
        let lifetime = if con { EXCHANGE_LIFETIME } else { NON_LIFETIME };
        self.0.record(from, mid, now, lifetime);
        Some(true)
    }

    /// The engine's sweep.
    pub fn expire(&mut self, now: Instant) {
        self.0.expire(now)
    }

    pub fn heap_bytes(&self) -> usize {
        self.0.heap_bytes()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.len() == 0
    }
}

/// A token bucket per client for the fan-out rate (the proxy must not be an amplifier:
/// groupcomm-proxy §10, RFC 10020 §3.6).
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(crate) fn full(burst: f64, now: Instant) -> Self {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.at = now;
    }

    /// Takes one token, or says how long until one is there.
    pub(crate) fn take(&mut self, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        self.refill(rate, burst, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / rate.max(1e-9),
            ))
        }
    }

    /// The tokens there now, nothing taken (refilled to `now`, as `take` at `now` would
    /// find them): how far batched verification may speculate for this sender.
    pub(crate) fn available(&mut self, rate: f64, burst: f64, now: Instant) -> f64 {
        self.refill(rate, burst, now);
        self.tokens
    }

    pub(crate) fn is_full(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        self.refill(rate, burst, now);
        self.tokens >= burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A duplicate of a recorded message, with its reply.
    fn dup(d: &mut Dedup, a: SocketAddr, mid: u16, t: Instant) -> Option<Option<Vec<u8>>> {
        d.lookup(a, mid, t).map(|Duplicate(r)| r)
    }

    #[test]
    fn rfc7252_s4_5_dedup_remembers_and_forgets() {
        let t0 = Instant::now();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut d = Dedup::new(4, 2);
        assert_eq!(dup(&mut d, a, 1, t0), None);
        d.record(a, 1, t0, NON_LIFETIME);
        d.set_reply(a, 1, vec![9]);
        // A CON's duplicate gets the same reply.
        assert_eq!(dup(&mut d, a, 1, t0), Some(Some(vec![9])));
        d.record(a, 2, t0, NON_LIFETIME);
        // At its share a sender forgets its own oldest, with its reply.
        assert_eq!(d.room(a, t0), Ok(()));
        d.record(a, 3, t0, NON_LIFETIME);
        assert_eq!(d.len(), 2);
        assert!(d.replies.is_empty());
        assert_eq!(dup(&mut d, a, 1, t0), None);
        // Remembered for at least its lifetime (expiry is rounded up to a second)...
        let almost = t0 + NON_LIFETIME - Duration::from_millis(1);
        assert_eq!(dup(&mut d, a, 3, almost), Some(None));
        // ...after which a Message ID is new again.
        let later = t0 + NON_LIFETIME;
        assert_eq!(dup(&mut d, a, 3, later), None);
        d.expire(later);
        assert!(d.is_empty());
        // The sender is the whole endpoint: another port, family or scope is another one.
        let mut d = Dedup::new(8, 8);
        d.record(a, 7, t0, NON_LIFETIME);
        for other in [
            "127.0.0.1:2",
            "[::ffff:127.0.0.1]:1",
            "[fe80::1%1]:1",
            "[fe80::1%2]:1",
        ] {
            assert_eq!(dup(&mut d, other.parse().unwrap(), 7, t0), None);
        }
        assert_eq!(dup(&mut d, a, 7, t0), Some(None));
    }

    /// Issue 17: no sender evicts another's entries. When the table is full a sender
    /// below its share has no room (the engine refuses its request); the entries already
    /// there stay for their lifetime.
    #[test]
    fn rfc7252_s4_5_other_senders_cannot_evict_an_entry() {
        let t0 = Instant::now();
        let victim: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let mut d = Dedup::new(10, 4);
        d.record(victim, 42, t0, EXCHANGE_LIFETIME);
        for i in 0..100u16 {
            let other: SocketAddr = format!("198.51.100.{}:1", i % 50).parse().unwrap();
            if d.room(other, t0).is_ok() {
                d.record(other, i, t0, NON_LIFETIME);
            }
        }
        assert_eq!(d.len(), 10);
        assert_eq!(
            dup(&mut d, victim, 42, t0 + Duration::from_secs(200)),
            Some(None)
        );
        let newcomer: SocketAddr = "203.0.113.9:1".parse().unwrap();
        d.expire(t0);
        let free_at = d.room(newcomer, t0).unwrap_err();
        assert_eq!(free_at, t0 + NON_LIFETIME);
        // Freed by the sweep once expired.
        assert!(d.room(newcomer, free_at).is_err());
        d.expire(free_at);
        assert_eq!(d.room(newcomer, free_at), Ok(()));
    }

    /// RFC 7252 §4.5, §4.8.2 with the default limits: a client at the default
    /// client_rate (1000/s) after its burst (2000), all CON, for longer than
    /// EXCHANGE_LIFETIME, is never refused for room and none of its entries is
    /// forgotten early: every Message ID of the last 247 s is still a duplicate. (With
    /// the old defaults, 4,096 per client, its share covered 4 s.)
    #[test]
    fn rfc7252_s4_8_2_default_share_covers_the_default_rate_for_the_lifetime() {
        let l = crate::proxy::Limits::default();
        let mut d = Dedup::new(l.dedup_capacity, l.dedup_per_client);
        let t0 = Instant::now();
        let burst = l.client_burst as u64;
        let per_ms = l.client_rate / 1000.0;
        // 300 s: past EXCHANGE_LIFETIME, so entries expire as new ones come.
        let total = burst + (300.0 * l.client_rate) as u64;
        let at = |n: u64| {
            let ms = (n.saturating_sub(burst) as f64 / per_ms) as u64;
            t0 + Duration::from_millis(ms)
        };
        // 64 source ports, each reusing a Message ID only after 64 x 65,536 requests.
        let ep = |n: u64| -> (SocketAddr, u16) {
            let a = SocketAddr::from(([192, 0, 2, 1], 10_000 + (n % 64) as u16));
            (a, (n / 64) as u16)
        };
        let mut sweep = t0;
        for n in 0..total {
            let now = at(n);
            if now >= sweep {
                d.expire(now);
                sweep = now + Duration::from_secs(5);
            }
            let (a, mid) = ep(n);
            assert_eq!(dup(&mut d, a, mid, now), None, "request {n} new");
            assert_eq!(d.room(a, now), Ok(()), "request {n} has room");
            d.record(a, mid, now, EXCHANGE_LIFETIME);
        }
        let end = at(total - 1);
        // Everything of the last EXCHANGE_LIFETIME is still remembered...
        for n in (0..total)
            .rev()
            .take_while(|&n| at(n) + EXCHANGE_LIFETIME > end)
        {
            let (a, mid) = ep(n);
            assert_eq!(
                dup(&mut d, a, mid, end),
                Some(None),
                "request {n} forgotten"
            );
        }
        // ...and what is older is gone (not held past its lifetime).
        let (a, mid) = ep(burst);
        assert_eq!(dup(&mut d, a, mid, end), None);
        assert!(d.len() <= l.dedup_per_client);
    }

    /// The default table holds eight clients at the default client_rate, all CON, for
    /// longer than EXCHANGE_LIFETIME: none is ever refused for room (5.03 DedupFull)
    /// and none forgets an entry early (the old default, 65,536, filled in 8 s).
    #[test]
    fn rfc7252_s4_8_2_default_table_holds_eight_clients_at_the_default_rate() {
        let l = crate::proxy::Limits::default();
        let mut d = Dedup::new(l.dedup_capacity, l.dedup_per_client);
        let t0 = Instant::now();
        let mut sweep = t0;
        // 8 clients x 1000/s, one request from each every ms, for 260 s.
        for ms in 0..260_000u64 {
            let now = t0 + Duration::from_millis(ms);
            if now >= sweep {
                d.expire(now);
                sweep = now + Duration::from_secs(5);
            }
            for c in 0..8u8 {
                let a = SocketAddr::from(([198, 51, 100, c], 1 + (ms % 64) as u16));
                let mid = (ms / 64) as u16;
                assert_eq!(d.room(a, now), Ok(()), "client {c} at {ms} ms");
                assert_eq!(dup(&mut d, a, mid, now), None, "client {c} at {ms} ms");
                d.record(a, mid, now, EXCHANGE_LIFETIME);
            }
        }
        // 247 s of each client's requests are held, and the oldest still remembered.
        let now = t0 + Duration::from_millis(259_999);
        let oldest = 259_999 - 246_999;
        let a = SocketAddr::from(([198, 51, 100, 3], 1 + (oldest % 64) as u16));
        assert_eq!(dup(&mut d, a, (oldest / 64) as u16, now), Some(None));
        assert!(d.len() <= l.dedup_capacity);
    }

    /// The two lifetime classes in one sender's table: a NON recorded after a CON
    /// expires first (145 s after it), the CON stays its 247 s, neither is forgotten by
    /// the other's ring (RFC 7252 §4.8.2).
    #[test]
    fn rfc7252_s4_8_2_non_and_con_lifetimes_of_one_sender() {
        let t0 = Instant::now();
        let a: SocketAddr = "[2001:db8::1]:5683".parse().unwrap();
        let mut d = Dedup::new(16, 16);
        d.record(a, 1, t0, EXCHANGE_LIFETIME);
        d.set_reply(a, 1, vec![7]);
        let t1 = t0 + Duration::from_secs(10);
        d.record(a, 2, t1, NON_LIFETIME);
        let before_non = t1 + NON_LIFETIME - Duration::from_millis(1);
        assert_eq!(dup(&mut d, a, 2, before_non), Some(None));
        assert_eq!(dup(&mut d, a, 2, t1 + NON_LIFETIME), None);
        assert_eq!(dup(&mut d, a, 1, t1 + NON_LIFETIME), Some(Some(vec![7])));
        let end = t0 + EXCHANGE_LIFETIME;
        assert_eq!(
            dup(&mut d, a, 1, end - Duration::from_millis(1)),
            Some(Some(vec![7]))
        );
        assert_eq!(dup(&mut d, a, 1, end), None);
        // The reply went with its entry, and the sweep frees the sender's slot for
        // reuse by another.
        assert!(d.replies.is_empty());
        d.expire(end);
        assert!(d.is_empty() && d.senders.is_empty() && d.free.len() == 1);
        let b: SocketAddr = "192.0.2.7:1".parse().unwrap();
        d.record(b, 1, end, NON_LIFETIME);
        assert_eq!(dup(&mut d, b, 1, end), Some(None));
        assert_eq!(dup(&mut d, a, 1, end), None);
        assert_eq!(d.slots.len(), 1);
    }

    /// The table's bound in memory (config/groxy.toml states it): at most ~40 bytes per
    /// entry, whatever point of its growth the table is at.
    #[test]
    fn dedup_bytes_per_entry() {
        let t0 = Instant::now();
        let mut d = Dedup::new(1 << 20, 1 << 18);
        for n in 0..(1u32 << 20) {
            let a = SocketAddr::from(([10, 0, (n >> 18) as u8, 1], 1 + (n % 64) as u16));
            d.record(a, (n >> 6) as u16, t0, NON_LIFETIME);
            if n.is_power_of_two() && n >= 1 << 12 {
                let per = d.heap_bytes() as f64 / d.len() as f64;
                assert!(per <= 40.0, "{per} bytes per entry at {n}");
            }
        }
        assert_eq!(d.len(), 1 << 20);
    }

    #[test]
    fn bucket_rate_and_burst() {
        let t0 = Instant::now();
        let mut b = Bucket::full(2.0, t0);
        assert!(b.take(1.0, 2.0, t0).is_ok());
        assert!(b.take(1.0, 2.0, t0).is_ok());
        let wait = b.take(1.0, 2.0, t0).unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::ZERO);
        assert!(b.take(1.0, 2.0, t0 + Duration::from_secs(1)).is_ok());
        assert!(b.is_full(1.0, 2.0, t0 + Duration::from_secs(10)));
    }
}
