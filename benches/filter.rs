//! The proxy's request filter at full rate: a validly signed group-mode request through
//! the engine (parse, target, limits, signature check, replay window, token, fan-out
//! datagram), beside a raw Ed25519 `verify_strict` of a message of the same length in the
//! same run. The ratio of the two medians is what the signature-checking proxy keeps of
//! the bare verification rate on one core.
//!
//! The same engine path is also run with the replay windows put on stable storage after
//! every batch of 32 requests, as the driver does before it sends a batch (one pwrite and
//! one fdatasync per batch, in a directory under the target dir), and the write with its
//! fdatasync alone: what durability costs per request and per batch on this machine.
//!
//! Batched verification (issue 14): the same requests through `Engine::handle_batch` 32
//! at a time (a full `recvmmsg` batch), all valid and with one forgery in every 32 (at a
//! position that moves from batch to batch); beside them groxy's batch equation alone,
//! ed25519-dalek's `verify_batch` on the same 32 signatures, and ES256 (p256, and with
//! `--features bench-aws-lc` aws-lc-rs) verifying messages of the same length.
//!
//! Run: `cargo bench --bench filter [--features bench-aws-lc]`. The medians, per request
//! (per verified request where one in 32 is forged) and their ratios to the raw
//! `verify_strict` are printed at the end, from criterion's estimates of this run.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use groxy::coap::MessageView;
use groxy::coap::build::{self, NON};
use groxy::coap::options as opt;
use groxy::oscore::aad::{self, GroupAad, RequestIds};
use groxy::oscore::alg::SigAlg;
use groxy::oscore::cred::{Credential, PrivateKey};
use groxy::oscore::option::OscoreOption;
use groxy::oscore::{CheckerConfig, ContextConfig, Mode, SecurityContext, TbsForm, derive};
use groxy::proxy::{Engine, GroupSecurity, Link, Output, Policy, ProxyConfig};
use groxy::runtime::replay::ReplayStore;

/// Datagrams the driver takes off a socket at once (`recvmmsg`), and so the requests
/// whose windows one write covers.
const BATCH: usize = 32;

/// Distinct requests (each Partial IV is accepted once); more iterations reuse them with a
/// fresh engine, built outside the timing.
const N: usize = 8192;

struct Fixture {
    cfg: ProxyConfig,
    requests: Vec<Vec<u8>>,
    /// `requests` with one in every 32 forged (a flipped bit of its encrypted signature).
    one_forged: Vec<Vec<u8>>,
    /// Each request's real ToBeSigned and decrypted signature, and the client's key: the
    /// raw baseline verifies exactly what the proxy verifies, message by message (one
    /// message verified over and over trains the branch predictor and looks faster).
    signed: Vec<(Vec<u8>, ed25519_dalek::Signature)>,
    key: ed25519_dalek::VerifyingKey,
}

fn fixture() -> Fixture {
    let gm = PrivateKey::generate(SigAlg::EdDsa);
    let client = PrivateKey::generate(SigAlg::EdDsa);
    let gm_cred = Credential::ccs_for("gm", &gm.public_key());
    let client_cred = Credential::ccs_for("client", &client.public_key());
    let gid = vec![0x44, 0x61, 0x6c];
    let (secret, salt) = (vec![7u8; 16], vec![9u8; 8]);
    let mut ctx = SecurityContext::new(&ContextConfig {
        master_secret: secret.clone(),
        master_salt: salt.clone(),
        id_context: Some(gid.clone()),
        alg_aead: Some(10),
        alg_group_enc: Some(10),
        alg_signature: Some(-8),
        alg_pairwise_key_agreement: Some(-27),
        gm_cred: Some(gm_cred.bytes().to_vec()),
        sender_id: vec![0x25],
        private_key: Some(client.to_bytes().to_vec()),
        sender_cred: Some(client_cred.bytes().to_vec()),
        ..Default::default()
    })
    .unwrap();
    ctx.sender.ssn = 256;
    let payload = [0x5au8; 92];
    let plain = build::encode(
        NON,
        0x02,
        1,
        &[1],
        &mut [(opt::URI_PATH, &b"temp"[..])],
        &payload,
    );
    let requests = (0..N)
        .map(|i| {
            let (p, _) = ctx.protect_request(&plain, Mode::Group, None).unwrap();
            // Add the Class U proxy options outside, as a client does.
            let v = MessageView::parse(&p).unwrap();
            let mut o: Vec<(u16, &[u8])> = v.options().collect();
            o.extend([
                (opt::URI_HOST, &b"224.0.1.187"[..]),
                (opt::PROXY_SCHEME, b"coap"),
                (opt::MULTICAST_TIMEOUT_DEFAULT, &[60]),
            ]);
            let token = (i as u32).to_be_bytes();
            build::encode(NON, v.code(), i as u16, &token, &mut o, v.payload())
        })
        .collect::<Vec<_>>();
    let sek = derive::derive(&secret, &salt, &[], Some(&gid), 10, "SEKey", 16);
    let algs = [0x84, 0x0a, 0x0a, 0x27, 0x38, 0x1a];
    let signed = requests
        .iter()
        .map(|r| {
            let v = MessageView::parse(r).unwrap();
            let o = OscoreOption::parse(v.option(opt::OSCORE).unwrap()).unwrap();
            let (kid, piv) = (o.kid.unwrap(), o.piv.unwrap());
            let mut ext = Vec::new();
            aad::external_aad(
                &mut ext,
                &algs,
                RequestIds {
                    kid,
                    piv,
                    kid_context: &gid,
                },
                Some(GroupAad {
                    oscore_option: v.option(opt::OSCORE).unwrap(),
                    sender_cred: client_cred.bytes(),
                    gm_cred: gm_cred.bytes(),
                }),
            );
            let (ciphertext, enc_sig) = v.payload().split_at(v.payload().len() - 64);
            let mut sig = [0u8; 64];
            derive::keystream(&sek, piv, kid, &gid, true, &mut sig);
            for (s, e) in sig.iter_mut().zip(enc_sig) {
                *s ^= e;
            }
            let mut tbs = Vec::new();
            aad::to_be_signed(&mut tbs, TbsForm::FiveElement, &ext, ciphertext);
            (tbs, ed25519_dalek::Signature::from_bytes(&sig))
        })
        .collect::<Vec<_>>();
    let key = match client.public_key() {
        groxy::oscore::cred::PublicKey::Ed25519(k) => k,
        _ => unreachable!(),
    };
    assert!(
        key.verify_strict(&signed[0].0, &signed[0].1).is_ok(),
        "baseline reproduces the signature"
    );
    let tbs_len = signed[0].0.len();
    let mut cfg = ProxyConfig::default();
    cfg.limits.max_exchanges = 2 * N;
    cfg.limits.max_exchanges_per_client = 2 * N;
    cfg.limits.client_rate = 1e12;
    cfg.limits.client_burst = 1e12;
    cfg.groups[0].security = Some(GroupSecurity {
        policy: Policy::Enforce,
        checker: CheckerConfig {
            gid,
            alg_aead: Some(10),
            alg_group_enc: 10,
            alg_signature: -8,
            alg_pairwise_key_agreement: Some(-27),
            master_secret: Some(secret),
            master_salt: salt,
            gm_cred: gm_cred.bytes().to_vec(),
            members: vec![(vec![0x25], client_cred.bytes().to_vec())],
            ..Default::default()
        },
        member: None,
        allow_kids: None,
    });
    println!(
        "request datagram {} bytes, ToBeSigned {tbs_len} bytes",
        requests[0].len()
    );
    let one_forged = requests
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut r = r.clone();
            // The forged one's place moves from batch to batch (the cost of bisection
            // depends on it).
            if i % BATCH == (i / BATCH * 13) % BATCH {
                let at = r.len() - 20;
                r[at] ^= 4;
            }
            r
        })
        .collect();
    Fixture {
        cfg,
        requests,
        one_forged,
        signed,
        key,
    }
}

fn bench(c: &mut Criterion) {
    let f = fixture();
    let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let mut g = c.benchmark_group("request_filter_100B");
    g.sample_size(20)
        .measurement_time(Duration::from_secs(6))
        .warm_up_time(Duration::from_secs(2));

    g.bench_function("raw_verify_strict", |b| {
        let mut i = 0;
        b.iter(|| {
            let (m, s) = &f.signed[i % N];
            i += 1;
            black_box(f.key.verify_strict(black_box(m), s)).unwrap()
        })
    });

    g.bench_function("engine_verify_replay_fan_out", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0u64;
            while done < iters {
                let t0 = Instant::now();
                let mut e = Engine::new(f.cfg.clone(), t0, 1).unwrap();
                let n = ((iters - done) as usize).min(N);
                let start = Instant::now();
                for r in &f.requests[..n] {
                    e.handle(t0, Link::Listener(0), client, r);
                    while let Some(o) = e.poll_output() {
                        if let Output::Transmit(t) = o {
                            black_box(t);
                        }
                    }
                }
                total += start.elapsed();
                assert_eq!(e.exchanges().0, n, "every request was admitted");
                done += n as u64;
            }
            total
        })
    });
    // The requests of each receive batch together, as the driver hands them over.
    let batched = |b: &mut criterion::Bencher, requests: &[Vec<u8>], admitted_per_batch: usize| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0u64;
            let mut list: Vec<(SocketAddr, &[u8])> = Vec::with_capacity(BATCH);
            while done < iters {
                let t0 = Instant::now();
                let mut e = Engine::new(f.cfg.clone(), t0, 1).unwrap();
                let n = ((iters - done) as usize).min(N);
                let start = Instant::now();
                for chunk in requests[..n].chunks(BATCH) {
                    list.clear();
                    list.extend(chunk.iter().map(|r| (client, r.as_slice())));
                    e.handle_batch(t0, Link::Listener(0), &list);
                    while let Some(o) = e.poll_output() {
                        if let Output::Transmit(t) = o {
                            black_box(t);
                        }
                    }
                }
                total += start.elapsed();
                let full = n / BATCH * admitted_per_batch;
                assert!(e.exchanges().0 >= full, "the honest requests were admitted");
                done += n as u64;
            }
            total
        })
    };
    g.bench_function("engine_batched_32_verify_replay_fan_out", |b| {
        batched(b, &f.requests, BATCH)
    });
    g.bench_function("engine_batched_32_one_forged_per_32", |b| {
        batched(b, &f.one_forged, BATCH - 1)
    });

    // The verification alone: groxy's equation over 32 signatures of one key, and
    // ed25519-dalek's verify_batch on the same 32 (one point per key per signature, no
    // per-signature strict checks); per batch of 32.
    let pk = groxy::oscore::cred::PublicKey::Ed25519(f.key);
    g.bench_function("raw_groxy_batch_equation_32", |b| {
        let mut v = groxy::oscore::batch::BatchVerifier::new([3; 32]);
        let sigs: Vec<[u8; 64]> = f.signed.iter().map(|(_, s)| s.to_bytes()).collect();
        let mut i = 0;
        b.iter(|| {
            let at = (i * BATCH) % (N - BATCH);
            i += 1;
            let jobs: Vec<_> = (at..at + BATCH)
                .map(|j| groxy::oscore::batch::SigJob {
                    key: &pk,
                    msg: &f.signed[j].0,
                    sig: &sigs[j],
                    batchable: true,
                })
                .collect();
            black_box(v.verify(&jobs))
        })
    });
    g.bench_function("raw_dalek_verify_batch_32", |b| {
        let keys = vec![f.key; BATCH];
        let mut i = 0;
        b.iter(|| {
            let at = (i * BATCH) % (N - BATCH);
            i += 1;
            let msgs: Vec<&[u8]> = (at..at + BATCH).map(|j| f.signed[j].0.as_slice()).collect();
            let sigs: Vec<_> = (at..at + BATCH).map(|j| f.signed[j].1).collect();
            ed25519_dalek::verify_batch(&msgs, &sigs, &keys).unwrap()
        })
    });

    // ES256 on messages of the ToBeSigned's length: groxy's verification path (p256) and
    // aws-lc-rs's.
    let es = PrivateKey::generate(SigAlg::Es256);
    let es_pub = es.public_key();
    let es_signed: Vec<(Vec<u8>, [u8; 64])> = f
        .signed
        .iter()
        .take(256)
        .map(|(m, _)| (m.clone(), es.sign(m)))
        .collect();
    g.bench_function("raw_es256_p256_verify", |b| {
        let mut i = 0;
        b.iter(|| {
            let (m, s) = &es_signed[i % es_signed.len()];
            i += 1;
            assert!(es_pub.verify(black_box(m), s))
        })
    });
    #[cfg(feature = "bench-aws-lc")]
    g.bench_function("raw_es256_aws_lc_rs_verify", |b| {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};
        use p256::elliptic_curve::sec1::ToSec1Point;
        let groxy::oscore::cred::PublicKey::P256(p) = &es_pub else {
            unreachable!()
        };
        let sec1 = p.to_sec1_point(false);
        let key = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, sec1.as_bytes());
        let mut i = 0;
        b.iter(|| {
            let (m, s) = &es_signed[i % es_signed.len()];
            i += 1;
            key.verify(black_box(m), s).unwrap()
        })
    });

    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("filter-bench-state");
    let _ = std::fs::remove_dir_all(&dir);
    // A store with the group's slots attached, and the engine clean: outside the timing.
    let durable = |e: &mut Engine| {
        let mut store = ReplayStore::new(&dir, 1).unwrap();
        let st = e.checker(0).unwrap().replay_state();
        store.attach(0, "bench", None, &st).unwrap();
        let _ = e.take_replay_state();
        store
    };

    g.bench_function("engine_verify_replay_fan_out_persisted_per_32", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut done = 0u64;
            let mut queued = Vec::with_capacity(BATCH);
            while done < iters {
                let t0 = Instant::now();
                let mut e = Engine::new(f.cfg.clone(), t0, 1).unwrap();
                let mut store = durable(&mut e);
                let n = ((iters - done) as usize).min(N);
                let start = Instant::now();
                for batch in f.requests[..n].chunks(BATCH) {
                    for r in batch {
                        e.handle(t0, Link::Listener(0), client, r);
                        while let Some(o) = e.poll_output() {
                            if let Output::Transmit(t) = o {
                                queued.push(t);
                            }
                        }
                    }
                    // The driver's step between a batch and its sends.
                    for (g, st) in e.take_replay_state() {
                        store.write(g, &st).unwrap();
                    }
                    black_box(&mut queued).clear();
                }
                total += start.elapsed();
                assert_eq!(e.exchanges().0, n, "every request was admitted");
                done += n as u64;
            }
            total
        })
    });

    g.bench_function("replay_state_write_fdatasync", |b| {
        let mut e = Engine::new(f.cfg.clone(), Instant::now(), 1).unwrap();
        let mut store = durable(&mut e);
        // One sender's window, as in the runs above.
        e.handle(Instant::now(), Link::Listener(0), client, &f.requests[0]);
        let st = e.take_replay_state().pop().unwrap().1;
        b.iter(|| store.write(0, black_box(&st)).unwrap())
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
    summary();
}

/// criterion's median of this run for one bench of the group, in nanoseconds.
fn median_ns(name: &str) -> Option<f64> {
    let p = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()?
        .join("criterion/request_filter_100B")
        .join(name)
        .join("new/estimates.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
    v["median"]["point_estimate"].as_f64()
}

/// Medians per request (per verified request where one in 32 is forged) and their rates
/// against the raw single verification's.
fn summary() {
    let Some(raw) = median_ns("raw_verify_strict") else {
        return;
    };
    let per = BATCH as f64;
    let rows = [
        ("engine_verify_replay_fan_out", 1.0, "one by one"),
        (
            "engine_batched_32_verify_replay_fan_out",
            1.0,
            "batched, all valid (aim >= 1.6x)",
        ),
        (
            "engine_batched_32_one_forged_per_32",
            per / (per - 1.0),
            "batched, one forged in 32, per verified request (aim >= 1.0x)",
        ),
        (
            "raw_groxy_batch_equation_32",
            1.0 / per,
            "groxy's batch verifier alone",
        ),
        (
            "raw_dalek_verify_batch_32",
            1.0 / per,
            "ed25519-dalek verify_batch alone",
        ),
        ("raw_es256_p256_verify", 1.0, "ES256, p256"),
        ("raw_es256_aws_lc_rs_verify", 1.0, "ES256, aws-lc-rs"),
    ];
    println!(
        "\nmedians of this run (raw verify_strict {:.1} µs = 1.00x):",
        raw / 1e3
    );
    for (name, scale, what) in rows {
        if let Some(m) = median_ns(name) {
            let t = m * scale;
            println!(
                "  {what}: {:.1} µs per request, {:.2}x the raw verification rate",
                t / 1e3,
                raw / t
            );
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
