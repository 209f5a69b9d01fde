//! HTTP group requests beside the same over CoAP, in one run (issue 13): a proxy and
//! three devices in this process on loopback multicast; `workers` clients each keep one
//! request outstanding; the time to the last part (the third device's response) is
//! measured, and the request is then abandoned (HTTP: the connection closed; CoAP: the
//! client stops listening), since T' itself would dominate otherwise.
//!
//! `cargo bench --bench http [-- SECONDS WORKERS]` (`BENCH_PHASES=1`: every 50th HTTP
//! request's connect, head and part times on stderr). Figures on a shared VM are noisy:
//! compare the two lines of one run, not runs.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use groxy::coap::MessageView;
use groxy::coap::build::{self, NON};
use groxy::coap::options as opt;
use groxy::runtime::{Interface, Proxy};
use groxy::tools::device::{Device, DeviceConfig};
use http_body_util::{BodyExt, Empty};

const DEVICES: usize = 3;

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v.get(((v.len() as f64 * p).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or_default()
}

fn report(name: &str, mut lat: Vec<Duration>, secs: f64) {
    let n = lat.len();
    let p50 = pct(&mut lat, 0.50);
    let p99 = pct(&mut lat, 0.99);
    println!(
        "{name:5} {:8.0} group requests/s  p50 {:6.2} ms  p99 {:6.2} ms to the last part ({n} requests)",
        n as f64 / secs,
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
}

async fn http_worker(addr: SocketAddr, path: String, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let mut lat = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let Ok((mut s, conn)) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await
        else {
            continue;
        };
        let c = tokio::spawn(conn);
        let req = hyper::Request::get(path.as_str())
            .header("host", "bench")
            .header("multicast-timeout", "2")
            .header("accept", "multipart/mixed; delivery=streamed")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let t_conn = t.elapsed();
        let Ok(resp) = s.send_request(req).await else {
            continue;
        };
        let t_head = t.elapsed();
        let mut t_parts = Vec::new();

        let mut body = resp.into_body();
        let mut seen = 0;
        let mut buf = Vec::new();
        while let Some(Ok(f)) = body.frame().await {
            if let Ok(d) = f.into_data() {
                buf.extend_from_slice(&d);
                let now = buf.windows(11).filter(|w| w == b"reply-from:").count();
                if now > seen {
                    t_parts.push(t.elapsed());
                }
                seen = now;
                if seen >= DEVICES {
                    break;
                }
            }
        }
        if seen >= DEVICES {
            lat.push(t.elapsed());
            if std::env::var_os("BENCH_PHASES").is_some() && lat.len() % 50 == 0 {
                eprintln!("conn {t_conn:?} head {t_head:?} parts {t_parts:?}");
            }
        }
        c.abort();
    }
    lat
}

fn coap_worker(proxy: SocketAddr, uri: String, stop: Arc<AtomicBool>) -> Vec<Duration> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut lat = Vec::new();
    let mut mid: u16 = 0;
    let mut token: u64 = 0;
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        mid = mid.wrapping_add(1);
        token += 1;
        let tk = token.to_be_bytes();
        let req = build::encode(
            NON,
            1,
            mid,
            &tk,
            &mut [
                (opt::MULTICAST_TIMEOUT_DEFAULT, &[2][..]),
                (opt::PROXY_URI, uri.as_bytes()),
            ],
            &[],
        );
        let t = Instant::now();
        s.send_to(&req, proxy).unwrap();
        let mut seen = 0;
        while seen < DEVICES {
            let Ok((n, _)) = s.recv_from(&mut buf) else {
                break;
            };
            if MessageView::parse(&buf[..n]).is_ok_and(|v| v.token() == tk) {
                seen += 1;
            }
        }
        if seen == DEVICES {
            lat.push(t.elapsed());
        }
    }
    lat
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let secs: u64 = args.first().and_then(|a| a.parse().ok()).unwrap_or(5);
    let workers: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(8);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let group: SocketAddr = (Ipv4Addr::new(224, 0, 1, 187), port).into();
    let mut loaded = groxy::settings::load_str(&format!(
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\n[http]\nlisten = [\"127.0.0.1:0\"]\nmax_endpoints = 1000000\n\
         [[group]]\nname = \"g\"\nuri = \"coap://{group}\"\ninterface = \"127.0.0.1\"\n"
    ))
    .unwrap();
    let l = &mut loaded.run.proxy.limits;
    l.max_exchanges = 1 << 20;
    l.max_exchanges_per_client = 1 << 20;
    l.client_rate = 1e9;
    l.client_burst = 1e9;
    l.dedup_capacity = 1 << 22;
    let (coap_addr, http_addr) = rt.block_on(async {
        let mut proxy = Proxy::bind(loaded.run.clone()).unwrap();
        let (tx, rx) = proxy.attach_bridge().unwrap();
        let server = groxy::http::start(
            loaded.http.clone().unwrap(),
            tx,
            rx,
            &loaded.run.proxy,
            groxy::ops::metrics::HttpMetrics::new(&prometheus::Registry::new()),
        )
        .unwrap();
        let http = server.local_addrs()[0];
        std::mem::forget(server);
        let coap = proxy.listen_addrs()[0];
        for i in 0..DEVICES {
            let d = Device::bind(DeviceConfig {
                name: format!("d{i}"),
                group,
                interface: Interface::Addr(Ipv4Addr::LOCALHOST),
                bind: (Ipv4Addr::new(127, 0, 0, 201 + i as u8), port).into(),
                leisure: Duration::ZERO,
                delay: Duration::ZERO,
                oscore: None,
            })
            .unwrap();
            tokio::spawn(d.run());
        }
        tokio::spawn(proxy.run(std::future::pending()));
        (coap, http)
    });
    let rt = Arc::new(rt);
    let driver = {
        let rt = rt.clone();
        std::thread::spawn(move || rt.block_on(std::future::pending::<()>()))
    };
    let _ = driver;
    let uri = format!("coap://{group}/hello");
    println!(
        "{DEVICES} devices, {workers} clients, {secs} s each, T' = 2 s (abandoned at the last part)"
    );
    // CoAP first, then HTTP, in this one run.
    let stop = Arc::new(AtomicBool::new(false));
    let t = Instant::now();
    let hs: Vec<_> = (0..workers)
        .map(|_| {
            let (u, s) = (uri.clone(), stop.clone());
            std::thread::spawn(move || coap_worker(coap_addr, u, s))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let lat: Vec<Duration> = hs.into_iter().flat_map(|h| h.join().unwrap()).collect();
    report("CoAP", lat, t.elapsed().as_secs_f64());
    // Let the CoAP exchanges run out (T' = 2 s) before the HTTP run.
    std::thread::sleep(Duration::from_secs(3));
    let stop = Arc::new(AtomicBool::new(false));
    let path = format!("/hc/{uri}");
    let t = Instant::now();
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let lat = client_rt.block_on(async {
        let hs: Vec<_> = (0..workers)
            .map(|_| tokio::spawn(http_worker(http_addr, path.clone(), stop.clone())))
            .collect();
        tokio::time::sleep(Duration::from_secs(secs)).await;
        stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for h in hs {
            all.extend(h.await.unwrap());
        }
        all
    });
    report("HTTP", lat, t.elapsed().as_secs_f64());
}
