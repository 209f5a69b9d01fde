//! The engine's bounded tables, each with what happens at its bound written down.

use std::collections::VecDeque;

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// RFC 7252 §4.8.2: how long a CON and a NON Message ID must be remembered.
pub const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);
pub const NON_LIFETIME: Duration = Duration::from_secs(145);

/// Message deduplication (RFC 7252 §4.5): (sender, Message ID) pairs seen recently, with
/// the reply sent to a CON so that a retransmission gets the same reply. At capacity the
/// oldest entry is forgotten early (its duplicate could then be processed twice, which
/// the caller counts as an eviction).
#[derive(Debug)]
pub struct Dedup {
    map: HashMap<(SocketAddr, u16), Seen>,
    order: VecDeque<(Instant, SocketAddr, u16)>,
    capacity: usize,
}

#[derive(Debug)]
struct Seen {
    expires: Instant,
    reply: Option<Vec<u8>>,
}

/// What a lookup found.
pub enum Dup<'a> {
    New,
    /// Seen before; the reply given then, if any.
    Seen(Option<&'a [u8]>),
}

impl Dedup {
    pub fn new(capacity: usize) -> Self {
        Dedup {
            map: HashMap::default(),
            order: VecDeque::new(),
            capacity,
        }
    }

    pub fn check(&self, from: SocketAddr, mid: u16, now: Instant) -> Dup<'_> {
        match self.map.get(&(from, mid)) {
            Some(s) if s.expires > now => Dup::Seen(s.reply.as_deref()),
            _ => Dup::New,
        }
    }

    /// Records a message; returns true if an unexpired entry had to be evicted for it.
    pub fn insert(&mut self, from: SocketAddr, mid: u16, now: Instant, lifetime: Duration) -> bool {
        let mut evicted = false;
        if self.map.len() >= self.capacity
            && let Some((exp, a, m)) = self.order.pop_front()
            && self.map.get(&(a, m)).is_some_and(|s| s.expires == exp)
        {
            self.map.remove(&(a, m));
            evicted = exp > now;
        }
        let expires = now + lifetime;
        self.map.insert(
            (from, mid),
            Seen {
                expires,
                reply: None,
            },
        );
        self.order.push_back((expires, from, mid));
        evicted
    }

    pub fn set_reply(&mut self, from: SocketAddr, mid: u16, reply: Vec<u8>) {
        if let Some(s) = self.map.get_mut(&(from, mid)) {
            s.reply = Some(reply);
        }
    }

    pub fn expire(&mut self, now: Instant) {
        while let Some(&(exp, a, m)) = self.order.front() {
            if exp > now {
                break;
            }
            self.order.pop_front();
            if self.map.get(&(a, m)).is_some_and(|s| s.expires == exp) {
                self.map.remove(&(a, m));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// Proxy tokens freed recently, so a response that comes after its exchange ended is
/// counted as late rather than unknown. At capacity the oldest is forgotten.
#[derive(Debug)]
pub struct LateTokens {
    set: HashSet<u64>,
    order: VecDeque<u64>,
    capacity: usize,
}

impl LateTokens {
    pub fn new(capacity: usize) -> Self {
        LateTokens {
            set: Default::default(),
            order: VecDeque::new(),
            capacity,
        }
    }
    pub fn insert(&mut self, t: u64) {
        if self.capacity == 0 {
            return;
        }
        if self.order.len() >= self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(t);
        self.order.push_back(t);
    }
    pub fn contains(&self, t: u64) -> bool {
        self.set.contains(&t)
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
        assert!(matches!(d.check(a, 1, t0), Dup::New));
        d.insert(a, 1, t0, NON_LIFETIME);
        d.set_reply(a, 1, vec![9]);
        assert!(matches!(d.check(a, 1, t0), Dup::Seen(Some([9]))));
        assert!(matches!(d.check(a, 1, t0 + NON_LIFETIME), Dup::New));
        d.insert(a, 2, t0, NON_LIFETIME);
        // At capacity, the oldest unexpired entry goes, and that is reported.
        assert!(d.insert(a, 3, t0, NON_LIFETIME));
        assert!(matches!(d.check(a, 1, t0), Dup::New));
        d.expire(t0 + NON_LIFETIME);
        assert!(d.is_empty());
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

    #[test]
    fn late_tokens_bounded() {
        let mut l = LateTokens::new(2);
        l.insert(1);
        l.insert(2);
        l.insert(3);
        assert!(!l.contains(1) && l.contains(2) && l.contains(3));
    }
}
