//! `groxy demo`: one Group OSCORE exchange through the engine, printed step by step.
//! No sockets: this shows what the proxy's security layer sees and decides.

use crate::coap::MessageView;
use crate::coap::options::{self, encode_options};
use crate::oscore::alg::SigAlg;
use crate::oscore::cred::{Credential, PrivateKey};
use crate::oscore::{
    CheckerConfig, ContextConfig, Mode, OscoreError, SecurityContext, SignatureChecker, Verdict,
};

struct Identity {
    id: Vec<u8>,
    key: PrivateKey,
    cred: Credential,
}

fn identity(id: &[u8], subject: &str) -> Identity {
    let key = PrivateKey::generate(SigAlg::EdDsa);
    let cred = Credential::ccs_for(subject, &key.public_key());
    Identity {
        id: id.to_vec(),
        key,
        cred,
    }
}

fn random(n: usize) -> Result<Vec<u8>, String> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(|e| format!("randomness: {e}"))?;
    Ok(b)
}

fn member_config(
    me: &Identity,
    peer: &Identity,
    gm: &Identity,
    gid: &[u8],
    secret: &[u8],
    salt: &[u8],
) -> ContextConfig {
    ContextConfig {
        master_secret: secret.to_vec(),
        master_salt: salt.to_vec(),
        id_context: Some(gid.to_vec()),
        alg_aead: Some(10),
        alg_group_enc: Some(10),
        alg_signature: Some(-8),
        alg_pairwise_key_agreement: Some(-27),
        gm_cred: Some(gm.cred.bytes().to_vec()),
        sender_id: me.id.clone(),
        private_key: Some(me.key.to_bytes().to_vec()),
        sender_cred: Some(me.cred.bytes().to_vec()),
        recipients: vec![(peer.id.clone(), peer.cred.bytes().to_vec())],
        ..Default::default()
    }
}

/// A CoAP message: NON, token 0x4711, the given options (sorted) and payload.
fn coap(code: u8, opts: &[(u16, &[u8])], payload: &[u8]) -> Vec<u8> {
    let mut m = vec![0x52, code, 0x12, 0x34, 0x47, 0x11];
    encode_options(&mut m, opts.iter().copied());
    if !payload.is_empty() {
        m.push(0xff);
        m.extend_from_slice(payload);
    }
    m
}

fn describe(label: &str, msg: &[u8]) {
    let v = MessageView::parse(msg).expect("the demo builds well-formed messages");
    println!(
        "{label} ({} bytes, code {}.{:02}): {}",
        msg.len(),
        v.code() >> 5,
        v.code() & 0x1f,
        hex::encode(msg)
    );
}

fn err(e: OscoreError) -> String {
    e.to_string()
}

pub(crate) fn run(payload: &str) -> Result<(), String> {
    let (client_id, server_id) = (identity(&[0x01], "client"), identity(&[0x02], "device"));
    let gm = identity(&[], "group-manager");
    let (gid, secret, salt) = (random(4)?, random(16)?, random(8)?);
    let mut client = SecurityContext::new(&member_config(
        &client_id, &server_id, &gm, &gid, &secret, &salt,
    ))
    .map_err(|e| e.to_string())?;
    let mut server = SecurityContext::new(&member_config(
        &server_id, &client_id, &gm, &gid, &secret, &salt,
    ))
    .map_err(|e| e.to_string())?;
    // The checker gets public material only (RFC 10021 §12.3): no Master Secret.
    let checker = SignatureChecker::new(&CheckerConfig {
        gid: gid.clone(),
        alg_aead: Some(10),
        alg_group_enc: 10,
        alg_signature: -8,
        alg_pairwise_key_agreement: Some(-27),
        sig_enc_key: server.group().and_then(|g| g.sig_enc_key.clone()),
        gm_cred: gm.cred.bytes().to_vec(),
        members: vec![
            (client_id.id.clone(), client_id.cred.bytes().to_vec()),
            (server_id.id.clone(), server_id.cred.bytes().to_vec()),
        ],
        ..Default::default()
    })
    .map_err(|e| e.to_string())?;

    println!(
        "group {} with client 01 and device 02 (fresh keys)",
        hex::encode(&gid)
    );
    let request = coap(0x02, &[(options::URI_PATH, b"echo")], payload.as_bytes());
    describe("request, plain     ", &request);
    let (protected, mut client_ex) = client
        .protect_request(&request, Mode::Group, None)
        .map_err(err)?;
    describe("request, group mode", &protected);

    match checker.check_request(&protected).map_err(err)? {
        Verdict::Verified(r) => println!(
            "checker: countersignature of kid {} (Partial IV {}) verified without the group keys",
            hex::encode(&r.kid),
            r.seq
        ),
        Verdict::Unverifiable => return Err("checker could not check a group-mode request".into()),
    }
    let mut forged = protected.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    println!(
        "checker: the same request with one bit flipped: {}",
        checker
            .check_request(&forged)
            .err()
            .map_or("accepted (!)".into(), |e| e.to_string())
    );

    let (plain, mut server_ex) = server.unprotect_request(&protected).map_err(err)?;
    describe("device decrypted   ", &plain);
    println!(
        "device: the same request again: {}",
        server
            .unprotect_request(&protected)
            .err()
            .map_or("accepted (!)".into(), |e| e.to_string())
    );

    let view = MessageView::parse(&plain).map_err(|e| e.to_string())?;
    let response = coap(0x44, &[], view.payload());
    for mode in [Mode::Group, Mode::Pairwise] {
        let resp = server
            .protect_response(&response, &mut server_ex, mode, false)
            .map_err(err)?;
        describe(&format!("response, {mode:?} mode").to_lowercase(), &resp);
        let verdict = checker.check_response(&resp, &checker_request(&checker, &protected)?, None);
        println!(
            "checker: {}",
            match verdict {
                Ok(Verdict::Verified(_)) => "response signature verified".to_string(),
                Ok(Verdict::Unverifiable) =>
                    "pairwise mode carries no signature: relayed unchecked".into(),
                Err(e) => format!("rejected: {e}"),
            }
        );
        let (plain, info) = client
            .unprotect_response(&resp, &mut client_ex)
            .map_err(err)?;
        describe("client decrypted   ", &plain);
        println!(
            "client: from device {}, Partial IV {:?}",
            hex::encode(&info.server_id),
            info.piv
        );
    }
    Ok(())
}

fn checker_request(
    checker: &SignatureChecker,
    request: &[u8],
) -> Result<crate::oscore::checker::CheckedRequest, String> {
    match checker.check_request(request).map_err(err)? {
        Verdict::Verified(r) => Ok(r),
        Verdict::Unverifiable => Err("request not checkable".into()),
    }
}
