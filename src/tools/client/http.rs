//! `groxy client --http URL`: the cloud client over HTTP (groupcomm-proxy-07 §9.4, §9.7).
//! The request goes to the proxy's HTTP-to-CoAP bridge with the Multicast-Timeout header
//! field and asks for streamed delivery; every `application/http` part is reported as it
//! arrives. With OSCORE the CoAP request is protected in group mode first and mapped to
//! HTTP per RFC 8613 §11.2 (POST, the OSCORE header field, an application/oscore body),
//! and each part is mapped back per §11.3 and verified.
//!
//! The multipart/mixed body (RFC 2046 §5.1.1) is split by `multer` as it streams in (its
//! framing is the same for every multipart subtype; the boundary comes from the
//! Content-Type, parsed by `mime`), and the embedded responses are parsed with httparse.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use super::Response;
use crate::coap::build::{self, NON};
use crate::coap::options as opt;
use crate::coap::uri::parse_proxy_uri;
use crate::oscore::{ContextConfig, Mode, SecurityContext};

/// A request through the HTTP bridge.
#[derive(Debug, Clone)]
pub struct HttpClientRequest {
    /// `http://PROXY/PREFIX` + a CoAP URI (RFC 8075 §5.3), e.g.
    /// `http://127.0.0.1:8080/hc/coap://224.0.1.187/hello`.
    pub url: String,
    /// The CoAP method code.
    pub method: u8,
    /// Empty for none.
    pub payload: Vec<u8>,
    /// Multicast-Timeout T' in seconds.
    pub timeout: u32,
    /// Protect end to end in group mode with this member context.
    pub oscore: Option<ContextConfig>,
    /// First Sender Sequence Number to use (see [`super::ClientRequest::first_ssn`]).
    pub first_ssn: u64,
}

const METHODS: &[(u8, &str)] = &[
    (1, "GET"),
    (2, "POST"),
    (3, "PUT"),
    (4, "DELETE"),
    (5, "FETCH"),
    (6, "PATCH"),
    (7, "iPATCH"),
];

/// What came back: the HTTP status of the whole response, and each part.
#[derive(Debug, Clone)]
pub struct HttpOutcome {
    /// 200 with parts, 204 for none, or the status of a single response.
    pub status: u16,
    /// The parts (or the single response), as [`Response`]s.
    pub responses: Vec<Response>,
}

fn split_url(url: &str) -> Result<(SocketAddr, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let addr = authority
        .parse()
        .map_err(|_| format!("{url}: the authority must be an address:port"))?;
    Ok((
        addr,
        if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
    ))
}

/// Sends the request and calls `each` for every part as it arrives.
pub async fn run_http(
    req: &HttpClientRequest,
    mut each: impl FnMut(&Response),
) -> Result<HttpOutcome, String> {
    let (addr, mut path) = split_url(&req.url)?;
    let mut method = METHODS
        .iter()
        .find(|(c, _)| *c == req.method)
        .map(|(_, m)| *m)
        .ok_or("unknown method")?;
    let mut body = req.payload.clone();
    let mut oscore_field = None;
    let mut ctx_ex = None;
    if let Some(cfg) = &req.oscore {
        // RFC 8613 §11.2 and §4.1: method, path and query go inside; the HTTP request
        // names only the target's scheme, host and port; its outer method is POST.
        let at = path
            .find("coap://")
            .ok_or("--oscore needs a coap:// target")?;
        let target_text = path[at..].to_string();
        let target = parse_proxy_uri(target_text.as_bytes()).map_err(|e| e.to_string())?;
        let mut inner: Vec<(u16, &[u8])> = target
            .uri_options
            .iter()
            .map(|(n, v)| (*n, &v[..]))
            .collect();
        let plain = build::encode(NON, req.method, 0, &[0], &mut inner, &req.payload);
        let mut ctx = SecurityContext::new(cfg).map_err(|e| e.to_string())?;
        ctx.sender.ssn = req.first_ssn;
        let (protected, ex) = ctx
            .protect_request(&plain, Mode::Group, None)
            .map_err(|e| e.to_string())?;
        let v = crate::coap::MessageView::parse(&protected).map_err(|e| e.to_string())?;
        oscore_field = Some(URL_SAFE_NO_PAD.encode(v.option(opt::OSCORE).unwrap_or(&[])));
        body = v.payload().to_vec();
        method = "POST";
        let authority_end = target_text[7..]
            .find(['/', '?'])
            .map_or(target_text.len(), |i| i + 7);
        path = format!("{}{}", &path[..at], &target_text[..authority_end]);
        ctx_ex = Some((ctx, ex));
    }
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("{addr}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut b = hyper::Request::builder()
        .method(hyper::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?)
        .uri(&path)
        .header("host", addr.to_string())
        .header("multicast-timeout", req.timeout.to_string())
        .header("accept", "multipart/mixed; delivery=streamed");
    if let Some(o) = &oscore_field {
        b = b
            .header("oscore", o.as_str())
            .header("content-type", "application/oscore");
    } else if !body.is_empty() {
        b = b.header("content-type", "text/plain");
    }
    let request = b
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    let resp = tokio::time::timeout(
        Duration::from_secs(u64::from(req.timeout) + 10),
        sender.send_request(request),
    )
    .await
    .map_err(|_| "no response in time")?
    .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut responses = Vec::new();
    let mut verify = |r: &mut Response, raw: &Part| {
        if let Some((ctx, ex)) = ctx_ex.as_mut() {
            r.oscore = Some(verify_part(ctx, ex, raw).map(|(code, payload, v)| {
                r.code = code;
                r.payload = payload;
                v
            }));
        }
    };
    let body = resp.into_body();
    if let Some(boundary) = mixed_boundary(&ct) {
        let wait = Duration::from_secs(u64::from(req.timeout) + 10);
        let mut parts = multer::Multipart::new(body.into_data_stream(), boundary);
        // Each part is reported once its closing delimiter has arrived, so that a streamed
        // response (groupcomm-proxy §9.9) shows every device's answer before T' ends.
        while let Some(field) = tokio::time::timeout(wait, parts.next_field())
            .await
            .map_err(|_| "response did not end in time")?
            .map_err(|e| e.to_string())?
        {
            let bytes = tokio::time::timeout(wait, field.bytes())
                .await
                .map_err(|_| "response did not end in time")?
                .map_err(|e| e.to_string())?;
            let Some(part) = parse_part(&bytes) else {
                continue;
            };
            let mut r = part.response(start.elapsed());
            verify(&mut r, &part);
            each(&r);
            responses.push(r);
        }
    } else {
        let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        if status != 204 {
            let mut r = Response {
                code: coap_code(status),
                reply_from: None,
                payload: bytes.to_vec(),
                elapsed: start.elapsed(),
                multicast_timeout: None,
                observe: None,
                oscore: None,
            };
            each(&r);
            r.elapsed = start.elapsed();
            responses.push(r);
        }
    }
    Ok(HttpOutcome { status, responses })
}

/// The boundary of a `multipart/mixed` Content-Type (RFC 2046 §5.1.1), if it is one.
fn mixed_boundary(content_type: &str) -> Option<String> {
    let m: mime::Mime = content_type.parse().ok()?;
    (m.type_() == mime::MULTIPART && m.subtype() == "mixed")
        .then(|| m.get_param(mime::BOUNDARY).map(|b| b.as_str().to_string()))
        .flatten()
}

/// An embedded HTTP response of a part.
struct Part {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Part {
    fn header(&self, n: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_slice())
    }

    fn response(&self, elapsed: Duration) -> Response {
        Response {
            code: coap_code(self.status),
            reply_from: self.header("reply-from").and_then(reply_from),
            payload: self.body.clone(),
            elapsed,
            multicast_timeout: None,
            observe: None,
            oscore: None,
        }
    }
}

/// groupcomm-proxy §9.2: the first Byte Sequence of the List, as a CRI of an address.
fn reply_from(v: &[u8]) -> Option<SocketAddr> {
    let list: sfv::List = sfv::Parser::new(v).parse().ok()?;
    match list.first()? {
        sfv::ListEntry::Item(i) => {
            crate::coap::cri::parse_reply_from(i.bare_item.as_byte_sequence()?)
        }
        sfv::ListEntry::InnerList(_) => None,
    }
}

/// The embedded response of a part (the part's own head, Content-Type: application/http,
/// was read by multer).
fn parse_part(inner: &[u8]) -> Option<Part> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(n) = r.parse(inner).ok()? else {
        return None;
    };
    let status = r.code?;
    let headers: Vec<(String, Vec<u8>)> = r
        .headers
        .iter()
        .map(|h| (h.name.to_string(), h.value.to_vec()))
        .collect();
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok())
        .unwrap_or(inner.len() - n);
    let body = inner.get(n..n + len)?.to_vec();
    Some(Part {
        status,
        headers,
        body,
    })
}

/// An HTTP status back to a CoAP code (RFC 8075 §7 read backwards, for display; with
/// OSCORE the inner code is what counts).
fn coap_code(status: u16) -> u8 {
    match status {
        200 => 0x45,
        201 => 0x41,
        204 => 0x44,
        s => {
            let (class, detail) = ((s / 100) as u8, (s % 100) as u8);
            (class << 5) | detail.min(31)
        }
    }
}

/// RFC 8613 §11.3: the part as the protected CoAP response (outer code 2.04, the OSCORE
/// option from the header field, the body as payload), verified and decrypted.
type Verified = (u8, Vec<u8>, (Mode, Vec<u8>));

fn verify_part(
    ctx: &mut SecurityContext,
    ex: &crate::oscore::Exchange,
    part: &Part,
) -> Result<Verified, String> {
    let field = part.header("oscore").ok_or("no OSCORE header field")?;
    let value = URL_SAFE_NO_PAD
        .decode(field.trim_ascii())
        .map_err(|_| "OSCORE header field is not base64url")?;
    let msg = build::encode(
        NON,
        0x44,
        0,
        &[0],
        &mut [(opt::OSCORE, &value[..])],
        &part.body,
    );
    let mut ex = ex.clone();
    let (plain, info) = ctx
        .unprotect_response(&msg, &mut ex)
        .map_err(|e| e.to_string())?;
    let v = crate::coap::MessageView::parse(&plain).map_err(|e| e.to_string())?;
    Ok((
        v.code(),
        v.payload().to_vec(),
        (info.mode, info.server_id.clone()),
    ))
}

#[cfg(test)]
mod tests {
    use super::mixed_boundary;

    /// RFC 2046 §5.1.1: the boundary parameter, quoted or not, of multipart/mixed only
    /// (the bridge's streamed form adds `delivery`, groupcomm-proxy §9.9).
    #[test]
    fn boundary_of_multipart_mixed_only() {
        assert_eq!(
            mixed_boundary("multipart/mixed; boundary=\"a b\"; delivery=streamed").as_deref(),
            Some("a b")
        );
        assert_eq!(
            mixed_boundary("multipart/mixed;boundary=x").as_deref(),
            Some("x")
        );
        assert_eq!(mixed_boundary("multipart/form-data; boundary=x"), None);
        assert_eq!(mixed_boundary("multipart/mixed"), None);
        assert_eq!(mixed_boundary("text/plain"), None);
    }
}
