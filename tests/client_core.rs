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
