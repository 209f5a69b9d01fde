//! Deduplication at the default limits (issue 14): a conforming client sending at its
//! allowed rate for longer than NON_LIFETIME is served throughout (no 5.03 DedupFull),
//! and a duplicate within NON_LIFETIME is still caught (RFC 7252 §4.5, §4.8.2). On a
//! virtual clock; nothing here measures speed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use groxy::coap::MessageView;
use groxy::coap::build::{self, NON, code};
use groxy::coap::options as opt;
use groxy::proxy::{DropReason, Engine, Event, Link, Output, ProxyConfig, RejectReason, Transmit};

const NON_LIFETIME: Duration = Duration::from_secs(145);

fn outputs(e: &mut Engine) -> (Vec<Transmit>, Vec<Event>) {
    let (mut t, mut ev) = (vec![], vec![]);
    while let Some(o) = e.poll_output() {
        match o {
            Output::Transmit(x) => t.push(x),
            Output::Event(x) => ev.push(x),
            Output::ReserveSsn { .. } => {}
        }
    }
    (t, ev)
}

/// RFC 7252 §4.4 on the client's side: 64 source ports, so that no (port, Message ID)
/// comes back within 64 x 65,536 requests (> 145 s at 1000/s), and the proxy's NON
/// responses toward each port stay within its 65,536 IDs per lifetime.
fn endpoint(n: u64) -> (SocketAddr, u16) {
    (
        SocketAddr::from(([127, 0, 0, 1], 40_000 + (n % 64) as u16)),
        (n / 64) as u16,
    )
}

fn request(mid: u16, n: u64) -> Vec<u8> {
    build::encode(
        NON,
        code::GET,
        mid,
        &n.to_be_bytes(),
        &mut [(opt::PROXY_URI, &b"coap://127.0.0.9:5683/v"[..])],
        &[],
    )
}

/// RFC 7252 §4.5, §4.8.2: one client at the default client_rate (1000/s, default
/// burst first) for 200 s of virtual time, with the DEFAULT limits, each request
/// answered by the origin: every request is forwarded (none refused with DedupFull, or
/// for anything else), and one sent again 100 s later (within NON_LIFETIME) is dropped
/// as a duplicate. With the old defaults (65,536 entries, 4,096 per client) the client's
/// share covered 4 s of its rate, and the whole table 65 s.
#[test]
fn rfc7252_s4_8_2_a_conforming_client_at_its_rate_gets_no_dedup_full() {
    let cfg = ProxyConfig::default();
    let (rate, burst) = (cfg.limits.client_rate, cfg.limits.client_burst as u64);
    let t0 = Instant::now();
    let mut e = Engine::new(cfg, t0, 5).unwrap();
    let origin: SocketAddr = "127.0.0.9:5683".parse().unwrap();
    let seconds = 200u64;
    let total = burst + seconds * rate as u64;
    let mut now = t0;
    let mut forwarded = 0u64;
    let mut replayed = None;
    let mut answer = Vec::new();
    for n in 0..total {
        // The burst at t0, then 1000/s (1 ms apart).
        now =
            t0 + Duration::from_micros(((n + 1).saturating_sub(burst) as f64 * 1e6 / rate) as u64);
        if e.poll_timeout().is_some_and(|t| t <= now) {
            e.handle_timeout(now);
            outputs(&mut e);
        }
        let (from, mid) = endpoint(n);
        let req = request(mid, n);
        e.handle(now, Link::Listener(0), from, &req);
        let (tx, ev) = outputs(&mut e);
        for x in &ev {
            if let Event::Rejected { reason, .. } = x {
                panic!("request {n} at {:?} refused: {reason:?}", now - t0);
            }
        }
        let fwd = tx.iter().find(|t| t.to == origin).expect("forwarded");
        forwarded += 1;
        let v = MessageView::parse(&fwd.bytes).unwrap();
        build::encode_into(
            &mut answer,
            NON,
            code::CONTENT,
            v.message_id(),
            v.token(),
            &mut [],
            b"x",
        );
        e.handle(now, fwd.link, origin, &answer);
        let (tx, _) = outputs(&mut e);
        assert!(tx.iter().any(|t| t.to == from), "response {n} relayed");
        if n == burst + 100_000 {
            replayed = Some((n, now, from, req));
        }
    }
    assert_eq!(forwarded, total);
    assert!(now - t0 > NON_LIFETIME);
    // The duplicate: the request sent at t = 100 s, again at t = 200 s.
    let (n, sent, from, req) = replayed.unwrap();
    assert!(now - sent < NON_LIFETIME, "request {n} within its lifetime");
    e.handle(now, Link::Listener(0), from, &req);
    let (tx, ev) = outputs(&mut e);
    assert!(
        tx.is_empty(),
        "a duplicate NON is not processed again: {tx:?} {ev:?}"
    );
    assert!(ev.iter().any(|x| matches!(
        x,
        Event::Dropped {
            reason: DropReason::DuplicateRequest,
            ..
        }
    )));
    assert!(!ev.iter().any(|x| matches!(
        x,
        Event::Rejected {
            reason: RejectReason::DedupFull,
            ..
        }
    )));
}
