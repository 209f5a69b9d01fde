//! The engine against an adversary and at any rate, on a virtual clock: Message IDs per
//! destination (RFC 7252 §4.4), stops that must match what they end (groupcomm-proxy
//! §5.2.3), targets that name the proxy itself, and errors that stay under the client's
//! OSCORE layer (oscore-capable-proxies §2.5).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::Group;
use common::engine::{Clocked, checking_config, client, device, drops, origin, rejected};
use groxy::coap::MessageView;
use groxy::coap::build::{self, ACK, CON, NON, RST, code};
use groxy::coap::options as opt;
use groxy::oscore::{Layer, Mode, SecurityContext};
use groxy::proxy::{
    CloseReason, DropReason, Event, GroupSecurity, Link, Policy, ProxyConfig, RejectReason,
    Transmit,
};

const MT: u16 = opt::MULTICAST_TIMEOUT_DEFAULT;
const LISTENER: Link = Link::Listener(0);

/// The engine on its clock, seeded 11.
fn engine(cfg: ProxyConfig) -> Clocked {
    Clocked::new(cfg, 11)
}

type H = Clocked;

fn unicast_get(t: u8, mid: u16, token: &[u8], uri: &str) -> Vec<u8> {
    build::encode(
        t,
        code::GET,
        mid,
        token,
        &mut [(opt::PROXY_URI, uri.as_bytes())],
        &[],
    )
}

fn group_get(t: u8, mid: u16, token: &[u8], timeout: u32) -> Vec<u8> {
    let mtv = opt::uint_value(timeout);
    build::encode(
        t,
        code::GET,
        mid,
        token,
        &mut [
            (opt::URI_HOST, b"224.0.1.187"),
            (opt::PROXY_SCHEME, b"coap"),
            (opt::URI_PATH, b"temp"),
            (MT, &mtv),
        ],
        &[],
    )
}

fn answer(forwarded: &[u8], t: u8, mid: u16) -> Vec<u8> {
    let v = MessageView::parse(forwarded).unwrap();
    build::encode(t, code::CONTENT, mid, v.token(), &mut [], b"ok")
}

fn closed(ev: &[Event]) -> Option<CloseReason> {
    ev.iter().find_map(|e| match e {
        Event::Closed { reason, .. } => Some(*reason),
        _ => None,
    })
}

/// Every (link, destination, Message ID) sent, with when: a reuse within `lifetime`
/// toward one destination is a violation of RFC 7252 §4.4.
#[derive(Default)]
struct MidLog {
    last: HashMap<(Link, SocketAddr, u16), Instant>,
    reused: usize,
    sent: usize,
}

impl MidLog {
    fn record(&mut self, now: Instant, tx: &[Transmit], lifetime: Duration) {
        for t in tx {
            let v = MessageView::parse(&t.bytes).unwrap();
            // ACKs and RSTs echo the peer's Message ID; only the proxy's own count.
            if v.mtype() == ACK || v.mtype() == RST {
                continue;
            }
            self.sent += 1;
            let key = (t.link, t.to, v.message_id());
            if let Some(prev) = self.last.insert(key, now)
                && now.duration_since(prev) < lifetime
            {
                self.reused += 1;
            }
        }
    }
}

/// RFC 7252 §4.4: 200,000 requests forwarded to one origin in 200 s of virtual time
/// (far more than the 65,536 Message IDs one source port has per NON_LIFETIME): the
/// proxy spreads them over its egress ports and reuses no Message ID toward the origin
/// or toward any client within the lifetime.
#[test]
fn rfc7252_s4_4_no_message_id_reused_over_200k_forwarded_requests() {
    let mut cfg = ProxyConfig::default();
    cfg.limits.egress_ports = 4;
    let mut h = engine(cfg);
    let clients: Vec<SocketAddr> = (0..8)
        .map(|i| format!("127.0.1.{}:40000", i + 1).parse().unwrap())
        .collect();
    let mut log = MidLog::default();
    let lifetime = Duration::from_secs(145);
    let mut ports = std::collections::HashSet::new();
    let (mut relayed, mut refused) = (0, 0);
    for i in 0..200_000u32 {
        h.now += Duration::from_millis(1);
        let c = clients[i as usize % clients.len()];
        // Each client's own Message IDs stay unique within its lifetime (25,000 each).
        let mid = (i / clients.len() as u32) as u16;
        let (tx, ev) = h.feed(
            LISTENER,
            c,
            &unicast_get(NON, mid, &i.to_be_bytes(), "coap://127.0.0.9/x"),
        );
        refused += usize::from(rejected(&ev).is_some());
        log.record(h.now, &tx, lifetime);
        let fwd = tx.iter().find(|t| t.to == origin()).expect("forwarded");
        ports.insert(fwd.link);
        let resp = answer(&fwd.bytes, NON, i as u16);
        let (tx, _) = h.feed(fwd.link, origin(), &resp);
        relayed += tx.iter().filter(|t| t.to == c).count();
        log.record(h.now, &tx, lifetime);
        if i % 1000 == 0 {
            h.advance(Duration::ZERO);
        }
    }
    assert_eq!((refused, relayed), (0, 200_000));
    assert_eq!(log.sent, 400_000);
    assert_eq!(log.reused, 0, "Message IDs reused within NON_LIFETIME");
    assert!(ports.len() >= 2, "more than one egress port was needed");
}

/// Beyond what the egress ports allow the proxy pushes back with 5.03 and Max-Age until
/// a Message ID is free again, rather than reuse one (RFC 7252 §4.4).
#[test]
fn rfc7252_s4_4_exhausted_message_ids_push_back() {
    let mut cfg = ProxyConfig::default();
    cfg.limits.egress_ports = 1;
    cfg.limits.client_rate = 1e9;
    cfg.limits.client_burst = 1e9;
    let mut h = engine(cfg);
    let clients: Vec<SocketAddr> = (0..2)
        .map(|i| format!("127.0.1.{}:40000", i + 1).parse().unwrap())
        .collect();
    for i in 0..65_536u32 {
        let c = clients[i as usize % 2];
        let (tx, ev) = h.feed(
            LISTENER,
            c,
            &unicast_get(NON, (i / 2) as u16, &i.to_be_bytes(), "coap://127.0.0.9/x"),
        );
        assert_eq!(rejected(&ev), None);
        let fwd = tx.iter().find(|t| t.to == origin()).unwrap();
        h.feed(fwd.link, origin(), &answer(&fwd.bytes, NON, i as u16));
    }
    h.now += Duration::from_secs(100);
    let (tx, ev) = h.feed(
        LISTENER,
        clients[0],
        &unicast_get(CON, 60_000, b"late", "coap://127.0.0.9/x"),
    );
    assert_eq!(
        rejected(&ev),
        Some((RejectReason::MessageIdsExhausted, code::SERVICE_UNAVAILABLE))
    );
    assert!(tx.iter().all(|t| t.to != origin()));
    let v = MessageView::parse(&tx[0].bytes).unwrap();
    assert_eq!(opt::read_uint(v.option(opt::MAX_AGE).unwrap()), Some(45));
    // Once the first Message IDs have expired, forwarding goes on.
    h.now += Duration::from_secs(46);
    let (tx, ev) = h.feed(
        LISTENER,
        clients[0],
        &unicast_get(CON, 60_001, b"later", "coap://127.0.0.9/x"),
    );
    assert_eq!(rejected(&ev), None);
    assert!(tx.iter().any(|t| t.to == origin()));
}

/// §5.2.3: an RST ends forwarding only when it names the Message ID of a response the
/// proxy sent to that client; one with another Message ID, or one that claims to come
/// from the origin on the client side, changes nothing and is counted.
#[test]
fn s5_2_3_rst_must_name_a_response_sent_to_that_client() {
    let mut h = engine(ProxyConfig::default());
    let (tx, _) = h.feed(LISTENER, client(), &group_get(NON, 1, b"tk", 30));
    let fwd = tx[0].clone();
    let (tx, _) = h.feed(fwd.link, device(1), &answer(&fwd.bytes, NON, 7));
    let relayed = MessageView::parse(&tx[0].bytes).unwrap().message_id();
    let (_, ev) = h.feed(
        LISTENER,
        client(),
        &build::empty(RST, relayed.wrapping_add(1)),
    );
    assert_eq!(drops(&ev), vec![DropReason::UnmatchedStop]);
    // Another address with the right Message ID: not that client.
    let other: SocketAddr = "127.0.0.2:40000".parse().unwrap();
    let (_, ev) = h.feed(LISTENER, other, &build::empty(RST, relayed));
    assert_eq!(drops(&ev), vec![DropReason::UnmatchedStop]);
    let (tx, _) = h.feed(fwd.link, device(2), &answer(&fwd.bytes, NON, 8));
    assert_eq!(tx.len(), 1, "the exchange goes on");
    let (_, ev) = h.feed(LISTENER, client(), &build::empty(RST, relayed));
    assert_eq!(closed(&ev), Some(CloseReason::EarlyStopReset));

    // The CON sent to a unicast origin awaits the origin's ACK on the unicast link; an
    // RST with its Message ID arriving on the listener does not cancel it.
    let (tx, _) = h.feed(
        LISTENER,
        client(),
        &unicast_get(CON, 2, b"u", "coap://127.0.0.9/x"),
    );
    let fwd = tx.iter().find(|t| t.to == origin()).unwrap().clone();
    let origin_mid = MessageView::parse(&fwd.bytes).unwrap().message_id();
    let (_, ev) = h.feed(LISTENER, origin(), &build::empty(RST, origin_mid));
    assert_eq!(drops(&ev), vec![DropReason::UnmatchedStop]);
    let (tx, _) = h.advance(Duration::from_secs(4));
    assert!(
        tx.iter().any(|t| t.to == origin() && t.bytes == fwd.bytes),
        "still retransmitted to the origin"
    );
}

const CLIENT_ID: &[u8] = &[0x01];
const PROXY_ID: &[u8] = &[0x50];
const DEV_A: &[u8] = &[0x0a];

/// §5.2.3: an Early Stop Request must carry the protection of the request it stops. A
/// signature-checked group request is not ended by an unprotected stop from the same
/// address and token (anyone who can send from that address could send it).
#[test]
fn s5_2_3_early_stop_needs_the_protection_of_the_request() {
    let g = Group::new(&[CLIENT_ID, DEV_A]);
    let mut h = engine(checking_config(&g, Policy::Enforce));
    let mut ctx = SecurityContext::new(&g.config(CLIENT_ID)).unwrap();
    let (protected, _) = ctx
        .protect_request(
            &build::encode(NON, code::GET, 1, b"", &mut [(opt::URI_PATH, b"x")], &[]),
            Mode::Group,
            None,
        )
        .unwrap();
    let v = MessageView::parse(&protected).unwrap();
    let mut opts: Vec<(u16, &[u8])> = v.options().collect();
    let ten = opt::uint_value(10);
    opts.extend([
        (opt::URI_HOST, &b"224.0.1.187"[..]),
        (opt::PROXY_SCHEME, b"coap"),
        (MT, &ten),
    ]);
    let req = build::encode(NON, v.code(), 5, b"tok", &mut opts, v.payload());
    let (tx, _) = h.feed(LISTENER, client(), &req);
    let fwd = tx
        .iter()
        .find(|t| matches!(t.link, Link::Group(..)))
        .unwrap()
        .clone();
    let stop = build::encode(NON, code::GET, 6, b"tok", &mut [(MT, &[])], &[]);
    let (_, ev) = h.feed(LISTENER, client(), &stop);
    assert_eq!(
        rejected(&ev),
        Some((RejectReason::NotAllowed, code::UNAUTHORIZED))
    );
    assert!(drops(&ev).contains(&DropReason::UnmatchedStop));
    assert_eq!(closed(&ev), None);
    // A device's (pairwise, unverifiable) response is still relayed: the exchange lives.
    let mut dev = SecurityContext::new(&g.config(DEV_A)).unwrap();
    let (_, mut ex) = dev.unprotect_request(&fwd.bytes).unwrap();
    let resp = build::encode(NON, code::CONTENT, 9, &[], &mut [], b"21");
    let protected = dev
        .protect_response(&resp, &mut ex, Mode::Pairwise, false)
        .unwrap();
    let pv = MessageView::parse(&protected).unwrap();
    let resp = build::encode(
        NON,
        pv.code(),
        9,
        MessageView::parse(&fwd.bytes).unwrap().token(),
        &mut pv.options().collect::<Vec<_>>(),
        pv.payload(),
    );
    let (tx, _) = h.feed(fwd.link, device(1), &resp);
    assert!(tx.iter().any(|t| t.to == client()));

    // Without any protection on the request, an unprotected stop ends it (§5.1.3).
    let (_, _) = h.feed(LISTENER, client(), &group_get(NON, 7, b"plain", 10));
    let (_, ev) = h.feed(LISTENER, client(), &{
        build::encode(NON, code::GET, 8, b"plain", &mut [(MT, &[])], &[])
    });
    // The plain request was dropped by the enforcing filter: nothing to stop.
    assert_eq!(closed(&ev), None);
}

/// A target that names the proxy itself is served locally (its own resources, or 4.04
/// without its OSCORE layer) and never forwarded to itself.
#[test]
fn a_target_naming_the_proxy_is_not_forwarded_to_itself() {
    let mut cfg = ProxyConfig::default();
    cfg.local.listen = vec![
        "127.0.0.1:5683".parse().unwrap(),
        "0.0.0.0:5700".parse().unwrap(),
    ];
    cfg.local.host_addrs = vec!["192.0.2.7".parse().unwrap()];
    cfg.local.names = vec!["proxy.example".into()];
    let mut h = engine(cfg);
    for (i, uri) in [
        "coap://127.0.0.1/status",
        "coap://127.0.0.1:5683/status",
        "coap://127.0.0.3:5700/status",
        "coap://192.0.2.7:5700/status",
        "coap://proxy.example/status",
    ]
    .iter()
    .enumerate()
    {
        let (tx, ev) = h.feed(
            LISTENER,
            client(),
            &unicast_get(CON, i as u16, &[i as u8], uri),
        );
        assert_eq!(
            rejected(&ev),
            Some((RejectReason::NotForProxy, code::NOT_FOUND)),
            "{uri}"
        );
        assert!(tx.iter().all(|t| t.link == LISTENER), "{uri}");
    }
    // Another port, or another host, is forwarded as before.
    for (i, uri) in ["coap://127.0.0.1:5684/x", "coap://192.0.2.8:5700/x"]
        .iter()
        .enumerate()
    {
        let (tx, ev) = h.feed(
            LISTENER,
            client(),
            &unicast_get(CON, 100 + i as u16, &[100 + i as u8], uri),
        );
        assert_eq!(rejected(&ev), None, "{uri}");
        assert!(
            tx.iter().any(|t| matches!(t.link, Link::Unicast(_))),
            "{uri}"
        );
    }
}

/// A proxy that is a member of group 0 (policy off), and the context of member
/// CLIENT_ID of that group.
fn member_proxy() -> (H, SecurityContext) {
    let g = Group::new(&[CLIENT_ID, PROXY_ID]);
    let mut cfg = ProxyConfig::default();
    cfg.groups[0].security = Some(GroupSecurity {
        policy: Policy::Off,
        checker: g.checker_config(),
        member: Some(g.config(PROXY_ID)),
        allow_kids: None,
    });
    (
        engine(cfg),
        SecurityContext::new(&g.config(CLIENT_ID)).unwrap(),
    )
}

/// A proxy that is a member of group 0, and a request of `t` from member CLIENT_ID
/// through the proxy's layer to the origin: the harness, the client's context and
/// exchange, and what the proxy sent.
fn layered_unicast(t: u8) -> (H, SecurityContext, groxy::oscore::Exchange, Vec<Transmit>) {
    let (mut h, mut ctx) = member_proxy();
    let inner = build::encode(
        t,
        code::GET,
        3,
        b"lay",
        &mut [(opt::URI_HOST, b"127.0.0.9"), (opt::PROXY_SCHEME, b"coap")],
        &[],
    );
    let (wrapped, ex) = ctx
        .protect_request_layer(&inner, Mode::Pairwise, Some(PROXY_ID), Layer::Hop)
        .unwrap();
    let (tx, _) = h.feed(LISTENER, client(), &wrapped);
    (h, ctx, ex, tx)
}

/// oscore-capable-proxies §2.5: every response to a request that came through the
/// proxy's layer goes back under it, the 5.04 of an origin that never answered too.
#[test]
fn s2_5_gateway_timeout_goes_back_under_the_clients_layer() {
    let (mut h, mut ctx, mut ex, tx) = layered_unicast(CON);
    assert!(
        tx.iter().any(|t| t.to == origin()),
        "forwarded to the origin"
    );
    let (tx, _) = h.advance(Duration::from_secs(11));
    let to_client: Vec<_> = tx.iter().filter(|t| t.to == client()).collect();
    assert_eq!(to_client.len(), 1);
    let (plain, _) = ctx
        .unprotect_response(&to_client[0].bytes, &mut ex)
        .expect("the 5.04 is protected under the layer");
    assert_eq!(
        MessageView::parse(&plain).unwrap().code(),
        code::GATEWAY_TIMEOUT
    );
}

/// oscore-capable-proxies §2.2: a response the proxy must protect may carry only options
/// it recognises; one with an unknown option reaches the client as 5.02 (Bad Gateway),
/// under the layer.
#[test]
fn s2_2_unknown_option_in_a_response_to_protect_gives_5_02() {
    let (mut h, mut ctx, mut ex, tx) = layered_unicast(NON);
    let fwd = tx.iter().find(|t| t.to == origin()).unwrap().clone();
    let v = MessageView::parse(&fwd.bytes).unwrap();
    let odd = build::encode(NON, code::CONTENT, 1, v.token(), &mut [(65000, b"?")], b"x");
    let (tx, _) = h.feed(fwd.link, origin(), &odd);
    let to_client: Vec<_> = tx.iter().filter(|t| t.to == client()).collect();
    assert_eq!(to_client.len(), 1);
    let (plain, _) = ctx
        .unprotect_response(&to_client[0].bytes, &mut ex)
        .unwrap();
    let p = MessageView::parse(&plain).unwrap();
    assert_eq!(p.code(), code::BAD_GATEWAY);
    assert!(p.option(65000).is_none());
}

/// Issue 17, RFC 7252 §4.5: a flood from other addresses, allowed or not, cannot make a
/// retransmitted CON request of a client be processed twice within EXCHANGE_LIFETIME.
/// Refusals are not recorded (a retransmission is refused again, the same), each sender
/// holds at most its share, and a full table refuses newcomers with 5.03 instead of
/// forgetting anyone's entries.
#[test]
fn rfc7252_s4_5_a_flood_cannot_make_a_con_request_run_twice() {
    let mut cfg = ProxyConfig::default();
    cfg.limits.client_rate = 1e9;
    cfg.limits.client_burst = 1e9;
    cfg.limits.dedup_capacity = 65_536;
    cfg.limits.dedup_per_client = 4_096;
    let mut h = engine(cfg);
    let post = build::encode(
        CON,
        code::POST,
        77,
        b"act",
        &mut [(opt::PROXY_URI, b"coap://127.0.0.9/actuate")],
        b"on",
    );
    let (tx, _) = h.feed(LISTENER, client(), &post);
    let first = tx.iter().filter(|t| t.to == origin()).count();
    assert_eq!(first, 1);
    let ack = tx.iter().find(|t| t.to == client()).unwrap().bytes.clone();
    // 65,536 cheap refused requests (4.04: no proxy target) from another address...
    let stranger: SocketAddr = "127.0.0.2:1".parse().unwrap();
    for i in 0..65_536u32 {
        let from = SocketAddr::new(stranger.ip(), 1 + (i % 60_000) as u16);
        let m = build::encode(NON, code::GET, i as u16, &[1], &mut [], &[]);
        h.feed(LISTENER, from, &m);
    }
    // ...and 100,000 forwarded ones from 64 allowed addresses, more than the table holds
    // (a forwarded request is recorded).
    let mut refused_full = 0;
    for i in 0..100_000u32 {
        let from: SocketAddr = format!("127.0.2.{}:7", i % 64).parse().unwrap();
        // Multicast-Timeout 0: forwarded, no exchange kept, so only the table bounds it.
        let m = group_get(NON, (i / 64) as u16, &i.to_be_bytes(), 0);
        let (_, ev) = h.feed(LISTENER, from, &m);
        if rejected(&ev).map(|r| r.0) == Some(RejectReason::DedupFull) {
            refused_full += 1;
        }
    }
    assert!(
        refused_full > 0,
        "the table filled and newcomers were refused"
    );
    // The client's retransmission, 60 s later: the same ACK, nothing forwarded again.
    h.now += Duration::from_secs(60);
    let (tx, ev) = h.feed(LISTENER, client(), &post);
    assert_eq!(drops(&ev), vec![DropReason::DuplicateRequest]);
    assert!(tx.iter().all(|t| t.to != origin()), "processed twice");
    assert_eq!(tx.iter().find(|t| t.to == client()).unwrap().bytes, ack);
}

/// Issue 17: at a full exchange table the refusal's Max-Age comes from the earliest live
/// deadline without a scan, and exchanges that ended early do not count.
#[test]
fn table_full_refusal_max_age_is_the_earliest_live_deadline() {
    let mut cfg = ProxyConfig::default();
    cfg.limits.max_exchanges = 3;
    let mut h = engine(cfg);
    let (tx, _) = h.feed(LISTENER, client(), &group_get(NON, 1, b"a", 5));
    let first = tx[0].clone();
    h.now += Duration::from_secs(1);
    h.feed(LISTENER, client(), &group_get(NON, 2, b"b", 20));
    h.feed(LISTENER, client(), &group_get(NON, 3, b"c", 30));
    // The earliest one ends early (an Early Stop Request): the next is 20 s after 1 s.
    let stop = build::encode(NON, code::GET, 4, b"a", &mut [(MT, &[])], &[]);
    let (_, ev) = h.feed(LISTENER, client(), &stop);
    assert_eq!(closed(&ev), Some(CloseReason::EarlyStopRequest));
    drop(first);
    h.feed(LISTENER, client(), &group_get(NON, 5, b"d", 40));
    let (tx, ev) = h.feed(LISTENER, client(), &group_get(NON, 6, b"e", 40));
    assert_eq!(
        rejected(&ev),
        Some((RejectReason::TableFull, code::SERVICE_UNAVAILABLE))
    );
    let v = MessageView::parse(&tx[0].bytes).unwrap();
    assert_eq!(opt::read_uint(v.option(opt::MAX_AGE).unwrap()), Some(20));
}

/// RFC 10021 §9 with RFC 9175 §2: after lost state the proxy challenges with an Echo
/// value drawn from its CSPRNG, a new one per challenge; only the value it sent restores
/// freshness (a wrong value of the same length is challenged again).
#[test]
fn rfc9175_s2_echo_values_are_fresh_and_only_the_sent_one_passes() {
    let (mut h, mut ctx) = member_proxy();
    h.e.restore_member(0, 0, 4096, true);
    let mut mid = 10u16;
    // A request for the proxy's own /status through its layer, with an Echo value or
    // not; returns the code and the Echo option of the answer.
    let mut ask = |h: &mut H, echo: Option<&[u8]>| -> (u8, Option<Vec<u8>>) {
        mid += 1;
        let mut opts: Vec<(u16, &[u8])> = vec![(opt::URI_PATH, b"status")];
        if let Some(e) = echo {
            opts.push((opt::ECHO, e));
        }
        let inner = build::encode(CON, code::GET, mid, &mid.to_be_bytes(), &mut opts, &[]);
        let (wrapped, mut ex) = ctx
            .protect_request_layer(&inner, Mode::Pairwise, Some(PROXY_ID), Layer::Hop)
            .unwrap();
        let (tx, _) = h.feed(LISTENER, client(), &wrapped);
        let (plain, _) = ctx.unprotect_response(&tx[0].bytes, &mut ex).unwrap();
        let v = MessageView::parse(&plain).unwrap();
        (v.code(), v.option(opt::ECHO).map(<[u8]>::to_vec))
    };
    let (c1, e1) = ask(&mut h, None);
    let (c2, e2) = ask(&mut h, None);
    assert_eq!((c1, c2), (code::UNAUTHORIZED, code::UNAUTHORIZED));
    let (e1, e2) = (e1.unwrap(), e2.unwrap());
    assert_eq!(e1.len(), 8);
    assert_ne!(e1, e2, "each challenge has a value of its own");
    // The superseded value, and a guess of the right length, are challenged again.
    assert_eq!(ask(&mut h, Some(&e1)).0, code::UNAUTHORIZED);
    let (_, e3) = ask(&mut h, Some(&[0; 8]));
    let e3 = e3.unwrap();
    let (c, _) = ask(&mut h, Some(&e3));
    assert_eq!(c, code::CONTENT);
    // Freshness holds from then on, without Echo.
    assert_eq!(ask(&mut h, None).0, code::CONTENT);
}

/// The proxy's bound addresses are the runtime's, filled in at bind: a SIGHUP config
/// (built from the file, which holds no bound sockets) must not make the engine forget
/// them, or a target naming the proxy would then be forwarded to itself (§5.2.1).
#[test]
fn after_a_reload_a_target_naming_the_proxy_is_still_not_forwarded() {
    let mut cfg = ProxyConfig::default();
    let reload = cfg.clone();
    cfg.local.listen = vec!["0.0.0.0:5700".parse().unwrap()];
    cfg.local.host_addrs = vec!["192.0.2.7".parse().unwrap()];
    let mut h = engine(cfg);
    let now = h.now;
    h.e.reconfigure(now, reload).unwrap();
    let (tx, ev) = h.feed(
        LISTENER,
        client(),
        &unicast_get(CON, 1, &[1], "coap://192.0.2.7:5700/status"),
    );
    assert_eq!(
        rejected(&ev),
        Some((RejectReason::NotForProxy, code::NOT_FOUND))
    );
    assert!(tx.iter().all(|t| t.link == LISTENER));
}
