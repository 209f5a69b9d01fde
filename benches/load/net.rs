//! Batched UDP I/O (recvmmsg/sendmmsg), CPU pinning and CPU accounting from /proc, for
//! the load generator. IPv4 only: everything in this bench is on 127.0.0.0/8.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

/// Datagrams per recvmmsg/sendmmsg call.
pub const BATCH: usize = 32;
/// Room per datagram (everything here is far smaller).
pub const BUF: usize = 1536;

/// Buffers, addresses and headers for one recvmmsg or sendmmsg call.
pub struct Batch {
    bufs: Vec<[u8; BUF]>,
    lens: [usize; BATCH],
    addrs: [libc::sockaddr_in; BATCH],
    iov: [libc::iovec; BATCH],
    hdrs: [libc::mmsghdr; BATCH],
    /// A control message per header: UDP_SEGMENT (CMSG_SPACE of a u16 is 24 bytes) or
    /// IP_PKTINFO (CMSG_SPACE of an in_pktinfo is 32).
    ctrl: [[u64; 4]; BATCH],
    /// Per datagram to send: the source address to send it from (IP_PKTINFO), if not 0.
    /// Per datagram received (with `pktinfo`): the address it was sent to.
    addr_local: [u32; BATCH],
    /// Receive with IP_PKTINFO: many loopback addresses served by one socket bound to
    /// 0.0.0.0 (set IP_PKTINFO on it with [`udp_any`]).
    pub pktinfo: bool,
    /// Datagrams per header of the last segmented send.
    runs: [usize; BATCH],
    /// Datagrams held (received, or queued for sending).
    pub n: usize,
}

fn to_sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
    let mut s: libc::sockaddr_in = unsafe { zeroed() };
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = a.port().to_be();
    s.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    s
}

fn from_sockaddr(s: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(s.sin_addr.s_addr)),
        u16::from_be(s.sin_port),
    )
}

impl Batch {
    pub fn new() -> Box<Self> {
        Box::new(Batch {
            bufs: vec![[0u8; BUF]; BATCH],
            lens: [0; BATCH],
            // SAFETY: these libc structs are plain old data; pointers are set per call.
            addrs: unsafe { zeroed() },
            iov: unsafe { zeroed() },
            hdrs: unsafe { zeroed() },
            ctrl: [[0; 4]; BATCH],
            addr_local: [0; BATCH],
            pktinfo: false,
            runs: [0; BATCH],
            n: 0,
        })
    }

    fn prepare(&mut self, count: usize, recv: bool) {
        for i in 0..count {
            self.iov[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: if recv { BUF } else { self.lens[i] },
            };
            let h = &mut self.hdrs[i].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut self.iov[i];
            h.msg_iovlen = 1;
            h.msg_control = std::ptr::null_mut();
            h.msg_controllen = 0;
            h.msg_flags = 0;
            if (recv && self.pktinfo) || (!recv && self.addr_local[i] != 0) {
                h.msg_control = self.ctrl[i].as_mut_ptr().cast();
                h.msg_controllen = 32;
            }
            if !recv && self.addr_local[i] != 0 {
                // SAFETY: `ctrl[i]` is 32 bytes aligned to 8: a cmsghdr and an in_pktinfo.
                unsafe {
                    let c = self.ctrl[i].as_mut_ptr().cast::<libc::cmsghdr>();
                    (*c).cmsg_level = libc::IPPROTO_IP;
                    (*c).cmsg_type = libc::IP_PKTINFO;
                    (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
                    libc::CMSG_DATA(c)
                        .cast::<libc::in_pktinfo>()
                        .write_unaligned(libc::in_pktinfo {
                            ipi_ifindex: 0,
                            ipi_spec_dst: libc::in_addr {
                                s_addr: self.addr_local[i].to_be(),
                            },
                            ipi_addr: libc::in_addr { s_addr: 0 },
                        });
                }
            }
            self.hdrs[i].msg_len = 0;
        }
    }

    /// Receives what is queued on `fd` without blocking (up to BATCH datagrams).
    pub fn recv(&mut self, fd: RawFd) -> usize {
        self.prepare(BATCH, true);
        // SAFETY: every header points into self, which outlives the call.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        self.n = r.max(0) as usize;
        for i in 0..self.n {
            self.lens[i] = self.hdrs[i].msg_len as usize;
            self.addr_local[i] = 0;
            if self.pktinfo && self.hdrs[i].msg_hdr.msg_controllen >= 28 {
                // SAFETY: the kernel wrote a cmsghdr there; IP_PKTINFO is the only one
                // asked for.
                unsafe {
                    let c = self.ctrl[i].as_ptr().cast::<libc::cmsghdr>();
                    if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_PKTINFO {
                        let p = libc::CMSG_DATA(c)
                            .cast::<libc::in_pktinfo>()
                            .read_unaligned();
                        self.addr_local[i] = u32::from_be(p.ipi_addr.s_addr);
                    }
                }
            }
        }
        self.n
    }

    /// The address the i-th datagram received was sent to (with `pktinfo`).
    pub fn local(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::from(self.addr_local[i])
    }

    /// The i-th datagram received and its source.
    pub fn get(&self, i: usize) -> (&[u8], SocketAddrV4) {
        (&self.bufs[i][..self.lens[i]], from_sockaddr(&self.addrs[i]))
    }

    pub fn is_full(&self) -> bool {
        self.n == BATCH
    }

    /// Queues a datagram to `to`, written by `fill` (which returns its length).
    pub fn push(&mut self, to: SocketAddrV4, fill: impl FnOnce(&mut [u8]) -> usize) {
        assert!(self.n < BATCH, "flush before pushing more");
        let i = self.n;
        self.lens[i] = fill(&mut self.bufs[i]);
        self.addrs[i] = to_sockaddr(to);
        self.addr_local[i] = 0;
        self.n += 1;
    }

    /// As [`Self::push`], sent from the local address `from` (IP_PKTINFO; the socket is
    /// bound to 0.0.0.0). Not with `flush_as(.., true)`.
    pub fn push_from(
        &mut self,
        to: SocketAddrV4,
        from: Ipv4Addr,
        fill: impl FnOnce(&mut [u8]) -> usize,
    ) {
        self.push(to, fill);
        self.addr_local[self.n - 1] = u32::from(from);
    }

    /// Sends everything queued, coalescing runs of datagrams to one address of one size
    /// (the last may be shorter) with UDP_SEGMENT if `segment`; returns how many
    /// datagrams the kernel refused.
    pub fn flush_as(&mut self, fd: RawFd, segment: bool) -> usize {
        if !segment {
            return self.flush(fd);
        }
        let total = self.n;
        self.prepare(total, false);
        let same_to = |a: &libc::sockaddr_in, b: &libc::sockaddr_in| {
            a.sin_addr.s_addr == b.sin_addr.s_addr && a.sin_port == b.sin_port
        };
        // Headers in place: header m takes over the iovecs of its run, which are
        // consecutive in `iov`.
        let (mut m, mut i) = (0, 0);
        while i < total {
            let size = self.lens[i];
            let mut run = 1;
            while i + run < total
                && same_to(&self.addrs[i + run], &self.addrs[i])
                && self.lens[i + run] <= size
            {
                run += 1;
                if self.lens[i + run - 1] < size {
                    break;
                }
            }
            let mut h = self.hdrs[i];
            h.msg_hdr.msg_iovlen = run;
            if run > 1 {
                // SAFETY: `ctrl[m]` is 32 bytes aligned to 8, room for a cmsghdr and a u16.
                unsafe {
                    let c = self.ctrl[m].as_mut_ptr().cast::<libc::cmsghdr>();
                    (*c).cmsg_level = libc::SOL_UDP;
                    (*c).cmsg_type = 103; // UDP_SEGMENT
                    (*c).cmsg_len = libc::CMSG_LEN(2) as _;
                    libc::CMSG_DATA(c)
                        .cast::<u16>()
                        .write_unaligned(size as u16);
                }
                h.msg_hdr.msg_control = self.ctrl[m].as_mut_ptr().cast();
                h.msg_hdr.msg_controllen = 24;
            }
            self.hdrs[m] = h;
            self.runs[m] = run;
            m += 1;
            i += run;
        }
        self.send_headers(fd, m)
    }

    /// Sends everything queued; returns how many datagrams the kernel refused.
    pub fn flush(&mut self, fd: RawFd) -> usize {
        let total = self.n;
        self.prepare(total, false);
        self.runs[..total].fill(1);
        self.send_headers(fd, total)
    }

    /// Sends the first `count` headers, each carrying `runs[i]` datagrams; returns how
    /// many datagrams the kernel refused.
    fn send_headers(&mut self, fd: RawFd, count: usize) -> usize {
        let mut sent = 0;
        let mut refused = 0;
        while sent < count {
            // SAFETY: as in recv.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    self.hdrs[sent..].as_mut_ptr(),
                    (count - sent) as u32,
                    libc::MSG_DONTWAIT,
                )
            };
            if r > 0 {
                sent += r as usize;
            } else {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // EAGAIN (send buffer full) or an ICMP error from an earlier datagram
                // surfacing here: skip this message and count its datagrams.
                refused += self.runs[sent];
                sent += 1;
            }
        }
        self.n = 0;
        refused
    }
}

/// A non-blocking UDP socket with roomy buffers.
pub fn udp(bind: SocketAddrV4) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&SocketAddr::V4(bind).into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// A non-blocking UDP socket bound to 0.0.0.0:`port` (0: any) with IP_PKTINFO on: it
/// sends from and receives on any loopback address (127.0.0.0/8 is all local on Linux),
/// so that one socket is one port of many client or origin endpoints. It also accepts
/// datagrams from outside the host: the bench is for a lab machine.
pub fn udp_any(port: u16) -> io::Result<UdpSocket> {
    let s = udp(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))?;
    set_int_option(&s, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
    Ok(s)
}

/// One integer socket option (`setsockopt`) on a socket of ours.
pub fn set_int_option(
    s: &UdpSocket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a valid int option on our own socket.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A group member's receiver on `group` joined on 127.0.0.1, as groxy's devices make it.
pub fn multicast_receiver(group: SocketAddrV4) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    let _ = s.set_recv_buffer_size(4 << 20);
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.join_multicast_v4(group.ip(), &Ipv4Addr::LOCALHOST)?;
    s.bind(&SocketAddr::V4(group).into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// A free UDP port on 127.0.0.1 (free when asked; nothing else here races for it).
pub fn free_port() -> u16 {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free UDP port on 127.0.0.1")
}

/// Waits until one of `fds` is readable or `timeout_ms` passes.
pub fn wait_readable(fds: &[RawFd], timeout_ms: i32) {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: a valid array of pollfd for the duration of the call.
    unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
}

pub fn fd(s: &UdpSocket) -> RawFd {
    s.as_raw_fd()
}

/// Pins the calling thread (and so the children it starts later) to one CPU.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain old data; CPU_SET writes inside it.
    unsafe {
        let mut set: libc::cpu_set_t = zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes the calling thread SCHED_FIFO at `prio`.
pub fn set_fifo(prio: u8) -> io::Result<()> {
    let p = libc::sched_param {
        sched_priority: prio as i32,
    };
    // SAFETY: a valid sched_param for the calling thread.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Nanoseconds a process has run on any CPU, over all its threads (schedstat).
pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let p = t.ok()?.path().join("schedstat");
        let s = std::fs::read_to_string(p).ok()?;
        total += s.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// (busy, total) clock ticks of one CPU from /proc/stat; busy includes irq and softirq
/// (loopback delivery runs there), idle and iowait are not busy.
/// (busy, total, steal) ticks of core `cpu` so far. Busy includes softirq and steal: time
/// the hypervisor gave another guest is time the proxy could not run.
pub fn cpu_ticks(cpu: usize) -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&name))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        return None;
    }
    let total: u64 = v.iter().sum();
    Some((total - v[3] - v[4], total, v[7]))
}
