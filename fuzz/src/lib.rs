//! Fixtures shared by the fuzz targets and the seed-corpus generator: one Group OSCORE
//! group with deterministic keys (so that seeds made by `examples/gen_corpus.rs` verify
//! under the contexts and checkers the targets build), a plain OSCORE pair, and the
//! engine configuration the `engine` target drives.

use std::net::SocketAddr;
use std::time::Duration;

use groxy::oscore::alg::SigAlg;
use groxy::oscore::cred::{Credential, PrivateKey};
use groxy::oscore::{ContextConfig, SecurityContext, SignatureChecker};
use groxy::proxy::{
    CacheConfig, GroupCache, GroupSecurity, GroupSpec, Policy, ProxyConfig, ReverseSpec, StandIn,
    UnicastPolicy,
};

/// The client's Sender ID.
pub const CLIENT: &[u8] = &[0x01];
/// A device's Sender ID.
pub const DEV_A: &[u8] = &[0x0a];
/// The proxy's Sender ID in the group it is a member of.
pub const PROXY: &[u8] = &[0x50];

// The group's structure and the configurations built from it are the tests' own
// (tests/common/group.rs), so that the fuzzed contexts and checkers are set up exactly as
// the tests' are; only the keys differ: fixed here, so that a crash replays.
#[path = "../../tests/common/group.rs"]
mod group;
pub use group::{Group, Member};

impl Member {
    /// A member with a deterministic Ed25519 key.
    fn fixed(id: &[u8], seed: u8) -> Self {
        let key = PrivateKey::from_bytes(SigAlg::EdDsa, &[seed; 32]).expect("fixed key");
        let cred = Credential::ccs_for(&format!("m{seed}"), &key.public_key());
        Member {
            id: id.to_vec(),
            key,
            cred,
        }
    }
}

impl Group {
    /// The group numbered `tag` (its bytes and keys derive from it) with members `ids`.
    pub fn new(tag: u8, ids: &[&[u8]]) -> Self {
        Group {
            key_generation: 0,
            gid: vec![0x37, 0xcb, 0xf3, tag],
            master_secret: (0..16).map(|i| i ^ tag).collect(),
            master_salt: vec![0x9e, 0x7c, 0xa9, 0x22, 0x23, 0x78, 0x63, tag],
            gm: Member::fixed(b"", tag.wrapping_mul(16)),
            members: ids
                .iter()
                .enumerate()
                .map(|(i, id)| Member::fixed(id, tag.wrapping_mul(16) + 1 + i as u8))
                .collect(),
        }
    }

    /// A checker of this group.
    pub fn checker(&self) -> SignatureChecker {
        SignatureChecker::new(&self.checker_config()).expect("fixed checker config")
    }

    /// Member `me`'s context.
    pub fn context(&self, me: &[u8]) -> SecurityContext {
        SecurityContext::new(&self.config(me)).expect("fixed context config")
    }
}

/// The group checked by the proxy (and whose contexts `unprotect` fuzzes).
pub fn checked_group() -> Group {
    Group::new(1, &[CLIENT, DEV_A])
}

/// The group the proxy is a member of.
pub fn member_group() -> Group {
    Group::new(2, &[PROXY, DEV_A])
}

/// A plain OSCORE context (RFC 8613, Appendix C.1.1 style: no group parameters), as the
/// client (`client == true`) or the server.
pub fn plain_context(client: bool) -> SecurityContext {
    let (me, peer) = if client {
        (vec![], vec![0x01])
    } else {
        (vec![0x01], vec![])
    };
    SecurityContext::new(&ContextConfig {
        master_secret: (1..=16).collect(),
        master_salt: vec![0x9e, 0x7c, 0xa9, 0x22, 0x23, 0x78, 0x63, 0x40],
        sender_id: me,
        recipients: vec![(peer, vec![])],
        ..Default::default()
    })
    .expect("fixed plain context")
}

/// Host names of the engine's groups, by index: plain, enforcing, member.
pub const GROUP_HOSTS: [&str; 3] = ["plain", "enforced", "member"];

/// The engine under fuzzing: a plain group, an enforcing group (checker), a group the
/// proxy is a member of, and unicast forwarding, everything open to every address; the
/// limits are small so that the fuzzer reaches every bound.
pub fn engine_config() -> ProxyConfig {
    let all = vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()];
    let spec = |i: usize, security| GroupSpec {
        name: GROUP_HOSTS[i].into(),
        addr: format!("224.0.1.{}:5683", 187 + i).parse().unwrap(),
        host_names: vec![GROUP_HOSTS[i].into()],
        enabled: true,
        allow: all.clone(),
        max_timeout: Duration::from_secs(30),
        security,
        next_hop: None,
    };
    let checked = checked_group();
    let member = member_group();
    let mut c = ProxyConfig {
        groups: vec![
            spec(0, None),
            spec(
                1,
                Some(GroupSecurity {
                    policy: Policy::Enforce,
                    checker: checked.checker_config(),
                    member: None,
                    allow_kids: None,
                }),
            ),
            spec(
                2,
                Some(GroupSecurity {
                    policy: Policy::Off,
                    checker: member.checker_config(),
                    member: Some(member.config(PROXY)),
                    allow_kids: None,
                }),
            ),
        ],
        unicast: UnicastPolicy {
            enabled: true,
            allow: all,
            timeout: Duration::from_secs(5),
        },
        ..ProxyConfig::default()
    };
    // Field by field: some of Limits' fields are the crate's own.
    let l = &mut c.limits;
    l.max_exchanges = 8;
    l.max_exchanges_per_client = 4;
    l.client_rate = 50.0;
    l.client_burst = 10.0;
    l.max_clients = 4;
    l.dedup_capacity = 16;
    l.dedup_per_client = 6;
    l.late_memory = 8;
    l.egress_ports = 2;
    // Small enough that registrations reach the observation bounds.
    l.observe.max_observations = 4;
    l.observe.max_per_client = 2;
    l.observe.max_devices = 4;
    c.local.listen = vec!["127.0.0.1:5683".parse().unwrap()];
    // The cache on, small, with the plain group's two devices as its known members, so
    // that fuzzed responses are stored, served, revalidated and evicted (§7).
    c.cache = CacheConfig {
        enabled: true,
        max_entries: 8,
        max_bytes: 4096,
        groups: vec![GroupCache {
            members: vec![PEERS[4].parse().unwrap(), PEERS[5].parse().unwrap()],
        }],
        ..CacheConfig::default()
    };
    // Deterministic Requests (§7.4.1) to the enforcing and the member group.
    c.deterministic_kids = vec![None, Some(vec![0xdc]), Some(vec![0xdc])];
    // Reverse-proxy resources (§6): by path standing in for the group, by Uri-Host
    // standing in for the servers with a two-entry table.
    c.reverse = vec![
        ReverseSpec {
            host: None,
            path: vec!["r".into()],
            group: 0,
            stand_in: StandIn::Group,
        },
        ReverseSpec {
            host: Some("rev".into()),
            path: Vec::new(),
            group: 2,
            stand_in: StandIn::Servers {
                advertise: "127.0.0.1:5683".parse().unwrap(),
                pool: Vec::new(),
                max_servers: 2,
                server_lifetime: Duration::from_secs(60),
            },
        },
    ];
    c
}

/// The peers a fuzzed datagram may come from: clients, devices, an IPv6 client.
pub const PEERS: [&str; 8] = [
    "127.0.0.1:40000",
    "127.0.0.2:40001",
    "10.0.0.3:40002",
    "[::1]:40003",
    "127.0.0.10:5683",
    "127.0.0.11:5683",
    "127.0.0.1:5683",
    "[fe80::1%2]:5683",
];

/// `PEERS[i % 8]`.
pub fn peer(i: u8) -> SocketAddr {
    PEERS[i as usize % PEERS.len()].parse().unwrap()
}

/// One step of the `engine` target's input: `[ctl, dt, len_hi, len_lo, datagram...]`.
/// `ctl` bits 0-1: 0 listener, 1 group egress, 2 unicast egress, 3 timeout only; bits
/// 2-3: group index (mod 3); bit 4: egress port; bits 5-7: the source, an index into
/// [`PEERS`]. On an egress, bit 5 set means: answer the latest request sent to that group
/// (or to unicast origins): its token and Message ID replace the datagram's, it comes in
/// on the port the request left by, from the origin (unicast) or from `PEERS[4 + bits
/// 6-7]` (a device). `dt`: virtual time advanced before the step, `dt * dt * 2` ms, so
/// that both retransmission timers and exchange lifetimes (up to 130 s) are reached.
pub struct Step<'a> {
    /// Control byte.
    pub ctl: u8,
    /// Time advance byte.
    pub dt: u8,
    /// The datagram.
    pub datagram: &'a [u8],
}

/// Splits the `engine` target's input into steps (a short tail is ignored).
pub fn steps(mut data: &[u8]) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    while data.len() >= 4 && out.len() < 64 {
        let len = (u16::from_be_bytes([data[2], data[3]]) as usize).min(data.len() - 4);
        out.push(Step {
            ctl: data[0],
            dt: data[1],
            datagram: &data[4..4 + len],
        });
        data = &data[4 + len..];
    }
    out
}

/// Encodes steps as [`steps`] reads them (for the seed generator).
pub fn encode_step(out: &mut Vec<u8>, ctl: u8, dt: u8, datagram: &[u8]) {
    out.extend_from_slice(&[ctl, dt]);
    out.extend_from_slice(&(datagram.len() as u16).to_be_bytes());
    out.extend_from_slice(datagram);
}

#[cfg(test)]
mod tests {
    /// The fuzzed engine must start: a config the engine refuses would leave every run
    /// fuzzing nothing but `unwrap`.
    #[test]
    fn the_engine_takes_the_fuzz_config() {
        let cfg = super::engine_config();
        assert!(cfg.cache.enabled && !cfg.reverse.is_empty());
        groxy::proxy::Engine::new(cfg, std::time::Instant::now(), 1).unwrap();
    }
}
