//! The HTTP-CoAP mapping of RFC 8075 and groupcomm-proxy-07 §9, both ways, without I/O:
//! the target CoAP URI from the hosting HTTP URI (§5), methods and media types (§6),
//! status codes (§7), the Multicast-Timeout and Reply-From header fields (§9.1, §9.2),
//! and OSCORE over HTTP (RFC 8613 §11). Which target is allowed, and everything else the
//! request then goes through, is the engine's: the target goes to it as a Proxy-Uri.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::coap::MessageView;
use crate::coap::options as opt;

/// Accept (RFC 7252 §5.10.4), not in the option table's constants.
const ACCEPT: u16 = 17;
/// ETag (RFC 7252 §5.10.6).
const ETAG: u16 = 4;
/// Location-Path, Location-Query (RFC 7252 §5.10.7).
const LOCATION_PATH: u16 = 8;
const LOCATION_QUERY: u16 = 20;

/// What is percent-encoded in a Location segment: controls, space and the delimiters.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'?')
    .add(b'&')
    .add(b'<')
    .add(b'>');

/// Why an HTTP request cannot be translated: the HTTP status and a diagnostic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status code.
    pub status: u16,
    /// The body (text/plain).
    pub diagnostic: &'static str,
}

fn refuse(status: u16, diagnostic: &'static str) -> Refusal {
    Refusal { status, diagnostic }
}

/// RFC 8075 §6: the CoAP method code of an HTTP method (FETCH, PATCH and iPATCH of RFC
/// 8132 included); others: 501.
pub fn method_code(method: &str) -> Result<u8, Refusal> {
    Ok(match method {
        "GET" => 1,
        "POST" => 2,
        "PUT" => 3,
        "DELETE" => 4,
        "FETCH" => 5,
        "PATCH" => 6,
        "iPATCH" => 7,
        _ => return Err(refuse(501, "method not supported by the HTTP-CoAP mapping")),
    })
}

/// The target CoAP URI of a hosting HTTP URI under `prefix` (e.g. "/hc/"): the Simple
/// Form `PREFIX?target_uri=URI` (RFC 8075 §5.4.1, the value percent-encoded) or the
/// default mapping `PREFIX` + URI (§5.3). Only the form is checked here; the URI itself
/// goes to the engine, which parses it like any Proxy-Uri (4.00 if malformed).
pub fn target_uri(prefix: &str, path: &str, query: Option<&str>) -> Result<String, Refusal> {
    let Some(rest) = path.strip_prefix(prefix) else {
        return Err(refuse(404, "not under the HTTP-CoAP prefix"));
    };
    if rest.is_empty() {
        let q = query.ok_or(refuse(400, "no target_uri"))?;
        // §5.4.1: the query of the Simple Form is the single pair target_uri=...
        let value = q
            .split('&')
            .find_map(|kv| kv.strip_prefix("target_uri="))
            .ok_or(refuse(400, "no target_uri"))?;
        let value = value.replace('+', " ");
        let decoded = percent_encoding::percent_decode_str(&value)
            .decode_utf8()
            .map_err(|_| refuse(400, "target_uri is not UTF-8 once decoded"))?;
        return checked(decoded.into_owned());
    }
    // §5.3: the rest of the path is the target URI as it was written (the HTTP request
    // target has it percent-encoded already, as the Proxy-Uri wants it).
    let mut uri = rest.to_string();
    if let Some(q) = query {
        uri.push('?');
        uri.push_str(q);
    }
    checked(uri)
}

/// A target the engine could not hold in a Proxy-Uri (RFC 7252 §5.10.2: 1 to 1034
/// bytes), or one with control characters, is refused here: 414 / 400.
fn checked(uri: String) -> Result<String, Refusal> {
    if uri.len() > 1034 {
        return Err(refuse(414, "target URI longer than a Proxy-Uri holds"));
    }
    if uri.is_empty() || uri.bytes().any(|b| b < 0x21 || b == 0x7f) {
        return Err(refuse(400, "malformed target URI"));
    }
    Ok(uri)
}

/// RFC 7252 §12.3 and the CoAP Content-Formats registry: the media types this bridge maps
/// (RFC 8075 §6.3), with their Content-Format numbers.
const MEDIA_TYPES: &[(&str, u16)] = &[
    ("text/plain;charset=utf-8", 0),
    ("application/cose;cose-type=\"cose-encrypt0\"", 16),
    ("application/link-format", 40),
    ("application/xml", 41),
    ("application/octet-stream", 42),
    ("application/exi", 47),
    ("application/json", 50),
    ("application/json-patch+json", 51),
    ("application/merge-patch+json", 52),
    ("application/cbor", 60),
    ("application/cwt", 61),
    ("application/cbor-seq", 63),
    ("application/senml+json", 110),
    ("application/sensml+json", 111),
    ("application/senml+cbor", 112),
    ("application/sensml+cbor", 113),
    ("application/coap-group+json", 256),
    ("application/oscore", 10001),
];

/// A media type as compared: lowercase, no spaces, `text/plain` with its charset.
fn normalise(media: &str) -> String {
    let m: String = media
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    if m == "text/plain" {
        return "text/plain;charset=utf-8".into();
    }
    m
}

/// The Content-Format of a Content-Type; unknown: 415 (RFC 8075 §6.3).
pub fn content_format(content_type: &str) -> Result<u16, Refusal> {
    let m = normalise(content_type);
    MEDIA_TYPES
        .iter()
        .find(|(t, _)| *t == m)
        .map(|(_, n)| *n)
        .ok_or(refuse(415, "media type has no CoAP Content-Format"))
}

/// The media type of a Content-Format, if it is one the bridge knows.
pub fn media_type(format: u16) -> Option<&'static str> {
    MEDIA_TYPES
        .iter()
        .find(|(_, n)| *n == format)
        .map(|(t, _)| *t)
}

/// The CoAP Accept of an HTTP Accept: the first listed type that has a Content-Format
/// (RFC 8075 §6.3); `*/*`, `multipart/mixed` (the batch itself) and unknown types give
/// none.
pub fn accept(header: &str) -> Option<u16> {
    header.split(',').find_map(|t| {
        let t = t.split(";q=").next().unwrap_or("");
        content_format(t).ok()
    })
}

/// Whether the client asked for streamed delivery: an Accept of
/// `multipart/mixed; delivery=streamed` (groupcomm-proxy §9.9 leaves the form open).
pub fn wants_stream(header: &str) -> bool {
    header.split(',').any(|t| {
        let m = normalise(t);
        m.starts_with("multipart/mixed;") && m.split(';').any(|p| p == "delivery=streamed")
    })
}

/// The HTTP Multicast-Timeout field value (groupcomm-proxy §9.1: `*DIGIT`, empty = 0)
/// as the CoAP option's uint; values past 32 bits are the largest (the engine caps every
/// value at the group's maximum anyway).
pub fn multicast_timeout(value: &[u8]) -> Result<u32, Refusal> {
    let v = value.trim_ascii();
    if !v.iter().all(u8::is_ascii_digit) {
        return Err(refuse(400, "Multicast-Timeout is not *DIGIT"));
    }
    let mut n: u64 = 0;
    for d in v {
        n = (n * 10 + u64::from(d - b'0')).min(u64::from(u32::MAX));
    }
    Ok(n as u32)
}

/// The `Observe` header field of an observation over HTTP: `0` (register, RFC 7641
/// §3.1), only on GET and FETCH (RFC 7641 §2, RFC 8132 §2.4). RFC 8075 and
/// groupcomm-proxy §9 map no Observe; the field follows §9's way of carrying a CoAP
/// option as a field of the same name (Multicast-Timeout, Reply-From; OSCORE in RFC
/// 8613 §11.1). Deregistration is the HTTP client's disconnect, so `1` is refused.
pub fn observe(value: &[u8], code: u8) -> Result<(), Refusal> {
    if value.trim_ascii() != b"0" {
        return Err(refuse(400, "Observe must be 0 (disconnect to deregister)"));
    }
    if code != 1 && code != 5 {
        return Err(refuse(400, "Observe needs GET or FETCH"));
    }
    Ok(())
}

/// RFC 8613 §11.1: the OSCORE header field is the base64url (no padding) of the option.
pub fn oscore_option(value: &[u8]) -> Result<Vec<u8>, Refusal> {
    URL_SAFE_NO_PAD
        .decode(value.trim_ascii())
        .map_err(|_| refuse(400, "OSCORE header field is not base64url"))
}

/// RFC 8075 §7 (Table 2): the HTTP status of a CoAP response code. 4.01 maps to 403 (an
/// HTTP 401 needs WWW-Authenticate, which CoAP has no equivalent of, note 5); 4.05 to 400
/// (note 7); 5.05 to 502; 4.29 (RFC 8516) to 429; 2.02/2.04 to 200 with a payload, else
/// 204 (note 2).
pub fn status(code: u8, has_payload: bool) -> u16 {
    let (class, detail) = (code >> 5, code & 0x1f);
    match (class, detail) {
        (2, 1) => 201,
        (2, 2) | (2, 4) if !has_payload => 204,
        (2, 2) | (2, 4) => 200,
        (2, 3) => 304,
        (2, _) => 200,
        (4, 0) | (4, 2) | (4, 5) => 400,
        (4, 1) | (4, 3) => 403,
        (4, 4) => 404,
        (4, 6) => 406,
        (4, 12) => 412,
        (4, 13) => 413,
        (4, 15) => 415,
        (4, 29) => 429,
        (4, _) => 400,
        (5, 1) => 501,
        (5, 2) | (5, 5) => 502,
        (5, 3) => 503,
        (5, 4) => 504,
        (5, 8) => 508,
        _ => 500,
    }
}

/// The reason phrase of a status this bridge sends.
pub fn reason(status: u16) -> &'static str {
    http_reason(status)
}

fn http_reason(status: u16) -> &'static str {
    hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

/// groupcomm-proxy §9.2: the HTTP Reply-From of a CoAP Reply-From option, an RFC 9651
/// List of one or two Byte Sequences, one per CBOR array of the option's CBOR sequence.
/// None if the option is not such a sequence.
pub fn reply_from_field(option: &[u8]) -> Option<String> {
    let mut items = Vec::new();
    let mut d = minicbor::Decoder::new(option);
    while d.position() < option.len() {
        let start = d.position();
        if d.datatype().ok()? != minicbor::data::Type::Array {
            return None;
        }
        d.skip().ok()?;
        items.push(&option[start..d.position()]);
    }
    if items.is_empty() || items.len() > 2 {
        return None;
    }
    let mut ser = sfv::ListSerializer::new();
    for i in items {
        let _ = ser.bare_item(i);
    }
    ser.finish()
}

/// A CoAP response as the HTTP response the client gets: status, header fields, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// Header fields (name, value), in order.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A response the bridge makes itself (a refusal).
    pub fn refusal(r: &Refusal) -> Self {
        HttpResponse {
            status: r.status,
            headers: vec![("content-type", "text/plain; charset=utf-8".into())],
            body: r.diagnostic.as_bytes().to_vec(),
        }
    }

    /// The response in HTTP/1.1 message form (RFC 9112), for an `application/http` part.
    pub fn to_message(&self) -> Vec<u8> {
        let mut m = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status)).into_bytes();
        for (n, v) in &self.headers {
            m.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        m.extend_from_slice(format!("content-length: {}\r\n\r\n", self.body.len()).as_bytes());
        m.extend_from_slice(&self.body);
        m
    }
}

/// RFC 8075 §7 and §6.3, groupcomm-proxy §9.1, §9.2, RFC 8613 §11.3: a CoAP response as
/// an HTTP response. `reply_from` and `multicast_timeout` are the option numbers in use.
pub fn response(view: &MessageView, reply_from: u16, multicast_timeout: u16) -> HttpResponse {
    let payload = view.payload();
    let status = status(view.code(), !payload.is_empty());
    let mut headers = Vec::new();
    let mut location = String::new();
    let mut has_type = false;
    for (n, v) in view.options() {
        match n {
            opt::CONTENT_FORMAT => {
                let cf = opt::read_uint(v).unwrap_or(u32::MAX);
                let t = u16::try_from(cf)
                    .ok()
                    .and_then(media_type)
                    .unwrap_or("application/octet-stream");
                headers.push(("content-type", t.to_string()));
                has_type = true;
            }
            opt::OSCORE => {
                headers.push(("oscore", URL_SAFE_NO_PAD.encode(v)));
                headers.push(("content-type", "application/oscore".into()));
                has_type = true;
            }
            opt::MAX_AGE => {
                let s = opt::read_uint(v).unwrap_or(0);
                // RFC 8075 §7 note 8: on a 5.03 the Max-Age says when to retry.
                if status == 503 || status == 429 {
                    headers.push(("retry-after", s.to_string()));
                } else {
                    headers.push(("cache-control", format!("max-age={s}")));
                }
            }
            ETAG => headers.push(("etag", format!("\"{}\"", hex::encode(v)))),
            // RFC 8075 §6.4 (RFC 7252 §6.5 read backwards): each segment percent-encoded,
            // so that a device's bytes cannot end a header line inside its part.
            LOCATION_PATH => {
                location.push('/');
                location.extend(percent_encoding::percent_encode(v, SEGMENT));
            }
            LOCATION_QUERY => {
                location.push(if location.contains('?') { '&' } else { '?' });
                location.extend(percent_encoding::percent_encode(v, SEGMENT));
            }
            n if n == reply_from => {
                if let Some(f) = reply_from_field(v) {
                    headers.push(("reply-from", f));
                }
            }
            n if n == multicast_timeout => {
                // §9.1: the option's value, or empty if the option is empty.
                let t = if v.is_empty() {
                    String::new()
                } else {
                    opt::read_uint(v).unwrap_or(0).to_string()
                };
                headers.push(("multicast-timeout", t));
            }
            _ => {}
        }
    }
    if !location.is_empty() {
        headers.push(("location", location));
    }
    // A diagnostic payload of an error (RFC 7252 §5.5.2) is text.
    if !has_type && !payload.is_empty() && view.code() >= 0x80 {
        headers.push(("content-type", "text/plain; charset=utf-8".into()));
    }
    HttpResponse {
        status,
        headers,
        body: payload.to_vec(),
    }
}

/// What a CoAP request is built from.
#[derive(Debug, Default)]
pub struct CoapRequest {
    /// The method code.
    pub code: u8,
    /// The target, as a Proxy-Uri.
    pub target: String,
    /// Multicast-Timeout, if the header field was there.
    pub multicast_timeout: Option<u32>,
    /// Content-Format of the body, if any.
    pub content_format: Option<u16>,
    /// Accept, if any.
    pub accept: Option<u16>,
    /// The OSCORE option (RFC 8613 §11.2), if the request is protected.
    pub oscore: Option<Vec<u8>>,
    /// The body.
    pub payload: Vec<u8>,
    /// Observe 0: an observation (the `Observe` header field, see [`observe`]).
    pub observe: bool,
}

impl CoapRequest {
    /// The NON request datagram with `mid` and `token`; `mt` is the Multicast-Timeout
    /// option number.
    pub fn encode(&self, mid: u16, token: &[u8], mt: u16) -> Vec<u8> {
        let mt_value = self.multicast_timeout.map(opt::uint_value);
        let cf = self.content_format.map(|c| opt::uint_value(c.into()));
        let acc = self.accept.map(|c| opt::uint_value(c.into()));
        let mut opts: Vec<(u16, &[u8])> = vec![(opt::PROXY_URI, self.target.as_bytes())];
        if let Some(v) = &mt_value {
            opts.push((mt, v));
        }
        if let Some(v) = &cf {
            opts.push((opt::CONTENT_FORMAT, v));
        }
        if let Some(v) = &acc {
            opts.push((ACCEPT, v));
        }
        if let Some(v) = &self.oscore {
            opts.push((opt::OSCORE, v));
        }
        if self.observe {
            opts.push((opt::OBSERVE, &[]));
        }
        crate::coap::build::encode(
            crate::coap::build::NON,
            self.code,
            mid,
            token,
            &mut opts,
            &self.payload,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8075 §5.4.1 (Simple Form, percent-encoded) and §5.3 (default mapping).
    #[test]
    fn both_uri_forms_give_the_target() {
        assert_eq!(
            target_uri(
                "/hc/",
                "/hc/",
                Some("target_uri=coap%3A%2F%2F224.0.1.187%2Flights")
            )
            .unwrap(),
            "coap://224.0.1.187/lights"
        );
        assert_eq!(
            target_uri("/hc/", "/hc/coap://all-coap-nodes/a/b", Some("x=1")).unwrap(),
            "coap://all-coap-nodes/a/b?x=1"
        );
        assert_eq!(target_uri("/hc/", "/other", None).unwrap_err().status, 404);
        assert_eq!(target_uri("/hc/", "/hc/", None).unwrap_err().status, 400);
        assert_eq!(
            target_uri("/hc/", "/hc/", Some("target_uri=%FF"))
                .unwrap_err()
                .status,
            400
        );
        let long = format!("target_uri=coap://h/{}", "a".repeat(2000));
        assert_eq!(
            target_uri("/hc/", "/hc/", Some(&long)).unwrap_err().status,
            414
        );
    }

    /// RFC 8075 §7 Table 2.
    #[test]
    fn status_codes_follow_table_2() {
        for (c, p, s) in [
            (0x41, false, 201),
            (0x42, false, 204),
            (0x44, true, 200),
            (0x45, true, 200),
            (0x80, true, 400),
            (0x81, false, 403),
            (0x84, false, 404),
            (0x85, false, 400),
            (0x9d, false, 429),
            (0xa1, false, 501),
            (0xa3, false, 503),
            (0xa4, false, 504),
            (0xa5, false, 502),
        ] {
            assert_eq!(status(c, p), s, "code {c:#x}");
        }
    }

    /// RFC 7641 §3.1 (Observe 0 registers), §2 (GET; FETCH by RFC 8132 §2.4).
    #[test]
    fn observe_field_registers_on_get_and_fetch_only() {
        assert!(observe(b"0", 1).is_ok());
        assert!(observe(b" 0 ", 5).is_ok());
        assert_eq!(observe(b"1", 1).unwrap_err().status, 400);
        assert_eq!(observe(b"0", 2).unwrap_err().status, 400);
    }

    /// groupcomm-proxy §9.1: `*DIGIT`, empty = 0.
    #[test]
    fn multicast_timeout_field() {
        assert_eq!(multicast_timeout(b"").unwrap(), 0);
        assert_eq!(multicast_timeout(b" 60 ").unwrap(), 60);
        assert_eq!(multicast_timeout(b"99999999999").unwrap(), u32::MAX);
        assert!(multicast_timeout(b"-1").is_err());
        assert!(multicast_timeout(b"1.5").is_err());
    }

    /// groupcomm-proxy §9.2: a List of one Byte Sequence that parses back (RFC 9651).
    #[test]
    fn reply_from_is_a_list_of_one_byte_sequence() {
        let addr: std::net::SocketAddr = "192.0.2.7:5683".parse().unwrap();
        let opt = crate::coap::cri::reply_from(addr);
        let f = reply_from_field(&opt).unwrap();
        let list: sfv::List = sfv::Parser::new(&f).parse().unwrap();
        assert_eq!(list.len(), 1);
        let sfv::ListEntry::Item(i) = &list[0] else {
            panic!()
        };
        let bytes = i.bare_item.as_byte_sequence().unwrap();
        assert_eq!(crate::coap::cri::parse_reply_from(bytes), Some(addr));
        assert_eq!(reply_from_field(&[0x01]), None);
    }

    /// RFC 8075 §6.4: Location from Location-Path/-Query, a device's CR LF encoded (no
    /// header can be injected into its part).
    #[test]
    fn location_is_percent_encoded() {
        let m = crate::coap::build::encode(
            1,
            0x41,
            1,
            &[1],
            &mut [(LOCATION_PATH, &b"a\r\nX: y"[..]), (LOCATION_QUERY, b"q=1")],
            &[],
        );
        let r = response(&MessageView::parse(&m).unwrap(), 248, 2);
        assert_eq!(r.status, 201);
        let loc = r.headers.iter().find(|(n, _)| *n == "location").unwrap();
        assert_eq!(loc.1, "/a%0D%0AX:%20y?q=1");
    }

    /// RFC 8075 §6.3.
    #[test]
    fn media_types_map_both_ways() {
        assert_eq!(content_format("text/plain").unwrap(), 0);
        assert_eq!(content_format("Application/JSON").unwrap(), 50);
        assert_eq!(content_format("image/png").unwrap_err().status, 415);
        assert_eq!(accept("multipart/mixed, application/cbor;q=0.5"), Some(60));
        assert_eq!(accept("*/*"), None);
        assert!(wants_stream("multipart/mixed; delivery=streamed"));
        assert!(!wants_stream("multipart/mixed"));
        assert_eq!(method_code("iPATCH").unwrap(), 7);
        assert_eq!(method_code("TRACE").unwrap_err().status, 501);
    }
}
