//! The forwarding engine against every rule of groupcomm-proxy-07 §5, RFC 10020 §3.5 and
//! RFC 7252 §4-§5.7 that it implements, on a virtual clock: no sockets, no sleeping.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::engine::{Clocked, client, device, drops, rejected};
use groxy::coap::MessageView;
use groxy::coap::build::{self, ACK, CON, NON, RST, code};
use groxy::coap::cri;
use groxy::coap::options as opt;
use groxy::proxy::{CloseReason, DropReason, Event, GroupSpec, Link, ProxyConfig, RejectReason};

const MT: u16 = opt::MULTICAST_TIMEOUT_DEFAULT;
const RF: u16 = opt::REPLY_FROM_DEFAULT;
const LISTENER: Link = Link::Listener(0);

fn group_addr() -> SocketAddr {
    "224.0.1.187:5683".parse().unwrap()
}

fn config() -> ProxyConfig {
    let mut c = ProxyConfig::default();
    c.groups.push(GroupSpec {
        name: "disabled".into(),
        addr: "239.1.2.3:5683".parse().unwrap(),
        host_names: vec![],
        enabled: false,
        allow: vec!["0.0.0.0/0".parse().unwrap()],
        max_timeout: Duration::from_secs(60),
        security: None,
        next_hop: None,
    });
    c
}

/// The engine on its clock, seeded 42.
fn harness(cfg: ProxyConfig) -> Clocked {
    Clocked::new(cfg, 42)
}

/// A request from the client: type, MID, token, options, payload.
fn req(t: u8, mid: u16, token: &[u8], opts: &[(u16, &[u8])], payload: &[u8]) -> Vec<u8> {
    build::encode(t, code::GET, mid, token, &mut opts.to_vec(), payload)
}

/// GET via Proxy-Scheme + Uri-Host (aiocoap's form) to the default group, with T' seconds.
fn group_get(t: u8, mid: u16, token: &[u8], timeout: Option<u32>) -> Vec<u8> {
    let mtv = timeout.map(opt::uint_value);
    let mut o: Vec<(u16, &[u8])> = vec![
        (opt::URI_HOST, b"224.0.1.187"),
        (opt::PROXY_SCHEME, b"coap"),
        (opt::URI_PATH, b"temp"),
    ];
    if let Some(v) = &mtv {
        o.push((MT, v));
    }
    req(t, mid, token, &o, &[])
}

fn response_to(forwarded: &[u8], t: u8, mid: u16, payload: &[u8]) -> Vec<u8> {
    let v = MessageView::parse(forwarded).unwrap();
    build::encode(t, code::CONTENT, mid, v.token(), &mut [], payload)
}

#[test]
fn s5_2_1_fan_out_and_s5_4_1_relay_with_reply_from() {
    let mut h = harness(config());
    let (tx, ev) = h.feed(
        LISTENER,
        client(),
        &group_get(NON, 1, &[0xc1, 0x1e], Some(30)),
    );
    assert_eq!(tx.len(), 1);
    let fwd = &tx[0];
    assert_eq!((fwd.link, fwd.to), (Link::Group(0, 0), group_addr()));
    let v = MessageView::parse(&fwd.bytes).unwrap();
    // A NON group request with the proxy's own token; Multicast-Timeout, Proxy-Scheme and
    // Uri-Host removed; Uri-Path kept.
    assert_eq!(v.mtype(), NON);
    assert_eq!(v.token().len(), 8);
    assert_ne!(v.token(), &[0xc1, 0x1e]);
    assert_eq!(
        v.options().collect::<Vec<_>>(),
        vec![(opt::URI_PATH, &b"temp"[..])]
    );
    assert!(
        matches!(ev[0], Event::FanOut { group: 0, timeout, .. } if timeout == Duration::from_secs(30))
    );

    // Three devices, one answering twice: every response relayed "as it comes".
    for (i, d) in [(0u16, 1u8), (1, 2), (2, 3), (3, 1)] {
        h.now += Duration::from_millis(100);
        let r = response_to(&fwd.bytes, NON, 100 + i, format!("r{i}").as_bytes());
        let (tx, ev) = h.feed(Link::Group(0, 0), device(d), &r);
        assert_eq!(tx.len(), 1);
        assert_eq!((tx[0].link, tx[0].to), (LISTENER, client()));
        let rv = MessageView::parse(&tx[0].bytes).unwrap();
        assert_eq!(rv.token(), &[0xc1, 0x1e], "client's token");
        assert_eq!(rv.mtype(), NON);
        assert_eq!(rv.code(), code::CONTENT);
        assert_eq!(rv.payload(), format!("r{i}").as_bytes());
        assert_eq!(
            cri::parse_reply_from(rv.option(RF).unwrap()),
            Some(device(d)),
            "§3 Reply-From"
        );
        assert!(
            matches!(ev[0], Event::Relayed { group: Some(0), after } if after == Duration::from_millis(100 * (i as u64 + 1)))
        );
    }
    // §5.4.1: at T' the token is freed; a later response is dropped as late.
    let (_, ev) = h.advance(Duration::from_secs(30));
    assert!(ev.contains(&Event::Closed {
        group: Some(0),
        responses: 4,
        reason: CloseReason::Timeout
    }));
    let late = response_to(&fwd.bytes, NON, 200, b"late");
    let (tx, ev) = h.feed(Link::Group(0, 0), device(4), &late);
    assert!(tx.is_empty());
    assert_eq!(drops(&ev), vec![DropReason::LateResponse]);
    // A response with a token the proxy never issued is unknown, not late.
    let (_, ev) = h.feed(
        Link::Group(0, 0),
        device(4),
        &build::encode(NON, code::CONTENT, 7, &[1; 8], &mut [], b""),
    );
    assert_eq!(drops(&ev), vec![DropReason::UnknownToken]);
}

#[test]
fn s5_2_1_proxy_uri_form_is_decomposed() {
    let mut h = harness(config());
    let mtv = opt::uint_value(5);
    let m = req(
        NON,
        1,
        &[1],
        &[(MT, &mtv), (opt::PROXY_URI, b"coap://224.0.1.187/a/b?x=1")],
        &[],
    );
    let (tx, _) = h.feed(LISTENER, client(), &m);
    let v = MessageView::parse(&tx[0].bytes).unwrap();
    assert_eq!(
        v.options().collect::<Vec<_>>(),
        vec![
            (opt::URI_PATH, &b"a"[..]),
            (opt::URI_PATH, b"b"),
            (opt::URI_QUERY, b"x=1")
        ]
    );
    // By configured host name as well.
    let m = req(
        NON,
        2,
        &[2],
        &[
            (opt::URI_HOST, b"All-CoAP-Nodes"),
            (MT, &mtv),
            (opt::PROXY_SCHEME, b"coap"),
        ],
        &[],
    );
    let (tx, _) = h.feed(LISTENER, client(), &m);
    assert_eq!(tx[0].to, group_addr());
}

#[test]
fn s5_2_1_step3_missing_multicast_timeout_is_4_00_with_empty_option() {
    let mut h = harness(config());
    for (t, mid) in [(NON, 1u16), (CON, 2)] {
        let (tx, ev) = h.feed(LISTENER, client(), &group_get(t, mid, &[9], None));
        assert_eq!(tx.len(), 1, "nothing multicast");
        let v = MessageView::parse(&tx[0].bytes).unwrap();
        assert_eq!(v.code(), code::BAD_REQUEST);
        assert_eq!(
            v.option(MT),
            Some(&[][..]),
            "Multicast-Timeout 0 is the empty value"
        );
        assert!(
            !v.payload().is_empty(),
            "diagnostic payload (RFC 7252 §5.9.2)"
        );
        assert_eq!(v.token(), &[9]);
        // A CON gets the error piggybacked in its ACK.
        assert_eq!(v.mtype(), if t == CON { ACK } else { NON });
        if t == CON {
            assert_eq!(v.message_id(), mid);
        }
        assert_eq!(
            rejected(&ev),
            Some((RejectReason::MissingMulticastTimeout, code::BAD_REQUEST))
        );
    }
}

#[test]
fn error_codes_of_rfc10020_s3_5_1_and_rfc7252_s5_7() {
    let mut cfg = config();
    cfg.unicast.enabled = false;
    let mut h = harness(cfg);
    let mtv = opt::uint_value(5);
    type Case<'a> = (Vec<(u16, &'a [u8])>, RejectReason, u8);
    let cases: Vec<Case> = vec![
        // A multicast address that is not a configured group: 5.01.
        (
            vec![(MT, &mtv), (opt::PROXY_URI, b"coap://239.9.9.9/x")],
            RejectReason::GroupNotEnabled,
            code::NOT_IMPLEMENTED,
        ),
        // A configured group that is not enabled: 5.01.
        (
            vec![(MT, &mtv), (opt::PROXY_URI, b"coap://239.1.2.3/x")],
            RejectReason::GroupNotEnabled,
            code::NOT_IMPLEMENTED,
        ),
        // A unicast target with unicast forwarding off: 5.05.
        (
            vec![(MT, &mtv), (opt::PROXY_URI, b"coap://192.0.2.7/x")],
            RejectReason::UnicastNotAllowed,
            code::PROXYING_NOT_SUPPORTED,
        ),
        // Another scheme: 5.05.
        (
            vec![(MT, &mtv), (opt::PROXY_URI, b"http://224.0.1.187/x")],
            RejectReason::SchemeNotSupported,
            code::PROXYING_NOT_SUPPORTED,
        ),
        // An unknown host name: 5.05.
        (
            vec![(MT, &mtv), (opt::PROXY_URI, b"coap://nowhere.example/x")],
            RejectReason::UnknownHost,
            code::PROXYING_NOT_SUPPORTED,
        ),
        // An unknown critical option: 4.02.
        (
            vec![
                (MT, &mtv),
                (opt::PROXY_URI, b"coap://224.0.1.187/x"),
                (2049, b"!"),
            ],
            RejectReason::UnknownCriticalOption,
            code::BAD_OPTION,
        ),
        // An unknown elective but unsafe option is not forwarded blindly: 4.02.
        (
            vec![
                (MT, &mtv),
                (opt::PROXY_URI, b"coap://224.0.1.187/x"),
                (2050, b"!"),
            ],
            RejectReason::UnsafeUnknownOption,
            code::BAD_OPTION,
        ),
        // Both proxy forms: 4.00.
        (
            vec![
                (MT, &mtv),
                (opt::PROXY_URI, b"coap://224.0.1.187/x"),
                (opt::PROXY_SCHEME, b"coap"),
            ],
            RejectReason::BadTarget,
            code::BAD_REQUEST,
        ),
        // Multicast-Timeout of 5 bytes: 4.00.
        (
            vec![
                (MT, &[1, 2, 3, 4, 5]),
                (opt::PROXY_URI, b"coap://224.0.1.187/x"),
            ],
            RejectReason::BadMulticastTimeout,
            code::BAD_REQUEST,
        ),
        // Hop-Limit 1 would reach 0 here (RFC 8768): 5.08.
        (
            vec![
                (MT, &mtv),
                (opt::HOP_LIMIT, &[1]),
                (opt::PROXY_URI, b"coap://224.0.1.187/x"),
            ],
            RejectReason::HopLimit,
            code::HOP_LIMIT_REACHED,
        ),
        // RFC 8768 §3: a Hop-Limit of 0 (empty, or a zero byte) or above 255 is 4.00,
        // not 5.08: the value is wrong, no hop limit was reached.
        (
            vec![
                (MT, &mtv),
                (opt::HOP_LIMIT, &[0]),
                (opt::PROXY_URI, b"coap://224.0.1.187/x"),
            ],
            RejectReason::HopLimit,
            code::BAD_REQUEST,
        ),
        (
            vec![
                (MT, &mtv),
                (opt::HOP_LIMIT, &[]),
                (opt::PROXY_URI, b"coap://224.0.1.187/x"),
            ],
            RejectReason::HopLimit,
            code::BAD_REQUEST,
        ),
        (
            vec![
                (MT, &mtv),
                (opt::HOP_LIMIT, &[1, 0]),
                (opt::PROXY_URI, b"coap://224.0.1.187/x"),
            ],
            RejectReason::HopLimit,
            code::BAD_REQUEST,
        ),
        // No proxy options: for the proxy itself, which has no resources: 4.04.
        (
            vec![(opt::URI_PATH, b"x")],
            RejectReason::NotForProxy,
            code::NOT_FOUND,
        ),
    ];
    for (i, (opts, reason, c)) in cases.into_iter().enumerate() {
        let (tx, ev) = h.feed(
            LISTENER,
            client(),
            &req(NON, i as u16, &[i as u8], &opts, &[]),
        );
        assert_eq!(tx.len(), 1, "case {i}: only the error goes out");
        assert_eq!(tx[0].to, client(), "case {i}");
        assert_eq!(
            MessageView::parse(&tx[0].bytes).unwrap().code(),
            c,
            "case {i}"
        );
        assert_eq!(rejected(&ev), Some((reason, c)), "case {i}");
    }
    // An unknown elective safe option is forwarded.
    let (tx, _) = h.feed(
        LISTENER,
        client(),
        &req(
            NON,
            99,
            &[99],
            &[
                (MT, &mtv),
                (opt::PROXY_URI, b"coap://224.0.1.187/x"),
                (2052, b"s"),
            ],
            &[],
        ),
    );
    assert_eq!(tx[0].link, Link::Group(0, 0));
    assert_eq!(
        MessageView::parse(&tx[0].bytes).unwrap().option(2052),
        Some(&b"s"[..])
    );
}

#[test]
fn s5_2_1_step2_allow_list_gives_4_01() {
    let mut h = harness(config());
    let stranger: SocketAddr = "192.0.2.50:1234".parse().unwrap();
    let (tx, ev) = h.feed(LISTENER, stranger, &group_get(NON, 1, &[1], Some(5)));
    assert_eq!(tx.len(), 1);
    assert_eq!(
        MessageView::parse(&tx[0].bytes).unwrap().code(),
        code::UNAUTHORIZED
    );
    assert_eq!(
        rejected(&ev),
        Some((RejectReason::NotAllowed, code::UNAUTHORIZED))
    );
    // IPv4-mapped IPv6 clients match IPv4 prefixes.
    let mapped: SocketAddr = "[::ffff:127.0.0.1]:1234".parse().unwrap();
    let (tx, _) = h.feed(LISTENER, mapped, &group_get(NON, 2, &[2], Some(5)));
    assert_eq!(tx[0].link, Link::Group(0, 0));
}

#[test]
fn s5_2_1_timeout_capped_and_zero_relays_nothing() {
    let mut h = harness(config());
    let (tx, ev) = h.feed(LISTENER, client(), &group_get(NON, 1, &[1], Some(3600)));
    assert!(
        matches!(ev[0], Event::FanOut { timeout, asked, .. } if timeout == Duration::from_secs(60) && asked == Duration::from_secs(3600))
    );
    let fwd = tx[0].bytes.clone();
    let (_, ev) = h.advance(Duration::from_secs(60));
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::Closed {
            reason: CloseReason::Timeout,
            ..
        }
    )));
    assert_eq!(h.e.exchanges().0, 0);
    let _ = fwd;
    // T' = 0: the request still goes out (step 5) but no response is relayed (step 6).
    let (tx, _) = h.feed(LISTENER, client(), &group_get(NON, 2, &[2], Some(0)));
    assert_eq!(tx[0].link, Link::Group(0, 0));
    assert_eq!(h.e.exchanges().0, 0);
    let (tx2, ev) = h.feed(
        Link::Group(0, 0),
        device(1),
        &response_to(&tx[0].bytes, NON, 5, b"x"),
    );
    assert!(tx2.is_empty());
    // It carries a token the proxy gave out, and its timeout (0) has passed: late
    // (§5.4.1), not unknown.
    assert_eq!(drops(&ev), vec![DropReason::LateResponse]);
    // A token the proxy never gave out is unknown.
    let mut forged = tx[0].bytes.clone();
    forged[4..12].copy_from_slice(&[0xa5; 8]);
    let (_, ev) = h.feed(
        Link::Group(0, 0),
        device(1),
        &response_to(&forged, NON, 6, b"x"),
    );
    assert_eq!(drops(&ev), vec![DropReason::UnknownToken]);
}

#[test]
fn rfc7252_s4_5_duplicate_requests_are_not_fanned_out_twice() {
    let mut h = harness(config());
    let m = group_get(CON, 77, &[5], Some(10));
    let (tx, _) = h.feed(LISTENER, client(), &m);
    // CON: acknowledged at once, then the fan-out.
    let acks: Vec<_> = tx.iter().filter(|t| t.link == LISTENER).collect();
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0].bytes, build::empty(ACK, 77));
    assert_eq!(tx.iter().filter(|t| t.link == Link::Group(0, 0)).count(), 1);
    // The retransmission gets the same ACK and no second multicast.
    let (tx, ev) = h.feed(LISTENER, client(), &m);
    assert_eq!(tx.len(), 1);
    assert_eq!(tx[0].bytes, build::empty(ACK, 77));
    assert_eq!(drops(&ev), vec![DropReason::DuplicateRequest]);
    // Same for NON.
    let n = group_get(NON, 78, &[6], Some(10));
    h.feed(LISTENER, client(), &n);
    let (tx, _) = h.feed(LISTENER, client(), &n);
    assert!(tx.is_empty());
    // After NON_LIFETIME the Message ID may be reused (RFC 7252 §4.8.2).
    h.advance(Duration::from_secs(150));
    let (tx, _) = h.feed(LISTENER, client(), &group_get(NON, 78, &[7], Some(10)));
    assert_eq!(tx[0].link, Link::Group(0, 0));
}

#[test]
fn con_client_gets_con_responses_retransmitted_and_rst_stops_forwarding() {
    let mut h = harness(config());
    let (tx, _) = h.feed(LISTENER, client(), &group_get(CON, 1, &[0xaa], Some(30)));
    let fwd = tx
        .iter()
        .find(|t| t.link == Link::Group(0, 0))
        .unwrap()
        .bytes
        .clone();
    // A device answers with a CON: the proxy ACKs it and relays it as a CON.
    let (tx, _) = h.feed(
        Link::Group(0, 0),
        device(1),
        &response_to(&fwd, CON, 500, b"a"),
    );
    let to_device: Vec<_> = tx.iter().filter(|t| t.to == device(1)).collect();
    assert_eq!(to_device[0].bytes, build::empty(ACK, 500));
    let relayed = tx.iter().find(|t| t.to == client()).unwrap();
    let rv = MessageView::parse(&relayed.bytes).unwrap();
    assert_eq!(rv.mtype(), CON);
    // The device's retransmission of the same CON is ACKed but not relayed again.
    let (tx, ev) = h.feed(
        Link::Group(0, 0),
        device(1),
        &response_to(&fwd, CON, 500, b"a"),
    );
    assert_eq!(tx.len(), 1);
    assert_eq!(drops(&ev), vec![DropReason::DuplicateRequest]);
    // Unacknowledged, the relayed CON is retransmitted after ACK_TIMEOUT..1.5x.
    let (tx, _) = h.advance(Duration::from_secs(3));
    assert_eq!(tx.len(), 1);
    assert_eq!(tx[0].bytes, relayed.bytes);
    // §5.2.3: the client answers with RST: forwarding stops and the token is freed.
    let (_, ev) = h.feed(LISTENER, client(), &build::empty(RST, rv.message_id()));
    assert!(ev.contains(&Event::Closed {
        group: Some(0),
        responses: 1,
        reason: CloseReason::EarlyStopReset
    }));
    let (tx, ev) = h.feed(
        Link::Group(0, 0),
        device(2),
        &response_to(&fwd, NON, 501, b"b"),
    );
    assert!(tx.is_empty());
    assert_eq!(drops(&ev), vec![DropReason::LateResponse]);
    // Nothing is retransmitted any more.
    let (tx, _) = h.advance(Duration::from_secs(60));
    assert!(tx.is_empty());
}

#[test]
fn s5_1_3_early_stop_request_ends_forwarding() {
    let mut h = harness(config());
    let (tx, _) = h.feed(LISTENER, client(), &group_get(NON, 1, &[0xbb], Some(30)));
    let fwd = tx[0].bytes.clone();
    h.feed(
        Link::Group(0, 0),
        device(1),
        &response_to(&fwd, NON, 1, b"a"),
    );
    // GET, same token, Multicast-Timeout 0 (empty), no proxy or Uri-* options.
    let stop = req(NON, 2, &[0xbb], &[(MT, &[])], &[]);
    let (tx, ev) = h.feed(LISTENER, client(), &stop);
    assert!(tx.is_empty(), "not forwarded");
    assert!(ev.contains(&Event::Closed {
        group: Some(0),
        responses: 1,
        reason: CloseReason::EarlyStopRequest
    }));
    let (tx, _) = h.feed(
        Link::Group(0, 0),
        device(2),
        &response_to(&fwd, NON, 2, b"b"),
    );
    assert!(tx.is_empty());
}

#[test]
fn rfc10020_s3_1_5_tokens_are_unique() {
    let mut h = harness(config());
    let mut seen = std::collections::HashSet::new();
    for i in 0..2000u16 {
        let (tx, _) = h.feed(
            LISTENER,
            client(),
            &group_get(NON, i, &i.to_be_bytes(), Some(1)),
        );
        let t = MessageView::parse(&tx[0].bytes).unwrap().token().to_vec();
        assert!(seen.insert(t), "token reused at {i}");
        if i % 100 == 99 {
            h.advance(Duration::from_secs(2));
        }
    }
    // Reusing a token while its exchange runs is refused and stops the old one.
    let (_, _) = h.feed(
        LISTENER,
        client(),
        &group_get(NON, 5000, &[1, 2, 3], Some(30)),
    );
    let (tx, ev) = h.feed(
        LISTENER,
        client(),
        &group_get(NON, 5001, &[1, 2, 3], Some(30)),
    );
    assert_eq!(tx.len(), 1);
    assert_eq!(
        rejected(&ev),
        Some((RejectReason::TokenReuse, code::BAD_REQUEST))
    );
}

#[test]
fn limits_table_full_client_cap_and_rate() {
    let mut cfg = config();
    cfg.limits.max_exchanges = 3;
    cfg.limits.max_exchanges_per_client = 2;
    cfg.limits.client_rate = 1.0;
    cfg.limits.client_burst = 4.0;
    cfg.groups[0].allow.push("0.0.0.0/0".parse().unwrap());
    let mut h = harness(cfg);
    let other: SocketAddr = "127.0.0.2:1".parse().unwrap();
    let third: SocketAddr = "127.0.0.3:1".parse().unwrap();
    h.feed(LISTENER, client(), &group_get(NON, 1, &[1], Some(10)));
    h.feed(LISTENER, client(), &group_get(NON, 2, &[2], Some(10)));
    // Per-client cap: 4.29 with Max-Age.
    let (tx, ev) = h.feed(LISTENER, client(), &group_get(NON, 3, &[3], Some(10)));
    assert_eq!(
        rejected(&ev),
        Some((RejectReason::ClientBusy, code::TOO_MANY_REQUESTS))
    );
    assert!(
        MessageView::parse(&tx[0].bytes)
            .unwrap()
            .option(opt::MAX_AGE)
            .is_some()
    );
    h.feed(LISTENER, other, &group_get(NON, 1, &[1], Some(10)));
    // Table full: 5.03 with Max-Age until the next deadline.
    let (tx, ev) = h.feed(LISTENER, third, &group_get(NON, 1, &[1], Some(10)));
    assert_eq!(
        rejected(&ev),
        Some((RejectReason::TableFull, code::SERVICE_UNAVAILABLE))
    );
    let v = MessageView::parse(&tx[0].bytes).unwrap();
    assert_eq!(opt::read_uint(v.option(opt::MAX_AGE).unwrap()), Some(10));
}

#[test]
fn limits_fan_out_rate_per_client() {
    let mut cfg = config();
    cfg.limits.client_rate = 1.0;
    cfg.limits.client_burst = 3.0;
    let mut h = harness(cfg);
    let mut outcome = vec![];
    for i in 0..5u8 {
        let (tx, ev) = h.feed(LISTENER, client(), &group_get(NON, i as u16, &[i], Some(1)));
        outcome.push(rejected(&ev).map(|(r, _)| r));
        if rejected(&ev).is_some() {
            let v = MessageView::parse(&tx[0].bytes).unwrap();
            assert_eq!(v.code(), code::TOO_MANY_REQUESTS);
            assert_eq!(opt::read_uint(v.option(opt::MAX_AGE).unwrap()), Some(1));
        }
    }
    // A burst of 3, then 4.29 (RFC 8516) until the bucket refills at 1 per second.
    assert_eq!(
        outcome,
        vec![
            None,
            None,
            None,
            Some(RejectReason::RateLimited),
            Some(RejectReason::RateLimited)
        ]
    );
    h.advance(Duration::from_secs(1));
    let (tx, ev) = h.feed(LISTENER, client(), &group_get(NON, 10, &[10], Some(1)));
    assert_eq!(rejected(&ev), None);
    assert_eq!(tx[0].link, Link::Group(0, 0));
}

/// Every request that causes a multicast passes the limits, whatever its timeout
/// (groupcomm-proxy §10, RFC 10020 §3.6): a Multicast-Timeout of 0 relays nothing but
/// still makes every device answer.
#[test]
fn limits_apply_to_multicast_timeout_zero() {
    let mut cfg = config();
    cfg.limits.client_rate = 1.0;
    cfg.limits.client_burst = 2.0;
    let mut h = harness(cfg);
    let (mut fanouts, mut limited) = (0, 0);
    for i in 0..20u16 {
        let (tx, ev) = h.feed(LISTENER, client(), &group_get(NON, i, &[i as u8], Some(0)));
        fanouts += tx.iter().filter(|t| t.link == Link::Group(0, 0)).count();
        if let Some((RejectReason::RateLimited, c)) = rejected(&ev) {
            assert_eq!(c, code::TOO_MANY_REQUESTS);
            limited += 1;
        }
    }
    assert_eq!((fanouts, limited), (2, 18));
    // The bucket refills at the configured rate, for T' = 0 as for any other.
    h.advance(Duration::from_secs(1));
    let (tx, ev) = h.feed(LISTENER, client(), &group_get(NON, 100, &[100], Some(0)));
    assert_eq!(rejected(&ev), None);
    assert_eq!(tx.len(), 1);
    let (tx, ev) = h.feed(LISTENER, client(), &group_get(NON, 101, &[101], Some(0)));
    assert_eq!(rejected(&ev).map(|r| r.0), Some(RejectReason::RateLimited));
    assert!(tx.iter().all(|t| t.link == LISTENER));
}

#[test]
fn rfc7252_s5_7_2_unicast_forwarding_and_gateway_timeout() {
    let mut h = harness(config());
    let origin: SocketAddr = "127.0.0.9:5683".parse().unwrap();
    let m = req(
        CON,
        1,
        &[7],
        &[(opt::PROXY_URI, b"coap://127.0.0.9/hello")],
        &[],
    );
    let (tx, ev) = h.feed(LISTENER, client(), &m);
    assert!(ev.contains(&Event::UnicastForward));
    let fwd = tx.iter().find(|t| t.link == Link::Unicast(0)).unwrap();
    assert_eq!(fwd.to, origin);
    let fv = MessageView::parse(&fwd.bytes).unwrap();
    assert_eq!(fv.mtype(), CON, "a CON client's request goes on as CON");
    // Piggybacked answer: relayed without Reply-From, exchange closed.
    let ans = build::encode(
        ACK,
        code::CONTENT,
        fv.message_id(),
        fv.token(),
        &mut [],
        b"hi",
    );
    let (tx, ev) = h.feed(Link::Unicast(0), origin, &ans);
    let rv = MessageView::parse(&tx[0].bytes).unwrap();
    assert_eq!(
        (rv.token(), rv.payload(), rv.option(RF)),
        (&[7u8][..], &b"hi"[..], None)
    );
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::Closed {
            reason: CloseReason::UnicastAnswered,
            ..
        }
    )));
    // The relayed answer is a separate CON response (the request was ACKed at once).
    assert_eq!(rv.mtype(), CON);
    h.feed(LISTENER, client(), &build::empty(ACK, rv.message_id()));
    // No answer at all: 5.04 at the timeout.
    let (tx, _) = h.feed(
        LISTENER,
        client(),
        &req(
            NON,
            2,
            &[8],
            &[(opt::PROXY_URI, b"coap://127.0.0.9/x")],
            &[],
        ),
    );
    assert_eq!(MessageView::parse(&tx[0].bytes).unwrap().mtype(), NON);
    let (tx, ev) = h.advance(Duration::from_secs(10));
    let to_client = tx.iter().find(|t| t.to == client()).unwrap();
    let v = MessageView::parse(&to_client.bytes).unwrap();
    assert_eq!((v.code(), v.token()), (code::GATEWAY_TIMEOUT, &[8u8][..]));
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::Closed {
            reason: CloseReason::UnicastTimeout,
            ..
        }
    )));
}

#[test]
fn malformed_and_oversized_datagrams_are_counted_drops() {
    let mut h = harness(config());
    let (tx, ev) = h.feed(LISTENER, client(), &[0x40, 0x01, 0x00, 0x01, 0xff]);
    // A CON with a format error is rejected with RST (RFC 7252 §4.2).
    assert_eq!(tx[0].bytes, build::empty(RST, 1));
    assert_eq!(drops(&ev), vec![DropReason::Malformed]);
    let (tx, ev) = h.feed(LISTENER, client(), &vec![0x50; 2000]);
    assert!(tx.is_empty());
    assert_eq!(drops(&ev), vec![DropReason::TooLarge]);
    // A CON ping gets an RST (RFC 7252 §4.3).
    let (tx, _) = h.feed(LISTENER, client(), &build::empty(CON, 9));
    assert_eq!(tx[0].bytes, build::empty(RST, 9));
}

/// Bounded tables: the timers of exchanges that ended early (every unicast answer) do
/// not pile up for the full timeout; the heap stays within a multiple of what is live.
#[test]
fn timer_heap_stays_bounded_by_live_exchanges() {
    let mut h = harness(config());
    let origin: SocketAddr = "127.0.0.9:5683".parse().unwrap();
    for i in 0..20_000u32 {
        let token = i.to_be_bytes();
        let m = req(
            NON,
            i as u16,
            &token,
            &[(opt::PROXY_URI, b"coap://127.0.0.9/x")],
            &[],
        );
        let (tx, _) = h.feed(LISTENER, client(), &m);
        let fwd = MessageView::parse(&tx[0].bytes).unwrap();
        let answer = build::encode(NON, code::CONTENT, i as u16, fwd.token(), &mut [], b"");
        h.feed(Link::Unicast(0), origin, &answer);
        if i % 1000 == 0 {
            // Message IDs are reused after NON_LIFETIME only; keep them fresh.
            h.advance(Duration::from_secs(150));
        }
    }
    assert_eq!(h.e.exchanges().0, 0);
    assert!(
        h.e.timers() < 2_000,
        "{} timers for no live exchange",
        h.e.timers()
    );
}
