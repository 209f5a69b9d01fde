//! The processes under test: groxy (`groxy run`), libcoap's forward proxy
//! (`coap-server-notls -P`) and `groxy device`, each started under `taskset`, with stderr
//! kept in a file so that a failure can be shown; killed when dropped.

use std::fs::File;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// `[chrt -f RT] taskset -c CPU program args...` with RUST_LOG=warn.
    pub fn start(
        name: &str,
        cpu: usize,
        rt: Option<u8>,
        program: &Path,
        args: &[String],
        dir: &Path,
    ) -> Self {
        let log = dir.join(format!("{}.log", name.replace([' ', '/'], "_")));
        let err = File::create(&log).expect("log file");
        let out = err.try_clone().expect("log file");
        let mut cmd = match rt {
            Some(p) => {
                let mut c = Command::new("chrt");
                c.arg("-f").arg(p.to_string()).arg("taskset");
                c
            }
            None => Command::new("taskset"),
        };
        let child = cmd
            .arg("-c")
            .arg(cpu.to_string())
            .arg(program)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({}): {e}", program.display()));
        Proc {
            name: name.into(),
            child,
            log,
        }
    }

    /// chrt and taskset exec what follows, so the pid is the program's.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the process's log if it has exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited ({status}); its output:\n{}",
                self.name,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            )),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }

    /// Whatever it printed so far (warnings, crash reports).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then SIGKILL if it has not gone after a second.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            for _ in 0..100 {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// The path of a program on PATH, if any.
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}

/// groxy's configuration for the bench: its DEFAULT limits and deduplication table
/// (config/groxy.toml); the file sets only the listener, the metrics endpoint if asked,
/// and the bench's group on loopback multicast. The load is what a conforming client
/// population sends (many client addresses and ports, many origin endpoints: see
/// benches/load.rs), so nothing needs raising or shrinking. One forwarding thread: the
/// proxy is pinned to one core beside single-threaded libcoap (issue 14: the rate on one
/// core); `benches/threads.rs` measures more threads.
pub fn groxy_config(
    listen: SocketAddrV4,
    group: SocketAddrV4,
    metrics: Option<SocketAddrV4>,
) -> String {
    let metrics = metrics.map_or(String::new(), |m| format!("metrics = \"{m}\"\n"));
    format!(
        r#"[proxy]
listen = ["{listen}"]
threads = 1
{metrics}
[[group]]
name = "bench"
uri = "coap://{group}"
allow = ["127.0.0.0/8"]
max_timeout = 60
interface = "127.0.0.1"
"#
    )
}
