//! Socket set-up with socket2: listeners, multicast egress per group, unicast egress, and
//! a device's multicast receiver.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};

/// Which interface multicast goes out of (or is joined on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interface {
    /// The system's choice (the route to the group).
    Default,
    /// An IPv4 interface by one of its addresses (IP_MULTICAST_IF).
    Addr(Ipv4Addr),
    /// An interface by name, for either family.
    Name(String),
}

impl std::str::FromStr for Interface {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || s == "default" {
            return Ok(Interface::Default);
        }
        if let Ok(a) = s.parse::<Ipv4Addr>() {
            return Ok(Interface::Addr(a));
        }
        if s.len() < 16
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
        {
            return Ok(Interface::Name(s.to_string()));
        }
        Err(format!(
            "{s:?} is neither an IPv4 address nor an interface name"
        ))
    }
}

/// Index of an interface by name (if_nametoindex).
pub(crate) fn if_index(name: &str) -> io::Result<u32> {
    let c =
        std::ffi::CString::new(name).map_err(|_| io::Error::other("interface name has a NUL"))?;
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface named {name}"),
        ))
    } else {
        Ok(i)
    }
}

fn domain(addr: &SocketAddr) -> Domain {
    if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    }
}

fn udp(addr: &SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(domain(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_nonblocking(true)?;
    // Bursts of fan-out responses arrive at once; a larger buffer absorbs them.
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    Ok(s)
}

/// A client-facing listener. `[::]` is IPv6-only so that an IPv4 listener can share the port.
pub fn listener(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let s = udp(&addr)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// A listener of one of several forwarding threads (`[proxy] threads`): every thread
/// binds the same address with `SO_REUSEPORT`, and the kernel hands each datagram to one
/// of them by a hash of its 4-tuple, so a client endpoint always reaches the same thread
/// (its deduplication and Message IDs stay that thread's). Only the proxy's own sockets
/// can join: the kernel lets a socket join a reuseport group only under the same user,
/// and the state directory's lock keeps a second groxy out (`runtime::lock_state_dir`).
pub fn shared_listener(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let s = udp(&addr)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// The addresses of this host's interfaces (what a listener on an unspecified address is
/// reached at); empty if they cannot be listed.
pub fn host_addrs() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list that stays valid until freeifaddrs; each
    // node's ifa_addr is null or points at a sockaddr of the family it names.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut p = head;
        while !p.is_null() {
            let a = (*p).ifa_addr;
            if !a.is_null() {
                match (*a).sa_family as i32 {
                    libc::AF_INET => {
                        let sin = &*(a as *const libc::sockaddr_in);
                        out.push(IpAddr::from(
                            u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                        ));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(a as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}

/// An unbound-port socket for one address family, for unicast origins.
pub(crate) fn unicast_egress(v6: bool) -> io::Result<std::net::UdpSocket> {
    let addr: SocketAddr = if v6 {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let s = udp(&addr)?;
    if v6 {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// The egress socket of a group: multicast out of `iface` with `hops`, and its unicast
/// port receives the devices' responses. Loopback delivery stays on so that members on
/// this host hear the request.
pub(crate) fn group_egress(
    group: SocketAddr,
    iface: &Interface,
    hops: u32,
    bind: Option<IpAddr>,
) -> io::Result<std::net::UdpSocket> {
    let any: SocketAddr = match group {
        SocketAddr::V4(_) => (bind.unwrap_or(Ipv4Addr::UNSPECIFIED.into()), 0).into(),
        SocketAddr::V6(_) => (bind.unwrap_or(Ipv6Addr::UNSPECIFIED.into()), 0).into(),
    };
    let s = udp(&any)?;
    match group {
        SocketAddr::V4(_) => {
            match iface {
                Interface::Default => {}
                Interface::Addr(a) => s.set_multicast_if_v4(a)?,
                Interface::Name(n) => set_multicast_if_v4_index(&s, if_index(n)?)?,
            }
            s.set_multicast_ttl_v4(hops)?;
            s.set_multicast_loop_v4(true)?;
        }
        SocketAddr::V6(_) => {
            s.set_only_v6(true)?;
            match iface {
                Interface::Default => {}
                Interface::Addr(_) => {
                    return Err(io::Error::other(
                        "an IPv6 group needs an interface name, not an IPv4 address",
                    ));
                }
                Interface::Name(n) => s.set_multicast_if_v6(if_index(n)?)?,
            }
            s.set_multicast_hops_v6(hops)?;
            s.set_multicast_loop_v6(true)?;
        }
    }
    s.bind(&any.into())?;
    Ok(s.into())
}

fn set_multicast_if_v4_index(s: &Socket, index: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mreqn = libc::ip_mreqn {
        imr_multiaddr: libc::in_addr { s_addr: 0 },
        imr_address: libc::in_addr { s_addr: 0 },
        imr_ifindex: index as i32,
    };
    // SAFETY: a valid socket and a correctly sized ip_mreqn that outlives the call.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_IF,
            &mreqn as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::ip_mreqn>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A group member's receiver: bound to the group address and port (so it sees only that
/// group's traffic), shared with other members on this host, joined on `iface`.
pub fn multicast_receiver(group: SocketAddr, iface: &Interface) -> io::Result<std::net::UdpSocket> {
    let s = udp(&group)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    match group.ip() {
        IpAddr::V4(g) => {
            let how = match iface {
                Interface::Default => InterfaceIndexOrAddress::Address(Ipv4Addr::UNSPECIFIED),
                Interface::Addr(a) => InterfaceIndexOrAddress::Address(*a),
                Interface::Name(n) => InterfaceIndexOrAddress::Index(if_index(n)?),
            };
            s.join_multicast_v4_n(&g, &how)?;
        }
        IpAddr::V6(g) => {
            s.set_only_v6(true)?;
            let idx = match iface {
                Interface::Name(n) => if_index(n)?,
                _ => 0,
            };
            s.join_multicast_v6(&g, idx)?;
        }
    }
    s.bind(&group.into())?;
    Ok(s.into())
}

/// A unicast socket that may share its port with others on this host.
pub(crate) fn shared_unicast(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let s = udp(&addr)?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    Ok(s.into())
}
