//! Rekeying (RFC 10021 §2.6.3.2, §12.2) for members and for the external checker: the
//! latest context protects and alone starts new processing, exchanges in flight finish,
//! the previous epoch is erased when its grace period ends, stale Sender IDs are gone.

mod common;

use common::Group;
use groxy::coap::MessageView;
use groxy::coap::options::OSCORE;
use groxy::oscore::option::OscoreOption;
use groxy::oscore::{
    GroupChecker, GroupMember, Mode, OscoreError, SecurityContext, SignatureChecker, Verdict,
};

const CLIENT: &[u8] = &[0x01];
const SERVER: &[u8] = &[0x02];
const LEAVER: &[u8] = &[0x03];
const GET: &str = "5201aa01beefb46c616d70";
const CONTENT: &str = "6245aa01beefff6f6e";

/// The next key epoch of `g`: new Gid and Master Secret, same members and keys except
/// the one that left.
fn next_epoch(g: &Group, leaving: &[u8]) -> Group {
    let mut n = g.rekeyed();
    n.master_salt = g.master_salt.clone();
    n.members.retain(|m| m.id != leaving);
    n
}

fn option_of(msg: &[u8]) -> (bool, Option<Vec<u8>>, Option<Vec<u8>>) {
    let v = MessageView::parse(msg).unwrap();
    let o = OscoreOption::parse(v.option(OSCORE).unwrap()).unwrap();
    (
        o.group,
        o.piv.map(<[u8]>::to_vec),
        o.kid_context.map(<[u8]>::to_vec),
    )
}

#[test]
fn rfc10021_s7_3_exchange_in_flight_survives_rekeying() {
    let g1 = Group::new(&[CLIENT, SERVER, LEAVER]);
    let g2 = next_epoch(&g1, LEAVER);
    let mut client = GroupMember::new(SecurityContext::new(&g1.config(CLIENT)).unwrap());
    let mut server = GroupMember::new(SecurityContext::new(&g1.config(SERVER)).unwrap());
    let mut leaver = SecurityContext::new(&g1.config(LEAVER)).unwrap();
    let get = hex::decode(GET).unwrap();
    let content = hex::decode(CONTENT).unwrap();

    // Burn some sequence numbers so that the reset to 0 is visible.
    for _ in 0..3 {
        client.protect_request(&get, Mode::Group, None).unwrap();
    }
    let (req, mut cex) = client.protect_request(&get, Mode::Group, None).unwrap();
    let (_, mut sex) = server.unprotect_request(&req).unwrap();
    // A first response under the old epoch.
    let r1 = server
        .protect_response(&content, &mut sex, Mode::Group, false)
        .unwrap();
    client.unprotect_response(&r1, &mut cex).unwrap();

    // Both rekey; the leaver's Sender ID is stale.
    // Going back to the old epoch, or to another one of the same generation, is refused.
    assert!(
        client
            .rekey(SecurityContext::new(&g1.config(CLIENT)).unwrap(), &[])
            .is_err()
    );
    client
        .rekey(
            SecurityContext::new(&g2.config(CLIENT)).unwrap(),
            &[LEAVER.to_vec()],
        )
        .unwrap();
    server
        .rekey(
            SecurityContext::new(&g2.config(SERVER)).unwrap(),
            &[LEAVER.to_vec()],
        )
        .unwrap();
    assert_eq!(server.current().common.key_generation, 1);

    // The server answers the old request with its latest context: own Partial IV and the
    // new Gid in 'kid context' (§7.3); the new Sender Sequence Number starts at 0 (§2.6.3.2).
    let r2 = server
        .protect_response(&content, &mut sex, Mode::Group, false)
        .unwrap();
    let (group, piv, kid_context) = option_of(&r2);
    assert!(group);
    assert_eq!(piv, Some(vec![0]));
    assert_eq!(kid_context, Some(g2.gid.clone()));
    let (plain, info) = client.unprotect_response(&r2, &mut cex).unwrap();
    assert_eq!(plain, content);
    assert_eq!(info.piv, Some(0));

    // New requests: under the new Gid, SSN 0 again; the old Gid starts nothing new.
    let (req2, _) = client.protect_request(&get, Mode::Group, None).unwrap();
    let (_, piv, kid_context) = option_of(&req2);
    assert_eq!((piv, kid_context), (Some(vec![0]), Some(g2.gid.clone())));
    server.unprotect_request(&req2).unwrap();
    let (old_gid_req, _) = leaver.protect_request(&get, Mode::Group, None).unwrap();
    assert_eq!(
        server.unprotect_request(&old_gid_req).err(),
        Some(OscoreError::UnknownGid)
    );

    // The stale member cannot speak under the new Gid either, even with the new secret.
    let mut g2_with_leaver = next_epoch(&g1, &[]);
    g2_with_leaver.gid = g2.gid.clone();
    g2_with_leaver.master_secret = g2.master_secret.clone();
    let mut stale = SecurityContext::new(&g2_with_leaver.config(LEAVER)).unwrap();
    let (stale_req, _) = stale.protect_request(&get, Mode::Group, None).unwrap();
    assert_eq!(
        server.unprotect_request(&stale_req).err(),
        Some(OscoreError::UnknownKid)
    );

    // A client that missed the rekeying cannot read the new epoch's response.
    let mut late = GroupMember::new(SecurityContext::new(&g1.config(CLIENT)).unwrap());
    let mut late_ex = cex.clone();
    assert_eq!(
        late.unprotect_response(&r2, &mut late_ex).err(),
        Some(OscoreError::UnknownGid)
    );

    // After the grace period, the old epoch is gone: its responses no longer verify.
    let mut sex_old = sex.clone();
    sex_old.responses_sent = 0;
    client.drop_previous();
    let mut old_server = SecurityContext::new(&g1.config(SERVER)).unwrap();
    old_server.sender.ssn = 100;
    let r_old = old_server
        .protect_response(&content, &mut sex_old, Mode::Group, true)
        .unwrap();
    assert_eq!(
        client.unprotect_response(&r_old, &mut cex).err(),
        Some(OscoreError::UnknownGid)
    );
}

#[test]
fn rfc10021_s12_2_checker_follows_rekeying() {
    let g1 = Group::new(&[CLIENT, SERVER, LEAVER]);
    let g2 = next_epoch(&g1, LEAVER);
    let mut checker = GroupChecker::new(SignatureChecker::new(&g1.checker_config()).unwrap());
    let mut client = SecurityContext::new(&g1.config(CLIENT)).unwrap();
    let mut server = GroupMember::new(SecurityContext::new(&g1.config(SERVER)).unwrap());
    let get = hex::decode(GET).unwrap();
    let content = hex::decode(CONTENT).unwrap();

    let (req, _) = client.protect_request(&get, Mode::Group, None).unwrap();
    let Verdict::Verified(checked) = checker.admit_request(&req).unwrap() else {
        panic!("group request not verified")
    };
    let (_, mut sex) = server.unprotect_request(&req).unwrap();
    let r1 = server
        .protect_response(&content, &mut sex, Mode::Group, false)
        .unwrap();
    assert!(matches!(
        checker.check_response(&r1, &checked, None).unwrap(),
        Verdict::Verified(_)
    ));

    assert!(
        checker
            .rekey(SignatureChecker::new(&g1.checker_config()).unwrap())
            .is_err()
    );
    checker
        .rekey(SignatureChecker::new(&g2.checker_config()).unwrap())
        .unwrap();
    assert_eq!(checker.current().key_generation(), 1);
    server
        .rekey(
            SecurityContext::new(&g2.config(SERVER)).unwrap(),
            &[LEAVER.to_vec()],
        )
        .unwrap();

    // A response under the new epoch to the request of the old one verifies (it names the
    // new Gid), and so does a late old-epoch response during the grace period.
    let r2 = server
        .protect_response(&content, &mut sex, Mode::Group, false)
        .unwrap();
    assert!(matches!(
        checker.check_response(&r2, &checked, None).unwrap(),
        Verdict::Verified(_)
    ));
    assert!(matches!(
        checker.check_response(&r1, &checked, None).unwrap(),
        Verdict::Verified(_)
    ));
    // New requests under the old Gid are not admitted.
    let (old, _) = client.protect_request(&get, Mode::Group, None).unwrap();
    assert_eq!(
        checker.admit_request(&old).err(),
        Some(OscoreError::UnknownGid)
    );
    // The leaver's credential is gone from the new epoch.
    assert!(!checker.current().knows(LEAVER));
    // Grace period over: the old epoch is erased.
    checker.drop_previous();
    assert_eq!(
        checker.check_response(&r1, &checked, None).err(),
        Some(OscoreError::UnknownGid)
    );
}

#[test]
fn rfc10021_s2_6_1_2_invalid_replay_windows_after_lost_state() {
    let g = Group::new(&[CLIENT, SERVER]);
    let mut client = SecurityContext::new(&g.config(CLIENT)).unwrap();
    let mut server = SecurityContext::new(&g.config(SERVER)).unwrap();
    let get = hex::decode(GET).unwrap();
    server.invalidate_replay_windows();
    let (req, _) = client.protect_request(&get, Mode::Group, None).unwrap();
    // While the window is invalid a request still verifies, but is marked not fresh: the
    // caller must run the Echo exchange (§9) before acting on it, and the window stays.
    let (_, ex) = server.unprotect_request(&req).unwrap();
    assert!(!ex.fresh);
    assert!(!server.unprotect_request(&req).unwrap().1.fresh);
    // Once the Echo exchange (§9) proved the client's current number, the window is valid
    // from there on: older numbers are refused, newer accepted.
    server.reinit_replay_window(CLIENT, 0).unwrap();
    assert_eq!(
        server.unprotect_request(&req).err(),
        Some(OscoreError::Replay)
    );
    let (req2, _) = client.protect_request(&get, Mode::Group, None).unwrap();
    server.unprotect_request(&req2).unwrap();
}
