//! A simulated group member for demos, tests and load runs: joins a multicast group,
//! answers a few resources from its own unicast address (RFC 10020 §3.1).

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::coap::MessageView;
use crate::coap::build::{self, ACK, CON, NON, code};
use crate::coap::options as opt;
use crate::oscore::{ContextConfig, GroupMember, Mode, SecurityContext};
use crate::runtime::sockets::{self, Interface};

/// What a simulated device is and how it answers.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// In the answer to /hello (`hello from NAME`) and in log lines.
    pub name: String,
    /// Multicast group address and port to join.
    pub group: SocketAddr,
    /// The interface the group is joined on.
    pub interface: Interface,
    /// Unicast address the device answers from (and serves unicast requests on).
    pub bind: SocketAddr,
    /// Responses to group requests wait a random time up to this (RFC 10020 §3.6.1's
    /// Leisure), spreading the answers of many devices.
    pub leisure: Duration,
    /// A fixed delay before every answer to a group request (a slow device).
    pub delay: Duration,
    /// Group OSCORE membership: requests must be protected, and responses are protected
    /// in this mode (aiocoap answers group-mode requests in pairwise mode).
    pub oscore: Option<(ContextConfig, Mode)>,
}

/// A member's answer: verify the request (RFC 10021 §7.2, §8.4), answer the plaintext,
/// protect the answer. Nothing goes back for a request that fails, as servers send no
/// error responses to group requests (§7, RFC 10020 §3.1.2).
fn respond_protected(
    member: &mut GroupMember,
    mode: Mode,
    name: &str,
    request: &[u8],
    multicast: bool,
) -> Option<Vec<u8>> {
    let (plain, mut ex) = member.unprotect_request(request).ok()?;
    let answer = respond(name, &plain, multicast)?;
    // A pairwise request gets a pairwise answer; a group request the configured mode.
    let mode = if ex.mode == Mode::Pairwise {
        Mode::Pairwise
    } else {
        mode
    };
    member.protect_response(&answer, &mut ex, mode, false).ok()
}

/// What a device answers to a request, or nothing. Error responses to group requests are
/// suppressed (RFC 10020 §3.1.2).
pub fn respond(name: &str, request: &[u8], multicast: bool) -> Option<Vec<u8>> {
    let v = MessageView::parse(request).ok()?;
    if !v.is_request() || !matches!(v.mtype(), CON | NON) {
        return None;
    }
    let path: Vec<&[u8]> = v
        .options()
        .filter(|(n, _)| *n == opt::URI_PATH)
        .map(|(_, p)| p)
        .collect();
    let text_plain = opt::uint_value(0);
    let link_format = opt::uint_value(40);
    let (c, payload, cf): (u8, Vec<u8>, Option<&[u8]>) = match (v.code(), path.as_slice()) {
        (code::GET, [b".well-known", b"core"]) => (
            code::CONTENT,
            b"</hello>;rt=\"groxy.hello\",</echo>".to_vec(),
            Some(&link_format),
        ),
        (code::GET, [b"hello"]) => (
            code::CONTENT,
            format!("hello from {name}").into_bytes(),
            Some(&text_plain),
        ),
        (code::POST, [b"echo"]) => (code::CHANGED, v.payload().to_vec(), None),
        (_, [b"hello"] | [b"echo"]) if !multicast => (code::METHOD_NOT_ALLOWED, Vec::new(), None),
        _ if multicast => return None,
        _ => (code::NOT_FOUND, Vec::new(), None),
    };
    let mut opts: Vec<(u16, &[u8])> = Vec::new();
    if let Some(cf) = cf {
        opts.push((opt::CONTENT_FORMAT, cf));
    }
    // NON for NON; a CON gets a piggybacked ACK (RFC 7252 §5.2.1).
    let (t, mid) = if v.mtype() == CON {
        (ACK, v.message_id())
    } else {
        (NON, v.message_id() ^ 0x5a5a)
    };
    Some(build::encode(t, c, mid, v.token(), &mut opts, &payload))
}

/// A simulated group member: its sockets and, with OSCORE, its member contexts.
pub struct Device {
    cfg: DeviceConfig,
    member: Option<GroupMember>,
    group_socket: UdpSocket,
    unicast: Arc<UdpSocket>,
    log_requests: bool,
}

impl Device {
    /// Joins the group and binds the unicast socket.
    pub fn bind(cfg: DeviceConfig) -> io::Result<Self> {
        let g = sockets::multicast_receiver(cfg.group, &cfg.interface)
            .map_err(|e| io::Error::new(e.kind(), format!("join {}: {e}", cfg.group)))?;
        let u = sockets::shared_unicast(cfg.bind)
            .map_err(|e| io::Error::new(e.kind(), format!("bind {}: {e}", cfg.bind)))?;
        let member = match &cfg.oscore {
            Some((c, _)) => Some(GroupMember::new(
                SecurityContext::new(c).map_err(|e| io::Error::other(e.to_string()))?,
            )),
            None => None,
        };
        Ok(Device {
            member,
            group_socket: UdpSocket::from_std(g)?,
            unicast: Arc::new(UdpSocket::from_std(u)?),
            cfg,
            log_requests: false,
        })
    }

    /// Prints one JSON line per received datagram on stdout (`groxy device
    /// --log-requests`): the device's name, the sender, the socket it came in on (`group`
    /// or `unicast`), the datagram in hex, and whether the device answers it. Lets a test
    /// show from the device's side what reached it, and what did not.
    pub(crate) fn log_requests(&mut self, on: bool) {
        self.log_requests = on;
    }

    pub(crate) fn unicast_addr(&self) -> io::Result<SocketAddr> {
        self.unicast.local_addr()
    }

    /// Serves until the task is dropped.
    pub async fn run(mut self) -> io::Result<()> {
        let mut gbuf = vec![0u8; 2048];
        let mut ubuf = vec![0u8; 2048];
        // Leisure jitter: seeded per device so that devices on one host spread out.
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        let mut rng = u64::from_ne_bytes(seed) | 1;
        loop {
            let (n, from, multicast) = tokio::select! {
                r = self.group_socket.recv_from(&mut gbuf) => { let (n, f) = r?; (n, f, true) }
                r = self.unicast.recv_from(&mut ubuf) => { let (n, f) = r?; (n, f, false) }
            };
            let req = if multicast { &gbuf[..n] } else { &ubuf[..n] };
            let resp = match (&mut self.member, &self.cfg.oscore) {
                (Some(m), Some((_, mode))) => {
                    respond_protected(m, *mode, &self.cfg.name, req, multicast)
                }
                _ => respond(&self.cfg.name, req, multicast),
            };
            if self.log_requests {
                let line = serde_json::json!({
                    "device": self.cfg.name,
                    "from": from.to_string(),
                    "via": if multicast { "group" } else { "unicast" },
                    "bytes": hex::encode(req),
                    "answered": resp.is_some(),
                });
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}").and_then(|()| out.flush());
            }
            let Some(resp) = resp else {
                continue;
            };
            if multicast && !(self.cfg.leisure.is_zero() && self.cfg.delay.is_zero()) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let delay =
                    self.cfg.delay + self.cfg.leisure.mul_f64((rng % 10_000) as f64 / 10_000.0);
                let sock = self.unicast.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = sock.send_to(&resp, from).await;
                });
            } else {
                let _ = self.unicast.send_to(&resp, from).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc10020_s3_1_2_no_error_responses_to_group_requests() {
        let get = |path: &[u8], t| {
            build::encode(t, code::GET, 1, &[9], &mut [(opt::URI_PATH, path)], &[])
        };
        let r = respond("d1", &get(b"hello", NON), true).unwrap();
        let v = MessageView::parse(&r).unwrap();
        assert_eq!(
            (v.code(), v.payload(), v.token(), v.mtype()),
            (code::CONTENT, &b"hello from d1"[..], &[9u8][..], NON)
        );
        assert!(respond("d1", &get(b"missing", NON), true).is_none());
        let r = respond("d1", &get(b"missing", CON), false).unwrap();
        let v = MessageView::parse(&r).unwrap();
        assert_eq!(
            (v.code(), v.mtype(), v.message_id()),
            (code::NOT_FOUND, ACK, 1)
        );
        let post = build::encode(
            NON,
            code::POST,
            2,
            &[1],
            &mut [(opt::URI_PATH, &b"echo"[..])],
            b"ping",
        );
        assert_eq!(
            MessageView::parse(&respond("d", &post, true).unwrap())
                .unwrap()
                .payload(),
            b"ping"
        );
    }
}
