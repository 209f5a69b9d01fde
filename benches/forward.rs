//! The engine's own cost per forwarded request, without sockets: a NON request with a
//! Proxy-Uri from a client, the datagram toward the origin, the origin's response, the
//! response relayed to the client, the exchange closed; on a virtual clock that moves 1 µs
//! per request, with buffers handed back as the driver does. What the load bench
//! measures adds the kernel's UDP path to this; here the figure is steady enough to
//! compare two builds of the engine.
//!
//! Beside it, the refusal paths (issue 17): a request refused with 4.04 (no proxy
//! target) and one refused with 5.03 at a full exchange table, whose Max-Age comes from
//! the earliest live deadline; a refusal must cost no more than a 4.04, or a full table
//! turns every further request into CPU work.
//!
//! The virtual clock moves 1 ms per request, and the client rotates over 64 source
//! ports: at that rate no Message ID is reused toward the origin or a client endpoint
//! within its lifetime (RFC 7252 §4.4), as the engine requires.
//!
//! The deduplication table alone (issue 14), the current one beside the one before it
//! (benches/forward/dedup_old.rs) in the same run, each sized as the defaults now are
//! (2 Mi entries, 262,144 per client): a population of 256 client addresses x 4 ports
//! sending 7,000 NON requests/s on a virtual clock, measured once the table holds a
//! whole NON_LIFETIME of them (~1 M entries), with the engine's 5 s sweep; the bytes
//! per entry of each are printed (by their containers' capacities).
//!
//! Run: `cargo bench --bench forward`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use groxy::coap::MessageView;
use groxy::coap::build::{self, CON, NON, code};
use groxy::coap::options as opt;
use groxy::proxy::{DedupBench, Engine, Link, Output, ProxyConfig};

#[path = "forward/dedup_old.rs"]
mod dedup_old;

/// A client population's NON requests into a deduplication table (old or new), as the
/// engine makes them: lookup, room, record; the sweep every 5 s of virtual time.
struct DedupLoad<T> {
    table: T,
    t0: Instant,
    now: Instant,
    next_sweep: Instant,
    n: u64,
}

const DEDUP_RATE: u64 = 7_000;

trait Table {
    fn request(&mut self, from: SocketAddr, mid: u16, now: Instant) -> Option<bool>;
    fn expire(&mut self, now: Instant);
    fn bytes(&self) -> usize;
    fn entries(&self) -> usize;
}

impl Table for DedupBench {
    fn request(&mut self, from: SocketAddr, mid: u16, now: Instant) -> Option<bool> {
        DedupBench::request(self, from, mid, now, false)
    }
    fn expire(&mut self, now: Instant) {
        DedupBench::expire(self, now)
    }
    fn bytes(&self) -> usize {
        self.heap_bytes()
    }
    fn entries(&self) -> usize {
        self.len()
    }
}

impl Table for dedup_old::Dedup {
    fn request(&mut self, from: SocketAddr, mid: u16, now: Instant) -> Option<bool> {
        dedup_old::Dedup::request(self, from, mid, now, false)
    }
    fn expire(&mut self, now: Instant) {
        dedup_old::Dedup::expire(self, now)
    }
    fn bytes(&self) -> usize {
        self.heap_bytes()
    }
    fn entries(&self) -> usize {
        self.len()
    }
}

impl<T: Table> DedupLoad<T> {
    /// Filled with 150 s of requests: every later one meets a full NON_LIFETIME.
    fn new(table: T) -> Self {
        let now = Instant::now();
        let mut l = DedupLoad {
            table,
            t0: now,
            now,
            next_sweep: now,
            n: 0,
        };
        for _ in 0..150 * DEDUP_RATE {
            assert_eq!(l.request(), Some(true));
        }
        l
    }

    /// The next request: client n mod 1024 (256 addresses x 4 ports), each endpoint's
    /// Message IDs in turn (one comes back after 1024 x 65,536 requests, > 145 s).
    fn request(&mut self) -> Option<bool> {
        self.n += 1;
        let n = self.n;
        self.now = self.t0 + Duration::from_nanos(n * 1_000_000_000 / DEDUP_RATE);
        if self.now >= self.next_sweep {
            self.table.expire(self.now);
            self.next_sweep = self.now + Duration::from_secs(5);
        }
        let e = n % 1024;
        let from = SocketAddr::from(([10, 1, (e >> 2) as u8, 1], 20_000 + (e & 3) as u16));
        self.table.request(from, (n / 1024) as u16, self.now)
    }
}

struct Run {
    engine: Engine,
    now: Instant,
    n: u64,
    origin: SocketAddr,
    response: Vec<u8>,
}

impl Run {
    fn new() -> Self {
        let mut cfg = ProxyConfig::default();
        // One client sending more than its rate limit allows (on the virtual clock); the
        // deduplication table at its default size (issue 14: it is on the hot path).
        cfg.limits.client_rate = 1e12;
        cfg.limits.client_burst = 1e12;
        cfg.limits.max_exchanges_per_client = 1 << 20;
        let now = Instant::now();
        Run {
            engine: Engine::new(cfg, now, 42).unwrap(),
            now,
            n: 0,
            origin: "127.0.0.1:5683".parse().unwrap(),
            response: Vec::new(),
        }
    }

    /// One request and its response through the engine; returns the datagrams out.
    fn exchange(&mut self) -> usize {
        self.n += 1;
        self.now += Duration::from_millis(1);
        let n = self.n;
        // 64 client ports x 65,536 Message IDs before a (port, MID) pair comes back.
        let client: SocketAddr = ([127, 0, 0, 1], 40_000 + (n % 64) as u16).into();
        let token = n.to_be_bytes();
        let request = build::encode(
            NON,
            code::GET,
            (n >> 6) as u16,
            &token[4..],
            &mut [
                (opt::PROXY_URI, &b"coap://127.0.0.1:5683/hello"[..]),
                (2, &[]),
            ],
            &[],
        );
        if self.engine.poll_timeout().is_some_and(|t| t <= self.now) {
            self.engine.handle_timeout(self.now);
        }
        self.engine
            .handle(self.now, Link::Listener(0), client, &request);
        let mut out = 0;
        let mut forwarded = None;
        while let Some(o) = self.engine.poll_output() {
            if let Output::Transmit(t) = o {
                out += 1;
                forwarded = Some(t.bytes);
            }
        }
        let fwd = forwarded.expect("forwarded to the origin");
        let v = MessageView::parse(&fwd).unwrap();
        build::encode_into(
            &mut self.response,
            NON,
            code::CONTENT,
            v.message_id(),
            v.token(),
            &mut [],
            b"hello",
        );
        self.engine.recycle(fwd);
        self.engine
            .handle(self.now, Link::Unicast(0), self.origin, &self.response);
        while let Some(o) = self.engine.poll_output() {
            if let Output::Transmit(t) = o {
                out += 1;
                self.engine.recycle(black_box(t.bytes));
            }
        }
        out
    }
}

/// A request that the engine refuses, over and over, with what it answers.
struct Refusal {
    engine: Engine,
    now: Instant,
    n: u64,
    request: fn(u64) -> Vec<u8>,
}

impl Refusal {
    /// `full`: the exchange table is filled first (long group exchanges), so that every
    /// request after it gets 5.03.
    fn new(full: bool, request: fn(u64) -> Vec<u8>) -> Self {
        Self::with(full, request, |_| {})
    }

    fn with(full: bool, request: fn(u64) -> Vec<u8>, tweak: fn(&mut ProxyConfig)) -> Self {
        let mut cfg = ProxyConfig::default();
        tweak(&mut cfg);
        cfg.limits.client_rate = 1e12;
        cfg.limits.client_burst = 1e12;
        cfg.limits.max_exchanges_per_client = 1 << 20;
        let now = Instant::now();
        let mut engine = Engine::new(cfg, now, 42).unwrap();
        if full {
            let client: SocketAddr = ([127, 0, 0, 2], 40_000).into();
            for i in 0..16_384u32 {
                let m = group_request(i as u16, &i.to_be_bytes(), 60);
                engine.handle(now, Link::Listener(0), client, &m);
                while engine.poll_output().is_some() {}
            }
            assert_eq!(engine.exchanges().0, 16_384);
        }
        Refusal {
            engine,
            now,
            n: 0,
            request,
        }
    }

    /// CON requests, so that each refusal is piggybacked on the ACK (no Message ID of
    /// the proxy's); the clock moves 1 ns, so that the table's exchanges stay live.
    fn refuse(&mut self) -> u8 {
        self.n += 1;
        self.now += Duration::from_nanos(1);
        let n = self.n;
        let client: SocketAddr = ([127, 0, 0, 1], 40_000 + (n % 64) as u16).into();
        let request = (self.request)(n);
        self.engine
            .handle(self.now, Link::Listener(0), client, &request);
        let mut code = 0;
        while let Some(o) = self.engine.poll_output() {
            if let Output::Transmit(t) = o {
                code = t.bytes[1];
                self.engine.recycle(black_box(t.bytes));
            }
        }
        code
    }
}

fn group_request(mid: u16, token: &[u8], timeout: u8) -> Vec<u8> {
    build::encode(
        NON,
        code::GET,
        mid,
        token,
        &mut [
            (opt::URI_HOST, &b"224.0.1.187"[..]),
            (2, &[timeout]),
            (opt::PROXY_SCHEME, b"coap"),
        ],
        &[],
    )
}

fn bench(c: &mut Criterion) {
    let mut run = Run::new();
    // Sanity: a request and its relayed response, every time.
    for _ in 0..1000 {
        assert_eq!(run.exchange(), 2);
    }
    c.bench_function("unicast_exchange_through_engine", |b| {
        b.iter(|| black_box(run.exchange()))
    });
    let mut not_found = Refusal::new(false, |n| {
        let token = n.to_be_bytes();
        build::encode(CON, code::GET, (n >> 6) as u16, &token[4..], &mut [], &[])
    });
    assert_eq!(not_found.refuse(), code::NOT_FOUND);
    c.bench_function("refusal_4_04_through_engine", |b| {
        b.iter(|| black_box(not_found.refuse()))
    });
    // A refusal of a request of the same shape as the 5.03's, for its parsing: a group
    // request from a client the allow-list does not name (4.01).
    let mut not_allowed = Refusal::with(
        false,
        |n| {
            let token = n.to_be_bytes();
            let mut m = group_request((n >> 6) as u16, &token[4..], 10);
            m[0] = (m[0] & 0xcf) | (CON << 4);
            m
        },
        |cfg| cfg.groups[0].allow = vec!["192.0.2.0/24".parse().unwrap()],
    );
    assert_eq!(not_allowed.refuse(), code::UNAUTHORIZED);
    c.bench_function("refusal_4_01_same_shape_through_engine", |b| {
        b.iter(|| black_box(not_allowed.refuse()))
    });
    let mut full = Refusal::new(true, |n| {
        let token = n.to_be_bytes();
        let mut m = group_request((n >> 6) as u16, &token[4..], 10);
        m[0] = (m[0] & 0xcf) | (CON << 4);
        m
    });
    assert_eq!(full.refuse(), code::SERVICE_UNAVAILABLE);
    c.bench_function("refusal_5_03_table_full_through_engine", |b| {
        b.iter(|| black_box(full.refuse()))
    });
}

fn dedup(c: &mut Criterion) {
    let d = ProxyConfig::default().limits;
    let mut new = DedupLoad::new(DedupBench::new(d.dedup_capacity, d.dedup_per_client));
    let mut old = DedupLoad::new(dedup_old::Dedup::new(d.dedup_capacity, d.dedup_per_client));
    for (name, bytes, entries) in [
        ("current", new.table.bytes(), new.table.entries()),
        ("before issue 14", old.table.bytes(), old.table.entries()),
    ] {
        println!(
            "dedup table ({name}): {entries} entries, {:.1} MiB, {:.1} bytes per entry",
            bytes as f64 / (1 << 20) as f64,
            bytes as f64 / entries as f64
        );
    }
    c.bench_function("dedup_request_current", |b| {
        b.iter(|| black_box(new.request()))
    });
    c.bench_function("dedup_request_before_issue_14", |b| {
        b.iter(|| black_box(old.request()))
    });
}

criterion_group!(benches, bench, dedup);
criterion_main!(benches);
