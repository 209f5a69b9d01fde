//! What Group OSCORE costs on top of the Ed25519 signature it carries.
//!
//! Every operation is measured in the same criterion group as a raw ed25519-dalek
//! verification of the *same* bytes, so that the overhead reads as a ratio of two medians
//! taken in one run on one machine:
//!
//! * `group_request_{16,100,1000}B`: `raw_verify_strict` (and `raw_verify`, for
//!   information) of the exact ToBeSigned and signature that the request carries, next to
//!   `checker_check_request` (the external signature checker, RFC 10021 §7.5) and
//!   `member_unprotect_request` (a group member: verify, then decrypt). The 100-byte group
//!   adds `group_checker_admit_request` (checker + replay window), `member_protect_request`
//!   and, as its baseline, `raw_sign`.
//! * `pairwise_100B`: `pairwise_protect` and `pairwise_unprotect` of a request of the same
//!   size. Pairwise mode carries no signature; its baseline is the verification a
//!   group-mode request of that size would need, i.e. the same `raw_verify_strict` as in
//!   `group_request_100B`.
//!
//! "N-byte request" means an unprotected CoAP NON POST whose OSCORE plaintext (code byte,
//! Uri-Path option, payload marker, payload) is exactly N bytes; the protected datagram
//! sizes are printed when the bench starts. Keys, Gid and credentials are those of the
//! RFC 10021 message vectors (tests/vectors/), so external_aad has its real size.
//!
//! Ratios: divide each median in target/criterion/<group>/<bench>/new/estimates.json by
//! the `raw_verify_strict` median of its group.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use groxy::coap::options::OSCORE;
use groxy::coap::view::MessageView;
use groxy::oscore::aad::{self, GroupAad, RequestIds, TbsForm};
use groxy::oscore::checker::CheckerConfig;
use groxy::oscore::derive;
use groxy::oscore::option::OscoreOption;
use groxy::oscore::{
    ContextConfig, GroupChecker, Mode, SecurityContext, SignatureChecker, Verdict,
};
use serde_json::Value;

/// First Sender Sequence Number of every measured message: from 256 to 65535 the Partial
/// IV is 2 bytes, so all messages of one size have exactly the same length.
const FIRST_SSN: u64 = 256;

/// Distinct protected requests generated per size for the receivers, whose replay windows
/// refuse a message seen before. More iterations than this reuse them with a fresh
/// receiver (built outside the timing).
const DISTINCT_REQUESTS: usize = 4096;

/// Plaintext sizes: a tiny sensor reading, the 100-byte reference, a large payload.
const SIZES: [usize; 3] = [16, 100, 1000];

// ---------------------------------------------------------------------------------------
// Fixture: the group of the RFC 10021 message vectors (client 0x25, server 0x52, Gid "Dal").

struct Group {
    v: Value,
}

fn hex_of(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

impl Group {
    fn load() -> Self {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/vectors/group-oscore-rfc10021-messages.json"
        );
        let text = std::fs::read_to_string(path).expect("vector file");
        Group {
            v: serde_json::from_str(&text).expect("vector JSON"),
        }
    }

    fn common(&self, key: &str) -> Vec<u8> {
        hex_of(&self.v["common_context"][key])
    }
    fn gm_cred(&self) -> Vec<u8> {
        hex_of(&self.v["common_context"]["group_manager"]["auth_cred_ccs"])
    }
    fn member(&self, who: &str, key: &str) -> Vec<u8> {
        hex_of(&self.v[who][key])
    }

    /// The Security Context of `me` with `peer` as its one recipient.
    fn context(&self, me: &str, peer: &str) -> SecurityContext {
        SecurityContext::new(&ContextConfig {
            master_secret: self.common("master_secret"),
            master_salt: self.common("master_salt"),
            id_context: Some(self.common("id_context_gid")),
            alg_aead: Some(10),
            alg_group_enc: Some(10),
            alg_signature: Some(-8),
            alg_pairwise_key_agreement: Some(-27),
            gm_cred: Some(self.gm_cred()),
            sender_id: self.member(me, "sender_id"),
            private_key: Some(self.member(me, "ed25519_private")),
            sender_cred: Some(self.member(me, "auth_cred_ccs")),
            recipients: vec![(
                self.member(peer, "sender_id"),
                self.member(peer, "auth_cred_ccs"),
            )],
            tbs_form: TbsForm::FiveElement,
            key_generation: 0,
        })
        .expect("vector context")
    }

    /// An external checker that knows the client, from the Master Secret as §12.3 allows.
    fn checker(&self) -> SignatureChecker {
        SignatureChecker::new(&CheckerConfig {
            gid: self.common("id_context_gid"),
            alg_aead: Some(10),
            alg_group_enc: 10,
            alg_signature: -8,
            alg_pairwise_key_agreement: Some(-27),
            master_secret: Some(self.common("master_secret")),
            master_salt: self.common("master_salt"),
            gm_cred: self.gm_cred(),
            members: vec![(
                self.member("client", "sender_id"),
                self.member("client", "auth_cred_ccs"),
            )],
            ..Default::default()
        })
        .expect("vector checker")
    }
}

/// An unprotected CoAP NON POST (MID 0x1234, token 0x4a, Uri-Path "temp") whose OSCORE
/// plaintext -- code, the Uri-Path option (class E), payload marker, payload -- is exactly
/// `plaintext_len` bytes.
fn coap_request(plaintext_len: usize) -> Vec<u8> {
    const FIXED: usize = 1 + 5 + 1; // code, 0xb4 "temp", 0xff
    assert!(plaintext_len > FIXED);
    let mut m = vec![
        0x51, 0x02, 0x12, 0x34, 0x4a, 0xb4, b't', b'e', b'm', b'p', 0xff,
    ];
    m.extend((0..plaintext_len - FIXED).map(|i| i as u8));
    m
}

/// `count` distinct protected requests from one client, Sender Sequence Numbers
/// FIRST_SSN, FIRST_SSN + 1, ...
fn protected_requests(group: &Group, plain: &[u8], mode: Mode, count: usize) -> Vec<Vec<u8>> {
    let mut client = group.context("client", "server");
    client.sender.ssn = FIRST_SSN;
    let server_id = group.member("server", "sender_id");
    let msgs: Vec<Vec<u8>> = (0..count)
        .map(|_| {
            client
                .protect_request(plain, mode, Some(&server_id))
                .expect("protect")
                .0
        })
        .collect();
    assert!(msgs.iter().all(|m| m.len() == msgs[0].len()));
    msgs
}

/// The countersignature of a group-mode request taken apart with the crate's own building
/// blocks: the exact ToBeSigned the checker and the members verify, and the decrypted
/// signature. The raw baselines verify precisely these bytes.
struct Countersignature {
    vk: VerifyingKey,
    sk: SigningKey,
    tbs: Vec<u8>,
    sig: Signature,
    external_aad_len: usize,
    ciphertext_len: usize,
}

fn countersignature(group: &Group, ctx: &SecurityContext, protected: &[u8]) -> Countersignature {
    let view = MessageView::parse(protected).expect("CoAP");
    let option = view.option(OSCORE).expect("OSCORE option");
    let o = OscoreOption::parse(option).expect("OSCORE option value");
    let (kid, piv, gid) = (o.kid.unwrap(), o.piv.unwrap(), o.kid_context.unwrap());
    let client_cred = group.member("client", "auth_cred_ccs");
    let gm_cred = group.gm_cred();
    let mut ext = Vec::new();
    aad::external_aad(
        &mut ext,
        &ctx.common.algs_cbor,
        RequestIds {
            kid,
            piv,
            kid_context: gid,
        },
        Some(GroupAad {
            oscore_option: option,
            sender_cred: &client_cred,
            gm_cred: &gm_cred,
        }),
    );
    let (ciphertext, enc_sig) = view.payload().split_at(view.payload().len() - 64);
    let mut tbs = Vec::new();
    aad::to_be_signed(&mut tbs, TbsForm::FiveElement, &ext, ciphertext);
    let mut sig = [0u8; 64];
    let sek = ctx.group().unwrap().sig_enc_key.as_deref().unwrap();
    derive::keystream(sek, piv, kid, gid, true, &mut sig);
    for (s, e) in sig.iter_mut().zip(enc_sig) {
        *s ^= e;
    }
    let seed: [u8; 32] = group
        .member("client", "ed25519_private")
        .try_into()
        .unwrap();
    let sk = SigningKey::from_bytes(&seed);
    let vk = sk.verifying_key();
    let sig = Signature::from_bytes(&sig);
    // The baseline must be the very signature the checker accepts.
    vk.verify_strict(&tbs, &sig)
        .expect("reconstructed ToBeSigned and signature verify");
    Countersignature {
        vk,
        sk,
        tbs,
        sig,
        external_aad_len: ext.len(),
        ciphertext_len: ciphertext.len(),
    }
}

// ---------------------------------------------------------------------------------------
// Timing helpers. Receivers keep replay state, so a message can be accepted only once:
// these run `iters` operations on distinct messages and time only the operations.

/// Times `op` on `msgs[1..]`, in chunks of at most `msgs.len() - 1` messages. Each chunk
/// gets a receiver from `fresh` and feeds it `msgs[0]` first, both untimed, so the timed
/// calls see a warm receiver (e.g. pairwise keys already derived and cached, as they are
/// after the first exchange with a peer).
fn time_receiver<R>(
    iters: u64,
    msgs: &[Vec<u8>],
    fresh: impl Fn() -> R,
    op: impl Fn(&mut R, &[u8]),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters as usize;
    while left > 0 {
        let mut receiver = fresh();
        op(&mut receiver, &msgs[0]);
        let n = left.min(msgs.len() - 1);
        let start = Instant::now();
        for m in &msgs[1..=n] {
            op(&mut receiver, black_box(m));
        }
        total += start.elapsed();
        left -= n;
    }
    total
}

/// Times `iters` protections of `plain` by `client`. The Sender Sequence Number is reset
/// (untimed) before it would leave the 2-byte Partial IV range, so every output has the
/// same size; nobody receives these messages, so the nonce reuse is harmless here.
fn time_protect(
    iters: u64,
    client: &mut SecurityContext,
    plain: &[u8],
    mode: Mode,
    peer: &[u8],
) -> Duration {
    const CHUNK: usize = 60_000; // FIRST_SSN + CHUNK < 65536
    let mut total = Duration::ZERO;
    let mut left = iters as usize;
    while left > 0 {
        client.sender.ssn = FIRST_SSN;
        let n = left.min(CHUNK);
        let start = Instant::now();
        for _ in 0..n {
            let (out, _exchange) = client
                .protect_request(black_box(plain), mode, Some(peer))
                .expect("protect");
            black_box(out);
        }
        total += start.elapsed();
        left -= n;
    }
    total
}

// ---------------------------------------------------------------------------------------
// Benchmarks.

/// Raw Ed25519 baselines over the exact ToBeSigned of a request.
fn raw_verify(g: &mut BenchmarkGroup<WallTime>, cs: &Countersignature) {
    g.bench_function("raw_verify_strict", |b| {
        b.iter(|| {
            black_box(&cs.vk)
                .verify_strict(black_box(&cs.tbs), black_box(&cs.sig))
                .expect("valid signature")
        })
    });
}

fn group_requests(c: &mut Criterion) {
    let group = Group::load();
    let client_ctx = group.context("client", "server");
    for size in SIZES {
        let plain = coap_request(size);
        let msgs = protected_requests(&group, &plain, Mode::Group, DISTINCT_REQUESTS);
        let cs = countersignature(&group, &client_ctx, &msgs[0]);
        assert_eq!(cs.ciphertext_len, size + 8, "plaintext + CCM tag");
        eprintln!(
            "group request {size}B: unprotected {} B, protected {} B, external_aad {} B, \
             ciphertext {} B, ToBeSigned {} B",
            plain.len(),
            msgs[0].len(),
            cs.external_aad_len,
            cs.ciphertext_len,
            cs.tbs.len(),
        );
        let checker = group.checker();
        let verified = |v| matches!(v, Ok(Verdict::Verified(_)));
        assert!(verified(checker.check_request(&msgs[0])));
        // Round trip once, outside any timing: the server recovers the request.
        let (back, _) = group
            .context("server", "client")
            .unprotect_request(&msgs[0])
            .expect("unprotect");
        assert_eq!(back, plain);

        let mut g = c.benchmark_group(format!("group_request_{size}B"));
        raw_verify(&mut g, &cs);
        g.bench_function("raw_verify", |b| {
            b.iter(|| {
                black_box(&cs.vk)
                    .verify(black_box(&cs.tbs), black_box(&cs.sig))
                    .expect("valid signature")
            })
        });
        // Pure: one message, checked again and again.
        g.bench_function("checker_check_request", |b| {
            b.iter(|| {
                let v = checker.check_request(black_box(&msgs[0]));
                assert!(verified(v));
            })
        });
        g.bench_function("member_unprotect_request", |b| {
            b.iter_custom(|iters| {
                time_receiver(
                    iters,
                    &msgs,
                    || group.context("server", "client"),
                    |server, m| {
                        let (plain, _exchange) = server.unprotect_request(m).expect("unprotect");
                        black_box(plain);
                    },
                )
            })
        });
        if size == 100 {
            g.bench_function("group_checker_admit_request", |b| {
                b.iter_custom(|iters| {
                    time_receiver(
                        iters,
                        &msgs,
                        || GroupChecker::new(group.checker()),
                        |gc, m| assert!(verified(gc.admit_request(m))),
                    )
                })
            });
            g.bench_function("raw_sign", |b| {
                b.iter(|| black_box(black_box(&cs.sk).sign(black_box(&cs.tbs))))
            });
            let mut client = group.context("client", "server");
            let server_id = group.member("server", "sender_id");
            g.bench_function("member_protect_request", |b| {
                b.iter_custom(|iters| {
                    time_protect(iters, &mut client, &plain, Mode::Group, &server_id)
                })
            });
        }
        g.finish();
    }
}

fn pairwise_requests(c: &mut Criterion) {
    const SIZE: usize = 100;
    let group = Group::load();
    let plain = coap_request(SIZE);
    // The baseline: the signature check a group-mode request of the same size needs.
    let group_msg = protected_requests(&group, &plain, Mode::Group, 1);
    let cs = countersignature(&group, &group.context("client", "server"), &group_msg[0]);
    let msgs = protected_requests(&group, &plain, Mode::Pairwise, DISTINCT_REQUESTS);
    eprintln!(
        "pairwise request {SIZE}B: unprotected {} B, protected {} B (baseline ToBeSigned {} B)",
        plain.len(),
        msgs[0].len(),
        cs.tbs.len()
    );
    let (back, _) = group
        .context("server", "client")
        .unprotect_request(&msgs[0])
        .expect("unprotect");
    assert_eq!(back, plain);

    let mut g = c.benchmark_group(format!("pairwise_{SIZE}B"));
    raw_verify(&mut g, &cs);
    // Pairwise keys are derived (ECDH + HKDF) on first use and cached: derive them here,
    // so that the measurement is the steady state of an established peer.
    let server_id = group.member("server", "sender_id");
    let mut client = group.context("client", "server");
    client
        .protect_request(&plain, Mode::Pairwise, Some(&server_id))
        .expect("pairwise keys");
    g.bench_function("pairwise_protect", |b| {
        b.iter_custom(|iters| time_protect(iters, &mut client, &plain, Mode::Pairwise, &server_id))
    });
    g.bench_function("pairwise_unprotect", |b| {
        b.iter_custom(|iters| {
            time_receiver(
                iters,
                &msgs,
                || group.context("server", "client"),
                |server, m| {
                    let (plain, _exchange) = server.unprotect_request(m).expect("unprotect");
                    black_box(plain);
                },
            )
        })
    });
    g.finish();
}

/// 18 benchmarks at 1 s warm-up + 3 s measurement: about 1.5 minutes in all, setup and
/// analysis included. 50 samples are plenty for the median of microsecond operations.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = group_requests, pairwise_requests
}
criterion_main!(benches);
