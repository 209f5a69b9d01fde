//! Proxy-Uri decomposition (RFC 7252 §6.4, §5.10.2): the parser on raw option values, and
//! the decomposition the engine does on a whole request, reached through the view.
#![no_main]

use groxy::coap::MessageView;
use groxy::coap::uri::parse_proxy_uri;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = parse_proxy_uri(data) {
        // RFC 3986 §3.1: the scheme comes out lowercased.
        assert!(!t.scheme.bytes().any(|c| c.is_ascii_uppercase()));
        for (n, _) in &t.uri_options {
            assert!(*n == 11 || *n == 15, "only Uri-Path and Uri-Query come out");
        }
    }
    // The same bytes as a datagram: its Proxy-Uri option (35), if any, through the parser.
    if let Ok(v) = MessageView::parse(data)
        && let Some(uri) = v.option(35)
    {
        let _ = parse_proxy_uri(uri);
    }
});
