//! Group OSCORE over HTTP between real hosts (issue 13 §5; groupcomm-proxy §9.4 step 3,
//! RFC 8613 §11.2/§11.3): `groxy run` with `[http]` and `[group.security] policy =
//! "enforce"` in its own namespace; two aiocoap 0.4.17 Group OSCORE servers and a groxy
//! device (`--log-requests`, the witness of what reaches the group) on the LAN; HTTP
//! clients in the client's namespace: `groxy client --http --oscore` and curl with a
//! request protected by the test.
//!
//! ```text
//!   cli ──wan0══wan0── prx ──lan0══ br ══ dev1 10.77.2.11 (groxy device, Sender ID 11)
//!   10.77.1.1          10.77.1.2:8080 (HTTP)  dev3 10.77.2.13 (aiocoap, 13)
//!                      :9464 /metrics          dev4 10.77.2.14 (aiocoap, 14)
//! ```
//!
//! Root is needed (namespaces): `#[ignore]`d, run by `.ci/run` with `--ignored`.

mod common;

use common::netns::{CLI_WAN4 as CLI_WAN, Net, Out, PRX_LAN4 as PRX_LAN, PRX_WAN4 as PRX_WAN};

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::Group;
use common::files::{member_file, members_toml, secret, sek};
use groxy::coap::MessageView;
use groxy::coap::build::{self, NON};
use groxy::coap::options as opt;
use groxy::oscore::{Mode, SecurityContext};
use serde_json::json;

const GROXY: &str = env!("CARGO_BIN_EXE_groxy");
const GROUP4: Ipv4Addr = Ipv4Addr::new(224, 0, 1, 187);
const COAP_PORT: u16 = 5683;
const HTTP_PORT: u16 = 8080;
const METRICS_PORT: u16 = 9464;

/// `groxy client --http --oscore`.
const CLIENT: &[u8] = &[0x01];
/// The requests the test protects itself (curl sends them).
const RAW: &[u8] = &[0x02];
const DEV1: &[u8] = &[0x11];
const AIO: [&[u8]; 2] = [&[0x13], &[0x14]];
const MEMBERS: [&[u8]; 5] = [CLIENT, RAW, DEV1, AIO[0], AIO[1]];

/// One protected GET /hello (group mode) as RFC 8613 §11.2 maps it: OSCORE field, body.
fn protected_get(ctx: &mut SecurityContext) -> (String, Vec<u8>) {
    let plain = build::encode(NON, 1, 0, &[0], &mut [(opt::URI_PATH, &b"hello"[..])], &[]);
    let (p, _) = ctx.protect_request(&plain, Mode::Group, None).unwrap();
    let v = MessageView::parse(&p).unwrap();
    (
        URL_SAFE_NO_PAD.encode(v.option(opt::OSCORE).unwrap()),
        v.payload().to_vec(),
    )
}

fn url() -> String {
    format!("http://{PRX_WAN}:{HTTP_PORT}/hc/coap://{GROUP4}/hello")
}

/// curl in the client's namespace POSTing a protected request (T' = 2 s): its status
/// and how many parts (application/http) its body has.
fn curl_oscore(net: &Net, field: &str, body: &[u8], n: usize) -> (u16, usize) {
    let f = net.dir.join(format!("body{n}.bin"));
    std::fs::write(&f, body).unwrap();
    let out = net
        .command("cli", "/usr/bin/curl")
        .args(["-s", "-g", "--max-time", "10", "-X", "POST"])
        .args([
            "-H",
            "Multicast-Timeout: 2",
            "-H",
            &format!("OSCORE: {field}"),
        ])
        .args(["-H", "Content-Type: application/oscore"])
        .args(["--data-binary", &format!("@{}", f.display())])
        .args(["-w", "\n%{http_code}", &url()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').unwrap();
    let parts = body.matches("application/http").count();
    (status.trim().parse().unwrap_or(0), parts)
}

fn scrape(net: &Net, series: &str, with: &str) -> f64 {
    let out = net
        .command("cli", "/usr/bin/curl")
        .args(["-s", &format!("http://{PRX_WAN}:{METRICS_PORT}/metrics")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(series) && l.contains(with))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Group requests dev1 received (its `--log-requests` lines).
fn dev1_requests(net: &Net) -> usize {
    let text = std::fs::read_to_string(net.dir.join("dev1.out")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["via"] == "group")
        .count()
}

/// §9.4 step 3, §9.6; RFC 10021 §7.5 (the proxy checks the countersignature), §6.1
/// (replay window): a valid protected request over HTTP is answered by every member
/// (aiocoap and groxy), each part verified by `groxy client`; curl's valid request is
/// answered by all three; its replay and a forgery are answered 204 at T', never reach
/// the group (dev1 saw two requests, not four) and are counted by the proxy.
#[test]
#[ignore = "needs root: network namespaces (run by .ci/run)"]
fn group_oscore_over_http_to_aiocoap_members_filtered() {
    common::python();
    let mut net = Net::build("gh", &[("dev1", 11), ("dev3", 13), ("dev4", 14)], false);
    let g = Group::new(&MEMBERS);
    let dir = net.dir.clone();
    secret(&dir.join("master.secret"), &g.master_secret);
    secret(&dir.join("g.sek"), &sek(&g));
    let files: Vec<PathBuf> = MEMBERS.iter().map(|id| member_file(&dir, &g, id)).collect();

    let group = format!("{GROUP4}:{COAP_PORT}");
    let bind = format!("10.77.2.11:{COAP_PORT}");
    let i = net.spawn_groxy_device(
        "dev1",
        "dev1",
        (&group, &bind),
        &["--oscore", files[2].to_str().unwrap(), "--log-requests"],
        Out::File,
    );
    net.wait_sockets("dev1", &[group.clone(), bind], i);
    let mut ready = Vec::new();
    for (host, id) in [("dev3", AIO[0]), ("dev4", AIO[1])] {
        let mut cfg = g.aiocoap_setup(id);
        cfg["response_mode"] = json!("group");
        cfg["bind"] = json!("::");
        cfg["port"] = json!(COAP_PORT);
        cfg["multicast"] = json!([[GROUP4.to_string(), "eth0"]]);
        let file = dir.join(format!("{host}.json"));
        std::fs::write(&file, cfg.to_string()).unwrap();
        let script = common::script("aiocoap_server.py");
        let i = net.spawn(
            host,
            host,
            &common::python(),
            &[script.to_str().unwrap(), file.to_str().unwrap()],
            Out::Pipe,
        );
        ready.push(net.ready_line(i));
    }
    let members = members_toml(&g, None);
    let cfg = format!(
        "[proxy]\nlisten = [\"{PRX_WAN}:{COAP_PORT}\"]\nmetrics = \"{PRX_WAN}:{METRICS_PORT}\"\n\
         state_dir = \"state\"\n[unicast]\nenabled = false\n\
         [http]\nlisten = [\"{PRX_WAN}:{HTTP_PORT}\"]\n\
         [[group]]\nname = \"secure\"\nuri = \"coap://{GROUP4}\"\ninterface = \"{PRX_LAN}\"\n\
         allow = [\"{CLI_WAN}/32\"]\nmax_timeout = 10\n\
         [group.security]\npolicy = \"enforce\"\ngid = \"{}\"\nkey_generation = {}\n\
         signature_encryption_key_file = \"g.sek\"\ngm_credential = \"{}\"\nmembers = [\n{members}]\n",
        hex::encode(&g.gid),
        g.key_generation,
        hex::encode(g.gm.cred.bytes()),
    );
    let cfg_path = dir.join("groxy.toml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let p = net.spawn_groxy_run("proxy", &cfg_path, Out::File);
    net.wait_sockets("prx", &[format!("{PRX_WAN}:{COAP_PORT}")], p);
    for r in ready {
        net.wait_ready(r, COAP_PORT);
    }
    let t = Instant::now();
    while !net
        .command("cli", "/usr/bin/curl")
        .args([
            "-sf",
            "-o",
            "/dev/null",
            &format!("http://{PRX_WAN}:{METRICS_PORT}/readyz"),
        ])
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(t.elapsed() < Duration::from_secs(20), "proxy not ready");
        std::thread::sleep(Duration::from_millis(100));
    }

    // groxy client --http --oscore: every member answers, each part verified.
    let out = net
        .command("cli", GROXY)
        .args(["client", "--http", &url(), "--timeout", "2", "--oscore"])
        .arg(&files[0])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}\n{}", net.logs());
    assert!(
        stderr.contains("HTTP 200: 3 response(s)"),
        "{stdout}\n{stderr}"
    );
    for who in [
        "hello from dev1",
        "hello from aiocoap 13",
        "hello from aiocoap 14",
    ] {
        assert!(stdout.contains(who), "{who}: {stdout}");
    }

    // curl with a request protected here: answered by all three.
    let mut ctx = SecurityContext::new(&g.config(RAW)).unwrap();
    let (field, body) = protected_get(&mut ctx);
    assert_eq!(curl_oscore(&net, &field, &body, 0), (200, 3));
    // Its replay and a forgery (countersignature altered): 204 at T', no fan-out.
    assert_eq!(curl_oscore(&net, &field, &body, 1), (204, 0));
    let (field2, mut body2) = protected_get(&mut ctx);
    let n = body2.len();
    body2[n - 1] ^= 0x01;
    assert_eq!(curl_oscore(&net, &field2, &body2, 2), (204, 0));
    assert_eq!(
        dev1_requests(&net),
        2,
        "only the two valid requests reached dev1"
    );
    let checks = "groxy_signature_checks_total";
    assert_eq!(scrape(&net, checks, "result=\"replay\""), 1.0);
    assert_eq!(scrape(&net, checks, "result=\"bad_signature\""), 1.0);
    assert_eq!(scrape(&net, "groxy_fanouts_total", ""), 2.0);
}
