//! Load run: plain unicast forwarding through groxy and through libcoap's forward proxy
//! (`coap-server-notls -P`) with the same generator in the same run, then group requests
//! fanned out by groxy to several devices on loopback multicast.
//!
//! ```text
//! cargo bench --bench load                      # defaults: 5 s windows, 16 outstanding, 3 runs,
//!                                               # 512 client addresses x 2 ports, 64 origins
//! cargo bench --bench load -- --seconds 5 --outstanding 16 --runs 3
//! cargo bench --bench load -- --help
//! ```
//!
//! Layout (2 cores): the proxy under test runs alone on core 1 (`taskset -c 1`); this
//! process pins itself to core 0 and there runs, in one thread, the load generator, the
//! origin (answers every request with a 2.05 echoing the token) and, for the group part,
//! the devices (in-process by default, or `groxy device` processes on core 0 with
//! `--devices process`). All I/O is batched (recvmmsg/sendmmsg), allocation-free and
//! busy-polling, so that core 0 is not what limits the proxy.
//!
//! The load is what a conforming client population sends (RFC 7252 §4.4, issue 14), so
//! groxy runs with its DEFAULT limits and deduplication table (the bench's file sets only
//! its listener and group): requests go in turn to `--client-ips` loopback addresses
//! (a fresh 127.B.0.0/16 block for every run, so no endpoint of an earlier run comes
//! back) x `--client-ports` ports, one socket per port bound to 0.0.0.0 sending from each
//! address with IP_PKTINFO; each endpoint counts its Message IDs from 0 and the
//! generator asserts that none wraps, so none is reused within NON_LIFETIME, and the
//! rate of each address stays below groxy's default client_rate (1000/s). The targets
//! are `--origins` origin endpoints in turn (127.0.3.100.. on one port): groxy's egress
//! has 65,536 Message IDs per port per origin endpoint per lifetime, and the origins
//! record every (source endpoint, Message ID, time) they receive and count the pairs
//! that come again within NON_LIFETIME, per proxy (must be 0; the devices do the same
//! toward the group). The group part is paced below groxy's default exchange table.
//! Then memory per pending exchange: the proxy's VmRSS before and after `--hold`
//! requests to an origin that never answers.
//!
//! The generator keeps exactly `--outstanding` NON requests in flight:
//! each answer (unicast) or the last of the expected answers (group) triggers the next
//! request; a request without its answers after `--timeout-ms` is counted lost and
//! replaced. Per run: requests/s and responses/s over the window after the warm-up, the
//! latency from send to (last) answer (p50, p99), losses, the proxy's CPU time per
//! request (all its threads, from /proc/PID/task/*/schedstat) and how busy core 1 was
//! (/proc/stat, including softirq time: loopback delivery of what the proxy sends) and how
//! much of it the hypervisor gave to other guests (steal: a run disturbed from outside).
//! groxy and libcoap alternate (g,l / l,g / ...), each restarted for every run (libcoap
//! keeps per-session state). The summary gives medians over the runs and the ratios.

#[path = "load/coap.rs"]
mod coap;
#[path = "load/forwarder.rs"]
mod forwarder;
#[path = "load/net.rs"]
mod net;
#[path = "load/procs.rs"]
mod procs;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use net::Batch;
use procs::Proc;

const USAGE: &str = "\
usage: cargo bench --bench load [-- OPTIONS]
  --seconds S          measured window per run (default 5)
  --warmup S           warm-up before each window (default 1)
  --outstanding N      requests kept in flight (default 16)
  --client-ips N       client addresses (127.B.x.y, a fresh block per run; default
                       512): each sends 1/N of the load, so the proxy's default
                       client_rate (1000/s per address) holds below 512k requests/s
  --client-ports N     ports per client address (default 2): the generator asserts
                       that no endpoint uses more than its 65,536 Message IDs in a run
  --origins N          origin endpoints (127.0.3.100.., default 64): the proxy's egress
                       ports carry 65,536 Message IDs per origin endpoint per lifetime
  --runs N             runs per proxy and of the group part (default 3)
  --timeout-ms MS      a request unanswered after this is lost and replaced (default 200;
                       group: 500)
  --form uri|scheme    Proxy-Uri (default) or Proxy-Scheme + Uri-Host/Port/Path
  --devices N[,N..]    fan-outs of the group part (default 4,32)
  --hold N             exchanges held to measure memory per pending exchange
                       (default 8192; 0: skip)
  --device-mode inproc|process
                       devices as sockets in this process (default) or `groxy device`
                       processes on the load core
  --multicast-timeout S  Multicast-Timeout of group requests (default 1)
  --group-rate R       group requests per second at most (default: 90% of groxy's
                       default max_exchanges per Multicast-Timeout, 14,746/s)
  --only unicast|group run one part only
  --skip-libcoap       unicast part with groxy alone (says so in the report)
  --floor              also run a relay that knows no CoAP in the proxy's place, with
                       per-datagram syscalls, with recvmmsg/sendmmsg, and with those
                       plus UDP_SEGMENT coalescing (as groxy's driver): the floor of
                       what forwarding costs on this machine
  --groxy PATH         groxy binary (default: the one cargo built with this bench)
  --metrics            groxy with its metrics endpoint on (proxy.metrics), as deployed
  --also-groxy NAME=PATH  another groxy build, run alternately with the first in both
                       parts (A/B of a change in the same run); repeatable
  --libcoap PATH       libcoap server (default: coap-server-notls on PATH)
  --proxy-cpu N        core for the proxy (default 1)
  --load-cpu N         core for generator, origin and devices (default 0)
  --idle spin|poll     what the generator does when nothing is queued (default spin;
                       poll with --device-mode process or --rt)
  --rt PRIO            run the proxy, the devices and this process SCHED_FIFO at PRIO
                       (chrt -f), to shield the figures from other work on a shared
                       machine; implies --idle poll unless --idle is given";

#[derive(Debug, Clone)]
struct Args {
    seconds: f64,
    warmup: f64,
    outstanding: usize,
    client_ips: usize,
    client_ports: usize,
    origins: usize,
    hold: usize,
    runs: usize,
    timeout_ms: Option<u64>,
    proxy_uri: bool,
    devices: Vec<u8>,
    device_processes: bool,
    multicast_timeout: u32,
    group_rate: Option<f64>,
    unicast: bool,
    group: bool,
    libcoap: bool,
    groxy: Option<PathBuf>,
    libcoap_bin: String,
    proxy_cpu: usize,
    load_cpu: usize,
    poll: Option<bool>,
    rt: Option<u8>,
    floor: bool,
    metrics: bool,
    also: Vec<(String, PathBuf)>,
}

fn parse_args() -> Result<Option<Args>, String> {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: then only say how.
    if raw.is_empty() {
        println!("{USAGE}");
        return Ok(None);
    }
    let mut a = Args {
        seconds: 5.0,
        warmup: 1.0,
        outstanding: 16,
        client_ips: 512,
        client_ports: 2,
        origins: 64,
        hold: 8192,
        runs: 3,
        timeout_ms: None,
        proxy_uri: true,
        devices: vec![4, 32],
        device_processes: false,
        multicast_timeout: 1,
        group_rate: None,
        unicast: true,
        group: true,
        libcoap: true,
        groxy: None,
        libcoap_bin: "coap-server-notls".into(),
        proxy_cpu: 1,
        load_cpu: 0,
        poll: None,
        rt: None,
        floor: false,
        metrics: false,
        also: Vec::new(),
    };
    let mut it = raw.into_iter();
    while let Some(k) = it.next() {
        let mut val = || it.next().ok_or(format!("{k} needs a value"));
        fn num<T: std::str::FromStr>(k: &str, v: String) -> Result<T, String> {
            v.parse().map_err(|_| format!("{k}: {v:?} is not a number"))
        }
        match k.as_str() {
            "--bench" => {}
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(None);
            }
            "--seconds" => a.seconds = num(&k, val()?)?,
            "--warmup" => a.warmup = num(&k, val()?)?,
            "--outstanding" => a.outstanding = num(&k, val()?)?,
            "--client-ips" => a.client_ips = num(&k, val()?)?,
            "--client-ports" => a.client_ports = num(&k, val()?)?,
            "--origins" => a.origins = num(&k, val()?)?,
            "--hold" => a.hold = num(&k, val()?)?,
            "--runs" => a.runs = num(&k, val()?)?,
            "--timeout-ms" => a.timeout_ms = Some(num(&k, val()?)?),
            "--form" => {
                a.proxy_uri = match val()?.as_str() {
                    "uri" => true,
                    "scheme" => false,
                    v => return Err(format!("--form: {v:?} is neither uri nor scheme")),
                }
            }
            "--devices" => {
                a.devices = val()?
                    .split(',')
                    .map(|d| num(&k, d.to_string()))
                    .collect::<Result<_, _>>()?
            }
            "--device-mode" => {
                a.device_processes = match val()?.as_str() {
                    "inproc" => false,
                    "process" => true,
                    v => return Err(format!("--device-mode: {v:?}")),
                }
            }
            "--multicast-timeout" => a.multicast_timeout = num(&k, val()?)?,
            "--group-rate" => a.group_rate = Some(num(&k, val()?)?),
            "--only" => match val()?.as_str() {
                "unicast" => a.group = false,
                "group" => a.unicast = false,
                v => return Err(format!("--only: {v:?} is neither unicast nor group")),
            },
            "--skip-libcoap" => a.libcoap = false,
            "--floor" => a.floor = true,
            "--metrics" => a.metrics = true,
            "--also-groxy" => {
                let v = val()?;
                let (n, p) = v
                    .split_once('=')
                    .ok_or(format!("--also-groxy: {v:?} is not NAME=PATH"))?;
                a.also.push((n.to_string(), PathBuf::from(p)));
            }
            "--groxy" => a.groxy = Some(val()?.into()),
            "--libcoap" => a.libcoap_bin = val()?,
            "--proxy-cpu" => a.proxy_cpu = num(&k, val()?)?,
            "--load-cpu" => a.load_cpu = num(&k, val()?)?,
            "--idle" => {
                a.poll = Some(match val()?.as_str() {
                    "spin" => false,
                    "poll" => true,
                    v => return Err(format!("--idle: {v:?}")),
                })
            }
            "--rt" => a.rt = Some(num(&k, val()?)?),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if a.outstanding == 0 || a.outstanding > 0xffff || a.runs == 0 || a.seconds <= 0.0 {
        return Err("--outstanding 1..65535, --runs >= 1, --seconds > 0".into());
    }
    if !(1..=250 * 256).contains(&a.client_ips) || a.client_ports == 0 {
        return Err("--client-ips 1..=64000, --client-ports >= 1".into());
    }
    if !(1..=100).contains(&a.origins) {
        return Err("--origins 1..=100".into());
    }
    if a.rt.is_some() && a.poll.is_none() {
        // A spinning SCHED_FIFO thread would hit RT throttling every second.
        a.poll = Some(true);
    }
    if a.devices.is_empty() || a.devices.iter().any(|d| !(1..=200).contains(d)) {
        return Err("--devices 1..=200 each".into());
    }
    Ok(Some(a))
}

// ---------------------------------------------------------------------------------------
// The servers on the load core: origin and in-process devices.

struct Responder {
    sock: UdpSocket,
    /// Where answers go out from (a device answers from its unicast address).
    out: Option<UdpSocket>,
    payload: Vec<u8>,
    /// The socket serves many loopback addresses (bound to 0.0.0.0, IP_PKTINFO): each
    /// answer leaves from the address its request was sent to.
    pktinfo: bool,
    /// Message IDs of the answers, per local address (its last octet), each in turn: an
    /// origin address answers fewer than 65,536 requests per run.
    mids: Vec<u16>,
    served: u64,
    /// The origins' record of what reached them (RFC 7252 §4.4).
    log: Option<MidLog>,
}

/// Every (source endpoint, Message ID) an origin received and when: a pair that comes
/// again within NON_LIFETIME is a Message ID the proxy reused toward one destination
/// endpoint within its lifetime (the bench's requests are NON, and so are the proxies').
#[derive(Default)]
struct MidLog {
    seen: std::collections::HashMap<u128, Instant, foldhash::fast::RandomState>,
    reused: u64,
}

const NON_LIFETIME: Duration = Duration::from_secs(145);

impl MidLog {
    fn note(&mut self, to: Ipv4Addr, from: SocketAddrV4, mid: u16, now: Instant) {
        let k = (u32::from(to) as u128) << 64
            | (u32::from(*from.ip()) as u128) << 32
            | (from.port() as u128) << 16
            | mid as u128;
        if let Some(t) = self.seen.insert(k, now)
            && now.duration_since(t) < NON_LIFETIME
        {
            self.reused += 1;
        }
    }

    /// Distinct source endpoints (the proxy's egress ports, per origin's view).
    fn sources(&self) -> usize {
        let mut s: Vec<u128> = self.seen.keys().map(|k| k >> 16).collect();
        s.sort_unstable();
        s.dedup();
        s.len()
    }
}

struct Servers {
    responders: Vec<Responder>,
    rb: Box<Batch>,
    sb: Box<Batch>,
}

impl Servers {
    /// Answers whatever is queued; true if there was anything.
    fn service(&mut self) -> bool {
        let mut any = false;
        let now = Instant::now();
        for r in &mut self.responders {
            self.rb.pktinfo = r.pktinfo;
            let n = self.rb.recv(net::fd(&r.sock));
            if n == 0 {
                continue;
            }
            any = true;
            for i in 0..n {
                let (req, from) = self.rb.get(i);
                let local = self.rb.local(i);
                if let (Some(log), Some((_, _, mid, _))) = (r.log.as_mut(), coap::header(req)) {
                    log.note(local, from, mid, now);
                }
                let mut len = None;
                let (payload, mid) = (&r.payload, &mut r.mids[local.octets()[3] as usize]);
                let fill = |buf: &mut [u8]| {
                    len = coap::answer(req, buf, mid, payload);
                    len.unwrap_or(0)
                };
                if r.pktinfo {
                    self.sb.push_from(from, local, fill);
                } else {
                    self.sb.push(from, fill);
                }
                if len.is_none() {
                    // Not a request: take it back out.
                    self.sb.n -= 1;
                } else {
                    r.served += 1;
                }
            }
            let out = r.out.as_ref().unwrap_or(&r.sock);
            self.sb.flush(net::fd(out));
        }
        any
    }

    fn fds(&self) -> Vec<i32> {
        self.responders.iter().map(|r| net::fd(&r.sock)).collect()
    }

    /// Starts the origins' record afresh (a new proxy under test).
    fn reset_log(&mut self) {
        for r in &mut self.responders {
            if let Some(l) = r.log.as_mut() {
                *l = MidLog::default();
            }
        }
    }

    /// (Message IDs reused toward one origin endpoint within NON_LIFETIME, distinct
    /// (origin, source endpoint) pairs) since the last reset.
    fn log_summary(&self) -> (u64, u64) {
        self.responders
            .iter()
            .filter_map(|r| r.log.as_ref())
            .fold((0, 0), |(a, b), l| (a + l.reused, b + l.sources() as u64))
    }
}

// ---------------------------------------------------------------------------------------
// The load generator.

#[derive(Clone, Copy)]
struct Slot {
    seq: u64,
    sent: Instant,
    got: u32,
}

/// One port of the generator's clients: a socket bound to 0.0.0.0 that sends from
/// every client address (IP_PKTINFO), and what it has queued to send.
struct Client {
    sock: UdpSocket,
    sb: Box<Batch>,
}

/// The conforming client population (RFC 7252 §4.4): `ips` loopback addresses (a fresh
/// block of 127/8 for every generator, so no endpoint of an earlier run comes back) x
/// `clients.len()` ports. Requests go to the endpoints in turn, addresses fastest, so
/// each address sends 1/ips of the load (the proxy's per-address client_rate holds at
/// its default) and each endpoint counts its Message IDs from 0: a generator asserts
/// that no endpoint wraps, so none reuses a Message ID within NON_LIFETIME.
struct Gen {
    clients: Vec<Client>,
    ips: Vec<Ipv4Addr>,
    /// Messages sent per endpoint (address i, port p at p * ips + i); the next MID.
    sent: Vec<u32>,
    /// Messages sent per address in the measured window.
    ip_sent: Vec<u32>,
    next: usize,
    rb: Box<Batch>,
    seq: u64,
    /// Under `max_rate`: slots waiting for their turn, and the requests issued since
    /// the run began.
    waiting: std::collections::VecDeque<usize>,
    issued: u64,
    started: Instant,
}

/// The next block of client addresses (127.B.0.0/16, B from 32).
static NEXT_BLOCK: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(32);

struct Load<'a> {
    proxy: SocketAddrV4,
    /// Requests in turn (one per origin endpoint).
    templates: &'a [Vec<u8>],
    outstanding: usize,
    /// Answers that complete a request (1 unicast, N devices for a group request).
    expect: u32,
    timeout: Duration,
    warmup: Duration,
    window: Duration,
    /// Stop after this many completed requests (readiness probe).
    stop_after: Option<u64>,
    /// Process whose CPU time is measured, and the core whose busy time is.
    pid: Option<u32>,
    core: usize,
    poll: bool,
    /// At most this many requests per second (the group part: the proxy's exchange
    /// table holds max_exchanges for the Multicast-Timeout); the slots wait in turn.
    max_rate: Option<f64>,
}

#[derive(Default, Debug)]
struct Stats {
    completed: u64,
    responses: u64,
    /// Requests with no answer at all by the timeout.
    lost: u64,
    /// Group requests with some but not all answers by the timeout.
    partial: u64,
    /// Answers to a request already given up.
    late: u64,
    /// Answers other than 2.05 (the first code seen is kept).
    errors: u64,
    first_error: Option<u8>,
    refused_sends: u64,
    /// Latency of each completed request, ns.
    lat: Vec<u32>,
    window: f64,
    cpu_ns: Option<u64>,
    core_busy: Option<f64>,
    core_steal: Option<f64>,
    rss_kib: Option<u64>,
    /// The most Message IDs one client endpoint used (< 65,536: none reused).
    max_endpoint: u32,
    /// The highest rate of one client address in the window, requests/s.
    max_ip_rate: f64,
}

impl Gen {
    fn new(ips: usize, ports: usize) -> Self {
        let b = NEXT_BLOCK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(b <= 255, "out of 127/8 address blocks");
        Gen {
            clients: (0..ports)
                .map(|_| Client {
                    sock: net::udp_any(0).expect("client socket"),
                    sb: Batch::new(),
                })
                .collect(),
            ips: (0..ips)
                .map(|i| Ipv4Addr::new(127, b as u8, (i / 250) as u8, 1 + (i % 250) as u8))
                .collect(),
            sent: vec![0; ips * ports],
            ip_sent: vec![0; ips],
            next: 0,
            rb: Batch::new(),
            seq: 0,
            waiting: Default::default(),
            issued: 0,
            started: Instant::now(),
        }
    }

    /// Issues slot `i`'s next request now, or queues it under `max_rate`.
    fn reissue(&mut self, slots: &mut [Slot], i: usize, now: Instant, l: &Load) {
        match l.max_rate {
            Some(r) if self.issued as f64 >= now.duration_since(self.started).as_secs_f64() * r => {
                // Not timed out while it waits.
                slots[i].sent = now;
                slots[i].seq = 0;
                self.waiting.push_back(i);
            }
            _ => {
                self.issued += 1;
                self.issue(slots, i, now, l);
            }
        }
    }

    /// Issues the waiting slots whose turn has come.
    fn release(&mut self, slots: &mut [Slot], now: Instant, l: &Load) {
        let Some(r) = l.max_rate else { return };
        let due = now.duration_since(self.started).as_secs_f64() * r;
        while (self.issued as f64) < due {
            let Some(i) = self.waiting.pop_front() else {
                break;
            };
            self.issued += 1;
            self.issue(slots, i, now, l);
        }
    }

    /// Sends what every client has queued; returns the sends the kernel refused.
    fn flush(&mut self) -> usize {
        let mut refused = 0;
        for c in &mut self.clients {
            if c.sb.n > 0 {
                refused += c.sb.flush(net::fd(&c.sock));
            }
        }
        refused
    }

    fn issue(&mut self, slots: &mut [Slot], i: usize, now: Instant, l: &Load) {
        let e = self.next;
        self.next = (e + 1) % self.sent.len();
        let ip = e % self.ips.len();
        let c = &mut self.clients[e / self.ips.len()];
        if c.sb.is_full() {
            c.sb.flush(net::fd(&c.sock));
        }
        // RFC 7252 §4.4: an endpoint's Message IDs, each once in this generator's life.
        assert!(
            self.sent[e] < 1 << 16,
            "client endpoint {e} would reuse a Message ID: more client addresses needed"
        );
        let mid = self.sent[e] as u16;
        self.sent[e] += 1;
        self.ip_sent[ip] += 1;
        self.seq += 1;
        slots[i] = Slot {
            seq: self.seq,
            sent: now,
            got: 0,
        };
        let token = (i as u64) << 48 | (self.seq & 0xffff_ffff_ffff);
        let t = &l.templates[self.seq as usize % l.templates.len()];
        c.sb.push_from(l.proxy, self.ips[ip], |buf| {
            coap::fill_request(buf, t, mid, token)
        });
    }

    /// The `k`-th datagram of the last receive, read at `now`: counts it, and issues
    /// the next request of its slot once the slot has all its answers.
    fn answer(
        &mut self,
        slots: &mut [Slot],
        st: &mut Stats,
        k: usize,
        now: Instant,
        measuring: bool,
        l: &Load,
    ) {
        let (d, _) = self.rb.get(k);
        let Some((_, code, _, tok)) = coap::header(d) else {
            return;
        };
        let Some(tok) = coap::token_u64(tok) else {
            st.late += 1;
            return;
        };
        let i = (tok >> 48) as usize;
        if i >= slots.len() || slots[i].seq & 0xffff_ffff_ffff != tok & 0xffff_ffff_ffff {
            st.late += 1;
            return;
        }
        if code != coap::CONTENT {
            st.errors += 1;
            st.first_error.get_or_insert(code);
        }
        slots[i].got += 1;
        if measuring {
            st.responses += 1;
        }
        if slots[i].got >= l.expect {
            if measuring {
                let ns = now.duration_since(slots[i].sent).as_nanos();
                st.lat.push(ns.min(u32::MAX as u128) as u32);
                st.completed += 1;
            }
            self.reissue(slots, i, now, l);
        }
    }

    fn run(&mut self, servers: &mut Servers, l: &Load) -> Stats {
        let mut st = Stats::default();
        let mut fds = servers.fds();
        fds.extend(self.clients.iter().map(|c| net::fd(&c.sock)));
        let t0 = Instant::now();
        (self.started, self.issued) = (t0, 0);
        self.waiting.clear();
        let (win_start, end) = (t0 + l.warmup, t0 + l.warmup + l.window);
        let mut measuring = l.warmup.is_zero();
        let mut cpu0 = l.pid.and_then(net::process_cpu_ns);
        let mut core0 = net::cpu_ticks(l.core);
        let mut slots = vec![
            Slot {
                seq: 0,
                sent: t0,
                got: 0
            };
            l.outstanding
        ];
        for i in 0..l.outstanding {
            self.reissue(&mut slots, i, t0, l);
        }
        st.refused_sends += self.flush() as u64;
        let done_at = loop {
            let busy = servers.service();
            let now = Instant::now();
            if !measuring && now >= win_start {
                measuring = true;
                st = Stats {
                    refused_sends: st.refused_sends,
                    ..Stats::default()
                };
                cpu0 = l.pid.and_then(net::process_cpu_ns);
                core0 = net::cpu_ticks(l.core);
                self.ip_sent.fill(0);
            }
            if now >= end {
                break now;
            }
            // Every client's answers, each client's batch timed when it was read.
            let mut n = 0;
            for c in 0..self.clients.len() {
                let got = self.rb.recv(net::fd(&self.clients[c].sock));
                n += got;
                let now = if got > 0 { Instant::now() } else { now };
                for k in 0..got {
                    self.answer(&mut slots, &mut st, k, now, measuring, l);
                }
            }
            self.release(&mut slots, now, l);
            for i in 0..slots.len() {
                if slots[i].seq != 0 && now.duration_since(slots[i].sent) > l.timeout {
                    if measuring {
                        if slots[i].got == 0 {
                            st.lost += 1;
                        } else {
                            st.partial += 1;
                        }
                    }
                    self.reissue(&mut slots, i, now, l);
                }
            }
            st.refused_sends += self.flush() as u64;
            if l.stop_after.is_some_and(|s| st.completed >= s) {
                break now;
            }
            if l.poll && !busy && n == 0 {
                net::wait_readable(&fds, 1);
            }
        };
        let took = done_at.duration_since(if l.warmup.is_zero() { t0 } else { win_start });
        st.window = took.as_secs_f64();
        if let (Some(a), Some(b)) = (cpu0, l.pid.and_then(net::process_cpu_ns)) {
            st.cpu_ns = Some(b - a);
        }
        if let (Some(a), Some(b)) = (core0, net::cpu_ticks(l.core)) {
            let total = (b.1 - a.1).max(1) as f64;
            st.core_busy = Some((b.0 - a.0) as f64 / total);
            st.core_steal = Some((b.2 - a.2) as f64 / total);
        }
        st.rss_kib = l.pid.and_then(vm_hwm_kib);
        st.max_endpoint = self.sent.iter().copied().max().unwrap_or(0);
        st.max_ip_rate = self.ip_sent.iter().copied().max().unwrap_or(0) as f64 / st.window;
        // Answer what is still on its way so the proxy ends quietly.
        let stop = Instant::now() + Duration::from_millis(50);
        while Instant::now() < stop {
            servers.service();
            for c in &self.clients {
                self.rb.recv(net::fd(&c.sock));
            }
        }
        st
    }
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let l = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    l.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------------------
// Results.

#[derive(Debug, Clone, Copy, Default)]
struct Row {
    rps: f64,
    resp_s: f64,
    p50: f64,
    p99: f64,
    lost: u64,
    partial: u64,
    late: u64,
    errors: u64,
    cpu_us: f64,
    busy: f64,
    /// The share of the proxy's core the hypervisor gave to others (a disturbed run).
    steal: f64,
    /// The proxy's own CPU time as a share of the window.
    share: f64,
    rss_mib: f64,
    /// Message IDs the proxy reused toward one destination endpoint within NON_LIFETIME
    /// (the origins' or devices' record).
    mid_reuse: u64,
    /// Distinct (destination, proxy source endpoint) pairs the origins saw.
    sources: u64,
    /// The most Message IDs one client endpoint used in the run.
    max_endpoint: u64,
    /// The highest request rate of one client address.
    ip_rate: f64,
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn row(mut st: Stats, servers: &Servers) -> Row {
    st.lat.sort_unstable();
    let (mid_reuse, sources) = servers.log_summary();
    Row {
        mid_reuse,
        sources,
        max_endpoint: st.max_endpoint as u64,
        ip_rate: st.max_ip_rate,
        rps: st.completed as f64 / st.window,
        resp_s: st.responses as f64 / st.window,
        p50: percentile(&st.lat, 0.50),
        p99: percentile(&st.lat, 0.99),
        lost: st.lost,
        partial: st.partial,
        late: st.late,
        errors: st.errors,
        cpu_us: st
            .cpu_ns
            .map_or(f64::NAN, |c| c as f64 / 1000.0 / st.completed.max(1) as f64),
        busy: st.core_busy.unwrap_or(f64::NAN) * 100.0,
        steal: st.core_steal.unwrap_or(f64::NAN) * 100.0,
        share: st
            .cpu_ns
            .map_or(f64::NAN, |c| c as f64 / 1e9 / st.window * 100.0),
        rss_mib: st.rss_kib.map_or(f64::NAN, |k| k as f64 / 1024.0),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn median_row(rows: &[Row]) -> Row {
    let m = |f: fn(&Row) -> f64| median(rows.iter().map(f).collect());
    Row {
        rps: m(|r| r.rps),
        resp_s: m(|r| r.resp_s),
        p50: m(|r| r.p50),
        p99: m(|r| r.p99),
        lost: rows.iter().map(|r| r.lost).sum(),
        partial: rows.iter().map(|r| r.partial).sum(),
        late: rows.iter().map(|r| r.late).sum(),
        errors: rows.iter().map(|r| r.errors).sum(),
        cpu_us: m(|r| r.cpu_us),
        busy: m(|r| r.busy),
        steal: m(|r| r.steal),
        share: m(|r| r.share),
        rss_mib: m(|r| r.rss_mib),
        mid_reuse: rows.iter().map(|r| r.mid_reuse).sum(),
        sources: m(|r| r.sources as f64) as u64,
        max_endpoint: rows.iter().map(|r| r.max_endpoint).max().unwrap_or(0),
        ip_rate: rows.iter().map(|r| r.ip_rate).fold(0.0, f64::max),
    }
}

/// Steal (% of the proxy's core) above which a run counts as disturbed from outside.
const MAX_STEAL: f64 = 1.0;

const UNICAST_HEAD: &str = "| run | proxy | requests/s | p50 µs | p99 µs | lost | late | errors | proxy CPU µs/req | proxy CPU % | core busy % | steal % | VmHWM MiB | MIDs reused toward an origin | (origin, source) endpoints | max MIDs per client endpoint | max req/s per client address |";
const UNICAST_SEP: &str =
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|";

fn unicast_line(run: &str, name: &str, r: &Row) -> String {
    format!(
        "| {run} | {name} | {:.0} | {:.1} | {:.1} | {} | {} | {} | {:.2} | {:.0} | {:.0} | {:.1} | {:.1} | {} | {} | {} | {:.0} |",
        r.rps,
        r.p50,
        r.p99,
        r.lost,
        r.late,
        r.errors,
        r.cpu_us,
        r.share,
        r.busy,
        r.steal,
        r.rss_mib,
        r.mid_reuse,
        r.sources,
        r.max_endpoint,
        r.ip_rate
    )
}

const GROUP_HEAD: &str = "| run | requests/s | relayed responses/s | p50 µs (last answer) | p99 µs | lost | partial | late | errors | proxy CPU µs/req | µs/relayed | proxy CPU % | core busy % | steal % | groxy VmHWM MiB | MIDs reused toward the group | max MIDs per client endpoint | max req/s per client address |";
const GROUP_SEP: &str =
    "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|";

fn group_line(run: &str, r: &Row, devices: u8) -> String {
    format!(
        "| {run} | {:.0} | {:.0} | {:.1} | {:.1} | {} | {} | {} | {} | {:.2} | {:.2} | {:.0} | {:.0} | {:.1} | {:.1} | {} | {} | {:.0} |",
        r.rps,
        r.resp_s,
        r.p50,
        r.p99,
        r.lost,
        r.partial,
        r.late,
        r.errors,
        r.cpu_us,
        r.cpu_us / devices as f64,
        r.share,
        r.busy,
        r.steal,
        r.rss_mib,
        r.mid_reuse,
        r.max_endpoint,
        r.ip_rate
    )
}

// ---------------------------------------------------------------------------------------
// Orchestration.

struct Env {
    args: Args,
    groxy: PathBuf,
    libcoap: Option<PathBuf>,
    dir: PathBuf,
}

enum Kind {
    /// groxy: the binary under test, or the i-th of `--also-groxy`.
    Groxy(Option<usize>),
    Libcoap,
    /// The reference relay of `--floor`.
    Relay(forwarder::Mode),
}

impl Env {
    fn start_proxy(
        &self,
        kind: &Kind,
        listen: SocketAddrV4,
        group: SocketAddrV4,
        origin: SocketAddrV4,
    ) -> Proc {
        let cpu = self.args.proxy_cpu;
        match kind {
            Kind::Relay(mode) => {
                let exe = std::env::current_exe().expect("this bench's path");
                let args = vec![
                    "__relay".into(),
                    listen.to_string(),
                    origin.to_string(),
                    mode.name().into(),
                ];
                Proc::start("relay", cpu, self.args.rt, &exe, &args, &self.dir)
            }
            Kind::Groxy(alt) => {
                let cfg = self.dir.join("groxy.toml");
                let metrics = self
                    .args
                    .metrics
                    .then(|| SocketAddrV4::new(Ipv4Addr::LOCALHOST, net::free_port()));
                std::fs::write(&cfg, procs::groxy_config(listen, group, metrics)).expect("config");
                let args = vec!["run".into(), "--config".into(), cfg.display().to_string()];
                let bin = alt.map_or(&self.groxy, |i| &self.args.also[i].1);
                Proc::start("groxy", cpu, self.args.rt, bin, &args, &self.dir)
            }
            Kind::Libcoap => {
                let args = vec![
                    "-A".into(),
                    listen.ip().to_string(),
                    "-p".into(),
                    listen.port().to_string(),
                    "-P".into(),
                    ",loadbench-proxy".into(),
                ];
                let bin = self.libcoap.as_ref().expect("checked at start");
                Proc::start("libcoap", cpu, self.args.rt, bin, &args, &self.dir)
            }
        }
    }

    /// Waits until one request through the proxy completes with 2.05.
    fn ready(
        &self,
        p: &mut Proc,
        g: &mut Gen,
        servers: &mut Servers,
        proxy: SocketAddrV4,
        templates: &[Vec<u8>],
        expect: u32,
    ) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            p.check_alive()?;
            let st = g.run(
                servers,
                &Load {
                    proxy,
                    templates,
                    outstanding: 1,
                    expect,
                    timeout: Duration::from_millis(300),
                    warmup: Duration::ZERO,
                    window: Duration::from_millis(600),
                    stop_after: Some(1),
                    pid: None,
                    core: self.args.proxy_cpu,
                    poll: true,
                    max_rate: None,
                },
            );
            if st.completed >= 1 {
                if let Some(c) = st.first_error {
                    return Err(format!(
                        "{} answers {}.{:02} instead of 2.05; its output:\n{}",
                        p.name,
                        c >> 5,
                        c & 0x1f,
                        p.output()
                    ));
                }
                return Ok(());
            }
        }
        Err(format!(
            "{} did not forward a request within 5 s; its output:\n{}",
            p.name,
            p.output()
        ))
    }
}

fn template(target: &str, host: Ipv4Addr, port: u16, proxy_uri: bool, mt: Option<u32>) -> Vec<u8> {
    let mut opts = Vec::new();
    if let Some(t) = mt {
        opts.push((coap::MULTICAST_TIMEOUT, coap::uint(t)));
    }
    if proxy_uri {
        opts.push((
            coap::PROXY_URI,
            format!("coap://{host}:{port}/{target}").into_bytes(),
        ));
    } else {
        opts.push((coap::PROXY_SCHEME, b"coap".to_vec()));
        opts.push((coap::URI_HOST, host.to_string().into_bytes()));
        opts.push((coap::URI_PORT, coap::uint(port as u32)));
        opts.push((coap::URI_PATH, target.as_bytes().to_vec()));
    }
    coap::request_template(coap::NON, &mut opts)
}

/// The template must be a request groxy's own parser reads as intended.
fn self_check(t: &[u8]) {
    let mut buf = [0u8; net::BUF];
    let n = coap::fill_request(&mut buf, t, 0xbeef, 0x0001_0000_0000_0002);
    let v = groxy::coap::MessageView::parse(&buf[..n]).expect("template parses");
    assert_eq!(
        (v.message_id(), v.token(), v.code()),
        (0xbeef, &[0, 1, 0, 0, 0, 0, 0, 2][..], coap::GET)
    );
    let mut out = [0u8; net::BUF];
    let mut mid = 0;
    let m = coap::answer(&buf[..n], &mut out, &mut mid, b"hi").expect("answer");
    let r = groxy::coap::MessageView::parse(&out[..m]).expect("answer parses");
    assert_eq!(
        (r.code(), r.token(), r.payload()),
        (coap::CONTENT, v.token(), &b"hi"[..])
    );
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// The origin endpoints: 127.0.3.100, .101, ... on one port (one socket bound to
/// 0.0.0.0 serves them all); the addresses have three digits so that every request has
/// the same length.
fn origin_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 3, 100 + i as u8)
}

fn unicast_part(env: &Env, origin: &mut Servers, origin_port: u16) -> Result<(), String> {
    let a = &env.args;
    let t: Vec<Vec<u8>> = (0..a.origins)
        .map(|i| template("hello", origin_ip(i), origin_port, a.proxy_uri, None))
        .collect();
    self_check(&t[0]);
    let group = SocketAddrV4::new(Ipv4Addr::new(224, 0, 1, 187), net::free_port());
    let mut kinds: Vec<(String, Kind)> = vec![("groxy".into(), Kind::Groxy(None))];
    if a.libcoap {
        kinds.push(("libcoap".into(), Kind::Libcoap));
    }
    for (i, (name, _)) in a.also.iter().enumerate() {
        kinds.push((format!("groxy {name}"), Kind::Groxy(Some(i))));
    }
    if a.floor {
        use forwarder::Mode;
        for (name, mode) in [
            ("relay, recvfrom/sendto", Mode::Single),
            ("relay, recvmmsg/sendmmsg", Mode::Batched),
            ("relay, mmsg + UDP_SEGMENT", Mode::Segmented),
        ] {
            kinds.push((name.into(), Kind::Relay(mode)));
        }
    }
    let timeout = Duration::from_millis(a.timeout_ms.unwrap_or(200));
    println!(
        "\n## Unicast forwarding: NON GET, {} outstanding from {} client addresses x {} ports (fresh each run), {}, {} origin endpoints {}..{}:{origin_port} in turn\n",
        a.outstanding,
        a.client_ips,
        a.client_ports,
        if a.proxy_uri {
            "Proxy-Uri"
        } else {
            "Proxy-Scheme + Uri-Host/Port/Path"
        },
        a.origins,
        origin_ip(0),
        origin_ip(a.origins - 1)
    );
    println!("{UNICAST_HEAD}\n{UNICAST_SEP}");
    let mut rows: Vec<Vec<Row>> = kinds.iter().map(|_| Vec::new()).collect();
    for run in 0..a.runs {
        let mut order: Vec<usize> = (0..kinds.len()).collect();
        if run % 2 == 1 {
            order.reverse();
        }
        for k in order {
            let (name, kind) = &kinds[k];
            let listen = SocketAddrV4::new(Ipv4Addr::LOCALHOST, net::free_port());
            let origin_addr = SocketAddrV4::new(origin_ip(0), origin_port);
            let mut p = env.start_proxy(kind, listen, group, origin_addr);
            let mut g = Gen::new(a.client_ips, a.client_ports);
            origin.reset_log();
            env.ready(&mut p, &mut g, origin, listen, &t, 1)?;
            let st = g.run(
                origin,
                &Load {
                    proxy: listen,
                    templates: &t,
                    outstanding: a.outstanding,
                    expect: 1,
                    timeout,
                    warmup: secs(a.warmup),
                    window: secs(a.seconds),
                    stop_after: None,
                    pid: Some(p.pid()),
                    core: a.proxy_cpu,
                    poll: a.poll.unwrap_or(false),
                    max_rate: None,
                },
            );
            p.check_alive()?;
            let r = row(st, origin);
            println!("{}", unicast_line(&(run + 1).to_string(), name, &r));
            rows[k].push(r);
            p.stop();
        }
    }
    let med: Vec<Row> = rows.iter().map(|r| median_row(r)).collect();
    for (k, (name, _)) in kinds.iter().enumerate() {
        println!(
            "{}",
            unicast_line(&format!("median of {}", a.runs), name, &med[k])
        );
    }
    if a.libcoap {
        let l = &med[1];
        println!();
        for (k, (name, kind)) in kinds.iter().enumerate() {
            if !matches!(kind, Kind::Groxy(_)) {
                continue;
            }
            let g = &med[k];
            println!(
                "{name}/libcoap: requests/s x{:.2}, p50 x{:.2}, p99 x{:.2}, CPU per request x{:.2}; \
                 aim (>= 2x requests/s, p99 no worse): {}",
                g.rps / l.rps,
                g.p50 / l.p50,
                g.p99 / l.p99,
                g.cpu_us / l.cpu_us,
                if g.rps >= 2.0 * l.rps && g.p99 <= l.p99 {
                    "met"
                } else {
                    "NOT met"
                }
            );
            // The machine's speed can drift between runs (a shared VM); a run's two
            // proxies ran back to back, so their ratio is less exposed to the drift.
            let paired = |f: fn(&Row) -> f64| -> Vec<f64> {
                rows[k]
                    .iter()
                    .zip(&rows[1])
                    .map(|(g, l)| f(g) / f(l))
                    .collect()
            };
            let rps = paired(|r| r.rps);
            let (lo, hi) = rps
                .iter()
                .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
            println!(
                "{name}/libcoap, run by run: requests/s x{:.2} (median; from x{lo:.2} to x{hi:.2}), \
                 p99 x{:.2}, CPU per request x{:.2}",
                median(rps),
                median(paired(|r| r.p99)),
                median(paired(|r| r.cpu_us)),
            );
            // Runs in which the hypervisor took the proxy's core from either proxy are
            // disturbed from outside; the same ratios without them.
            let calm: Vec<(&Row, &Row)> = rows[k]
                .iter()
                .zip(&rows[1])
                .filter(|(g, l)| g.steal <= MAX_STEAL && l.steal <= MAX_STEAL)
                .collect();
            let of = |f: fn(&Row) -> f64| median(calm.iter().map(|(g, l)| f(g) / f(l)).collect());
            println!(
                "{name}/libcoap, run by run, the {} of {} runs with at most {MAX_STEAL}% steal: \
                 requests/s x{:.2}, p99 x{:.2}, CPU per request x{:.2}",
                calm.len(),
                rows[k].len(),
                of(|r| r.rps),
                of(|r| r.p99),
                of(|r| r.cpu_us),
            );
        }
    } else {
        println!("\n(libcoap skipped by --skip-libcoap: no comparison)");
    }
    Ok(())
}

/// Memory per pending exchange: the proxy's resident set before and after `hold`
/// requests to an origin that never answers (each exchange stays until the proxy's
/// timeout, 10 s for groxy), sent from 64 fresh client addresses (well within the
/// per-client limits) with a conforming Message ID each.
fn hold_part(env: &Env, origin: &mut Servers, origin_port: u16) -> Result<(), String> {
    let a = &env.args;
    let n = a.hold;
    let silent = net::udp(SocketAddrV4::new(Ipv4Addr::new(127, 0, 4, 1), 0))
        .map_err(|e| format!("silent origin: {e}"))?;
    let silent_port = silent.local_addr().map_err(|e| e.to_string())?.port();
    let held = template(
        "hold",
        Ipv4Addr::new(127, 0, 4, 1),
        silent_port,
        a.proxy_uri,
        None,
    );
    let ready_t = vec![template(
        "hello",
        origin_ip(0),
        origin_port,
        a.proxy_uri,
        None,
    )];
    println!(
        "\n## Memory per pending exchange: VmRSS before and 0.5 s after {n} requests to an origin that never answers\n"
    );
    println!(
        "| proxy | VmRSS before KiB | after KiB | bytes per pending exchange |\n|---|---:|---:|---:|"
    );
    let group = SocketAddrV4::new(Ipv4Addr::new(224, 0, 1, 187), net::free_port());
    let mut kinds = vec![("groxy", Kind::Groxy(None))];
    if a.libcoap {
        kinds.push(("libcoap", Kind::Libcoap));
    }
    for (name, kind) in kinds {
        let listen = SocketAddrV4::new(Ipv4Addr::LOCALHOST, net::free_port());
        let mut p = env.start_proxy(
            &kind,
            listen,
            group,
            SocketAddrV4::new(origin_ip(0), origin_port),
        );
        let mut g = Gen::new(64, 1);
        env.ready(&mut p, &mut g, origin, listen, &ready_t, 1)?;
        std::thread::sleep(Duration::from_millis(200));
        let before = vm_rss_kib(p.pid()).ok_or("VmRSS")?;
        let mut slots = vec![
            Slot {
                seq: 0,
                sent: Instant::now(),
                got: 0
            };
            n
        ];
        let load = Load {
            proxy: listen,
            templates: std::slice::from_ref(&held),
            outstanding: n,
            expect: 1,
            timeout: Duration::from_secs(60),
            warmup: Duration::ZERO,
            window: Duration::ZERO,
            stop_after: None,
            pid: None,
            core: a.proxy_cpu,
            poll: true,
            max_rate: None,
        };
        for i in 0..n {
            g.issue(&mut slots, i, Instant::now(), &load);
            if i % 512 == 511 {
                g.flush();
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        g.flush();
        std::thread::sleep(Duration::from_millis(500));
        p.check_alive()?;
        let after = vm_rss_kib(p.pid()).ok_or("VmRSS")?;
        println!(
            "| {name} | {before} | {after} | {:.0} |",
            (after as f64 - before as f64) * 1024.0 / n as f64
        );
        p.stop();
    }
    drop(silent);
    Ok(())
}

fn vm_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    l.split_whitespace().nth(1)?.parse().ok()
}

fn group_part(env: &Env, devices: u8) -> Result<(), String> {
    let a = &env.args;
    let port = net::free_port();
    let group = SocketAddrV4::new(Ipv4Addr::new(224, 0, 1, 187), port);
    let dev_ip = |i: u8| Ipv4Addr::new(127, 0, 0, 11 + i);
    // Devices: sockets here, or `groxy device` processes on the load core.
    let mut servers = Servers {
        responders: Vec::new(),
        rb: Batch::new(),
        sb: Batch::new(),
    };
    let mut device_procs = Vec::new();
    for i in 0..devices {
        let bind = SocketAddrV4::new(dev_ip(i), port);
        if a.device_processes {
            let args = vec![
                "device".into(),
                "--group".into(),
                group.to_string(),
                "--interface".into(),
                "127.0.0.1".into(),
                "--bind".into(),
                bind.to_string(),
                "--name".into(),
                format!("d{}", 11 + i),
            ];
            device_procs.push(Proc::start(
                &format!("device d{}", 11 + i),
                a.load_cpu,
                a.rt,
                &env.groxy,
                &args,
                &env.dir,
            ));
        } else {
            servers.responders.push(Responder {
                sock: net::multicast_receiver(group)
                    .map_err(|e| format!("joining {group} on 127.0.0.1: {e}"))?,
                out: Some(net::udp(bind).map_err(|e| format!("binding {bind}: {e}"))?),
                payload: format!("hello from d{}", 11 + i).into_bytes(),
                pktinfo: false,
                mids: vec![0; 256],
                served: 0,
                log: Some(MidLog::default()),
            });
        }
    }
    let t = template(
        "hello",
        *group.ip(),
        port,
        a.proxy_uri,
        Some(a.multicast_timeout),
    );
    self_check(&t);
    let timeout = Duration::from_millis(a.timeout_ms.unwrap_or(500));
    let expect = devices as u32;
    // groxy keeps a group exchange for the Multicast-Timeout, and its default exchange
    // table holds max_exchanges: past that rate requests get 5.03 (counted as errors,
    // and their slots would wait for the timeout). The generator stays below it.
    let max_ex = groxy::proxy::Limits::default().max_exchanges as f64;
    let group_rate = a
        .group_rate
        .unwrap_or(0.9 * max_ex / a.multicast_timeout.max(1) as f64);

    println!(
        "\n## Group requests: NON GET to coap://{group}/hello, Multicast-Timeout {} s, {} outstanding from {} client addresses x {} ports (fresh each run), {} devices ({}), complete when all {} answered\n",
        a.multicast_timeout,
        a.outstanding,
        a.client_ips,
        a.client_ports,
        devices,
        if a.device_processes {
            "`groxy device` processes on the load core"
        } else {
            "in-process sockets on the load core"
        },
        devices
    );
    println!(
        "requests paced to at most {group_rate:.0}/s (90% of groxy's default max_exchanges {max_ex} per Multicast-Timeout)\n"
    );
    println!("{GROUP_HEAD}\n{GROUP_SEP}");
    let builds: Vec<(String, Option<usize>)> = std::iter::once(("groxy".to_string(), None))
        .chain(
            a.also
                .iter()
                .enumerate()
                .map(|(i, (n, _))| (format!("groxy {n}"), Some(i))),
        )
        .collect();
    let mut rows: Vec<Vec<Row>> = builds.iter().map(|_| Vec::new()).collect();
    for (run, b) in (0..a.runs).flat_map(|r| {
        let n = builds.len();
        (0..n).map(move |k| (r, if r % 2 == 0 { k } else { n - 1 - k }))
    }) {
        for d in &mut device_procs {
            d.check_alive()?;
        }
        let listen = SocketAddrV4::new(Ipv4Addr::LOCALHOST, net::free_port());
        let mut p = env.start_proxy(&Kind::Groxy(builds[b].1), listen, group, listen);
        let mut g = Gen::new(a.client_ips, a.client_ports);
        servers.reset_log();
        let t = std::slice::from_ref(&t);
        env.ready(&mut p, &mut g, &mut servers, listen, t, expect)?;
        let st = g.run(
            &mut servers,
            &Load {
                proxy: listen,
                templates: t,
                outstanding: a.outstanding,
                expect,
                timeout,
                warmup: secs(a.warmup),
                window: secs(a.seconds),
                stop_after: None,
                pid: Some(p.pid()),
                core: a.proxy_cpu,
                poll: a.poll.unwrap_or(a.device_processes),
                max_rate: Some(group_rate),
            },
        );
        p.check_alive()?;
        let r = row(st, &servers);
        let label = if builds.len() > 1 {
            format!("{} {}", run + 1, builds[b].0)
        } else {
            (run + 1).to_string()
        };
        println!("{}", group_line(&label, &r, devices));
        rows[b].push(r);
        p.stop();
    }
    let mut first = None;
    for (b, (name, _)) in builds.iter().enumerate() {
        let m = median_row(&rows[b]);
        let label = if builds.len() > 1 {
            format!("median of {} {name}", a.runs)
        } else {
            format!("median of {}", a.runs)
        };
        println!("{}", group_line(&label, &m, devices));
        first.get_or_insert(m);
    }
    let m = first.expect("one build at least");
    println!(
        "\nExchanges stay open for the Multicast-Timeout: about {:.0} in groxy's table at the median rate.",
        m.rps * a.multicast_timeout as f64
    );
    Ok(())
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().collect();
    if raw.get(1).map(String::as_str) == Some("__relay") && raw.len() == 5 {
        let addr = |s: &str| s.parse::<SocketAddrV4>().expect("relay address");
        let mode = forwarder::Mode::from_name(&raw[4]).expect("relay mode");
        forwarder::run(addr(&raw[2]), addr(&raw[3]), mode);
    }
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load: {e}");
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), String> {
    let libcoap = if args.libcoap && args.unicast {
        Some(procs::which(&args.libcoap_bin).ok_or_else(|| {
            format!(
                "{} not found: libcoap's forward proxy is the baseline of this bench. \
                 Install it with `apt-get update && apt-get install -y libcoap3-bin`, \
                 point --libcoap at it, or pass --skip-libcoap to measure groxy alone.",
                args.libcoap_bin
            )
        })?)
    } else {
        None
    };
    if procs::which("taskset").is_none() {
        return Err("taskset not found (util-linux): needed to pin the proxy".into());
    }
    let groxy = args
        .groxy
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_groxy")));
    if !groxy.is_file() {
        return Err(format!(
            "{} not found: build it with `cargo build --release`",
            groxy.display()
        ));
    }
    for (n, p) in &args.also {
        if !p.is_file() {
            return Err(format!("--also-groxy {n}: {} not found", p.display()));
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 || args.proxy_cpu == args.load_cpu {
        eprintln!(
            "load: warning: {cores} core(s); proxy and load generator share a core, figures are not comparable"
        );
    }
    net::pin_to_cpu(args.load_cpu)
        .map_err(|e| format!("pinning to core {}: {e}", args.load_cpu))?;
    if let Some(p) = args.rt {
        if procs::which("chrt").is_none() {
            return Err("chrt not found (util-linux): needed for --rt".into());
        }
        net::set_fifo(p).map_err(|e| format!("SCHED_FIFO {p}: {e}"))?;
    }
    let dir = std::env::temp_dir().join(format!("groxy-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let env = Env {
        args: args.clone(),
        groxy,
        libcoap,
        dir: dir.clone(),
    };
    println!("# groxy load run");
    println!(
        "\nproxy: `taskset -c {} {} run --config {}/groxy.toml` (RUST_LOG=warn)",
        args.proxy_cpu,
        env.groxy.display(),
        dir.display()
    );
    if let Some(l) = &env.libcoap {
        println!(
            "libcoap: `taskset -c {} {} -A 127.0.0.1 -p PORT -P ,loadbench-proxy`",
            args.proxy_cpu,
            l.display()
        );
    }
    println!(
        "generator, origin{}: this process, pinned to core {}, one thread, recvmmsg/sendmmsg, {}",
        if args.group { ", devices" } else { "" },
        args.load_cpu,
        if args.poll == Some(true) {
            "poll() when idle"
        } else {
            "busy-polling"
        }
    );
    if args.metrics {
        println!("groxy metrics endpoint: on (proxy.metrics on a free 127.0.0.1 port)");
    }
    if let Some(p) = args.rt {
        println!("scheduling: proxy, devices and this process SCHED_FIFO {p} (chrt -f {p})");
    }
    println!(
        "load average before the run: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "each run: {} s warm-up, {} s window; proxies restarted every run; timeout {} ms",
        args.warmup,
        args.seconds,
        args.timeout_ms
            .map_or("200 (group 500)".into(), |t| t.to_string())
    );
    let started = Instant::now();
    let result = (|| {
        if args.unicast {
            let sock = net::udp_any(0).map_err(|e| format!("origin socket: {e}"))?;
            let port = sock.local_addr().map_err(|e| e.to_string())?.port();
            let mut origin = Servers {
                responders: vec![Responder {
                    sock,
                    out: None,
                    payload: b"hello from origin".to_vec(),
                    pktinfo: true,
                    mids: vec![0; 256],
                    served: 0,
                    log: Some(MidLog::default()),
                }],
                rb: Batch::new(),
                sb: Batch::new(),
            };
            unicast_part(&env, &mut origin, port)?;
            if args.hold > 0 {
                hold_part(&env, &mut origin, port)?;
            }
            let served = origin.responders[0].served;
            println!("(origin answered {served} requests in all)");
        }
        if args.group {
            for &d in &args.devices {
                group_part(&env, d)?;
            }
        }
        Ok::<(), String>(())
    })();
    println!("\n(total {:.0} s)", started.elapsed().as_secs_f64());
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("load: logs kept in {}", dir.display());
    }
    result
}
