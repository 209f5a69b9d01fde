//! What the response cache stores for every client from a Deterministic Request
//! (groupcomm-proxy-07 §7.4.1, draft-amsuess-core-cacheable-oscore-02 §3.4.4-§3.4.5, §6),
//! on the engine's virtual clock: answers are verified from public material (group
//! mode, the server's signature with the Request-Hash as a class I option) before they
//! are stored; what fails is dropped under enforce and relayed unstored under monitor; a
//! group nothing verifies stores nothing unless the operator opts in; a server's older
//! answer replayed into a later exchange is not stored again.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::Group;
use groxy::coap::MessageView;
use groxy::coap::build::{self, NON};
use groxy::coap::options as opt;
use groxy::oscore::SecurityContext;
use groxy::oscore::deterministic::REQUEST_HASH;
use groxy::proxy::{
    CacheEvent, CheckResult, DropReason, Engine, Event, GroupCache, GroupSecurity, Link, Policy,
    ProxyConfig, Transmit,
};

const MEMBER: &[u8] = &[0x01];
const DEV1: &[u8] = &[0x0d];
const DEV2: &[u8] = &[0x0e];
const DET_KID: &[u8] = &[0xdc];
/// GET /hello (token 0xc3), what every member protects to the same bytes.
const GET_HELLO: &[u8] = &[
    0x51, 0x01, 0xaa, 0x01, 0xc3, 0xb5, b'h', b'e', b'l', b'l', b'o',
];
const GET_OTHER: &[u8] = &[
    0x51, 0x01, 0xaa, 0x01, 0xc3, 0xb5, b'o', b't', b'h', b'e', b'r',
];

fn client() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}
fn device(i: u8) -> SocketAddr {
    format!("127.0.0.{}:5683", 10 + i).parse().unwrap()
}

struct H {
    e: Engine,
    now: Instant,
    mid: u16,
    g: Group,
    /// The two servers' contexts (their Partial IVs advance with every answer).
    devs: [SecurityContext; 2],
}

/// The cache on, group 0 with servers 1 and 2 as its `cache_members` and `dc` as its
/// Deterministic Client; checked under `policy` (None: no `[group.security]`).
fn config(g: &Group, policy: Option<Policy>, opt_in: bool) -> ProxyConfig {
    let mut cfg = ProxyConfig::default();
    cfg.cache.enabled = true;
    cfg.cache.groups = vec![GroupCache {
        members: vec![device(1), device(2)],
    }];
    cfg.cache.unverified_deterministic = opt_in;
    cfg.deterministic_kids = vec![Some(DET_KID.to_vec())];
    cfg.groups[0].security = policy.map(|policy| GroupSecurity {
        policy,
        checker: g.checker_config(),
        member: None,
        allow_kids: None,
    });
    cfg
}

fn harness(policy: Option<Policy>, opt_in: bool) -> H {
    harness_with(policy, |c| c.cache.unverified_deterministic = opt_in)
}

fn harness_with(policy: Option<Policy>, edit: impl FnOnce(&mut ProxyConfig)) -> H {
    let g = Group::new(&[MEMBER, DEV1, DEV2]);
    let mut cfg = config(&g, policy, false);
    edit(&mut cfg);
    let now = Instant::now();
    let devs = [
        SecurityContext::new(&g.config(DEV1)).unwrap(),
        SecurityContext::new(&g.config(DEV2)).unwrap(),
    ];
    H {
        e: Engine::new(cfg, now, 7).unwrap(),
        now,
        mid: 100,
        g,
        devs,
    }
}

impl H {
    /// The client's Deterministic Request for `plain` through the proxy (T' 5 s): what
    /// went to the group (if anything), what the client got, the events.
    fn request(&mut self, plain: &[u8]) -> (Option<Vec<u8>>, Vec<Vec<u8>>, Vec<Event>) {
        let ctx = SecurityContext::new(&self.g.config(MEMBER)).unwrap();
        let (protected, _) = ctx.protect_deterministic_request(plain, DET_KID).unwrap();
        self.mid += 1;
        let v = MessageView::parse(&protected).unwrap();
        let mut opts: Vec<(u16, &[u8])> = v.options().collect();
        opts.push((opt::URI_HOST, b"224.0.1.187"));
        opts.push((opt::PROXY_SCHEME, b"coap"));
        opts.push((opt::MULTICAST_TIMEOUT_DEFAULT, &[5]));
        let token = self.mid.to_be_bytes();
        let msg = build::encode(NON, v.code(), self.mid, &token, &mut opts, v.payload());
        self.e.handle(self.now, Link::Listener(0), client(), &msg);
        let (tx, ev) = common::outputs(&mut self.e);
        let fwd = tx
            .iter()
            .find(|t| matches!(t.link, Link::Group(..)))
            .map(|t| t.bytes.clone());
        (fwd, to_client(&tx), ev)
    }

    /// Server `i`'s (1 or 2) genuine answer to the forwarded request `fwd`.
    fn answer(&mut self, i: usize, fwd: &[u8], payload: &[u8]) -> Vec<u8> {
        let ctx = &mut self.devs[i - 1];
        let (_, mut det) = ctx.unprotect_deterministic_request(fwd, DET_KID).unwrap();
        let token = MessageView::parse(fwd).unwrap().token().to_vec();
        let plain = build::encode(NON, 0x45, 1, &token, &mut [], payload);
        ctx.protect_deterministic_response(&plain, &mut det)
            .unwrap()
    }

    /// `datagram` from server address `i`: what the client got and the events.
    fn feed(&mut self, i: u8, datagram: &[u8]) -> (Vec<Vec<u8>>, Vec<Event>) {
        self.e
            .handle(self.now, Link::Group(0, 0), device(i), datagram);
        let (tx, ev) = common::outputs(&mut self.e);
        (to_client(&tx), ev)
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.e.handle_timeout(self.now);
        common::outputs(&mut self.e);
    }
}

fn to_client(tx: &[Transmit]) -> Vec<Vec<u8>> {
    tx.iter()
        .filter(|t| t.link == Link::Listener(0) && t.to == client())
        .filter(|t| MessageView::parse(&t.bytes).is_ok_and(|v| v.code() != 0))
        .map(|t| t.bytes.clone())
        .collect()
}

fn stored(ev: &[Event]) -> usize {
    ev.iter()
        .filter(|e| {
            matches!(
                e,
                Event::Cache {
                    what: CacheEvent::Stored,
                    ..
                }
            )
        })
        .count()
}

fn response_checks(ev: &[Event]) -> Vec<CheckResult> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Checked {
                request: false,
                result,
                ..
            } => Some(*result),
            _ => None,
        })
        .collect()
}

fn dropped(ev: &[Event]) -> Vec<DropReason> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Dropped { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

/// The payload (the COSE ciphertext and signature) of a relayed or served response.
fn payload(d: &[u8]) -> Vec<u8> {
    MessageView::parse(d).unwrap().payload().to_vec()
}

/// Replaces the value of option `n` (or adds it) in a datagram.
fn with_option(d: &[u8], n: u16, value: &[u8]) -> Vec<u8> {
    let v = MessageView::parse(d).unwrap();
    let mut opts: Vec<(u16, &[u8])> = v.options().filter(|(o, _)| *o != n).collect();
    opts.push((n, value));
    opts.sort_by_key(|(o, _)| *o);
    build::encode(
        v.mtype(),
        v.code(),
        v.message_id(),
        v.token(),
        &mut opts,
        v.payload(),
    )
}

/// Both servers answer a Deterministic Request for GET /hello; the exchange ends at T'.
/// Returns their answers as sent.
fn fill(h: &mut H) -> [Vec<u8>; 2] {
    let (fwd, _, _) = h.request(GET_HELLO);
    let fwd = fwd.expect("forwarded");
    let a1 = h.answer(1, &fwd, b"hi from 1");
    let a2 = h.answer(2, &fwd, b"hi from 2");
    h.feed(1, &a1);
    h.feed(2, &a2);
    h.advance(Duration::from_secs(5));
    [a1, a2]
}

/// groupcomm-proxy §7.4.1, cacheable-oscore §3.4.4 and §3.4.5: each server's answer is
/// verified (group mode, its signature over the Request-Hash as class I) before it is
/// relayed and stored; the same Deterministic Request again (composed by any member: the
/// same bytes, §3.3) is then answered from the cache alone, both servers' protected
/// answers as they came, no datagram to the group.
#[test]
fn s7_4_1_verified_answers_are_stored_and_served_to_the_next_client() {
    let mut h = harness(Some(Policy::Enforce), false);
    let (fwd, _, _) = h.request(GET_HELLO);
    let fwd = fwd.expect("a miss goes to the group");
    let a1 = h.answer(1, &fwd, b"hi from 1");
    let a2 = h.answer(2, &fwd, b"hi from 2");
    for (i, a) in [(1, &a1), (2, &a2)] {
        let (got, ev) = h.feed(i, a);
        assert_eq!(got.len(), 1, "relayed");
        assert_eq!(payload(&got[0]), payload(a));
        assert_eq!(response_checks(&ev), vec![CheckResult::Valid]);
        assert_eq!(stored(&ev), 1);
    }
    h.advance(Duration::from_secs(5));
    let (fwd, got, ev) = h.request(GET_HELLO);
    assert!(fwd.is_none(), "served from the cache alone (§7.1)");
    assert_eq!(got.len(), 2);
    let mut served: Vec<Vec<u8>> = got.iter().map(|d| payload(d)).collect();
    served.sort();
    let mut sent = vec![payload(&a1), payload(&a2)];
    sent.sort();
    assert_eq!(served, sent);
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::Cache {
            what: CacheEvent::Hit,
            ..
        }
    )));
}

/// cacheable-oscore §3.4.4 (the Request-Hash is class I, the answer signed in group
/// mode), §6 (anyone on the network may answer), RFC 10021 §7.5: a forged or tampered
/// answer (a flipped signature bit; the server's genuine answer to another request; a
/// Request-Hash option naming another request; the kid of another server; a kid the
/// group does not have) is dropped under enforce (`response_check_failed`) and not
/// stored: the next request still goes to the group, and the genuine answers are stored.
#[test]
fn s7_4_1_forged_answers_are_dropped_and_never_stored() {
    let mut h = harness(Some(Policy::Enforce), false);
    let (fwd, _, _) = h.request(GET_HELLO);
    let fwd = fwd.unwrap();
    let genuine1 = h.answer(1, &fwd, b"hi from 1");
    let genuine2 = h.answer(2, &fwd, b"hi from 2");
    let mut flipped = genuine1.clone();
    *flipped.last_mut().unwrap() ^= 1;
    let (other_fwd, _, _) = h.request(GET_OTHER);
    let for_other = h.answer(1, &other_fwd.unwrap(), b"other");
    // Re-tokened to the exchange under attack (the token is not protected).
    let for_other = {
        let v = MessageView::parse(&for_other).unwrap();
        let mut opts: Vec<(u16, &[u8])> = v.options().collect();
        let tok = MessageView::parse(&fwd).unwrap().token().to_vec();
        build::encode(NON, v.code(), 9, &tok, &mut opts, v.payload())
    };
    let hash_other = with_option(&genuine1, REQUEST_HASH, &[0x5a; 32]);
    // The OSCORE option of a group-mode response: flags, Partial IV, kid (§6.1 of RFC
    // 8613; Group Flag 0x20). Another server's kid, and one the group does not have.
    let oscore = MessageView::parse(&genuine2)
        .unwrap()
        .option(opt::OSCORE)
        .unwrap()
        .to_vec();
    assert_eq!(oscore.last(), Some(&DEV2[0]));
    let mut as_dev1 = oscore.clone();
    *as_dev1.last_mut().unwrap() = DEV1[0];
    let other_kid = with_option(&genuine2, opt::OSCORE, &as_dev1);
    let mut unknown = oscore.clone();
    *unknown.last_mut().unwrap() = 0x77;
    let unknown_kid = with_option(&genuine2, opt::OSCORE, &unknown);
    for (name, forged) in [
        ("flipped signature", &flipped),
        ("answer to another request", &for_other),
        ("another Request-Hash", &hash_other),
        ("another server's kid", &other_kid),
        ("unknown kid", &unknown_kid),
    ] {
        let (got, ev) = h.feed(1, forged);
        assert!(got.is_empty(), "{name}: not relayed");
        assert_eq!(stored(&ev), 0, "{name}: not stored");
        assert_eq!(
            dropped(&ev),
            vec![DropReason::ResponseCheckFailed],
            "{name}"
        );
        assert_ne!(response_checks(&ev), vec![CheckResult::Valid], "{name}");
    }
    h.advance(Duration::from_secs(5));
    let (fwd, got, _) = h.request(GET_HELLO);
    assert!(got.is_empty());
    let fwd = fwd.expect("nothing stored: the group is asked again");
    // The genuine answers are stored (the forgeries did not block them).
    let a1 = h.answer(1, &fwd, b"hi from 1");
    let a2 = h.answer(2, &fwd, b"hi from 2");
    assert_eq!(stored(&h.feed(1, &a1).1), 1);
    assert_eq!(stored(&h.feed(2, &a2).1), 1);
    h.advance(Duration::from_secs(5));
    let (fwd, got, _) = h.request(GET_HELLO);
    assert!(fwd.is_none());
    assert_eq!(got.len(), 2);
}

/// RFC 10021 §7.5 monitor: a failing answer to a Deterministic Request is relayed to
/// its client and counted, but not stored for every other client (groupcomm-proxy
/// §7.4.1: the cache must not serve unverified bytes); a verified one is stored.
#[test]
fn s7_4_1_monitor_relays_failures_unstored() {
    let mut h = harness(Some(Policy::Monitor), false);
    let (fwd, _, _) = h.request(GET_HELLO);
    let fwd = fwd.unwrap();
    let mut forged = h.answer(1, &fwd, b"hi from 1");
    *forged.last_mut().unwrap() ^= 1;
    let (got, ev) = h.feed(1, &forged);
    assert_eq!(got.len(), 1, "relayed under monitor");
    assert_eq!(response_checks(&ev), vec![CheckResult::BadSignature]);
    assert_eq!(stored(&ev), 0);
    let genuine = h.answer(2, &fwd, b"hi from 2");
    let (got, ev) = h.feed(2, &genuine);
    assert_eq!(got.len(), 1);
    assert_eq!(stored(&ev), 1, "a verified answer is stored under monitor");
    h.advance(Duration::from_secs(5));
    let (fwd, _, _) = h.request(GET_HELLO);
    assert!(
        fwd.is_some(),
        "server 1 has nothing stored: the set is incomplete"
    );
}

/// groupcomm-proxy §7.4.1 without `[group.security]`: nothing verifies an answer, so
/// it is relayed but not stored for other clients, unless `[cache]
/// unverified_deterministic` opts in (then stored and served as before).
#[test]
fn s7_4_1_without_a_checker_nothing_stored_unless_opted_in() {
    let mut h = harness(None, false);
    fill(&mut h);
    let (fwd, _, _) = h.request(GET_HELLO);
    let fwd = fwd.expect("not stored: forwarded again");
    let a1 = h.answer(1, &fwd, b"hi from 1");
    let (got, ev) = h.feed(1, &a1);
    assert_eq!(got.len(), 1, "relayed");
    assert_eq!(stored(&ev), 0);

    let mut h = harness(None, true);
    fill(&mut h);
    let (fwd, got, _) = h.request(GET_HELLO);
    assert!(fwd.is_none(), "opted in: served from the cache");
    assert_eq!(got.len(), 2);
}

/// cacheable-oscore §6 (no replay protection of the request: its Partial IV is always 0,
/// so a server's earlier answer verifies in every later exchange for the same request),
/// RFC 10021 §5.3.1: a replay within an exchange is dropped (`response_replay`) as for
/// other group-mode responses; an older answer replayed into a later exchange is relayed
/// (it verifies, and is new to that exchange) but not stored again: it would make old
/// content fresh again. The server's newer answer is stored.
#[test]
fn s7_4_1_replayed_answers_are_not_stored_again() {
    let mut h = harness(Some(Policy::Enforce), false);
    let (fwd, _, _) = h.request(GET_HELLO);
    let fwd = fwd.unwrap();
    let old1 = h.answer(1, &fwd, b"old 1");
    let old2 = h.answer(2, &fwd, b"old 2");
    assert_eq!(stored(&h.feed(1, &old1).1), 1);
    let (got, ev) = h.feed(1, &old1);
    assert!(got.is_empty());
    assert_eq!(dropped(&ev), vec![DropReason::ResponseReplay]);
    assert_eq!(stored(&h.feed(2, &old2).1), 1);
    // Stale after the default 60 s (Max-Age 60, §3.4.4 step 9).
    h.advance(Duration::from_secs(61));
    let (fwd, _, _) = h.request(GET_HELLO);
    let fwd = fwd.expect("stale: forwarded");
    let tok = MessageView::parse(&fwd).unwrap().token().to_vec();
    let retoken = |d: &[u8]| {
        let v = MessageView::parse(d).unwrap();
        let mut opts: Vec<(u16, &[u8])> = v.options().collect();
        build::encode(NON, v.code(), 9, &tok, &mut opts, v.payload())
    };
    for (i, old) in [(1, &old1), (2, &old2)] {
        let (got, ev) = h.feed(i, &retoken(old));
        assert_eq!(got.len(), 1, "verifies: relayed");
        assert_eq!(stored(&ev), 0, "not stored again");
    }
    h.advance(Duration::from_secs(5));
    let (fwd, got, _) = h.request(GET_HELLO);
    assert!(got.is_empty(), "the replays refreshed nothing");
    let fwd = fwd.expect("still stale: forwarded");
    let new1 = h.answer(1, &fwd, b"new 1");
    let new2 = h.answer(2, &fwd, b"new 2");
    assert_eq!(stored(&h.feed(1, &new1).1), 1);
    assert_eq!(stored(&h.feed(2, &new2).1), 1);
    h.advance(Duration::from_secs(5));
    let (fwd, got, _) = h.request(GET_HELLO);
    assert!(fwd.is_none());
    let mut served: Vec<Vec<u8>> = got.iter().map(|d| payload(d)).collect();
    served.sort();
    let mut want = vec![payload(&new1), payload(&new2)];
    want.sort();
    assert_eq!(served, want);
}

/// `[cache] unverified_deterministic`: off by default (the shipped config/groxy.toml
/// too), and parsed when set.
#[test]
fn unverified_deterministic_config_key() {
    assert!(
        !groxy::settings::load_default()
            .run
            .proxy
            .cache
            .unverified_deterministic
    );
    assert!(!ProxyConfig::default().cache.unverified_deterministic);
    let ok =
        groxy::settings::load_str("[cache]\nenabled = true\nunverified_deterministic = true\n")
            .unwrap();
    assert!(ok.run.proxy.cache.unverified_deterministic);
}

/// The table of servers' newest stored Partial IVs (README Caching) is bounded by
/// `[cache] max_entries`: past it a new server's verified answer is relayed and not
/// stored (the first server's stays: nothing is evicted for it).
#[test]
fn s7_4_1_servers_remembered_at_most_max_entries() {
    let mut h = harness_with(Some(Policy::Enforce), |c| c.cache.max_entries = 1);
    let (fwd, _, _) = h.request(GET_HELLO);
    let fwd = fwd.unwrap();
    let a1 = h.answer(1, &fwd, b"hi from 1");
    let a2 = h.answer(2, &fwd, b"hi from 2");
    assert_eq!(stored(&h.feed(1, &a1).1), 1);
    let (got, ev) = h.feed(2, &a2);
    assert_eq!(got.len(), 1, "relayed");
    assert_eq!(stored(&ev), 0, "a second server past max_entries = 1");
}

/// RFC 10021 §2.6.3.2 (rekeying; the old epoch is kept only for the group's maximum
/// Multicast-Timeout): at the table's bound the servers of an epoch no checker accepts
/// any more are forgotten, so a rekey does not leave the new epoch's answers unstored.
#[test]
fn s7_4_1_a_rekey_does_not_fill_the_servers_table() {
    let mut h = harness_with(Some(Policy::Enforce), |c| c.cache.max_entries = 2);
    fill(&mut h);
    h.g.gid = common::random_bytes(4);
    h.g.key_generation = 1;
    let mut cfg = config(&h.g, Some(Policy::Enforce), false);
    cfg.cache.max_entries = 2;
    h.e.reconfigure(h.now, cfg).unwrap();
    common::outputs(&mut h.e);
    h.devs = [
        SecurityContext::new(&h.g.config(DEV1)).unwrap(),
        SecurityContext::new(&h.g.config(DEV2)).unwrap(),
    ];
    // Past the old epoch's grace period.
    h.advance(Duration::from_secs(3600));
    let (fwd, _, _) = h.request(GET_HELLO);
    let fwd = fwd.expect("another Gid: another request");
    let a1 = h.answer(1, &fwd, b"new 1");
    let a2 = h.answer(2, &fwd, b"new 2");
    assert_eq!(stored(&h.feed(1, &a1).1), 1);
    assert_eq!(stored(&h.feed(2, &a2).1), 1);
}

/// groupcomm-proxy §7 (one stored response per server, the address its Reply-From
/// names) and §7.1 (a complete set): nothing in an answer names the address it should
/// come from, so a server's genuine answer relayed from another member's address
/// verifies; it is held under one address only, the one its newest answer came from, so
/// copies of one server's answers never make a set complete in another's place.
#[test]
fn s7_4_1_one_servers_answer_never_fills_anothers_place() {
    let mut h = harness(Some(Policy::Enforce), false);
    let (fwd, _, _) = h.request(GET_HELLO);
    let fwd = fwd.unwrap();
    let a2 = h.answer(2, &fwd, b"hi from 2");
    // Copied from device 1's address first; the server's own then is its replay.
    assert_eq!(stored(&h.feed(1, &a2).1), 1);
    assert_eq!(dropped(&h.feed(2, &a2).1), vec![DropReason::ResponseReplay]);
    h.advance(Duration::from_secs(5));
    let (fwd, _, _) = h.request(GET_HELLO);
    let fwd = fwd.expect("device 2 has nothing stored: forwarded");
    let b2 = h.answer(2, &fwd, b"hi from 2");
    assert_eq!(stored(&h.feed(2, &b2).1), 1);
    h.advance(Duration::from_secs(5));
    let (fwd, got, _) = h.request(GET_HELLO);
    assert!(got.is_empty());
    assert!(
        fwd.is_some(),
        "server 2's answers under both addresses would have made the set complete"
    );
}
