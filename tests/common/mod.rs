//! Shared test support: fresh group key material, and aiocoap 0.4.17 as the independent
//! peer, installed into a venv under target/ on first use so that `cargo test` needs
//! nothing but python3 and the package index.

#![allow(dead_code)]

pub mod engine;
pub mod files;
mod group;
pub mod netns;
pub mod process;
pub mod scrape;

pub use group::{Group, Member};

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;

use groxy::oscore::alg::SigAlg;
use groxy::oscore::cred::{Credential, PrivateKey};
use serde_json::{Value, json};

pub const AIOCOAP: &str = "aiocoap[oscore]==0.4.17";

/// A UDP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An empty directory `<temp>/<name>-<pid>` for one test's files (what an earlier run
/// of the same process id left is removed first).
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A socket that receives what is sent to IPv4 multicast group `group` on loopback, as a
/// device does (bound to the wildcard address at the group's port, address reuse so that
/// several devices share it), reads waiting at most `read_timeout`.
pub fn loopback_group_socket(
    group: std::net::SocketAddr,
    read_timeout: std::time::Duration,
) -> std::net::UdpSocket {
    use std::net::{Ipv4Addr, SocketAddr};
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, group.port())).into())
        .unwrap();
    let SocketAddr::V4(g) = group else {
        panic!("{group} is not an IPv4 group")
    };
    s.join_multicast_v4(g.ip(), &Ipv4Addr::LOCALHOST).unwrap();
    let s: std::net::UdpSocket = s.into();
    s.set_read_timeout(Some(read_timeout)).unwrap();
    s
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends `datagram` to `to` and returns the one datagram that comes back within 2 s.
pub async fn ask(
    sock: &tokio::net::UdpSocket,
    to: std::net::SocketAddr,
    datagram: &[u8],
) -> Vec<u8> {
    sock.send_to(datagram, to).await.unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = tokio::time::timeout(std::time::Duration::from_secs(2), sock.recv_from(&mut buf))
        .await
        .expect("an answer within 2 s")
        .unwrap();
    buf[..n].to_vec()
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).unwrap();
    b
}

impl Member {
    /// A member with a fresh Ed25519 key, its CCS naming it `name`.
    pub fn new(id: &[u8], name: &str) -> Self {
        let key = PrivateKey::generate(SigAlg::EdDsa);
        let cred = Credential::ccs_for(name, &key.public_key());
        Member {
            id: id.to_vec(),
            key,
            cred,
        }
    }
}

impl Group {
    /// A group with freshly generated keys: a new Gid and Master Secret per run, so no
    /// peer ever sees a replayed sequence number from an earlier run.
    pub fn new(ids: &[&[u8]]) -> Self {
        Group {
            key_generation: 0,
            gid: random_bytes(4),
            master_secret: random_bytes(16),
            master_salt: random_bytes(8),
            gm: Member::new(b"", "gm"),
            members: ids
                .iter()
                .enumerate()
                .map(|(i, id)| Member::new(id, &format!("member{i}")))
                .collect(),
        }
    }

    /// The next key epoch (RFC 10021 §12.2): a new Gid (never the current one), Master
    /// Secret and Master Salt, the next Key Generation Number, the same members and Group
    /// Manager with their keys.
    pub fn rekeyed(&self) -> Group {
        let mut gid = random_bytes(4);
        while gid == self.gid {
            gid = random_bytes(4);
        }
        Group {
            key_generation: self.key_generation + 1,
            gid,
            master_secret: random_bytes(16),
            master_salt: random_bytes(8),
            ..self.clone()
        }
    }

    /// The JSON the aiocoap scripts take for member `me`.
    pub fn aiocoap_setup(&self, me: &[u8]) -> Value {
        let m = self.member(me);
        let peers: serde_json::Map<String, Value> = self
            .members
            .iter()
            .filter(|o| o.id != me)
            .map(|o| (hex::encode(&o.id), json!(hex::encode(o.cred.bytes()))))
            .collect();
        json!({
            "gid": hex::encode(&self.gid),
            "master_secret": hex::encode(&self.master_secret),
            "master_salt": hex::encode(&self.master_salt),
            "sender_id": hex::encode(&m.id),
            "private_key": hex::encode(m.key.to_bytes()),
            "sender_cred": hex::encode(m.cred.bytes()),
            "peers": peers,
            "gm_cred": hex::encode(self.gm.cred.bytes()),
        })
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// A Python with aiocoap 0.4.17: `GROXY_PYTHON` if set, else a venv under target/,
/// created on first use. Fails the test, never skips it, when that cannot be had.
pub fn python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        if let Some(p) = std::env::var_os("GROXY_PYTHON") {
            return PathBuf::from(p);
        }
        let venv = target_dir().join("interop-venv");
        let py = venv.join("bin/python");
        let has_aiocoap = |py: &Path| {
            Command::new(py)
                .args(["-c", "import aiocoap.meta, cbor2, cryptography; assert aiocoap.meta.version == '0.4.17'"])
                .status()
                .is_ok_and(|s| s.success())
        };
        if py.exists() && has_aiocoap(&py) {
            return py;
        }
        // Build in a private folder and rename, so parallel test processes never see a
        // half-made venv.
        let tmp = target_dir().join(format!("interop-venv.tmp{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let ok = Command::new("python3").args(["-m", "venv"]).arg(&tmp).status().is_ok_and(|s| s.success())
            && Command::new(tmp.join("bin/pip"))
                .args(["install", "-q", "--disable-pip-version-check", AIOCOAP])
                .status()
                .is_ok_and(|s| s.success());
        assert!(ok, "could not create a venv with {AIOCOAP}: interop tests need python3 and PyPI");
        if std::fs::rename(&tmp, &venv).is_err() {
            // Another process won the race; use its venv.
            let _ = std::fs::remove_dir_all(&tmp);
        }
        assert!(has_aiocoap(&py), "{} lacks {AIOCOAP}", py.display());
        py
    })
    .clone()
}

pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/interop")
        .join(name)
}

/// aiocoap_peer.py: aiocoap's protect/unprotect behind JSON lines.
pub struct Oracle {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Oracle {
    pub fn start(setup: Value) -> Self {
        let mut child = Command::new(python())
            .arg(script("aiocoap_peer.py"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start aiocoap_peer.py");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut o = Oracle {
            child,
            stdin,
            stdout,
        };
        let mut req = setup;
        req["op"] = json!("setup");
        o.ok(req);
        o
    }

    /// Sends one request, returns the reply whatever it says.
    pub fn call(&mut self, req: Value) -> Value {
        writeln!(self.stdin, "{req}").unwrap();
        self.stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("oracle said {line:?}: {e}"))
    }

    /// Sends one request that must succeed.
    pub fn ok(&mut self, req: Value) -> Value {
        let r = self.call(req.clone());
        assert_eq!(r["ok"], json!(true), "aiocoap refused {req}: {r}");
        r
    }
}

impl Drop for Oracle {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.0 GET (no keep-alive, no chunking on either side): status and body.
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {raw:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    Ok((status, body.to_string()))
}

pub fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

/// Everything the engine has to say, split into the datagrams it sends and its events
/// (SSN reservations are ignored: the engine tests have no stable storage).
pub fn outputs(
    e: &mut groxy::proxy::Engine,
) -> (Vec<groxy::proxy::Transmit>, Vec<groxy::proxy::Event>) {
    use groxy::proxy::Output;
    let (mut t, mut ev) = (vec![], vec![]);
    while let Some(o) = e.poll_output() {
        match o {
            Output::Transmit(x) => t.push(x),
            Output::Event(e) => ev.push(e),
            Output::ReserveSsn { .. } => {}
        }
    }
    (t, ev)
}

/// A real aiocoap 0.4.17 server (tests/interop/aiocoap_server.py) with the setup `cfg`,
/// started and listening: the child (stop it by closing stdin) and its UDP port.
pub fn aiocoap_server(cfg_path: &Path, cfg: &Value) -> (std::process::Child, u16) {
    use std::io::BufRead;
    std::fs::write(cfg_path, cfg.to_string()).unwrap();
    let mut child = std::process::Command::new(python())
        .arg(script("aiocoap_server.py"))
        .arg(cfg_path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .strip_prefix("READY ")
        .unwrap_or_else(|| panic!("aiocoap server said {line:?}"))
        .trim()
        .parse()
        .unwrap();
    (child, port)
}

/// Work serving on a thread of its own (a proxy's runtime) until dropped: the drop sends
/// the stop signal the work waits for and joins the thread.
pub struct OnThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OnThread {
    /// Runs `work` on a new thread, handing it the signal that says stop.
    pub fn spawn(work: impl FnOnce(tokio::sync::oneshot::Receiver<()>) + Send + 'static) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        OnThread {
            stop: Some(stop),
            thread: Some(std::thread::spawn(move || work(stopped))),
        }
    }
}

impl Drop for OnThread {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
