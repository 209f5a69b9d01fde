//! Observe through the proxy (issue 12) on a virtual clock: group observations that
//! outlive the Multicast-Timeout (groupcomm-proxy-07 §5.2.2, §5.4.1, §5.4.2; RFC 10020
//! §3.7), per-device ordering (RFC 7641 §3.4), the interest check (RFC 7641 §4.5), every
//! way an observation ends, the bounds, unicast observations (RFC 7641 §5), security
//! across the observation (RFC 10021 §5.3.1, §7.3; oscore-capable-proxies §2.5.1) and
//! block-wise requests (RFC 10020 §3.8).

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::Group;
use common::engine::{Clocked, checking_config, client, device, drops, origin, rejected};
use groxy::coap::MessageView;
use groxy::coap::build::{self, ACK, CON, NON, RST, code};
use groxy::coap::cri;
use groxy::coap::options as opt;
use groxy::oscore::option::OscoreOption;
use groxy::oscore::{GroupMember, Layer, Mode, SecurityContext};
use groxy::proxy::events::NotificationDrop;
use groxy::proxy::{
    CheckResult, CloseReason, DropReason, Event, GroupSecurity, Link, Policy, ProxyConfig,
    RejectReason, Transmit,
};

const MT: u16 = opt::MULTICAST_TIMEOUT_DEFAULT;
const RF: u16 = opt::REPLY_FROM_DEFAULT;
const OBSERVE: u16 = 6;
const BLOCK2: u16 = 23;
const LISTENER: Link = Link::Listener(0);
const GROUP: Link = Link::Group(0, 0);
const TOKEN: &[u8] = &[0x0b, 0x5e];

fn client2() -> SocketAddr {
    "127.0.0.2:40000".parse().unwrap()
}

/// The engine on its clock, seeded 11, the client's Message IDs from 1001.
fn engine(cfg: ProxyConfig) -> Clocked {
    Clocked {
        mid: 1000,
        ..Clocked::new(cfg, 11)
    }
}

type H = Clocked;

impl Clocked {
    /// A group GET of /temp from `from` with Observe `obs` (if any) and T' seconds.
    fn observe_group(
        &mut self,
        from: SocketAddr,
        t: u8,
        token: &[u8],
        obs: Option<u8>,
        timeout: u32,
    ) -> (Vec<Transmit>, Vec<Event>) {
        let mid = self.next_mid();
        let mtv = opt::uint_value(timeout);
        let ov = obs.map(|o| if o == 0 { vec![] } else { vec![o] });
        let mut o: Vec<(u16, &[u8])> = vec![
            (opt::URI_HOST, b"224.0.1.187"),
            (opt::PROXY_SCHEME, b"coap"),
            (opt::URI_PATH, b"temp"),
            (MT, &mtv),
        ];
        if let Some(v) = &ov {
            o.push((OBSERVE, v));
        }
        let m = build::encode(t, code::GET, mid, token, &mut o, &[]);
        self.feed(LISTENER, from, &m)
    }
}

fn multicast(tx: &[Transmit]) -> Option<&Transmit> {
    tx.iter().find(|t| matches!(t.link, Link::Group(..)))
}
fn to_client(tx: &[Transmit], c: SocketAddr) -> Vec<&Transmit> {
    tx.iter()
        .filter(|t| t.to == c && t.link == LISTENER)
        .collect()
}
fn seq_bytes(n: u32) -> Vec<u8> {
    opt::uint_value(n)
}
/// A notification from a device to the forwarded request `fwd`.
fn notification(fwd: &[u8], t: u8, mid: u16, c: u8, seq: Option<u32>, payload: &[u8]) -> Vec<u8> {
    let v = MessageView::parse(fwd).unwrap();
    let s = seq.map(seq_bytes);
    let mut o: Vec<(u16, &[u8])> = vec![];
    if let Some(s) = &s {
        o.push((OBSERVE, s));
    }
    build::encode(t, c, mid, v.token(), &mut o, payload)
}
fn ended(ev: &[Event]) -> Vec<(CloseReason, bool)> {
    ev.iter()
        .filter_map(|e| match e {
            Event::ObserveEnded {
                reason,
                deregistered,
                ..
            } => Some((*reason, *deregistered)),
            _ => None,
        })
        .collect()
}
fn notif_drops(ev: &[Event]) -> Vec<NotificationDrop> {
    ev.iter()
        .filter_map(|e| match e {
            Event::NotificationDropped { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}
fn max_age(bytes: &[u8]) -> Option<u32> {
    MessageView::parse(bytes)
        .unwrap()
        .option(opt::MAX_AGE)
        .and_then(opt::read_uint)
}

/// An observation of the default group by `client()` under TOKEN with T' 3 s; the
/// forwarded registration.
fn observed(h: &mut H, t: u8) -> Transmit {
    let (tx, ev) = h.observe_group(client(), t, TOKEN, Some(0), 3);
    assert!(ev.contains(&Event::ObserveStarted { group: Some(0) }));
    multicast(&tx)
        .expect("the registration is multicast")
        .clone()
}

/// §5.2.2, §5.4.1, §5.4.2: one multicast registration under the proxy's token, Observe
/// kept; every notification of every device relayed under the client's token with
/// Reply-From, before and after T' (the issue's case: notifications every 2 s behind a
/// Multicast-Timeout of 3 s); the token kept after T' while a device answered 2.xx with
/// Observe.
#[test]
fn s5_4_2_group_observation_outlives_t_prime() {
    let mut h = engine(ProxyConfig::default());
    let reg = observed(&mut h, NON);
    let rv = MessageView::parse(&reg.bytes).unwrap();
    assert_eq!(rv.option(OBSERVE), Some(&[][..]), "Observe 0 forwarded");
    assert_eq!(rv.token().len(), 8, "the proxy's own token");
    assert_eq!(rv.option(MT), None);
    assert_eq!(h.e.observations().0, 1);

    let mut seq = 1;
    for step in 0..5u64 {
        if step > 0 {
            let (_, ev) = h.advance_through_timers(Duration::from_secs(2));
            assert!(
                !ev.iter().any(|e| matches!(e, Event::Closed { .. })),
                "kept past T' (step {step})"
            );
        }
        for d in [1u8, 2] {
            seq += 1;
            let n = notification(
                &reg.bytes,
                NON,
                100 + seq as u16,
                code::CONTENT,
                Some(seq),
                b"21",
            );
            let (tx, ev) = h.feed(GROUP, device(d), &n);
            let out = to_client(&tx, client());
            assert_eq!(out.len(), 1, "relayed at {} s from device {d}", 2 * step);
            let v = MessageView::parse(&out[0].bytes).unwrap();
            assert_eq!(v.token(), TOKEN);
            assert_eq!(v.option(OBSERVE), Some(&seq_bytes(seq)[..]));
            assert_eq!(
                cri::parse_reply_from(v.option(RF).unwrap()),
                Some(device(d))
            );
            assert!(
                ev.iter()
                    .any(|e| matches!(e, Event::Notified { group: Some(0), .. }))
            );
        }
    }
    assert_eq!(h.e.observations().0, 1);
    assert_eq!(h.e.exchanges().0, 1);
}

/// §5.4.2: no device answered 2.xx with Observe by T': the token is freed at T' as for
/// any group request, and later notifications are late.
#[test]
fn s5_4_2_token_freed_at_t_prime_without_an_observing_device() {
    let mut h = engine(ProxyConfig::default());
    let reg = observed(&mut h, NON);
    // A device that does not support Observe answers without it (RFC 7641 §3.1).
    let plain = notification(&reg.bytes, NON, 7, code::CONTENT, None, b"x");
    let (tx, _) = h.feed(GROUP, device(1), &plain);
    assert_eq!(to_client(&tx, client()).len(), 1);
    let (_, ev) = h.advance_through_timers(Duration::from_secs(3));
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::Closed {
            reason: CloseReason::Timeout,
            ..
        }
    )));
    assert_eq!(ended(&ev), vec![(CloseReason::Timeout, false)]);
    assert_eq!(h.e.observations().0, 0);
    let late = notification(&reg.bytes, NON, 8, code::CONTENT, Some(3), b"x");
    let (tx, ev) = h.feed(GROUP, device(2), &late);
    assert!(to_client(&tx, client()).is_empty());
    assert_eq!(drops(&ev), vec![DropReason::LateResponse]);
}

/// §5.4.2: a non-2.xx notification is relayed (with Reply-From) and ends that device's
/// observation; when the last device ended after T' the observation ends.
#[test]
fn s5_4_2_non_2xx_ends_a_device_and_the_last_one_ends_the_observation() {
    let mut h = engine(ProxyConfig::default());
    let reg = observed(&mut h, NON);
    for d in [1, 2] {
        let n = notification(&reg.bytes, NON, 10 + d as u16, code::CONTENT, Some(1), b"a");
        h.feed(GROUP, device(d), &n);
    }
    h.advance_through_timers(Duration::from_secs(4));
    let gone = notification(&reg.bytes, NON, 20, code::NOT_FOUND, None, b"");
    let (tx, ev) = h.feed(GROUP, device(1), &gone);
    let out = to_client(&tx, client());
    assert_eq!(out.len(), 1, "the 4.04 is relayed");
    let v = MessageView::parse(&out[0].bytes).unwrap();
    assert_eq!(v.code(), code::NOT_FOUND);
    assert_eq!(
        cri::parse_reply_from(v.option(RF).unwrap()),
        Some(device(1))
    );
    assert!(ended(&ev).is_empty(), "device 2 still notifies");
    let n = notification(&reg.bytes, NON, 21, code::CONTENT, Some(2), b"b");
    let (tx, _) = h.feed(GROUP, device(2), &n);
    assert_eq!(to_client(&tx, client()).len(), 1);
    let gone = notification(&reg.bytes, NON, 22, code::SERVICE_UNAVAILABLE, None, b"");
    let (tx, ev) = h.feed(GROUP, device(2), &gone);
    assert_eq!(to_client(&tx, client()).len(), 1);
    assert_eq!(ended(&ev), vec![(CloseReason::NotificationsEnded, false)]);
    assert_eq!(h.e.exchanges().0, 0);
}

/// RFC 7641 §3.4: per device, a notification older than the last relayed one is not
/// relayed; numbers compare modulo 2^24 within 2^23; after 128 s any number is newer.
/// Another device's numbers are independent.
#[test]
fn rfc7641_s3_4_notifications_are_ordered_per_device() {
    let mut h = engine(ProxyConfig::default());
    let reg = observed(&mut h, NON);
    let mut mid = 300;
    let mut send = |h: &mut H, d: u8, seq: u32| {
        mid += 1;
        let n = notification(&reg.bytes, NON, mid, code::CONTENT, Some(seq), b"v");
        let (tx, ev) = h.feed(GROUP, device(d), &n);
        (to_client(&tx, client()).len(), notif_drops(&ev))
    };
    assert_eq!(send(&mut h, 1, 10), (1, vec![]));
    assert_eq!(send(&mut h, 1, 9), (0, vec![NotificationDrop::Reordered]));
    assert_eq!(send(&mut h, 1, 10), (0, vec![NotificationDrop::Reordered]));
    assert_eq!(send(&mut h, 2, 5), (1, vec![]), "another device");
    assert_eq!(send(&mut h, 1, 11), (1, vec![]));
    // Across the wrap: 0xFFFFFF then 1 is newer (1 - 0xFFFFFF mod 2^24 < 2^23).
    assert_eq!(
        send(&mut h, 1, 0xFF_FFFF),
        (0, vec![NotificationDrop::Reordered])
    );
    assert_eq!(send(&mut h, 1, 11 + (1 << 23) - 1), (1, vec![]));
    assert_eq!(send(&mut h, 1, 11), (0, vec![NotificationDrop::Reordered]));
    // 128 s later, an older number is newer (the device may have restarted).
    h.advance_through_timers(Duration::from_secs(129));
    assert_eq!(send(&mut h, 1, 3), (1, vec![]));
}

/// Devices' CON notifications are acknowledged (RFC 7252 §4.2, RFC 7641 §4.5), and a
/// retransmission of one is relayed once.
#[test]
fn rfc7641_s4_5_device_con_notifications_are_acked() {
    let mut h = engine(ProxyConfig::default());
    let reg = observed(&mut h, NON);
    let n = notification(&reg.bytes, CON, 77, code::CONTENT, Some(4), b"c");
    let (tx, _) = h.feed(GROUP, device(1), &n);
    assert!(
        tx.iter()
            .any(|t| t.to == device(1) && t.link == GROUP && t.bytes == build::empty(ACK, 77))
    );
    assert_eq!(to_client(&tx, client()).len(), 1);
    let (tx, ev) = h.feed(GROUP, device(1), &n);
    assert!(
        tx.iter()
            .any(|t| t.to == device(1) && t.bytes == build::empty(ACK, 77))
    );
    assert!(to_client(&tx, client()).is_empty());
    assert_eq!(drops(&ev), vec![DropReason::DuplicateRequest]);
}

fn interest_config(secs: u64) -> ProxyConfig {
    let mut c = ProxyConfig::default();
    c.limits.observe.interest_check = Duration::from_secs(secs);
    c
}

/// RFC 7641 §4.5, §5.4.2: a NON client gets a CON notification at least every
/// `interest_check`; an ACK keeps the observation, none ends it: the group is
/// deregistered (Observe 1 under the proxy's token) and the next CON notification of a
/// device gets an RST.
#[test]
fn rfc7641_s4_5_interest_check_and_lapsed_interest() {
    let mut h = engine(interest_config(60));
    let reg = observed(&mut h, NON);
    let mut mid = 500;
    let mut seq = 0;
    let mut notify = |h: &mut H| {
        mid += 1;
        seq += 1;
        let n = notification(&reg.bytes, NON, mid, code::CONTENT, Some(seq), b"t");
        h.feed(GROUP, device(1), &n)
    };
    let mtype = |tx: &[Transmit]| {
        MessageView::parse(&to_client(tx, client())[0].bytes)
            .unwrap()
            .mtype()
    };
    let (tx, _) = notify(&mut h);
    assert_eq!(mtype(&tx), NON);
    h.advance_through_timers(Duration::from_secs(30));
    let (tx, _) = notify(&mut h);
    assert_eq!(mtype(&tx), NON, "within interest_check");
    h.advance_through_timers(Duration::from_secs(30));
    let (tx, ev) = notify(&mut h);
    let out = to_client(&tx, client());
    let v = MessageView::parse(&out[0].bytes).unwrap();
    assert_eq!(v.mtype(), CON, "the interest check");
    assert!(ev.contains(&Event::Notified {
        group: Some(0),
        interest_check: true
    }));
    // Acknowledged: the observation goes on, with NON notifications again.
    h.feed(LISTENER, client(), &build::empty(ACK, v.message_id()));
    let (_, ev) = h.advance_through_timers(Duration::from_secs(30));
    assert!(ended(&ev).is_empty());
    let (tx, _) = notify(&mut h);
    assert_eq!(mtype(&tx), NON);
    h.advance_through_timers(Duration::from_secs(30));
    // The next check is not acknowledged: after the retransmissions it ends.
    let (tx, _) = notify(&mut h);
    assert_eq!(mtype(&tx), CON);
    let (mut tx, mut ev) = (vec![], vec![]);
    for _ in 0..4 {
        let (a, b) = h.advance_through_timers(Duration::from_secs(30));
        tx.extend(a);
        ev.extend(b);
        if !ended(&ev).is_empty() {
            break;
        }
        notify(&mut h);
    }
    assert_eq!(ended(&ev), vec![(CloseReason::InterestLapsed, true)]);
    assert!(drops(&ev).contains(&DropReason::GaveUpRetransmitting));
    let dereg = multicast(&tx).expect("group deregistration");
    let dv = MessageView::parse(&dereg.bytes).unwrap();
    assert_eq!(dv.token(), MessageView::parse(&reg.bytes).unwrap().token());
    assert_eq!(
        dv.option(OBSERVE),
        Some(&[1][..]),
        "RFC 7641 §3.6: Observe 1"
    );
    assert_eq!(dv.option(opt::URI_PATH), Some(&b"temp"[..]));
    assert_eq!(h.e.observations().0, 0);
    let n = notification(&reg.bytes, CON, 999, code::CONTENT, Some(99), b"t");
    let (tx, _) = h.feed(GROUP, device(1), &n);
    assert!(
        tx.iter()
            .any(|t| t.to == device(1) && t.bytes == build::empty(RST, 999))
    );
    assert!(to_client(&tx, client()).is_empty());
}

/// §5.2.3, RFC 7641 §3.6: an RST from the client to a notification ends the observation
/// at once: deregistration multicast; a device's next notification, NON or CON, gets an
/// RST.
#[test]
fn rfc7641_s3_6_client_reset_ends_and_deregisters() {
    let mut h = engine(ProxyConfig::default());
    let reg = observed(&mut h, NON);
    let n = notification(&reg.bytes, NON, 40, code::CONTENT, Some(1), b"t");
    let (tx, _) = h.feed(GROUP, device(1), &n);
    let mid = MessageView::parse(&to_client(&tx, client())[0].bytes)
        .unwrap()
        .message_id();
    h.advance_through_timers(Duration::from_secs(5));
    let (tx, ev) = h.feed(LISTENER, client(), &build::empty(RST, mid));
    assert_eq!(ended(&ev), vec![(CloseReason::EarlyStopReset, true)]);
    let dv = MessageView::parse(&multicast(&tx).unwrap().bytes).unwrap();
    assert_eq!(dv.option(OBSERVE), Some(&[1][..]));
    for (t, m) in [(NON, 41), (CON, 42)] {
        let n = notification(&reg.bytes, t, m, code::CONTENT, Some(2), b"t");
        let (tx, _) = h.feed(GROUP, device(1), &n);
        assert!(
            tx.iter()
                .any(|x| x.to == device(1) && x.bytes == build::empty(RST, m))
        );
        assert!(to_client(&tx, client()).is_empty());
    }
}

/// §5.1.3, §5.2.3: an Early Stop Request ends the observation, deregistering the group.
#[test]
fn s5_2_3_early_stop_request_ends_the_observation() {
    let mut h = engine(ProxyConfig::default());
    let reg = observed(&mut h, NON);
    let n = notification(&reg.bytes, NON, 40, code::CONTENT, Some(1), b"t");
    h.feed(GROUP, device(1), &n);
    h.advance_through_timers(Duration::from_secs(10));
    let stop = build::encode(NON, code::GET, 3, TOKEN, &mut [(MT, &[])], &[]);
    let (tx, ev) = h.feed(LISTENER, client(), &stop);
    assert_eq!(ended(&ev), vec![(CloseReason::EarlyStopRequest, true)]);
    assert!(multicast(&tx).is_some());
    assert_eq!(h.e.exchanges().0, 0);
}

/// RFC 10020 §3.7, RFC 7641 §3.6: the client's deregistration (GET with Observe 1 and
/// the same token) is multicast under the proxy's token; the answers to it are relayed
/// until its own T', then the exchange ends.
#[test]
fn rfc10020_s3_7_client_deregistration_is_multicast() {
    let mut h = engine(ProxyConfig::default());
    let reg = observed(&mut h, NON);
    let n = notification(&reg.bytes, NON, 40, code::CONTENT, Some(1), b"t");
    h.feed(GROUP, device(1), &n);
    h.advance_through_timers(Duration::from_secs(10));
    let (tx, ev) = h.observe_group(client(), NON, TOKEN, Some(1), 2);
    assert_eq!(rejected(&ev), None);
    assert_eq!(ended(&ev), vec![(CloseReason::Deregistered, true)]);
    let dv = MessageView::parse(&multicast(&tx).unwrap().bytes).unwrap();
    assert_eq!(dv.option(OBSERVE), Some(&[1][..]));
    assert_eq!(dv.token(), MessageView::parse(&reg.bytes).unwrap().token());
    assert_eq!(h.e.observations().0, 0);
    let fin = notification(&reg.bytes, NON, 41, code::CONTENT, None, b"last");
    let (tx, _) = h.feed(GROUP, device(1), &fin);
    assert_eq!(
        to_client(&tx, client()).len(),
        1,
        "the final response is relayed"
    );
    let (_, ev) = h.advance_through_timers(Duration::from_secs(2));
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::Closed {
            reason: CloseReason::Timeout,
            ..
        }
    )));
}

/// RFC 10020 §3.7, RFC 7641 §3.3.1: a re-registration under the same token refreshes
/// the group registration (sent again under the same proxy token) without a second
/// observation and without the token-reuse refusal.
#[test]
fn rfc7641_s3_3_1_reregistration_refreshes() {
    let mut h = engine(ProxyConfig::default());
    let reg = observed(&mut h, NON);
    let n = notification(&reg.bytes, NON, 40, code::CONTENT, Some(1), b"t");
    h.feed(GROUP, device(1), &n);
    h.advance_through_timers(Duration::from_secs(5));
    let (tx, ev) = h.observe_group(client(), NON, TOKEN, Some(0), 3);
    assert_eq!(rejected(&ev), None, "not a token reuse");
    assert!(ev.contains(&Event::ObserveRefreshed { group: Some(0) }));
    assert!(!ev.iter().any(|e| matches!(e, Event::ObserveStarted { .. })));
    let again = MessageView::parse(&multicast(&tx).unwrap().bytes).unwrap();
    let first = MessageView::parse(&reg.bytes).unwrap();
    assert_eq!(again.token(), first.token());
    assert_eq!(again.option(OBSERVE), Some(&[][..]));
    assert_ne!(again.message_id(), first.message_id());
    assert_eq!(h.e.observations().0, 1);
    assert_eq!(h.e.exchanges().0, 1);
    let n = notification(&reg.bytes, NON, 41, code::CONTENT, Some(2), b"t");
    let (tx, _) = h.feed(GROUP, device(1), &n);
    assert_eq!(to_client(&tx, client()).len(), 1);
}

/// RFC 7641 §5: an observation of a unicast origin through the proxy: notifications
/// relayed past the unicast timeout (CON ones acknowledged), ended by a final response.
#[test]
fn rfc7641_s5_unicast_origin_observation() {
    let mut h = engine(ProxyConfig::default());
    let m = build::encode(
        NON,
        code::GET,
        5,
        TOKEN,
        &mut [(OBSERVE, &[]), (opt::PROXY_URI, b"coap://127.0.0.9/obs")],
        &[],
    );
    let (tx, ev) = h.feed(LISTENER, client(), &m);
    assert!(ev.contains(&Event::ObserveStarted { group: None }));
    let fwd = tx.iter().find(|t| t.to == origin()).unwrap().clone();
    for (i, secs) in [0u64, 12, 30].into_iter().enumerate() {
        h.advance_through_timers(Duration::from_secs(secs));
        let n = notification(
            &fwd.bytes,
            CON,
            60 + i as u16,
            code::CONTENT,
            Some(i as u32 + 1),
            b"o",
        );
        let (tx, ev) = h.feed(fwd.link, origin(), &n);
        assert!(
            tx.iter()
                .any(|t| t.to == origin() && t.bytes == build::empty(ACK, 60 + i as u16))
        );
        let out = to_client(&tx, client());
        assert_eq!(out.len(), 1, "notification {i}");
        let v = MessageView::parse(&out[0].bytes).unwrap();
        assert_eq!(v.token(), TOKEN);
        assert_eq!(v.option(RF), None, "no Reply-From for a unicast origin");
        assert!(!ev.iter().any(|e| matches!(e, Event::Closed { .. })));
    }
    let fin = notification(&fwd.bytes, NON, 70, code::CONTENT, None, b"end");
    let (tx, ev) = h.feed(fwd.link, origin(), &fin);
    assert_eq!(to_client(&tx, client()).len(), 1);
    assert_eq!(ended(&ev), vec![(CloseReason::NotificationsEnded, false)]);
    assert_eq!(h.e.exchanges().0, 0);
}

/// RFC 10020 §3.7 (amplification): a bounded observation table (full: 5.03 with
/// Max-Age) and a per-client cap (4.29 with Max-Age).
#[test]
fn rfc10020_s3_7_observation_table_and_per_client_cap() {
    let mut c = ProxyConfig::default();
    c.limits.observe.max_observations = 2;
    c.limits.observe.max_per_client = 1;
    let mut h = engine(c);
    let (tx, _) = h.observe_group(client(), NON, b"a", Some(0), 3);
    assert!(multicast(&tx).is_some());
    let (tx, ev) = h.observe_group(client(), NON, b"b", Some(0), 3);
    assert_eq!(
        rejected(&ev),
        Some((RejectReason::ClientObservations, code::TOO_MANY_REQUESTS))
    );
    assert!(multicast(&tx).is_none());
    assert_eq!(max_age(&to_client(&tx, client())[0].bytes), Some(60));
    // A plain request of the same client is not an observation: not capped.
    let (tx, ev) = h.observe_group(client(), NON, b"c", None, 3);
    assert_eq!(rejected(&ev), None);
    assert!(multicast(&tx).is_some());
    let (tx, _) = h.observe_group(client2(), NON, b"d", Some(0), 3);
    assert!(multicast(&tx).is_some());
    let third: SocketAddr = "127.0.0.3:40000".parse().unwrap();
    let (tx, ev) = h.observe_group(third, NON, b"e", Some(0), 3);
    assert_eq!(
        rejected(&ev),
        Some((RejectReason::ObservationsFull, code::SERVICE_UNAVAILABLE))
    );
    assert!(multicast(&tx).is_none());
    assert_eq!(max_age(&to_client(&tx, third)[0].bytes), Some(60));
    assert_eq!(h.e.observations(), (2, 2));
}

/// RFC 10020 §3.7: notifications relayed per second per client are capped (over it,
/// dropped and counted); the devices tracked per observation are bounded.
#[test]
fn rfc10020_s3_7_notification_rate_and_device_bound() {
    let mut c = ProxyConfig::default();
    c.limits.observe.notification_rate = 1.0;
    c.limits.observe.notification_burst = 2.0;
    c.limits.observe.max_devices = 2;
    let mut h = engine(c);
    let reg = observed(&mut h, NON);
    let mut relayed = 0;
    let mut dropped = vec![];
    for (i, d) in [1u8, 2, 1].into_iter().enumerate() {
        let n = notification(
            &reg.bytes,
            NON,
            50 + i as u16,
            code::CONTENT,
            Some(i as u32 + 1),
            b"r",
        );
        let (tx, ev) = h.feed(GROUP, device(d), &n);
        relayed += to_client(&tx, client()).len();
        dropped.extend(notif_drops(&ev));
    }
    assert_eq!(relayed, 2);
    assert_eq!(dropped, vec![NotificationDrop::RateLimited]);
    h.advance_through_timers(Duration::from_secs(5));
    let n = notification(&reg.bytes, NON, 60, code::CONTENT, Some(1), b"r");
    let (tx, ev) = h.feed(GROUP, device(3), &n);
    assert!(to_client(&tx, client()).is_empty());
    assert_eq!(notif_drops(&ev), vec![NotificationDrop::DevicesFull]);
    let n = notification(&reg.bytes, NON, 61, code::CONTENT, Some(9), b"r");
    let (tx, _) = h.feed(GROUP, device(2), &n);
    assert_eq!(to_client(&tx, client()).len(), 1);
}

/// RFC 7252 §4.4: notifications to the client carry Message IDs from the per-destination
/// allocator, none reused, NON for a NON client and CON for a CON one.
#[test]
fn rfc7252_s4_4_notification_message_ids_are_never_reused() {
    let mut c = ProxyConfig::default();
    c.limits.observe.notification_rate = 1e9;
    c.limits.observe.notification_burst = 1e9;
    let mut h = engine(c);
    let reg = observed(&mut h, CON);
    let mut seen = HashSet::new();
    for i in 0..3000u32 {
        let n = notification(&reg.bytes, NON, i as u16, code::CONTENT, Some(i + 1), b"m");
        let (tx, _) = h.feed(GROUP, device(1 + (i % 4) as u8), &n);
        let out = to_client(&tx, client());
        let v = MessageView::parse(&out[0].bytes).unwrap();
        assert_eq!(v.mtype(), CON, "a CON client's notifications are CON");
        assert!(
            seen.insert(v.message_id()),
            "Message ID {} reused",
            v.message_id()
        );
        h.feed(LISTENER, client(), &build::empty(ACK, v.message_id()));
    }
}

/// SIGTERM: draining ends every observation with a group deregistration at once, so the
/// drain does not wait for them; ordinary exchanges run on.
#[test]
fn drain_deregisters_observations() {
    let mut h = engine(ProxyConfig::default());
    let reg = observed(&mut h, NON);
    let n = notification(&reg.bytes, NON, 40, code::CONTENT, Some(1), b"t");
    h.feed(GROUP, device(1), &n);
    h.observe_group(client(), NON, b"plain", None, 30);
    h.advance_through_timers(Duration::from_secs(5));
    h.e.drain();
    let (tx, ev) = common::outputs(&mut h.e);
    assert_eq!(ended(&ev), vec![(CloseReason::Shutdown, true)]);
    let dv = MessageView::parse(&multicast(&tx).unwrap().bytes).unwrap();
    assert_eq!(dv.option(OBSERVE), Some(&[1][..]));
    assert_eq!(h.e.exchanges().0, 1, "the plain exchange runs on");
    assert_eq!(h.e.observations().0, 0);
}

/// SIGHUP without a rekey: the observation goes on.
#[test]
fn reload_leaves_observations() {
    let mut h = engine(ProxyConfig::default());
    let reg = observed(&mut h, NON);
    let n = notification(&reg.bytes, NON, 40, code::CONTENT, Some(1), b"t");
    h.feed(GROUP, device(1), &n);
    h.reconfigure(ProxyConfig::default()).unwrap();
    h.advance_through_timers(Duration::from_secs(10));
    let n = notification(&reg.bytes, NON, 41, code::CONTENT, Some(2), b"t");
    let (tx, _) = h.feed(GROUP, device(1), &n);
    assert_eq!(to_client(&tx, client()).len(), 1);
    assert_eq!(h.e.observations().0, 1);
}

/// An observation past T' that relayed nothing for `interest_check` ends (bounded
/// lifetime without traffic), deregistering the group.
#[test]
fn idle_observation_ends() {
    let mut h = engine(interest_config(60));
    let reg = observed(&mut h, NON);
    let n = notification(&reg.bytes, NON, 40, code::CONTENT, Some(1), b"t");
    h.feed(GROUP, device(1), &n);
    let (_, ev) = h.advance_through_timers(Duration::from_secs(59));
    assert!(ended(&ev).is_empty());
    let (_, ev) = h.advance_through_timers(Duration::from_secs(2));
    assert_eq!(ended(&ev), vec![(CloseReason::ObserveIdle, true)]);
}

// ---- Security across the observation ----

const CLIENT_ID: &[u8] = &[0x01];
const DEV_A: &[u8] = &[0x0a];
const PROXY_ID: &[u8] = &[0x50];
/// NON GET, MID 0xaa01, token c3, Observe 0, Uri-Path "hello".
const OBS_HELLO: &str = "5101aa01c3605568656c6c6f";

fn checked_config(g: &Group) -> ProxyConfig {
    checking_config(g, Policy::Enforce)
}

fn next_epoch(g: &Group) -> Group {
    let mut n = g.rekeyed();
    n.master_salt = g.master_salt.clone();
    n
}

/// `plain` protected by `ctx` in group mode and sent through the proxy to group 0: the
/// outer Uri-Host and Proxy-Scheme (RFC 7252 §5.10.2), Multicast-Timeout 3 s, `token`.
fn signed_group_request(ctx: &mut SecurityContext, plain: &[u8], token: &[u8]) -> Vec<u8> {
    let (prot, _) = ctx.protect_request(plain, Mode::Group, None).unwrap();
    let v = MessageView::parse(&prot).unwrap();
    let mut opts: Vec<(u16, &[u8])> = v.options().collect();
    opts.extend([
        (opt::URI_HOST, &b"224.0.1.187"[..]),
        (opt::PROXY_SCHEME, b"coap"),
        (MT, &[3]),
    ]);
    build::encode(NON, v.code(), 9, token, &mut opts, v.payload())
}

fn checks(ev: &[Event]) -> Vec<CheckResult> {
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

/// RFC 10021 §7.5, §5.3.1, §7.3: group-mode notifications are verified with the
/// registration's Partial IV and kid context, past T' too; a replayed one (its Response
/// Number seen in the observation) and a forged one are dropped; after a SIGHUP rekey
/// mid-observation, the device's notifications under the new Gid with its own Partial
/// IV are verified with the new epoch and relayed, and the observation is kept.
#[test]
fn rfc10021_notifications_verified_replays_dropped_across_a_rekey() {
    let g1 = Group::new(&[CLIENT_ID, DEV_A]);
    let g2 = next_epoch(&g1);
    let mut h = engine(checked_config(&g1));
    let mut cctx = SecurityContext::new(&g1.config(CLIENT_ID)).unwrap();
    let m = signed_group_request(&mut cctx, &hex::decode(OBS_HELLO).unwrap(), TOKEN);
    let (tx, ev) = h.feed(LISTENER, client(), &m);
    assert!(ev.contains(&Event::ObserveStarted { group: Some(0) }));
    let fwd = multicast(&tx).unwrap().bytes.clone();
    let mut dev = GroupMember::new(SecurityContext::new(&g1.config(DEV_A)).unwrap());
    let (_, mut aex) = dev.unprotect_request(&fwd).unwrap();
    let fv = MessageView::parse(&fwd).unwrap();
    let mut seq = 0u32;
    let mut notify = |dev: &mut GroupMember, aex: &mut groxy::oscore::Exchange| {
        seq += 1;
        let s = seq_bytes(seq);
        let plain = build::encode(
            NON,
            code::CONTENT,
            100 + seq as u16,
            fv.token(),
            &mut [(OBSERVE, &s)],
            b"22",
        );
        dev.protect_response(&plain, aex, Mode::Group, true)
            .unwrap()
    };
    let first = notify(&mut dev, &mut aex);
    let (tx, ev) = h.feed(GROUP, device(1), &first);
    assert_eq!(to_client(&tx, client()).len(), 1);
    assert_eq!(checks(&ev), vec![CheckResult::Valid]);
    h.advance_through_timers(Duration::from_secs(5));
    let second = notify(&mut dev, &mut aex);
    let (tx, ev) = h.feed(GROUP, device(1), &second);
    assert_eq!(
        to_client(&tx, client()).len(),
        1,
        "past T', verified and relayed"
    );
    assert_eq!(checks(&ev), vec![CheckResult::Valid]);
    // A replay of the first (new Message ID, same protected content).
    let mut replay = first.clone();
    replay[2] ^= 0x55;
    let (tx, ev) = h.feed(GROUP, device(1), &replay);
    assert!(to_client(&tx, client()).is_empty());
    assert_eq!(drops(&ev), vec![DropReason::ResponseReplay]);
    // A forgery: the protected payload altered.
    let mut forged = notify(&mut dev, &mut aex);
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let (tx, ev) = h.feed(GROUP, device(1), &forged);
    assert!(to_client(&tx, client()).is_empty());
    assert_eq!(drops(&ev), vec![DropReason::ResponseCheckFailed]);

    // SIGHUP rekey during the observation.
    h.reconfigure(checked_config(&g2)).unwrap();
    dev.rekey(SecurityContext::new(&g2.config(DEV_A)).unwrap(), &[])
        .unwrap();
    h.advance_through_timers(Duration::from_secs(5));
    let after = notify(&mut dev, &mut aex);
    let o = OscoreOption::parse(
        MessageView::parse(&after)
            .unwrap()
            .option(opt::OSCORE)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(o.kid_context, Some(g2.gid.as_slice()), "§7.3: the new Gid");
    assert!(o.piv.is_some(), "§7.3: the server's own Partial IV");
    let (tx, ev) = h.feed(GROUP, device(1), &after);
    assert_eq!(
        to_client(&tx, client()).len(),
        1,
        "verified under the new epoch"
    );
    assert_eq!(checks(&ev), vec![CheckResult::Valid]);
    assert_eq!(h.e.observations().0, 1);
    let (tx, ev) = h.feed(GROUP, device(1), &after);
    assert!(to_client(&tx, client()).is_empty());
    assert_eq!(drops(&ev), vec![DropReason::ResponseReplay]);
}

/// oscore-capable-proxies §2.5.1 (RFC 8613 §8.3): where the proxy protects toward the
/// client (its layer), every notification gets a Partial IV of its own, the first one
/// too, none repeated; the client can verify each.
#[test]
fn s2_5_1_each_notification_under_the_layer_has_its_own_partial_iv() {
    let g = Group::new(&[CLIENT_ID, PROXY_ID]);
    let mut cfg = ProxyConfig::default();
    cfg.groups[0].security = Some(GroupSecurity {
        policy: Policy::Off,
        checker: g.checker_config(),
        member: Some(g.config(PROXY_ID)),
        allow_kids: None,
    });
    let mut h = engine(cfg);
    // The proxy reserves its Sender Sequence Numbers first (RFC 10021 §2.6.1.1).
    h.e.restore_member(0, 0, u64::MAX, false);
    let mut ctx = SecurityContext::new(&g.config(CLIENT_ID)).unwrap();
    let inner = build::encode(
        NON,
        code::GET,
        3,
        TOKEN,
        &mut [
            (opt::URI_HOST, b"127.0.0.9"),
            (OBSERVE, &[]),
            (opt::PROXY_SCHEME, b"coap"),
        ],
        &[],
    );
    let (wrapped, mut ex) = ctx
        .protect_request_layer(&inner, Mode::Pairwise, Some(PROXY_ID), Layer::Hop)
        .unwrap();
    let (tx, ev) = h.feed(LISTENER, client(), &wrapped);
    assert!(
        ev.contains(&Event::ObserveStarted { group: None }),
        "{ev:?}"
    );
    let fwd = tx.iter().find(|t| t.to == origin()).unwrap().clone();
    let mut pivs = HashSet::new();
    for i in 0..4u32 {
        let n = notification(
            &fwd.bytes,
            NON,
            80 + i as u16,
            code::CONTENT,
            Some(i + 1),
            b"n",
        );
        let (tx, _) = h.feed(fwd.link, origin(), &n);
        let out = to_client(&tx, client());
        assert_eq!(out.len(), 1);
        let o = OscoreOption::parse(
            MessageView::parse(&out[0].bytes)
                .unwrap()
                .option(opt::OSCORE)
                .unwrap(),
        )
        .unwrap();
        let piv = o.piv.expect("a Partial IV of the proxy's own").to_vec();
        assert!(pivs.insert(piv), "Partial IV repeated");
        let (plain, _) = ctx.unprotect_response(&out[0].bytes, &mut ex).unwrap();
        assert_eq!(MessageView::parse(&plain).unwrap().payload(), b"n");
    }
}

// ---- Block-wise (RFC 10020 §3.8, RFC 7959 §2.8) ----

/// RFC 10020 §3.8: a group GET with Block2 number 0 is forwarded with it; each device's
/// first block comes back with Reply-From; a unicast follow-up to one device (by its
/// Reply-From address) and a group follow-up for block 1 are ordinary requests and are
/// forwarded with their Block2.
#[test]
fn rfc10020_s3_8_block_wise_through_the_proxy() {
    let mut h = engine(ProxyConfig::default());
    let mtv = opt::uint_value(3);
    // Block2: NUM 0, M 0, SZX 2 (64 bytes).
    let b0 = [0x02u8];
    let m = build::encode(
        NON,
        code::GET,
        1,
        b"bw",
        &mut [
            (opt::URI_HOST, b"224.0.1.187"),
            (opt::URI_PATH, b"large"),
            (BLOCK2, &b0),
            (opt::PROXY_SCHEME, b"coap"),
            (MT, &mtv),
        ],
        &[],
    );
    let (tx, _) = h.feed(LISTENER, client(), &m);
    let fwd = multicast(&tx).unwrap().clone();
    let fv = MessageView::parse(&fwd.bytes).unwrap();
    assert_eq!(fv.option(BLOCK2), Some(&b0[..]));
    for d in [1u8, 2] {
        let more = [0x0au8]; // NUM 0, M 1, SZX 2
        let r = build::encode(
            NON,
            code::CONTENT,
            10 + d as u16,
            fv.token(),
            &mut [(BLOCK2, &more)],
            &[b'x'; 64],
        );
        let (tx, _) = h.feed(GROUP, device(d), &r);
        let out = to_client(&tx, client());
        let v = MessageView::parse(&out[0].bytes).unwrap();
        assert_eq!(v.option(BLOCK2), Some(&more[..]));
        assert_eq!(
            cri::parse_reply_from(v.option(RF).unwrap()),
            Some(device(d))
        );
    }
    // Unicast follow-up to device 1 for block 1.
    let b1 = [0x12u8];
    let m = build::encode(
        NON,
        code::GET,
        2,
        b"b1",
        &mut [(opt::PROXY_URI, b"coap://127.0.0.11/large"), (BLOCK2, &b1)],
        &[],
    );
    let (tx, _) = h.feed(LISTENER, client(), &m);
    let u = tx
        .iter()
        .find(|t| t.to == device(1))
        .expect("forwarded to the device");
    assert_eq!(
        MessageView::parse(&u.bytes).unwrap().option(BLOCK2),
        Some(&b1[..])
    );
    let uv = MessageView::parse(&u.bytes).unwrap();
    let r = build::encode(
        NON,
        code::CONTENT,
        30,
        uv.token(),
        &mut [(BLOCK2, &[0x12])],
        b"tail",
    );
    let (tx, _) = h.feed(u.link, device(1), &r);
    assert_eq!(
        MessageView::parse(&to_client(&tx, client())[0].bytes)
            .unwrap()
            .payload(),
        b"tail"
    );
    // Group follow-up for block 1.
    let m = build::encode(
        NON,
        code::GET,
        3,
        b"g1",
        &mut [
            (opt::URI_HOST, b"224.0.1.187"),
            (opt::URI_PATH, b"large"),
            (BLOCK2, &b1),
            (opt::PROXY_SCHEME, b"coap"),
            (MT, &mtv),
        ],
        &[],
    );
    let (tx, _) = h.feed(LISTENER, client(), &m);
    let g = MessageView::parse(&multicast(&tx).unwrap().bytes).unwrap();
    assert_eq!(g.option(BLOCK2), Some(&b1[..]));
}

/// RFC 10020 §3.8 with Group OSCORE: the unicast follow-up to one device is in pairwise
/// mode; the proxy relays the pairwise answers to a group request and counts them as
/// unverifiable (no signature to check, RFC 10021 §8).
#[test]
fn rfc10020_s3_8_pairwise_block_answers_are_relayed_as_unverifiable() {
    let g = Group::new(&[CLIENT_ID, DEV_A]);
    let mut h = engine(checked_config(&g));
    let mut cctx = SecurityContext::new(&g.config(CLIENT_ID)).unwrap();
    let plain = build::encode(
        NON,
        code::GET,
        1,
        &[0xc3],
        &mut [(opt::URI_PATH, b"large"), (BLOCK2, &[0x02])],
        &[],
    );
    let m = signed_group_request(&mut cctx, &plain, b"pw");
    let (tx, _) = h.feed(LISTENER, client(), &m);
    let fwd = multicast(&tx).unwrap().bytes.clone();
    let mut dev = SecurityContext::new(&g.config(DEV_A)).unwrap();
    let (_, mut ex) = dev.unprotect_request(&fwd).unwrap();
    let fv = MessageView::parse(&fwd).unwrap();
    let r = build::encode(
        NON,
        code::CONTENT,
        5,
        fv.token(),
        &mut [(BLOCK2, &[0x0a])],
        &[b'y'; 64],
    );
    let pr = dev
        .protect_response(&r, &mut ex, Mode::Pairwise, false)
        .unwrap();
    let (tx, ev) = h.feed(GROUP, device(1), &pr);
    assert_eq!(to_client(&tx, client()).len(), 1);
    assert_eq!(checks(&ev), vec![CheckResult::Unverifiable]);
}

/// check-config validates the observation bounds, each error with its key.
#[test]
fn check_config_validates_observe_limits() {
    let base =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/groxy.toml")).unwrap();
    let ok = groxy::settings::load_str(&base).unwrap();
    assert_eq!(ok.run.proxy.limits.observe.max_observations, 1024);
    assert_eq!(
        ok.run.proxy.limits.observe.interest_check,
        Duration::from_secs(86_400)
    );
    let bad = base
        .replace("max_observations = 1024", "max_observations = 0")
        .replace("interest_check = 86400", "interest_check = 10")
        .replace("notification_rate = 100.0", "notification_rate = -1.0");
    let Err(errors) = groxy::settings::load_str(&bad) else {
        panic!("refused")
    };
    for key in [
        "limits.observe.max_observations",
        "limits.observe.interest_check",
        "limits.observe.notification_rate",
        "limits.observe.max_per_client",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(key)),
            "{key}: {errors:?}"
        );
    }
}

/// RFC 10020 §3.7: an observation counts against the per-client exchange limit for as
/// long as it lasts (past T' too): with `max_exchanges_per_client` 1, a held observation
/// makes the client's next request 4.29.
#[test]
fn rfc10020_s3_7_observations_count_against_per_client_limits() {
    let mut c = ProxyConfig::default();
    c.limits.max_exchanges_per_client = 1;
    let mut h = engine(c);
    let reg = observed(&mut h, NON);
    let n = notification(&reg.bytes, NON, 40, code::CONTENT, Some(1), b"t");
    h.feed(GROUP, device(1), &n);
    h.advance_through_timers(Duration::from_secs(30));
    let (tx, ev) = h.observe_group(client(), NON, b"next", None, 3);
    assert_eq!(
        rejected(&ev),
        Some((RejectReason::ClientBusy, code::TOO_MANY_REQUESTS))
    );
    assert!(multicast(&tx).is_none());
}

/// RFC 10020 §3.7 (RFC 8132): FETCH with Observe 0 starts an observation like GET.
#[test]
fn rfc10020_s3_7_fetch_observes() {
    let mut h = engine(ProxyConfig::default());
    let mtv = opt::uint_value(3);
    let m = build::encode(
        NON,
        0x05,
        1,
        TOKEN,
        &mut [
            (opt::URI_HOST, b"224.0.1.187"),
            (OBSERVE, &[]),
            (opt::URI_PATH, b"temp"),
            (opt::PROXY_SCHEME, b"coap"),
            (MT, &mtv),
        ],
        b"query",
    );
    let (tx, ev) = h.feed(LISTENER, client(), &m);
    assert!(ev.contains(&Event::ObserveStarted { group: Some(0) }));
    let reg = multicast(&tx).unwrap().clone();
    assert_eq!(MessageView::parse(&reg.bytes).unwrap().code(), 0x05);
    let n = notification(&reg.bytes, NON, 40, code::CONTENT, Some(1), b"t");
    h.feed(GROUP, device(1), &n);
    h.advance_through_timers(Duration::from_secs(10));
    let n = notification(&reg.bytes, NON, 41, code::CONTENT, Some(2), b"t");
    let (tx, _) = h.feed(GROUP, device(1), &n);
    assert_eq!(to_client(&tx, client()).len(), 1);
}

/// §5.2.3 applied to observations: a re-registration or deregistration under the token
/// of a signed observation must carry the protection of the registration; an unprotected
/// one from the same address and token is dropped by the filter and the observation
/// goes on.
#[test]
fn s5_2_3_unprotected_update_of_a_signed_observation_is_refused() {
    let g = Group::new(&[CLIENT_ID, DEV_A]);
    let mut h = engine(checked_config(&g));
    let mut cctx = SecurityContext::new(&g.config(CLIENT_ID)).unwrap();
    let m = signed_group_request(&mut cctx, &hex::decode(OBS_HELLO).unwrap(), TOKEN);
    let (_, ev) = h.feed(LISTENER, client(), &m);
    assert!(ev.contains(&Event::ObserveStarted { group: Some(0) }));
    for obs in [1u8, 0] {
        let (tx, ev) = h.observe_group(client(), NON, TOKEN, Some(obs), 3);
        assert!(multicast(&tx).is_none(), "Observe {obs}");
        assert!(drops(&ev).contains(&DropReason::RequestCheckFailed));
        assert!(ended(&ev).is_empty());
        assert_eq!(h.e.observations().0, 1);
    }
}
