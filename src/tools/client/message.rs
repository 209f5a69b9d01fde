//! The client's message layer (RFC 7252 §4): retransmission of its Confirmable messages
//! and deduplication of what the proxy sends it. Time comes in as an argument.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// RFC 7252 §4.8 transmission parameters (the defaults; the proxy uses the same).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Retransmissions before a CON is given up (RFC 7252 §4.8).
pub const MAX_RETRANSMIT: u8 = 4;
/// RFC 7252 §4.8.2: how long a Message ID of a CON and of a NON is remembered.
pub const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);
/// RFC 7252 §4.8.2.
pub const NON_LIFETIME: Duration = Duration::from_secs(145);
/// (source, Message ID) pairs remembered at most: a source has 65,536 Message IDs, and
/// the proxy reuses none toward the client within their lifetime, so this holds every
/// live one of a proxy. Past it the oldest is forgotten first.
pub(crate) const DEDUP_CAPACITY: usize = 65_536;

/// The initial timeout of a new CON: ACK_TIMEOUT * [1, ACK_RANDOM_FACTOR = 1.5)
/// (RFC 7252 §4.2, §4.8), from a random number the caller draws.
pub(crate) fn initial_timeout(random: u64) -> Duration {
    ACK_TIMEOUT + ACK_TIMEOUT.mul_f64((random % 1000) as f64 / 2000.0)
}

/// What a Confirmable message waiting for its acknowledgement does when a timer fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Not due yet.
    Wait,
    /// Send the same bytes again.
    Resend,
    /// MAX_RETRANSMIT retransmissions went unanswered: the attempt is cancelled and the
    /// application told (RFC 7252 §4.2).
    GiveUp,
}

/// The retransmission state of one CON (RFC 7252 §4.2): a timeout and a counter.
#[derive(Debug, Clone)]
pub struct Retransmission {
    /// The datagram, sent again unchanged.
    pub bytes: Vec<u8>,
    attempts: u8,
    timeout: Duration,
    /// When the current timeout ends.
    pub next: Instant,
}

impl Retransmission {
    pub(crate) fn new(bytes: Vec<u8>, sent: Instant, initial: Duration) -> Self {
        Retransmission {
            bytes,
            attempts: 0,
            timeout: initial,
            next: sent + initial,
        }
    }

    /// At a timeout with the counter below MAX_RETRANSMIT: retransmit, count, double the
    /// timeout; with the counter at MAX_RETRANSMIT: give up.
    pub(crate) fn on_timer(&mut self, now: Instant) -> Step {
        if now < self.next {
            return Step::Wait;
        }
        if self.attempts >= MAX_RETRANSMIT {
            return Step::GiveUp;
        }
        self.attempts += 1;
        self.timeout *= 2;
        // From now, not from the missed deadline: a late driver never sends two copies
        // closer together than the timeout (RFC 7252 §4.2, minimum spacing).
        self.next = now + self.timeout;
        Step::Resend
    }
}

/// One message of a request sent to the proxy (the request, and again after an Echo
/// challenge with a new Message ID).
#[derive(Debug, Clone)]
pub struct Sent {
    /// The Message ID, new for each message of the request.
    pub mid: u16,
    /// While a CON waits for its acknowledgement.
    pub retransmission: Option<Retransmission>,
    /// A response piggybacked in the ACK of this message was processed; later copies of
    /// that ACK are duplicates (RFC 7252 §4.5).
    pub answered: bool,
}

type Key = (SocketAddr, u16);

/// Message IDs seen per source (RFC 7252 §4.5): a CON or NON seen before within its
/// lifetime is acknowledged again (a CON) but processed only once. Bounded by
/// [`DEDUP_CAPACITY`].
#[derive(Debug)]
pub(crate) struct Dedup {
    expiry: HashMap<Key, Instant>,
    /// Insertion order, to age and to forget the oldest; an entry whose expiry differs
    /// from the map's is stale (its key was seen again after it expired).
    order: VecDeque<(Key, Instant)>,
    capacity: usize,
}

impl Dedup {
    pub(crate) fn new(capacity: usize) -> Self {
        Dedup {
            expiry: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Whether (`from`, `mid`) is new at `now`; if so it is remembered for `lifetime`.
    pub(crate) fn first(
        &mut self,
        from: SocketAddr,
        mid: u16,
        now: Instant,
        lifetime: Duration,
    ) -> bool {
        while let Some(&(k, t)) = self.order.front() {
            if t > now && self.order.len() < self.capacity {
                break;
            }
            self.order.pop_front();
            if self.expiry.get(&k) == Some(&t) {
                self.expiry.remove(&k);
            }
        }
        let key = (from, mid);
        // Entries are aged in insertion order, and a NON's lifetime is the shorter: one
        // may outlive its expiry in the map for a while, so the expiry decides here.
        if self.expiry.get(&key).is_some_and(|t| *t > now) {
            return false;
        }
        let t = now + lifetime;
        self.expiry.insert(key, t);
        self.order.push_back((key, t));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7252 §4.2: initial timeout in [ACK_TIMEOUT, 1.5 ACK_TIMEOUT), doubled per
    /// retransmission, cancelled on the timeout after the MAX_RETRANSMIT-th.
    #[test]
    fn rfc7252_s4_2_exponential_back_off_then_give_up() {
        let t0 = Instant::now();
        for r in [0, 999, 1_000_000_007] {
            let d = initial_timeout(r);
            assert!(d >= ACK_TIMEOUT && d < ACK_TIMEOUT.mul_f64(1.5), "{d:?}");
        }
        let init = Duration::from_millis(2500);
        let mut rt = Retransmission::new(vec![1], t0, init);
        assert_eq!(
            rt.on_timer(t0 + init - Duration::from_millis(1)),
            Step::Wait
        );
        let mut at = t0 + init;
        for k in 1..=MAX_RETRANSMIT as u32 {
            assert_eq!(rt.on_timer(at), Step::Resend, "retransmission {k}");
            assert_eq!(rt.next - at, init * 2u32.pow(k));
            at = rt.next;
        }
        assert_eq!(rt.on_timer(at), Step::GiveUp);
        // 31 initial timeouts after the first transmission (RFC 7252 §4.8.2's
        // MAX_TRANSMIT_WAIT with ACK_RANDOM_FACTOR's share of the initial timeout).
        assert_eq!(at - t0, init * 31);
    }

    /// RFC 7252 §4.5: per source and Message ID, within the lifetime; the table stays
    /// within its bound.
    #[test]
    fn rfc7252_s4_5_dedup_per_source_within_lifetime_and_bounded() {
        let t0 = Instant::now();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let mut d = Dedup::new(3);
        assert!(d.first(a, 7, t0, NON_LIFETIME));
        assert!(!d.first(a, 7, t0 + Duration::from_secs(1), NON_LIFETIME));
        assert!(d.first(b, 7, t0, NON_LIFETIME), "another source");
        assert!(d.first(a, 7, t0 + NON_LIFETIME, NON_LIFETIME), "expired");
        for m in 0..100 {
            d.first(a, 100 + m, t0, EXCHANGE_LIFETIME);
            assert!(d.expiry.len() <= 3 && d.order.len() <= 3);
        }
    }
}
