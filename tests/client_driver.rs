//! The client's socket loop (`groxy::tools::client::run`) against a scripted proxy on
//! loopback: the message layer of the sans-I/O client reaches the wire.

use std::time::{Duration, Instant};

use groxy::coap::MessageView;
use groxy::coap::build::{self, ACK, CON, RST, code};
use groxy::tools::client::{ClientRequest, run};
use tokio::net::UdpSocket;
use tokio::time::timeout;

async fn recv(sock: &UdpSocket, within: Duration) -> Vec<u8> {
    let mut buf = [0u8; 1500];
    let (n, _) = timeout(within, sock.recv_from(&mut buf))
        .await
        .expect("a datagram in time")
        .unwrap();
    buf[..n].to_vec()
}

/// RFC 7252 §4.2: a lost CON request is sent again (within 1.5 ACK_TIMEOUT); §4.5: the
/// response the proxy sends twice is reported once and both copies are acknowledged.
#[tokio::test]
async fn rfc7252_s4_2_lost_con_request_retransmitted_duplicate_response_once() {
    let proxy = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut req = ClientRequest::get(proxy.local_addr().unwrap(), "coap://224.0.1.187/hello", 1);
    req.confirmable = true;
    // T = 4 s: past the first retransmission (at most 3 s after the request).
    req.margin = Duration::from_secs(3);
    let script = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        let (n, client) = proxy.recv_from(&mut buf).await.unwrap();
        let first = buf[..n].to_vec();
        // The first copy is "lost"; the retransmission must come.
        let again = recv(&proxy, Duration::from_millis(3500)).await;
        assert_eq!(again, first, "the same message, the same Message ID");
        let v = MessageView::parse(&first).unwrap();
        proxy
            .send_to(&build::empty(ACK, v.message_id()), client)
            .await
            .unwrap();
        let resp = build::encode(CON, code::CONTENT, 0x0777, v.token(), &mut [], b"hi");
        let mut acks = Vec::new();
        for _ in 0..2 {
            proxy.send_to(&resp, client).await.unwrap();
            acks.push(recv(&proxy, Duration::from_secs(1)).await);
        }
        acks
    });
    let got = run(&req, |_| {}).await.unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].payload, b"hi");
    let acks = script.await.unwrap();
    assert_eq!(acks, vec![build::empty(ACK, 0x0777); 2]);
}

/// RFC 7252 §4.2: a Reset of the request cancels it; the client does not wait out T.
#[tokio::test]
async fn rfc7252_s4_2_reset_request_ends_the_client_early() {
    let proxy = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut req = ClientRequest::get(proxy.local_addr().unwrap(), "coap://224.0.1.187/hello", 3);
    req.confirmable = true;
    let script = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        let (n, client) = proxy.recv_from(&mut buf).await.unwrap();
        let mid = MessageView::parse(&buf[..n]).unwrap().message_id();
        proxy
            .send_to(&build::empty(RST, mid), client)
            .await
            .unwrap();
    });
    let t = Instant::now();
    let got = timeout(Duration::from_secs(10), run(&req, |_| {}))
        .await
        .unwrap()
        .unwrap();
    assert!(got.is_empty());
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "ended at the Reset, not at T = 4 s: {:?}",
        t.elapsed()
    );
    script.await.unwrap();
}

/// RFC 7641 §3.6 on the wire: `run_with` for an observation reports notifications
/// until its stop future resolves (Ctrl-C in `groxy client`), then sends the
/// deregistration (Observe 1, the same token) and returns once it is answered.
#[tokio::test]
async fn rfc7641_s3_6_stop_deregisters_and_returns() {
    use groxy::tools::client::run_with;
    let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr().unwrap();
    let mut req = ClientRequest::get(addr, &format!("coap://{addr}/counter"), 2);
    req.observe = true;
    req.direct = true;
    // Ctrl-C, pressed once two notifications were shown.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut stop_tx = Some(stop_tx);
    let script = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        let (n, client) = server.recv_from(&mut buf).await.unwrap();
        let reg = buf[..n].to_vec();
        let v = MessageView::parse(&reg).unwrap();
        assert_eq!(v.option(6), Some(&[][..]), "Observe 0");
        let token = v.token().to_vec();
        for (k, mid) in [(1u8, 0x100u16), (2, 0x101)] {
            let n = build::encode(1, code::CONTENT, mid, &token, &mut [(6, &[k][..])], &[k]);
            server.send_to(&n, client).await.unwrap();
        }
        let dereg = recv(&server, Duration::from_secs(5)).await;
        let d = MessageView::parse(&dereg).unwrap();
        assert_eq!((d.token(), d.option(6)), (&token[..], Some(&[1u8][..])));
        let answer = build::encode(1, code::CONTENT, 0x102, &token, &mut [], b"2");
        server.send_to(&answer, client).await.unwrap();
    });
    let mut seen = Vec::new();
    let n = timeout(
        Duration::from_secs(10),
        run_with(
            &req,
            |r| {
                seen.push(r.observe);
                if seen.len() == 2 {
                    let _ = stop_tx.take().map(|t| t.send(()));
                }
                true
            },
            async {
                let _ = stop_rx.await;
            },
        ),
    )
    .await
    .expect("returns after the deregistration is answered")
    .unwrap();
    script.await.unwrap();
    assert_eq!(n, 3);
    assert_eq!(seen, vec![Some(1), Some(2), None]);
}
