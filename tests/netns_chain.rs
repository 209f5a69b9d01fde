//! A chain of two proxies between real hosts (issue 16 point 1, groupcomm-proxy-07 §8):
//! `groxy client` -> groxy (first hop, `next_hop`) -> groxy (last hop) -> a LAN of two
//! groxy devices. Every device's response reaches the client once with its original
//! Reply-From (§8.2), and an observation lasts past T' through both hops (§8.1.1,
//! §8.2.1).
//!
//! Topology (the shared one of `common::netns`, IPv4):
//!
//! ```text
//!   cli ──wan0══wan0── prx ──lan0══ br ══ dev1 10.77.2.11, dev2 10.77.2.12
//!   10.77.1.1          first hop 10.77.1.2:5683 ─┐
//!                      last hop  127.0.0.1:5690 <┘ (loopback of prx: two processes)
//! ```
//!
//! Both proxies run in the proxy host, as two processes talking over its loopback: the
//! chain is real UDP between two groxy processes, on one host to keep the set-up small.
//!
//! Root is needed (namespaces): `#[ignore]`d so that a plain `cargo test` passes
//! anywhere; `.ci/run` runs it with `cargo test --test netns_chain -- --ignored`.

mod common;

use common::netns::{CLI_WAN4 as CLI_WAN, Net, Out, PRX_LAN4 as PRX_LAN, PRX_WAN4 as PRX_WAN, run};
use common::process::{collect, json_lines};

use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

const GROXY: &str = env!("CARGO_BIN_EXE_groxy");
const GROUP4: &str = "224.0.1.187";
const COAP_PORT: u16 = 5683;
const LAST_HOP: &str = "127.0.0.1:5690";
const DEV1: &str = "10.77.2.11:5683";
const DEV2: &str = "10.77.2.12:5683";
/// T' of the client's requests: the first hop passes T' - 1 on.
const T_PRIME: u64 = 3;

struct Chain {
    net: Net,
}

impl Chain {
    fn start() -> Chain {
        let net = Net::build("gc", &[("dev1", 11), ("dev2", 12)], false);
        let mut t = Chain { net };
        let group = format!("{GROUP4}:{COAP_PORT}");
        for (host, addr) in [("dev1", DEV1), ("dev2", DEV2)] {
            let i = t.net.spawn_groxy_device(
                host,
                &format!("{host}-groxy"),
                (&group, addr),
                &["--notify-interval-ms", "500"],
                Out::File,
            );
            t.net.wait_sockets(host, &[group.clone(), addr.into()], i);
        }
        // The last hop: the group out of lan0, requests only from the first hop.
        let last = format!(
            "[proxy]\nlisten = [\"{LAST_HOP}\"]\n\n[unicast]\nenabled = false\n\n\
             [[group]]\nname = \"sensors\"\nuri = \"coap://{GROUP4}\"\ninterface = \"{PRX_LAN}\"\n\
             allow = [\"127.0.0.0/8\", \"{PRX_WAN}/32\"]\nmax_timeout = 10\n"
        );
        // The first hop: the same group URI, reached through the last hop (§8.1).
        let first = format!(
            "[proxy]\nlisten = [\"{PRX_WAN}:{COAP_PORT}\"]\n\n[unicast]\nenabled = false\n\n\
             [[group]]\nname = \"sensors\"\nuri = \"coap://{GROUP4}\"\ninterface = \"{PRX_LAN}\"\n\
             allow = [\"{CLI_WAN}/32\"]\nmax_timeout = 10\nnext_hop = \"{LAST_HOP}\"\n\
             next_hop_margin = 1\n"
        );
        for (name, text, listen) in [
            ("last", last, LAST_HOP.to_string()),
            ("first", first, format!("{PRX_WAN}:{COAP_PORT}")),
        ] {
            let cfg = t.net.dir.join(format!("{name}.toml"));
            std::fs::write(&cfg, text).unwrap();
            run(GROXY, &["check-config", cfg.to_str().unwrap()]);
            let i = t
                .net
                .spawn_groxy_run(&format!("proxy-{name}"), &cfg, Out::File);
            t.net.wait_sockets("prx", &[listen], i);
        }
        t
    }

    /// What process `what` wrote (stdout and stderr: the JSON logs).
    fn log(&self, what: &str) -> String {
        ["out", "log"]
            .iter()
            .map(|e| {
                std::fs::read_to_string(self.net.dir.join(format!("{what}.{e}")))
                    .unwrap_or_default()
            })
            .collect()
    }

    /// `groxy client URI --proxy <first hop> --json ARGS` in the client's host.
    fn client(&self, uri: &str, extra: &[&str]) -> (Child, Arc<Mutex<Vec<String>>>) {
        let proxy = format!("{PRX_WAN}:{COAP_PORT}");
        let mut c = self.net.command("cli", GROXY);
        c.args(["client", uri, "--proxy", &proxy, "--json"])
            .args(extra);
        let mut child = c
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = collect(child.stdout.take().unwrap());
        (child, lines)
    }
}

/// §8.2: a group GET through both proxies: each device's response exactly once, with
/// the Reply-From the last hop added (the device's address), which the first hop passed
/// on untouched. §8.1.1, §8.2.1: an observation of /counter through both lasts past T'.
#[test]
#[ignore = "needs root (network namespaces); run by .ci/run"]
fn groupcomm_proxy_s8_chain_of_two_proxies() {
    let t = Chain::start();
    let uri = format!("coap://{GROUP4}/hello");
    let timeout = T_PRIME.to_string();
    let (mut c, out) = t.client(&uri, &["--timeout", &timeout]);
    assert!(c.wait().unwrap().success(), "{}", t.net.logs());
    let got = json_lines(&out);
    for d in [DEV1, DEV2] {
        let n = got
            .iter()
            .filter(|v| v["reply_from"].as_str() == Some(d))
            .count();
        assert_eq!(n, 1, "{d} once: {got:#?}\n{}", t.net.logs());
    }
    assert_eq!(
        got.iter().filter(|v| v["reply_from"].is_string()).count(),
        2,
        "{got:#?}"
    );
    // Through the chain: the first hop sent the request on, only the last one fanned out.
    let first = t.log("proxy-first");
    let last = t.log("proxy-last");
    assert!(
        first.contains("\"chain_forwarded\"") && !first.contains("\"fan_out\""),
        "{first}"
    );
    assert!(last.contains("\"fan_out\""), "{last}");

    let uri = format!("coap://{GROUP4}/counter");
    let (mut c, out) = t.client(&uri, &["--observe", "--timeout", &timeout]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let late = |v: &Value, d: &str| {
        v["reply_from"].as_str() == Some(d)
            && v["observe"].is_u64()
            && v["elapsed_ms"]
                .as_u64()
                .is_some_and(|ms| ms > (T_PRIME + 1) * 1000)
    };
    loop {
        let got = json_lines(&out);
        if [DEV1, DEV2].iter().all(|d| got.iter().any(|v| late(v, d))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "notifications of both devices past T' through the chain: {got:#?}\n{}",
            t.net.logs()
        );
        thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: kill(2) on the pid of our own child.
    unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(15);
    while c.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "client still running after SIGINT"
        );
        thread::sleep(Duration::from_millis(50));
    }
}
