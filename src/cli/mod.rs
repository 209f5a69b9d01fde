//! Subcommands. Each lives in its own module; this one only parses and dispatches.

mod demo;
mod keygen;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "groxy", version, about = "Group OSCORE forward proxy")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Walk one Group OSCORE exchange through the engine with fresh keys and print every
    /// message: a group-mode request checked by an external signature checker, and the
    /// server's responses in group and pairwise mode.
    Demo {
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
        out: Option<std::path::PathBuf>,
    },
}

pub fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Demo { payload } => demo::run(&payload),
        Command::Keygen { subject, out } => keygen::run(&subject, out.as_deref()),
    }
}
