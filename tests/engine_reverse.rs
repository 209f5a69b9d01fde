//! Reverse-proxy mode (issue 16 point 2) on a virtual clock: resources of the proxy that
//! stand for a group (groupcomm-proxy-07 §6, RFC 10020 §3.5.2, RFC 7252 §5.7.3), the 4.00
//! with an empty Multicast-Timeout (§6.1), both Reply-From forms (§6.1), follow-up
//! requests (§6.2) and the bound of the servers a follow-up may name.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use groxy::coap::MessageView;
use groxy::coap::build::{self, ACK, CON, NON, code};
use groxy::coap::cri;
use groxy::coap::options as opt;
use groxy::proxy::{
    Engine, Event, Link, ProxyConfig, RejectReason, ReverseAction, ReverseSpec, StandIn, Transmit,
};

const MT: u16 = opt::MULTICAST_TIMEOUT_DEFAULT;
const RF: u16 = opt::REPLY_FROM_DEFAULT;
const OBSERVE: u16 = 6;
const LISTENER: Link = Link::Listener(0);

fn client() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}
fn stranger() -> SocketAddr {
    "192.0.2.99:40000".parse().unwrap()
}
fn device(i: u8) -> SocketAddr {
    format!("127.0.0.{}:5683", 10 + i).parse().unwrap()
}
fn group_addr() -> SocketAddr {
    "224.0.1.187:5683".parse().unwrap()
}
fn advertise() -> SocketAddr {
    "127.0.0.1:5683".parse().unwrap()
}

/// The default group behind `lights`; unicast forwarding off (a reverse proxy that is
/// the only way to the servers), unless `unicast`.
fn config(stand_in: StandIn, unicast: bool) -> ProxyConfig {
    let mut c = ProxyConfig::default();
    c.unicast.enabled = unicast;
    c.reverse.push(ReverseSpec {
        host: None,
        path: vec!["lights".into()],
        group: 0,
        stand_in,
    });
    c
}

fn servers(max_servers: usize, lifetime: u64) -> StandIn {
    StandIn::Servers {
        advertise: advertise(),
        pool: vec![],
        max_servers,
        server_lifetime: Duration::from_secs(lifetime),
    }
}

struct H {
    e: Engine,
    now: Instant,
    mid: u16,
}

impl H {
    fn new(cfg: ProxyConfig) -> Self {
        let now = Instant::now();
        H {
            e: Engine::new(cfg, now, 7).unwrap(),
            now,
            mid: 1,
        }
    }
    fn feed(&mut self, link: Link, from: SocketAddr, msg: &[u8]) -> (Vec<Transmit>, Vec<Event>) {
        self.e.handle(self.now, link, from, msg);
        common::outputs(&mut self.e)
    }
    /// A request of `client()` with these options (no proxy options unless given).
    fn ask(&mut self, t: u8, token: &[u8], opts: &[(u16, &[u8])]) -> (Vec<Transmit>, Vec<Event>) {
        self.ask_from(client(), t, token, opts)
    }
    fn ask_from(
        &mut self,
        from: SocketAddr,
        t: u8,
        token: &[u8],
        opts: &[(u16, &[u8])],
    ) -> (Vec<Transmit>, Vec<Event>) {
        self.mid += 1;
        let m = build::encode(t, code::GET, self.mid, token, &mut opts.to_vec(), &[]);
        self.feed(LISTENER, from, &m)
    }
    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.e.handle_timeout(self.now);
        common::outputs(&mut self.e);
    }
    /// A group request to coap://proxy/lights/temp with T' = `secs`: the multicast.
    fn group_request(&mut self, token: &[u8], secs: u32) -> Transmit {
        let mt = opt::uint_value(secs);
        let (tx, _) = self.ask(
            NON,
            token,
            &[
                (opt::URI_PATH, b"lights"),
                (opt::URI_PATH, b"temp"),
                (MT, &mt),
            ],
        );
        tx.into_iter()
            .find(|t| t.to == group_addr())
            .expect("a multicast")
    }
    /// Device `i` answers `fwd` (sent on its link): what reaches the client.
    fn answer(&mut self, fwd: &Transmit, i: u8) -> Vec<Vec<u8>> {
        let v = MessageView::parse(&fwd.bytes).unwrap();
        let r = build::encode(
            NON,
            code::CONTENT,
            500 + i as u16,
            v.token(),
            &mut [],
            b"21",
        );
        let (tx, _) = self.feed(fwd.link, device(i), &r);
        tx.into_iter()
            .filter(|t| t.to == client())
            .map(|t| t.bytes)
            .collect()
    }
}

fn rejected(ev: &[Event]) -> Option<(RejectReason, u8)> {
    ev.iter().find_map(|e| match e {
        Event::Rejected { reason, code, .. } => Some((*reason, *code)),
        _ => None,
    })
}

fn reverse_actions(ev: &[Event]) -> Vec<ReverseAction> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Reverse { action, .. } => Some(*action),
            _ => None,
        })
        .collect()
}

fn paths(v: &MessageView) -> Vec<Vec<u8>> {
    v.options()
        .filter(|(n, _)| *n == opt::URI_PATH)
        .map(|(_, b)| b.to_vec())
        .collect()
}

/// §6.1: a request to a reverse-proxied resource without Multicast-Timeout gets 4.00
/// with an empty Multicast-Timeout (the proxy reveals itself); nothing is multicast.
#[test]
fn s6_1_without_multicast_timeout_4_00_with_empty_option() {
    let mut h = H::new(config(StandIn::Group, false));
    let (tx, ev) = h.ask(
        CON,
        b"t1",
        &[(opt::URI_PATH, b"lights"), (opt::URI_PATH, b"temp")],
    );
    assert_eq!(tx.len(), 1);
    let v = MessageView::parse(&tx[0].bytes).unwrap();
    assert_eq!((v.mtype(), v.code()), (ACK, code::BAD_REQUEST));
    assert_eq!(
        v.option(MT),
        Some(&[][..]),
        "empty Multicast-Timeout (value 0)"
    );
    assert_eq!(
        rejected(&ev),
        Some((RejectReason::MissingMulticastTimeout, code::BAD_REQUEST))
    );
    assert_eq!(reverse_actions(&ev), vec![ReverseAction::GroupRequest]);
    // A path that is no reverse resource is a request for the proxy, as before.
    let (tx, ev) = h.ask(CON, b"t2", &[(opt::URI_PATH, b"other")]);
    let v = MessageView::parse(&tx[0].bytes).unwrap();
    assert_eq!(v.code(), code::NOT_FOUND);
    assert_eq!(v.option(MT), None);
    assert!(reverse_actions(&ev).is_empty());
}

/// §6.1 with §5.2.1: with a Multicast-Timeout the request is forwarded exactly as a
/// forward-proxy group request: to the group, NON, the resource's segment taken off and
/// the rest of the path kept, no Multicast-Timeout; every device's response relayed.
/// §6.1 second case (stand_in = "group"): Reply-From names the server (one element).
#[test]
fn s6_1_group_request_and_reply_from_naming_the_server() {
    let mut h = H::new(config(StandIn::Group, false));
    let fwd = h.group_request(b"g1", 5);
    assert!(matches!(fwd.link, Link::Group(0, _)));
    let v = MessageView::parse(&fwd.bytes).unwrap();
    assert_eq!(v.mtype(), NON);
    assert_eq!(paths(&v), vec![b"temp".to_vec()]);
    for n in [
        opt::URI_HOST,
        opt::URI_PORT,
        opt::PROXY_SCHEME,
        opt::PROXY_URI,
        MT,
    ] {
        assert_eq!(v.option(n), None, "option {n} not forwarded");
    }
    for i in 1..=3 {
        let got = h.answer(&fwd, i);
        assert_eq!(got.len(), 1, "device {i}'s response relayed");
        let r = MessageView::parse(&got[0]).unwrap();
        assert_eq!(r.code(), code::CONTENT);
        assert_eq!(r.token(), b"g1");
        let rf = r.option(RF).unwrap();
        assert_eq!(rf, &cri::reply_from(device(i))[..]);
        assert_eq!(cri::parse_reply_from_pair(rf), Some((device(i), None)));
    }
}

/// §6.1 first case (stand_in = "servers"): Reply-From names the proxy at `advertise`,
/// with the CRI reference //SERVER:PORT as its second element (Appendix A.1: the proxy
/// forwards a follow-up by its Uri-Host and Uri-Port).
#[test]
fn s6_1_reply_from_naming_the_proxy_with_a_cri_reference() {
    let mut h = H::new(config(servers(16, 3600), false));
    let fwd = h.group_request(b"g2", 5);
    for i in 1..=2 {
        let got = h.answer(&fwd, i);
        let r = MessageView::parse(&got[0]).unwrap();
        let rf = r.option(RF).unwrap();
        let mut want = cri::reply_from(advertise());
        want.extend_from_slice(&cri::authority_reference(device(i)));
        assert_eq!(rf, &want[..]);
        assert_eq!(
            cri::parse_reply_from_pair(rf),
            Some((advertise(), Some(device(i))))
        );
    }
}

/// §6.2, first case: the follow-up to the proxy with Uri-Host and Uri-Port from the CRI
/// reference (and a path of its own) goes to that server alone, unicast, without them;
/// its response comes back. The unicast policy is off: the group's allow list decides.
#[test]
fn s6_2_follow_up_through_the_proxy_standing_in_for_the_servers() {
    let mut h = H::new(config(servers(16, 3600), false));
    let fwd = h.group_request(b"g3", 5);
    h.answer(&fwd, 1);
    h.answer(&fwd, 2);
    let host = b"127.0.0.11";
    let port = opt::uint_value(5683);
    let follow = [
        (opt::URI_HOST, &host[..]),
        (opt::URI_PORT, &port[..]),
        (opt::URI_PATH, &b"r1"[..]),
    ];
    let (tx, ev) = h.ask(CON, b"u1", &follow);
    let out: Vec<_> = tx.iter().filter(|t| t.to == device(1)).collect();
    assert_eq!(out.len(), 1, "forwarded to device 1 only: {tx:?}");
    assert!(matches!(out[0].link, Link::Unicast(_)));
    let v = MessageView::parse(&out[0].bytes).unwrap();
    assert_eq!(paths(&v), vec![b"r1".to_vec()]);
    assert_eq!(v.option(opt::URI_HOST), None);
    assert_eq!(v.option(opt::PROXY_SCHEME), None);
    assert_eq!(reverse_actions(&ev), vec![ReverseAction::FollowUp]);
    assert!(ev.iter().any(|e| matches!(e, Event::UnicastForward)));
    // The server's piggybacked response reaches the client.
    let resp = build::encode(
        ACK,
        code::CONTENT,
        v.message_id(),
        v.token(),
        &mut [],
        b"ok",
    );
    let (tx, _) = h.feed(out[0].link, device(1), &resp);
    let back = tx.iter().find(|t| t.to == client()).expect("relayed");
    let r = MessageView::parse(&back.bytes).unwrap();
    assert_eq!(
        (r.code(), r.token(), r.payload()),
        (code::CONTENT, &b"u1"[..], &b"ok"[..])
    );
    // A client the group does not allow is refused (4.01), nothing sent.
    let (tx, ev) = h.ask_from(stranger(), CON, b"u2", &follow);
    assert!(tx.iter().all(|t| t.to == stranger()));
    assert_eq!(
        rejected(&ev),
        Some((RejectReason::NotAllowed, code::UNAUTHORIZED))
    );
}

/// §6.2: only servers that answered a group request are reachable so; the proxy is no
/// open relay to the hosts behind it: anything else gets 4.04, nothing sent.
#[test]
fn s6_2_follow_up_naming_no_server_that_answered_is_4_04() {
    let mut h = H::new(config(servers(16, 3600), true));
    let fwd = h.group_request(b"g4", 5);
    h.answer(&fwd, 1);
    let port = opt::uint_value(5683);
    for host in [&b"127.0.0.12"[..], b"192.0.2.1"] {
        let (tx, ev) = h.ask(CON, b"u3", &[(opt::URI_HOST, host), (opt::URI_PORT, &port)]);
        assert_eq!(tx.len(), 1);
        assert_eq!(
            MessageView::parse(&tx[0].bytes).unwrap().code(),
            code::NOT_FOUND
        );
        assert_eq!(
            rejected(&ev),
            Some((RejectReason::ReverseUnknownServer, code::NOT_FOUND))
        );
    }
    // A client the group does not allow learns nothing: 4.01 whether or not the
    // server is known.
    for host in [&b"127.0.0.11"[..], b"127.0.0.12"] {
        let (_, ev) = h.ask_from(
            stranger(),
            CON,
            b"u5",
            &[(opt::URI_HOST, host), (opt::URI_PORT, &port)],
        );
        assert_eq!(
            rejected(&ev),
            Some((RejectReason::NotAllowed, code::UNAUTHORIZED))
        );
    }
    // The right address on another port is another endpoint.
    let other = opt::uint_value(5684);
    let (_, ev) = h.ask(
        CON,
        b"u4",
        &[(opt::URI_HOST, b"127.0.0.11"), (opt::URI_PORT, &other)],
    );
    assert_eq!(
        rejected(&ev).map(|r| r.0),
        Some(RejectReason::ReverseUnknownServer)
    );
}

/// The bound (`max_servers`): past it the server heard from least recently is forgotten
/// (counted), and a follow-up to it gets 4.04 until it answers a group request again.
#[test]
fn servers_table_bound_forgets_the_least_recently_heard() {
    let mut h = H::new(config(servers(2, 3600), false));
    let fwd = h.group_request(b"g5", 5);
    h.answer(&fwd, 1);
    h.now += Duration::from_millis(10);
    h.answer(&fwd, 2);
    h.now += Duration::from_millis(10);
    let v = MessageView::parse(&fwd.bytes).unwrap();
    let r = build::encode(NON, code::CONTENT, 503, v.token(), &mut [], b"21");
    let (_, ev) = h.feed(fwd.link, device(3), &r);
    assert_eq!(reverse_actions(&ev), vec![ReverseAction::ServerForgotten]);
    let port = opt::uint_value(5683);
    let follow = |host: &'static [u8]| [(opt::URI_HOST, host), (opt::URI_PORT, &port[..])];
    let (_, ev) = h.ask(CON, b"f1", &follow(b"127.0.0.11"));
    assert_eq!(
        rejected(&ev).map(|r| r.0),
        Some(RejectReason::ReverseUnknownServer)
    );
    for (tok, host, i) in [(b"f2", &b"127.0.0.12"[..], 2), (b"f3", b"127.0.0.13", 3)] {
        let (tx, ev) = h.ask(CON, tok, &follow(host));
        assert!(tx.iter().any(|t| t.to == device(i)), "device {i} reached");
        assert_eq!(reverse_actions(&ev), vec![ReverseAction::FollowUp]);
    }
}

/// A server not heard from for `server_lifetime` is forgotten: its follow-up is 4.04.
#[test]
fn servers_table_entries_expire_after_server_lifetime() {
    let mut h = H::new(config(servers(16, 30), false));
    let fwd = h.group_request(b"g6", 5);
    h.answer(&fwd, 1);
    h.advance(Duration::from_secs(31));
    let port = opt::uint_value(5683);
    let (tx, ev) = h.ask(
        CON,
        b"f4",
        &[(opt::URI_HOST, b"127.0.0.11"), (opt::URI_PORT, &port)],
    );
    assert!(tx.iter().all(|t| t.to == client()));
    assert_eq!(
        rejected(&ev).map(|r| r.0),
        Some(RejectReason::ReverseUnknownServer)
    );
}

/// §6.2, second case (stand_in = "group"): the follow-up goes to the server directly or
/// as an ordinary forward-proxy request (here: Proxy-Scheme, [unicast] on); a request
/// to the proxy naming the server without a proxy option is not forwarded (the proxy
/// does not stand in for it).
#[test]
fn s6_2_follow_up_when_standing_in_for_the_group_only() {
    let mut h = H::new(config(StandIn::Group, true));
    let fwd = h.group_request(b"g7", 5);
    let got = h.answer(&fwd, 1);
    let rf = MessageView::parse(&got[0])
        .unwrap()
        .option(RF)
        .unwrap()
        .to_vec();
    let (server, none) = cri::parse_reply_from_pair(&rf).unwrap();
    assert_eq!((server, none), (device(1), None));
    let host = server.ip().to_string();
    let (tx, ev) = h.ask(
        CON,
        b"f5",
        &[
            (opt::URI_HOST, host.as_bytes()),
            (opt::PROXY_SCHEME, b"coap"),
            (opt::URI_PATH, b"r1"),
        ],
    );
    assert!(tx.iter().any(|t| t.to == device(1)));
    assert!(reverse_actions(&ev).is_empty());
    let (tx, ev) = h.ask(CON, b"f6", &[(opt::URI_HOST, host.as_bytes())]);
    assert!(tx.iter().all(|t| t.to == client()));
    assert_eq!(rejected(&ev).map(|r| r.0), Some(RejectReason::NotForProxy));
}

/// The request path's checks apply to a reverse-proxied request: the group's allow
/// list (§5.2.1 step 2, before the Multicast-Timeout check), the longest resource path
/// wins, the host form, and Observe (the registration is kept, RFC 10020 §3.7).
#[test]
fn reverse_requests_pass_the_request_path_checks() {
    let mut c = config(StandIn::Group, false);
    c.groups.push(groxy::proxy::GroupSpec {
        name: "floor".into(),
        addr: "239.1.2.3:5683".parse().unwrap(),
        host_names: vec![],
        enabled: true,
        allow: vec!["127.0.0.0/8".parse().unwrap()],
        max_timeout: Duration::from_secs(60),
        security: None,
        next_hop: None,
    });
    c.reverse.push(ReverseSpec {
        host: None,
        path: vec!["lights".into(), "floor".into()],
        group: 1,
        stand_in: StandIn::Group,
    });
    c.reverse.push(ReverseSpec {
        host: Some("lights.example".into()),
        path: vec![],
        group: 1,
        stand_in: StandIn::Group,
    });
    let mut h = H::new(c);
    let mt = opt::uint_value(5);
    let (_, ev) = h.ask_from(stranger(), CON, b"s1", &[(opt::URI_PATH, b"lights")]);
    assert_eq!(
        rejected(&ev),
        Some((RejectReason::NotAllowed, code::UNAUTHORIZED))
    );
    let (tx, _) = h.ask(
        NON,
        b"s2",
        &[
            (opt::URI_PATH, b"lights"),
            (opt::URI_PATH, b"floor"),
            (opt::URI_PATH, b"temp"),
            (MT, &mt),
        ],
    );
    let m = tx
        .iter()
        .find(|t| t.to == "239.1.2.3:5683".parse().unwrap());
    let v = MessageView::parse(&m.expect("to group 1").bytes).unwrap();
    assert_eq!(paths(&v), vec![b"temp".to_vec()]);
    let (tx, _) = h.ask(
        NON,
        b"s3",
        &[
            (opt::URI_HOST, b"Lights.Example"),
            (opt::URI_PATH, b"x"),
            (MT, &mt),
        ],
    );
    let m = tx
        .iter()
        .find(|t| t.to == "239.1.2.3:5683".parse().unwrap());
    let v = MessageView::parse(&m.expect("to group 1 by host").bytes).unwrap();
    assert_eq!(paths(&v), vec![b"x".to_vec()]);
    assert_eq!(v.option(opt::URI_HOST), None);
    let (tx, ev) = h.ask(
        NON,
        b"s4",
        &[(OBSERVE, b""), (opt::URI_PATH, b"lights"), (MT, &mt)],
    );
    let m = tx
        .iter()
        .find(|t| t.to == group_addr())
        .expect("a multicast");
    assert_eq!(
        MessageView::parse(&m.bytes).unwrap().option(OBSERVE),
        Some(&[][..])
    );
    assert!(ev.iter().any(|e| matches!(e, Event::ObserveStarted { .. })));
}

/// check-config: a [[reverse]] is validated with the rest (every error names its key).
#[test]
fn reverse_section_is_validated() {
    let base = r#"
[proxy]
listen = ["127.0.0.1:5683"]
[[group]]
name = "g"
uri = "coap://224.0.1.187"
interface = "127.0.0.1"
[[group]]
name = "chained"
uri = "coap://239.1.1.1"
interface = "127.0.0.1"
next_hop = "127.0.0.9:5683"
"#;
    let ok = format!(
        "{base}[[reverse]]\ngroup = \"g\"\npath = \"a/b\"\nstand_in = \"servers\"\nadvertise = \"127.0.0.1:5683\"\nmax_servers = 4\n"
    );
    let l = groxy::settings::load_str(&ok).unwrap();
    assert_eq!(
        l.run.proxy.reverse,
        vec![ReverseSpec {
            host: None,
            path: vec!["a".into(), "b".into()],
            group: 0,
            stand_in: StandIn::Servers {
                advertise: advertise(),
                pool: vec![],
                max_servers: 4,
                server_lifetime: Duration::from_secs(3600),
            },
        }]
    );
    for (extra, key) in [
        ("group = \"nope\"\npath = \"x\"", "reverse[0].group"),
        ("group = \"g\"", "reverse[0]: needs a path or a host"),
        (
            "group = \"g\"\npath = \"x\"\nstand_in = \"servers\"",
            "reverse[0].advertise",
        ),
        (
            "group = \"g\"\npath = \"x\"\nstand_in = \"servers\"\nadvertise = \"127.0.0.1:9999\"",
            "reverse[0].advertise",
        ),
        (
            "group = \"chained\"\npath = \"x\"\nstand_in = \"servers\"\nadvertise = \"127.0.0.1:5683\"",
            "reverse[0].stand_in",
        ),
        (
            "group = \"g\"\npath = \"x\"\nstand_in = \"all\"",
            "reverse[0].stand_in",
        ),
        (
            "group = \"g\"\npath = \"x\"\nstand_in = \"servers\"\nadvertise = \"127.0.0.1:5683\"\nmax_servers = 0",
            "reverse[0].max_servers",
        ),
    ] {
        let errors =
            groxy::settings::load_str(&format!("{base}[[reverse]]\n{extra}\n")).expect_err(extra);
        assert!(
            errors.iter().any(|e| e.starts_with(key)),
            "{extra}: {errors:?}"
        );
    }
}

fn pool_addr(i: u16) -> SocketAddr {
    format!("127.0.0.1:{}", 6000 + i).parse().unwrap()
}

/// Listeners 1 and 2 are the pool (127.0.0.1:6001, :6002).
fn pooled(max_servers: usize) -> ProxyConfig {
    config(
        StandIn::Servers {
            advertise: advertise(),
            pool: vec![(1, pool_addr(1)), (2, pool_addr(2))],
            max_servers,
            server_lifetime: Duration::from_secs(3600),
        },
        false,
    )
}

fn reply_from_of(got: &[Vec<u8>]) -> Vec<u8> {
    MessageView::parse(&got[0])
        .unwrap()
        .option(RF)
        .unwrap()
        .to_vec()
}

/// §6.1 first case, Appendix A.2: each server gets an address of the proxy's own from
/// the pool, and Reply-From is that CRI alone (the proxy forwards by it alone, so the
/// second element MUST NOT be present); a server keeps its address across group
/// requests; once the pool is used up, the CRI-reference form (Appendix A.1) follows.
#[test]
fn s6_1_pool_address_per_server_then_the_cri_reference_form() {
    let mut h = H::new(pooled(16));
    let fwd = h.group_request(b"p1", 5);
    assert_eq!(
        reply_from_of(&h.answer(&fwd, 1)),
        cri::reply_from(pool_addr(1))
    );
    assert_eq!(
        reply_from_of(&h.answer(&fwd, 2)),
        cri::reply_from(pool_addr(2))
    );
    let rf = reply_from_of(&h.answer(&fwd, 3));
    assert_eq!(
        cri::parse_reply_from_pair(&rf),
        Some((advertise(), Some(device(3))))
    );
    let fwd = h.group_request(b"p2", 5);
    assert_eq!(
        reply_from_of(&h.answer(&fwd, 2)),
        cri::reply_from(pool_addr(2))
    );
    assert_eq!(
        reply_from_of(&h.answer(&fwd, 1)),
        cri::reply_from(pool_addr(1))
    );
}

/// §6.2 with Appendix A.2: a request to a server's pool address, with only its own
/// Uri-Path, goes to that server; its response leaves by that listener (the address the
/// client sent to). A pool address standing for no server gets 4.04, nothing sent.
#[test]
fn s6_2_follow_up_to_a_pool_address() {
    let mut h = H::new(pooled(16));
    let fwd = h.group_request(b"p3", 5);
    h.answer(&fwd, 1);
    h.mid += 1;
    let m = build::encode(
        CON,
        code::GET,
        h.mid,
        b"q1",
        &mut [(opt::URI_PATH, &b"r"[..])],
        &[],
    );
    let (tx, ev) = h.feed(Link::Listener(1), client(), &m);
    let out = tx.iter().find(|t| t.to == device(1)).expect("to device 1");
    let v = MessageView::parse(&out.bytes).unwrap();
    assert_eq!(paths(&v), vec![b"r".to_vec()]);
    assert_eq!(v.option(opt::URI_HOST), None);
    assert_eq!(reverse_actions(&ev), vec![ReverseAction::FollowUp]);
    let resp = build::encode(
        ACK,
        code::CONTENT,
        v.message_id(),
        v.token(),
        &mut [],
        b"ok",
    );
    let (tx, _) = h.feed(out.link, device(1), &resp);
    let back = tx.iter().find(|t| t.to == client()).expect("relayed");
    assert_eq!(back.link, Link::Listener(1));
    h.mid += 1;
    let m = build::encode(CON, code::GET, h.mid, b"q2", &mut [], &[]);
    let (tx, ev) = h.feed(Link::Listener(2), client(), &m);
    assert!(tx.iter().all(|t| t.to == client()));
    assert_eq!(
        rejected(&ev),
        Some((RejectReason::ReverseUnknownServer, code::NOT_FOUND))
    );
}

/// The bound with a pool: a server forgotten at `max_servers` frees its pool address,
/// which the next new server gets; a follow-up to it then reaches the new server.
#[test]
fn a_forgotten_server_frees_its_pool_address() {
    let mut h = H::new(pooled(2));
    let fwd = h.group_request(b"p4", 5);
    h.answer(&fwd, 1);
    h.now += Duration::from_millis(10);
    h.answer(&fwd, 2);
    h.now += Duration::from_millis(10);
    let got = h.answer(&fwd, 3);
    assert_eq!(reply_from_of(&got), cri::reply_from(pool_addr(1)));
    h.mid += 1;
    let m = build::encode(CON, code::GET, h.mid, b"q3", &mut [], &[]);
    let (tx, _) = h.feed(Link::Listener(1), client(), &m);
    assert!(tx.iter().any(|t| t.to == device(3)));
}

/// check-config: a pool ("ip:port" or "ip:first-last") becomes listeners after
/// proxy.listen, in order; only with "servers", never an address twice.
#[test]
fn reverse_pool_is_parsed_into_listeners() {
    let base = "[proxy]\nlisten = [\"127.0.0.1:5683\"]\n[[group]]\nname = \"g\"\nuri = \"coap://224.0.1.187\"\ninterface = \"127.0.0.1\"\n[[reverse]]\ngroup = \"g\"\npath = \"x\"\n";
    let ok = format!(
        "{base}stand_in = \"servers\"\nadvertise = \"127.0.0.1:5683\"\npool = [\"127.0.0.1:6001-6002\", \"127.0.0.2:6001\"]\n"
    );
    let l = groxy::settings::load_str(&ok).unwrap();
    let want: Vec<SocketAddr> = [
        "127.0.0.1:5683",
        "127.0.0.1:6001",
        "127.0.0.1:6002",
        "127.0.0.2:6001",
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .collect();
    assert_eq!(l.run.listen, want);
    let StandIn::Servers { pool, .. } = &l.run.proxy.reverse[0].stand_in else {
        panic!("servers")
    };
    assert_eq!(pool, &vec![(1, want[1]), (2, want[2]), (3, want[3])]);
    for extra in [
        "stand_in = \"group\"\npool = [\"127.0.0.1:6001\"]",
        "stand_in = \"servers\"\nadvertise = \"127.0.0.1:5683\"\npool = [\"127.0.0.1:5683\"]",
        "stand_in = \"servers\"\nadvertise = \"127.0.0.1:5683\"\npool = [\"127.0.0.1:6001\", \"127.0.0.1:6001\"]",
        "stand_in = \"servers\"\nadvertise = \"127.0.0.1:5683\"\npool = [\"127.0.0.1:6002-6001\"]",
        "stand_in = \"servers\"\nadvertise = \"127.0.0.1:5683\"\npool = [\"0.0.0.0:6001\"]",
    ] {
        let errors = groxy::settings::load_str(&format!("{base}{extra}\n")).expect_err(extra);
        assert!(
            errors.iter().any(|e| e.starts_with("reverse[0].pool")),
            "{extra}: {errors:?}"
        );
    }
}

/// The signature filter (RFC 10021 §7.5) applies to a reverse-proxied request as to a
/// forward-proxy one: a Group OSCORE request naming the resource by Uri-Host (outside
/// the protection, where Uri-Path is not) is fanned out if it verifies; a forged one
/// and a replay of the good one never reach the group.
#[test]
fn the_signature_filter_checks_reverse_proxied_requests() {
    use groxy::oscore::{Mode, SecurityContext};
    use groxy::proxy::{CheckResult, GroupSecurity, Policy};
    let g = common::Group::new(&[&[0x01], &[0x0a]]);
    let mut c = config(StandIn::Group, false);
    c.groups[0].security = Some(GroupSecurity {
        policy: Policy::Enforce,
        checker: g.checker_config(),
        member: None,
        allow_kids: None,
    });
    c.reverse[0] = ReverseSpec {
        host: Some("lights.example".into()),
        path: vec![],
        group: 0,
        stand_in: StandIn::Group,
    };
    let mut h = H::new(c);
    let mut ctx = SecurityContext::new(&g.config(&[0x01])).unwrap();
    // GET /hello, NON, token aa.
    let plain = hex::decode("5101aa01c3b568656c6c6f").unwrap();
    let (protected, _) = ctx
        .protect_request(&plain, Mode::Group, Some(&[0x0a]))
        .unwrap();
    let send = |h: &mut H, msg: &[u8], forge: bool| {
        let v = MessageView::parse(msg).unwrap();
        let mut opts: Vec<(u16, &[u8])> = v.options().collect();
        opts.push((opt::URI_HOST, b"lights.example"));
        opts.push((MT, &[10]));
        let mut payload = v.payload().to_vec();
        if forge {
            payload[0] ^= 1;
        }
        h.mid += 1;
        let tok = h.mid.to_be_bytes();
        let m = build::encode(NON, v.code(), h.mid, &tok, &mut opts, &payload);
        h.feed(LISTENER, client(), &m)
    };
    let checks = |ev: &[Event]| -> Vec<CheckResult> {
        ev.iter()
            .filter_map(|e| match e {
                Event::Checked { result, .. } => Some(*result),
                _ => None,
            })
            .collect()
    };
    let (tx, ev) = send(&mut h, &protected, true);
    assert!(
        tx.iter().all(|t| t.to != group_addr()),
        "a forgery is not fanned out"
    );
    assert_eq!(checks(&ev), vec![CheckResult::BadSignature]);
    let (tx, ev) = send(&mut h, &protected, false);
    let m = tx
        .iter()
        .find(|t| t.to == group_addr())
        .expect("verified: fanned out");
    let v = MessageView::parse(&m.bytes).unwrap();
    assert_eq!(v.option(opt::URI_HOST), None);
    assert!(v.option(opt::OSCORE).is_some());
    assert_eq!(checks(&ev), vec![CheckResult::Valid]);
    let (tx, ev) = send(&mut h, &protected, false);
    assert!(
        tx.iter().all(|t| t.to != group_addr()),
        "a replay is not fanned out"
    );
    assert_eq!(checks(&ev), vec![CheckResult::Replay]);
}

/// §5.2.3 through a reverse-proxied resource: the client's Early Stop Request (GET,
/// its token, Multicast-Timeout 0, no Uri options) ends the exchange; later responses
/// are not relayed.
#[test]
fn an_early_stop_ends_a_reverse_proxied_exchange() {
    let mut h = H::new(config(StandIn::Group, false));
    let fwd = h.group_request(b"es", 30);
    assert_eq!(h.answer(&fwd, 1).len(), 1);
    let (_, ev) = h.ask(NON, b"es", &[(MT, b"")]);
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::Closed {
            reason: groxy::proxy::CloseReason::EarlyStopRequest,
            ..
        }
    )));
    assert!(h.answer(&fwd, 2).is_empty());
}

/// RFC 10020 §3.5.2: the client's token reused for a new request to the resource while
/// the group request under it runs: the running one is stopped, the new one not
/// forwarded, and a 4.00 says that this is a reverse-proxy resource.
#[test]
fn token_reuse_at_a_reverse_resource_is_4_00_saying_so() {
    let mut h = H::new(config(StandIn::Group, false));
    let fwd = h.group_request(b"tr", 30);
    let mt = opt::uint_value(5);
    let (tx, ev) = h.ask(
        NON,
        b"tr",
        &[
            (opt::URI_PATH, b"lights"),
            (opt::URI_PATH, b"temp"),
            (MT, &mt),
        ],
    );
    assert!(tx.iter().all(|t| t.to != group_addr()), "not forwarded");
    let v = MessageView::parse(&tx[0].bytes).unwrap();
    assert_eq!(v.code(), code::BAD_REQUEST);
    assert!(
        String::from_utf8_lossy(v.payload()).contains("reverse-proxy resource"),
        "{:?}",
        String::from_utf8_lossy(v.payload())
    );
    assert_eq!(rejected(&ev).map(|r| r.0), Some(RejectReason::TokenReuse));
    assert!(
        h.answer(&fwd, 1).is_empty(),
        "the running request was stopped"
    );
}

/// A reload (SIGHUP, `Engine::reconfigure`) applies a new `[[reverse]]` at once and
/// keeps the servers remembered: a follow-up to one heard before still goes through.
#[test]
fn reconfigure_applies_reverse_changes_and_keeps_the_servers() {
    let mut h = H::new(config(servers(16, 3600), false));
    let fwd = h.group_request(b"rc", 5);
    h.answer(&fwd, 1);
    let mut c = config(servers(16, 3600), false);
    c.reverse.push(ReverseSpec {
        host: None,
        path: vec!["all".into()],
        group: 0,
        stand_in: StandIn::Group,
    });
    h.e.reconfigure(h.now, c).unwrap();
    let mt = opt::uint_value(5);
    let (tx, _) = h.ask(NON, b"r2", &[(opt::URI_PATH, b"all"), (MT, &mt)]);
    assert!(tx.iter().any(|t| t.to == group_addr()), "the new resource");
    let port = opt::uint_value(5683);
    let (tx, _) = h.ask(
        CON,
        b"r3",
        &[(opt::URI_HOST, b"127.0.0.11"), (opt::URI_PORT, &port)],
    );
    assert!(
        tx.iter().any(|t| t.to == device(1)),
        "the server remembered"
    );
}
