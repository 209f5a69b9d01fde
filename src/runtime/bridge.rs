//! The forwarding thread's end of the HTTP bridge (`crate::http`): a virtual listener.
//!
//! The HTTP side translates each HTTP request into a CoAP request datagram and hands it
//! here with the HTTP client's address as its source; the engine handles it as
//! `Link::Listener(index)`, an index past the UDP listeners, exactly as a datagram from a
//! UDP client (so allow-lists, limits, the filters and the fan-out are the engine's, and
//! nothing else). What the engine transmits to that link goes back to the HTTP side,
//! which matches it by token to the waiting HTTP request. The thread is not tokio: it is
//! woken by a byte on a socket pair of its own, as for its commands.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::proxy::Event;

/// Datagrams handled per wake-up at most, so that the UDP sockets are not starved.
const PER_ROUND: usize = 256;

/// A request datagram from the HTTP side.
#[derive(Debug)]
pub struct ToEngine {
    /// The HTTP client's address (or, with mTLS, its identity's configured address and
    /// the connection's port): the source the engine sees.
    pub from: SocketAddr,
    /// The CoAP request (NON, the bridge's Message ID and token).
    pub datagram: Vec<u8>,
}

/// What the engine did with one request, as its events said (the engine reports no
/// token with them; the driver hands it the request alone, so every event that follows
/// belongs to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Multicast to `group` with the Multicast-Timeout the engine applied.
    FanOut {
        /// Index into the configuration's groups.
        group: usize,
        /// T' as applied (the client's value, capped at the group's maximum).
        timeout: Duration,
    },
    /// Forwarded to a unicast origin: one response (or the engine's 5.04) follows.
    Unicast,
    /// Neither: answered with an error (already sent back) or dropped without an answer
    /// (the signature filter; a duplicate).
    Other {
        /// The group it named, where an event said.
        group: Option<usize>,
    },
}

/// What the forwarding thread hands the HTTP side.
#[derive(Debug)]
pub enum FromEngine {
    /// A datagram the engine sent to the bridge's link: a response to `to`.
    Datagram {
        /// The HTTP client's (engine-side) address.
        to: SocketAddr,
        /// The CoAP response.
        bytes: Vec<u8>,
    },
    /// The engine has handled the request with this token (after its datagrams, if any).
    Handled {
        /// The request's token.
        token: Vec<u8>,
        /// What it did.
        outcome: Outcome,
        /// When (the forwarding thread's clock): T' runs from here.
        at: Instant,
    },
}

/// The HTTP side's handle: request datagrams in, a wake-up byte for the thread.
#[derive(Debug)]
pub struct BridgeSender {
    tx: mpsc::Sender<ToEngine>,
    wake: UnixStream,
}

impl BridgeSender {
    /// Hands a request to the forwarding thread; false once it has stopped.
    pub fn send(&self, m: ToEngine) -> bool {
        if self.tx.send(m).is_err() {
            return false;
        }
        // A full socket buffer means a wake-up is pending already.
        let _ = (&self.wake).write(&[1]);
        true
    }
}

/// The thread's end.
pub(crate) struct BridgeLink {
    /// The listener index the engine knows the bridge by.
    pub(crate) index: usize,
    rx: mpsc::Receiver<ToEngine>,
    pub(crate) wake: UnixStream,
    out: tokio::sync::mpsc::UnboundedSender<FromEngine>,
    /// While a bridge request is handled: what its events said.
    probe: Option<Outcome>,
    /// The last [`take`](Self::take) left requests queued: their wake-up bytes were
    /// read already, so the next round must take them without one.
    more: bool,
}

/// The two ends of a bridge for listener `index`; the receiver is the HTTP side's.
pub(crate) fn pair(
    index: usize,
) -> io::Result<(
    BridgeLink,
    BridgeSender,
    tokio::sync::mpsc::UnboundedReceiver<FromEngine>,
)> {
    let (wake_tx, wake_rx) = UnixStream::pair()?;
    wake_tx.set_nonblocking(true)?;
    wake_rx.set_nonblocking(true)?;
    let (tx, rx) = mpsc::channel();
    let (out, out_rx) = tokio::sync::mpsc::unbounded_channel();
    Ok((
        BridgeLink {
            index,
            rx,
            wake: wake_rx,
            out,
            probe: None,
            more: false,
        },
        BridgeSender { tx, wake: wake_tx },
        out_rx,
    ))
}

impl BridgeLink {
    /// The requests waiting, at most [`PER_ROUND`] (the wake-up bytes read first), and
    /// whether more are left (the loop then polls again without sleeping).
    pub(crate) fn take(&mut self) -> (Vec<ToEngine>, bool) {
        let mut b = [0u8; 256];
        while (&self.wake).read(&mut b).is_ok_and(|n| n > 0) {}
        let mut v = Vec::new();
        while v.len() < PER_ROUND {
            match self.rx.try_recv() {
                Ok(m) => v.push(m),
                Err(_) => break,
            }
        }
        let more = v.len() == PER_ROUND;
        self.more = more;
        (v, more)
    }

    /// Whether requests wait: a wake-up byte came (`revents` of its socket), or the
    /// last round left some (without this they would wait for the next HTTP request's
    /// wake-up byte).
    pub(crate) fn due(&self, revents: i16) -> bool {
        revents != 0 || self.more
    }

    pub(crate) fn begin(&mut self) {
        self.probe = Some(Outcome::Other { group: None });
    }

    /// An event of the request being handled, if one is.
    pub(crate) fn event(&mut self, e: &Event) {
        let Some(p) = self.probe.as_mut() else {
            return;
        };
        match e {
            // A chained group (§8) is a fan-out to the HTTP client too: its responses
            // come until this hop's T'.
            Event::FanOut { group, timeout, .. } | Event::ChainForwarded { group, timeout, .. } => {
                *p = Outcome::FanOut {
                    group: *group,
                    timeout: *timeout,
                }
            }
            Event::UnicastForward => *p = Outcome::Unicast,
            Event::Rejected { group: Some(g), .. } | Event::Checked { group: g, .. }
                if matches!(p, Outcome::Other { group: None }) =>
            {
                *p = Outcome::Other { group: Some(*g) }
            }
            _ => {}
        }
    }

    /// The request with `token` has been handled (its datagrams were handed back first).
    pub(crate) fn end(&mut self, token: Vec<u8>, at: Instant) {
        let outcome = self.probe.take().unwrap_or(Outcome::Other { group: None });
        let _ = self.out.send(FromEngine::Handled { token, outcome, at });
    }

    /// A datagram the engine sent to the bridge's link.
    pub(crate) fn transmit(&mut self, to: SocketAddr, bytes: Vec<u8>) {
        let _ = self.out.send(FromEngine::Datagram { to, bytes });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More than one round's worth of requests: the rest are taken in the next round
    /// although their wake-up bytes were all read in the first.
    #[test]
    fn requests_past_one_round_are_taken_without_another_wake_up() {
        let (mut link, tx, _rx) = pair(0).unwrap();
        let from: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for _ in 0..PER_ROUND + 10 {
            assert!(tx.send(ToEngine {
                from,
                datagram: vec![0x50, 1, 0, 0],
            }));
        }
        assert!(link.due(1) && !link.due(0));
        let (first, more) = link.take();
        assert_eq!((first.len(), more), (PER_ROUND, true));
        assert!(link.due(0), "the rest is due with no wake-up byte");
        let (rest, more) = link.take();
        assert_eq!((rest.len(), more), (10, false));
        assert!(!link.due(0));
    }

    /// groupcomm-proxy §8.1: a request of a chained group goes on to the next proxy,
    /// and its responses come until this hop's T', as after a fan-out; the HTTP side
    /// must wait for them under the group's name.
    #[test]
    fn a_chained_group_request_is_a_fan_out_to_the_http_side() {
        let (mut link, _tx, mut rx) = pair(0).unwrap();
        link.begin();
        link.event(&Event::ChainForwarded {
            group: 2,
            timeout: Duration::from_secs(5),
            next: Duration::from_secs(4),
        });
        link.end(vec![7], Instant::now());
        match rx.try_recv() {
            Ok(FromEngine::Handled { outcome, .. }) => assert_eq!(
                outcome,
                Outcome::FanOut {
                    group: 2,
                    timeout: Duration::from_secs(5)
                }
            ),
            other => panic!("{other:?}"),
        }
    }
}
