//! Replay protection: the sliding window of RFC 8613 §7.4 for requests, and the Response
//! Numbers of RFC 10021 §5.3.1 for the many responses of a long exchange.

use super::error::OscoreError;

/// Width of the window. RFC 8613 §7.4 asks for at least 32; multicast makes reordering
/// and jumps common (RFC 10021 §5.3, §14.12), so 64.
pub(crate) const WINDOW: u64 = 64;

/// A sliding replay window over Partial IVs (sequence numbers up to 2^40 - 1).
///
/// `check` is side-effect free so a receiver can reject early; the window only
/// moves in `accept`, which re-checks, so the two together are the atomic
/// validate-and-update that RFC 10021 §5.3 requires when called under one `&mut`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayWindow {
    state: WindowState,
}

/// What a window remembers, whole: what stable storage keeps so that a restarted
/// receiver refuses exactly what it refused before (see `ReplayWindow::state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowState {
    /// Nothing received yet: every number is new.
    Empty,
    /// Something accepted: the window around the highest number.
    Active {
        /// The highest number accepted.
        top: u64,
        /// Bit i set: `top - i` was accepted.
        seen: u64,
    },
    /// State was lost (RFC 10021 §2.6.1.2): reject until re-established, e.g. by Echo (§9).
    Invalid,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayWindow {
    pub(crate) fn new() -> Self {
        ReplayWindow {
            state: WindowState::Empty,
        }
    }

    /// A window that accepts nothing until [`reinit`](Self::reinit).
    pub(crate) fn invalid() -> Self {
        ReplayWindow {
            state: WindowState::Invalid,
        }
    }

    pub(crate) fn is_valid(&self) -> bool {
        self.state != WindowState::Invalid
    }

    /// The window's whole state, to be kept on stable storage.
    pub(crate) fn state(&self) -> WindowState {
        self.state
    }

    /// A window as [`state`](Self::state) described it, e.g. read back after a restart.
    pub(crate) fn from_state(state: WindowState) -> Self {
        ReplayWindow { state }
    }

    pub(crate) fn check(&self, seq: u64) -> Result<(), OscoreError> {
        match self.state {
            WindowState::Empty => Ok(()),
            WindowState::Invalid => Err(OscoreError::ReplayWindowInvalid),
            WindowState::Active { top, seen } => {
                if seq > top {
                    Ok(())
                } else if top - seq >= WINDOW {
                    Err(OscoreError::TooOld)
                } else if seen >> (top - seq) & 1 == 1 {
                    Err(OscoreError::Replay)
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Checks and records `seq`. Call only after the message verified (RFC 10021 §7.2:
    /// a message that fails verification must not update replay state).
    pub(crate) fn accept(&mut self, seq: u64) -> Result<(), OscoreError> {
        self.check(seq)?;
        self.state = match self.state {
            WindowState::Empty => WindowState::Active { top: seq, seen: 1 },
            WindowState::Active { top, seen } if seq > top => {
                let shift = seq - top;
                let seen = if shift >= WINDOW { 0 } else { seen << shift };
                WindowState::Active {
                    top: seq,
                    seen: seen | 1,
                }
            }
            WindowState::Active { top, seen } => WindowState::Active {
                top,
                seen: seen | 1 << (top - seq),
            },
            WindowState::Invalid => unreachable!("check rejects an invalid window"),
        };
        Ok(())
    }

    /// Makes the window valid again with `seq` as the only number seen and everything
    /// below it too old: what a server does once an Echo exchange proved the client's
    /// current sequence number (RFC 10021 §9).
    pub(crate) fn reinit(&mut self, seq: u64) {
        self.state = WindowState::Active {
            top: seq,
            seen: u64::MAX,
        };
    }
}

/// Response Numbers of one long exchange (RFC 10021 §5.3.1): per server and Security
/// Context, the Partial IVs already accepted (a window, so that reordered older responses
/// are still processed, the permissive option of §5.3.1) and whether the one response
/// without Partial IV came. Keying by the context's Gid makes a rekeyed group start
/// "not initialized" (§2.6.3.2) without any reset that a forged message could trigger.
#[derive(Debug, Clone, Default)]
pub(crate) struct ResponseNumbers {
    servers: Vec<(ServerKey, ServerResponses)>,
}

/// (Gid of the context, server's Sender ID).
type ServerKey = (Vec<u8>, Vec<u8>);

#[derive(Debug, Clone, Default)]
struct ServerResponses {
    window: ReplayWindow,
    no_piv_seen: bool,
}

/// Servers tracked per exchange at most; a response from one more server is still
/// processed once but its later replays cannot be told apart, so the client drops it.
pub(crate) const MAX_SERVERS_PER_EXCHANGE: usize = 1024;

impl ResponseNumbers {
    fn find(&self, gid: &[u8], server: &[u8]) -> Option<usize> {
        self.servers
            .iter()
            .position(|((g, id), _)| g == gid && id == server)
    }

    fn entry(&mut self, gid: &[u8], server: &[u8]) -> Result<&mut ServerResponses, OscoreError> {
        let i = match self.find(gid, server) {
            Some(i) => i,
            None => {
                if self.servers.len() >= MAX_SERVERS_PER_EXCHANGE {
                    return Err(OscoreError::Mismatch("too many servers in one exchange"));
                }
                self.servers
                    .push(((gid.to_vec(), server.to_vec()), ServerResponses::default()));
                self.servers.len() - 1
            }
        };
        Ok(&mut self.servers[i].1)
    }

    /// Side-effect-free check of a response from `server`, protected under the context
    /// of Gid `gid`, with Partial IV `piv`.
    pub(crate) fn check(
        &self,
        gid: &[u8],
        server: &[u8],
        piv: Option<u64>,
    ) -> Result<(), OscoreError> {
        let Some(i) = self.find(gid, server) else {
            return Ok(());
        };
        let s = &self.servers[i].1;
        match piv {
            None if s.no_piv_seen => Err(OscoreError::Replay),
            None => Ok(()),
            Some(p) => s.window.check(p),
        }
    }

    /// Records a verified response.
    pub(crate) fn accept(
        &mut self,
        gid: &[u8],
        server: &[u8],
        piv: Option<u64>,
    ) -> Result<(), OscoreError> {
        self.check(gid, server, piv)?;
        let s = self.entry(gid, server)?;
        match piv {
            None => s.no_piv_seen = true,
            Some(p) => s.window.accept(p)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8613_s7_4_window() {
        let mut w = ReplayWindow::new();
        w.accept(5).unwrap();
        assert_eq!(w.accept(5), Err(OscoreError::Replay));
        w.accept(3).unwrap();
        assert_eq!(w.check(3), Err(OscoreError::Replay));
        w.accept(100).unwrap();
        assert_eq!(w.check(36), Err(OscoreError::TooOld));
        w.accept(37).unwrap();
        assert_eq!(w.check(37), Err(OscoreError::Replay));
        w.accept(1 << 39).unwrap();
        assert_eq!(w.check(100), Err(OscoreError::TooOld));
    }

    #[test]
    fn rfc10021_s2_6_1_2_invalid_window() {
        let mut w = ReplayWindow::invalid();
        assert_eq!(w.check(0), Err(OscoreError::ReplayWindowInvalid));
        w.reinit(142);
        assert_eq!(w.check(142), Err(OscoreError::Replay));
        assert_eq!(w.check(141), Err(OscoreError::Replay));
        assert_eq!(w.check(142 - WINDOW), Err(OscoreError::TooOld));
        w.accept(143).unwrap();
    }

    #[test]
    fn rfc10021_s5_3_1_response_numbers() {
        let mut r = ResponseNumbers::default();
        let g = b"g1";
        r.accept(g, b"A", None).unwrap();
        assert_eq!(r.accept(g, b"A", None), Err(OscoreError::Replay));
        r.accept(g, b"B", None).unwrap();
        r.accept(g, b"A", Some(7)).unwrap();
        assert_eq!(r.accept(g, b"A", Some(7)), Err(OscoreError::Replay));
        r.accept(g, b"B", Some(7)).unwrap();
        r.accept(g, b"A", Some(6)).unwrap();
        // §2.6.3.2: under a new context the Response Numbers are not initialized.
        r.accept(b"g2", b"A", Some(7)).unwrap();
        assert_eq!(r.accept(g, b"A", Some(7)), Err(OscoreError::Replay));
    }
}
