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
