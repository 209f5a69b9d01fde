//! The response cache (groupcomm-proxy-07 §7, RFC 7252 §5.6, RFC 8132 §2.3) on a
//! virtual clock: freshness and Max-Age aging, Cache-Key, revalidation, Group-ETag,
//! what is never cached, the bounds and a resize.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use groxy::coap::MessageView;
use groxy::coap::build::{self, ACK, CON, NON, code};
use groxy::coap::cri;
use groxy::coap::options as opt;
use groxy::proxy::{CacheEvent, Engine, Event, GroupCache, Link, ProxyConfig, Transmit};

const MT: u16 = opt::MULTICAST_TIMEOUT_DEFAULT;
const RF: u16 = opt::REPLY_FROM_DEFAULT;
/// Group-ETag, its suggested number (groupcomm-proxy §11.1).
const GE: u16 = 24;
const ETAG: u16 = 4;
const VALID: u8 = 0x43;
const FETCH: u8 = 0x05;
const LISTENER: Link = Link::Listener(0);

fn client() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}
fn device(i: u8) -> SocketAddr {
    format!("127.0.0.{}:5683", 10 + i).parse().unwrap()
}
fn origin() -> SocketAddr {
    "192.0.2.7:5683".parse().unwrap()
}

/// The default group and unicast forwarding, the cache on; the group's members are
/// devices 1 and 2.
fn config() -> ProxyConfig {
    let mut c = ProxyConfig::default();
    c.cache.enabled = true;
    c.cache.groups = vec![GroupCache {
        members: vec![device(1), device(2)],
    }];
    c
}

struct Harness {
    e: Engine,
    now: Instant,
    mid: u16,
    tok: u8,
}

impl Harness {
    fn new(cfg: ProxyConfig) -> Self {
        let now = Instant::now();
        Harness {
            e: Engine::new(cfg, now, 7).unwrap(),
            now,
            mid: 100,
            tok: 0,
        }
    }
    fn feed(&mut self, link: Link, from: SocketAddr, msg: &[u8]) -> (Vec<Transmit>, Vec<Event>) {
        self.e.handle(self.now, link, from, msg);
        common::outputs(&mut self.e)
    }
    fn advance(&mut self, d: Duration) -> (Vec<Transmit>, Vec<Event>) {
        self.now += d;
        self.e.handle_timeout(self.now);
        common::outputs(&mut self.e)
    }
    /// A request from the client with a fresh MID and token: (datagrams, events, token).
    fn request(
        &mut self,
        t: u8,
        c: u8,
        opts: &[(u16, &[u8])],
        payload: &[u8],
    ) -> (Vec<Transmit>, Vec<Event>, Vec<u8>) {
        self.mid += 1;
        self.tok += 1;
        let token = vec![0xca, self.tok];
        let msg = build::encode(t, c, self.mid, &token, &mut opts.to_vec(), payload);
        let (tx, ev) = self.feed(LISTENER, client(), &msg);
        (tx, ev, token)
    }
    /// A group GET of /temp with T' = `secs`, and `extra` options.
    fn group_get(
        &mut self,
        secs: u32,
        extra: &[(u16, &[u8])],
    ) -> (Vec<Transmit>, Vec<Event>, Vec<u8>) {
        let mt = opt::uint_value(secs);
        let mut o: Vec<(u16, &[u8])> = vec![
            (opt::URI_HOST, b"224.0.1.187"),
            (opt::PROXY_SCHEME, b"coap"),
            (opt::URI_PATH, b"temp"),
            (MT, &mt),
        ];
        o.extend_from_slice(extra);
        self.request(NON, code::GET, &o, &[])
    }
    fn unicast(
        &mut self,
        t: u8,
        uri: &[u8],
        extra: &[(u16, &[u8])],
    ) -> (Vec<Transmit>, Vec<Event>, Vec<u8>) {
        let mut o: Vec<(u16, &[u8])> = vec![(opt::PROXY_URI, uri)];
        o.extend_from_slice(extra);
        self.request(t, code::GET, &o, &[])
    }
}

/// What went to the group, to the origin, and to the client.
fn to_group(tx: &[Transmit]) -> Vec<&Transmit> {
    tx.iter()
        .filter(|t| matches!(t.link, Link::Group(..)))
        .collect()
}
fn to_origin(tx: &[Transmit]) -> Vec<&Transmit> {
    tx.iter()
        .filter(|t| matches!(t.link, Link::Unicast(_)))
        .collect()
}
fn to_client(tx: &[Transmit]) -> Vec<MessageView<'_>> {
    tx.iter()
        .filter(|t| t.link == LISTENER && t.to == client())
        .map(|t| MessageView::parse(&t.bytes).unwrap())
        .filter(|v| v.code() != code::EMPTY)
        .collect()
}

fn cache_events(ev: &[Event]) -> Vec<CacheEvent> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Cache { what, .. } => Some(*what),
            _ => None,
        })
        .collect()
}

/// A response to a forwarded request: code, options, payload.
fn answer(fwd: &Transmit, c: u8, opts: &[(u16, &[u8])], payload: &[u8]) -> Vec<u8> {
    let v = MessageView::parse(&fwd.bytes).unwrap();
    build::encode(NON, c, 7, v.token(), &mut opts.to_vec(), payload)
}

fn max_age(v: &MessageView) -> Option<u32> {
    v.option(opt::MAX_AGE).map(|m| opt::read_uint(m).unwrap())
}

/// A group GET answered by both members with Max-Age `age` (and ETags `v1`, `v2`);
/// the exchange ends at T' = 2 s.
fn fill_group(h: &mut Harness, age: u32) {
    let (tx, _, _) = h.group_get(2, &[]);
    let fwd = to_group(&tx)[0].clone();
    let a = opt::uint_value(age);
    for (i, tag) in [(1u8, b"v1"), (2, b"v2")] {
        let r = answer(
            &fwd,
            code::CONTENT,
            &[(ETAG, tag), (opt::MAX_AGE, &a)],
            &[b'0' + i],
        );
        h.feed(Link::Group(0, 0), device(i), &r);
    }
    h.advance(Duration::from_secs(2));
}

#[test]
fn s7_1_complete_fresh_set_is_served_from_the_cache_alone() {
    let mut h = Harness::new(config());
    fill_group(&mut h, 30);
    h.advance(Duration::from_secs(8));
    let (tx, ev, token) = h.group_get(5, &[]);
    // Nothing reaches the group; both stored responses, under the client's token, each
    // with its server's Reply-From and Max-Age aged by 10 s (RFC 7252 §5.6.1).
    assert!(to_group(&tx).is_empty());
    let got = to_client(&tx);
    assert_eq!(got.len(), 2);
    for (v, i) in got.iter().zip([1u8, 2]) {
        assert_eq!(v.token(), token.as_slice());
        assert_eq!(v.code(), code::CONTENT);
        assert_eq!(v.payload(), &[b'0' + i]);
        assert_eq!(
            cri::parse_reply_from(v.option(RF).unwrap()),
            Some(device(i))
        );
        assert_eq!(max_age(v), Some(20));
        // §7.3: a 2.05 from a complete set may carry its Group-ETag.
        assert!(v.option(GE).is_some());
    }
    assert_eq!(cache_events(&ev), vec![CacheEvent::Hit]);
}

#[test]
fn s7_1_incomplete_or_stale_set_or_unknown_members_is_forwarded() {
    // Only one member answered: forwarded.
    let mut h = Harness::new(config());
    let (tx, _, _) = h.group_get(2, &[]);
    let r = answer(to_group(&tx)[0], code::CONTENT, &[], b"1");
    h.feed(Link::Group(0, 0), device(1), &r);
    h.advance(Duration::from_secs(2));
    let (tx, ev, _) = h.group_get(2, &[]);
    assert_eq!(to_group(&tx).len(), 1);
    assert_eq!(cache_events(&ev), vec![CacheEvent::Miss]);

    // Complete but past its Max-Age (default 60 s without the option, RFC 7252 §5.10.5).
    let mut h = Harness::new(config());
    let (tx, _, _) = h.group_get(2, &[]);
    let fwd = to_group(&tx)[0].clone();
    for i in [1, 2] {
        h.feed(
            Link::Group(0, 0),
            device(i),
            &answer(&fwd, code::CONTENT, &[], b"x"),
        );
    }
    h.advance(Duration::from_secs(2));
    h.advance(Duration::from_secs(57));
    let (tx, _, _) = h.group_get(2, &[]);
    assert!(to_group(&tx).is_empty(), "fresh for 60 s without Max-Age");
    h.advance(Duration::from_secs(2));
    let (tx, _, _) = h.group_get(2, &[]);
    assert_eq!(to_group(&tx).len(), 1, "stale at 61 s");

    // No members configured: the proxy cannot know the group is complete (§7.1).
    let mut c = config();
    c.cache.groups.clear();
    let mut h = Harness::new(c);
    fill_group(&mut h, 30);
    let (tx, _, _) = h.group_get(2, &[]);
    assert_eq!(to_group(&tx).len(), 1);
}

#[test]
fn s7_cache_off_by_default() {
    let mut h = Harness::new(ProxyConfig::default());
    fill_group(&mut h, 30);
    let (tx, ev, _) = h.group_get(2, &[]);
    assert_eq!(to_group(&tx).len(), 1);
    assert!(cache_events(&ev).is_empty());
}

#[test]
fn rfc7252_5_6_unicast_hit_piggybacked_with_aged_max_age() {
    let mut h = Harness::new(config());
    let (tx, _, _) = h.unicast(CON, b"coap://192.0.2.7/x", &[]);
    let fwd = to_origin(&tx)[0].clone();
    let r = answer(&fwd, code::CONTENT, &[(opt::MAX_AGE, &[20])], b"hello");
    let (tx, _) = h.feed(fwd.link, origin(), &r);
    assert_eq!(to_client(&tx).len(), 1);
    h.advance(Duration::from_secs(5));
    let (tx, ev, token) = h.unicast(CON, b"coap://192.0.2.7/x", &[]);
    assert!(to_origin(&tx).is_empty());
    let got = to_client(&tx);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].mtype(), ACK);
    assert_eq!(got[0].token(), token.as_slice());
    assert_eq!(got[0].payload(), b"hello");
    assert_eq!(max_age(&got[0]), Some(15));
    // A unicast response has no Reply-From.
    assert!(got[0].option(RF).is_none());
    assert_eq!(cache_events(&ev), vec![CacheEvent::Hit]);
    // Past its Max-Age: forwarded again.
    h.advance(Duration::from_secs(16));
    let (tx, _, _) = h.unicast(CON, b"coap://192.0.2.7/x", &[]);
    assert_eq!(to_origin(&tx).len(), 1);
}

#[test]
fn rfc7252_5_6_cache_key_options_payload_and_target_forms() {
    let mut h = Harness::new(config());
    let (tx, _, _) = h.unicast(NON, b"coap://192.0.2.7/x", &[]);
    let fwd = to_origin(&tx)[0].clone();
    h.feed(fwd.link, origin(), &answer(&fwd, code::CONTENT, &[], b"x"));
    // The same target as Proxy-Scheme + Uri-Host + Uri-Path: the same key.
    let (tx, _, _) = h.request(
        NON,
        code::GET,
        &[
            (opt::URI_HOST, b"192.0.2.7"),
            (opt::URI_PATH, b"x"),
            (opt::PROXY_SCHEME, b"coap"),
        ],
        &[],
    );
    assert!(
        to_origin(&tx).is_empty(),
        "same Cache-Key, other target form"
    );
    // A NoCacheKey option (Size1, 60: RFC 7252 §5.4.6) does not change the key.
    let (tx, _, _) = h.unicast(NON, b"coap://192.0.2.7/x", &[(60, &[9])]);
    assert!(to_origin(&tx).is_empty());
    // Another path, an Accept, another origin port: other keys.
    for (uri, extra) in [
        (&b"coap://192.0.2.7/y"[..], None),
        (b"coap://192.0.2.7/x", Some((17u16, &[50u8][..]))),
        (b"coap://192.0.2.7:5684/x", None),
    ] {
        let extra: Vec<(u16, &[u8])> = extra.into_iter().collect();
        let (tx, _, _) = h.unicast(NON, uri, &extra);
        assert_eq!(to_origin(&tx).len(), 1, "{uri:?} {extra:?}");
    }
    // RFC 8132 §2.3: FETCH is cached with its payload in the key.
    let f = |h: &mut Harness, body: &[u8]| {
        h.request(NON, FETCH, &[(opt::PROXY_URI, b"coap://192.0.2.7/q")], body)
    };
    let (tx, _, _) = f(&mut h, b"a");
    let fwd = to_origin(&tx)[0].clone();
    h.feed(fwd.link, origin(), &answer(&fwd, code::CONTENT, &[], b"A"));
    let (tx, _, _) = f(&mut h, b"a");
    assert!(to_origin(&tx).is_empty());
    assert_eq!(to_client(&tx)[0].payload(), b"A");
    let (tx, _, _) = f(&mut h, b"b");
    assert_eq!(to_origin(&tx).len(), 1);
}

#[test]
fn s7_unicast_request_hits_a_response_stored_by_a_group_request() {
    let mut h = Harness::new(config());
    fill_group(&mut h, 30);
    let (tx, _, _) = h.unicast(NON, b"coap://127.0.0.12/temp", &[]);
    assert!(to_origin(&tx).is_empty());
    let got = to_client(&tx);
    assert_eq!(got[0].payload(), b"2");
    assert!(got[0].option(RF).is_none());
}

#[test]
fn rfc7252_5_6_never_cached() {
    // T' = 0 (nothing relayed, §5.2.1 step 6), an Observe registration, POST, a
    // Max-Age 0 response, 2.04, an OSCORE request that is not deterministic (§7.4).
    let mut h = Harness::new(config());
    // Max-Age 0 and 2.04 from the origin.
    for (c, opts) in [
        (code::CONTENT, vec![(opt::MAX_AGE, &[][..])]),
        (code::CHANGED, vec![]),
    ] {
        let (tx, _, _) = h.unicast(NON, b"coap://192.0.2.7/m", &[]);
        let fwd = to_origin(&tx)[0].clone();
        h.feed(fwd.link, origin(), &answer(&fwd, c, &opts, b"x"));
        let (tx, _, _) = h.unicast(NON, b"coap://192.0.2.7/m", &[]);
        assert_eq!(to_origin(&tx).len(), 1);
        let fwd = to_origin(&tx)[0].clone();
        h.feed(
            fwd.link,
            origin(),
            &answer(&fwd, code::CONTENT, &[(opt::MAX_AGE, &[])], b"x"),
        );
    }
    // POST is not cached.
    for _ in 0..2 {
        let (tx, ev, _) = h.request(
            NON,
            code::POST,
            &[(opt::PROXY_URI, b"coap://192.0.2.7/p")],
            &[],
        );
        assert_eq!(to_origin(&tx).len(), 1);
        assert!(cache_events(&ev).is_empty());
        let fwd = to_origin(&tx)[0].clone();
        h.feed(fwd.link, origin(), &answer(&fwd, code::CONTENT, &[], b"x"));
    }
    // The complete group set, then requests that must still go to the group.
    fill_group(&mut h, 30);
    let (tx, ev, _) = h.group_get(0, &[]);
    assert_eq!(to_group(&tx).len(), 1, "T' = 0");
    assert!(cache_events(&ev).is_empty());
    let (tx, _, _) = h.group_get(2, &[(6, &[])]);
    assert_eq!(to_group(&tx).len(), 1, "Observe registration");
    let (tx, ev, _) = h.group_get(2, &[(opt::OSCORE, &[0x09, 0x01, 0x25])]);
    assert_eq!(to_group(&tx).len(), 1, "protected end to end");
    assert!(cache_events(&ev).is_empty());
}

#[test]
fn s7_2_1_unicast_revalidation_2_03_refreshes_and_2_05_replaces() {
    let mut h = Harness::new(config());
    let (tx, _, _) = h.unicast(NON, b"coap://192.0.2.7/r", &[]);
    let fwd = to_origin(&tx)[0].clone();
    let r = answer(
        &fwd,
        code::CONTENT,
        &[(ETAG, b"e1"), (opt::MAX_AGE, &[5])],
        b"one",
    );
    h.feed(fwd.link, origin(), &r);
    h.advance(Duration::from_secs(6));
    // Stale with an ETag: forwarded with that ETag (RFC 7252 §5.6.2).
    let (tx, _, token) = h.unicast(NON, b"coap://192.0.2.7/r", &[]);
    let fwd = to_origin(&tx)[0].clone();
    let v = MessageView::parse(&fwd.bytes).unwrap();
    assert_eq!(v.option(ETAG), Some(&b"e1"[..]));
    // 2.03: the client gets the stored representation with the new Max-Age.
    let r = answer(&fwd, VALID, &[(ETAG, b"e1"), (opt::MAX_AGE, &[30])], b"");
    let (tx, ev) = h.feed(fwd.link, origin(), &r);
    let got = to_client(&tx);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].code(), code::CONTENT);
    assert_eq!(got[0].token(), token.as_slice());
    assert_eq!(got[0].payload(), b"one");
    assert_eq!(max_age(&got[0]), Some(30));
    assert!(cache_events(&ev).contains(&CacheEvent::Revalidated));
    // Fresh again: a hit.
    let (tx, _, _) = h.unicast(NON, b"coap://192.0.2.7/r", &[]);
    assert!(to_origin(&tx).is_empty());
    // Stale again; this time a 2.05 with a new representation replaces it.
    h.advance(Duration::from_secs(31));
    let (tx, _, _) = h.unicast(NON, b"coap://192.0.2.7/r", &[]);
    let fwd = to_origin(&tx)[0].clone();
    let r = answer(
        &fwd,
        code::CONTENT,
        &[(ETAG, b"e2"), (opt::MAX_AGE, &[30])],
        b"two",
    );
    let (tx, _) = h.feed(fwd.link, origin(), &r);
    assert_eq!(to_client(&tx)[0].payload(), b"two");
    let (tx, _, _) = h.unicast(NON, b"coap://192.0.2.7/r", &[]);
    assert!(to_origin(&tx).is_empty());
    assert_eq!(to_client(&tx)[0].payload(), b"two");
}

#[test]
fn rfc7252_5_6_2_client_etag_2_03_is_the_clients() {
    // The client's own ETag: the proxy adds none, and a 2.03 goes to the client as is.
    let mut h = Harness::new(config());
    let (tx, _, _) = h.unicast(NON, b"coap://192.0.2.7/c", &[(ETAG, b"c1")]);
    let fwd = to_origin(&tx)[0].clone();
    let v = MessageView::parse(&fwd.bytes).unwrap();
    assert_eq!(v.options().filter(|(n, _)| *n == ETAG).count(), 1);
    let (tx, _) = h.feed(
        fwd.link,
        origin(),
        &answer(&fwd, VALID, &[(ETAG, b"c1")], b""),
    );
    assert_eq!(to_client(&tx)[0].code(), VALID);
}

#[test]
fn s7_2_2_group_revalidation_with_etags() {
    let mut h = Harness::new(config());
    fill_group(&mut h, 10);
    h.advance(Duration::from_secs(10));
    // The stale set: the group request carries both ETags (groupcomm-bis §3.2.2).
    let (tx, ev, token) = h.group_get(2, &[]);
    assert_eq!(cache_events(&ev), vec![CacheEvent::Miss]);
    let fwd = to_group(&tx)[0].clone();
    let v = MessageView::parse(&fwd.bytes).unwrap();
    let tags: Vec<&[u8]> = v
        .options()
        .filter(|(n, _)| *n == ETAG)
        .map(|(_, t)| t)
        .collect();
    assert_eq!(tags, vec![&b"v1"[..], &b"v2"[..]]);
    // Device 1: 2.03, the client gets its stored 2.05; device 2: a new 2.05.
    let (tx, ev) = h.feed(
        Link::Group(0, 0),
        device(1),
        &answer(&fwd, VALID, &[(ETAG, b"v1"), (opt::MAX_AGE, &[40])], b""),
    );
    let got = to_client(&tx);
    assert_eq!(got[0].code(), code::CONTENT);
    assert_eq!(got[0].payload(), b"1");
    assert_eq!(got[0].token(), token.as_slice());
    assert_eq!(
        cri::parse_reply_from(got[0].option(RF).unwrap()),
        Some(device(1))
    );
    assert_eq!(cache_events(&ev), vec![CacheEvent::Revalidated]);
    let (tx, _) = h.feed(
        Link::Group(0, 0),
        device(2),
        &answer(
            &fwd,
            code::CONTENT,
            &[(ETAG, b"v3"), (opt::MAX_AGE, &[40])],
            b"new",
        ),
    );
    assert_eq!(to_client(&tx)[0].payload(), b"new");
    h.advance(Duration::from_secs(2));
    // Both fresh again: served from the cache.
    let (tx, _, _) = h.group_get(2, &[]);
    assert!(to_group(&tx).is_empty());
    let got: Vec<Vec<u8>> = to_client(&tx)
        .iter()
        .map(|v| v.payload().to_vec())
        .collect();
    assert_eq!(got, vec![b"1".to_vec(), b"new".to_vec()]);
}

#[test]
fn s7_3_group_etag_match_gets_one_2_03_mismatch_gets_the_set() {
    let mut h = Harness::new(config());
    fill_group(&mut h, 30);
    let (tx, _, _) = h.group_get(2, &[]);
    let ge = to_client(&tx)[0].option(GE).unwrap().to_vec();
    assert!((1..=8).contains(&ge.len()), "§7.3: 1-8 bytes");
    // Matching (among others): one 2.03 with the Group-ETag, no payload.
    let (tx, ev, token) = h.group_get(2, &[(GE, b"zz"), (GE, &ge)]);
    assert!(to_group(&tx).is_empty());
    let got = to_client(&tx);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].code(), VALID);
    assert_eq!(got[0].token(), token.as_slice());
    assert_eq!(got[0].option(GE), Some(ge.as_slice()));
    assert!(got[0].payload().is_empty());
    assert_eq!(cache_events(&ev), vec![CacheEvent::GroupEtagValid]);
    // Not matching: the whole set, with the current Group-ETag.
    let (tx, _, _) = h.group_get(2, &[(GE, b"zz")]);
    let got = to_client(&tx);
    assert_eq!(got.len(), 2);
    assert!(
        got.iter()
            .all(|v| v.code() == code::CONTENT && v.option(GE) == Some(ge.as_slice()))
    );
    // A member's response changes: a new Group-ETag, and the old one gets no 2.03.
    h.advance(Duration::from_secs(31));
    let (tx, _, _) = h.group_get(2, &[(GE, &ge)]);
    let fwd = to_group(&tx)[0].clone();
    assert!(to_client(&tx).is_empty(), "stale: never a 2.03 (§7.3)");
    let a = opt::uint_value(30);
    h.feed(
        Link::Group(0, 0),
        device(1),
        &answer(&fwd, VALID, &[(ETAG, b"v1"), (opt::MAX_AGE, &a)], b""),
    );
    let (tx, _) = h.feed(
        Link::Group(0, 0),
        device(2),
        &answer(
            &fwd,
            code::CONTENT,
            &[(ETAG, b"v9"), (opt::MAX_AGE, &a)],
            b"9",
        ),
    );
    assert!(to_client(&tx).iter().all(|v| v.code() == code::CONTENT));
    h.advance(Duration::from_secs(2));
    let (tx, _, _) = h.group_get(2, &[(GE, &ge)]);
    let got = to_client(&tx);
    assert_eq!(got.len(), 2, "the old Group-ETag no longer matches");
    assert_ne!(got[0].option(GE), Some(ge.as_slice()));
}

#[test]
fn s7_3_no_group_etag_2_03_for_an_incomplete_set() {
    let mut c = config();
    c.cache.groups[0].members.push(device(3));
    let mut h = Harness::new(c);
    fill_group(&mut h, 30);
    let (tx, _, _) = h.group_get(2, &[(GE, b"\x00")]);
    assert_eq!(to_group(&tx).len(), 1);
    assert!(to_client(&tx).is_empty());
}

#[test]
fn s7_4_1_deterministic_requests_are_cached_others_not() {
    let mut c = config();
    c.deterministic_kids = vec![Some(vec![0xdc])];
    // No checker here: the forged "sealed" answers are stored only by opting in.
    c.cache.unverified_deterministic = true;
    let mut h = Harness::new(c);
    let fetch = |h: &mut Harness, oscore: &[u8], c: u8| {
        let mt = opt::uint_value(2);
        h.request(
            NON,
            c,
            &[
                (opt::URI_HOST, b"224.0.1.187"),
                (opt::OSCORE, oscore),
                (opt::PROXY_SCHEME, b"coap"),
                (MT, &mt),
                // cacheable-oscore-02 §3.3: the Request-Hash (548) marks it deterministic.
                (548, &[0x5a; 32]),
            ],
            b"ciphertext",
        )
    };
    // Pairwise mode (Group Flag 0), Partial IV 1 byte, kid 0xdc.
    let det = [0x09, 0x05, 0xdc];
    let (tx, ev, _) = fetch(&mut h, &det, FETCH);
    assert_eq!(cache_events(&ev), vec![CacheEvent::Miss]);
    let fwd = to_group(&tx)[0].clone();
    for i in [1, 2] {
        h.feed(
            Link::Group(0, 0),
            device(i),
            &answer(&fwd, code::CONTENT, &[(opt::OSCORE, &[])], b"sealed"),
        );
    }
    h.advance(Duration::from_secs(2));
    let (tx, ev, _) = fetch(&mut h, &det, FETCH);
    assert!(to_group(&tx).is_empty());
    assert_eq!(to_client(&tx).len(), 2);
    assert_eq!(cache_events(&ev), vec![CacheEvent::Hit]);
    // Another Partial IV: another OSCORE option value, another key.
    let (tx, _, _) = fetch(&mut h, &[0x09, 0x06, 0xdc], FETCH);
    assert_eq!(to_group(&tx).len(), 1);
    // Another kid, group mode, or GET: not deterministic, never cached.
    for (o, c) in [
        (&[0x09, 0x05, 0xdd][..], FETCH),
        (&[0x29, 0x05, 0xdc][..], FETCH),
        (&det[..], code::GET),
    ] {
        let (tx, ev, _) = fetch(&mut h, o, c);
        assert_eq!(to_group(&tx).len(), 1);
        assert!(cache_events(&ev).is_empty(), "{o:?} {c}");
    }
}

fn fill_unicast(h: &mut Harness, path: &str, payload: &[u8]) -> Vec<Event> {
    let uri = format!("coap://192.0.2.7/{path}");
    let (tx, _, _) = h.unicast(NON, uri.as_bytes(), &[]);
    let fwd = to_origin(&tx)[0].clone();
    h.feed(
        fwd.link,
        origin(),
        &answer(&fwd, code::CONTENT, &[], payload),
    )
    .1
}

fn hit(h: &mut Harness, path: &str) -> bool {
    let uri = format!("coap://192.0.2.7/{path}");
    let (tx, _, _) = h.unicast(NON, uri.as_bytes(), &[]);
    to_origin(&tx).is_empty()
}

#[test]
fn bounds_in_entries_evict_least_recently_used() {
    let mut c = config();
    c.cache.max_entries = 2;
    let mut h = Harness::new(c);
    fill_unicast(&mut h, "a", b"a");
    fill_unicast(&mut h, "b", b"b");
    assert!(hit(&mut h, "a"), "a used last, b least recently");
    let ev = fill_unicast(&mut h, "c", b"c");
    assert_eq!(
        cache_events(&ev),
        vec![CacheEvent::Stored, CacheEvent::Evicted]
    );
    assert_eq!(h.e.cache_usage().0, 2);
    assert!(hit(&mut h, "a"));
    assert!(hit(&mut h, "c"));
    assert!(!hit(&mut h, "b"), "evicted");
}

#[test]
fn bounds_in_bytes() {
    let mut c = config();
    c.cache.max_bytes = 1_100;
    let mut h = Harness::new(c);
    // Larger than the whole cache: not stored.
    let ev = fill_unicast(&mut h, "big", &[7; 1_200]);
    assert!(!cache_events(&ev).contains(&CacheEvent::Stored));
    assert!(!hit(&mut h, "big"));
    // Two of 500 bytes do not fit together: the older goes.
    fill_unicast(&mut h, "a", &[1; 500]);
    fill_unicast(&mut h, "b", &[2; 500]);
    assert!(h.e.cache_usage().1 <= 1_100);
    assert!(hit(&mut h, "b"));
    assert!(!hit(&mut h, "a"));
}

#[test]
fn sighup_resize_evicts_down_and_off_empties() {
    let mut h = Harness::new(config());
    for p in ["a", "b", "c"] {
        fill_unicast(&mut h, p, b"x");
    }
    assert_eq!(h.e.cache_usage().0, 3);
    let mut smaller = config();
    smaller.cache.max_entries = 1;
    h.e.reconfigure(h.now, smaller.clone()).unwrap();
    let (_, ev) = common::outputs(&mut h.e);
    assert_eq!(cache_events(&ev), vec![CacheEvent::Evicted; 2]);
    assert_eq!(h.e.cache_usage().0, 1);
    assert!(hit(&mut h, "c"), "the most recently used stays");
    let mut off = smaller;
    off.cache.enabled = false;
    h.e.reconfigure(h.now, off).unwrap();
    assert_eq!(h.e.cache_usage(), (0, 0));
    assert!(!hit(&mut h, "c"));
}

#[test]
fn s7_2_2_a_2_03_the_proxy_cannot_map_is_not_relayed() {
    // The proxy's ETags went to the whole group: a server with nothing stored whose
    // representation has one of those ETags answers 2.03. The client sent no ETag, so
    // it gets nothing from that server (a 2.03 would be useless to it), counted.
    let mut h = Harness::new(config());
    fill_group(&mut h, 10);
    h.advance(Duration::from_secs(10));
    let (tx, _, _) = h.group_get(2, &[]);
    let fwd = to_group(&tx)[0].clone();
    let (tx, ev) = h.feed(
        Link::Group(0, 0),
        device(3),
        &answer(&fwd, VALID, &[(ETAG, b"v1")], b""),
    );
    assert!(to_client(&tx).is_empty());
    assert!(ev.iter().any(|e| matches!(e, Event::Dropped { .. })));
}

#[test]
fn rfc7252_5_6_1_freshness_capped_by_max_age_bound() {
    // RFC 7252 §5.6.1 lets a cache be more careful than the origin: cache.max_age
    // bounds how long anything stays fresh (a forged 2^32 - 1 s Max-Age included).
    let mut c = config();
    c.cache.max_age = Duration::from_secs(100);
    let mut h = Harness::new(c);
    let (tx, _, _) = h.unicast(NON, b"coap://192.0.2.7/long", &[]);
    let fwd = to_origin(&tx)[0].clone();
    let forever = [0xff, 0xff, 0xff, 0xff];
    h.feed(
        fwd.link,
        origin(),
        &answer(&fwd, code::CONTENT, &[(opt::MAX_AGE, &forever)], b"x"),
    );
    h.advance(Duration::from_secs(10));
    let (tx, _, _) = h.unicast(NON, b"coap://192.0.2.7/long", &[]);
    assert_eq!(max_age(&to_client(&tx)[0]), Some(90));
    h.advance(Duration::from_secs(91));
    let (tx, _, _) = h.unicast(NON, b"coap://192.0.2.7/long", &[]);
    assert_eq!(to_origin(&tx).len(), 1, "stale after the bound");
}

#[test]
fn s7_1_with_members_known_only_their_responses_are_stored() {
    // A response from an address that is not a configured member (a forged source on
    // the LAN, or a server the operator did not list) is relayed but not stored.
    let mut h = Harness::new(config());
    let (tx, _, _) = h.group_get(2, &[]);
    let fwd = to_group(&tx)[0].clone();
    let (tx, ev) = h.feed(
        Link::Group(0, 0),
        device(7),
        &answer(&fwd, code::CONTENT, &[], b"7"),
    );
    assert_eq!(to_client(&tx).len(), 1);
    assert!(!cache_events(&ev).contains(&CacheEvent::Stored));
    assert_eq!(h.e.cache_usage().0, 0);
}

#[test]
fn s7_1_forwarded_request_uses_fresh_stored_responses_too() {
    // Only device 1 is stored (fresh for 30 s): the set is incomplete, so the request
    // is forwarded. §7.1: device 1's stored response, L > T', waits; device 2 answers
    // live; at T' device 1 (silent this time) gets its stored response relayed.
    let mut h = Harness::new(config());
    let (tx, _, _) = h.group_get(2, &[]);
    let r = answer(
        to_group(&tx)[0],
        code::CONTENT,
        &[(opt::MAX_AGE, &[30])],
        b"1",
    );
    h.feed(Link::Group(0, 0), device(1), &r);
    h.advance(Duration::from_secs(2));
    let (tx, _, token) = h.group_get(5, &[]);
    assert!(to_client(&tx).is_empty(), "L = 28 s > T' = 5 s: not yet");
    let fwd = to_group(&tx)[0].clone();
    let (tx, _) = h.feed(
        Link::Group(0, 0),
        device(2),
        &answer(&fwd, code::CONTENT, &[], b"2"),
    );
    assert_eq!(to_client(&tx).len(), 1);
    let (tx, _) = h.advance(Duration::from_secs(5));
    let got = to_client(&tx);
    assert_eq!(got.len(), 1, "device 1 from the cache at T'");
    assert_eq!(got[0].token(), token.as_slice());
    assert_eq!(got[0].payload(), b"1");
    assert_eq!(
        cri::parse_reply_from(got[0].option(RF).unwrap()),
        Some(device(1))
    );
    assert_eq!(max_age(&got[0]), Some(23), "stored at 0 s, 30 - 7");

    // L < T': sent at once. A server that answers is not sent again at T'.
    let mut h = Harness::new(config());
    let (tx, _, _) = h.group_get(2, &[]);
    let r = answer(
        to_group(&tx)[0],
        code::CONTENT,
        &[(opt::MAX_AGE, &[6])],
        b"1",
    );
    h.feed(Link::Group(0, 0), device(1), &r);
    h.advance(Duration::from_secs(2));
    let (tx, _, _) = h.group_get(5, &[]);
    let got = to_client(&tx);
    assert_eq!(got.len(), 1, "L = 4 s < T' = 5 s: at once");
    assert_eq!(got[0].payload(), b"1");
    assert_eq!(max_age(&got[0]), Some(4));
    let (tx, _) = h.advance(Duration::from_secs(5));
    assert!(to_client(&tx).is_empty(), "not again at T'");
}

/// Reverse-proxy mode (groupcomm-proxy §6.1) with the cache: for a resource that stands
/// in for the group only, the set is served from the cache with the servers' Reply-From;
/// for one that stands in for the servers too, Reply-From must name the proxy, which the
/// stored responses do not, so the request goes to the group every time.
#[test]
fn s6_1_reverse_resources_and_the_cache() {
    use groxy::proxy::{ReverseSpec, StandIn};
    for (stand_in, served) in [
        (StandIn::Group, true),
        (
            StandIn::Servers {
                advertise: "127.0.0.1:5683".parse().unwrap(),
                pool: vec![],
                max_servers: 16,
                server_lifetime: Duration::from_secs(60),
            },
            false,
        ),
    ] {
        let mut c = config();
        c.reverse.push(ReverseSpec {
            host: None,
            path: vec!["lights".into()],
            group: 0,
            stand_in,
        });
        let mut h = Harness::new(c);
        let mt = opt::uint_value(2);
        let o: [(u16, &[u8]); 3] = [
            (opt::URI_PATH, b"lights"),
            (opt::URI_PATH, b"temp"),
            (MT, &mt),
        ];
        let (tx, _, _) = h.request(NON, code::GET, &o, &[]);
        let fwd = to_group(&tx)[0].clone();
        for i in [1, 2] {
            h.feed(
                Link::Group(0, 0),
                device(i),
                &answer(&fwd, code::CONTENT, &[], b"x"),
            );
        }
        h.advance(Duration::from_secs(2));
        let (tx, _, _) = h.request(NON, code::GET, &o, &[]);
        assert_eq!(to_group(&tx).is_empty(), served, "served: {served}");
        if served {
            let got = to_client(&tx);
            assert_eq!(got.len(), 2);
            assert_eq!(
                cri::parse_reply_from(got[0].option(RF).unwrap()),
                Some(device(1))
            );
        }
    }
}
