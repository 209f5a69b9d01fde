//! The signature-verifying proxy end to end on loopback multicast, configured from files
//! as an operator would: the proxy checks group-mode requests and responses (RFC 10021
//! §7.5) with public material only; OSCORE devices answer in group and pairwise mode; the
//! client protects its request and verifies every answer (issue: client side).

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::files::{
    checking_proxy_toml, group_secrets, member_file, secret, secret_with_mode, sek,
};
use common::{Group, ask, free_port};
use groxy::oscore::Mode;
use groxy::proxy::{CheckResult, Event};
use groxy::runtime::{Interface, Proxy};
use groxy::settings::security::MemberFile;
use groxy::tools::client::{ClientRequest, run as send};
use groxy::tools::device::{Device, DeviceConfig};

const CLIENT: &[u8] = &[0x01];
const DEVS: [&[u8]; 3] = [&[0x0a], &[0x0b], &[0x0c]];

#[tokio::test(flavor = "current_thread")]
async fn s7_5_proxy_checks_and_client_verifies_over_loopback() {
    let dir = common::fresh_dir("groxy-sec");
    let g = Group::new(&[CLIENT, DEVS[0], DEVS[1], DEVS[2]]);
    group_secrets(&dir, &g);
    let port = free_port();
    let cfg_path = dir.join("groxy.toml");
    std::fs::write(&cfg_path, checking_proxy_toml(&g, port, "group.sek")).unwrap();
    let loaded = groxy::settings::load_file(&cfg_path).unwrap();
    let mut proxy = Proxy::bind(loaded.run).unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    proxy.on_event(move |e| sink.lock().unwrap().push(e.clone()));
    let proxy_addr = proxy.listen_addrs()[0];
    let group: SocketAddr = (Ipv4Addr::new(224, 0, 1, 187), port).into();
    // Devices 0a and 0b answer in group mode (signed), 0c in pairwise mode.
    for (i, id) in DEVS.iter().enumerate() {
        let member = MemberFile::load(&member_file(&dir, &g, id)).unwrap();
        let mode = if i < 2 { Mode::Group } else { Mode::Pairwise };
        let d = Device::bind(DeviceConfig {
            name: format!("dev{}", hex::encode(id)),
            group,
            interface: Interface::Addr(Ipv4Addr::LOCALHOST),
            bind: (Ipv4Addr::new(127, 0, 0, 61 + i as u8), port).into(),
            leisure: Duration::from_millis(30),
            delay: Duration::ZERO,
            oscore: Some((member, mode)),
        })
        .unwrap();
        tokio::spawn(d.run());
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(proxy.run(async move {
        let _ = stop_rx.await;
    }));

    let mut req = ClientRequest::get(proxy_addr, &format!("coap://{group}/hello"), 3);
    req.margin = Duration::from_millis(300);
    req.oscore = Some(MemberFile::load(&member_file(&dir, &g, CLIENT)).unwrap());
    let got = send(&req, |_| {}).await.unwrap();
    let mut verified: Vec<(Vec<u8>, Mode)> = got
        .iter()
        .map(|r| {
            let (mode, kid) = r
                .oscore
                .clone()
                .expect("protected")
                .expect("verifies at the client");
            assert_eq!(
                r.payload,
                format!("hello from dev{}", hex::encode(&kid)).as_bytes()
            );
            (kid, mode)
        })
        .collect();
    verified.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        verified,
        vec![
            (DEVS[0].to_vec(), Mode::Group),
            (DEVS[1].to_vec(), Mode::Group),
            (DEVS[2].to_vec(), Mode::Pairwise)
        ]
    );
    {
        let ev = events.lock().unwrap();
        let checks: Vec<_> = ev
            .iter()
            .filter_map(|e| match e {
                Event::Checked {
                    request, result, ..
                } => Some((*request, *result)),
                _ => None,
            })
            .collect();
        assert_eq!(
            checks
                .iter()
                .filter(|c| **c == (true, CheckResult::Valid))
                .count(),
            1
        );
        assert_eq!(
            checks
                .iter()
                .filter(|c| **c == (false, CheckResult::Valid))
                .count(),
            2
        );
        assert_eq!(
            checks
                .iter()
                .filter(|c| **c == (false, CheckResult::Unverifiable))
                .count(),
            1
        );
    }

    // An outsider with the group's public material but its own key: nothing reaches the
    // devices, so nothing comes back.
    let mut forger = g.clone();
    forger.members = vec![common::Member::new(CLIENT, "forger")];
    forger
        .members
        .extend(g.members.iter().filter(|m| m.id != CLIENT).cloned());
    let mut forged = ClientRequest::get(proxy_addr, &format!("coap://{group}/hello"), 3);
    forged.margin = Duration::from_millis(300);
    forged.oscore = Some(forger.config(CLIENT));
    let got = send(&forged, |_| {}).await.unwrap();
    assert!(got.is_empty(), "{got:?}");
    assert!(events.lock().unwrap().iter().any(|e| matches!(
        e,
        Event::Checked {
            request: true,
            result: CheckResult::BadSignature,
            enforced: true,
            ..
        }
    )));
    let _ = stop_tx.send(());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn secrets_readable_by_others_are_refused() {
    let dir = common::fresh_dir("groxy-perm");
    let g = Group::new(&[CLIENT, DEVS[0]]);
    secret_with_mode(&dir.join("group.sek"), &sek(&g), 0o644);
    let cfg_path = dir.join("groxy.toml");
    std::fs::write(&cfg_path, checking_proxy_toml(&g, 5683, "group.sek")).unwrap();
    let errs = groxy::settings::load_file(&cfg_path)
        .unwrap_err()
        .join("\n");
    assert!(
        errs.contains("group[0].security.signature_encryption_key_file")
            && errs.contains("readable by group or others"),
        "{errs}"
    );
    // A bad member credential is named by its key.
    std::fs::set_permissions(
        dir.join("group.sek"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let text = checking_proxy_toml(&g, 5683, "group.sek")
        .replace(&hex::encode(g.member(DEVS[0]).cred.bytes()), "a0");
    std::fs::write(&cfg_path, text).unwrap();
    let errs = groxy::settings::load_file(&cfg_path)
        .unwrap_err()
        .join("\n");
    assert!(
        errs.contains("group[0].security") && errs.contains("member 0a"),
        "{errs}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

const PROXY: &[u8] = &[0x50];

/// oscore-capable-proxies §2: the client wraps its group-mode request in a pairwise layer
/// with the proxy, a member of the group; the proxy removes it, authenticates the client
/// by its kid, forwards the inner request, and protects every relayed response with that
/// layer. The proxy also answers pairwise requests to its own resources (RFC 10021 §8),
/// and refuses a second layer it cannot remove with 4.01 (§2.1).
#[tokio::test(flavor = "current_thread")]
async fn oscore_capable_proxies_outer_layer_own_resources_and_restart() {
    let dir = common::fresh_dir("groxy-outer");
    let g = Group::new(&[CLIENT, DEVS[0], DEVS[1], PROXY]);
    group_secrets(&dir, &g);
    secret(&dir.join("proxy.key"), &g.member(PROXY).key.to_bytes());
    let port = free_port();
    let mut toml = checking_proxy_toml(&g, port, "group.sek");
    toml.push_str(&format!(
        "master_secret_file = \"master.secret\"\nmaster_salt = \"{}\"\nsender_id = \"50\"\nprivate_key_file = \"proxy.key\"\ncredential = \"{}\"\nallow_kids = [\"01\"]\n",
        hex::encode(&g.master_salt),
        hex::encode(g.member(PROXY).cred.bytes())
    ));
    let cfg_path = dir.join("groxy.toml");
    std::fs::write(&cfg_path, toml).unwrap();
    let proxy = Proxy::bind(groxy::settings::load_file(&cfg_path).unwrap().run).unwrap();
    let proxy_addr = proxy.listen_addrs()[0];
    let group: SocketAddr = (Ipv4Addr::new(224, 0, 1, 187), port).into();
    for (i, id) in DEVS[..2].iter().enumerate() {
        let d = Device::bind(DeviceConfig {
            name: format!("dev{}", hex::encode(id)),
            group,
            interface: Interface::Addr(Ipv4Addr::LOCALHOST),
            bind: (Ipv4Addr::new(127, 0, 0, 71 + i as u8), port).into(),
            leisure: Duration::from_millis(30),
            delay: Duration::ZERO,
            oscore: Some((
                MemberFile::load(&member_file(&dir, &g, id)).unwrap(),
                Mode::Pairwise,
            )),
        })
        .unwrap();
        tokio::spawn(d.run());
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(proxy.run(async move {
        let _ = stop_rx.await;
    }));
    let client_cfg = MemberFile::load(&member_file(&dir, &g, CLIENT)).unwrap();

    // Through both layers: every device's answer, verified end to end.
    let mut req = ClientRequest::get(proxy_addr, &format!("coap://{group}/hello"), 3);
    req.margin = Duration::from_millis(300);
    req.oscore = Some(client_cfg.clone());
    req.proxy_kid = Some(PROXY.to_vec());
    let got = send(&req, |_| {}).await.unwrap();
    let mut kids: Vec<Vec<u8>> = got
        .iter()
        .map(|r| r.oscore.clone().unwrap().unwrap().1)
        .collect();
    kids.sort();
    assert_eq!(kids, vec![DEVS[0].to_vec(), DEVS[1].to_vec()]);
    for r in &got {
        // Reply-From travelled inside the proxy's layer and still names the device.
        assert!(
            r.reply_from
                .is_some_and(|a| a.ip().to_string().starts_with("127.0.0.7")),
            "{r:?}"
        );
    }

    // A pairwise request to the proxy's own /status, and a second layer it cannot remove.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut ctx = groxy::oscore::SecurityContext::new(&client_cfg).unwrap();
    let get_status =
        groxy::coap::build::encode(1, 1, 0x7001, &[7], &mut [(11, &b"status"[..])], &[]);
    let (req, mut ex) = ctx
        .protect_request(&get_status, Mode::Pairwise, Some(PROXY))
        .unwrap();
    let answer = ask(&sock, proxy_addr, &req).await;
    let (plain, info) = ctx.unprotect_response(&answer, &mut ex).unwrap();
    assert_eq!(info.server_id, PROXY);
    let pv = groxy::coap::MessageView::parse(&plain).unwrap();
    assert_eq!(pv.code(), 0x45);
    let status: serde_json::Value = serde_json::from_slice(pv.payload()).unwrap();
    assert_eq!(status["groups"], 1);

    let get_hello = groxy::coap::build::encode(1, 1, 0x7002, &[8], &mut [(11, &b"hello"[..])], &[]);
    let (inner, _) = ctx.protect_request(&get_hello, Mode::Group, None).unwrap();
    let (double, mut ex2) = ctx
        .protect_request_layer(
            &inner,
            Mode::Pairwise,
            Some(PROXY),
            groxy::oscore::Layer::Hop,
        )
        .unwrap();
    let answer = ask(&sock, proxy_addr, &double).await;
    let (plain, _) = ctx.unprotect_response(&answer, &mut ex2).unwrap();
    assert_eq!(
        groxy::coap::MessageView::parse(&plain).unwrap().code(),
        0x81,
        "4.01, protected"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("state/secure.ssn"))
            .unwrap()
            .split_whitespace()
            .next(),
        Some("4096")
    );
    // The first run has ended (its run future returned) before the second starts, so
    // that the restart is a restart and not a second proxy beside the first.
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the proxy stops within 10 s of its stop signal")
        .expect("the proxy task")
        .expect("the proxy's run");

    // A restart (RFC 10021 §2.6.1): the proxy continues above the reserved block, never
    // reusing a Sender Sequence Number, and treats its peers' replay windows as invalid
    // until the Echo exchange of §9, which groxy client answers by itself.
    let proxy = Proxy::bind(groxy::settings::load_file(&cfg_path).unwrap().run).unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("state/secure.ssn"))
            .unwrap()
            .split_whitespace()
            .next(),
        Some("8192")
    );
    let proxy_addr = proxy.listen_addrs()[0];
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let mut proxy = proxy;
    proxy.on_event(move |e| sink.lock().unwrap().push(e.clone()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(proxy.run(async move {
        let _ = stop_rx.await;
    }));
    let mut req = ClientRequest::get(proxy_addr, &format!("coap://{group}/hello"), 3);
    req.margin = Duration::from_millis(300);
    req.oscore = Some(client_cfg.clone());
    req.proxy_kid = Some(PROXY.to_vec());
    req.first_ssn = 100;
    let got = send(&req, |_| {}).await.unwrap();
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|r| matches!(r.oscore, Some(Ok(_)))));
    assert!(events.lock().unwrap().iter().any(|e| matches!(
        e,
        Event::Rejected {
            reason: groxy::proxy::RejectReason::EchoChallenge,
            code: 0x81,
            ..
        }
    )));
    let _ = stop_tx.send(());
    let _ = std::fs::remove_dir_all(&dir);
}
