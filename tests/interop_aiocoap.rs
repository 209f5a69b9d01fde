//! Live interop with aiocoap 0.4.17, the independent Group OSCORE implementation
//! (RFC 10021 §13), with keys generated for each run. Every request/response mode
//! combination is exchanged in both directions; tampered and replayed messages are
//! rejected; the external signature checker (§7.5) accepts aiocoap's group-mode requests
//! and rejects forged ones; and a real aiocoap server answers over UDP.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::{Group, Oracle, unhex};
use groxy::oscore::{GroupChecker, Mode, OscoreError, SecurityContext, SignatureChecker, Verdict};
use serde_json::json;

const CLIENT: &[u8] = &[0x0c];
const SERVER: &[u8] = &[0x5e, 0x01];

/// NON GET /hello with token 0x7a01.
const GET_HELLO: &str = "52017a017a01b568656c6c6f";
/// 2.05 Content with a text payload, token 0x7a01.
const CONTENT: &str = "62457a017a01ff6869207468657265";

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Group => "group",
        Mode::Pairwise => "pairwise",
    }
}

const COMBINATIONS: [(Mode, Mode); 4] = [
    (Mode::Group, Mode::Group),
    (Mode::Group, Mode::Pairwise),
    (Mode::Pairwise, Mode::Pairwise),
    (Mode::Pairwise, Mode::Group),
];

/// groxy protects the request and verifies the responses; aiocoap is the server.
#[test]
fn rfc10021_groxy_client_aiocoap_server_all_mode_combinations() {
    let g = Group::new(&[CLIENT, SERVER]);
    let mut client = SecurityContext::new(&g.config(CLIENT)).unwrap();
    let mut aiocoap = Oracle::start(g.aiocoap_setup(SERVER));
    for (req_mode, resp_mode) in COMBINATIONS {
        let what = format!(
            "{} request, {} response",
            mode_name(req_mode),
            mode_name(resp_mode)
        );
        let (protected, mut ex) = client
            .protect_request(&hex::decode(GET_HELLO).unwrap(), req_mode, Some(SERVER))
            .unwrap();
        let r = aiocoap.ok(json!({"op": "unprotect_request", "coap": hex::encode(&protected)}));
        assert_eq!(r["coap"].as_str().unwrap(), GET_HELLO, "{what}");
        assert_eq!(r["mode"], json!(mode_name(req_mode)), "{what}");
        assert_eq!(r["kid"], json!(hex::encode(CLIENT)), "{what}");
        let handle = r["request"].clone();
        // First response without Partial IV, second with one (RFC 10021 §5.3.1).
        for round in 0..2 {
            let resp = aiocoap.ok(json!({"op": "protect_response", "request": handle,
                "mode": mode_name(resp_mode), "coap": CONTENT}));
            let (plain, info) = client
                .unprotect_response(&unhex(&resp["coap"]), &mut ex)
                .unwrap();
            assert_eq!(hex::encode(plain), CONTENT, "{what}, response {round}");
            assert_eq!(info.mode, resp_mode, "{what}");
            assert_eq!(info.server_id, SERVER, "{what}");
            assert_eq!(info.piv.is_some(), round == 1, "{what}, response {round}");
            // The same response again is a replay within the exchange.
            assert_eq!(
                client
                    .unprotect_response(&unhex(&resp["coap"]), &mut ex)
                    .err(),
                Some(OscoreError::Replay),
                "{what}"
            );
        }
    }
}

/// aiocoap protects the request and verifies the responses; groxy is the server.
#[test]
fn rfc10021_aiocoap_client_groxy_server_all_mode_combinations() {
    let g = Group::new(&[CLIENT, SERVER]);
    let mut server = SecurityContext::new(&g.config(SERVER)).unwrap();
    let mut aiocoap = Oracle::start(g.aiocoap_setup(CLIENT));
    for (req_mode, resp_mode) in COMBINATIONS {
        let what = format!(
            "{} request, {} response",
            mode_name(req_mode),
            mode_name(resp_mode)
        );
        let r = aiocoap.ok(json!({"op": "protect_request", "mode": mode_name(req_mode),
            "peer": hex::encode(SERVER), "coap": GET_HELLO}));
        let handle = r["request"].clone();
        let (plain, mut ex) = server.unprotect_request(&unhex(&r["coap"])).unwrap();
        assert_eq!(hex::encode(plain), GET_HELLO, "{what}");
        assert_eq!(ex.mode, req_mode, "{what}");
        assert_eq!(ex.kid, CLIENT, "{what}");
        for round in 0..2 {
            let resp = server
                .protect_response(&hex::decode(CONTENT).unwrap(), &mut ex, resp_mode, false)
                .unwrap();
            let v = aiocoap.ok(json!({"op": "unprotect_response", "request": handle,
                "coap": hex::encode(&resp)}));
            assert_eq!(
                v["coap"].as_str().unwrap(),
                CONTENT,
                "{what}, response {round}"
            );
            assert_eq!(v["mode"], json!(mode_name(resp_mode)), "{what}");
            assert_eq!(v["kid"], json!(hex::encode(SERVER)), "{what}");
        }
    }
}

/// RFC 10021 §7.2, §8.4, RFC 8613 §7.4: what aiocoap sends, altered, is refused.
#[test]
fn rfc10021_s7_2_tampered_and_replayed_aiocoap_requests_are_rejected() {
    let g = Group::new(&[CLIENT, SERVER]);
    let mut aiocoap = Oracle::start(g.aiocoap_setup(CLIENT));
    for mode in [Mode::Group, Mode::Pairwise] {
        let r = aiocoap.ok(json!({"op": "protect_request", "mode": mode_name(mode),
            "peer": hex::encode(SERVER), "coap": GET_HELLO}));
        let good = unhex(&r["coap"]);
        let mut server = SecurityContext::new(&g.config(SERVER)).unwrap();
        let last = good.len() - 1;
        let ciphertext_at = good.len() - if mode == Mode::Group { 64 + 3 } else { 3 };
        let mut flipped_sig = good.clone();
        flipped_sig[last] ^= 0x80;
        let mut flipped_ct = good.clone();
        flipped_ct[ciphertext_at] ^= 0x01;
        let (want_sig, want_ct) = match mode {
            // In group mode the last 64 bytes are the encrypted signature, and the
            // signature covers the ciphertext, so both fail signature verification.
            Mode::Group => (OscoreError::BadSignature, OscoreError::BadSignature),
            Mode::Pairwise => (OscoreError::DecryptFailed, OscoreError::DecryptFailed),
        };
        assert_eq!(
            server.unprotect_request(&flipped_sig).err(),
            Some(want_sig),
            "{mode:?}"
        );
        assert_eq!(
            server.unprotect_request(&flipped_ct).err(),
            Some(want_ct),
            "{mode:?}"
        );
        // Failures left the replay window alone; the genuine request passes once.
        server.unprotect_request(&good).unwrap();
        assert_eq!(
            server.unprotect_request(&good).err(),
            Some(OscoreError::Replay),
            "{mode:?}"
        );
    }
}

/// RFC 10021 §7.5: the checker, with public material only, accepts aiocoap's group-mode
/// requests, cannot check pairwise ones, and rejects forgeries and replays.
#[test]
fn rfc10021_s7_5_checker_accepts_aiocoap_group_requests_and_rejects_forgeries() {
    let g = Group::new(&[CLIENT, SERVER]);
    let mut aiocoap = Oracle::start(g.aiocoap_setup(CLIENT));
    let checker = SignatureChecker::new(&g.checker_config()).unwrap();
    let mut filter = GroupChecker::new(SignatureChecker::new(&g.checker_config()).unwrap());

    let r = aiocoap.ok(json!({"op": "protect_request", "mode": "group", "coap": GET_HELLO}));
    let good = unhex(&r["coap"]);
    match checker.check_request(&good).unwrap() {
        Verdict::Verified(req) => assert_eq!(req.kid, CLIENT),
        Verdict::Unverifiable => panic!("group-mode request not checked"),
    }
    for at in [good.len() - 1, good.len() - 70, good.len() - 65] {
        let mut bad = good.clone();
        bad[at] ^= 0x04;
        assert_eq!(
            checker.check_request(&bad).err(),
            Some(OscoreError::BadSignature),
            "byte {at}"
        );
    }
    // A request by an outsider who knows everything public but a member's private key:
    // same Gid and kid, valid structure, signed with its own key.
    let mut forger_group = Group::new(&[CLIENT, SERVER]);
    forger_group.gid = g.gid.clone();
    forger_group.master_secret = g.master_secret.clone();
    forger_group.master_salt = g.master_salt.clone();
    forger_group.gm = g.gm.clone();
    let mut forger = SecurityContext::new(&forger_group.config(CLIENT)).unwrap();
    let (forged, _) = forger
        .protect_request(&hex::decode(GET_HELLO).unwrap(), Mode::Group, None)
        .unwrap();
    assert_eq!(
        checker.check_request(&forged).err(),
        Some(OscoreError::BadSignature)
    );
    // A wrong Gid and an unknown kid are refused before any signature work.
    let mut other = Group::new(&[CLIENT, SERVER]);
    other.gm = g.gm.clone();
    let (other_gid, _) = SecurityContext::new(&other.config(CLIENT))
        .unwrap()
        .protect_request(&hex::decode(GET_HELLO).unwrap(), Mode::Group, None)
        .unwrap();
    assert_eq!(
        checker.check_request(&other_gid).err(),
        Some(OscoreError::UnknownGid)
    );
    let mut stranger_group = Group::new(&[&[0x77], SERVER]);
    stranger_group.gid = g.gid.clone();
    let (stranger, _) = SecurityContext::new(&stranger_group.config(&[0x77]))
        .unwrap()
        .protect_request(&hex::decode(GET_HELLO).unwrap(), Mode::Group, None)
        .unwrap();
    assert_eq!(
        checker.check_request(&stranger).err(),
        Some(OscoreError::UnknownKid)
    );

    // Pairwise mode has no signature (§8): the checker says so rather than guessing.
    let p = aiocoap.ok(json!({"op": "protect_request", "mode": "pairwise",
        "peer": hex::encode(SERVER), "coap": GET_HELLO}));
    assert_eq!(
        checker.check_request(&unhex(&p["coap"])).unwrap(),
        Verdict::Unverifiable
    );

    // The replay filter admits a validly signed request once (groupcomm-proxy §10).
    assert!(matches!(
        filter.admit_request(&good).unwrap(),
        Verdict::Verified(_)
    ));
    assert_eq!(filter.admit_request(&good).err(), Some(OscoreError::Replay));
}

/// A real aiocoap server over UDP on loopback answers groxy-protected requests, in
/// pairwise mode (aiocoap's default) and in group mode, whose signature the checker
/// verifies against the request matched by token (§7.5).
#[test]
fn rfc10021_aiocoap_server_over_udp_answers_groxy_requests() {
    for response_mode in ["pairwise", "group"] {
        let g = Group::new(&[CLIENT, SERVER]);
        let dir = std::env::temp_dir().join(format!(
            "groxy-interop-{}-{response_mode}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg_path = dir.join("server.json");
        let mut cfg = g.aiocoap_setup(SERVER);
        cfg["bind"] = json!("127.0.0.1");
        cfg["port"] = json!(0);
        cfg["response_mode"] = json!(response_mode);
        let (mut child, port) = common::aiocoap_server(&cfg_path, &cfg);

        let mut client = SecurityContext::new(&g.config(CLIENT)).unwrap();
        let checker = SignatureChecker::new(&g.checker_config()).unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let (req, mut ex) = client
            .protect_request(&hex::decode(GET_HELLO).unwrap(), Mode::Group, None)
            .unwrap();
        let checked = match checker.check_request(&req).unwrap() {
            Verdict::Verified(r) => r,
            Verdict::Unverifiable => unreachable!(),
        };
        sock.send_to(&req, ("127.0.0.1", port)).unwrap();
        let mut buf = [0u8; 1500];
        let (n, _) = sock
            .recv_from(&mut buf)
            .expect("aiocoap answers within 5 s");
        let resp = &buf[..n];
        let (plain, info) = client.unprotect_response(resp, &mut ex).unwrap();
        let view = groxy::coap::MessageView::parse(&plain).unwrap();
        assert_eq!(view.code(), 0x45, "2.05 Content");
        assert_eq!(
            view.payload(),
            format!("hello from aiocoap {}", hex::encode(SERVER)).as_bytes()
        );
        assert_eq!(info.server_id, SERVER);
        let verdict = checker.check_response(resp, &checked, None).unwrap();
        match response_mode {
            "group" => {
                assert_eq!(info.mode, Mode::Group);
                assert!(matches!(verdict, Verdict::Verified(ref r) if r.kid == SERVER));
                let mut bad = resp.to_vec();
                bad[n - 1] ^= 1;
                assert_eq!(
                    checker.check_response(&bad, &checked, None).err(),
                    Some(OscoreError::BadSignature)
                );
            }
            _ => {
                assert_eq!(info.mode, Mode::Pairwise);
                assert_eq!(verdict, Verdict::Unverifiable);
            }
        }
        drop(child.stdin.take());
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
