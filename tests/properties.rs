//! Property tests of the OSCORE layer (proptest).
//!
//! 1. protect/unprotect round trips in every mode combination, for Group OSCORE contexts
//!    (RFC 10021 §7 group mode, §8 pairwise mode; first response without and later responses
//!    with a Partial IV, §5.3.1) and for plain OSCORE contexts (RFC 8613 §8).
//! 2. The OSCORE option codec (RFC 8613 §6.1, RFC 10021 §4.1).
//! 3. Nothing panics on arbitrary bytes, and tampering with what OSCORE integrity-protects
//!    is always detected (RFC 8613 §5.4, §8.2 and RFC 10021 §3.4, §7.2).
//! 4. The external signature checker (RFC 10021 §7.5) agrees with the members.
//!
//! Round-trip equality: for the messages generated here (options sorted by number, minimal
//! RFC 7252 §3.1 option encoding, no OSCORE and no Proxy-Uri option), unprotecting gives back
//! the exact input bytes. The OSCORE transformations of RFC 8613 §4.1 that could make the
//! output differ are all undone by `reassemble()` in src/oscore/protect.rs:
//! - class E options travel in the plaintext and class U options in the outer message; the
//!   receiver merges both and sorts by number, stably, and since every copy of one option
//!   number is in the same class, repeated options keep their order;
//! - Observe (class E and U, §4.1.3.5) has an inner and an outer copy; the inner one wins and
//!   the outer one is dropped, so it appears once, with its original value;
//! - the outer code (POST/FETCH, 2.04/2.05, §4.2) is replaced by the inner one;
//! - header byte 0 (version, type, token length), message ID and token are outer and copied.
//!
//! Keys: four fixed key pairs per signature algorithm are made once; everything else (Gid,
//! Master Secret and Salt, Sender IDs, algorithms, sequence numbers, messages) varies per case.
//! Failure persistence is off so that running the tests writes no files.

use std::sync::OnceLock;

use groxy::coap::options::{OSCORE, OptionClass, PROXY_URI, encode_options, oscore_class};
use groxy::coap::{MessageView, split_options};
use groxy::oscore::aad::TbsForm;
use groxy::oscore::alg::SigAlg;
use groxy::oscore::checker::{CheckedRequest, CheckedResponse};
use groxy::oscore::cred::{Credential, PrivateKey};
use groxy::oscore::option::{OscoreOption, piv_bytes};
use groxy::oscore::protect::DEFAULT_PROXY_OPTIONS;
use groxy::oscore::{
    CheckerConfig, ContextConfig, Exchange, GroupChecker, GroupMember, Mode, OscoreError,
    ResponseInfo, SecurityContext, SignatureChecker, Verdict,
};
use proptest::collection::vec as pvec;
use proptest::prelude::*;
use proptest::sample::select;

/// `cases` per property, times `GROXY_PROPTEST_SCALE` (default 1) for longer soak runs.
fn config(cases: u32) -> ProptestConfig {
    let scale = std::env::var("GROXY_PROPTEST_SCALE")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .unwrap_or(1)
        .max(1);
    ProptestConfig {
        cases: cases.saturating_mul(scale),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------- keys and contexts

/// Roles: indices into the member table and into `GroupParams::ids` (2 is a third member,
/// a recipient of both client and server).
const CLIENT: usize = 0;
const SERVER: usize = 1;
const GM: usize = 3;

struct Member {
    seed: [u8; 32],
    ccs: Vec<u8>,
}

/// Four fixed key pairs per signature algorithm, made once.
fn members(alg: SigAlg) -> &'static [Member] {
    static ED25519: OnceLock<Vec<Member>> = OnceLock::new();
    static P256: OnceLock<Vec<Member>> = OnceLock::new();
    let cell = match alg {
        SigAlg::EdDsa => &ED25519,
        SigAlg::Es256 => &P256,
    };
    cell.get_or_init(|| {
        (1..=4u8)
            .map(|i| {
                let seed = [i * 0x11; 32];
                let key = PrivateKey::from_bytes(alg, &seed).unwrap();
                let ccs = Credential::ccs_for(&format!("member {i}"), &key.public_key());
                Member {
                    seed,
                    ccs: ccs.bytes().to_vec(),
                }
            })
            .collect()
    })
}

/// A Group OSCORE group with three members (client, server, a bystander) and both modes.
#[derive(Debug, Clone)]
struct GroupParams {
    sig: SigAlg,
    alg_aead: i64,
    alg_group_enc: i64,
    tbs_form: TbsForm,
    master_secret: Vec<u8>,
    master_salt: Vec<u8>,
    gid: Vec<u8>,
    ids: [Vec<u8>; 3],
}

impl GroupParams {
    fn config(&self, me: usize) -> ContextConfig {
        let m = members(self.sig);
        ContextConfig {
            master_secret: self.master_secret.clone(),
            master_salt: self.master_salt.clone(),
            id_context: Some(self.gid.clone()),
            alg_aead: Some(self.alg_aead),
            alg_group_enc: Some(self.alg_group_enc),
            alg_signature: Some(self.sig.cose_id()),
            alg_pairwise_key_agreement: Some(-27),
            gm_cred: Some(m[GM].ccs.clone()),
            sender_id: self.ids[me].clone(),
            private_key: Some(m[me].seed.to_vec()),
            sender_cred: Some(m[me].ccs.clone()),
            recipients: (0..3)
                .filter(|&i| i != me)
                .map(|i| (self.ids[i].clone(), m[i].ccs.clone()))
                .collect(),
            tbs_form: self.tbs_form,
            ..Default::default()
        }
    }

    fn ctx(&self, me: usize) -> SecurityContext {
        SecurityContext::new(&self.config(me)).expect("valid group configuration")
    }

    /// The public material of RFC 10021 §12.3: the Signature Encryption Key itself, or the
    /// Master Secret and Salt to derive it from.
    fn checker(&self, given_sek: bool) -> SignatureChecker {
        let m = members(self.sig);
        let sek = self
            .ctx(SERVER)
            .group()
            .unwrap()
            .sig_enc_key
            .clone()
            .unwrap();
        SignatureChecker::new(&CheckerConfig {
            gid: self.gid.clone(),
            alg_aead: Some(self.alg_aead),
            alg_group_enc: self.alg_group_enc,
            alg_signature: self.sig.cose_id(),
            alg_pairwise_key_agreement: Some(-27),
            sig_enc_key: given_sek.then_some(sek),
            master_secret: (!given_sek).then(|| self.master_secret.clone()),
            master_salt: self.master_salt.clone(),
            gm_cred: m[GM].ccs.clone(),
            members: (0..3)
                .map(|i| (self.ids[i].clone(), m[i].ccs.clone()))
                .collect(),
            tbs_form: self.tbs_form,
            ..Default::default()
        })
        .expect("valid checker configuration")
    }
}

/// Sender IDs are at most nonce length - 6 bytes (RFC 10021 §2.2): 7 with AES-CCM only,
/// 6 as soon as a 12-byte-nonce algorithm (A128GCM, A128CTR) is in the group.
fn group_params() -> impl Strategy<Value = GroupParams> {
    (
        prop_oneof![3 => Just(SigAlg::EdDsa), 1 => Just(SigAlg::Es256)],
        select(vec![10i64, 1]),
        select(vec![10i64, 1, -65534]),
        prop_oneof![Just(TbsForm::FiveElement), Just(TbsForm::FourElement)],
        pvec(any::<u8>(), 1..=32),
        pvec(any::<u8>(), 0..=8),
        id_context(),
        [
            pvec(any::<u8>(), 0..=7),
            pvec(any::<u8>(), 0..=7),
            pvec(any::<u8>(), 0..=7),
        ],
    )
        .prop_map(
            |(sig, alg_aead, alg_group_enc, tbs_form, master_secret, master_salt, gid, mut ids)| {
                let max = if alg_aead == 10 && alg_group_enc == 10 {
                    7
                } else {
                    6
                };
                for id in &mut ids {
                    id.truncate(max);
                }
                GroupParams {
                    sig,
                    alg_aead,
                    alg_group_enc,
                    tbs_form,
                    master_secret,
                    master_salt,
                    gid,
                    ids,
                }
            },
        )
        .prop_filter("Sender IDs in a group are distinct", |p| {
            p.ids[0] != p.ids[1] && p.ids[0] != p.ids[2] && p.ids[1] != p.ids[2]
        })
}

/// A plain OSCORE context pair (RFC 8613 §3): no Group Manager, no keys pairs.
#[derive(Debug, Clone)]
struct PlainParams {
    alg_aead: i64,
    master_secret: Vec<u8>,
    master_salt: Vec<u8>,
    id_context: Option<Vec<u8>>,
    client_id: Vec<u8>,
    server_id: Vec<u8>,
}

impl PlainParams {
    fn config(&self, client: bool) -> ContextConfig {
        let (me, peer) = if client {
            (&self.client_id, &self.server_id)
        } else {
            (&self.server_id, &self.client_id)
        };
        ContextConfig {
            master_secret: self.master_secret.clone(),
            master_salt: self.master_salt.clone(),
            id_context: self.id_context.clone(),
            alg_aead: Some(self.alg_aead),
            sender_id: me.clone(),
            recipients: vec![(peer.clone(), vec![])],
            ..Default::default()
        }
    }

    fn ctx(&self, client: bool) -> SecurityContext {
        SecurityContext::new(&self.config(client)).expect("valid plain OSCORE configuration")
    }
}

fn plain_params() -> impl Strategy<Value = PlainParams> {
    (
        prop_oneof![3 => Just(10i64), 1 => Just(1i64)],
        pvec(any::<u8>(), 1..=32),
        pvec(any::<u8>(), 0..=8),
        proptest::option::of(id_context()),
        pvec(any::<u8>(), 0..=7),
        pvec(any::<u8>(), 0..=7),
    )
        .prop_map(
            |(alg_aead, master_secret, master_salt, id_context, mut client_id, mut server_id)| {
                let max = if alg_aead == 10 { 7 } else { 6 };
                client_id.truncate(max);
                server_id.truncate(max);
                PlainParams {
                    alg_aead,
                    master_secret,
                    master_salt,
                    id_context,
                    client_id,
                    server_id,
                }
            },
        )
        .prop_filter("distinct Sender IDs", |p| p.client_id != p.server_id)
}

/// ID Contexts (Gids): mostly short, sometimes up to the 255 bytes that the one-byte
/// length 's' of the kid context allows (RFC 8613 §6.1).
fn id_context() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![6 => pvec(any::<u8>(), 0..=8), 1 => pvec(any::<u8>(), 9..=255), 1 => pvec(any::<u8>(), 250..=255)]
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![Just(Mode::Group), Just(Mode::Pairwise)]
}

/// Sender Sequence Numbers from small to the 40-bit limit (RFC 8613 §7.2.1), so that
/// Partial IVs of 1 to 5 bytes occur; leaves room for the two responses of a server, the
/// second of which then uses the largest number, 2^40 - 1.
fn ssn() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..=300, 4 => 0u64..=(1 << 40) - 2, 1 => Just((1 << 40) - 2)]
}

// ---------------------------------------------------------------- CoAP messages

/// A CoAP message (RFC 7252 §3) with options sorted by number.
#[derive(Debug, Clone)]
struct Coap {
    mtype: u8,
    code: u8,
    mid: u16,
    token: Vec<u8>,
    options: Vec<(u16, Vec<u8>)>,
    payload: Vec<u8>,
}

impl Coap {
    fn encode(&self) -> Vec<u8> {
        let mut b = vec![0x40 | self.mtype << 4 | self.token.len() as u8, self.code];
        b.extend_from_slice(&self.mid.to_be_bytes());
        b.extend_from_slice(&self.token);
        encode_options(&mut b, self.options.iter().map(|(n, v)| (*n, v.as_slice())));
        if !self.payload.is_empty() {
            b.push(0xff);
            b.extend_from_slice(&self.payload);
        }
        b
    }
}

/// Class E: If-Match 1, ETag 4, If-None-Match 5, Location-Path 8, Uri-Path 11,
/// Content-Format 12, Max-Age 14, Uri-Query 15, Accept 17, Location-Query 20, Block2 23,
/// Block1 27, Size2 28, Size1 60, Echo 252, Request-Tag 292 and unknown 2000-3000.
/// Class U: Uri-Host 3, Uri-Port 7, Hop-Limit 16, Proxy-Scheme 39 and the groupcomm-proxy
/// options 2, 24, 248. Both: Observe 6, No-Response 258. Never OSCORE 9 or Proxy-Uri 35.
const OPTION_NUMBERS: &[u16] = &[
    1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 14, 15, 16, 17, 20, 23, 24, 27, 28, 39, 60, 248, 252, 258, 292,
];

fn option() -> impl Strategy<Value = (u16, Vec<u8>)> {
    (
        prop_oneof![4 => select(OPTION_NUMBERS), 1 => 2000u16..=3000],
        // Long values exercise the extended length encodings (RFC 7252 §3.1).
        prop_oneof![10 => pvec(any::<u8>(), 0..=12), 1 => pvec(any::<u8>(), 13..=300)],
    )
}

fn coap(
    types: impl Strategy<Value = u8>,
    codes: impl Strategy<Value = u8>,
) -> impl Strategy<Value = Coap> {
    (
        types,
        codes,
        any::<u16>(),
        pvec(any::<u8>(), 0..=8),
        pvec(option(), 0..=8),
        prop_oneof![4 => pvec(any::<u8>(), 0..=64), 1 => pvec(any::<u8>(), 65..=1024)],
    )
        .prop_map(|(mtype, code, mid, token, mut options, payload)| {
            options.sort_by_key(|o| o.0);
            Coap {
                mtype,
                code,
                mid,
                token,
                options,
                payload,
            }
        })
}

/// CON or NON requests, GET to iPATCH.
fn request() -> impl Strategy<Value = Coap> {
    coap(select(vec![0u8, 1]), 1u8..=7)
}

/// CON, NON or ACK responses of class 2, 4 or 5.
fn response() -> impl Strategy<Value = Coap> {
    coap(
        select(vec![0u8, 1, 2]),
        (select(vec![2u8, 4, 5]), 0u8..=31).prop_map(|(c, d)| c << 5 | d),
    )
}

/// The parts of a datagram a mutation rewrites: header and token, options, payload.
struct Parts {
    head: Vec<u8>,
    options: Vec<(u16, Vec<u8>)>,
    payload: Vec<u8>,
}

impl Parts {
    fn of(msg: &[u8]) -> Self {
        let v = MessageView::parse(msg).expect("well-formed");
        Parts {
            head: msg[..4 + v.token().len()].to_vec(),
            options: v.options().map(|(n, x)| (n, x.to_vec())).collect(),
            payload: v.payload().to_vec(),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = self.head.clone();
        encode_options(&mut b, self.options.iter().map(|(n, v)| (*n, v.as_slice())));
        if !self.payload.is_empty() {
            b.push(0xff);
            b.extend_from_slice(&self.payload);
        }
        b
    }
}

/// What RFC 8613 §4.1 protects end to end: the code, the class E options (the inner copies
/// of class-both ones included) and the payload.
type Content = (u8, Vec<(u16, Vec<u8>)>, Vec<u8>);

fn protected_content(msg: &[u8]) -> Content {
    let v = MessageView::parse(msg).expect("well-formed");
    let inner = v
        .options()
        .filter(|(n, _)| oscore_class(*n, &DEFAULT_PROXY_OPTIONS) != OptionClass::U)
        .map(|(n, x)| (n, x.to_vec()))
        .collect();
    (v.code(), inner, v.payload().to_vec())
}

/// RFC 8613 §4.1, §4.2: the protected message carries exactly the input's class U and
/// class-both options plus one OSCORE option, and the outer code is POST or FETCH for
/// requests (FETCH when Observe is present) and Changed or Content for responses.
fn check_outer(input: &[u8], protected: &[u8], request: bool) -> Result<(), TestCaseError> {
    let inp = Parts::of(input);
    let out = Parts::of(protected);
    let outer_expected: Vec<_> = inp
        .options
        .iter()
        .filter(|(n, _)| oscore_class(*n, &DEFAULT_PROXY_OPTIONS) != OptionClass::E)
        .cloned()
        .collect();
    let outer: Vec<_> = out
        .options
        .iter()
        .filter(|o| o.0 != OSCORE)
        .cloned()
        .collect();
    prop_assert_eq!(outer, outer_expected);
    prop_assert_eq!(out.options.iter().filter(|o| o.0 == OSCORE).count(), 1);
    let observe = inp.options.iter().any(|o| o.0 == 6);
    let code = match (request, observe) {
        (true, false) => 0x02,
        (true, true) => 0x05,
        (false, false) => 0x44,
        (false, true) => 0x45,
    };
    prop_assert_eq!(protected[1], code);
    // Version, type and token length; message ID and token: copied.
    let tkl = (input[0] & 0x0f) as usize;
    prop_assert_eq!(protected[0], input[0]);
    prop_assert_eq!(&protected[2..4 + tkl], &input[2..4 + tkl]);
    Ok(())
}

fn oscore_option_of(msg: &[u8]) -> OscoreOption<'_> {
    let v = MessageView::parse(msg).unwrap();
    OscoreOption::parse(v.option(OSCORE).unwrap()).unwrap()
}

fn piv_of(seq: u64) -> Vec<u8> {
    let (b, n) = piv_bytes(seq);
    b[..n].to_vec()
}

// ---------------------------------------------------------------- 1. round trips

proptest! {
    #![proptest_config(config(48))]

    /// RFC 10021 §7 (group mode) and §8 (pairwise mode): requests and responses in every
    /// combination of modes, the first response with or without its own Partial IV and a
    /// later one always with it (§5.3.1, RFC 8613 §8.3); A128CTR / A128GCM / AES-CCM as
    /// Group Encryption Algorithm, EdDSA and ES256 (with ECDH on P-256 for pairwise keys).
    #[test]
    fn rfc10021_s7_s8_group_context_round_trip_in_every_mode(
        p in group_params(),
        req in request(),
        resp1 in response(),
        resp2 in response(),
        req_mode in mode(),
        resp_mode in mode(),
        fresh_piv in any::<bool>(),
        client_ssn in ssn(),
        server_ssn in ssn(),
    ) {
        let mut client = p.ctx(CLIENT);
        let mut server = p.ctx(SERVER);
        client.sender.ssn = client_ssn;
        server.sender.ssn = server_ssn;
        let (client_id, server_id) = (&p.ids[CLIENT], &p.ids[SERVER]);

        let req_bytes = req.encode();
        let (protected, mut cex) = client
            .protect_request(&req_bytes, req_mode, Some(server_id))
            .unwrap();
        check_outer(&req_bytes, &protected, true)?;
        let piv = piv_of(client_ssn);
        prop_assert_eq!(
            oscore_option_of(&protected),
            OscoreOption {
                group: req_mode == Mode::Group,
                piv: Some(&piv),
                kid_context: Some(&p.gid),
                kid: Some(client_id),
            }
        );
        let (plain, mut sex) = server.unprotect_request(&protected).unwrap();
        prop_assert_eq!(&plain, &req_bytes);
        prop_assert_eq!(sex.mode, req_mode);
        prop_assert_eq!(&sex.kid, client_id);
        prop_assert_eq!(&sex.piv, &piv);
        prop_assert_eq!(&sex.kid_context, &p.gid);

        // First response: the request's nonce unless a fresh Partial IV is asked for.
        let r1 = resp1.encode();
        let prot1 = server.protect_response(&r1, &mut sex, resp_mode, fresh_piv).unwrap();
        check_outer(&r1, &prot1, false)?;
        let piv1 = fresh_piv.then(|| piv_of(server_ssn));
        prop_assert_eq!(
            oscore_option_of(&prot1),
            OscoreOption {
                group: resp_mode == Mode::Group,
                piv: piv1.as_deref(),
                kid_context: None,
                kid: Some(server_id),
            }
        );
        let (plain1, info1) = client.unprotect_response(&prot1, &mut cex).unwrap();
        prop_assert_eq!(&plain1, &r1);
        prop_assert_eq!(info1, ResponseInfo {
            mode: resp_mode,
            server_id: server_id.clone(),
            piv: fresh_piv.then_some(server_ssn),
        });

        // A later response always carries the server's next Partial IV.
        let r2 = resp2.encode();
        let prot2 = server.protect_response(&r2, &mut sex, resp_mode, false).unwrap();
        check_outer(&r2, &prot2, false)?;
        let seq2 = server_ssn + fresh_piv as u64;
        let (plain2, info2) = client.unprotect_response(&prot2, &mut cex).unwrap();
        prop_assert_eq!(&plain2, &r2);
        prop_assert_eq!(info2, ResponseInfo {
            mode: resp_mode,
            server_id: server_id.clone(),
            piv: Some(seq2),
        });
        // RFC 10021 §5.3.1: each response is accepted once.
        prop_assert_eq!(client.unprotect_response(&prot2, &mut cex).err(), Some(OscoreError::Replay));
        prop_assert_eq!(client.unprotect_response(&prot1, &mut cex).err(), Some(OscoreError::Replay));
    }

    /// RFC 8613 §8: plain OSCORE (no Group Manager, one recipient), first response with the
    /// request's nonce or its own Partial IV, and a later one with its own.
    #[test]
    fn rfc8613_s8_plain_context_round_trip(
        p in plain_params(),
        req in request(),
        resp1 in response(),
        resp2 in response(),
        fresh_piv in any::<bool>(),
        client_ssn in ssn(),
        server_ssn in ssn(),
    ) {
        let mut client = p.ctx(true);
        let mut server = p.ctx(false);
        client.sender.ssn = client_ssn;
        server.sender.ssn = server_ssn;

        let req_bytes = req.encode();
        let (protected, mut cex) = client.protect_request(&req_bytes, Mode::Pairwise, None).unwrap();
        check_outer(&req_bytes, &protected, true)?;
        let piv = piv_of(client_ssn);
        prop_assert_eq!(
            oscore_option_of(&protected),
            OscoreOption {
                group: false,
                piv: Some(&piv),
                kid_context: p.id_context.as_deref(),
                kid: Some(&p.client_id),
            }
        );
        let (plain, mut sex) = server.unprotect_request(&protected).unwrap();
        prop_assert_eq!(&plain, &req_bytes);
        prop_assert_eq!(&sex.kid, &p.client_id);

        // RFC 8613 §6.1: responses carry no kid; the first one may carry no Partial IV,
        // which makes its OSCORE option empty.
        let r1 = resp1.encode();
        let prot1 = server.protect_response(&r1, &mut sex, Mode::Pairwise, fresh_piv).unwrap();
        check_outer(&r1, &prot1, false)?;
        let piv1 = fresh_piv.then(|| piv_of(server_ssn));
        prop_assert_eq!(
            oscore_option_of(&prot1),
            OscoreOption { group: false, piv: piv1.as_deref(), kid_context: None, kid: None }
        );
        let (plain1, info1) = client.unprotect_response(&prot1, &mut cex).unwrap();
        prop_assert_eq!(&plain1, &r1);
        prop_assert_eq!(info1, ResponseInfo {
            mode: Mode::Pairwise,
            server_id: p.server_id.clone(),
            piv: fresh_piv.then_some(server_ssn),
        });

        let r2 = resp2.encode();
        let prot2 = server.protect_response(&r2, &mut sex, Mode::Pairwise, false).unwrap();
        let (plain2, info2) = client.unprotect_response(&prot2, &mut cex).unwrap();
        prop_assert_eq!(&plain2, &r2);
        prop_assert_eq!(info2.piv, Some(server_ssn + fresh_piv as u64));
    }
}

/// RFC 8613 §4.1.3.3 (as handled here): a Proxy-Uri option must be decomposed before
/// protection; protect refuses it in every context and mode and uses no sequence number.
#[test]
fn rfc8613_s4_1_3_3_proxy_uri_is_refused() {
    let mut with_proxy_uri = Vec::new();
    let req = Coap {
        mtype: 0,
        code: 1,
        mid: 7,
        token: vec![1],
        options: vec![(11, b"a".to_vec()), (PROXY_URI, b"coap://h/a".to_vec())],
        payload: vec![],
    };
    with_proxy_uri.push(req.encode());
    let resp = Coap {
        code: 0x45,
        ..req.clone()
    };
    with_proxy_uri.push(resp.encode());

    let p = fixed_group(SigAlg::EdDsa, 10);
    let plain = PlainParams {
        alg_aead: 10,
        master_secret: vec![1; 16],
        master_salt: vec![],
        id_context: None,
        client_id: vec![],
        server_id: vec![1],
    };
    let server_id = Some(&p.ids[SERVER][..]);
    let setups = [
        (p.ctx(CLIENT), p.ctx(SERVER), Mode::Group, server_id),
        (p.ctx(CLIENT), p.ctx(SERVER), Mode::Pairwise, server_id),
        (plain.ctx(true), plain.ctx(false), Mode::Pairwise, None),
    ];
    for (mut client, mut server, mode, peer) in setups {
        assert_eq!(
            client.protect_request(&with_proxy_uri[0], mode, peer).err(),
            Some(OscoreError::ProxyUriUnsupported)
        );
        assert_eq!(
            client.sender.ssn, 0,
            "no sequence number spent on a refused request"
        );
        let good = Coap {
            options: vec![(11, b"a".to_vec())],
            ..req.clone()
        };
        let (prot, _) = client.protect_request(&good.encode(), mode, peer).unwrap();
        let (_, mut ex) = server.unprotect_request(&prot).unwrap();
        for fresh_piv in [false, true] {
            assert_eq!(
                server
                    .protect_response(&with_proxy_uri[1], &mut ex, mode, fresh_piv)
                    .err(),
                Some(OscoreError::ProxyUriUnsupported)
            );
        }
        assert_eq!(server.sender.ssn, 0);
        assert_eq!(ex.responses_sent, 0);
    }
}

/// RFC 8613 §6.1: the kid context is preceded by its one-byte length 's', so an ID Context
/// (a Gid) longer than 255 bytes cannot be sent. A context with one must be refused, at
/// configuration or at protection, rather than emit an OSCORE option whose length byte
/// wrapped around (which the receiver then misparses).
#[test]
fn rfc8613_s6_1_id_context_longer_than_255_bytes_is_refused() {
    let req = [0x40, 1, 0, 0];
    let mut wrong = Vec::new();
    for n in [256usize, 300, 511] {
        let plain = PlainParams {
            alg_aead: 10,
            master_secret: vec![1; 16],
            master_salt: vec![],
            id_context: Some(vec![0xab; n]),
            client_id: vec![1],
            server_id: vec![2],
        };
        if let Ok(mut c) = SecurityContext::new(&plain.config(true))
            && let Ok((msg, _)) = c.protect_request(&req, Mode::Pairwise, None)
        {
            let back = plain.ctx(false).unprotect_request(&msg).map(|_| ());
            wrong.push(format!(
                "plain ID Context of {n} bytes: protected, receiver says {back:?}"
            ));
        }
        let group = GroupParams {
            gid: vec![0xab; n],
            ..fixed_group(SigAlg::EdDsa, 10)
        };
        if let Ok(mut c) = SecurityContext::new(&group.config(CLIENT))
            && let Ok((msg, _)) = c.protect_request(&req, Mode::Group, None)
        {
            let back = group.ctx(SERVER).unprotect_request(&msg).map(|_| ());
            wrong.push(format!(
                "Gid of {n} bytes: protected, receiver says {back:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "over-long ID Contexts accepted:\n{}",
        wrong.join("\n")
    );
}

// ---------------------------------------------------------------- 2. the OSCORE option

/// Sequence numbers whose minimal Partial IV has each length from 1 to 5 bytes.
fn seq_any_piv_len() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..=0xff,
        0x100u64..=0xffff,
        0x1_0000u64..=0xff_ffff,
        0x100_0000u64..=0xffff_ffff,
        0x1_0000_0000u64..=0xff_ffff_ffff,
    ]
}

/// Option values that are mostly well-formed or nearly so: flag bytes without the reserved
/// bits, followed by random bytes.
fn option_value_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        pvec(any::<u8>(), 0..=40),
        (0u8..0x40, pvec(any::<u8>(), 0..=40)).prop_map(|(f, mut rest)| {
            rest.insert(0, f);
            rest
        }),
    ]
}

proptest! {
    #![proptest_config(config(512))]

    /// RFC 8613 §6.1, RFC 10021 §4.1: encode then parse gives the same option, for minimal
    /// Partial IVs of 1 to 5 bytes, kid contexts of 0 to 255 bytes and kids of 0 to 7 bytes.
    #[test]
    fn rfc8613_s6_1_option_encode_parse_round_trip(
        group in any::<bool>(),
        seq in proptest::option::of(seq_any_piv_len()),
        kid_context in proptest::option::of(pvec(any::<u8>(), 0..=255)),
        kid in proptest::option::of(pvec(any::<u8>(), 0..=7)),
    ) {
        let piv = seq.map(piv_of);
        if let (Some(s), Some(p)) = (seq, &piv) {
            // Minimal: no leading zero byte, except the single zero byte of 0.
            let want = (1..=5).find(|&n| s < 1u64 << (8 * n)).unwrap();
            prop_assert_eq!(p.len(), want);
        }
        let o = OscoreOption {
            group,
            piv: piv.as_deref(),
            kid_context: kid_context.as_deref(),
            kid: kid.as_deref(),
        };
        let enc = o.encode();
        let absent = !group && piv.is_none() && kid_context.is_none() && kid.is_none();
        // All flags zero: the option value is empty (RFC 8613 §6.1).
        prop_assert_eq!(enc.is_empty(), absent);
        prop_assert_eq!(OscoreOption::parse(&enc).unwrap(), o);
    }

    /// RFC 8613 §6.1: parsing is total on arbitrary bytes, and every accepted value is the
    /// encoding of what it parsed to (no second encoding of the same fields).
    #[test]
    fn rfc8613_s6_1_option_parse_is_total_and_canonical(bytes in option_value_bytes()) {
        if let Ok(o) = OscoreOption::parse(&bytes) {
            prop_assert_eq!(o.encode(), bytes);
        }
    }
}

// ---------------------------------------------------------------- 3. no panics, tampering

/// Datagrams: arbitrary bytes, or a valid header and token followed by arbitrary bytes.
fn datagram() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        pvec(any::<u8>(), 0..=80),
        (0u8..=3, 0u8..=8, any::<u8>(), pvec(any::<u8>(), 0..=120)).prop_map(
            |(t, tkl, code, rest)| {
                let mut b = vec![0x40 | t << 4 | tkl, code, 0x12, 0x34];
                b.extend(rest);
                b
            }
        ),
    ]
}

/// A choice between the real value and an arbitrary one, so that fuzzed messages get past
/// the lookups into signature verification and decryption.
#[derive(Debug, Clone)]
enum Pick {
    Known(usize),
    Random(Vec<u8>),
    Absent,
}

fn pick(max_len: usize) -> impl Strategy<Value = Pick> {
    prop_oneof![
        4 => (0usize..3).prop_map(Pick::Known),
        1 => pvec(any::<u8>(), 0..=max_len).prop_map(Pick::Random),
        1 => Just(Pick::Absent),
    ]
}

/// A CoAP message with an OSCORE option that is structurally plausible (or a raw value)
/// and a random payload, long enough to reach countersignature verification.
#[derive(Debug, Clone)]
struct Forged {
    base: Coap,
    group: bool,
    piv: Vec<u8>,
    kid: Pick,
    kid_context: Pick,
    raw_value: Option<Vec<u8>>,
}

fn forged() -> impl Strategy<Value = Forged> {
    (
        coap(0u8..=3, any::<u8>()),
        any::<bool>(),
        pvec(any::<u8>(), 0..=5),
        pick(9),
        pick(10),
        proptest::option::weighted(0.2, option_value_bytes()),
        prop_oneof![pvec(any::<u8>(), 0..=32), pvec(any::<u8>(), 60..=200)],
    )
        .prop_map(
            |(mut base, group, piv, kid, kid_context, raw_value, payload)| {
                base.payload = payload;
                Forged {
                    base,
                    group,
                    piv,
                    kid,
                    kid_context,
                    raw_value,
                }
            },
        )
}

impl Forged {
    fn encode(&self, ids: &[&[u8]], gid: Option<&[u8]>) -> Vec<u8> {
        let resolve = |p: &Pick, known: &dyn Fn(usize) -> Option<Vec<u8>>| match p {
            Pick::Known(i) => known(*i),
            Pick::Random(v) => Some(v.clone()),
            Pick::Absent => None,
        };
        let kid = resolve(&self.kid, &|i| Some(ids[i % ids.len()].to_vec()));
        let kid_context = resolve(&self.kid_context, &|_| gid.map(<[u8]>::to_vec));
        let value = match &self.raw_value {
            Some(v) => v.clone(),
            None => OscoreOption {
                group: self.group,
                piv: (!self.piv.is_empty()).then_some(&self.piv[..]),
                kid_context: kid_context.as_deref(),
                kid: kid.as_deref(),
            }
            .encode(),
        };
        let mut m = self.base.clone();
        m.options.push((OSCORE, value));
        m.options.sort_by_key(|o| o.0);
        m.encode()
    }
}

/// A verified group request from the client of `p`, and what the checker made of it.
fn real_request(p: &GroupParams, mode: Mode) -> (Vec<u8>, Exchange, CheckedRequest) {
    let mut client = p.ctx(CLIENT);
    let req = Coap {
        mtype: 1,
        code: 1,
        mid: 1,
        token: vec![7],
        options: vec![(11, b"r".to_vec())],
        payload: vec![],
    };
    let (msg, ex) = client
        .protect_request(&req.encode(), mode, Some(&p.ids[SERVER]))
        .unwrap();
    let checked = CheckedRequest {
        kid: ex.kid.clone(),
        piv: ex.piv.clone(),
        kid_context: ex.kid_context.clone(),
        seq: 0,
    };
    (msg, ex, checked)
}

fn fixed_group(sig: SigAlg, alg_group_enc: i64) -> GroupParams {
    GroupParams {
        sig,
        alg_aead: 10,
        alg_group_enc,
        tbs_form: TbsForm::FiveElement,
        master_secret: b"property secret".to_vec(),
        master_salt: vec![0x9e; 8],
        gid: b"Gid".to_vec(),
        ids: [vec![0x25], vec![0x52], vec![]],
    }
}

proptest! {
    #![proptest_config(config(1024))]

    /// RFC 7252 §3: parsing is total, and a parsed message re-encodes to the same bytes
    /// (option delta and length encodings are unique, so the format is canonical).
    #[test]
    fn rfc7252_s3_view_and_split_are_total_and_canonical(bytes in datagram()) {
        if let Ok(v) = MessageView::parse(&bytes) {
            let _ = (v.mtype(), v.code(), v.message_id(), v.is_request(), v.is_response());
            let _ = v.option(OSCORE);
            let mut b = bytes[..4 + v.token().len()].to_vec();
            encode_options(&mut b, v.options());
            if !v.payload().is_empty() {
                b.push(0xff);
                b.extend_from_slice(v.payload());
            }
            prop_assert_eq!(&b, &bytes);
        }
        if let Ok((opts, payload)) = split_options(&bytes) {
            let mut b = Vec::new();
            encode_options(&mut b, opts);
            if !payload.is_empty() {
                b.push(0xff);
                b.extend_from_slice(payload);
            }
            prop_assert_eq!(&b, &bytes);
        }
    }

    /// RFC 10021 §2.4: credential parsing is total on arbitrary bytes and on mutations of
    /// real CCSs (Ed25519 and P-256).
    #[test]
    fn rfc10021_s2_4_credential_parsing_is_total(
        bytes in pvec(any::<u8>(), 0..=160),
        es256 in any::<bool>(),
        m in mutation(),
    ) {
        let _ = Credential::from_ccs(&bytes);
        let alg = if es256 { SigAlg::Es256 } else { SigAlg::EdDsa };
        let mut ccs = members(alg)[0].ccs.clone();
        prop_assert!(Credential::from_ccs(&ccs).is_ok());
        m.apply(&mut ccs);
        let _ = Credential::from_ccs(&ccs);
    }
}

proptest! {
    #![proptest_config(config(256))]

    /// RFC 10021 §7.2, §7.4, §7.5 and RFC 8613 §8.2, §8.4: receivers and the checker never
    /// panic on arbitrary or forged datagrams, and nothing forged verifies.
    #[test]
    fn rfc10021_s7_receivers_never_panic_on_forged_datagrams(
        raw in datagram(),
        f in forged(),
        ctr in any::<bool>(),
    ) {
        let p = fixed_group(SigAlg::EdDsa, if ctr { -65534 } else { 10 });
        let ids: Vec<&[u8]> = p.ids.iter().map(Vec::as_slice).collect();
        let forged = f.encode(&ids, Some(&p.gid));
        let (_, ex, checked) = real_request(&p, Mode::Group);
        let mut server = p.ctx(SERVER);
        let mut client = p.ctx(CLIENT);
        let checker = p.checker(false);
        let mut group_checker = GroupChecker::new(p.checker(true));
        let mut member = GroupMember::new(p.ctx(CLIENT));
        for msg in [&raw, &forged] {
            prop_assert!(server.unprotect_request(msg).is_err());
            prop_assert!(client.unprotect_response(msg, &mut ex.clone()).is_err());
            prop_assert!(member.unprotect_request(msg).is_err());
            prop_assert!(member.unprotect_response(msg, &mut ex.clone()).is_err());
            let r = checker.check_request(msg);
            prop_assert!(!matches!(r, Ok(Verdict::Verified(_))), "{:?}", r);
            let r = group_checker.admit_request(msg);
            prop_assert!(!matches!(r, Ok(Verdict::Verified(_))), "{:?}", r);
            for hint in [None, Some(&p.ids[SERVER][..])] {
                let r = checker.check_response(msg, &checked, hint);
                prop_assert!(!matches!(r, Ok(Verdict::Verified(_))), "{:?}", r);
                let r = group_checker.check_response(msg, &checked, hint);
                prop_assert!(!matches!(r, Ok(Verdict::Verified(_))), "{:?}", r);
            }
        }
    }

    /// RFC 8613 §8.1, §8.3 (protect): never panics; a malformed datagram is a CoAP format
    /// error, one with an OSCORE or Proxy-Uri option is refused, and every other well-formed
    /// message is protected, as request and as response, in both modes.
    #[test]
    fn rfc8613_s8_1_s8_3_protect_is_total(
        raw in datagram(),
        msg in coap(0u8..=3, any::<u8>()),
        mode in mode(),
        fresh_piv in any::<bool>(),
    ) {
        let p = fixed_group(SigAlg::EdDsa, 10);
        let mut client = p.ctx(CLIENT);
        let mut server = p.ctx(SERVER);
        let (req, _, _) = real_request(&p, mode);
        let (_, mut ex) = server.unprotect_request(&req).unwrap();
        for m in [raw, msg.encode()] {
            let r1 = client.protect_request(&m, mode, Some(&p.ids[SERVER])).map(|x| x.0);
            let r2 = server.protect_response(&m, &mut ex, mode, fresh_piv);
            for r in [r1, r2] {
                match MessageView::parse(&m) {
                    Err(e) => prop_assert_eq!(r.err(), Some(OscoreError::Coap(e))),
                    Ok(v) if v.options().any(|(n, _)| n == OSCORE || n == PROXY_URI) => {
                        prop_assert!(r.is_err())
                    }
                    Ok(_) => prop_assert!(r.is_ok(), "{:?}", r),
                }
            }
        }
    }

    /// RFC 8613 §8.2, §8.4: the same for a plain OSCORE context.
    #[test]
    fn rfc8613_s8_plain_receivers_never_panic_on_forged_datagrams(
        raw in datagram(),
        f in forged(),
        id_context in proptest::option::of(pvec(any::<u8>(), 0..=4)),
    ) {
        let p = PlainParams {
            alg_aead: 10,
            master_secret: vec![3; 16],
            master_salt: vec![],
            id_context,
            client_id: vec![],
            server_id: vec![1],
        };
        let ids = [&p.client_id[..], &p.server_id[..]];
        let forged = f.encode(&ids, p.id_context.as_deref());
        let mut client = p.ctx(true);
        let mut server = p.ctx(false);
        let (_, ex) = client.protect_request(&[0x40, 1, 0, 0], Mode::Pairwise, None).unwrap();
        for msg in [&raw, &forged] {
            prop_assert!(server.unprotect_request(msg).is_err());
            prop_assert!(client.unprotect_response(msg, &mut ex.clone()).is_err());
        }
    }
}

/// One edit of a byte string: flip a bit, truncate, or insert a byte.
#[derive(Debug, Clone, Copy)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Truncate { at: usize },
    Insert { at: usize, byte: u8 },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
    ]
}

impl Mutation {
    /// Applies the edit; false if it cannot change `b` (flip or truncate of nothing).
    fn apply(self, b: &mut Vec<u8>) -> bool {
        match self {
            Mutation::Flip { at, bit } => {
                if b.is_empty() {
                    return false;
                }
                let i = at % b.len();
                b[i] ^= 1 << bit;
            }
            Mutation::Truncate { at } => {
                if b.is_empty() {
                    return false;
                }
                b.truncate(at % b.len());
            }
            Mutation::Insert { at, byte } => b.insert(at % (b.len() + 1), byte),
        }
        true
    }
}

/// The integrity-protected fields of an OSCORE message: the OSCORE option value (it enters
/// external_aad in group contexts, RFC 10021 §3.4; in plain OSCORE its kid and Partial IV
/// enter the nonce and AAD, RFC 8613 §5.2, §5.4) and the payload (ciphertext, tag and
/// encrypted countersignature).
#[derive(Debug, Clone, Copy)]
enum Target {
    OscoreValue,
    Payload,
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![Just(Target::OscoreValue), Just(Target::Payload)]
}

/// Rewrites `msg` with one edit of the targeted field, re-encoding the option header.
fn tamper(msg: &[u8], t: Target, m: Mutation) -> Option<Vec<u8>> {
    let mut parts = Parts::of(msg);
    let field = match t {
        Target::OscoreValue => &mut parts.options.iter_mut().find(|o| o.0 == OSCORE)?.1,
        Target::Payload => &mut parts.payload,
    };
    m.apply(field).then(|| parts.encode())
}

/// Mutates anywhere in the datagram.
fn tamper_anywhere(msg: &[u8], m: Mutation) -> Vec<u8> {
    let mut b = msg.to_vec();
    m.apply(&mut b);
    b
}

/// If a message mutated outside the protected fields still verifies, what it delivers must
/// be exactly what was protected: same code, class E options and payload (RFC 8613 §4.1).
fn same_protected_content(got: &[u8], want: &[u8]) -> Result<(), TestCaseError> {
    prop_assert_eq!(protected_content(got), protected_content(want));
    Ok(())
}

proptest! {
    #![proptest_config(config(64))]

    /// RFC 10021 §7.2, §8.4 (and §3.4: the OSCORE option is in external_aad): an edited
    /// OSCORE option value or payload of a request is always rejected, and the rejection
    /// leaves the replay window alone, so the genuine request still verifies afterwards.
    #[test]
    fn rfc10021_s7_2_s8_4_tampered_group_context_request_is_rejected(
        p in group_params(),
        req in request(),
        req_mode in mode(),
        client_ssn in ssn(),
        t in target(),
        m in mutation(),
        anywhere in mutation(),
    ) {
        let mut client = p.ctx(CLIENT);
        client.sender.ssn = client_ssn;
        let req_bytes = req.encode();
        let (good, _) = client.protect_request(&req_bytes, req_mode, Some(&p.ids[SERVER])).unwrap();
        let mut server = p.ctx(SERVER);
        if let Some(bad) = tamper(&good, t, m) {
            let r = server.unprotect_request(&bad);
            prop_assert!(r.is_err(), "tampered request verified: {:?}", r.map(|x| x.0));
        }
        // Anywhere else (header, token, outer options, framing): no panic, and whatever
        // verifies delivers the protected content unchanged.
        let bad = tamper_anywhere(&good, anywhere);
        if let Ok((plain, _)) = p.ctx(SERVER).unprotect_request(&bad) {
            same_protected_content(&plain, &req_bytes)?;
        }
        let (plain, _) = server.unprotect_request(&good).unwrap();
        prop_assert_eq!(plain, req_bytes);
    }

    /// RFC 10021 §7.4, §8.6, §5.3.1: the same for responses, first (no Partial IV) or later
    /// (with one); a rejected response does not consume its Response Number.
    #[test]
    fn rfc10021_s7_4_s8_6_tampered_group_context_response_is_rejected(
        p in group_params(),
        req_mode in mode(),
        resp in response(),
        resp_mode in mode(),
        later in any::<bool>(),
        t in target(),
        m in mutation(),
        anywhere in mutation(),
    ) {
        let (req, cex, _) = real_request(&p, req_mode);
        let mut server = p.ctx(SERVER);
        let (_, mut sex) = server.unprotect_request(&req).unwrap();
        let resp_bytes = resp.encode();
        if later {
            server.protect_response(&resp_bytes, &mut sex, resp_mode, false).unwrap();
        }
        let good = server.protect_response(&resp_bytes, &mut sex, resp_mode, false).unwrap();
        let mut client = p.ctx(CLIENT);
        let mut cex = cex;
        if let Some(bad) = tamper(&good, t, m) {
            let r = client.unprotect_response(&bad, &mut cex);
            prop_assert!(r.is_err(), "tampered response verified: {:?}", r.map(|x| x.0));
        }
        if let Ok((plain, info)) = client.unprotect_response(&tamper_anywhere(&good, anywhere), &mut cex.clone()) {
            same_protected_content(&plain, &resp_bytes)?;
            prop_assert_eq!(&info.server_id, &p.ids[SERVER]);
        }
        let (plain, _) = client.unprotect_response(&good, &mut cex).unwrap();
        prop_assert_eq!(plain, resp_bytes);
    }

    /// RFC 8613 §8.2: an edited OSCORE option value or payload of a plain OSCORE request is
    /// rejected (kid and Partial IV are in the AAD and nonce, the kid context must match).
    #[test]
    fn rfc8613_s8_2_tampered_plain_request_is_rejected(
        p in plain_params(),
        req in request(),
        client_ssn in ssn(),
        t in target(),
        m in mutation(),
        anywhere in mutation(),
    ) {
        let mut client = p.ctx(true);
        client.sender.ssn = client_ssn;
        let req_bytes = req.encode();
        let (good, _) = client.protect_request(&req_bytes, Mode::Pairwise, None).unwrap();
        let mut server = p.ctx(false);
        if let Some(bad) = tamper(&good, t, m) {
            let r = server.unprotect_request(&bad);
            prop_assert!(r.is_err(), "tampered request verified: {:?}", r.map(|x| x.0));
        }
        if let Ok((plain, _)) = p.ctx(false).unprotect_request(&tamper_anywhere(&good, anywhere)) {
            same_protected_content(&plain, &req_bytes)?;
        }
        let (plain, _) = server.unprotect_request(&good).unwrap();
        prop_assert_eq!(plain, req_bytes);
    }

    /// RFC 8613 §8.4: an edited plain OSCORE response is rejected, with one exception that
    /// RFC 8613 permits. There the OSCORE option itself is not in the AAD (§5.4); only the
    /// kid and Partial IV it yields enter the nonce and AAD, and a kid is mandatory only in
    /// requests (§6.1), so a response may carry one. An edit that adds a kid equal to the
    /// server's actual Sender ID (e.g. setting the k bit with an empty remainder when that ID
    /// is empty) yields the same key, nonce and AAD, hence the same plaintext: it is accepted,
    /// but only with identical plaintext and server, and it consumes the Response Number, so
    /// the genuine copy is then a replay. (In group contexts the whole option value is in
    /// external_aad, RFC 10021 §3.4, and every edit is rejected.)
    #[test]
    fn rfc8613_s8_4_tampered_plain_response_is_rejected(
        p in plain_params(),
        resp in response(),
        fresh_piv in any::<bool>(),
        t in target(),
        m in mutation(),
        anywhere in mutation(),
    ) {
        let mut client = p.ctx(true);
        let (req, mut cex) = client.protect_request(&[0x40, 1, 0, 0], Mode::Pairwise, None).unwrap();
        let mut server = p.ctx(false);
        let (_, mut sex) = server.unprotect_request(&req).unwrap();
        let resp_bytes = resp.encode();
        let good = server.protect_response(&resp_bytes, &mut sex, Mode::Pairwise, fresh_piv).unwrap();
        if let Ok((plain, _)) = client.unprotect_response(&tamper_anywhere(&good, anywhere), &mut cex.clone()) {
            same_protected_content(&plain, &resp_bytes)?;
        }
        if let Some(bad) = tamper(&good, t, m) {
            match client.unprotect_response(&bad, &mut cex) {
                Err(_) => {}
                Ok((plain, info)) => {
                    prop_assert!(matches!(t, Target::OscoreValue));
                    prop_assert_eq!(&plain, &resp_bytes);
                    prop_assert_eq!(&info.server_id, &p.server_id);
                    prop_assert_eq!(oscore_option_of(&bad).kid, Some(&p.server_id[..]));
                    prop_assert_eq!(
                        client.unprotect_response(&good, &mut cex).err(),
                        Some(OscoreError::Replay)
                    );
                    return Ok(());
                }
            }
        }
        let (plain, _) = client.unprotect_response(&good, &mut cex).unwrap();
        prop_assert_eq!(plain, resp_bytes);
    }
}

// ---------------------------------------------------------------- 4. the external checker

proptest! {
    #![proptest_config(config(48))]

    /// RFC 10021 §7.5: the checker verifies exactly what the members verify. A group-mode
    /// request is Verified with the sender's kid, Partial IV and Gid; a pairwise one is
    /// Unverifiable (no signature, §8); a flipped payload bit is a BadSignature; the group
    /// checker admits a request once (groupcomm-proxy replay filter). Same for responses.
    #[test]
    fn rfc10021_s7_5_checker_agrees_with_members(
        p in group_params(),
        req in request(),
        resp in response(),
        req_mode in mode(),
        resp_mode in mode(),
        fresh_piv in any::<bool>(),
        client_ssn in ssn(),
        given_sek in any::<bool>(),
        flip in (any::<usize>(), 0u8..8),
    ) {
        let checker = p.checker(given_sek);
        let mut client = p.ctx(CLIENT);
        client.sender.ssn = client_ssn;
        let (msg, mut cex) = client.protect_request(&req.encode(), req_mode, Some(&p.ids[SERVER])).unwrap();
        let expected = CheckedRequest {
            kid: p.ids[CLIENT].clone(),
            piv: piv_of(client_ssn),
            kid_context: p.gid.clone(),
            seq: client_ssn,
        };
        let verdict = checker.check_request(&msg).unwrap();
        match req_mode {
            Mode::Group => prop_assert_eq!(&verdict, &Verdict::Verified(expected.clone())),
            Mode::Pairwise => prop_assert_eq!(&verdict, &Verdict::Unverifiable),
        }
        let flip_payload = |m: &[u8]| {
            let mut parts = Parts::of(m);
            let i = flip.0 % parts.payload.len();
            parts.payload[i] ^= 1 << flip.1;
            parts.encode()
        };
        let bad = flip_payload(&msg);
        match req_mode {
            Mode::Group => prop_assert_eq!(checker.check_request(&bad).err(), Some(OscoreError::BadSignature)),
            Mode::Pairwise => prop_assert_eq!(checker.check_request(&bad).unwrap(), Verdict::Unverifiable),
        }
        let mut gc = GroupChecker::new(p.checker(!given_sek));
        if req_mode == Mode::Group {
            prop_assert_eq!(gc.admit_request(&bad).err(), Some(OscoreError::BadSignature));
        }
        prop_assert_eq!(gc.admit_request(&msg).unwrap(), verdict);
        if req_mode == Mode::Group {
            prop_assert_eq!(gc.admit_request(&msg).err(), Some(OscoreError::Replay));
        }

        // The member agrees, and so does the checker on the response.
        let mut server = p.ctx(SERVER);
        let (_, mut sex) = server.unprotect_request(&msg).unwrap();
        let resp_bytes = resp.encode();
        let prot = server.protect_response(&resp_bytes, &mut sex, resp_mode, fresh_piv).unwrap();
        let verdict = checker.check_response(&prot, &expected, None).unwrap();
        match resp_mode {
            Mode::Group => prop_assert_eq!(verdict, Verdict::Verified(CheckedResponse {
                kid: p.ids[SERVER].clone(),
                piv: fresh_piv.then_some(0),
                gid: p.gid.clone(),
            })),
            Mode::Pairwise => prop_assert_eq!(verdict, Verdict::Unverifiable),
        }
        let bad = flip_payload(&prot);
        if resp_mode == Mode::Group {
            prop_assert_eq!(checker.check_response(&bad, &expected, None).err(), Some(OscoreError::BadSignature));
            prop_assert_eq!(gc.check_response(&bad, &expected, None).err(), Some(OscoreError::BadSignature));
        }
        prop_assert!(client.unprotect_response(&bad, &mut cex).is_err());
        prop_assert_eq!(client.unprotect_response(&prot, &mut cex).unwrap().0, resp_bytes);
    }
}
