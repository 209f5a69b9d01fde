//! Subcommands. Each lives in its own module; this one only parses and dispatches.

mod client;
mod demo;
mod device;
mod keygen;
mod oscore_demo;
mod run;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// The command line of `groxy`.
#[derive(Parser, Debug)]
#[command(name = "groxy", version, about = "Group OSCORE forward proxy")]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,
    /// The job to run.
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

/// The jobs of the `groxy` binary.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy (embedded defaults without --config).
    Run {
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file; print every error with its key.
    CheckConfig {
        /// The configuration file to check.
        file: PathBuf,
    },
    /// Send one request through the proxy and print every response as it arrives.
    Client(client::Args),
    /// A simulated group member that answers /hello, /echo and /.well-known/core.
    Device(device::Args),
    /// With no root and no config: a proxy and N devices on loopback multicast, one
    /// request, every response printed.
    Demo {
        /// Number of simulated devices.
        #[arg(long, default_value_t = 3)]
        devices: u8,
    },
    /// Walk one Group OSCORE exchange through the engine with fresh keys.
    OscoreDemo {
        /// Payload of the request (a POST to /echo).
        #[arg(long, default_value = "hello, group")]
        payload: String,
    },
    /// Make an Ed25519 key pair and its CCS authentication credential (RFC 10021 §2.4).
    Keygen {
        /// Subject claim of the CCS.
        #[arg(long, default_value = "groxy")]
        subject: String,
        /// Write PREFIX.key (private key, mode 0600) and PREFIX.ccs instead of printing.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// `default` applies without RUST_LOG: `info` for the long-running jobs, `warn` for the
/// ones whose output is their result (client, demo).
fn init_logs(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => b.try_init(),
        LogFormat::Json => b.json().try_init(),
    };
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio: {e}"))
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Runs the chosen job; the error is the message to print.
pub fn run(cli: Cli) -> Result<(), String> {
    let default = match cli.command {
        Command::Run { .. } | Command::Device(_) => "info",
        _ => "warn",
    };
    init_logs(cli.log_format, default);
    match cli.command {
        Command::Run { config } => run::run(config.as_deref()),
        Command::CheckConfig { file } => run::check(&file),
        Command::Client(a) => client::run(a),
        Command::Device(a) => device::run(a),
        Command::Demo { devices } => demo::run(devices),
        Command::OscoreDemo { payload } => oscore_demo::run(&payload),
        Command::Keygen { subject, out } => keygen::run(&subject, out.as_deref()),
    }
}

pub(crate) fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("{s:?} is not an address:port"))
}
