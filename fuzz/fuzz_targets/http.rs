//! The HTTP-CoAP mapping of the bridge (RFC 8075, groupcomm-proxy §9, RFC 8613 §11), both
//! ways: the request side's field parsers and target URI forms on arbitrary text, and any
//! datagram as the HTTP response of a part. What a device sends must never end a header
//! line inside its part (no CR or LF in a field value), and a request that translates
//! must make a datagram the engine parses.
#![no_main]

use groxy::coap::MessageView;
use groxy::http::translate::{self, CoapRequest};
use groxy::proxy::OptionNumbers;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let numbers = OptionNumbers::default();
    // Any datagram as a device's response.
    if let Ok(v) = MessageView::parse(data) {
        let r = translate::response(&v, numbers.reply_from, numbers.multicast_timeout);
        for (n, value) in &r.headers {
            assert!(
                !value.bytes().any(|b| b == b'\r' || b == b'\n'),
                "{n}: {value:?} would end its header line"
            );
        }
        let _ = r.to_message();
        if let Some(rf) = v.option(numbers.reply_from) {
            let _ = translate::reply_from_field(rf);
        }
    }
    // The same bytes as the pieces of a request: method, prefix, path, query, a field.
    let mut parts = data.split(|&b| b == 0xff);
    let mut next = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let (method, prefix, path, query, field) = (next(), next(), next(), next(), next());
    let code = translate::method_code(&method).unwrap_or(1);
    let query = (!query.is_empty()).then_some(query.as_str());
    let target = translate::target_uri(&prefix, &path, query);
    let _ = translate::content_format(&field);
    let _ = translate::accept(&field);
    let _ = translate::wants_stream(&field);
    let mt = translate::multicast_timeout(field.as_bytes()).ok();
    let observe = translate::observe(field.as_bytes(), code).is_ok();
    let oscore = translate::oscore_option(field.as_bytes()).ok();
    let _ = translate::status(code, !field.is_empty());
    if let Ok(target) = target {
        let req = CoapRequest {
            code,
            target,
            multicast_timeout: mt,
            oscore,
            payload: field.into_bytes(),
            observe,
            ..CoapRequest::default()
        };
        let datagram = req.encode(7, &[1, 2, 3, 4], numbers.multicast_timeout);
        assert!(
            MessageView::parse(&datagram).is_ok(),
            "a translated request must be a well-formed datagram"
        );
    }
});
