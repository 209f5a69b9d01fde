//! What a cloud client does (groupcomm-proxy §5.1, §5.5): one request through the proxy
//! with a Multicast-Timeout, every response as it arrives, then stop when the time is up.
//!
//! [`protocol`] is the client's protocol logic without I/O (message layer, deadline,
//! hop layer, Echo, verification), [`message`] its message layer's parts, and [`run`]
//! the socket loop that drives it for `groxy client`.

mod driver;
pub mod http;
pub mod message;
pub mod protocol;

pub use driver::{run, run_with};
pub use protocol::{Client, ClientEvent, Datagram, Discard, End, RequestId};

use std::net::SocketAddr;
use std::time::Duration;

use crate::coap::MessageView;
use crate::coap::build::{self, CON, NON};
use crate::coap::options::{self as opt, uint_value};
use crate::coap::uri::{Host, parse_proxy_uri};
use crate::oscore::deterministic::DeterministicExchange;
use crate::oscore::{ContextConfig, Exchange, Mode, SecurityContext};

/// A request for the client to send through a proxy, and how.
#[derive(Debug, Clone)]
pub struct ClientRequest {
    /// The proxy's address.
    pub proxy: SocketAddr,
    /// The target, e.g. `coap://224.0.1.187/hello`.
    pub uri: String,
    /// The request code, e.g. [`build::code::GET`].
    pub method: u8,
    /// Empty for none.
    pub payload: Vec<u8>,
    /// Multicast-Timeout T' in seconds (§2); the client waits T = T' + `margin`.
    pub timeout: u32,
    /// Waited beyond T' for late responses.
    pub margin: Duration,
    /// CON instead of NON (RFC 7252 §4.2, §4.3).
    pub confirmable: bool,
    /// Send the target as Proxy-Uri instead of Proxy-Scheme + Uri-* options.
    pub proxy_uri: bool,
    pub(crate) multicast_timeout_option: u16,
    pub(crate) reply_from_option: u16,
    /// Protect the request end to end in group mode with this member context and verify
    /// every response (RFC 10021 §7; groupcomm-proxy §5.1).
    pub oscore: Option<ContextConfig>,
    /// Also wrap the request in a pairwise-mode layer with the proxy, a member of the same
    /// group with this Sender ID (oscore-capable-proxies §2.3), and remove it from every
    /// response (§2.6).
    pub proxy_kid: Option<Vec<u8>>,
    /// First Sender Sequence Number to use: a client that runs again must continue
    /// above every number it used before, or its requests are replays (RFC 10021 §5.3).
    pub first_ssn: u64,
    /// Register as an observer (Observe 0, RFC 7641 §3.1): the request stays open past
    /// T', every notification is reported, until [`Client::deregister`].
    pub observe: bool,
    /// Ask for Block2 transfers in blocks of this many bytes (16 to 1,024, a power of
    /// two; RFC 7959 §2.2) and reassemble each server's representation with follow-up
    /// requests to that server (RFC 10020 §3.8). Without it a server that answers with
    /// Block2 anyway is followed up in its own size.
    pub block_size: Option<u16>,
    /// Send to `proxy` as the origin itself, without proxy options or Multicast-Timeout:
    /// `groxy client --direct` to a device.
    pub direct: bool,
    /// With `oscore`: the member file it came from, read again on SIGHUP by
    /// [`run_with`] to move to the group's next key epoch (RFC 10021 §12.2) without
    /// ending an observation.
    pub member_file: Option<std::path::PathBuf>,
    /// Options added to the request as it is built (inside the OSCORE protection):
    /// Observe, Block2.
    pub(crate) extra: Vec<(u16, Vec<u8>)>,
    /// A follow-up to one server of a group: pairwise mode with it (RFC 10021 §8;
    /// block-wise needs pairwise, RFC 10020 §3.8).
    pub(crate) pairwise_peer: Option<Vec<u8>>,
    /// A unicast follow-up through the proxy: no Multicast-Timeout.
    pub(crate) unicast: bool,
    /// With `oscore`: send the request as a Deterministic Request of the group's
    /// Deterministic Client with this Sender ID (cacheable-oscore §3.4.2) instead of in
    /// group mode; every response must then be signed (§3.4.4).
    pub deterministic: Option<Vec<u8>>,
}

impl ClientRequest {
    /// A GET for `uri` through `proxy` with Multicast-Timeout `timeout`; NON, no OSCORE.
    pub fn get(proxy: SocketAddr, uri: &str, timeout: u32) -> Self {
        ClientRequest {
            proxy,
            uri: uri.into(),
            method: build::code::GET,
            payload: Vec::new(),
            timeout,
            margin: Duration::from_secs(1),
            confirmable: false,
            proxy_uri: false,
            multicast_timeout_option: opt::MULTICAST_TIMEOUT_DEFAULT,
            reply_from_option: opt::REPLY_FROM_DEFAULT,
            oscore: None,
            proxy_kid: None,
            first_ssn: 0,
            observe: false,
            block_size: None,
            direct: false,
            member_file: None,
            extra: Vec::new(),
            pairwise_peer: None,
            unicast: false,
            deterministic: None,
        }
    }
}

/// The SZX of a block size (RFC 7959 §2.2): 16 to 1,024 bytes, a power of two.
pub fn szx_of(block_size: u16) -> Result<u8, String> {
    match block_size {
        16 | 32 | 64 | 128 | 256 | 512 | 1024 => Ok(block_size.trailing_zeros() as u8 - 4),
        n => Err(format!("block size {n}: 16, 32, 64, 128, 256, 512 or 1024")),
    }
}

/// One response as the client saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The response code (of the inner message with OSCORE).
    pub code: u8,
    /// The origin server named by Reply-From (§5.5.1 step 3), if any.
    pub reply_from: Option<SocketAddr>,
    /// Empty for none.
    pub payload: Vec<u8>,
    /// Time from sending the request to this response.
    pub elapsed: Duration,
    /// The Multicast-Timeout option of an error response (§5.2.1 step 3), if any.
    pub multicast_timeout: Option<Vec<u8>>,
    /// The Observe option: the notification's sequence number (RFC 7641 §3.4), or
    /// `None` for a response that is not a notification.
    pub observe: Option<u32>,
    /// With OSCORE: how the response verified (mode and the server's Sender ID), or why
    /// not. `code` and `payload` are then those of the decrypted response.
    pub oscore: Option<Result<(Mode, Vec<u8>), String>>,
}

/// Builds the request and, with OSCORE, protects it in group mode: the inner request
/// carries method, path, query and payload; the Class U proxy options are added outside
/// (RFC 8613 §4.1), as the proxy must read them.
pub fn protect_request(
    req: &ClientRequest,
    ctx: &mut SecurityContext,
    mid: u16,
    token: &[u8],
) -> Result<(Vec<u8>, Exchange), String> {
    protected(req, mid, token, |plain| {
        match &req.pairwise_peer {
            Some(peer) => ctx.protect_request(plain, Mode::Pairwise, Some(peer)),
            None => ctx.protect_request(plain, Mode::Group, None),
        }
        .map_err(|e| e.to_string())
    })
}

/// Builds the request as a Deterministic Request (cacheable-oscore §3.4.2) of the
/// Deterministic Client `det_kid`, the proxy options outside as in [`protect_request`]:
/// the same request gives the same options and payload every time (the token and Message
/// ID are the message layer's and differ).
pub fn protect_deterministic(
    req: &ClientRequest,
    ctx: &SecurityContext,
    mid: u16,
    token: &[u8],
    det_kid: &[u8],
) -> Result<(Vec<u8>, DeterministicExchange), String> {
    protected(req, mid, token, |plain| {
        ctx.protect_deterministic_request(plain, det_kid)
            .map_err(|e| e.to_string())
    })
}

/// The plain inner request of `req` through `protect`, with the Class U proxy options
/// added outside (RFC 8613 §4.1) unless the request goes direct; what `protect` returns
/// beside the protected message comes back with it.
fn protected<X>(
    req: &ClientRequest,
    mid: u16,
    token: &[u8],
    protect: impl FnOnce(&[u8]) -> Result<(Vec<u8>, X), String>,
) -> Result<(Vec<u8>, X), String> {
    if req.proxy_uri {
        return Err("Proxy-Uri cannot be used with OSCORE; the Proxy-Scheme form is used".into());
    }
    let target = parse_proxy_uri(req.uri.as_bytes()).map_err(|e| format!("{}: {e}", req.uri))?;
    let mut inner: Vec<(u16, &[u8])> = target
        .uri_options
        .iter()
        .map(|(n, v)| (*n, &v[..]))
        .collect();
    inner.extend(req.extra.iter().map(|(n, v)| (*n, &v[..])));
    let t = if req.confirmable { CON } else { NON };
    let plain = build::encode(t, req.method, mid, token, &mut inner, &req.payload);
    let (protected, state) = protect(&plain)?;
    let v = MessageView::parse(&protected).map_err(|e| e.to_string())?;
    let outer = if req.direct {
        Vec::new()
    } else {
        outer_proxy_options(req, &target)?
    };
    let mut opts: Vec<(u16, &[u8])> = v.options().collect();
    opts.extend(outer.iter().map(|(n, v)| (*n, v.as_slice())));
    Ok((
        build::encode(t, v.code(), mid, token, &mut opts, v.payload()),
        state,
    ))
}

fn outer_proxy_options(
    req: &ClientRequest,
    target: &crate::coap::uri::Target<'_>,
) -> Result<Vec<(u16, Vec<u8>)>, String> {
    let host = match &target.host {
        Host::Ip(ip) => ip.to_string(),
        Host::Name(n) => n.to_string(),
    };
    let mut o = vec![
        (opt::PROXY_SCHEME, target.scheme.as_bytes().to_vec()),
        (opt::URI_HOST, host.into_bytes()),
    ];
    if !req.unicast {
        o.push((req.multicast_timeout_option, uint_value(req.timeout)));
    }
    if let Some(p) = target.port {
        o.push((opt::URI_PORT, uint_value(p as u32)));
    }
    Ok(o)
}

/// Builds the request datagram.
pub(crate) fn encode_request(
    req: &ClientRequest,
    mid: u16,
    token: &[u8],
) -> Result<Vec<u8>, String> {
    let target = parse_proxy_uri(req.uri.as_bytes()).map_err(|e| format!("{}: {e}", req.uri))?;
    let mt = uint_value(req.timeout);
    let host = match &target.host {
        Host::Ip(ip) => ip.to_string(),
        Host::Name(n) => n.to_string(),
    };
    let port = target.port.map(|p| uint_value(p as u32));
    let mut opts: Vec<(u16, &[u8])> = Vec::new();
    if !req.unicast && !req.direct {
        opts.push((req.multicast_timeout_option, &mt));
    }
    if req.direct {
        opts.extend(target.uri_options.iter().map(|(n, v)| (*n, &v[..])));
    } else if req.proxy_uri {
        opts.push((opt::PROXY_URI, req.uri.as_bytes()));
    } else {
        // aiocoap's form: Proxy-Scheme with Uri-Host, Uri-Port, Uri-Path, Uri-Query.
        opts.push((opt::PROXY_SCHEME, target.scheme.as_bytes()));
        opts.push((opt::URI_HOST, host.as_bytes()));
        if let Some(p) = &port {
            opts.push((opt::URI_PORT, p));
        }
        opts.extend(target.uri_options.iter().map(|(n, v)| (*n, &v[..])));
    }
    opts.extend(req.extra.iter().map(|(n, v)| (*n, &v[..])));
    let t = if req.confirmable { CON } else { NON };
    Ok(build::encode(
        t,
        req.method,
        mid,
        token,
        &mut opts,
        &req.payload,
    ))
}
