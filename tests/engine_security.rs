//! The proxy as an external signature checker (RFC 10021 §7.5, groupcomm-proxy §10) on a
//! virtual clock: forged, unknown, replayed and unprotected group requests never reach
//! the group under `enforce`; `monitor` forwards and counts; group-mode responses are
//! verified, pairwise ones relayed unchecked, replayed ones dropped.

mod common;

use std::time::Duration;

use common::Group;
use common::engine::{Clocked, checking_config, client, device, drops, multicast};
use groxy::coap::MessageView;
use groxy::coap::build::{self, ACK, CON, NON, code};
use groxy::coap::options as opt;
use groxy::oscore::option::OscoreOption;
use groxy::oscore::{Exchange, GroupMember, Mode, SecurityContext};
use groxy::proxy::{
    CheckResult, DropReason, Event, GroupSecurity, Link, Policy, ProxyConfig, RejectReason,
    Transmit,
};

const CLIENT: &[u8] = &[0x01];
const DEV_A: &[u8] = &[0x0a];
const DEV_B: &[u8] = &[0x0b];
const LISTENER: Link = Link::Listener(0);
const GET_HELLO: &str = "5101aa01c3b568656c6c6f";

/// The engine on its clock, seeded 7, the client's Message IDs from 101.
fn engine(cfg: ProxyConfig) -> Clocked {
    Clocked {
        mid: 100,
        ..Clocked::new(cfg, 7)
    }
}

/// The engine checking group 0 under `policy`.
fn checked_engine(g: &Group, policy: Policy) -> Clocked {
    engine(checking_config(g, policy))
}

impl Clocked {
    /// Sends a protected request via the proxy: the Class U proxy options are added after
    /// protection, as a client does (they are not in the external_aad, RFC 8613 §4.1).
    fn proxied(&mut self, protected: &[u8], t: u8) -> (Vec<Transmit>, Vec<Event>) {
        self.mid += 1;
        let v = MessageView::parse(protected).unwrap();
        let mut opts: Vec<(u16, &[u8])> = v.options().collect();
        opts.push((opt::URI_HOST, b"224.0.1.187"));
        opts.push((opt::PROXY_SCHEME, b"coap"));
        opts.push((opt::MULTICAST_TIMEOUT_DEFAULT, &[10]));
        let token = self.mid.to_be_bytes();
        let msg = build::encode(t, v.code(), self.mid, &token, &mut opts, v.payload());
        self.feed(LISTENER, client(), &msg)
    }
}

fn checked(ev: &[Event]) -> Vec<(bool, CheckResult, bool)> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Checked {
                request,
                result,
                enforced,
                ..
            } => Some((*request, *result, *enforced)),
            _ => None,
        })
        .collect()
}

fn protect(ctx: &mut SecurityContext, mode: Mode) -> (Vec<u8>, Exchange) {
    ctx.protect_request(&hex::decode(GET_HELLO).unwrap(), mode, Some(DEV_A))
        .unwrap()
}

#[test]
fn s7_5_enforce_forwards_only_verified_fresh_group_requests() {
    let g = Group::new(&[CLIENT, DEV_A, DEV_B]);
    let mut h = checked_engine(&g, Policy::Enforce);
    let mut client_ctx = SecurityContext::new(&g.config(CLIENT)).unwrap();

    let (good, _) = protect(&mut client_ctx, Mode::Group);
    let (tx, ev) = h.proxied(&good, NON);
    assert!(
        multicast(&tx).is_some(),
        "a valid group-mode request is fanned out"
    );
    assert_eq!(checked(&ev), vec![(true, CheckResult::Valid, true)]);
    // The OSCORE option and ciphertext pass untouched.
    let fwd = MessageView::parse(&multicast(&tx).unwrap().bytes).unwrap();
    let orig = MessageView::parse(&good).unwrap();
    assert_eq!(
        (fwd.option(opt::OSCORE), fwd.payload()),
        (orig.option(opt::OSCORE), orig.payload())
    );

    // The same request under a new MID and token: a replay (groupcomm-proxy §10).
    let (tx, ev) = h.proxied(&good, NON);
    assert!(multicast(&tx).is_none() && tx.is_empty());
    assert_eq!(checked(&ev), vec![(true, CheckResult::Replay, true)]);
    assert_eq!(drops(&ev), vec![DropReason::RequestCheckFailed]);

    // A flipped signature bit; a flipped ciphertext bit.
    for at in [1usize, 70] {
        let (fresh, _) = protect(&mut client_ctx, Mode::Group);
        let mut bad = fresh.clone();
        let i = bad.len() - at;
        bad[i] ^= 0x10;
        let (tx, ev) = h.proxied(&bad, NON);
        assert!(
            tx.is_empty(),
            "nothing multicast, nothing answered to a NON"
        );
        assert_eq!(checked(&ev), vec![(true, CheckResult::BadSignature, true)]);
        // The genuine one still passes: failures do not move the replay window.
        let (tx, _) = h.proxied(&fresh, NON);
        assert!(multicast(&tx).is_some());
    }

    // A CON forgery gets only the empty ACK of its message, no fan-out.
    let (fresh, _) = protect(&mut client_ctx, Mode::Group);
    let mut bad = fresh.clone();
    let i = bad.len() - 1;
    bad[i] ^= 1;
    let (tx, _) = h.proxied(&bad, CON);
    assert_eq!(tx.len(), 1);
    assert_eq!(tx[0].bytes, build::empty(ACK, h.mid));

    // Unknown kid, wrong Gid, pairwise mode, plain CoAP: all dropped under enforce.
    let mut stranger = Group::new(&[&[0x77], DEV_A]);
    stranger.gid = g.gid.clone();
    let (unknown, _) = protect(
        &mut SecurityContext::new(&stranger.config(&[0x77])).unwrap(),
        Mode::Group,
    );
    let other = Group::new(&[CLIENT, DEV_A]);
    let (wrong_gid, _) = protect(
        &mut SecurityContext::new(&other.config(CLIENT)).unwrap(),
        Mode::Group,
    );
    let (pairwise, _) = protect(&mut client_ctx, Mode::Pairwise);
    let plain = hex::decode(GET_HELLO).unwrap();
    for (msg, want) in [
        (unknown, CheckResult::UnknownKid),
        (wrong_gid, CheckResult::UnknownGid),
        (pairwise, CheckResult::Unverifiable),
        (plain, CheckResult::NotProtected),
    ] {
        let (tx, ev) = h.proxied(&msg, NON);
        assert!(tx.is_empty(), "{want:?}");
        assert_eq!(checked(&ev), vec![(true, want, true)]);
    }
}

#[test]
fn monitor_forwards_what_enforce_would_drop_and_counts_it() {
    let g = Group::new(&[CLIENT, DEV_A]);
    let mut h = checked_engine(&g, Policy::Monitor);
    let mut client_ctx = SecurityContext::new(&g.config(CLIENT)).unwrap();
    let (good, _) = protect(&mut client_ctx, Mode::Group);
    let mut bad = good.clone();
    let i = bad.len() - 1;
    bad[i] ^= 1;
    let (tx, ev) = h.proxied(&bad, NON);
    assert!(multicast(&tx).is_some());
    assert_eq!(checked(&ev), vec![(true, CheckResult::BadSignature, false)]);
}

#[test]
fn s7_5_responses_are_verified_with_the_requests_piv_and_replays_dropped() {
    let g = Group::new(&[CLIENT, DEV_A, DEV_B]);
    let mut h = checked_engine(&g, Policy::Enforce);
    let mut client_ctx = SecurityContext::new(&g.config(CLIENT)).unwrap();
    let mut dev_a = SecurityContext::new(&g.config(DEV_A)).unwrap();
    let mut dev_b = SecurityContext::new(&g.config(DEV_B)).unwrap();
    let (req, mut cex) = protect(&mut client_ctx, Mode::Group);
    let (tx, _) = h.proxied(&req, NON);
    let fwd = multicast(&tx).unwrap().bytes.clone();
    let fv = MessageView::parse(&fwd).unwrap();
    // The devices see the forwarded request (new token, same OSCORE content).
    let (_, mut aex) = dev_a.unprotect_request(&fwd).unwrap();
    let (_, mut bex) = dev_b.unprotect_request(&fwd).unwrap();
    let content = build::encode(NON, code::CONTENT, 9, fv.token(), &mut [], b"21.5");

    // A: group mode without Partial IV (uses the request's, §7.5): verified, relayed.
    let ra = dev_a
        .protect_response(&content, &mut aex, Mode::Group, false)
        .unwrap();
    let (tx, ev) = h.feed(Link::Group(0, 0), device(1), &ra);
    assert_eq!(tx.len(), 1);
    assert_eq!(checked(&ev), vec![(false, CheckResult::Valid, true)]);
    // The client verifies what was relayed (end-to-end protection intact).
    let relayed = &tx[0].bytes;
    let rv = MessageView::parse(relayed).unwrap();
    let mut back: Vec<(u16, &[u8])> = rv
        .options()
        .filter(|(n, _)| *n != opt::REPLY_FROM_DEFAULT)
        .collect();
    let stripped = build::encode(
        NON,
        rv.code(),
        1,
        &hex::decode(GET_HELLO).unwrap()[4..5],
        &mut back,
        rv.payload(),
    );
    let (plain, info) = client_ctx.unprotect_response(&stripped, &mut cex).unwrap();
    assert_eq!(MessageView::parse(&plain).unwrap().payload(), b"21.5");
    assert_eq!(info.server_id, DEV_A);

    // The same response again: a replay of this server's response (§5.3.1), dropped.
    let (tx, ev) = h.feed(Link::Group(0, 0), device(1), &ra);
    assert!(tx.is_empty());
    assert_eq!(drops(&ev), vec![DropReason::ResponseReplay]);

    // B: a forged signature is not relayed.
    let mut rb = dev_b
        .protect_response(&content, &mut bex, Mode::Group, false)
        .unwrap();
    let last = rb.len() - 1;
    rb[last] ^= 0x40;
    let (tx, ev) = h.feed(Link::Group(0, 0), device(2), &rb);
    assert!(tx.is_empty());
    assert_eq!(checked(&ev), vec![(false, CheckResult::BadSignature, true)]);
    assert_eq!(drops(&ev), vec![DropReason::ResponseCheckFailed]);

    // B again in pairwise mode (aiocoap's default): cannot be checked, relayed.
    let rp = dev_b
        .protect_response(&content, &mut bex, Mode::Pairwise, true)
        .unwrap();
    let (tx, ev) = h.feed(Link::Group(0, 0), device(2), &rp);
    assert_eq!(tx.len(), 1);
    assert_eq!(checked(&ev), vec![(false, CheckResult::Unverifiable, true)]);
    let _ = Duration::ZERO;
}

/// Rekeying on reload (RFC 10021 §12.2): the new epoch checks new requests at once; the
/// old Gid starts nothing new; a response in flight under the old epoch still verifies
/// until the grace period (the group's maximum Multicast-Timeout) ends. Reloads that
/// would go back a key generation, or change the groups, leave everything as it was.
#[test]
fn s12_2_rekeying_on_reload_is_atomic() {
    let g1 = Group::new(&[CLIENT, DEV_A]);
    let mut h = checked_engine(&g1, Policy::Enforce);
    let mut c1 = SecurityContext::new(&g1.config(CLIENT)).unwrap();
    let mut dev_a1 = SecurityContext::new(&g1.config(DEV_A)).unwrap();
    let (req, _) = protect(&mut c1, Mode::Group);
    let (tx, _) = h.proxied(&req, NON);
    let fwd = multicast(&tx).unwrap().bytes.clone();
    let (_, mut aex) = dev_a1.unprotect_request(&fwd).unwrap();

    // The next epoch: new Gid, new Master Secret, generation 1, same member keys.
    let mut g2 = g1.rekeyed();
    g2.master_salt = g1.master_salt.clone();
    let with = |g: &Group| checking_config(g, Policy::Enforce);
    // Same generation with another Gid: refused, nothing changes.
    let mut stale = with(&g2);
    stale.groups[0]
        .security
        .as_mut()
        .unwrap()
        .checker
        .key_generation = 0;
    assert!(h.reconfigure(stale).is_err());
    let mut renamed = with(&g2);
    renamed.groups[0].name = "other".into();
    assert!(h.reconfigure(renamed).is_err());
    assert_eq!(h.e.checker(0).unwrap().current().gid(), g1.gid.as_slice());

    h.reconfigure(with(&g2)).unwrap();
    assert_eq!(h.e.checker(0).unwrap().current().key_generation(), 1);
    // New epoch: checked at once.
    let mut c2 = SecurityContext::new(&g2.config(CLIENT)).unwrap();
    let (req2, _) = protect(&mut c2, Mode::Group);
    let (tx, ev) = h.proxied(&req2, NON);
    assert!(multicast(&tx).is_some());
    assert_eq!(checked(&ev), vec![(true, CheckResult::Valid, true)]);
    // Old Gid: nothing new starts under it.
    let (old, _) = protect(&mut c1, Mode::Group);
    let (tx, ev) = h.proxied(&old, NON);
    assert!(tx.is_empty());
    assert_eq!(checked(&ev), vec![(true, CheckResult::UnknownGid, true)]);
    // The exchange in flight: its response under the old epoch is still verified.
    let fv = MessageView::parse(&fwd).unwrap();
    let content = build::encode(NON, code::CONTENT, 9, fv.token(), &mut [], b"ok");
    let r = dev_a1
        .protect_response(&content, &mut aex, Mode::Group, false)
        .unwrap();
    let (tx, ev) = h.feed(Link::Group(0, 0), device(1), &r);
    assert_eq!(tx.len(), 1);
    assert_eq!(checked(&ev), vec![(false, CheckResult::Valid, true)]);
}

/// SIGTERM: intake stops (5.03), exchanges in flight keep relaying.
#[test]
fn draining_refuses_new_requests_and_finishes_old_ones() {
    let g = Group::new(&[CLIENT, DEV_A]);
    let mut h = checked_engine(&g, Policy::Off);
    let mut c = SecurityContext::new(&g.config(CLIENT)).unwrap();
    let (req, _) = protect(&mut c, Mode::Group);
    let (tx, _) = h.proxied(&req, NON);
    let fwd = multicast(&tx).unwrap().bytes.clone();
    h.e.drain();
    let (req2, _) = protect(&mut c, Mode::Group);
    let (tx, _) = h.proxied(&req2, NON);
    assert_eq!(tx.len(), 1);
    assert_eq!(
        MessageView::parse(&tx[0].bytes).unwrap().code(),
        code::SERVICE_UNAVAILABLE
    );
    let fv = MessageView::parse(&fwd).unwrap();
    let answer = build::encode(NON, code::CONTENT, 3, fv.token(), &mut [], b"x");
    let (tx, _) = h.feed(Link::Group(0, 0), device(1), &answer);
    assert_eq!(tx.len(), 1, "the exchange in flight still relays");
}

/// The next key epoch of `g` (RFC 10021 §12.2): new Gid and Master Secret, the next Key
/// Generation Number, the same members and Group Manager with their keys.
fn next_epoch(g: &Group) -> Group {
    let mut n = g.rekeyed();
    n.master_salt = g.master_salt.clone();
    n
}

/// One group checked under `policy`, with these checker settings.
fn checked_config(g: &Group, policy: Policy, allow_kids: Option<Vec<Vec<u8>>>) -> ProxyConfig {
    let mut cfg = ProxyConfig::default();
    cfg.groups[0].security = Some(GroupSecurity {
        policy,
        checker: g.checker_config(),
        member: None,
        allow_kids,
    });
    cfg
}

/// Response Numbers across a rekey (RFC 10021 §5.3.1: per server and Security Context;
/// §7.3: after a context change a server's responses carry the new Gid and a Partial IV
/// of the new context). A server answers under the old epoch with Partial IV 0, is
/// rekeyed mid-exchange, and answers under the new Gid with Partial IV 0 again: both are
/// relayed once; a replay of either is dropped and counted.
#[test]
fn s5_3_1_response_numbers_are_kept_per_gid_across_a_rekey() {
    let g1 = Group::new(&[CLIENT, DEV_A]);
    let g2 = next_epoch(&g1);
    let mut h = checked_engine(&g1, Policy::Enforce);
    let mut c1 = SecurityContext::new(&g1.config(CLIENT)).unwrap();
    let mut dev_a = GroupMember::new(SecurityContext::new(&g1.config(DEV_A)).unwrap());
    let (req, _) = protect(&mut c1, Mode::Group);
    let (tx, _) = h.proxied(&req, NON);
    let fwd = multicast(&tx).unwrap().bytes.clone();
    let (_, mut aex) = dev_a.unprotect_request(&fwd).unwrap();
    let fv = MessageView::parse(&fwd).unwrap();
    let content = build::encode(NON, code::CONTENT, 9, fv.token(), &mut [], b"ok");

    // Old epoch, the server's own Partial IV 0.
    let old = dev_a
        .protect_response(&content, &mut aex, Mode::Group, true)
        .unwrap();
    let old_o = OscoreOption::parse(
        MessageView::parse(&old)
            .unwrap()
            .option(opt::OSCORE)
            .unwrap(),
    )
    .unwrap();
    assert_eq!((old_o.piv, old_o.kid_context), (Some(&[0u8][..]), None));
    let (tx, ev) = h.feed(Link::Group(0, 0), device(1), &old);
    assert_eq!(tx.len(), 1, "the old-epoch response is relayed");
    assert_eq!(checked(&ev), vec![(false, CheckResult::Valid, true)]);

    // The proxy and the server are rekeyed while the exchange runs.
    h.reconfigure(checked_config(&g2, Policy::Enforce, None))
        .unwrap();
    dev_a
        .rekey(SecurityContext::new(&g2.config(DEV_A)).unwrap(), &[])
        .unwrap();
    let new = dev_a
        .protect_response(&content, &mut aex, Mode::Group, false)
        .unwrap();
    let new_o = OscoreOption::parse(
        MessageView::parse(&new)
            .unwrap()
            .option(opt::OSCORE)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (new_o.piv, new_o.kid_context),
        (Some(&[0u8][..]), Some(g2.gid.as_slice())),
        "the same Partial IV, under the new Gid (§7.3)"
    );
    let (tx, ev) = h.feed(Link::Group(0, 0), device(1), &new);
    assert_eq!(tx.len(), 1, "the new-epoch response is relayed");
    assert_eq!(checked(&ev), vec![(false, CheckResult::Valid, true)]);

    // A replay of either is dropped and counted.
    for replay in [&old, &new] {
        let (tx, ev) = h.feed(Link::Group(0, 0), device(1), replay);
        assert!(tx.is_empty());
        assert_eq!(checked(&ev), vec![(false, CheckResult::Replay, true)]);
        assert_eq!(drops(&ev), vec![DropReason::ResponseReplay]);
    }
}

/// A reload is all or nothing across groups (RFC 10021 §12.2: rekeying needs a new Gid
/// and a higher Key Generation Number). The first group's rekey is valid; the second is
/// a member-only group (policy off, no checker) whose new Gid comes without a higher Key
/// Generation Number, which only its membership can refuse. The reload fails and the
/// first group is unchanged: requests under its old Gid still pass, under the new one
/// are refused. With the second group fixed, the same reload applies.
#[test]
fn s12_2_a_reload_refused_by_a_later_member_group_changes_no_group() {
    const PROXY: &[u8] = &[0x50];
    let g1 = Group::new(&[CLIENT, DEV_A]);
    let g2 = next_epoch(&g1);
    let m1 = Group::new(&[PROXY, DEV_A]);
    let mut m2 = next_epoch(&m1);
    let two = |checked: &Group, member: &Group| {
        let mut cfg = checked_config(checked, Policy::Enforce, None);
        let mut second = cfg.groups[0].clone();
        second.name = "second".into();
        second.addr = "224.0.1.188:5683".parse().unwrap();
        second.security = Some(GroupSecurity {
            policy: Policy::Off,
            checker: member.checker_config(),
            member: Some(member.config(PROXY)),
            allow_kids: None,
        });
        cfg.groups.push(second);
        cfg
    };
    let mut h = engine(two(&g1, &m1));
    assert_eq!(h.e.member_groups(), vec![1]);

    m2.key_generation = m1.key_generation;
    let err = h.reconfigure(two(&g2, &m2)).unwrap_err();
    assert!(err.contains("second"), "{err}");
    assert_eq!(h.e.checker(0).unwrap().current().gid(), g1.gid.as_slice());
    let mut c1 = SecurityContext::new(&g1.config(CLIENT)).unwrap();
    let mut c2 = SecurityContext::new(&g2.config(CLIENT)).unwrap();
    let (old, _) = protect(&mut c1, Mode::Group);
    let (tx, ev) = h.proxied(&old, NON);
    assert!(
        multicast(&tx).is_some(),
        "the old epoch still checks requests"
    );
    assert_eq!(checked(&ev), vec![(true, CheckResult::Valid, true)]);
    let (new, _) = protect(&mut c2, Mode::Group);
    let (tx, ev) = h.proxied(&new, NON);
    assert!(tx.is_empty(), "the new epoch was not installed");
    assert_eq!(checked(&ev), vec![(true, CheckResult::UnknownGid, true)]);

    m2.key_generation = m1.key_generation + 1;
    h.reconfigure(two(&g2, &m2)).unwrap();
    assert_eq!(h.e.checker(0).unwrap().current().gid(), g2.gid.as_slice());
    let (new, _) = protect(&mut c2, Mode::Group);
    let (tx, ev) = h.proxied(&new, NON);
    assert!(multicast(&tx).is_some());
    assert_eq!(checked(&ev), vec![(true, CheckResult::Valid, true)]);
}

/// groupcomm-proxy §10.1: the proxy may authenticate the client as a signature checker.
/// Where the group lists `allow_kids`, a request whose countersignature the checker
/// verified under another member's kid is refused with 4.01 and a diagnostic, not
/// forwarded, and counted as `kid_not_allowed`; a listed kid is forwarded. The allow-list
/// is an authorization decision, so `monitor` refuses as `enforce` does.
#[test]
fn s10_1_allow_kids_applies_to_the_kid_the_checker_verified() {
    let g = Group::new(&[CLIENT, DEV_A, DEV_B]);
    for policy in [Policy::Enforce, Policy::Monitor] {
        let mut h = engine(checked_config(&g, policy, Some(vec![CLIENT.to_vec()])));
        let enforced = policy == Policy::Enforce;
        let mut listed = SecurityContext::new(&g.config(CLIENT)).unwrap();
        let (req, _) = protect(&mut listed, Mode::Group);
        let (tx, ev) = h.proxied(&req, NON);
        assert!(
            multicast(&tx).is_some(),
            "{policy:?}: a listed kid is forwarded"
        );
        assert_eq!(checked(&ev), vec![(true, CheckResult::Valid, enforced)]);

        let mut other = SecurityContext::new(&g.config(DEV_B)).unwrap();
        let (req, _) = protect(&mut other, Mode::Group);
        let (tx, ev) = h.proxied(&req, NON);
        assert!(multicast(&tx).is_none(), "{policy:?}: not forwarded");
        assert_eq!(checked(&ev), vec![(true, CheckResult::Valid, enforced)]);
        assert_eq!(tx.len(), 1);
        let reply = MessageView::parse(&tx[0].bytes).unwrap();
        assert_eq!((tx[0].link, tx[0].to), (LISTENER, client()));
        assert_eq!(reply.code(), code::UNAUTHORIZED);
        assert_eq!(reply.token(), h.mid.to_be_bytes());
        assert_eq!(reply.payload(), b"kid not allowed for this group");
        let rejected: Vec<_> = ev
            .iter()
            .filter_map(|e| match e {
                Event::Rejected {
                    group,
                    reason,
                    code,
                    ..
                } => Some((*group, *reason, *code)),
                _ => None,
            })
            .collect();
        assert_eq!(
            rejected,
            vec![(Some(0), RejectReason::KidNotAllowed, code::UNAUTHORIZED)]
        );
        assert_eq!(RejectReason::KidNotAllowed.as_str(), "kid_not_allowed");
    }
}
