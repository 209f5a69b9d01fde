//! `groxy keygen`: a fresh Ed25519 key pair and a CCS holding its public key.

use std::io::Write;
use std::path::Path;

use crate::oscore::alg::SigAlg;
use crate::oscore::cred::{Credential, PrivateKey};

pub(crate) fn run(subject: &str, out: Option<&Path>) -> Result<(), String> {
    let key = PrivateKey::generate(SigAlg::EdDsa);
    let cred = Credential::ccs_for(subject, &key.public_key());
    let key_hex = hex::encode(key.to_bytes());
    let ccs_hex = hex::encode(cred.bytes());
    match out {
        None => {
            println!("private_key {key_hex}");
            println!("credential {ccs_hex}");
        }
        Some(prefix) => {
            let key_path = prefix.with_extension("key");
            let ccs_path = prefix.with_extension("ccs");
            write_private(&key_path, &key_hex)?;
            std::fs::write(&ccs_path, format!("{ccs_hex}\n"))
                .map_err(|e| format!("{}: {e}", ccs_path.display()))?;
            println!("wrote {} and {}", key_path.display(), ccs_path.display());
        }
    }
    Ok(())
}

/// Creates the file readable by its owner only, before any secret is written to it.
fn write_private(path: &Path, content: &str) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    writeln!(f, "{content}").map_err(|e| format!("{}: {e}", path.display()))
}
