//! Running groxy as an operator does, for the tests that start real processes on
//! loopback: the child ended with the test, signals, waiting for a condition, a child's
//! output lines, and the values of its /metrics.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The groxy binary Cargo built for this test.
pub const GROXY: &str = env!("CARGO_BIN_EXE_groxy");

/// A child killed when the test ends, however it ends (a failed assertion included).
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `groxy run --config cfg` with its output discarded (the test reads /metrics instead).
pub fn run_quietly(cfg: &std::path::Path) -> Running {
    Running(
        std::process::Command::new(GROXY)
            .args(["run", "--config", cfg.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Waits until the /readyz of 127.0.0.1:`metrics_port` answers 200.
pub fn wait_ready(metrics_port: u16, limit: Duration) {
    wait_for("/readyz 200", limit, || {
        local_get(metrics_port, "/readyz").is_some_and(|(s, _)| s == 200)
    });
}

/// Sends `sig` (SIGHUP, SIGTERM, SIGINT ...) to `child`.
pub fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) with the pid of our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

/// Polls `f` until it holds; fails the test naming `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every line a child prints on `stream`, collected by a thread.
pub fn collect(stream: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(l);
        }
    });
    lines
}

/// The collected lines that are JSON (groxy's `--log-format json` and `--json` output).
pub fn json_lines(lines: &Mutex<Vec<String>>) -> Vec<serde_json::Value> {
    lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A GET of `path` on 127.0.0.1:`port`, None if it fails.
pub fn local_get(port: u16, path: &str) -> Option<(u16, String)> {
    super::http_get((Ipv4Addr::LOCALHOST, port).into(), path).ok()
}

/// The value of the first line of 127.0.0.1:`port`/metrics that starts with `line_start`.
pub fn metric(port: u16, line_start: &str) -> Option<f64> {
    let (_, text) = local_get(port, "/metrics")?;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The sum of the values of every line of 127.0.0.1:`port`/metrics that starts with
/// `line_start` (a metric over all its label sets).
pub fn metric_sum(port: u16, line_start: &str) -> f64 {
    let (_, text) = local_get(port, "/metrics").expect("/metrics answers");
    text.lines()
        .filter(|l| l.starts_with(line_start))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
