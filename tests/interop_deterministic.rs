//! Deterministic Requests (draft-amsuess-core-cacheable-oscore-02) against aiocoap 0.4.17,
//! the draft's other implementation (§5.2), with keys generated for each run: both compose
//! the same bytes, each verifies the other's requests and responses, and a real aiocoap
//! server answers groxy's client over UDP, directly and through a checking groxy proxy.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::{Group, Oracle, unhex};
use groxy::coap::MessageView;
use groxy::oscore::{Mode, SecurityContext};
use groxy::tools::client::{Client, ClientEvent, ClientRequest, Response};
use serde_json::{Value, json};

const CLIENT: &[u8] = &[0x0c];
const SERVER: &[u8] = &[0x5e, 0x01];
const DET: &[u8] = &[0xdc];

/// NON GET /hello with token 0x7a01.
const GET_HELLO: &str = "52017a017a01b568656c6c6f";
/// 2.05 Content with a text payload, token 0x7a01.
const CONTENT: &str = "62457a017a01ff6869207468657265";

fn setup(g: &Group, me: &[u8]) -> Value {
    let mut s = g.aiocoap_setup(me);
    s["deterministic_kid"] = json!(hex::encode(DET));
    s
}

/// §3: "clients starting from a same intended CoAP request ... independently compose the
/// same" Deterministic Request: aiocoap's Deterministic Client aspect and groxy give the
/// same datagram, byte for byte.
#[test]
fn s3_aiocoap_and_groxy_compose_the_same_deterministic_request() {
    let g = Group::new(&[CLIENT, SERVER]);
    let ours = SecurityContext::new(&g.config(CLIENT))
        .unwrap()
        .protect_deterministic_request(&unhex(&json!(GET_HELLO)), DET)
        .unwrap()
        .0;
    let mut aiocoap = Oracle::start(setup(&g, SERVER));
    let theirs = aiocoap.ok(json!({"op": "protect_deterministic_request",
        "deterministic_kid": hex::encode(DET), "coap": GET_HELLO}));
    assert_eq!(theirs["coap"].as_str().unwrap(), hex::encode(&ours));
}

/// §3.4.3 and §3.4.4 with aiocoap as the server: it takes groxy's Deterministic Request
/// for one of its Deterministic Client (no replay window: twice), answers in group mode,
/// and groxy's client verifies the answer with the Request-Hash as a class I option.
#[test]
fn s3_4_groxy_client_aiocoap_server() {
    let g = Group::new(&[CLIENT, SERVER]);
    let client = SecurityContext::new(&g.config(CLIENT)).unwrap();
    let mut client = client;
    let mut aiocoap = Oracle::start(setup(&g, SERVER));
    let (req, mut det) = client
        .protect_deterministic_request(&unhex(&json!(GET_HELLO)), DET)
        .unwrap();
    for round in 0..2 {
        let r = aiocoap.ok(json!({"op": "unprotect_request", "coap": hex::encode(&req)}));
        assert_eq!(r["coap"].as_str().unwrap(), GET_HELLO, "round {round}");
        assert_eq!(r["mode"], json!("deterministic"));
        assert_eq!(r["kid"], json!(hex::encode(DET)));
        let resp = aiocoap.ok(json!({"op": "protect_response", "request": r["request"],
            "mode": "group", "coap": CONTENT}));
        let resp = unhex(&resp["coap"]);
        // What aiocoap 0.4.17 sends: outer 2.05 (§3.4.4 step 6) but no outer Max-Age
        // (step 9 asks for one; groxy's client does not depend on it).
        let rv = MessageView::parse(&resp).unwrap();
        assert_eq!(rv.code(), 0x45);
        assert_eq!(rv.option(14), None);
        // The external checker verifies aiocoap's signature too (§3.4.4, RFC 10021 §7.5).
        groxy::oscore::SignatureChecker::new(&g.checker_config())
            .unwrap()
            .check_deterministic_response(&resp, DET, &g.gid, &det.hash)
            .unwrap();
        let (plain, info) = client
            .unprotect_deterministic_response(&resp, &mut det, Some(SERVER))
            .unwrap();
        assert_eq!(hex::encode(&plain), CONTENT, "round {round}");
        assert_eq!(
            (info.mode, info.server_id.as_slice()),
            (Mode::Group, SERVER)
        );
    }
    // A response bound to another request (its Request-Hash) does not verify.
    let other = "52017a017a01b568656c6c6e";
    let (_, mut det2) = client
        .protect_deterministic_request(&unhex(&json!(other)), DET)
        .unwrap();
    let r = aiocoap.ok(json!({"op": "unprotect_request", "coap": hex::encode(&req)}));
    let resp = aiocoap.ok(json!({"op": "protect_response", "request": r["request"],
        "mode": "group", "coap": CONTENT}));
    assert!(
        client
            .unprotect_deterministic_response(&unhex(&resp["coap"]), &mut det2, Some(SERVER))
            .is_err()
    );
}

/// §3.4.3 and §3.4.4 with aiocoap as the client: groxy takes aiocoap's Deterministic
/// Request, answers per §3.4.4 (group mode, own Partial IV and kid, Request-Hash elided),
/// and aiocoap verifies the answer; a Request-Hash aiocoap did not compute is refused.
#[test]
fn s3_4_aiocoap_client_groxy_server() {
    let g = Group::new(&[CLIENT, SERVER]);
    let mut server = SecurityContext::new(&g.config(SERVER)).unwrap();
    let mut aiocoap = Oracle::start(setup(&g, CLIENT));
    let r = aiocoap.ok(json!({"op": "protect_deterministic_request",
        "deterministic_kid": hex::encode(DET), "server": hex::encode(SERVER),
        "coap": GET_HELLO}));
    let req = unhex(&r["coap"]);
    let (plain, mut det) = server.unprotect_deterministic_request(&req, DET).unwrap();
    assert_eq!(hex::encode(&plain), GET_HELLO);
    let resp = server
        .protect_deterministic_response(&unhex(&json!(CONTENT)), &mut det)
        .unwrap();
    let v = aiocoap.ok(json!({"op": "unprotect_response", "request": r["request"],
        "coap": hex::encode(&resp)}));
    assert_eq!(v["mode"], json!("group"));
    assert_eq!(v["kid"], json!(hex::encode(SERVER)));
    // aiocoap hands the inner message on; its payload and code are the server's.
    let got = MessageView::parse(&unhex(&v["coap"]))
        .unwrap()
        .payload()
        .to_vec();
    assert_eq!(got, b"hi there");

    let view = MessageView::parse(&req).unwrap();
    let hash = view
        .option(groxy::oscore::deterministic::REQUEST_HASH)
        .unwrap();
    let at = req.windows(hash.len()).position(|w| w == hash).unwrap();
    let mut bad = req.clone();
    bad[at] ^= 1;
    assert!(server.unprotect_deterministic_request(&bad, DET).is_err());
}

/// The responses of `req`, sent with the sans-I/O client `groxy client` runs, over `sock`.
/// `seed` gives the token and Message ID: another one per run, or the server's message
/// layer takes the second for a duplicate (RFC 7252 §4.5).
async fn run_client(
    req: &ClientRequest,
    sock: &tokio::net::UdpSocket,
    seed: u8,
) -> Vec<(Vec<u8>, Response)> {
    let mut c = Client::for_request(req, [seed; 32]).unwrap();
    let mut out = Vec::new();
    let mut sent = Vec::new();
    c.request(Instant::now(), req).unwrap();
    let end = Instant::now() + Duration::from_secs(u64::from(req.timeout)) + req.margin;
    loop {
        while let Some(d) = c.poll_transmit() {
            sock.send_to(&d.bytes, d.to).await.unwrap();
            sent.push(d.bytes);
        }
        while let Some(e) = c.poll_event() {
            match e {
                ClientEvent::Response { response, .. } => {
                    out.push((sent.last().cloned().unwrap_or_default(), response))
                }
                ClientEvent::Ended { .. } => return out,
                _ => {}
            }
        }
        let wake = c.poll_timeout().unwrap_or(end).min(end);
        let mut buf = [0u8; 1500];
        let left = wake.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sock.recv_from(&mut buf)).await {
            Ok(Ok((n, from))) => c.handle(Instant::now(), from, &buf[..n]),
            _ => {
                if Instant::now() >= end {
                    return out;
                }
                c.handle_timeout(Instant::now());
            }
        }
    }
}

/// A real aiocoap 0.4.17 server over UDP (aiocoap's server stack, OscoreSiteWrapper)
/// with a Deterministic Client configured answers `groxy client --deterministic dc`
/// sent to it directly: the answer is signed (group mode, §3.4.4 step 4) and verifies at
/// groxy's client; a second identical request (identical past the token) is answered
/// again, aiocoap keeping no replay window for it (§3.4.3 step 5).
#[tokio::test]
async fn s3_4_groxy_client_aiocoap_server_over_udp() {
    let g = Group::new(&[CLIENT, SERVER]);
    let dir = std::env::temp_dir().join(format!("groxy-det-interop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = setup(&g, SERVER);
    cfg["bind"] = json!("127.0.0.1");
    cfg["port"] = json!(0);
    let (mut child, port) = common::aiocoap_server(&dir.join("server.json"), &cfg);
    let to: SocketAddr = (Ipv4Addr::LOCALHOST, port).into();
    let mut req = ClientRequest::get(to, &format!("coap://{to}/hello"), 1);
    req.direct = true;
    req.margin = Duration::from_millis(200);
    req.oscore = Some(g.config(CLIENT));
    req.deterministic = Some(DET.to_vec());
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut wires = Vec::new();
    for seed in 0..2 {
        let got = run_client(&req, &sock, seed).await;
        assert_eq!(got.len(), 1, "{got:?}");
        let (wire, r) = &got[0];
        assert_eq!(r.oscore, Some(Ok((Mode::Group, SERVER.to_vec()))), "{r:?}");
        assert_eq!(r.code, 0x45);
        assert_eq!(
            r.payload,
            format!("hello from aiocoap {}", hex::encode(SERVER)).as_bytes()
        );
        wires.push(wire.clone());
    }
    assert_eq!(wires[0][4 + 8..], wires[1][4 + 8..]);
    drop(child.stdin.take());
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The set-up of the §7.4.1 tests: an aiocoap server of `g` (Sender ID `SERVER`) on
/// loopback multicast 224.0.1.187 (its rendered requests logged to `requests.log` in the
/// returned directory), and the configuration of a `groxy run` proxy that checks the group
/// (policy enforce, `deterministic_kid = "dc"`); with `cache` not empty, `[cache]
/// enabled` and the group's `cache_members` these addresses, given the group's port (the
/// aiocoap server answers from 127.0.0.1 on it: [`aiocoap_only`]). Returns the directory,
/// the group's port, the aiocoap child and the loaded configuration.
fn checking_proxy(
    g: &Group,
    tag: &str,
    cache: &dyn Fn(u16) -> Vec<SocketAddr>,
) -> (
    std::path::PathBuf,
    u16,
    std::process::Child,
    groxy::settings::Loaded,
) {
    let dir = std::env::temp_dir().join(format!("groxy-det-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = common::free_port();
    let mut cfg = setup(g, SERVER);
    cfg["bind"] = json!("0.0.0.0");
    cfg["port"] = json!(port);
    cfg["multicast"] = json!([["224.0.1.187", "lo"]]);
    cfg["request_log"] = json!(dir.join("requests.log"));
    let (child, _) = common::aiocoap_server(&dir.join("server.json"), &cfg);

    let sek = SecurityContext::new(&g.config(CLIENT))
        .unwrap()
        .group()
        .unwrap()
        .sig_enc_key
        .clone()
        .unwrap();
    std::fs::write(dir.join("group.sek"), hex::encode(sek)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("group.sek"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let members: String = g
        .members
        .iter()
        .map(|m| {
            format!(
                "  {{ id = \"{}\", credential = \"{}\" }},\n",
                hex::encode(&m.id),
                hex::encode(m.cred.bytes())
            )
        })
        .collect();
    // groupcomm-proxy §7.1: the group's members come from the configuration.
    let cache_members = cache(port);
    let (cache, members_line) = if cache_members.is_empty() {
        (String::new(), String::new())
    } else {
        let list: Vec<String> = cache_members.iter().map(|a| format!("\"{a}\"")).collect();
        (
            "[cache]\nenabled = true".to_string(),
            format!("cache_members = [{}]", list.join(", ")),
        )
    };
    let toml = format!(
        r#"[proxy]
listen = ["127.0.0.1:0"]
state_dir = "state"
{cache}
[[group]]
name = "secure"
uri = "coap://224.0.1.187:{port}"
interface = "127.0.0.1"
deterministic_kid = "dc"
{members_line}
[group.security]
policy = "enforce"
gid = "{}"
signature_encryption_key_file = "group.sek"
gm_credential = "{}"
members = [
{members}]
"#,
        hex::encode(&g.gid),
        hex::encode(g.gm.cred.bytes()),
    );
    std::fs::write(dir.join("groxy.toml"), toml).unwrap();
    let loaded = groxy::settings::load_file(&dir.join("groxy.toml")).unwrap();
    (dir, port, child, loaded)
}

/// groupcomm-proxy §7.4.1 with aiocoap 0.4.17 as the group's server: a real `groxy run`
/// proxy (in-process, from its TOML, policy enforce, `deterministic_kid = "dc"`) forwards
/// `groxy client --deterministic dc`'s group request to an aiocoap server on loopback
/// multicast; its signed answer comes back with Reply-From and verifies at the client.
/// Sent again (the same request past the token) it is forwarded again: no replay window
/// (cacheable-oscore §6), where a group-mode request's replay would be dropped.
#[tokio::test]
async fn s7_4_1_through_a_checking_groxy_proxy_to_an_aiocoap_server() {
    use groxy::proxy::{CheckResult, Event};
    use groxy::runtime::Proxy;
    use std::sync::{Arc, Mutex};

    let g = Group::new(&[CLIENT, SERVER]);
    let (dir, port, mut child, loaded) = checking_proxy(&g, "proxy", &|_| vec![]);
    let mut proxy = Proxy::bind(loaded.run).unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    proxy.on_event(move |e| sink.lock().unwrap().push(e.clone()));
    let proxy_addr = proxy.listen_addrs()[0];
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(proxy.run(async move {
        let _ = stop_rx.await;
    }));

    let mut req = ClientRequest::get(proxy_addr, &format!("coap://224.0.1.187:{port}/hello"), 1);
    req.margin = Duration::from_millis(300);
    req.oscore = Some(g.config(CLIENT));
    req.deterministic = Some(DET.to_vec());
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for seed in 10..12 {
        let got = run_client(&req, &sock, seed).await;
        assert_eq!(got.len(), 1, "{got:?}");
        let r = &got[0].1;
        assert_eq!(r.oscore, Some(Ok((Mode::Group, SERVER.to_vec()))), "{r:?}");
        assert_eq!(
            r.payload,
            format!("hello from aiocoap {}", hex::encode(SERVER)).as_bytes()
        );
        assert_eq!(r.reply_from.map(|a| a.port()), Some(port));
    }
    let checks: Vec<CheckResult> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::Checked {
                request: true,
                result,
                ..
            } => Some(*result),
            _ => None,
        })
        .collect();
    assert_eq!(checks, vec![CheckResult::Deterministic; 2]);
    let _ = stop_tx.send(());
    drop(child.stdin.take());
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// cacheable-oscore §3.4.3 and §6 against a Deterministic Request groxy would never
/// compose: aiocoap 0.4.17's Deterministic Client protects a POST too (it checks safety
/// only as a server). A `groxy device` answers it with a protected 4.01 (group mode, so
/// it verifies at the client) and does not run it; a proxy that is a member of the group
/// drops it under enforce (`deterministic_invalid`), one that is not cannot tell it from a
/// GET and forwards it.
#[tokio::test]
async fn s3_4_3_unsafe_deterministic_request_is_refused() {
    use groxy::coap::build::{self, NON};
    use groxy::coap::options as opt;
    use groxy::proxy::{CheckResult, Engine, Event, GroupSecurity, Link, Policy, ProxyConfig};
    use groxy::runtime::sockets::Interface;
    use groxy::tools::device::{Device, DeviceConfig, Settings};

    const PROXY: &[u8] = &[0x50];
    let g = Group::new(&[CLIENT, SERVER, PROXY]);
    let mut aiocoap = Oracle::start(setup(&g, CLIENT));
    // NON POST /echo "x", token 0x7a01.
    let post = "52027a017a01b46563686fff78";
    let r = aiocoap.ok(json!({"op": "protect_deterministic_request",
        "deterministic_kid": hex::encode(DET), "coap": post}));
    let req = unhex(&r["coap"]);

    let port = common::free_port();
    let bind: SocketAddr = (Ipv4Addr::new(127, 0, 0, 97), port).into();
    let mut d = Device::bind(DeviceConfig {
        name: "unsafe".into(),
        group: (Ipv4Addr::new(224, 0, 1, 187), port).into(),
        interface: Interface::Addr(Ipv4Addr::LOCALHOST),
        bind,
        leisure: Duration::ZERO,
        delay: Duration::ZERO,
        oscore: Some((g.config(SERVER), Mode::Group)),
    })
    .unwrap();
    d.settings(Settings {
        deterministic_kid: Some(DET.to_vec()),
        ..Settings::default()
    });
    tokio::spawn(d.run());
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let resp = common::ask(&sock, bind, &req).await;
    let v = aiocoap.ok(json!({"op": "unprotect_response", "request": r["request"],
        "coap": hex::encode(&resp)}));
    assert_eq!(v["mode"], json!("group"));
    let inner = unhex(&v["coap"]);
    assert_eq!(MessageView::parse(&inner).unwrap().code(), 0x81, "4.01");

    let filter = |member: bool| {
        let mut cfg = ProxyConfig::default();
        cfg.groups[0].security = Some(GroupSecurity {
            policy: Policy::Enforce,
            checker: g.checker_config(),
            member: member.then(|| g.config(PROXY)),
            allow_kids: None,
        });
        cfg.deterministic_kids = vec![Some(DET.to_vec())];
        let now = Instant::now();
        let mut e = Engine::new(cfg, now, 1).unwrap();
        let v = MessageView::parse(&req).unwrap();
        let mut opts: Vec<(u16, &[u8])> = v.options().collect();
        opts.push((opt::URI_HOST, b"224.0.1.187"));
        opts.push((opt::PROXY_SCHEME, b"coap"));
        opts.push((opt::MULTICAST_TIMEOUT_DEFAULT, &[1]));
        let msg = build::encode(NON, v.code(), 7, &[7], &mut opts, v.payload());
        e.handle(
            now,
            Link::Listener(0),
            "127.0.0.1:40000".parse().unwrap(),
            &msg,
        );
        let (tx, ev) = common::outputs(&mut e);
        let sent = tx.iter().any(|t| t.link == Link::Group(0, 0));
        let results: Vec<CheckResult> = ev
            .iter()
            .filter_map(|e| match e {
                Event::Checked { result, .. } => Some(*result),
                _ => None,
            })
            .collect();
        (sent, results)
    };
    assert_eq!(
        filter(true),
        (false, vec![CheckResult::DeterministicInvalid])
    );
    assert_eq!(filter(false), (true, vec![CheckResult::Deterministic]));
}

/// A `groxy run` proxy of the §7.4.1 cache tests, serving in the background.
struct Running {
    addr: SocketAddr,
    events: std::sync::Arc<std::sync::Mutex<Vec<groxy::proxy::Event>>>,
    /// The ops endpoint (`/metrics`), fed by the proxy's metrics observer.
    ops: groxy::ops::Ops,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Binds and runs `loaded` (on a tokio runtime), its metrics served on a loopback port
/// and every engine event recorded.
fn run_proxy(loaded: groxy::settings::Loaded) -> Running {
    let (ops, metrics) =
        groxy::ops::Ops::start("127.0.0.1:0".parse().unwrap(), &loaded.run.proxy).unwrap();
    let mut proxy = groxy::runtime::Proxy::bind(loaded.run).unwrap();
    proxy.observe(metrics);
    let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = events.clone();
    proxy.on_event(move |e| sink.lock().unwrap().push(e.clone()));
    let addr = proxy.listen_addrs()[0];
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(proxy.run(async move {
        let _ = stopped.await;
    }));
    Running {
        addr,
        events,
        ops,
        stop: Some(stop),
    }
}

impl Running {
    /// How many of the recorded cache events are `what`.
    fn cache_events(&self, what: groxy::proxy::CacheEvent) -> usize {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, groxy::proxy::Event::Cache { what: w, .. } if *w == what))
            .count()
    }

    /// One sample of the proxy's `/metrics` scrape, e.g. `groxy_cache_events_total{...}`.
    fn metric(&self, series: &str) -> Option<f64> {
        let (status, text) = common::http_get(self.ops.local_addr(), "/metrics").unwrap();
        assert_eq!(status, 200, "{text}");
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// The aiocoap server of [`checking_proxy`] as the group's only `cache_members`: it
/// answers from the loopback address and the group's port.
fn aiocoap_only(port: u16) -> Vec<SocketAddr> {
    vec![(Ipv4Addr::LOCALHOST, port).into()]
}

/// How many requests the aiocoap server of [`checking_proxy`] rendered so far.
fn requests_seen(dir: &std::path::Path) -> usize {
    std::fs::read_to_string(dir.join("requests.log"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Ends the aiocoap server and removes the test's directory.
fn finish(mut child: std::process::Child, dir: &std::path::Path) {
    drop(child.stdin.take());
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(dir);
}

/// groupcomm-proxy §7.4.1 and §7.1 with aiocoap 0.4.17 as the group's server: a real
/// `groxy run` proxy with `[cache] enabled`, the aiocoap server as the group's
/// `cache_members`, the group checked (enforce) and `deterministic_kid = "dc"`. `groxy
/// client --deterministic dc` sends the same Deterministic Request twice through it: the
/// first is forwarded and aiocoap's signed answer, verified by the proxy's checker, is
/// stored; the second is answered from the cache alone (the set is complete, §7.1).
/// Both clients get aiocoap's answer, verified end to end, with the server's Reply-From
/// (§5.4.1, made again when served); the aiocoap server rendered exactly one request;
/// the proxy's events and `/metrics` show one miss and one hit.
#[tokio::test]
async fn s7_4_1_a_caching_groxy_proxy_answers_the_second_deterministic_request_itself() {
    use groxy::proxy::CacheEvent;

    let g = Group::new(&[CLIENT, SERVER]);
    let (dir, port, child, loaded) = checking_proxy(&g, "cache", &aiocoap_only);
    let mut proxy = run_proxy(loaded);
    let server: SocketAddr = (Ipv4Addr::LOCALHOST, port).into();
    let mut req = ClientRequest::get(proxy.addr, &format!("coap://224.0.1.187:{port}/hello"), 1);
    req.margin = Duration::from_millis(300);
    req.oscore = Some(g.config(CLIENT));
    req.deterministic = Some(DET.to_vec());
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for (round, seed) in [(0, 20), (1, 21)] {
        let got = run_client(&req, &sock, seed).await;
        assert_eq!(got.len(), 1, "round {round}: {got:?}");
        let r = &got[0].1;
        assert_eq!(
            r.oscore,
            Some(Ok((Mode::Group, SERVER.to_vec()))),
            "round {round}: {r:?}"
        );
        assert_eq!(r.code, 0x45);
        assert_eq!(
            r.payload,
            format!("hello from aiocoap {}", hex::encode(SERVER)).as_bytes()
        );
        assert_eq!(r.reply_from, Some(server), "round {round}");
        assert_eq!(requests_seen(&dir), 1, "round {round}: aiocoap's requests");
    }
    assert_eq!(proxy.cache_events(CacheEvent::Miss), 1);
    assert_eq!(proxy.cache_events(CacheEvent::Stored), 1);
    assert_eq!(proxy.cache_events(CacheEvent::Hit), 1);
    assert_eq!(
        proxy.metric(r#"groxy_cache_events_total{event="hit",group="secure"}"#),
        Some(1.0)
    );
    assert_eq!(
        proxy.metric(r#"groxy_cache_events_total{event="miss",group="secure"}"#),
        Some(1.0)
    );
    proxy.stop();
    finish(child, &dir);
}

/// The same with aiocoap 0.4.17 as the clients: two aiocoap processes, each a different
/// member of the group, compose the Deterministic Request of GET /hello with their
/// Deterministic Client aspect (the same bytes, cacheable-oscore §3); the test sends each
/// to the proxy as a forward-proxy request (Proxy-Scheme + Uri-Host + Uri-Port and
/// Multicast-Timeout, all outer options, groupcomm-proxy §5.1.1), and each aiocoap client
/// verifies the answer it gets (group mode, aiocoap server's kid). The first is
/// forwarded, the second answered from the cache: one request reached the server.
#[tokio::test]
async fn s7_4_1_two_aiocoap_deterministic_clients_one_request_reaches_the_server() {
    use groxy::coap::build::{self, NON};
    use groxy::coap::options as opt;
    use groxy::proxy::CacheEvent;

    const CLIENT2: &[u8] = &[0x0d];
    let g = Group::new(&[CLIENT, CLIENT2, SERVER]);
    let (dir, port, child, loaded) = checking_proxy(&g, "cache-aiocoap", &aiocoap_only);
    let mut proxy = run_proxy(loaded);
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port_bytes = port.to_be_bytes();
    let port_opt: &[u8] = if port < 256 {
        &port_bytes[1..]
    } else {
        &port_bytes
    };
    let mut composed = Vec::new();
    for (n, me) in [CLIENT, CLIENT2].into_iter().enumerate() {
        let mut aiocoap = Oracle::start(setup(&g, me));
        let r = aiocoap.ok(json!({"op": "protect_deterministic_request",
            "deterministic_kid": hex::encode(DET), "coap": GET_HELLO}));
        let det = unhex(&r["coap"]);
        composed.push(det.clone());
        let v = MessageView::parse(&det).unwrap();
        let mut opts: Vec<(u16, &[u8])> = v.options().collect();
        opts.push((opt::PROXY_SCHEME, b"coap"));
        opts.push((opt::URI_HOST, b"224.0.1.187"));
        opts.push((opt::URI_PORT, port_opt));
        opts.push((opt::MULTICAST_TIMEOUT_DEFAULT, &[1]));
        let token = [0x30 + n as u8; 4];
        let msg = build::encode(
            NON,
            v.code(),
            0x3000 + n as u16,
            &token,
            &mut opts,
            v.payload(),
        );
        sock.send_to(&msg, proxy.addr).await.unwrap();
        // Every response until T' (1 s) and a margin.
        let mut got = Vec::new();
        let end = Instant::now() + Duration::from_millis(1500);
        let mut buf = [0u8; 1500];
        while let Ok(Ok((len, _))) = tokio::time::timeout(
            end.saturating_duration_since(Instant::now()),
            sock.recv_from(&mut buf),
        )
        .await
        {
            got.push(buf[..len].to_vec());
        }
        assert_eq!(got.len(), 1, "client {n}: {got:?}");
        let resp = MessageView::parse(&got[0]).unwrap();
        assert_eq!(resp.token(), &token[..], "client {n}");
        assert!(resp.option(opt::REPLY_FROM_DEFAULT).is_some(), "client {n}");
        let out = aiocoap.ok(json!({"op": "unprotect_response", "request": r["request"],
            "coap": hex::encode(&got[0])}));
        assert_eq!(out["mode"], json!("group"), "client {n}");
        assert_eq!(out["kid"], json!(hex::encode(SERVER)), "client {n}");
        let inner = unhex(&out["coap"]);
        let inner = MessageView::parse(&inner).unwrap();
        assert_eq!(inner.code(), 0x45, "client {n}");
        assert_eq!(
            inner.payload(),
            format!("hello from aiocoap {}", hex::encode(SERVER)).as_bytes()
        );
        assert_eq!(requests_seen(&dir), 1, "client {n}: aiocoap's requests");
    }
    assert_eq!(
        composed[0], composed[1],
        "§3: the same bytes from both clients"
    );
    assert_eq!(proxy.cache_events(CacheEvent::Miss), 1);
    assert_eq!(proxy.cache_events(CacheEvent::Hit), 1);
    proxy.stop();
    finish(child, &dir);
}

/// groupcomm-proxy §7.4.1 and cacheable-oscore §6 on the wire: a forged answer is not
/// served from the cache. A second "server" at 127.0.0.2, a member of the group's
/// `cache_members` beside the aiocoap server, receives the proxy's multicast request and
/// answers it with a tampered copy of an answer aiocoap gave earlier (its signature's last
/// byte flipped). The checking proxy (enforce) drops it (`response_check_failed`) and
/// stores only aiocoap's answer, so the set stays incomplete (§7.1): the second client's
/// request is forwarded again, not answered from the cache, and each client gets aiocoap's
/// verified answer alone, never the forged one.
#[tokio::test]
async fn s7_4_1_a_forged_deterministic_answer_is_not_served_from_the_cache() {
    use groxy::coap::build::{self, NON};
    use groxy::proxy::{CacheEvent, DropReason, Event};
    use groxy::runtime::sockets::{Interface, multicast_receiver};

    let g = Group::new(&[CLIENT, SERVER]);
    let fake_tx = tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap();
    let fake = fake_tx.local_addr().unwrap();
    let (dir, port, child, loaded) = checking_proxy(&g, "forged", &|port| {
        vec![(Ipv4Addr::LOCALHOST, port).into(), fake]
    });
    let aiocoap: SocketAddr = (Ipv4Addr::LOCALHOST, port).into();

    // A genuine answer of aiocoap's to the same Deterministic Request, asked directly.
    let (det, _) = SecurityContext::new(&g.config(CLIENT))
        .unwrap()
        .protect_deterministic_request(&unhex(&json!(GET_HELLO)), DET)
        .unwrap();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let genuine = common::ask(&sock, aiocoap, &det).await;
    assert_eq!(requests_seen(&dir), 1);
    let gv = MessageView::parse(&genuine).unwrap();
    let opts: Vec<(u16, Vec<u8>)> = gv.options().map(|(n, v)| (n, v.to_vec())).collect();
    let mut forged_payload = gv.payload().to_vec();
    *forged_payload.last_mut().unwrap() ^= 1;
    let code = gv.code();

    // The fake server: joined to the group on loopback, it answers every request the
    // proxy multicasts with the tampered copy under that request's token.
    let rx = multicast_receiver(
        (Ipv4Addr::new(224, 0, 1, 187), port).into(),
        &Interface::Addr(Ipv4Addr::LOCALHOST),
    )
    .unwrap();
    rx.set_nonblocking(true).unwrap();
    let rx = tokio::net::UdpSocket::from_std(rx).unwrap();
    let (forged_tx, mut forged_rx) = tokio::sync::mpsc::unbounded_channel();
    let fake_task = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        let mut mid = 0x4000u16;
        while let Ok((n, from)) = rx.recv_from(&mut buf).await {
            let Ok(req) = MessageView::parse(&buf[..n]) else {
                continue;
            };
            let mut o: Vec<(u16, &[u8])> = opts.iter().map(|(n, v)| (*n, &v[..])).collect();
            mid += 1;
            let answer = build::encode(NON, code, mid, req.token(), &mut o, &forged_payload);
            fake_tx.send_to(&answer, from).await.unwrap();
            let _ = forged_tx.send(());
        }
    });

    let mut proxy = run_proxy(loaded);
    let mut req = ClientRequest::get(proxy.addr, &format!("coap://224.0.1.187:{port}/hello"), 1);
    req.margin = Duration::from_millis(300);
    req.oscore = Some(g.config(CLIENT));
    req.deterministic = Some(DET.to_vec());
    for (round, seed) in [(0, 30), (1, 31)] {
        let got = run_client(&req, &sock, seed).await;
        assert!(
            forged_rx.try_recv().is_ok(),
            "round {round}: the fake answered"
        );
        assert_eq!(got.len(), 1, "round {round}: {got:?}");
        let r = &got[0].1;
        assert_eq!(
            r.oscore,
            Some(Ok((Mode::Group, SERVER.to_vec()))),
            "round {round}: {r:?}"
        );
        assert_eq!(r.reply_from, Some(aiocoap), "round {round}");
        assert_eq!(requests_seen(&dir), 2 + round, "round {round}: forwarded");
    }
    let dropped = proxy
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::Dropped {
                    reason: DropReason::ResponseCheckFailed,
                    ..
                }
            )
        })
        .count();
    assert_eq!(dropped, 2, "the forged answer of each round");
    assert_eq!(proxy.cache_events(CacheEvent::Hit), 0);
    assert_eq!(proxy.cache_events(CacheEvent::Miss), 2);
    fake_task.abort();
    proxy.stop();
    finish(child, &dir);
}
