//! A reference relay that knows no CoAP (`--floor`): datagrams from the client go to the
//! origin unchanged, datagrams from the origin go to the last client. It is run in place
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
    let mut client = None;
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
                    client = Some(from);
                    sb.push(origin, |b| {
                        b[..d.len()].copy_from_slice(d);
                        d.len()
                    });
                }
                sb.flush_as(ufd, segment);
                any |= n > 0;
                let n = rb.recv(ufd);
                if let Some(c) = client {
                    for i in 0..n {
                        let (d, _) = rb.get(i);
                        sb.push(c, |b| {
                            b[..d.len()].copy_from_slice(d);
                            d.len()
                        });
                    }
                    sb.flush_as(lfd, segment);
                }
                any |= n > 0;
            } else {
                loop {
                    match l.recv_from(&mut buf) {
                        Ok((n, SocketAddr::V4(from))) => {
                            client = Some(from);
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
                            if let Some(c) = client {
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
