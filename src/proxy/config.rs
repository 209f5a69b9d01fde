//! What the forwarding engine is told: groups, policy, option numbers and limits. Plain
//! data; `crate::settings` reads it from TOML and validates it.

use std::net::SocketAddr;
use std::time::Duration;

use super::prefix::Prefix;
use crate::coap::options;
use crate::oscore::CheckerConfig;

/// What the proxy does with the countersignature check of a group's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Requests that fail the check are dropped: nothing reaches the group.
    Enforce,
    /// Everything is forwarded; what enforce would drop is counted.
    Monitor,
    /// No checking.
    Off,
}

impl Policy {
    /// The policy's name in the configuration, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Enforce => "enforce",
            Policy::Monitor => "monitor",
            Policy::Off => "off",
        }
    }
}

/// The proxy as an external signature checker of one group (RFC 10021 §7.5, §12.3).
#[derive(Debug, Clone)]
pub struct GroupSecurity {
    /// Whether failed checks drop requests, are only counted, or are not made.
    pub policy: Policy,
    /// The group's public material: algorithms, Gid, members' credentials.
    pub checker: CheckerConfig,
    /// The proxy's own membership in the group, for the pairwise traffic it terminates
    /// (RFC 10021 §8; oscore-capable-proxies §2).
    pub member: Option<crate::oscore::ContextConfig>,
    /// Members (by Sender ID) that may send group requests: the kid of the proxy's layer
    /// and the kid the signature checker verified (groupcomm-proxy §10.1) must both be
    /// on it; `None`: every member of the group.
    pub allow_kids: Option<Vec<Vec<u8>>>,
}

/// One CoAP group the proxy fans requests out to (RFC 10020 §3.5.1).
#[derive(Debug, Clone)]
pub struct GroupSpec {
    /// The group's name in the configuration, metrics and logs.
    pub name: String,
    /// Multicast address and port of the group URI.
    pub addr: SocketAddr,
    /// Host names that name this group in Uri-Host or Proxy-Uri, lowercased.
    pub host_names: Vec<String>,
    /// Group proxying is processed only if explicitly enabled (§3.5.1: else 5.01).
    pub enabled: bool,
    /// Clients allowed to send group requests here (groupcomm-proxy §5.2.1 step 2).
    pub allow: Vec<Prefix>,
    /// Multicast-Timeout values above this are lowered to it.
    pub max_timeout: Duration,
    /// Signature checking of group-mode traffic, if configured.
    pub security: Option<GroupSecurity>,
    /// The next proxy of a chain (groupcomm-proxy §8): set, this proxy is not the last
    /// hop and sends the group's requests there instead of multicasting them.
    pub next_hop: Option<NextHop>,
}

/// The next hop of a chain of proxies toward a group (groupcomm-proxy §8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextHop {
    /// The next proxy's address; it gets ordinary forward-proxy requests.
    pub addr: SocketAddr,
    /// What this hop takes off the Multicast-Timeout before passing it on (§8.1 step
    /// 4.3: T' - T'' covers the round trips toward the previous and the next hop).
    pub margin: Duration,
    /// The Hop-Limit added to a request that has none (RFC 8768 §3: 16 by default).
    pub hop_limit: u8,
}

/// Ordinary forwarding to unicast targets (RFC 7252 §5.7.2).
#[derive(Debug, Clone)]
pub struct UnicastPolicy {
    /// Off: requests to unicast targets get 5.05 Proxying Not Supported.
    pub enabled: bool,
    /// Clients allowed to send unicast proxy requests; others get 4.01.
    pub allow: Vec<Prefix>,
    /// No response by then: 5.04 Gateway Timeout.
    pub timeout: Duration,
}

/// Numbers of the groupcomm-proxy options: IANA suggestions by default (§11.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionNumbers {
    /// Multicast-Timeout (groupcomm-proxy §2).
    pub multicast_timeout: u16,
    /// Reply-From (groupcomm-proxy §3).
    pub reply_from: u16,
    pub(crate) group_etag: u16,
}

impl Default for OptionNumbers {
    fn default() -> Self {
        OptionNumbers {
            multicast_timeout: options::MULTICAST_TIMEOUT_DEFAULT,
            reply_from: options::REPLY_FROM_DEFAULT,
            group_etag: options::GROUP_ETAG_DEFAULT,
        }
    }
}

impl OptionNumbers {
    /// The three numbers: Multicast-Timeout, Group-ETag, Reply-From.
    pub fn as_array(&self) -> [u16; 3] {
        [self.multicast_timeout, self.group_etag, self.reply_from]
    }
}

/// Bounds of every table, and what keeps the proxy from being an amplifier.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Exchanges in flight; when full, new requests get 5.03 with Max-Age.
    pub max_exchanges: usize,
    /// Exchanges one client may have in flight; above it 4.29 with Max-Age.
    pub max_exchanges_per_client: usize,
    /// Fan-outs a client may start per second on average, and in a burst (4.29 beyond).
    pub client_rate: f64,
    /// The bucket size for `client_rate`.
    pub client_burst: f64,
    /// Clients tracked for the caps above; when full, requests from new clients get 5.03.
    pub max_clients: usize,
    /// Larger datagrams are dropped and counted.
    pub(crate) max_datagram: usize,
    /// (client, Message ID) pairs remembered for deduplication (RFC 7252 §4.5). When
    /// full, a client below its share gets 5.03 with Max-Age: nobody's entries are
    /// evicted by another's traffic.
    pub dedup_capacity: usize,
    /// Entries one client address may hold; past it, its own oldest is forgotten early.
    pub dedup_per_client: usize,
    /// How many of the proxy's latest tokens a response may carry to count as late
    /// rather than unknown.
    pub late_memory: usize,
    /// Confirmable messages awaiting an ACK (responses to CON clients, CON to origins).
    pub(crate) max_retransmissions: usize,
    /// Source ports of each group's egress and of the unicast egress (per address
    /// family). Each port has 65,536 Message IDs per lifetime toward one destination
    /// (RFC 7252 §4.4); when every port's are live, requests get 5.03 with Max-Age.
    pub egress_ports: u16,
    /// Destinations whose Message IDs are remembered for their lifetime. At the bound a
    /// message to a new destination is not sent (counted): an error reply to a NON
    /// request may start a new one only while the table is less than half full.
    pub(crate) max_destinations: usize,
    /// Observations (RFC 7641 through the proxy, RFC 10020 §3.7).
    pub observe: ObserveLimits,
}

/// Bounds of observations through the proxy (RFC 10020 §3.7: an observation is a long
/// fan-out, so it is bounded like one and more). Each is also an exchange, so it counts
/// against `max_exchanges` and `max_exchanges_per_client` for as long as it lasts.
#[derive(Debug, Clone)]
pub struct ObserveLimits {
    /// Observations held at once; a new one past it gets 5.03 with Max-Age.
    pub max_observations: usize,
    /// Observations one client address may hold; past it 4.29 with Max-Age.
    pub max_per_client: usize,
    /// Notifications relayed per second to one client address, on average and in a
    /// burst; over it they are dropped and counted (`rate_limited`).
    pub notification_rate: f64,
    /// The bucket size for `notification_rate`.
    pub notification_burst: f64,
    /// A CON notification goes to the client at least this often (RFC 7641 §4.5); no
    /// ACK ends the observation. An observation past T' that relayed nothing for this
    /// long ends too (`observe_idle`).
    pub interest_check: Duration,
    /// Devices tracked per observation (for the ordering of RFC 7641 §3.4); the
    /// notifications of one more are dropped and counted (`devices_full`).
    pub max_devices: usize,
}

impl Default for ObserveLimits {
    fn default() -> Self {
        ObserveLimits {
            max_observations: 1_024,
            max_per_client: 16,
            notification_rate: 100.0,
            notification_burst: 200.0,
            interest_check: Duration::from_secs(24 * 3600),
            max_devices: 256,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_exchanges: 16_384,
            max_exchanges_per_client: 256,
            client_rate: 1_000.0,
            client_burst: 2_000.0,
            max_clients: 16_384,
            max_datagram: 1_500,
            // A client at the default client_rate (1000/s, burst 2000) for
            // EXCHANGE_LIFETIME (247 s) holds 249,000 entries: its share covers that, and
            // the table eight such clients (config/groxy.toml says what it costs).
            dedup_capacity: 2_097_152,
            dedup_per_client: 262_144,
            late_memory: 16_384,
            max_retransmissions: 16_384,
            egress_ports: 8,
            max_destinations: 65_536,
            observe: ObserveLimits::default(),
        }
    }
}

/// Everything the forwarding engine is configured with; a reload replaces it whole.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The groups; a target host names at most one.
    pub groups: Vec<GroupSpec>,
    /// Forwarding to targets that are not groups.
    pub unicast: UnicastPolicy,
    /// The groupcomm-proxy option numbers in use.
    pub options: OptionNumbers,
    /// Bounds of the tables and rates.
    pub limits: Limits,
    /// Where the proxy itself is reached: a request whose target names one of these is
    /// served locally, never forwarded to itself.
    pub local: LocalNames,
    /// The response cache (groupcomm-proxy §7).
    pub cache: CacheConfig,
    /// Deterministic Requests (cacheable-oscore-02; issue 16, groupcomm-proxy §7.4.1):
    /// per group, by index in `groups`, the Sender ID of the group's Deterministic Client
    /// (`[[group]] deterministic_kid`). A group without one (or past the end) has none:
    /// its pairwise-mode requests are filtered as any other (README, request path step 8).
    pub deterministic_kids: Vec<Option<Vec<u8>>>,
    /// Resources of the proxy that stand for groups (reverse-proxy mode, groupcomm-proxy
    /// §6, RFC 10020 §3.5.2).
    pub reverse: Vec<ReverseSpec>,
    /// The proxy's identifier in the diagnostic payload of a 5.08 (RFC 8768 §4): no
    /// space; it names this proxy in the 5.08s it makes and relays, and a relayed 5.08
    /// that already names it is not relayed.
    pub hop_id: String,
    /// Forwarding threads (`[proxy] threads`), each an engine with its own sockets; the
    /// engine itself ignores it (the runtime reads it). 1 in this default, the machine's
    /// cores in the configuration file's.
    pub threads: usize,
}

// Reverse-proxy mode (groupcomm-proxy §6, issue 16).

/// A resource of the proxy that stands for a group (groupcomm-proxy §6, RFC 10020
/// §3.5.2): a request to it without Proxy-Uri or Proxy-Scheme is a group request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReverseSpec {
    /// Uri-Host that names the resource (lowercased), if any: a Uri-Host stays outside
    /// OSCORE, so this is the form that works with end-to-end protected requests.
    pub host: Option<String>,
    /// The leading Uri-Path segments that name the resource; the segments after them are
    /// the path at the servers. Empty: any path (with `host` set).
    pub path: Vec<String>,
    /// The group, by index into `ProxyConfig::groups`.
    pub group: usize,
    /// Whom the proxy stands in for (§6.1), which decides the Reply-From form.
    pub stand_in: StandIn,
}

/// The two cases of groupcomm-proxy §6.1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StandIn {
    /// Only for the group: Reply-From names the server, which clients reach directly (or
    /// through the proxy as an ordinary forward proxy).
    Group,
    /// For the servers too: Reply-From names an address of the proxy of the server's
    /// own from `pool` (Appendix A.2: the CRI alone), or, with none free, the proxy at
    /// `advertise` with a CRI reference to the server as its second element (§6.1,
    /// Appendix A.1). A unicast request to that pool address, or to the proxy with the
    /// Uri-Host and Uri-Port of a server that answered, is forwarded to it (§6.2).
    Servers {
        /// The proxy's address as clients reach it (one of its listeners).
        advertise: SocketAddr,
        /// Listeners (index, address) that each stand for one server at a time.
        pool: Vec<(usize, SocketAddr)>,
        /// Servers remembered for follow-ups; past it, the one heard from least
        /// recently is forgotten.
        max_servers: usize,
        /// A server not heard from for this long is forgotten.
        server_lifetime: Duration,
    },
}

/// The proxy's own addresses and names (groupcomm-proxy §5.2.1: a request for the
/// proxy's own resources is not proxied).
#[derive(Debug, Clone, Default)]
pub struct LocalNames {
    /// The listeners' addresses; an unspecified address stands for every address below.
    pub listen: Vec<SocketAddr>,
    /// Addresses of this host's interfaces (what an unspecified listener is reached at).
    pub host_addrs: Vec<std::net::IpAddr>,
    /// Host names of the proxy, lowercased.
    pub names: Vec<String>,
}

impl LocalNames {
    /// Whether `ip:port` reaches one of the proxy's listeners.
    pub(crate) fn is_local(&self, ip: std::net::IpAddr, port: u16) -> bool {
        self.listen.iter().any(|l| {
            l.port() == port
                && (l.ip() == ip
                    || (l.ip().is_unspecified()
                        && l.is_ipv4() == ip.is_ipv4()
                        && (ip.is_loopback() || self.host_addrs.contains(&ip))))
        })
    }
}

impl Default for ProxyConfig {
    /// The embedded defaults: one group on the All-CoAP-Nodes address 224.0.1.187:5683,
    /// requests only from this host, unicast forwarding on for this host too.
    fn default() -> Self {
        let local: Vec<Prefix> = vec!["127.0.0.0/8".parse().unwrap(), "::1".parse().unwrap()];
        ProxyConfig {
            groups: vec![GroupSpec {
                name: "all-coap-nodes".into(),
                addr: "224.0.1.187:5683".parse().unwrap(),
                host_names: vec!["all-coap-nodes".into()],
                enabled: true,
                allow: local.clone(),
                max_timeout: Duration::from_secs(60),
                security: None,
                next_hop: None,
            }],
            unicast: UnicastPolicy {
                enabled: true,
                allow: local,
                timeout: Duration::from_secs(10),
            },
            options: OptionNumbers::default(),
            limits: Limits::default(),
            local: LocalNames::default(),
            cache: CacheConfig::default(),
            deterministic_kids: Vec::new(),
            reverse: Vec::new(),
            hop_id: "groxy".into(),
            threads: 1,
        }
    }
}

// ---- Response cache (groupcomm-proxy §7, RFC 7252 §5.6; issue 16) ----

/// The response cache (groupcomm-proxy §7, RFC 7252 §5.6): its bounds and, per group,
/// what the proxy is told about the group that it cannot learn by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Off: nothing is stored and nothing served from the cache.
    pub enabled: bool,
    /// Stored responses held at once (one per server and request, §7); past it the
    /// least recently used requests' responses are evicted.
    pub max_entries: usize,
    /// Bytes of stored responses (options, payload, key) held at once; past it the
    /// least recently used are evicted. A single response larger is not stored.
    pub max_bytes: usize,
    /// A stored response is fresh at most this long, whatever its Max-Age says (RFC
    /// 7252 §5.6.1 lets a cache be more careful than the origin): a forged response on
    /// an unprotected group's LAN cannot stay for the 136 years a Max-Age can name.
    pub max_age: std::time::Duration,
    /// Per group, by index in `ProxyConfig::groups`; a group without one has the
    /// default (no members known). The Deterministic Client of a group, whose requests
    /// are the only protected ones cached (§7.4.1), is `ProxyConfig::deterministic_kids`.
    pub groups: Vec<GroupCache>,
    /// Store responses to Deterministic Requests (§7.4.1) of groups without a signature
    /// checker (`[group.security]`), where nothing verifies them before every later
    /// client gets them: off unless the operator opts in (`[cache]
    /// unverified_deterministic`).
    pub unverified_deterministic: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: false,
            max_entries: 4_096,
            max_bytes: 4 * 1024 * 1024,
            max_age: std::time::Duration::from_secs(86_400),
            groups: Vec::new(),
            unverified_deterministic: false,
        }
    }
}

/// What the cache knows of one group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupCache {
    /// The group's servers (address and port of their responses), as far as the
    /// operator knows them: a group request is served from the cache alone, and a
    /// Group-ETag offered, only when each of these has a fresh response stored
    /// (groupcomm-proxy §7.1, §7.3). Empty: never (the proxy cannot know the members).
    /// Set, only these servers' responses to the group's requests are stored.
    pub members: Vec<SocketAddr>,
}
