//! Reverse-proxy mode (groupcomm-proxy §6, RFC 10020 §3.5.2, RFC 7252 §5.7.3): resources
//! of the proxy stand for groups, so a client that knows no forward-proxy options sends
//! its group request to the proxy itself. Such a request is rewritten into the
//! forward-proxy request it stands for (Proxy-Scheme, Uri-Host and Uri-Port naming the
//! group, the resource's own path segments taken off) and goes down the ordinary request
//! path: allow-list, limits, Multicast-Timeout (4.00 with an empty one without it, §6.1:
//! the proxy reveals itself), signature filter, Observe.
//!
//! Standing in for the servers too (§6.1, first case), Reply-From names an address of
//! the proxy's own for the server, from the resource's pool (Appendix A.2), or, with
//! none free, the proxy with a CRI reference to the server (Appendix A.1: one address
//! for every server). The servers that answered are remembered, per group and bounded,
//! so that a follow-up to a server's pool address, or naming the server (Uri-Host,
//! Uri-Port, §6.2), is forwarded to it, and one naming anything else is not: the proxy is
//! no open relay for the hosts behind it.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::{Engine, HashMap, Local, Reject};
use crate::coap::MessageView;
use crate::coap::build::{self, code};
use crate::coap::cri;
use crate::coap::options::{self as opt, read_uint, uint_value};
use crate::proxy::config::{ReverseSpec, StandIn};
use crate::proxy::events::{Event, RejectReason, ReverseAction};
use crate::sync::lock;

use super::member::Outer;

/// How often, at most, a full pool looks for servers past their lifetime.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A server that answered a group request of a reverse-proxied resource.
#[derive(Debug, Clone, Copy)]
struct Known {
    /// Its address, with the IPv6 zone the response came with.
    addr: SocketAddr,
    seen: Instant,
    /// The pool listener that stands for it, if it has one.
    slot: Option<usize>,
}

/// Per group: the servers a follow-up may name (keyed without the zone, which a Uri-Host
/// does not carry), and the pool listeners in use, by listener index.
///
/// One table per group for the whole proxy (`Shared::reverse_servers`): the kernel
/// spreads clients over the threads by their 4-tuple, so a §6.2 follow-up can reach
/// another thread than the group request it follows. A listener index means the same
/// address on every thread (each binds `proxy.listen` and the pools in the one order,
/// the threads after the first the first one's resolved addresses), so a slot is the
/// same pool address whichever thread gave or reads it. Held for table steps only
/// (lookups, an insert, a scan bounded by `max_servers` when the table is full), never
/// while a request is forwarded.
#[derive(Debug, Default)]
pub(crate) struct Servers {
    known: HashMap<(IpAddr, u16), Known>,
    slots: HashMap<usize, (IpAddr, u16)>,
    /// When servers past their lifetime were last looked for (a scan of `known`, so at
    /// most once a second however many responses come while the pool is full).
    swept: Option<Instant>,
}

impl Servers {
    fn forget(&mut self, key: &(IpAddr, u16)) {
        if let Some(k) = self.known.remove(key)
            && let Some(l) = k.slot
        {
            self.slots.remove(&l);
        }
    }
}

impl Engine {
    /// The reverse resources whose group exists (the configuration validates that; an
    /// engine built from a hand-made one must not panic either), with their index.
    fn reverse_specs(&self) -> impl Iterator<Item = (usize, &ReverseSpec)> {
        let groups = self.cfg.groups.len();
        self.cfg
            .reverse
            .iter()
            .enumerate()
            .filter(move |(_, r)| r.group < groups)
    }

    /// The reverse resource a request without a proxy target names, and how many of its
    /// Uri-Path segments name it: the entry with the longest match.
    fn reverse_match(&self, view: &MessageView) -> Option<(usize, usize)> {
        if self.cfg.reverse.is_empty() {
            return None;
        }
        let host = view
            .option(opt::URI_HOST)
            .and_then(|h| std::str::from_utf8(h).ok());
        let path: Vec<&[u8]> = view
            .options()
            .filter(|(n, _)| *n == opt::URI_PATH)
            .map(|(_, v)| v)
            .collect();
        self.reverse_specs()
            .filter(|(_, r)| match (&r.host, host) {
                (None, _) => true,
                (Some(want), Some(h)) => want.eq_ignore_ascii_case(h),
                (Some(_), None) => false,
            })
            .filter(|(_, r)| {
                r.path.len() <= path.len()
                    && r.path.iter().zip(&path).all(|(a, b)| a.as_bytes() == *b)
            })
            .max_by_key(|(_, r)| (r.path.len(), r.host.is_some()))
            .map(|(i, r)| (i, r.path.len()))
    }

    /// A request without Proxy-Uri or Proxy-Scheme (the caller's hook): a group request
    /// if it names a reverse resource, a follow-up (§6.2) if its Uri-Host and Uri-Port
    /// name a server the proxy stands in for; `None`: neither, a request for the proxy.
    pub(super) fn reverse_request(
        &mut self,
        now: Instant,
        listener: usize,
        from: SocketAddr,
        view: &MessageView,
        outer: &mut Option<Outer>,
    ) -> Option<Result<Option<Local>, Reject>> {
        // A pool listener stands for one server (Appendix A.2): whatever comes to it
        // without a proxy option is for that server.
        if let Some(g) = self.pool_group(listener) {
            let key = lock(&self.reverse_servers)
                .get(g)
                .and_then(|s| s.slots.get(&listener).copied());
            return Some(self.forward_follow_up(now, listener, from, view, outer, g, key, false));
        }
        if let Some((i, skip)) = self.reverse_match(view) {
            return Some(self.reverse_group(now, listener, from, view, outer, i, skip));
        }
        self.follow_up(now, listener, from, view, outer)
    }

    /// A request to reverse resource `i` whose first `skip` Uri-Path segments name it.
    #[allow(
        clippy::too_many_arguments,
        reason = "the request path's own arguments"
    )]
    fn reverse_group(
        &mut self,
        now: Instant,
        listener: usize,
        from: SocketAddr,
        view: &MessageView,
        outer: &mut Option<Outer>,
        i: usize,
        skip: usize,
    ) -> Result<Option<Local>, Reject> {
        let spec = &self.cfg.reverse[i];
        let g = spec.group;
        let advertise = match spec.stand_in {
            StandIn::Servers { advertise, .. } => Some(advertise),
            StandIn::Group => None,
        };
        let group = self.cfg.groups[g].addr;
        self.emit(Event::Reverse {
            group: g,
            action: ReverseAction::GroupRequest,
        });
        let host = group.ip().to_string();
        let port = uint_value(u32::from(group.port()));
        let mut skipped = 0;
        let mut opts: Vec<(u16, &[u8])> = view
            .options()
            .filter(|(n, _)| {
                if *n == opt::URI_PATH && skipped < skip {
                    skipped += 1;
                    return false;
                }
                !matches!(*n, opt::URI_HOST | opt::URI_PORT)
            })
            .collect();
        opts.extend([
            (opt::PROXY_SCHEME, &b"coap"[..]),
            (opt::URI_HOST, host.as_bytes()),
            (opt::URI_PORT, &port[..]),
        ]);
        // Standing in for the servers, Reply-From names the proxy (set on the exchange
        // below): the cache, which names the servers, does not answer for it (cache.rs).
        self.cache.stand_in = advertise.is_some();
        let mut result = self.rewritten(now, listener, from, view, &mut opts, outer);
        self.cache.stand_in = false;
        // RFC 10020 §3.5.2: a token reused while its group request runs ended that one
        // (4.00, nothing forwarded); the diagnostic SHOULD say why: a reverse proxy.
        if let Err(r) = &mut result
            && r.reason == RejectReason::TokenReuse
        {
            r.diagnostic = "reverse-proxy resource: no Token re-use while responses are collected";
        }
        // The exchange (if one was opened: T' > 0) answers with the Reply-From form of
        // the resource.
        if result.is_ok()
            && let Some(advertise) = advertise
            && let Some(t) = self.by_client.get(&(from, super::client_token(view)))
            && let Some(ex) = self.exchanges.get_mut(t)
        {
            ex.stands_in = Some(advertise);
        }
        result
    }

    /// Handles `view` rewritten with `opts` as the forward-proxy request it stands for.
    fn rewritten(
        &mut self,
        now: Instant,
        listener: usize,
        from: SocketAddr,
        view: &MessageView,
        opts: &mut [(u16, &[u8])],
        outer: &mut Option<Outer>,
    ) -> Result<Option<Local>, Reject> {
        let bytes = build::encode(
            view.mtype(),
            view.code(),
            view.message_id(),
            view.token(),
            opts,
            view.payload(),
        );
        let Ok(v) = MessageView::parse(&bytes) else {
            // Not reached: the rewrite of a parsed request parses (a guard, not a panic).
            return Err(Reject::new(
                code::BAD_REQUEST,
                RejectReason::BadTarget,
                "request too large to forward",
            ));
        };
        self.request(now, listener, from, &v, outer)
    }

    /// §6.2: a unicast request to the proxy whose Uri-Host (an IP literal) and Uri-Port
    /// name a server that answered a group request of a resource standing in for the
    /// servers is forwarded to that server, with the rest of its options. The client must
    /// be one the group allows; the unicast policy does not apply (the servers may be
    /// reachable through this resource only).
    fn follow_up(
        &mut self,
        now: Instant,
        listener: usize,
        from: SocketAddr,
        view: &MessageView,
        outer: &mut Option<Outer>,
    ) -> Option<Result<Option<Local>, Reject>> {
        let stands_in = |r: &ReverseSpec| matches!(r.stand_in, StandIn::Servers { .. });
        if !self.reverse_specs().any(|(_, r)| stands_in(r)) {
            return None;
        }
        let host = std::str::from_utf8(view.option(opt::URI_HOST)?).ok()?;
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let ip: IpAddr = bare.parse().ok()?;
        let port = match view.option(opt::URI_PORT).map(read_uint) {
            None => 5683,
            Some(Some(p)) => u16::try_from(p).ok()?,
            Some(None) => return None,
        };
        // Uri-Host names the proxy itself: a request for its own resources.
        if self.cfg.local.is_local(ip, port) {
            return None;
        }
        // A client no such group allows learns nothing of the servers behind the proxy.
        if !self
            .reverse_specs()
            .filter(|(_, r)| stands_in(r))
            .any(|(_, r)| self.follow_up_allowed(outer, from, r.group))
        {
            return Some(Err(not_allowed(None)));
        }
        // Only groups with a resource standing in for the servers, as configured now.
        let servers = lock(&self.reverse_servers);
        let found = self
            .reverse_specs()
            .map(|(_, r)| r)
            .filter(|r| stands_in(r))
            .map(|r| r.group)
            .find(|&g| {
                servers
                    .get(g)
                    .is_some_and(|s| s.known.contains_key(&(ip, port)))
            });
        drop(servers);
        let Some(g) = found else {
            // Any IP literal in Uri-Host sent to the proxy is taken as a follow-up: the
            // proxy has no resources under addresses, so a 4.04 says what went wrong.
            return Some(Err(Reject::new(
                code::NOT_FOUND,
                RejectReason::ReverseUnknownServer,
                "no server the proxy stands in for at this address",
            )));
        };
        Some(self.forward_follow_up(now, listener, from, view, outer, g, Some((ip, port)), true))
    }

    /// Whether group `g` allows the client of a follow-up: by its layer's kid, or by
    /// its address (as a group request, §5.2.1 step 2).
    fn follow_up_allowed(&self, outer: &Option<Outer>, from: SocketAddr, g: usize) -> bool {
        match outer.as_ref() {
            Some(o) => self.kid_allowed(o, g),
            None => self.cfg.groups[g]
                .allow
                .iter()
                .any(|p| p.contains(from.ip())),
        }
    }

    /// The group whose resource's pool listener `listener` is, if it is one.
    fn pool_group(&self, listener: usize) -> Option<usize> {
        self.reverse_specs().find_map(|(_, r)| match &r.stand_in {
            StandIn::Servers { pool, .. } if pool.iter().any(|(l, _)| *l == listener) => {
                Some(r.group)
            }
            _ => None,
        })
    }

    /// The longest `server_lifetime` of group `g`'s resources standing in for servers.
    fn server_lifetime(&self, g: usize) -> std::time::Duration {
        self.reverse_specs()
            .filter(|(_, r)| r.group == g)
            .filter_map(|(_, r)| match r.stand_in {
                StandIn::Servers {
                    server_lifetime, ..
                } => Some(server_lifetime),
                StandIn::Group => None,
            })
            .max()
            .unwrap_or_default()
    }

    /// Forwards a follow-up (§6.2) to the server `key` of group `g` names, if it is
    /// remembered and fresh and the client is one the group allows; Uri-Host and
    /// Uri-Port (`named`: they name the server) or the pool address stood for it.
    #[allow(
        clippy::too_many_arguments,
        reason = "the request path's own arguments"
    )]
    fn forward_follow_up(
        &mut self,
        now: Instant,
        listener: usize,
        from: SocketAddr,
        view: &MessageView,
        outer: &mut Option<Outer>,
        g: usize,
        key: Option<(IpAddr, u16)>,
        named: bool,
    ) -> Result<Option<Local>, Reject> {
        // Checked first: whether a server is known is for clients of its group only.
        if !self.follow_up_allowed(outer, from, g) {
            return Err(not_allowed(Some(g)));
        }
        let lifetime = self.server_lifetime(g);
        let mut tables = lock(&self.reverse_servers);
        let servers = tables.get_mut(g);
        let known = key.and_then(|k| {
            let s = servers.as_ref()?.known.get(&k)?;
            Some((k, *s))
        });
        let Some((key, server)) = known else {
            return Err(Reject::new(
                code::NOT_FOUND,
                RejectReason::ReverseUnknownServer,
                "no server the proxy stands in for here",
            )
            .group(g));
        };
        if now.saturating_duration_since(server.seen) >= lifetime {
            if let Some(servers) = servers {
                servers.forget(&key);
            }
            return Err(Reject::new(
                code::NOT_FOUND,
                RejectReason::ReverseUnknownServer,
                "server not heard from within server_lifetime",
            )
            .group(g));
        }
        drop(tables);
        self.emit(Event::Reverse {
            group: g,
            action: ReverseAction::FollowUp,
        });
        let addr = server.addr;
        let host = addr.ip().to_string();
        let port = uint_value(u32::from(addr.port()));
        let mut opts: Vec<(u16, &[u8])> = view
            .options()
            .filter(|(n, _)| named || !matches!(*n, opt::URI_HOST | opt::URI_PORT))
            .collect();
        opts.push((opt::PROXY_SCHEME, &b"coap"[..]));
        if !named {
            opts.extend([(opt::URI_HOST, host.as_bytes()), (opt::URI_PORT, &port[..])]);
        }
        // Read by `forward_unicast` for this one request: the reverse mapping, not the
        // unicast policy, decides that it may be forwarded.
        self.reverse_grant = Some(addr);
        let r = self.rewritten(now, listener, from, view, &mut opts, outer);
        self.reverse_grant = None;
        r
    }

    /// Whether the unicast request to `origin` being forwarded is a follow-up the
    /// reverse mapping vouched for (see `follow_up`).
    pub(super) fn reverse_granted(&self, origin: SocketAddr) -> bool {
        self.reverse_grant
            .is_some_and(|a| a.ip() == origin.ip() && a.port() == origin.port())
    }

    /// The Reply-From value of a response of `from` in exchange `token` (§5.4.1 step 1;
    /// §6.1): naming the server, or, where the proxy stands in for the servers, the
    /// server's pool address (Appendix A.2: the CRI alone, as the proxy forwards by it
    /// alone) or the proxy with a CRI reference to the server (Appendix A.1); the server
    /// is remembered for follow-ups.
    pub(super) fn reply_from_value(&mut self, token: u64, from: SocketAddr) -> Vec<u8> {
        let Some((advertise, g)) = self
            .exchanges
            .get(&token)
            .and_then(|ex| Some((ex.stands_in?, ex.route.group()?)))
        else {
            return cri::reply_from(from);
        };
        if let Some(pool_addr) = self.remember_server(g, from) {
            return cri::reply_from(pool_addr);
        }
        let mut v = cri::reply_from(advertise);
        v.extend_from_slice(&cri::authority_reference(from));
        v
    }

    /// Records that `from` answered group `g`, and gives it a free pool address of the
    /// group's if it has none: that address, if it has one. At the group's bound
    /// (`max_servers`, the largest of its resources') the server heard from least
    /// recently is forgotten (a scan, as it happens only when a new server joins a full
    /// table); with no pool address free, servers past `server_lifetime` are forgotten
    /// first (a scan too, only then).
    fn remember_server(&mut self, g: usize, from: SocketAddr) -> Option<SocketAddr> {
        let now = self.now;
        let lifetime = self.server_lifetime(g);
        let mut bound = 0;
        let mut pool: &[(usize, SocketAddr)] = &[];
        for r in self.cfg.reverse.iter().filter(|r| r.group == g) {
            if let StandIn::Servers {
                max_servers,
                pool: p,
                ..
            } = &r.stand_in
            {
                bound = bound.max(*max_servers);
                if !p.is_empty() {
                    pool = p;
                }
            }
        }
        let mut tables = lock(&self.reverse_servers);
        let table = tables.get_mut(g)?;
        let key = (from.ip(), from.port());
        let mut forgotten = 0;
        if !table.known.contains_key(&key) {
            while !table.known.is_empty() && table.known.len() >= bound {
                let oldest = table
                    .known
                    .iter()
                    .min_by_key(|(_, k)| k.seen)
                    .map(|(key, _)| *key)
                    .expect("not empty");
                table.forget(&oldest);
                forgotten += 1;
            }
            if bound > 0 {
                table.known.insert(
                    key,
                    Known {
                        addr: from,
                        seen: now,
                        slot: None,
                    },
                );
            }
        }
        let slot = match table.known.get_mut(&key) {
            Some(k) => {
                k.seen = now;
                k.addr = from;
                k.slot
            }
            None => None,
        };
        let slot = match slot {
            Some(l) => Some(l),
            None if !pool.is_empty() && table.known.contains_key(&key) => {
                if pool.iter().all(|(l, _)| table.slots.contains_key(l))
                    && table
                        .swept
                        .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY)
                {
                    table.swept = Some(now);
                    let stale: Vec<_> = table
                        .known
                        .iter()
                        .filter(|(_, k)| now.saturating_duration_since(k.seen) >= lifetime)
                        .map(|(key, _)| *key)
                        .collect();
                    for s in &stale {
                        table.forget(s);
                    }
                }
                let free = pool
                    .iter()
                    .map(|(l, _)| *l)
                    .find(|l| !table.slots.contains_key(l));
                if let Some(l) = free {
                    table.slots.insert(l, key);
                    if let Some(k) = table.known.get_mut(&key) {
                        k.slot = Some(l);
                    }
                }
                free
            }
            None => None,
        };
        let addr = slot.and_then(|l| pool.iter().find(|(i, _)| *i == l).map(|(_, a)| *a));
        drop(tables);
        for _ in 0..forgotten {
            self.emit(Event::Reverse {
                group: g,
                action: ReverseAction::ServerForgotten,
            });
        }
        addr
    }
}

/// 4.01 to a follow-up from a client the group does not allow.
fn not_allowed(group: Option<usize>) -> Reject {
    let r = Reject::new(
        code::UNAUTHORIZED,
        RejectReason::NotAllowed,
        "client not allowed for this group",
    );
    match group {
        Some(g) => r.group(g),
        None => r,
    }
}
