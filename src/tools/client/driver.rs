//! The socket loop of `groxy client`: one UDP socket, the clock and the randomness the
//! sans-I/O [`Client`] is given, nothing of the protocol.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use tokio::net::UdpSocket;

use super::protocol::{Client, ClientEvent, End};
use super::{ClientRequest, Response};

/// Sends the request and calls `each` for every response until the request ends: T has
/// passed (T' + margin), the proxy reset it, or a CON went unacknowledged.
pub async fn run(
    req: &ClientRequest,
    mut each: impl FnMut(&Response),
) -> io::Result<Vec<Response>> {
    let bind: SocketAddr = if req.proxy.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| io::Error::other(e.to_string()))?;
    let mut client = Client::for_request(req, seed).map_err(io::Error::other)?;
    client
        .request(Instant::now(), req)
        .map_err(io::Error::other)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        while let Some(d) = client.poll_transmit() {
            sock.send_to(&d.bytes, d.to).await?;
        }
        while let Some(e) = client.poll_event() {
            match e {
                ClientEvent::Response { response, .. } => {
                    each(&response);
                    out.push(response);
                }
                ClientEvent::Ended { end, .. } => {
                    // The Multicast-Timeout is the normal end; the others say the proxy
                    // never took the request.
                    match end {
                        End::Timeout => tracing::debug!(event = "request_ended", ?end),
                        End::GaveUp | End::Reset => tracing::warn!(event = "request_ended", ?end),
                    }
                    return Ok(out);
                }
                ClientEvent::EchoRetry { .. } => tracing::debug!(event = "echo_retry"),
                ClientEvent::Discarded { from, why } => {
                    tracing::debug!(event = "discarded", %from, ?why)
                }
            }
        }
        // A request is open until its Ended event, and an open request has a deadline.
        let Some(wake) = client.poll_timeout() else {
            return Ok(out);
        };
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let (n, from) = r?;
                client.handle(Instant::now(), from, &buf[..n]);
            }
            _ = tokio::time::sleep_until(wake.into()) => client.handle_timeout(Instant::now()),
        }
    }
}
