//! The tokio driver around the engine: sockets in, engine, sockets out. It knows no CoAP:
//! every decision is the engine's.

mod batch;
mod logs;
pub mod sockets;
pub mod state;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::net::UdpSocket;

use batch::{RecvBatch, SendQueue};

use crate::proxy::{Engine, Event, Link, Output, ProxyConfig};
pub use sockets::Interface;

/// How a group's multicast leaves this host.
#[derive(Debug, Clone)]
pub struct Egress {
    pub interface: Interface,
    pub hop_limit: u32,
    /// Source address for the egress socket (its unicast port receives responses).
    pub bind: Option<std::net::IpAddr>,
}

/// Everything `groxy run` needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub proxy: ProxyConfig,
    pub listen: Vec<SocketAddr>,
    /// One per group, in the order of `proxy.groups`.
    pub egress: Vec<Egress>,
    /// Where the proxy's Sender Sequence Numbers are kept (needed when it is a member).
    pub state_dir: Option<std::path::PathBuf>,
}

/// Requests to a running proxy (from signal handlers).
#[derive(Debug)]
pub enum Control {
    /// A configuration read anew (SIGHUP), or why it could not be.
    Reload(Result<RunConfig, String>),
}

/// How long a draining proxy waits for exchanges in flight at most before it exits.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(75);

/// A callback that sees every engine event.
pub type EventObserver = Box<dyn FnMut(&Event) + Send>;

/// What the operations layer sees of the driver: every event, and the engine after each
/// datagram's or timer run's outputs went out (gauges such as the exchange table and key
/// generations live in the engine, not in events). Called on the proxy's task: keep it
/// cheap.
pub trait Observer: Send {
    fn event(&mut self, e: &Event);
    /// `took` is how long `Engine::handle` took for the datagram whose outputs were just
    /// flushed (the engine reads no clock, so the driver measures); `None` after timers.
    fn handled(&mut self, engine: &Engine, took: Option<Duration>);
}

/// Bound sockets, ready to run.
pub struct Proxy {
    engine: Engine,
    sockets: Vec<(Link, Arc<UdpSocket>)>,
    /// Per socket (same index), what is to go out of it at the end of the batch.
    queues: Vec<SendQueue>,
    /// Indexes into `sockets` of the unicast egress per address family.
    unicast_v4: usize,
    unicast_v6: Option<usize>,
    log: logs::EventLog,
    names: Vec<String>,
    observer: Option<EventObserver>,
    watcher: Option<Box<dyn Observer>>,
    state_dir: Option<std::path::PathBuf>,
    control: Option<tokio::sync::mpsc::UnboundedReceiver<Control>>,
    listen: Vec<SocketAddr>,
}

impl Proxy {
    /// Binds every socket; fails before serving anything if one cannot be had.
    pub fn bind(cfg: RunConfig) -> io::Result<Self> {
        if cfg.egress.len() != cfg.proxy.groups.len() {
            return Err(io::Error::other("one egress per group"));
        }
        let mut sockets = Vec::new();
        for (i, addr) in cfg.listen.iter().enumerate() {
            let s = sockets::listener(*addr)
                .map_err(|e| io::Error::new(e.kind(), format!("listen {addr}: {e}")))?;
            sockets.push((Link::Listener(i), Arc::new(UdpSocket::from_std(s)?)));
        }
        for (i, (g, e)) in cfg.proxy.groups.iter().zip(&cfg.egress).enumerate() {
            let s = sockets::group_egress(g.addr, &e.interface, e.hop_limit, e.bind)
                .map_err(|err| io::Error::new(err.kind(), format!("group {}: {err}", g.name)))?;
            sockets.push((Link::Group(i), Arc::new(UdpSocket::from_std(s)?)));
        }
        let unicast_v4 = sockets.len();
        let v4 = UdpSocket::from_std(sockets::unicast_egress(false)?)?;
        sockets.push((Link::Unicast, Arc::new(v4)));
        // IPv6 may be absent on a host; unicast forwarding to IPv6 then fails per request.
        let mut unicast_v6 = None;
        if let Ok(s) = sockets::unicast_egress(true) {
            unicast_v6 = Some(sockets.len());
            sockets.push((Link::Unicast, Arc::new(UdpSocket::from_std(s)?)));
        }
        let queues = sockets.iter().map(|_| SendQueue::default()).collect();
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).map_err(|e| io::Error::other(format!("randomness: {e}")))?;
        let names = cfg.proxy.groups.iter().map(|g| g.name.clone()).collect();
        Ok(Proxy {
            engine: Engine::new(cfg.proxy, Instant::now(), u64::from_ne_bytes(seed))
                .map_err(|e| io::Error::other(e.to_string()))?,
            sockets,
            queues,
            unicast_v4,
            unicast_v6,
            log: logs::EventLog::default(),
            names,
            observer: None,
            watcher: None,
            state_dir: cfg.state_dir.clone(),
            control: None,
            listen: cfg.listen.clone(),
        })
        .and_then(|mut p: Proxy| {
            state::restore(&mut p.engine, &p.names, p.state_dir.as_deref())?;
            Ok(p)
        })
    }

    /// Addresses the listeners are bound to (port 0 resolved).
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.sockets
            .iter()
            .filter(|(l, _)| matches!(l, Link::Listener(_)))
            .filter_map(|(_, s)| s.local_addr().ok())
            .collect()
    }

    /// Address of a group's egress socket (where devices' responses arrive).
    pub fn group_addr(&self, group: usize) -> Option<SocketAddr> {
        self.sockets
            .iter()
            .find(|(l, _)| *l == Link::Group(group))
            .and_then(|(_, s)| s.local_addr().ok())
    }

    /// Sees every engine event (metrics hook).
    pub fn on_event(&mut self, f: impl FnMut(&Event) + Send + 'static) {
        self.observer = Some(Box::new(f));
    }

    /// Sees every event and the engine after each flush (metrics hook, see [`Observer`]).
    pub fn observe(&mut self, o: impl Observer + 'static) {
        self.watcher = Some(Box::new(o));
    }

    /// A handle to reload the running proxy.
    pub fn controller(&mut self) -> tokio::sync::mpsc::UnboundedSender<Control> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.control = Some(rx);
        tx
    }

    /// Serves until `shutdown` completes, then drains: new requests get 5.03 while the
    /// exchanges in flight run to their timeouts (at most [`DRAIN_LIMIT`]), then returns.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        tokio::pin!(shutdown);
        let mut rx = RecvBatch::new();
        let far = tokio::time::Instant::now() + std::time::Duration::from_secs(86_400 * 365);
        let mut start = 0usize;
        let mut control = self.control.take();
        let mut drain_until: Option<tokio::time::Instant> = None;
        loop {
            if let Some(until) = drain_until
                && (self.engine.exchanges().0 == 0 || tokio::time::Instant::now() >= until)
            {
                tracing::info!(event = "drained", left = self.engine.exchanges().0);
                return Ok(());
            }
            let wake = self
                .engine
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or(far)
                .min(drain_until.unwrap_or(far));
            tokio::select! {
                biased;
                _ = &mut shutdown, if drain_until.is_none() => {
                    tracing::info!(event = "draining", exchanges = self.engine.exchanges().0);
                    self.engine.drain();
                    drain_until = Some(tokio::time::Instant::now() + DRAIN_LIMIT);
                }
                Some(c) = async { match control.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                    self.apply(c);
                }
                _ = tokio::time::sleep_until(wake) => {
                    self.engine.handle_timeout(Instant::now());
                }
                idx = ready_any(&self.sockets, start) => {
                    start = idx + 1;
                    self.serve_ready(&mut rx);
                }
            }
            self.flush();
            self.send_queued();
        }
    }

    /// Applies a reloaded configuration, or keeps the running one and says why.
    fn apply(&mut self, c: Control) {
        let Control::Reload(r) = c;
        let result = r.and_then(|cfg| {
            if cfg.listen != self.listen || cfg.state_dir != self.state_dir {
                return Err("listeners or state_dir changed: restart to apply".into());
            }
            self.engine.reconfigure(Instant::now(), cfg.proxy)
        });
        match &result {
            Ok(()) => tracing::info!(event = "config_reload", result = "success"),
            Err(e) => tracing::error!(event = "config_reload", result = "failure", error = %e),
        }
        let e = Event::ConfigReload { ok: result.is_ok() };
        if let Some(f) = &mut self.observer {
            f(&e);
        }
        if let Some(w) = &mut self.watcher {
            w.event(&e);
            w.handled(&self.engine, None);
        }
        self.flush();
    }

    /// Takes what is queued on every socket, a batch per socket and round, through the
    /// engine, and sends what that produced after each round; stops when the sockets
    /// are empty or after [`ROUNDS`] rounds, so that timers and signals get their turn.
    fn serve_ready(&mut self, rx: &mut RecvBatch) {
        for _ in 0..ROUNDS {
            let now = Instant::now();
            let mut got = false;
            for i in 0..self.sockets.len() {
                let sock = &self.sockets[i].1;
                let fd = sock.as_raw_fd();
                // try_io clears the readiness only when the call says WouldBlock, so a
                // socket left non-empty here is polled ready again.
                match sock.try_io(Interest::READABLE, || rx.recv(fd)) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    // An ICMP error surfaced on a UDP socket (e.g. port unreachable):
                    // nothing to deliver.
                    Err(_) => continue,
                }
                got = true;
                for (from, datagram) in rx.datagrams() {
                    self.handle(now, i, from, datagram);
                }
            }
            self.send_queued();
            if !got {
                break;
            }
        }
    }

    fn socket_for(&self, link: Link, to: &SocketAddr) -> Option<usize> {
        match link {
            Link::Unicast if to.is_ipv6() => self.unicast_v6,
            Link::Unicast => Some(self.unicast_v4),
            l => self.sockets.iter().position(|(x, _)| *x == l),
        }
    }

    /// Sends every queued datagram, a `sendmmsg` per socket and [`batch::BATCH`], and
    /// gives the buffers back to the engine for its next messages.
    fn send_queued(&mut self) {
        for (i, q) in self.queues.iter_mut().enumerate() {
            if q.items.is_empty() {
                continue;
            }
            let sock = &self.sockets[i].1;
            let fd = sock.as_raw_fd();
            let mut sent = 0;
            while sent < q.items.len() {
                match sock.try_io(Interest::WRITABLE, || q.send(fd, sent)) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // The socket's send buffer is full: what is left is lost, as a
                        // single send would have lost it.
                        let left = q.items.len() - sent;
                        tracing::warn!(event = "send_failed", datagrams = left, error = %e);
                        break;
                    }
                    Err(e) => {
                        // The first datagram of the call was refused (e.g. unreachable);
                        // the others still go.
                        tracing::warn!(event = "send_failed", to = %q.items[sent].0, error = %e);
                        sent += 1;
                    }
                }
            }
            for (_, bytes) in q.items.drain(..) {
                self.engine.recycle(bytes);
            }
        }
    }

    /// One datagram through the engine, its outputs flushed at once so that an observer
    /// can tell which datagram's handling they came from (and how long it took).
    fn handle(&mut self, now: Instant, idx: usize, from: SocketAddr, datagram: &[u8]) {
        let start = self.watcher.is_some().then(Instant::now);
        self.engine.handle(now, self.sockets[idx].0, from, datagram);
        let took = start.map(|s| s.elapsed());
        self.flush_after(now, took);
    }

    fn flush(&mut self) {
        self.flush_after(Instant::now(), None);
    }

    /// `now` is the batch's time, which is fine for the logs' rate limits and saves a
    /// clock read per datagram.
    fn flush_after(&mut self, now: Instant, took: Option<Duration>) {
        while let Some(o) = self.engine.poll_output() {
            match o {
                Output::Transmit(t) => match self.socket_for(t.link, &t.to) {
                    Some(i) => self.queues[i].items.push((t.to, t.bytes)),
                    None => {
                        tracing::warn!(event = "send_failed", to = %t.to, error = "no socket for this address family")
                    }
                },
                Output::ReserveSsn { group, up_to } => {
                    // Synchronously: nothing past the old bound goes out before this.
                    let dir = self.state_dir.as_deref();
                    match dir.map(|d| state::write(d, &self.names[group], up_to)) {
                        Some(Ok(())) => self.engine.ssn_reserved(group, up_to),
                        Some(Err(e)) => {
                            tracing::error!(event = "ssn_reservation_failed", group = %self.names[group], error = %e)
                        }
                        None => self.engine.ssn_reserved(group, up_to),
                    }
                }
                Output::Event(e) => {
                    let names = &self.names;
                    self.log.record(now, &e, |g| {
                        g.and_then(|i| names.get(i).cloned())
                            .unwrap_or_else(|| "unicast".into())
                    });
                    if let Some(f) = &mut self.observer {
                        f(&e);
                    }
                    if let Some(w) = &mut self.watcher {
                        w.event(&e);
                    }
                }
            }
        }
        if let Some(w) = &mut self.watcher {
            w.handled(&self.engine, took);
        }
    }
}

/// Rounds of batches [`Proxy::serve_ready`] takes before it yields to timers and signals.
const ROUNDS: usize = 16;

/// Waits until a socket has something to read; which one, polling from `start`
/// round-robin. Every socket's waker is registered when it returns Pending.
async fn ready_any(sockets: &[(Link, Arc<UdpSocket>)], start: usize) -> usize {
    std::future::poll_fn(|cx| {
        let n = sockets.len();
        for k in 0..n {
            let i = (start + k) % n;
            // An error (an ICMP report) also means: try reading, the read will say.
            if sockets[i].1.poll_recv_ready(cx).is_ready() {
                return Poll::Ready(i);
            }
        }
        Poll::Pending
    })
    .await
}
