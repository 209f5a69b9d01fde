//! Group OSCORE end to end from HTTP clients (groupcomm-proxy-07 §9.4 step 3, §9.6;
//! RFC 8613 §11.2, §11.3) through the signature-checking proxy's HTTP bridge, to
//! groxy devices that are group members on loopback multicast: a protected request is
//! answered by every member, each response verified by the client; a replayed and a
//! forged one are dropped by the engine's filter and reach no device (no fan-out).
//! Clients: `groxy client --http`'s library and curl with a request protected here.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::files::{checking_proxy_toml, group_secrets, member_file};
use common::{Group, free_port};
use groxy::coap::MessageView;
use groxy::coap::build::{self, NON};
use groxy::coap::options as opt;
use groxy::oscore::{Mode, SecurityContext};
use groxy::proxy::{CheckResult, Event};
use groxy::runtime::{Interface, Proxy};
use groxy::settings::security::MemberFile;
use groxy::tools::client::http::{HttpClientRequest, run_http};
use groxy::tools::device::{Device, DeviceConfig};

const CLIENT: &[u8] = &[0x01];
const DEVS: [&[u8]; 3] = [&[0x0a], &[0x0b], &[0x0c]];

/// One protected GET /hello as RFC 8613 §11.2 maps it: the OSCORE field and the body.
fn protected_get(ctx: &mut SecurityContext) -> (String, Vec<u8>, groxy::oscore::Exchange) {
    let plain = build::encode(NON, 1, 0, &[0], &mut [(opt::URI_PATH, &b"hello"[..])], &[]);
    let (p, ex) = ctx.protect_request(&plain, Mode::Group, None).unwrap();
    let v = MessageView::parse(&p).unwrap();
    (
        URL_SAFE_NO_PAD.encode(v.option(opt::OSCORE).unwrap()),
        v.payload().to_vec(),
        ex,
    )
}

/// curl's POST of a protected request; returns status and body (and the content type).
fn curl_oscore(dir: &Path, url: &str, field: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let f = dir.join("body.bin");
    std::fs::write(&f, body).unwrap();
    let out = Command::new("/usr/bin/curl")
        .args([
            "-s",
            "-g",
            "--max-time",
            "10",
            "-X",
            "POST",
            "-H",
            "Multicast-Timeout: 1",
        ])
        .args([
            "-H",
            &format!("OSCORE: {field}"),
            "-H",
            "Content-Type: application/oscore",
        ])
        .args(["--data-binary", &format!("@{}", f.display())])
        .args(["-w", "\n%{http_code}\n%{content_type}", url])
        .output()
        .unwrap();
    let text = out.stdout;
    let mut tail = text.rsplitn(3, |b| *b == b'\n');
    let ct = String::from_utf8_lossy(tail.next().unwrap()).to_string();
    let status = String::from_utf8_lossy(tail.next().unwrap())
        .parse()
        .unwrap();
    let body = tail.next().unwrap_or_default().to_vec();
    (status, ct, body)
}

/// Each part's OSCORE field and body (RFC 8613 §11.3), from a multipart/mixed body.
fn oscore_parts(ct: &str, body: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let boundary = ct.split("boundary=").nth(1).unwrap();
    // The bodies are binary: the delimiters are found in the bytes.
    let delim = format!("--{boundary}");
    let bytes = body;
    let all: Vec<usize> = bytes
        .windows(delim.len())
        .enumerate()
        .filter(|(_, w)| *w == delim.as_bytes())
        .map(|(i, _)| i)
        .collect();
    let mut parts = Vec::new();
    for w in all.windows(2) {
        let p = &bytes[w[0] + delim.len() + 2..w[1] - 2];
        let sep = p.windows(4).position(|x| x == b"\r\n\r\n").unwrap();
        let inner = &p[sep + 4..];
        let hend = inner.windows(4).position(|x| x == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&inner[..hend]).to_string();
        let field = head
            .lines()
            .find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.eq_ignore_ascii_case("oscore"))
            })
            .map(|(_, v)| v)
            .expect("an OSCORE field in each part")
            .trim()
            .to_string();
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/oscore")
        );
        parts.push((
            URL_SAFE_NO_PAD.decode(field).unwrap(),
            inner[hend + 4..].to_vec(),
        ));
    }
    parts
}

#[tokio::test(flavor = "current_thread")]
async fn group_oscore_over_http_verified_end_to_end_and_filtered() {
    let dir = common::fresh_dir("groxy-http-osc");
    let g = Group::new(&[CLIENT, DEVS[0], DEVS[1], DEVS[2]]);
    group_secrets(&dir, &g);
    let port = free_port();
    let cfg_path = dir.join("groxy.toml");
    let toml = checking_proxy_toml(&g, port, "group.sek") + "[http]\nlisten = [\"127.0.0.1:0\"]\n";
    std::fs::write(&cfg_path, toml).unwrap();
    let loaded = groxy::settings::load_file(&cfg_path).unwrap();
    let mut proxy = Proxy::bind(loaded.run.clone()).unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    proxy.on_event(move |e| sink.lock().unwrap().push(e.clone()));
    let (tx, rx) = proxy.attach_bridge().unwrap();
    let server = groxy::http::start(
        loaded.http.clone().unwrap(),
        tx,
        rx,
        &loaded.run.proxy,
        groxy::ops::metrics::HttpMetrics::new(&prometheus::Registry::new()),
    )
    .unwrap();
    let http = server.local_addrs()[0];
    let group: SocketAddr = (Ipv4Addr::new(224, 0, 1, 187), port).into();
    for (i, id) in DEVS.iter().enumerate() {
        let member = MemberFile::load(&member_file(&dir, &g, id)).unwrap();
        let d = Device::bind(DeviceConfig {
            name: format!("dev{}", hex::encode(id)),
            group,
            interface: Interface::Addr(Ipv4Addr::LOCALHOST),
            bind: (Ipv4Addr::new(127, 0, 0, 91 + i as u8), port).into(),
            leisure: Duration::from_millis(30),
            delay: Duration::ZERO,
            oscore: Some((member, Mode::Group)),
        })
        .unwrap();
        tokio::spawn(d.run());
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(proxy.run(async move {
        let _ = stop_rx.await;
    }));
    let fanouts = || {
        events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, Event::FanOut { .. }))
            .count()
    };
    let url = format!("http://{http}/hc/coap://{group}/hello");

    // Our client (`groxy client --http --oscore`): every member answers, each verified.
    let req = HttpClientRequest {
        url: url.clone(),
        method: 1,
        payload: Vec::new(),
        timeout: 1,
        oscore: Some(MemberFile::load(&member_file(&dir, &g, CLIENT)).unwrap()),
        first_ssn: 0,
    };
    let got = run_http(&req, |_| {}).await.unwrap();
    assert_eq!(got.status, 200);
    let mut kids: Vec<Vec<u8>> = got
        .responses
        .iter()
        .map(|r| {
            let (mode, kid) = r.oscore.clone().expect("protected").expect("verifies");
            assert_eq!(mode, Mode::Group);
            assert_eq!(
                r.payload,
                format!("hello from dev{}", hex::encode(&kid)).as_bytes()
            );
            assert!(r.reply_from.is_some());
            kid
        })
        .collect();
    kids.sort();
    assert_eq!(kids, DEVS.iter().map(|d| d.to_vec()).collect::<Vec<_>>());
    assert_eq!(fanouts(), 1);

    // curl with a request protected here (sequence numbers above the client's).
    let mut ctx = SecurityContext::new(&g.config(CLIENT)).unwrap();
    ctx.sender.ssn = 500;
    let (field, body, ex) = protected_get(&mut ctx);
    let d = dir.clone();
    let (u, f, b) = (url.clone(), field.clone(), body.clone());
    let (status, ct, resp) = tokio::task::spawn_blocking(move || curl_oscore(&d, &u, &f, &b))
        .await
        .unwrap();
    assert_eq!(status, 200);
    let parts = oscore_parts(&ct, &resp);
    assert_eq!(parts.len(), 3);
    for (value, ciphertext) in &parts {
        let msg = build::encode(
            NON,
            0x44,
            0,
            &[0],
            &mut [(opt::OSCORE, &value[..])],
            ciphertext,
        );
        let mut ex = ex.clone();
        let (plain, info) = ctx.unprotect_response(&msg, &mut ex).expect("verifies");
        assert_eq!(info.mode, Mode::Group);
        assert!(
            MessageView::parse(&plain)
                .unwrap()
                .payload()
                .starts_with(b"hello from dev")
        );
    }
    assert_eq!(fanouts(), 2);

    // The same request again: a replay, dropped by the filter; 204 at T'.
    let d = dir.clone();
    let (u, f, b) = (url.clone(), field.clone(), body.clone());
    let (status, _, _) = tokio::task::spawn_blocking(move || curl_oscore(&d, &u, &f, &b))
        .await
        .unwrap();
    assert_eq!(status, 204);
    // A forged one (its countersignature altered): dropped; 204 at T'.
    let (field2, mut body2, _) = protected_get(&mut ctx);
    let n = body2.len();
    body2[n - 1] ^= 0x01;
    let d = dir.clone();
    let u = url.clone();
    let (status, _, _) = tokio::task::spawn_blocking(move || curl_oscore(&d, &u, &field2, &body2))
        .await
        .unwrap();
    assert_eq!(status, 204);
    assert_eq!(fanouts(), 2, "neither reached the group");
    let checks: Vec<CheckResult> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::Checked {
                request: true,
                result,
                enforced,
                ..
            } => {
                assert!(*enforced || *result == CheckResult::Valid);
                Some(*result)
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        checks,
        vec![
            CheckResult::Valid,
            CheckResult::Valid,
            CheckResult::Replay,
            CheckResult::BadSignature
        ]
    );

    // groupcomm-proxy §5.2.3: a protected streamed request (T' 8 s) whose client goes
    // after the parts came; its Early Stop Request would need the client's protection,
    // so the bridge resets the latest relayed response: the exchange ends at once.
    let (field3, body3, _) = protected_get(&mut ctx);
    let f = dir.join("body3.bin");
    std::fs::write(&f, &body3).unwrap();
    let t = std::time::Instant::now();
    let u = url.clone();
    tokio::task::spawn_blocking(move || {
        Command::new("/usr/bin/curl")
            .args(["-s", "-N", "-g", "--max-time", "1", "-X", "POST"])
            .args([
                "-H",
                "Multicast-Timeout: 8",
                "-H",
                &format!("OSCORE: {field3}"),
            ])
            .args(["-H", "Content-Type: application/oscore"])
            .args(["-H", "Accept: multipart/mixed; delivery=streamed"])
            .args(["--data-binary", &format!("@{}", f.display())])
            .arg(u)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let reset = || {
        events.lock().unwrap().iter().any(|e| {
            matches!(
                e,
                Event::Closed {
                    reason: groxy::proxy::CloseReason::EarlyStopReset,
                    ..
                }
            )
        })
    };
    while !reset() {
        assert!(t.elapsed() < Duration::from_secs(4), "stopped before T'");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(());
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
