//! `groxy client`: one request via the proxy, each response printed as it arrives.

use std::time::Duration;

use crate::coap::build::code;
use crate::tools::client::{ClientRequest, Response, run_with};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Target URI, e.g. coap://224.0.1.187/hello or coap://all-coap-nodes/hello.
    pub uri: String,
    /// The proxy's address.
    #[arg(long, default_value = "127.0.0.1:5683")]
    pub proxy: String,
    /// Multicast-Timeout in seconds: how long the proxy relays responses.
    #[arg(long, default_value_t = 5)]
    pub timeout: u32,
    #[arg(long, default_value = "GET")]
    pub method: String,
    #[arg(long)]
    pub payload: Option<String>,
    /// Send a Confirmable request.
    #[arg(long)]
    pub con: bool,
    /// Use Proxy-Uri instead of Proxy-Scheme + Uri-* options.
    #[arg(long)]
    pub proxy_uri: bool,
    /// One JSON object per response on stdout.
    #[arg(long)]
    pub json: bool,
    /// Protect the request in group mode with this member context (a TOML file, see
    /// config/member.toml) and verify every response.
    #[arg(long)]
    pub oscore: Option<std::path::PathBuf>,
    /// With --oscore: also protect the hop to the proxy in pairwise mode; the proxy is the
    /// group member with this Sender ID (hex).
    #[arg(long, requires = "oscore")]
    pub proxy_kid: Option<String>,
    /// Observe the resource (RFC 7641): print every notification as it arrives until
    /// Ctrl-C or --count, then deregister and exit 0.
    #[arg(long)]
    pub observe: bool,
    /// With --observe: stop after this many notifications and responses.
    #[arg(long, requires = "observe")]
    pub count: Option<u64>,
    /// Ask for block-wise transfer in blocks of this many bytes (16 to 1024) and print
    /// each server's representation whole (RFC 7959).
    #[arg(long)]
    pub block_size: Option<u16>,
    /// Send to the target itself, not through a proxy (--proxy is ignored; the URI's
    /// host must be an IP address).
    #[arg(long, conflicts_with = "proxy_kid")]
    pub direct: bool,
    /// With --oscore: send a Deterministic Request (cacheable-oscore §3.4.2) as the
    /// group's Deterministic Client, this Sender ID (hex), instead of in group mode:
    /// the same request is the same bytes from every member, so a proxy may cache the
    /// (signed) responses. Only GET and FETCH.
    #[arg(long, requires = "oscore", conflicts_with_all = ["proxy_kid", "observe", "block_size", "http"])]
    pub deterministic: Option<String>,
    /// The target is an HTTP URL of the proxy's HTTP-to-CoAP bridge, e.g.
    /// http://127.0.0.1:8080/hc/coap://224.0.1.187/hello (groupcomm-proxy §9).
    #[arg(long, conflicts_with_all = ["proxy_kid", "con", "proxy_uri"])]
    pub http: bool,
}

fn method(m: &str) -> Result<u8, String> {
    Ok(match m.to_ascii_uppercase().as_str() {
        "GET" => code::GET,
        "POST" => code::POST,
        "PUT" => 0x03,
        "DELETE" => 0x04,
        "FETCH" => 0x05,
        _ => return Err(format!("unknown method {m}")),
    })
}

pub(crate) fn print(r: &Response, json: bool) {
    print_from(r, json, "the proxy")
}

/// [`print`], naming a response without Reply-From `unnamed` (the proxy, or with
/// `--direct` the server itself).
fn print_from(r: &Response, json: bool, unnamed: &str) {
    let from = r.reply_from.map(|a| a.to_string());
    let text = std::str::from_utf8(&r.payload).ok();
    let security = match &r.oscore {
        None => serde_json::Value::Null,
        Some(Ok((mode, kid))) => serde_json::json!({
            "verified": true,
            "mode": if *mode == crate::oscore::Mode::Group { "group" } else { "pairwise" },
            "kid": hex::encode(kid),
        }),
        Some(Err(e)) => serde_json::json!({ "verified": false, "error": e }),
    };
    if json {
        let mut o = serde_json::json!({
            "code": code::dotted(r.code),
            "reply_from": from,
            "observe": r.observe,
            "elapsed_ms": r.elapsed.as_millis() as u64,
            "oscore": security,
        });
        match text {
            Some(t) => o["payload"] = t.into(),
            None => o["payload_hex"] = hex::encode(&r.payload).into(),
        }
        println!("{o}");
    } else {
        let p = text
            .map(str::to_string)
            .unwrap_or_else(|| format!("0x{}", hex::encode(&r.payload)));
        let sec = match &r.oscore {
            None => String::new(),
            Some(Ok((mode, kid))) => {
                format!(" [verified, {mode:?} mode, kid {}]", hex::encode(kid))
            }
            Some(Err(e)) => format!(" [NOT verified: {e}]"),
        };
        let seq = r
            .observe
            .map(|n| format!(" observe {n}"))
            .unwrap_or_default();
        println!(
            "{} from {} after {} ms{seq}{sec}: {p}",
            code::dotted(r.code),
            from.as_deref().unwrap_or(unnamed),
            r.elapsed.as_millis()
        );
    }
}

pub(crate) fn run(a: Args) -> Result<(), String> {
    if a.http {
        return run_http(a);
    }
    let mut req = ClientRequest::get(super::parse_addr(&a.proxy)?, &a.uri, a.timeout);
    req.method = method(&a.method)?;
    req.payload = a.payload.unwrap_or_default().into_bytes();
    req.confirmable = a.con;
    req.proxy_uri = a.proxy_uri;
    req.margin = Duration::from_secs(1);
    req.observe = a.observe;
    if let Some(n) = a.block_size {
        crate::tools::client::szx_of(n).map_err(|e| format!("--block-size: {e}"))?;
        req.block_size = Some(n);
    }
    if a.direct {
        req.direct = true;
        req.proxy = direct_target(&a.uri)?;
    }
    if let Some(k) = &a.proxy_kid {
        req.proxy_kid = Some(hex::decode(k).map_err(|_| format!("--proxy-kid {k}: not hex"))?);
    }
    if let Some(f) = &a.oscore {
        req.oscore =
            Some(crate::settings::security::MemberFile::load(f).map_err(|e| e.join("\n"))?);
        req.first_ssn = reserve_ssn(f)?;
        req.member_file = Some(f.clone());
    }
    if let Some(k) = &a.deterministic {
        req.deterministic =
            Some(hex::decode(k).map_err(|_| format!("--deterministic {k}: not hex"))?);
    }
    let json = a.json;
    let rt = super::runtime()?;
    let count = a.count;
    let target = req.proxy.to_string();
    let unnamed = if a.direct {
        target.as_str()
    } else {
        "the proxy"
    };
    let mut seen = 0u64;
    let got = rt
        .block_on(run_with(
            &req,
            |r| {
                print_from(r, json, unnamed);
                seen += 1;
                count.is_none_or(|c| seen < c)
            },
            super::shutdown_signal(),
        ))
        .map_err(|e| e.to_string())?;
    if !json {
        eprintln!("{got} response(s)");
    }
    Ok(())
}

/// The address of the target of `--direct`: its IP literal and port (5683 by default).
fn direct_target(uri: &str) -> Result<std::net::SocketAddr, String> {
    use crate::coap::uri::{Host, parse_proxy_uri};
    let t = parse_proxy_uri(uri.as_bytes()).map_err(|e| format!("{uri}: {e}"))?;
    match t.host {
        Host::Ip(ip) => Ok((ip, t.port.unwrap_or(5683)).into()),
        Host::Name(n) => Err(format!("--direct needs an IP address, not {n}")),
    }
}

/// Sequence numbers one invocation may use at most.
const SSN_PER_RUN: u64 = 1000;

/// Every run continues above the numbers of the last (`<member file>.ssn` next to the
/// member file), reserving its own block on disk before sending anything, so that no
/// two runs ever send the same Partial IV (RFC 10021 §5.3, §2.6.1.1).
fn reserve_ssn(member_file: &std::path::Path) -> Result<u64, String> {
    let dir = member_file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let stem = member_file
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| format!("{}: no file name", member_file.display()))?;
    let path = dir.join(format!("{stem}.ssn"));
    let next = match std::fs::read_to_string(&path) {
        Ok(t) => t
            .trim()
            .parse::<u64>()
            .map_err(|_| format!("{}: not a number", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    crate::runtime::state::write(dir, stem, next + SSN_PER_RUN, None)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(next)
}

/// `groxy client --http URL`: through the HTTP bridge, each part printed as it arrives.
fn run_http(a: Args) -> Result<(), String> {
    use crate::tools::client::http::{HttpClientRequest, run_http};
    let mut req = HttpClientRequest {
        url: a.uri.clone(),
        method: method(&a.method)?,
        payload: a.payload.unwrap_or_default().into_bytes(),
        timeout: a.timeout,
        oscore: None,
        first_ssn: 0,
    };
    if let Some(f) = &a.oscore {
        req.oscore =
            Some(crate::settings::security::MemberFile::load(f).map_err(|e| e.join("\n"))?);
        req.first_ssn = reserve_ssn(f)?;
    }
    let json = a.json;
    let rt = super::runtime()?;
    let got = rt.block_on(run_http(&req, |r| print(r, json)))?;
    if !json {
        eprintln!("HTTP {}: {} response(s)", got.status, got.responses.len());
    }
    Ok(())
}
