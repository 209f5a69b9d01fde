//! The lock of state that several forwarding threads share.

use std::sync::{Mutex, MutexGuard};

/// Takes `m`, also after a thread panicked while holding it. Every Mutex of the proxy
/// guards state that is whole between two of its updates (each an insert, a removal, a
/// counter step or a window move, with the counts moved by saturating steps), so a
/// poisoned one is still sound to use, and refusing it would stop every other thread.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
