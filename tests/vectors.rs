//! Every vector in tests/vectors/ reproduced byte for byte: RFC 8613 Appendix C, the Group
//! OSCORE message vectors (RFC 10021 = draft-28), Californium's key-derivation and ECDH
//! vectors. The §4.3 option examples are unit tests of `oscore::option`.

use groxy::oscore::aad::{self, GroupAad, RequestIds, TbsForm};
use groxy::oscore::alg::SigAlg;
use groxy::oscore::cred::{Credential, PrivateKey};
use groxy::oscore::{ContextConfig, Mode, OscoreError, SecurityContext, derive};
use serde_json::Value;

fn load(name: &str) -> Value {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn h(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap_or_else(|| panic!("not a string: {v}"))).unwrap()
}

// ---------- RFC 8613 Appendix C ----------

fn c_vec(id: &str) -> Value {
    load("rfc8613-appendix-C.json")["vectors"][id].clone()
}

fn plain_ctx(v: &Value) -> SecurityContext {
    let cfg = ContextConfig {
        master_secret: h(&v["Master Secret"]),
        master_salt: v.get("Master Salt").map(h).unwrap_or_default(),
        id_context: v.get("ID Context").map(h),
        alg_aead: Some(10),
        sender_id: h(&v["Sender ID"]),
        recipients: vec![(h(&v["Recipient ID"]), vec![])],
        ..Default::default()
    };
    SecurityContext::new(&cfg).unwrap()
}

#[test]
fn rfc8613_c1_to_c3_key_derivation() {
    for id in ["C.1.1", "C.1.2", "C.2.1", "C.2.2", "C.3.1", "C.3.2"] {
        let v = c_vec(id);
        let ctx = plain_ctx(&v);
        let sid = h(&v["Sender ID"]);
        let rid = h(&v["Recipient ID"]);
        let idc = v.get("ID Context").map(h);
        assert_eq!(
            derive::info(&sid, idc.as_deref(), 10, "Key", 16),
            h(&v["info (for Sender Key)"]),
            "{id}"
        );
        assert_eq!(
            derive::info(&[], idc.as_deref(), 10, "IV", 13),
            h(&v["info (for Common IV)"]),
            "{id}"
        );
        assert_eq!(*ctx.sender.key, h(&v["Sender Key"]), "{id} sender key");
        assert_eq!(
            *ctx.recipients[&rid].key,
            h(&v["Recipient Key"]),
            "{id} recipient key"
        );
        assert_eq!(ctx.common.common_iv, h(&v["Common IV"]), "{id} common IV");
        let alg = ctx.common.key_alg;
        let mut n = [0u8; 13];
        ctx.common.nonce(alg, &sid, &[0], &mut n);
        assert_eq!(n.to_vec(), h(&v["sender nonce"]), "{id} sender nonce");
        ctx.common.nonce(alg, &rid, &[0], &mut n);
        assert_eq!(n.to_vec(), h(&v["recipient nonce"]), "{id} recipient nonce");
    }
}

#[test]
fn rfc8613_c4_to_c6_requests() {
    for (id, keys, server_keys) in [
        ("C.4", "C.1.1", "C.1.2"),
        ("C.5", "C.2.1", "C.2.2"),
        ("C.6", "C.3.1", "C.3.2"),
    ] {
        let v = c_vec(id);
        let mut client = plain_ctx(&c_vec(keys));
        client.sender.ssn = v["Sender Sequence Number"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let (protected, _) = client
            .protect_request(&h(&v["unprotected_request"]), Mode::Pairwise, None)
            .unwrap();
        assert_eq!(
            hex::encode(&protected),
            v["Protected CoAP request (OSCORE message)"]
                .as_str()
                .unwrap(),
            "{id}"
        );
        // And the server of the same key set reads it back.
        let mut server = plain_ctx(&c_vec(server_keys));
        let (plain, _) = server.unprotect_request(&protected).unwrap();
        assert_eq!(plain, h(&v["unprotected_request"]), "{id} unprotect");
        // RFC 8613 §7.4: the same request again is a replay.
        assert_eq!(
            server.unprotect_request(&protected).err(),
            Some(OscoreError::Replay)
        );
    }
}

#[test]
fn rfc8613_c7_c8_responses() {
    let req = c_vec("C.4");
    for (id, fresh_piv) in [("C.7", false), ("C.8", true)] {
        let v = c_vec(id);
        let mut client = plain_ctx(&c_vec("C.1.1"));
        client.sender.ssn = 20;
        let (protected_req, mut client_ex) = client
            .protect_request(&h(&req["unprotected_request"]), Mode::Pairwise, None)
            .unwrap();
        let mut server = plain_ctx(&c_vec("C.1.2"));
        let (_, mut ex) = server.unprotect_request(&protected_req).unwrap();
        let resp = server
            .protect_response(
                &h(&v["unprotected_response"]),
                &mut ex,
                Mode::Pairwise,
                fresh_piv,
            )
            .unwrap();
        assert_eq!(
            hex::encode(&resp),
            v["Protected CoAP response (OSCORE message)"]
                .as_str()
                .unwrap(),
            "{id}"
        );
        let (plain, info) = client.unprotect_response(&resp, &mut client_ex).unwrap();
        assert_eq!(plain, h(&v["unprotected_response"]), "{id}");
        assert_eq!(info.piv, fresh_piv.then_some(0));
    }
}

// ---------- Group OSCORE message vectors ----------

struct Group {
    v: Value,
}

impl Group {
    fn new() -> Self {
        Group {
            v: load("group-oscore-rfc10021-messages.json"),
        }
    }
    fn cfg(&self, me: &str, peer: &str) -> ContextConfig {
        let c = &self.v["common_context"];
        ContextConfig {
            master_secret: h(&c["master_secret"]),
            master_salt: h(&c["master_salt"]),
            id_context: Some(h(&c["id_context_gid"])),
            alg_aead: Some(10),
            alg_group_enc: Some(10),
            alg_signature: Some(-8),
            alg_pairwise_key_agreement: Some(-27),
            gm_cred: Some(h(&c["group_manager"]["auth_cred_ccs"])),
            sender_id: h(&self.v[me]["sender_id"]),
            private_key: Some(h(&self.v[me]["ed25519_private"])),
            sender_cred: Some(h(&self.v[me]["auth_cred_ccs"])),
            recipients: vec![(
                h(&self.v[peer]["sender_id"]),
                h(&self.v[peer]["auth_cred_ccs"]),
            )],
            tbs_form: TbsForm::FiveElement,
            key_generation: 0,
        }
    }
    fn ctx(&self, me: &str, peer: &str) -> SecurityContext {
        SecurityContext::new(&self.cfg(me, peer)).unwrap()
    }
    fn msg(&self, name: &str) -> &Value {
        &self.v["messages"][name]
    }
}

#[test]
fn rfc10021_s2_common_context_and_keys() {
    let g = Group::new();
    let c = &g.v["common_context"];
    let client = g.ctx("client", "server");
    let gp = client.group().unwrap();
    assert_eq!(client.common.common_iv, h(&c["common_iv"]));
    assert_eq!(
        gp.sig_enc_key.clone().unwrap(),
        h(&c["signature_encryption_key"])
    );
    assert_eq!(
        derive::info(&[], Some(&h(&c["id_context_gid"])), 10, "SEKey", 16),
        h(&c["signature_encryption_key_info"])
    );
    assert_eq!(*client.sender.key, h(&g.v["client"]["sender_key"]));
    assert_eq!(
        *client.recipients[&h(&g.v["server"]["sender_id"])].key,
        h(&g.v["server"]["sender_key"])
    );
    // The algorithms element of external_aad: [10, 10, -8, -27].
    assert_eq!(hex::encode(&client.common.algs_cbor), "840a0a27381a");
}

#[test]
fn rfc10021_s2_5_pairwise_keys_and_x25519_map() {
    let g = Group::new();
    let client_key =
        PrivateKey::from_bytes(SigAlg::EdDsa, &h(&g.v["client"]["ed25519_private"])).unwrap();
    let server_cred = Credential::from_ccs(&h(&g.v["server"]["auth_cred_ccs"])).unwrap();
    let client_cred = Credential::from_ccs(&h(&g.v["client"]["auth_cred_ccs"])).unwrap();
    let shared = client_key.ecdh(server_cred.public_key()).unwrap();
    assert_eq!(
        shared.to_vec(),
        h(&g.v["pairwise"]["shared_secret (X25519)"])
    );
    // §2.5.2.1 map of the Ed25519 public key to X25519.
    match server_cred.public_key() {
        groxy::oscore::cred::PublicKey::Ed25519(vk) => {
            assert_eq!(
                vk.to_montgomery().to_bytes().to_vec(),
                h(&g.v["server"]["x25519_public"])
            )
        }
        _ => unreachable!(),
    }
    let psk = derive::pairwise_key(
        &h(&g.v["client"]["sender_key"]),
        client_cred.bytes(),
        server_cred.bytes(),
        &shared,
        &h(&g.v["client"]["sender_key_info"]),
        16,
    );
    assert_eq!(
        psk,
        h(&g.v["pairwise"]["client_pairwise_sender_key_for_server"])
    );
    let server_key =
        PrivateKey::from_bytes(SigAlg::EdDsa, &h(&g.v["server"]["ed25519_private"])).unwrap();
    let shared2 = server_key.ecdh(client_cred.public_key()).unwrap();
    assert_eq!(shared, shared2);
    let ssk = derive::pairwise_key(
        &h(&g.v["server"]["sender_key"]),
        server_cred.bytes(),
        client_cred.bytes(),
        &shared2,
        &h(&g.v["server"]["sender_key_info"]),
        16,
    );
    assert_eq!(
        ssk,
        h(&g.v["pairwise"]["server_pairwise_sender_key_for_client"])
    );
}

#[test]
fn rfc10021_s3_s4_intermediate_values_of_m1() {
    let g = Group::new();
    let m = g.msg("M1_group_request");
    let client = g.ctx("client", "server");
    let gid = h(&g.v["common_context"]["id_context_gid"]);
    let mut ext = Vec::new();
    aad::external_aad(
        &mut ext,
        &client.common.algs_cbor,
        RequestIds {
            kid: &[0x25],
            piv: &[5],
            kid_context: &gid,
        },
        Some(GroupAad {
            oscore_option: &h(&m["oscore_option"]),
            sender_cred: &h(&g.v["client"]["auth_cred_ccs"]),
            gm_cred: &h(&g.v["common_context"]["group_manager"]["auth_cred_ccs"]),
        }),
    );
    assert_eq!(ext, h(&m["aad_array_cbor (= external_aad bytes)"]));
    let mut enc = Vec::new();
    aad::enc_structure(&mut enc, &ext);
    assert_eq!(enc, h(&m["AAD (Enc_structure)"]));
    let mut n = [0u8; 13];
    client
        .common
        .nonce(client.common.key_alg, &[0x25], &[5], &mut n);
    assert_eq!(n.to_vec(), h(&m["nonce"]));
    let mut tbs = Vec::new();
    aad::to_be_signed(&mut tbs, TbsForm::FiveElement, &ext, &h(&m["ciphertext"]));
    assert_eq!(tbs, h(&m["ToBeSigned (5-element, as aiocoap/Californium)"]));
    let key = PrivateKey::from_bytes(SigAlg::EdDsa, &h(&g.v["client"]["ed25519_private"])).unwrap();
    assert_eq!(key.sign(&tbs).to_vec(), h(&m["signature"]));
    let alt = &m["ALTERNATIVE_NOT_USED_BY_IMPLEMENTATIONS"];
    let mut tbs4 = Vec::new();
    aad::to_be_signed(&mut tbs4, TbsForm::FourElement, &ext, &h(&m["ciphertext"]));
    assert_eq!(
        tbs4,
        h(&alt["ToBeSigned (4-element, literal RFC 9338 s3.3 reading)"])
    );
    assert_eq!(key.sign(&tbs4).to_vec(), h(&alt["signature"]));
    let mut ks = [0u8; 64];
    derive::keystream(
        &h(&g.v["common_context"]["signature_encryption_key"]),
        &[5],
        &[0x25],
        &gid,
        true,
        &mut ks,
    );
    assert_eq!(ks.to_vec(), h(&m["keystream"]));
}

#[test]
fn rfc10021_s7_group_request_m1_and_pairwise_request_p1() {
    let g = Group::new();
    for (name, mode, ssn) in [
        ("M1_group_request", Mode::Group, 5),
        ("P1_pairwise_request", Mode::Pairwise, 6),
    ] {
        let m = g.msg(name);
        let mut client = g.ctx("client", "server");
        client.sender.ssn = ssn;
        let (p, ex) = client
            .protect_request(&h(&m["unprotected_coap"]), mode, Some(&[0x52]))
            .unwrap();
        assert_eq!(
            hex::encode(&p),
            m["protected_coap"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(ex.piv, vec![ssn as u8]);
        let mut server = g.ctx("server", "client");
        let (plain, sex) = server.unprotect_request(&p).unwrap();
        assert_eq!(plain, h(&m["unprotected_coap"]), "{name}");
        assert_eq!(sex.mode, mode);
        assert_eq!(sex.kid, vec![0x25]);
    }
}

#[test]
fn rfc10021_s7_3_s8_5_responses_a1_a2_b1_b2() {
    let g = Group::new();
    let m1 = g.msg("M1_group_request");
    // Each scenario starts from a fresh server (SSN 0), as the vectors were computed.
    for (first, second, mode) in [
        (
            "A1_group_response_first_no_piv",
            "A2_group_response_second_piv0",
            Mode::Group,
        ),
        (
            "B1_pairwise_response_first_no_piv",
            "B2_pairwise_response_second_piv0",
            Mode::Pairwise,
        ),
    ] {
        for (name, fresh) in [(first, false), (second, true)] {
            let r = g.msg(name);
            let mut client = g.ctx("client", "server");
            client.sender.ssn = 5;
            let (req, mut cex) = client
                .protect_request(&h(&m1["unprotected_coap"]), Mode::Group, None)
                .unwrap();
            let mut server = g.ctx("server", "client");
            let (_, mut sex) = server.unprotect_request(&req).unwrap();
            let resp = server
                .protect_response(&h(&r["unprotected_coap"]), &mut sex, mode, fresh)
                .unwrap();
            assert_eq!(
                hex::encode(&resp),
                r["protected_coap"].as_str().unwrap(),
                "{name}"
            );
            let (plain, info) = client.unprotect_response(&resp, &mut cex).unwrap();
            assert_eq!(plain, h(&r["unprotected_coap"]), "{name}");
            assert_eq!(info.mode, mode);
            assert_eq!(info.server_id, vec![0x52]);
            // §5.3.1: the same response again is a replay within the exchange.
            assert_eq!(
                client.unprotect_response(&resp, &mut cex).err(),
                Some(OscoreError::Replay),
                "{name}"
            );
        }
    }
}

#[test]
fn rfc10021_s7_2_tampering_is_rejected() {
    let g = Group::new();
    let m = g.msg("M1_group_request");
    let good = h(&m["protected_coap"]);
    // A flipped bit in the encrypted signature, and in the ciphertext.
    for (at, want) in [
        (good.len() - 1, OscoreError::BadSignature),
        (14, OscoreError::BadSignature),
    ] {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        let mut server = g.ctx("server", "client");
        assert_eq!(server.unprotect_request(&bad).err(), Some(want));
        // Failed verification leaves the replay window alone: the genuine one still passes.
        server.unprotect_request(&good).unwrap();
    }
    // Four-element signatures are not what this context expects.
    let mut cfg = g.cfg("server", "client");
    cfg.tbs_form = TbsForm::FourElement;
    let mut server = SecurityContext::new(&cfg).unwrap();
    assert_eq!(
        server.unprotect_request(&good).err(),
        Some(OscoreError::BadSignature)
    );
}

// ---------- Californium key derivation and ECDH ----------

#[test]
fn californium_group_key_derivation_and_ecdh() {
    let v = load("group-oscore-californium-keyderivation-ecdh.json");
    let c = &v["common"];
    let ids = &v["ids"];
    let cfg = ContextConfig {
        master_secret: h(&c["master_secret"]),
        master_salt: h(&c["master_salt"]),
        id_context: Some(h(&c["id_context"])),
        alg_aead: Some(10),
        sender_id: h(&ids["sender_id"]),
        recipients: vec![
            (h(&ids["recipient_id_1"]), vec![]),
            (h(&ids["recipient_id_2"]), vec![]),
        ],
        ..Default::default()
    };
    let ctx = SecurityContext::new(&cfg).unwrap();
    let k = &v["expected_keys"];
    assert_eq!(*ctx.sender.key, h(&k["sender_key(id 01)"]));
    assert_eq!(
        *ctx.recipients[&h(&ids["recipient_id_1"])].key,
        h(&k["recipient_key_1(id '')"])
    );
    assert_eq!(
        *ctx.recipients[&h(&ids["recipient_id_2"])].key,
        h(&k["recipient_key_2(id aa)"])
    );

    for (curve, alg) in [
        ("eddsa_ed25519", SigAlg::EdDsa),
        ("ecdsa_p256", SigAlg::Es256),
    ] {
        let e = &v[curve];
        let me = PrivateKey::from_bytes(alg, &h(&e["sender"]["d"])).unwrap();
        for (peer, want) in [
            ("recipient1", "shared_secret(sender,recipient1)"),
            ("recipient2", "shared_secret(sender,recipient2)"),
        ] {
            let p = &e[peer];
            let pk = match alg {
                SigAlg::EdDsa => {
                    let x: [u8; 32] = h(&p["x"]).try_into().unwrap();
                    groxy::oscore::cred::PublicKey::Ed25519(
                        ed25519_dalek::VerifyingKey::from_bytes(&x).unwrap(),
                    )
                }
                SigAlg::Es256 => {
                    let mut sec1 = vec![4u8];
                    sec1.extend(h(&p["x"]));
                    sec1.extend(h(&p["y"]));
                    groxy::oscore::cred::PublicKey::P256(
                        p256::PublicKey::from_sec1_bytes(&sec1).unwrap(),
                    )
                }
            };
            // The credential route must give the same key as the raw one.
            let cred = Credential::ccs_for("peer", &pk);
            let back = Credential::from_ccs(cred.bytes()).unwrap();
            assert_eq!(
                me.ecdh(back.public_key()).unwrap().to_vec(),
                h(&e[want]),
                "{curve} {peer}"
            );
        }
    }
}
