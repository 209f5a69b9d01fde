//! The driver around the engine: sockets in, engine, sockets out. It knows no CoAP:
//! every decision is the engine's.
//!
//! The forwarding loop runs on a thread of its own and waits with `ppoll` only when every
//! socket is empty, as a plain relay does; [`Proxy::run`] is the async face that hands it
//! signals and reloads. Why not the tokio reactor: a socket registered with epoll stays
//! on its own wait queue, so every datagram sent wakes that queue again when the kernel
//! frees it (sock_wfree), which under load cost about 4% of the proxy's time; and the
//! readiness bookkeeping cost about 2% more. `ppoll` registers only while it sleeps.

mod batch;
pub mod bridge;
mod logs;
pub mod replay;
pub mod sockets;
pub mod state;

use std::future::Future;
use std::io;
use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use batch::{RecvBatch, SendQueue};

use crate::proxy::{Engine, Event, Link, Output, ProxyConfig};
pub use sockets::Interface;

/// How a group's multicast leaves this host.
#[derive(Debug, Clone)]
pub struct Egress {
    /// The interface multicast leaves by (`IP_MULTICAST_IF`, `IPV6_MULTICAST_IF`).
    pub interface: Interface,
    pub(crate) hop_limit: u32,
    /// Source address for the egress socket (its unicast port receives responses).
    pub bind: Option<std::net::IpAddr>,
}

/// Everything `groxy run` needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The engine's configuration.
    pub proxy: ProxyConfig,
    /// The addresses clients reach the proxy at, one socket each.
    pub listen: Vec<SocketAddr>,
    /// One per group, in the order of `proxy.groups`.
    pub egress: Vec<Egress>,
    /// Where the proxy's Sender Sequence Numbers (needed when it is a member) and the
    /// signature checker's replay windows (needed when a group is checked) are kept.
    pub state_dir: Option<std::path::PathBuf>,
}

/// Requests to a running proxy (from signal handlers).
#[derive(Debug, Clone)]
pub(crate) enum Control {
    /// A configuration read anew (SIGHUP), or why it could not be.
    Reload(Result<RunConfig, String>),
}

/// How long a draining proxy waits for exchanges in flight at most before it exits.
pub(crate) const DRAIN_LIMIT: Duration = Duration::from_secs(75);

/// A callback that sees every engine event.
pub(crate) type EventObserver = Box<dyn FnMut(&Event) + Send>;

/// What the operations layer sees of the driver: every event, and the engine after each
/// datagram's or timer run's outputs went out (gauges such as the exchange table and key
/// generations live in the engine, not in events). Called on the forwarding thread: keep it
/// cheap.
pub trait Observer: Send {
    /// Every event, as the engine emits it.
    fn event(&mut self, e: &Event);
    /// `took` is how long `Engine::handle` took for the datagram whose outputs were just
    /// flushed (the engine reads no clock, so the driver measures); `None` after timers.
    fn handled(&mut self, engine: &Engine, took: Option<Duration>);
    /// Another observer for another forwarding thread, feeding the same figures without
    /// a lock between the threads; `None` (the default): the threads share this one,
    /// their calls serialised by a lock.
    fn fork(&self) -> Option<Box<dyn Observer>> {
        None
    }
}

/// What the async side tells the forwarding thread.
enum Command {
    /// A reload; with several threads each reports on the sender whether it applied it.
    Control(
        Box<Control>,
        Option<tokio::sync::oneshot::Sender<Result<(), String>>>,
    ),
    /// Every thread applied a reload (or the first refused it): log and count it.
    Announce(Result<(), String>),
    /// Stop taking requests, finish what is in flight, return.
    Drain,
}

/// Bound sockets, ready to run: one [`Worker`] per forwarding thread (`[proxy] threads`).
pub struct Proxy {
    workers: Vec<Worker>,
    control: Option<tokio::sync::mpsc::UnboundedReceiver<Control>>,
    /// The exclusive lock on `state_dir`, held while the proxy runs (see
    /// [`lock_state_dir`]).
    _lock: Option<std::fs::File>,
}

/// One forwarding thread: its engine and its own sockets (listeners bound with
/// `SO_REUSEPORT` beside the other threads', egress sockets of its own so that responses
/// come back to the thread whose engine holds the exchange).
struct Worker {
    engine: Engine,
    sockets: Vec<(Link, UdpSocket)>,
    /// Per socket (same index), what is to go out of it at the end of the batch.
    queues: Vec<SendQueue>,
    /// Index into `sockets` of the first group egress socket: group g's port p is at
    /// `group_base + g * ports + p`.
    group_base: usize,
    ports: usize,
    /// Indexes into `sockets` of the unicast egress per address family, by pool port.
    unicast_v4: Vec<usize>,
    unicast_v6: Vec<usize>,
    log: logs::EventLog,
    names: Vec<String>,
    observer: Option<EventObserver>,
    watcher: Option<Box<dyn Observer>>,
    state_dir: Option<std::path::PathBuf>,
    /// The checked groups' replay windows on stable storage (None: no group checked),
    /// shared by every thread: it is locked while a thread takes the windows' state and
    /// writes it, so that no thread sends what another's pending write still covers.
    replay: std::sync::Arc<std::sync::Mutex<Option<replay::ReplayStore>>>,
    /// Per group, the buffer its replay state is taken into before each write (reused:
    /// see [`Engine::take_replay_state_into`]).
    replay_states: Vec<crate::oscore::ReplayState>,
    listen: Vec<SocketAddr>,
    /// Which forwarding thread this is, and how many there are.
    thread: (usize, usize),
    /// The HTTP bridge's virtual listener, if `[http]` is configured (see `bridge`).
    bridge: Option<bridge::BridgeLink>,
}

/// Locks `state_dir` for this process (`flock(LOCK_EX | LOCK_NB)` on
/// `<state_dir>/groxy.lock`): two proxies sharing it would each reserve Sender Sequence
/// Numbers and record replay windows over the other's, reusing nonces and letting
/// replays through. The lock goes with the process, however it ends (kill -9 too).
pub fn lock_state_dir(dir: &std::path::Path) -> io::Result<std::fs::File> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("groxy.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    // SAFETY: flock on a descriptor this function owns; no memory is passed.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!(
                "proxy.state_dir {}: locked by another groxy process ({e}); two proxies must \
                 not share Sender Sequence Numbers and replay windows",
                dir.display()
            ),
        ));
    }
    Ok(f)
}

impl Proxy {
    /// Binds every socket of every forwarding thread; fails before serving anything if
    /// one cannot be had.
    pub fn bind(cfg: RunConfig) -> io::Result<Self> {
        let lock = cfg.state_dir.as_deref().map(lock_state_dir).transpose()?;
        let threads = cfg.proxy.threads.max(1);
        let shared = (threads > 1)
            .then(|| {
                let mut key = [0u8; 16];
                getrandom::fill(&mut key)
                    .map_err(|e| io::Error::other(format!("randomness: {e}")))?;
                Ok::<_, io::Error>(crate::proxy::Shared::new(threads, key))
            })
            .transpose()?;
        let mut workers: Vec<Worker> = Vec::with_capacity(threads);
        let mut cfg = cfg;
        // Deduplication is per thread (a client endpoint always reaches the same one), so
        // the table is split: the whole proxy holds `dedup_capacity` entries, as with one
        // thread; each address's share stays `dedup_per_client` per thread.
        cfg.proxy.limits.dedup_capacity = (cfg.proxy.limits.dedup_capacity / threads).max(1);
        for t in 0..threads {
            if t == 1 {
                // The others listen where the first one did (port 0 resolved).
                cfg.listen = workers[0].listen_addrs();
            }
            let shared = shared.as_ref().map(|s| s.thread(t));
            let mut w = Worker::bind(cfg.clone(), shared, (t, threads))?;
            if t == 0 {
                w.listen = cfg.listen.clone();
            } else {
                w.listen = workers[0].listen.clone();
                // One store for all: the first thread restored the shared windows.
                w.replay = workers[0].replay.clone();
            }
            workers.push(w);
        }
        Ok(Proxy {
            workers,
            control: None,
            _lock: lock,
        })
    }

    /// Addresses the listeners are bound to (port 0 resolved).
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.workers[0].listen_addrs()
    }

    /// Address of a group's egress socket of the first thread (where devices' responses
    /// to its requests arrive; each thread has its own).
    pub fn group_addr(&self, group: usize) -> Option<SocketAddr> {
        self.workers[0].group_addr(group)
    }

    /// How many forwarding threads serve (`[proxy] threads`).
    pub fn threads(&self) -> usize {
        self.workers.len()
    }

    /// Sees every engine event of every thread (metrics hook); with several threads the
    /// calls are serialised by a lock.
    pub fn on_event(&mut self, f: impl FnMut(&Event) + Send + 'static) {
        if self.workers.len() == 1 {
            self.workers[0].observer = Some(Box::new(f));
            return;
        }
        let f = std::sync::Arc::new(std::sync::Mutex::new(f));
        for w in &mut self.workers {
            let f = f.clone();
            w.observer = Some(Box::new(move |e: &Event| (crate::sync::lock(&f))(e)));
        }
    }

    /// Sees every event and each engine after its flushes (metrics hook, see
    /// [`Observer`]). With several threads each gets its own [`Observer::fork`] where the
    /// observer offers one (the metrics do: their counters are atomics, so the threads
    /// add to the same series with no lock held between them); otherwise one observer
    /// sees them all, its calls serialised by a lock. Gauges read from the engine are the
    /// whole proxy's or kept per thread by [`Engine::thread`].
    pub fn observe(&mut self, o: impl Observer + 'static) {
        let forks: Option<Vec<Box<dyn Observer>>> =
            (1..self.workers.len()).map(|_| o.fork()).collect();
        match forks {
            Some(forks) => {
                for (w, f) in self.workers.iter_mut().skip(1).zip(forks) {
                    w.watcher = Some(f);
                }
                self.workers[0].watcher = Some(Box::new(o));
            }
            None => {
                let o: SharedObserver = std::sync::Arc::new(std::sync::Mutex::new(Box::new(o)));
                for w in &mut self.workers {
                    w.watcher = Some(Box::new(Locked(o.clone())));
                }
            }
        }
    }

    /// Attaches the HTTP bridge as the listener after the UDP ones, on the first
    /// forwarding thread; the HTTP side gets the sender of request datagrams and the
    /// receiver of what the engine sends back.
    pub fn attach_bridge(
        &mut self,
    ) -> io::Result<(
        bridge::BridgeSender,
        tokio::sync::mpsc::UnboundedReceiver<bridge::FromEngine>,
    )> {
        self.workers[0].attach_bridge()
    }

    /// A handle to reload the running proxy.
    pub(crate) fn controller(&mut self) -> tokio::sync::mpsc::UnboundedSender<Control> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.control = Some(rx);
        tx
    }

    /// Serves until `shutdown` completes, then drains: new requests get 5.03 while the
    /// exchanges in flight run to their timeouts (at most `DRAIN_LIMIT`, 75 s), then returns.
    /// The forwarding itself runs on threads of their own (see the module's comment).
    ///
    /// A reload goes to every thread at once, each applying it between two batches; where
    /// a group's checking starts, to the first thread and only once it applied it to the
    /// others, so that the group's recorded windows are restored before any thread checks
    /// under them. Once one thread installed a rekeyed group's new epoch, the others admit
    /// nothing under the old one (the shared windows name the epoch): until their own
    /// reload they drop that group's signed requests rather than forward under the old
    /// keys. The reload is logged and counted once, by the first thread.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let Proxy {
            workers,
            mut control,
            _lock,
        } = self;
        // Which groups are checked, as of the configuration in force (see the reload).
        let mut checked: Vec<bool> = {
            let e = &workers[0].engine;
            (0..e.config().groups.len())
                .map(|g| e.checker(g).is_some())
                .collect()
        };
        let mut tells = Vec::new();
        let mut dones = Vec::new();
        for (t, mut w) in workers.into_iter().enumerate() {
            let (wake_tx, wake_rx) = UnixStream::pair()?;
            wake_tx.set_nonblocking(true)?;
            wake_rx.set_nonblocking(true)?;
            let (cmd_tx, cmd_rx) = mpsc::channel();
            let (done_tx, done_rx) = tokio::sync::oneshot::channel();
            let name = if t == 0 {
                "groxy-forward".to_string()
            } else {
                format!("groxy-forward-{t}")
            };
            std::thread::Builder::new().name(name).spawn(move || {
                let _ = done_tx.send(w.forward(&cmd_rx, &wake_rx));
            })?;
            tells.push((cmd_tx, wake_tx));
            dones.push(done_rx);
        }
        // A byte on the socket pair wakes a thread from ppoll to read its commands;
        // when this future is dropped, the pairs' ends close and the threads stop.
        let tell = |tells: &mut Vec<(mpsc::Sender<Command>, UnixStream)>, t: usize, c: Command| {
            let (cmd, wake) = &mut tells[t];
            let _ = cmd.send(c);
            let _ = wake.write(&[1]);
        };
        let mut all_done = Box::pin(async move {
            let mut result = Ok(());
            for d in dones {
                let r = d
                    .await
                    .unwrap_or_else(|_| Err(io::Error::other("the forwarding thread panicked")));
                if result.is_ok() {
                    result = r;
                }
            }
            result
        });
        tokio::pin!(shutdown);
        let mut draining = false;
        loop {
            tokio::select! {
                r = &mut all_done => {
                    return r;
                }
                _ = &mut shutdown, if !draining => {
                    draining = true;
                    for t in 0..tells.len() {
                        tell(&mut tells, t, Command::Drain);
                    }
                }
                Some(c) = async { match control.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                    if tells.len() == 1 {
                        tell(&mut tells, 0, Command::Control(Box::new(c), None));
                        continue;
                    }
                    // Every thread stops forwarding while it builds the new state (a
                    // debug build takes a good part of a second per thread): in parallel,
                    // unless a group's checking starts, whose recorded windows the first
                    // thread must restore before any other checks under them.
                    let starting = match &c {
                        Control::Reload(Ok(cfg)) => cfg.proxy.groups.iter().enumerate().any(|(g, s)| {
                            !checked.get(g).copied().unwrap_or(false)
                                && s.security.as_ref().is_some_and(|s| s.policy != crate::proxy::Policy::Off)
                        }),
                        Control::Reload(Err(_)) => false,
                    };
                    let mut acks = Vec::new();
                    let send = |tells: &mut Vec<(mpsc::Sender<Command>, UnixStream)>, t: usize| {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        tell(tells, t, Command::Control(Box::new(c.clone()), Some(tx)));
                        rx
                    };
                    let first = send(&mut tells, 0);
                    let mut result = if starting {
                        first.await.unwrap_or_else(|_| Err("the forwarding thread stopped".into()))
                    } else {
                        acks.push(first);
                        Ok(())
                    };
                    if result.is_ok() {
                        for t in 1..tells.len() {
                            acks.push(send(&mut tells, t));
                        }
                    }
                    // The first thread's verdict is the reload's (the others apply the
                    // same configuration to the same state); any refusal is reported.
                    for a in acks {
                        let r = a.await.unwrap_or_else(|_| Err("the forwarding thread stopped".into()));
                        if result.is_ok() {
                            result = r;
                        }
                    }
                    if result.is_ok() && let Control::Reload(Ok(cfg)) = &c {
                        checked = checked_groups(&cfg.proxy);
                    }
                    tell(&mut tells, 0, Command::Announce(result));
                }
            }
        }
    }
}

/// Per group, whether `cfg` checks its requests (policy enforce or monitor).
fn checked_groups(cfg: &ProxyConfig) -> Vec<bool> {
    cfg.groups
        .iter()
        .map(|g| {
            g.security
                .as_ref()
                .is_some_and(|s| s.policy != crate::proxy::Policy::Off)
        })
        .collect()
}

type SharedObserver = std::sync::Arc<std::sync::Mutex<Box<dyn Observer>>>;

/// One thread's handle on an observer every thread feeds.
struct Locked(SharedObserver);

impl Observer for Locked {
    fn event(&mut self, e: &Event) {
        crate::sync::lock(&self.0).event(e);
    }
    fn handled(&mut self, engine: &Engine, took: Option<Duration>) {
        crate::sync::lock(&self.0).handled(engine, took);
    }
}

impl Worker {
    /// Binds one thread's sockets: its listeners (with `SO_REUSEPORT` when there are
    /// several threads) and its own egress; fails before serving anything if one cannot
    /// be had.
    fn bind(
        mut cfg: RunConfig,
        shared: Option<crate::proxy::Shared>,
        thread: (usize, usize),
    ) -> io::Result<Self> {
        if cfg.egress.len() != cfg.proxy.groups.len() {
            return Err(io::Error::other("one egress per group"));
        }
        let mut sockets = Vec::new();
        for (i, addr) in cfg.listen.iter().enumerate() {
            let s = if thread.1 > 1 {
                sockets::shared_listener(*addr)
            } else {
                sockets::listener(*addr)
            }
            .map_err(|e| io::Error::new(e.kind(), format!("listen {addr}: {e}")))?;
            sockets.push((Link::Listener(i), s));
        }
        // Each egress is a pool of source ports: every port has Message IDs of its own
        // toward a destination (RFC 7252 §4.4), so the pool sets the sustained rate.
        let ports = cfg.proxy.limits.egress_ports.max(1);
        let group_base = sockets.len();
        for (i, (g, e)) in cfg.proxy.groups.iter().zip(&cfg.egress).enumerate() {
            for p in 0..ports {
                let s = sockets::group_egress(g.addr, &e.interface, e.hop_limit, e.bind).map_err(
                    |err| io::Error::new(err.kind(), format!("group {}: {err}", g.name)),
                )?;
                sockets.push((Link::Group(i, p), s));
            }
        }
        let (mut unicast_v4, mut unicast_v6) = (Vec::new(), Vec::new());
        for p in 0..ports {
            unicast_v4.push(sockets.len());
            sockets.push((Link::Unicast(p), sockets::unicast_egress(false)?));
            // IPv6 may be absent on a host; unicast forwarding to IPv6 then fails per
            // request.
            if let Ok(s) = sockets::unicast_egress(true) {
                unicast_v6.push(sockets.len());
                sockets.push((Link::Unicast(p), s));
            }
        }
        // Where the proxy itself is reached, so that a request naming it is not forwarded
        // to itself.
        cfg.proxy.local.listen = sockets
            .iter()
            .filter(|(l, _)| matches!(l, Link::Listener(_)))
            .filter_map(|(_, s)| s.local_addr().ok())
            .collect();
        cfg.proxy.local.host_addrs = sockets::host_addrs();
        let queues = sockets.iter().map(|_| SendQueue::default()).collect();
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| io::Error::other(format!("randomness: {e}")))?;
        let names = cfg.proxy.groups.iter().map(|g| g.name.clone()).collect();
        let engine = match shared {
            Some(sh) => Engine::with_shared(cfg.proxy, Instant::now(), seed, sh),
            None => Engine::new(cfg.proxy, Instant::now(), seed),
        }
        .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Worker {
            engine,
            sockets,
            queues,
            group_base,
            ports: ports as usize,
            unicast_v4,
            unicast_v6,
            log: logs::EventLog::default(),
            names,
            observer: None,
            watcher: None,
            state_dir: cfg.state_dir.clone(),
            replay: Default::default(),
            replay_states: Vec::new(),
            listen: cfg.listen.clone(),
            thread,
            bridge: None,
        })
        .and_then(|mut p: Worker| {
            // The windows and the member's Sender Sequence Numbers are shared: the first
            // thread restores them for all (one read and one write of each `.ssn` file).
            if thread.0 == 0 {
                state::restore(&mut p.engine, &p.names, p.state_dir.as_deref())?;
                let store = replay::restore(&mut p.engine, &p.names, p.state_dir.as_deref())?;
                p.replay = std::sync::Arc::new(std::sync::Mutex::new(store));
            }
            Ok(p)
        })
    }

    fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.sockets
            .iter()
            .filter(|(l, _)| matches!(l, Link::Listener(_)))
            .filter_map(|(_, s)| s.local_addr().ok())
            .collect()
    }

    fn group_addr(&self, group: usize) -> Option<SocketAddr> {
        self.sockets
            .iter()
            .find(|(l, _)| *l == Link::Group(group, 0))
            .and_then(|(_, s)| s.local_addr().ok())
    }

    /// Attaches the HTTP bridge as the listener after the UDP ones.
    fn attach_bridge(
        &mut self,
    ) -> io::Result<(
        bridge::BridgeSender,
        tokio::sync::mpsc::UnboundedReceiver<bridge::FromEngine>,
    )> {
        let index = self.listen.len();
        let (link, tx, rx) = bridge::pair(index)?;
        self.bridge = Some(link);
        Ok((tx, rx))
    }

    /// The forwarding loop: a batch from every socket with something queued, through the
    /// engine, out again; timers when due; a sleep in `ppoll` only when nothing was
    /// queued.
    fn forward(
        &mut self,
        commands: &mpsc::Receiver<Command>,
        mut wake: &UnixStream,
    ) -> io::Result<()> {
        let mut rx = RecvBatch::new();
        let mut fds: Vec<libc::pollfd> = self
            .sockets
            .iter()
            .map(|(_, s)| s.as_raw_fd())
            .chain(self.bridge.as_ref().map(|b| b.wake.as_raw_fd()))
            .chain([wake.as_raw_fd()])
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let mut drain_until: Option<Instant> = None;
        let mut busy = false;
        loop {
            let now = Instant::now();
            if let Some(until) = drain_until
                && (self.engine.exchanges().0 == 0 || now >= until)
            {
                tracing::info!(event = "drained", left = self.engine.exchanges().0);
                return Ok(());
            }
            // Every round looks at every socket: reading only those that yielded last time
            // delays the others' datagrams, which in a closed loop costs throughput.
            // Busy: only look (a zero timeout registers no waiter); idle: sleep until a
            // datagram, a command or the next timer.
            let timeout = if busy {
                Some(Duration::ZERO)
            } else {
                let next = match (self.engine.poll_timeout(), drain_until) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                next.map(|t| t.saturating_duration_since(now))
            };
            poll(&mut fds, timeout)?;
            if fds.last().is_some_and(|f| f.revents != 0) {
                let mut b = [0u8; 64];
                while wake.read(&mut b).is_ok_and(|n| n > 0) {}
                loop {
                    match commands.try_recv() {
                        Err(mpsc::TryRecvError::Empty) => break,
                        // `run` was dropped without a shutdown: stop, as a task would.
                        Err(mpsc::TryRecvError::Disconnected) => {
                            tracing::info!(event = "stopped", reason = "handle dropped");
                            return Ok(());
                        }
                        Ok(Command::Control(c, ack)) => {
                            let r = self.apply(*c);
                            if let Some(a) = ack {
                                let _ = a.send(r);
                            }
                        }
                        Ok(Command::Announce(r)) => {
                            self.announce(&r);
                            self.flush();
                        }
                        Ok(Command::Drain) => {
                            tracing::info!(
                                event = "draining",
                                exchanges = self.engine.exchanges().0
                            );
                            self.engine.drain();
                            // Draining ended every observation: their deregistrations
                            // leave now, before the drain can complete.
                            self.flush();
                            drain_until = Some(Instant::now() + DRAIN_LIMIT);
                        }
                    }
                }
            }
            if self
                .engine
                .poll_timeout()
                .is_some_and(|t| t <= Instant::now())
            {
                self.engine.handle_timeout(Instant::now());
                self.flush();
            }
            busy = self.serve_ready(&mut rx, &fds);
            busy |= self.serve_bridge(&fds);
            self.send_queued();
        }
    }

    /// Applies a reloaded configuration, or keeps the running one and says why; says
    /// whether it applied. Only the first thread logs and counts the reload (the others
    /// apply it after it, see [`Proxy::run`]).
    fn apply(&mut self, c: Control) -> Result<(), String> {
        let Control::Reload(r) = c;
        let first = self.thread.0 == 0;
        let result = r.and_then(|cfg| {
            if cfg.listen != self.listen || cfg.state_dir != self.state_dir {
                return Err("listeners or state_dir changed: restart to apply".into());
            }
            // Membership that starts with this reload would begin at Sender Sequence
            // Number 0: sound only where this state_dir never recorded numbers for the
            // group (RFC 10021 §2.6.1.1). Otherwise a restart applies it, continuing
            // above the recorded bound (state::restore).
            let members = self.engine.member_groups();
            for (g, spec) in cfg.proxy.groups.iter().enumerate() {
                let joins = !members.contains(&g)
                    && spec.security.as_ref().is_some_and(|s| s.member.is_some());
                if joins
                    && let Some(dir) = self.state_dir.as_deref()
                    && state::recorded(dir, &self.names[g])
                {
                    return Err(format!(
                        "group {}: membership starts with this reload, and {}.ssn records                          Sender Sequence Numbers of an earlier membership: restart to apply",
                        self.names[g], self.names[g]
                    ));
                }
            }
            // A group whose checking starts now (its policy was off) takes back the
            // windows recorded for it, as at start; keying material that went back is
            // refused before anything changes.
            let starting: Vec<usize> = cfg
                .proxy
                .groups
                .iter()
                .enumerate()
                .filter(|(g, s)| {
                    self.engine.checker(*g).is_none()
                        && s.security
                            .as_ref()
                            .is_some_and(|s| s.policy != crate::proxy::Policy::Off)
                })
                .map(|(g, _)| g)
                .collect();
            // Later threads join the windows the first one restored.
            let starting = if first { starting } else { Vec::new() };
            for &g in &starting {
                let name = &self.names[g];
                let dir = self.state_dir.as_deref().ok_or_else(|| {
                    format!("group {name}: a checked group needs proxy.state_dir")
                })?;
                if let Some((_, st)) = replay::read(dir, name).map_err(|e| e.to_string())? {
                    let c = &cfg.proxy.groups[g]
                        .security
                        .as_ref()
                        .expect("checked")
                        .checker;
                    crate::oscore::checker::restore_decision(&st, &c.gid, c.key_generation)
                        .map_err(|e| format!("group {name}: {e}"))?;
                }
            }
            self.engine.reconfigure(Instant::now(), cfg.proxy)?;
            for g in starting {
                let dir = self.state_dir.as_deref().expect("checked above");
                let replay = self.replay.clone();
                let mut guard = crate::sync::lock(&replay);
                let store = match guard.as_mut() {
                    Some(s) => s,
                    None => guard.insert(
                        replay::ReplayStore::new(dir, self.names.len())
                            .map_err(|e| e.to_string())?,
                    ),
                };
                replay::attach_group(&mut self.engine, store, g, &self.names[g]).map_err(|e| {
                    format!(
                        "applied, but the replay state of group {}: {e}",
                        self.names[g]
                    )
                })?;
            }
            Ok(())
        });
        if self.thread.1 > 1 {
            // Several threads: the reload is announced once every thread applied it (see
            // `Proxy::run` and `announce`), so that a client that saw it counted finds it
            // in force on whichever thread it reaches.
            if let Some(w) = &mut self.watcher {
                w.handled(&self.engine, None);
            }
            self.flush();
            self.persist_replay();
            return result;
        }
        self.announce(&result);
        self.flush();
        // A rekeyed group's new, empty epoch is recorded now, not with the next request:
        // a restart under the old keys is refused from here on.
        self.persist_replay();
        result
    }

    /// Logs and counts a reload's outcome (once for the proxy).
    fn announce(&mut self, result: &Result<(), String>) {
        match result {
            Ok(()) => tracing::info!(event = "config_reload", result = "success"),
            Err(e) => tracing::error!(event = "config_reload", result = "failure", error = %e),
        }
        let ok = result.is_ok();
        let e = Event::ConfigReload { ok };
        if let Some(f) = &mut self.observer {
            f(&e);
        }
        if let Some(w) = &mut self.watcher {
            // Gauges first (key generations, table size), then the reload's counter: the
            // metrics endpoint runs on another thread, and a scrape that begins after one
            // saw the reload counted sees what it changed. (Within one scrape the
            // registry reads its collectors in no fixed order, so that one may not.)
            w.handled(&self.engine, None);
            w.event(&e);
        }
    }

    /// Takes a batch off every socket `ppoll` found readable, through the engine, and
    /// sends what that produced; says whether there was anything.
    fn serve_ready(&mut self, rx: &mut RecvBatch, fds: &[libc::pollfd]) -> bool {
        let now = Instant::now();
        let mut got = false;
        for (i, f) in fds.iter().enumerate().take(self.sockets.len()) {
            if f.revents == 0 {
                continue;
            }
            // WouldBlock: nothing after all; another error is an ICMP report surfaced on
            // the socket (e.g. port unreachable), which reading has now cleared.
            if rx.recv(self.sockets[i].1.as_raw_fd()).is_err() {
                continue;
            }
            got = true;
            // The batch's group-mode signatures are verified together first (see
            // `Engine::begin_batch`); then each datagram is handled and flushed as before,
            // and carries its share of that verification's time.
            let link = self.sockets[i].0;
            let batch: smallvec::SmallVec<[(SocketAddr, &[u8]); 32]> = rx.datagrams().collect();
            let start = self.watcher.is_some().then(Instant::now);
            self.engine.begin_batch(now, link, &batch);
            let share = start.map(|s| s.elapsed() / batch.len().max(1) as u32);
            for &(from, datagram) in &batch {
                self.handle_shared(now, i, from, datagram, share);
            }
            self.engine.end_batch();
            self.send_queued();
        }
        got
    }

    /// The HTTP bridge's requests, each through the engine as a datagram on its virtual
    /// listener; its events tell the bridge what became of it. Says whether more wait.
    fn serve_bridge(&mut self, fds: &[libc::pollfd]) -> bool {
        let Some(b) = self.bridge.as_mut() else {
            return false;
        };
        if !b.due(fds[self.sockets.len()].revents) {
            return false;
        }
        let (requests, more) = b.take();
        let link = Link::Listener(b.index);
        for r in requests {
            let now = Instant::now();
            let token = crate::coap::MessageView::parse(&r.datagram)
                .map(|v| v.token().to_vec())
                .unwrap_or_default();
            if let Some(b) = self.bridge.as_mut() {
                b.begin();
            }
            let start = self.watcher.is_some().then(Instant::now);
            self.engine.handle(now, link, r.from, &r.datagram);
            let took = start.map(|s| s.elapsed());
            self.flush_after(now, took);
            if let Some(b) = self.bridge.as_mut() {
                b.end(token, now);
            }
        }
        more
    }

    fn socket_for(&self, link: Link, to: &SocketAddr) -> Option<usize> {
        match link {
            Link::Unicast(p) if to.is_ipv6() => self.unicast_v6.get(p as usize).copied(),
            Link::Unicast(p) => self.unicast_v4.get(p as usize).copied(),
            Link::Group(g, p) => Some(self.group_base + g * self.ports + p as usize),
            Link::Listener(i) => Some(i),
        }
    }

    /// Puts the replay windows that the queued datagrams' admission moved on stable
    /// storage, before any of them is sent (see [`Engine::take_replay_state`]): one write
    /// and one `fdatasync` per changed group per batch. If a write fails, what is queued
    /// for that group's egress under policy enforce does not leave: its admission might
    /// not survive a crash, and a copy of it could then be multicast again. Under monitor
    /// the filter decides nothing, so its traffic goes; the failure is logged either way.
    fn persist_replay(&mut self) {
        // Nothing this thread queued relies on a write: no need to wait for another
        // thread's (with one thread, nothing is dirty either).
        if !self.engine.replay_pending() {
            return;
        }
        // Locked from the take to the end of the writes: a thread that finds the windows
        // clean because another took them waits here until that write is on disk.
        let replay = self.replay.clone();
        let mut store = crate::sync::lock(&replay);
        let changed = self.engine.take_replay_state_into(&mut self.replay_states);
        for g in changed {
            let r = match store.as_mut() {
                Some(store) => store.write(g, &self.replay_states[g]),
                None => Err(io::Error::other("no state_dir for the replay windows")),
            };
            if r.is_err() && self.thread.1 > 1 {
                // The state may hold other threads' admissions, which they will send
                // when they find it clean: dirty again, so each writes (or drops) its own.
                self.engine.replay_unsaved(g);
            }
            let Err(e) = r else { continue };
            let mut dropped = 0usize;
            let now = Instant::now();
            if self.engine.enforced(g) {
                for (i, (link, _)) in self.sockets.iter().enumerate() {
                    if !matches!(link, Link::Group(x, _) if *x == g) {
                        continue;
                    }
                    for (to, bytes) in self.queues[i].items.drain(..) {
                        dropped += 1;
                        let ev = Event::Dropped {
                            reason: crate::proxy::DropReason::ReplayStateUnsaved,
                            from: to,
                        };
                        let names = &self.names;
                        self.log.record(now, &ev, |g| {
                            g.and_then(|i| names.get(i).cloned())
                                .unwrap_or_else(|| "unicast".into())
                        });
                        if let Some(f) = &mut self.observer {
                            f(&ev);
                        }
                        if let Some(w) = &mut self.watcher {
                            w.event(&ev);
                        }
                        self.engine.recycle(bytes);
                    }
                }
            }
            tracing::error!(event = "replay_state_write_failed", group = %self.names[g], dropped, error = %e);
        }
    }

    /// Sends every queued datagram, a `sendmmsg` per socket and [`batch::BATCH`], and
    /// gives the buffers back to the engine for its next messages. The replay state goes
    /// to stable storage first.
    fn send_queued(&mut self) {
        self.persist_replay();
        for (i, q) in self.queues.iter_mut().enumerate() {
            if q.items.is_empty() {
                continue;
            }
            let fd = self.sockets[i].1.as_raw_fd();
            let mut sent = 0;
            while sent < q.items.len() {
                match q.send(fd, sent) {
                    Ok(n) => sent += n,
                    Err(e) if e.error.kind() == io::ErrorKind::WouldBlock => {
                        // The socket's send buffer is full: what is left is lost, as a
                        // single send would have lost it.
                        let left = q.items.len() - sent;
                        tracing::warn!(event = "send_failed", datagrams = left, error = %e.error);
                        break;
                    }
                    Err(e) => {
                        // The first message of the call was refused (e.g. unreachable):
                        // its datagrams, all to one address, are lost; the others go.
                        tracing::warn!(event = "send_failed", to = %q.items[sent].0, datagrams = e.dropped, error = %e.error);
                        sent += e.dropped;
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
    #[cfg(test)]
    fn handle(&mut self, now: Instant, idx: usize, from: SocketAddr, datagram: &[u8]) {
        self.handle_shared(now, idx, from, datagram, None);
    }

    /// [`handle`](Self::handle) for a datagram of a batch whose signatures were verified
    /// together: `share` is its part of that time, added to its own.
    fn handle_shared(
        &mut self,
        now: Instant,
        idx: usize,
        from: SocketAddr,
        datagram: &[u8],
        share: Option<Duration>,
    ) {
        let start = self.watcher.is_some().then(Instant::now);
        self.engine.handle(now, self.sockets[idx].0, from, datagram);
        let took = start.map(|s| s.elapsed() + share.unwrap_or_default());
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
                Output::Transmit(t)
                    if self
                        .bridge
                        .as_ref()
                        .is_some_and(|b| t.link == Link::Listener(b.index)) =>
                {
                    if let Some(b) = self.bridge.as_mut() {
                        b.transmit(t.to, t.bytes);
                    }
                }
                Output::Transmit(t) => match self.socket_for(t.link, &t.to) {
                    Some(i) => self.queues[i].items.push((t.to, t.bytes)),
                    None => {
                        tracing::warn!(event = "send_failed", to = %t.to, error = "no socket for this address family")
                    }
                },
                Output::ReserveSsn { group, up_to } => {
                    // Synchronously: nothing past the old bound goes out before this.
                    let dir = self.state_dir.as_deref();
                    let epoch = self.engine.member_epoch(group);
                    match dir.map(|d| state::write(d, &self.names[group], up_to, epoch.as_ref())) {
                        Some(Ok(())) => self.engine.ssn_reserved(group, up_to),
                        Some(Err(e)) => {
                            tracing::error!(event = "ssn_reservation_failed", group = %self.names[group], error = %e);
                            // Shared by the threads: the next answer asks again.
                            self.engine.ssn_reservation_failed(group);
                        }
                        None => self.engine.ssn_reserved(group, up_to),
                    }
                }
                Output::Event(e) => {
                    if let Some(b) = self.bridge.as_mut() {
                        b.event(&e);
                    }
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

/// `ppoll` on `fds` for at most `timeout` (None: no limit); EINTR is a return too.
fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<()> {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let tp = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `fds` is a valid array of `fds.len()` pollfd for the call's duration; the
    // timespec, if any, outlives it; no signal mask is given.
    let r = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            tp,
            std::ptr::null(),
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
        fds.iter_mut().for_each(|f| f.revents = 0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coap::build::{self, NON};
    use crate::coap::{MessageView, options as opt};
    use crate::oscore::alg::SigAlg;
    use crate::oscore::cred::{Credential, PrivateKey};
    use crate::oscore::{CheckerConfig, ContextConfig, Mode, SecurityContext};
    use crate::proxy::{DropReason, GroupSecurity, Policy};
    use std::sync::{Arc, Mutex};

    /// A checking proxy's configuration (policy `policy`, epoch `gid` / `kg`) on
    /// loopback with its state in `dir`, and the client context whose group requests it
    /// admits.
    fn run_config(
        dir: Option<&std::path::Path>,
        policy: Policy,
        gid: &[u8],
        kg: u64,
    ) -> (RunConfig, SecurityContext) {
        let gm = PrivateKey::generate(SigAlg::EdDsa);
        let key = PrivateKey::generate(SigAlg::EdDsa);
        let (gm_cred, cred) = (
            Credential::ccs_for("gm", &gm.public_key()),
            Credential::ccs_for("client", &key.public_key()),
        );
        let (secret, salt) = (vec![7u8; 16], vec![9u8; 8]);
        let ctx = SecurityContext::new(&ContextConfig {
            master_secret: secret.clone(),
            master_salt: salt.clone(),
            id_context: Some(gid.to_vec()),
            alg_aead: Some(10),
            alg_group_enc: Some(10),
            alg_signature: Some(-8),
            alg_pairwise_key_agreement: Some(-27),
            gm_cred: Some(gm_cred.bytes().to_vec()),
            sender_id: vec![0x25],
            private_key: Some(key.to_bytes().to_vec()),
            sender_cred: Some(cred.bytes().to_vec()),
            key_generation: kg,
            ..Default::default()
        })
        .unwrap();
        let mut cfg = ProxyConfig::default();
        cfg.groups[0].security = Some(GroupSecurity {
            policy,
            checker: CheckerConfig {
                gid: gid.to_vec(),
                alg_aead: Some(10),
                alg_group_enc: 10,
                alg_signature: -8,
                alg_pairwise_key_agreement: Some(-27),
                master_secret: Some(secret),
                master_salt: salt,
                gm_cred: gm_cred.bytes().to_vec(),
                members: vec![(vec![0x25], cred.bytes().to_vec())],
                key_generation: kg,
                ..Default::default()
            },
            member: None,
            allow_kids: None,
        });
        let run = RunConfig {
            proxy: cfg,
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            egress: vec![Egress {
                interface: Interface::Addr(std::net::Ipv4Addr::LOCALHOST),
                hop_limit: 1,
                bind: None,
            }],
            state_dir: dir.map(std::path::Path::to_path_buf),
        };
        (run, ctx)
    }

    fn proxy(dir: &std::path::Path, policy: Policy) -> (Worker, SecurityContext) {
        let (run, ctx) = run_config(Some(dir), policy, &[0x44, 0x61], 0);
        (worker(run), ctx)
    }

    /// The one forwarding thread of a proxy bound with `run`.
    fn worker(run: RunConfig) -> Worker {
        Proxy::bind(run).unwrap().workers.remove(0)
    }

    fn fail_writes(p: &Worker, g: usize) {
        p.replay.lock().unwrap().as_mut().unwrap().fail_writes(g);
    }

    fn bind_error(run: RunConfig) -> String {
        match Proxy::bind(run) {
            Ok(_) => panic!("started"),
            Err(e) => e.to_string(),
        }
    }

    /// At start (RFC 10021 §2.6.3.2, groupcomm-proxy §10): the recorded windows come back
    /// under the same Gid; a rekeying while stopped starts empty and is recorded; keying
    /// material that went back, damaged state, or no state_dir refuse the start.
    #[test]
    fn restart_restores_follows_rekeying_and_refuses_what_could_replay() {
        let dir = std::env::temp_dir().join(format!("groxy-rst-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (g1, g2) = (&[0x44, 0x61][..], &[0x44, 0x62][..]);
        let from: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let (run, mut client) = run_config(Some(&dir), Policy::Enforce, g1, 0);
        let mut p = worker(run);
        let req = request(&mut client, 1);
        p.handle(Instant::now(), 0, from, &req);
        p.persist_replay();
        assert_eq!(to_group(&p), 1);
        drop(p);
        // One slot torn by a crash: the other holds the state, the start goes on.
        let slot = |i: u8| dir.join(format!("all-coap-nodes.replay.{i}"));
        let newest = (0..2)
            .max_by_key(|&i| replay::decode(&std::fs::read(slot(i)).unwrap()).unwrap().0)
            .unwrap();
        let whole = std::fs::read(slot(newest)).unwrap();
        std::fs::write(slot(newest), &whole[..whole.len() - 5]).unwrap();
        let (run, _) = run_config(Some(&dir), Policy::Enforce, g1, 0);
        let mut p = worker(run);
        p.handle(Instant::now(), 0, from, &req);
        p.persist_replay();
        assert_eq!(to_group(&p), 0, "the restored window refuses the request");
        drop(p);
        // Both slots damaged: refused, naming the files.
        for i in 0..2 {
            let mut b = std::fs::read(slot(i)).unwrap();
            let n = b.len();
            b[n - 1] ^= 1;
            std::fs::write(slot(i), b).unwrap();
        }
        let e = bind_error(run_config(Some(&dir), Policy::Enforce, g1, 0).0);
        assert!(
            e.contains("no valid replay state") && e.contains("replay.0"),
            "{e}"
        );
        // Put back, then rekeyed while stopped: empty windows, recorded at once.
        std::fs::write(slot(0), &whole).unwrap();
        std::fs::write(slot(1), &whole).unwrap();
        let (run, mut client2) = run_config(Some(&dir), Policy::Enforce, g2, 1);
        let mut p = worker(run);
        for i in 0..2 {
            let (_, st) = replay::decode(&std::fs::read(slot(i)).unwrap()).unwrap();
            assert_eq!((st.gid.as_slice(), st.key_generation), (g2, 1));
            assert!(st.windows.is_empty());
        }
        p.handle(Instant::now(), 0, from, &request(&mut client2, 2));
        p.persist_replay();
        assert_eq!(to_group(&p), 1);
        drop(p);
        // Back to the old keys, or another Gid under the same generation: refused.
        let e = bind_error(run_config(Some(&dir), Policy::Enforce, g1, 0).0);
        assert!(e.contains("keying material went back"), "{e}");
        let e = bind_error(run_config(Some(&dir), Policy::Enforce, &[0x44, 0x63], 1).0);
        assert!(e.contains("keying material went back"), "{e}");
        // A checked group with nowhere to keep its windows does not start.
        let e = bind_error(run_config(None, Policy::Monitor, g2, 1).0);
        assert!(e.contains("proxy.state_dir is needed"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn request(ctx: &mut SecurityContext, mid: u16) -> Vec<u8> {
        let plain = build::encode(NON, 1, 1, &[1], &mut [(opt::URI_PATH, &b"x"[..])], &[]);
        let (p, _) = ctx.protect_request(&plain, Mode::Group, None).unwrap();
        let v = MessageView::parse(&p).unwrap();
        let mut o: Vec<(u16, &[u8])> = v.options().collect();
        o.extend([
            (opt::URI_HOST, &b"224.0.1.187"[..]),
            (opt::PROXY_SCHEME, b"coap"),
            (opt::MULTICAST_TIMEOUT_DEFAULT, &[1]),
        ]);
        build::encode(NON, v.code(), mid, &mid.to_be_bytes(), &mut o, v.payload())
    }

    /// Datagrams queued on the group's egress.
    fn to_group(p: &Worker) -> usize {
        let i = p.sockets.iter().position(|(l, _)| *l == Link::Group(0, 0));
        p.queues[i.unwrap()].items.len()
    }

    #[test]
    fn a_failed_replay_state_write_keeps_the_batch_from_the_group() {
        let dir = std::env::temp_dir().join(format!("groxy-rwf-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (mut p, mut client) = proxy(&dir, Policy::Enforce);
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        p.observer = Some(Box::new(move |e: &Event| {
            sink.lock().unwrap().push(e.clone())
        }));
        let from: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let now = Instant::now();

        // Written: the fan-out stays queued for sending.
        p.handle(now, 0, from, &request(&mut client, 1));
        assert_eq!(to_group(&p), 1);
        p.persist_replay();
        assert_eq!(to_group(&p), 1, "state written: the fan-out may leave");
        p.queues.iter_mut().for_each(|q| q.items.clear());

        // The disk fails: a batch of two admitted requests does not leave, and each is
        // counted.
        fail_writes(&p, 0);
        p.handle(now, 0, from, &request(&mut client, 2));
        p.handle(now, 0, from, &request(&mut client, 3));
        assert_eq!(to_group(&p), 2);
        p.persist_replay();
        assert_eq!(to_group(&p), 0, "nothing that relied on the write leaves");
        let unsaved = events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    Event::Dropped {
                        reason: DropReason::ReplayStateUnsaved,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(unsaved, 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn under_monitor_a_failed_write_is_logged_and_traffic_goes() {
        let dir = std::env::temp_dir().join(format!("groxy-rwm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (mut p, mut client) = proxy(&dir, Policy::Monitor);
        fail_writes(&p, 0);
        p.handle(
            Instant::now(),
            0,
            "127.0.0.1:40000".parse().unwrap(),
            &request(&mut client, 1),
        );
        p.persist_replay();
        assert_eq!(to_group(&p), 1, "monitor decides nothing: the fan-out goes");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
