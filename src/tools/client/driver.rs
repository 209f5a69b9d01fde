//! The socket loop of `groxy client`: one UDP socket, the clock and the randomness the
//! sans-I/O [`Client`] is given, nothing of the protocol.

use std::future::Future;
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
    let mut out = Vec::new();
    run_with(
        req,
        |r| {
            each(r);
            out.push(r.clone());
            true
        },
        std::future::pending(),
    )
    .await?;
    Ok(out)
}

/// [`run`] for an observation too: `each` returns false when it has had enough, or
/// `stop` resolves (Ctrl-C); an observation is then deregistered (RFC 7641 §3.6) and the
/// loop waits for the end of that. Returns the number of responses.
pub async fn run_with(
    req: &ClientRequest,
    mut each: impl FnMut(&Response) -> bool,
    stop: impl Future<Output = ()>,
) -> io::Result<usize> {
    let bind: SocketAddr = if req.proxy.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).await?;
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| io::Error::other(e.to_string()))?;
    let mut client = Client::for_request(req, seed).map_err(io::Error::other)?;
    let id = client
        .request(Instant::now(), req)
        .map_err(io::Error::other)?;
    let mut count = 0;
    let mut stopping = false;
    let mut hangup = match (&req.oscore, &req.member_file) {
        (Some(_), Some(_)) => Some(tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::hangup(),
        )?),
        _ => None,
    };
    let mut buf = vec![0u8; 65_536];
    tokio::pin!(stop);
    loop {
        while let Some(d) = client.poll_transmit() {
            sock.send_to(&d.bytes, d.to).await?;
        }
        while let Some(e) = client.poll_event() {
            match e {
                ClientEvent::Response { response, .. } => {
                    count += 1;
                    if !each(&response) && !stopping {
                        stopping = true;
                        if !req.observe {
                            return Ok(count);
                        }
                        client
                            .deregister(Instant::now(), id)
                            .map_err(io::Error::other)?;
                    }
                }
                ClientEvent::Ended { end, .. } => {
                    // The Multicast-Timeout and a deregistration are the normal ends; the
                    // others say the proxy never took the request.
                    match end {
                        End::Timeout | End::Deregistered => {
                            tracing::debug!(event = "request_ended", ?end)
                        }
                        End::GaveUp | End::Reset => tracing::warn!(event = "request_ended", ?end),
                    }
                    return Ok(count);
                }
                ClientEvent::EchoRetry { .. } => tracing::debug!(event = "echo_retry"),
                ClientEvent::Discarded { from, why } => {
                    tracing::debug!(event = "discarded", %from, ?why)
                }
            }
        }
        // The deregistration went out with the datagrams above.
        while let Some(d) = client.poll_transmit() {
            sock.send_to(&d.bytes, d.to).await?;
        }
        // A request is open until its Ended event; an open observation may have no
        // deadline of its own.
        if client.open_requests() == 0 {
            return Ok(count);
        }
        let wake = client.poll_timeout();
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let (n, from) = r?;
                client.handle(Instant::now(), from, &buf[..n]);
            }
            _ = sleep_until(wake) => client.handle_timeout(Instant::now()),
            _ = async { hangup.as_mut().expect("guarded").recv().await }, if hangup.is_some() => {
                rekey(&mut client, req);
            }
            _ = &mut stop, if !stopping => {
                stopping = true;
                if !req.observe {
                    return Ok(count);
                }
                client.deregister(Instant::now(), id).map_err(io::Error::other)?;
            }
        }
    }
}

/// SIGHUP: the member file again, as the group's next key epoch.
fn rekey(client: &mut Client, req: &ClientRequest) {
    let Some(file) = &req.member_file else {
        return;
    };
    let next = crate::settings::security::MemberFile::load(file)
        .map_err(|e| e.join("; "))
        .and_then(|c| crate::oscore::SecurityContext::new(&c).map_err(|e| e.to_string()))
        .and_then(|ctx| client.rekey(ctx));
    match next {
        Ok(()) => tracing::info!(event = "rekeyed", file = %file.display()),
        Err(e) => tracing::warn!(event = "rekey_refused", error = %e),
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}
