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
//! Every operation, the baselines included, walks through the same 4096 distinct requests
//! per size. Ed25519 verification is variable-time: its double-scalar multiplication
//! branches on the signature's scalars, so verifying one message over and over trains the
//! branch predictor on that message and runs ~3 % faster than verifying fresh ones (as a
//! receiver does) -- enough to skew a ratio between a one-message baseline and a receiver
//! that must see a new message every time.
//!
//! Ratios: divide each median in target/criterion/<group>/<bench>/new/estimates.json by
//! the `raw_verify_strict` median of its group.
//!
//! Clock: on Unix the time is the benchmark thread's CPU time (CLOCK_THREAD_CPUTIME_ID),
//! not wall time. Everything measured is single-threaded computation without I/O, so on an
//! idle machine the two agree; on a shared one (CI runners, a build next door) wall time
//! also counts the slices other processes run on this core, which swamps a 5 % overhead.
//! (CPU time removes the largest part of that noise, not all of it: caches and, in a VM,
//! the host are still shared.) `GROXY_BENCH_CLOCK=wall` measures wall time instead.

use std::hint::black_box;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
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

/// Distinct protected requests generated per size (see the module comment). Receivers
/// refuse a message seen before, so more iterations than this reuse them with a fresh
/// receiver, built outside the timing.
const DISTINCT_REQUESTS: usize = 4096;

/// Plaintext sizes: a tiny sensor reading, the 100-byte reference, a large payload.
const SIZES: [usize; 3] = [16, 100, 1000];

// ---------------------------------------------------------------------------------------
// Clock (see the module comment).

static USE_WALL_CLOCK: LazyLock<bool> =
    LazyLock::new(|| !cfg!(unix) || std::env::var("GROXY_BENCH_CLOCK").is_ok_and(|v| v == "wall"));

/// Reading of the bench clock: thread CPU time, or wall time since the first reading.
fn now() -> Duration {
    static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);
    if *USE_WALL_CLOCK {
        return EPOCH.elapsed();
    }
    thread_cpu_time()
}

#[cfg(unix)]
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock exists on Linux and macOS.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_THREAD_CPUTIME_ID");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(not(unix))]
fn thread_cpu_time() -> Duration {
    unreachable!("USE_WALL_CLOCK is always set off Unix")
}

/// [`now`] as a criterion measurement; values are durations, printed like wall time.
struct BenchClock;

impl Measurement for BenchClock {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        now()
    }
    fn end(&self, start: Duration) -> Duration {
        now() - start
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        static WALL: WallTime = WallTime;
        WALL.formatter()
    }
}

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

/// The countersignatures of group-mode requests taken apart with the crate's own building
/// blocks: for each request the exact ToBeSigned that the checker and the members verify,
/// and the decrypted signature. The raw baselines verify precisely these bytes.
struct Signed {
    vk: VerifyingKey,
    sk: SigningKey,
    /// (ToBeSigned, signature) of each request, in order.
    items: Vec<(Vec<u8>, Signature)>,
    external_aad_len: usize,
    ciphertext_len: usize,
}

fn signed(group: &Group, msgs: &[Vec<u8>]) -> Signed {
    let ctx = group.context("client", "server");
    let sek = ctx.group().unwrap().sig_enc_key.clone().unwrap();
    let client_cred = group.member("client", "auth_cred_ccs");
    let gm_cred = group.gm_cred();
    let seed: [u8; 32] = group
        .member("client", "ed25519_private")
        .try_into()
        .unwrap();
    let sk = SigningKey::from_bytes(&seed);
    let vk = sk.verifying_key();
    let (mut external_aad_len, mut ciphertext_len) = (0, 0);
    let items = msgs
        .iter()
        .map(|protected| {
            let view = MessageView::parse(protected).expect("CoAP");
            let option = view.option(OSCORE).expect("OSCORE option");
            let o = OscoreOption::parse(option).expect("OSCORE option value");
            let (kid, piv, gid) = (o.kid.unwrap(), o.piv.unwrap(), o.kid_context.unwrap());
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
            derive::keystream(&sek, piv, kid, gid, true, &mut sig);
            for (s, e) in sig.iter_mut().zip(enc_sig) {
                *s ^= e;
            }
            let sig = Signature::from_bytes(&sig);
            // The baseline must be the very signature the checker accepts.
            vk.verify_strict(&tbs, &sig)
                .expect("reconstructed ToBeSigned and signature verify");
            (external_aad_len, ciphertext_len) = (ext.len(), ciphertext.len());
            (tbs, sig)
        })
        .collect();
    Signed {
        vk,
        sk,
        items,
        external_aad_len,
        ciphertext_len,
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
        let start = now();
        for m in &msgs[1..=n] {
            op(&mut receiver, black_box(m));
        }
        total += now() - start;
        left -= n;
    }
    total
}

/// Times `iters` request unprotections by a fresh "server" context of `group`.
fn time_server_unprotect(iters: u64, group: &Group, msgs: &[Vec<u8>]) -> Duration {
    time_receiver(
        iters,
        msgs,
        || group.context("server", "client"),
        |server, m| {
            let (plain, _exchange) = server.unprotect_request(m).expect("unprotect");
            black_box(plain);
        },
    )
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
        let start = now();
        for _ in 0..n {
            let (out, _exchange) = client
                .protect_request(black_box(plain), mode, Some(peer))
                .expect("protect");
            black_box(out);
        }
        total += now() - start;
        left -= n;
    }
    total
}

// ---------------------------------------------------------------------------------------
// Benchmarks.

/// The baseline: raw Ed25519 strict verification of the requests' own ToBeSigned.
fn raw_verify_strict(g: &mut BenchmarkGroup<BenchClock>, s: &Signed) {
    let mut items = s.items.iter().cycle();
    g.bench_function("raw_verify_strict", |b| {
        b.iter(|| {
            let (tbs, sig) = items.next().unwrap();
            s.vk.verify_strict(black_box(tbs), black_box(sig))
                .expect("valid signature")
        })
    });
}

fn group_requests(c: &mut Criterion<BenchClock>) {
    let group = Group::load();
    for size in SIZES {
        let plain = coap_request(size);
        let msgs = protected_requests(&group, &plain, Mode::Group, DISTINCT_REQUESTS);
        let s = signed(&group, &msgs);
        assert_eq!(s.ciphertext_len, size + 8, "plaintext + CCM tag");
        eprintln!(
            "group request {size}B: unprotected {} B, protected {} B, external_aad {} B, \
             ciphertext {} B, ToBeSigned {} B",
            plain.len(),
            msgs[0].len(),
            s.external_aad_len,
            s.ciphertext_len,
            s.items[0].0.len(),
        );
        let checker = group.checker();
        let verified = |v| matches!(v, Ok(Verdict::Verified(_)));
        assert!(msgs.iter().all(|m| verified(checker.check_request(m))));
        // Round trip once, outside any timing: the server recovers the request.
        let (back, _) = group
            .context("server", "client")
            .unprotect_request(&msgs[0])
            .expect("unprotect");
        assert_eq!(back, plain);

        let mut g = c.benchmark_group(format!("group_request_{size}B"));
        raw_verify_strict(&mut g, &s);
        let mut items = s.items.iter().cycle();
        g.bench_function("raw_verify", |b| {
            b.iter(|| {
                let (tbs, sig) = items.next().unwrap();
                s.vk.verify(black_box(tbs), black_box(sig))
                    .expect("valid signature")
            })
        });
        // Pure, so no fresh checker is needed when the walk starts over.
        let mut requests = msgs.iter().cycle();
        g.bench_function("checker_check_request", |b| {
            b.iter(|| {
                let m = requests.next().unwrap();
                assert!(verified(checker.check_request(black_box(m))));
            })
        });
        g.bench_function("member_unprotect_request", |b| {
            b.iter_custom(|iters| time_server_unprotect(iters, &group, &msgs))
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
            // The baseline of protection, which signs.
            let mut items = s.items.iter().cycle();
            g.bench_function("raw_sign", |b| {
                b.iter(|| black_box(s.sk.sign(black_box(&items.next().unwrap().0))))
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

fn pairwise_requests(c: &mut Criterion<BenchClock>) {
    const SIZE: usize = 100;
    let group = Group::load();
    let plain = coap_request(SIZE);
    // The baseline: the signature checks group-mode requests of the same size need.
    let group_msgs = protected_requests(&group, &plain, Mode::Group, DISTINCT_REQUESTS);
    let s = signed(&group, &group_msgs);
    let msgs = protected_requests(&group, &plain, Mode::Pairwise, DISTINCT_REQUESTS);
    eprintln!(
        "pairwise request {SIZE}B: unprotected {} B, protected {} B (baseline ToBeSigned {} B)",
        plain.len(),
        msgs[0].len(),
        s.items[0].0.len()
    );
    let (back, _) = group
        .context("server", "client")
        .unprotect_request(&msgs[0])
        .expect("unprotect");
    assert_eq!(back, plain);

    let mut g = c.benchmark_group(format!("pairwise_{SIZE}B"));
    raw_verify_strict(&mut g, &s);
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
        b.iter_custom(|iters| time_server_unprotect(iters, &group, &msgs))
    });
    g.finish();
}

/// 18 benchmarks at 1 s warm-up + 3 s measurement: about 1.5 minutes in all on an idle
/// machine, setup and analysis included (more on a busy one, where CPU time accrues more
/// slowly than wall time). 50 samples are plenty for the median of microsecond operations.
fn config() -> Criterion<BenchClock> {
    eprintln!(
        "clock: {}",
        if *USE_WALL_CLOCK {
            "wall time"
        } else {
            "thread CPU time (GROXY_BENCH_CLOCK=wall for wall time)"
        }
    );
    Criterion::default()
        .with_measurement(BenchClock)
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
