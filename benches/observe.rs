//! Observations through the engine (issue 12), without sockets, on a virtual clock: how
//! many the engine holds at once and what each costs in memory (resident set before and
//! after, so the exchange, the observation, its device and the tables' shares are all
//! in it), and how many notifications per second it relays (device datagram in, ordering,
//! rate bucket, Reply-From, the client's datagram out).
//!
//! Each observation is a group GET with Observe 0 from its own client address, answered
//! at once by one device with Observe so that it outlives T'. The clock moves 100 µs per
//! registration and 1 µs per notification; the notifications are spread over the
//! observations' clients so that no Message ID is reused toward a client within its
//! lifetime (RFC 7252 §4.4).
//!
//! Run: `cargo bench --bench observe` (optionally `-- N` observations, default 100000).
//! Figures measured on a shared machine vary with the other load on it.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use groxy::coap::MessageView;
use groxy::coap::build::{self, NON, code};
use groxy::coap::options as opt;
use groxy::proxy::{Engine, Link, Output, ProxyConfig};

const OBSERVE: u16 = 6;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn client(i: u32) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::from(0x0a00_0000 + i).into(), 40000)
}

fn drain(e: &mut Engine) -> (usize, Option<Vec<u8>>) {
    let (mut n, mut group) = (0, None);
    while let Some(o) = e.poll_output() {
        if let Output::Transmit(t) = o {
            n += 1;
            if matches!(t.link, Link::Group(..)) {
                group = Some(t.bytes);
            } else {
                e.recycle(t.bytes);
            }
        }
    }
    (n, group)
}

fn main() {
    let n: u32 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    // The reference file with room for every client endpoint's Message IDs (a field the
    // crate keeps to itself, so through the configuration file).
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/groxy.toml"))
        .unwrap()
        .replace(
            "max_destinations = 65536",
            &format!("max_destinations = {}", 2 * n as usize + 64),
        );
    let mut cfg: ProxyConfig = groxy::settings::load_str(&text).unwrap().run.proxy;
    cfg.groups[0].allow = vec!["0.0.0.0/0".parse().unwrap()];
    cfg.groups[0].max_timeout = Duration::from_secs(60);
    let l = &mut cfg.limits;
    l.max_exchanges = n as usize + 16;
    l.max_clients = n as usize + 16;
    l.observe.max_observations = n as usize;
    l.observe.notification_rate = 1e12;
    l.observe.notification_burst = 1e12;
    l.dedup_capacity = 2 * n as usize + 16;
    let t0 = Instant::now();
    let mut now = t0;
    let mut e = Engine::new(cfg, now, 7).unwrap();
    let device: SocketAddr = "192.0.2.10:5683".parse().unwrap();
    let mtv = opt::uint_value(5);
    let mut tokens = Vec::with_capacity(n as usize);
    let before = rss_bytes();
    let wall = Instant::now();
    for i in 0..n {
        now += Duration::from_micros(100);
        let req = build::encode(
            NON,
            code::GET,
            1,
            &i.to_be_bytes(),
            &mut [
                (opt::URI_HOST, b"224.0.1.187"),
                (opt::PROXY_SCHEME, b"coap"),
                (OBSERVE, &[]),
                (opt::URI_PATH, b"temp"),
                (opt::MULTICAST_TIMEOUT_DEFAULT, &mtv),
            ],
            &[],
        );
        e.handle(now, Link::Listener(0), client(i), &req);
        let (_, reg) = drain(&mut e);
        let reg = reg.expect("registration multicast");
        let token = MessageView::parse(&reg).unwrap().token().to_vec();
        let first = build::encode(
            NON,
            code::CONTENT,
            i as u16,
            &token,
            &mut [(OBSERVE, &[1])],
            b"20.5",
        );
        e.handle(now, Link::Group(0, 0), device, &first);
        drain(&mut e);
        tokens.push(token);
    }
    let took = wall.elapsed();
    // Past every T': all are kept as observations.
    now += Duration::from_secs(61);
    e.handle_timeout(now);
    drain(&mut e);
    let after = rss_bytes();
    let (held, _) = e.observations();
    println!(
        "observations held: {held} of {n}; registered in {:.2} s ({:.0}/s); resident {:.1} MiB -> {:.1} MiB: {:.0} bytes per observation",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        (after.saturating_sub(before)) as f64 / n as f64
    );

    // Notifications: round robin over the observations, increasing Observe numbers.
    let rounds = 10u32;
    let mut relayed = 0usize;
    let mut sent = 0u64;
    let wall = Instant::now();
    for r in 0..rounds {
        let seq = opt::uint_value(2 + r);
        for (i, token) in tokens.iter().enumerate() {
            now += Duration::from_micros(1);
            let msg = build::encode(
                NON,
                code::CONTENT,
                (i as u32 ^ r) as u16,
                token,
                &mut [(OBSERVE, &seq)],
                b"21.0",
            );
            e.handle(now, Link::Group(0, 0), device, &msg);
            relayed += drain(&mut e).0;
            sent += 1;
        }
    }
    let took = wall.elapsed();
    println!(
        "notifications: {sent} in, {relayed} datagrams out in {:.2} s: {:.0} notifications relayed per second ({:.2} µs each) with {held} observations held",
        took.as_secs_f64(),
        relayed as f64 / took.as_secs_f64(),
        took.as_secs_f64() * 1e6 / sent as f64
    );
    assert_eq!(relayed as u64, sent, "every notification relayed");
}
