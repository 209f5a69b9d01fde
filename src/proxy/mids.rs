//! The proxy's Message IDs, kept per destination endpoint (RFC 7252 §4.4: the same
//! Message ID is not reused toward one endpoint within EXCHANGE_LIFETIME, for a CON, or
//! NON_LIFETIME, for a NON, else the receiver drops the message as a duplicate, §4.5).
//!
//! Each destination (the proxy's socket and the peer's address) has its own counter,
//! starting at a random value, and remembers how many of its Message IDs are still live,
//! in buckets of one second of expiry: IDs are issued in counter order, so the live ones
//! are the last `live` issued and the next counter value is free exactly when fewer than
//! 65,536 are live. A destination's state is forgotten once all its IDs have expired, so
//! the table holds the destinations of the last lifetime, up to a configured bound.

use std::collections::VecDeque;
use std::collections::hash_map::Entry;
use std::hash::Hash;
use std::time::{Duration, Instant};

use super::tables::Seconds;

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Message IDs one endpoint pair has (16 bits, RFC 7252 §3).
const SPACE: u32 = 1 << 16;

/// Why no Message ID could be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MidError {
    /// Every Message ID toward this destination is live; one is free again at `free_at`.
    Exhausted { free_at: Instant },
    /// The table holds as many destinations as it may (for this kind of message).
    TableFull,
}

#[derive(Debug)]
struct Space {
    next: u16,
    live: u32,
    /// (expiry in whole seconds since the table's base, IDs issued with it), oldest
    /// first, expiries strictly increasing: a message whose expiry is not later than the
    /// newest bucket's joins it (kept a little longer than needed, never shorter), so
    /// there are at most one bucket per second of the longest lifetime.
    buckets: VecDeque<(u32, u32)>,
}

impl Space {
    fn expire(&mut self, now_s: u32) {
        while let Some(&(exp, n)) = self.buckets.front() {
            if exp > now_s {
                break;
            }
            self.buckets.pop_front();
            self.live -= n;
        }
    }
}

/// Message ID spaces per destination `K`, at most `capacity` of them.
#[derive(Debug)]
pub(crate) struct MessageIds<K> {
    spaces: HashMap<K, Space>,
    capacity: usize,
    clock: Seconds,
}

impl<K: Hash + Eq + Copy> MessageIds<K> {
    pub(crate) fn new(capacity: usize) -> Self {
        MessageIds {
            spaces: HashMap::default(),
            capacity,
            clock: Seconds::default(),
        }
    }

    /// Whether a Message ID toward `to` could be had now (without taking one).
    pub(crate) fn check(&mut self, now: Instant, to: K, priority: bool) -> Result<(), MidError> {
        let now_s = self.clock.at(now, false);
        let room = self.spaces.len() < self.limit(priority);
        let exhausted = match self.spaces.get_mut(&to) {
            Some(s) => {
                s.expire(now_s);
                (s.live >= SPACE).then(|| s.buckets.front().map_or(now_s, |b| b.0))
            }
            None if room => None,
            None => return Err(MidError::TableFull),
        };
        match exhausted {
            None => Ok(()),
            Some(exp) => Err(MidError::Exhausted {
                free_at: self.clock.instant(exp).unwrap_or(now),
            }),
        }
    }

    /// A message that is not part of an admitted exchange (an error reply to a NON
    /// request) may start a new destination only while the table is less than half full:
    /// a flood of requests from many addresses cannot take the room of admitted clients.
    fn limit(&self, priority: bool) -> usize {
        if priority {
            self.capacity
        } else {
            self.capacity / 2
        }
    }

    /// A Message ID toward `to` not used for a message toward it that may still be live,
    /// live itself for `lifetime`. `offset` gives a new destination's first ID (random,
    /// so that IDs toward a client are not guessable from another's).
    pub(crate) fn allocate(
        &mut self,
        now: Instant,
        to: K,
        lifetime: Duration,
        priority: bool,
        offset: impl FnOnce() -> u16,
    ) -> Result<u16, MidError> {
        let now_s = self.clock.at(now, false);
        let exp = self.clock.at(now + lifetime, true);
        let room = self.spaces.len() < self.limit(priority);
        // One lookup: this runs for every message the proxy sends.
        let s = match self.spaces.entry(to) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(_) if !room => return Err(MidError::TableFull),
            Entry::Vacant(v) => v.insert(Space {
                next: offset(),
                live: 0,
                buckets: VecDeque::new(),
            }),
        };
        s.expire(now_s);
        if s.live >= SPACE {
            let oldest = s.buckets.front().map_or(now_s, |b| b.0);
            return Err(MidError::Exhausted {
                free_at: self.clock.instant(oldest).unwrap_or(now),
            });
        }
        let mid = s.next;
        s.next = s.next.wrapping_add(1);
        s.live += 1;
        match s.buckets.back_mut() {
            Some((e, n)) if *e >= exp => *n += 1,
            _ => s.buckets.push_back((exp, 1)),
        }
        Ok(mid)
    }

    /// Forgets the destinations all of whose Message IDs have expired.
    pub(crate) fn expire(&mut self, now: Instant) {
        let now_s = self.clock.at(now, false);
        self.spaces.retain(|_, s| {
            s.expire(now_s);
            s.live > 0
        });
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.spaces.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.spaces.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NON: Duration = Duration::from_secs(145);
    const CON: Duration = Duration::from_secs(247);

    /// RFC 7252 §4.4: 65,536 IDs toward one destination within a lifetime, all distinct;
    /// the next is refused until the oldest expires, then IDs continue in order.
    #[test]
    fn rfc7252_s4_4_no_reuse_within_the_lifetime() {
        let t0 = Instant::now();
        let mut m = MessageIds::new(4);
        let mut seen = std::collections::HashSet::new();
        for i in 0..SPACE {
            let at = t0 + Duration::from_millis(i as u64);
            assert!(seen.insert(m.allocate(at, 1u8, NON, true, || 7).unwrap()));
        }
        let late = t0 + Duration::from_secs(100);
        let Err(MidError::Exhausted { free_at }) = m.allocate(late, 1, NON, true, || 0) else {
            panic!("exhausted expected");
        };
        assert!(free_at >= t0 + NON && free_at <= t0 + NON + Duration::from_secs(1));
        // Another destination has a space of its own.
        assert!(m.allocate(late, 2, NON, true, || 0).is_ok());
        // Once the first ID expired, the counter goes on where it was: 7 again, issued
        // more than NON_LIFETIME ago; the next only when the next second's expired too.
        assert_eq!(m.allocate(free_at, 1, NON, true, || 0), Ok(7));
        assert!(m.allocate(free_at, 1, NON, true, || 0).is_err());
        let next = free_at + Duration::from_secs(1);
        assert_eq!(m.allocate(next, 1, NON, true, || 0), Ok(8));
    }

    /// A NON issued after a CON expires earlier, but the CON's ID is older in counter
    /// order: it joins the CON's bucket and stays live as long (never shorter).
    #[test]
    fn mixed_lifetimes_are_never_shortened() {
        let t0 = Instant::now();
        let mut m = MessageIds::new(4);
        m.allocate(t0, 1u8, CON, true, || 0).unwrap();
        for _ in 1..SPACE {
            m.allocate(t0, 1u8, NON, true, || 0).unwrap();
        }
        // After NON_LIFETIME the NONs would have expired, but they joined the CON's bucket.
        assert!(m.check(t0 + NON + Duration::from_secs(2), 1, true).is_err());
        assert!(m.check(t0 + CON + Duration::from_secs(1), 1, true).is_ok());
    }

    #[test]
    fn bounded_and_forgotten_after_the_lifetime() {
        let t0 = Instant::now();
        let mut m = MessageIds::new(4);
        // Non-priority messages start new destinations only in half the table.
        assert!(m.allocate(t0, 1u8, NON, false, || 0).is_ok());
        assert!(m.allocate(t0, 2u8, NON, false, || 0).is_ok());
        assert_eq!(
            m.allocate(t0, 3u8, NON, false, || 0),
            Err(MidError::TableFull)
        );
        assert!(m.allocate(t0, 3u8, NON, true, || 0).is_ok());
        assert!(m.allocate(t0, 4u8, NON, true, || 0).is_ok());
        assert_eq!(
            m.allocate(t0, 5u8, NON, true, || 0),
            Err(MidError::TableFull)
        );
        // Known destinations go on at the bound.
        assert!(m.allocate(t0, 1u8, NON, false, || 0).is_ok());
        m.expire(t0 + NON - Duration::from_millis(1));
        assert_eq!(m.len(), 4);
        m.expire(t0 + NON);
        assert!(m.is_empty());
    }
}
