//! The request filter's replay state as the engine hands it to stable storage and takes
//! it back at start (groupcomm-proxy §10: a captured, validly signed request is not
//! multicast again; RFC 8613 §7.4: replay state survives a reboot or is treated as lost;
//! RFC 10021 §2.6.3.2: windows are per Gid, so a new epoch starts empty, and keying
//! material must never go back), on a virtual clock.

mod common;

use std::net::SocketAddr;
use std::time::Instant;

use common::engine::checking_config;
use common::{Group, Member};
use groxy::coap::MessageView;
use groxy::coap::build::{self, NON};
use groxy::coap::options as opt;
use groxy::oscore::replay::WindowState;
use groxy::oscore::{Mode, ReplayState, Restored, SecurityContext};
use groxy::proxy::{CheckResult, Engine, Event, Link, Policy, ProxyConfig};

const CLIENT: &[u8] = &[0x01];
const DEV: &[u8] = &[0x0a];
const GET_HELLO: &str = "5101aa01c3b568656c6c6f";

fn cfg(g: &Group, policy: Policy) -> ProxyConfig {
    checking_config(g, policy)
}

fn engine(g: &Group) -> Engine {
    Engine::new(cfg(g, Policy::Enforce), Instant::now(), 7).unwrap()
}

/// The same members under a new Gid and the next Key Generation Number (§12.2).
fn next_epoch(g: &Group) -> Group {
    let copy = |m: &Member| Member {
        id: m.id.clone(),
        key: m.key.clone(),
        cred: m.cred.clone(),
    };
    Group {
        key_generation: g.key_generation + 1,
        gid: common::random_bytes(4),
        master_secret: common::random_bytes(16),
        master_salt: g.master_salt.clone(),
        gm: copy(&g.gm),
        members: g.members.iter().map(copy).collect(),
    }
}

/// A group-mode request with Partial IV `seq`, proxy options outside.
fn request(ctx: &mut SecurityContext, seq: u64, mid: u16) -> Vec<u8> {
    ctx.sender.ssn = seq;
    let (p, _) = ctx
        .protect_request(&hex::decode(GET_HELLO).unwrap(), Mode::Group, None)
        .unwrap();
    let v = MessageView::parse(&p).unwrap();
    let mut o: Vec<(u16, &[u8])> = v.options().collect();
    o.extend([
        (opt::URI_HOST, &b"224.0.1.187"[..]),
        (opt::PROXY_SCHEME, b"coap"),
        (opt::MULTICAST_TIMEOUT_DEFAULT, &[10]),
    ]);
    build::encode(NON, v.code(), mid, &mid.to_be_bytes(), &mut o, v.payload())
}

/// The same datagram under another Message ID and token: neither a duplicate at the
/// message layer (RFC 7252 §4.5) nor a token in use, so only the replay window can refuse
/// it. (`request` makes the token the 2-byte Message ID.)
fn with_mid(msg: &[u8], mid: u16) -> Vec<u8> {
    let mut m = msg.to_vec();
    m[2..4].copy_from_slice(&mid.to_be_bytes());
    m[4..6].copy_from_slice(&mid.to_be_bytes());
    m
}

/// Whether the request was multicast, and the request check's result.
fn feed(e: &mut Engine, msg: &[u8]) -> (bool, Option<CheckResult>) {
    let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    e.handle(Instant::now(), Link::Listener(0), client, msg);
    let (tx, ev) = common::outputs(e);
    let result = ev.iter().find_map(|e| match e {
        Event::Checked {
            request: true,
            result,
            ..
        } => Some(*result),
        _ => None,
    });
    (tx.iter().any(|t| t.link == Link::Group(0, 0)), result)
}

fn only(states: Vec<(usize, ReplayState)>) -> ReplayState {
    assert_eq!(states.len(), 1, "{states:?}");
    assert_eq!(states[0].0, 0);
    states.into_iter().next().unwrap().1
}

#[test]
fn groupcomm_proxy_s10_restored_windows_refuse_what_was_forwarded_before() {
    let g = Group::new(&[CLIENT, DEV]);
    let mut client = SecurityContext::new(&g.config(CLIENT)).unwrap();
    let (r5, r3, r6) = (
        request(&mut client, 5, 1),
        request(&mut client, 3, 2),
        request(&mut client, 6, 3),
    );
    let mut first = engine(&g);
    // A new checker's empty windows are not on stable storage yet: they name the epoch.
    let initial = only(first.take_replay_state());
    assert_eq!(
        (
            initial.gid.as_slice(),
            initial.key_generation,
            initial.windows.len()
        ),
        (g.gid.as_slice(), 0, 0)
    );
    assert!(first.take_replay_state().is_empty(), "taken: clean");
    assert_eq!(feed(&mut first, &r5), (true, Some(CheckResult::Valid)));
    let state = only(first.take_replay_state());
    assert_eq!(
        state.windows,
        vec![(CLIENT.to_vec(), WindowState::Active { top: 5, seen: 1 })]
    );
    // A replay moves no window, so nothing is to be written.
    assert_eq!(
        feed(&mut first, &with_mid(&r5, 99)),
        (false, Some(CheckResult::Replay))
    );
    assert!(first.take_replay_state().is_empty());

    // The restart: a new engine with the recorded state refuses the request forwarded
    // before, and still takes an older unseen number within the window and a newer one.
    let mut second = engine(&g);
    assert_eq!(
        second.restore_replay(0, &state).unwrap(),
        Some(Restored::Windows)
    );
    assert_eq!(feed(&mut second, &r5), (false, Some(CheckResult::Replay)));
    assert_eq!(feed(&mut second, &r3), (true, Some(CheckResult::Valid)));
    assert_eq!(feed(&mut second, &r6), (true, Some(CheckResult::Valid)));
    let after = only(second.take_replay_state());
    assert_eq!(
        after.windows,
        vec![(
            CLIENT.to_vec(),
            WindowState::Active {
                top: 6,
                // bit i is 6 - i: 6, 5 and 3 seen.
                seen: 0b1011
            }
        )]
    );

    // Without the recorded state (the old behaviour) the capture would pass again.
    let mut forgetful = engine(&g);
    assert_eq!(feed(&mut forgetful, &r5), (true, Some(CheckResult::Valid)));
}

#[test]
fn rfc10021_s2_6_3_2_a_newer_epoch_starts_empty_and_older_keying_material_is_refused() {
    let g1 = Group::new(&[CLIENT, DEV]);
    let g2 = next_epoch(&g1);
    let mut client1 = SecurityContext::new(&g1.config(CLIENT)).unwrap();
    let mut e1 = engine(&g1);
    let _ = e1.take_replay_state();
    assert!(feed(&mut e1, &request(&mut client1, 9, 1)).0);
    let recorded1 = only(e1.take_replay_state());

    // Rekeyed while stopped: higher Key Generation Number, new Gid: empty windows, and
    // dirty, so that the new epoch is recorded before anything is forwarded.
    let mut e2 = engine(&g2);
    let _ = e2.take_replay_state();
    assert_eq!(
        e2.restore_replay(0, &recorded1).unwrap(),
        Some(Restored::NewEpoch)
    );
    let recorded2 = only(e2.take_replay_state());
    assert_eq!(
        (recorded2.gid.clone(), recorded2.key_generation),
        (g2.gid.clone(), 1)
    );
    assert!(recorded2.windows.is_empty());
    let mut client2 = SecurityContext::new(&g2.config(CLIENT)).unwrap();
    assert!(feed(&mut e2, &request(&mut client2, 0, 2)).0);
    let recorded2 = only(e2.take_replay_state());

    // Back to the old keys after the new epoch was recorded: refused, nothing changes.
    let mut back = engine(&g1);
    let _ = back.take_replay_state();
    let err = back.restore_replay(0, &recorded2).unwrap_err().to_string();
    assert!(err.contains("keying material went back"), "{err}");
    assert!(back.take_replay_state().is_empty(), "nothing changed");
    // Another Gid under the same Key Generation Number: refused as well.
    let mut same_gen = next_epoch(&g1);
    same_gen.key_generation = g2.key_generation;
    let mut other = engine(&same_gen);
    assert!(other.restore_replay(0, &recorded2).is_err());
    // A group whose requests are not checked has nothing to restore.
    let mut off = Engine::new(cfg(&g1, Policy::Off), Instant::now(), 7).unwrap();
    assert!(off.take_replay_state().is_empty());
    assert_eq!(off.restore_replay(0, &recorded2).unwrap(), None);
    assert!(off.checked_groups().is_empty());
}

#[test]
fn rfc10021_s12_2_a_sighup_rekey_hands_over_the_new_epochs_empty_state() {
    let g1 = Group::new(&[CLIENT, DEV]);
    let g2 = next_epoch(&g1);
    let mut e = engine(&g1);
    let mut client = SecurityContext::new(&g1.config(CLIENT)).unwrap();
    assert!(feed(&mut e, &request(&mut client, 1, 1)).0);
    let _ = e.take_replay_state();
    // The same epoch reloaded (e.g. a new member's credential): windows kept, unchanged.
    e.reconfigure(Instant::now(), cfg(&g1, Policy::Enforce))
        .unwrap();
    assert!(e.take_replay_state().is_empty());
    e.reconfigure(Instant::now(), cfg(&g2, Policy::Enforce))
        .unwrap();
    let s = only(e.take_replay_state());
    assert_eq!((s.gid, s.key_generation), (g2.gid.clone(), 1));
    assert!(s.windows.is_empty());
    // Monitor keeps the windows too: a later switch to enforce relies on them.
    let mut m = Engine::new(cfg(&g1, Policy::Monitor), Instant::now(), 7).unwrap();
    let _ = m.take_replay_state();
    assert!(feed(&mut m, &request(&mut client, 2, 2)).0);
    assert_eq!(only(m.take_replay_state()).windows.len(), 1);
}

#[test]
fn groupcomm_proxy_s10_a_state_taken_into_a_reused_buffer_is_the_whole_state_in_kid_order() {
    // The driver takes each batch's state into the buffer of the one before
    // (`take_replay_state_into`): what it writes must be exactly a fresh snapshot, every
    // sender's window in kid order, with nothing left over from a longer state before.
    let (a, b, c): (&[u8], &[u8], &[u8]) = (&[0x03], &[0x01], &[0x02, 0x00]);
    let g1 = Group::new(&[a, b, c, DEV]);
    let g2 = next_epoch(&g1);
    let mut e = engine(&g1);
    let mut buf = vec![ReplayState {
        gid: b"a much longer gid than any".to_vec(),
        key_generation: 77,
        windows: (0..5u8)
            .map(|i| {
                (
                    vec![0xee; 9],
                    WindowState::Active {
                        top: i.into(),
                        seen: 1,
                    },
                )
            })
            .collect(),
    }];
    assert_eq!(
        e.take_replay_state_into(&mut buf),
        vec![0],
        "a new epoch is dirty"
    );
    assert_eq!(
        (
            buf[0].gid.as_slice(),
            buf[0].key_generation,
            buf[0].windows.len()
        ),
        (g1.gid.as_slice(), 0, 0)
    );
    for (i, kid) in [a, b, c].into_iter().enumerate() {
        let mut ctx = SecurityContext::new(&g1.config(kid)).unwrap();
        let seq = 10 + i as u64;
        assert!(feed(&mut e, &request(&mut ctx, seq, 1 + i as u16)).0);
    }
    assert_eq!(e.take_replay_state_into(&mut buf), vec![0]);
    let expected = vec![
        (b.to_vec(), WindowState::Active { top: 11, seen: 1 }),
        (c.to_vec(), WindowState::Active { top: 12, seen: 1 }),
        (a.to_vec(), WindowState::Active { top: 10, seen: 1 }),
    ];
    assert_eq!(buf[0].windows, expected, "in kid order, as recorded");
    assert_eq!(
        buf[0],
        e.checker(0).unwrap().replay_state(),
        "the same as a fresh snapshot"
    );
    assert!(
        e.take_replay_state_into(&mut buf).is_empty(),
        "taken: clean"
    );
    // A rekey: the same buffer, now the new epoch's empty windows and its Gid.
    e.reconfigure(Instant::now(), cfg(&g2, Policy::Enforce))
        .unwrap();
    assert_eq!(e.take_replay_state_into(&mut buf), vec![0]);
    assert_eq!(
        (
            buf[0].gid.as_slice(),
            buf[0].key_generation,
            buf[0].windows.len()
        ),
        (g2.gid.as_slice(), 1, 0)
    );
}
