//! A real `groxy run` with an observation (issue 12): a device's notifications reach the
//! client after the Multicast-Timeout, and SIGTERM deregisters the group (Observe 1 under
//! the proxy's token, RFC 7641 §3.6) before the drain completes, then exits 0 without
//! waiting for the observation. Unprivileged: IPv4 multicast on loopback.

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::process::{metric, run_quietly, wait_ready};
use common::{free_port, free_tcp_port};
use groxy::coap::MessageView;
use groxy::coap::build::{self, NON, code};
use groxy::coap::options as opt;

/// How long a condition may take to come about.
const WAIT: Duration = Duration::from_secs(15);

const OBSERVE: u16 = 6;
const GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 1, 187);

/// The next datagram on `s` that parses, with its source.
fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 1500];
    let (n, from) = s.recv_from(&mut buf).expect("a datagram in time");
    (buf[..n].to_vec(), from)
}

#[test]
fn observation_outlives_t_prime_and_sigterm_deregisters() {
    let dir = std::env::temp_dir().join(format!("groxy-obs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (listen, mport, gport) = (free_port(), free_tcp_port(), free_port());
    let file = dir.join("groxy.toml");
    std::fs::write(
        &file,
        format!(
            "[proxy]\nlisten = [\"127.0.0.1:{listen}\"]\nmetrics = \"127.0.0.1:{mport}\"\n[[group]]\nname = \"g\"\nuri = \"coap://224.0.1.187:{gport}\"\ninterface = \"127.0.0.1\"\n"
        ),
    )
    .unwrap();
    // The device: the group's address on loopback to receive, a unicast socket to answer.
    let group_rx = UdpSocket::bind((GROUP, gport)).unwrap();
    group_rx
        .join_multicast_v4(&GROUP, &Ipv4Addr::LOCALHOST)
        .unwrap();
    group_rx
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let dev = UdpSocket::bind("127.0.0.1:0").unwrap();
    let child = run_quietly(&file);
    wait_ready(mport, WAIT);
    let cl = UdpSocket::bind("127.0.0.1:0").unwrap();
    cl.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let uri = format!("coap://224.0.1.187:{gport}/temp");
    let reg = build::encode(
        NON,
        code::GET,
        1,
        b"ob",
        &mut [
            (OBSERVE, &[][..]),
            (opt::MULTICAST_TIMEOUT_DEFAULT, &[2]),
            (opt::PROXY_URI, uri.as_bytes()),
        ],
        &[],
    );
    cl.send_to(&reg, ("127.0.0.1", listen)).unwrap();
    let (fwd, egress) = recv(&group_rx);
    let fv = MessageView::parse(&fwd).unwrap();
    assert_eq!(fv.option(OBSERVE), Some(&[][..]));
    let token = fv.token().to_vec();
    let notify = |seq: u8, mid: u16| {
        let n = build::encode(
            NON,
            code::CONTENT,
            mid,
            &token,
            &mut [(OBSERVE, &[seq][..])],
            b"21",
        );
        dev.send_to(&n, egress).unwrap();
        let (got, _) = recv(&cl);
        let v = MessageView::parse(&got).unwrap();
        assert_eq!(
            (v.token(), v.option(OBSERVE)),
            (&b"ob"[..], Some(&[seq][..]))
        );
    };
    notify(1, 10);
    // Past T' (2 s): the observation is held and relays.
    std::thread::sleep(Duration::from_millis(2500));
    notify(2, 11);
    assert_eq!(metric(mport, "groxy_observations_active"), Some(1.0));

    let stopped_at = Instant::now();
    // SAFETY: kill(2) with the pid of our own child process.
    assert_eq!(unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) }, 0);
    let (dereg, _) = recv(&group_rx);
    let dv = MessageView::parse(&dereg).unwrap();
    assert_eq!(dv.token(), &token[..], "under the proxy's token");
    assert_eq!(dv.option(OBSERVE), Some(&[1][..]), "a deregistration");
    let mut child = child;
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            stopped_at.elapsed() < Duration::from_secs(5),
            "the drain waited on the observation"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
