//! A Group OSCORE group's key material and the configurations built from it: a member's
//! context and what an external signature checker is given. Shared by tests/common (fresh
//! keys per run) and fuzz/src/lib.rs (fixed keys, so that a crash replays), which
//! includes this file by path: it uses nothing but groxy.

use groxy::oscore::cred::{Credential, PrivateKey};
use groxy::oscore::{CheckerConfig, ContextConfig};

/// One member's identity.
#[derive(Clone)]
pub struct Member {
    /// Sender ID (empty for the Group Manager).
    pub id: Vec<u8>,
    /// Its Ed25519 private key.
    pub key: PrivateKey,
    /// Its CCS.
    pub cred: Credential,
}

/// A group: Gid, secrets, the Group Manager and the members.
#[derive(Clone)]
pub struct Group {
    /// Key Generation Number.
    pub key_generation: u64,
    /// Gid.
    pub gid: Vec<u8>,
    /// Master Secret.
    pub master_secret: Vec<u8>,
    /// Master Salt.
    pub master_salt: Vec<u8>,
    /// The Group Manager.
    pub gm: Member,
    /// The members.
    pub members: Vec<Member>,
}

impl Group {
    /// Member `id`.
    pub fn member(&self, id: &[u8]) -> &Member {
        self.members.iter().find(|m| m.id == id).expect("member")
    }

    /// The context of member `me`, knowing every other member.
    pub fn config(&self, me: &[u8]) -> ContextConfig {
        let m = self.member(me);
        ContextConfig {
            master_secret: self.master_secret.clone(),
            master_salt: self.master_salt.clone(),
            id_context: Some(self.gid.clone()),
            alg_aead: Some(10),
            alg_group_enc: Some(10),
            alg_signature: Some(-8),
            alg_pairwise_key_agreement: Some(-27),
            gm_cred: Some(self.gm.cred.bytes().to_vec()),
            sender_id: m.id.clone(),
            private_key: Some(m.key.to_bytes().to_vec()),
            sender_cred: Some(m.cred.bytes().to_vec()),
            recipients: self
                .members
                .iter()
                .filter(|o| o.id != me)
                .map(|o| (o.id.clone(), o.cred.bytes().to_vec()))
                .collect(),
            key_generation: self.key_generation,
            ..Default::default()
        }
    }

    /// What an external signature checker is given (RFC 10021 §12.3).
    pub fn checker_config(&self) -> CheckerConfig {
        CheckerConfig {
            gid: self.gid.clone(),
            alg_aead: Some(10),
            alg_group_enc: 10,
            alg_signature: -8,
            alg_pairwise_key_agreement: Some(-27),
            master_secret: Some(self.master_secret.clone()),
            master_salt: self.master_salt.clone(),
            gm_cred: self.gm.cred.bytes().to_vec(),
            members: self
                .members
                .iter()
                .map(|m| (m.id.clone(), m.cred.bytes().to_vec()))
                .collect(),
            key_generation: self.key_generation,
            ..Default::default()
        }
    }
}
