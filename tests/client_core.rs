//! The client's protocol logic (`groxy::tools::client::Client`) on a virtual clock: no
//! socket, the test plays the proxy (and, for OSCORE, the proxy's layer and a device).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use groxy::coap::MessageView;
use groxy::coap::build::{self, ACK, CON, NON, RST, code};
use groxy::coap::cri;
use groxy::coap::options as opt;
use groxy::oscore::{Exchange, Layer, Mode, SecurityContext};
use groxy::tools::client::message::{ACK_TIMEOUT, MAX_RETRANSMIT};
use groxy::tools::client::{
    Client, ClientEvent, ClientRequest, Datagram, Discard, End, RequestId, Response,
};

const CLIENT: &[u8] = &[0x01];
const PROXY: &[u8] = &[0x50];
const DEV: &[u8] = &[0x0a];

fn proxy() -> SocketAddr {
    "127.0.0.1:5683".parse().unwrap()
}

fn device() -> SocketAddr {
    "127.0.0.11:5683".parse().unwrap()
}

/// The client, the virtual clock and what came out since the last look.
struct H {
    c: Client,
    t0: Instant,
    now: Instant,
}

impl H {
    fn new(req: &ClientRequest) -> (Self, RequestId) {
        let t0 = Instant::now();
        let mut c = Client::for_request(req, [7; 32]).unwrap();
        let id = c.request(t0, req).unwrap();
        (H { c, t0, now: t0 }, id)
    }

    fn out(&mut self) -> (Vec<Datagram>, Vec<ClientEvent>) {
        let mut tx = Vec::new();
        while let Some(d) = self.c.poll_transmit() {
            tx.push(d);
        }
        let mut ev = Vec::new();
        while let Some(e) = self.c.poll_event() {
            ev.push(e);
        }
        (tx, ev)
    }

    fn feed(&mut self, from: SocketAddr, d: &[u8]) -> (Vec<Datagram>, Vec<ClientEvent>) {
        self.c.handle(self.now, from, d);
        self.out()
    }

    /// Moves the clock to `t` and runs the timers due.
    fn at(&mut self, t: Instant) -> (Vec<Datagram>, Vec<ClientEvent>) {
        self.now = t;
        self.c.handle_timeout(t);
        self.out()
    }

    /// Runs to the next timer.
    fn next(&mut self) -> (Vec<Datagram>, Vec<ClientEvent>) {
        let t = self
            .c
            .poll_timeout()
            .expect("a timer while a request is open");
        assert!(t >= self.now);
        self.at(t)
    }
}

fn get(timeout: u32, con: bool) -> ClientRequest {
    let mut r = ClientRequest::get(proxy(), "coap://224.0.1.187/hello", timeout);
    r.confirmable = con;
    r
}

fn view(d: &[u8]) -> MessageView<'_> {
    MessageView::parse(d).unwrap()
}

fn responses(ev: &[ClientEvent]) -> Vec<&Response> {
    ev.iter()
        .filter_map(|e| match e {
            ClientEvent::Response { response, .. } => Some(response),
            _ => None,
        })
        .collect()
}

fn discards(ev: &[ClientEvent]) -> Vec<Discard> {
    ev.iter()
        .filter_map(|e| match e {
            ClientEvent::Discarded { why, .. } => Some(*why),
            _ => None,
        })
        .collect()
}

/// A response the proxy relays: `mtype` and `mid` its own, the client's token, Reply-From.
fn relayed(mtype: u8, mid: u16, token: &[u8], payload: &[u8]) -> Vec<u8> {
    let rf = cri::reply_from(device());
    build::encode(
        mtype,
        code::CONTENT,
        mid,
        token,
        &mut [(opt::REPLY_FROM_DEFAULT, &rf)],
        payload,
    )
}

/// RFC 7252 §4.2, §4.8: a CON request is sent again after a random initial timeout in
/// [ACK_TIMEOUT, 1.5 ACK_TIMEOUT), doubled each time, MAX_RETRANSMIT times; on the
/// timeout after the last the attempt is cancelled and the request ends (`GaveUp`).
#[test]
fn rfc7252_s4_2_con_request_retransmitted_with_back_off_then_given_up() {
    // T' long enough that the Multicast-Timeout does not end it first.
    let (mut h, id) = H::new(&get(120, true));
    let (tx, ev) = h.out();
    assert!(ev.is_empty());
    assert_eq!(tx.len(), 1);
    assert_eq!(tx[0].to, proxy());
    let request = tx[0].bytes.clone();
    assert_eq!(view(&request).mtype(), CON);
    let first = h.c.poll_timeout().unwrap() - h.t0;
    assert!(
        first >= ACK_TIMEOUT && first < ACK_TIMEOUT.mul_f64(1.5),
        "{first:?}"
    );
    let mut sent_at = h.t0;
    for k in 0..MAX_RETRANSMIT as u32 {
        let (tx, ev) = h.next();
        assert!(ev.is_empty(), "{ev:?}");
        assert_eq!(tx.len(), 1, "retransmission {}", k + 1);
        assert_eq!(
            tx[0].bytes, request,
            "the same message, the same Message ID"
        );
        assert_eq!(h.now - sent_at, first * 2u32.pow(k));
        sent_at = h.now;
    }
    let (tx, ev) = h.next();
    assert!(tx.is_empty());
    assert_eq!(
        ev,
        vec![ClientEvent::Ended {
            request: id,
            end: End::GaveUp
        }]
    );
    assert_eq!(h.now - h.t0, first * 31);
    assert_eq!(h.c.open_requests(), 0);
    assert_eq!(h.c.poll_timeout(), None);
}

/// RFC 7252 §4.2: the empty ACK of the proxy (§5.2.2, a separate response follows)
/// stops the retransmissions; the request stays open for its responses.
#[test]
fn rfc7252_s4_2_empty_ack_stops_retransmission() {
    let (mut h, id) = H::new(&get(5, true));
    let (tx, _) = h.out();
    let mid = view(&tx[0].bytes).message_id();
    // An ACK naming another Message ID changes nothing.
    let (_, ev) = h.feed(proxy(), &build::empty(ACK, mid.wrapping_add(9)));
    assert_eq!(discards(&ev), vec![Discard::Unmatched]);
    let (tx, ev) = h.feed(proxy(), &build::empty(ACK, mid));
    assert!(tx.is_empty() && ev.is_empty());
    // The next timer is the deadline T = T' + margin, with nothing sent before it.
    let (tx, ev) = h.next();
    assert!(tx.is_empty());
    assert_eq!(h.now - h.t0, Duration::from_secs(6));
    assert_eq!(
        ev,
        vec![ClientEvent::Ended {
            request: id,
            end: End::Timeout
        }]
    );
}

/// RFC 7252 §4.2, §5.2.1: a response piggybacked in the ACK is delivered once; a copy of
/// that ACK is a duplicate (§4.5), and nothing is retransmitted after it.
#[test]
fn rfc7252_s5_2_1_piggybacked_response_once() {
    let (mut h, _) = H::new(&get(5, true));
    let (tx, _) = h.out();
    let v = view(&tx[0].bytes);
    let (mid, token) = (v.message_id(), v.token().to_vec());
    let ack = build::encode(
        ACK,
        code::BAD_REQUEST,
        mid,
        &token,
        &mut [(opt::MULTICAST_TIMEOUT_DEFAULT, &[])],
        b"",
    );
    let (tx, ev) = h.feed(proxy(), &ack);
    assert!(tx.is_empty(), "an ACK is never acknowledged");
    let r = responses(&ev);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].code, code::BAD_REQUEST);
    assert_eq!(r[0].multicast_timeout.as_deref(), Some(&[][..]));
    let (_, ev) = h.feed(proxy(), &ack);
    assert_eq!(discards(&ev), vec![Discard::Duplicate]);
    let (tx, _) = h.next();
    assert!(tx.is_empty(), "no retransmission after the ACK");
}

/// RFC 7252 §4.2, §4.3: an Empty RST naming the request's message cancels the request;
/// one naming another message, or one that is not Empty, is ignored.
#[test]
fn rfc7252_s4_2_reset_ends_the_request() {
    for con in [true, false] {
        let (mut h, id) = H::new(&get(5, con));
        let (tx, _) = h.out();
        let mid = view(&tx[0].bytes).message_id();
        let (_, ev) = h.feed(proxy(), &build::empty(RST, mid ^ 1));
        assert_eq!(discards(&ev), vec![Discard::Unmatched]);
        let not_empty = build::encode(RST, code::CONTENT, mid, &[], &mut [], b"");
        let (_, ev) = h.feed(proxy(), &not_empty);
        assert_eq!(discards(&ev), vec![Discard::Rejected]);
        assert_eq!(h.c.open_requests(), 1);
        let (tx, ev) = h.feed(proxy(), &build::empty(RST, mid));
        assert!(tx.is_empty());
        assert_eq!(
            ev,
            vec![ClientEvent::Ended {
                request: id,
                end: End::Reset
            }]
        );
        assert_eq!(h.c.poll_timeout(), None);
    }
}

/// RFC 7252 §4.5: a response the proxy sends twice (a CON whose ACK it missed, a NON
/// the network duplicated) is reported once; every copy of a CON is acknowledged. A
/// separate response also stops the request's retransmissions (§4.2: it arrived).
#[test]
fn rfc7252_s4_5_duplicate_response_reported_once() {
    let (mut h, id) = H::new(&get(5, true));
    let (tx, _) = h.out();
    let token = view(&tx[0].bytes).token().to_vec();
    let con = relayed(CON, 0x1000, &token, b"hello from d1");
    for copy in 0..2 {
        h.now += Duration::from_millis(100);
        let (tx, ev) = h.feed(proxy(), &con);
        assert_eq!(
            tx,
            vec![Datagram {
                to: proxy(),
                bytes: build::empty(ACK, 0x1000)
            }],
            "copy {copy} acknowledged"
        );
        if copy == 0 {
            let r = responses(&ev);
            assert_eq!(r.len(), 1);
            assert_eq!(r[0].reply_from, Some(device()));
            assert_eq!(r[0].payload, b"hello from d1");
            assert_eq!(r[0].elapsed, Duration::from_millis(100));
            assert!(matches!(ev[0], ClientEvent::Response { request, .. } if request == id));
        } else {
            assert_eq!(discards(&ev), vec![Discard::Duplicate]);
        }
    }
    let non = relayed(NON, 0x1001, &token, b"hello from d2");
    let (tx, ev) = h.feed(proxy(), &non);
    assert!(tx.is_empty(), "a NON is not acknowledged");
    assert_eq!(responses(&ev).len(), 1);
    let (tx, ev) = h.feed(proxy(), &non);
    assert!(tx.is_empty());
    assert_eq!(discards(&ev), vec![Discard::Duplicate]);
    // The separate response acknowledged the request: the next timer is the deadline.
    let (tx, ev) = h.next();
    assert!(tx.is_empty());
    assert!(matches!(
        ev[..],
        [ClientEvent::Ended {
            end: End::Timeout,
            ..
        }]
    ));
}

/// groupcomm-proxy §5.5.1, RFC 7252 §4.2: a CON response under a token the client does
/// not have is rejected with RST, a NON one ignored; nothing from anyone but the proxy
/// is answered at all.
#[test]
fn unknown_token_rejected_and_strangers_ignored() {
    let (mut h, _) = H::new(&get(5, false));
    h.out();
    let (tx, ev) = h.feed(proxy(), &relayed(CON, 0x2000, b"other", b"x"));
    assert_eq!(
        tx,
        vec![Datagram {
            to: proxy(),
            bytes: build::empty(RST, 0x2000)
        }]
    );
    assert_eq!(discards(&ev), vec![Discard::UnknownToken]);
    let (tx, ev) = h.feed(proxy(), &relayed(NON, 0x2001, b"other", b"x"));
    assert!(tx.is_empty());
    assert_eq!(discards(&ev), vec![Discard::UnknownToken]);
    // A CoAP ping (Empty CON) gets its RST (§4.3).
    let (tx, ev) = h.feed(proxy(), &build::empty(CON, 0x2002));
    assert_eq!(tx[0].bytes, build::empty(RST, 0x2002));
    assert_eq!(discards(&ev), vec![Discard::Rejected]);
    let (tx, ev) = h.feed(device(), &relayed(CON, 0x2003, b"other", b"x"));
    assert!(tx.is_empty());
    assert_eq!(discards(&ev), vec![Discard::NotFromProxy]);
    let (tx, ev) = h.feed(proxy(), &[0xff, 0]);
    assert!(tx.is_empty());
    assert_eq!(discards(&ev), vec![Discard::Malformed]);
}

/// groupcomm-proxy §5.1: the client waits T = T' + margin for responses; each arriving
/// before is reported with its delay, then the request ends and its token is freed.
#[test]
fn groupcomm_proxy_s5_1_multicast_timeout_ends_the_request() {
    let mut req = get(2, false);
    req.margin = Duration::from_millis(500);
    let (mut h, id) = H::new(&req);
    let (tx, _) = h.out();
    let token = view(&tx[0].bytes).token().to_vec();
    assert_eq!(
        view(&tx[0].bytes).option(opt::MULTICAST_TIMEOUT_DEFAULT),
        Some(&[2][..])
    );
    // A NON request has no retransmission: the only timer is the deadline.
    assert_eq!(h.c.poll_timeout(), Some(h.t0 + Duration::from_millis(2500)));
    h.now = h.t0 + Duration::from_millis(2499);
    let (_, ev) = h.feed(proxy(), &relayed(NON, 1, &token, b"late but in time"));
    assert_eq!(responses(&ev)[0].elapsed, Duration::from_millis(2499));
    let (tx, ev) = h.next();
    assert!(tx.is_empty());
    assert_eq!(
        ev,
        vec![ClientEvent::Ended {
            request: id,
            end: End::Timeout
        }]
    );
    let (_, ev) = h.feed(proxy(), &relayed(NON, 2, &token, b"too late"));
    assert!(responses(&ev).is_empty());
}

/// The OSCORE case: the client protects end to end in group mode and wraps that in a
/// pairwise layer with the proxy (`--proxy-kid`).
struct Secured {
    h: H,
    proxy_ctx: SecurityContext,
    dev_ctx: SecurityContext,
    /// The first request as it reached the proxy (before its layer came off).
    first: Vec<u8>,
}

fn secured(con: bool) -> Secured {
    let g = common::Group::new(&[CLIENT, PROXY, DEV]);
    let mut req = get(5, con);
    req.oscore = Some(g.config(CLIENT));
    req.proxy_kid = Some(PROXY.to_vec());
    req.first_ssn = 10;
    let (mut h, _) = H::new(&req);
    let (tx, _) = h.out();
    Secured {
        h,
        proxy_ctx: SecurityContext::new(&g.config(PROXY)).unwrap(),
        dev_ctx: SecurityContext::new(&g.config(DEV)).unwrap(),
        first: tx[0].bytes.clone(),
    }
}

impl Secured {
    /// The proxy removes its layer from `request`.
    fn unlayer(&mut self, request: &[u8]) -> (Vec<u8>, Exchange) {
        self.proxy_ctx.unprotect_request(request).unwrap()
    }

    /// The device answers the end-to-end request `inner` (without the Echo the proxy
    /// consumed), and the proxy relays the answer with Reply-From under its layer, as
    /// message `mtype`/`mid`.
    fn answer(&mut self, inner: &[u8], hop: &mut Exchange, mtype: u8, mid: u16) -> Vec<u8> {
        let iv = view(inner);
        let mut opts: Vec<(u16, &[u8])> = iv.options().filter(|(n, _)| *n != opt::ECHO).collect();
        let to_device = build::encode(NON, iv.code(), 1, iv.token(), &mut opts, iv.payload());
        let (plain, mut ex) = self.dev_ctx.unprotect_request(&to_device).unwrap();
        let pv = view(&plain);
        let answer = build::encode(NON, code::CONTENT, 2, pv.token(), &mut [], b"hello from d");
        let protected = self
            .dev_ctx
            .protect_response(&answer, &mut ex, Mode::Group, false)
            .unwrap();
        let p = view(&protected);
        let rf = cri::reply_from(device());
        let mut opts: Vec<(u16, &[u8])> = p.options().collect();
        opts.push((opt::REPLY_FROM_DEFAULT, &rf));
        let relay = build::encode(mtype, p.code(), mid, iv.token(), &mut opts, p.payload());
        self.proxy_ctx
            .protect_response_layer(&relay, hop, Mode::Pairwise, false, Layer::Hop)
            .unwrap()
    }

    /// The proxy after a restart (RFC 10021 §9): 4.01 with Echo under its layer,
    /// piggybacked in the ACK of message `mid`.
    fn challenge(&mut self, inner: &[u8], hop: &mut Exchange, mid: u16, echo: &[u8]) -> Vec<u8> {
        let reply = build::encode(
            ACK,
            code::UNAUTHORIZED,
            mid,
            view(inner).token(),
            &mut [(opt::ECHO, echo)],
            b"",
        );
        self.proxy_ctx
            .protect_response_layer(&reply, hop, Mode::Pairwise, true, Layer::Hop)
            .unwrap()
    }
}

/// oscore-capable-proxies §2.6: the layer with the proxy comes off every response, then
/// the device's end-to-end protection is verified (RFC 10021 §7.4); Reply-From, inside
/// the layer, names the device. A response not under the layer is dropped.
#[test]
fn oscore_capable_proxies_s2_6_hop_layer_removed_then_verified_end_to_end() {
    let mut s = secured(false);
    let first = s.first.clone();
    assert!(view(&first).option(opt::OSCORE).is_some());
    assert!(
        view(&first).option(opt::URI_HOST).is_none(),
        "the proxy's options are inside its layer (§2.2)"
    );
    let (inner, mut hop) = s.unlayer(&first);
    assert!(
        view(&inner).option(opt::URI_HOST).is_some(),
        "the end-to-end request inside, with the proxy's options"
    );
    let resp = s.answer(&inner, &mut hop, CON, 0x3000);
    let (tx, ev) = s.h.feed(proxy(), &resp);
    assert_eq!(tx[0].bytes, build::empty(ACK, 0x3000));
    let r = responses(&ev);
    assert_eq!(r.len(), 1, "{ev:?}");
    assert_eq!(r[0].code, code::CONTENT);
    assert_eq!(r[0].payload, b"hello from d");
    assert_eq!(r[0].reply_from, Some(device()));
    assert_eq!(r[0].oscore, Some(Ok((Mode::Group, DEV.to_vec()))));
    // The same response altered on the way, as a new message: the layer does not
    // verify, so it is not the proxy's; the message layer still acknowledges it.
    let mut forged = resp.clone();
    let n = forged.len();
    forged[n - 1] ^= 1;
    forged[2..4].copy_from_slice(&0x3001u16.to_be_bytes());
    let (tx, ev) = s.h.feed(proxy(), &forged);
    assert_eq!(tx[0].bytes, build::empty(ACK, 0x3001));
    assert_eq!(discards(&ev), vec![Discard::HopLayer]);
    assert!(responses(&ev).is_empty());
}

/// RFC 10021 §9, RFC 9175 §2.3: a 4.01 with Echo from the proxy is answered by sending
/// the same end-to-end request again with the Echo value, with a new Message ID and
/// hop layer; it is not reported as a response, and the answer to the retry is.
#[test]
fn rfc10021_s9_echo_challenge_answered_by_resending_with_echo() {
    let mut s = secured(true);
    let first = s.first.clone();
    let mid1 = view(&first).message_id();
    let (inner1, mut hop1) = s.unlayer(&first);
    let ch = s.challenge(&inner1, &mut hop1, mid1, b"echo-1");
    let (tx, ev) = s.h.feed(proxy(), &ch);
    assert!(responses(&ev).is_empty());
    assert!(matches!(ev[..], [ClientEvent::EchoRetry { .. }]), "{ev:?}");
    assert_eq!(tx.len(), 1);
    let retry = tx[0].bytes.clone();
    let rv = view(&retry);
    assert_eq!(rv.mtype(), CON);
    assert_eq!(rv.message_id(), mid1.wrapping_add(1));
    assert_eq!(rv.token(), view(&first).token());
    let (inner2, mut hop2) = s.unlayer(&retry);
    let (iv1, iv2) = (view(&inner1), view(&inner2));
    assert_eq!(iv2.option(opt::ECHO), Some(&b"echo-1"[..]));
    assert_eq!(
        iv2.option(opt::OSCORE),
        iv1.option(opt::OSCORE),
        "the same end-to-end request"
    );
    assert_eq!(iv2.payload(), iv1.payload());
    // The ACK that carried the challenge delivered the first message: only the retry
    // is retransmitted.
    let (tx, _) = s.h.next();
    assert_eq!(tx.len(), 1);
    assert_eq!(tx[0].bytes, retry);
    let resp = s.answer(&inner2, &mut hop2, CON, 0x4000);
    let (_, ev) = s.h.feed(proxy(), &resp);
    let r = responses(&ev);
    assert_eq!(r.len(), 1, "{ev:?}");
    assert_eq!(r[0].payload, b"hello from d");
    assert_eq!(r[0].oscore, Some(Ok((Mode::Group, DEV.to_vec()))));
}

/// RFC 10021 §9: the retry is made once; a second challenge is reported as the 4.01 it
/// is (the proxy does not accept the client's proof, and asking again would loop).
#[test]
fn rfc10021_s9_second_echo_challenge_reported() {
    let mut s = secured(false);
    let first = s.first.clone();
    let (inner1, mut hop1) = s.unlayer(&first);
    let ch = s.challenge(&inner1, &mut hop1, 0x5000, b"echo-1");
    // As a NON answer (the proxy's own Message ID) to the NON request.
    let ch = [&[0x50 | (ch[0] & 0x0f)][..], &ch[1..]].concat();
    let (tx, ev) = s.h.feed(proxy(), &ch);
    assert!(matches!(ev[..], [ClientEvent::EchoRetry { .. }]), "{ev:?}");
    let retry = tx[0].bytes.clone();
    let (inner2, mut hop2) = s.unlayer(&retry);
    let ch2 = s.challenge(&inner2, &mut hop2, 0x5001, b"echo-2");
    let ch2 = [&[0x50 | (ch2[0] & 0x0f)][..], &ch2[1..]].concat();
    let (tx, ev) = s.h.feed(proxy(), &ch2);
    assert!(tx.is_empty(), "no second retry");
    let r = responses(&ev);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].code, code::UNAUTHORIZED);
}

// ---- Observe and block-wise (issue 12) ----

/// Observe and Block2 option numbers (RFC 7641 §2, RFC 7959 §2.1).
const OBSERVE: u16 = 6;
const BLOCK2: u16 = 23;
const ETAG: u16 = 4;

fn device2() -> SocketAddr {
    "127.0.0.12:5683".parse().unwrap()
}

/// A notification relayed by the proxy from `dev` with Observe `seq`.
fn notification(mid: u16, token: &[u8], dev: SocketAddr, seq: u32, payload: &[u8]) -> Vec<u8> {
    let rf = cri::reply_from(dev);
    let o = opt::uint_value(seq);
    build::encode(
        NON,
        code::CONTENT,
        mid,
        token,
        &mut [(OBSERVE, &o), (opt::REPLY_FROM_DEFAULT, &rf)],
        payload,
    )
}

fn observe_req() -> ClientRequest {
    let mut r = ClientRequest::get(proxy(), "coap://224.0.1.187/counter", 3);
    r.observe = true;
    r
}

/// RFC 7641 §3.1: the registration carries Observe 0; it stays open past T' (the
/// group observation outlives the Multicast-Timeout, groupcomm-proxy §5.2.2) with no
/// deadline of its own.
#[test]
fn rfc7641_s3_1_registration_observe_0_outlives_t_prime() {
    let (mut h, id) = H::new(&observe_req());
    let (tx, _) = h.out();
    let reg = view(&tx[0].bytes);
    assert_eq!(reg.option(OBSERVE), Some(&[][..]), "Observe 0 (empty uint)");
    assert!(reg.option(opt::MULTICAST_TIMEOUT_DEFAULT).is_some());
    let token = reg.token().to_vec();
    assert_eq!(h.c.poll_timeout(), None, "no deadline while observing");
    let (_, ev) = h.at(h.t0 + Duration::from_secs(600));
    assert!(ev.is_empty(), "{ev:?}");
    let (_, ev) = h.feed(proxy(), &notification(1, &token, device(), 5, b"5"));
    let r = responses(&ev);
    assert_eq!((r[0].observe, r[0].reply_from), (Some(5), Some(device())));
    assert_eq!(h.c.observations(), vec![id]);
}

/// RFC 7641 §3.4: per source, a notification older than the last one reported from
/// that source is not reported (with wrap-around of the 24-bit number, and fresh again
/// after 128 s); each device of the group has its own order.
#[test]
fn rfc7641_s3_4_notifications_ordered_per_source() {
    let (mut h, _) = H::new(&observe_req());
    let (tx, _) = h.out();
    let token = view(&tx[0].bytes).token().to_vec();
    let mut mid = 100;
    let mut feed = |h: &mut H, dev, seq| {
        mid += 1;
        let (_, ev) = h.feed(proxy(), &notification(mid, &token, dev, seq, b"x"));
        (responses(&ev).len(), discards(&ev))
    };
    assert_eq!(feed(&mut h, device(), 10), (1, vec![]));
    assert_eq!(feed(&mut h, device(), 12), (1, vec![]));
    assert_eq!(
        feed(&mut h, device(), 11),
        (0, vec![Discard::Stale]),
        "older"
    );
    assert_eq!(
        feed(&mut h, device(), 12),
        (0, vec![Discard::Stale]),
        "same"
    );
    assert_eq!(
        feed(&mut h, device2(), 0xff_fff0),
        (1, vec![]),
        "another device"
    );
    assert_eq!(feed(&mut h, device(), 13), (1, vec![]));
    // Wrap-around: 2^24 - 1 then 1 is newer (V1 > V2, V1 - V2 > 2^23), 3 is not
    // after 0xfffff0 (V1 < V2 but V2 - V1 > 2^23 means older).
    assert_eq!(feed(&mut h, device2(), 0xff_ffff), (1, vec![]));
    assert_eq!(feed(&mut h, device2(), 1), (1, vec![]));
    // After 128 s any number is fresh.
    h.now += Duration::from_secs(129);
    assert_eq!(feed(&mut h, device(), 2), (1, vec![]));
}

/// RFC 7641 §3.6, RFC 10020 §3.7: deregistering sends a GET with Observe 1 and the same
/// token (a new Message ID), with the same options; notifications after it are stale;
/// through the proxy the request ends T' + margin later (each device's last answer is
/// relayed until then).
#[test]
fn rfc7641_s3_6_deregistration_same_token_observe_1() {
    let (mut h, id) = H::new(&observe_req());
    let (tx, _) = h.out();
    let reg = tx[0].bytes.clone();
    let token = view(&reg).token().to_vec();
    h.feed(proxy(), &notification(1, &token, device(), 1, b"1"));
    h.now = h.t0 + Duration::from_secs(30);
    h.c.deregister(h.now, id).unwrap();
    let (tx, _) = h.out();
    assert_eq!(tx.len(), 1);
    let (r, d) = (view(&reg), view(&tx[0].bytes));
    assert_eq!(d.token(), &token[..]);
    assert_eq!(d.code(), code::GET);
    assert_ne!(d.message_id(), r.message_id());
    assert_eq!(d.option(OBSERVE), Some(&[1u8][..]));
    let others = |v: &MessageView| -> Vec<(u16, Vec<u8>)> {
        v.options()
            .filter(|(n, _)| *n != OBSERVE)
            .map(|(n, v)| (n, v.to_vec()))
            .collect()
    };
    assert_eq!(others(&d), others(&r), "the same request otherwise");
    let (_, ev) = h.feed(proxy(), &notification(2, &token, device(), 2, b"2"));
    assert_eq!(discards(&ev), vec![Discard::Stale]);
    // A device's plain answer to the deregistration is relayed.
    let (_, ev) = h.feed(proxy(), &relayed(NON, 3, &token, b"2"));
    assert_eq!(responses(&ev)[0].observe, None);
    assert!(h.c.observations().is_empty());
    let (_, ev) = h.at(h.now + Duration::from_secs(3) + Duration::from_secs(1));
    assert_eq!(
        ev,
        vec![ClientEvent::Ended {
            request: id,
            end: End::Deregistered
        }]
    );
}

/// RFC 7641 §3.6 sent straight to a server: it ends at the server's answer.
#[test]
fn rfc7641_s3_6_direct_deregistration_ends_at_answer() {
    let mut req = ClientRequest::get(device(), "coap://127.0.0.11/counter", 3);
    req.observe = true;
    req.direct = true;
    let (mut h, id) = H::new(&req);
    let (tx, _) = h.out();
    let v = view(&tx[0].bytes);
    assert!(v.option(opt::MULTICAST_TIMEOUT_DEFAULT).is_none());
    assert!(v.option(opt::PROXY_SCHEME).is_none());
    assert_eq!(v.option(opt::URI_PATH), Some(&b"counter"[..]));
    let token = v.token().to_vec();
    h.c.deregister(h.now, id).unwrap();
    h.out();
    let answer = build::encode(NON, code::CONTENT, 9, &token, &mut [], b"7");
    let (_, ev) = h.feed(device(), &answer);
    assert_eq!(responses(&ev).len(), 1);
    assert!(ev.contains(&ClientEvent::Ended {
        request: id,
        end: End::Deregistered
    }));
}

/// A Block2 response (RFC 7959 §2.2 value: NUM, M, SZX) from `dev` through the proxy.
/// Response `b` without its Reply-From option, as it comes straight from a device or by
/// unicast through the proxy (groupcomm-proxy §5.4.1: the proxy adds it to the
/// responses to a group request).
fn without_reply_from(b: Vec<u8>) -> Vec<u8> {
    let v = view(&b);
    let mut o: Vec<(u16, &[u8])> = v
        .options()
        .filter(|(n, _)| *n != opt::REPLY_FROM_DEFAULT)
        .collect();
    build::encode(
        NON,
        v.code(),
        v.message_id(),
        v.token(),
        &mut o,
        v.payload(),
    )
}

fn block(
    mid: u16,
    token: &[u8],
    dev: SocketAddr,
    num: u32,
    more: bool,
    szx: u32,
    body: &[u8],
) -> Vec<u8> {
    let size = 16usize << szx;
    let start = num as usize * size;
    let end = (start + size).min(body.len());
    let rf = cri::reply_from(dev);
    let b2 = opt::uint_value(num << 4 | if more { 8 } else { 0 } | szx);
    build::encode(
        NON,
        code::CONTENT,
        mid,
        token,
        &mut [
            (ETAG, &b"v1"[..]),
            (BLOCK2, &b2),
            (opt::REPLY_FROM_DEFAULT, &rf),
        ],
        &body[start..end],
    )
}

fn block2_of(d: &Datagram) -> (u32, u32) {
    let v = opt::read_uint(view(&d.bytes).option(BLOCK2).unwrap()).unwrap();
    (v >> 4, v & 7)
}

fn body(n: usize, tag: u8) -> Vec<u8> {
    (0..n).map(|i| tag.wrapping_add(i as u8)).collect()
}

/// RFC 10020 §3.8, RFC 7959 §2.4: block 0 asked of the group in the size wanted; each
/// device's representation is reassembled with follow-ups to that device (a unicast
/// request through the proxy to its Reply-From address, without Multicast-Timeout), in
/// the size the device used, and reported once, whole; the request ends after its
/// follow-ups.
#[test]
fn rfc7959_s2_4_reassembled_per_device_through_the_proxy() {
    let mut req = ClientRequest::get(proxy(), "coap://224.0.1.187/large?x=1", 2);
    req.block_size = Some(64);
    let (mut h, id) = H::new(&req);
    let (tx, _) = h.out();
    assert_eq!(block2_of(&tx[0]), (0, 2));
    let token = view(&tx[0].bytes).token().to_vec();
    let (a, b) = (body(150, 1), body(40, 100));
    // Device 1 answers in 32-byte blocks (smaller than asked, §2.4); device 2 in one.
    let (tx, ev) = h.feed(proxy(), &block(1, &token, device(), 0, true, 1, &a));
    assert!(responses(&ev).is_empty());
    let (_, ev2) = h.feed(proxy(), &block(2, &token, device2(), 0, false, 2, &b));
    assert_eq!(
        responses(&ev2)[0].payload,
        b,
        "one block is the whole of it"
    );
    let mut fu = tx[0].clone();
    let mut mid = 10;
    let mut got = None;
    for _ in 0..10 {
        let v = view(&fu.bytes);
        assert_eq!(fu.to, proxy());
        assert!(
            v.option(opt::MULTICAST_TIMEOUT_DEFAULT).is_none(),
            "unicast"
        );
        assert_eq!(v.option(opt::URI_HOST), Some(&b"127.0.0.11"[..]));
        assert_eq!(opt::read_uint(v.option(opt::URI_PORT).unwrap()), Some(5683));
        assert_eq!(v.option(opt::URI_QUERY), Some(&b"x=1"[..]));
        let (num, szx) = block2_of(&fu);
        assert_eq!(szx, 1, "the device's size");
        mid += 1;
        let more = (num as usize + 1) * 32 < a.len();
        let (tx, ev) = h.feed(proxy(), &block(mid, v.token(), device(), num, more, 1, &a));
        if let Some(r) = responses(&ev).first() {
            got = Some((*r).clone());
            break;
        }
        fu = tx[0].clone();
    }
    let got = got.expect("reassembled");
    assert_eq!((got.payload, got.reply_from), (a, Some(device())));
    let (_, ev) = h.at(h.t0 + Duration::from_secs(3));
    assert_eq!(
        ev,
        vec![ClientEvent::Ended {
            request: id,
            end: End::Timeout
        }]
    );
    assert_eq!(h.c.open_requests(), 0);
}

/// RFC 7959 §2.4: blocks that arrive out of order are held until the ones before them
/// come; a duplicate adds nothing; a block of another ETag restarts from block 0.
#[test]
fn rfc7959_s2_4_out_of_order_duplicate_and_changed_etag() {
    let mut req = ClientRequest::get(device(), "coap://127.0.0.11/large", 2);
    req.direct = true;
    req.block_size = Some(16);
    let (mut h, _) = H::new(&req);
    let (tx, _) = h.out();
    let token = view(&tx[0].bytes).token().to_vec();
    let a = body(40, 7);
    // Without Reply-From: straight from the device.
    let direct = without_reply_from;
    let (tx, _) = h.feed(
        device(),
        &direct(block(1, &token, device(), 0, true, 0, &a)),
    );
    assert_eq!((tx[0].to, block2_of(&tx[0])), (device(), (1, 0)));
    let t1 = view(&tx[0].bytes).token().to_vec();
    // Block 2 arrives first (on the same follow-up token, as a late answer would not):
    // held, no new request; then block 1 completes it.
    let (tx, ev) = h.feed(device(), &direct(block(2, &t1, device(), 2, false, 0, &a)));
    assert!(responses(&ev).is_empty());
    // The follow-up for block 1 was answered with block 2: the next asked is block 1.
    assert_eq!(block2_of(&tx[0]), (1, 0));
    let t2 = view(&tx[0].bytes).token().to_vec();
    let (_, ev) = h.feed(device(), &direct(block(3, &t2, device(), 1, true, 0, &a)));
    assert_eq!(responses(&ev)[0].payload, a);

    // A new version mid-transfer: start again from 0.
    let (mut h, _) = H::new(&req);
    let (tx, _) = h.out();
    let token = view(&tx[0].bytes).token().to_vec();
    let (tx, _) = h.feed(
        device(),
        &direct(block(1, &token, device(), 0, true, 0, &a)),
    );
    let t1 = view(&tx[0].bytes).token().to_vec();
    let b = body(40, 50);
    let mut changed = direct(block(2, &t1, device(), 1, true, 0, &b));
    let pos = changed.windows(2).position(|w| w == b"v1").unwrap();
    changed[pos + 1] = b'2';
    let (tx, ev) = h.feed(device(), &changed);
    assert!(responses(&ev).is_empty());
    assert_eq!(block2_of(&tx[0]), (0, 0), "block 0 of the new version");
}

/// RFC 7959 §2.4: a size change mid-transfer (the server's smaller size) continues
/// from the same byte offset in the new size.
#[test]
fn rfc7959_s2_4_size_change_continues_at_offset() {
    let mut req = ClientRequest::get(device(), "coap://127.0.0.11/large", 2);
    req.direct = true;
    req.block_size = Some(64);
    let (mut h, _) = H::new(&req);
    let (tx, _) = h.out();
    let token = view(&tx[0].bytes).token().to_vec();
    let a = body(200, 3);
    let strip = without_reply_from;
    let (tx, _) = h.feed(device(), &strip(block(1, &token, device(), 0, true, 2, &a)));
    assert_eq!(block2_of(&tx[0]), (1, 2));
    let t = view(&tx[0].bytes).token().to_vec();
    // The server now sends 32-byte blocks: bytes 64..96 are block 2 of size 32.
    let (tx, _) = h.feed(device(), &strip(block(2, &t, device(), 2, true, 1, &a)));
    assert_eq!(block2_of(&tx[0]), (3, 1), "offset 96 in 32-byte blocks");
    let mut next = tx[0].clone();
    let mut mid = 3;
    loop {
        let (num, _) = block2_of(&next);
        let more = (num as usize + 1) * 32 < a.len();
        mid += 1;
        let t = view(&next.bytes).token().to_vec();
        let (tx, ev) = h.feed(device(), &strip(block(mid, &t, device(), num, more, 1, &a)));
        if let Some(r) = responses(&ev).first() {
            assert_eq!(r.payload, a);
            break;
        }
        next = tx[0].clone();
    }
}

/// The client against the device's own core (`groxy::tools::device::Resources`), both
/// Group OSCORE members, datagrams handed across: RFC 8613 §4.1.3.5 / RFC 10021 notifications
/// each verified (group mode, the device's kid), ordered by Partial IV; a replayed
/// notification (another Message ID, the same protected message) is not reported as
/// new; a forged one is reported unverified and does not move the order. RFC 10020 §3.8:
/// block-wise follow-ups to one device go in pairwise mode and the representation
/// verifies whole.
#[test]
fn rfc10021_observe_and_blockwise_end_to_end_with_the_device_core() {
    use groxy::oscore::GroupMember;
    use groxy::tools::device::{Resources, Settings};
    let g = common::Group::new(&[CLIENT, DEV]);
    let mut member = GroupMember::new(SecurityContext::new(&g.config(DEV)).unwrap());
    let mut dev = Resources::new("d", Settings::default(), 1000);
    let mut req = ClientRequest::get(device(), "coap://127.0.0.11/counter", 3);
    req.direct = true;
    req.observe = true;
    req.oscore = Some(g.config(CLIENT));
    let (mut h, _) = H::new(&req);
    let me: SocketAddr = "127.0.0.1:40001".parse().unwrap();
    let (tx, _) = h.out();
    let answer = dev
        .handle(me, &tx[0].bytes, false, Some((&mut member, Mode::Group)))
        .expect("the registration verifies");
    let (_, ev) = h.feed(device(), &answer);
    assert_eq!(
        responses(&ev)[0].oscore,
        Some(Ok((Mode::Group, DEV.to_vec())))
    );
    let mut last = Vec::new();
    for k in 1..=3 {
        let n = dev.tick(Some(&mut member));
        let (_, ev) = h.feed(device(), &n[0].1);
        let r = responses(&ev);
        assert_eq!(r[0].oscore, Some(Ok((Mode::Group, DEV.to_vec()))), "{k}");
        assert_eq!(r[0].payload, (k as u32).to_string().as_bytes());
        assert!(r[0].observe.is_some());
        last = n[0].1.clone();
    }
    // The last notification again under another Message ID: a replay (RFC 10021 §5.3.1).
    let mut replay = last.clone();
    replay[3] ^= 0x55;
    let (_, ev) = h.feed(device(), &replay);
    assert!(
        responses(&ev)
            .iter()
            .all(|r| r.oscore.as_ref().is_some_and(|o| o.is_err())),
        "not reported as a verified notification: {ev:?}"
    );
    // A forgery with a far higher Observe: unverified, and the next genuine one is new.
    let v = view(&last);
    let big = opt::uint_value(0x7f_0000);
    let mut o: Vec<(u16, &[u8])> = v.options().filter(|(n, _)| *n != OBSERVE).collect();
    o.push((OBSERVE, &big));
    let mut payload = v.payload().to_vec();
    payload[0] ^= 1;
    let forged = build::encode(NON, v.code(), 0x4444, v.token(), &mut o, &payload);
    let (_, ev) = h.feed(device(), &forged);
    assert!(responses(&ev)[0].oscore.as_ref().unwrap().is_err());
    let n = dev.tick(Some(&mut member));
    let (_, ev) = h.feed(device(), &n[0].1);
    assert_eq!(responses(&ev)[0].payload, b"4", "{ev:?}");

    // Block-wise: block 0 in group mode, the follow-ups in pairwise mode to the device.
    let mut req = ClientRequest::get(device(), "coap://127.0.0.11/large", 3);
    req.direct = true;
    req.block_size = Some(512);
    req.oscore = Some(g.config(CLIENT));
    req.first_ssn = 100;
    let (mut h, _) = H::new(&req);
    let (mut tx, _) = h.out();
    let mut modes = Vec::new();
    for _ in 0..10 {
        let d = tx.pop().expect("a request");
        let a = dev
            .handle(me, &d.bytes, false, Some((&mut member, Mode::Group)))
            .expect("verifies");
        let (next, ev) = h.feed(device(), &a);
        if let Some(r) = responses(&ev).first() {
            assert_eq!(r.payload, dev.large());
            break;
        }
        let o = view(&next[0].bytes).option(opt::OSCORE).unwrap().to_vec();
        // RFC 10021 §6.1 / §8: the group flag (bit 5) unset in pairwise mode.
        modes.push(o[0] & 0x20 == 0);
        tx = next;
    }
    assert_eq!(modes, vec![true; 5], "3,000 bytes: 5 pairwise follow-ups");
}

/// RFC 7959 §2.4 allows a server state per requester; aiocoap keeps it and answers a
/// block past 0 asked from another endpoint (the proxy's unicast egress) with 4.08
/// (§2.9.2). The client starts that server's transfer again at block 0 by unicast and
/// completes it; the representation still names the server of the group response.
#[test]
fn rfc7959_s2_9_2_incomplete_follow_up_restarts_at_block_0() {
    let mut req = ClientRequest::get(proxy(), "coap://224.0.1.187/large", 2);
    req.block_size = Some(16);
    let (mut h, _) = H::new(&req);
    let (tx, _) = h.out();
    let token = view(&tx[0].bytes).token().to_vec();
    let a = body(40, 9);
    let (tx, _) = h.feed(proxy(), &block(1, &token, device(), 0, true, 0, &a));
    assert_eq!(block2_of(&tx[0]), (1, 0));
    let t1 = view(&tx[0].bytes).token().to_vec();
    // Unicast answers through the proxy carry no Reply-From.
    let unicast = without_reply_from;
    let incomplete = build::encode(NON, 0x88, 2, &t1, &mut [], b"");
    let (tx, ev) = h.feed(proxy(), &incomplete);
    assert!(responses(&ev).is_empty(), "{ev:?}");
    assert_eq!(block2_of(&tx[0]), (0, 0), "block 0 again, to that device");
    assert_eq!(
        view(&tx[0].bytes).option(opt::URI_HOST),
        Some(&b"127.0.0.11"[..])
    );
    let mut next = tx[0].clone();
    let mut mid = 3;
    loop {
        let (num, _) = block2_of(&next);
        let more = (num as usize + 1) * 16 < a.len();
        mid += 1;
        let t = view(&next.bytes).token().to_vec();
        let (tx, ev) = h.feed(
            proxy(),
            &unicast(block(mid, &t, device(), num, more, 0, &a)),
        );
        if let Some(r) = responses(&ev).first() {
            assert_eq!((&r.payload, r.reply_from), (&a, Some(device())));
            break;
        }
        next = tx[0].clone();
    }
}

/// The order table of an observation is bounded (1,024 sources): past it the source
/// heard from longest ago is forgotten, so its next notification, even an older
/// number, is taken as fresh; the ones heard since are still ordered.
#[test]
fn observation_order_table_bounded() {
    let (mut h, _) = H::new(&observe_req());
    let (tx, _) = h.out();
    let token = view(&tx[0].bytes).token().to_vec();
    let src = |i: u32| -> SocketAddr { (std::net::Ipv4Addr::from(0x0a00_0000 + i), 5683).into() };
    let mut mid = 0u16;
    let mut feed = |h: &mut H, i: u32, seq: u32| {
        mid = mid.wrapping_add(1);
        let (_, ev) = h.feed(proxy(), &notification(mid, &token, src(i), seq, b"x"));
        responses(&ev).len()
    };
    for i in 0..=1024 {
        assert_eq!(feed(&mut h, i, 10), 1);
    }
    assert_eq!(feed(&mut h, 0, 5), 1, "forgotten: fresh again");
    assert_eq!(feed(&mut h, 1024, 5), 0, "remembered: older");
}
