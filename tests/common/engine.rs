//! The engine on a virtual clock, as the engine tests drive it: no sockets, time moved by
//! the test, every output collected; the addresses they use and the event filters they
//! assert on.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use groxy::proxy::{
    DropReason, Engine, Event, GroupSecurity, Link, Policy, ProxyConfig, RejectReason, Shared,
    Transmit,
};

use super::Group;

/// An engine, its virtual clock, and the last Message ID a test's client used.
pub struct Clocked {
    pub e: Engine,
    pub now: Instant,
    pub mid: u16,
}

impl Clocked {
    /// The engine for `cfg`, seeded with `seed` (its Message IDs, tokens and Echo values
    /// follow from it, so a failure replays).
    pub fn new(cfg: ProxyConfig, seed: u64) -> Self {
        let now = Instant::now();
        Clocked {
            e: Engine::new(cfg, now, seed).unwrap(),
            now,
            mid: 0,
        }
    }

    /// The client's next Message ID.
    pub fn next_mid(&mut self) -> u16 {
        self.mid += 1;
        self.mid
    }

    /// `msg` arriving on `link` from `from` now: what the engine sends and reports.
    pub fn feed(
        &mut self,
        link: Link,
        from: SocketAddr,
        msg: &[u8],
    ) -> (Vec<Transmit>, Vec<Event>) {
        self.e.handle(self.now, link, from, msg);
        super::outputs(&mut self.e)
    }

    /// A SIGHUP's new configuration, applied now.
    pub fn reconfigure(&mut self, cfg: ProxyConfig) -> Result<(), String> {
        self.e.reconfigure(self.now, cfg)
    }

    /// The clock moved by `d` at once, the timers then run once.
    pub fn advance(&mut self, d: Duration) -> (Vec<Transmit>, Vec<Event>) {
        self.now += d;
        self.e.handle_timeout(self.now);
        super::outputs(&mut self.e)
    }

    /// The clock moved by `d`, every timer on the way run at its own time, as the driver
    /// runs them.
    pub fn advance_through_timers(&mut self, d: Duration) -> (Vec<Transmit>, Vec<Event>) {
        let end = self.now + d;
        let (mut tx, mut ev) = (vec![], vec![]);
        while let Some(t) = self.e.poll_timeout().filter(|t| *t <= end) {
            self.now = t.max(self.now);
            self.e.handle_timeout(self.now);
            let (a, b) = super::outputs(&mut self.e);
            tx.extend(a);
            ev.extend(b);
        }
        self.now = end;
        self.e.handle_timeout(self.now);
        let (a, b) = super::outputs(&mut self.e);
        tx.extend(a);
        ev.extend(b);
        (tx, ev)
    }
}

/// The default configuration with group 0 checked under `policy` against `g`'s public
/// material (RFC 10021 §12.3: the proxy as external signature checker, not a member).
pub fn checking_config(g: &Group, policy: Policy) -> ProxyConfig {
    let mut cfg = ProxyConfig::default();
    cfg.groups[0].security = Some(GroupSecurity {
        policy,
        checker: g.checker_config(),
        member: None,
        allow_kids: None,
    });
    cfg
}

/// The client.
pub fn client() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}

/// Device `i` of the group.
pub fn device(i: u8) -> SocketAddr {
    format!("127.0.0.{}:5683", 10 + i).parse().unwrap()
}

/// A unicast origin server.
pub fn origin() -> SocketAddr {
    "127.0.0.9:5683".parse().unwrap()
}

/// The datagram sent to the first group, if any.
pub fn multicast(tx: &[Transmit]) -> Option<&Transmit> {
    tx.iter().find(|t| t.link == Link::Group(0, 0))
}

/// Why datagrams were dropped.
pub fn drops(ev: &[Event]) -> Vec<DropReason> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Dropped { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

/// The first refusal: its reason and the response code.
pub fn rejected(ev: &[Event]) -> Option<(RejectReason, u8)> {
    ev.iter().find_map(|e| match e {
        Event::Rejected { reason, code, .. } => Some((*reason, *code)),
        _ => None,
    })
}

/// Two engines of one proxy (`[proxy] threads` = 2): thread 0 and thread 1 of the same `Shared`.
pub fn pair(cfg: &ProxyConfig, now: Instant) -> (Engine, Engine) {
    let shared = Shared::new(2, *b"0123456789abcdef");
    (
        Engine::with_shared(cfg.clone(), now, 1, shared.thread(0)).unwrap(),
        Engine::with_shared(cfg.clone(), now, 2, shared.thread(1)).unwrap(),
    )
}

/// Two engines that share nothing.
pub fn apart(cfg: &ProxyConfig, now: Instant) -> (Engine, Engine) {
    (
        Engine::new(cfg.clone(), now, 1).unwrap(),
        Engine::new(cfg.clone(), now, 2).unwrap(),
    )
}
