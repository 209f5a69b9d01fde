//! CBOR decoding: CCS credentials (RFC 8392 claims with a COSE_Key, decoded with minicbor
//! in src/oscore/cred.rs) and the Reply-From CRI (groupcomm-proxy §3, src/coap/cri.rs).
//! The crate's own src/cbor.rs only encodes, so it has no decoder to fuzz.
#![no_main]

use groxy::coap::cri::{parse_reply_from, reply_from};
use groxy::oscore::cred::Credential;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Credential::from_ccs(data) {
        assert_eq!(
            c.bytes(),
            data,
            "a credential keeps its bytes, they enter the aad"
        );
        let _ = c.public_key().verify(b"msg", &[0u8; 64]);
    }
    if let Some(addr) = parse_reply_from(data) {
        // What parses, re-encodes to a CRI that parses to the same address.
        assert_eq!(parse_reply_from(&reply_from(addr)), Some(addr));
    }
});
