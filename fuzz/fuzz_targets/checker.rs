//! The external signature checker (RFC 10021 §7.5, §12.3) on arbitrary datagrams: the
//! stateless check, the replay-windowed admission, and response checks against a fixed
//! request, under a checker of a fixed group.
#![no_main]

use std::sync::OnceLock;

use groxy::oscore::Verdict;
use groxy::oscore::checker::CheckedRequest;
use groxy::oscore::{GroupChecker, SignatureChecker};
use groxy_fuzz::{CLIENT, DEV_A, checked_group};
use libfuzzer_sys::fuzz_target;

fn checker() -> &'static SignatureChecker {
    static C: OnceLock<SignatureChecker> = OnceLock::new();
    C.get_or_init(|| checked_group().checker())
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, msg)) = data.split_first() else {
        return;
    };
    let c = checker();
    let request = CheckedRequest {
        kid: CLIENT.to_vec(),
        piv: vec![sel],
        kid_context: c.gid().to_vec(),
        seq: sel as u64,
    };
    match sel % 3 {
        0 => {
            if let Ok(Verdict::Verified(r)) = c.check_request(msg) {
                assert!(c.knows(&r.kid), "only a known member's signature verifies");
            }
        }
        1 => {
            // Admission is the check plus a replay window: the same datagram twice is
            // admitted at most once (RFC 10021 §7.5).
            let mut g = GroupChecker::new(checked_group().checker());
            let first = g.admit_request(msg);
            let second = g.admit_request(msg);
            if let Ok(Verdict::Verified(_)) = first {
                assert!(second.is_err(), "a replayed request was admitted twice");
            }
        }
        _ => {
            let hint = if sel & 4 != 0 { Some(DEV_A) } else { None };
            let _ = c.check_response(msg, &request, hint);
            let g = GroupChecker::new(checked_group().checker());
            let _ = g.check_response(msg, &request, hint);
        }
    }
});
