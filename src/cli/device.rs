//! `groxy device`: a simulated group member.

use std::time::Duration;

use crate::tools::device::{Device, DeviceConfig, Settings};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Group address and port to join.
    #[arg(long, default_value = "224.0.1.187:5683")]
    pub group: String,
    /// Interface to join on: an IPv4 address or an interface name.
    #[arg(long, default_value = "127.0.0.1")]
    pub interface: String,
    /// Unicast address to answer from.
    #[arg(long, default_value = "127.0.0.11:5683")]
    pub bind: String,
    #[arg(long, default_value = "device")]
    pub name: String,
    /// Largest random delay before answering a group request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub(crate) leisure_ms: u64,
    /// A fixed delay before answering every group request, in milliseconds (a slow device).
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Print one JSON line per received datagram on stdout (what arrived, from where).
    #[arg(long)]
    pub(crate) log_requests: bool,
    /// Be a Group OSCORE member with the context in this file (see config/member.toml).
    #[arg(long)]
    pub oscore: Option<std::path::PathBuf>,
    /// Mode of responses to group-mode requests: group (signed) or pairwise.
    #[arg(long, default_value = "group")]
    pub response_mode: String,
    /// How often /counter changes and its observers are notified, in milliseconds
    /// (RFC 7641).
    #[arg(long, default_value_t = 1000)]
    pub notify_interval_ms: u64,
    /// Every this many notifications one is Confirmable; an observer that has not
    /// acknowledged the last one by the next is removed (RFC 7641 §4.5). 0: all NON.
    #[arg(long, default_value_t = 10)]
    pub con_every: u32,
    /// Observers of /counter kept at most; a registration past it is answered without
    /// Observe (not registered).
    #[arg(long, default_value_t = 64)]
    pub max_observers: usize,
    /// Size of the /large representation in bytes (served block-wise, RFC 7959).
    #[arg(long, default_value_t = 3000)]
    pub large_bytes: usize,
    /// /hello answers carry this Max-Age (seconds) and an ETag; a GET /hello with that
    /// ETag gets 2.03 (for testing a caching proxy, groupcomm-proxy §7).
    #[arg(long)]
    pub hello_max_age: Option<u32>,
    /// With --oscore: the Sender ID (hex) of the group's Deterministic Client, whose
    /// Deterministic Requests (cacheable-oscore §3.4.3) this device answers (GET and
    /// FETCH only, signed, with an outer Max-Age).
    #[arg(long, requires = "oscore")]
    pub deterministic_kid: Option<String>,
    /// Tests only: with --oscore, also send replayed and forged notifications.
    #[arg(long, hide = true)]
    pub misbehave: bool,
}

pub(crate) fn run(a: Args) -> Result<(), String> {
    let cfg = DeviceConfig {
        name: a.name,
        group: super::parse_addr(&a.group)?,
        interface: a.interface.parse()?,
        bind: super::parse_addr(&a.bind)?,
        leisure: Duration::from_millis(a.leisure_ms),
        delay: Duration::from_millis(a.delay_ms),
        oscore: match &a.oscore {
            Some(f) => Some((
                crate::settings::security::MemberFile::load(f).map_err(|e| e.join("\n"))?,
                match a.response_mode.as_str() {
                    "group" => crate::oscore::Mode::Group,
                    "pairwise" => crate::oscore::Mode::Pairwise,
                    m => return Err(format!("--response-mode {m}: group or pairwise")),
                },
            )),
            None => None,
        },
    };
    let deterministic_kid = match &a.deterministic_kid {
        Some(k) => Some(hex::decode(k).map_err(|_| format!("--deterministic-kid {k}: not hex"))?),
        None => None,
    };
    let rt = super::runtime()?;
    rt.block_on(async {
        let mut d = Device::bind(cfg.clone()).map_err(|e| e.to_string())?;
        d.log_requests(a.log_requests);
        if let Some(f) = &a.oscore {
            d.rekey_on_sighup(f.clone());
        }
        d.settings(Settings {
            notify_interval: Duration::from_millis(a.notify_interval_ms.max(1)),
            con_every: a.con_every,
            max_observers: a.max_observers,
            large_bytes: a.large_bytes,
            misbehave: a.misbehave,
            hello_max_age: a.hello_max_age,
            deterministic_kid: deterministic_kid.clone(),
        });
        tracing::info!(event = "device", name = %cfg.name, group = %cfg.group, unicast = %d.unicast_addr().map_err(|e| e.to_string())?);
        tokio::select! {
            r = d.run() => r.map_err(|e| e.to_string()),
            _ = super::shutdown_signal() => Ok(()),
        }
    })
}
