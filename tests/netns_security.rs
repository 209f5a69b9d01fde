//! The signature-verifying proxy between real hosts (issue 4 §8): `groxy run --config` in
//! its own network namespace with `[group.security] policy = "enforce"` checks every
//! group-mode request before it is multicast and every group-mode response before it is
//! relayed, from the group's public material and the Signature Encryption Key alone
//! (RFC 10021 §7.5, §12.3). In the member tests it is also a group member: it removes the
//! pairwise OSCORE layer a client shares with it (draft-ietf-core-oscore-capable-proxies
//! §2) and answers pairwise requests to its own resources (RFC 10021 §8).
//!
//! Devices are groxy devices with `--oscore` and aiocoap 0.4.17 Group OSCORE servers;
//! clients are `groxy client --oscore --json` and the test itself, which builds datagrams
//! with groxy's library and sends them from a socket made in the client's namespace.
//! Every case asserts what the client gets, the Prometheus counters the case must move
//! (scraped from the client's namespace before and after), and, where something must not
//! reach the group, what reached the devices: groxy devices print every datagram they
//! receive (`--log-requests`), and a listener run by the test in a host of its own records
//! every datagram that reaches that host.
//!
//! Topology (one private set of namespaces per test, `gs<pid>-<n>-<host>`; IPv4 only,
//! tests/netns.rs covers IPv6 forwarding):
//!
//! ```text
//!   cli ──wan0══wan0── prx ──lan0══p0─┐  br: bridge br0, multicast_snooping 0
//!   10.77.1.1          10.77.1.2       ├─p1══eth0── dev1 10.77.2.11  Sender ID 11
//!                      10.77.2.1 (lan0)├─p2══eth0── dev2 10.77.2.12  Sender ID 12
//!                      :9464 /metrics  └─ …         devN 10.77.2.1N  Sender ID 1N
//! ```
//!
//! The device hosts of a test, and what runs on each, are listed in the test. Clients have
//! Sender IDs 01 (`groxy client`) and 02 (the test's own datagrams); the proxy is 50.
//!
//! Root is needed (namespaces). The tests are `#[ignore]`d so that a plain `cargo test`
//! passes anywhere; `.ci/run` runs them with `cargo test --test netns_security --
//! --ignored`. Run that way, a set-up that fails fails the test; nothing is skipped.

mod common;

use common::netns::{
    CLI_WAN4 as CLI_WAN, Net, Out, PRX_LAN4 as PRX_LAN, PRX_WAN4 as PRX_WAN, in_ns, run,
};

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::files::{member_file, members_toml, secret, sek};
use common::scrape::{sample, sample_lines, series};
use common::{Group, Member};
use groxy::coap::MessageView;
use groxy::coap::build::{self, ACK, CON, NON, code};
use groxy::coap::cri::parse_reply_from;
use groxy::coap::options as opt;
use groxy::oscore::option::OscoreOption;
use groxy::oscore::{ContextConfig, Exchange, Mode, ResponseInfo, SecurityContext};
use groxy::tools::client::{ClientRequest, protect_request};
use serde_json::{Value, json};

const GROXY: &str = env!("CARGO_BIN_EXE_groxy");

const GROUP4: Ipv4Addr = Ipv4Addr::new(224, 0, 1, 187);
const GROUP_URI: &str = "coap://224.0.1.187/hello";
const COAP_PORT: u16 = 5683;
const METRICS_PORT: u16 = 9464;
/// The group's name in groxy.toml, and so its `group` label.
const GROUP_NAME: &str = "secure";
/// Key Generation Number of the first epoch, so that a change of the gauge shows.
const FIRST_KEY_GENERATION: u64 = 4;

/// `groxy client --oscore` (its sequence numbers live in `01.ssn` next to its file).
const CLIENT: &[u8] = &[0x01];
/// The test's own datagrams.
const RAW: &[u8] = &[0x02];
/// The proxy, in the member tests.
const PROXY: &[u8] = &[0x50];
/// Signs with a key of its own under a Sender ID nobody in the group knows.
const OUTSIDER: &[u8] = &[0x77];

/// What runs on a device host.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// `groxy device --oscore --log-requests`, answering group-mode requests in this mode
    /// ("group" signs, "pairwise" does not), after a fixed delay.
    Groxy { mode: &'static str, delay_ms: u64 },
    /// aiocoap_server.py as a Group OSCORE member answering in this mode.
    Aiocoap { mode: &'static str },
    /// A socket of the test's own in the host ([`Listener`]): records every datagram that
    /// reaches the host; with `tamper`, answers each group request twice in group mode,
    /// first with one bit of the countersignature flipped, then intact.
    Listener { tamper: bool },
}

/// A device host: its name, the last octet of its address, its Sender ID, what runs there.
#[derive(Clone, Copy, Debug)]
struct Host {
    name: &'static str,
    octet: u8,
    id: u8,
    kind: Kind,
}

impl Host {
    const fn new(name: &'static str, octet: u8, id: u8, kind: Kind) -> Host {
        Host {
            name,
            octet,
            id,
            kind,
        }
    }

    fn ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 2, self.octet)
    }

    fn addr(&self) -> String {
        format!("{}:{COAP_PORT}", self.ip())
    }

    fn sender_id(&self) -> Vec<u8> {
        vec![self.id]
    }

    /// The answer a verified GET /hello gets: (Reply-From, mode, kid, payload).
    fn answer(&self) -> Option<Answer> {
        let (mode, payload) = match self.kind {
            Kind::Groxy { mode, .. } => (mode, format!("hello from {}", self.name)),
            Kind::Aiocoap { mode } => (mode, format!("hello from aiocoap {:02x}", self.id)),
            Kind::Listener { tamper: true } => ("group", format!("hello from {}", self.name)),
            Kind::Listener { tamper: false } => return None,
        };
        Some(Answer {
            from: self.addr(),
            mode: mode.into(),
            kid: format!("{:02x}", self.id),
            payload,
        })
    }

    /// Whether the host reports what reached it.
    fn witnesses(&self) -> bool {
        !matches!(self.kind, Kind::Aiocoap { .. })
    }
}

const GROXY_GROUP: Kind = Kind::Groxy {
    mode: "group",
    delay_ms: 0,
};
const GROXY_PAIRWISE: Kind = Kind::Groxy {
    mode: "pairwise",
    delay_ms: 0,
};
const DEV1: Host = Host::new("dev1", 11, 0x11, GROXY_GROUP);
const DEV2: Host = Host::new("dev2", 12, 0x12, GROXY_PAIRWISE);
const DEV3: Host = Host::new("dev3", 13, 0x13, Kind::Aiocoap { mode: "group" });
const DEV4: Host = Host::new("dev4", 14, 0x14, Kind::Aiocoap { mode: "pairwise" });
/// Hears everything that reaches the LAN, answers nothing.
const WITNESS: Host = Host::new("dev5", 15, 0x15, Kind::Listener { tamper: false });
/// A member whose signed responses are altered on their way.
const TAMPERED: Host = Host::new("dev6", 16, 0x16, Kind::Listener { tamper: true });

/// Every Sender ID of the group: the proxy and every member know all of them.
const MEMBERS: [&[u8]; 9] = [
    CLIENT,
    RAW,
    PROXY,
    &[0x11],
    &[0x12],
    &[0x13],
    &[0x14],
    &[0x15],
    &[0x16],
];

/// One verified answer as compared.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Answer {
    from: String,
    mode: String,
    kid: String,
    payload: String,
}

fn sorted<T: Ord>(mut v: Vec<T>) -> Vec<T> {
    v.sort();
    v
}

fn expected_answers(hosts: &[Host]) -> Vec<Answer> {
    sorted(hosts.iter().filter_map(Host::answer).collect())
}

// ---------------------------------------------------------------------------------------
// Processes, namespaces

/// The key material of one key epoch (RFC 10021 §12.2) and its files in `e<key gen>/`:
/// Master Secret, Signature Encryption Key, every member's private key and member file.
struct Epoch {
    group: Group,
    dir: PathBuf,
}

impl Epoch {
    fn new(root: &Path, group: Group) -> Epoch {
        let dir = root.join(format!("e{}", group.key_generation));
        std::fs::create_dir_all(&dir).unwrap();
        secret(&dir.join("master.secret"), &group.master_secret);
        secret(&dir.join(format!("{GROUP_NAME}.sek")), &sek(&group));
        let e = Epoch { group, dir };
        for id in MEMBERS {
            e.write_member_file(id);
        }
        e
    }

    /// The next epoch: new Gid, Master Secret and Salt, Key Generation Number + 1; the same
    /// members with the same keys (a rekeying without members leaving, §12.2).
    fn next(&self, root: &Path) -> Epoch {
        Epoch::new(root, self.group.rekeyed())
    }

    fn member_file(&self, id: &[u8]) -> PathBuf {
        self.dir.join(format!("{}.toml", hex::encode(id)))
    }

    fn key_file(&self, id: &[u8]) -> PathBuf {
        self.dir.join(format!("{}.key", hex::encode(id)))
    }

    /// The file of config/member.toml's format that `groxy device --oscore` and `groxy
    /// client --oscore` read.
    fn write_member_file(&self, id: &[u8]) {
        member_file(&self.dir, &self.group, id);
    }

    fn context(&self, id: &[u8]) -> SecurityContext {
        SecurityContext::new(&self.group.config(id)).unwrap()
    }

    /// Path relative to the topology's directory, as groxy.toml names its files.
    fn rel(&self, file: &Path) -> String {
        let root = self.dir.parent().unwrap();
        file.strip_prefix(root).unwrap().display().to_string()
    }
}

/// The network and processes of one test ([`Net`]), its own device hosts and the group's
/// key material. Dropping it (also when the test panics) stops the listeners, then (as
/// `net` drops after them) ends the processes and deletes the namespaces.
struct Topology {
    /// Before `net`: fields drop in order, and the listeners' sockets live in its
    /// namespaces.
    listeners: Vec<Listener>,
    net: Net,
    hosts: Vec<Host>,
    /// The proxy is a group member (its own OSCORE layer, own resources, SSN file).
    member: bool,
    epoch: Epoch,
}

impl Topology {
    /// Builds the namespaces, writes the keys and configuration, starts the devices and
    /// the proxy, and returns once all of them serve.
    fn start(hosts: &[Host], member: bool) -> Topology {
        if hosts.iter().any(|h| matches!(h.kind, Kind::Aiocoap { .. })) {
            // The venv may have to be built first; do it before any clock starts.
            common::python();
        }
        let devices: Vec<(&str, u8)> = hosts.iter().map(|h| (h.name, h.octet)).collect();
        let net = Net::build("gs", &devices, false);
        let mut group = Group::new(&MEMBERS);
        group.key_generation = FIRST_KEY_GENERATION;
        let epoch = Epoch::new(&net.dir, group);
        let mut t = Topology {
            listeners: Vec::new(),
            net,
            hosts: hosts.to_vec(),
            member,
            epoch,
        };
        let mut ready = Vec::new();
        for &h in hosts {
            if let Some(r) = t.start_device(h) {
                ready.push(r);
            }
        }
        t.write_proxy_config();
        t.start_proxy();
        for r in ready {
            t.net.wait_ready(r, COAP_PORT);
        }
        t
    }

    /// Starts what runs on a device host under the current epoch. For aiocoap, returns the
    /// receiver of its READY line, to wait for after everything else is started.
    fn start_device(&mut self, h: Host) -> Option<(usize, mpsc::Receiver<Option<String>>)> {
        let kg = self.epoch.group.key_generation;
        let what = format!("{}-e{kg}", h.name);
        match h.kind {
            Kind::Groxy { mode, delay_ms } => {
                let group = format!("{GROUP4}:{COAP_PORT}");
                let bind = h.addr();
                let member = self.epoch.member_file(&h.sender_id());
                let delay = delay_ms.to_string();
                let i = self.net.spawn_groxy_device(
                    h.name,
                    &what,
                    (&group, &bind),
                    &[
                        "--oscore",
                        member.to_str().unwrap(),
                        "--response-mode",
                        mode,
                        "--delay-ms",
                        &delay,
                        "--log-requests",
                    ],
                    Out::File,
                );
                self.net.wait_sockets(h.name, &[group, bind], i);
                None
            }
            Kind::Aiocoap { mode } => {
                let mut cfg = self.epoch.group.aiocoap_setup(&h.sender_id());
                cfg["response_mode"] = json!(mode);
                cfg["bind"] = json!("::");
                cfg["port"] = json!(COAP_PORT);
                cfg["multicast"] = json!([[GROUP4.to_string(), "eth0"]]);
                let file = self.net.dir.join(format!("{what}.json"));
                std::fs::write(&file, cfg.to_string()).unwrap();
                let script = common::script("aiocoap_server.py");
                let i = self.net.spawn(
                    h.name,
                    &what,
                    &common::python(),
                    &[script.to_str().unwrap(), file.to_str().unwrap()],
                    Out::Pipe,
                );
                Some(self.net.ready_line(i))
            }
            Kind::Listener { tamper } => {
                let l = Listener::start(
                    &self.net.ns(h.name),
                    h,
                    self.epoch.group.config(&[h.id]),
                    tamper,
                );
                self.listeners.push(l);
                None
            }
        }
    }

    /// Ends what runs on a device host (its log files stay for the failure report).
    fn stop_device(&mut self, h: Host) {
        if let Kind::Listener { .. } = h.kind {
            panic!("listeners run for the whole test");
        }
        self.net.stop_host(h.name);
    }

    /// groxy.toml: the proxy listens on its WAN address, serves /metrics there, fans out of
    /// lan0, and enforces the signature checks of the group with the current epoch's
    /// public material and Signature Encryption Key (never the Master Secret, §12.3);
    /// in the member tests it also has its own membership and keeps its Sender Sequence
    /// Numbers in state/ (§2.6.1.1).
    fn write_proxy_config(&self) {
        let e = &self.epoch;
        let g = &e.group;
        let members = members_toml(g, None);
        let mut text = format!(
            r#"[proxy]
listen = ["{PRX_WAN}:{COAP_PORT}"]
metrics = "{PRX_WAN}:{METRICS_PORT}"
{state_dir}
[unicast]
enabled = false

[[group]]
name = "{GROUP_NAME}"
uri = "coap://{GROUP4}"
interface = "{PRX_LAN}"
allow = ["{CLI_WAN}/32"]
max_timeout = 10

[group.security]
policy = "enforce"
gid = "{gid}"
key_generation = {kg}
signature_encryption_key_file = "{sek}"
gm_credential = "{gm}"
members = [
{members}]
"#,
            // Always: the replay windows are kept there, and a member's sequence numbers.
            state_dir = "state_dir = \"state\"\n",
            gid = hex::encode(&g.gid),
            kg = g.key_generation,
            sek = e.rel(&e.dir.join(format!("{GROUP_NAME}.sek"))),
            gm = hex::encode(g.gm.cred.bytes()),
        );
        if self.member {
            text += &format!(
                "master_secret_file = \"{}\"\nmaster_salt = \"{}\"\nsender_id = \"{}\"\n\
                 private_key_file = \"{}\"\ncredential = \"{}\"\nallow_kids = [\"{}\", \"{}\"]\n",
                e.rel(&e.dir.join("master.secret")),
                hex::encode(&g.master_salt),
                hex::encode(PROXY),
                e.rel(&e.key_file(PROXY)),
                hex::encode(g.member(PROXY).cred.bytes()),
                hex::encode(CLIENT),
                hex::encode(RAW),
            );
        }
        let cfg = self.net.dir.join("groxy.toml");
        std::fs::write(&cfg, text).unwrap();
        run(GROXY, &["check-config", cfg.to_str().unwrap()]);
    }

    fn proxy_index(&self) -> usize {
        self.net
            .procs
            .iter()
            .rposition(|p| p.host == "prx" && p.running)
            .expect("the proxy runs")
    }

    /// Starts `groxy run --config` and waits until it listens and /readyz says 200.
    fn start_proxy(&mut self) {
        let cfg = self.net.dir.join("groxy.toml");
        let n = self.net.procs.iter().filter(|p| p.host == "prx").count();
        let i = self
            .net
            .spawn_groxy_run(&format!("proxy-{n}"), &cfg, Out::File);
        self.net
            .wait_sockets("prx", &[format!("{PRX_WAN}:{COAP_PORT}")], i);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.http_get("/readyz").is_ok_and(|(s, _)| s == 200) {
                return;
            }
            if let Ok(Some(status)) = self.net.procs[i].child.try_wait() {
                panic!("the proxy exited ({status}):\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "proxy never ready:\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM: the proxy drains and exits; returns its exit status.
    fn stop_proxy(&mut self) -> ExitStatus {
        let i = self.proxy_index();
        let pid = self.net.procs[i].child.id() as i32;
        // SAFETY: kill(2) on the pid of our own child (`ip netns exec` execs groxy).
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = self.net.procs[i].child.try_wait().unwrap() {
                self.net.procs[i].running = false;
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "SIGTERM did not stop the proxy:\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGHUP: the proxy reads groxy.toml again.
    fn reload_proxy(&self) {
        let pid = self.net.procs[self.proxy_index()].child.id() as i32;
        // SAFETY: kill(2) on the pid of our own child.
        unsafe { libc::kill(pid, libc::SIGHUP) };
    }

    /// One HTTP/1.0 GET of the proxy's operations endpoint, from the client's host.
    fn http_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let path = path.to_string();
        in_ns(&self.net.ns("cli"), move || {
            let addr: SocketAddr = format!("{PRX_WAN}:{METRICS_PORT}").parse().unwrap();
            common::http_get(addr, &path)
        })
    }

    fn scrape(&self) -> Scrape {
        let (status, body) = self.http_get("/metrics").expect("scrape /metrics");
        assert_eq!(status, 200, "{body}");
        Scrape::parse(&body)
    }

    /// Polls /metrics until `done` holds (at most 10 s).
    fn scrape_until(&self, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.scrape();
            if done(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "{what} not seen in 10 s:\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// `groxy client --oscore FILE --json` from the client host to GET /hello of the group
    /// (T' = `timeout` s), with `--proxy-kid` when given; its JSON lines.
    fn groxy_client(
        &self,
        member_file: &Path,
        timeout: u32,
        proxy_kid: Option<&[u8]>,
    ) -> Vec<Value> {
        let mut args = vec![
            "client".to_string(),
            GROUP_URI.into(),
            "--proxy".into(),
            format!("{PRX_WAN}:{COAP_PORT}"),
            "--timeout".into(),
            timeout.to_string(),
            "--json".into(),
            "--oscore".into(),
            member_file.display().to_string(),
        ];
        if let Some(k) = proxy_kid {
            args.extend(["--proxy-kid".into(), hex::encode(k)]);
        }
        let out = self
            .net
            .command("cli", GROXY)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "groxy client failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("client printed {l:?}: {e}"))
            })
            .collect()
    }

    /// A socket in the client's host for the test's own datagrams.
    fn raw_client(&self) -> RawClient {
        let sock = in_ns(&self.net.ns("cli"), || {
            UdpSocket::bind((CLI_WAN, 0)).expect("bind in the client host")
        });
        RawClient {
            sock,
            next: 0,
            stray: Vec::new(),
        }
    }

    /// Every datagram that reached host `h` so far: the `--log-requests` lines of its
    /// groxy devices (all epochs), or its listener's record.
    fn delivered(&self, h: &Host) -> Vec<Delivery> {
        if let Some(l) = self.listeners.iter().find(|l| l.name == h.name) {
            let seen = l.seen.lock().unwrap();
            return seen
                .iter()
                .map(|d| Delivery {
                    bytes: d.clone(),
                    answered: l.tamper,
                })
                .collect();
        }
        let mut got = Vec::new();
        for p in self.net.procs.iter().filter(|p| p.host == h.name) {
            let Some(out) = &p.out else { continue };
            let text = std::fs::read_to_string(out).unwrap_or_default();
            // Only complete lines: the device may be writing one right now.
            for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
                let v: Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("{} printed {line:?}: {e}", p.what));
                assert_eq!(v["via"], "group", "{}: {v}", p.what);
                got.push(Delivery {
                    bytes: hex::decode(v["bytes"].as_str().unwrap()).unwrap(),
                    answered: v["answered"] == json!(true),
                });
            }
        }
        got
    }

    /// What reached host `h`, as compared.
    fn contents(&self, h: &Host) -> Vec<Content> {
        self.delivered(h)
            .iter()
            .map(|d| Content::of(&d.bytes))
            .collect()
    }

    /// Waits until every witnessing device host has received `c`. Datagrams reach a host in
    /// the order the proxy sent them, so once `c` is there, so is anything sent before it.
    fn wait_delivered(&self, c: &Content) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for h in self.hosts.iter().filter(|h| h.witnesses()) {
            while !self.contents(h).contains(c) {
                assert!(
                    Instant::now() < deadline,
                    "{} never received {c:?}; it has {:?}\n{}",
                    h.name,
                    self.contents(h),
                    self.logs()
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Asserts that every witnessing device host received exactly `want`, in this order.
    fn assert_delivered(&self, want: &[&Content]) {
        let want: Vec<Content> = want.iter().map(|c| (*c).clone()).collect();
        for h in self.hosts.iter().filter(|h| h.witnesses()) {
            assert_eq!(self.contents(h), want, "what reached {}", h.name);
        }
    }

    /// Every process's log, for failure messages.
    fn logs(&self) -> String {
        self.net.logs()
    }
}

// ---------------------------------------------------------------------------------------
// The test's own device host and client

/// A socket of the test's own in a device host, joined to the group: it records every
/// datagram that reaches the host. With `tamper` it is a member (its Sender ID is in
/// everyone's configuration) whose signed responses are altered on the way: each group
/// request gets a group-mode response with one bit of its countersignature flipped, then
/// the same response intact (with its own Partial IV, RFC 10021 §7.3).
struct Listener {
    name: &'static str,
    tamper: bool,
    seen: Arc<Mutex<Vec<Vec<u8>>>>,
    /// The tampered responses it sent.
    forged: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    fn start(ns: &str, h: Host, cfg: ContextConfig, tamper: bool) -> Listener {
        let ip = h.ip();
        let sock = in_ns(ns, move || {
            let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, COAP_PORT)).expect("bind :5683");
            s.join_multicast_v4(&GROUP4, &ip).expect("join the group");
            s
        });
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let forged = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, forged2, stop2) = (seen.clone(), forged.clone(), stop.clone());
        let name = h.name;
        let thread = thread::spawn(move || {
            let mut ctx = SecurityContext::new(&cfg).unwrap();
            let mut buf = [0u8; 2048];
            while !stop2.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let request = &buf[..n];
                seen2.lock().unwrap().push(request.to_vec());
                if !tamper {
                    continue;
                }
                let Ok((plain, mut ex)) = ctx.unprotect_request(request) else {
                    continue;
                };
                let Some(answer) = groxy::tools::device::respond(name, &plain, true) else {
                    continue;
                };
                // The encrypted countersignature is the last bytes of the payload (§4.1).
                let bad = flip_last_bit(
                    &ctx.protect_response(&answer, &mut ex, Mode::Group, false)
                        .unwrap(),
                );
                forged2.lock().unwrap().push(bad.clone());
                // Back to back, no pause: datagrams from one socket to one address reach
                // the proxy in the order sent, so the tampered one is checked first.
                let _ = sock.send_to(&bad, from);
                let good = ctx
                    .protect_response(&answer, &mut ex, Mode::Group, false)
                    .unwrap();
                let _ = sock.send_to(&good, from);
            }
        });
        Listener {
            name,
            tamper,
            seen,
            forged,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A datagram that reached a device host, and whether the device answered it.
struct Delivery {
    bytes: Vec<u8>,
    answered: bool,
}

/// What identifies a Group OSCORE request on both sides of the proxy: its OSCORE option
/// and payload (ciphertext and encrypted countersignature), which the proxy forwards
/// untouched while Message ID, token and the proxy options change (groupcomm-proxy §5.2.1).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Content {
    option: Vec<u8>,
    payload: Vec<u8>,
}

impl Content {
    fn of(datagram: &[u8]) -> Content {
        let v = MessageView::parse(datagram).expect("a CoAP message");
        Content {
            option: v.option(opt::OSCORE).unwrap_or_default().to_vec(),
            payload: v.payload().to_vec(),
        }
    }
}

impl fmt::Debug for Content {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match OscoreOption::parse(&self.option) {
            Ok(o) => write!(
                f,
                "[kid {} piv {} gid {} payload {}…({} B)]",
                hex::encode(o.kid.unwrap_or_default()),
                hex::encode(o.piv.unwrap_or_default()),
                hex::encode(o.kid_context.unwrap_or_default()),
                hex::encode(&self.payload[..self.payload.len().min(6)]),
                self.payload.len()
            ),
            Err(e) => write!(f, "[bad OSCORE option {}: {e}]", hex::encode(&self.option)),
        }
    }
}

/// A request the test sent, and what verifying its responses needs.
struct Sent {
    bytes: Vec<u8>,
    ex: Exchange,
}

impl Sent {
    fn token(&self) -> Vec<u8> {
        MessageView::parse(&self.bytes).unwrap().token().to_vec()
    }

    fn mid(&self) -> u16 {
        MessageView::parse(&self.bytes).unwrap().message_id()
    }

    fn content(&self) -> Content {
        Content::of(&self.bytes)
    }
}

/// One response the test received.
#[derive(Debug)]
struct Reply {
    bytes: Vec<u8>,
    reply_from: Option<SocketAddr>,
    /// Code and payload of the decrypted response (of the datagram if not protected).
    code: u8,
    payload: Vec<u8>,
    echo: Option<Vec<u8>>,
    verified: Result<ResponseInfo, String>,
}

impl Reply {
    fn answer(&self) -> Answer {
        let info = self.verified.as_ref().unwrap_or_else(|e| {
            panic!("a response from {:?} did not verify: {e}", self.reply_from)
        });
        Answer {
            from: self.reply_from.map(|a| a.to_string()).unwrap_or_default(),
            mode: match info.mode {
                Mode::Group => "group",
                Mode::Pairwise => "pairwise",
            }
            .into(),
            kid: hex::encode(&info.server_id),
            payload: String::from_utf8_lossy(&self.payload).into_owned(),
        }
    }
}

/// The test as a client: a socket in the client host; the OSCORE contexts are passed in,
/// so that one socket can speak for several identities and key epochs.
struct RawClient {
    sock: UdpSocket,
    next: u16,
    /// Datagrams that belonged to no request whose replies were being collected.
    stray: Vec<Vec<u8>>,
}

fn proxy_addr() -> SocketAddr {
    format!("{PRX_WAN}:{COAP_PORT}").parse().unwrap()
}

impl RawClient {
    fn ids(&mut self) -> (u16, [u8; 8]) {
        self.next += 1;
        let mut token = [0x7e, 0x57, 0, 0, 0, 0, 0, 0];
        token[6..].copy_from_slice(&self.next.to_be_bytes());
        (0x4000 + self.next, token)
    }

    /// GET /hello to the group through the proxy, protected end to end in group mode by
    /// `ctx`, the proxy options outside (Class U, RFC 8613 §4.1), T' = `timeout` s.
    fn group_request(&mut self, ctx: &mut SecurityContext, timeout: u32, con: bool) -> Sent {
        let (mid, token) = self.ids();
        let mut req = ClientRequest::get(proxy_addr(), GROUP_URI, timeout);
        req.confirmable = con;
        let (bytes, ex) = protect_request(&req, ctx, mid, &token).unwrap();
        Sent { bytes, ex }
    }

    /// GET of the proxy's own resource `path` in pairwise mode with the proxy (RFC 10021
    /// §8): no proxy options, so it is for the proxy itself (oscore-capable-proxies §2.4).
    fn own_resource(&mut self, ctx: &mut SecurityContext, path: &str, echo: Option<&[u8]>) -> Sent {
        let (mid, token) = self.ids();
        let mut opts: Vec<(u16, &[u8])> = vec![(opt::URI_PATH, path.as_bytes())];
        if let Some(e) = echo {
            opts.push((opt::ECHO, e));
        }
        let plain = build::encode(NON, code::GET, mid, &token, &mut opts, &[]);
        let (bytes, ex) = ctx
            .protect_request(&plain, Mode::Pairwise, Some(PROXY))
            .unwrap();
        Sent { bytes, ex }
    }

    /// The same OSCORE request under a new Message ID and token, which OSCORE does not
    /// protect: what anyone who captured it can send again.
    fn renumbered(&mut self, sent: &Sent) -> Sent {
        let (mid, token) = self.ids();
        let v = MessageView::parse(&sent.bytes).unwrap();
        let mut opts: Vec<(u16, &[u8])> = v.options().collect();
        Sent {
            bytes: build::encode(v.mtype(), v.code(), mid, &token, &mut opts, v.payload()),
            ex: sent.ex.clone(),
        }
    }

    fn send(&self, bytes: &[u8]) {
        self.sock.send_to(bytes, proxy_addr()).unwrap();
    }

    /// Responses to `sent` until `n` came or `wait` passed, each verified with `ctx`;
    /// anything else that arrives meanwhile goes to `stray`.
    fn replies(
        &mut self,
        ctx: &mut SecurityContext,
        sent: &mut Sent,
        n: usize,
        wait: Duration,
    ) -> Vec<Reply> {
        let deadline = Instant::now() + wait;
        let token = sent.token();
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.sock.set_read_timeout(Some(left)).unwrap();
            let Ok((len, _)) = self.sock.recv_from(&mut buf) else {
                continue;
            };
            let bytes = buf[..len].to_vec();
            let v = MessageView::parse(&bytes).expect("the proxy sends CoAP");
            if v.mtype() == CON {
                self.send(&build::empty(ACK, v.message_id()));
            }
            if v.token() != token.as_slice() || v.code() == code::EMPTY {
                self.stray.push(bytes);
                continue;
            }
            let reply_from = v.option(opt::REPLY_FROM_DEFAULT).and_then(parse_reply_from);
            let mut r = Reply {
                reply_from,
                code: v.code(),
                payload: v.payload().to_vec(),
                echo: None,
                verified: Err("not protected".into()),
                bytes: bytes.clone(),
            };
            if v.option(opt::OSCORE).is_some() {
                r.verified = match ctx.unprotect_response(&bytes, &mut sent.ex) {
                    Ok((plain, info)) => {
                        let pv = MessageView::parse(&plain).unwrap();
                        r.code = pv.code();
                        r.payload = pv.payload().to_vec();
                        r.echo = pv.option(opt::ECHO).map(<[u8]>::to_vec);
                        Ok(info)
                    }
                    Err(e) => Err(e.to_string()),
                };
            }
            got.push(r);
        }
        got
    }
}

/// A copy of a datagram with one bit of its last byte flipped: for a group-mode request,
/// a bit of the encrypted countersignature.
fn flip_last_bit(bytes: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    *b.last_mut().unwrap() ^= 0x01;
    b
}

/// The answers in `groxy client --json` lines, each of which must have verified.
fn client_answers(lines: &[Value]) -> Vec<Answer> {
    sorted(
        lines
            .iter()
            .map(|r| {
                assert_eq!(r["oscore"]["verified"], json!(true), "{r}");
                assert_eq!(r["code"], "2.05", "{r}");
                let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
                Answer {
                    from: s(&r["reply_from"]),
                    mode: s(&r["oscore"]["mode"]),
                    kid: s(&r["oscore"]["kid"]),
                    payload: s(&r["payload"]),
                }
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------
// Metrics

/// One scrape of /metrics: every sample by its series, labels sorted.
struct Scrape(BTreeMap<String, f64>);

impl Scrape {
    fn parse(text: &str) -> Scrape {
        // Every line must be a sample: a malformed one fails the test.
        Scrape(
            sample_lines(text)
                .map(|l| sample(l).unwrap_or_else(|| panic!("not a sample line: {l:?}")))
                .collect(),
        )
    }

    /// The value of a series. Those of the families that groxy makes on first use (per
    /// rejection reason, close reason, error code) are 0 until then; any other series must
    /// be there, so that a misspelt name cannot pass as "did not move".
    fn get(&self, s: &str) -> f64 {
        const ON_FIRST_USE: [&str; 3] = [
            "groxy_requests_rejected_total{",
            "groxy_exchanges_closed_total{",
            "groxy_error_responses_total{",
        ];
        if !self.0.contains_key(s) && ON_FIRST_USE.iter().any(|f| s.starts_with(f)) {
            return 0.0;
        }
        *self.0.get(s).unwrap_or_else(|| {
            panic!(
                "no series {s} in the scrape; groxy series:\n{}",
                self.0
                    .keys()
                    .filter(|k| k.starts_with("groxy_"))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })
    }
}

/// Asserts how much each series moved from `before` to `after` (0: it must not move).
fn assert_moved(before: &Scrape, after: &Scrape, want: &[(String, f64)]) {
    let wrong: Vec<String> = want
        .iter()
        .filter_map(|(s, d)| {
            let got = after.get(s) - before.get(s);
            (got != *d).then(|| format!("{s}: moved by {got}, expected {d}"))
        })
        .collect();
    assert!(wrong.is_empty(), "counters:\n{}", wrong.join("\n"));
}

/// groxy_signature_checks_total of the group under `enforce`.
fn checks(direction: &str, result: &str) -> String {
    series(
        "groxy_signature_checks_total",
        &[
            ("group", GROUP_NAME),
            ("direction", direction),
            ("result", result),
            ("policy", "enforce"),
        ],
    )
}

fn requests(outcome: &str) -> String {
    series(
        "groxy_requests_total",
        &[("group", GROUP_NAME), ("outcome", outcome)],
    )
}

fn rejected(reason: &str) -> String {
    series(
        "groxy_requests_rejected_total",
        &[("group", GROUP_NAME), ("reason", reason)],
    )
}

fn of_group(name: &str) -> String {
    series(name, &[("group", GROUP_NAME)])
}

fn fanouts() -> String {
    of_group("groxy_fanouts_total")
}

fn relayed() -> String {
    of_group("groxy_responses_relayed_total")
}

fn replays() -> String {
    of_group("groxy_replays_dropped_total")
}

fn key_generation() -> String {
    of_group("groxy_key_generation")
}

fn dropped(reason: &str) -> String {
    series("groxy_dropped_total", &[("reason", reason)])
}

// ---------------------------------------------------------------------------------------
// The cases

/// Case 1 (RFC 10021 §7.5; groupcomm-proxy §5.2.1 step 5): a valid group-mode request from
/// `groxy client --oscore` is verified and multicast once; every member answers — groxy
/// and aiocoap, in group mode (signed, verified by the proxy before relaying) and in
/// pairwise mode (relayed unchecked, nothing to check, §8) — and the client verifies
/// every response, each once, with the Reply-From of its device.
/// Hosts: dev1 groxy (group), dev2 groxy (pairwise), dev3 aiocoap (group), dev4 aiocoap
/// (pairwise).
#[test]
#[ignore = "needs root: network namespaces; run by .ci/run"]
fn rfc10021_s7_5_valid_group_request_reaches_every_member_and_every_answer_verifies() {
    let hosts = [DEV1, DEV2, DEV3, DEV4];
    let t = Topology::start(&hosts, false);
    let before = t.scrape();
    // T' = 2 s: aiocoap derives pairwise keys (ECDH) on a client's first request.
    let lines = t.groxy_client(&t.epoch.member_file(CLIENT), 2, None);
    assert_eq!(
        client_answers(&lines),
        expected_answers(&hosts),
        "{lines:#?}"
    );
    let after = t.scrape();
    assert_moved(
        &before,
        &after,
        &[
            (fanouts(), 1.0),
            (requests("forwarded"), 1.0),
            (requests("dropped"), 0.0),
            (checks("request", "valid"), 1.0),
            (checks("response", "valid"), 2.0),
            (checks("response", "unverifiable"), 2.0),
            (checks("response", "bad_signature"), 0.0),
            (relayed(), 4.0),
        ],
    );
    // The groxy devices saw the request once each and answered it.
    for h in [DEV1, DEV2] {
        let answered: Vec<bool> = t.delivered(&h).iter().map(|d| d.answered).collect();
        assert_eq!(answered, [true], "{}", h.name);
    }
}

/// Case 2 (RFC 10021 §7.5; groupcomm-proxy §10.1): a request whose countersignature has one
/// bit flipped, one signed by a sender the group does not know, and one under another Gid
/// are dropped at the proxy; no device receives anything of them. The flipped one is sent
/// as CON and gets only its empty ACK (RFC 7252 §4.2), the others nothing. A valid request
/// sent last is the fence: once the devices have it, anything multicast before it would be
/// there too.
/// Hosts: dev1 groxy (group), dev2 groxy (pairwise), dev5 the test's listener.
#[test]
#[ignore = "needs root: network namespaces; run by .ci/run"]
fn rfc10021_s7_5_forged_unknown_and_foreign_requests_never_reach_the_group() {
    let t = Topology::start(&[DEV1, DEV2, WITNESS], false);
    let mut raw = t.raw_client();
    let mut me = t.epoch.context(RAW);
    let before = t.scrape();

    let valid = raw.group_request(&mut me, 1, true);
    let flipped = flip_last_bit(&valid.bytes);
    raw.send(&flipped);

    let outsider = Member::new(OUTSIDER, "outsider");
    let mut cfg = t.epoch.group.config(RAW);
    cfg.sender_id = OUTSIDER.to_vec();
    cfg.private_key = Some(outsider.key.to_bytes().to_vec());
    cfg.sender_cred = Some(outsider.cred.bytes().to_vec());
    let unknown = raw.group_request(&mut SecurityContext::new(&cfg).unwrap(), 1, false);
    raw.send(&unknown.bytes);

    let mut cfg = t.epoch.group.config(RAW);
    let mut gid = t.epoch.group.gid.clone();
    gid[0] ^= 0xff;
    cfg.id_context = Some(gid);
    let foreign = raw.group_request(&mut SecurityContext::new(&cfg).unwrap(), 1, false);
    raw.send(&foreign.bytes);

    let mut fence = raw.group_request(&mut me, 1, false);
    raw.send(&fence.bytes);
    let got = raw.replies(&mut me, &mut fence, 2, Duration::from_secs(5));
    assert_eq!(
        sorted(got.iter().map(Reply::answer).collect()),
        expected_answers(&[DEV1, DEV2])
    );
    t.wait_delivered(&fence.content());
    t.assert_delivered(&[&fence.content()]);
    assert_eq!(
        raw.stray,
        vec![build::empty(ACK, valid.mid())],
        "the CON forgery gets its empty ACK, nothing else comes"
    );
    let after = t.scrape();
    assert_moved(
        &before,
        &after,
        &[
            (checks("request", "bad_signature"), 1.0),
            (checks("request", "unknown_kid"), 1.0),
            (checks("request", "unknown_gid"), 1.0),
            (checks("request", "valid"), 1.0),
            (requests("dropped"), 3.0),
            (dropped("request_check_failed"), 3.0),
            (requests("forwarded"), 1.0),
            (fanouts(), 1.0),
            (replays(), 0.0),
        ],
    );
}

/// Case 3 (groupcomm-proxy §10.1: a proxy must not forward replayed group requests with a
/// valid signature; RFC 10021 §7.5 with the replay window of RFC 8613 §7.4): a valid request
/// is forwarded; the identical datagram again (same Message ID and token) is caught by
/// message deduplication (RFC 7252 §4.5, within NON_LIFETIME = 145 s) before any check;
/// the same OSCORE option and ciphertext under a new Message ID and token pass that and
/// the signature, and are dropped by the replay filter. No device receives either copy.
/// Hosts: dev1 groxy (group), dev2 groxy (pairwise), dev5 the test's listener.
#[test]
#[ignore = "needs root: network namespaces; run by .ci/run"]
fn groupcomm_proxy_s10_1_replayed_request_never_reaches_the_group() {
    let t = Topology::start(&[DEV1, DEV2, WITNESS], false);
    let mut raw = t.raw_client();
    let mut me = t.epoch.context(RAW);

    let mut first = raw.group_request(&mut me, 1, false);
    raw.send(&first.bytes);
    let got = raw.replies(&mut me, &mut first, 2, Duration::from_secs(5));
    assert_eq!(got.len(), 2, "{got:?}");
    t.wait_delivered(&first.content());

    let before = t.scrape();
    raw.send(&first.bytes);
    let again = raw.renumbered(&first);
    assert_ne!(again.bytes, first.bytes);
    assert_eq!(again.content(), first.content());
    raw.send(&again.bytes);

    let mut fence = raw.group_request(&mut me, 1, false);
    raw.send(&fence.bytes);
    let got = raw.replies(&mut me, &mut fence, 2, Duration::from_secs(5));
    assert_eq!(
        sorted(got.iter().map(Reply::answer).collect()),
        expected_answers(&[DEV1, DEV2])
    );
    t.wait_delivered(&fence.content());
    t.assert_delivered(&[&first.content(), &fence.content()]);
    assert!(raw.stray.is_empty(), "{:?}", raw.stray);
    let after = t.scrape();
    assert_moved(
        &before,
        &after,
        &[
            (dropped("duplicate_request"), 1.0),
            (checks("request", "replay"), 1.0),
            (replays(), 1.0),
            (requests("dropped"), 1.0),
            (dropped("request_check_failed"), 1.0),
            (checks("request", "valid"), 1.0),
            (fanouts(), 1.0),
            (relayed(), 2.0),
        ],
    );
}

/// Case 4 (RFC 10021 §7.5: the proxy verifies group-mode responses with the request's
/// Partial IV and kid context before relaying): dev6, a member, answers in group mode
/// twice, first with a bit of its countersignature flipped, then intact. The tampered
/// response is dropped at the proxy; the client gets dev1's response and dev6's intact
/// one, both verified, and nothing else.
/// Hosts: dev1 groxy (group), dev6 the test's tampering member.
#[test]
#[ignore = "needs root: network namespaces; run by .ci/run"]
fn rfc10021_s7_5_response_with_a_bad_signature_is_not_relayed() {
    let hosts = [DEV1, TAMPERED];
    let t = Topology::start(&hosts, false);
    let mut raw = t.raw_client();
    let mut me = t.epoch.context(RAW);
    let before = t.scrape();
    let mut req = raw.group_request(&mut me, 1, false);
    raw.send(&req.bytes);
    // Everything the proxy relays until T' = 1 s has passed, and a little more.
    let got = raw.replies(&mut me, &mut req, usize::MAX, Duration::from_millis(1500));
    assert_eq!(
        sorted(got.iter().map(Reply::answer).collect()),
        expected_answers(&hosts),
        "{got:?}"
    );
    let forged = t.listeners[0].forged.lock().unwrap().clone();
    assert_eq!(forged.len(), 1, "dev6 answered the request once, tampered");
    let forged = Content::of(&forged[0]);
    assert!(
        got.iter().all(|r| Content::of(&r.bytes) != forged),
        "the tampered response was relayed"
    );
    let after = t.scrape();
    assert_moved(
        &before,
        &after,
        &[
            (checks("response", "bad_signature"), 1.0),
            (dropped("response_check_failed"), 1.0),
            (checks("response", "valid"), 2.0),
            (relayed(), 2.0),
            (fanouts(), 1.0),
        ],
    );
}

/// Case 5 (oscore-capable-proxies §2; RFC 10021 §8): the proxy as a group member. `groxy
/// client --proxy-kid 50` wraps its group-mode request in a pairwise layer with the proxy,
/// which removes it, authenticates the client by its kid, checks and forwards the inner
/// request, and protects every relayed response with that layer: all devices' answers
/// verify end to end. A pairwise request to the proxy's own /status is answered under
/// the proxy's kid; one from a sender with the wrong Master Secret gets 4.00 (RFC 8613
/// §8.2) and is counted as a decryption failure.
/// Hosts: dev1 groxy (group), dev2 groxy (pairwise), dev3 aiocoap (group).
#[test]
#[ignore = "needs root: network namespaces; run by .ci/run"]
fn oscore_capable_proxies_s2_outer_layer_round_trips_and_own_resources_answer() {
    let hosts = [DEV1, DEV2, DEV3];
    let t = Topology::start(&hosts, true);
    let before = t.scrape();
    let lines = t.groxy_client(&t.epoch.member_file(CLIENT), 2, Some(PROXY));
    assert_eq!(
        client_answers(&lines),
        expected_answers(&hosts),
        "{lines:#?}"
    );
    let mid = t.scrape();
    assert_moved(
        &before,
        &mid,
        &[
            (fanouts(), 1.0),
            (checks("request", "valid"), 1.0),
            (checks("response", "valid"), 2.0),
            (checks("response", "unverifiable"), 1.0),
            (relayed(), 3.0),
            (rejected("echo_challenge"), 0.0),
            ("groxy_decryption_failures_total".into(), 0.0),
        ],
    );

    let mut raw = t.raw_client();
    let mut me = t.epoch.context(RAW);
    let mut status = raw.own_resource(&mut me, "status", None);
    raw.send(&status.bytes);
    let got = raw.replies(&mut me, &mut status, 1, Duration::from_secs(3));
    assert_eq!(got.len(), 1, "{got:?}");
    let info = got[0]
        .verified
        .as_ref()
        .expect("the proxy's answer verifies");
    assert_eq!(
        (info.mode, info.server_id.as_slice()),
        (Mode::Pairwise, PROXY)
    );
    assert_eq!(got[0].code, code::CONTENT);
    let body: Value = serde_json::from_slice(&got[0].payload).unwrap();
    assert_eq!(body["groups"], 1, "{body}");
    assert!(body["version"].is_string(), "{body}");

    let mut cfg = t.epoch.group.config(RAW);
    cfg.master_secret = common::random_bytes(16);
    let mut stranger = SecurityContext::new(&cfg).unwrap();
    // A Partial IV the proxy has not seen from kid 02: the replay check comes before
    // decryption (RFC 8613 §8.2 steps 3 and 6).
    stranger.sender.ssn = 1000;
    let mut bad = raw.own_resource(&mut stranger, "status", None);
    raw.send(&bad.bytes);
    let got = raw.replies(&mut stranger, &mut bad, 1, Duration::from_secs(3));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].verified.is_err(), "an OSCORE error is not protected");
    assert_eq!(got[0].code, code::BAD_REQUEST, "{got:?}");
    let after = t.scrape();
    assert_moved(
        &mid,
        &after,
        &[
            (fanouts(), 0.0),
            ("groxy_decryption_failures_total".into(), 1.0),
            // Refused by the layer of the group whose Gid it named.
            (
                series(
                    "groxy_requests_rejected_total",
                    &[("group", GROUP_NAME), ("reason", "oscore_layer")],
                ),
                1.0,
            ),
        ],
    );
}

/// Case 6 (RFC 10021 §12.2 rekeying, §2.6.3.2; §7.5 across key epochs): while an exchange
/// is in flight, the proxy gets a new configuration by SIGHUP: a new Gid, Key Generation
/// Number + 1, a new Master Secret and so Signature Encryption Key, the same members'
/// keys. The slow device answers after the reload, still under the old epoch, and its
/// response is verified under the previous epoch and relayed. New requests under the old
/// Gid are dropped (unknown_gid) and reach no device; under the new Gid they are
/// verified. Devices and client move to the new epoch by restarting with new member files.
/// Hosts: dev1 groxy (group), dev2 groxy (group, answers after 2.5 s), dev3 aiocoap (group).
#[test]
#[ignore = "needs root: network namespaces; run by .ci/run"]
fn rfc10021_s12_2_rekeying_keeps_exchanges_in_flight_and_refuses_the_old_gid() {
    let slow = Host::new(
        "dev2",
        12,
        0x12,
        Kind::Groxy {
            mode: "group",
            delay_ms: 2500,
        },
    );
    let hosts = [DEV1, slow, DEV3];
    let mut t = Topology::start(&hosts, false);
    let mut raw = t.raw_client();
    let mut old = t.epoch.context(RAW);
    let before = t.scrape();
    assert_eq!(before.get(&key_generation()), FIRST_KEY_GENERATION as f64);

    // The exchange in flight: dev1 and dev3 answer at once, dev2 after 2.5 s.
    let mut inflight = raw.group_request(&mut old, 8, false);
    raw.send(&inflight.bytes);
    let mut got = raw.replies(&mut old, &mut inflight, 2, Duration::from_secs(5));
    assert_eq!(got.len(), 2, "{got:?}");

    let next = t.epoch.next(&t.net.dir);
    let old_epoch = std::mem::replace(&mut t.epoch, next);
    t.write_proxy_config();
    t.reload_proxy();
    t.scrape_until("the reload", |s| {
        s.get(&series(
            "groxy_config_reloads_total",
            &[("result", "success")],
        )) == 1.0
    });
    // What the reload changed is asserted on a scrape taken after the one that saw it
    // counted: one scrape reads its collectors in no fixed order, so it may have read
    // the key generation just before the reload and the counter just after.
    let reloaded = t.scrape();
    assert_eq!(
        reloaded.get(&key_generation()),
        (FIRST_KEY_GENERATION + 1) as f64
    );
    assert_moved(&before, &reloaded, &[(relayed(), 2.0)]);

    got.extend(raw.replies(&mut old, &mut inflight, 1, Duration::from_secs(5)));
    assert_eq!(
        sorted(got.iter().map(Reply::answer).collect()),
        expected_answers(&hosts),
        "every answer of the exchange in flight, the last one after the reload"
    );
    let settled = t.scrape();
    assert_moved(
        &reloaded,
        &settled,
        &[(checks("response", "valid"), 1.0), (relayed(), 1.0)],
    );

    // After the reload: the old Gid is refused, the new one verified. The devices still
    // have the old keys, so they receive the new request (and cannot read it), and
    // never the old one.
    let stale = raw.group_request(&mut old, 1, false);
    raw.send(&stale.bytes);
    let mut new = t.epoch.context(RAW);
    let fence = raw.group_request(&mut new, 1, false);
    raw.send(&fence.bytes);
    t.wait_delivered(&fence.content());
    t.assert_delivered(&[&inflight.content(), &fence.content()]);
    for h in [DEV1, slow] {
        let answered: Vec<bool> = t.delivered(&h).iter().map(|d| d.answered).collect();
        assert_eq!(answered, [true, false], "{}", h.name);
    }
    let refused = t.scrape();
    assert_moved(
        &settled,
        &refused,
        &[
            (checks("request", "unknown_gid"), 1.0),
            (checks("request", "valid"), 1.0),
            (requests("dropped"), 1.0),
            (fanouts(), 1.0),
        ],
    );

    // Devices and client in the new epoch.
    let fast = [DEV1, DEV2, DEV3];
    for h in hosts {
        t.stop_device(h);
    }
    let mut ready = Vec::new();
    for h in fast {
        ready.extend(t.start_device(h));
    }
    for r in ready {
        t.net.wait_ready(r, COAP_PORT);
    }
    let lines = t.groxy_client(&t.epoch.member_file(CLIENT), 2, None);
    assert_eq!(
        client_answers(&lines),
        expected_answers(&fast),
        "{lines:#?}"
    );
    let after = t.scrape();
    assert_moved(
        &refused,
        &after,
        &[
            (checks("request", "valid"), 1.0),
            (checks("response", "valid"), 2.0),
            (checks("response", "unverifiable"), 1.0),
            (relayed(), 3.0),
        ],
    );
    assert_eq!(
        old_epoch.group.key_generation + 1,
        t.epoch.group.key_generation
    );
}

/// Case 7 (RFC 10021 §2.6.1.1, §2.6.1.2, §9): the proxy reserves its Sender Sequence
/// Numbers on disk before use. Stopped (SIGTERM) and started again, it continues above the
/// previous reservation — its first protected message after the restart carries a
/// Partial IV at or above it — and, having lost its replay windows, answers the first
/// request of each client with 4.01 and an Echo; the client's request with the Echo is
/// served. `groxy client` does that round trip by itself.
/// Hosts: dev1 groxy (group), dev2 groxy (pairwise).
#[test]
#[ignore = "needs root: network namespaces; run by .ci/run"]
fn rfc10021_s2_6_1_restart_never_reuses_an_ssn_and_echo_restores_freshness() {
    let hosts = [DEV1, DEV2];
    let mut t = Topology::start(&hosts, true);
    let ssn_file = t.net.dir.join(format!("state/{GROUP_NAME}.ssn"));
    let reserved = || -> u64 {
        let text = std::fs::read_to_string(&ssn_file).unwrap();
        text.split_whitespace().next().unwrap().parse().unwrap()
    };
    let lines = t.groxy_client(&t.epoch.member_file(CLIENT), 1, Some(PROXY));
    assert_eq!(
        client_answers(&lines),
        expected_answers(&hosts),
        "{lines:#?}"
    );
    let first = reserved();
    assert!(first > 0, "a block is reserved before use");

    let status = t.stop_proxy();
    assert!(status.success(), "{status}:\n{}", t.logs());
    assert_eq!(reserved(), first, "nothing reserved while stopping");
    t.start_proxy();
    let second = reserved();
    assert!(second > first, "{second} after {first}");
    let before = t.scrape();

    // The test's own client first, to see the proxy's Partial IV in its Echo challenge.
    let mut raw = t.raw_client();
    let mut me = t.epoch.context(RAW);
    let mut req = raw.own_resource(&mut me, "status", None);
    raw.send(&req.bytes);
    let got = raw.replies(&mut me, &mut req, 1, Duration::from_secs(3));
    assert_eq!(got.len(), 1, "{got:?}");
    let info = got[0]
        .verified
        .as_ref()
        .expect("the challenge is protected");
    assert_eq!(got[0].code, code::UNAUTHORIZED);
    let piv = info
        .piv
        .expect("a challenge carries the proxy's own Partial IV");
    assert!(
        (first..second).contains(&piv),
        "Partial IV {piv} after a restart must be in the new block {first}..{second}"
    );
    let echo = got[0].echo.clone().expect("4.01 with Echo");
    let mut retry = raw.own_resource(&mut me, "status", Some(&echo));
    raw.send(&retry.bytes);
    let got = raw.replies(&mut me, &mut retry, 1, Duration::from_secs(3));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].code, code::CONTENT, "{got:?}");

    let lines = t.groxy_client(&t.epoch.member_file(CLIENT), 1, Some(PROXY));
    assert_eq!(
        client_answers(&lines),
        expected_answers(&hosts),
        "{lines:#?}"
    );
    let after = t.scrape();
    assert_moved(
        &before,
        &after,
        &[
            (rejected("echo_challenge"), 2.0),
            (fanouts(), 1.0),
            (checks("request", "valid"), 1.0),
            (relayed(), 2.0),
        ],
    );
    // RFC 9175 §2.3: the Echo was the proxy's; what reached the devices carries none.
    for h in &hosts {
        for d in t.delivered(h) {
            let v = groxy::coap::MessageView::parse(&d.bytes).unwrap();
            assert!(v.option(opt::ECHO).is_none(), "{}: Echo forwarded", h.name);
        }
    }
    let first_run = t.net.procs.iter().find(|p| p.what == "proxy-0").unwrap();
    let log = std::fs::read_to_string(&first_run.log).unwrap();
    assert!(log.contains("\"stopped\""), "{log}");
}
