//! The engine's bounded tables, each with what happens at its bound written down.

use std::collections::VecDeque;
use std::collections::hash_map::Entry;

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
/// Consulted for every request, so its entries are small (32 bytes in the map and in the
/// queues): expiry in whole seconds since the table's first use, rounded up so that no
/// entry is forgotten before its lifetime, and the few replies to CONs kept aside.
#[derive(Debug)]
pub(crate) struct Dedup {
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
struct Key {
    /// The address as two words (a u128 would align the key, and the queue's entries,
    /// to 16 bytes).
    ip: [u64; 2],
    /// Port and Message ID.
    port_mid: u32,
    /// The IPv6 scope, with the top bit telling IPv6 from IPv4.
    scope: u32,
}

/// A sender's address (its share is per address, as the per-client limits are).
type Sender = ([u64; 2], u32);

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
struct Seen {
    /// Seconds since the clock's base: live while the current second is below it.
    expires: u32,
    has_reply: bool,
}

/// What [`Dedup::lookup`] found: a duplicate, with a copy of the reply given to it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Duplicate(pub Option<Vec<u8>>);

impl Dedup {
    pub(crate) fn new(capacity: usize, per_sender: usize) -> Self {
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
    pub(crate) fn lookup(&mut self, from: SocketAddr, mid: u16, now: Instant) -> Option<Duplicate> {
        let key = Key::new(from, mid);
        let now_s = self.clock.at(now, false);
        let seen = self.map.get(&key).filter(|s| s.expires > now_s)?;
        let reply = seen.has_reply.then(|| self.replies.get(&key));
        Some(Duplicate(reply.flatten().map(|r| r.to_vec())))
    }

    /// Whether a new message from `from` can be recorded now; if not, when the table's
    /// next entry expires (it is freed by the [`Dedup::expire`] after that). No scan:
    /// refusing costs no more than a lookup.
    pub(crate) fn room(&mut self, from: SocketAddr, now: Instant) -> Result<(), Instant> {
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
    pub(crate) fn record(&mut self, from: SocketAddr, mid: u16, now: Instant, lifetime: Duration) {
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

    pub(crate) fn set_reply(&mut self, from: SocketAddr, mid: u16, reply: Vec<u8>) {
        let key = Key::new(from, mid);
        if let Some(s) = self.map.get_mut(&key) {
            s.has_reply = true;
            self.replies.insert(key, reply.into_boxed_slice());
        }
    }

    /// Forgets what has outlived its lifetime, and senders with nothing left.
    pub(crate) fn expire(&mut self, now: Instant) {
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

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
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
