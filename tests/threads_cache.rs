//! `[proxy] threads` with the response cache and a reverse-proxy resource standing in
//! for the servers (issue 14 point 2), at engine level: two engines sharing one
//! `proxy::Shared`, as two forwarding threads do, each fed from other client endpoints
//! (as SO_REUSEPORT spreads them by 4-tuple). The cache's store (groupcomm-proxy-07 §7,
//! RFC 7252 §5.6) and the servers table (§6.2) are the proxy's: what one thread stored or
//! heard answers a request the other receives, and their bounds hold for both together.
//! Beside some, the same traffic through two engines that share nothing (what a thread
//! per engine would be without `Shared`) shows the point.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use groxy::coap::MessageView;
use groxy::coap::build::{self, CON, NON, code};
use groxy::coap::cri;
use groxy::coap::options as opt;
use groxy::proxy::{
    CacheEvent, Engine, Event, GroupCache, Link, ProxyConfig, RejectReason, ReverseAction,
    ReverseSpec, StandIn, Transmit,
};

const MT: u16 = opt::MULTICAST_TIMEOUT_DEFAULT;
const RF: u16 = opt::REPLY_FROM_DEFAULT;
/// Group-ETag, its suggested number (groupcomm-proxy §11.1).
const GE: u16 = 24;
const ETAG: u16 = 4;
const VALID: u8 = 0x43;
const LISTENER: Link = Link::Listener(0);

/// Client endpoints: thread A's and thread B's (other source ports of one host).
fn client(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}
const AT_A: u16 = 40000;
const AT_B: u16 = 40001;

fn device(i: u8) -> SocketAddr {
    format!("127.0.0.{}:5683", 10 + i).parse().unwrap()
}
fn origin() -> SocketAddr {
    "192.0.2.7:5683".parse().unwrap()
}

use common::engine::{apart, pair};

fn feed(
    e: &mut Engine,
    now: Instant,
    link: Link,
    from: SocketAddr,
    msg: &[u8],
) -> (Vec<Transmit>, Vec<Event>) {
    e.handle(now, link, from, msg);
    common::outputs(e)
}

fn advance(e: &mut Engine, now: Instant) -> (Vec<Transmit>, Vec<Event>) {
    e.handle_timeout(now);
    common::outputs(e)
}

fn to_group(tx: &[Transmit]) -> Vec<&Transmit> {
    tx.iter()
        .filter(|t| matches!(t.link, Link::Group(..)))
        .collect()
}
fn to_origin(tx: &[Transmit]) -> Vec<&Transmit> {
    tx.iter()
        .filter(|t| matches!(t.link, Link::Unicast(_)))
        .collect()
}
fn to_client(tx: &[Transmit], port: u16) -> Vec<MessageView<'_>> {
    tx.iter()
        .filter(|t| t.to == client(port))
        .map(|t| MessageView::parse(&t.bytes).unwrap())
        .filter(|v| v.code() != code::EMPTY)
        .collect()
}
fn cache_events(ev: &[Event]) -> Vec<CacheEvent> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Cache { what, .. } => Some(*what),
            _ => None,
        })
        .collect()
}
fn max_age(v: &MessageView) -> Option<u32> {
    v.option(opt::MAX_AGE).map(|m| opt::read_uint(m).unwrap())
}

/// A response to a forwarded request: code, options, payload.
fn answer(fwd: &Transmit, c: u8, opts: &[(u16, &[u8])], payload: &[u8]) -> Vec<u8> {
    let v = MessageView::parse(&fwd.bytes).unwrap();
    build::encode(NON, c, 7, v.token(), &mut opts.to_vec(), payload)
}

// ---- the response cache (groupcomm-proxy §7) ----

/// The default group and unicast forwarding, the cache on; the group's members are
/// devices 1 and 2.
fn cache_config() -> ProxyConfig {
    let mut c = ProxyConfig::default();
    c.cache.enabled = true;
    c.cache.groups = vec![GroupCache {
        members: vec![device(1), device(2)],
    }];
    c
}

/// A group GET of /temp with T' = `secs` and `extra` options, from `port`.
fn group_get(mid: u16, port: u16, secs: u32, extra: &[(u16, &[u8])]) -> (Vec<u8>, SocketAddr) {
    let mt = opt::uint_value(secs);
    let mut o: Vec<(u16, &[u8])> = vec![
        (opt::URI_HOST, b"224.0.1.187"),
        (opt::PROXY_SCHEME, b"coap"),
        (opt::URI_PATH, b"temp"),
        (MT, &mt),
    ];
    o.extend_from_slice(extra);
    let token = mid.to_be_bytes();
    (
        build::encode(NON, code::GET, mid, &token, &mut o, &[]),
        client(port),
    )
}

/// A unicast GET of coap://192.0.2.7/`path` from `port`.
fn unicast_get(mid: u16, port: u16, path: &str) -> (Vec<u8>, SocketAddr) {
    let uri = format!("coap://192.0.2.7/{path}");
    let token = mid.to_be_bytes();
    (
        build::encode(
            NON,
            code::GET,
            mid,
            &token,
            &mut [(opt::PROXY_URI, uri.as_bytes())],
            &[],
        ),
        client(port),
    )
}

/// Engine `e` forwards a group GET (from `port`) that both members answer with
/// Max-Age `age`; the exchange ends at T' = 2 s. The time after.
fn fill_group(e: &mut Engine, now: Instant, mid: u16, port: u16, age: u32) -> Instant {
    let (m, from) = group_get(mid, port, 2, &[]);
    let (tx, _) = feed(e, now, LISTENER, from, &m);
    let fwd = to_group(&tx)[0].clone();
    let a = opt::uint_value(age);
    for (i, tag) in [(1u8, b"v1"), (2, b"v2")] {
        let r = answer(
            &fwd,
            code::CONTENT,
            &[(ETAG, tag), (opt::MAX_AGE, &a)],
            &[b'0' + i],
        );
        feed(e, now, Link::Group(0, 0), device(i), &r);
    }
    let after = now + Duration::from_secs(2);
    advance(e, after);
    after
}

/// Engine `e` forwards a unicast GET of /`path` whose origin answers (Max-Age 60).
fn fill_unicast(e: &mut Engine, now: Instant, mid: u16, port: u16, path: &str) -> Vec<Event> {
    let (m, from) = unicast_get(mid, port, path);
    let (tx, _) = feed(e, now, LISTENER, from, &m);
    let fwd = to_origin(&tx)[0].clone();
    let r = answer(&fwd, code::CONTENT, &[], path.as_bytes());
    feed(e, now, fwd.link, origin(), &r).1
}

/// Whether engine `e` answers a unicast GET of /`path` from the cache (nothing to the
/// origin).
fn unicast_hit(e: &mut Engine, now: Instant, mid: u16, port: u16, path: &str) -> bool {
    let (m, from) = unicast_get(mid, port, path);
    let (tx, _) = feed(e, now, LISTENER, from, &m);
    to_origin(&tx).is_empty() && !to_client(&tx, port).is_empty()
}

/// RFC 7252 §5.6 (a cache is the proxy's, reused for any client's matching request),
/// groupcomm-proxy §7: a response stored from thread A's exchange answers the same
/// request arriving at thread B from another client endpoint, with Max-Age aged on B's
/// clock (§5.6.1); engines sharing nothing forward it again.
#[test]
fn rfc7252_s5_6_a_response_stored_via_one_thread_serves_a_request_at_another() {
    let now = Instant::now();
    let later = now + Duration::from_secs(10);
    let (mut a, mut b) = pair(&cache_config(), now);
    fill_unicast(&mut a, now, 1, AT_A, "r");
    let (m, from) = unicast_get(2, AT_B, "r");
    let (tx, ev) = feed(&mut b, later, LISTENER, from, &m);
    assert!(
        to_origin(&tx).is_empty(),
        "served by thread B from the cache"
    );
    let got = to_client(&tx, AT_B);
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].code(), got[0].payload()),
        (code::CONTENT, &b"r"[..])
    );
    assert_eq!(got[0].token(), &2u16.to_be_bytes());
    assert_eq!(
        max_age(&got[0]),
        Some(50),
        "60 s less the 10 s since A stored it"
    );
    assert_eq!(cache_events(&ev), vec![CacheEvent::Hit]);

    let (mut x, mut y) = apart(&cache_config(), now);
    fill_unicast(&mut x, now, 1, AT_A, "r");
    assert!(
        !unicast_hit(&mut y, later, 2, AT_B, "r"),
        "unshared: a miss"
    );
}

/// groupcomm-proxy §7.1: a complete set of fresh responses that thread A's group
/// request stored answers a group request arriving at thread B from the cache alone:
/// nothing reaches the group, each member's stored response goes to B's client with its
/// Reply-From and Max-Age aged (RFC 7252 §5.6.1). Unshared engines multicast it again.
#[test]
fn s7_1_a_complete_set_stored_via_one_thread_is_served_by_another() {
    let now = Instant::now();
    let (mut a, mut b) = pair(&cache_config(), now);
    let t = fill_group(&mut a, now, 1, AT_A, 30) + Duration::from_secs(8);
    let (m, from) = group_get(2, AT_B, 5, &[]);
    let (tx, ev) = feed(&mut b, t, LISTENER, from, &m);
    assert!(to_group(&tx).is_empty(), "nothing multicast by thread B");
    let got = to_client(&tx, AT_B);
    assert_eq!(got.len(), 2);
    for (v, i) in got.iter().zip([1u8, 2]) {
        assert_eq!(v.token(), &2u16.to_be_bytes());
        assert_eq!(v.payload(), &[b'0' + i]);
        assert_eq!(
            cri::parse_reply_from(v.option(RF).unwrap()),
            Some(device(i))
        );
        assert_eq!(max_age(v), Some(20), "30 s less the 10 s since A stored it");
    }
    assert_eq!(cache_events(&ev), vec![CacheEvent::Hit]);

    let (mut x, mut y) = apart(&cache_config(), now);
    let t = fill_group(&mut x, now, 1, AT_A, 30);
    let (m, from) = group_get(2, AT_B, 5, &[]);
    assert_eq!(to_group(&feed(&mut y, t, LISTENER, from, &m).0).len(), 1);
}

/// groupcomm-proxy §7.3: the Group-ETag a client got with a set served by thread A
/// validates at thread B: one 2.03 with it, no payload, nothing multicast. One counter
/// for the proxy's Group-ETags: B never gives another set A's value.
#[test]
fn s7_3_a_group_etag_from_one_thread_gets_a_2_03_from_another() {
    let now = Instant::now();
    let (mut a, mut b) = pair(&cache_config(), now);
    let t = fill_group(&mut a, now, 1, AT_A, 30);
    let (m, from) = group_get(2, AT_A, 2, &[]);
    let (tx, _) = feed(&mut a, t, LISTENER, from, &m);
    let ge = to_client(&tx, AT_A)[0].option(GE).unwrap().to_vec();
    let (m, from) = group_get(3, AT_B, 2, &[(GE, &ge)]);
    let (tx, ev) = feed(&mut b, t, LISTENER, from, &m);
    assert!(to_group(&tx).is_empty());
    let got = to_client(&tx, AT_B);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].code(), VALID);
    assert_eq!(got[0].option(GE), Some(ge.as_slice()));
    assert!(got[0].payload().is_empty());
    assert_eq!(cache_events(&ev), vec![CacheEvent::GroupEtagValid]);
    // Another set stored via B (another path): another Group-ETag.
    let mt = opt::uint_value(2);
    let other = |mid: u16| {
        let token = mid.to_be_bytes();
        build::encode(
            NON,
            code::GET,
            mid,
            &token,
            &mut [
                (opt::URI_HOST, &b"224.0.1.187"[..]),
                (opt::PROXY_SCHEME, b"coap"),
                (opt::URI_PATH, b"hum"),
                (MT, &mt),
            ],
            &[],
        )
    };
    let (tx, _) = feed(&mut b, t, LISTENER, client(AT_B), &other(4));
    let fwd = to_group(&tx)[0].clone();
    for i in [1u8, 2] {
        let r = answer(&fwd, code::CONTENT, &[], b"h");
        feed(&mut b, t, Link::Group(0, 0), device(i), &r);
    }
    let t = t + Duration::from_secs(2);
    advance(&mut b, t);
    let (tx, _) = feed(&mut a, t, LISTENER, client(AT_A), &other(5));
    let got = to_client(&tx, AT_A);
    assert_eq!(got.len(), 2, "B's set served by A");
    assert_ne!(got[0].option(GE), Some(ge.as_slice()));
}

/// `max_entries` bounds the proxy's stored responses, not each thread's: filled via A
/// and via B, the two together hold at most the bound, and the least recently used
/// (whichever thread stored or used it) goes first. Unshared engines hold twice it.
#[test]
fn cache_bounds_hold_for_the_whole_proxy_across_threads() {
    let mut cfg = cache_config();
    cfg.cache.max_entries = 3;
    let now = Instant::now();
    let (mut a, mut b) = pair(&cfg, now);
    let mut evicted = 0;
    for (i, p) in ["a", "b", "c"].into_iter().enumerate() {
        let ev = fill_unicast(&mut a, now, 10 + i as u16, AT_A, p);
        evicted += cache_events(&ev)
            .iter()
            .filter(|e| **e == CacheEvent::Evicted)
            .count();
    }
    // "a" used (at B) last among A's: "b" is the least recently used.
    assert!(unicast_hit(&mut b, now, 20, AT_B, "a"));
    for (i, p) in ["d", "e"].into_iter().enumerate() {
        let ev = fill_unicast(&mut b, now, 30 + i as u16, AT_B, p);
        evicted += cache_events(&ev)
            .iter()
            .filter(|e| **e == CacheEvent::Evicted)
            .count();
        assert!(a.cache_usage().0 <= 3 && b.cache_usage() == a.cache_usage());
    }
    assert_eq!(a.cache_usage().0, 3);
    assert_eq!(
        evicted, 2,
        "each eviction counted once, by the thread that made it"
    );
    assert!(unicast_hit(&mut a, now, 40, AT_A, "a"));
    assert!(unicast_hit(&mut a, now, 41, AT_A, "e"));
    assert!(!unicast_hit(&mut b, now, 42, AT_B, "b"), "evicted first");

    let (mut x, mut y) = apart(&cfg, now);
    for (i, p) in ["a", "b", "c"].into_iter().enumerate() {
        fill_unicast(&mut x, now, 10 + i as u16, AT_A, p);
        fill_unicast(&mut y, now, 20 + i as u16, AT_B, p);
    }
    assert_eq!(x.cache_usage().0 + y.cache_usage().0, 6, "unshared: 3 each");
}

/// A reload's shrunk bound (issue 16) applies once, by the first engine to apply it,
/// and every engine sees it at once: the second engine's reload evicts nothing more,
/// and before it the second engine's stores already keep the new bound. A cache turned
/// off is emptied for all.
#[test]
fn cache_resize_on_reload_applies_once_for_every_thread() {
    let now = Instant::now();
    let (mut a, mut b) = pair(&cache_config(), now);
    for (i, p) in ["a", "b", "c", "d"].into_iter().enumerate() {
        fill_unicast(&mut a, now, 10 + i as u16, AT_A, p);
    }
    let mut smaller = cache_config();
    smaller.cache.max_entries = 2;
    a.reconfigure(now, smaller.clone()).unwrap();
    let (_, ev) = common::outputs(&mut a);
    assert_eq!(cache_events(&ev), vec![CacheEvent::Evicted; 2]);
    assert_eq!(b.cache_usage().0, 2, "B sees the resized store");
    // B stores before its own reload: the bound in force is the new one.
    let ev = fill_unicast(&mut b, now, 20, AT_B, "e");
    assert_eq!(
        cache_events(&ev),
        vec![CacheEvent::Stored, CacheEvent::Evicted]
    );
    assert_eq!(a.cache_usage().0, 2);
    b.reconfigure(now, smaller.clone()).unwrap();
    let (_, ev) = common::outputs(&mut b);
    assert!(cache_events(&ev).is_empty(), "nothing left to evict");
    let mut off = smaller;
    off.cache.enabled = false;
    a.reconfigure(now, off).unwrap();
    assert_eq!(b.cache_usage(), (0, 0));
}

/// The clock rule of the shared store: an entry's time is the `now` of the engine that
/// stored it. Where another engine's `now` is earlier (clocks that differ, as here),
/// the entry counts there as just stored: served with the Max-Age it was stored with,
/// never more (RFC 7252 §5.6.1: never fresher than the origin allowed), and stale once
/// that engine's clock passes the storing time plus Max-Age.
#[test]
fn rfc7252_s5_6_1_an_engine_behind_the_storing_one_never_serves_fresher_than_max_age() {
    let start = Instant::now();
    let ahead = start + Duration::from_secs(100);
    let (mut a, mut b) = pair(&cache_config(), start);
    // A's clock is 100 s ahead of B's; the origin's response has Max-Age 60.
    fill_unicast(&mut a, ahead, 1, AT_A, "r");
    let (m, from) = unicast_get(2, AT_B, "r");
    let (tx, _) = feed(&mut b, start, LISTENER, from, &m);
    let got = to_client(&tx, AT_B);
    assert_eq!(got.len(), 1, "fresh at B");
    assert_eq!(max_age(&got[0]), Some(60), "not 160");
    // Fresh on B's clock until A's storing time plus 60 s.
    let t = ahead + Duration::from_secs(59);
    assert!(unicast_hit(&mut b, t, 3, AT_B, "r"));
    let t = ahead + Duration::from_secs(61);
    assert!(!unicast_hit(&mut b, t, 4, AT_B, "r"), "stale");
}

/// groupcomm-proxy §7.2.2 across threads: thread B's group request for a stale set
/// that thread A stored carries the stored ETags; a member's 2.03 to it refreshes the
/// store, and thread A then serves the set from the cache alone.
#[test]
fn s7_2_2_a_revalidation_by_one_thread_refreshes_the_set_for_another() {
    let now = Instant::now();
    let (mut a, mut b) = pair(&cache_config(), now);
    let t = fill_group(&mut a, now, 1, AT_A, 30) + Duration::from_secs(40);
    let (m, from) = group_get(2, AT_B, 2, &[]);
    let (tx, _) = feed(&mut b, t, LISTENER, from, &m);
    let fwd = to_group(&tx)[0].clone();
    let v = MessageView::parse(&fwd.bytes).unwrap();
    let etags: Vec<&[u8]> = v
        .options()
        .filter(|(n, _)| *n == ETAG)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(etags, vec![&b"v1"[..], &b"v2"[..]], "A's stored ETags");
    let a30 = opt::uint_value(30);
    for (i, tag) in [(1u8, b"v1"), (2, b"v2")] {
        let r = answer(&fwd, VALID, &[(ETAG, tag), (opt::MAX_AGE, &a30)], b"");
        let (tx, _) = feed(&mut b, t, Link::Group(0, 0), device(i), &r);
        let got = to_client(&tx, AT_B);
        assert_eq!(got[0].payload(), &[b'0' + i], "the stored representation");
    }
    let t = t + Duration::from_secs(2);
    advance(&mut b, t);
    let (m, from) = group_get(3, AT_A, 2, &[]);
    let (tx, ev) = feed(&mut a, t, LISTENER, from, &m);
    assert!(to_group(&tx).is_empty());
    assert_eq!(to_client(&tx, AT_A).len(), 2);
    assert_eq!(cache_events(&ev), vec![CacheEvent::Hit]);
}

// ---- the servers a reverse-proxy resource stands in for (groupcomm-proxy §6) ----

const ADVERTISE: &str = "127.0.0.1:5683";

fn pool_addr(i: u16) -> SocketAddr {
    format!("127.0.0.1:{}", 6000 + i).parse().unwrap()
}

/// The default group behind `lights`, standing in for the servers; unicast forwarding
/// off (the resource is the only way to the servers). `pool`: listeners 1 and 2.
fn reverse_config(pool: bool, max_servers: usize) -> ProxyConfig {
    let mut c = ProxyConfig::default();
    c.unicast.enabled = false;
    c.reverse.push(ReverseSpec {
        host: None,
        path: vec!["lights".into()],
        group: 0,
        stand_in: StandIn::Servers {
            advertise: ADVERTISE.parse().unwrap(),
            pool: if pool {
                vec![(1, pool_addr(1)), (2, pool_addr(2))]
            } else {
                vec![]
            },
            max_servers,
            server_lifetime: Duration::from_secs(3600),
        },
    });
    c
}

/// A group request to coap://proxy/lights/temp (T' = 5 s) from `port`: the multicast.
fn lights(e: &mut Engine, now: Instant, mid: u16, port: u16) -> Transmit {
    let mt = opt::uint_value(5);
    let m = build::encode(
        NON,
        code::GET,
        mid,
        &mid.to_be_bytes(),
        &mut [
            (opt::URI_PATH, &b"lights"[..]),
            (opt::URI_PATH, b"temp"),
            (MT, &mt),
        ],
        &[],
    );
    let (tx, _) = feed(e, now, LISTENER, client(port), &m);
    tx.into_iter()
        .find(|t| matches!(t.link, Link::Group(0, _)))
        .expect("a multicast")
}

/// Device `i` answers `fwd`: the Reply-From of what reaches the client at `port`.
fn reply_from(e: &mut Engine, now: Instant, fwd: &Transmit, i: u8, port: u16) -> Vec<u8> {
    let r = answer(fwd, code::CONTENT, &[], b"21");
    let (tx, _) = feed(e, now, fwd.link, device(i), &r);
    to_client(&tx, port)[0].option(RF).unwrap().to_vec()
}

fn follow_up(mid: u16, server: SocketAddr) -> Vec<u8> {
    let host = server.ip().to_string();
    let port = opt::uint_value(u32::from(server.port()));
    build::encode(
        CON,
        code::GET,
        mid,
        &mid.to_be_bytes(),
        &mut [
            (opt::URI_HOST, host.as_bytes()),
            (opt::URI_PORT, &port),
            (opt::URI_PATH, b"r1"),
        ],
        &[],
    )
}

fn reverse_actions(ev: &[Event]) -> Vec<ReverseAction> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Reverse { action, .. } => Some(*action),
            _ => None,
        })
        .collect()
}

fn rejected(ev: &[Event]) -> Option<RejectReason> {
    ev.iter().find_map(|e| match e {
        Event::Rejected { reason, .. } => Some(*reason),
        _ => None,
    })
}

/// groupcomm-proxy §6.2 with Appendix A.1: a follow-up naming a server (Uri-Host,
/// Uri-Port, the CRI reference's authority) that answered thread A's group request is
/// forwarded to it by thread B, which received it from another client endpoint.
/// Unshared, B knows no such server: 4.04.
#[test]
fn s6_2_a_follow_up_at_another_thread_reaches_the_server_that_answered() {
    let now = Instant::now();
    let (mut a, mut b) = pair(&reverse_config(false, 16), now);
    let fwd = lights(&mut a, now, 1, AT_A);
    let rf = reply_from(&mut a, now, &fwd, 1, AT_A);
    assert_eq!(
        cri::parse_reply_from_pair(&rf),
        Some((ADVERTISE.parse().unwrap(), Some(device(1))))
    );
    let (tx, ev) = feed(
        &mut b,
        now,
        LISTENER,
        client(AT_B),
        &follow_up(2, device(1)),
    );
    let out: Vec<_> = tx.iter().filter(|t| t.to == device(1)).collect();
    assert_eq!(out.len(), 1, "forwarded by B to device 1: {tx:?}");
    assert!(matches!(out[0].link, Link::Unicast(_)));
    assert_eq!(reverse_actions(&ev), vec![ReverseAction::FollowUp]);

    let (mut x, mut y) = apart(&reverse_config(false, 16), now);
    let fwd = lights(&mut x, now, 1, AT_A);
    reply_from(&mut x, now, &fwd, 1, AT_A);
    let (tx, ev) = feed(
        &mut y,
        now,
        LISTENER,
        client(AT_B),
        &follow_up(2, device(1)),
    );
    assert!(tx.iter().all(|t| t.to != device(1)));
    assert_eq!(rejected(&ev), Some(RejectReason::ReverseUnknownServer));
}

/// groupcomm-proxy §6.1 Appendix A.2, §6.2: a pool address stands for one server for the
/// whole proxy. The server that answered thread A got pool address 1; the one that
/// answered thread B gets address 2 (not 1 again, which would name two servers); a
/// follow-up to either pool address reaches its server whichever thread receives it.
/// Unshared, B would give its server address 1 too.
#[test]
fn s6_2_pool_slots_are_the_same_on_every_thread() {
    let now = Instant::now();
    let (mut a, mut b) = pair(&reverse_config(true, 16), now);
    let fwd = lights(&mut a, now, 1, AT_A);
    assert_eq!(
        reply_from(&mut a, now, &fwd, 1, AT_A),
        cri::reply_from(pool_addr(1))
    );
    let fwd = lights(&mut b, now, 2, AT_B);
    assert_eq!(
        reply_from(&mut b, now, &fwd, 2, AT_B),
        cri::reply_from(pool_addr(2))
    );
    // Device 1 answering B's request keeps its address.
    assert_eq!(
        reply_from(&mut b, now, &fwd, 1, AT_B),
        cri::reply_from(pool_addr(1))
    );
    let to_pool = |mid: u16| {
        build::encode(
            CON,
            code::GET,
            mid,
            &mid.to_be_bytes(),
            &mut [(opt::URI_PATH, &b"r"[..])],
            &[],
        )
    };
    for (e, port, listener, dev) in [(&mut b, AT_B, 1, device(1)), (&mut a, AT_A, 2, device(2))] {
        let (tx, ev) = feed(e, now, Link::Listener(listener), client(port), &to_pool(9));
        assert!(tx.iter().any(|t| t.to == dev), "pool {listener} -> {dev}");
        assert_eq!(reverse_actions(&ev), vec![ReverseAction::FollowUp]);
    }

    let (mut x, mut y) = apart(&reverse_config(true, 16), now);
    let fwd = lights(&mut x, now, 1, AT_A);
    reply_from(&mut x, now, &fwd, 1, AT_A);
    let fwd = lights(&mut y, now, 2, AT_B);
    assert_eq!(
        reply_from(&mut y, now, &fwd, 2, AT_B),
        cri::reply_from(pool_addr(1)),
        "unshared: one pool address for two servers"
    );
}

/// `max_servers` bounds the proxy's table of a group, not each thread's: servers heard
/// via A and via B count together, and the least recently heard is forgotten (counted
/// once, by the thread that forgot it); a follow-up to it then gets 4.04 on any thread.
#[test]
fn servers_bound_holds_for_the_whole_proxy_across_threads() {
    let now = Instant::now();
    let (mut a, mut b) = pair(&reverse_config(false, 2), now);
    let fwd = lights(&mut a, now, 1, AT_A);
    reply_from(&mut a, now, &fwd, 1, AT_A);
    let t = now + Duration::from_secs(1);
    let fwd = lights(&mut b, t, 2, AT_B);
    reply_from(&mut b, t, &fwd, 2, AT_B);
    let t = t + Duration::from_secs(1);
    let r = answer(&fwd, code::CONTENT, &[], b"21");
    let (_, ev) = feed(&mut b, t, fwd.link, device(3), &r);
    assert_eq!(
        reverse_actions(&ev),
        vec![ReverseAction::ServerForgotten],
        "device 1, heard by A, least recently"
    );
    let (_, ev) = feed(&mut a, t, LISTENER, client(AT_A), &follow_up(3, device(1)));
    assert_eq!(rejected(&ev), Some(RejectReason::ReverseUnknownServer));
    for (e, mid, port) in [(&mut a, 4, AT_A), (&mut b, 5, AT_B)] {
        let (tx, _) = feed(e, t, LISTENER, client(port), &follow_up(mid, device(3)));
        assert!(tx.iter().any(|x| x.to == device(3)));
    }
}

// ---- end to end: two forwarding threads on loopback ----

/// A proxy bound as `groxy run` binds it, serving on a thread of its own until dropped;
/// it must run two forwarding threads (`why` says what used to keep it on one).
struct Serving {
    listen: SocketAddr,
    _thread: common::OnThread,
}

impl Serving {
    fn start(run: groxy::runtime::RunConfig, why: &str) -> Serving {
        let proxy = groxy::runtime::Proxy::bind(run).unwrap();
        assert_eq!(proxy.threads(), 2, "{why}");
        let listen = proxy.listen_addrs()[0];
        let thread = common::OnThread::spawn(move |stopped| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(proxy.run(async move {
                    let _ = stopped.await;
                }))
                .unwrap();
        });
        Serving {
            listen,
            _thread: thread,
        }
    }
}

/// A receiver of the group's multicast on loopback, which answers from its own address.
fn loopback_member(group: std::net::SocketAddrV4) -> std::net::UdpSocket {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::net::{Ipv4Addr, SocketAddrV4};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, group.port())).into())
        .unwrap();
    s.join_multicast_v4(group.ip(), &Ipv4Addr::LOCALHOST)
        .unwrap();
    let s: std::net::UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    s
}

/// groupcomm-proxy §7.1 with `[proxy] threads = 2` on loopback: one group GET fanned out
/// and answered by the group's one member stores a complete set; the same GET from 48
/// other client ports (the kernel spreads them over both threads' SO_REUSEPORT
/// listeners, as the e2e test in tests/threads.rs shows) is answered from the cache by
/// whichever thread receives it: each client gets the member's 2.05, and nothing more
/// reaches the group.
#[test]
fn s7_1_two_threads_on_loopback_serve_one_stored_set_to_every_client() {
    use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
    let port = common::free_port();
    let b = (std::process::id() % 200) as u8 + 10;
    let group = SocketAddrV4::new(Ipv4Addr::new(239, 255, 78, b), port);
    let member = loopback_member(group);
    let mut run = groxy::settings::load_default().run;
    run.proxy.groups[0].addr = SocketAddr::V4(group);
    run.proxy.limits.egress_ports = 1;
    run.proxy.threads = 2;
    run.proxy.cache.enabled = true;
    let member_addr = SocketAddr::from(([127, 0, 0, 1], port));
    run.proxy.cache.groups = vec![GroupCache {
        members: vec![member_addr],
    }];
    run.listen = vec!["127.0.0.1:0".parse().unwrap()];
    run.state_dir = None;
    let proxy = Serving::start(run, "the cache no longer keeps the proxy on one");
    let listen = proxy.listen;
    let get = |mid: u16| {
        let host = group.ip().to_string();
        let gport = opt::uint_value(u32::from(group.port()));
        let mt = opt::uint_value(2);
        build::encode(
            NON,
            code::GET,
            mid,
            &mid.to_be_bytes(),
            &mut [
                (opt::URI_HOST, host.as_bytes()),
                (opt::URI_PORT, &gport),
                (opt::PROXY_SCHEME, b"coap"),
                (opt::URI_PATH, b"temp"),
                (MT, &mt),
            ],
            &[],
        )
    };
    let client = || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1000)))
            .unwrap();
        s
    };
    let first = client();
    first.send_to(&get(1), listen).unwrap();
    let mut buf = [0u8; 1500];
    let (n, egress) = member.recv_from(&mut buf).expect("the fan-out");
    let fwd = MessageView::parse(&buf[..n]).unwrap();
    let age = opt::uint_value(60);
    let r = build::encode(
        NON,
        code::CONTENT,
        0x4242,
        fwd.token(),
        &mut [(opt::MAX_AGE, &age)],
        b"21.5",
    );
    member.send_to(&r, egress).unwrap();
    let (n, _) = first.recv_from(&mut buf).expect("the relayed response");
    assert_eq!(MessageView::parse(&buf[..n]).unwrap().payload(), b"21.5");

    let clients: Vec<UdpSocket> = (0..48).map(|_| client()).collect();
    for (i, c) in clients.iter().enumerate() {
        c.send_to(&get(100 + i as u16), listen).unwrap();
    }
    for (i, c) in clients.iter().enumerate() {
        let (n, _) = c.recv_from(&mut buf).expect("an answer from the cache");
        let v = MessageView::parse(&buf[..n]).unwrap();
        assert_eq!(
            (v.code(), v.token(), v.payload()),
            (
                code::CONTENT,
                &(100 + i as u16).to_be_bytes()[..],
                &b"21.5"[..]
            )
        );
        assert_eq!(
            cri::parse_reply_from(v.option(RF).unwrap()),
            Some(member_addr)
        );
    }
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        if let Ok((n, _)) = member.recv_from(&mut buf) {
            panic!("a fan-out reached the group again: {:?}", &buf[..n]);
        }
    }
    drop(proxy);
}

// ---- Deterministic Requests (groupcomm-proxy §7.4.1) across threads ----

mod det {
    use super::*;
    use common::Group;
    use groxy::oscore::SecurityContext;
    use groxy::proxy::{GroupSecurity, Policy};

    const MEMBER: &[u8] = &[0x01];
    const DEV1: &[u8] = &[0x0d];
    const DEV2: &[u8] = &[0x0e];
    const DET_KID: &[u8] = &[0xdc];
    /// GET /hello (token 0xc3), what every member protects to the same bytes.
    const GET_HELLO: &[u8] = &[
        0x51, 0x01, 0xaa, 0x01, 0xc3, 0xb5, b'h', b'e', b'l', b'l', b'o',
    ];

    fn config(g: &Group) -> ProxyConfig {
        let mut cfg = cache_config();
        cfg.deterministic_kids = vec![Some(DET_KID.to_vec())];
        cfg.groups[0].security = Some(GroupSecurity {
            policy: Policy::Enforce,
            checker: g.checker_config(),
            member: None,
            allow_kids: None,
        });
        cfg
    }

    /// The Deterministic Request for GET /hello (T' 5 s) from `port` into `e`: the
    /// datagram to the group, if any.
    fn request(g: &Group, e: &mut Engine, now: Instant, mid: u16, port: u16) -> Option<Vec<u8>> {
        let ctx = SecurityContext::new(&g.config(MEMBER)).unwrap();
        let (protected, _) = ctx
            .protect_deterministic_request(GET_HELLO, DET_KID)
            .unwrap();
        let v = MessageView::parse(&protected).unwrap();
        let mut opts: Vec<(u16, &[u8])> = v.options().collect();
        opts.push((opt::URI_HOST, b"224.0.1.187"));
        opts.push((opt::PROXY_SCHEME, b"coap"));
        opts.push((MT, &[5]));
        let msg = build::encode(
            NON,
            v.code(),
            mid,
            &mid.to_be_bytes(),
            &mut opts,
            v.payload(),
        );
        let (tx, _) = feed(e, now, LISTENER, client(port), &msg);
        to_group(&tx).first().map(|t| t.bytes.clone())
    }

    /// Server `ctx`'s genuine answer to the forwarded request `fwd`.
    fn answer(ctx: &mut SecurityContext, fwd: &[u8], payload: &[u8]) -> Vec<u8> {
        let (_, mut det) = ctx.unprotect_deterministic_request(fwd, DET_KID).unwrap();
        let token = MessageView::parse(fwd).unwrap().token().to_vec();
        let plain = build::encode(NON, 0x45, 1, &token, &mut [], payload);
        ctx.protect_deterministic_response(&plain, &mut det)
            .unwrap()
    }

    fn stored(ev: &[Event]) -> usize {
        cache_events(ev)
            .iter()
            .filter(|e| **e == CacheEvent::Stored)
            .count()
    }

    /// groupcomm-proxy §7.4.1: every Deterministic Request has Partial IV 0, so a server's
    /// older answer replayed into a later exchange verifies again. The newest Partial IV
    /// stored per server is the proxy's (in the shared store): answers thread A stored,
    /// replayed into thread B's exchange once they went stale, verify and are relayed
    /// but not stored again (they would bring old content back as fresh); thread B's
    /// request stays a miss. Unshared, thread B stores the replays.
    #[test]
    fn s7_4_1_an_answer_stored_via_one_thread_replayed_at_another_is_not_stored_again() {
        for share in [true, false] {
            let g = Group::new(&[MEMBER, DEV1, DEV2]);
            let mut devs = [
                SecurityContext::new(&g.config(DEV1)).unwrap(),
                SecurityContext::new(&g.config(DEV2)).unwrap(),
            ];
            let now = Instant::now();
            let (mut a, mut b) = if share {
                pair(&config(&g), now)
            } else {
                apart(&config(&g), now)
            };
            let fwd = request(&g, &mut a, now, 1, AT_A).expect("forwarded");
            let old: Vec<Vec<u8>> = devs
                .iter_mut()
                .zip([&b"old 1"[..], b"old 2"])
                .map(|(d, p)| answer(d, &fwd, p))
                .collect();
            for (i, o) in [1u8, 2].into_iter().zip(&old) {
                let (_, ev) = feed(&mut a, now, Link::Group(0, 0), device(i), o);
                assert_eq!(stored(&ev), 1);
            }
            // Stale after the default 60 s; thread B's request goes to the group.
            let t = now + Duration::from_secs(66);
            advance(&mut a, t);
            let fwd = request(&g, &mut b, t, 2, AT_B).expect("stale: forwarded");
            let tok = MessageView::parse(&fwd).unwrap().token().to_vec();
            let mut again = 0;
            for (i, o) in [1u8, 2].into_iter().zip(&old) {
                let v = MessageView::parse(o).unwrap();
                let mut opts: Vec<(u16, &[u8])> = v.options().collect();
                let replay = build::encode(NON, v.code(), 9, &tok, &mut opts, v.payload());
                let (tx, ev) = feed(&mut b, t, Link::Group(0, 0), device(i), &replay);
                assert_eq!(to_client(&tx, AT_B).len(), 1, "verifies: relayed");
                again += stored(&ev);
            }
            if share {
                assert_eq!(again, 0, "not stored again by thread B");
                let t = t + Duration::from_secs(5);
                advance(&mut b, t);
                assert!(
                    request(&g, &mut a, t, 3, AT_A).is_some(),
                    "the replays refreshed nothing: still a miss"
                );
            } else {
                assert_eq!(again, 2, "unshared: thread B stores the replays");
            }
        }
    }
}

/// groupcomm-proxy §6.2 with `[proxy] threads = 2` on loopback: the group's one member
/// answers a group request to the reverse-proxied resource `lights` (the proxy standing
/// in for the servers); a follow-up naming it (Uri-Host, Uri-Port: the CRI reference's
/// authority) from each of 48 other client ports, which the kernel spreads over both
/// threads, reaches the member whichever thread received it (none gets 4.04).
#[test]
fn s6_2_two_threads_on_loopback_forward_every_follow_up_to_the_server() {
    use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
    let port = common::free_port();
    let b = (std::process::id() % 200) as u8 + 10;
    let group = SocketAddrV4::new(Ipv4Addr::new(239, 255, 79, b), port);
    let member = loopback_member(group);
    let mut run = groxy::settings::load_default().run;
    run.proxy.groups[0].addr = SocketAddr::V4(group);
    run.proxy.limits.egress_ports = 1;
    run.proxy.threads = 2;
    run.proxy.unicast.enabled = false;
    run.proxy.reverse = vec![ReverseSpec {
        host: None,
        path: vec!["lights".into()],
        group: 0,
        stand_in: StandIn::Servers {
            advertise: ADVERTISE.parse().unwrap(),
            pool: Vec::new(),
            max_servers: 16,
            server_lifetime: Duration::from_secs(3600),
        },
    }];
    run.listen = vec!["127.0.0.1:0".parse().unwrap()];
    run.state_dir = None;
    let proxy = Serving::start(run, "stand_in = servers no longer keeps one thread");
    let listen = proxy.listen;
    let client = || {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1000)))
            .unwrap();
        s
    };
    let first = client();
    let mt = opt::uint_value(1);
    let m = build::encode(
        NON,
        code::GET,
        1,
        b"g1",
        &mut [
            (opt::URI_PATH, &b"lights"[..]),
            (opt::URI_PATH, b"temp"),
            (MT, &mt),
        ],
        &[],
    );
    first.send_to(&m, listen).unwrap();
    let mut buf = [0u8; 1500];
    let (n, egress) = member.recv_from(&mut buf).expect("the fan-out");
    let fwd = MessageView::parse(&buf[..n]).unwrap();
    let r = build::encode(NON, code::CONTENT, 0x4242, fwd.token(), &mut [], b"21.5");
    member.send_to(&r, egress).unwrap();
    let (n, _) = first.recv_from(&mut buf).expect("the relayed response");
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    let rf = MessageView::parse(&buf[..n])
        .unwrap()
        .option(RF)
        .unwrap()
        .to_vec();
    assert_eq!(
        cri::parse_reply_from_pair(&rf),
        Some((ADVERTISE.parse().unwrap(), Some(server)))
    );

    let clients: Vec<UdpSocket> = (0..48).map(|_| client()).collect();
    for (i, c) in clients.iter().enumerate() {
        c.send_to(&follow_up(100 + i as u16, server), listen)
            .unwrap();
    }
    let mut reached = std::collections::BTreeSet::new();
    let until = Instant::now() + Duration::from_millis(1500);
    member
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    while Instant::now() < until && reached.len() < 48 {
        if let Ok((n, from)) = member.recv_from(&mut buf) {
            let v = MessageView::parse(&buf[..n]).unwrap();
            assert_eq!(v.option(opt::URI_PATH), Some(&b"r1"[..]));
            // Each exchange's own token (a retransmission repeats it).
            reached.insert(v.token().to_vec());
            let ack = build::encode(
                groxy::coap::build::ACK,
                code::CONTENT,
                v.message_id(),
                v.token(),
                &mut [],
                b"ok",
            );
            member.send_to(&ack, from).unwrap();
        }
    }
    assert_eq!(reached.len(), 48, "every follow-up reached the server");
    for (i, c) in clients.iter().enumerate() {
        // An empty ACK of the proxy's may come first (the answer then comes separately).
        let v = loop {
            let (n, _) = c.recv_from(&mut buf).expect("the server's answer");
            let v = MessageView::parse(&buf[..n]).unwrap();
            if v.code() != code::EMPTY {
                break v;
            }
        };
        assert_eq!(
            (v.code(), v.token(), v.payload()),
            (
                code::CONTENT,
                &(100 + i as u16).to_be_bytes()[..],
                &b"ok"[..]
            ),
            "no thread answered 4.04"
        );
    }
    drop(proxy);
}
