//! Deterministic Requests (draft-amsuess-core-cacheable-oscore-02): the Appendix F vectors
//! byte for byte, the server's checks of §3.4.3 and the client's of §3.4.4.

use groxy::oscore::ContextConfig;
use groxy::oscore::SecurityContext;
use groxy::oscore::alg::SigAlg;
use groxy::oscore::cred::{Credential, PrivateKey};
use groxy::oscore::deterministic;
use groxy::oscore::error::OscoreError;

fn h(s: &str) -> Vec<u8> {
    hex::decode(s.replace([' ', '\n'], "")).unwrap()
}

// Appendix F.1.
const SERVER_CRED: &str = "a501781a636f6170733a2f2f7365727665722e6578616d706c652e636f6d\
026673656e64657203781a636f6170733a2f2f636c69656e742e6578616d\
706c652e6f7267041a70004b4f08a101a401010327200621582077ec358c\
1d344e41ee0e87b8383d23a2099acd39bdf989ce45b52e887463389b";
const SERVER_KEY: &str = "857eb61d3f6d70a278a36740d132c099f62880ed497e27bdfd4685fa1a304f26";
const GM_CRED: &str = "a501781a636f6170733a2f2f6d79736974652e6578616d706c652e636f6d\
026c67726f75706d616e6167657203781a636f6170733a2f2f646f6d6169\
6e2e6578616d706c652e6f7267041aab9b154f08a101a401010327200621\
5820cde3efd3bc3f99c9c9ee210415c6cba55061b5046e963b8a58c9143a\
61166472";
const DET_KID: &[u8] = &[0xdc];
const SERVER_ID: &[u8] = &[0x52];
const CLIENT_ID: &[u8] = &[0x25];

// Appendix F.2.
const PLAIN_REQUEST: &str = "48019483f0aeef1c796812a0ba68656c6c6f576f726c64";
const DET_REQUEST: &str = "48059483f0aeef1c796812a096190002dd11dced010e13404b3a7c9f8c878a\
0b5246cca71e3926f0a8cebefdcabbc80e79579d5a1ee17dff65bcd5d5edf4\
13497bfdeec8975e2acafa702b45";
const REQUEST_HASH_VALUE: &str = "404b3a7c9f8c878a0b5246cca71e3926f0a8cebefdcabbc80e79579d5a1ee17d";

// Appendix F.3.
const PLAIN_RESPONSE: &str = "68459483f0aeef1c796812a0d2010e10ed010913404b3a7c9f8c878a0b5246\
cca71e3926f0a8cebefdcabbc80e79579d5a1ee17dff2e2049443a203432";
const PROTECTED_RESPONSE: &str = "68459483f0aeef1c796812a093290052520e10ffcbc7356c84c10b626fef8b\
d57ed2dfaeec175f8e44e1b291806c0fb8b26be41b9266766ee4175644dfdb\
25e58d2d777b105c06c5bade67d6262ca30712342a3275dd378a99e8f5ddfa\
5d257c5a4d77b5d681d73848ed";

fn base(sender_id: &[u8], key: Vec<u8>, cred: Vec<u8>) -> ContextConfig {
    ContextConfig {
        master_secret: h("0102030405060708090a0b0c0d0e0f10"),
        master_salt: h("9e7ca92223786340"),
        id_context: Some(h("dd11")),
        alg_aead: Some(10),
        alg_group_enc: Some(10),
        alg_signature: Some(-8),
        alg_pairwise_key_agreement: Some(-27),
        // Appendix F's Group Manager key is not a point of Ed25519, which the context
        // refuses; a valid credential stands in, its bytes replaced by F's (see `vectors`).
        gm_cred: Some(
            Credential::ccs_for("gm", &PrivateKey::generate(SigAlg::EdDsa).public_key())
                .bytes()
                .to_vec(),
        ),
        sender_id: sender_id.to_vec(),
        private_key: Some(key),
        sender_cred: Some(cred),
        ..Default::default()
    }
}

/// Appendix F's Group Manager credential, whose bytes alone enter the external_aad.
fn vectors(mut ctx: SecurityContext) -> SecurityContext {
    ctx.set_gm_cred_bytes_for_vectors(&h(GM_CRED));
    ctx
}

/// The server S of Appendix F.
fn server() -> SecurityContext {
    let mut cfg = base(SERVER_ID, h(SERVER_KEY), h(SERVER_CRED));
    let client = PrivateKey::generate(SigAlg::EdDsa);
    cfg.recipients = vec![(
        CLIENT_ID.to_vec(),
        Credential::ccs_for("client", &client.public_key())
            .bytes()
            .to_vec(),
    )];
    vectors(SecurityContext::new(&cfg).unwrap())
}

/// A client C of the group (Appendix F gives no key of its own: the deterministic request
/// uses none of the client's own material, §3.4.2).
fn client() -> SecurityContext {
    let key = PrivateKey::generate(SigAlg::EdDsa);
    let cred = Credential::ccs_for("client", &key.public_key());
    let mut cfg = base(CLIENT_ID, key.to_bytes().to_vec(), cred.bytes().to_vec());
    cfg.recipients = vec![(SERVER_ID.to_vec(), h(SERVER_CRED))];
    vectors(SecurityContext::new(&cfg).unwrap())
}

/// §3.4.1, §3.4.2 steps 1-2 and Appendix F.2: the Deterministic Client's Sender Key, the
/// aad_array and the hash over them and the plaintext.
#[test]
fn f2_sender_key_aad_array_and_hash() {
    let c = client();
    assert_eq!(
        hex::encode(&*c.deterministic_sender_key(DET_KID)),
        "761c3081b8d8329790a8b321b3b4c3a4"
    );
    let aad_array = deterministic::request_aad_array(&c, DET_KID);
    assert_eq!(
        hex::encode(&aad_array),
        hex::encode(h(
            "8901840a0a27381a41dc41004042dd1146190002dd11dc40587ca501781a\
             636f6170733a2f2f6d79736974652e6578616d706c652e636f6d026c6772\
             6f75706d616e6167657203781a636f6170733a2f2f646f6d61696e2e6578\
             616d706c652e6f7267041aab9b154f08a101a4010103272006215820cde3\
             efd3bc3f99c9c9ee210415c6cba55061b5046e963b8a58c9143a61166472"
        ))
    );
    let hash = deterministic::request_hash(
        &c.deterministic_sender_key(DET_KID),
        &aad_array,
        &h("01ba68656c6c6f576f726c64"),
    );
    assert_eq!(hex::encode(hash), REQUEST_HASH_VALUE);
}

/// §3.4.2 and Appendix F.2: the deterministic request byte for byte (FETCH, OSCORE option
/// 19 00 02 dd11 dc, Request-Hash 548 outside, the 20-byte ciphertext), and the same bytes
/// again: nothing of the client's own state enters it.
#[test]
fn f2_deterministic_request_byte_exact_and_repeatable() {
    let c = client();
    let (wire, det) = c
        .protect_deterministic_request(&h(PLAIN_REQUEST), DET_KID)
        .unwrap();
    assert_eq!(hex::encode(&wire), hex::encode(h(DET_REQUEST)));
    assert_eq!(hex::encode(&det.hash), REQUEST_HASH_VALUE);
    let (again, _) = c
        .protect_deterministic_request(&h(PLAIN_REQUEST), DET_KID)
        .unwrap();
    assert_eq!(again, wire);
    // Another member composes the same request (§3: "independently compose the same").
    let other = server();
    let (theirs, _) = other
        .protect_deterministic_request(&h(PLAIN_REQUEST), DET_KID)
        .unwrap();
    assert_eq!(theirs, wire);
}

/// §3.4.3: the server recovers the plain request of Appendix F.2 and the hash; it has no
/// replay window for it, so the same request verifies again (step 5, §6).
#[test]
fn f2_server_processing_recovers_the_request_without_replay_check() {
    let s = server();
    for _ in 0..2 {
        let (plain, det) = s
            .unprotect_deterministic_request(&h(DET_REQUEST), DET_KID)
            .unwrap();
        assert_eq!(hex::encode(&plain), PLAIN_REQUEST);
        assert_eq!(hex::encode(&det.hash), REQUEST_HASH_VALUE);
        assert_eq!(det.exchange.kid, DET_KID);
        assert_eq!(det.exchange.piv, [0]);
    }
}

/// §3.4.4 and Appendix F.3: the response byte for byte (group mode, own Partial IV 0 and
/// kid 52, Request-Hash class I and elided, outer 2.05 and Max-Age 3600), then verified by
/// the client with the Request-Hash it expects.
#[test]
fn f3_response_byte_exact_and_verified() {
    let mut s = server();
    let (_, mut det) = s
        .unprotect_deterministic_request(&h(DET_REQUEST), DET_KID)
        .unwrap();
    let wire = s
        .protect_deterministic_response(&h(PLAIN_RESPONSE), &mut det)
        .unwrap();
    assert_eq!(hex::encode(&wire), hex::encode(h(PROTECTED_RESPONSE)));

    let mut c = client();
    let (_, mut cdet) = c
        .protect_deterministic_request(&h(PLAIN_REQUEST), DET_KID)
        .unwrap();
    let (plain, info) = c
        .unprotect_deterministic_response(&wire, &mut cdet, Some(SERVER_ID))
        .unwrap();
    assert_eq!(info.server_id, SERVER_ID);
    assert_eq!(info.piv, Some(0));
    // The plain response less its Request-Hash: 2.05, Max-Age 3600, ". ID: 42".
    assert_eq!(
        hex::encode(&plain),
        "68459483f0aeef1c796812a0d2010e10ff2e2049443a203432"
    );
    // §3.4.4 / RFC 10021 §5.3.1: the same response again is a replay.
    assert!(
        c.unprotect_deterministic_response(&wire, &mut cdet, Some(SERVER_ID))
            .is_err()
    );
}

/// §3.4.3: a Request-Hash that is not the hash of the request is refused after
/// decryption would have used it (the tag fails, or, for a forged tag, the recomputed hash
/// differs): a cache cannot be poisoned with another request's hash.
#[test]
fn tampered_request_hash_and_ciphertext_are_refused() {
    let s = server();
    let good = h(DET_REQUEST);
    // The Request-Hash value starts at byte 23 (after the 4 option header bytes at 19).
    let mut bad_hash = good.clone();
    bad_hash[30] ^= 1;
    assert_eq!(
        s.unprotect_deterministic_request(&bad_hash, DET_KID)
            .unwrap_err(),
        OscoreError::DecryptFailed
    );
    let mut bad_ct = good.clone();
    *bad_ct.last_mut().unwrap() ^= 1;
    assert_eq!(
        s.unprotect_deterministic_request(&bad_ct, DET_KID)
            .unwrap_err(),
        OscoreError::DecryptFailed
    );
    // §3.4.3 step 2: under another kid it is not a deterministic request at all.
    assert!(s.unprotect_deterministic_request(&good, &[0xdd]).is_err());
}

/// §3.4.3, §6: only safe methods are composed deterministically.
#[test]
fn unsafe_method_is_not_composed() {
    let c = client();
    let mut post = h(PLAIN_REQUEST);
    post[1] = 0x02;
    assert!(c.protect_deterministic_request(&post, DET_KID).is_err());
    assert!(deterministic::is_safe_method(0x01) && deterministic::is_safe_method(0x05));
    assert!(!deterministic::is_safe_method(0x02) && !deterministic::is_safe_method(0x04));
}

/// §3.4.4 client steps 1-2 and §3.4.5: a response naming another server, carrying another
/// Request-Hash, or bound to another request is refused.
#[test]
fn response_checks_of_the_client() {
    let mut s = server();
    let (_, mut det) = s
        .unprotect_deterministic_request(&h(DET_REQUEST), DET_KID)
        .unwrap();
    let wire = s
        .protect_deterministic_response(&h(PLAIN_RESPONSE), &mut det)
        .unwrap();
    let mut c = client();
    let (_, mut cdet) = c
        .protect_deterministic_request(&h(PLAIN_REQUEST), DET_KID)
        .unwrap();
    // Step 1: the kid must be the addressed server's.
    assert!(
        c.unprotect_deterministic_response(&wire, &mut cdet, Some(&[0x53]))
            .is_err()
    );
    // Step 2: an explicit Request-Hash must equal the request's.
    let mut with_hash = wire.clone();
    let (head, tail) = with_hash.split_at(23); // up to and with the Max-Age option
    let mut other = head.to_vec();
    other.extend_from_slice(&h("ed010613"));
    other.extend_from_slice(&[0u8; 32]);
    other.extend_from_slice(tail);
    with_hash = other;
    assert!(
        c.unprotect_deterministic_response(&with_hash, &mut cdet, Some(SERVER_ID))
            .is_err()
    );
    // The same response for another request: the class I Request-Hash differs.
    let mut get_other = h(PLAIN_REQUEST);
    *get_other.last_mut().unwrap() = b'X';
    let (_, mut odet) = c
        .protect_deterministic_request(&get_other, DET_KID)
        .unwrap();
    assert!(
        c.unprotect_deterministic_response(&wire, &mut odet, Some(SERVER_ID))
            .is_err()
    );
    // And the right one still verifies.
    c.unprotect_deterministic_response(&wire, &mut cdet, Some(SERVER_ID))
        .unwrap();
}

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::{Group, ask, free_port};
use groxy::coap::MessageView;
use groxy::oscore::Mode;
use groxy::runtime::sockets::Interface;
use groxy::tools::client::{Client, ClientEvent, ClientRequest, Response};
use groxy::tools::device::{Device, DeviceConfig, Settings};

const DEV: &[u8] = &[0x0d];
const MEMBER: &[u8] = &[0x01];

/// A `groxy device` member of `g` on loopback that answers Deterministic Requests of
/// `DET_KID` (as `--deterministic-kid dc`); returns its unicast address.
fn spawn_device(g: &Group, name: &str, last_octet: u8) -> SocketAddr {
    let port = free_port();
    let bind: SocketAddr = (Ipv4Addr::new(127, 0, 0, last_octet), port).into();
    let mut d = Device::bind(DeviceConfig {
        name: name.into(),
        group: (Ipv4Addr::new(224, 0, 1, 187), port).into(),
        interface: Interface::Addr(Ipv4Addr::LOCALHOST),
        bind,
        leisure: Duration::ZERO,
        delay: Duration::ZERO,
        oscore: Some((g.config(DEV), Mode::Group)),
    })
    .unwrap();
    d.settings(Settings {
        deterministic_kid: Some(DET_KID.to_vec()),
        ..Settings::default()
    });
    tokio::spawn(d.run());
    bind
}

/// The client's one response to what it last sent, with the datagram it sent.
async fn exchange(
    c: &mut Client,
    sock: &tokio::net::UdpSocket,
    req: &ClientRequest,
) -> (Vec<u8>, Vec<u8>, Response) {
    c.request(Instant::now(), req).unwrap();
    let d = c.poll_transmit().expect("the request");
    let answer = ask(sock, d.to, &d.bytes).await;
    c.handle(Instant::now(), d.to, &answer);
    while let Some(e) = c.poll_event() {
        if let ClientEvent::Response { response, .. } = e {
            return (d.bytes, answer, response);
        }
    }
    panic!("no response reported");
}

/// cacheable-oscore §3.4.2-§3.4.4 over real sockets: `groxy client --deterministic dc`
/// (the sans-I/O client behind it) sends the same GET twice; both are the same bytes past
/// the token (options, Request-Hash and ciphertext: only the message layer's Message ID
/// and token differ, RFC 7252 §4.4, §5.3.1), FETCH outside; the device answers each in
/// group mode with its own Partial IV and an outer Max-Age, and the client verifies both.
#[tokio::test]
async fn loopback_same_get_twice_is_byte_identical_and_answers_verify() {
    let g = Group::new(&[MEMBER, DEV]);
    let dev = spawn_device(&g, "det1", 93);
    let mut req = ClientRequest::get(dev, &format!("coap://{dev}/hello"), 1);
    req.direct = true;
    req.oscore = Some(g.config(MEMBER));
    req.deterministic = Some(DET_KID.to_vec());
    let mut c = Client::for_request(&req, [7; 32]).unwrap();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (w1, a1, r1) = exchange(&mut c, &sock, &req).await;
    let (w2, a2, r2) = exchange(&mut c, &sock, &req).await;
    let (v1, v2) = (
        MessageView::parse(&w1).unwrap(),
        MessageView::parse(&w2).unwrap(),
    );
    assert_eq!(v1.code(), 0x05, "outer FETCH (§3.4.2 step 8)");
    assert_ne!(v1.token(), v2.token());
    assert_eq!(w1[4 + 8..], w2[4 + 8..], "same options and payload");
    assert_eq!(v1.option(REQUEST_HASH_NUMBER).map(<[u8]>::len), Some(32));
    for (r, a) in [(&r1, &a1), (&r2, &a2)] {
        assert_eq!(r.oscore, Some(Ok((Mode::Group, DEV.to_vec()))));
        assert_eq!(r.code, 0x45);
        assert_eq!(r.payload, b"hello from det1");
        let av = MessageView::parse(a).unwrap();
        assert_eq!(av.code(), 0x45, "outer 2.05 (§3.4.4 step 6)");
        assert_eq!(
            av.option(14),
            Some(&[60u8][..]),
            "outer Max-Age 60 (step 9)"
        );
        assert_eq!(av.option(REQUEST_HASH_NUMBER), None, "elided (step 7)");
    }
    // Each response carries the device's own Partial IV (§3.4.4 step 5): not the same bytes.
    assert_ne!(a1[4 + 8..], a2[4 + 8..]);
}

const REQUEST_HASH_NUMBER: u16 = deterministic::REQUEST_HASH;

/// §3.4.3: a Deterministic Request whose Request-Hash was altered gets an unprotected
/// 4.00 with Max-Age 0 by unicast (the recomputed hash, or the tag, fails), so that no
/// cache keeps an answer to it.
#[tokio::test]
async fn loopback_tampered_request_hash_gets_unprotected_4_00() {
    let g = Group::new(&[MEMBER, DEV]);
    let dev = spawn_device(&g, "det2", 94);
    let mut req = ClientRequest::get(dev, &format!("coap://{dev}/hello"), 1);
    req.direct = true;
    req.oscore = Some(g.config(MEMBER));
    req.deterministic = Some(DET_KID.to_vec());
    let mut c = Client::for_request(&req, [8; 32]).unwrap();
    c.request(Instant::now(), &req).unwrap();
    let mut d = c.poll_transmit().unwrap().bytes;
    // One bit of the Request-Hash value flipped.
    let hash = MessageView::parse(&d)
        .unwrap()
        .option(REQUEST_HASH_NUMBER)
        .unwrap()
        .to_vec();
    let at = d.windows(32).position(|w| w == hash).unwrap();
    d[at + 31] ^= 1;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let a = ask(&sock, dev, &d).await;
    let av = MessageView::parse(&a).unwrap();
    assert_eq!(av.code(), 0x80);
    assert_eq!(av.option(9), None, "not protected");
    assert_eq!(av.option(14), Some(&[][..]), "Max-Age 0");
}

// ---- The proxy's request filter (README "Deterministic requests") ----

use groxy::coap::build::{self, NON};
use groxy::coap::options as opt;
use groxy::proxy::{
    CheckResult, Engine, Event, GroupSecurity, Link, Policy, ProxyConfig, Transmit,
};

const PROXY_ID: &[u8] = &[0x50];
const OTHER: &[u8] = &[0x02];

struct P {
    e: Engine,
    now: Instant,
    mid: u16,
}

/// A proxy checking group 0 under `policy`, as a member of it if `member`, with the
/// Deterministic Client `det` configured (`[[group]] deterministic_kid`).
fn proxy(g: &Group, policy: Policy, member: bool, det: Option<&[u8]>) -> P {
    proxy_with(g, policy, member, det, None)
}

fn proxy_with(
    g: &Group,
    policy: Policy,
    member: bool,
    det: Option<&[u8]>,
    allow_kids: Option<Vec<Vec<u8>>>,
) -> P {
    let mut cfg = ProxyConfig::default();
    cfg.groups[0].security = Some(GroupSecurity {
        policy,
        checker: g.checker_config(),
        member: member.then(|| g.config(PROXY_ID)),
        allow_kids,
    });
    cfg.deterministic_kids = vec![det.map(<[u8]>::to_vec)];
    let now = Instant::now();
    P {
        e: Engine::new(cfg, now, 7).unwrap(),
        now,
        mid: 100,
    }
}

impl P {
    /// `protected` through the proxy to the group, the proxy options added outside.
    fn send(&mut self, protected: &[u8]) -> (Vec<Transmit>, Vec<Event>) {
        self.mid += 1;
        let v = MessageView::parse(protected).unwrap();
        let mut opts: Vec<(u16, &[u8])> = v.options().collect();
        opts.push((opt::URI_HOST, b"224.0.1.187"));
        opts.push((opt::PROXY_SCHEME, b"coap"));
        opts.push((opt::MULTICAST_TIMEOUT_DEFAULT, &[5]));
        let token = self.mid.to_be_bytes();
        let msg = build::encode(NON, v.code(), self.mid, &token, &mut opts, v.payload());
        let from: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        self.e.handle(self.now, Link::Listener(0), from, &msg);
        common::outputs(&mut self.e)
    }
}

fn multicast(tx: &[Transmit]) -> Option<&Transmit> {
    tx.iter().find(|t| t.link == Link::Group(0, 0))
}

fn results(ev: &[Event]) -> Vec<CheckResult> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Checked {
                request: true,
                result,
                ..
            } => Some(*result),
            _ => None,
        })
        .collect()
}

const GET_HELLO: &str = "5101aa01c3b568656c6c6f";

/// A Deterministic Request for GET /hello composed by `member` of `g`.
fn det_request(g: &Group, member: &[u8]) -> Vec<u8> {
    let ctx = SecurityContext::new(&g.config(member)).unwrap();
    ctx.protect_deterministic_request(&h(GET_HELLO), DET_KID)
        .unwrap()
        .0
}

/// Replaces the value of option `n` (same length) or the code of a datagram.
fn with_option(d: &[u8], n: u16, value: &[u8]) -> Vec<u8> {
    let v = MessageView::parse(d).unwrap();
    let mut opts: Vec<(u16, &[u8])> = v
        .options()
        .map(|(o, x)| if o == n { (o, value) } else { (o, x) })
        .collect();
    build::encode(
        v.mtype(),
        v.code(),
        v.message_id(),
        v.token(),
        &mut opts,
        v.payload(),
    )
}

/// README request path step 8, unchanged without `deterministic_kid`: a pairwise-mode
/// request to a group carries no signature (RFC 10021 §8) and is dropped under enforce,
/// a Deterministic Request among them.
#[test]
fn without_deterministic_kid_a_deterministic_request_is_dropped_as_unverifiable() {
    let g = Group::new(&[MEMBER, DEV]);
    let mut p = proxy(&g, Policy::Enforce, false, None);
    let (tx, ev) = p.send(&det_request(&g, MEMBER));
    assert!(multicast(&tx).is_none());
    assert_eq!(results(&ev), vec![CheckResult::Unverifiable]);
}

/// groupcomm-proxy §7.4.1, cacheable-oscore §3.4.2 and §6: with the group's
/// `deterministic_kid`, a Deterministic Request (FETCH, pairwise, that kid, Partial IV 0,
/// the Gid, a 32-byte Request-Hash) is forwarded under enforce with its OSCORE option,
/// Request-Hash and ciphertext untouched, and again when sent again: it is meant to be
/// repeated, so no replay window applies. Any member composes the same bytes.
#[test]
fn deterministic_request_is_forwarded_untouched_and_repeatedly() {
    let g = Group::new(&[MEMBER, OTHER, DEV]);
    let mut p = proxy(&g, Policy::Enforce, false, Some(DET_KID));
    let req = det_request(&g, MEMBER);
    assert_eq!(req, det_request(&g, OTHER));
    let rv = MessageView::parse(&req).unwrap();
    for _ in 0..3 {
        let (tx, ev) = p.send(&req);
        let out = multicast(&tx).expect("forwarded to the group");
        let ov = MessageView::parse(&out.bytes).unwrap();
        assert_eq!(ov.code(), 0x05);
        assert_eq!(ov.option(opt::OSCORE), rv.option(opt::OSCORE));
        assert_eq!(
            ov.option(deterministic::REQUEST_HASH),
            rv.option(deterministic::REQUEST_HASH)
        );
        assert_eq!(ov.payload(), rv.payload());
        assert_eq!(results(&ev), vec![CheckResult::Deterministic]);
    }
}

/// cacheable-oscore §3.4.2 steps 1 and 8, §3.3: what does not have a Deterministic
/// Request's form under the Deterministic Client's kid is dropped under enforce, by a proxy
/// without the group's keys too: another outer code, a Partial IV other than 0, a
/// Request-Hash of another length than SHA-256's, another Gid.
#[test]
fn malformed_deterministic_requests_are_dropped() {
    let g = Group::new(&[MEMBER, DEV]);
    let mut p = proxy(&g, Policy::Enforce, false, Some(DET_KID));
    let good = det_request(&g, MEMBER);
    let mut post = good.clone();
    post[1] = 0x02;
    let gid = g.gid.clone();
    let mut piv1 = vec![0x19, 0x01, gid.len() as u8];
    piv1.extend_from_slice(&gid);
    piv1.extend_from_slice(DET_KID);
    let short_hash = with_option(&good, deterministic::REQUEST_HASH, &[0u8; 31]);
    let mut other_gid = vec![0x19, 0x00, gid.len() as u8];
    other_gid.extend(gid.iter().map(|b| b ^ 0xff));
    other_gid.extend_from_slice(DET_KID);
    // `with_option` keeps lengths only where equal; rebuild the others whole.
    let rebuild = |oscore: &[u8]| {
        let v = MessageView::parse(&good).unwrap();
        let mut opts: Vec<(u16, &[u8])> = v
            .options()
            .map(|(o, x)| {
                if o == opt::OSCORE {
                    (o, oscore)
                } else {
                    (o, x)
                }
            })
            .collect();
        build::encode(
            v.mtype(),
            v.code(),
            v.message_id(),
            v.token(),
            &mut opts,
            v.payload(),
        )
    };
    for (bad, want) in [
        (post, CheckResult::Malformed),
        (rebuild(&piv1), CheckResult::Malformed),
        (short_hash, CheckResult::Malformed),
        (rebuild(&other_gid), CheckResult::UnknownGid),
    ] {
        let (tx, ev) = p.send(&bad);
        assert!(multicast(&tx).is_none());
        assert_eq!(results(&ev), vec![want]);
    }
    // A member's own pairwise request is no Deterministic Request: unverifiable, dropped.
    let mut ctx = SecurityContext::new(&g.config(MEMBER)).unwrap();
    let (pw, _) = ctx
        .protect_request(&h(GET_HELLO), Mode::Pairwise, Some(DEV))
        .unwrap();
    let (tx, ev) = p.send(&pw);
    assert!(multicast(&tx).is_none());
    assert_eq!(results(&ev), vec![CheckResult::Unverifiable]);
}

/// cacheable-oscore §3.4.1, §3.4.3: a proxy that is a member of the group holds the
/// Deterministic Client's Sender Key and checks the request as a server does: a
/// Request-Hash of the right length that is not the request's (a cache-poisoning attempt,
/// or a forgery by someone without the group's keys) is dropped under enforce
/// (`deterministic_invalid`) and forwarded but counted under monitor; the genuine one
/// passes. A proxy without the keys cannot tell (it forwards the altered one).
#[test]
fn a_member_proxy_verifies_the_request_hash() {
    let g = Group::new(&[MEMBER, DEV, PROXY_ID]);
    let good = det_request(&g, MEMBER);
    let bad = with_option(&good, deterministic::REQUEST_HASH, &[0x42; 32]);
    let mut p = proxy(&g, Policy::Enforce, true, Some(DET_KID));
    let (tx, ev) = p.send(&bad);
    assert!(multicast(&tx).is_none());
    assert_eq!(results(&ev), vec![CheckResult::DeterministicInvalid]);
    let (tx, ev) = p.send(&good);
    assert!(multicast(&tx).is_some());
    assert_eq!(results(&ev), vec![CheckResult::Deterministic]);

    let mut m = proxy(&g, Policy::Monitor, true, Some(DET_KID));
    let (tx, ev) = m.send(&bad);
    assert!(multicast(&tx).is_some());
    assert_eq!(results(&ev), vec![CheckResult::DeterministicInvalid]);

    let mut outsider = proxy(&g, Policy::Enforce, false, Some(DET_KID));
    let (tx, ev) = outsider.send(&bad);
    assert!(multicast(&tx).is_some());
    assert_eq!(results(&ev), vec![CheckResult::Deterministic]);
}

/// cacheable-oscore §2, §6: a Deterministic Request authenticates no sender (every member
/// can compose it), so `allow_kids` (groupcomm-proxy §10.1, about verified signers) does
/// not apply to it; group-mode requests of members off the list are still refused 4.01.
#[test]
fn allow_kids_does_not_apply_to_deterministic_requests() {
    let g = Group::new(&[MEMBER, OTHER, DEV]);
    let mut p = proxy_with(
        &g,
        Policy::Enforce,
        false,
        Some(DET_KID),
        Some(vec![OTHER.to_vec()]),
    );
    let (tx, _) = p.send(&det_request(&g, MEMBER));
    assert!(multicast(&tx).is_some());
    let mut ctx = SecurityContext::new(&g.config(MEMBER)).unwrap();
    let (signed, _) = ctx
        .protect_request(&h(GET_HELLO), Mode::Group, None)
        .unwrap();
    let (tx, _) = p.send(&signed);
    assert!(multicast(&tx).is_none());
    assert!(tx.iter().any(|t| t.bytes.get(1) == Some(&0x81)));
}

/// `[[group]] deterministic_kid` (config/groxy.toml): hex, at most 7 bytes; errors name
/// the key.
#[test]
fn deterministic_kid_config_is_parsed_and_checked() {
    let base = "[[group]]\nname = \"g\"\nuri = \"coap://224.0.1.187:5683\"\n";
    let l = groxy::settings::load_str(&format!("{base}deterministic_kid = \"dc\"\n")).unwrap();
    assert_eq!(l.run.proxy.deterministic_kids, vec![Some(vec![0xdc])]);
    let l = groxy::settings::load_str(base).unwrap();
    assert_eq!(l.run.proxy.deterministic_kids, vec![None]);
    for bad in ["\"xy\"", "\"0011223344556677\""] {
        let e =
            groxy::settings::load_str(&format!("{base}deterministic_kid = {bad}\n")).unwrap_err();
        assert!(
            e.iter().any(|m| m.contains("group[0].deterministic_kid")),
            "{e:?}"
        );
    }
}

// ---- The binaries: `groxy device --deterministic-kid` and `groxy client --deterministic` ----

/// A member file (config/member.toml) for `id` of `g` in `dir`, its secrets 0600.
fn member_toml(dir: &std::path::Path, g: &Group, id: &[u8]) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let secret = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, hex::encode(bytes)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    let name = hex::encode(id);
    secret("master.secret", &g.master_secret);
    let m = g.member(id);
    secret(&format!("{name}.key"), &m.key.to_bytes());
    let members: String = g
        .members
        .iter()
        .filter(|o| o.id != id)
        .map(|o| {
            format!(
                "  {{ id = \"{}\", credential = \"{}\" }},\n",
                hex::encode(&o.id),
                hex::encode(o.cred.bytes())
            )
        })
        .collect();
    let text = format!(
        "gid = \"{}\"\nmaster_secret_file = \"master.secret\"\nmaster_salt = \"{}\"\n\
         sender_id = \"{name}\"\nprivate_key_file = \"{name}.key\"\ncredential = \"{}\"\n\
         gm_credential = \"{}\"\nmembers = [\n{members}]\n",
        hex::encode(&g.gid),
        hex::encode(&g.master_salt),
        hex::encode(m.cred.bytes()),
        hex::encode(g.gm.cred.bytes()),
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// The command lines the README shows: `groxy device --oscore F --deterministic-kid dc`
/// answers `groxy client --direct --oscore F --deterministic dc`, whose JSON line says the
/// answer verified in group mode from the device's kid (cacheable-oscore §3.4.4).
#[test]
fn binaries_device_answers_client_deterministically() {
    const BIN: &str = env!("CARGO_BIN_EXE_groxy");
    let g = Group::new(&[MEMBER, DEV]);
    let dir = std::env::temp_dir().join(format!("groxy-det-bin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let dev_file = member_toml(&dir, &g, DEV);
    let client_file = member_toml(&dir, &g, MEMBER);
    let port = free_port();
    let bind = format!("127.0.0.96:{port}");
    let mut device = std::process::Command::new(BIN)
        .args(["device", "--group", &format!("224.0.1.187:{port}")])
        .args([
            "--interface",
            "127.0.0.1",
            "--bind",
            &bind,
            "--name",
            "detbin",
        ])
        .args([
            "--oscore",
            dev_file.to_str().unwrap(),
            "--deterministic-kid",
            "dc",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let run = || {
        std::process::Command::new(BIN)
            .args(["client", "--direct", &format!("coap://{bind}/hello")])
            .args([
                "--oscore",
                client_file.to_str().unwrap(),
                "--deterministic",
                "dc",
            ])
            .args(["--timeout", "1", "--json"])
            .output()
            .unwrap()
    };
    // The device may still be starting: a few tries.
    let mut line = String::new();
    for _ in 0..10 {
        let out = run();
        line = String::from_utf8_lossy(&out.stdout).to_string();
        if !line.trim().is_empty() {
            break;
        }
    }
    let _ = device.kill();
    let _ = device.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let v: serde_json::Value = serde_json::from_str(line.lines().next().unwrap_or("")).unwrap();
    assert_eq!(v["code"], "2.05", "{line}");
    assert_eq!(v["payload"], "hello from detbin");
    assert_eq!(v["oscore"]["verified"], true);
    assert_eq!(v["oscore"]["mode"], "group");
    assert_eq!(v["oscore"]["kid"], hex::encode(DEV));
}

/// cacheable-oscore §3.4.4 from public material (RFC 10021 §7.5): the checker verifies a
/// device's response to a Deterministic Request with the Request-Hash as a class I
/// option (what a cache can check before it stores an answer for every client), and
/// refuses one with a flipped signature bit or checked against another request's hash.
#[test]
fn checker_verifies_responses_to_deterministic_requests() {
    use groxy::oscore::{GroupChecker, SignatureChecker};
    let g = Group::new(&[MEMBER, DEV]);
    let client = SecurityContext::new(&g.config(MEMBER)).unwrap();
    let mut dev = SecurityContext::new(&g.config(DEV)).unwrap();
    let (req, _) = client
        .protect_deterministic_request(&h(GET_HELLO), DET_KID)
        .unwrap();
    let (_, mut det) = dev.unprotect_deterministic_request(&req, DET_KID).unwrap();
    let resp = dev
        .protect_deterministic_response(&h("5145aa01c3ff6869"), &mut det)
        .unwrap();
    let checker = GroupChecker::new(SignatureChecker::new(&g.checker_config()).unwrap());
    let ok = checker
        .check_deterministic_response(&resp, DET_KID, &g.gid, &det.hash)
        .unwrap();
    assert_eq!((ok.kid.as_slice(), ok.piv), (DEV, Some(0)));
    let mut bad = resp.clone();
    *bad.last_mut().unwrap() ^= 1;
    assert_eq!(
        checker
            .check_deterministic_response(&bad, DET_KID, &g.gid, &det.hash)
            .unwrap_err(),
        OscoreError::BadSignature
    );
    assert!(
        checker
            .check_deterministic_response(&resp, DET_KID, &g.gid, &[0u8; 32])
            .is_err()
    );
}

/// No panic on bad input: every truncation and every single-bit flip of the Appendix F
/// request goes through the server's processing, of the response through the client's,
/// and each is refused (or, for a flip the protection does not cover, accepted) without a
/// panic; a Deterministic Client kid too long for the nonce is an error.
#[test]
fn mutations_never_panic() {
    let s = server();
    let mut c = client();
    let req = h(DET_REQUEST);
    let resp = h(PROTECTED_RESPONSE);
    let mutations = |m: &[u8]| -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = (0..m.len()).map(|n| m[..n].to_vec()).collect();
        for i in 0..m.len() * 8 {
            let mut x = m.to_vec();
            x[i / 8] ^= 1 << (i % 8);
            out.push(x);
        }
        out
    };
    let mut accepted = 0;
    for x in mutations(&req) {
        if let Ok(v) = MessageView::parse(&x) {
            let _ = deterministic::is_deterministic_request(&v, DET_KID);
        }
        if s.unprotect_deterministic_request(&x, DET_KID).is_ok() {
            accepted += 1;
        }
    }
    // Only flips the protection does not cover leave the request valid: of the type (2),
    // Message ID (16), token (64) and outer code to another request code (RFC 8613 §4.2).
    assert!(accepted <= 2 + 16 + 64 + 8, "{accepted}");
    let (_, det) = c
        .protect_deterministic_request(&h(PLAIN_REQUEST), DET_KID)
        .unwrap();
    // Each one costs a signature verification (slow in the debug build): every
    // truncation and a flip of every header and option byte, then of every 8th byte.
    let mut some: Vec<(bool, Vec<u8>)> = (0..resp.len())
        .step_by(4)
        .map(|n| (true, resp[..n].to_vec()))
        .collect();
    for i in (0..23).chain((23..resp.len()).step_by(8)) {
        let mut x = resp.clone();
        x[i] ^= 0x10;
        // The OSCORE option (bytes 12-15) and the payload (from 20) are protected; the
        // header, token and outer Max-Age are not (RFC 8613 §4.1, §4.2).
        some.push(((12..16).contains(&i) || i >= 20, x));
    }
    for (protected, x) in some {
        let r = c.unprotect_deterministic_response(&x, &mut det.clone(), None);
        assert!(!protected || r.is_err(), "{}", hex::encode(&x));
    }
    assert!(s.unprotect_deterministic_request(&req, &[7; 9]).is_err());
    assert!(
        c.protect_deterministic_request(&h(PLAIN_REQUEST), &[7; 9])
            .is_err()
    );
}

/// cacheable-oscore §3.4.5 through a real proxy: `groxy client --deterministic` (its
/// socket driver) sends one Deterministic Request to a group of two `groxy device`s via a
/// checking `groxy run` (in-process, from TOML: enforce, `deterministic_kid = "dc"`);
/// both devices answer in group mode with their own kid, each answer comes back with its
/// Reply-From and verifies at the client. A group-mode request of a member is still
/// checked as before (valid), so the filter is not opened wider than the kid.
#[tokio::test]
async fn through_the_proxy_to_a_group_of_two_devices() {
    use groxy::runtime::Proxy;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::{Arc, Mutex};

    const DEV2: &[u8] = &[0x0e];
    let g = Group::new(&[MEMBER, DEV, DEV2]);
    let dir = std::env::temp_dir().join(format!("groxy-det-group-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let group: SocketAddr = (Ipv4Addr::new(224, 0, 1, 187), port).into();
    for (i, id) in [DEV, DEV2].iter().enumerate() {
        let mut d = Device::bind(DeviceConfig {
            name: format!("dev{}", hex::encode(id)),
            group,
            interface: Interface::Addr(Ipv4Addr::LOCALHOST),
            bind: (Ipv4Addr::new(127, 0, 0, 101 + i as u8), port).into(),
            leisure: Duration::from_millis(20),
            delay: Duration::ZERO,
            oscore: Some((g.config(id), Mode::Group)),
        })
        .unwrap();
        d.settings(Settings {
            deterministic_kid: Some(DET_KID.to_vec()),
            ..Settings::default()
        });
        tokio::spawn(d.run());
    }
    let sek = SecurityContext::new(&g.config(MEMBER))
        .unwrap()
        .group()
        .unwrap()
        .sig_enc_key
        .clone()
        .unwrap();
    std::fs::write(dir.join("group.sek"), hex::encode(sek)).unwrap();
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
    std::fs::write(
        dir.join("groxy.toml"),
        format!(
            "[proxy]\nlisten = [\"127.0.0.1:0\"]\nstate_dir = \"state\"\n[[group]]\n\
             name = \"g\"\nuri = \"coap://{group}\"\ninterface = \"127.0.0.1\"\n\
             deterministic_kid = \"dc\"\n[group.security]\npolicy = \"enforce\"\n\
             gid = \"{}\"\nsignature_encryption_key_file = \"group.sek\"\n\
             gm_credential = \"{}\"\nmembers = [\n{members}]\n",
            hex::encode(&g.gid),
            hex::encode(g.gm.cred.bytes()),
        ),
    )
    .unwrap();
    let loaded = groxy::settings::load_file(&dir.join("groxy.toml")).unwrap();
    let mut proxy = Proxy::bind(loaded.run).unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    proxy.on_event(move |e| sink.lock().unwrap().push(e.clone()));
    let proxy_addr = proxy.listen_addrs()[0];
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(proxy.run(async move {
        let _ = stop_rx.await;
    }));

    let mut req = ClientRequest::get(proxy_addr, &format!("coap://{group}/hello"), 1);
    req.margin = Duration::from_millis(300);
    req.oscore = Some(g.config(MEMBER));
    req.deterministic = Some(DET_KID.to_vec());
    let got = groxy::tools::client::run(&req, |_| {}).await.unwrap();
    let mut seen: Vec<(Vec<u8>, Vec<u8>, SocketAddr)> = got
        .iter()
        .map(|r| {
            let (mode, kid) = r.oscore.clone().expect("protected").expect("verified");
            assert_eq!(mode, Mode::Group);
            (kid, r.payload.clone(), r.reply_from.expect("Reply-From"))
        })
        .collect();
    seen.sort();
    let dev_addr = |o: u8| SocketAddr::from((Ipv4Addr::new(127, 0, 0, o), port));
    assert_eq!(
        seen,
        vec![
            (DEV.to_vec(), b"hello from dev0d".to_vec(), dev_addr(101)),
            (DEV2.to_vec(), b"hello from dev0e".to_vec(), dev_addr(102))
        ]
    );
    // The same client's group-mode request still goes through the signature check.
    let mut signed = req.clone();
    signed.deterministic = None;
    assert_eq!(
        groxy::tools::client::run(&signed, |_| {})
            .await
            .unwrap()
            .len(),
        2
    );
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
    assert_eq!(checks, vec![CheckResult::Deterministic, CheckResult::Valid]);
    let _ = stop_tx.send(());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A reload (SIGHUP, `Engine::reconfigure`) applies a new `deterministic_kid`: the same
/// Deterministic Request is dropped before (no kid configured) and forwarded after.
#[test]
fn reload_applies_deterministic_kid() {
    let g = Group::new(&[MEMBER, DEV]);
    let mut p = proxy(&g, Policy::Enforce, false, None);
    let req = det_request(&g, MEMBER);
    let (tx, _) = p.send(&req);
    assert!(multicast(&tx).is_none());
    let mut cfg = p.e.config().clone();
    cfg.deterministic_kids = vec![Some(DET_KID.to_vec())];
    p.e.reconfigure(p.now, cfg).unwrap();
    let (tx, ev) = p.send(&req);
    assert!(multicast(&tx).is_some());
    assert_eq!(results(&ev), vec![CheckResult::Deterministic]);
}
