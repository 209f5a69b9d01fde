//! Reverse-proxy mode between real hosts (issue 16 points 2 and 4, groupcomm-proxy-07 §6):
//! a client that knows no forward-proxy options uses a resource of groxy that stands for
//! a LAN group of two groxy devices, groxy standing in for the servers too.
//!
//! - Plain `aiocoap-client` (0.4.17) GETs coap://PROXY/lights/hello: 4.00 (§6.1, the
//!   proxy reveals itself; it sends no Multicast-Timeout).
//! - aiocoap_reverse_client.py (aiocoap's Message, with the raw Multicast-Timeout option
//!   aiocoap-client cannot add) sends the same GET with one: every device's response
//!   arrives, each Reply-From naming an address of the proxy.
//!   One device gets the proxy's one pool address (Appendix A.2, Reply-From the CRI
//!   alone), the other the CRI-reference form (Appendix A.1).
//! - A follow-up (§6.2) to the pool address, or to the proxy with the Uri-Host and
//!   Uri-Port of the CRI reference, reaches that device alone, [unicast] being off.
//!
//! Topology (the shared one of `common::netns`, IPv4):
//!
//! ```text
//!   cli ──wan0══wan0── prx ──lan0══ br ══ dev1 10.77.2.11, dev2 10.77.2.12
//!   10.77.1.1          10.77.1.2:5683 (and :6001, the pool)
//! ```
//!
//! Root is needed (namespaces): `#[ignore]`d so that a plain `cargo test` passes
//! anywhere; `.ci/run` runs it with `cargo test --test netns_reverse -- --ignored`.

mod common;

use common::netns::{CLI_WAN4 as CLI_WAN, Net, Out, PRX_LAN4 as PRX_LAN, PRX_WAN4 as PRX_WAN, run};

use std::path::Path;
use std::process::Stdio;

use serde_json::{Value, json};

const GROXY: &str = env!("CARGO_BIN_EXE_groxy");
const GROUP4: &str = "224.0.1.187";
const COAP_PORT: u16 = 5683;
/// One pool address: the device answering first gets it (Appendix A.2), the other the
/// CRI-reference form (Appendix A.1).
const POOL: &str = "10.77.1.2:6001";
const DEVICES: [(&str, &str, &str); 2] = [
    ("dev1", "10.77.2.11:5683", "0a4d020b"),
    ("dev2", "10.77.2.12:5683", "0a4d020c"),
];

fn start() -> Net {
    let mut net = Net::build("gr", &[("dev1", 11), ("dev2", 12)], false);
    let group = format!("{GROUP4}:{COAP_PORT}");
    for (host, addr, _) in DEVICES {
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
        ];
        let i = net.spawn(
            host,
            &format!("{host}-groxy"),
            Path::new(GROXY),
            &args,
            Out::File,
        );
        net.wait_sockets(host, &[group.clone(), addr.into()], i);
    }
    let listen = format!("{PRX_WAN}:{COAP_PORT}");
    let cfg = format!(
        "[proxy]\nlisten = [\"{listen}\"]\n\n[unicast]\nenabled = false\n\n\
         [[group]]\nname = \"lights\"\nuri = \"coap://{GROUP4}\"\ninterface = \"{PRX_LAN}\"\n\
         allow = [\"{CLI_WAN}/32\"]\nmax_timeout = 10\n\n\
         [[reverse]]\ngroup = \"lights\"\npath = \"lights\"\nstand_in = \"servers\"\n\
         advertise = \"{listen}\"\nmax_servers = 16\npool = [\"{POOL}\"]\n"
    );
    let file = net.dir.join("proxy.toml");
    std::fs::write(&file, cfg).unwrap();
    run(GROXY, &["check-config", file.to_str().unwrap()]);
    let i = net.spawn(
        "prx",
        "proxy",
        Path::new(GROXY),
        &[
            "--log-format",
            "json",
            "run",
            "--config",
            file.to_str().unwrap(),
        ],
        Out::File,
    );
    net.wait_sockets("prx", &[listen, POOL.into()], i);
    net
}

/// aiocoap_reverse_client.py in the client's host: its JSON lines (it must exit 0).
fn reverse_client(net: &Net, args: &[&str]) -> Vec<Value> {
    let to = format!("{PRX_WAN}:{COAP_PORT}");
    let mut c = net.command("cli", common::python());
    c.arg(common::script("aiocoap_reverse_client.py"));
    if !args.contains(&"--to") {
        c.args(["--to", &to]);
    }
    let out = c.args(args).stdin(Stdio::null()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "aiocoap_reverse_client.py {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

/// §6.1, §6.2 end to end, as the module comment says.
#[test]
#[ignore = "needs root (network namespaces); run by .ci/run"]
fn groupcomm_proxy_s6_reverse_proxy_with_aiocoap() {
    let net = start();
    // Plain aiocoap-client: no Multicast-Timeout, so the proxy answers 4.00 (§6.1). Run
    // as its module: the venv's console scripts name the folder it was built in.
    let uri = format!("coap://{PRX_WAN}/lights/hello");
    let out = net
        .command("cli", common::python())
        .args(["-m", "aiocoap.cli.client"])
        .arg(&uri)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("4.00 Bad Request") && text.contains("Multicast-Timeout"),
        "aiocoap-client {uri}: {text}\n{}",
        net.logs()
    );
    // The same, read raw: the 4.00 carries an empty Multicast-Timeout.
    let got = reverse_client(&net, &["--path", "lights/hello", "--wait", "2"]);
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0]["code"], "4.00");
    assert_eq!(got[0]["multicast_timeout"], 0, "{got:#?}");

    // With Multicast-Timeout: both devices answer, through the proxy (§6.1 first case):
    // one with Reply-From naming the pool address alone, the other naming the proxy
    // with the CRI reference //DEVICE:5683.
    let got = reverse_client(&net, &["--path", "lights/hello", "--timeout", "2"]);
    assert_eq!(got.len(), 2, "{got:#?}\n{}", net.logs());
    let proxy = json!([-1, ["0a4d0102", COAP_PORT]]);
    let pool = json!([[-1, ["0a4d0102", 6001]]]);
    let mut forms = Vec::new();
    for (name, addr, hex) in DEVICES {
        let from: Vec<&Value> = got
            .iter()
            .filter(|v| v["payload"] == format!("hello from {name}"))
            .collect();
        assert_eq!(from.len(), 1, "{name} once: {got:#?}\n{}", net.logs());
        assert_eq!(from[0]["code"], "2.05");
        let rf = &from[0]["reply_from"];
        if *rf == pool {
            forms.push((name, "pool"));
        } else {
            assert_eq!(*rf, json!([proxy, [null, [hex, COAP_PORT]]]), "{got:#?}");
            forms.push((name, "reference"));
        }
        // §6.2: the follow-up as Reply-From says reaches that device alone: to the pool
        // address with the path only, or to the proxy with Uri-Host and Uri-Port.
        let ip = addr.split(':').next().unwrap();
        let args: Vec<&str> = if *rf == pool {
            vec!["--to", POOL, "--path", "hello", "--con", "--wait", "3"]
        } else {
            vec![
                "--path",
                "hello",
                "--uri-host",
                ip,
                "--uri-port",
                "5683",
                "--con",
                "--wait",
                "3",
            ]
        };
        let back = reverse_client(&net, &args);
        assert_eq!(back.len(), 1, "{args:?}: {back:#?}\n{}", net.logs());
        assert_eq!(back[0]["code"], "2.05");
        assert_eq!(back[0]["payload"], format!("hello from {name}"));
        assert!(
            back[0].get("reply_from").is_none(),
            "a unicast answer: {back:#?}"
        );
    }
    forms.sort_by_key(|f| f.1);
    assert_eq!(
        forms.iter().map(|f| f.1).collect::<Vec<_>>(),
        ["pool", "reference"],
        "one device per form: {forms:?}"
    );
}
