//! A reference relay that knows no CoAP (`--floor`): datagrams from a client go to the
//! origin unchanged, datagrams from the origin go to the client that sent the request
//! with that token (the generator's tokens are 8 bytes at a fixed place: a lookup, not
//! CoAP parsing). It is run in place
//! of a proxy, under the same taskset, to show what the kernel's UDP path alone costs per
//! forwarded request on this machine: with one recvfrom/sendto per datagram, with
//! recvmmsg/sendmmsg batches, and with those batches' runs of equal-size datagrams sent
//! as one message with UDP_SEGMENT (as groxy's driver does). No proxy can beat its
//! figures with the same syscalls.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use super::net::{self, Batch};

/// How the relay moves datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// recvfrom/sendto, one datagram per call.
    Single,
    /// recvmmsg/sendmmsg.
    Batched,
    /// recvmmsg/sendmmsg, runs of equal-size datagrams coalesced with UDP_SEGMENT.
    Segmented,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Single => "single",
            Mode::Batched => "mmsg",
            Mode::Segmented => "gso",
        }
    }

    pub fn from_name(s: &str) -> Option<Mode> {
        [Mode::Single, Mode::Batched, Mode::Segmented]
            .into_iter()
            .find(|m| m.name() == s)
    }
}

pub fn run(listen: SocketAddrV4, origin: SocketAddrV4, mode: Mode) -> ! {
    let segment = mode == Mode::Segmented;
    let batched = mode != Mode::Single;
    let l = net::udp(listen).expect("forwarder listen socket");
    let u = net::udp(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)).expect("forwarder socket");
    let (lfd, ufd) = (net::fd(&l), net::fd(&u));
    // Token -> client (the generator keeps a few thousand in flight at most).
    let mut clients: std::collections::HashMap<u64, SocketAddrV4> = Default::default();
    let token = |d: &[u8]| {
        d.get(4..12)
            .map(|t| u64::from_be_bytes(t.try_into().unwrap()))
    };
    let remember = |clients: &mut std::collections::HashMap<u64, SocketAddrV4>,
                    d: &[u8],
                    from: SocketAddrV4| {
        if clients.len() > 1 << 16 {
            clients.clear();
        }
        if let Some(t) = token(d) {
            clients.insert(t, from);
        }
    };
    let mut rb = Batch::new();
    let mut sb = Batch::new();
    let mut buf = vec![0u8; net::BUF];
    loop {
        net::wait_readable(&[lfd, ufd], -1);
        loop {
            let mut any = false;
            if batched {
                let n = rb.recv(lfd);
                for i in 0..n {
                    let (d, from) = rb.get(i);
                    remember(&mut clients, d, from);
                    sb.push(origin, |b| {
                        b[..d.len()].copy_from_slice(d);
                        d.len()
                    });
                }
                sb.flush_as(ufd, segment);
                any |= n > 0;
                let n = rb.recv(ufd);
                for i in 0..n {
                    let (d, _) = rb.get(i);
                    if let Some(&c) = token(d).and_then(|t| clients.get(&t)) {
                        sb.push(c, |b| {
                            b[..d.len()].copy_from_slice(d);
                            d.len()
                        });
                    }
                }
                sb.flush_as(lfd, segment);
                any |= n > 0;
            } else {
                loop {
                    match l.recv_from(&mut buf) {
                        Ok((n, SocketAddr::V4(from))) => {
                            remember(&mut clients, &buf[..n], from);
                            let _ = u.send_to(&buf[..n], origin);
                            any = true;
                        }
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => {}
                    }
                }
                loop {
                    match u.recv_from(&mut buf) {
                        Ok((n, _)) => {
                            if let Some(&c) = token(&buf[..n]).and_then(|t| clients.get(&t)) {
                                let _ = l.send_to(&buf[..n], c);
                            }
                            any = true;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => {}
                    }
                }
            }
            if !any {
                break;
            }
        }
    }
}
