//! The whole engine on a virtual clock: a sequence of datagrams on every link with time
//! advancing between them (see `groxy_fuzz::Step` for the input format). Nothing may
//! panic, the outputs of one call are bounded (no amplification beyond the group
//! fan-out, groupcomm-proxy §5.2, RFC 7252 §11.3), and the exchange table never exceeds
//! its configured bound.
#![no_main]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use groxy::coap::MessageView;
use groxy::proxy::{Engine, Link, Output};
use groxy_fuzz::{engine_config, peer, steps};
use libfuzzer_sys::fuzz_target;

/// What one `handle` may emit: a handful of datagrams (the forwarded request, an ACK, an
/// error reply) and their events.
const MAX_PER_DATAGRAM: usize = 48;

fn base() -> Instant {
    static T: OnceLock<Instant> = OnceLock::new();
    *T.get_or_init(Instant::now)
}

/// The latest request sent per group (or to unicast origins): the port it left by, its
/// destination and bytes.
type Sent = HashMap<Link, (Link, SocketAddr, Vec<u8>)>;

/// The key of [`Sent`]: the link with its port cleared; `None` for a listener.
fn egress(link: Link) -> Option<Link> {
    match link {
        Link::Listener(_) => None,
        Link::Group(g, _) => Some(Link::Group(g, 0)),
        Link::Unicast(_) => Some(Link::Unicast(0)),
    }
}

/// Drains the engine as the runtime does (recording every SSN reservation at once) and
/// returns how many outputs there were; remembers the latest request sent on each link.
fn drain(e: &mut Engine, sent: &mut Sent) -> usize {
    let mut n = 0;
    while let Some(o) = e.poll_output() {
        n += 1;
        assert!(n < 100_000, "poll_output never ends");
        match o {
            Output::Transmit(t) => {
                if let Some(k) = egress(t.link) {
                    sent.insert(k, (t.link, t.to, t.bytes.clone()));
                }
                e.recycle(t.bytes);
            }
            Output::Event(_) => {}
            Output::ReserveSsn { group, up_to } => e.ssn_reserved(group, up_to),
        }
    }
    n
}

/// `datagram` with the token and Message ID of `request`: a response the engine can
/// match (RFC 7252 §5.3.2), whatever else the fuzzer put in it.
fn answer(request: &[u8], datagram: &[u8]) -> Option<Vec<u8>> {
    let req = MessageView::parse(request).ok()?;
    let tkl = (*datagram.first()? & 0x0f) as usize;
    if datagram.len() < 4 + tkl || tkl > 8 {
        return None;
    }
    let mut out = vec![(datagram[0] & 0xf0) | req.token().len() as u8, datagram[1]];
    out.extend_from_slice(&req.message_id().to_be_bytes());
    out.extend_from_slice(req.token());
    out.extend_from_slice(&datagram[4 + tkl..]);
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let cfg = engine_config();
    let (groups, ports) = (cfg.groups.len(), cfg.limits.egress_ports);
    let mut now = base();
    let mut e = Engine::new(cfg, now, 7).expect("the fuzz configuration is valid");
    let mut sent = HashMap::new();
    let _ = drain(&mut e, &mut sent);
    for s in steps(data) {
        let dt = s.dt as u64;
        now += Duration::from_millis(dt * dt * 2);
        let link = match s.ctl & 3 {
            0 => Some(Link::Listener(0)),
            1 => Some(Link::Group(
                ((s.ctl >> 2) & 3) as usize % groups,
                ((s.ctl >> 4) & 1) as u16 % ports,
            )),
            2 => Some(Link::Unicast(((s.ctl >> 4) & 1) as u16 % ports)),
            _ => None,
        };
        let n = match link {
            Some(link) => {
                let (mut link, mut from) = (link, peer(s.ctl >> 5));
                let mut owned = None;
                if s.ctl & 0x20 != 0
                    && let Some(k) = egress(link)
                    && let Some((out, to, req)) = sent.get(&k)
                {
                    // An answer comes back on the port the request left by, from the
                    // origin (unicast) or from a device (bits 6-7: PEERS[4..8]).
                    owned = answer(req, s.datagram);
                    link = *out;
                    from = match link {
                        Link::Unicast(_) => *to,
                        _ => peer(4 + ((s.ctl >> 6) & 3)),
                    };
                }
                e.handle(now, link, from, owned.as_deref().unwrap_or(s.datagram));
                drain(&mut e, &mut sent)
            }
            None => {
                e.handle_timeout(now);
                drain(&mut e, &mut sent)
            }
        };
        let (live, cap) = e.exchanges();
        assert!(live <= cap, "{live} exchanges in a table of {cap}");
        let (held, cap) = e.observations();
        assert!(held <= cap, "{held} observations in a table of {cap}");
        if link.is_some() {
            assert!(n <= MAX_PER_DATAGRAM, "{n} outputs for one datagram");
        }
        // Timers come due in time order; whatever is due now has been handled.
        e.handle_timeout(now);
        let _ = drain(&mut e, &mut sent);
        if let Some(t) = e.poll_timeout() {
            assert!(t > now || e.timers() > 0);
        }
    }
});
