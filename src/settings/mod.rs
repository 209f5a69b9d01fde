//! The configuration file (TOML, read with the `config` crate) and its validation into a
//! [`RunConfig`]. Every error names the key it is about; `groxy check-config` prints all.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub mod security;

use crate::coap::uri::{Host, parse_proxy_uri};
use crate::proxy::config::NextHop;
use crate::proxy::config::ObserveLimits;
use crate::proxy::{
    GroupSpec, Limits, LocalNames, OptionNumbers, Prefix, ProxyConfig, UnicastPolicy,
};
use crate::runtime::{Egress, Interface, RunConfig};

/// The embedded default configuration: what `groxy run` uses without a file, and the
/// documented example in config/groxy.toml starts from it.
pub const DEFAULT_TOML: &str = include_str!("../../config/groxy.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    proxy: ProxySection,
    #[serde(default)]
    options: OptionsSection,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    unicast: UnicastSection,
    #[serde(default, rename = "group")]
    groups: Vec<GroupSection>,
    #[serde(default)]
    http: Option<HttpSection>,
    /// `[cache]`: the response cache (issue 16).
    #[serde(default)]
    cache: CacheSection,
    /// Reverse-proxy mode (groupcomm-proxy §6): `[[reverse]]`.
    #[serde(default, rename = "reverse")]
    reverse: Vec<ReverseSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProxySection {
    #[serde(default = "default_listen")]
    listen: Vec<String>,
    #[serde(default)]
    metrics: Option<String>,
    /// Where the proxy keeps its Sender Sequence Numbers (when it is a group member).
    #[serde(default)]
    state_dir: Option<String>,
    /// Host names of the proxy itself: a request whose target names one is served here.
    #[serde(default)]
    names: Vec<String>,
    /// The proxy's identifier in 5.08 diagnostics (RFC 8768 §4; issue 16).
    #[serde(default)]
    id: Option<String>,
    /// Forwarding threads (issue 14); absent: the available cores.
    #[serde(default)]
    threads: Option<usize>,
}

impl Default for ProxySection {
    fn default() -> Self {
        ProxySection {
            listen: default_listen(),
            metrics: None,
            state_dir: None,
            names: Vec::new(),
            id: None,
            threads: None,
        }
    }
}

fn default_listen() -> Vec<String> {
    vec!["127.0.0.1:5683".into(), "[::1]:5683".into()]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OptionsSection {
    #[serde(default = "d_mt")]
    multicast_timeout: u16,
    #[serde(default = "d_rf")]
    reply_from: u16,
    #[serde(default = "d_ge")]
    group_etag: u16,
}
fn d_mt() -> u16 {
    OptionNumbers::default().multicast_timeout
}
fn d_rf() -> u16 {
    OptionNumbers::default().reply_from
}
fn d_ge() -> u16 {
    OptionNumbers::default().group_etag
}
impl Default for OptionsSection {
    fn default() -> Self {
        OptionsSection {
            multicast_timeout: d_mt(),
            reply_from: d_rf(),
            group_etag: d_ge(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    max_exchanges: Option<usize>,
    max_exchanges_per_client: Option<usize>,
    client_rate: Option<f64>,
    client_burst: Option<f64>,
    max_clients: Option<usize>,
    max_datagram: Option<usize>,
    dedup_capacity: Option<usize>,
    dedup_per_client: Option<usize>,
    late_memory: Option<usize>,
    max_retransmissions: Option<usize>,
    egress_ports: Option<u16>,
    max_destinations: Option<usize>,
    /// `[limits.observe]`.
    #[serde(default)]
    observe: ObserveSection,
}

/// `[limits.observe]`: the bounds of observations (see `ObserveLimits`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObserveSection {
    max_observations: Option<usize>,
    max_per_client: Option<usize>,
    notification_rate: Option<f64>,
    notification_burst: Option<f64>,
    /// Seconds.
    interest_check: Option<u64>,
    max_devices: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnicastSection {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "local")]
    allow: Vec<String>,
    #[serde(default = "d_unicast_timeout")]
    timeout: u64,
}
fn yes() -> bool {
    true
}
fn local() -> Vec<String> {
    vec!["127.0.0.0/8".into(), "::1".into()]
}
fn d_unicast_timeout() -> u64 {
    10
}
impl Default for UnicastSection {
    fn default() -> Self {
        UnicastSection {
            enabled: true,
            allow: local(),
            timeout: d_unicast_timeout(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupSection {
    name: String,
    uri: String,
    #[serde(default)]
    host_names: Vec<String>,
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default = "local")]
    allow: Vec<String>,
    #[serde(default = "d_max_timeout")]
    max_timeout: u64,
    #[serde(default)]
    interface: String,
    #[serde(default = "d_hops")]
    hop_limit: u32,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    security: Option<security::CheckerSection>,
    // Chains of proxies (groupcomm-proxy §8).
    #[serde(default)]
    next_hop: Option<String>,
    #[serde(default = "d_next_hop_margin")]
    next_hop_margin: u64,
    #[serde(default = "d_next_hop_hop_limit")]
    next_hop_hop_limit: u32,
    // Response cache (groupcomm-proxy §7.1, §7.4.1).
    #[serde(default)]
    cache_members: Vec<String>,
    // Deterministic Requests (cacheable-oscore-02, groupcomm-proxy §7.4.1).
    #[serde(default)]
    deterministic_kid: Option<String>,
}
fn d_next_hop_margin() -> u64 {
    1
}
fn d_next_hop_hop_limit() -> u32 {
    16
}
fn d_max_timeout() -> u64 {
    60
}
fn d_hops() -> u32 {
    1
}

/// A validated configuration, with the metrics address kept for the operations layer.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// What `groxy run` needs: the engine's configuration, listeners, egress, state.
    pub run: RunConfig,
    /// Address of /metrics, /healthz and /readyz, if configured.
    pub metrics: Option<SocketAddr>,
    /// The HTTP-to-CoAP bridge, if `[http]` is configured.
    pub http: Option<crate::http::HttpConfig>,
}

/// Reads and validates a file; every problem is reported as `key: reason`.
pub fn load_file(path: &Path) -> Result<Loaded, Vec<String>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
    load_str_in(&text, path.parent().unwrap_or(Path::new(".")))
}

/// The embedded default (config/groxy.toml), which is valid by construction (tested).
pub fn load_default() -> Loaded {
    load_str(DEFAULT_TOML).expect("the embedded default configuration is valid")
}

/// Reads a configuration whose relative file names are relative to the working directory.
pub fn load_str(text: &str) -> Result<Loaded, Vec<String>> {
    load_str_in(text, Path::new("."))
}

/// Reads a configuration whose relative file names are relative to `base`.
pub fn load_str_in(text: &str, base: &Path) -> Result<Loaded, Vec<String>> {
    let file: File = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| vec![e.to_string()])?;
    validate(file, base)
}

fn prefixes(key: &str, list: &[String], errors: &mut Vec<String>) -> Vec<Prefix> {
    list.iter()
        .enumerate()
        .filter_map(|(i, p)| {
            p.parse()
                .map_err(|e| errors.push(format!("{key}[{i}]: {e}")))
                .ok()
        })
        .collect()
}

/// Checks a parsed file section by section; every error is collected with its key.
fn validate(f: File, base: &Path) -> Result<Loaded, Vec<String>> {
    let mut errors = Vec::new();
    let (listen, metrics) = proxy_section(&f.proxy, &mut errors);
    let options = options_section(&f.options, &mut errors);
    let limits = limits_section(&f.limits, &mut errors);
    let unicast = unicast_section(&f.unicast, &mut errors);
    let mut groups = Vec::new();
    let mut egress = Vec::new();
    let mut cache = cache_section(&f.cache, &mut errors);
    let deterministic_kids: Vec<Option<Vec<u8>>> = f
        .groups
        .iter()
        .enumerate()
        .map(|(i, g)| deterministic_kid(i, g, &mut errors))
        .collect();
    for (i, g) in f.groups.iter().enumerate() {
        if let Some((spec, e)) = group_section(i, g, &f.groups[..i], base, &mut errors) {
            cache.groups.push(group_cache(i, g, &mut errors));
            if groups.iter().any(|o: &GroupSpec| o.addr == spec.addr) {
                errors.push(format!(
                    "group[{i}].uri: {} is used by an earlier group",
                    spec.addr
                ));
            }
            groups.push(spec);
            egress.push(e);
        }
    }
    state_dir_needed(&f, &mut errors);
    let mut listen = listen;
    let reverse = reverse_sections(&f, &mut listen, &groups, &mut errors);
    let hop_id = hop_id(&f.proxy, &mut errors);
    let threads = threads(f.proxy.threads, &mut errors);
    let http = f
        .http
        .as_ref()
        .and_then(|h| http_section(h, base, &mut errors));
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Loaded {
        run: RunConfig {
            proxy: ProxyConfig {
                groups,
                unicast,
                options,
                limits,
                local: LocalNames {
                    // The listeners' addresses are added by the driver once bound.
                    listen: Vec::new(),
                    host_addrs: Vec::new(),
                    names: f
                        .proxy
                        .names
                        .iter()
                        .map(|n| n.to_ascii_lowercase())
                        .collect(),
                },
                cache,
                deterministic_kids,
                reverse,
                hop_id,
                threads,
            },
            listen,
            egress,
            // Relative to the configuration file, like every other path in it.
            state_dir: f.proxy.state_dir.as_ref().map(|d| base.join(d)),
        },
        metrics,
        http,
    })
}

/// `[[group]] deterministic_kid`: the hex Sender ID of the group's Deterministic Client
/// (cacheable-oscore-02 §3.4.1), at most 7 bytes (the longest Sender ID a 13-byte nonce
/// allows, RFC 10021 §2.2). Without `[group.security]` nothing filters the group's
/// requests, deterministic or not, and the value only marks them (for the cache).
fn deterministic_kid(i: usize, g: &GroupSection, errors: &mut Vec<String>) -> Option<Vec<u8>> {
    let k = g.deterministic_kid.as_ref()?;
    let key = format!("group[{i}].deterministic_kid");
    match hex::decode(k) {
        Ok(b) if b.len() <= 7 => Some(b),
        Ok(_) => {
            errors.push(format!("{key}: longer than 7 bytes (RFC 10021 §2.2)"));
            None
        }
        Err(_) => {
            errors.push(format!("{key}: not hex"));
            None
        }
    }
}

/// Most forwarding threads `[proxy] threads` may ask for: a thread's token space is an
/// eighth of the token counter's bits (`proxy::shared`), and each thread holds a full set
/// of egress sockets.
pub const MAX_THREADS: usize = 256;

/// `[proxy] threads`: 1 to [`MAX_THREADS`]; absent, the cores this process may run on
/// (`std::thread::available_parallelism`, which follows the CPU affinity mask and cgroup
/// quota), 1 if that cannot be told.
fn threads(value: Option<usize>, errors: &mut Vec<String>) -> usize {
    match value {
        Some(n) if (1..=MAX_THREADS).contains(&n) => n,
        Some(_) => {
            errors.push(format!("proxy.threads: must be 1..={MAX_THREADS}"));
            1
        }
        None => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_THREADS),
    }
}

/// `[proxy]`: the listeners and the metrics endpoint.
fn proxy_section(
    p: &ProxySection,
    errors: &mut Vec<String>,
) -> (Vec<SocketAddr>, Option<SocketAddr>) {
    let listen: Vec<SocketAddr> = p
        .listen
        .iter()
        .enumerate()
        .filter_map(|(i, a)| {
            a.parse()
                .map_err(|_| {
                    errors.push(format!("proxy.listen[{i}]: {a:?} is not an address:port"))
                })
                .ok()
        })
        .collect();
    if listen.is_empty() && errors.is_empty() {
        errors.push("proxy.listen: at least one listener is needed".into());
    }
    let metrics = p.metrics.as_ref().and_then(|m| {
        m.parse()
            .map_err(|_| errors.push(format!("proxy.metrics: {m:?} is not an address:port")))
            .ok()
    });
    (listen, metrics)
}

/// `[options]`: three distinct numbers, none a registered option the proxy interprets.
fn options_section(o: &OptionsSection, errors: &mut Vec<String>) -> OptionNumbers {
    let options = OptionNumbers {
        multicast_timeout: o.multicast_timeout,
        reply_from: o.reply_from,
        group_etag: o.group_etag,
    };
    let nums = options.as_array();
    if nums[0] == nums[1] || nums[1] == nums[2] || nums[0] == nums[2] {
        errors.push(
            "options: multicast_timeout, reply_from and group_etag must be three different numbers"
                .into(),
        );
    }
    for (key, n) in [
        ("options.multicast_timeout", o.multicast_timeout),
        ("options.reply_from", o.reply_from),
        ("options.group_etag", o.group_etag),
    ] {
        if crate::coap::options::is_known(n) {
            errors.push(format!("{key}: {n} is a registered CoAP option"));
        }
    }
    options
}

/// `[limits]`: the defaults where a key is absent, every bound checked.
fn limits_section(l: &LimitsSection, errors: &mut Vec<String>) -> Limits {
    let d = Limits::default();
    let limits = Limits {
        max_exchanges: l.max_exchanges.unwrap_or(d.max_exchanges),
        max_exchanges_per_client: l
            .max_exchanges_per_client
            .unwrap_or(d.max_exchanges_per_client),
        client_rate: l.client_rate.unwrap_or(d.client_rate),
        client_burst: l.client_burst.unwrap_or(d.client_burst),
        max_clients: l.max_clients.unwrap_or(d.max_clients),
        max_datagram: l.max_datagram.unwrap_or(d.max_datagram),
        dedup_capacity: l.dedup_capacity.unwrap_or(d.dedup_capacity),
        dedup_per_client: l.dedup_per_client.unwrap_or(d.dedup_per_client),
        late_memory: l.late_memory.unwrap_or(d.late_memory),
        max_retransmissions: l.max_retransmissions.unwrap_or(d.max_retransmissions),
        egress_ports: l.egress_ports.unwrap_or(d.egress_ports),
        max_destinations: l.max_destinations.unwrap_or(d.max_destinations),
        observe: observe_section(&l.observe, errors),
    };
    if limits.dedup_per_client > limits.dedup_capacity {
        errors.push("limits.dedup_per_client: must not exceed limits.dedup_capacity".into());
    }
    if !(1..=256).contains(&limits.egress_ports) {
        errors.push("limits.egress_ports: must be 1..=256".into());
    }
    for (key, v) in [
        ("limits.max_exchanges", limits.max_exchanges),
        (
            "limits.max_exchanges_per_client",
            limits.max_exchanges_per_client,
        ),
        ("limits.max_clients", limits.max_clients),
        ("limits.dedup_capacity", limits.dedup_capacity),
        ("limits.dedup_per_client", limits.dedup_per_client),
        ("limits.max_destinations", limits.max_destinations),
    ] {
        if v == 0 {
            errors.push(format!("{key}: must be at least 1"));
        }
    }
    if !(limits.client_rate > 0.0 && limits.client_rate.is_finite()) {
        errors.push("limits.client_rate: must be a positive number".into());
    }
    if !(limits.client_burst >= 1.0 && limits.client_burst.is_finite()) {
        errors.push("limits.client_burst: must be at least 1".into());
    }
    if !(64..=65_507).contains(&limits.max_datagram) {
        errors.push("limits.max_datagram: must be 64..=65507".into());
    }
    limits
}

/// `[limits.observe]`: the defaults where a key is absent, every bound checked.
fn observe_section(o: &ObserveSection, errors: &mut Vec<String>) -> ObserveLimits {
    let d = ObserveLimits::default();
    let l = ObserveLimits {
        max_observations: o.max_observations.unwrap_or(d.max_observations),
        max_per_client: o.max_per_client.unwrap_or(d.max_per_client),
        notification_rate: o.notification_rate.unwrap_or(d.notification_rate),
        notification_burst: o.notification_burst.unwrap_or(d.notification_burst),
        interest_check: o
            .interest_check
            .map_or(d.interest_check, Duration::from_secs),
        max_devices: o.max_devices.unwrap_or(d.max_devices),
    };
    for (key, v) in [
        ("limits.observe.max_observations", l.max_observations),
        ("limits.observe.max_per_client", l.max_per_client),
        ("limits.observe.max_devices", l.max_devices),
    ] {
        if v == 0 {
            errors.push(format!("{key}: must be at least 1"));
        }
    }
    if l.max_per_client > l.max_observations {
        errors.push(
            "limits.observe.max_per_client: must not exceed limits.observe.max_observations".into(),
        );
    }
    if !(l.notification_rate > 0.0 && l.notification_rate.is_finite()) {
        errors.push("limits.observe.notification_rate: must be a positive number".into());
    }
    if !(l.notification_burst >= 1.0 && l.notification_burst.is_finite()) {
        errors.push("limits.observe.notification_burst: must be at least 1".into());
    }
    // RFC 7641 §4.5: at least every 24 hours; below a minute the checks would cost the
    // client more than they tell.
    if !(60..=86_400).contains(&l.interest_check.as_secs()) {
        errors.push("limits.observe.interest_check: must be 60..=86400 seconds".into());
    }
    l
}

/// `[unicast]`.
fn unicast_section(u: &UnicastSection, errors: &mut Vec<String>) -> UnicastPolicy {
    if u.timeout == 0 {
        errors.push("unicast.timeout: must be at least 1 second".into());
    }
    UnicastPolicy {
        enabled: u.enabled,
        allow: prefixes("unicast.allow", &u.allow, errors),
        timeout: Duration::from_secs(u.timeout),
    }
}

/// One `[[group]]` (the `i`th, after `earlier`): the group and its egress, if valid.
fn group_section(
    i: usize,
    g: &GroupSection,
    earlier: &[GroupSection],
    base: &Path,
    errors: &mut Vec<String>,
) -> Option<(GroupSpec, Egress)> {
    let key = format!("group[{i}]");
    let addr = group_addr(&key, &g.uri, errors);
    if g.name.is_empty() {
        errors.push(format!("{key}.name: must not be empty"));
    }
    if earlier.iter().any(|o| o.name == g.name) {
        errors.push(format!(
            "{key}.name: {:?} is used by an earlier group",
            g.name
        ));
    }
    let interface: Option<Interface> = g
        .interface
        .parse()
        .map_err(|e| errors.push(format!("{key}.interface: {e}")))
        .ok();
    if let (Some(Interface::Addr(_)), Some(SocketAddr::V6(_))) = (&interface, addr) {
        errors.push(format!(
            "{key}.interface: an IPv6 group needs an interface name"
        ));
    }
    if g.max_timeout == 0 {
        errors.push(format!("{key}.max_timeout: must be at least 1 second"));
    }
    if !(1..=255).contains(&g.hop_limit) {
        errors.push(format!("{key}.hop_limit: must be 1..=255"));
    }
    let source: Option<IpAddr> = g.source.as_ref().and_then(|s| {
        s.parse()
            .map_err(|_| errors.push(format!("{key}.source: {s:?} is not an IP address")))
            .ok()
    });
    let next_hop = next_hop(&key, g, errors);
    let allow = prefixes(&format!("{key}.allow"), &g.allow, errors);
    let security = g
        .security
        .as_ref()
        .and_then(|s| s.resolve(&format!("{key}.security"), base, errors));
    let (addr, interface) = (addr?, interface?);
    let spec = GroupSpec {
        name: g.name.clone(),
        addr,
        host_names: g
            .host_names
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        enabled: g.enabled,
        allow,
        max_timeout: Duration::from_secs(g.max_timeout),
        security,
        next_hop,
    };
    let egress = Egress {
        interface,
        hop_limit: g.hop_limit,
        bind: source,
    };
    Some((spec, egress))
}

// ---- Response cache (groupcomm-proxy §7; issue 16) ----

/// `[cache]`: on or off, and its two bounds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheSection {
    #[serde(default)]
    enabled: bool,
    #[serde(default = "d_cache_entries")]
    max_entries: usize,
    #[serde(default = "d_cache_bytes")]
    max_bytes: usize,
    /// Seconds.
    #[serde(default = "d_cache_max_age")]
    max_age: u64,
    /// Opt-in: store responses to Deterministic Requests of groups nothing verifies.
    #[serde(default)]
    unverified_deterministic: bool,
}
fn d_cache_max_age() -> u64 {
    crate::proxy::CacheConfig::default().max_age.as_secs()
}
fn d_cache_entries() -> usize {
    crate::proxy::CacheConfig::default().max_entries
}
fn d_cache_bytes() -> usize {
    crate::proxy::CacheConfig::default().max_bytes
}
impl Default for CacheSection {
    fn default() -> Self {
        CacheSection {
            enabled: false,
            max_entries: d_cache_entries(),
            max_bytes: d_cache_bytes(),
            max_age: d_cache_max_age(),
            unverified_deterministic: false,
        }
    }
}

/// `[cache]`, bounds checked (groups are added per `[[group]]`).
fn cache_section(c: &CacheSection, errors: &mut Vec<String>) -> crate::proxy::CacheConfig {
    if !(1..=16_777_216).contains(&c.max_entries) {
        errors.push("cache.max_entries: must be 1..=16777216".into());
    }
    if !(1_024..=(1 << 34)).contains(&c.max_bytes) {
        errors.push("cache.max_bytes: must be 1024..=17179869184".into());
    }
    if !(1..=u64::from(u32::MAX)).contains(&c.max_age) {
        errors.push("cache.max_age: must be 1..=4294967295 seconds".into());
    }
    crate::proxy::CacheConfig {
        enabled: c.enabled,
        max_entries: c.max_entries,
        max_bytes: c.max_bytes,
        max_age: Duration::from_secs(c.max_age),
        groups: Vec::new(),
        unverified_deterministic: c.unverified_deterministic,
    }
}

/// A group's `cache_members` (addresses its servers answer from, §7.1); its
/// `deterministic_kid` (§7.4.1) is read with the Deterministic Requests above.
fn group_cache(i: usize, g: &GroupSection, errors: &mut Vec<String>) -> crate::proxy::GroupCache {
    let key = format!("group[{i}]");
    let members = g
        .cache_members
        .iter()
        .enumerate()
        .filter_map(|(j, m)| {
            m.parse::<SocketAddr>()
                .map_err(|_| {
                    errors.push(format!(
                        "{key}.cache_members[{j}]: {m:?} is not an address:port"
                    ))
                })
                .ok()
        })
        .collect();
    crate::proxy::GroupCache { members }
}

/// A group's `next_hop` (groupcomm-proxy §8.1): an address and port, a margin of at
/// least a second (T'' < T', in whole seconds) below `max_timeout`, so that some T' is
/// acceptable, and a Hop-Limit of 1..=255 (RFC 8768 §3).
fn next_hop(key: &str, g: &GroupSection, errors: &mut Vec<String>) -> Option<NextHop> {
    let addr: SocketAddr = match g.next_hop.as_ref()?.parse() {
        Ok(a) => a,
        Err(_) => {
            errors.push(format!("{key}.next_hop: not an address:port"));
            return None;
        }
    };
    if g.next_hop_margin == 0 || g.next_hop_margin >= g.max_timeout {
        errors.push(format!(
            "{key}.next_hop_margin: must be at least 1 second and below max_timeout"
        ));
    }
    let Ok(hop_limit @ 1..=255) = u8::try_from(g.next_hop_hop_limit) else {
        errors.push(format!("{key}.next_hop_hop_limit: must be 1..=255"));
        return None;
    };
    Some(NextHop {
        addr,
        margin: Duration::from_secs(g.next_hop_margin),
        hop_limit,
    })
}

/// A group URI: `coap://` and a multicast address, no path or query.
fn group_addr(key: &str, uri: &str, errors: &mut Vec<String>) -> Option<SocketAddr> {
    match parse_proxy_uri(uri.as_bytes()) {
        Ok(t) if t.scheme != "coap" => {
            errors.push(format!("{key}.uri: scheme must be coap"));
            None
        }
        Ok(t) if !t.uri_options.is_empty() => {
            errors.push(format!("{key}.uri: a group URI has no path or query"));
            None
        }
        Ok(Target {
            host: Host::Ip(ip),
            port,
            ..
        }) if ip.is_multicast() => Some(SocketAddr::new(ip, port.unwrap_or(5683))),
        Ok(_) => {
            errors.push(format!("{key}.uri: host must be a multicast address"));
            None
        }
        Err(e) => {
            errors.push(format!("{key}.uri: {e}"));
            None
        }
    }
}

/// `proxy.id` (RFC 8768 §4): what names this proxy in 5.08 diagnostics; without it the
/// first of `proxy.names`, else the first `proxy.listen` address as written (two proxies
/// on one host differ by port). No space (the separator of the identifiers), printable
/// ASCII, at most 255 bytes.
fn hop_id(p: &ProxySection, errors: &mut Vec<String>) -> String {
    let id =
        p.id.clone()
            .or_else(|| p.names.first().cloned())
            .or_else(|| p.listen.first().cloned())
            .unwrap_or_else(|| "groxy".into());
    if id.is_empty() || id.len() > 255 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        errors.push(format!(
            "proxy.id: {id:?} must be 1 to 255 printable ASCII characters without spaces"
        ));
    }
    id
}

// Reverse-proxy mode (groupcomm-proxy §6, issue 16).

/// One `[[reverse]]`: a resource of the proxy that stands for a group.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReverseSection {
    /// The `[[group]]` it stands for, by name.
    group: String,
    /// Leading Uri-Path segments naming it, `/`-separated ("lights" or "site/lights").
    #[serde(default)]
    path: String,
    /// A Uri-Host naming it (works with end-to-end OSCORE, where Uri-Path is inside).
    #[serde(default)]
    host: Option<String>,
    /// "group" or "servers" (groupcomm-proxy §6.1, the two cases).
    #[serde(default = "d_stand_in")]
    stand_in: String,
    /// With "servers": the proxy's address that Reply-From names (a listener's).
    #[serde(default)]
    advertise: Option<String>,
    #[serde(default = "d_max_servers")]
    max_servers: usize,
    /// Seconds.
    #[serde(default = "d_server_lifetime")]
    server_lifetime: u64,
    /// With "servers": addresses of the proxy, one per server (Appendix A.2), as
    /// "ip:port" or "ip:first-last".
    #[serde(default)]
    pool: Vec<String>,
}

/// Most pool addresses in all: each is a socket of the proxy's.
const MAX_POOL: usize = 1024;

/// A pool entry: "ip:port" or "ip:first-last" (a port range; the brackets of an IPv6
/// literal as in any address). Parsed by hand: std parses the address, only the range
/// suffix is this format's own.
fn pool_entry(s: &str) -> Option<Vec<SocketAddr>> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(vec![a]);
    }
    let (addr, last) = s.rsplit_once('-')?;
    let first: SocketAddr = addr.parse().ok()?;
    let last: u16 = last.parse().ok()?;
    if last < first.port() || usize::from(last - first.port()) >= MAX_POOL {
        return None;
    }
    Some(
        (first.port()..=last)
            .map(|p| SocketAddr::new(first.ip(), p))
            .collect(),
    )
}
fn d_stand_in() -> String {
    "group".into()
}
fn d_max_servers() -> usize {
    256
}
fn d_server_lifetime() -> u64 {
    3600
}

/// Every `[[reverse]]`: a known group, a name (path or host) used once, and for
/// `stand_in = "servers"` an address the proxy listens on, a bounded table and a group
/// that is the last hop (a chained group's Reply-From is the next hop's, §8.2).
/// A `pool` makes listeners of its own, after `proxy.listen` (the driver binds every
/// entry of `listen`), each unique and standing for one server at a time.
fn reverse_sections(
    f: &File,
    listen: &mut Vec<SocketAddr>,
    groups: &[GroupSpec],
    errors: &mut Vec<String>,
) -> Vec<crate::proxy::ReverseSpec> {
    use crate::proxy::{ReverseSpec, StandIn};
    let mut out: Vec<ReverseSpec> = Vec::new();
    let configured = listen.len();
    for (i, r) in f.reverse.iter().enumerate() {
        let key = format!("reverse[{i}]");
        let Some(g) = groups.iter().position(|s| s.name == r.group) else {
            errors.push(format!("{key}.group: no [[group]] named {:?}", r.group));
            continue;
        };
        let path: Vec<String> = if r.path.is_empty() {
            Vec::new()
        } else {
            r.path
                .trim_matches('/')
                .split('/')
                .map(str::to_owned)
                .collect()
        };
        if path.iter().any(|s| s.is_empty() || s.len() > 255) {
            errors.push(format!(
                "{key}.path: segments must be 1 to 255 bytes, separated by single /"
            ));
        }
        let host = r.host.as_ref().map(|h| h.to_ascii_lowercase());
        if host.as_ref().is_some_and(|h| h.is_empty() || h.len() > 255) {
            errors.push(format!("{key}.host: must be 1 to 255 bytes"));
        }
        if path.is_empty() && host.is_none() {
            errors.push(format!("{key}: needs a path or a host"));
        }
        if out.iter().any(|o| o.path == path && o.host == host) {
            errors.push(format!(
                "{key}: the same path and host as an earlier [[reverse]]"
            ));
        }
        let stand_in = match r.stand_in.as_str() {
            "group" => StandIn::Group,
            "servers" => {
                let advertise = match r.advertise.as_ref().map(|a| a.parse::<SocketAddr>()) {
                    Some(Ok(a)) => Some(a),
                    Some(Err(_)) => {
                        errors.push(format!("{key}.advertise: not an address:port"));
                        None
                    }
                    None => {
                        errors.push(format!(
                            "{key}.advertise: required with stand_in = \"servers\""
                        ));
                        None
                    }
                };
                if let Some(a) = advertise
                    && a.ip().is_unspecified()
                {
                    errors.push(format!(
                        "{key}.advertise: an address clients reach, not an unspecified one"
                    ));
                }
                let served = |a: SocketAddr| {
                    listen[..configured].iter().any(|l| {
                        l.port() == a.port()
                            && (l.ip() == a.ip()
                                || (l.ip().is_unspecified() && l.is_ipv4() == a.is_ipv4()))
                    })
                };
                if let Some(a) = advertise
                    && !served(a)
                {
                    errors.push(format!(
                        "{key}.advertise: {a} is not reached at any proxy.listen address"
                    ));
                }
                // A full table is scanned when a new server joins it: 4096 keeps that
                // scan to microseconds.
                if !(1..=4096).contains(&r.max_servers) {
                    errors.push(format!("{key}.max_servers: must be 1..=4096"));
                }
                if r.server_lifetime == 0 {
                    errors.push(format!("{key}.server_lifetime: must be at least 1 second"));
                }
                if groups[g].next_hop.is_some() {
                    errors.push(format!(
                        "{key}.stand_in: \"servers\" needs a group without next_hop (a \
                         chained group's Reply-From is the next hop's to pass on, §8.2)"
                    ));
                }
                let mut pool = Vec::new();
                for (j, e) in r.pool.iter().enumerate() {
                    let Some(addrs) = pool_entry(e) else {
                        errors.push(format!(
                            "{key}.pool[{j}]: {e:?} is not ip:port or ip:first-last"
                        ));
                        continue;
                    };
                    for a in addrs {
                        if a.ip().is_unspecified() || a.port() == 0 {
                            errors.push(format!(
                                "{key}.pool[{j}]: {a} is not an address clients reach"
                            ));
                        } else if listen.contains(&a) {
                            errors.push(format!(
                                "{key}.pool[{j}]: {a} is a listener or pool address already"
                            ));
                        } else if listen.len() - configured >= MAX_POOL {
                            errors.push(format!(
                                "{key}.pool: more than {MAX_POOL} addresses in all pools"
                            ));
                            break;
                        } else {
                            pool.push((listen.len(), a));
                            listen.push(a);
                        }
                    }
                }
                if !pool.is_empty() && out.iter().any(|o| {
                    o.group == g
                        && matches!(&o.stand_in, StandIn::Servers { pool, .. } if !pool.is_empty())
                }) {
                    errors.push(format!(
                        "{key}.pool: an earlier [[reverse]] of the group has a pool"
                    ));
                }
                StandIn::Servers {
                    advertise: advertise.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
                    pool,
                    max_servers: r.max_servers,
                    server_lifetime: Duration::from_secs(r.server_lifetime),
                }
            }
            other => {
                errors.push(format!(
                    "{key}.stand_in: {other:?} is not \"group\" or \"servers\""
                ));
                StandIn::Group
            }
        };
        if stand_in == StandIn::Group && !r.pool.is_empty() {
            errors.push(format!("{key}.pool: only with stand_in = \"servers\""));
        }
        out.push(ReverseSpec {
            host,
            path,
            group: g,
            stand_in,
        });
    }
    out
}

/// What must outlive the process: a member's Sender Sequence Numbers (RFC 10021
/// §2.6.1.1) and a checker's replay windows (a request captured before a restart must
/// not pass after it) are kept in `proxy.state_dir`.
fn state_dir_needed(f: &File, errors: &mut Vec<String>) {
    if f.proxy.state_dir.is_some() {
        return;
    }
    let needed = f.groups.iter().enumerate().find_map(|(i, g)| {
        let s = g.security.as_ref()?;
        if s.policy != "off" {
            Some((
                i,
                "its requests are checked (policy enforce or monitor): the replay windows",
            ))
        } else if s.sender_id.is_some() {
            Some((i, "the proxy is a member: its Sender Sequence Numbers"))
        } else {
            None
        }
    });
    if let Some((i, why)) = needed {
        errors.push(format!(
            "proxy.state_dir: required by group[{i}], as {why} are kept there across restarts"
        ));
    }
}

use crate::coap::uri::Target;

// ---- [http]: the HTTP-to-CoAP bridge (issue 13) ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpSection {
    listen: Vec<String>,
    prefix: Option<String>,
    max_connections: Option<usize>,
    max_requests: Option<usize>,
    max_header_bytes: Option<usize>,
    max_body_bytes: Option<usize>,
    header_read_timeout: Option<u64>,
    body_read_timeout: Option<u64>,
    max_endpoints: Option<usize>,
    tls: Option<HttpTlsSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpTlsSection {
    cert: String,
    key: String,
    clients: Option<Vec<HttpClientSection>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpClientSection {
    sha256: String,
    address: String,
}

/// `[http]`: listeners, prefix, limits (each at least 1), TLS files relative to the
/// configuration file, pinned client certificates with their addresses.
fn http_section(
    h: &HttpSection,
    base: &Path,
    errors: &mut Vec<String>,
) -> Option<crate::http::HttpConfig> {
    let d = crate::http::HttpConfig::default();
    let n0 = errors.len();
    let listen: Vec<SocketAddr> = h
        .listen
        .iter()
        .enumerate()
        .filter_map(|(i, a)| {
            a.parse()
                .map_err(|_| errors.push(format!("http.listen[{i}]: {a:?} is not an address:port")))
                .ok()
        })
        .collect();
    if h.listen.is_empty() {
        errors.push("http.listen: at least one listener is needed".into());
    }
    let prefix = h.prefix.clone().unwrap_or(d.prefix);
    if !prefix.starts_with('/') || !prefix.ends_with('/') {
        errors.push(format!("http.prefix: {prefix:?} must start and end with /"));
    }
    let mut positive = |key: &str, v: Option<usize>, dv: usize| {
        let v = v.unwrap_or(dv);
        if v == 0 {
            errors.push(format!("http.{key}: must be at least 1"));
        }
        v
    };
    let max_connections = positive("max_connections", h.max_connections, d.max_connections);
    let max_requests = positive("max_requests", h.max_requests, d.max_requests);
    let max_body_bytes = positive("max_body_bytes", h.max_body_bytes, d.max_body_bytes);
    let max_endpoints = positive("max_endpoints", h.max_endpoints, d.max_endpoints);
    let header_read = positive(
        "header_read_timeout",
        h.header_read_timeout.map(|v| v as usize),
        d.header_read_timeout.as_secs() as usize,
    );
    let body_read = positive(
        "body_read_timeout",
        h.body_read_timeout.map(|v| v as usize),
        d.body_read_timeout.as_secs() as usize,
    );
    let max_header_bytes = h.max_header_bytes.unwrap_or(d.max_header_bytes);
    if max_header_bytes < 8192 {
        errors
            .push("http.max_header_bytes: must be at least 8192 (hyper's smallest buffer)".into());
    }
    let tls = h.tls.as_ref().map(|t| crate::http::TlsConfig {
        cert: base.join(&t.cert),
        key: base.join(&t.key),
        clients: t.clients.as_ref().map(|cs| {
            cs.iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    let fp = hex::decode(c.sha256.replace(':', ""))
                        .ok()
                        .and_then(|b| <[u8; 32]>::try_from(b).ok());
                    let Some(sha256) = fp else {
                        errors.push(format!("http.tls.clients[{i}].sha256: not 32 bytes of hex"));
                        return None;
                    };
                    let Ok(address) = c.address.parse::<IpAddr>() else {
                        errors.push(format!("http.tls.clients[{i}].address: not an IP address"));
                        return None;
                    };
                    Some(crate::http::ClientIdentity { sha256, address })
                })
                .collect()
        }),
    });
    (errors.len() == n0).then(|| crate::http::HttpConfig {
        listen,
        prefix,
        tls,
        max_connections,
        max_requests,
        max_header_bytes,
        max_body_bytes,
        header_read_timeout: Duration::from_secs(header_read as u64),
        body_read_timeout: Duration::from_secs(body_read as u64),
        max_endpoints,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid_and_local() {
        let l = load_default();
        assert_eq!(
            l.run.proxy.groups[0].addr,
            "224.0.1.187:5683".parse().unwrap()
        );
        assert!(l.run.listen.iter().all(|a| a.ip().is_loopback()));
    }

    #[test]
    fn every_error_names_its_key() {
        let errs = load_str(
            r#"
            [proxy]
            listen = ["nope"]
            [options]
            reply_from = 2
            [limits]
            max_datagram = 10
            [unicast]
            allow = ["10.0.0.0/40"]
            [[group]]
            name = "a"
            uri = "coap://10.0.0.1/x"
            hop_limit = 0
            [[group]]
            name = "a"
            uri = "coap://[ff05::fd]"
            interface = "10.0.0.1"
            "#,
        )
        .unwrap_err();
        let joined = errs.join("\n");
        for key in [
            "proxy.listen[0]",
            "options: multicast_timeout",
            "limits.max_datagram",
            "unicast.allow[0]",
            "group[0].uri",
            "group[0].hop_limit",
            "group[1].name",
            "group[1].interface",
        ] {
            assert!(joined.contains(key), "missing {key} in:\n{joined}");
        }
        // Unknown keys are refused by name.
        let e = load_str("[proxy]\nlisten = []\nlisen = 1\n").unwrap_err();
        assert!(e[0].contains("lisen"), "{e:?}");
    }

    /// Issue 16: `[cache]` and the per-group cache keys, parsed and checked by name; off
    /// by default (the embedded default has it off too).
    #[test]
    fn cache_section_and_group_keys() {
        assert!(!load_default().run.proxy.cache.enabled);
        let ok = load_str(
            "[cache]\nenabled = true\nmax_entries = 10\nmax_bytes = 2048\n\n\
             [[group]]\nname = \"g\"\nuri = \"coap://224.0.1.187\"\n\
             cache_members = [\"10.0.0.1:5683\"]\ndeterministic_kid = \"dc\"\n",
        )
        .unwrap();
        let c = &ok.run.proxy.cache;
        assert!(c.enabled && c.max_entries == 10 && c.max_bytes == 2048);
        assert_eq!(c.groups[0].members, vec!["10.0.0.1:5683".parse().unwrap()]);
        assert_eq!(ok.run.proxy.deterministic_kids[0], Some(vec![0xdc]));
        let errs = load_str(
            "[cache]\nmax_entries = 0\nmax_bytes = 10\nmax_age = 0\n\n\
             [[group]]\nname = \"g\"\nuri = \"coap://224.0.1.187\"\n\
             cache_members = [\"x\"]\ndeterministic_kid = \"zz\"\n",
        )
        .unwrap_err()
        .join("\n");
        for key in [
            "cache.max_entries",
            "cache.max_bytes",
            "cache.max_age",
            "group[0].cache_members[0]",
            "group[0].deterministic_kid",
        ] {
            assert!(errs.contains(key), "missing {key} in:\n{errs}");
        }
    }
}
