//! `groxy run` and `groxy check-config`.

use std::path::Path;

use crate::config;
use crate::runtime::Proxy;

pub fn run(file: Option<&Path>) -> Result<(), String> {
    let loaded = match file {
        Some(f) => config::load_file(f).map_err(|e| e.join("\n"))?,
        None => config::load_default(),
    };
    let rt = super::runtime()?;
    rt.block_on(async {
        let proxy = Proxy::bind(loaded.run.clone()).map_err(|e| e.to_string())?;
        for a in proxy.listen_addrs() {
            tracing::info!(event = "listening", addr = %a);
        }
        for (i, g) in loaded.run.proxy.groups.iter().enumerate() {
            tracing::info!(event = "group", name = %g.name, addr = %g.addr, egress = ?proxy.group_addr(i), enabled = g.enabled);
        }
        proxy.run(super::shutdown_signal()).await.map_err(|e| e.to_string())?;
        tracing::info!(event = "stopped");
        Ok(())
    })
}

pub fn check(file: &Path) -> Result<(), String> {
    match config::load_file(file) {
        Ok(l) => {
            println!(
                "{}: ok ({} listeners, {} groups)",
                file.display(),
                l.run.listen.len(),
                l.run.proxy.groups.len()
            );
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
