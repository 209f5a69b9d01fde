//! The proxy on real sockets and real IPv4 multicast on the loopback interface, without
//! privileges: a proxy, devices answering from their own 127.0.0.x addresses, and the
//! client library, all in one process (groupcomm-proxy-07 §5, RFC 10020 §3.5).

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ask, free_port};
use groxy::coap::MessageView;
use groxy::coap::build::{self, NON, code};
use groxy::coap::options as opt;
use groxy::proxy::{DropReason, Event};
use groxy::runtime::{Interface, Proxy};
use groxy::tools::client::{ClientRequest, Response, run as send};
use groxy::tools::device::{Device, DeviceConfig};

struct Setup {
    proxy: SocketAddr,
    group: SocketAddr,
    devices: Vec<SocketAddr>,
    events: Arc<Mutex<Vec<Event>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A proxy and devices 127.0.0.`first`.. on a fresh group port; `slow` devices answer
/// only after `delay`.
async fn setup(first: u8, n: u8, slow: u8, delay: Duration) -> Setup {
    let port = free_port();
    let group: SocketAddr = (Ipv4Addr::new(224, 0, 1, 187), port).into();
    let mut cfg = groxy::settings::load_default().run;
    cfg.listen = vec!["127.0.0.1:0".parse().unwrap()];
    cfg.proxy.groups[0].addr = group;
    let mut proxy = Proxy::bind(cfg).unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    proxy.on_event(move |e| sink.lock().unwrap().push(e.clone()));
    let addr = proxy.listen_addrs()[0];
    let mut devices = Vec::new();
    for i in 0..n + slow {
        let bind: SocketAddr = (Ipv4Addr::new(127, 0, 0, first + i), port).into();
        let d = Device::bind(DeviceConfig {
            name: format!("d{}", first + i),
            group,
            interface: Interface::Addr(Ipv4Addr::LOCALHOST),
            bind,
            leisure: Duration::from_millis(50),
            delay: if i >= n { delay } else { Duration::ZERO },
            oscore: None,
        })
        .unwrap();
        devices.push(bind);
        tokio::spawn(d.run());
    }
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(proxy.run(async move {
        let _ = rx.await;
    }));
    Setup {
        proxy: addr,
        group,
        devices,
        events,
        stop: Some(tx),
    }
}

fn by_origin(got: &[Response]) -> Vec<SocketAddr> {
    let mut v: Vec<_> = got
        .iter()
        .map(|r| r.reply_from.expect("Reply-From on every relayed response"))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "current_thread")]
async fn s5_4_1_every_device_answers_once_with_reply_from_non_and_con() {
    let s = setup(21, 4, 0, Duration::ZERO).await;
    for (con, proxy_uri) in [(false, false), (true, true), (false, true), (true, false)] {
        let mut req = ClientRequest::get(s.proxy, &format!("coap://{}/hello", s.group), 2);
        req.confirmable = con;
        req.proxy_uri = proxy_uri;
        req.margin = Duration::from_millis(300);
        let got = send(&req, |_| {}).await.unwrap();
        assert_eq!(
            by_origin(&got),
            s.devices,
            "con={con} proxy_uri={proxy_uri}"
        );
        for r in &got {
            assert_eq!(r.code, code::CONTENT);
            let from = r.reply_from.unwrap();
            assert_eq!(
                r.payload,
                format!(
                    "hello from d{}",
                    from.ip().to_string().rsplit('.').next().unwrap()
                )
                .as_bytes()
            );
        }
    }
    let mut post = ClientRequest::get(s.proxy, &format!("coap://{}/echo", s.group), 2);
    post.method = code::POST;
    post.payload = b"ping".to_vec();
    post.margin = Duration::from_millis(300);
    let got = send(&post, |_| {}).await.unwrap();
    assert_eq!(got.len(), 4);
    assert!(
        got.iter()
            .all(|r| r.code == code::CHANGED && r.payload == b"ping")
    );
}

#[tokio::test(flavor = "current_thread")]
async fn s5_4_1_responses_after_the_timeout_are_dropped_as_late() {
    let s = setup(31, 2, 2, Duration::from_millis(2000)).await;
    let mut req = ClientRequest::get(s.proxy, &format!("coap://{}/hello", s.group), 1);
    req.margin = Duration::from_millis(2000);
    let got = send(&req, |_| {}).await.unwrap();
    // Only the two prompt devices; the slow ones answered after T' = 1 s.
    assert_eq!(by_origin(&got), s.devices[..2].to_vec());
    let late = s
        .events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::Dropped {
                    reason: DropReason::LateResponse,
                    ..
                }
            )
        })
        .count();
    assert_eq!(late, 2, "each late response is counted");
}

#[tokio::test(flavor = "current_thread")]
async fn s5_2_1_errors_and_unicast_forwarding_over_sockets() {
    let s = setup(41, 1, 0, Duration::ZERO).await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // No Multicast-Timeout: 4.00 with an empty Multicast-Timeout option.
    let m = build::encode(
        NON,
        code::GET,
        7,
        &[1],
        &mut [(
            opt::PROXY_URI,
            format!("coap://{}/hello", s.group).as_bytes(),
        )],
        &[],
    );
    let answer = ask(&sock, s.proxy, &m).await;
    let v = MessageView::parse(&answer).unwrap();
    assert_eq!(v.code(), code::BAD_REQUEST);
    assert_eq!(v.option(opt::MULTICAST_TIMEOUT_DEFAULT), Some(&[][..]));
    // Unicast target: forwarded as an ordinary proxy, one response, no Reply-From.
    let mut req = ClientRequest::get(s.proxy, &format!("coap://{}/hello", s.devices[0]), 1);
    req.margin = Duration::from_millis(200);
    let got = send(&req, |_| {}).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].code, got[0].reply_from), (code::CONTENT, None));
    assert_eq!(got[0].payload, b"hello from d41");
}

/// The forwarding loop runs on a thread of its own; dropping the future of `Proxy::run`
/// (an aborted task, a runtime shut down) must still stop it and close its sockets, as
/// dropping a task did.
#[tokio::test(flavor = "current_thread")]
async fn dropping_the_run_future_stops_the_proxy_and_frees_its_port() {
    let mut cfg = groxy::settings::load_default().run;
    cfg.listen = vec!["127.0.0.1:0".parse().unwrap()];
    cfg.proxy.groups[0].addr = (Ipv4Addr::new(224, 0, 1, 187), free_port()).into();
    let proxy = Proxy::bind(cfg).unwrap();
    let addr = proxy.listen_addrs()[0];
    let task = tokio::spawn(proxy.run(std::future::pending()));
    // Serving: a request without a proxy target gets its 4.04 (the proxy's own resources
    // are for OSCORE members only).
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ping = build::encode(
        NON,
        code::GET,
        9,
        &[9],
        &mut [(opt::URI_PATH, &b"x"[..])],
        &[],
    );
    let answer = ask(&sock, addr, &ping).await;
    assert_eq!(MessageView::parse(&answer).unwrap().code(), code::NOT_FOUND);
    task.abort();
    let _ = task.await;
    // The listener closes once the thread has seen the handle go.
    let mut freed = false;
    for _ in 0..100 {
        if UdpSocket::bind(addr).is_ok() {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "{addr} still bound after the run future was dropped");
}
