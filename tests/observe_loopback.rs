//! Observe and block-wise with the real binaries on loopback multicast, unprivileged:
//! `groxy device` notifiers, `groxy run`, and `groxy client --observe` / `--block-size`
//! ended by SIGINT as an operator's Ctrl-C (RFC 7641, RFC 7959, RFC 10020 §3.7-§3.8,
//! groupcomm-proxy §5.2.2).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::free_port;
use common::process::{Running, collect, json_lines, signal, wait_for, wait_ready};
use serde_json::Value;

/// How long a condition may take to come about.
const WAIT: Duration = Duration::from_secs(15);

const BIN: &str = env!("CARGO_BIN_EXE_groxy");

struct Dev {
    _child: Running,
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

/// `n` devices 127.0.0.`first`.. on group port `port`, notifying every 400 ms, a CON
/// every third notification.
fn devices(first: u8, n: u8, port: u16) -> Vec<Dev> {
    (0..n)
        .map(|i| {
            let addr = format!("127.0.0.{}:{port}", first + i);
            let mut c = Command::new(BIN)
                .args(["--log-format", "json", "device", "--log-requests"])
                .args(["--group", &format!("224.0.1.187:{port}")])
                .args(["--interface", "127.0.0.1", "--bind", &addr])
                .args(["--name", &format!("d{}", first + i)])
                .args(["--notify-interval-ms", "400", "--con-every", "3"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let log = collect(c.stdout.take().unwrap());
            let err = collect(c.stderr.take().unwrap());
            let d = Dev {
                _child: Running(c),
                addr,
                log,
            };
            wait_for("the device to join", WAIT, || {
                err.lock().unwrap().iter().any(|l| l.contains("unicast"))
            });
            d
        })
        .collect()
}

/// The observer events a device logged (`registered`, `deregistered`, ...).
fn observe_events(d: &Dev) -> Vec<String> {
    json_lines(&d.log)
        .iter()
        .filter_map(|v| v["observe"].as_str().map(str::to_string))
        .collect()
}

/// `groxy run` with one group on `port`, listening on a free port; returns it and
/// that port.
fn proxy(dir: &Path, port: u16) -> (Running, u16) {
    let (listen, metrics) = (free_port(), common::free_tcp_port());
    let cfg = dir.join("groxy.toml");
    std::fs::write(
        &cfg,
        format!(
            "[proxy]\nlisten = [\"127.0.0.1:{listen}\"]\nmetrics = \"127.0.0.1:{metrics}\"\n\
             state_dir = \"state\"\n\
             [[group]]\nname = \"sensors\"\nuri = \"coap://224.0.1.187:{port}\"\n\
             interface = \"127.0.0.1\"\n"
        ),
    )
    .unwrap();
    let child = Command::new(BIN)
        .args(["run", "--config", cfg.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_ready(metrics, WAIT);
    (Running(child), listen)
}

fn client(args: &[&str]) -> (Running, Arc<Mutex<Vec<String>>>) {
    let mut c = Command::new(BIN)
        .arg("client")
        .args(args)
        .arg("--json")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = collect(c.stdout.take().unwrap());
    (Running(c), out)
}

/// Ctrl-C (SIGINT) to the client: it deregisters and exits 0 (RFC 7641 §3.6).
fn interrupt(c: &mut Running) -> std::process::ExitStatus {
    signal(&c.0, libc::SIGINT);
    let t = Instant::now();
    loop {
        if let Some(s) = c.0.try_wait().unwrap() {
            return s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "client still running after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// RFC 7641 §3.1-§3.6 straight to a device: every notification printed with its
/// Observe number, rising; on SIGINT the client sends the deregistration (the device
/// logs it for the client's token) and exits 0.
#[test]
fn rfc7641_direct_observation_ends_on_sigint_with_deregistration() {
    let port = free_port();
    let devs = devices(141, 1, port);
    let uri = format!("coap://{}/counter", devs[0].addr);
    let (mut c, out) = client(&["--direct", "--observe", &uri]);
    wait_for("five notifications", WAIT, || json_lines(&out).len() >= 5);
    assert!(interrupt(&mut c).success(), "exit 0");
    let got = json_lines(&out);
    let seqs: Vec<u64> = got.iter().filter_map(|v| v["observe"].as_u64()).collect();
    assert!(seqs.len() >= 5, "{got:?}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "rising: {seqs:?}");
    wait_for("the deregistration at the device", WAIT, || {
        observe_events(&devs[0]).contains(&"deregistered".to_string())
    });
    assert_eq!(observe_events(&devs[0])[0], "registered");
}

/// groupcomm-proxy §5.2.2, RFC 10020 §3.7: an observation of a device group through a
/// real `groxy run` goes on past T' (Multicast-Timeout 2 s): notifications from every
/// device arrive after it, each with Reply-From; SIGINT of the client deregisters
/// (every device logs it) and the client exits 0.
#[test]
fn rfc10020_s3_7_group_observation_through_groxy_run_outlives_t_prime() {
    let dir = std::env::temp_dir().join(format!("groxy-obs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let devs = devices(151, 3, port);
    let (_p, listen) = proxy(&dir, port);
    let uri = format!("coap://224.0.1.187:{port}/counter");
    let proxy_addr = format!("127.0.0.1:{listen}");
    let (mut c, out) = client(&["--proxy", &proxy_addr, "--timeout", "2", "--observe", &uri]);
    let late = |v: &Value, d: &Dev| {
        v["reply_from"].as_str() == Some(d.addr.as_str())
            && v["elapsed_ms"].as_u64().is_some_and(|t| t > 3000)
            && v["observe"].is_u64()
    };
    wait_for("notifications of every device past T'", WAIT, || {
        let got = json_lines(&out);
        devs.iter().all(|d| got.iter().any(|v| late(v, d)))
    });
    assert!(interrupt(&mut c).success(), "exit 0");
    for d in &devs {
        wait_for("the group deregistration at each device", WAIT, || {
            observe_events(d).contains(&"deregistered".to_string())
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// RFC 10020 §3.8, RFC 7959 §2.4: a group GET with Block2 through `groxy run`; each
/// device's first block comes back with Reply-From and the client fetches the rest from
/// that device (unicast through the proxy) and prints its 3,000 bytes whole.
#[test]
fn rfc10020_s3_8_blockwise_from_each_device_through_groxy_run() {
    let dir = std::env::temp_dir().join(format!("groxy-blk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let devs = devices(161, 3, port);
    let (_p, listen) = proxy(&dir, port);
    let uri = format!("coap://224.0.1.187:{port}/large");
    let proxy_addr = format!("127.0.0.1:{listen}");
    let (mut c, out) = client(&[
        "--proxy",
        &proxy_addr,
        "--timeout",
        "2",
        "--block-size",
        "256",
        &uri,
    ]);
    let t = Instant::now();
    while c.0.try_wait().unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(20), "client did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = json_lines(&out);
    for (i, d) in devs.iter().enumerate() {
        let r = got
            .iter()
            .find(|v| v["reply_from"].as_str() == Some(d.addr.as_str()))
            .unwrap_or_else(|| panic!("{}: {got:?}", d.addr));
        let p = r["payload"].as_str().unwrap();
        assert_eq!(p.len(), 3000, "{}", d.addr);
        assert!(p.starts_with(&format!("large from d{}:", 161 + i)));
        assert!(p.contains(" 00400"), "blocks past the first");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
