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
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Drop for Running {
        fn drop(&mut self) {
            if let Some(s) = self.stop.take() {
                let _ = s.send(());
            }
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
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
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (mtx, mrx) = std::sync::mpsc::channel();
        let cfg = run.proxy.clone();
        let thread = std::thread::spawn(move || {
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
            stop: Some(tx),
            thread: Some(thread),
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

/// RFC 10021 §2.6.1.1: the proxy as a group member must never reuse a Sender Sequence
/// Number. Its own OSCORE layer (sequence numbers, its peers' replay windows) is not
/// shared between threads, so while it is a member one thread forwards whatever
/// `threads` says: its reservations have one writer, and no second engine could draw
/// numbers of its own.
#[test]
fn s2_6_1_1_a_member_proxy_runs_one_forwarding_thread() {
    let g = Group::new(&[CLIENT, DEV_A, &[0x50]]);
    let dir = wire::temp("member");
    let mut run = groxy::settings::load_default().run;
    let mut sec = checked_config(&g).groups[0].security.clone().unwrap();
    sec.member = Some(g.config(&[0x50]));
    run.proxy.groups[0].security = Some(sec);
    run.proxy.threads = 2;
    run.listen = vec!["127.0.0.1:0".parse().unwrap()];
    run.state_dir = Some(dir.clone());
    let p = Proxy2::bind(run.clone()).unwrap();
    assert_eq!(p.threads(), 1);
    drop(p);
    // Without membership the same configuration runs two.
    run.proxy.groups[0].security.as_mut().unwrap().member = None;
    assert_eq!(Proxy2::bind(run).unwrap().threads(), 2);
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
