//! The replay filter across restarts of a real `groxy run` (groupcomm-proxy §10: a
//! captured, validly signed request is not multicast again; RFC 8613 §7.4 and RFC 10021
//! §2.6.1.2: a receiver keeps its replay state across reboots or treats it as lost). A
//! validly signed group-mode request goes through the proxy to two Group OSCORE devices
//! (`groxy device --oscore --log-requests`, which report every datagram that reaches
//! them); the proxy is stopped (kill -9, or SIGTERM and its clean exit) and started again
//! on the same state_dir; the captured datagram, sent again, reaches no device, and a new
//! request from the same sender with a higher sequence number still does.

mod common;

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::files::{group_secrets, member_file, members_toml};
use common::process::{Running, collect, metric, wait_for, wait_ready};
use common::{Group, free_port};
use groxy::coap::MessageView;
use groxy::coap::build::{self, NON, code};
use groxy::coap::options as opt;
use groxy::oscore::{Mode, SecurityContext};

/// How long a condition may take to come about.
const WAIT: Duration = Duration::from_secs(15);

const CLIENT: &[u8] = &[0x01];
const DEVS: [&[u8]; 2] = [&[0x0a], &[0x0b]];

struct Proxy {
    child: Running,
    log: Arc<Mutex<Vec<String>>>,
}

fn start_proxy(cfg: &Path, metrics: u16) -> Proxy {
    let mut child = Command::new(env!("CARGO_BIN_EXE_groxy"))
        .args([
            "--log-format",
            "json",
            "run",
            "--config",
            cfg.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = collect(child.stderr.take().unwrap());
    wait_ready(metrics, WAIT);
    Proxy {
        child: Running(child),
        log,
    }
}

/// The client's group-mode request with Partial IV `seq`, with the Class U proxy options
/// outside (RFC 8613 §4.1.3.3 forbids Proxy-Uri under OSCORE, so Proxy-Scheme + Uri-*).
fn request(ctx: &mut SecurityContext, seq: u64, port: u16, mid: u16) -> (Vec<u8>, String) {
    ctx.sender.ssn = seq;
    let plain = build::encode(
        NON,
        code::GET,
        1,
        &[1],
        &mut [(opt::URI_PATH, &b"hello"[..])],
        &[],
    );
    let (p, _) = ctx.protect_request(&plain, Mode::Group, None).unwrap();
    let v = MessageView::parse(&p).unwrap();
    let port_bytes = port.to_be_bytes();
    let mut o: Vec<(u16, &[u8])> = v.options().collect();
    o.extend([
        (opt::URI_HOST, &b"224.0.1.187"[..]),
        (opt::URI_PORT, &port_bytes[..]),
        (opt::PROXY_SCHEME, b"coap"),
        (opt::MULTICAST_TIMEOUT_DEFAULT, &[1]),
    ]);
    let token = mid.to_be_bytes();
    let bytes = build::encode(NON, v.code(), mid, &token, &mut o, v.payload());
    // What identifies it at a device: the proxy re-encodes the header and options but
    // passes the ciphertext and its countersignature untouched.
    (bytes, hex::encode(v.payload()))
}

#[derive(Clone, Copy, Debug)]
enum Stop {
    Kill,
    Term,
}

fn restart_does_not_reopen_replays(stop: Stop) {
    let dir = common::fresh_dir(&format!("groxy-rr-{stop:?}"));
    let g = Group::new(&[CLIENT, DEVS[0], DEVS[1]]);
    group_secrets(&dir, &g);
    let (port, metrics) = (free_port(), common::free_tcp_port());
    let cfg = dir.join("groxy.toml");
    std::fs::write(
        &cfg,
        format!(
            "[proxy]\nlisten = [\"127.0.0.1:{listen}\"]\nmetrics = \"127.0.0.1:{metrics}\"\nstate_dir = \"state\"\n\
             [[group]]\nname = \"secure\"\nuri = \"coap://224.0.1.187:{port}\"\ninterface = \"127.0.0.1\"\n\
             [group.security]\npolicy = \"enforce\"\ngid = \"{gid}\"\nsignature_encryption_key_file = \"group.sek\"\n\
             gm_credential = \"{gm}\"\nmembers = [\n{members}]\n",
            listen = free_port(),
            gid = hex::encode(&g.gid),
            gm = hex::encode(g.gm.cred.bytes()),
            members = members_toml(&g, None),
        ),
    )
    .unwrap();
    let listen: u16 = groxy::settings::load_file(&cfg).unwrap().run.listen[0].port();

    // The devices, each printing a JSON line per datagram that reaches it.
    let mut devices = Vec::new();
    let mut seen = Vec::new();
    for (i, id) in DEVS.iter().enumerate() {
        let mut c = Command::new(env!("CARGO_BIN_EXE_groxy"))
            .args(["--log-format", "json", "device", "--log-requests"])
            .args(["--group", &format!("224.0.1.187:{port}")])
            .args(["--interface", "127.0.0.1"])
            .args(["--bind", &format!("127.0.0.{}:{port}", 81 + i)])
            .args(["--name", &format!("dev{i}")])
            .arg("--oscore")
            .arg(member_file(&dir, &g, id))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        seen.push(collect(c.stdout.take().unwrap()));
        let err = collect(c.stderr.take().unwrap());
        devices.push(Running(c));
        wait_for("the device to join", WAIT, || {
            err.lock().unwrap().iter().any(|l| l.contains("unicast"))
        });
    }
    let delivered = |payload: &str| -> Vec<usize> {
        seen.iter()
            .map(|s| {
                s.lock()
                    .unwrap()
                    .iter()
                    .filter(|l| l.contains(payload))
                    .count()
            })
            .collect()
    };

    let mut proxy = start_proxy(&cfg, metrics);
    let mut client = SecurityContext::new(&g.config(CLIENT)).unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (captured, captured_id) = request(&mut client, 5, port, 0x100);
    sock.send_to(&captured, ("127.0.0.1", listen)).unwrap();
    wait_for("both devices to get the request", WAIT, || {
        delivered(&captured_id) == [1, 1]
    });

    match stop {
        Stop::Kill => {
            proxy.child.0.kill().unwrap();
            proxy.child.0.wait().unwrap();
        }
        Stop::Term => {
            // SAFETY: kill(2) with the pid of our own child process.
            assert_eq!(
                unsafe { libc::kill(proxy.child.0.id() as i32, libc::SIGTERM) },
                0
            );
            let t = Instant::now();
            let status = loop {
                if let Some(s) = proxy.child.0.try_wait().unwrap() {
                    break s;
                }
                assert!(t.elapsed() < Duration::from_secs(10), "did not exit");
                std::thread::sleep(Duration::from_millis(20));
            };
            assert!(status.success(), "{status}");
        }
    }
    let proxy = start_proxy(&cfg, metrics);
    assert!(
        proxy
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("replay_state_restored") && l.contains("Windows")),
        "{:#?}",
        proxy.log.lock().unwrap()
    );

    // The captured datagram again, byte for byte: validly signed, but its Partial IV is
    // in the restored window.
    sock.send_to(&captured, ("127.0.0.1", listen)).unwrap();
    // The same sender's next request passes; sent after the replay on the same socket, so
    // once it has reached both devices the replay would have too.
    let (next, next_id) = request(&mut client, 6, port, 0x101);
    sock.send_to(&next, ("127.0.0.1", listen)).unwrap();
    wait_for("both devices to get the next request", WAIT, || {
        delivered(&next_id) == [1, 1]
    });
    // The proxy's side: counted as a replay, dropped by the request filter. Once it is
    // counted the proxy has decided on it, so no copy of it can still be on its way.
    wait_for("the replay to be counted", WAIT, || {
        metric(metrics, "groxy_replays_dropped_total{group=\"secure\"}") == Some(1.0)
    });
    assert_eq!(
        delivered(&captured_id),
        [1, 1],
        "the replay reached a device"
    );
    assert_eq!(
        metric(
            metrics,
            "groxy_dropped_total{reason=\"request_check_failed\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            metrics,
            "groxy_signature_checks_total{direction=\"request\",group=\"secure\",policy=\"enforce\",result=\"valid\"}"
        ),
        Some(1.0)
    );
    assert!(
        proxy
            .log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("check_failed") && l.contains("\"replay\"")),
        "{:#?}",
        proxy.log.lock().unwrap()
    );
    drop(proxy);
    drop(devices);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn replay_after_kill_9_reaches_no_device() {
    restart_does_not_reopen_replays(Stop::Kill);
}

#[test]
fn replay_after_sigterm_reaches_no_device() {
    restart_does_not_reopen_replays(Stop::Term);
}
