//! The HTTP-to-CoAP bridge (issue 13) of a real `groxy run`, with curl (Debian's
//! /usr/bin/curl) as the independent HTTP client and `groxy` devices on loopback
//! multicast: groupcomm-proxy-07 §9 (Multicast-Timeout and Reply-From header fields,
//! 204 / 200 multipart/mixed at T', streamed delivery), RFC 8075 (URI forms §5, methods
//! and media types §6, status codes §7), the bridge's limits, HTTPS and mTLS.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::process::{Running, metric_sum, run_quietly, wait_for, wait_ready};
use common::{free_port, free_tcp_port};
use groxy::runtime::Interface;
use groxy::tools::device::{Device, DeviceConfig};

/// How long a condition may take to come about.
const WAIT: Duration = Duration::from_secs(20);

const CURL: &str = "/usr/bin/curl";

/// A `groxy run` with `[http]`, two groups (the first with devices 127.0.0.`first`..,
/// the second silent), and devices on a runtime of their own.
struct Env {
    _proxy: Running,
    _devices: tokio::sync::oneshot::Sender<()>,
    dir: PathBuf,
    http: u16,
    metrics: u16,
    group: u16,
    silent: u16,
    devices: Vec<SocketAddr>,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `extra_http` goes into `[http]`; `groups` replaces the group allow lists if given.
fn start(tag: &str, first: u8, fast: u8, slow: u8, extra_http: &str, allow: [&str; 2]) -> Env {
    let dir = std::env::temp_dir().join(format!("groxy-http-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (listen, metrics, http, group, silent) = (
        free_port(),
        free_tcp_port(),
        free_tcp_port(),
        free_port(),
        free_port(),
    );
    let cfg = format!(
        "[proxy]\nlisten = [\"127.0.0.1:{listen}\"]\nmetrics = \"127.0.0.1:{metrics}\"\n\
         [unicast]\ntimeout = 1\nallow = [\"127.0.0.0/8\"]\n\
         [http]\nlisten = [\"127.0.0.1:{http}\"]\nmax_body_bytes = 512\nheader_read_timeout = 1\n\
         {extra_http}\n\
         [[group]]\nname = \"lights\"\nuri = \"coap://224.0.1.187:{group}\"\nhost_names = [\"lights\"]\n\
         interface = \"127.0.0.1\"\nallow = [{}]\n\
         [[group]]\nname = \"quiet\"\nuri = \"coap://224.0.1.188:{silent}\"\ninterface = \"127.0.0.1\"\nallow = [{}]\n",
        allow[0], allow[1]
    );
    let file = dir.join("groxy.toml");
    std::fs::write(&file, cfg).unwrap();
    let proxy = run_quietly(&file);
    let gaddr: SocketAddr = (Ipv4Addr::new(224, 0, 1, 187), group).into();
    let devices: Vec<SocketAddr> = (0..fast + slow)
        .map(|i| (Ipv4Addr::new(127, 0, 0, first + i), group).into())
        .collect();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (up_tx, up_rx) = std::sync::mpsc::channel();
    let binds = devices.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            for (i, bind) in binds.into_iter().enumerate() {
                let d = Device::bind(DeviceConfig {
                    name: format!("d{}", first + i as u8),
                    group: gaddr,
                    interface: Interface::Addr(Ipv4Addr::LOCALHOST),
                    bind,
                    leisure: Duration::from_millis(20),
                    delay: if i as u8 >= fast {
                        Duration::from_millis(1500)
                    } else {
                        Duration::ZERO
                    },
                    oscore: None,
                })
                .unwrap();
                tokio::spawn(d.run());
            }
            let _ = up_tx.send(());
            let _ = stopped.await;
        });
    });
    up_rx.recv().unwrap();
    wait_ready(metrics, WAIT);
    wait_for("the HTTP listener", WAIT, || {
        TcpStream::connect(("127.0.0.1", http)).is_ok()
    });
    Env {
        _proxy: proxy,
        _devices: stop,
        dir,
        http,
        metrics,
        group,
        silent,
        devices,
    }
}

/// curl's response: status, header fields (lowercase names), body.
struct Got {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, n: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    }
}

fn parse_head(raw: &[u8]) -> (u16, Vec<(String, String)>, usize) {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, end)
}

fn curl(args: &[&str]) -> Got {
    let out = Command::new(CURL)
        .args(["-s", "-g", "-i", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "curl {args:?}: {:?}", out.status);
    let (status, headers, end) = parse_head(&out.stdout);
    Got {
        status,
        headers,
        body: out.stdout[end..].to_vec(),
    }
}

/// The parts of a multipart/mixed body: each part's embedded HTTP response (RFC 2046,
/// RFC 9112), parsed.
fn parts(got: &Got) -> Vec<Got> {
    let ct = got.header("content-type").expect("content-type");
    assert!(ct.starts_with("multipart/mixed"), "{ct}");
    let boundary = ct.split("boundary=").nth(1).unwrap();
    let body = String::from_utf8_lossy(&got.body).to_string();
    let delim = format!("--{boundary}");
    assert!(
        body.trim_end().ends_with(&format!("{delim}--")),
        "closing delimiter"
    );
    body.split(&delim)
        .skip(1)
        .filter(|p| !p.starts_with("--"))
        .map(|p| {
            let p = p.strip_prefix("\r\n").unwrap();
            let (ph, inner) = p.split_once("\r\n\r\n").unwrap();
            assert!(
                ph.to_ascii_lowercase()
                    .contains("content-type: application/http")
            );
            let inner = inner.strip_suffix("\r\n").unwrap_or(inner).as_bytes();
            let (status, headers, end) = parse_head(inner);
            Got {
                status,
                headers,
                body: inner[end..].to_vec(),
            }
        })
        .collect()
}

/// groupcomm-proxy §9.2: Reply-From is an RFC 9651 List of one Byte Sequence, the CRI
/// of the device.
fn reply_from(g: &Got) -> SocketAddr {
    let v = g.header("reply-from").expect("Reply-From");
    let list: sfv::List = sfv::Parser::new(v).parse().expect("a structured List");
    assert_eq!(list.len(), 1, "{v}");
    let sfv::ListEntry::Item(i) = &list[0] else {
        panic!("{v}")
    };
    let b = i.bare_item.as_byte_sequence().expect("a Byte Sequence");
    groxy::coap::cri::parse_reply_from(b).expect("a CRI of an address")
}

fn url(e: &Env, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", e.http)
}

fn metric(e: &Env, line_start: &str) -> f64 {
    metric_sum(e.metrics, line_start)
}

/// §9.4-§9.6: a group GET answered at T' by one 200 multipart/mixed, one
/// application/http part per device, each with a Reply-From naming it; the same through
/// the Simple Form (RFC 8075 §5.4.1) and by the group's host name (§5.3).
#[test]
fn group_get_is_one_multipart_response_with_a_part_per_device() {
    let e = start("multi", 21, 3, 0, "", ["\"127.0.0.0/8\""; 2]);
    let t = Instant::now();
    let got = curl(&[
        "-H",
        "Multicast-Timeout: 2",
        &url(&e, &format!("/hc/coap://224.0.1.187:{}/hello", e.group)),
    ]);
    assert!(t.elapsed() >= Duration::from_millis(1900), "answered at T'");
    assert_eq!(got.status, 200);
    let ps = parts(&got);
    assert_eq!(ps.len(), 3);
    let mut from: Vec<SocketAddr> = ps.iter().map(reply_from).collect();
    from.sort();
    assert_eq!(from, e.devices);
    for p in &ps {
        assert_eq!(p.status, 200, "2.05 -> 200 (RFC 8075 §7)");
        assert!(String::from_utf8_lossy(&p.body).starts_with("hello from d"));
    }
    let simple = format!("/hc/?target_uri=coap%3A%2F%2Flights%3A{}%2Fhello", e.group);
    let got = curl(&["-H", "Multicast-Timeout: 1", &url(&e, &simple)]);
    assert_eq!(got.status, 200);
    assert_eq!(parts(&got).len(), 3);
    assert!(
        metric(
            &e,
            "groxy_http_requests_total{group=\"lights\",status=\"200\"}"
        ) >= 2.0
    );
    // The engine saw both as group requests of its own (fan-outs counted at the group).
    assert!(metric(&e, "groxy_fanouts_total{group=\"lights\"}") >= 2.0);
}

/// §9.5: Multicast-Timeout 0 is answered 204 right after the fan-out; §9.6: no device
/// answering by T' is 204; §9.1 and §5.2.1 step 3: no Multicast-Timeout on a group target
/// is 400 with an empty Multicast-Timeout header field and a diagnostic.
#[test]
fn zero_silence_and_missing_timeout() {
    let e = start("zero", 31, 2, 0, "", ["\"127.0.0.0/8\""; 2]);
    let t = Instant::now();
    let got = curl(&[
        "-H",
        // curl sends an empty field for "Name;" ("Name:" would remove it).
        "Multicast-Timeout;",
        &url(&e, &format!("/hc/coap://224.0.1.187:{}/hello", e.group)),
    ]);
    assert_eq!(got.status, 204);
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    let t = Instant::now();
    let got = curl(&[
        "-H",
        "Multicast-Timeout: 1",
        &url(&e, &format!("/hc/coap://224.0.1.188:{}/hello", e.silent)),
    ]);
    assert_eq!(got.status, 204);
    assert!(t.elapsed() >= Duration::from_millis(950));
    let got = curl(&[&url(
        &e,
        &format!("/hc/coap://224.0.1.187:{}/hello", e.group),
    )]);
    assert_eq!(got.status, 400);
    assert_eq!(got.header("multicast-timeout"), Some(""));
    assert!(!got.body.is_empty(), "a diagnostic");
    assert_eq!(
        metric(
            &e,
            "groxy_requests_rejected_total{group=\"lights\",reason=\"missing_multicast_timeout\"}"
        ),
        1.0
    );
}

/// Streamed delivery (beyond §9.9): with `Accept: multipart/mixed; delivery=streamed`
/// each part is flushed as its device answers (chunked), the closing boundary at T'.
/// Two devices answer at once, one after 1.5 s; T' = 4 s.
#[test]
fn streamed_parts_arrive_before_t_prime() {
    let e = start("stream", 41, 2, 1, "", ["\"127.0.0.0/8\""; 2]);
    let t = Instant::now();
    let mut child = Command::new(CURL)
        .args([
            "-s",
            "-N",
            "-i",
            "--max-time",
            "20",
            "-H",
            "Multicast-Timeout: 4",
        ])
        .args(["-H", "Accept: multipart/mixed; delivery=streamed"])
        .arg(url(
            &e,
            &format!("/hc/coap://224.0.1.187:{}/hello", e.group),
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let mut part_times = Vec::new();
    let mut end = None;
    let mut raw = Vec::new();
    while out.read_line(&mut line).unwrap() > 0 {
        raw.extend_from_slice(line.as_bytes());
        if line.to_ascii_lowercase().starts_with("reply-from:") {
            part_times.push(t.elapsed());
        }
        if line.starts_with("--groxy-") && line.trim_end().ends_with("--") {
            end = Some(t.elapsed());
        }
        line.clear();
    }
    let _ = child.wait();
    let head = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert_eq!(part_times.len(), 3, "{part_times:?}");
    assert!(
        part_times[0] < Duration::from_millis(1000),
        "{part_times:?}"
    );
    assert!(
        part_times[1] < Duration::from_millis(1000),
        "{part_times:?}"
    );
    assert!(
        part_times[2] >= Duration::from_millis(1400) && part_times[2] < Duration::from_millis(3500),
        "{part_times:?}"
    );
    let end = end.expect("closing boundary");
    assert!(end >= Duration::from_millis(3900), "closed at T': {end:?}");
    assert_eq!(metric(&e, "groxy_http_streamed_responses_total"), 1.0);
}

/// RFC 8075 as a cross-proxy for unicast targets: one response (§7: 2.05 -> 200), and
/// 504 when the origin does not answer in time.
#[test]
fn unicast_targets_get_one_response_or_504() {
    let e = start("uni", 51, 1, 0, "", ["\"127.0.0.0/8\""; 2]);
    let d = e.devices[0];
    let got = curl(&[&url(&e, &format!("/hc/coap://{d}/hello"))]);
    assert_eq!(got.status, 200);
    assert!(got.header("reply-from").is_none());
    assert_eq!(String::from_utf8_lossy(&got.body), "hello from d51");
    let dead = free_port();
    let got = curl(&[&url(&e, &format!("/hc/coap://127.0.0.1:{dead}/hello"))]);
    assert_eq!(got.status, 504);
}

/// Bad input gets the right status or a closed connection, counted, and the bridge
/// keeps serving: malformed targets (400), outside the prefix (404), an unsupported
/// method (501, RFC 8075 §6), an unmappable media type (415, §6.3), a body over
/// max_body_bytes (413), a head over max_header_bytes (431), a client too slow with its
/// head (closed at header_read_timeout), a group that does not allow the client (4.01 ->
/// 403, §7 note 5).
#[test]
fn bad_input_is_refused_and_counted() {
    let e = start("bad", 61, 1, 0, "", ["\"127.0.0.0/8\"", "\"10.0.0.1\""]);
    let g = format!("/hc/coap://224.0.1.187:{}/hello", e.group);
    let mt = ["-H", "Multicast-Timeout: 1"];
    let s = |args: &[&str]| curl(args).status;
    assert_eq!(s(&[mt[0], mt[1], &url(&e, "/hc/coap://[zz/x")]), 400);
    assert_eq!(s(&[mt[0], mt[1], &url(&e, "/hc/?target_uri=%C3")]), 400);
    assert_eq!(s(&[mt[0], mt[1], &url(&e, "/hc/?nothing=1")]), 400);
    assert_eq!(s(&[mt[0], mt[1], &url(&e, "/hc/http://example.com/")]), 502);
    assert_eq!(s(&[mt[0], mt[1], &url(&e, "/elsewhere")]), 404);
    assert_eq!(s(&[mt[0], mt[1], "-X", "TRACE", &url(&e, &g)]), 501);
    assert_eq!(s(&["-H", "Multicast-Timeout: x", &url(&e, &g)]), 400);
    assert_eq!(
        s(&[
            mt[0],
            mt[1],
            "-H",
            "Content-Type: image/png",
            "-d",
            "x",
            &url(&e, &g)
        ]),
        415
    );
    let big = "x".repeat(600);
    assert_eq!(
        s(&[
            mt[0],
            mt[1],
            "-H",
            "Content-Type: text/plain",
            "-d",
            &big,
            &url(&e, &g)
        ]),
        413
    );
    let huge = format!("X-Big: {}", "y".repeat(20000));
    assert_eq!(s(&[mt[0], mt[1], "-H", &huge, &url(&e, &g)]), 431);
    assert_eq!(
        s(&[
            mt[0],
            mt[1],
            &url(&e, &format!("/hc/coap://224.0.1.188:{}/x", e.silent))
        ]),
        403
    );
    // Slow loris: half a head, then nothing; closed once header_read_timeout (1 s) passes.
    let mut c = TcpStream::connect(("127.0.0.1", e.http)).unwrap();
    c.write_all(b"GET /hc/ HTTP/1.1\r\nHost: x\r\n").unwrap();
    // The server counts the connection once it has accepted it, not when connect returns.
    wait_for("an open connection", Duration::from_secs(5), || {
        metric(&e, "groxy_http_connections") >= 1.0
    });
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 512];
    let n = c.read(&mut buf).unwrap_or(0);
    let _ = n;
    assert!(t.elapsed() < Duration::from_secs(4), "closed by the server");
    wait_for("the slow client counted", WAIT, || {
        metric(&e, "groxy_http_refused_total{reason=\"header_timeout\"}") >= 1.0
    });
    // An idle kept-alive connection: after its answer, closed once header_read_timeout
    // passes without a new request.
    let mut c = TcpStream::connect(("127.0.0.1", e.http)).unwrap();
    write!(
        c,
        "GET /hc/coap://224.0.1.187:{}/x HTTP/1.1\r\nHost: x\r\nMulticast-Timeout: 0\r\n\r\n",
        e.group
    )
    .unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let t = Instant::now();
    let _ = c.read_to_end(&mut got);
    assert!(
        got.starts_with(b"HTTP/1.1 204"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(t.elapsed() < Duration::from_secs(4), "closed while idle");
    // Still serving.
    let got = curl(&[mt[0], mt[1], &url(&e, &g)]);
    assert_eq!(got.status, 200);
    assert_eq!(
        metric(
            &e,
            "groxy_http_requests_total{group=\"none\",status=\"400\"}"
        ),
        4.0
    );
    assert_eq!(
        metric(
            &e,
            "groxy_http_requests_total{group=\"quiet\",status=\"403\"}"
        ),
        1.0
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    let st = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(st.success(), "openssl {args:?}");
}

/// A self-signed certificate and key `name`.pem / `name`.key for `cn`; its SHA-256.
fn cert(dir: &Path, name: &str, cn: &str) -> String {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
        ],
    );
    let out = Command::new("openssl")
        .current_dir(dir)
        .args([
            "x509",
            "-in",
            &format!("{name}.pem"),
            "-noout",
            "-fingerprint",
            "-sha256",
        ])
        .output()
        .unwrap();
    let s = String::from_utf8(out.stdout).unwrap();
    s.trim().rsplit('=').next().unwrap().replace(':', "")
}

/// HTTPS (groupcomm-proxy §10.5) with mTLS: a certificate not on the allow-list (or
/// none) fails the handshake; a known one is the address configured for it, which the
/// engine's per-group allow lists decide on: it reaches its own group (200) and not the
/// other (403).
#[test]
fn https_and_mtls_identities_reach_only_their_groups() {
    let certs = std::env::temp_dir().join(format!("groxy-http-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&certs);
    std::fs::create_dir_all(&certs).unwrap();
    cert(&certs, "server", "groxy");
    let known = cert(&certs, "known", "client-a");
    cert(&certs, "unknown", "client-b");
    let c = |f: &str| certs.join(f).to_str().unwrap().to_string();
    let tls = format!(
        "[http.tls]\ncert = \"{}\"\nkey = \"{}\"\nclients = [ {{ sha256 = \"{known}\", address = \"10.9.0.1\" }} ]\n",
        c("server.pem"),
        c("server.key")
    );
    let e = start("tls", 71, 2, 0, &tls, ["\"10.9.0.1\"", "\"10.9.0.2\""]);
    let u = |g: &str| format!("https://127.0.0.1:{}{g}", e.http);
    let lights = u(&format!("/hc/coap://224.0.1.187:{}/hello", e.group));
    let quiet = u(&format!("/hc/coap://224.0.1.188:{}/hello", e.silent));
    let with = |name: &str, target: &str| {
        Command::new(CURL)
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "10",
            ])
            .args(["--cacert", &c("server.pem"), "-H", "Multicast-Timeout: 1"])
            .args([
                "--cert",
                &c(&format!("{name}.pem")),
                "--key",
                &c(&format!("{name}.key")),
            ])
            .arg(target)
            .output()
            .unwrap()
    };
    let ok = with("known", &lights);
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "200");
    let other = with("known", &quiet);
    assert_eq!(String::from_utf8_lossy(&other.stdout), "403");
    let refused = with("unknown", &lights);
    assert!(!refused.status.success(), "unknown certificate refused");
    assert_eq!(String::from_utf8_lossy(&refused.stdout), "000");
    let none = Command::new(CURL)
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .args([
            "--cacert",
            &c("server.pem"),
            "-H",
            "Multicast-Timeout: 1",
            &lights,
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&none.stdout), "000");
    wait_for("refused handshakes counted", WAIT, || {
        metric(&e, "groxy_http_refused_total{reason=\"tls\"}") >= 2.0
    });
    let _ = std::fs::remove_dir_all(&certs);
}

/// §9.6: a later response from the same server replaces its stored one; the batch has
/// one part for it, the later one. A scripted device answers twice.
#[test]
fn a_later_response_of_a_device_replaces_its_earlier_one() {
    let e = start("replace", 81, 0, 0, "", ["\"127.0.0.0/8\""; 2]);
    let sock = common::loopback_group_socket(
        (Ipv4Addr::new(224, 0, 1, 187), e.group).into(),
        Duration::from_secs(10),
    );
    let device = std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        let (n, from) = sock.recv_from(&mut buf).unwrap();
        let v = groxy::coap::MessageView::parse(&buf[..n]).unwrap();
        let token = v.token().to_vec();
        for (mid, text) in [(1u16, &b"first"[..]), (2, b"second")] {
            let r = groxy::coap::build::encode(1, 0x45, mid, &token, &mut [], text);
            sock.send_to(&r, from).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let got = curl(&[
        "-H",
        "Multicast-Timeout: 1",
        &url(&e, &format!("/hc/coap://224.0.1.187:{}/x", e.group)),
    ]);
    device.join().unwrap();
    assert_eq!(got.status, 200);
    let ps = parts(&got);
    assert_eq!(ps.len(), 1, "one part per server");
    assert_eq!(ps[0].body, b"second");
}

/// `groxy client --http URL` prints one JSON object per part as it arrives, each with
/// the device's Reply-From.
#[test]
fn groxy_client_over_http_prints_every_part() {
    let e = start("cli", 91, 2, 0, "", ["\"127.0.0.0/8\""; 2]);
    let out = Command::new(env!("CARGO_BIN_EXE_groxy"))
        .args(["client", "--http", "--timeout", "1", "--json"])
        .arg(url(
            &e,
            &format!("/hc/coap://224.0.1.187:{}/hello", e.group),
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut from: Vec<SocketAddr> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["code"], "2.05");
            v["reply_from"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    from.sort();
    assert_eq!(from, e.devices);
    assert!(metric(&e, "groxy_http_streamed_responses_total") >= 1.0);
}

/// `max_requests`: a streamed request holds its place until T', not only until its head;
/// the request past the bound gets 503 with Retry-After, counted.
#[test]
fn max_requests_bounds_streamed_requests_too() {
    let e = start(
        "maxreq",
        101,
        1,
        0,
        "max_requests = 1",
        ["\"127.0.0.0/8\""; 2],
    );
    let target = url(&e, &format!("/hc/coap://224.0.1.187:{}/hello", e.group));
    let mut first = Command::new(CURL)
        .args(["-s", "-N", "-o", "/dev/null", "--max-time", "10"])
        .args(["-H", "Multicast-Timeout: 3"])
        .args(["-H", "Accept: multipart/mixed; delivery=streamed", &target])
        .spawn()
        .unwrap();
    // Its head and part are out (the device answers at once); T' is 3 s away.
    std::thread::sleep(Duration::from_millis(1000));
    let got = curl(&["-H", "Multicast-Timeout: 0", &target]);
    assert_eq!(got.status, 503);
    assert_eq!(got.header("retry-after"), Some("1"));
    assert!(first.wait().unwrap().success());
    assert_eq!(curl(&["-H", "Multicast-Timeout: 0", &target]).status, 204);
    assert_eq!(
        metric(&e, "groxy_http_refused_total{reason=\"requests\"}"),
        1.0
    );
}
