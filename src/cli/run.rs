//! `groxy run` and `groxy check-config`.

use std::path::Path;

use crate::ops::{self, Health, Ops};
use crate::runtime::{Control, Proxy};
use crate::settings;

pub(crate) fn run(file: Option<&Path>) -> Result<(), String> {
    let loaded = match file {
        Some(f) => settings::load_file(f).map_err(|e| e.join("\n"))?,
        None => settings::load_default(),
    };
    let rt = super::runtime()?;
    rt.block_on(async {
        // The operations endpoint first: /healthz answers (and /readyz says 503) while
        // the proxy's sockets are being bound.
        let ops = match loaded.metrics {
            Some(addr) => {
                let (o, m) = Ops::start(addr, &loaded.run.proxy).map_err(|e| e.to_string())?;
                tracing::info!(event = "metrics", addr = %o.local_addr());
                Some((o, m))
            }
            None => None,
        };
        let mut proxy = Proxy::bind(loaded.run.clone()).map_err(|e| e.to_string())?;
        for a in proxy.listen_addrs() {
            tracing::info!(event = "listening", addr = %a);
        }
        for (i, g) in loaded.run.proxy.groups.iter().enumerate() {
            tracing::info!(event = "group", name = %g.name, addr = %g.addr, egress = ?proxy.group_addr(i), enabled = g.enabled);
        }
        // The HTTP bridge (issue 13): a virtual listener of the same engine.
        let http_metrics = match &ops {
            Some((_, m)) => m.http(),
            None => crate::ops::metrics::HttpMetrics::new(&prometheus::Registry::new()),
        };
        let _http = match loaded.http.clone() {
            Some(h) => {
                let (tx, rx) = proxy.attach_bridge().map_err(|e| e.to_string())?;
                let s = crate::http::start(h, tx, rx, &loaded.run.proxy, http_metrics)
                    .map_err(|e| e.to_string())?;
                for a in s.local_addrs() {
                    tracing::info!(event = "http_listening", addr = %a);
                }
                Some(s)
            }
            None => None,
        };
        let (ops, health) = match ops {
            Some((o, m)) => {
                proxy.observe(m);
                let h = o.health();
                (Some(o), h)
            }
            // Without an endpoint nobody reads readiness; no observer costs nothing.
            None => (None, std::sync::Arc::new(Health::default())),
        };
                // Registered before readiness is reported, so that no SIGHUP sent after /readyz
        // said 200 can meet the default action (which would kill the process).
        let control = proxy.controller();
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| format!("SIGHUP handler: {e}"))?;
        tokio::spawn(reload_on_hangup(hup, file.map(Path::to_path_buf), control));
        ops::serve(proxy, health, super::shutdown_signal())
            .await
            .map_err(|e| e.to_string())?;
        drop(ops);
        tracing::info!(event = "stopped");
        Ok(())
    })
}

/// SIGHUP (the systemd unit's ExecReload) reads the configuration again and hands it to
/// the proxy, which applies it atomically or keeps the running one; errors are logged
/// with every key and counted.
async fn reload_on_hangup(
    mut hup: tokio::signal::unix::Signal,
    file: Option<std::path::PathBuf>,
    control: tokio::sync::mpsc::UnboundedSender<Control>,
) {
    while hup.recv().await.is_some() {
        let loaded = match &file {
            Some(f) => settings::load_file(f)
                .map(|l| l.run)
                .map_err(|e| e.join("; ")),
            None => Ok(settings::load_default().run),
        };
        if control.send(Control::Reload(loaded)).is_err() {
            return;
        }
    }
}

pub(crate) fn check(file: &Path) -> Result<(), String> {
    match settings::load_file(file) {
        Ok(l) => {
            println!(
                "{}: ok ({} listeners, {} groups)",
                file.display(),
                l.run.listen.len(),
                l.run.proxy.groups.len()
            );
            // `[proxy] threads` (issue 14): what it resolved to (a group member runs every
            // thread: its own OSCORE layer is shared between them).
            let threads = l.run.proxy.threads;
            println!("{}: {threads} forwarding thread(s)", file.display());
            // Chains (groupcomm-proxy §8): which groups are not the last hop here.
            for g in &l.run.proxy.groups {
                if let Some(n) = &g.next_hop {
                    println!(
                        "{}: group {} goes to next hop {} (margin {} s, Hop-Limit {})",
                        file.display(),
                        g.name,
                        n.addr,
                        n.margin.as_secs(),
                        n.hop_limit
                    );
                }
            }
            Ok(())
        }
        Err(errors) => {
            for e in &errors {
                println!("{}: {e}", file.display());
            }
            Err(format!("{} error(s)", errors.len()))
        }
    }
}
