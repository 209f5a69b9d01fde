//! Shared plumbing of the network-namespace tests (root only): running `ip`, and
//! removing namespaces that earlier, dead test processes left behind.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

/// Runs `program args` and returns its output, panicking with what it said on failure.
pub fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

/// `ip ARGS`, the arguments split at spaces (no name used here has one).
pub fn ip(args: &str) {
    run("ip", &args.split(' ').collect::<Vec<_>>());
}

/// Starts `program args` inside namespace `ns` with debug logs to `log` (stderr), a
/// stdin pipe, and `stdout` as given; `what` names it in a failure.
pub fn spawn_in(
    ns: &str,
    what: &str,
    program: &Path,
    args: &[&str],
    stdout: Stdio,
    log: &Path,
) -> Child {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(program)
        .args(args)
        .env("RUST_LOG", "groxy=debug")
        .stdin(Stdio::piped())
        .stdout(stdout)
        .stderr(File::create(log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"))
}

/// Process ids still running inside a namespace.
pub fn netns_pids(ns: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Namespaces `<prefix><pid>-…` of earlier test processes that died without cleaning up
/// (killed by a timeout, say): their processes are ended and the namespaces deleted;
/// those of live processes (parallel runs) are left alone.
pub fn remove_stale_namespaces(prefix: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(prefix)
            .and_then(|r| r.split_once('-'))
            .and_then(|(p, _)| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        for p in netns_pids(name) {
            // SAFETY: kill(2) on a pid taken from the stale namespace; no memory involved.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
    }
}

/// The UDP addresses bound in namespace `ns` (`ss -Hnlu`, local address column).
pub fn udp_bound(ns: &str) -> Vec<String> {
    let out = run("ip", &["netns", "exec", ns, "ss", "-Hnlu"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect()
}
