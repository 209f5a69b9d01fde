//! The engine's bounded tables, each with what happens at its bound written down.

use std::collections::VecDeque;
use std::collections::hash_map::Entry;

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// RFC 7252 §4.8.2: how long a CON and a NON Message ID must be remembered.
pub const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);
pub const NON_LIFETIME: Duration = Duration::from_secs(145);

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
/// the reply sent to a CON so that a retransmission gets the same reply. At capacity the
/// oldest entry is forgotten early (a duplicate of it could then be processed twice).
///
/// Consulted for every request, so its entries are small (32 bytes in the map and in the
/// queue): expiry in whole seconds since the table's first use, rounded up so that no
/// entry is forgotten before its lifetime, and the few replies to CONs kept aside.
#[derive(Debug)]
pub struct Dedup {
    map: HashMap<Key, Seen>,
    order: VecDeque<(u32, Key)>,
    replies: HashMap<Key, Box<[u8]>>,
    capacity: usize,
    clock: Seconds,
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
    /// Seconds since `base`: live while the current second is below it.
    expires: u32,
    has_reply: bool,
}

/// What [`Dedup::observe`] found: a new message (now recorded), or a duplicate with a
/// copy of the reply given to it.
#[derive(Debug, PartialEq, Eq)]
pub enum Observed {
    New,
    Duplicate(Option<Vec<u8>>),
}

impl Dedup {
    pub fn new(capacity: usize) -> Self {
        Dedup {
            map: HashMap::default(),
            order: VecDeque::new(),
            replies: HashMap::default(),
            capacity,
            clock: Seconds::default(),
        }
    }

    /// Whether a message was seen within its lifetime; if not, it is recorded now. At
    /// capacity the oldest entry is forgotten early.
    pub fn observe(
        &mut self,
        from: SocketAddr,
        mid: u16,
        now: Instant,
        lifetime: Duration,
    ) -> Observed {
        let key = Key::new(from, mid);
        let now_s = self.clock.at(now, false);
        let expires = self.clock.at(now + lifetime, true);
        let fresh = Seen {
            expires,
            has_reply: false,
        };
        match self.map.entry(key) {
            Entry::Occupied(e) if e.get().expires > now_s => {
                let reply = e.get().has_reply.then(|| self.replies.get(&key));
                return Observed::Duplicate(reply.flatten().map(|r| r.to_vec()));
            }
            Entry::Occupied(mut e) => {
                if e.get().has_reply {
                    self.replies.remove(&key);
                }
                *e.get_mut() = fresh;
            }
            Entry::Vacant(e) => {
                e.insert(fresh);
            }
        }
        self.order.push_back((expires, key));
        // The entry just added is the newest, so the oldest is another one (a renewed
        // entry's old record no longer matches its expiry and is skipped).
        if self.map.len() > self.capacity
            && let Some((exp, old)) = self.order.pop_front()
        {
            self.forget(old, exp);
        }
        Observed::New
    }

    /// Removes `key` if its entry is the one that expires at `exp`.
    fn forget(&mut self, key: Key, exp: u32) {
        if let Entry::Occupied(e) = self.map.entry(key)
            && e.get().expires == exp
            && e.remove().has_reply
        {
            self.replies.remove(&key);
        }
    }

    pub fn set_reply(&mut self, from: SocketAddr, mid: u16, reply: Vec<u8>) {
        let key = Key::new(from, mid);
        if let Some(s) = self.map.get_mut(&key) {
            s.has_reply = true;
            self.replies.insert(key, reply.into_boxed_slice());
        }
    }

    pub fn expire(&mut self, now: Instant) {
        let now_s = self.clock.at(now, false);
        while let Some(&(exp, key)) = self.order.front() {
            if exp > now_s {
                break;
            }
            self.order.pop_front();
            self.forget(key, exp);
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// A token bucket per client for the fan-out rate (the proxy must not be an amplifier:
/// groupcomm-proxy §10, RFC 10020 §3.6).
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn full(burst: f64, now: Instant) -> Self {
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
    pub fn take(&mut self, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
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

    pub fn is_full(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        self.refill(rate, burst, now);
        self.tokens >= burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7252_s4_5_dedup_remembers_and_forgets() {
        let t0 = Instant::now();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut d = Dedup::new(2);
        assert_eq!(d.observe(a, 1, t0, NON_LIFETIME), Observed::New);
        d.set_reply(a, 1, vec![9]);
        // A CON's duplicate gets the same reply.
        assert_eq!(
            d.observe(a, 1, t0, NON_LIFETIME),
            Observed::Duplicate(Some(vec![9]))
        );
        assert_eq!(d.observe(a, 2, t0, NON_LIFETIME), Observed::New);
        // At capacity the oldest goes, with its reply.
        assert_eq!(d.observe(a, 3, t0, NON_LIFETIME), Observed::New);
        assert_eq!(d.len(), 2);
        assert!(d.replies.is_empty());
        assert_eq!(d.observe(a, 1, t0, NON_LIFETIME), Observed::New);
        // Remembered for at least its lifetime (expiry is rounded up to a second)...
        let almost = t0 + NON_LIFETIME - Duration::from_millis(1);
        assert!(matches!(
            d.observe(a, 3, almost, NON_LIFETIME),
            Observed::Duplicate(_)
        ));
        // ...after which a Message ID is new again, and recorded anew.
        let later = t0 + NON_LIFETIME;
        assert_eq!(d.observe(a, 3, later, NON_LIFETIME), Observed::New);
        assert_eq!(
            d.observe(a, 3, later, NON_LIFETIME),
            Observed::Duplicate(None)
        );
        d.expire(later);
        assert_eq!(d.len(), 1);
        d.expire(later + NON_LIFETIME);
        assert!(d.is_empty());
        // The sender is the whole endpoint: another port, family or scope is another one.
        let mut d = Dedup::new(8);
        d.observe(a, 7, t0, NON_LIFETIME);
        for other in [
            "127.0.0.1:2",
            "[::ffff:127.0.0.1]:1",
            "[fe80::1%1]:1",
            "[fe80::1%2]:1",
        ] {
            assert_eq!(
                d.observe(other.parse().unwrap(), 7, t0, NON_LIFETIME),
                Observed::New
            );
        }
        assert_eq!(d.observe(a, 7, t0, NON_LIFETIME), Observed::Duplicate(None));
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
