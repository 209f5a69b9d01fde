//! Datagrams in and out in batches: one `recvmmsg` takes up to [`BATCH`] datagrams off a
//! socket and one `sendmmsg` puts a socket's queued datagrams on the wire. Under load
//! most of a forwarding proxy's time is the kernel's per-call cost, so fewer calls is
//! the largest saving there is (see `benches/load.rs`).
//!
//! Both work on non-blocking sockets and return `WouldBlock` like the single calls; the
//! forwarding loop (`runtime::Proxy::forward`) calls them on the sockets `ppoll` found
//! readable.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Datagrams per call. 32 covers the bursts seen under load (16 requests outstanding
/// per client, each with its fan-out) without much memory.
pub(crate) const BATCH: usize = 32;
/// A slot holds any UDP datagram, so that nothing arrives cut short.
const SLOT: usize = 65_536;
/// Slots lie this far apart: a cache line more than a slot. At exactly 64 KiB apart,
/// every slot's first bytes (where a CoAP datagram lies) would map to the same cache set
/// and evict each other between the kernel's copy and the engine's parse.
const STRIDE: usize = SLOT + 64;

/// Receive buffers for one batch and the addresses they came from.
pub(crate) struct RecvBatch {
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
    pub(crate) fn new() -> Self {
        let mut b = RecvBatch {
            // Zeroed lazily by the allocator: only the bytes datagrams use are touched.
            bufs: vec![0; BATCH * STRIDE],
            // SAFETY: sockaddr_storage is plain data for which all-zero is valid.
            addrs: vec![unsafe { zeroed() }; BATCH],
            iovs: Vec::with_capacity(BATCH),
            hdrs: Vec::with_capacity(BATCH),
            got: Vec::with_capacity(BATCH),
        };
        b.iovs
            .extend(b.bufs.chunks_exact_mut(STRIDE).map(|slot| libc::iovec {
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
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
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
    pub(crate) fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.got
            .iter()
            .map(|&(i, from, len)| (from, &self.bufs[i * STRIDE..i * STRIDE + len]))
    }
}

/// The largest datagram sent as a segment of a coalesced send. A segment and its headers
/// must fit the path MTU or the kernel refuses the whole send (EINVAL); 1,152 bytes is
/// RFC 7252 §4.6's upper bound for a CoAP message that needs no fragmentation, and most
/// CoAP messages are far smaller. Larger datagrams go out one per message, as before.
const MAX_SEGMENT: usize = 1_152;
/// Segments per coalesced send: the kernel's limit (UDP_MAX_SEGMENTS) is 64 on older
/// kernels and larger on newer ones.
const MAX_SEGMENTS: usize = 64;
/// Payload bytes per coalesced send: the segments together form one UDP datagram to the
/// kernel until it cuts them, so they must fit one (65,535 less the IPv4 and UDP headers),
/// or the kernel refuses the whole send (EMSGSIZE).
const MAX_RUN_BYTES: usize = 65_507;
/// `UDP_SEGMENT` from linux/udp.h (not in the libc crate for glibc targets).
const UDP_SEGMENT: libc::c_int = 103;

/// Room for one `UDP_SEGMENT` control message (CMSG_SPACE of a u16), aligned as a cmsghdr.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct SegmentCmsg([u8; 24]);

/// Datagrams queued for one socket.
///
/// Consecutive datagrams to one address of one size (the last may be shorter) go out as
/// one message with UDP generic segmentation offload (`UDP_SEGMENT`): the kernel takes
/// them through its UDP and IP output path, routing included, once, and cuts them into
/// ordinary datagrams at the device or, on loopback, on delivery. Receivers see the same
/// datagrams as without it. A proxy's batches are full of such runs: requests of one
/// client to one origin, that origin's responses back to the client. If the kernel or
/// the route refuses segmentation, the queue stops using it and sends one by one.
pub(crate) struct SendQueue {
    pub items: Vec<(SocketAddr, Vec<u8>)>,
    /// Whether to coalesce; cleared for good the first time the kernel refuses.
    segment: bool,
    /// Per message of the current call: its address and how many items it carries;
    /// and, in order, the control messages of those that carry more than one.
    addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)>,
    runs: Vec<usize>,
    ctrl: Vec<SegmentCmsg>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Default for SendQueue {
    fn default() -> Self {
        SendQueue {
            items: Vec::new(),
            segment: true,
            addrs: Vec::new(),
            runs: Vec::new(),
            ctrl: Vec::new(),
            iovs: Vec::new(),
            hdrs: Vec::new(),
        }
    }
}

/// A send that went wrong: the error, and how many queued datagrams it cost (the first
/// message of the call, which may carry several to one address).
#[derive(Debug)]
pub(crate) struct SendError {
    pub error: io::Error,
    pub dropped: usize,
}

// SAFETY: the pointers in `hdrs` point into `addrs`, `ctrl`, `iovs` and `items`, all
// filled before every call and unchanged during it; nothing is shared across threads.
unsafe impl Send for SendQueue {}

impl SendQueue {
    /// Sends the queued datagrams from `start` on, at most [`BATCH`] messages per call,
    /// until all are sent or the socket refuses; returns how many datagrams went out. An
    /// error on the first message of a call is returned with the datagrams it carried
    /// (the caller drops those and goes on).
    pub(crate) fn send(&mut self, fd: RawFd, start: usize) -> Result<usize, SendError> {
        self.build(start);
        // SAFETY: every header points at an address, a control message and datagrams
        // that live in `self` until the call returns; the kernel only reads them.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Ok(self.runs[..n as usize].iter().sum());
        }
        let error = io::Error::last_os_error();
        let refused = matches!(
            error.raw_os_error(),
            Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
        );
        if self.runs[0] > 1 && refused {
            // This kernel, device or route does not segment UDP: send one by one from
            // now on; nothing of this call went out, so the caller retries it.
            tracing::warn!(event = "udp_segmentation_off", error = %error);
            self.segment = false;
            return Ok(0);
        }
        Err(SendError {
            error,
            dropped: self.runs[0],
        })
    }

    /// The headers of one call: items from `start` on, runs coalesced, up to [`BATCH`]
    /// messages.
    fn build(&mut self, start: usize) {
        self.addrs.clear();
        self.runs.clear();
        self.ctrl.clear();
        self.iovs.clear();
        self.hdrs.clear();
        let items = &self.items[start..];
        let mut i = 0;
        while i < items.len() && self.runs.len() < BATCH {
            let (to, first) = &items[i];
            let size = first.len();
            let mut run = 1;
            if self.segment && size <= MAX_SEGMENT {
                // Same address, same size; the last of a run may be shorter.
                while i + run < items.len()
                    && run < MAX_SEGMENTS
                    && (run + 1) * size <= MAX_RUN_BYTES
                {
                    let (next_to, next) = &items[i + run];
                    if next_to != to || next.len() > size || next.is_empty() {
                        break;
                    }
                    run += 1;
                    if next.len() < size {
                        break;
                    }
                }
            }
            self.addrs.push(to_storage(to));
            self.runs.push(run);
            if run > 1 {
                self.ctrl.push(segment_cmsg(size));
            }
            for (_, bytes) in &items[i..i + run] {
                self.iovs.push(libc::iovec {
                    iov_base: bytes.as_ptr() as *mut libc::c_void,
                    iov_len: bytes.len(),
                });
            }
            i += run;
        }
        // Built after every vector is filled, so that no push moves what they point at.
        let (mut iov, mut ctrl) = (0, 0);
        for m in 0..self.runs.len() {
            let (name, len) = &mut self.addrs[m];
            let run = self.runs[m];
            let mut h = header(name, *len, &mut self.iovs[iov]);
            h.msg_hdr.msg_iovlen = run;
            if run > 1 {
                h.msg_hdr.msg_control = self.ctrl[ctrl].0.as_mut_ptr().cast();
                h.msg_hdr.msg_controllen = self.ctrl[ctrl].0.len();
                ctrl += 1;
            }
            self.hdrs.push(h);
            iov += run;
        }
    }
}

/// A `UDP_SEGMENT` control message carrying `size`.
fn segment_cmsg(size: usize) -> SegmentCmsg {
    let mut c = SegmentCmsg([0; 24]);
    // SAFETY: the buffer is aligned for a cmsghdr and CMSG_SPACE(2) = 24 bytes long on
    // 64-bit Linux (checked by a test), which holds the header and the u16 after it.
    unsafe {
        let h = c.0.as_mut_ptr().cast::<libc::cmsghdr>();
        (*h).cmsg_level = libc::SOL_UDP;
        (*h).cmsg_type = UDP_SEGMENT;
        (*h).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
        libc::CMSG_DATA(h)
            .cast::<u16>()
            .write_unaligned(size as u16);
    }
    c
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
    use std::net::UdpSocket;
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
    fn the_segment_control_message_fits() {
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(size_of::<u16>() as u32) } as usize;
        assert!(space <= size_of::<SegmentCmsg>());
    }

    /// Sends `q` whole from `tx` and reads what `rxs` receive, per receiver in order.
    fn exchange(q: &mut SendQueue, tx: &UdpSocket, rxs: &[&UdpSocket]) -> Vec<Vec<Vec<u8>>> {
        let mut sent = 0;
        while sent < q.items.len() {
            sent += q.send(tx.as_raw_fd(), sent).unwrap();
        }
        let mut b = RecvBatch::new();
        let mut seen = vec![Vec::new(); rxs.len()];
        let want = q.items.len();
        while seen.iter().map(Vec::len).sum::<usize>() < want {
            for (r, got) in rxs.iter().zip(seen.iter_mut()) {
                match b.recv(r.as_raw_fd()) {
                    Ok(_) => got.extend(b.datagrams().map(|(f, d)| {
                        assert_eq!(f.port(), tx.local_addr().unwrap().port());
                        d.to_vec()
                    })),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                    Err(e) => panic!("{e}"),
                }
            }
        }
        seen
    }

    fn bound() -> UdpSocket {
        bound_on("127.0.0.1:0".parse().unwrap())
    }

    fn bound_on(at: SocketAddr) -> UdpSocket {
        let s = UdpSocket::bind(at).unwrap();
        s.set_nonblocking(true).unwrap();
        s
    }

    /// What each receiver should see: the queued datagrams to it, in queue order.
    fn expected(q: &SendQueue, rxs: &[&UdpSocket]) -> Vec<Vec<Vec<u8>>> {
        rxs.iter()
            .map(|r| {
                let at = r.local_addr().unwrap();
                q.items
                    .iter()
                    .filter(|(to, _)| *to == at)
                    .map(|(_, d)| d.clone())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn coalesced_runs_arrive_as_the_datagrams_they_were() {
        let (a, b, tx) = (bound(), bound(), bound());
        let (to_a, to_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut q = SendQueue::default();
        // Runs of one size to one address (one ending shorter), runs broken by the other
        // address, by a longer datagram, by one over MAX_SEGMENT, and one longer than the
        // kernel's segment limit; each datagram numbered so that order and boundaries show.
        let mut n = 0u8;
        let mut push = |q: &mut SendQueue, to, len: usize| {
            n = n.wrapping_add(1);
            q.items.push((to, vec![n; len]));
        };
        for _ in 0..5 {
            push(&mut q, to_a, 40);
        }
        push(&mut q, to_a, 17);
        push(&mut q, to_a, 40);
        push(&mut q, to_b, 40);
        push(&mut q, to_a, 40);
        push(&mut q, to_a, 41);
        push(&mut q, to_a, MAX_SEGMENT + 1);
        push(&mut q, to_a, MAX_SEGMENT + 1);
        for _ in 0..MAX_SEGMENTS + 10 {
            push(&mut q, to_b, 9);
        }
        // Runs of the largest segments: more bytes than one datagram can hold.
        for _ in 0..MAX_SEGMENTS + 3 {
            push(&mut q, to_a, MAX_SEGMENT);
        }
        let want = expected(&q, &[&a, &b]);
        let before = q.items.len();
        assert_eq!(exchange(&mut q, &tx, &[&a, &b]), want);
        assert!(q.segment, "loopback segments UDP on this kernel");
        // And it was coalesced: the first call's first message carried the first run.
        q.build(0);
        assert_eq!(q.runs[..3], [6, 1, 1]);
        assert!(q.runs.iter().all(|&r| r <= MAX_SEGMENTS));
        assert_eq!(q.items.len(), before);
    }

    #[test]
    fn a_coalesced_run_to_a_multicast_group_reaches_a_member_as_datagrams() {
        // Group requests to one group are runs too; a member on this host hears them
        // through multicast loopback, which must cut them up like any delivery.
        use std::net::Ipv4Addr;
        let lo = Ipv4Addr::LOCALHOST;
        let group = Ipv4Addr::new(239, 255, 0, 187);
        let member = bound_on(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
        member.join_multicast_v4(&group, &lo).unwrap();
        let tx = crate::runtime::sockets::group_egress(
            SocketAddr::from((group, 0)),
            &crate::runtime::sockets::Interface::Addr(lo),
            1,
            None,
        )
        .unwrap();
        let to = SocketAddr::from((group, member.local_addr().unwrap().port()));
        let mut q = SendQueue::default();
        for i in 0..6u8 {
            q.items.push((to, vec![i; if i == 5 { 3 } else { 25 }]));
        }
        q.build(0);
        assert_eq!(q.runs, [6]);
        let want: Vec<Vec<u8>> = q.items.iter().map(|(_, d)| d.clone()).collect();
        assert_eq!(exchange(&mut q, &tx, &[&member]), [want]);
        assert!(q.segment);
    }

    #[test]
    fn a_socket_that_refuses_segmentation_gets_one_datagram_per_message() {
        // A socket without UDP checksums (SO_NO_CHECK) cannot have its datagrams
        // segmented: the kernel refuses with EINVAL, as it does on routes and devices
        // that cannot segment.
        let (a, tx) = (bound(), bound());
        let one: libc::c_int = 1;
        // SAFETY: a valid socket and an int option of the stated size.
        let r = unsafe {
            libc::setsockopt(
                tx.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NO_CHECK,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(r, 0);
        let mut q = SendQueue::default();
        for i in 0..8u8 {
            q.items.push((a.local_addr().unwrap(), vec![i; 30]));
        }
        let want = expected(&q, &[&a]);
        assert_eq!(exchange(&mut q, &tx, &[&a]), want);
        assert!(!q.segment);
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
