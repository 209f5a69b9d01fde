//! The Group OSCORE material in configuration: a group's public material for the proxy as
//! signature checker (RFC 10021 §12.3), and a member's full context (devices, clients).
//! Secrets (Master Secret, Signature Encryption Key, private keys) live in their own
//! files, hex-encoded, and are refused if anyone but the owner can read them.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::oscore::{CheckerConfig, ContextConfig, TbsForm};
use crate::proxy::{GroupSecurity, Policy};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Algorithms {
    #[serde(default = "ccm")]
    pub(crate) alg_aead: Option<i64>,
    #[serde(default = "ccm_i")]
    pub(crate) alg_group_enc: i64,
    #[serde(default = "eddsa")]
    pub(crate) alg_signature: i64,
    #[serde(default = "ecdh")]
    pub(crate) alg_pairwise_key_agreement: Option<i64>,
    /// "five" (aiocoap, Californium) or "four" (RFC 9338 §3.3 read literally).
    #[serde(default = "five")]
    pub(crate) tobesigned: String,
}
fn ccm() -> Option<i64> {
    Some(10)
}
fn ccm_i() -> i64 {
    10
}
fn eddsa() -> i64 {
    -8
}
fn ecdh() -> Option<i64> {
    Some(-27)
}
fn five() -> String {
    "five".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Member {
    pub(crate) id: String,
    pub(crate) credential: String,
}

/// `[group.security]`: the proxy as external signature checker.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckerSection {
    pub(crate) policy: String,
    pub(crate) gid: String,
    #[serde(default)]
    pub(crate) key_generation: u64,
    #[serde(flatten)]
    pub(crate) algorithms: Algorithms,
    /// Hex Signature Encryption Key as the Group Manager hands it out (§12.3)...
    pub(crate) signature_encryption_key_file: Option<PathBuf>,
    /// ...or the Master Secret it derives from, with the (public) Master Salt.
    pub(crate) master_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub(crate) master_salt: String,
    pub(crate) gm_credential: String,
    #[serde(default)]
    pub(crate) members: Vec<Member>,
    /// The proxy's own membership: its Sender ID, private key file and credential (the
    /// Master Secret file is then required), for the layer clients share with it.
    pub(crate) sender_id: Option<String>,
    pub(crate) private_key_file: Option<PathBuf>,
    pub(crate) credential: Option<String>,
    /// Sender IDs allowed to send group requests, through that layer or verified by the
    /// signature check (default: all).
    pub(crate) allow_kids: Option<Vec<String>>,
}

/// A member's Security Context file (for `groxy device --oscore` and `groxy client --oscore`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberFile {
    pub(crate) gid: String,
    #[serde(default)]
    pub(crate) key_generation: u64,
    #[serde(flatten)]
    pub(crate) algorithms: Algorithms,
    pub(crate) master_secret_file: PathBuf,
    #[serde(default)]
    pub(crate) master_salt: String,
    pub(crate) sender_id: String,
    pub(crate) private_key_file: PathBuf,
    pub(crate) credential: String,
    pub(crate) gm_credential: String,
    #[serde(default)]
    pub(crate) members: Vec<Member>,
}

fn hexval(key: &str, v: &str, errors: &mut Vec<String>) -> Vec<u8> {
    hex::decode(v.trim()).unwrap_or_else(|_| {
        errors.push(format!("{key}: not hex"));
        Vec::new()
    })
}

/// Reads a hex secret from a file that only its owner may read.
pub fn read_secret(key: &str, path: &Path, base: &Path, errors: &mut Vec<String>) -> Vec<u8> {
    use std::os::unix::fs::PermissionsExt;
    let p = base.join(path);
    match std::fs::metadata(&p) {
        Err(e) => {
            errors.push(format!("{key}: {}: {e}", p.display()));
            return Vec::new();
        }
        Ok(m) if m.permissions().mode() & 0o077 != 0 => {
            errors.push(format!(
                "{key}: {} is readable by group or others (mode {:o}); chmod 600 it",
                p.display(),
                m.permissions().mode() & 0o777
            ));
            return Vec::new();
        }
        Ok(_) => {}
    }
    match std::fs::read_to_string(&p) {
        Ok(s) => hexval(key, &s, errors),
        Err(e) => {
            errors.push(format!("{key}: {}: {e}", p.display()));
            Vec::new()
        }
    }
}

fn tbs(key: &str, v: &str, errors: &mut Vec<String>) -> TbsForm {
    match v {
        "five" => TbsForm::FiveElement,
        "four" => TbsForm::FourElement,
        _ => {
            errors.push(format!("{key}: must be \"five\" or \"four\""));
            TbsForm::FiveElement
        }
    }
}

fn members(key: &str, list: &[Member], errors: &mut Vec<String>) -> Vec<(Vec<u8>, Vec<u8>)> {
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            (
                hexval(&format!("{key}[{i}].id"), &m.id, errors),
                hexval(&format!("{key}[{i}].credential"), &m.credential, errors),
            )
        })
        .collect()
}

impl CheckerSection {
    /// Validates into what the engine takes; `base` resolves relative file names.
    pub(crate) fn resolve(
        &self,
        key: &str,
        base: &Path,
        errors: &mut Vec<String>,
    ) -> Option<GroupSecurity> {
        let n = errors.len();
        let policy = match self.policy.as_str() {
            "enforce" => Policy::Enforce,
            "monitor" => Policy::Monitor,
            "off" => Policy::Off,
            _ => {
                errors.push(format!("{key}.policy: must be enforce, monitor or off"));
                Policy::Off
            }
        };
        let sig_enc_key = self.signature_encryption_key_file.as_ref().map(|p| {
            read_secret(
                &format!("{key}.signature_encryption_key_file"),
                p,
                base,
                errors,
            )
        });
        let master_secret = self
            .master_secret_file
            .as_ref()
            .map(|p| read_secret(&format!("{key}.master_secret_file"), p, base, errors));
        if sig_enc_key.is_none() && master_secret.is_none() {
            errors.push(format!(
                "{key}: needs signature_encryption_key_file or master_secret_file"
            ));
        }
        let a = &self.algorithms;
        let checker = CheckerConfig {
            gid: hexval(&format!("{key}.gid"), &self.gid, errors),
            alg_aead: a.alg_aead,
            alg_group_enc: a.alg_group_enc,
            alg_signature: a.alg_signature,
            alg_pairwise_key_agreement: a.alg_pairwise_key_agreement,
            sig_enc_key,
            master_secret,
            master_salt: hexval(&format!("{key}.master_salt"), &self.master_salt, errors),
            gm_cred: hexval(&format!("{key}.gm_credential"), &self.gm_credential, errors),
            members: members(&format!("{key}.members"), &self.members, errors),
            tbs_form: tbs(&format!("{key}.tobesigned"), &a.tobesigned, errors),
            key_generation: self.key_generation,
        };
        if errors.len() > n {
            return None;
        }
        // Build it once, so that every problem shows at load time, not at the first packet.
        if let Err(e) = crate::oscore::SignatureChecker::new(&checker) {
            errors.push(format!("{key}: {e}"));
            return None;
        }
        let member = match (&self.sender_id, &self.private_key_file, &self.credential) {
            (None, None, None) => None,
            (Some(id), Some(key_file), Some(cred)) => {
                let Some(ms) = checker.master_secret.clone() else {
                    errors.push(format!(
                        "{key}: a member (sender_id) needs master_secret_file"
                    ));
                    return None;
                };
                let sender_id = hexval(&format!("{key}.sender_id"), id, errors);
                let cfg = ContextConfig {
                    master_secret: ms,
                    master_salt: checker.master_salt.clone(),
                    id_context: Some(checker.gid.clone()),
                    alg_aead: checker.alg_aead,
                    alg_group_enc: Some(checker.alg_group_enc),
                    alg_signature: Some(checker.alg_signature),
                    alg_pairwise_key_agreement: checker.alg_pairwise_key_agreement,
                    gm_cred: Some(checker.gm_cred.clone()),
                    sender_id: sender_id.clone(),
                    private_key: Some(read_secret(
                        &format!("{key}.private_key_file"),
                        key_file,
                        base,
                        errors,
                    )),
                    sender_cred: Some(hexval(&format!("{key}.credential"), cred, errors)),
                    // Every member but the proxy itself is a peer.
                    recipients: checker
                        .members
                        .iter()
                        .filter(|(m, _)| *m != sender_id)
                        .cloned()
                        .collect(),
                    tbs_form: checker.tbs_form,
                    key_generation: checker.key_generation,
                };
                if errors.len() > n {
                    return None;
                }
                if let Err(e) = crate::oscore::SecurityContext::new(&cfg) {
                    errors.push(format!("{key}: membership: {e}"));
                    return None;
                }
                Some(cfg)
            }
            _ => {
                errors.push(format!(
                    "{key}: sender_id, private_key_file and credential go together"
                ));
                return None;
            }
        };
        let allow_kids = self.allow_kids.as_ref().map(|l| {
            l.iter()
                .enumerate()
                .map(|(i, k)| hexval(&format!("{key}.allow_kids[{i}]"), k, errors))
                .collect()
        });
        if errors.len() > n {
            return None;
        }
        Some(GroupSecurity {
            policy,
            checker,
            member,
            allow_kids,
        })
    }
}

impl MemberFile {
    /// Reads a member file and resolves it to a Security Context's configuration, with
    /// every error as `key: reason`.
    pub fn load(path: &Path) -> Result<ContextConfig, Vec<String>> {
        let text =
            std::fs::read_to_string(path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
        let f: MemberFile = config::Config::builder()
            .add_source(config::File::from_str(&text, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| vec![format!("{}: {e}", path.display())])?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut errors = Vec::new();
        let a = &f.algorithms;
        let cfg = ContextConfig {
            master_secret: read_secret(
                "master_secret_file",
                &f.master_secret_file,
                base,
                &mut errors,
            ),
            master_salt: hexval("master_salt", &f.master_salt, &mut errors),
            id_context: Some(hexval("gid", &f.gid, &mut errors)),
            alg_aead: a.alg_aead,
            alg_group_enc: Some(a.alg_group_enc),
            alg_signature: Some(a.alg_signature),
            alg_pairwise_key_agreement: a.alg_pairwise_key_agreement,
            gm_cred: Some(hexval("gm_credential", &f.gm_credential, &mut errors)),
            sender_id: hexval("sender_id", &f.sender_id, &mut errors),
            private_key: Some(read_secret(
                "private_key_file",
                &f.private_key_file,
                base,
                &mut errors,
            )),
            sender_cred: Some(hexval("credential", &f.credential, &mut errors)),
            recipients: members("members", &f.members, &mut errors),
            tbs_form: tbs("tobesigned", &a.tobesigned, &mut errors),
            key_generation: f.key_generation,
        };
        if !errors.is_empty() {
            return Err(errors
                .into_iter()
                .map(|e| format!("{}: {e}", path.display()))
                .collect());
        }
        crate::oscore::SecurityContext::new(&cfg)
            .map_err(|e| vec![format!("{}: {e}", path.display())])?;
        Ok(cfg)
    }
}
