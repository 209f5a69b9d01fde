//! `groxy run` as an operator runs it: SIGHUP reloads the configuration without losing
//! anything (an invalid file is refused and counted), SIGTERM stops intake, lets the
//! exchanges in flight run to their timeouts and exits 0.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::process::{local_get, metric, run_quietly, signal, wait_for, wait_ready};
use common::{free_port, free_tcp_port};
use groxy::coap::MessageView;
use groxy::coap::build::{self, NON, code};
use groxy::coap::options as opt;

/// How long a condition may take to come about.
const WAIT: Duration = Duration::from_secs(15);

fn config(listen: u16, metrics: u16, group: u16, max_exchanges: &str) -> String {
    format!(
        "[proxy]\nlisten = [\"127.0.0.1:{listen}\"]\nmetrics = \"127.0.0.1:{metrics}\"\n[limits]\nmax_exchanges = {max_exchanges}\n[[group]]\nname = \"g\"\nuri = \"coap://224.0.1.187:{group}\"\ninterface = \"127.0.0.1\"\n"
    )
}

#[test]
fn sighup_reloads_or_refuses_and_sigterm_drains_then_exits_0() {
    let dir = std::env::temp_dir().join(format!("groxy-life-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (listen, mport, gport) = (free_port(), free_tcp_port(), free_port());
    let file = dir.join("groxy.toml");
    std::fs::write(&file, config(listen, mport, gport, "1000")).unwrap();
    let mut child = run_quietly(&file);
    wait_ready(mport, WAIT);
    assert_eq!(metric(mport, "groxy_exchanges_capacity"), Some(1000.0));

    // An invalid file: refused, counted, the running configuration stays.
    std::fs::write(&file, config(listen, mport, gport, "0")).unwrap();
    signal(&child.0, libc::SIGHUP);
    wait_for("a counted reload failure", WAIT, || {
        metric(mport, "groxy_config_reloads_total{result=\"failure\"}") == Some(1.0)
    });
    assert_eq!(metric(mport, "groxy_exchanges_capacity"), Some(1000.0));
    // A valid change: applied.
    std::fs::write(&file, config(listen, mport, gport, "500")).unwrap();
    signal(&child.0, libc::SIGHUP);
    wait_for("a counted reload", WAIT, || {
        metric(mport, "groxy_config_reloads_total{result=\"success\"}") == Some(1.0)
    });
    wait_for("the new capacity", WAIT, || {
        metric(mport, "groxy_exchanges_capacity") == Some(500.0)
    });

    // An exchange in flight (T' = 2 s, no devices answer), then SIGTERM.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let request = |mid: u16, token: u8| {
        let uri = format!("coap://224.0.1.187:{gport}/hello");
        build::encode(
            NON,
            code::GET,
            mid,
            &[token],
            &mut [
                (opt::MULTICAST_TIMEOUT_DEFAULT, &[2][..]),
                (opt::PROXY_URI, uri.as_bytes()),
            ],
            &[],
        )
    };
    sock.send_to(&request(1, 1), ("127.0.0.1", listen)).unwrap();
    wait_for("the exchange", WAIT, || {
        metric(mport, "groxy_exchanges_active") == Some(1.0)
    });
    let stopped_at = Instant::now();
    signal(&child.0, libc::SIGTERM);
    wait_for("/readyz 503", WAIT, || {
        local_get(mport, "/readyz").is_none_or(|(s, _)| s == 503)
    });
    // Intake is closed: a new request gets 5.03.
    sock.send_to(&request(2, 2), ("127.0.0.1", listen)).unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    assert_eq!(
        MessageView::parse(&buf[..n]).unwrap().code(),
        code::SERVICE_UNAVAILABLE
    );
    // It waits for the exchange's timeout, then exits 0.
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            stopped_at.elapsed() < Duration::from_secs(10),
            "did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert!(
        stopped_at.elapsed() >= Duration::from_millis(1500),
        "exited before the exchange ended"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
