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

/// groxy's configuration for the bench: one listener, unicast forwarding for loopback
/// clients, one group on loopback multicast, and limits far above what the load reaches.
///
/// `metrics` turns on the operations endpoint (Prometheus), as a deployment would.
///
/// `dedup_capacity` is lowered from its default (65,536): the generator is one client
/// endpoint that sends far more than 65,536 NON requests within NON_LIFETIME (145 s), so
/// its 16-bit Message IDs wrap within a second. With a table that can hold every Message
/// ID, each reused one would be a "duplicate" (RFC 7252 §4.5) and dropped; with a smaller
/// table the oldest entries are evicted before their Message ID comes round again.
pub fn groxy_config(
    listen: SocketAddrV4,
    group: SocketAddrV4,
    metrics: Option<SocketAddrV4>,
) -> String {
    let metrics = metrics.map_or(String::new(), |m| format!("metrics = \"{m}\"\n"));
    format!(
        r#"[proxy]
listen = ["{listen}"]
{metrics}
[limits]
max_exchanges = 1000000
max_exchanges_per_client = 1000000
client_rate = 10000000.0
client_burst = 10000000.0
max_clients = 1024
dedup_capacity = 16384
late_memory = 16384

[unicast]
enabled = true
allow = ["127.0.0.0/8"]
timeout = 10

[[group]]
name = "bench"
uri = "coap://{group}"
allow = ["127.0.0.0/8"]
max_timeout = 60
interface = "127.0.0.1"
"#
    )
}
