//! The datagram view (RFC 7252 §3): parse, then every accessor; nothing may panic, and
//! what the view returns lies within the datagram.
#![no_main]

use groxy::coap::{MessageView, split_options};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = MessageView::parse(data) {
        assert_eq!(v.bytes(), data);
        let _ = (
            v.mtype(),
            v.code(),
            v.message_id(),
            v.is_request(),
            v.is_response(),
        );
        assert!(
            v.token().len() <= 8,
            "RFC 7252 §3: TKL 9-15 is a format error"
        );
        let mut last = 0u16;
        for (n, value) in v.options() {
            assert!(n >= last, "option numbers are deltas, never decreasing");
            last = n;
            assert!(value.len() <= data.len());
            // option(n) finds the first of that number.
            assert!(v.option(n).is_some());
        }
        for n in [
            1u16, 3, 4, 5, 7, 8, 9, 11, 12, 14, 15, 35, 39, 60, 258, 65535,
        ] {
            let _ = v.option(n);
        }
        assert!(v.payload().len() <= data.len());
    }
    let _ = split_options(data);
});
