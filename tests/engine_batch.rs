//! Batched signature verification (issue 14 point 3) on a virtual clock: the group-mode
//! requests of one receive batch have their countersignatures (RFC 10021 §5.3, §7.5)
//! verified together, and everything else stays as if each datagram had been handled
//! alone: the same datagrams out, the same events, in the same order, the replay window
//! (RFC 10021 §7.5, groupcomm-proxy §10) moved in the datagrams' order, duplicates
//! handled by the message layer (RFC 7252 §4.5). Forgeries are found by bisection and
//! the honest requests of their batch still pass.

mod common;

use std::net::SocketAddr;
use std::time::Instant;

use common::{Group, Member};
use groxy::coap::MessageView;
use groxy::coap::build::{self, CON, NON};
use groxy::coap::options as opt;
use groxy::oscore::alg::SigAlg;
use groxy::oscore::batch::BatchVerifier;
use groxy::oscore::cred::{Credential, PrivateKey};
use groxy::oscore::{GroupChecker, Mode, OscoreError, SecurityContext, SignatureChecker, Verdict};
use groxy::proxy::{
    CheckResult, DropReason, Engine, Event, GroupSecurity, Link, Policy, ProxyConfig, Transmit,
};

const C1: &[u8] = &[0x01];
const C2: &[u8] = &[0x02];
const DEV: &[u8] = &[0x0a];
const LISTENER: Link = Link::Listener(0);
const GET_HELLO: &str = "5101aa01c3b568656c6c6f";
const GROUP_A: &str = "224.0.1.187";
const GROUP_B: &str = "224.0.1.188";
const GROUP_C: &str = "224.0.1.189";

fn addr(i: u8) -> SocketAddr {
    format!("127.0.0.{}:40000", 1 + i).parse().unwrap()
}

/// A group whose members sign with ES256 (COSE -7).
fn es256_group(ids: &[&[u8]]) -> Group {
    let member = |id: &[u8], name: &str| {
        let key = PrivateKey::generate(SigAlg::Es256);
        let cred = Credential::ccs_for(name, &key.public_key());
        Member {
            id: id.to_vec(),
            key,
            cred,
        }
    };
    let mut g = Group::new(&[]);
    g.gm = member(b"", "gm");
    g.members = ids
        .iter()
        .enumerate()
        .map(|(i, id)| member(id, &format!("member{i}")))
        .collect();
    g
}

fn ctx(g: &Group, me: &[u8], es256: bool) -> SecurityContext {
    let mut c = g.config(me);
    if es256 {
        c.alg_signature = Some(-7);
    }
    SecurityContext::new(&c).unwrap()
}

struct Groups {
    a: Group,
    b: Group,
    c: Group,
}

impl Groups {
    fn new() -> Self {
        Groups {
            a: Group::new(&[C1, C2, DEV]),
            b: Group::new(&[C1, DEV]),
            c: es256_group(&[C1, DEV]),
        }
    }

    /// Three checked groups under enforce: A and B Ed25519, C ES256.
    fn config(&self) -> ProxyConfig {
        let mut cfg = ProxyConfig::default();
        let sec = |g: &Group, es256: bool| {
            let mut checker = g.checker_config();
            if es256 {
                checker.alg_signature = -7;
            }
            Some(GroupSecurity {
                policy: Policy::Enforce,
                checker,
                member: None,
                allow_kids: None,
            })
        };
        cfg.groups[0].security = sec(&self.a, false);
        for (name, ip, g, es) in [
            ("b", GROUP_B, &self.b, false),
            ("c", GROUP_C, &self.c, true),
        ] {
            let mut s = cfg.groups[0].clone();
            s.name = name.into();
            s.addr = format!("{ip}:5683").parse().unwrap();
            s.host_names = vec![];
            s.security = sec(g, es);
            cfg.groups.push(s);
        }
        cfg
    }
}

/// A group-mode (or `mode`) request protected by `ctx`, with the Class U proxy options
/// added outside as a client does (RFC 8613 §4.1), to `group`, as message `mid` of type `t`.
fn request(ctx: &mut SecurityContext, mode: Mode, group: &str, mid: u16, t: u8) -> Vec<u8> {
    let (p, _) = ctx
        .protect_request(&hex::decode(GET_HELLO).unwrap(), mode, Some(DEV))
        .unwrap();
    proxied(&p, group, mid, t)
}

fn proxied(protected: &[u8], group: &str, mid: u16, t: u8) -> Vec<u8> {
    let v = MessageView::parse(protected).unwrap();
    let mut opts: Vec<(u16, &[u8])> = v.options().collect();
    opts.push((opt::URI_HOST, group.as_bytes()));
    opts.push((opt::PROXY_SCHEME, b"coap"));
    opts.push((opt::MULTICAST_TIMEOUT_DEFAULT, &[10]));
    let token = mid.to_be_bytes();
    build::encode(t, v.code(), mid, &token, &mut opts, v.payload())
}

/// The signature is the payload's last 64 bytes (encrypted, RFC 10021 §4.1).
fn forged(msg: &[u8]) -> Vec<u8> {
    let mut m = msg.to_vec();
    let i = m.len() - 20;
    m[i] ^= 0x04;
    m
}

fn engine(cfg: &ProxyConfig) -> (Engine, Instant) {
    let now = Instant::now();
    (Engine::new(cfg.clone(), now, 7).unwrap(), now)
}

type Outputs = (Vec<Transmit>, Vec<Event>);

/// The same datagrams through two engines of one configuration and seed: as one batch,
/// and one by one. Returns both outputs and the batching engine.
fn both(cfg: &ProxyConfig, batch: &[(SocketAddr, Vec<u8>)]) -> (Outputs, Outputs, Engine) {
    let list: Vec<(SocketAddr, &[u8])> = batch.iter().map(|(a, d)| (*a, d.as_slice())).collect();
    let (mut one, now) = engine(cfg);
    for (a, d) in &list {
        one.handle(now, LISTENER, *a, d);
    }
    let single = common::outputs(&mut one);
    let (mut e, _) = engine(cfg);
    e.handle_batch(now, LISTENER, &list);
    let batched = common::outputs(&mut e);
    (single, batched, e)
}

fn checks(ev: &[Event]) -> Vec<(usize, CheckResult)> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Checked {
                group,
                request: true,
                result,
                ..
            } => Some((*group, *result)),
            _ => None,
        })
        .collect()
}

fn multicasts(tx: &[Transmit]) -> usize {
    tx.iter()
        .filter(|t| matches!(t.link, Link::Group(..)))
        .count()
}

/// Mixed groups and kids, ES256 beside Ed25519, a forgery, a replay of a request within
/// the batch (new Message ID and token, same Partial IV), a duplicate (same Message ID,
/// RFC 7252 §4.5), a CON, a pairwise-mode request (§8: not verifiable) and an unprotected
/// one: the batch gives exactly the outputs of the datagrams one by one.
#[test]
fn s7_5_batch_gives_the_outputs_of_one_by_one() {
    let gs = Groups::new();
    let cfg = gs.config();
    let (mut a1, mut a2) = (ctx(&gs.a, C1, false), ctx(&gs.a, C2, false));
    let mut b1 = ctx(&gs.b, C1, false);
    let mut c1 = ctx(&gs.c, C1, true);
    let first = request(&mut a1, Mode::Group, GROUP_A, 1, NON);
    let mut batch = vec![
        (addr(1), first.clone()),
        (addr(1), request(&mut a1, Mode::Group, GROUP_A, 2, NON)),
        (addr(2), request(&mut a2, Mode::Group, GROUP_A, 3, CON)),
        (
            addr(1),
            forged(&request(&mut a1, Mode::Group, GROUP_A, 4, NON)),
        ),
        (addr(3), request(&mut b1, Mode::Group, GROUP_B, 5, NON)),
        (addr(4), request(&mut c1, Mode::Group, GROUP_C, 6, NON)),
        (
            addr(4),
            forged(&request(&mut c1, Mode::Group, GROUP_C, 7, NON)),
        ),
        (addr(1), first.clone()),
    ];
    // The first request again under a new Message ID and token, from its sender and from
    // another address: replays of a Partial IV admitted earlier in the same batch.
    let v = MessageView::parse(&first).unwrap();
    let mut o: Vec<(u16, &[u8])> = v.options().collect();
    batch.push((
        addr(1),
        build::encode(NON, v.code(), 9, &[9], &mut o, v.payload()),
    ));
    batch.push((
        addr(5),
        build::encode(NON, v.code(), 10, &[10], &mut o, v.payload()),
    ));
    batch.push((addr(2), request(&mut a2, Mode::Pairwise, GROUP_A, 11, NON)));
    batch.push((
        addr(6),
        proxied(&hex::decode(GET_HELLO).unwrap(), GROUP_A, 12, NON),
    ));
    batch.push((addr(2), request(&mut a2, Mode::Group, GROUP_A, 13, NON)));
    let (single, batched, e) = both(&cfg, &batch);
    assert_eq!(batched, single);
    use CheckResult::*;
    assert_eq!(
        checks(&batched.1),
        vec![
            (0, Valid),
            (0, Valid),
            (0, Valid),
            (0, BadSignature),
            (1, Valid),
            (2, Valid),
            (2, BadSignature),
            (0, Replay),
            (0, Replay),
            (0, Unverifiable),
            (0, NotProtected),
            (0, Valid)
        ],
        "the duplicate is not checked again: the message layer drops it"
    );
    assert!(batched.1.iter().any(|e| matches!(
        e,
        Event::Dropped {
            reason: DropReason::DuplicateRequest,
            ..
        }
    )));
    let st = e.batch_stats();
    assert!(
        st.equations >= 1,
        "the Ed25519 signatures went into an equation: {st:?}"
    );
}

#[test]
fn s7_5_all_valid_one_equation() {
    let gs = Groups::new();
    let cfg = gs.config();
    let mut cs = [ctx(&gs.a, C1, false), ctx(&gs.a, C2, false)];
    let batch: Vec<_> = (0..32)
        .map(|i| {
            let k = i % 2;
            (
                addr(k as u8),
                request(&mut cs[k], Mode::Group, GROUP_A, i as u16, NON),
            )
        })
        .collect();
    let (single, batched, e) = both(&cfg, &batch);
    assert_eq!(batched, single);
    assert_eq!(multicasts(&batched.0), 32);
    let st = e.batch_stats();
    assert_eq!(
        (st.signatures, st.equations, st.singles),
        (32, 1, 0),
        "{st:?}"
    );
}

/// One forgery in 32: found, dropped; the 31 honest requests go out; the extra work is
/// bounded (bisection down to a set of 4, see `oscore::batch`).
#[test]
fn s7_5_one_forged_in_32_found_by_bisection() {
    let gs = Groups::new();
    let cfg = gs.config();
    let mut c = ctx(&gs.a, C1, false);
    let mut batch: Vec<_> = (0..32)
        .map(|i| (addr(1), request(&mut c, Mode::Group, GROUP_A, i, NON)))
        .collect();
    batch[17].1 = forged(&batch[17].1);
    let (single, batched, e) = both(&cfg, &batch);
    assert_eq!(batched, single);
    assert_eq!(multicasts(&batched.0), 31);
    assert_eq!(
        checks(&batched.1)
            .iter()
            .filter(|c| c.1 == CheckResult::BadSignature)
            .count(),
        1
    );
    let st = e.batch_stats();
    eprintln!("one forged in 32: {st:?}");
    assert!(
        st.singles <= 4 && st.equation_terms <= 32 + 2 * 28,
        "{st:?}"
    );
}

#[test]
fn s7_5_many_forged_honest_still_pass() {
    let gs = Groups::new();
    let cfg = gs.config();
    let mut c = ctx(&gs.a, C1, false);
    let mut batch: Vec<_> = (0..32)
        .map(|i| (addr(1), request(&mut c, Mode::Group, GROUP_A, i, NON)))
        .collect();
    for (i, b) in batch.iter_mut().enumerate() {
        if i % 2 == 1 {
            b.1 = forged(&b.1);
        }
    }
    let (single, batched, e) = both(&cfg, &batch);
    assert_eq!(batched, single);
    assert_eq!(multicasts(&batched.0), 16);
    let st = e.batch_stats();
    eprintln!("16 forged in 32: {st:?}");
    // Each forgery checked alone once; equations over at most 4 levels (32, 16, 8, 4).
    assert!(st.singles <= 32 && st.equation_terms <= 4 * 32, "{st:?}");
}

/// A sender past its rate budget gets no more signatures verified in a batch than its
/// budget lets reach the filter (groupcomm-proxy §10: the rate limit comes before the
/// costly check); the rest are refused with 4.29 as one by one.
#[test]
fn s10_batch_verifies_no_more_than_the_rate_budget() {
    let gs = Groups::new();
    let mut cfg = gs.config();
    cfg.limits.client_burst = 4.0;
    cfg.limits.client_rate = 0.001;
    let mut c = ctx(&gs.a, C1, false);
    let batch: Vec<_> = (0..32)
        .map(|i| {
            (
                addr(1),
                forged(&request(&mut c, Mode::Group, GROUP_A, i, NON)),
            )
        })
        .collect();
    let (single, batched, e) = both(&cfg, &batch);
    assert_eq!(batched, single);
    assert_eq!(checks(&batched.1).len(), 4);
    assert!(e.batch_stats().signatures <= 4, "{:?}", e.batch_stats());
}

/// No request waits for others: one request alone is verified where it is checked.
#[test]
fn a_lone_request_is_not_batched() {
    let gs = Groups::new();
    let cfg = gs.config();
    let mut c = ctx(&gs.a, C1, false);
    let batch = vec![(addr(1), request(&mut c, Mode::Group, GROUP_A, 1, NON))];
    let (single, batched, e) = both(&cfg, &batch);
    assert_eq!(batched, single);
    assert_eq!(multicasts(&batched.0), 1);
    assert_eq!(e.batch_stats().signatures, 0);
}

/// The checker's own batch interface: verdicts in order, the window moved in order (a
/// replay within the batch refused), ES256 behind the same interface.
#[test]
fn s7_5_checker_admit_requests_in_order() {
    let gs = Groups::new();
    for es256 in [false, true] {
        let g = if es256 { &gs.c } else { &gs.a };
        let mut cfg = g.checker_config();
        if es256 {
            cfg.alg_signature = -7;
        }
        let mut checker = GroupChecker::new(SignatureChecker::new(&cfg).unwrap());
        let mut c = ctx(g, C1, es256);
        let plain = hex::decode(GET_HELLO).unwrap();
        let reqs: Vec<Vec<u8>> = (0..6)
            .map(|_| c.protect_request(&plain, Mode::Group, Some(DEV)).unwrap().0)
            .collect();
        let mut list: Vec<Vec<u8>> = reqs.clone();
        list[2] = forged(&list[2]);
        list.push(reqs[0].clone());
        let refs: Vec<&[u8]> = list.iter().map(Vec::as_slice).collect();
        let mut v = BatchVerifier::new([9; 32]);
        let got = checker.admit_requests(&refs, &mut v);
        let kinds: Vec<_> = got
            .iter()
            .map(|r| match r {
                Ok(Verdict::Verified(_)) => "ok",
                Err(OscoreError::BadSignature) => "bad",
                Err(OscoreError::Replay) => "replay",
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            ["ok", "ok", "bad", "ok", "ok", "ok", "replay"],
            "es256 {es256}"
        );
        let st = v.stats();
        if es256 {
            assert_eq!(
                (st.equations, st.singles),
                (0, 7),
                "ES256 is verified one by one"
            );
        } else {
            assert!(st.equations >= 1, "{st:?}");
        }
    }
}
