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

use common::engine::{apart, pair};

/// A group request through the proxy, the Class U proxy options added after protection.
fn proxied(protected: &[u8], mid: u16) -> Vec<u8> {
    let v = MessageView::parse(protected).unwrap();
    let mut opts: Vec<(u16, &[u8])> = v.options().collect();
    opts.push((opt::URI_HOST, b"224.0.1.187"));
    opts.push((opt::PROXY_SCHEME, b"coap"));
    opts.push((opt::MULTICAST_TIMEOUT_DEFAULT, &[10]));
    build::encode(
        NON,
        v.code(),
        mid,
        &mid.to_be_bytes(),
        &mut opts,
        v.payload(),
    )
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
    assert_eq!(
        (multicast(&tx), results(&ev)),
        (1, vec![CheckResult::Valid])
    );
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
    assert_eq!(
        (multicast(&tx), results(&ev)),
        (0, vec![CheckResult::Replay])
    );
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
    assert_eq!(
        multicast(&feed(&mut b, now, from(2, 1), &signed(&mut c1, 1)).0),
        1
    );

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
    assert_eq!(
        (multicast(&tx), results(&ev)),
        (0, vec![CheckResult::Replay])
    );
    assert_eq!(
        multicast(&feed(&mut b, now, from(2, 1), &signed(&mut c2, 4)).0),
        1
    );
    // Old-epoch requests are refused on both.
    for e in [&mut a, &mut b] {
        let (tx, ev) = feed(e, now, from(3, 1), &signed(&mut c1, 5));
        assert_eq!(
            (multicast(&tx), results(&ev)),
            (0, vec![CheckResult::UnknownGid])
        );
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
        assert_eq!(
            multicast(&feed(&mut a2, now, from(1, 1000), &plain(i)).0),
            1
        );
    }
    assert_eq!(
        multicast(&feed(&mut b2, now, from(1, 1000), &plain(9)).0),
        1
    );

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

// ---- end to end: two forwarding threads on loopback ----

mod wire {
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use super::{CLIENT, checked_config, signed};
    use crate::common::{self, Group};
    use groxy::oscore::SecurityContext;
    use groxy::runtime::{Proxy, RunConfig};

    pub(super) struct Running {
        pub(super) listen: SocketAddr,
        pub(super) metrics: SocketAddr,
        _thread: common::OnThread,
    }

    /// A checked group on loopback multicast (`group`), two forwarding threads with one
    /// egress port each (the port a fan-out leaves by tells the thread), state in `dir`.
    pub(super) fn run_config(g: &Group, group: SocketAddrV4, dir: &Path) -> RunConfig {
        let mut run = groxy::settings::load_default().run;
        run.proxy.groups[0].security = checked_config(g).groups[0].security.clone();
        run.proxy.groups[0].addr = SocketAddr::V4(group);
        run.proxy.limits.egress_ports = 1;
        run.proxy.threads = 2;
        run.listen = vec!["127.0.0.1:0".parse().unwrap()];
        run.state_dir = Some(dir.to_path_buf());
        run
    }

    pub(super) fn start(run: RunConfig) -> Running {
        let proxy = Proxy::bind(run.clone()).unwrap();
        assert_eq!(proxy.threads(), 2);
        let listen = proxy.listen_addrs()[0];
        let (mtx, mrx) = std::sync::mpsc::channel();
        let cfg = run.proxy.clone();
        let thread = common::OnThread::spawn(move |rx| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (ops, m) =
                    groxy::ops::Ops::start("127.0.0.1:0".parse().unwrap(), &cfg).unwrap();
                mtx.send(ops.local_addr()).unwrap();
                let mut proxy = proxy;
                proxy.observe(m);
                groxy::ops::serve(proxy, ops.health(), async move {
                    let _ = rx.await;
                })
                .await
                .unwrap();
                drop(ops);
            });
        });
        Running {
            listen,
            metrics: mrx.recv().unwrap(),
            _thread: thread,
        }
    }

    /// A receiver of the group's multicast on loopback.
    pub(super) fn member(group: SocketAddrV4) -> UdpSocket {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, group.port())).into())
            .unwrap();
        s.join_multicast_v4(group.ip(), &Ipv4Addr::LOCALHOST)
            .unwrap();
        let s: UdpSocket = s.into();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        s
    }

    /// Every datagram the group got within `wait`: (source, bytes).
    pub(super) fn received(m: &UdpSocket, wait: Duration) -> Vec<(SocketAddr, Vec<u8>)> {
        let until = Instant::now() + wait;
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        while Instant::now() < until {
            if let Ok((n, from)) = m.recv_from(&mut buf) {
                out.push((from, buf[..n].to_vec()));
            }
        }
        out
    }

    pub(super) fn group_addr() -> SocketAddrV4 {
        let port = common::free_port();
        let b = (std::process::id() % 200) as u8 + 10;
        SocketAddrV4::new(Ipv4Addr::new(239, 255, 77, b), port)
    }

    pub(super) fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("groxy-threads-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// The ciphertext, which the proxy forwards untouched: what tells a fan-out's request.
    pub(super) fn payload(datagram: &[u8]) -> Vec<u8> {
        groxy::coap::MessageView::parse(datagram)
            .unwrap()
            .payload()
            .to_vec()
    }

    pub(super) fn client() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        s
    }

    pub(super) fn ctx(g: &Group) -> SecurityContext {
        SecurityContext::new(&g.config(CLIENT)).unwrap()
    }

    pub(super) fn request(c: &mut SecurityContext, mid: u16, group: SocketAddrV4) -> Vec<u8> {
        super::retarget(&signed(c, mid), group)
    }
}

/// `signed` names the default group's host; the loopback test's group has another.
fn retarget(datagram: &[u8], group: std::net::SocketAddrV4) -> Vec<u8> {
    let v = MessageView::parse(datagram).unwrap();
    let host = group.ip().to_string();
    let port = group.port().to_be_bytes();
    // A Multicast-Timeout of 5 s: long enough for the scrape to see the exchanges, short
    // enough for the drain at each stop.
    let mut opts: Vec<(u16, &[u8])> = v
        .options()
        .filter(|(n, _)| *n != opt::URI_HOST && *n != opt::MULTICAST_TIMEOUT_DEFAULT)
        .collect();
    opts.push((opt::URI_HOST, host.as_bytes()));
    opts.push((opt::URI_PORT, &port));
    opts.push((opt::MULTICAST_TIMEOUT_DEFAULT, &[5]));
    build::encode(
        NON,
        v.code(),
        v.message_id(),
        v.token(),
        &mut opts,
        v.payload(),
    )
}

fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Two forwarding threads on loopback, traffic from 48 client ports (the kernel spreads
/// them over both threads' SO_REUSEPORT listeners; which thread took a request shows in
/// the egress port its fan-out left by):
/// * groupcomm-proxy §10: a signed request admitted by one thread, replayed from a client
///   port the other thread serves, is not multicast again; nor after a restart with two
///   threads (the shared windows were recorded, RFC 10021 §2.6.3.2);
/// * /metrics shows one series set whose counters are the sums of both threads';
/// * a second proxy on the same state_dir refuses to start while the first runs.
#[test]
fn two_threads_on_loopback_share_replay_windows_and_metrics_and_lock_state_dir() {
    let g = Group::new(&[CLIENT, DEV_A]);
    let group = wire::group_addr();
    let dir = wire::temp("e2e");
    let run = wire::run_config(&g, group, &dir);
    let member = wire::member(group);
    let p = wire::start(run.clone());
    let mut c = wire::ctx(&g);

    // The state directory is this process's now.
    let e = match Proxy2::bind(run.clone()) {
        Ok(_) => panic!("a second proxy started on the same state_dir"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("locked by another groxy process"), "{e}");

    let clients: Vec<std::net::UdpSocket> = (0..48).map(|_| wire::client()).collect();
    let mut sent = Vec::new();
    for (i, s) in clients.iter().enumerate() {
        let req = wire::request(&mut c, i as u16 + 1, group);
        s.send_to(&req, p.listen).unwrap();
        sent.push(req);
    }
    let got = wire::received(&member, Duration::from_millis(1500));
    assert_eq!(got.len(), 48, "every fresh request fanned out once");
    // Which thread (egress port) took each client's request.
    let thread_of: Vec<u16> = sent
        .iter()
        .map(|r| {
            let body = wire::payload(r);
            got.iter()
                .find(|(_, d)| wire::payload(d) == body)
                .map(|(from, _)| from.port())
                .unwrap()
        })
        .collect();
    let ports: std::collections::BTreeSet<u16> = thread_of.iter().copied().collect();
    assert_eq!(
        ports.len(),
        2,
        "the kernel spread 48 client ports over both threads"
    );
    // Client 0's request, replayed from a port the other thread serves.
    let other = thread_of.iter().position(|t| *t != thread_of[0]).unwrap();
    clients[other].send_to(&sent[0], p.listen).unwrap();
    let replayed = wire::received(&member, Duration::from_millis(500));
    assert!(replayed.is_empty(), "the other thread dropped the replay");

    let (status, text) = common::http_get(p.metrics, "/metrics").unwrap();
    assert_eq!(status, 200);
    let name = &run.proxy.groups[0].name;
    assert_eq!(
        sample(
            &text,
            &format!("groxy_requests_total{{group=\"{name}\",outcome=\"forwarded\"}}")
        ),
        48.0,
        "one series, both threads' requests"
    );
    assert_eq!(
        sample(
            &text,
            &format!("groxy_replays_dropped_total{{group=\"{name}\"}}")
        ),
        1.0
    );
    assert_eq!(
        text.matches("\ngroxy_exchanges_active ").count(),
        1,
        "one gauge for the proxy"
    );
    assert_eq!(sample(&text, "groxy_exchanges_active"), 48.0);
    drop(p);

    // Restarted with two threads: the recorded windows hold, on either thread.
    let p = wire::start(run);
    for s in &clients {
        s.send_to(&sent[0], p.listen).unwrap();
    }
    let again = wire::received(&member, Duration::from_millis(500));
    assert!(
        again.is_empty(),
        "no thread forwards a request admitted before the restart"
    );
    let fresh = wire::request(&mut c, 100, group);
    clients[other].send_to(&fresh, p.listen).unwrap();
    assert_eq!(wire::received(&member, Duration::from_millis(800)).len(), 1);
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

use groxy::runtime::Proxy as Proxy2;

/// `[proxy] threads`: 1..=256, absent the cores this process may use.
#[test]
fn the_threads_key_is_checked_and_defaults_to_the_available_cores() {
    let load = |t: &str| groxy::settings::load_str(&format!("[proxy]\n{t}"));
    assert_eq!(load("threads = 3").unwrap().run.proxy.threads, 3);
    assert_eq!(load("threads = 1").unwrap().run.proxy.threads, 1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(load("").unwrap().run.proxy.threads, cores.min(256));
    for bad in ["threads = 0", "threads = 257"] {
        let e = load(bad).map(|_| ()).unwrap_err().join("\n");
        assert!(e.contains("proxy.threads: must be 1..=256"), "{bad}: {e}");
    }
}

/// RFC 10021 §2.6.1.1: the proxy as a group member runs every forwarding thread (its own
/// OSCORE layer is shared between them, see the engine-level tests below), and its
/// sequence numbers are restored once for the proxy at start, not once per thread: one
/// block of SSN_BLOCK reserved on stable storage, so a restart skips one block, not one
/// per thread.
#[test]
fn s2_6_1_1_a_member_proxy_runs_every_forwarding_thread_and_restores_once() {
    let g = Group::new(&[CLIENT, DEV_A, &[0x50]]);
    let dir = wire::temp("member");
    let mut run = groxy::settings::load_default().run;
    let mut sec = checked_config(&g).groups[0].security.clone().unwrap();
    sec.member = Some(g.config(&[0x50]));
    run.proxy.groups[0].security = Some(sec);
    run.proxy.threads = 2;
    run.listen = vec!["127.0.0.1:0".parse().unwrap()];
    run.state_dir = Some(dir.clone());
    let ssn_file = dir.join(format!("{}.ssn", run.proxy.groups[0].name));
    let block = groxy::proxy::engine::SSN_BLOCK;
    let p = Proxy2::bind(run.clone()).unwrap();
    assert_eq!(p.threads(), 2);
    let recorded = || -> u64 {
        let text = std::fs::read_to_string(&ssn_file).unwrap();
        text.split_whitespace().next().unwrap().parse().unwrap()
    };
    assert_eq!(recorded(), block, "one block reserved for both threads");
    drop(p);
    let p = Proxy2::bind(run).unwrap();
    assert_eq!(p.threads(), 2);
    assert_eq!(recorded(), 2 * block, "a restart continues one block above");
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

/// RFC 10021 §2.6.1.1 and §12.2 across restarts: the `.ssn` file records its bound's key
/// epoch. A start under a newer epoch continues above the bound; a start under the older
/// epoch again (keying material put back) is refused, since the bound on record is the
/// newer epoch's and says nothing of how far the older one's numbers went; a file in
/// the bare format of before is continued above, as before.
#[test]
fn s2_6_1_1_a_start_under_an_older_member_epoch_than_recorded_is_refused() {
    let e1 = Group::new(&[CLIENT, DEV_A, &[0x50]]);
    let e2 = e1.rekeyed();
    let dir = wire::temp("member-epoch");
    let run = |g: &Group| {
        let mut run = groxy::settings::load_default().run;
        let mut sec = checked_config(g).groups[0].security.clone().unwrap();
        sec.member = Some(g.config(&[0x50]));
        run.proxy.groups[0].security = Some(sec);
        run.listen = vec!["127.0.0.1:0".parse().unwrap()];
        run.state_dir = Some(dir.clone());
        run
    };
    let ssn_file = dir.join(format!("{}.ssn", run(&e1).proxy.groups[0].name));
    let block = groxy::proxy::engine::SSN_BLOCK;
    let recorded = || std::fs::read_to_string(&ssn_file).unwrap();
    drop(Proxy2::bind(run(&e1)).unwrap());
    assert_eq!(
        recorded().trim(),
        format!("{block} 0 {}", hex::encode(&e1.gid)),
        "the bound with its epoch"
    );
    drop(Proxy2::bind(run(&e2)).unwrap());
    assert_eq!(
        recorded().trim(),
        format!("{} 1 {}", 2 * block, hex::encode(&e2.gid)),
        "a newer epoch continues above the bound"
    );
    let e = match Proxy2::bind(run(&e1)) {
        Ok(_) => panic!("started under the older epoch"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("newer than the configured one"), "{e}");
    assert_eq!(
        recorded().split_whitespace().next(),
        Some(&*(2 * block).to_string()),
        "the refused start wrote nothing"
    );
    // The format of before: a bare number, continued above.
    std::fs::write(&ssn_file, "10000\n").unwrap();
    drop(Proxy2::bind(run(&e2)).unwrap());
    assert_eq!(
        recorded().split_whitespace().next(),
        Some(&*(10000 + block).to_string())
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The response cache (groupcomm-proxy §7.1: a read stored by one thread is served to a
/// client whose 4-tuple lands on another) and the servers a reverse-proxy resource stands
/// in for (§6.2: a follow-up may come from another port) are the proxy's, in `Shared`
/// (tests/threads_cache.rs): with either, `threads` forwarding threads run (issue 14
/// point 2; they used to keep the proxy on one).
#[test]
fn s7_1_s6_2_the_cache_or_a_servers_stand_in_runs_every_forwarding_thread() {
    let base = || {
        let mut run = groxy::settings::load_default().run;
        run.proxy.threads = 2;
        run.listen = vec!["127.0.0.1:0".parse().unwrap()];
        run.state_dir = None;
        run
    };
    assert_eq!(Proxy2::bind(base()).unwrap().threads(), 2);
    let mut cached = base();
    cached.proxy.cache.enabled = true;
    assert_eq!(Proxy2::bind(cached).unwrap().threads(), 2);
    let mut reverse = base();
    reverse.proxy.reverse = vec![groxy::proxy::ReverseSpec {
        host: Some("lights".into()),
        path: Vec::new(),
        group: 0,
        stand_in: groxy::proxy::StandIn::Servers {
            advertise: "127.0.0.1:5683".parse().unwrap(),
            pool: Vec::new(),
            max_servers: 4,
            server_lifetime: std::time::Duration::from_secs(60),
        },
    }];
    assert_eq!(Proxy2::bind(reverse.clone()).unwrap().threads(), 2);
    reverse.proxy.reverse[0].stand_in = groxy::proxy::StandIn::Group;
    assert_eq!(Proxy2::bind(reverse).unwrap().threads(), 2);
}

/// The exchange table's bound holds while two threads admit at the same moment: the check
/// and the count are one step (`Shared`), or both threads could see the last free slot and
/// take it together (groupcomm-proxy §5.2.1 step 7, the table is the whole proxy's).
#[test]
fn the_exchange_bound_holds_while_two_threads_admit_at_once() {
    let mut cfg = ProxyConfig::default();
    cfg.limits.max_exchanges = 1;
    let start = Instant::now();
    let (a, b) = pair(&cfg, start);
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let runs: Vec<_> = [a, b]
        .into_iter()
        .enumerate()
        .map(|(t, mut e)| {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut now = start;
                for i in 0..20_000u32 {
                    // A fresh client each time, so that only the table bounds it; the
                    // exchange ends before the next (T' passes on the virtual clock).
                    let client = from(1 + t as u8 * 100 + (i % 100) as u8, 1000);
                    e.handle(now, Link::Listener(0), client, &plain(i as u16));
                    seen.fetch_max(e.exchanges().0, std::sync::atomic::Ordering::Relaxed);
                    while e.poll_output().is_some() {}
                    now += Duration::from_secs(20);
                    e.handle_timeout(now);
                    while e.poll_output().is_some() {}
                }
            })
        })
        .collect();
    for r in runs {
        r.join().unwrap();
    }
    assert_eq!(seen.load(std::sync::atomic::Ordering::Relaxed), 1);
}

/// `groxy run --config` as an operator runs it, killed when dropped; its log in
/// `<dir>/log`. For what only the process does: SIGHUP, and the `.ssn` file at start.
struct GroxyRun {
    child: std::process::Child,
    dir: std::path::PathBuf,
    metrics: SocketAddr,
}

impl GroxyRun {
    /// Started on `<dir>/groxy.toml`, back once /readyz says 200.
    fn start(dir: &std::path::Path, metrics: SocketAddr) -> GroxyRun {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_groxy"))
            .args(["run", "--config", "groxy.toml"])
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).unwrap())
            .spawn()
            .unwrap();
        let r = GroxyRun {
            child,
            dir: dir.to_path_buf(),
            metrics,
        };
        r.until("readiness", &|_| {
            common::http_get(metrics, "/readyz").is_ok_and(|(s, _)| s == 200)
        });
        r
    }

    fn scrape(&self) -> String {
        common::http_get(self.metrics, "/metrics")
            .map(|(_, t)| t)
            .unwrap_or_default()
    }

    /// The first scrape `done` accepts, within 20 s.
    fn until(&self, what: &str, done: &dyn Fn(&str) -> bool) -> String {
        let t = Instant::now();
        loop {
            let text = self.scrape();
            if done(&text) {
                return text;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "no {what} in 20 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    fn hup(&self) {
        // SAFETY: a signal to our own child, which is alive until dropped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
    }
}

impl Drop for GroxyRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const RELOADED: &str = "groxy_config_reloads_total{result=\"success\"}";
const RELOAD_FAILED: &str = "groxy_config_reloads_total{result=\"failure\"}";

/// `<dir>/groxy.toml` for epoch `g` of one group at `group` checked under enforce, two
/// forwarding threads with one egress port each (the port a fan-out leaves by tells the
/// thread), and with `member` the proxy's own membership (Sender ID 0x50).
fn write_toml(
    dir: &std::path::Path,
    g: &Group,
    group: std::net::SocketAddrV4,
    (listen, metrics): (u16, u16),
    member: bool,
) {
    let kg = g.key_generation;
    let sek = format!("sek{kg}");
    common::files::secret(&dir.join(&sek), &common::files::sek(g));
    let gid = format!("gid = \"{}\"", hex::encode(&g.gid));
    let mut text = common::files::checking_proxy_toml(g, group.port(), &sek)
        .replace(
            "listen = [\"127.0.0.1:0\"]",
            &format!(
                "listen = [\"127.0.0.1:{listen}\"]\nmetrics = \"127.0.0.1:{metrics}\"\nthreads = 2"
            ),
        )
        .replace(&gid, &format!("{gid}\nkey_generation = {kg}"));
    if member {
        let m = g.member(PROXY_ID);
        common::files::secret(&dir.join(format!("master{kg}")), &g.master_secret);
        common::files::secret(&dir.join("proxy.key"), &m.key.to_bytes());
        text += &format!(
            "master_secret_file = \"master{kg}\"\nmaster_salt = \"{}\"\nsender_id = \"{}\"\n\
             private_key_file = \"proxy.key\"\ncredential = \"{}\"\n",
            hex::encode(&g.master_salt),
            hex::encode(PROXY_ID),
            hex::encode(m.cred.bytes()),
        );
    }
    text += "[limits]\negress_ports = 1\n";
    std::fs::write(dir.join("groxy.toml"), text).unwrap();
}

/// `groxy run` with `threads = 2` and SIGHUP, as an operator rekeys (RFC 10021 §12.2;
/// the systemd unit's ExecReload): once the reload is reported, every thread checks
/// under the new epoch only. Requests of the old epoch, fresh ones from 48 client ports
/// spread over both threads, are refused by both (counted, none multicast); the new
/// epoch's are forwarded by both; the reload is counted once for the proxy, not once per
/// thread. A second SIGHUP with a broken file changes no thread (counted as one failure).
#[test]
fn s12_2_sighup_rekeys_every_thread_at_once() {
    let e1 = Group::new(&[CLIENT, DEV_A]);
    let e2 = e1.rekeyed();
    let dir = wire::temp("sighup");
    std::fs::create_dir_all(&dir).unwrap();
    let group =
        std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(224, 0, 1, 187), common::free_port());
    let ports = (common::free_port(), common::free_tcp_port());
    let proxy_addr: SocketAddr = ([127, 0, 0, 1], ports.0).into();
    let cfg = dir.join("groxy.toml");
    write_toml(&dir, &e1, group, ports, false);
    // Bound before the proxy starts: none of its ephemeral egress ports can take the
    // group's port then.
    let member = wire::member(group);
    let p = GroxyRun::start(&dir, ([127, 0, 0, 1], ports.1).into());
    let clients: Vec<std::net::UdpSocket> = (0..48).map(|_| wire::client()).collect();
    let mut mid = 0u16;
    // One fresh request per client port under `ctx`; the egress ports the fan-outs
    // left by (one per thread).
    let mut round = |ctx: &mut SecurityContext| {
        for s in &clients {
            mid += 1;
            s.send_to(&wire::request(ctx, mid, group), proxy_addr)
                .unwrap();
        }
        let got = wire::received(&member, Duration::from_millis(1500));
        let threads: std::collections::BTreeSet<u16> =
            got.iter().map(|(from, _)| from.port()).collect();
        (got.len(), threads.len())
    };
    let mut old = wire::ctx(&e1);
    let mut new = wire::ctx(&e2);
    assert_eq!(round(&mut old), (48, 2), "epoch 1 through both threads");

    write_toml(&dir, &e2, group, ports, false);
    p.hup();
    p.until("reload", &|t| sample(t, RELOADED) == 1.0);
    let (n, _) = round(&mut old);
    assert_eq!(
        n, 0,
        "no thread forwards under the old epoch after the reload"
    );
    assert_eq!(round(&mut new), (48, 2), "epoch 2 through both threads");

    // A broken file: the reload fails, once, and every thread keeps epoch 2.
    std::fs::write(&cfg, "[proxy\n").unwrap();
    p.hup();
    let text = p.until("failed reload", &|t| sample(t, RELOAD_FAILED) == 1.0);
    assert_eq!(sample(&text, RELOADED), 1.0, "the reload counted once");
    assert_eq!(round(&mut new), (48, 2), "epoch 2 still on both threads");

    let text = p.scrape();
    let checks = |result: &str| {
        sample(
            &text,
            &format!(
                "groxy_signature_checks_total{{direction=\"request\",group=\"secure\",policy=\"enforce\",result=\"{result}\"}}"
            ),
        )
    };
    assert_eq!(checks("valid"), 3.0 * 48.0);
    let refused: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with("groxy_signature_checks_total{direction=\"request\"")
                && !l.contains("result=\"valid\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(refused, 48.0, "every old-epoch request counted:\n{text}");
    assert_eq!(sample(&text, "groxy_key_generation{group=\"secure\"}"), 1.0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// RFC 10021 §2.6.1.1: membership that starts with a reload begins at Sender Sequence
/// Number 0, which is sound only where the state directory never recorded numbers for
/// the group. With a `.ssn` file of an earlier membership the reload is refused (counted
/// as a failure, restart to apply: the start continues above the bound); without one it
/// is applied and its first block recorded with its epoch.
#[test]
fn s2_6_1_1_membership_started_by_a_reload_never_restarts_recorded_numbers() {
    let g = Group::new(&[CLIENT, DEV_A, PROXY_ID]);
    let dir = wire::temp("reload-member");
    std::fs::create_dir_all(&dir).unwrap();
    let group =
        std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(224, 0, 1, 187), common::free_port());
    let ports = (common::free_port(), common::free_tcp_port());
    let metrics: SocketAddr = ([127, 0, 0, 1], ports.1).into();
    let ssn_file = dir.join("state/secure.ssn");
    let recorded = || std::fs::read_to_string(&ssn_file).ok();
    let block = groxy::proxy::engine::SSN_BLOCK;

    // No numbers recorded: the reload makes the proxy a member, at 0.
    write_toml(&dir, &g, group, ports, false);
    let p = GroxyRun::start(&dir, metrics);
    assert_eq!(recorded(), None);
    write_toml(&dir, &g, group, ports, true);
    p.hup();
    p.until("reload", &|t| sample(t, RELOADED) == 1.0);
    let first = format!("{block} 0 {}", hex::encode(&g.gid));
    assert_eq!(recorded().as_deref().map(str::trim), Some(&*first));
    drop(p);

    // Numbers recorded (that membership's): not a member at start, then a reload that
    // would make it one again from 0 is refused.
    write_toml(&dir, &g, group, ports, false);
    let p = GroxyRun::start(&dir, metrics);
    write_toml(&dir, &g, group, ports, true);
    p.hup();
    let text = p.until("failed reload", &|t| sample(t, RELOAD_FAILED) == 1.0);
    assert_eq!(sample(&text, RELOADED), 0.0);
    assert!(
        p.log().contains("membership starts with this reload"),
        "{}",
        p.log()
    );
    assert_eq!(recorded().as_deref().map(str::trim), Some(&*first));
    drop(p);

    // The restart applies it, above the recorded bound.
    let p = GroxyRun::start(&dir, metrics);
    assert_eq!(
        recorded().as_deref().map(str::trim),
        Some(&*format!("{} 0 {}", 2 * block, hex::encode(&g.gid)))
    );
    drop(p);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------
// The proxy as a group member on every thread (issue 14 point 2): its own OSCORE layer
// (RFC 10021 §8; oscore-capable-proxies §2) is the whole proxy's, not a thread's.

const PROXY_ID: &[u8] = &[0x50];
const OBSERVE: u16 = 6;
const ORIGIN: &str = "127.0.0.9:5683";

/// Group 0 with the proxy as member PROXY_ID (no signature checking: the layer alone).
fn member_config(g: &Group) -> ProxyConfig {
    let mut cfg = ProxyConfig::default();
    cfg.groups[0].security = Some(GroupSecurity {
        policy: Policy::Off,
        checker: g.checker_config(),
        member: Some(g.config(PROXY_ID)),
        allow_kids: None,
    });
    cfg
}

/// What an engine sends, and the SSN reservations it asks for (which the engine tests'
/// `common::outputs` leaves out).
fn drain(e: &mut Engine) -> (Vec<Transmit>, Vec<u64>) {
    let (mut tx, mut reserve) = (vec![], vec![]);
    while let Some(o) = e.poll_output() {
        match o {
            groxy::proxy::Output::Transmit(t) => tx.push(t),
            groxy::proxy::Output::ReserveSsn { group: 0, up_to } => reserve.push(up_to),
            _ => {}
        }
    }
    (tx, reserve)
}

/// The Partial IV of a protected message, as a number.
fn piv_of(datagram: &[u8]) -> Option<u64> {
    let v = MessageView::parse(datagram).ok()?;
    let o = groxy::oscore::option::OscoreOption::parse(v.option(opt::OSCORE)?).ok()?;
    o.piv
        .map(|p| p.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b)))
}

/// A GET of the proxy's own /status through its layer, in `mode`, with `echo` if given.
fn status_request(
    ctx: &mut SecurityContext,
    mode: Mode,
    mid: u16,
    echo: Option<&[u8]>,
) -> (Vec<u8>, groxy::oscore::Exchange) {
    let mut opts: Vec<(u16, &[u8])> = vec![(opt::URI_PATH, b"status")];
    if let Some(e) = echo {
        opts.push((opt::ECHO, e));
    }
    let inner = build::encode(
        build::CON,
        code::GET,
        mid,
        &mid.to_be_bytes(),
        &mut opts,
        &[],
    );
    ctx.protect_request_layer(&inner, mode, Some(PROXY_ID), groxy::oscore::Layer::Hop)
        .unwrap()
}

/// An observation of the origin through the proxy's layer, registered on `e` from
/// `client`: the request the proxy forwarded to the origin.
fn observe_through_layer(
    e: &mut Engine,
    now: Instant,
    ctx: &mut SecurityContext,
    client: SocketAddr,
    token: &[u8],
) -> (Transmit, groxy::oscore::Exchange) {
    let inner = build::encode(
        NON,
        code::GET,
        1,
        token,
        &mut [
            (opt::URI_HOST, b"127.0.0.9"),
            (OBSERVE, &[]),
            (opt::PROXY_SCHEME, b"coap"),
        ],
        &[],
    );
    let (wrapped, ex) = ctx
        .protect_request_layer(
            &inner,
            Mode::Pairwise,
            Some(PROXY_ID),
            groxy::oscore::Layer::Hop,
        )
        .unwrap();
    e.handle(now, Link::Listener(0), client, &wrapped);
    let (tx, _) = drain(e);
    let fwd = tx
        .into_iter()
        .find(|t| t.to == ORIGIN.parse().unwrap())
        .expect("forwarded to the origin");
    (fwd, ex)
}

/// The origin's notification `seq` of the observation `fwd` started: what the proxy
/// sent, and the reservations it asked for.
fn notify(e: &mut Engine, now: Instant, fwd: &Transmit, seq: u8) -> (Vec<Transmit>, Vec<u64>) {
    let v = MessageView::parse(&fwd.bytes).unwrap();
    let n = build::encode(
        NON,
        code::CONTENT,
        1000 + u16::from(seq),
        v.token(),
        &mut [(OBSERVE, &[seq])],
        b"n",
    );
    e.handle(now, fwd.link, ORIGIN.parse().unwrap(), &n);
    drain(e)
}

/// Notifications `seqs` through the two engines in turn (odd ones through `a`, even
/// ones through `b`): the Partial IVs of what went out, and the reservations asked for.
fn alternate(
    (a, b): (&mut Engine, &mut Engine),
    (fa, fb): (&Transmit, &Transmit),
    now: Instant,
    seqs: std::ops::RangeInclusive<u8>,
) -> (Vec<u64>, Vec<u64>) {
    let (mut pivs, mut reservations) = (Vec::new(), Vec::new());
    for i in seqs {
        let (e, f) = if i % 2 == 1 {
            (&mut *a, fa)
        } else {
            (&mut *b, fb)
        };
        let (tx, r) = notify(e, now, f, i);
        reservations.extend(r);
        pivs.extend(tx.iter().filter_map(|t| piv_of(&t.bytes)));
    }
    (pivs, reservations)
}

/// RFC 10021 §2.6.1.1 and RFC 8613 §7.2.1 (oscore-capable-proxies §2.5.1: each
/// notification under the proxy's layer has a Partial IV of its own): with two engines
/// of one proxy protecting notifications alternately, every Partial IV is distinct and
/// below what stable storage covers; exactly one reservation is asked for at a time for
/// the whole proxy, and once recorded both engines go on above the old bound. A rekey
/// applied by both (§2.6.3.2) restarts the numbers at 0 once: the second engine to apply
/// it continues the first one's numbers instead of starting again.
#[test]
fn s2_6_1_1_two_threads_never_share_a_partial_iv_nor_pass_the_reserved_bound() {
    let g = Group::new(&[CLIENT, PROXY_ID]);
    let cfg = member_config(&g);
    let now = Instant::now();
    let (mut a, mut b) = pair(&cfg, now);
    // The runtime restores once, on its first thread: 8 numbers on stable storage.
    a.restore_member(0, 0, 8, false);
    let mut ctx = SecurityContext::new(&g.config(CLIENT)).unwrap();
    let (fa, _) = observe_through_layer(&mut a, now, &mut ctx, from(1, 1000), b"oa");
    let (fb, _) = observe_through_layer(&mut b, now, &mut ctx, from(2, 2000), b"ob");
    let (pivs, reservations) = alternate((&mut a, &mut b), (&fa, &fb), now, 1..=12);
    let answered = pivs.len();
    let mut sorted = pivs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        pivs.len(),
        "a Partial IV used twice: {pivs:?}"
    );
    assert!(
        pivs.iter().all(|p| *p < 8),
        "past the reserved bound: {pivs:?}"
    );
    assert_eq!(
        answered, 8,
        "the 8 reserved numbers, then nothing: {pivs:?}"
    );
    assert_eq!(
        reservations.len(),
        1,
        "one reservation in flight for the whole proxy: {reservations:?}"
    );
    // Recorded (by whichever thread asked): both engines go on, above the old bound.
    a.ssn_reserved(0, reservations[0]);
    let (more, _) = alternate((&mut a, &mut b), (&fa, &fb), now, 13..=16);
    assert_eq!(more, vec![8, 9, 10, 11], "both go on from the shared bound");

    // A rekey applied by both threads, one after the other.
    let g2 = g.rekeyed();
    let cfg2 = member_config(&g2);
    a.reconfigure(now, cfg2.clone()).unwrap();
    let (_, ra) = drain(&mut a);
    b.reconfigure(now, cfg2).unwrap();
    let (_, rb) = drain(&mut b);
    assert_eq!(
        (ra.len(), rb.len()),
        (1, 0),
        "the new epoch's first block is reserved once"
    );
    a.ssn_reserved(0, ra[0]);
    let (after, _) = alternate((&mut a, &mut b), (&fa, &fb), now, 17..=20);
    assert_eq!(
        after,
        vec![0, 1, 2, 3],
        "the new epoch from 0, once for both"
    );
}

/// RFC 8613 §7.4 (RFC 10021 §8; oscore-capable-proxies §2): a request to the proxy's own
/// layer accepted on one thread is a replay on every other, from whichever address, in
/// pairwise and in group mode: the second engine answers 4.01 "Replay detected" and acts
/// on nothing.
#[test]
fn s7_4_a_request_to_the_proxys_layer_is_a_replay_on_the_other_thread() {
    let g = Group::new(&[CLIENT, PROXY_ID]);
    let cfg = member_config(&g);
    let now = Instant::now();
    let (mut a, mut b) = pair(&cfg, now);
    let mut ctx = SecurityContext::new(&g.config(CLIENT)).unwrap();
    for (i, mode) in [Mode::Pairwise, Mode::Group].into_iter().enumerate() {
        let (req, mut ex) = status_request(&mut ctx, mode, 10 + i as u16, None);
        a.handle(now, Link::Listener(0), from(1, 1000), &req);
        let (tx, _) = drain(&mut a);
        let (plain, _) = ctx.unprotect_response(&tx[0].bytes, &mut ex).unwrap();
        assert_eq!(MessageView::parse(&plain).unwrap().code(), code::CONTENT);
        b.handle(now, Link::Listener(0), from(2, 2000), &req);
        let (tx, _) = drain(&mut b);
        assert_eq!(tx.len(), 1, "{mode:?}");
        let v = MessageView::parse(&tx[0].bytes).unwrap();
        assert_eq!(v.code(), code::UNAUTHORIZED, "{mode:?}");
        assert_eq!(v.payload(), b"Replay detected", "{mode:?}");
    }
}

/// RFC 8613 §7.4: the update after verification is a check-and-set on the shared window,
/// so two engines handling the same requests at the same moment (each passes the early
/// check before the other updated) accept each request once between them.
#[test]
fn s7_4_two_threads_at_once_accept_each_request_to_the_layer_once() {
    let g = Group::new(&[CLIENT, PROXY_ID]);
    let cfg = member_config(&g);
    let now = Instant::now();
    let (a, b) = pair(&cfg, now);
    let mut ctx = SecurityContext::new(&g.config(CLIENT)).unwrap();
    let reqs: Vec<Vec<u8>> = (0..200u16)
        .map(|i| status_request(&mut ctx, Mode::Pairwise, i, None).0)
        .collect();
    let reqs = std::sync::Arc::new(reqs);
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let runs: Vec<_> = [(a, 1u8), (b, 2u8)]
        .into_iter()
        .map(|(mut e, ip)| {
            let (reqs, barrier) = (reqs.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut ok = 0;
                for r in reqs.iter() {
                    e.handle(now, Link::Listener(0), from(ip, 1000), r);
                    let (tx, _) = drain(&mut e);
                    if tx
                        .iter()
                        .any(|t| MessageView::parse(&t.bytes).unwrap().code() != code::UNAUTHORIZED)
                    {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();
    let accepted: usize = runs.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(accepted, 200, "each request acted on exactly once");
}

/// RFC 10021 §9 (RFC 9175 §2.3): after lost state, the Echo value the proxy sent is what
/// it accepts, whichever thread the retry reaches (it may come from another port), and a
/// value is the proxy's latest for that client: one thread's new challenge supersedes the
/// other's, so each value is good once, proxy-wide.
#[test]
fn s9_an_echo_value_from_one_thread_is_accepted_on_the_other_once() {
    let g = Group::new(&[CLIENT, PROXY_ID]);
    let cfg = member_config(&g);
    let now = Instant::now();
    let (mut a, mut b) = pair(&cfg, now);
    // Restored after lost state, on both (a second restore before any traffic is
    // idempotent on shared state): every window invalid until Echo.
    a.restore_member(0, 0, 4096, true);
    b.restore_member(0, 0, 4096, true);
    let mut ctx = SecurityContext::new(&g.config(CLIENT)).unwrap();
    let mut mid = 0u16;
    let mut ask = |e: &mut Engine, port: u16, echo: Option<&[u8]>| -> (u8, Option<Vec<u8>>) {
        mid += 1;
        let (req, mut ex) = status_request(&mut ctx, Mode::Pairwise, mid, echo);
        e.handle(now, Link::Listener(0), from(1, port), &req);
        let (tx, _) = drain(e);
        let (plain, _) = ctx.unprotect_response(&tx[0].bytes, &mut ex).unwrap();
        let v = MessageView::parse(&plain).unwrap();
        (v.code(), v.option(opt::ECHO).map(<[u8]>::to_vec))
    };
    let (c, e1) = ask(&mut a, 1000, None);
    assert_eq!(c, code::UNAUTHORIZED);
    let (c, e2) = ask(&mut b, 2000, None);
    assert_eq!(c, code::UNAUTHORIZED, "lost state on every thread");
    let (e1, e2) = (e1.unwrap(), e2.unwrap());
    // Thread b's challenge superseded thread a's value, on thread a too.
    assert_eq!(ask(&mut a, 1000, Some(&e1)).0, code::UNAUTHORIZED);
    let (c, e3) = ask(&mut a, 1000, None);
    assert_eq!(c, code::UNAUTHORIZED);
    // The value from thread a, echoed to thread b from another port.
    assert_eq!(ask(&mut b, 2000, Some(&e3.unwrap())).0, code::CONTENT);
    // Freshness holds from then on, on both threads, without Echo.
    assert_eq!(ask(&mut a, 1000, None).0, code::CONTENT);
    assert_eq!(ask(&mut b, 2000, None).0, code::CONTENT);
    assert_eq!(e2.len(), 8);
}

/// RFC 10021 §2.6.3.2 (§12.2): once one thread applied a rekey of the proxy's membership,
/// a thread still on the old configuration admits nothing under the old Gid through the
/// proxy's layer (4.01, as an unknown context), as the checker's shared epoch does for
/// group requests; once it applied the rekey too, the new epoch is served there.
#[test]
fn s2_6_3_2_a_member_rekey_on_one_thread_stops_the_old_layer_on_the_other() {
    let g = Group::new(&[CLIENT, PROXY_ID]);
    let cfg = member_config(&g);
    let now = Instant::now();
    let (mut a, mut b) = pair(&cfg, now);
    let mut old = SecurityContext::new(&g.config(CLIENT)).unwrap();
    let g2 = g.rekeyed();
    a.reconfigure(now, member_config(&g2)).unwrap();
    let (req, _) = status_request(&mut old, Mode::Pairwise, 1, None);
    b.handle(now, Link::Listener(0), from(2, 2000), &req);
    let (tx, _) = drain(&mut b);
    let v = MessageView::parse(&tx[0].bytes).unwrap();
    assert_eq!(v.code(), code::UNAUTHORIZED);
    assert_eq!(v.payload(), b"Security context not found");
    b.reconfigure(now, member_config(&g2)).unwrap();
    let mut new = SecurityContext::new(&g2.config(CLIENT)).unwrap();
    let (req, mut ex) = status_request(&mut new, Mode::Pairwise, 2, None);
    b.handle(now, Link::Listener(0), from(2, 2000), &req);
    let (tx, _) = drain(&mut b);
    let (plain, _) = new.unprotect_response(&tx[0].bytes, &mut ex).unwrap();
    assert_eq!(MessageView::parse(&plain).unwrap().code(), code::CONTENT);
}

/// RFC 10021 §2.6.1.1: a reservation whose write failed (`Engine::ssn_reservation_failed`)
/// leaves the group's one reservation slot free, so that the next answer, on whichever
/// thread, asks again instead of the proxy running into its bound with no reservation
/// ever asked for again; nothing past the recorded bound is used meanwhile.
#[test]
fn s2_6_1_1_a_failed_reservation_is_asked_again_by_the_next_answer_on_any_thread() {
    let g = Group::new(&[CLIENT, PROXY_ID]);
    let cfg = member_config(&g);
    let now = Instant::now();
    let (mut a, mut b) = pair(&cfg, now);
    a.restore_member(0, 0, 8, false);
    let mut ctx = SecurityContext::new(&g.config(CLIENT)).unwrap();
    let (fa, _) = observe_through_layer(&mut a, now, &mut ctx, from(1, 1000), b"oa");
    let (fb, _) = observe_through_layer(&mut b, now, &mut ctx, from(2, 2000), b"ob");
    let (_, r) = notify(&mut a, now, &fa, 1);
    assert_eq!(r.len(), 1, "asked");
    let (_, r) = notify(&mut b, now, &fb, 2);
    assert!(r.is_empty(), "one in flight");
    a.ssn_reservation_failed(0);
    let (tx, r) = notify(&mut b, now, &fb, 3);
    assert_eq!(r.len(), 1, "asked again, by the other thread");
    assert!(tx.iter().filter_map(|t| piv_of(&t.bytes)).all(|p| p < 8));
}

/// RFC 10021 §2.6.3.2 with two reloads in a row: a thread that applies the older of two
/// new epochs after another thread already installed the newer one neither protects nor
/// admits under it (its numbers would start a space of their own at 0 beside the newer
/// epoch's); once it applies the newer one it joins that epoch's numbers.
#[test]
fn s2_6_3_2_a_thread_late_with_an_older_epoch_neither_sends_nor_admits_under_it() {
    let g = Group::new(&[CLIENT, PROXY_ID]);
    let now = Instant::now();
    let (mut a, mut b) = pair(&member_config(&g), now);
    let (g2, g3) = {
        let g2 = g.rekeyed();
        let g3 = g2.rekeyed();
        (g2, g3)
    };
    a.reconfigure(now, member_config(&g2)).unwrap();
    a.reconfigure(now, member_config(&g3)).unwrap();
    let (_, ra) = drain(&mut a);
    b.reconfigure(now, member_config(&g2)).unwrap();
    let (_, rb) = drain(&mut b);
    assert!(rb.is_empty(), "no reservation for the superseded epoch");
    let mut c2 = SecurityContext::new(&g2.config(CLIENT)).unwrap();
    let (req, _) = status_request(&mut c2, Mode::Pairwise, 1, None);
    b.handle(now, Link::Listener(0), from(2, 2000), &req);
    let (tx, _) = drain(&mut b);
    assert_eq!(
        MessageView::parse(&tx[0].bytes).unwrap().code(),
        code::UNAUTHORIZED
    );
    b.reconfigure(now, member_config(&g3)).unwrap();
    a.ssn_reserved(0, *ra.last().unwrap());
    let mut c3 = SecurityContext::new(&g3.config(CLIENT)).unwrap();
    let (fa, _) = observe_through_layer(&mut a, now, &mut c3, from(1, 1000), b"oa");
    let (fb, _) = observe_through_layer(&mut b, now, &mut c3, from(2, 2000), b"ob");
    let pivs: Vec<u64> = [(&mut a, &fa, 1u8), (&mut b, &fb, 2)]
        .into_iter()
        .flat_map(|(e, f, i)| notify(e, now, f, i).0)
        .filter_map(|t| piv_of(&t.bytes))
        .collect();
    assert_eq!(pivs, vec![0, 1], "one space for the newest epoch");
}
