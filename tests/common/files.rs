//! Key and configuration files as an operator writes them: hex secrets, the `members`
//! entries of a config file, and config/member.toml's format that `groxy device --oscore`
//! and `groxy client --oscore` read.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use groxy::oscore::SecurityContext;

use super::Group;

/// `bytes` as hex in `path` with permissions `mode` (groxy refuses secrets that others
/// can read, so a test of that needs a mode other than 0600).
pub fn secret_with_mode(path: &Path, bytes: &[u8], mode: u32) {
    std::fs::write(path, hex::encode(bytes)).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `bytes` as hex in `path`, readable by its owner only.
pub fn secret(path: &Path, bytes: &[u8]) {
    secret_with_mode(path, bytes, 0o600);
}

/// The group's secrets as a checking proxy and its member devices read them from `dir`:
/// `master.secret` (the devices' and the client's) and `group.sek`, the Signature
/// Encryption Key (the proxy's).
pub fn group_secrets(dir: &Path, g: &Group) {
    secret(&dir.join("master.secret"), &g.master_secret);
    secret(&dir.join("group.sek"), &sek(g));
}

/// One entry of a `members = [...]` list.
pub fn member_line(id: &[u8], cred: &[u8]) -> String {
    format!(
        "  {{ id = \"{}\", credential = \"{}\" }},\n",
        hex::encode(id),
        hex::encode(cred)
    )
}

/// The `members` entries of every member of `g` but `except`.
pub fn members_toml(g: &Group, except: Option<&[u8]>) -> String {
    g.members
        .iter()
        .filter(|m| Some(m.id.as_slice()) != except)
        .map(|m| member_line(&m.id, m.cred.bytes()))
        .collect()
}

/// Member `id`'s file `<id>.toml` in `dir`, with its private key in `<id>.key` beside it;
/// the Master Secret it names is `dir/master.secret`, which the caller writes.
pub fn member_file(dir: &Path, g: &Group, id: &[u8]) -> PathBuf {
    let m = g.member(id);
    let name = hex::encode(id);
    secret(&dir.join(format!("{name}.key")), &m.key.to_bytes());
    let text = format!(
        "gid = \"{}\"\nkey_generation = {}\nmaster_secret_file = \"master.secret\"\n\
         master_salt = \"{}\"\nsender_id = \"{name}\"\nprivate_key_file = \"{name}.key\"\n\
         credential = \"{}\"\ngm_credential = \"{}\"\nmembers = [\n{}]\n",
        hex::encode(&g.gid),
        g.key_generation,
        hex::encode(&g.master_salt),
        hex::encode(m.cred.bytes()),
        hex::encode(g.gm.cred.bytes()),
        members_toml(g, Some(id)),
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    p
}

/// The Signature Encryption Key the Group Manager hands a signature checker (RFC 10021
/// §12.3); every member derives the same one, so the first member's context gives it.
pub fn sek(g: &Group) -> Vec<u8> {
    SecurityContext::new(&g.config(&g.members[0].id))
        .unwrap()
        .group()
        .unwrap()
        .sig_enc_key
        .clone()
        .unwrap()
}

/// `groxy run`'s configuration on loopback for one group at `coap://224.0.1.187:{port}`
/// that it checks under `enforce`: the group's public material plus the Signature
/// Encryption Key in `sek_file`, never the Master Secret (RFC 10021 §12.3), and the
/// state_dir that keeps its replay windows.
pub fn checking_proxy_toml(g: &Group, port: u16, sek_file: &str) -> String {
    format!(
        r#"[proxy]
listen = ["127.0.0.1:0"]
state_dir = "state"
[[group]]
name = "secure"
uri = "coap://224.0.1.187:{port}"
interface = "127.0.0.1"
[group.security]
policy = "enforce"
gid = "{}"
signature_encryption_key_file = "{sek_file}"
gm_credential = "{}"
members = [
{}]
"#,
        hex::encode(&g.gid),
        hex::encode(g.gm.cred.bytes()),
        members_toml(g, None),
    )
}
