//! Shared plumbing of the network-namespace tests (root only): running `ip`, removing
//! namespaces that earlier, dead test processes left behind, and [`Net`], the topology
//! (client, proxy with WAN and LAN, device hosts on a bridge) of tests/netns.rs and
//! tests/netns_security.rs.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Once, mpsc};
use std::thread;
use std::time::{Duration, Instant};

/// The groxy binary Cargo built for this test.
const GROXY: &str = env!("CARGO_BIN_EXE_groxy");

/// Runs `f` on a thread that has entered network namespace `ns` (setns(2) moves only the
/// calling thread). Sockets made there stay in that namespace wherever they are used,
/// which is how a test sends datagrams from the client host and scrapes the proxy.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns(2) with a descriptor of a namespace file that stays open for the
        // call; it changes the network namespace of this thread only.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Runs `program args` and returns its output, panicking with what it said on failure.
pub fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

/// `ip ARGS`, the arguments split at spaces (no name used here has one).
pub fn ip(args: &str) {
    run("ip", &args.split(' ').collect::<Vec<_>>());
}

/// Starts `program args` inside namespace `ns` with debug logs to `log` (stderr), a
/// stdin pipe, and `stdout` as given; `what` names it in a failure.
pub fn spawn_in(
    ns: &str,
    what: &str,
    program: &Path,
    args: &[&str],
    stdout: Stdio,
    log: &Path,
) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(program)
        .args(args)
        .env("RUST_LOG", "groxy=debug")
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(File::create(log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"))
}

/// Process ids still running inside a namespace.
pub fn netns_pids(ns: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Namespaces `<prefix><pid>-…` of earlier test processes that died without cleaning up
/// (killed by a timeout, say): their processes are ended and the namespaces deleted;
/// those of live processes (parallel runs) are left alone.
pub fn remove_stale_namespaces(prefix: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|r| r.split_once('-'))
            .and_then(|(p, _)| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        for p in netns_pids(name) {
            // SAFETY: kill(2) on a pid taken from the stale namespace; no memory involved.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
    }
}

/// The UDP addresses bound in namespace `ns` (`ss -Hnlu`, local address column).
pub fn udp_bound(ns: &str) -> Vec<String> {
    let out = run("ip", &["netns", "exec", ns, "ss", "-Hnlu"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect()
}

// ---------------------------------------------------------------------------------------
// The topology both network-namespace test files use

/// The client host's WAN address, and the proxy's on each side.
pub const CLI_WAN4: &str = "10.77.1.1";
pub const CLI_WAN6: &str = "fd00:a::1";
pub const PRX_WAN4: &str = "10.77.1.2";
pub const PRX_WAN6: &str = "fd00:a::2";
pub const PRX_LAN4: &str = "10.77.2.1";
pub const PRX_LAN6: &str = "fd00:b::1";

/// A device host's LAN addresses: `octet` is its last byte, written in decimal for IPv4
/// and as the same digits in hex for IPv6 (10.77.2.11 and fd00:b::11).
pub fn device_ip4(octet: u8) -> String {
    format!("10.77.2.{octet}")
}

pub fn device_ip6(octet: u8) -> String {
    format!("fd00:b::{octet}")
}

/// Where a started process's stdout goes.
pub enum Out {
    /// A pipe the test reads (aiocoap's READY line: [`Net::ready_line`]).
    Pipe,
    Null,
    /// `<what>.out` in the topology's directory (groxy devices' `--log-requests`).
    File,
}

/// One started process of a topology.
pub struct Proc {
    /// The host it runs in, and what it is (the name of its log files).
    pub host: String,
    pub what: String,
    pub child: Child,
    /// Kept open: aiocoap_server.py serves until its stdin closes.
    pub stdin: Option<ChildStdin>,
    pub log: PathBuf,
    /// Its stdout, with [`Out::File`].
    pub out: Option<PathBuf>,
    pub running: bool,
}

/// The namespaces, links, addresses and processes of one test:
///
/// ```text
///   cli ──wan0══wan0── prx ──lan0══p0─┐  br: bridge br0, multicast_snooping 0
///   10.77.1.1          10.77.1.2       ├─p1══eth0── <device 1> 10.77.2.<octet>
///   fd00:a::1          fd00:a::2       ├─p2══eth0── <device 2>  fd00:b::<octet>
///                      10.77.2.1 (lan0)└─ …
///                      fd00:b::1            (IPv6 addresses with `ipv6` only)
/// ```
///
/// Namespaces are named `<tag><pid>-<n>-<host>`, so tests in parallel never share one.
/// Dropping it (also when the test panics, when it prints every process's log) ends the
/// processes and deletes the namespaces and the directory.
pub struct Net {
    pub prefix: String,
    pub namespaces: Vec<String>,
    pub procs: Vec<Proc>,
    /// Configuration, key and log files of this test.
    pub dir: PathBuf,
}

impl Net {
    /// Builds the network: the client and proxy hosts, the bridge, and one host per
    /// `(name, octet)` of `devices`; with `ipv6`, every interface gets its IPv6 address
    /// too. Fails the test (nothing is skipped) unless run as root.
    pub fn build(tag: &str, devices: &[(&str, u8)], ipv6: bool) -> Net {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        static STALE: Once = Once::new();
        // SAFETY: geteuid(2) has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "these tests create network namespaces: run them as root"
        );
        // A test binary uses one tag, so once per process is once per tag.
        STALE.call_once(|| remove_stale_namespaces(tag));
        let prefix = format!(
            "{tag}{}-{}-",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let dir =
            std::env::temp_dir().join(format!("groxy-netns-{}", prefix.trim_end_matches('-')));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut net = Net {
            prefix,
            namespaces: Vec::new(),
            procs: Vec::new(),
            dir,
        };
        net.build_network(devices, ipv6);
        net
    }

    pub fn ns(&self, host: &str) -> String {
        format!("{}{host}", self.prefix)
    }

    fn add_ns(&mut self, host: &str) -> String {
        let ns = self.ns(host);
        ip(&format!("netns add {ns}"));
        self.namespaces.push(ns.clone());
        ip(&format!("-n {ns} link set lo up"));
        ns
    }

    /// Gives `dev` in `ns` its IPv4 and (if any) IPv6 address and brings it up. IPv6
    /// Duplicate Address Detection is off (`nodad`), so the address can be bound at once
    /// instead of staying tentative for a second or more.
    fn addresses(ns: &str, dev: &str, v4: &str, v6: Option<&str>) {
        ip(&format!("-n {ns} addr add {v4}/24 dev {dev}"));
        if let Some(v6) = v6 {
            ip(&format!("-n {ns} addr add {v6}/64 dev {dev} nodad"));
        }
        ip(&format!("-n {ns} link set {dev} up"));
    }

    fn build_network(&mut self, devices: &[(&str, u8)], ipv6: bool) {
        let v6 = |a: String| ipv6.then_some(a);
        let cli = self.add_ns("cli");
        let prx = self.add_ns("prx");
        let br = self.add_ns("br");

        // WAN: a veth pair straight from the client host to the proxy host. Created
        // inside the namespaces, so no name can clash with the machine's interfaces.
        ip(&format!(
            "-n {cli} link add wan0 type veth peer name wan0 netns {prx}"
        ));
        Self::addresses(&cli, "wan0", CLI_WAN4, v6(CLI_WAN6.into()).as_deref());
        Self::addresses(&prx, "wan0", PRX_WAN4, v6(PRX_WAN6.into()).as_deref());

        // LAN: a bridge in its own namespace. Without snooping it floods multicast to
        // every port, whatever IGMP/MLD reports it has or has not seen.
        ip(&format!(
            "-n {br} link add br0 type bridge mcast_snooping 0"
        ));
        ip(&format!("-n {br} link set br0 up"));
        let mut ports = vec![(
            "p0".to_string(),
            prx,
            "lan0",
            PRX_LAN4.to_string(),
            v6(PRX_LAN6.into()),
        )];
        for (i, (host, octet)) in devices.iter().enumerate() {
            let ns = self.add_ns(host);
            ports.push((
                format!("p{}", i + 1),
                ns,
                "eth0",
                device_ip4(*octet),
                v6(device_ip6(*octet)),
            ));
        }
        for (port, ns, dev, v4, v6) in &ports {
            ip(&format!(
                "-n {br} link add {port} type veth peer name {dev} netns {ns}"
            ));
            ip(&format!("-n {br} link set {port} master br0 up"));
            Self::addresses(ns, dev, v4, v6.as_deref());
            // IPv4 multicast follows this route unless a socket names its interface.
            // IPv6 needs nothing added: the kernel puts `multicast ff00::/8 dev <if>`
            // into the local table of every interface that is up, and groxy's group
            // socket names lan0 (IPV6_MULTICAST_IF); members join on eth0 by index.
            ip(&format!("-n {ns} route add 224.0.0.0/4 dev {dev}"));
        }
    }

    /// Starts `program args` in `host`'s namespace; stderr goes to `<what>.log` (groxy
    /// logs its fan-outs and closed exchanges at debug), which a failing test prints.
    /// Returns the process's index in [`Net::procs`].
    pub fn spawn(
        &mut self,
        host: &str,
        what: &str,
        program: &Path,
        args: &[&str],
        out: Out,
    ) -> usize {
        let log = self.dir.join(format!("{what}.log"));
        let out_file = matches!(out, Out::File).then(|| self.dir.join(format!("{what}.out")));
        let stdout = match (&out, &out_file) {
            (Out::File, Some(p)) => Stdio::from(File::create(p).unwrap()),
            (Out::Null, _) => Stdio::null(),
            _ => Stdio::piped(),
        };
        let mut child = spawn_in(&self.ns(host), what, program, args, stdout, &log);
        let stdin = child.stdin.take();
        self.procs.push(Proc {
            host: host.into(),
            what: what.into(),
            child,
            stdin,
            log,
            out: out_file,
            running: true,
        });
        self.procs.len() - 1
    }

    /// Starts `groxy device` in `host`'s namespace, named `host`: a member of `group`
    /// (address:port) out of its eth0, answering from `bind`, JSON logs, with `extra`
    /// arguments after those; `what` names its log. Returns its index in [`Net::procs`].
    pub fn spawn_groxy_device(
        &mut self,
        host: &str,
        what: &str,
        (group, bind): (&str, &str),
        extra: &[&str],
        out: Out,
    ) -> usize {
        let mut args = vec![
            "--log-format",
            "json",
            "device",
            "--group",
            group,
            "--interface",
            "eth0",
            "--bind",
            bind,
            "--name",
            host,
        ];
        args.extend_from_slice(extra);
        self.spawn(host, what, Path::new(GROXY), &args, out)
    }

    /// Starts `groxy run --config cfg` with JSON logs in the proxy's namespace; `what`
    /// names its log. Returns its index in [`Net::procs`].
    pub fn spawn_groxy_run(&mut self, what: &str, cfg: &Path, out: Out) -> usize {
        let args = [
            "--log-format",
            "json",
            "run",
            "--config",
            cfg.to_str().unwrap(),
        ];
        self.spawn("prx", what, Path::new(GROXY), &args, out)
    }

    /// `ip netns exec <host's namespace> program`, for clients the test waits for.
    pub fn command(&self, host: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(host)]).arg(program);
        c
    }

    /// Reads the first stdout line of process `i` (started with [`Out::Pipe`]) on a
    /// thread: aiocoap_server.py's READY, to wait for with [`Net::wait_ready`] once
    /// everything else is started.
    pub fn ready_line(&mut self, i: usize) -> (usize, mpsc::Receiver<Option<String>>) {
        let stdout = self.procs[i].child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let got = BufReader::new(stdout)
                .read_line(&mut line)
                .ok()
                .filter(|n| *n > 0);
            let _ = tx.send(got.map(|_| line));
        });
        (i, rx)
    }

    /// Waits (at most 30 s) for the line of [`Net::ready_line`] to say `READY <port>`.
    pub fn wait_ready(&self, (i, rx): (usize, mpsc::Receiver<Option<String>>), port: u16) {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(line)) if line.trim() == format!("READY {port}") => {}
            other => panic!("{} did not become ready: {other:?}", self.procs[i].what),
        }
    }

    /// Polls the host's UDP sockets until every `ip:port` in `want` is bound (at most
    /// 10 s), failing early if process `i` exits.
    pub fn wait_sockets(&mut self, host: &str, want: &[String], i: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let ns = self.ns(host);
        loop {
            if let Ok(Some(status)) = self.procs[i].child.try_wait() {
                panic!("{} exited ({status})", self.procs[i].what);
            }
            let bound = udp_bound(&ns);
            if want.iter().all(|w| bound.contains(w)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}: {want:?} not bound after 10 s (bound: {bound:?})",
                self.procs[i].what
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ends every process still running on `host` (its log files stay for the report).
    pub fn stop_host(&mut self, host: &str) {
        for p in self
            .procs
            .iter_mut()
            .filter(|p| p.host == host && p.running)
        {
            drop(p.stdin.take());
            let _ = p.child.kill();
            let _ = p.child.wait();
            p.running = false;
        }
    }

    /// Every process's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for p in &self.procs {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            s += &format!("--- {} ---\n{}\n", p.what, text.trim_end());
        }
        s
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for p in &mut self.procs {
            drop(p.stdin.take());
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        if thread::panicking() {
            eprintln!("logs of {}*:\n{}", self.prefix, self.logs());
        }
        for ns in self.namespaces.drain(..).rev() {
            // Anything a failed start left running in there goes too.
            for pid in netns_pids(&ns) {
                // SAFETY: kill(2) on a pid inside a namespace this test created.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
