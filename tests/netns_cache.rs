//! The response cache between real hosts (issue 16 point 3, groupcomm-proxy-07 §7):
//! `groxy client` -> groxy with `[cache]` on -> a LAN of two groxy devices whose `/hello`
//! answers carry Max-Age 4 and an ETag. A second group read within Max-Age is served
//! from the cache without a datagram reaching the devices (their `--log-requests` logs
//! say so, §7.1); after Max-Age the read goes to the group again with the stored ETags
//! and the devices' 2.03 refresh the stored responses (§7.2.2), the client getting the
//! stored representations.
//!
//! Topology (the shared one of `common::netns`, IPv4):
//!
//! ```text
//!   cli ──wan0══wan0── prx ──lan0══ br ══ dev1 10.77.2.11, dev2 10.77.2.12
//!   10.77.1.1          10.77.1.2:5683
//! ```
//!
//! Root is needed (namespaces): `#[ignore]`d so that a plain `cargo test` passes
//! anywhere; `.ci/run` runs it with `cargo test --test netns_cache -- --ignored`.

mod common;

use common::netns::{CLI_WAN4 as CLI_WAN, Net, Out, PRX_LAN4 as PRX_LAN, PRX_WAN4 as PRX_WAN, run};

use std::path::Path;
use std::thread;
use std::time::Duration;

use serde_json::Value;

const GROXY: &str = env!("CARGO_BIN_EXE_groxy");
const GROUP4: &str = "224.0.1.187";
const COAP_PORT: u16 = 5683;
const DEV1: &str = "10.77.2.11:5683";
const DEV2: &str = "10.77.2.12:5683";
/// The devices' Max-Age for /hello.
const MAX_AGE: u64 = 4;

fn start() -> Net {
    let mut net = Net::build("gk", &[("dev1", 11), ("dev2", 12)], false);
    let group = format!("{GROUP4}:{COAP_PORT}");
    let age = MAX_AGE.to_string();
    for (host, addr) in [("dev1", DEV1), ("dev2", DEV2)] {
        let args = [
            "--log-format",
            "json",
            "device",
            "--group",
            &group,
            "--interface",
            "eth0",
            "--bind",
            addr,
            "--name",
            host,
            "--log-requests",
            "--hello-max-age",
            &age,
        ];
        let i = net.spawn(host, host, Path::new(GROXY), &args, Out::File);
        net.wait_sockets(host, &[group.clone(), addr.into()], i);
    }
    let cfg = format!(
        "[proxy]\nlisten = [\"{PRX_WAN}:{COAP_PORT}\"]\n\n[unicast]\nenabled = false\n\n\
         [cache]\nenabled = true\nmax_entries = 64\nmax_bytes = 65536\n\n\
         [[group]]\nname = \"sensors\"\nuri = \"coap://{GROUP4}\"\ninterface = \"{PRX_LAN}\"\n\
         allow = [\"{CLI_WAN}/32\"]\nmax_timeout = 10\n\
         cache_members = [\"{DEV1}\", \"{DEV2}\"]\n"
    );
    let path = net.dir.join("proxy.toml");
    std::fs::write(&path, cfg).unwrap();
    run(GROXY, &["check-config", path.to_str().unwrap()]);
    let i = net.spawn(
        "prx",
        "proxy",
        Path::new(GROXY),
        &[
            "--log-format",
            "json",
            "run",
            "--config",
            path.to_str().unwrap(),
        ],
        Out::File,
    );
    net.wait_sockets("prx", &[format!("{PRX_WAN}:{COAP_PORT}")], i);
    net
}

/// A group GET of /hello with T' = 2 s through the proxy: the responses.
fn read(net: &Net) -> Vec<Value> {
    let uri = format!("coap://{GROUP4}/hello");
    let proxy = format!("{PRX_WAN}:{COAP_PORT}");
    let out = net
        .command("cli", GROXY)
        .args([
            "client",
            &uri,
            "--proxy",
            &proxy,
            "--json",
            "--timeout",
            "2",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", net.logs());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Group requests device `host` received so far (its `--log-requests` lines).
fn group_requests(net: &Net, host: &str) -> usize {
    std::fs::read_to_string(net.dir.join(format!("{host}.out")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["via"] == "group")
        .count()
}

/// Each device's /hello once, with its Reply-From.
fn check_both(got: &[Value], net: &Net) {
    for (d, name) in [(DEV1, "dev1"), (DEV2, "dev2")] {
        let mine: Vec<&Value> = got
            .iter()
            .filter(|v| v["reply_from"].as_str() == Some(d))
            .collect();
        assert_eq!(mine.len(), 1, "{d} once: {got:#?}\n{}", net.logs());
        assert_eq!(mine[0]["code"], "2.05", "{got:#?}");
        assert_eq!(
            mine[0]["payload"].as_str(),
            Some(format!("hello from {name}").as_str())
        );
    }
}

#[test]
#[ignore = "needs root (network namespaces); run by .ci/run"]
fn groupcomm_proxy_s7_cached_group_read_then_revalidated() {
    let net = start();
    // First read: forwarded, both devices answer, the proxy stores both (§7).
    check_both(&read(&net), &net);
    let before = (group_requests(&net, "dev1"), group_requests(&net, "dev2"));
    assert_eq!(before, (1, 1), "{}", net.logs());
    // Within Max-Age: served from the cache alone (§7.1), nothing reaches the devices.
    check_both(&read(&net), &net);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        (group_requests(&net, "dev1"), group_requests(&net, "dev2")),
        before,
        "a cached read reached a device\n{}",
        net.logs()
    );
    // Past Max-Age: to the group again, revalidated with the stored ETags (§7.2.2); the
    // devices answer 2.03 and the client gets the stored representations as 2.05.
    thread::sleep(Duration::from_secs(MAX_AGE));
    check_both(&read(&net), &net);
    assert_eq!(
        (group_requests(&net, "dev1"), group_requests(&net, "dev2")),
        (2, 2),
        "{}",
        net.logs()
    );
    let proxy = std::fs::read_to_string(net.dir.join("proxy.log")).unwrap_or_default();
    assert_eq!(
        proxy.matches("\"revalidated\"").count(),
        2,
        "both devices' 2.03 refreshed their entries\n{proxy}"
    );
    assert!(proxy.contains("\"hit\""), "{proxy}");
}
