//! The response cache's hit path against its miss path through the engine (issue 16),
//! without sockets, on a virtual clock that moves 1 ms per request.
//!
//! - hit: a group GET (T' = 5 s) that a complete fresh set of two devices answers from
//!   the cache alone: the two stored responses go to the client with Reply-From, aged
//!   Max-Age and the Group-ETag; nothing reaches the group.
//! - miss: the same group GET with a Uri-Query of its own each time (a new Cache-Key):
//!   the fan-out datagram, both devices' responses stored and relayed, the entries over
//!   the bound evicted (the cache is full from the start), the exchange closed at T'.
//!
//! The client rotates over 64 source ports and the Message IDs of each in turn, so that
//! none is reused within its lifetime (RFC 7252 §4.4). After criterion's runs, each path
//! runs on one and on two engines sharing one store (`[proxy] threads`, a thread each,
//! 20,000 requests each: requests/s and the ratio, where contention on the store's lock
//! would show), then is timed request by request (10,000 each) for p50 and p99.
//!
//! Run: `cargo bench --bench cache`. Figures from a shared machine vary with its load.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use groxy::coap::MessageView;
use groxy::coap::build::{self, NON, code};
use groxy::coap::options as opt;
use groxy::proxy::{Engine, GroupCache, Link, Output, ProxyConfig, Shared};

fn device(i: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 10 + i], 5683))
}

struct Run {
    engine: Engine,
    now: Instant,
    n: u64,
    hit: bool,
    group: Option<Vec<u8>>,
}

impl Run {
    fn new(hit: bool) -> Self {
        Self::with(hit, None)
    }

    /// `shared`: the engine of one of several forwarding threads, sharing the store.
    fn with(hit: bool, shared: Option<Shared>) -> Self {
        let mut cfg = ProxyConfig::default();
        cfg.limits.client_rate = 1e12;
        cfg.limits.client_burst = 1e12;
        cfg.limits.max_exchanges_per_client = 1 << 20;
        cfg.cache.enabled = true;
        cfg.cache.max_entries = 4_096;
        cfg.cache.groups = vec![GroupCache {
            members: vec![device(1), device(2)],
        }];
        let now = Instant::now();
        let mut r = Run {
            engine: match shared {
                Some(sh) => {
                    let seed = 42 + sh.index().0 as u64;
                    Engine::with_shared(cfg, now, seed, sh).unwrap()
                }
                None => Engine::new(cfg, now, 42).unwrap(),
            },
            now,
            n: 0,
            hit,
            group: None,
        };
        // hit: the set stored once; miss: the cache full before timing starts.
        let fill = if hit { 1 } else { 2_100 };
        for _ in 0..fill {
            r.miss_request(!hit);
        }
        if hit {
            r.now += Duration::from_secs(6);
            r.engine.handle_timeout(r.now);
            r.drain();
        }
        r
    }

    fn drain(&mut self) -> usize {
        let mut n = 0;
        while let Some(o) = self.engine.poll_output() {
            if let Output::Transmit(t) = o {
                n += 1;
                if matches!(t.link, Link::Group(..)) {
                    self.group = Some(t.bytes);
                } else {
                    self.engine.recycle(t.bytes);
                }
            }
        }
        n
    }

    /// One group GET; `unique`: with a Uri-Query of its own (a miss), answered by both
    /// devices. Returns the datagrams out.
    fn miss_request(&mut self, unique: bool) -> usize {
        self.n += 1;
        self.now += Duration::from_millis(1);
        let n = self.n;
        let client: SocketAddr = ([127, 0, 0, 1], 40_000 + (n % 64) as u16).into();
        let token = n.to_be_bytes();
        let query = format!("n={n}");
        let mut opts: Vec<(u16, &[u8])> = vec![
            (opt::URI_HOST, b"224.0.1.187"),
            (opt::PROXY_SCHEME, b"coap"),
            (opt::URI_PATH, b"temp"),
            (2, &[5]),
        ];
        if unique {
            opts.push((opt::URI_QUERY, query.as_bytes()));
        }
        let request = build::encode(NON, code::GET, (n >> 6) as u16, &token[4..], &mut opts, &[]);
        if self.engine.poll_timeout().is_some_and(|t| t <= self.now) {
            self.engine.handle_timeout(self.now);
        }
        self.engine
            .handle(self.now, Link::Listener(0), client, &request);
        let mut out = self.drain();
        if let Some(fwd) = self.group.take() {
            let v = MessageView::parse(&fwd).unwrap();
            for i in [1u8, 2] {
                let r = build::encode(
                    NON,
                    code::CONTENT,
                    (n as u16) ^ u16::from(i),
                    v.token(),
                    &mut [(opt::MAX_AGE, &[0x7f, 0xff, 0xff])],
                    b"21.5 C",
                );
                self.engine
                    .handle(self.now, Link::Group(0, 0), device(i), &r);
                out += self.drain();
            }
            self.engine.recycle(fwd);
        }
        out
    }

    fn request(&mut self) -> usize {
        let out = self.miss_request(!self.hit);
        debug_assert!(
            !self.hit || out == 2,
            "a hit sends the two stored responses"
        );
        out
    }
}

fn percentiles(hit: bool) -> (Duration, Duration) {
    let mut r = Run::new(hit);
    let mut t: Vec<Duration> = (0..10_000)
        .map(|_| {
            let s = Instant::now();
            black_box(r.request());
            s.elapsed()
        })
        .collect();
    t.sort();
    (t[t.len() / 2], t[t.len() * 99 / 100])
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("cache");
    for (name, hit) in [("hit", true), ("miss", false)] {
        let mut r = Run::new(hit);
        assert_eq!(
            r.request(),
            if hit { 2 } else { 3 },
            "{name}: datagrams out"
        );
        g.bench_function(name, |b| b.iter(|| black_box(r.request())));
    }
    g.finish();
    shared_store();
    for (name, hit) in [("hit", true), ("miss", false)] {
        let (p50, p99) = percentiles(hit);
        println!(
            "cache/{name}: per request p50 {:.2} µs, p99 {:.2} µs ({:.0} requests/s at p50)",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6,
            1.0 / p50.as_secs_f64()
        );
    }
}

/// Requests/s of `threads` engines sharing one store (`[proxy] threads`, issue 14), each
/// on a thread of its own, `n` requests each: every hit and every store takes the
/// store's one lock, so this is where contention on it would show.
/// `share` false: engines that share nothing (each its own store), the machine's own
/// scaling to compare with.
fn threaded(hit: bool, threads: usize, n: usize, share: bool) -> f64 {
    let shared = Shared::new(threads, *b"cache bench key!");
    let runs: Vec<Run> = (0..threads)
        .map(|t| Run::with(hit, share.then(|| shared.thread(t))))
        .collect();
    let start = std::sync::Arc::new(std::sync::Barrier::new(threads + 1));
    let handles: Vec<_> = runs
        .into_iter()
        .map(|mut r| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                for _ in 0..n {
                    black_box(r.request());
                }
            })
        })
        .collect();
    start.wait();
    let t = Instant::now();
    for h in handles {
        h.join().unwrap();
    }
    (threads * n) as f64 / t.elapsed().as_secs_f64()
}

/// The shared store under two threads against one, side by side.
fn shared_store() {
    for (name, hit) in [("hit", true), ("miss", false)] {
        let one = threaded(hit, 1, 20_000, true);
        let two = threaded(hit, 2, 20_000, true);
        let apart = threaded(hit, 2, 20_000, false);
        println!(
            "cache/{name} shared store: 1 thread {one:.0} requests/s, 2 threads {two:.0} \
             requests/s ({:.2}x); 2 engines sharing nothing {apart:.0} requests/s ({:.2}x)",
            two / one,
            apart / one
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
