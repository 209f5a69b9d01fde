//! Observations over HTTP and HTTP clients that disconnect (issue 13 §3): curl as the
//! independent HTTP client, `groxy run` with `[http]`, and three `groxy device`
//! processes whose `--log-requests` lines show what reached them.
//!
//! * A GET with `Observe: 0` to a group streams every notification as a part, past T',
//!   until curl disconnects (`--max-time`); the disconnect deregisters the observation
//!   from the group (RFC 7641 §3.6 through groupcomm-proxy §5.2.3): every device logs
//!   the deregistration and the engine's observation gauge goes back to 0.
//! * An ordinary group request whose client disconnects before T' ends in the engine
//!   at once, by an Early Stop Request (groupcomm-proxy §5.1.3, §5.2.3).

mod common;

use common::process::{Running, metric_sum, run_quietly, wait_for, wait_ready};
use common::{free_port, free_tcp_port};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CURL: &str = "/usr/bin/curl";

struct Env {
    _procs: Vec<Running>,
    dir: PathBuf,
    http: u16,
    metrics: u16,
    group: u16,
    devices: usize,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The proxy and `delays.len()` devices on 127.0.0.`first`.., each answering group
/// requests after its delay, `/counter` notified every 300 ms.
fn start(tag: &str, first: u8, delays: &[u64]) -> Env {
    let dir = std::env::temp_dir().join(format!("groxy-httpobs-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (listen, metrics, http, group) =
        (free_port(), free_tcp_port(), free_tcp_port(), free_port());
    let cfg = format!(
        "[proxy]\nlisten = [\"127.0.0.1:{listen}\"]\nmetrics = \"127.0.0.1:{metrics}\"\n\
         [http]\nlisten = [\"127.0.0.1:{http}\"]\n\
         [[group]]\nname = \"lights\"\nuri = \"coap://224.0.1.187:{group}\"\n\
         host_names = [\"lights\"]\ninterface = \"127.0.0.1\"\nallow = [\"127.0.0.0/8\"]\n"
    );
    let file = dir.join("groxy.toml");
    std::fs::write(&file, cfg).unwrap();
    let mut procs = Vec::new();
    let gaddr = format!("224.0.1.187:{group}");
    for (i, delay) in delays.iter().enumerate() {
        let out = std::fs::File::create(dir.join(format!("d{i}.out"))).unwrap();
        let bind = format!("127.0.0.{}:{group}", first + i as u8);
        let delay = delay.to_string();
        procs.push(Running(
            Command::new(env!("CARGO_BIN_EXE_groxy"))
                .args(["--log-format", "json", "device", "--group", &gaddr])
                .args(["--interface", "127.0.0.1", "--bind", &bind])
                .args(["--name", &format!("d{i}"), "--delay-ms", &delay])
                .args(["--notify-interval-ms", "300", "--log-requests"])
                .stdout(out)
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        ));
    }
    procs.push(run_quietly(&file));
    wait_ready(metrics, Duration::from_secs(20));
    wait_for("the HTTP listener", Duration::from_secs(20), || {
        TcpStream::connect(("127.0.0.1", http)).is_ok()
    });
    Env {
        _procs: procs,
        dir,
        http,
        metrics,
        group,
        devices: delays.len(),
    }
}

impl Env {
    fn metric(&self, line_start: &str) -> f64 {
        metric_sum(self.metrics, line_start)
    }

    /// The `observe` events device `i` logged.
    fn observe_events(&self, i: usize) -> Vec<String> {
        let text = std::fs::read_to_string(self.dir.join(format!("d{i}.out"))).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["observe"].as_str().map(str::to_string))
            .collect()
    }

    fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/hc/coap://224.0.1.187:{}{path}",
            self.http, self.group
        )
    }
}

/// curl with `--max-time secs` (it then disconnects, exit 28): its output and when each
/// Reply-From (a part's head) came.
fn curl_until(secs: &str, headers: &[&str], url: &str) -> (String, Vec<Duration>) {
    use std::io::BufRead;
    let t = Instant::now();
    let mut child = Command::new(CURL)
        .args(["-s", "-N", "-i", "-g", "--max-time", secs])
        .args(headers.iter().flat_map(|h| ["-H", h]))
        .arg(url)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let (mut line, mut raw, mut times) = (String::new(), String::new(), Vec::new());
    while out.read_line(&mut line).unwrap_or(0) > 0 {
        if line.to_ascii_lowercase().starts_with("reply-from:") {
            times.push(t.elapsed());
        }
        raw.push_str(&line);
        line.clear();
    }
    let _ = child.wait();
    (raw, times)
}

/// RFC 7641 §3.1-§3.6 through groupcomm-proxy §5.2.2/§5.2.3 and §5.4 over HTTP: the
/// notifications of every device stream as parts past T' (1 s); curl's disconnect (at
/// 3.5 s) deregisters: every device logs `deregistered` and the gauge returns to 0.
#[test]
fn an_observation_streams_notifications_until_the_client_disconnects() {
    let e = start("observe", 61, &[0, 0, 0]);
    let (raw, times) = curl_until(
        "3.5",
        &["Multicast-Timeout: 1", "Observe: 0"],
        &e.url("/counter"),
    );
    let head = raw.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{raw}");
    assert!(head.contains("transfer-encoding: chunked"), "{raw}");
    assert!(!head.contains("--\r\n\r\n"), "no closing boundary: {raw}");
    let late = times
        .iter()
        .filter(|t| **t > Duration::from_millis(1500))
        .count();
    // Notified every 300 ms by each of 3 devices: well over 3 parts after T'.
    assert!(late >= 2 * e.devices, "parts after T': {times:?}");
    for i in 0..e.devices {
        wait_for(
            "the device's deregistration",
            Duration::from_secs(10),
            || e.observe_events(i).contains(&"deregistered".to_string()),
        );
        assert!(e.observe_events(i).contains(&"registered".to_string()));
    }
    wait_for("no observation held", Duration::from_secs(5), || {
        e.metric("groxy_observations_active") == 0.0
    });
    assert!(
        e.metric("groxy_observations_ended_total{group=\"lights\",reason=\"early_stop_request\"}")
            >= 1.0
    );
    assert_eq!(e.metric("groxy_http_stopped_total"), 1.0);
}

/// groupcomm-proxy §5.1.3/§5.2.3: an HTTP client gone before T' (10 s; one device
/// answers after 4 s) has its exchange stopped at once by an Early Stop Request, not at
/// T'; a client that stays to T' is not stopped.
#[test]
fn a_client_that_disconnects_ends_its_group_exchange_early() {
    let e = start("gone", 71, &[0, 4000]);
    let t = Instant::now();
    let (raw, times) = curl_until(
        "1",
        &[
            "Multicast-Timeout: 10",
            "Accept: multipart/mixed; delivery=streamed",
        ],
        &e.url("/hello"),
    );
    assert_eq!(times.len(), 1, "{raw}");
    wait_for("the exchange to end", Duration::from_secs(3), || {
        e.metric("groxy_exchanges_active") == 0.0
    });
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "ended early, not at T'"
    );
    assert_eq!(
        e.metric("groxy_exchanges_closed_total{group=\"lights\",reason=\"early_stop_request\"}"),
        1.0
    );
    // Not streamed (one response at T'): the same when the handler itself is dropped.
    let (_, _) = curl_until("1", &["Multicast-Timeout: 10"], &e.url("/hello"));
    wait_for("the second exchange to end", Duration::from_secs(3), || {
        e.metric("groxy_exchanges_active") == 0.0
    });
    assert_eq!(e.metric("groxy_http_stopped_total"), 2.0);
    // Staying to T' (1 s): nothing to stop.
    let (raw, _) = curl_until("5", &["Multicast-Timeout: 1"], &e.url("/hello"));
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert_eq!(e.metric("groxy_http_stopped_total"), 2.0);
}
