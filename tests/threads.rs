//! `[proxy] threads` at engine level (issue 14 point 2): two engines sharing one
//! `proxy::Shared`, as two forwarding threads do, each fed datagrams from other client
//! endpoints (as SO_REUSEPORT would spread them). What must hold for the whole proxy holds
//! whichever engine a datagram reaches: replay windows, rekeying, the exchange table's
//! bound, per-client limits, token uniqueness. Beside each, where it shows the point, the
//! same traffic through two engines that share nothing (what a thread per engine would be
//! without `Shared`) lets the violation through.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::Group;
use groxy::coap::MessageView;
use groxy::coap::build::{self, NON, code};
use groxy::coap::options as opt;
use groxy::oscore::{Mode, SecurityContext};
use groxy::proxy::{
    CheckResult, Engine, Event, GroupSecurity, Link, Policy, ProxyConfig, RejectReason, Shared,
    Transmit,
};

const CLIENT: &[u8] = &[0x01];
const DEV_A: &[u8] = &[0x0a];
const GET_HELLO: &str = "5101aa01c3b568656c6c6f";

fn from(ip: u8, port: u16) -> SocketAddr {
    format!("127.0.0.{ip}:{port}").parse().unwrap()
}

fn checked_config(g: &Group) -> ProxyConfig {
    let mut cfg = ProxyConfig::default();
    cfg.groups[0].security = Some(GroupSecurity {
        policy: Policy::Enforce,
        checker: g.checker_config(),
        member: None,
        allow_kids: None,
    });
    cfg
}

/// Two engines of one proxy: thread 0 and thread 1 of the same `Shared`.
fn pair(cfg: &ProxyConfig, now: Instant) -> (Engine, Engine) {
    let shared = Shared::new(2, *b"0123456789abcdef");
    (
        Engine::with_shared(cfg.clone(), now, 1, shared.thread(0)).unwrap(),
        Engine::with_shared(cfg.clone(), now, 2, shared.thread(1)).unwrap(),
    )
}

/// Two engines that share nothing.
fn apart(cfg: &ProxyConfig, now: Instant) -> (Engine, Engine) {
    (
        Engine::new(cfg.clone(), now, 1).unwrap(),
        Engine::new(cfg.clone(), now, 2).unwrap(),
    )
}

/// A group request through the proxy, the Class U proxy options added after protection.
fn proxied(protected: &[u8], mid: u16) -> Vec<u8> {
    let v = MessageView::parse(protected).unwrap();
    let mut opts: Vec<(u16, &[u8])> = v.options().collect();
    opts.push((opt::URI_HOST, b"224.0.1.187"));
    opts.push((opt::PROXY_SCHEME, b"coap"));
    opts.push((opt::MULTICAST_TIMEOUT_DEFAULT, &[10]));
    build::encode(NON, v.code(), mid, &mid.to_be_bytes(), &mut opts, v.payload())
}

fn signed(ctx: &mut SecurityContext, mid: u16) -> Vec<u8> {
    let (p, _) = ctx
        .protect_request(&hex::decode(GET_HELLO).unwrap(), Mode::Group, Some(DEV_A))
        .unwrap();
    proxied(&p, mid)
}

fn feed(e: &mut Engine, now: Instant, from: SocketAddr, msg: &[u8]) -> (Vec<Transmit>, Vec<Event>) {
    e.handle(now, Link::Listener(0), from, msg);
    common::outputs(e)
}

fn multicast(tx: &[Transmit]) -> usize {
    tx.iter()
        .filter(|t| matches!(t.link, Link::Group(0, _)))
        .count()
}

fn results(ev: &[Event]) -> Vec<CheckResult> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Checked {
                request: true,
                result,
                ..
            } => Some(*result),
            _ => None,
        })
        .collect()
}

fn rejected(ev: &[Event]) -> Vec<RejectReason> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Rejected { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

/// groupcomm-proxy §10 / RFC 10021 §7.5: a captured, validly signed group request is not
/// multicast again, whichever thread it reaches and from whichever address: the replay
/// windows per (Gid, kid) are the proxy's, not a thread's.
#[test]
fn s10_a_replay_is_dropped_by_the_other_thread_from_another_address() {
    let g = Group::new(&[CLIENT, DEV_A]);
    let cfg = checked_config(&g);
    let now = Instant::now();
    let mut c = SecurityContext::new(&g.config(CLIENT)).unwrap();
    let req = signed(&mut c, 1);

    let (mut a, mut b) = pair(&cfg, now);
    let (tx, ev) = feed(&mut a, now, from(1, 40000), &req);
    assert_eq!((multicast(&tx), results(&ev)), (1, vec![CheckResult::Valid]));
    // The same bytes from another address and port, as the kernel steers them to the
    // other thread.
    let (tx, ev) = feed(&mut b, now, from(2, 40001), &req);
    assert_eq!(multicast(&tx), 0, "the replay is not multicast again");
    assert_eq!(results(&ev), vec![CheckResult::Replay]);
    // And back: the other thread's admission is a replay here too.
    let req2 = signed(&mut c, 2);
    let (tx, _) = feed(&mut b, now, from(2, 40001), &req2);
    assert_eq!(multicast(&tx), 1);
    let (tx, ev) = feed(&mut a, now, from(1, 40000), &req2);
    assert_eq!((multicast(&tx), results(&ev)), (0, vec![CheckResult::Replay]));
    // The recorded state names every admission, whichever thread made it (one write for
    // both: the driver writes the shared windows once, see runtime::persist_replay).
    let states = a.take_replay_state();
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].1.windows.len(), 1);
    assert!(b.take_replay_state().is_empty(), "taken once, for both");

    // Without sharing, the other engine multicasts the replay: what per-thread windows
    // would let through.
    let (mut a, mut b) = apart(&cfg, now);
    let req = signed(&mut c, 3);
    assert_eq!(multicast(&feed(&mut a, now, from(1, 40000), &req).0), 1);
    assert_eq!(multicast(&feed(&mut b, now, from(2, 40001), &req).0), 1);
}

/// RFC 10021 §2.6.3.2 / §12.2 across threads: once one thread installed the new epoch,
/// the other admits nothing under the old one, even before its own reload reaches it
/// (it drops the group's signed requests until then: none is forwarded under the old
/// keys); after its reload both check under the new epoch and share its windows.
#[test]
fn s2_6_3_2_a_rekey_on_one_thread_stops_the_old_epoch_on_every_thread() {
    let g1 = Group::new(&[CLIENT, DEV_A]);
    let mut g2 = Group::new(&[]);
    g2.key_generation = g1.key_generation + 1;
    g2.master_salt = g1.master_salt.clone();
    g2.gm = common::Member {
        id: g1.gm.id.clone(),
        key: g1.gm.key.clone(),
        cred: g1.gm.cred.clone(),
    };
    g2.members = g1
        .members
        .iter()
        .map(|m| common::Member {
            id: m.id.clone(),
            key: m.key.clone(),
            cred: m.cred.clone(),
        })
        .collect();
    let now = Instant::now();
    let (mut a, mut b) = pair(&checked_config(&g1), now);
    let mut c1 = SecurityContext::new(&g1.config(CLIENT)).unwrap();
    let mut c2 = SecurityContext::new(&g2.config(CLIENT)).unwrap();
    assert_eq!(multicast(&feed(&mut b, now, from(2, 1), &signed(&mut c1, 1)).0), 1);

    a.reconfigure(now, checked_config(&g2)).unwrap();
    // Thread b still runs the old configuration: an old-epoch request is refused.
    let (tx, ev) = feed(&mut b, now, from(2, 1), &signed(&mut c1, 2));
    assert_eq!(multicast(&tx), 0, "nothing forwarded under the old epoch");
    assert_eq!(results(&ev), vec![CheckResult::UnknownGid]);
    // The new epoch passes on the thread that has it.
    let new_req = signed(&mut c2, 3);
    assert_eq!(multicast(&feed(&mut a, now, from(1, 1), &new_req).0), 1);
    // Thread b's reload arrives: the new epoch's windows are the shared ones, with a's
    // admission in them (its replay is dropped), and b's own new requests pass.
    b.reconfigure(now, checked_config(&g2)).unwrap();
    let (tx, ev) = feed(&mut b, now, from(2, 1), &new_req);
    assert_eq!((multicast(&tx), results(&ev)), (0, vec![CheckResult::Replay]));
    assert_eq!(multicast(&feed(&mut b, now, from(2, 1), &signed(&mut c2, 4)).0), 1);
    // Old-epoch requests are refused on both.
    for e in [&mut a, &mut b] {
        let (tx, ev) = feed(e, now, from(3, 1), &signed(&mut c1, 5));
        assert_eq!((multicast(&tx), results(&ev)), (0, vec![CheckResult::UnknownGid]));
    }
}

/// An unchecked group request (policy off) to the proxy's default group.
fn plain(mid: u16) -> Vec<u8> {
    proxied(&hex::decode(GET_HELLO).unwrap(), mid)
}

fn max_age(tx: &[Transmit]) -> Option<(u8, u64)> {
    tx.iter().find_map(|t| {
        let v = MessageView::parse(&t.bytes).ok()?;
        let age = v.option(opt::MAX_AGE)?;
        Some((
            v.code(),
            age.iter().fold(0u64, |n, b| (n << 8) | u64::from(*b)),
        ))
    })
}

/// RFC 7252 §5.10.5 / groupcomm-proxy §5.2.1 limits, for the whole proxy: the exchange
/// table's bound counts every thread's exchanges (the next request, on either thread,
/// gets 5.03 with Max-Age as before), and a client address's exchanges in flight and rate
/// bucket are one across its ports and the threads they reach (4.29 with Max-Age).
#[test]
fn limits_hold_for_the_whole_proxy_across_threads() {
    let now = Instant::now();
    let mut cfg = ProxyConfig::default();
    cfg.limits.max_exchanges = 3;
    let (mut a, mut b) = pair(&cfg, now);
    for i in 0..3u8 {
        let e = if i == 1 { &mut b } else { &mut a };
        let (tx, _) = feed(e, now, from(1 + i, 1000), &plain(u16::from(i)));
        assert_eq!(multicast(&tx), 1);
    }
    assert_eq!(a.exchanges(), (3, 3), "the gauge is the proxy's");
    assert_eq!(b.exchanges(), (3, 3));
    let (tx, ev) = feed(&mut b, now, from(9, 1000), &plain(9));
    assert_eq!(multicast(&tx), 0);
    assert_eq!(rejected(&ev), vec![RejectReason::TableFull]);
    let (code, age) = max_age(&tx).unwrap();
    assert_eq!(code, code::SERVICE_UNAVAILABLE);
    assert!(age >= 1, "Max-Age says when to come back");
    // Unshared, the second engine would have had room for three more.
    let (mut a2, mut b2) = apart(&cfg, now);
    for i in 0..3 {
        assert_eq!(multicast(&feed(&mut a2, now, from(1, 1000), &plain(i)).0), 1);
    }
    assert_eq!(multicast(&feed(&mut b2, now, from(1, 1000), &plain(9)).0), 1);

    // One client address, two ports, two threads: one exchange in flight at most.
    let mut cfg = ProxyConfig::default();
    cfg.limits.max_exchanges_per_client = 1;
    let (mut a, mut b) = pair(&cfg, now);
    assert_eq!(multicast(&feed(&mut a, now, from(5, 1000), &plain(1)).0), 1);
    let (tx, ev) = feed(&mut b, now, from(5, 2000), &plain(2));
    assert_eq!(multicast(&tx), 0);
    assert_eq!(rejected(&ev), vec![RejectReason::ClientBusy]);
    assert_eq!(max_age(&tx).map(|m| m.0), Some(code::TOO_MANY_REQUESTS));
    // Another address is not held back.
    assert_eq!(multicast(&feed(&mut b, now, from(6, 2000), &plain(3)).0), 1);

    // The rate bucket: a burst of 2 spent on one thread is spent on the other.
    let mut cfg = ProxyConfig::default();
    cfg.limits.client_burst = 2.0;
    cfg.limits.client_rate = 0.001;
    let (mut a, mut b) = pair(&cfg, now);
    assert_eq!(multicast(&feed(&mut a, now, from(7, 1000), &plain(1)).0), 1);
    assert_eq!(multicast(&feed(&mut b, now, from(7, 2000), &plain(2)).0), 1);
    let (tx, ev) = feed(&mut a, now, from(7, 3000), &plain(3));
    assert_eq!(multicast(&tx), 0);
    assert_eq!(rejected(&ev), vec![RejectReason::RateLimited]);
}

/// RFC 10020 §3.1.5: the proxy's tokens are never reused, across threads too. Even with
/// the same seed (so the same draws otherwise), two threads' engines give out disjoint
/// tokens; two engines that share nothing would give out the very same ones.
#[test]
fn rfc10020_s3_1_5_no_token_is_issued_by_two_threads() {
    let now = Instant::now();
    let cfg = ProxyConfig::default();
    let shared = Shared::new(2, *b"0123456789abcdef");
    let mut a = Engine::with_shared(cfg.clone(), now, 7, shared.thread(0)).unwrap();
    let mut b = Engine::with_shared(cfg.clone(), now, 7, shared.thread(1)).unwrap();
    let mut x = Engine::new(cfg.clone(), now, 7).unwrap();
    let mut y = Engine::new(cfg, now, 7).unwrap();
    let mut tokens = std::collections::HashSet::new();
    let mut same = 0;
    for i in 0..200u16 {
        // Each request ends at once (Multicast-Timeout of 10 s is not waited for: the
        // tokens issued so far are what counts).
        let t = now + Duration::from_millis(u64::from(i));
        for e in [&mut a, &mut b] {
            let (tx, _) = feed(e, t, from(1 + (i % 200) as u8, 1000 + i), &plain(i));
            for m in tx.iter().filter(|m| matches!(m.link, Link::Group(0, _))) {
                let tok = MessageView::parse(&m.bytes).unwrap().token().to_vec();
                assert!(tokens.insert(tok), "a token issued twice");
            }
        }
        let tx = feed(&mut x, t, from(1, 1000 + i), &plain(i)).0;
        let ty = feed(&mut y, t, from(1, 1000 + i), &plain(i)).0;
        let tok = |tx: &[Transmit]| {
            tx.iter()
                .find(|m| matches!(m.link, Link::Group(0, _)))
                .map(|m| MessageView::parse(&m.bytes).unwrap().token().to_vec())
        };
        if tok(&tx).is_some() && tok(&tx) == tok(&ty) {
            same += 1;
        }
    }
    assert_eq!(tokens.len(), 400);
    assert!(same > 0, "unshared engines of one seed collide");
}
