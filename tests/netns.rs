//! groxy between real hosts: Linux network namespaces joined by veth pairs and a bridge,
//! real IPv4 and IPv6 multicast, groxy's own devices and aiocoap 0.4.17 servers as group
//! members, and clients on the far side of the proxy (draft-ietf-core-groupcomm-proxy-07
//! §5; RFC 10020 §3.5; RFC 10021 for the Group OSCORE exchange).
//!
//! Topology (one private set of namespaces per test, named `gx<pid>-<n>-<host>`):
//!
//! ```text
//!   cli ──wan0══wan0── prx ──lan0══p0─┐
//!   10.77.1.1          10.77.1.2       │  br (namespace): bridge br0, multicast_snooping 0
//!   fd00:a::1          fd00:a::2       ├─p1══eth0── dev1 10.77.2.11 fd00:b::11  groxy device ×2
//!                      10.77.2.1 (lan0)├─p2══eth0── dev2 10.77.2.12 fd00:b::12  groxy device ×2
//!                      fd00:b::1       ├─p3══eth0── dev3 10.77.2.13 fd00:b::13  aiocoap, plain CoAP
//!                                      ├─p4══eth0── dev4 10.77.2.14 fd00:b::14  aiocoap, Group OSCORE (pairwise responses)
//!                                      └─p5══eth0── dev5 10.77.2.15 fd00:b::15  aiocoap, Group OSCORE (group-mode responses)
//! ```
//!
//! Every device host is a member of coap://224.0.1.187 and coap://[ff05::fd]. The proxy
//! listens on its WAN addresses and sends each group's requests out of lan0. Only the
//! private prefixes above are used, and only inside the namespaces made here.
//!
//! The tests need root (they create namespaces) and `ip`/`ss` (iproute2). They are
//! `#[ignore]`d so that a plain `cargo test` by anyone passes; as root, run them with
//! `cargo test --test netns -- --ignored` (what `.ci/run` is to do). Run that way, a
//! set-up that fails fails the test; nothing is skipped. They are safe to run in
//! parallel: every test has its own namespaces.

mod common;

use common::netns::{
    CLI_WAN4, CLI_WAN6, Net, Out, PRX_LAN4, PRX_WAN4, PRX_WAN6, device_ip4, device_ip6, run,
};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use serde_json::{Value, json};

const GROXY: &str = env!("CARGO_BIN_EXE_groxy");

const GROUP4: &str = "224.0.1.187";
const GROUP6: &str = "ff05::fd";
const COAP_PORT: u16 = 5683;

/// The client's Sender ID in the OSCORE group; the servers' are in [`HOSTS`].
const CLIENT_ID: &[u8] = &[0x0c];

/// What runs on a device host.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    /// `groxy device`, one process per address family.
    Groxy,
    /// aiocoap_server.py with `"oscore": false`.
    AiocoapPlain,
    /// aiocoap_server.py as a Group OSCORE member with this Sender ID, answering in
    /// the given response mode ("pairwise" is aiocoap's default, "group" signs).
    AiocoapOscore(&'static [u8], &'static str),
}

/// The device hosts: name, last octet of their LAN addresses, role.
const HOSTS: [(&str, u8, Role); 5] = [
    ("dev1", 11, Role::Groxy),
    ("dev2", 12, Role::Groxy),
    ("dev3", 13, Role::AiocoapPlain),
    ("dev4", 14, Role::AiocoapOscore(&[0x04], "pairwise")),
    ("dev5", 15, Role::AiocoapOscore(&[0x05], "group")),
];

/// IP version of one test run.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Family {
    V4,
    V6,
}
use Family::{V4, V6};

impl Family {
    fn group_uri(self, path: &str) -> String {
        match self {
            V4 => format!("coap://{GROUP4}/{path}"),
            V6 => format!("coap://[{GROUP6}]/{path}"),
        }
    }

    /// The proxy's client-facing address.
    fn proxy(self) -> String {
        self.socket(match self {
            V4 => PRX_WAN4,
            V6 => PRX_WAN6,
        })
    }

    /// A device host's LAN address (`octet` is its last byte, written in decimal for
    /// IPv4 and as the same digits in hex for IPv6: 10.77.2.11 and fd00:b::11).
    fn device_ip(self, octet: u8) -> String {
        match self {
            V4 => device_ip4(octet),
            V6 => device_ip6(octet),
        }
    }

    /// `ip:port` as groxy's client and the aiocoap client print a Reply-From.
    fn socket(self, ip: &str) -> String {
        match self {
            V4 => format!("{ip}:{COAP_PORT}"),
            V6 => format!("[{ip}]:{COAP_PORT}"),
        }
    }

    fn device(self, octet: u8) -> String {
        self.socket(&self.device_ip(octet))
    }
}

/// The network and processes of one test ([`Net`]), and the client's OSCORE state.
/// Dropping it (also when the test panics) ends the processes and deletes the namespaces.
struct Topology {
    net: Net,
    /// The OSCORE group of the client and the Group OSCORE devices, fresh per topology.
    group: common::Group,
    /// The client's next Sender Sequence Number: every client run is a new aiocoap
    /// context, and the servers' replay windows remember earlier runs.
    next_ssn: u64,
}

impl Topology {
    /// Builds the namespaces and starts the proxy and every device; returns once all
    /// of them listen.
    fn start() -> Self {
        let oscore_ids: Vec<&[u8]> = HOSTS
            .iter()
            .filter_map(|(_, _, r)| match r {
                Role::AiocoapOscore(id, _) => Some(*id),
                _ => None,
            })
            .chain([CLIENT_ID])
            .collect();
        // The venv may have to be built first; do it before any clock starts.
        common::python();
        let devices: Vec<(&str, u8)> = HOSTS.iter().map(|(h, o, _)| (*h, *o)).collect();
        let mut t = Topology {
            net: Net::build("gx", &devices, true),
            group: common::Group::new(&oscore_ids),
            next_ssn: 0,
        };
        t.start_processes();
        t
    }

    fn write_json(&self, name: &str, v: &Value) -> PathBuf {
        let p = self.net.dir.join(name);
        std::fs::write(&p, v.to_string()).unwrap();
        p
    }

    fn start_processes(&mut self) {
        // aiocoap servers first: they take longest to come up, and run meanwhile.
        let mut ready = Vec::new();
        for (host, _, role) in HOSTS {
            let mut cfg = match role {
                Role::AiocoapPlain => json!({"oscore": false, "name": host}),
                Role::AiocoapOscore(id, mode) => {
                    let mut c = self.group.aiocoap_setup(id);
                    c["response_mode"] = json!(mode);
                    c
                }
                Role::Groxy => continue,
            };
            cfg["bind"] = json!("::");
            cfg["port"] = json!(COAP_PORT);
            cfg["multicast"] = json!([[GROUP4, "eth0"], [GROUP6, "eth0"]]);
            let file = self.write_json(&format!("{host}-aiocoap.json"), &cfg);
            let script = common::script("aiocoap_server.py");
            let i = self.net.spawn(
                host,
                &format!("{host}-aiocoap"),
                &common::python(),
                &[script.to_str().unwrap(), file.to_str().unwrap()],
                Out::Pipe,
            );
            ready.push(self.net.ready_line(i));
        }

        // groxy devices: one per family, each answering from its own unicast address.
        let mut sockets: Vec<(String, Vec<String>, usize)> = Vec::new();
        for (host, octet, role) in HOSTS {
            if role != Role::Groxy {
                continue;
            }
            for fam in [V4, V6] {
                let group = fam.socket(match fam {
                    V4 => GROUP4,
                    V6 => GROUP6,
                });
                let bind = fam.device(octet);
                let what = format!("{host}-groxy-{fam:?}");
                let i = self
                    .net
                    .spawn_groxy_device(host, &what, (&group, &bind), &[], Out::Null);
                sockets.push((host.to_string(), vec![group, bind], i));
            }
        }

        // The proxy (§5.2): listeners on the WAN side, both groups out of lan0 (named by
        // its IPv4 address for the IPv4 group, by name for the IPv6 one).
        let cfg = self.net.dir.join("groxy.toml");
        let allow = format!(r#"["{CLI_WAN4}/32", "{CLI_WAN6}/128"]"#);
        std::fs::write(
            &cfg,
            format!(
                r#"[proxy]
listen = ["{}", "{}"]

[unicast]
enabled = true
allow = {allow}

[[group]]
name = "all-coap-nodes-v4"
uri = "coap://{GROUP4}"
interface = "{PRX_LAN4}"
allow = {allow}
max_timeout = 10

[[group]]
name = "all-coap-nodes-v6"
uri = "coap://[{GROUP6}]"
interface = "lan0"
allow = {allow}
max_timeout = 10
"#,
                V4.proxy(),
                V6.proxy()
            ),
        )
        .unwrap();
        run(GROXY, &["check-config", cfg.to_str().unwrap()]);
        let i = self.net.spawn_groxy_run("proxy", &cfg, Out::Null);
        sockets.push(("prx".into(), vec![V4.proxy(), V6.proxy()], i));

        for (host, want, i) in sockets {
            self.net.wait_sockets(&host, &want, i);
        }
        for r in ready {
            self.net.wait_ready(r, COAP_PORT);
        }
    }

    /// Starts a command in the client host.
    fn client(&self, program: &Path, args: &[String]) -> Child {
        self.net
            .command("cli", program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()))
    }

    /// Waits for a client and parses its JSON lines; it must exit 0.
    fn json_lines(&self, what: &str, child: Child) -> Vec<Value> {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{what} failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{what} printed {l:?}: {e}"))
            })
            .collect()
    }

    /// `groxy client --json` for a group URI (§5.1.1), T' = 1 s.
    fn groxy_client(&self, fam: Family, uri: &str) -> Child {
        self.client(
            Path::new(GROXY),
            &[
                "client".into(),
                uri.into(),
                "--proxy".into(),
                fam.proxy(),
                "--timeout".into(),
                "1".into(),
                "--json".into(),
            ],
        )
    }

    /// aiocoap_group_client.py for a group URI, T = T' + 0.5 s; Confirmable with `con`;
    /// with `oscore`, protected in group mode with a fresh Sender Sequence Number. T' is
    /// 1 s, 2 s with OSCORE: aiocoap derives pairwise keys (ECDH) on the first request
    /// from a client, which on a loaded machine takes a good part of a second.
    fn aiocoap_client(&mut self, fam: Family, uri: &str, con: bool, oscore: bool) -> Child {
        let mut args = vec![
            common::script("aiocoap_group_client.py")
                .display()
                .to_string(),
            "--proxy".into(),
            fam.proxy(),
            "--uri".into(),
            uri.into(),
            "--timeout".into(),
            if oscore { "2" } else { "1" }.into(),
            "--margin".into(),
            "0.5".into(),
        ];
        if con {
            args.push("--con".into());
        }
        if oscore {
            let mut cfg = self.group.aiocoap_setup(CLIENT_ID);
            cfg["ssn"] = json!(self.next_ssn);
            self.next_ssn += 1;
            let file = self.write_json(&format!("client-{}.json", self.next_ssn), &cfg);
            args.extend(["--oscore".into(), file.display().to_string()]);
        }
        self.client(&common::python(), &args)
    }
}

/// One relayed response, as compared: (Reply-From, code, payload).
type Seen = (String, String, String);

fn seen(r: &Value) -> Seen {
    let s = |k: &str| {
        r[k].as_str()
            .map(str::to_string)
            .unwrap_or_else(|| r[k].to_string())
    };
    let payload = r
        .get("payload")
        .or(r.get("payload_hex"))
        .and_then(Value::as_str)
        .unwrap_or("");
    (s("reply_from"), s("code"), payload.to_string())
}

fn sorted(mut v: Vec<Seen>) -> Vec<Seen> {
    v.sort();
    v
}

/// What a plain GET /hello to the group gets back (§5.4.1: every response relayed, each
/// with the Reply-From of the member that sent it): 2.05 from each plain member, and the
/// 4.01 that aiocoap's Group OSCORE servers answer to unprotected requests (aiocoap
/// 0.4.17 does not suppress error responses to group requests, RFC 10020 §3.1.2).
fn expected_plain_hello(fam: Family) -> Vec<Seen> {
    sorted(
        HOSTS
            .iter()
            .map(|(host, octet, role)| {
                let (code, payload) = match role {
                    Role::Groxy | Role::AiocoapPlain => ("2.05", format!("hello from {host}")),
                    Role::AiocoapOscore(..) => ("4.01", "Group OSCORE required".to_string()),
                };
                (fam.device(*octet), code.to_string(), payload)
            })
            .collect(),
    )
}

/// Test 1: IPv4 and IPv6 group GET through `groxy client`: each member's response
/// exactly once, Reply-From naming its LAN address and port (§3, §5.4.1, §5.5.1 step 3).
#[test]
#[ignore = "needs root: network namespaces; run by .ci/run"]
fn s5_groxy_client_gets_each_member_once_with_reply_from_v4_and_v6() {
    let t = Topology::start();
    let runs: Vec<_> = [V4, V6]
        .into_iter()
        .map(|fam| (fam, t.groxy_client(fam, &fam.group_uri("hello"))))
        .collect();
    for (fam, child) in runs {
        let got = t.json_lines(&format!("groxy client {fam:?}"), child);
        assert_eq!(
            sorted(got.iter().map(seen).collect()),
            expected_plain_hello(fam),
            "{fam:?}: {got:#?}"
        );
    }
}

/// Test 2: the same through a client built on aiocoap, which reads every response off
/// its own socket and decodes Reply-From's CRI itself; as NON and as CON requests. A CON
/// request is acknowledged at once and each response comes as a CON of its own, which
/// the client acknowledges (RFC 7252 §5.2.2; groupcomm-proxy §5.4.1 "as they come").
#[test]
#[ignore = "needs root: network namespaces; run by .ci/run"]
fn s5_aiocoap_client_gets_each_member_once_with_reply_from_v4_and_v6() {
    let mut t = Topology::start();
    let mut runs = Vec::new();
    for fam in [V4, V6] {
        for con in [false, true] {
            let child = t.aiocoap_client(fam, &fam.group_uri("hello"), con, false);
            runs.push((fam, con, child));
        }
    }
    for (fam, con, child) in runs {
        let what = format!("aiocoap group client {fam:?} con={con}");
        let got = t.json_lines(&what, child);
        assert_eq!(
            sorted(got.iter().map(seen).collect()),
            expected_plain_hello(fam),
            "{what}: {got:#?}"
        );
        let mtype = if con { "CON" } else { "NON" };
        for r in &got {
            assert_eq!(r["type"], json!(mtype), "{what}: {r}");
        }
    }
}

/// Test 3: a Group OSCORE request in group mode from the aiocoap-based client, end to
/// end through the proxy (§5.1.1 step 4, §5.3.1, §5.5.1 step 2): every OSCORE member's
/// response arrives once, with its Reply-From, and verifies under that member's kid —
/// dev4 answers in pairwise mode, dev5 in group mode. The plain members cannot read the
/// request: groxy's devices stay silent, aiocoap's plain server answers an unprotected
/// error, which the client sees as such.
#[test]
#[ignore = "needs root: network namespaces; run by .ci/run"]
fn s5_group_oscore_request_through_proxy_every_member_verifies_v4_and_v6() {
    let mut t = Topology::start();
    // Both at once: each run has its own Sender Sequence Number (and token).
    let runs: Vec<_> = [V4, V6]
        .into_iter()
        .map(|fam| {
            (
                fam,
                t.aiocoap_client(fam, &fam.group_uri("hello"), false, true),
            )
        })
        .collect();
    for (fam, child) in runs {
        let got = t.json_lines(&format!("aiocoap OSCORE group client {fam:?}"), child);
        let mut verified: BTreeMap<String, Seen> = BTreeMap::new();
        let mut unverified = Vec::new();
        for r in &got {
            if r["verified"] == json!(true) {
                let kid = r["kid"].as_str().unwrap().to_string();
                let mode = r["mode"].as_str().unwrap().to_string();
                assert!(
                    verified.insert(format!("{kid} {mode}"), seen(r)).is_none(),
                    "{fam:?}: kid {kid} answered twice: {got:#?}"
                );
            } else {
                unverified.push(r.clone());
            }
        }
        let expected: BTreeMap<String, Seen> = HOSTS
            .iter()
            .filter_map(|(_, octet, role)| match role {
                Role::AiocoapOscore(id, mode) => Some((
                    format!("{} {mode}", hex::encode(id)),
                    (
                        fam.device(*octet),
                        "2.05".to_string(),
                        format!("hello from aiocoap {}", hex::encode(id)),
                    ),
                )),
                _ => None,
            })
            .collect();
        assert_eq!(verified, expected, "{fam:?}: {got:#?}");
        // Only aiocoap's plain server answers what it cannot read.
        let plain: Vec<String> = HOSTS
            .iter()
            .filter(|(_, _, r)| *r == Role::AiocoapPlain)
            .map(|(_, o, _)| fam.device(*o))
            .collect();
        let from: Vec<String> = unverified.iter().map(|r| seen(r).0).collect();
        assert_eq!(from, plain, "{fam:?}: unverified responses {unverified:#?}");
        for r in &unverified {
            assert!(
                r["outer_code"]
                    .as_str()
                    .is_some_and(|c| c.starts_with('4') || c.starts_with('5')),
                "{fam:?}: an unprotected response must be an error: {r}"
            );
        }
    }
}

/// Test 4: aiocoap's stock client with --proxy (Proxy-Scheme + Uri-Host, CON) through
/// groxy to dev3's unicast addresses: ordinary forward proxying (RFC 7252 §5.7.2).
#[test]
#[ignore = "needs root: network namespaces; run by .ci/run"]
fn rfc7252_s5_7_2_aiocoap_client_proxies_unicast_through_groxy_v4_and_v6() {
    let t = Topology::start();
    // The stock client's module, run by the venv's interpreter: the venv's console
    // script names the interpreter by the path the venv was built at, which the tests'
    // own venv setup renames afterwards.
    let (program, pre): (PathBuf, Vec<String>) = (
        common::python(),
        vec!["-m".into(), "aiocoap.cli.client".into()],
    );
    let (_, octet, _) = HOSTS
        .iter()
        .find(|(_, _, r)| *r == Role::AiocoapPlain)
        .unwrap();
    let runs: Vec<_> = [V4, V6]
        .into_iter()
        .map(|fam| {
            let proxy = match fam {
                V4 => format!("coap://{PRX_WAN4}"),
                V6 => format!("coap://[{PRX_WAN6}]"),
            };
            let target = match fam {
                V4 => format!("coap://{}/hello", fam.device_ip(*octet)),
                V6 => format!("coap://[{}]/hello", fam.device_ip(*octet)),
            };
            let mut args = pre.clone();
            args.extend(["--proxy".into(), proxy, target]);
            (fam, t.client(&program, &args))
        })
        .collect();
    for (fam, child) in runs {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "aiocoap-client {fam:?} failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(stdout.trim(), "hello from dev3", "{fam:?}");
    }
}
