//! The deduplication table as it was before issue 14 (commit 72ece15), kept here only so
//! that benches/forward.rs measures it beside the current one in the same run: a map of
//! 24-byte keys to expiries and, per sender, a queue of (expiry, key).

#![allow(dead_code)]

use std::collections::VecDeque;
use std::collections::hash_map::Entry;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Time in whole seconds since a table's first use: entries that expire by the second
/// stay small (u32) and are never forgotten early (expiries round up).
#[derive(Debug, Default)]
pub struct Seconds {
    base: Option<Instant>,
}

impl Seconds {
    /// `t` in whole seconds since the first call, rounded down or up.
    fn at(&mut self, t: Instant, up: bool) -> u32 {
        let base = *self.base.get_or_insert(t);
        let d = t.saturating_duration_since(base);
        let s = d.as_secs() + u64::from(up && d.subsec_nanos() > 0);
        s.min(u32::MAX as u64) as u32
    }

    /// The instant of second `s` (after a first call to [`Self::at`]).
    fn instant(&self, s: u32) -> Option<Instant> {
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
/// Consulted for every request, so its entries are small (32 bytes in the map and in the
/// queues): expiry in whole seconds since the table's first use, rounded up so that no
/// entry is forgotten before its lifetime, and the few replies to CONs kept aside.
#[derive(Debug)]
pub struct Dedup {
    map: HashMap<Key, Seen>,
    /// Each sender's entries, oldest first.
    senders: HashMap<Sender, VecDeque<(u32, Key)>>,
    replies: HashMap<Key, Box<[u8]>>,
    capacity: usize,
    per_sender: usize,
    clock: Seconds,
    /// The earliest expiry among the entries, as of the last [`Dedup::expire`] (the
    /// engine's sweep): a full table is not scanned per request.
    next_expiry: u32,
}

/// (sender, Message ID) packed into 24 bytes, hashed as two words: the table is consulted
/// for every request, and SocketAddr's derived Hash feeds the hasher field by field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    /// The address as two words (a u128 would align the key, and the queue's entries,
    /// to 16 bytes).
    ip: [u64; 2],
    /// Port and Message ID.
    port_mid: u32,
    /// The IPv6 scope, with the top bit telling IPv6 from IPv4.
    scope: u32,
}

/// A sender's address (its share is per address, as the per-client limits are).
pub type Sender = ([u64; 2], u32);

impl Key {
    fn new(from: SocketAddr, mid: u16) -> Key {
        let (ip, scope) = match from {
            SocketAddr::V4(a) => ([u32::from(*a.ip()) as u64, 0], 0),
            SocketAddr::V6(a) => {
                let ip = u128::from(*a.ip());
                ([ip as u64, (ip >> 64) as u64], a.scope_id() | 1 << 31)
            }
        };
        Key {
            ip,
            port_mid: (from.port() as u32) << 16 | mid as u32,
            scope,
        }
    }

    fn sender(&self) -> Sender {
        (self.ip, self.scope)
    }
}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write_u64(self.ip[0]);
        h.write_u64(self.ip[1]);
        h.write_u64((self.port_mid as u64) << 32 | self.scope as u64);
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Seen {
    /// Seconds since the clock's base: live while the current second is below it.
    expires: u32,
    has_reply: bool,
}

/// What [`Dedup::lookup`] found: a duplicate, with a copy of the reply given to it.
#[derive(Debug, PartialEq, Eq)]
pub struct Duplicate(pub Option<Vec<u8>>);

impl Dedup {
    pub fn new(capacity: usize, per_sender: usize) -> Self {
        Dedup {
            map: HashMap::default(),
            senders: HashMap::default(),
            replies: HashMap::default(),
            capacity,
            per_sender: per_sender.clamp(1, capacity.max(1)),
            clock: Seconds::default(),
            next_expiry: 0,
        }
    }

    /// Whether the message was seen within its lifetime (nothing is recorded).
    fn lookup(&mut self, from: SocketAddr, mid: u16, now: Instant) -> Option<Duplicate> {
        let key = Key::new(from, mid);
        let now_s = self.clock.at(now, false);
        let seen = self.map.get(&key).filter(|s| s.expires > now_s)?;
        let reply = seen.has_reply.then(|| self.replies.get(&key));
        Some(Duplicate(reply.flatten().map(|r| r.to_vec())))
    }

    /// Whether a new message from `from` can be recorded now; if not, when the table's
    /// next entry expires (it is freed by the [`Dedup::expire`] after that). No scan:
    /// refusing costs no more than a lookup.
    fn room(&mut self, from: SocketAddr, now: Instant) -> Result<(), Instant> {
        let sender = Key::new(from, 0).sender();
        let held = self.senders.get(&sender).map_or(0, VecDeque::len);
        if held >= self.per_sender || self.map.len() < self.capacity {
            return Ok(());
        }
        let at = self.clock.instant(self.next_expiry).unwrap_or(now);
        Err(at.max(now))
    }

    /// Records a message (after [`Self::room`] allowed it). A sender at its share
    /// forgets its own oldest entry early; nobody else's.
    fn record(&mut self, from: SocketAddr, mid: u16, now: Instant, lifetime: Duration) {
        let key = Key::new(from, mid);
        // The clock's base is the first time it is given: `now`, not the expiry.
        self.clock.at(now, false);
        let expires = self.clock.at(now + lifetime, true);
        let queue = self.senders.entry(key.sender()).or_default();
        if queue.len() >= self.per_sender
            && let Some((exp, old)) = queue.pop_front()
            && let Entry::Occupied(e) = self.map.entry(old)
            && e.get().expires == exp
            && e.remove().has_reply
        {
            self.replies.remove(&old);
        }
        if let Some(old) = self.map.insert(
            key,
            Seen {
                expires,
                has_reply: false,
            },
        ) && old.has_reply
        {
            self.replies.remove(&key);
        }
        // A renewed key's older queue record no longer matches its expiry: it is skipped
        // when it comes up, but still counts against the share until then.
        queue.push_back((expires, key));
        debug_assert!(self.map.len() <= self.capacity + self.per_sender);
    }

    fn set_reply(&mut self, from: SocketAddr, mid: u16, reply: Vec<u8>) {
        let key = Key::new(from, mid);
        if let Some(s) = self.map.get_mut(&key) {
            s.has_reply = true;
            self.replies.insert(key, reply.into_boxed_slice());
        }
    }

    /// Forgets what has outlived its lifetime, and senders with nothing left.
    pub fn expire(&mut self, now: Instant) {
        let now_s = self.clock.at(now, false);
        let (map, replies) = (&mut self.map, &mut self.replies);
        self.senders.retain(|_, queue| {
            while let Some(&(exp, key)) = queue.front() {
                if exp > now_s {
                    break;
                }
                queue.pop_front();
                if let Entry::Occupied(e) = map.entry(key)
                    && e.get().expires == exp
                    && e.remove().has_reply
                {
                    replies.remove(&key);
                }
            }
            !queue.is_empty()
        });
        self.next_expiry = self
            .senders
            .values()
            .filter_map(|q| q.front().map(|e| e.0))
            .min()
            .unwrap_or(now_s);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl Dedup {
    /// As `DedupBench::request`.
    pub fn request(&mut self, from: SocketAddr, mid: u16, now: Instant, con: bool) -> Option<bool> {
        if self.lookup(from, mid, now).is_some() {
            return Some(false);
        }
        self.room(from, now).ok()?;
        let lifetime = Duration::from_secs(if con { 247 } else { 145 });
        self.record(from, mid, now, lifetime);
        Some(true)
    }

    /// The heap held, by the same accounting as the current table's.
    pub fn heap_bytes(&self) -> usize {
        fn table(cap: usize, elem: usize) -> usize {
            if cap == 0 {
                return 0;
            }
            (cap * 8 / 7).next_power_of_two() * (elem + 1) + 16
        }
        table(self.map.capacity(), size_of::<(Key, Seen)>())
            + table(
                self.senders.capacity(),
                size_of::<(Sender, VecDeque<(u32, Key)>)>(),
            )
            + self
                .senders
                .values()
                .map(|q| q.capacity() * size_of::<(u32, Key)>())
                .sum::<usize>()
    }
}
