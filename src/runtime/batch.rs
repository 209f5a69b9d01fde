//! Datagrams in and out in batches: one `recvmmsg` takes up to [`BATCH`] datagrams off a
//! socket and one `sendmmsg` puts a socket's queued datagrams on the wire. Under load
//! most of a forwarding proxy's time is the kernel's per-call cost, so fewer calls is
//! the largest saving there is (see `benches/load.rs`).
//!
//! Both work on non-blocking sockets and return `WouldBlock` like the single calls, so
//! the tokio readiness protocol is kept: wrap them in `UdpSocket::try_io`.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams per call. 32 covers the bursts seen under load (16 requests outstanding
/// per client, each with its fan-out) without much memory.
pub const BATCH: usize = 32;
/// A slot holds any UDP datagram, so that nothing arrives cut short.
const SLOT: usize = 65_536;

/// Receive buffers for one batch and the addresses they came from.
pub struct RecvBatch {
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// (slot, source, length) of each datagram of the last batch.
    got: Vec<(usize, SocketAddr, usize)>,
}

// SAFETY: the raw pointers in `iovs` and `hdrs` point into the heap buffers of this
// value's own vectors, which are never resized after `new` (moving the value does not
// move them); nothing is shared across threads.
unsafe impl Send for RecvBatch {}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    /// Sets up the buffers and the headers pointing at them once; `recv` only resets what
    /// the kernel writes.
    pub fn new() -> Self {
        let mut b = RecvBatch {
            // Zeroed lazily by the allocator: only the bytes datagrams use are touched.
            bufs: vec![0; BATCH * SLOT],
            // SAFETY: sockaddr_storage is plain data for which all-zero is valid.
            addrs: vec![unsafe { zeroed() }; BATCH],
            iovs: Vec::with_capacity(BATCH),
            hdrs: Vec::with_capacity(BATCH),
            got: Vec::with_capacity(BATCH),
        };
        b.iovs
            .extend(b.bufs.chunks_exact_mut(SLOT).map(|slot| libc::iovec {
                iov_base: slot.as_mut_ptr().cast(),
                iov_len: SLOT,
            }));
        let storage = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        b.hdrs.extend(
            b.addrs
                .iter_mut()
                .zip(b.iovs.iter_mut())
                .map(|(a, iov)| header(a, storage, iov)),
        );
        b
    }

    /// Takes up to [`BATCH`] datagrams off `fd`; `Ok(0)` never happens (an empty queue
    /// is `WouldBlock`). A datagram from an address family other than IP is skipped.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.got.clear();
        for h in &mut self.hdrs {
            // The kernel wrote the last source's length here.
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        }
        // SAFETY: `hdrs` holds BATCH headers whose name and iovec pointers refer to live
        // buffers of the stated sizes, owned by `self` for the duration of the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        for i in 0..n as usize {
            let h = &self.hdrs[i];
            if let Some(from) = from_storage(&self.addrs[i], h.msg_hdr.msg_namelen) {
                self.got.push((i, from, h.msg_len as usize));
            }
        }
        Ok(n as usize)
    }

    /// The datagrams of the last [`RecvBatch::recv`], with their sources.
    pub fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.got
            .iter()
            .map(|&(i, from, len)| (from, &self.bufs[i * SLOT..i * SLOT + len]))
    }
}

/// Datagrams queued for one socket.
#[derive(Default)]
pub struct SendQueue {
    pub items: Vec<(SocketAddr, Vec<u8>)>,
    addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the pointers in `hdrs` point into `addrs`, `iovs` and `items`, all filled
// before every call and unchanged during it; nothing is shared across threads.
unsafe impl Send for SendQueue {}

impl SendQueue {
    /// Sends the queued datagrams from `start` on, at most [`BATCH`] per call, until all
    /// are sent or the socket refuses; returns how many of them went out. An error on
    /// the first datagram of a call is returned (the caller drops that one and goes on).
    pub fn send(&mut self, fd: RawFd, start: usize) -> io::Result<usize> {
        let items = &self.items[start..self.items.len().min(start + BATCH)];
        self.addrs.clear();
        self.iovs.clear();
        self.hdrs.clear();
        for (to, bytes) in items {
            self.addrs.push(to_storage(to));
            self.iovs.push(libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            });
        }
        // Built after both vectors are filled, so that no push moves what they point at.
        self.hdrs.extend(
            self.addrs
                .iter_mut()
                .zip(self.iovs.iter_mut())
                .map(|((a, len), iov)| header(a, *len, iov)),
        );
        // SAFETY: every header points at an address and a datagram that live in `self`
        // until the call returns; the kernel only reads them.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

/// A header for one datagram: its address (`len` bytes of `name`) and its one buffer.
fn header(
    name: &mut libc::sockaddr_storage,
    len: libc::socklen_t,
    iov: &mut libc::iovec,
) -> libc::mmsghdr {
    // SAFETY: msghdr is plain data for which all-zero is valid; the fields that matter
    // are set below.
    let mut h: libc::msghdr = unsafe { zeroed() };
    h.msg_name = (name as *mut libc::sockaddr_storage).cast();
    h.msg_namelen = len;
    h.msg_iov = iov;
    h.msg_iovlen = 1;
    libc::mmsghdr {
        msg_hdr: h,
        msg_len: 0,
    }
}

fn from_storage(s: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match s.ss_family as libc::c_int {
        libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and it is large
            // and aligned enough for one.
            let a = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                u32::from_be(a.sin6_flowinfo),
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn to_storage(a: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut s: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
            let p = unsafe { &mut *(&mut s as *mut _ as *mut libc::sockaddr_in) };
            p.sin_family = libc::AF_INET as libc::sa_family_t;
            p.sin_port = v4.port().to_be();
            p.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: as above, for a sockaddr_in6.
            let p = unsafe { &mut *(&mut s as *mut _ as *mut libc::sockaddr_in6) };
            p.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            p.sin6_port = v6.port().to_be();
            p.sin6_flowinfo = v6.flowinfo().to_be();
            p.sin6_addr.s6_addr = v6.ip().octets();
            p.sin6_scope_id = v6.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (s, len as libc::socklen_t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn addresses_round_trip() {
        for a in ["192.0.2.7:5683", "[2001:db8::1%3]:61616"] {
            let a: SocketAddr = a.parse().unwrap();
            let (s, len) = to_storage(&a);
            assert_eq!(from_storage(&s, len), Some(a));
        }
    }

    #[test]
    fn a_batch_goes_out_and_comes_in_whole() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_nonblocking(true).unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let mut q = SendQueue::default();
        // More than one call's worth, of different sizes, the last one a full datagram.
        for i in 0..BATCH + 3 {
            q.items.push((to, vec![i as u8; i + 1]));
        }
        q.items.push((to, vec![7; 65_507]));
        let mut sent = 0;
        while sent < q.items.len() {
            sent += q.send(tx.as_raw_fd(), sent).unwrap();
        }
        let mut b = RecvBatch::new();
        let mut seen = Vec::new();
        while seen.len() < q.items.len() {
            match b.recv(rx.as_raw_fd()) {
                Ok(_) => seen.extend(b.datagrams().map(|(f, d)| (f, d.to_vec()))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        let from = tx.local_addr().unwrap();
        assert!(seen.iter().all(|(f, _)| *f == from));
        let sizes: Vec<usize> = seen.iter().map(|(_, d)| d.len()).collect();
        let want: Vec<usize> = q.items.iter().map(|(_, d)| d.len()).collect();
        assert_eq!(sizes, want);
        assert!(matches!(b.recv(rx.as_raw_fd()), Err(e) if e.kind() == io::ErrorKind::WouldBlock));
    }
}
