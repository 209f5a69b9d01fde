//! The HTTP-to-CoAP bridge (groupcomm-proxy-07 §9, RFC 8075, RFC 8613 §11): HTTP clients
//! reach device groups and origins through the same engine as CoAP clients.
//!
//! Each HTTP request is translated ([`translate`]) into one NON CoAP request datagram,
//! whose source is the HTTP client's address (with mTLS: the address configured for its
//! certificate, and the connection's port), and handed to the forwarding thread, which
//! runs it through the engine as a datagram on a virtual listener (`runtime::bridge`).
//! Allow-lists, limits, the signature filter, fan-out, Reply-From and late responses
//! are therefore the engine's, once. What the engine sends back to that listener comes
//! here, matched by token to the waiting request: at T' one 204 or one 200
//! multipart/mixed with an `application/http` part per device (§9.6), or, when the
//! client asked with `Accept: multipart/mixed; delivery=streamed`, each part flushed as
//! its response arrives (chunked) and the closing boundary at T'.
//!
//! The bridge is the CoAP client of those requests: Message IDs of its own per (address,
//! port) endpoint, none reused within NON_LIFETIME (RFC 7252 §4.4, as the engine's
//! deduplication expects), tokens from a counter that never repeats in a process.

mod tls;
pub mod translate;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use tokio::sync::mpsc;

use crate::coap::MessageView;
use crate::ops::metrics::HttpMetrics;
use crate::proxy::ProxyConfig;
use crate::runtime::bridge::{BridgeSender, FromEngine, Outcome, ToEngine};
use translate::{CoapRequest, HttpResponse, Refusal};

/// RFC 7252 §4.8.2: how long a NON's Message ID may still be live.
const NON_LIFETIME: Duration = Duration::from_secs(145);
/// Message IDs per block in the reuse bookkeeping (see [`Endpoint`]).
const MID_BLOCK: u64 = 1024;

/// A client certificate allowed by mTLS, and the address the engine knows it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// SHA-256 of the certificate (DER).
    pub sha256: [u8; 32],
    /// The source address its requests carry into the engine: the groups' `allow`
    /// lists, the per-client limits and the logs see this address.
    pub address: IpAddr,
}

/// HTTPS: the server's certificate and, for mTLS, the clients allowed.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// If set, a client must present one of these certificates (mTLS); others fail the
    /// handshake.
    pub clients: Option<Vec<ClientIdentity>>,
}

/// `[http]` of the configuration file.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Listening addresses (TCP).
    pub listen: Vec<SocketAddr>,
    /// The hosting HTTP URI prefix (RFC 8075 §5), e.g. "/hc/".
    pub prefix: String,
    /// HTTPS if set, else plain HTTP.
    pub tls: Option<TlsConfig>,
    /// Open connections; past it a new connection is closed at once.
    pub max_connections: usize,
    /// Requests being handled; past it 503 with Retry-After.
    pub max_requests: usize,
    /// The request head's size (hyper's read buffer, at least 8,192): past it 431.
    pub max_header_bytes: usize,
    /// The request body; past it 413.
    pub max_body_bytes: usize,
    /// From when a connection waits for a request head (a kept-alive idle connection
    /// too) until the head is complete; then the connection is closed. Also bounds the
    /// TLS handshake.
    pub header_read_timeout: Duration,
    /// For the whole body; past it 408.
    pub body_read_timeout: Duration,
    /// Endpoints whose Message IDs are remembered (for NON_LIFETIME after their last
    /// request); a request from a new endpoint when full: 503.
    pub max_endpoints: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: Vec::new(),
            prefix: "/hc/".into(),
            tls: None,
            max_connections: 1024,
            max_requests: 4096,
            max_header_bytes: 16384,
            max_body_bytes: 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            max_endpoints: 16384,
        }
    }
}

/// One endpoint's Message IDs: a counter from a random start; the time of the latest
/// use of each block of [`MID_BLOCK`] consecutive ones (64 blocks cover all 65,536), so
/// that an ID is given again only once its previous use is NON_LIFETIME old.
struct Endpoint {
    start: u16,
    issued: u64,
    /// Latest use of blocks `first ..`, at most 64.
    blocks: VecDeque<Instant>,
    first: u64,
    last: Instant,
}

impl Endpoint {
    fn next(&mut self, now: Instant) -> Option<u16> {
        let n = self.issued;
        if n >= 1 << 16 {
            let prev_block = (n - (1 << 16)) / MID_BLOCK;
            if let Some(t) = prev_block
                .checked_sub(self.first)
                .and_then(|i| self.blocks.get(i as usize))
                && now.saturating_duration_since(*t) < NON_LIFETIME
            {
                return None;
            }
        }
        let block = n / MID_BLOCK;
        match (block - self.first) as usize {
            i if i < self.blocks.len() => self.blocks[i] = now,
            _ => self.blocks.push_back(now),
        }
        while self.blocks.len() > 64 {
            self.blocks.pop_front();
            self.first += 1;
        }
        self.issued += 1;
        self.last = now;
        Some(self.start.wrapping_add(n as u16))
    }
}

/// The bridge's state shared by its tasks.
struct Shared {
    cfg: HttpConfig,
    to_engine: BridgeSender,
    /// Waiting requests by token.
    pending: Mutex<HashMap<Vec<u8>, mpsc::UnboundedSender<FromEngine>>>,
    endpoints: Mutex<HashMap<SocketAddr, Endpoint>>,
    next_token: AtomicU64,
    requests: Arc<tokio::sync::Semaphore>,
    /// Option numbers in use.
    multicast_timeout: u16,
    reply_from: u16,
    /// The engine's datagram bound: a larger request would be dropped unanswered.
    max_datagram: usize,
    /// How long a unicast exchange may take at most (the engine answers 5.04 then).
    unicast_timeout: Duration,
    /// The longest T' any group allows: how long a dropped request waits for nothing.
    max_timeout: Duration,
    group_names: Vec<String>,
    metrics: HttpMetrics,
}

/// A running bridge: its listeners' addresses; dropping it stops accepting.
pub struct Server {
    addrs: Vec<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// The addresses the listeners are bound to (port 0 resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Binds the listeners and starts the bridge on the current tokio runtime; `to_engine`
/// and `from_engine` are the ends [`crate::runtime::Proxy::attach_bridge`] gave.
pub fn start(
    cfg: HttpConfig,
    to_engine: BridgeSender,
    from_engine: mpsc::UnboundedReceiver<FromEngine>,
    proxy: &ProxyConfig,
    metrics: HttpMetrics,
) -> io::Result<Server> {
    let acceptor = cfg.tls.as_ref().map(tls::acceptor).transpose()?;
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed).map_err(|e| io::Error::other(format!("randomness: {e}")))?;
    let shared = Arc::new(Shared {
        to_engine,
        pending: Mutex::new(HashMap::new()),
        endpoints: Mutex::new(HashMap::new()),
        next_token: AtomicU64::new(u64::from_be_bytes(seed)),
        requests: Arc::new(tokio::sync::Semaphore::new(cfg.max_requests)),
        multicast_timeout: proxy.options.multicast_timeout,
        reply_from: proxy.options.reply_from,
        max_datagram: proxy.limits.max_datagram,
        unicast_timeout: proxy.unicast.timeout,
        max_timeout: proxy
            .groups
            .iter()
            .map(|g| g.max_timeout)
            .max()
            .unwrap_or_default(),
        group_names: proxy.groups.iter().map(|g| g.name.clone()).collect(),
        metrics,
        cfg,
    });
    let mut tasks = vec![tokio::spawn(dispatch(shared.clone(), from_engine))];
    let mut addrs = Vec::new();
    let connections = Arc::new(tokio::sync::Semaphore::new(shared.cfg.max_connections));
    for a in &shared.cfg.listen {
        let l = std::net::TcpListener::bind(a)
            .map_err(|e| io::Error::new(e.kind(), format!("http listen {a}: {e}")))?;
        l.set_nonblocking(true)?;
        addrs.push(l.local_addr()?);
        let l = tokio::net::TcpListener::from_std(l)?;
        tasks.push(tokio::spawn(accept(
            l,
            shared.clone(),
            acceptor.clone(),
            connections.clone(),
        )));
    }
    Ok(Server { addrs, tasks })
}

/// Hands what the engine sent back to the request waiting for its token.
async fn dispatch(sh: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<FromEngine>) {
    while let Some(m) = rx.recv().await {
        let token = match &m {
            FromEngine::Datagram { bytes, .. } => match MessageView::parse(bytes) {
                Ok(v) => v.token().to_vec(),
                Err(_) => continue,
            },
            FromEngine::Handled { token, .. } => token.clone(),
        };
        let waiting = sh
            .pending
            .lock()
            .expect("not poisoned")
            .get(&token)
            .cloned();
        match waiting {
            Some(tx) => {
                let _ = tx.send(m);
            }
            // The HTTP request is over (T' passed, or its client went away).
            None => {
                if matches!(m, FromEngine::Datagram { .. }) {
                    sh.metrics.late.inc();
                }
            }
        }
    }
}

async fn accept(
    l: tokio::net::TcpListener,
    sh: Arc<Shared>,
    acceptor: Option<tls::Acceptor>,
    connections: Arc<tokio::sync::Semaphore>,
) {
    loop {
        let (tcp, peer) = match l.accept().await {
            Ok(c) => c,
            Err(e) => {
                // E.g. out of file descriptors: wait rather than spin.
                tracing::warn!(event = "http_accept_failed", error = %e);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            sh.metrics.refused.with_label_values(&["connections"]).inc();
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let sh = sh.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _permit = permit;
            sh.metrics.connections.inc();
            match acceptor {
                None => serve_connection(tcp, peer, peer.ip(), &sh).await,
                Some(a) => {
                    let hs = tokio::time::timeout(sh.cfg.header_read_timeout, a.accept(tcp)).await;
                    match hs {
                        Ok(Ok((stream, ip))) => {
                            let ip = ip.unwrap_or(peer.ip());
                            serve_connection(stream, peer, ip, &sh).await
                        }
                        _ => sh.metrics.refused.with_label_values(&["tls"]).inc(),
                    }
                }
            }
            sh.metrics.connections.dec();
        });
    }
}

async fn serve_connection<S>(stream: S, peer: SocketAddr, ip: IpAddr, sh: &Arc<Shared>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let from = SocketAddr::new(ip, peer.port());
    let svc_sh = sh.clone();
    let svc = hyper::service::service_fn(move |req| {
        let sh = svc_sh.clone();
        async move { Ok::<_, Infallible>(handle(req, from, sh).await) }
    });
    let r = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(sh.cfg.header_read_timeout)
        .max_buf_size(sh.cfg.max_header_bytes.max(8192))
        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
        .await;
    if let Err(e) = r {
        // A head too large (hyper answered 431), too slow, or a broken connection.
        let reason = if e.is_timeout() {
            "header_timeout"
        } else if e.is_parse_too_large() {
            "header_too_large"
        } else if e.is_parse() {
            "malformed"
        } else {
            "connection_error"
        };
        sh.metrics.refused.with_label_values(&[reason]).inc();
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(status: u16, headers: &[(&str, String)], body: Vec<u8>) -> Response<Body> {
    let mut r = Response::builder().status(status);
    for (n, v) in headers {
        r = r.header(*n, v.as_str());
    }
    r.body(Full::new(Bytes::from(body)).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn from_http(r: &HttpResponse) -> Response<Body> {
    full(r.status, &r.headers, r.body.clone())
}

/// One HTTP request, answered; counted by status and group.
async fn handle(req: Request<Incoming>, from: SocketAddr, sh: Arc<Shared>) -> Response<Body> {
    let (resp, group) = match translate_and_run(req, from, &sh).await {
        Ok(r) => r,
        Err(refusal) => (from_http(&HttpResponse::refusal(&refusal)), None),
    };
    let g = group
        .and_then(|g| sh.group_names.get(g).map(String::as_str))
        .unwrap_or("none");
    sh.metrics
        .requests
        .with_label_values(&[resp.status().as_str(), g])
        .inc();
    resp
}

/// Removes a request's token from the waiting ones when it ends, however it ends.
struct Registered {
    sh: Arc<Shared>,
    token: Vec<u8>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.sh
            .pending
            .lock()
            .expect("not poisoned")
            .remove(&self.token);
    }
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a [u8]> {
    req.headers().get(name).map(|v| v.as_bytes())
}

async fn translate_and_run(
    req: Request<Incoming>,
    from: SocketAddr,
    sh: &Arc<Shared>,
) -> Result<(Response<Body>, Option<usize>), Refusal> {
    let Ok(permit) = sh.requests.clone().try_acquire_owned() else {
        sh.metrics.refused.with_label_values(&["requests"]).inc();
        return Ok((
            full(
                503,
                &[("retry-after", "1".into())],
                b"too many HTTP requests in progress".to_vec(),
            ),
            None,
        ));
    };
    let code = translate::method_code(req.method().as_str())?;
    let target = translate::target_uri(&sh.cfg.prefix, req.uri().path(), req.uri().query())?;
    let text = |b: &[u8]| std::str::from_utf8(b).map(str::to_owned).ok();
    let multicast_timeout = header(&req, "multicast-timeout")
        .map(translate::multicast_timeout)
        .transpose()?;
    let oscore = header(&req, "oscore")
        .map(translate::oscore_option)
        .transpose()?;
    // RFC 8613 §11.2: a protected request's body is the ciphertext; its media type,
    // application/oscore, is the OSCORE option's business, not a Content-Format.
    let content_format = match (header(&req, "content-type").and_then(text), &oscore) {
        (Some(t), None) => Some(translate::content_format(&t)?),
        _ => None,
    };
    let accept_text = header(&req, "accept").and_then(text).unwrap_or_default();
    let accept = translate::accept(&accept_text);
    // An observation is streamed: its notifications come until the client disconnects.
    let observe = header(&req, "observe")
        .map(|v| translate::observe(v, code))
        .transpose()?
        .is_some();
    let stream = observe || translate::wants_stream(&accept_text);
    if let Some(n) = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && n > sh.cfg.max_body_bytes as u64
    {
        return Err(Refusal {
            status: 413,
            diagnostic: "request body too large",
        });
    }
    let body = tokio::time::timeout(
        sh.cfg.body_read_timeout,
        Limited::new(req.into_body(), sh.cfg.max_body_bytes).collect(),
    )
    .await;
    let payload = match body {
        Err(_) => {
            return Err(Refusal {
                status: 408,
                diagnostic: "request body not received in time",
            });
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Refusal {
                status: 413,
                diagnostic: "request body too large",
            });
        }
        Ok(Err(_)) => {
            return Err(Refusal {
                status: 400,
                diagnostic: "request body could not be read",
            });
        }
        Ok(Ok(b)) => b.to_bytes().to_vec(),
    };
    let request = CoapRequest {
        code,
        target,
        multicast_timeout,
        content_format,
        accept,
        oscore,
        payload,
        observe,
    };
    run(request, from, stream, permit, sh).await
}

/// The next Message ID toward `from`'s endpoint, if one is free.
fn next_mid(sh: &Shared, from: SocketAddr) -> Option<u16> {
    let now = Instant::now();
    let mut eps = sh.endpoints.lock().expect("not poisoned");
    if !eps.contains_key(&from) && eps.len() >= sh.cfg.max_endpoints {
        eps.retain(|_, e| now.saturating_duration_since(e.last) < NON_LIFETIME);
    }
    if !eps.contains_key(&from) && eps.len() >= sh.cfg.max_endpoints {
        return None;
    }
    let e = eps.entry(from).or_insert_with(|| {
        let mut s = [0u8; 2];
        let _ = getrandom::fill(&mut s);
        Endpoint {
            start: u16::from_be_bytes(s),
            issued: 0,
            blocks: VecDeque::new(),
            first: 0,
            last: now,
        }
    });
    e.next(now)
}

/// Sends the request to the engine and answers from what comes back.
async fn run(
    request: CoapRequest,
    from: SocketAddr,
    stream: bool,
    permit: tokio::sync::OwnedSemaphorePermit,
    sh: &Arc<Shared>,
) -> Result<(Response<Body>, Option<usize>), Refusal> {
    let Some(mid) = next_mid(sh, from) else {
        sh.metrics.refused.with_label_values(&["message_ids"]).inc();
        return Ok((
            full(
                503,
                &[("retry-after", "1".into())],
                b"no Message ID free toward this client endpoint".to_vec(),
            ),
            None,
        ));
    };
    let token = sh
        .next_token
        .fetch_add(1, Ordering::Relaxed)
        .to_be_bytes()
        .to_vec();
    let datagram = request.encode(mid, &token, sh.multicast_timeout);
    if datagram.len() > sh.max_datagram {
        return Err(Refusal {
            status: 413,
            diagnostic: "request larger than the proxy's datagram limit",
        });
    }
    let (tx, rx) = mpsc::unbounded_channel();
    sh.pending
        .lock()
        .expect("not poisoned")
        .insert(token.clone(), tx);
    let reg = Registered {
        sh: sh.clone(),
        token: token.clone(),
    };
    if !sh.to_engine.send(ToEngine { from, datagram }) {
        return Err(Refusal {
            status: 503,
            diagnostic: "the proxy is stopping",
        });
    }
    let mut w = Waiting {
        rx,
        // Until the engine says what it did: the request is handed over at once, so
        // this only guards against a forwarding thread that stopped.
        deadline: tokio::time::Instant::now() + sh.max_timeout + Duration::from_secs(5),
        requested: request.multicast_timeout,
        group: None,
        sh: sh.clone(),
        handled: false,
        answer: None,
        from,
        token,
        protected: request.oscore.is_some(),
        observe: request.observe,
        observing: false,
        last_mid: None,
        finished: false,
        exchange: false,
    };
    let mut parts: Vec<(Vec<u8>, HttpResponse)> = Vec::new();
    loop {
        match w.next().await {
            Step::Final(r) => return Ok((from_http(&r), w.group)),
            Step::End if parts.is_empty() => {
                return Ok((full(204, &[], Vec::new()), w.group));
            }
            Step::End => {
                let boundary = boundary();
                let mut body = Vec::new();
                for (_, p) in &parts {
                    body.extend_from_slice(&part(&boundary, p));
                }
                body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
                let ct = format!("multipart/mixed; boundary={boundary}");
                return Ok((full(200, &[("content-type", ct)], body), w.group));
            }
            Step::Part(key, r) if stream => {
                // Streamed: the head and this part now, each later one as it comes.
                let boundary = boundary();
                let (btx, brx) = mpsc::channel::<Bytes>(16);
                let _ = btx.try_send(Bytes::from(part(&boundary, &r)));
                sh.metrics.streamed.inc();
                let group = w.group;
                let ct = format!("multipart/mixed; boundary={boundary}");
                tokio::spawn(async move {
                    // A streamed request counts against max_requests until its end.
                    let (_reg, _permit) = (reg, permit);
                    // Until T' (a single response cannot follow parts), or for an
                    // observation until the client disconnects: hyper then drops the
                    // body, which closes the channel, and dropping `w` stops the
                    // exchange in the engine.
                    loop {
                        let step = tokio::select! {
                            s = w.next() => s,
                            _ = btx.closed() => return,
                        };
                        let Step::Part(_, r) = step else { break };
                        if btx.send(Bytes::from(part(&boundary, &r))).await.is_err() {
                            return; // the client went away
                        }
                    }
                    let _ = btx
                        .send(Bytes::from(format!("--{boundary}--\r\n").into_bytes()))
                        .await;
                });
                let _ = key;
                let resp = Response::builder()
                    .status(200)
                    .header("content-type", ct)
                    .body(ChannelBody(brx).boxed())
                    .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()));
                return Ok((resp, group));
            }
            Step::Part(key, r) => {
                // §9.6: a later response of the same server replaces its earlier one.
                match parts.iter_mut().find(|(k, _)| *k == key) {
                    Some(p) => p.1 = r,
                    None => parts.push((key, r)),
                }
            }
        }
    }
}

fn boundary() -> String {
    let mut b = [0u8; 12];
    let _ = getrandom::fill(&mut b);
    format!("groxy-{}", hex::encode(b))
}

/// One `application/http` batch part (§9.6 step 2), with the CRLF that precedes the
/// next delimiter (RFC 2046 §5.1.1).
fn part(boundary: &str, r: &HttpResponse) -> Vec<u8> {
    let mut p = format!("--{boundary}\r\ncontent-type: application/http\r\n\r\n").into_bytes();
    p.extend_from_slice(&r.to_message());
    p.extend_from_slice(b"\r\n");
    p
}

/// A body fed by a channel: each message one chunk, flushed as it comes.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

enum Step {
    /// A device's response (Reply-From present), keyed by its Reply-From.
    Part(Vec<u8>, HttpResponse),
    /// A single response: the proxy's own (an error) or a unicast origin's.
    Final(HttpResponse),
    /// T' passed.
    End,
}

struct Waiting {
    rx: mpsc::UnboundedReceiver<FromEngine>,
    deadline: tokio::time::Instant,
    requested: Option<u32>,
    group: Option<usize>,
    sh: Arc<Shared>,
    /// Whether the engine's account of the request (`Handled`) came.
    handled: bool,
    /// The single response that came before it.
    answer: Option<HttpResponse>,
    /// The engine-side client address and the token: what an Early Stop names.
    from: SocketAddr,
    token: Vec<u8>,
    /// Whether the request carried OSCORE (its Early Stop would need its protection).
    protected: bool,
    /// An observation was asked for; `observing` once a device answered 2.xx with
    /// Observe (RFC 7641 §3.2): then the stream outlives T'.
    observe: bool,
    observing: bool,
    /// The Message ID of the latest NON response the engine relayed (an RST to it ends
    /// the exchange, groupcomm-proxy §5.2.3).
    last_mid: Option<u16>,
    /// The exchange ended in the engine's account (T' passed, a single response): no
    /// Early Stop is needed when this is dropped.
    finished: bool,
    /// The engine made an exchange of it (a fan-out or a unicast forward); a request it
    /// refused or dropped has nothing to stop.
    exchange: bool,
}

/// Far enough ahead to mean never, without overflowing `Instant`.
const OBSERVING: Duration = Duration::from_secs(100 * 365 * 86_400);

impl Drop for Waiting {
    /// A request dropped before its end (the HTTP client disconnected: hyper drops the
    /// handler, or the streamed body's channel closes) is stopped in the engine, as a
    /// CoAP client that loses interest would (groupcomm-proxy §5.1.3, §5.2.3; for an
    /// observation that deregisters it from the group, RFC 7641 §3.6): an Early Stop
    /// Request (GET, the token, Multicast-Timeout 0) for an unprotected request; for a
    /// protected one (whose Early Stop would need the client's protection) an RST to the
    /// latest response relayed. A protected request that got no response yet cannot be
    /// stopped: it runs to T'.
    fn drop(&mut self) {
        if self.finished || !self.exchange {
            return;
        }
        let Some(mid) = next_mid(&self.sh, self.from) else {
            return;
        };
        use crate::coap::build;
        let datagram = match (self.protected, self.last_mid) {
            (false, _) => build::encode(
                build::NON,
                build::code::GET,
                mid,
                &self.token,
                &mut [(self.sh.multicast_timeout, &[][..])],
                &[],
            ),
            (true, Some(m)) => build::encode(build::RST, build::code::EMPTY, m, &[], &mut [], &[]),
            (true, None) => return,
        };
        self.sh.metrics.stopped.inc();
        let _ = self.sh.to_engine.send(ToEngine {
            from: self.from,
            datagram,
        });
    }
}

impl Waiting {
    async fn next(&mut self) -> Step {
        loop {
            // T' = 0 (§9.5: 204 right after the fan-out) or passed: no timer round.
            let due = self.handled && self.rx.is_empty();
            let m = if due && self.deadline <= tokio::time::Instant::now() {
                None
            } else {
                tokio::select! {
                    m = self.rx.recv() => m,
                    _ = tokio::time::sleep_until(self.deadline) => None,
                }
            };
            let Some(m) = m else {
                // T' passed: an observation a device confirmed goes on (RFC 7641 §3.2,
                // groupcomm-proxy §5.4.2); the engine keeps it too.
                if self.observing && !self.rx.is_closed() {
                    self.deadline = tokio::time::Instant::now() + OBSERVING;
                    continue;
                }
                self.finished = true;
                return Step::End;
            };
            match m {
                FromEngine::Datagram { bytes, .. } => {
                    let Ok(v) = MessageView::parse(&bytes) else {
                        continue;
                    };
                    use crate::coap::build;
                    match v.mtype() {
                        // The interest check (RFC 7641 §4.5): the client is still here.
                        build::CON => {
                            let ack = build::encode(
                                build::ACK,
                                build::code::EMPTY,
                                v.message_id(),
                                &[],
                                &mut [],
                                &[],
                            );
                            let _ = self.sh.to_engine.send(ToEngine {
                                from: self.from,
                                datagram: ack,
                            });
                        }
                        build::NON => self.last_mid = Some(v.message_id()),
                        _ => {}
                    }
                    if self.observe
                        && v.code() >> 5 == 2
                        && v.option(crate::coap::options::OBSERVE).is_some()
                    {
                        self.observing = true;
                    }
                    let r = translate::response(&v, self.sh.reply_from, self.sh.multicast_timeout);
                    match v.option(self.sh.reply_from) {
                        Some(rf) => return Step::Part(rf.to_vec(), r),
                        // Given once the engine's account of the request is in too (it
                        // follows at once; it names the group for the metrics).
                        // An observation of a unicast origin: one response, and the
                        // engine's observation stopped when the client goes.
                        None if self.handled => {
                            self.finished = !self.observing;
                            return Step::Final(r);
                        }
                        None => self.answer = Some(r),
                    }
                }
                FromEngine::Handled { outcome, at, .. } => {
                    self.handled = true;
                    let at = tokio::time::Instant::from_std(at);
                    match outcome {
                        Outcome::FanOut { group, timeout } => {
                            self.exchange = true;
                            self.group = Some(group);
                            self.deadline = at + timeout;
                        }
                        // The engine answers 5.04 at its deadline; this is a backstop.
                        Outcome::Unicast => {
                            self.exchange = true;
                            self.deadline = at + self.sh.unicast_timeout + Duration::from_secs(2)
                        }
                        Outcome::Other { group } => {
                            // Answered already (an error came first), or dropped without
                            // an answer (the signature filter): the client then learns
                            // what a CoAP client would, nothing until T'.
                            self.group = group;
                            let t = Duration::from_secs(self.requested.unwrap_or(0).into())
                                .min(self.sh.max_timeout);
                            self.deadline = at + t;
                        }
                    }
                    if let Some(r) = self.answer.take() {
                        self.finished = !self.observing;
                        return Step::Final(r);
                    }
                }
            }
        }
    }
}
