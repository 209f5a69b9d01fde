//! `groxy demo`: a proxy and N devices on loopback multicast (IPv4 multicast on `lo` needs
//! no privileges), one request through the proxy, every response printed with its
//! Reply-From. Exits 0 when every device answered exactly once.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use crate::runtime::{Interface, Proxy};
use crate::settings;
use crate::tools::client::{ClientRequest, run as send};
use crate::tools::device::{Device, DeviceConfig};

/// A port no one on this host is bound to right now, for the demo group, with the socket
/// that holds it: kept until the devices are bound on it, so that no ephemeral port
/// chosen meanwhile (the proxy's egress sockets, another program's) can be that port.
fn free_port() -> Result<(UdpSocket, u16), String> {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| e.to_string())?;
    let port = s.local_addr().map_err(|e| e.to_string())?.port();
    Ok((s, port))
}

pub(crate) fn run(n: u8) -> Result<(), String> {
    if n == 0 || n > 200 {
        return Err("--devices must be 1..=200".into());
    }
    let (hold, port) = free_port()?;
    let group: SocketAddr = (Ipv4Addr::new(224, 0, 1, 187), port).into();
    let mut cfg = settings::load_default().run;
    cfg.listen = vec!["127.0.0.1:0".parse().unwrap()];
    cfg.proxy.groups[0].addr = group;
    let rt = super::runtime()?;
    rt.block_on(async move {
        // The devices are bound first, on the port still held: the proxy's egress
        // sockets take ephemeral ports, and one of them could otherwise be the group's.
        let mut devices = Vec::new();
        for i in 0..n {
            let bind: SocketAddr = (Ipv4Addr::new(127, 0, 0, 11 + i), port).into();
            let d = Device::bind(DeviceConfig {
                name: format!("device{}", i + 1),
                group,
                interface: Interface::Addr(Ipv4Addr::LOCALHOST),
                bind,
                leisure: Duration::from_millis(200),
                delay: Duration::ZERO,
                oscore: None,
            })
            .map_err(|e| e.to_string())?;
            devices.push(d);
        }
        drop(hold);
        let proxy = Proxy::bind(cfg).map_err(|e| e.to_string())?;
        let proxy_addr = proxy.listen_addrs()[0];
        let tasks: Vec<_> = devices.into_iter().map(|d| tokio::spawn(d.run())).collect();
        let stop = tokio::sync::oneshot::channel::<()>();
        let proxy_task = tokio::spawn(proxy.run(async move {
            let _ = stop.1.await;
        }));
        println!("proxy on {proxy_addr}, group coap://{group}, {n} devices on 127.0.0.11..");
        let uri = format!("coap://{group}/hello");
        println!("GET {uri} via the proxy, Multicast-Timeout 1 s");
        let req = ClientRequest::get(proxy_addr, &uri, 1);
        let got = send(&req, |r| super::client::print(r, false))
            .await
            .map_err(|e| e.to_string())?;
        let _ = stop.0.send(());
        let _ = proxy_task.await;
        for t in tasks {
            t.abort();
        }
        let mut from: Vec<_> = got.iter().filter_map(|r| r.reply_from).collect();
        from.sort();
        from.dedup();
        println!("{} responses from {} devices", got.len(), from.len());
        if got.len() == n as usize && from.len() == n as usize {
            Ok(())
        } else {
            Err(format!("expected one response from each of {n} devices"))
        }
    })
}
