//! Chains of proxies (issue 16 point 1) on a virtual clock: two engines wired back to
//! back, A (first hop, `next_hop` = B) and B (last hop, fans out to the devices).
//! groupcomm-proxy-07 §8.1 (Multicast-Timeout arithmetic, 5.05), §8.2 (every response
//! relayed, Reply-From untouched), §8.1.1/§8.2.1 (Observe), §8.1.2 (early stop); RFC 8768
//! §3 (Hop-Limit, loops).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use groxy::coap::MessageView;
use groxy::coap::build::{self, ACK, CON, NON, code};
use groxy::coap::cri;
use groxy::coap::options as opt;
use groxy::proxy::config::NextHop;
use groxy::proxy::{CloseReason, DropReason, Engine, Event, Link, ProxyConfig, Transmit};

const MT: u16 = opt::MULTICAST_TIMEOUT_DEFAULT;
const RF: u16 = opt::REPLY_FROM_DEFAULT;
const OBSERVE: u16 = 6;
const LISTENER: Link = Link::Listener(0);
const TOKEN: &[u8] = &[0xc4, 0xa1];

fn client() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}
fn a_addr() -> SocketAddr {
    "127.0.0.100:5683".parse().unwrap()
}
fn b_addr() -> SocketAddr {
    "127.0.0.200:5683".parse().unwrap()
}
fn device(i: u8) -> SocketAddr {
    format!("127.0.0.{}:5683", 10 + i).parse().unwrap()
}

/// A proxy whose only group is 224.0.1.187:5683, chained to `next` if given.
fn cfg(next: Option<SocketAddr>, margin: u64, max_timeout: u64) -> ProxyConfig {
    let mut c = ProxyConfig::default();
    c.groups[0].max_timeout = Duration::from_secs(max_timeout);
    c.groups[0].next_hop = next.map(|addr| NextHop {
        addr,
        margin: Duration::from_secs(margin),
        hop_limit: 16,
    });
    c
}

/// Two engines and the wires between them: whatever one sends to the other's address
/// is fed in (a request on the listener, a response on the unicast link); what goes to
/// the client or the group is kept for the test.
struct Chain {
    a: Engine,
    b: Engine,
    now: Instant,
    mid: u16,
    /// Everything A and B sent, as (sender 'a'/'b', datagram), in order.
    log: Vec<(char, Transmit)>,
    events: Vec<(char, Event)>,
    /// B's latest multicast (kept across `clear`), which devices answer.
    fanout: Option<Vec<u8>>,
}

impl Chain {
    fn new(a: ProxyConfig, b: ProxyConfig) -> Self {
        let now = Instant::now();
        Chain {
            a: Engine::new(a, now, 1).unwrap(),
            b: Engine::new(b, now, 2).unwrap(),
            now,
            mid: 100,
            log: vec![],
            events: vec![],
            fanout: None,
        }
    }
    fn standard() -> Self {
        Chain::new(cfg(Some(b_addr()), 1, 60), cfg(None, 1, 60))
    }
    /// Carries datagrams between A and B until neither has anything for the other.
    fn settle(&mut self) {
        for _ in 0..200 {
            let (ta, ea) = common::outputs(&mut self.a);
            let (tb, eb) = common::outputs(&mut self.b);
            self.events.extend(ea.into_iter().map(|e| ('a', e)));
            self.events.extend(eb.into_iter().map(|e| ('b', e)));
            if ta.is_empty() && tb.is_empty() {
                return;
            }
            for t in ta {
                if t.to == b_addr() {
                    let into = match t.link {
                        Link::Unicast(_) => LISTENER,
                        _ => Link::Unicast(0),
                    };
                    self.b.handle(self.now, into, a_addr(), &t.bytes);
                }
                self.log.push(('a', t));
            }
            for t in tb {
                if t.to == a_addr() {
                    let into = match t.link {
                        Link::Unicast(_) => LISTENER,
                        _ => Link::Unicast(0),
                    };
                    self.a.handle(self.now, into, b_addr(), &t.bytes);
                }
                if matches!(t.link, Link::Group(..)) {
                    self.fanout = Some(t.bytes.clone());
                }
                self.log.push(('b', t));
            }
        }
        panic!("the chain did not settle");
    }
    fn clear(&mut self) {
        self.log.clear();
        self.events.clear();
    }
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next = [self.a.poll_timeout(), self.b.poll_timeout()]
                .into_iter()
                .flatten()
                .filter(|t| *t <= end)
                .min();
            let Some(t) = next else { break };
            self.now = t.max(self.now);
            self.a.handle_timeout(self.now);
            self.b.handle_timeout(self.now);
            self.settle();
        }
        self.now = end;
        self.a.handle_timeout(end);
        self.b.handle_timeout(end);
        self.settle();
    }
    /// The client's request to A; `extra` options beside Proxy-Scheme, Uri-Host, /temp.
    fn request(&mut self, t: u8, token: &[u8], timeout: Option<u32>, extra: &[(u16, &[u8])]) {
        self.mid += 1;
        let mtv = timeout.map(opt::uint_value);
        let mut o: Vec<(u16, &[u8])> = vec![
            (opt::URI_HOST, b"224.0.1.187"),
            (opt::PROXY_SCHEME, b"coap"),
            (opt::URI_PATH, b"temp"),
        ];
        if let Some(v) = &mtv {
            o.push((MT, v));
        }
        o.extend_from_slice(extra);
        let m = build::encode(t, code::GET, self.mid, token, &mut o, &[]);
        self.a.handle(self.now, LISTENER, client(), &m);
        self.settle();
    }
    /// What `who` sent to `to` on links matching `link`.
    fn sent(&self, who: char, to: SocketAddr) -> Vec<Vec<u8>> {
        self.log
            .iter()
            .filter(|(w, t)| *w == who && t.to == to)
            .map(|(_, t)| t.bytes.clone())
            .collect()
    }
    fn multicasts(&self) -> Vec<Vec<u8>> {
        self.log
            .iter()
            .filter(|(w, t)| *w == 'b' && matches!(t.link, Link::Group(..)))
            .map(|(_, t)| t.bytes.clone())
            .collect()
    }
    /// Responses (not empty ACKs) to the client.
    fn to_client(&self) -> Vec<Vec<u8>> {
        self.sent('a', client())
            .into_iter()
            .filter(|b| MessageView::parse(b).unwrap().code() != code::EMPTY)
            .collect()
    }
    /// Device `i` answers the latest multicast with `payload` (Observe `seq` if given).
    fn device_answers(&mut self, i: u8, mid: u16, seq: Option<u32>, payload: &[u8]) {
        let fwd = self.fanout.clone().expect("a multicast");
        let v = MessageView::parse(&fwd).unwrap();
        let s = seq.map(opt::uint_value);
        let mut o: Vec<(u16, &[u8])> = vec![];
        if let Some(s) = &s {
            o.push((OBSERVE, s));
        }
        let r = build::encode(NON, code::CONTENT, mid, v.token(), &mut o, payload);
        self.b.handle(self.now, Link::Group(0, 0), device(i), &r);
        self.settle();
    }
}

fn uint(v: &MessageView, n: u16) -> Option<u32> {
    v.option(n).and_then(opt::read_uint)
}

/// §8.1 step 4.1-4.3: A keeps the Multicast-Timeout and lowers it by its margin
/// (T'' = T' - margin); the request to B keeps the group URI as forward-proxy options;
/// B, the last hop, removes Multicast-Timeout as §5.2.1 says. RFC 8768 §3: A adds
/// Hop-Limit 16 (none came), B decrements it.
#[test]
fn next_hop_gets_a_forward_proxy_request_with_t_double_prime() {
    let mut c = Chain::standard();
    c.request(NON, TOKEN, Some(10), &[]);
    let to_b = c.sent('a', b_addr());
    assert_eq!(to_b.len(), 1);
    let v = MessageView::parse(&to_b[0]).unwrap();
    assert_eq!(v.mtype(), NON);
    assert_eq!(uint(&v, MT), Some(9), "T'' = T' - 1 s margin");
    assert_eq!(v.option(opt::PROXY_SCHEME), Some(&b"coap"[..]));
    assert_eq!(v.option(opt::URI_HOST), Some(&b"224.0.1.187"[..]));
    assert_eq!(v.option(opt::URI_PATH), Some(&b"temp"[..]));
    assert_eq!(uint(&v, opt::HOP_LIMIT), Some(16));
    assert_ne!(v.token(), TOKEN, "A's own token toward B");
    let m = c.multicasts();
    assert_eq!(m.len(), 1, "B fans out");
    let mv = MessageView::parse(&m[0]).unwrap();
    assert_eq!(
        mv.option(MT),
        None,
        "the last hop removes Multicast-Timeout"
    );
    assert_eq!(mv.option(opt::PROXY_SCHEME), None);
    assert_eq!(uint(&mv, opt::HOP_LIMIT), Some(15));
    assert!(c.events.iter().any(|(w, e)| *w == 'a'
        && matches!(e, Event::ChainForwarded { group: 0, timeout, next }
            if *timeout == Duration::from_secs(10) && *next == Duration::from_secs(9))));
}

/// §8.1 step 4.3: the margin is configurable (3 s: T'' = T' - 3), and T' is the one
/// after the group's max_timeout (30 asked, 20 allowed: T'' = 17).
#[test]
fn margin_is_configurable_and_applies_after_max_timeout() {
    let mut c = Chain::new(cfg(Some(b_addr()), 3, 20), cfg(None, 1, 60));
    c.request(NON, TOKEN, Some(10), &[]);
    c.request(NON, &[9], Some(30), &[]);
    let to_b = c.sent('a', b_addr());
    let t: Vec<_> = to_b
        .iter()
        .map(|b| uint(&MessageView::parse(b).unwrap(), MT))
        .collect();
    assert_eq!(t, vec![Some(7), Some(17)]);
}

/// §8.1 step 4.3: no T'' with T'' >= 1 s and T' - T'' >= margin: 5.05, with a
/// Multicast-Timeout naming the least acceptable T' (margin + 1 s); nothing goes to B.
#[test]
fn too_short_a_timeout_gets_5_05_with_the_least_acceptable() {
    let mut c = Chain::new(cfg(Some(b_addr()), 2, 60), cfg(None, 1, 60));
    c.request(CON, TOKEN, Some(2), &[]);
    assert!(c.sent('a', b_addr()).is_empty());
    let r = c.to_client();
    assert_eq!(r.len(), 1);
    let v = MessageView::parse(&r[0]).unwrap();
    assert_eq!((v.mtype(), v.code()), (ACK, code::PROXYING_NOT_SUPPORTED));
    assert_eq!(uint(&v, MT), Some(3));
    // T' = 3 is accepted: T'' = 1.
    c.clear();
    c.request(CON, &[7], Some(3), &[]);
    let to_b = c.sent('a', b_addr());
    assert_eq!(uint(&MessageView::parse(&to_b[0]).unwrap(), MT), Some(1));
}

/// §8.1 step 6, T' = 0: passed on as 0, nothing is kept at A (every response ignored).
#[test]
fn zero_timeout_is_passed_on_and_keeps_nothing() {
    let mut c = Chain::standard();
    c.request(NON, TOKEN, Some(0), &[]);
    let to_b = c.sent('a', b_addr());
    assert_eq!(to_b.len(), 1);
    assert_eq!(
        MessageView::parse(&to_b[0]).unwrap().option(MT),
        Some(&[][..])
    );
    assert_eq!(c.a.exchanges().0, 0);
}

/// §8.2: every response B relays reaches the client through A, once each, with the
/// Reply-From B added naming the device (A neither removes, alters nor replaces it);
/// until A's T' and not after (§8.2: late responses are discarded).
#[test]
fn every_response_is_relayed_with_its_original_reply_from() {
    let mut c = Chain::standard();
    c.request(NON, TOKEN, Some(10), &[]);
    for i in 0..3 {
        c.device_answers(i, 500 + i as u16, None, &[b'0' + i]);
    }
    let r = c.to_client();
    assert_eq!(r.len(), 3, "every response, not only the first");
    for (i, b) in r.iter().enumerate() {
        let v = MessageView::parse(b).unwrap();
        assert_eq!(v.token(), TOKEN);
        assert_eq!(v.payload(), &[b'0' + i as u8]);
        let rf: Vec<_> = v.options().filter(|(n, _)| *n == RF).collect();
        assert_eq!(rf.len(), 1, "Reply-From once, never added again");
        assert_eq!(cri::parse_reply_from(rf[0].1), Some(device(i as u8)));
    }
    // After T'' at B (9 s) B drops; at A's T' (10 s) A's exchange ends.
    c.advance(Duration::from_secs(11));
    assert_eq!(c.a.exchanges().0, 0);
}

/// §8.2 at A alone: a response from the next hop keeps whatever Reply-From it has, byte
/// for byte (one A could not have made itself), and one without gets none.
#[test]
fn reply_from_is_passed_on_untouched_and_never_added() {
    let mut c = Chain::standard();
    c.request(NON, TOKEN, Some(10), &[]);
    let fwd = c.sent('a', b_addr()).remove(0);
    let tok = MessageView::parse(&fwd).unwrap().token().to_vec();
    c.clear();
    // A Reply-From naming a host by name, as a reverse-proxy chain may (§3).
    let odd = b"\x82\x61\x78".to_vec();
    let r1 = build::encode(NON, code::CONTENT, 900, &tok, &mut [(RF, &odd[..])], b"x");
    c.a.handle(c.now, Link::Unicast(0), b_addr(), &r1);
    let r2 = build::encode(NON, code::CONTENT, 901, &tok, &mut [], b"y");
    c.a.handle(c.now, Link::Unicast(0), b_addr(), &r2);
    c.settle();
    let r = c.to_client();
    assert_eq!(r.len(), 2);
    let v1 = MessageView::parse(&r[0]).unwrap();
    assert_eq!(v1.option(RF), Some(&odd[..]));
    let v2 = MessageView::parse(&r[1]).unwrap();
    assert_eq!(v2.option(RF), None);
    // A response from anyone but the next hop does not match the exchange.
    c.clear();
    let r3 = build::encode(NON, code::CONTENT, 902, &tok, &mut [], b"z");
    c.a.handle(c.now, Link::Unicast(0), device(0), &r3);
    c.settle();
    assert!(c.to_client().is_empty());
}

/// RFC 8768 §3: a Hop-Limit that came is decremented at each hop (5 -> 4 at A -> 3 at B).
#[test]
fn hop_limit_is_decremented_along_the_chain() {
    let mut c = Chain::standard();
    c.request(NON, TOKEN, Some(10), &[(opt::HOP_LIMIT, &[5])]);
    let to_b = c.sent('a', b_addr());
    assert_eq!(
        uint(&MessageView::parse(&to_b[0]).unwrap(), opt::HOP_LIMIT),
        Some(4)
    );
    let m = c.multicasts();
    assert_eq!(
        uint(&MessageView::parse(&m[0]).unwrap(), opt::HOP_LIMIT),
        Some(3)
    );
}

/// RFC 8768 §3: a loop (A -> B -> A -> ...) ends when Hop-Limit runs out; the hop where
/// it does answers 5.08 naming itself (§4), and the 5.08 comes back along the chain,
/// each hop prepending its identifier, until it reaches a hop it names already: that
/// hop does not relay it (§4: MUST NOT), so in a loop of two it stops at A's second
/// exchange and the client gets none. No multicast.
#[test]
fn a_loop_is_stopped_with_5_08() {
    let (mut a, mut b) = (cfg(Some(b_addr()), 1, 60), cfg(Some(a_addr()), 1, 60));
    a.hop_id = "proxy-a".into();
    b.hop_id = "proxy-b".into();
    let mut c = Chain::new(a, b);
    c.request(NON, TOKEN, Some(60), &[]);
    assert!(c.multicasts().is_empty());
    // Requests between the hops carry Hop-Limit 16 (A's insertion), 15, ..., 1: the hop
    // that gets 1 answers 5.08 instead of forwarding.
    let hops: Vec<u32> = [c.sent('a', b_addr()), c.sent('b', a_addr())]
        .concat()
        .iter()
        .map(|b| MessageView::parse(b).unwrap())
        .filter(|v| v.is_request())
        .filter_map(|v| uint(&v, opt::HOP_LIMIT))
        .collect();
    let mut sorted = hops.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=16).collect::<Vec<_>>(), "{hops:?}");
    // B sent Hop-Limit 1 to A, A answered 5.08 "proxy-a", B relayed "proxy-b proxy-a".
    let errors = |who, to| -> Vec<Vec<u8>> {
        c.sent(who, to)
            .iter()
            .map(|b| MessageView::parse(b).unwrap())
            .filter(|v| v.code() == code::HOP_LIMIT_REACHED)
            .map(|v| v.payload().to_vec())
            .collect()
    };
    assert_eq!(errors('a', b_addr()), vec![b"proxy-a".to_vec()]);
    assert_eq!(errors('b', a_addr()), vec![b"proxy-b proxy-a".to_vec()]);
    assert!(c.to_client().is_empty());
    let loops = c
        .events
        .iter()
        .filter(|(w, e)| {
            *w == 'a'
                && matches!(
                    e,
                    Event::Dropped {
                        reason: DropReason::HopLoop,
                        ..
                    }
                )
        })
        .count();
    assert_eq!(loops, 1, "A drops (and counts) the 5.08 naming it");
}

/// RFC 8768 §4 without a loop: B, where the Hop-Limit runs out, names itself in the
/// 5.08's diagnostic; A relays it to the client with its own identifier prepended.
#[test]
fn a_5_08_names_every_proxy_on_its_way_back() {
    let (mut a, mut b) = (cfg(Some(b_addr()), 1, 60), cfg(None, 1, 60));
    a.hop_id = "proxy-a".into();
    b.hop_id = "proxy-b".into();
    let mut c = Chain::new(a, b);
    // Hop-Limit 2: A passes 1 on, at which B stops.
    c.request(NON, TOKEN, Some(10), &[(opt::HOP_LIMIT, &[2])]);
    assert!(c.multicasts().is_empty());
    let r = c.to_client();
    assert_eq!(r.len(), 1);
    let v = MessageView::parse(&r[0]).unwrap();
    assert_eq!((v.code(), v.token()), (code::HOP_LIMIT_REACHED, TOKEN));
    assert_eq!(v.payload(), b"proxy-a proxy-b");
    // A 5.08 that arrives naming A already is not relayed.
    c.clear();
    c.request(NON, &[0xc6], Some(10), &[]);
    let fwd = c.sent('a', b_addr()).remove(0);
    let t = MessageView::parse(&fwd).unwrap().token().to_vec();
    let e = build::encode(
        NON,
        code::HOP_LIMIT_REACHED,
        4242,
        &t,
        &mut [],
        b"proxy-x proxy-a proxy-b",
    );
    c.a.handle(c.now, Link::Unicast(0), b_addr(), &e);
    c.settle();
    assert!(c.to_client().is_empty());
    assert!(c.events.iter().any(|(w, e)| *w == 'a'
        && matches!(
            e,
            Event::Dropped {
                reason: DropReason::HopLoop,
                ..
            }
        )));
}

/// RFC 8768 §4: the 5.08 of a proxy that a request reaches with Hop-Limit 1 names it
/// (`proxy.id`, by default the first of `proxy.names`, else the first listener).
#[test]
fn the_5_08_diagnostic_is_the_proxy_id() {
    let mut a = cfg(None, 1, 60);
    a.hop_id = "p11.example.net".into();
    let mut c = Chain::new(a, cfg(None, 1, 60));
    c.request(NON, TOKEN, Some(10), &[(opt::HOP_LIMIT, &[1])]);
    let r = c.to_client();
    let v = MessageView::parse(&r[0]).unwrap();
    assert_eq!(
        (v.code(), v.payload()),
        (code::HOP_LIMIT_REACHED, &b"p11.example.net"[..])
    );
    let load = |proxy: &str| {
        groxy::settings::load_str(&format!("[proxy]\n{proxy}\n")).map(|l| l.run.proxy.hop_id)
    };
    assert_eq!(load("id = \"p1\"").unwrap(), "p1");
    assert_eq!(load("names = [\"gw.example\"]").unwrap(), "gw.example");
    assert_eq!(
        load("listen = [\"127.0.0.1:5690\"]").unwrap(),
        "127.0.0.1:5690"
    );
    assert!(load("id = \"two words\"").is_err());
}

/// §8.1.1, §8.2.1: A registers with B, B with the group; a notification after T' (at
/// both hops) still reaches the client with its device's Reply-From. Notifications of two
/// devices are ordered per device (the one Reply-From names), not per next hop.
#[test]
fn an_observation_through_the_chain_lasts_past_t_prime() {
    let mut c = Chain::standard();
    c.request(NON, TOKEN, Some(5), &[(OBSERVE, &[])]);
    let to_b = c.sent('a', b_addr());
    assert_eq!(
        MessageView::parse(&to_b[0]).unwrap().option(OBSERVE),
        Some(&[][..])
    );
    c.device_answers(0, 600, Some(10), b"a10");
    c.device_answers(1, 601, Some(3), b"b3");
    assert_eq!(
        c.to_client().len(),
        2,
        "device 1's lower number is not a reorder"
    );
    c.advance(Duration::from_secs(20));
    c.clear();
    c.device_answers(0, 602, Some(11), b"a11");
    c.device_answers(1, 603, Some(4), b"b4");
    let r = c.to_client();
    assert_eq!(r.len(), 2, "past T' at both hops");
    let v = MessageView::parse(&r[0]).unwrap();
    assert_eq!(v.payload(), b"a11");
    assert_eq!(
        cri::parse_reply_from(v.option(RF).unwrap()),
        Some(device(0))
    );
    assert_eq!(MessageView::parse(&r[1]).unwrap().payload(), b"b4");
}

/// §8.1.1 with RFC 7641 §3.6: the client's deregistration (Observe 1) goes along the
/// chain as a forward-proxy request: B sends the group the deregistration.
#[test]
fn deregistration_goes_along_the_chain() {
    let mut c = Chain::standard();
    c.request(NON, TOKEN, Some(5), &[(OBSERVE, &[])]);
    c.device_answers(0, 600, Some(10), b"a10");
    c.advance(Duration::from_secs(20));
    c.clear();
    c.request(NON, TOKEN, Some(5), &[(OBSERVE, &[1])]);
    let to_b = c.sent('a', b_addr());
    assert_eq!(to_b.len(), 1);
    let v = MessageView::parse(&to_b[0]).unwrap();
    assert_eq!(uint(&v, OBSERVE), Some(1));
    assert_eq!(uint(&v, MT), Some(4));
    assert_eq!(v.option(opt::URI_HOST), Some(&b"224.0.1.187"[..]));
    let m = c.multicasts();
    assert_eq!(m.len(), 1, "B deregisters with the group");
    assert_eq!(uint(&MessageView::parse(&m[0]).unwrap(), OBSERVE), Some(1));
}

/// §8.1.2: the client's Early Stop Request to A ends A's exchange and A sends B an Early
/// Stop Request under the token of its forwarded request (§5.1.3 form), which ends B's;
/// a later response from a device goes nowhere.
#[test]
fn early_stop_goes_along_the_chain() {
    let mut c = Chain::standard();
    c.request(NON, TOKEN, Some(30), &[]);
    let fwd_tok = MessageView::parse(&c.sent('a', b_addr())[0])
        .unwrap()
        .token()
        .to_vec();
    c.device_answers(0, 700, None, b"1");
    c.clear();
    c.mid += 1;
    let stop = build::encode(NON, code::GET, c.mid, TOKEN, &mut [(MT, &[][..])], &[]);
    c.a.handle(c.now, LISTENER, client(), &stop);
    c.settle();
    let to_b = c.sent('a', b_addr());
    assert_eq!(to_b.len(), 1);
    let v = MessageView::parse(&to_b[0]).unwrap();
    assert_eq!((v.code(), v.token()), (code::GET, &fwd_tok[..]));
    assert_eq!(v.option(MT), Some(&[][..]));
    assert_eq!(v.option(opt::URI_HOST), None);
    for who in ['a', 'b'] {
        assert!(c.events.iter().any(|(w, e)| *w == who
            && matches!(
                e,
                Event::Closed {
                    reason: CloseReason::EarlyStopRequest,
                    ..
                }
            )));
    }
    assert!(
        c.events
            .iter()
            .any(|(w, e)| *w == 'a' && matches!(e, Event::ChainStopped { .. }))
    );
    c.clear();
    c.device_answers(1, 701, None, b"2");
    assert!(c.to_client().is_empty());
    assert!(c.events.iter().any(|(w, e)| *w == 'b'
        && matches!(
            e,
            Event::Dropped {
                reason: DropReason::LateResponse,
                ..
            }
        )));
}

/// RFC 7252 §5.2.2 hop by hop: a CON client's request goes to B as CON (retransmitted
/// until B's ACK); B's ACK stops the retransmissions.
#[test]
fn a_con_request_is_con_to_the_next_hop() {
    let mut c = Chain::standard();
    c.request(CON, TOKEN, Some(10), &[]);
    let to_b = c.sent('a', b_addr());
    assert_eq!(MessageView::parse(&to_b[0]).unwrap().mtype(), CON);
    let acks = c.sent('b', a_addr());
    assert!(
        acks.iter()
            .any(|b| MessageView::parse(b).unwrap().mtype() == ACK)
    );
    c.clear();
    c.advance(Duration::from_secs(8));
    assert!(
        c.sent('a', b_addr()).is_empty(),
        "no retransmission after B's ACK"
    );
}

/// The `[[group]]` keys (config/groxy.toml): next_hop, its margin and Hop-Limit parsed;
/// a bad address, a margin of 0 or not below max_timeout, and a Hop-Limit out of 1..=255
/// refused by check-config with the key named.
#[test]
fn next_hop_config_is_parsed_and_checked() {
    let base = "[[group]]\nname = \"g\"\nuri = \"coap://224.0.1.187:5683\"\nmax_timeout = 30\n";
    let l = groxy::settings::load_str(&format!(
        "{base}next_hop = \"192.0.2.7:5683\"\nnext_hop_margin = 2\n"
    ))
    .unwrap();
    let n = l.run.proxy.groups[0].next_hop.unwrap();
    assert_eq!(n.addr, "192.0.2.7:5683".parse::<SocketAddr>().unwrap());
    assert_eq!((n.margin, n.hop_limit), (Duration::from_secs(2), 16));
    let l = groxy::settings::load_str(base).unwrap();
    assert!(l.run.proxy.groups[0].next_hop.is_none());
    for (bad, key) in [
        ("next_hop = \"nowhere\"\n", "next_hop"),
        (
            "next_hop = \"192.0.2.7:5683\"\nnext_hop_margin = 0\n",
            "next_hop_margin",
        ),
        (
            "next_hop = \"192.0.2.7:5683\"\nnext_hop_margin = 30\n",
            "next_hop_margin",
        ),
        (
            "next_hop = \"192.0.2.7:5683\"\nnext_hop_hop_limit = 0\n",
            "next_hop_hop_limit",
        ),
        (
            "next_hop = \"192.0.2.7:5683\"\nnext_hop_hop_limit = 256\n",
            "next_hop_hop_limit",
        ),
    ] {
        let errors = groxy::settings::load_str(&format!("{base}{bad}")).unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.contains(&format!("group[0].{key}")) || e.contains(key)),
            "{bad}: {errors:?}"
        );
    }
}

/// §8.1 step 4.3 at the second hop: B (itself chained, margin 3) cannot meet the T''
/// A passed on and answers 5.05 with the least T' it accepts (4); A, not sending an
/// updated request, sends the client a 5.05 with the least T' A accepts: B's plus A's
/// margin (5), with which the chain then works.
#[test]
fn a_5_05_from_the_next_hop_reaches_the_client() {
    let c_addr: SocketAddr = "127.0.0.250:5683".parse().unwrap();
    let mut c = Chain::new(cfg(Some(b_addr()), 1, 60), cfg(Some(c_addr), 3, 60));
    c.request(NON, TOKEN, Some(3), &[]);
    assert!(c.sent('b', c_addr).is_empty());
    let r = c.to_client();
    assert_eq!(r.len(), 1);
    let v = MessageView::parse(&r[0]).unwrap();
    assert_eq!((v.code(), v.token()), (code::PROXYING_NOT_SUPPORTED, TOKEN));
    let from_b: Vec<u32> = c
        .sent('b', a_addr())
        .iter()
        .filter_map(|b| uint(&MessageView::parse(b).unwrap(), MT))
        .collect();
    assert_eq!(from_b, vec![4], "B's least T'");
    assert_eq!(
        uint(&v, MT),
        Some(5),
        "A's least T' (§8.1: of the proxy sending it)"
    );
    c.clear();
    c.request(NON, &[0xc5], Some(5), &[]);
    assert_eq!(c.sent('b', c_addr).len(), 1, "T' = 5 gets through A and B");
}

/// §8.1.2 with §5.2.3: an RST from the client to a relayed response is an early stop
/// too, and goes along the chain as an Early Stop Request.
#[test]
fn a_reset_from_the_client_stops_the_next_hop_too() {
    let mut c = Chain::standard();
    c.request(NON, TOKEN, Some(30), &[]);
    c.device_answers(0, 700, None, b"1");
    let relayed = c.to_client().remove(0);
    let mid = MessageView::parse(&relayed).unwrap().message_id();
    c.clear();
    c.a.handle(c.now, LISTENER, client(), &build::empty(build::RST, mid));
    c.settle();
    let to_b = c.sent('a', b_addr());
    assert_eq!(to_b.len(), 1);
    assert_eq!(
        MessageView::parse(&to_b[0]).unwrap().option(MT),
        Some(&[][..])
    );
    assert!(c.events.iter().any(|(w, e)| *w == 'b'
        && matches!(
            e,
            Event::Closed {
                reason: CloseReason::EarlyStopRequest,
                ..
            }
        )));
}
