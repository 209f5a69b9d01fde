//! Sender Sequence Numbers drawn by several engines from one space (RFC 10021 §2.6.1.1,
//! RFC 8613 §7.2.1): the proxy as a group member has one Sender Context per group, but
//! each forwarding thread protects its own answers. A number is taken in one atomic step
//! (no lock, no I/O), only while it is below what stable storage already covers, so no
//! two threads ever use the same Partial IV and a crash never leads to a reuse.
//!
//! A new key epoch starts a new space at 0 (§2.6.3.2); the spaces of one group's epochs
//! share one reservation flag, so that the group's `.ssn` file has one writer at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::context::MAX_SSN;
use super::error::OscoreError;

/// No ceiling: nothing is persisted (an engine nobody restored, as in tests).
const UNBOUNDED: u64 = u64::MAX;

#[derive(Debug)]
struct Space {
    /// The next number to give out.
    next: AtomicU64,
    /// Numbers from here on are not on stable storage yet; only ever raised (but by
    /// [`SsnSource::restore`], at start).
    ceiling: AtomicU64,
    /// A later epoch of the group replaced this one: no reservation is made for it (its
    /// file is the new epoch's now).
    retired: AtomicBool,
    /// Set while a reservation of the group (of any of its epochs) is in flight.
    reserving: Arc<AtomicBool>,
}

/// One key epoch's Sender Sequence Numbers, shared by every engine holding a clone.
#[derive(Debug, Clone)]
pub(crate) struct SsnSource(Arc<Space>);

impl SsnSource {
    /// A group's first epoch, from 0; `ceiling` `None`: not persisted.
    pub(crate) fn new(ceiling: Option<u64>) -> Self {
        Self::with_flag(ceiling, Arc::new(AtomicBool::new(false)))
    }

    fn with_flag(ceiling: Option<u64>, reserving: Arc<AtomicBool>) -> Self {
        SsnSource(Arc::new(Space {
            next: AtomicU64::new(0),
            ceiling: AtomicU64::new(ceiling.unwrap_or(UNBOUNDED)),
            retired: AtomicBool::new(false),
            reserving,
        }))
    }

    /// A space that gives out nothing and never reserves: for an engine late with an
    /// epoch older than the one the proxy already runs.
    pub(crate) fn retired() -> Self {
        let s = Self::new(Some(0));
        s.0.retired.store(true, Ordering::Release);
        s
    }

    /// The space of the group's next epoch, from 0 with `ceiling`; this one is retired.
    /// The reservation flag stays the group's.
    pub(crate) fn next_epoch(&self, ceiling: Option<u64>) -> Self {
        self.0.retired.store(true, Ordering::Release);
        Self::with_flag(ceiling, self.0.reserving.clone())
    }

    /// Takes the next number: one atomic step that succeeds only below the ceiling.
    /// The ceiling only grows while running, so a stale read can only refuse a number
    /// that was in fact covered, never hand out one that was not.
    pub(crate) fn take(&self) -> Result<u64, OscoreError> {
        let s = &self.0;
        s.next
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n <= MAX_SSN && n < s.ceiling.load(Ordering::Acquire)).then_some(n + 1)
            })
            .map_err(|n| {
                if n > MAX_SSN {
                    OscoreError::SequenceExhausted
                } else {
                    OscoreError::SequenceNotReserved
                }
            })
    }

    /// The next number to be taken.
    pub(crate) fn next(&self) -> u64 {
        self.0.next.load(Ordering::Acquire)
    }

    /// What stable storage covers (exclusive), `None` if not persisted.
    pub(crate) fn ceiling(&self) -> Option<u64> {
        let c = self.0.ceiling.load(Ordering::Acquire);
        (c != UNBOUNDED).then_some(c)
    }

    /// At start, before any engine runs: continue at `next`, covered up to `ceiling`.
    pub(crate) fn restore(&self, next: u64, ceiling: u64) {
        self.0.next.store(next, Ordering::Release);
        self.0.ceiling.store(ceiling, Ordering::Release);
    }

    /// Stable storage now covers numbers below `up_to`: the ceiling never goes down.
    pub(crate) fn raise(&self, up_to: u64) {
        let _ = self
            .0
            .ceiling
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c == UNBOUNDED || c < up_to).then_some(up_to)
            });
    }

    /// Starts a reservation if half of the covered block is used and no reservation of
    /// the group is in flight (on any thread): the bound to write, at or above the
    /// ceiling, so that the file never goes down within the epoch. The caller writes it
    /// and then calls [`raise`](Self::raise) and [`end_reservation`](Self::end_reservation)
    /// (or only the latter if the write failed).
    pub(crate) fn begin_reservation(&self, block: u64) -> Option<u64> {
        let ceiling = self.ceiling()?;
        let due = |next: u64, ceiling: u64| next + block / 2 >= ceiling;
        if !due(self.next(), ceiling) {
            return None;
        }
        self.0
            .reserving
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        // Checked under the flag: an epoch retired before this flag was taken never
        // writes after its successor's reservation (which needs the flag too).
        let ceiling = self.ceiling().unwrap_or(0);
        if self.0.retired.load(Ordering::Acquire) || !due(self.next(), ceiling) {
            self.end_reservation();
            return None;
        }
        Some((self.next() + block).max(ceiling))
    }

    /// The reservation in flight is over (written or failed).
    pub(crate) fn end_reservation(&self) {
        self.0.reserving.store(false, Ordering::Release);
    }

    /// Whether a later epoch of the group replaced this one.
    pub(crate) fn is_retired(&self) -> bool {
        self.0.retired.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 10021 §2.6.1.1: nothing at or above the ceiling is handed out, and the
    /// ceiling only grows.
    #[test]
    fn take_stops_at_the_ceiling_and_raise_never_lowers_it() {
        let s = SsnSource::new(Some(2));
        assert_eq!(s.take().unwrap(), 0);
        assert_eq!(s.take().unwrap(), 1);
        assert!(matches!(s.take(), Err(OscoreError::SequenceNotReserved)));
        s.raise(10);
        s.raise(5);
        assert_eq!(s.ceiling(), Some(10));
        assert_eq!(s.take().unwrap(), 2);
    }

    /// One reservation in flight per group, across its epochs; none for a retired one.
    #[test]
    fn one_reservation_per_group_at_a_time() {
        let a = SsnSource::new(Some(0));
        assert_eq!(a.begin_reservation(8), Some(8));
        assert_eq!(a.begin_reservation(8), None, "in flight");
        let b = a.next_epoch(Some(0));
        assert_eq!(b.begin_reservation(8), None, "the group's flag is held");
        a.end_reservation();
        assert_eq!(a.begin_reservation(8), None, "retired");
        assert_eq!(b.begin_reservation(8), Some(8));
    }
}
