//! Unprotect in every mode (RFC 8613 §8.2, §8.4; RFC 10021 §7.2, §7.4, §8.4, §8.6): a
//! server context of a fixed group (group and pairwise requests), the client's context
//! for responses to a fixed group-mode or pairwise request, and a plain OSCORE pair.
//! Nothing may panic, and a request that unprotected once is a replay the second time.
#![no_main]

use groxy::oscore::{Mode, SecurityContext};
use groxy_fuzz::{DEV_A, checked_group, plain_context};
use libfuzzer_sys::fuzz_target;

/// CoAP GET coap://hello (RFC 7252 §3), the plaintext of the fixed requests.
const GET: &[u8] = &[
    0x51, 0x01, 0xaa, 0x01, 0xc3, 0xb5, b'h', b'e', b'l', b'l', b'o',
];

fn request_twice(ctx: &mut SecurityContext, msg: &[u8]) {
    if ctx.unprotect_request(msg).is_ok() {
        assert!(
            ctx.unprotect_request(msg).is_err(),
            "replay window let a request in twice"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, msg)) = data.split_first() else {
        return;
    };
    let g = checked_group();
    match sel % 5 {
        0 => request_twice(&mut g.context(DEV_A), msg),
        1 | 2 => {
            let mode = if sel % 5 == 1 {
                Mode::Group
            } else {
                Mode::Pairwise
            };
            let mut client = g.context(groxy_fuzz::CLIENT);
            let (_, mut ex) = client
                .protect_request(GET, mode, Some(DEV_A))
                .expect("protect");
            let _ = client.unprotect_response(msg, &mut ex);
            let _ = client.unprotect_response(msg, &mut ex);
        }
        3 => request_twice(&mut plain_context(false), msg),
        _ => {
            let mut client = plain_context(true);
            let (_, mut ex) = client
                .protect_request(GET, Mode::Pairwise, Some(&[]))
                .expect("protect");
            let _ = client.unprotect_response(msg, &mut ex);
        }
    }
});
