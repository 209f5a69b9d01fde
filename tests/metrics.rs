//! The operations endpoint with the real thing: a proxy on loopback multicast with groxy
//! devices, a Group OSCORE client whose requests the proxy checks, and then
//!
//! * `promtool check metrics` on a scrape taken after that traffic;
//! * a real Prometheus scraping groxy every second, whose HTTP API must report exactly
//!   the counts the traffic produces, load the alert rules of deploy/prometheus and fire
//!   the replay alert;
//! * `promtool check rules`, `test rules` and `check config` on deploy/prometheus;
//! * `/healthz` and `/readyz` in-process and from `groxy run --config`;
//! * the files under deploy/: the Kubernetes manifests parse, their groxy.toml is valid
//!   and agrees with the probes, and every metric the dashboard and the alerts query
//!   exists in a real scrape.
//!
//! The tests that run promtool or prometheus need the Debian package `prometheus` and are
//! `#[ignore]`d so that a plain `cargo test` passes anywhere; `.ci/run` installs the
//! package and runs them with `cargo test --test metrics -- --ignored`. Run that way, a
//! missing binary fails the test with the package to install.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Group, http_get};
use groxy::coap::MessageView;
use groxy::coap::build::{self, NON, code};
use groxy::coap::options as opt;
use groxy::ops::{self, Ops};
use groxy::oscore::{Mode, SecurityContext};
use groxy::runtime::{Interface, Proxy};
use groxy::tools::client::{ClientRequest, run as send};
use groxy::tools::device::{Device, DeviceConfig};
use serde_json::Value;

const GROXY: &str = env!("CARGO_BIN_EXE_groxy");
const CLIENT: &[u8] = &[0x01];
const DEV_A: &[u8] = &[0x0a];
/// NON GET /hello, the inner request the OSCORE client protects.
const GET_HELLO: &str = "5101aa01c3b568656c6c6f";
/// Key Generation Number of the checked group's material, to see it in the gauge.
const KEY_GENERATION: u64 = 3;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn free_udp_port() -> u16 {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_tcp_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A binary of the Debian package `prometheus`; its absence fails the test, with what to
/// install, rather than skipping it.
fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "{name} not found: install the Debian package `prometheus` \
             (apt-get install -y prometheus), which provides /usr/bin/prometheus and \
             /usr/bin/promtool"
        )
    })
}

fn scrape(addr: SocketAddr) -> String {
    let (status, body) = http_get(addr, "/metrics").expect("scrape /metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of one sample line of a scrape, e.g. `groxy_late_responses_total`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Names of every sample in a scrape (histograms as _bucket, _sum and _count).
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_string())
        .collect()
}

/// A proxy with its operations endpoint and devices, on a thread and runtime of their
/// own so that the tests can make blocking HTTP calls and run their own clients.
///
/// Groups: `plain` (unchecked) with two prompt devices and one that answers 1.5 s late;
/// `secure` (signature checks enforced, no devices).
struct World {
    proxy: SocketAddr,
    metrics: SocketAddr,
    plain: SocketAddr,
    secure: SocketAddr,
    group: Group,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Distinct device addresses per world, so that worlds of parallel tests never share one.
static NEXT_DEVICE: AtomicU32 = AtomicU32::new(0);

impl World {
    fn start() -> World {
        let mut group = Group::new(&[CLIENT, DEV_A]);
        group.key_generation = KEY_GENERATION;
        let plain: SocketAddr = (Ipv4Addr::new(224, 0, 1, 187), free_udp_port()).into();
        let secure: SocketAddr = (Ipv4Addr::new(224, 0, 1, 187), free_udp_port()).into();
        // Configured as an operator would: a file, and the Master Secret in a file only
        // its owner may read.
        let dir = TempDir::new("world");
        let secret = dir.0.join("secure.secret");
        std::fs::write(&secret, hex::encode(&group.master_secret)).unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let members: Vec<String> = group
            .members
            .iter()
            .map(|m| {
                format!(
                    "{{ id = \"{}\", credential = \"{}\" }}",
                    hex::encode(&m.id),
                    hex::encode(m.cred.bytes())
                )
            })
            .collect();
        let toml = format!(
            "[proxy]\nlisten = [\"127.0.0.1:0\"]\nmetrics = \"127.0.0.1:0\"\nstate_dir = \"state\"\n\
             [[group]]\nname = \"plain\"\nuri = \"coap://{plain}\"\nhost_names = [\"plain\"]\n\
             interface = \"127.0.0.1\"\n\
             [[group]]\nname = \"secure\"\nuri = \"coap://{secure}\"\nhost_names = [\"secure\"]\n\
             interface = \"127.0.0.1\"\n\
             [group.security]\npolicy = \"enforce\"\ngid = \"{gid}\"\nkey_generation = {KEY_GENERATION}\n\
             master_secret_file = \"secure.secret\"\nmaster_salt = \"{salt}\"\n\
             gm_credential = \"{gm}\"\nmembers = [{members}]\n",
            gid = hex::encode(&group.gid),
            salt = hex::encode(&group.master_salt),
            gm = hex::encode(group.gm.cred.bytes()),
            members = members.join(", "),
        );
        let path = dir.0.join("groxy.toml");
        std::fs::write(&path, toml).unwrap();
        let loaded = groxy::settings::load_file(&path)
            .unwrap_or_else(|e| panic!("test configuration: {}", e.join("\n")));
        let (cfg, metrics_at) = (loaded.run, loaded.metrics.expect("metrics configured"));
        let first = 51 + 3 * NEXT_DEVICE.fetch_add(1, Ordering::Relaxed) as u8;

        let (tx, rx) = mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (o, m) = Ops::start(metrics_at, &cfg.proxy).unwrap();
                let mut proxy = Proxy::bind(cfg).unwrap();
                proxy.observe(m);
                for i in 0..3u8 {
                    let d = Device::bind(DeviceConfig {
                        oscore: None,
                        name: format!("d{i}"),
                        group: plain,
                        interface: Interface::Addr(Ipv4Addr::LOCALHOST),
                        bind: (Ipv4Addr::new(127, 0, 0, first + i), plain.port()).into(),
                        leisure: Duration::ZERO,
                        // The third device answers after the Multicast-Timeout of 1 s.
                        delay: Duration::from_millis(if i == 2 { 1500 } else { 0 }),
                    })
                    .unwrap();
                    tokio::spawn(d.run());
                }
                tx.send((proxy.listen_addrs()[0], o.local_addr())).unwrap();
                ops::serve(proxy, o.health(), async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
                drop(o);
            });
        });
        let (proxy, metrics) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the proxy starts");
        World {
            proxy,
            metrics,
            plain,
            secure,
            group,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The traffic whose counts the tests assert:
    ///
    /// * `plain`: three fan-outs at once (T' = 1 s), each answered by two devices in time
    ///   and one late: 6 relayed, 3 late; and one request without Multicast-Timeout: 4.00;
    /// * `secure`: one validly signed group request (forwarded), a forged copy and a
    ///   replay of it (both dropped by the filter).
    ///
    /// Returns once every exchange has ended and every late response was counted.
    fn traffic(&self) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let req = || {
                let mut r =
                    ClientRequest::get(self.proxy, &format!("coap://{}/hello", self.plain), 1);
                r.margin = Duration::from_millis(300);
                r
            };
            let (a, b, c) = (req(), req(), req());
            let (a, b, c) = tokio::join!(send(&a, |_| {}), send(&b, |_| {}), send(&c, |_| {}));
            for got in [a.unwrap(), b.unwrap(), c.unwrap()] {
                assert_eq!(got.len(), 2, "two prompt devices answer each: {got:?}");
            }

            let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let no_timeout = build::encode(
                NON,
                code::GET,
                7,
                &[1],
                &mut [(
                    opt::PROXY_URI,
                    format!("coap://{}/hello", self.plain).as_bytes(),
                )],
                &[],
            );
            sock.send_to(&no_timeout, self.proxy).await.unwrap();
            let mut buf = [0u8; 1500];
            let (n, _) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
                .await
                .expect("an answer to the request without Multicast-Timeout")
                .unwrap();
            assert_eq!(
                MessageView::parse(&buf[..n]).unwrap().code(),
                code::BAD_REQUEST
            );

            // Group OSCORE: the proxy options go outside the protected message, as a
            // client adds them after protection (RFC 8613 §4.1).
            let mut ctx = SecurityContext::new(&self.group.config(CLIENT)).unwrap();
            let (good, _) = ctx
                .protect_request(&hex::decode(GET_HELLO).unwrap(), Mode::Group, Some(DEV_A))
                .unwrap();
            let mut forged = good.clone();
            *forged.last_mut().unwrap() ^= 1; // the end of the encrypted signature
            let host = self.secure.ip().to_string();
            let port = opt::uint_value(self.secure.port() as u32);
            for (mid, msg) in [(20u16, &good), (21, &forged), (22, &good)] {
                let v = MessageView::parse(msg).unwrap();
                let mut opts: Vec<(u16, &[u8])> = v.options().collect();
                opts.push((opt::URI_HOST, host.as_bytes()));
                opts.push((opt::URI_PORT, &port));
                opts.push((opt::PROXY_SCHEME, b"coap"));
                opts.push((opt::MULTICAST_TIMEOUT_DEFAULT, &[1]));
                let m = build::encode(
                    NON,
                    v.code(),
                    mid,
                    &mid.to_be_bytes(),
                    &mut opts,
                    v.payload(),
                );
                sock.send_to(&m, self.proxy).await.unwrap();
            }
        });
        // Late responses come 1.5 s after the fan-outs, the secure exchange ends 1 s after
        // its request: wait until the proxy has seen all of it.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let t = scrape(self.metrics);
            let done = sample(&t, "groxy_late_responses_total") == Some(3.0)
                && sample(&t, "groxy_exchanges_active") == Some(0.0)
                && sample(&t, "groxy_dropped_total{reason=\"request_check_failed\"}") == Some(2.0);
            if done {
                return;
            }
            assert!(Instant::now() < deadline, "traffic did not settle:\n{t}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// What the traffic must produce, series by series (PromQL selector syntax, which is also
/// how the text format writes them).
const EXPECTED: &[(&str, f64)] = &[
    ("groxy_fanouts_total{group=\"plain\"}", 3.0),
    ("groxy_fanouts_total{group=\"secure\"}", 1.0),
    ("groxy_responses_relayed_total{group=\"plain\"}", 6.0),
    ("groxy_late_responses_total", 3.0),
    ("groxy_dropped_total{reason=\"late_response\"}", 3.0),
    ("groxy_dropped_total{reason=\"request_check_failed\"}", 2.0),
    (
        "groxy_requests_total{group=\"plain\",outcome=\"forwarded\"}",
        3.0,
    ),
    (
        "groxy_requests_total{group=\"plain\",outcome=\"rejected\"}",
        1.0,
    ),
    (
        "groxy_requests_total{group=\"secure\",outcome=\"forwarded\"}",
        1.0,
    ),
    (
        "groxy_requests_total{group=\"secure\",outcome=\"dropped\"}",
        2.0,
    ),
    (
        "groxy_requests_rejected_total{group=\"plain\",reason=\"missing_multicast_timeout\"}",
        1.0,
    ),
    ("groxy_error_responses_total{code=\"4.00\"}", 1.0),
    ("groxy_error_responses_total{code=\"5.03\"}", 0.0),
    (
        "groxy_signature_checks_total{direction=\"request\",group=\"secure\",policy=\"enforce\",result=\"valid\"}",
        1.0,
    ),
    (
        "groxy_signature_checks_total{direction=\"request\",group=\"secure\",policy=\"enforce\",result=\"bad_signature\"}",
        1.0,
    ),
    (
        "groxy_signature_checks_total{direction=\"request\",group=\"secure\",policy=\"enforce\",result=\"replay\"}",
        1.0,
    ),
    ("groxy_replays_dropped_total{group=\"secure\"}", 1.0),
    (
        "groxy_signature_verification_seconds_count{direction=\"request\",group=\"secure\"}",
        3.0,
    ),
    (
        "groxy_key_generation{group=\"secure\"}",
        KEY_GENERATION as f64,
    ),
    ("groxy_exchanges_active", 0.0),
    ("groxy_exchanges_capacity", 16384.0),
    (
        "groxy_exchanges_closed_total{group=\"plain\",reason=\"timeout\"}",
        3.0,
    ),
    (
        "groxy_multicast_timeout_seconds_count{group=\"plain\"}",
        3.0,
    ),
    (
        "groxy_multicast_timeout_seconds_bucket{group=\"plain\",le=\"1\"}",
        3.0,
    ),
    ("groxy_response_delay_seconds_count{group=\"plain\"}", 6.0),
    (
        "groxy_response_delay_seconds_bucket{group=\"plain\",le=\"1\"}",
        6.0,
    ),
    ("groxy_decryption_failures_total", 0.0),
    ("groxy_config_reloads_total{result=\"failure\"}", 0.0),
    ("groxy_build_info{version=\"0.1.0\"}", 1.0),
];

#[test]
#[ignore = "needs the Debian prometheus package; run by .ci/run"]
fn promtool_check_metrics_is_clean_after_traffic() {
    let promtool = tool("promtool");
    let w = World::start();
    w.traffic();
    let text = scrape(w.metrics);
    for (series, want) in EXPECTED {
        assert_eq!(sample(&text, series), Some(*want), "{series} in\n{text}");
    }
    assert!(
        !text.contains("127.0.0."),
        "an address became a label value:\n{text}"
    );
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {:?}\n{said}",
        out.status
    );
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "groxy-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Prometheus {
    addr: SocketAddr,
    log: PathBuf,
    // Field order: the process dies before its directory goes.
    _child: Killed,
    _dir: TempDir,
}

impl Prometheus {
    /// Scrapes `target` every second and evaluates deploy/prometheus/alerts.yml.
    fn start(target: SocketAddr) -> Prometheus {
        let bin = tool("prometheus");
        let dir = TempDir::new("prometheus");
        let config = dir.0.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: groxy\n    scrape_interval: 1s\n    scrape_timeout: 1s\n\
                 \x20   static_configs:\n      - targets: ['{target}']\n",
                rules = repo("deploy/prometheus/alerts.yml").display()
            ),
        )
        .unwrap();
        let addr: SocketAddr = (Ipv4Addr::LOCALHOST, free_tcp_port()).into();
        let log = dir.0.join("prometheus.log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.0.join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start prometheus");
        let mut p = Prometheus {
            addr,
            log,
            _child: Killed(child),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = http_get(addr, "/-/ready") {
                return p;
            }
            if let Ok(Some(status)) = p._child.0.try_wait() {
                panic!("prometheus exited with {status}:\n{}", p.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready in 60 s:\n{}",
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn api(&self, path: &str) -> Value {
        let (status, body) = http_get(self.addr, path).expect("prometheus API");
        assert_eq!(status, 200, "{path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{path}: {body}");
        v["data"].clone()
    }

    /// An instant query: (labels, value) of every result.
    fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let data = self.api(&format!("/api/v1/query?query={}", urlencode(promql)));
        data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let v = r["value"][1].as_str().unwrap().parse().unwrap();
                (r["metric"].clone(), v)
            })
            .collect()
    }

    fn value(&self, promql: &str) -> Option<f64> {
        let r = self.query(promql);
        assert!(r.len() <= 1, "{promql}: {r:?}");
        r.first().map(|(_, v)| *v)
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
#[ignore = "needs the Debian prometheus package; run by .ci/run"]
fn a_real_prometheus_scrapes_exact_counts_and_evaluates_the_alerts() {
    let w = World::start();
    let p = Prometheus::start(w.metrics);
    // A scrape before the traffic, so that every counter is seen at 0 first (that is
    // what lets increase() see the replay, and why the series are made at start).
    let wait_for_scrape_after = |t: f64| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(ts) = p.value("timestamp(groxy_build_info)")
                && ts > t
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no scrape of groxy after {t}; targets: {}\n{}",
                p.api("/api/v1/targets"),
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_for_scrape_after(unix_now());
    assert_eq!(p.value("groxy_replays_dropped_total"), Some(0.0));

    w.traffic();
    wait_for_scrape_after(unix_now());
    for (series, want) in EXPECTED {
        assert_eq!(p.value(series), Some(*want), "{series}");
    }
    assert_eq!(p.value("up{job=\"groxy\"}"), Some(1.0));
    assert_eq!(p.value("sum(groxy_fanouts_total)"), Some(4.0));
    assert_eq!(
        p.value("sum(groxy_requests_total{outcome=\"rejected\"})"),
        Some(1.0)
    );

    // The deploy rules load and evaluate against real series without errors...
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let groups = p.api("/api/v1/rules")["groups"].clone();
        let rules: Vec<&Value> = groups
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        assert_eq!(rules.len(), 7, "{groups}");
        for r in &rules {
            assert_eq!(r["health"], "ok", "{r}");
        }
        // ...and the replay is alerted on.
        let firing = rules.iter().any(|r| {
            r["name"] == "GroxyReplaysDropped"
                && r["alerts"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|a| a["state"] == "firing" && a["labels"]["group"] == "secure")
                })
        });
        if firing {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "GroxyReplaysDropped did not fire: {groups}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
#[ignore = "needs the Debian prometheus package; run by .ci/run"]
fn promtool_accepts_the_deploy_prometheus_files() {
    let promtool = tool("promtool");
    let dir = repo("deploy/prometheus");
    for args in [
        &["check", "rules", "alerts.yml"][..],
        &["test", "rules", "alerts_test.yml"],
        &["check", "config", "prometheus.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn readiness_follows_the_proxy() {
    let mut cfg = groxy::settings::load_default().run;
    cfg.listen = vec!["127.0.0.1:0".parse().unwrap()];
    cfg.proxy.groups[0].addr = (Ipv4Addr::new(224, 0, 1, 187), free_udp_port()).into();
    let (o, m) = Ops::start("127.0.0.1:0".parse().unwrap(), &cfg.proxy).unwrap();
    let at = o.local_addr();
    // The HTTP endpoint runs on its own thread: blocking calls here do not stall it.
    assert_eq!(http_get(at, "/healthz").unwrap(), (200, "ok\n".into()));
    assert_eq!(http_get(at, "/readyz").unwrap().0, 503, "not bound yet");
    let mut proxy = Proxy::bind(cfg).unwrap();
    proxy.observe(m);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let health = o.health();
    let task = tokio::spawn(ops::serve(proxy, health.clone(), async move {
        let _ = stopped.await;
    }));
    // Ready once the proxy runs: polled, since serve() marks it from its own task.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http_get(at, "/readyz").unwrap();
        if r == (200, "ready\n".into()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz still {r:?} 10 s after the proxy started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert!(!health.is_ready());
    assert_eq!(http_get(at, "/readyz").unwrap().0, 503, "stopped");
    assert_eq!(http_get(at, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(at, "/nope").unwrap().0, 404);
    let text = http_get(at, "/metrics").unwrap().1;
    assert_eq!(sample(&text, "groxy_exchanges_capacity"), Some(16384.0));
    drop(o);
    assert!(
        TcpStream::connect_timeout(&at, Duration::from_millis(500)).is_err(),
        "dropping Ops stops the endpoint"
    );
}

#[test]
fn groxy_run_serves_metrics_health_and_readiness_and_survives_sighup() {
    let dir = TempDir::new("run");
    let metrics: SocketAddr = (Ipv4Addr::LOCALHOST, free_tcp_port()).into();
    let group: SocketAddr = (Ipv4Addr::new(224, 0, 1, 187), free_udp_port()).into();
    let config = dir.0.join("groxy.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = [\"127.0.0.1:0\"]\nmetrics = \"{metrics}\"\n\
             [[group]]\nname = \"lab\"\nuri = \"coap://{group}\"\ninterface = \"127.0.0.1\"\n"
        ),
    )
    .unwrap();
    let mut child = Killed(
        Command::new(GROXY)
            .args(["run", "--config"])
            .arg(&config)
            .args(["--log-format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.0.join("log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let log = || std::fs::read_to_string(dir.0.join("log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(metrics, "/readyz").map(|r| r.0).ok() != Some(200) {
        assert!(child.0.try_wait().unwrap().is_none(), "exited:\n{}", log());
        assert!(Instant::now() < deadline, "never ready:\n{}", log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(http_get(metrics, "/healthz").unwrap().0, 200);
    let text = scrape(metrics);
    assert_eq!(
        sample(&text, "groxy_build_info{version=\"0.1.0\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "groxy_fanouts_total{group=\"lab\"}"),
        Some(0.0)
    );
    assert!(text.contains("process_resident_memory_bytes"), "{text}");

    // SIGHUP (systemd's ExecReload) reloads the same file: applied, not fatal. The
    // reload is confirmed by its counter, not assumed after a pause.
    let reloads = "groxy_config_reloads_total{result=\"success\"}";
    assert_eq!(sample(&text, reloads), Some(0.0), "{text}");
    // SAFETY: kill(2) on the pid of our own child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "SIGHUP killed groxy:\n{}",
            log()
        );
        let text = scrape(metrics);
        assert_eq!(
            sample(&text, "groxy_config_reloads_total{result=\"failure\"}"),
            Some(0.0),
            "the reload failed:\n{}",
            log()
        );
        if sample(&text, reloads) == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no successful reload 10 s after SIGHUP:\n{text}\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(http_get(metrics, "/readyz").unwrap().0, 200);

    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "SIGTERM did not stop groxy");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}:\n{}", log());
    let log = log();
    assert!(
        log.contains("\"config_reload\"") && log.contains("\"success\""),
        "{log}"
    );
    assert!(log.contains("\"stopped\""), "{log}");
}

/// Every `groxy_*` or `process_*` metric name mentioned in `text`.
fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for prefix in ["groxy_", "process_"] {
        let mut rest = text;
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().last();
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                out.insert(tail[..end].to_string());
            }
            rest = &tail[end..];
        }
    }
    out
}

fn strings_in(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| strings_in(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings_in(x, out)),
        _ => {}
    }
}

fn yaml_docs(path: &str) -> Vec<serde_yaml_ng::Value> {
    let text = std::fs::read_to_string(repo(path)).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| {
            <serde_yaml_ng::Value as serde::Deserialize>::deserialize(d)
                .unwrap_or_else(|e| panic!("{path}: {e}"))
        })
        .filter(|d| !d.is_null())
        .collect()
}

#[test]
fn deploy_files_parse_and_query_only_metrics_a_real_scrape_has() {
    // Kubernetes: every manifest parses, names its kind, and says what the others expect.
    let mut docs = Vec::new();
    for f in std::fs::read_dir(repo("deploy/kubernetes")).unwrap() {
        let p = f.unwrap().path();
        if p.extension().is_some_and(|e| e == "yaml") {
            let rel = p
                .strip_prefix(repo(""))
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            for d in yaml_docs(&rel) {
                assert!(
                    d["apiVersion"].is_string() || d["kind"] == "Kustomization",
                    "{rel}: {d:?}"
                );
                assert!(d["kind"].is_string(), "{rel}: {d:?}");
                docs.push(d);
            }
        }
    }
    let kind = |k: &str| {
        docs.iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k} under deploy/kubernetes"))
    };
    let toml = kind("ConfigMap")["data"]["groxy.toml"]
        .as_str()
        .expect("the ConfigMap carries groxy.toml");
    let loaded = groxy::settings::load_str(toml)
        .unwrap_or_else(|e| panic!("the ConfigMap's groxy.toml: {}", e.join("\n")));
    let port = loaded.metrics.expect("metrics on in the ConfigMap").port() as u64;
    let pod = &kind("DaemonSet")["spec"]["template"];
    assert_eq!(
        pod["spec"]["hostNetwork"], true,
        "multicast needs the host network"
    );
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
    assert_eq!(
        pod["metadata"]["annotations"]["prometheus.io/port"],
        port.to_string().as_str()
    );
    let c = &pod["spec"]["containers"][0];
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{probe}");
    }
    let metrics_port = c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "metrics")
        .expect("a port named metrics");
    assert_eq!(metrics_port["containerPort"], port);
    let volumes = pod["spec"]["volumes"].as_sequence().unwrap();
    let secret = volumes
        .iter()
        .find(|v| v["secret"].is_mapping())
        .expect("the keys come from a Secret");
    assert_eq!(secret["secret"]["defaultMode"], 0o400);
    let mounts = |containers: &serde_yaml_ng::Value| -> Vec<serde_yaml_ng::Value> {
        containers
            .as_sequence()
            .into_iter()
            .flatten()
            .flat_map(|c| c["volumeMounts"].as_sequence().cloned().unwrap_or_default())
            .collect()
    };
    let all_mounts = [
        mounts(&pod["spec"]["initContainers"]),
        mounts(&pod["spec"]["containers"]),
    ]
    .concat();
    assert!(
        all_mounts
            .iter()
            .filter(|m| m["name"] == secret["name"])
            .all(|m| m["readOnly"] == true),
        "the Secret is mounted read-only wherever it is mounted"
    );
    let keys = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/etc/groxy/keys")
        .expect("groxy sees its keys at /etc/groxy/keys");
    assert_eq!(keys["readOnly"], true);
    // A member's Sender Sequence Numbers must survive the pod (RFC 10021 §2.6.1.1): the
    // ConfigMap's state_dir is a writable mount of a node directory.
    let state_dir = loaded
        .run
        .state_dir
        .as_ref()
        .and_then(|d| d.to_str())
        .expect("the ConfigMap sets proxy.state_dir");
    let state = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == state_dir)
        .unwrap_or_else(|| panic!("groxy has a volume at {state_dir}"));
    assert_ne!(state["readOnly"], true, "state_dir is written");
    let backing = volumes
        .iter()
        .find(|v| v["name"] == state["name"])
        .expect("the state mount's volume");
    assert!(
        backing["hostPath"]["path"].is_string(),
        "state_dir outlives the pod: {backing:?}"
    );
    let endpoint = &kind("ServiceMonitor")["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    assert_eq!(endpoint["path"], "/metrics");

    // The metrics the dashboard and the alerts query all exist in a real scrape.
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(repo("deploy/grafana/groxy.json")).unwrap())
            .expect("the dashboard is valid JSON");
    assert!(
        dashboard["panels"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
    );
    let mut strings = Vec::new();
    strings_in(&dashboard, &mut strings);
    let mut queried = metric_names_in(&strings.join("\n"));
    let dashboard_count = queried.len();
    assert!(dashboard_count >= 10, "{queried:?}");
    for d in yaml_docs("deploy/prometheus/alerts.yml") {
        for g in d["groups"].as_sequence().unwrap() {
            for r in g["rules"].as_sequence().unwrap() {
                queried.extend(metric_names_in(r["expr"].as_str().unwrap()));
            }
        }
    }
    let w = World::start();
    w.traffic();
    let scraped = sample_names(&scrape(w.metrics));
    let missing: Vec<_> = queried.difference(&scraped).collect();
    assert!(missing.is_empty(), "queried but not exposed: {missing:?}");
}
