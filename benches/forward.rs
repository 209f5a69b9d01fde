//! The engine's own cost per forwarded request, without sockets: a NON request with a
//! Proxy-Uri from a client, the datagram toward the origin, the origin's response, the
//! response relayed to the client, the exchange closed; on a virtual clock that moves 1 µs
//! per request, with buffers handed back as the driver does. What the load bench
//! measures adds the kernel's UDP path to this; here the figure is steady enough to
//! compare two builds of the engine.
//!
//! Run: `cargo bench --bench forward`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use groxy::coap::MessageView;
use groxy::coap::build::{self, NON, code};
use groxy::coap::options as opt;
use groxy::proxy::{Engine, Link, Output, ProxyConfig};

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
        // As in the load bench: one client sending far more than its rate limit allows
        // and more Message IDs than a 145 s table could hold without wrapping.
        cfg.limits.client_rate = 1e12;
        cfg.limits.client_burst = 1e12;
        cfg.limits.max_exchanges_per_client = 1 << 20;
        cfg.limits.dedup_capacity = 16_384;
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
        self.now += Duration::from_micros(1);
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

fn bench(c: &mut Criterion) {
    let mut run = Run::new();
    // Sanity: a request and its relayed response, every time.
    for _ in 0..1000 {
        assert_eq!(run.exchange(), 2);
    }
    c.bench_function("unicast_exchange_through_engine", |b| {
        b.iter(|| black_box(run.exchange()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
