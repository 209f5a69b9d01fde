//! The OSCORE option value (RFC 8613 §6.1, RFC 10021 §4.2): parse, and whatever parses
//! encodes back to the same bytes.
#![no_main]

use groxy::oscore::option::OscoreOption;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(o) = OscoreOption::parse(data) {
        let again = o.encode();
        let o2 = OscoreOption::parse(&again).expect("an encoded option parses");
        assert_eq!(o2.encode(), again, "encode is stable");
    }
});
