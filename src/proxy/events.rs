//! What the engine reports besides datagrams: every accepted, relayed and dropped message
//! with its reason, for metrics and rate-limited logs.

use std::net::SocketAddr;
use std::time::Duration;

/// Declares one of the engine's vocabularies of reasons once: the enumeration, the label
/// of each variant (in metrics and logs) and `ALL`, which metrics and logs iterate, so a
/// new variant cannot go unlabelled or uncounted.
macro_rules! labelled {
    (
        $(#[$m:meta])*
        pub enum $name:ident {
            $($(#[$vm:meta])* $v:ident => $label:literal,)*
        }
    ) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vm])* $v,)*
        }

        impl $name {
            /// Every variant, in declaration order: the metrics register a series per
            /// variant; the tests check every label.
            #[allow(dead_code, reason = "not every vocabulary is listed outside the tests")]
            pub(crate) const ALL: &'static [$name] = &[$($name::$v,)*];

            /// The label in metrics and logs.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$v => $label,)*
                }
            }
        }
    };
}

labelled! {
    /// Why a client's request was answered with an error instead of being forwarded.
    pub enum RejectReason {
        /// The client is not on the group's or unicast allow-list: 4.01 (groupcomm-proxy §5.2.1 step 2).
        NotAllowed => "not_allowed",
        /// A group request without Multicast-Timeout: 4.00 (groupcomm-proxy §5.2.1 step 3).
        MissingMulticastTimeout => "missing_multicast_timeout",
        /// A Multicast-Timeout value that is not a uint: 4.00 (groupcomm-proxy §2).
        BadMulticastTimeout => "bad_multicast_timeout",
        /// RFC 7252 §5.4.1: an unrecognized critical option: 4.02.
        UnknownCriticalOption => "unknown_critical_option",
        /// RFC 7252 §5.7.1: an unrecognized Unsafe option a proxy cannot forward: 4.02.
        UnsafeUnknownOption => "unsafe_unknown_option",
        /// Group proxying is off for the group: 5.01 (RFC 10020 §3.5.1).
        GroupNotEnabled => "group_not_enabled",
        /// Unicast forwarding is off: 5.05.
        UnicastNotAllowed => "unicast_not_allowed",
        /// A target scheme other than coap: 5.05 (RFC 7252 §5.7.2).
        SchemeNotSupported => "scheme_not_supported",
        /// A host name that is neither a group's nor the proxy's: 5.05.
        UnknownHost => "unknown_host",
        /// The target options are malformed (see `TargetError`): 4.00.
        BadTarget => "bad_target",
        /// A plain request to the proxy's own resources, which it serves over OSCORE only: 4.04.
        NotForProxy => "not_for_proxy",
        /// Hop-Limit reaches 0 when decremented, or is malformed: 5.08 (RFC 8768 §3).
        HopLimit => "hop_limit",
        /// `max_exchanges` reached: 5.03 with Max-Age.
        TableFull => "table_full",
        /// The client has `max_exchanges_per_client` in flight: 4.29 with Max-Age.
        ClientBusy => "client_busy",
        /// The client exceeded `client_rate` and `client_burst`: 4.29 with Max-Age.
        RateLimited => "rate_limited",
        /// `max_clients` tracked already and this one is new: 5.03 with Max-Age.
        TooManyClients => "too_many_clients",
        /// A new request with the token of the client's running exchange, which it ends: 4.00 (RFC 10020 §3.5.2).
        TokenReuse => "token_reuse",
        /// Dropped by the signature filter (reported by a Checked event, no error response).
        SignatureCheck => "signature_check",
        /// The proxy's own OSCORE layer failed (RFC 8613 §8.2 error codes).
        OscoreLayer => "oscore_layer",
        /// More OSCORE layers than the proxy removes (oscore-capable-proxies §2.1).
        TooManyLayers => "too_many_layers",
        /// The kid the signature checker authenticated is not on the group's `allow_kids`
        /// (groupcomm-proxy §10.1).
        KidNotAllowed => "kid_not_allowed",
        /// A verified request of unknown freshness got the Echo challenge (RFC 10021 §9).
        EchoChallenge => "echo_challenge",
        /// The proxy is draining before exit.
        ShuttingDown => "shutting_down",
        /// No Message ID is free toward the group, the origin or the client within its
        /// lifetime (RFC 7252 §4.4), on any egress port: 5.03 with Max-Age.
        MessageIdsExhausted => "message_ids_exhausted",
        /// The deduplication table is full and the client has not reached its share: 5.03
        /// with Max-Age until an entry expires (RFC 7252 §4.5, see `Dedup`).
        DedupFull => "dedup_full",
        /// A new observation while `observe.max_observations` are held: 5.03 with Max-Age
        /// (RFC 10020 §3.7, amplification).
        ObservationsFull => "observations_full",
        /// A new observation from a client holding `observe.max_per_client`: 4.29 with
        /// Max-Age.
        ClientObservations => "client_observations",
        /// A chained group's T' leaves no T'' for the next hop after the margin: 5.05 with
        /// the least acceptable Multicast-Timeout (groupcomm-proxy §8.1 step 4.3).
        ChainTimeout => "chain_timeout",
        /// Reverse-proxy mode, the proxy standing in for the servers (groupcomm-proxy §6.2):
        /// a follow-up whose Uri-Host and Uri-Port name no server that answered the
        /// resource's group (or one forgotten since): 4.04.
        ReverseUnknownServer => "reverse_unknown_server",
    }
}

labelled! {
    /// What the reverse-proxy mode did (groupcomm-proxy §6, issue 16).
    pub enum ReverseAction {
        /// A request to a resource that stands for a group was taken as a group request.
        GroupRequest => "group_request",
        /// A follow-up unicast request to the proxy was forwarded to the server it names
        /// (§6.2, the proxy standing in for the servers).
        FollowUp => "follow_up",
        /// A server was forgotten to make room for another (`max_servers`).
        ServerForgotten => "server_forgotten",
    }
}

labelled! {
    /// The outcome of a countersignature check (RFC 10021 §7.5) by the proxy.
    pub enum CheckResult {
        /// The countersignature verifies under the sender's credential.
        Valid => "valid",
        /// The countersignature does not verify (RFC 10021 §7.2, §7.4).
        BadSignature => "bad_signature",
        /// The kid context names no epoch the proxy knows.
        UnknownGid => "unknown_gid",
        /// The kid is not a member of the epoch.
        UnknownKid => "unknown_kid",
        /// The OSCORE option or payload cannot be parsed.
        Malformed => "malformed",
        /// Not OSCORE at all, sent to a group whose traffic must be Group OSCORE.
        NotProtected => "not_protected",
        /// Pairwise mode: no signature to check (§8).
        Unverifiable => "unverifiable",
        /// Validly signed, but its Partial IV was seen already.
        Replay => "replay",
        /// A Deterministic Request of the group's Deterministic Client
        /// (cacheable-oscore-02 §3.4.2; `[[group]] deterministic_kid`) let through: its
        /// form checked and, where the proxy is a member of the group, its decryption,
        /// Request-Hash and safe method. It authenticates no sender (§2, §6).
        Deterministic => "deterministic",
        /// Under the Deterministic Client's kid but not a valid Deterministic Request:
        /// its Request-Hash or ciphertext does not verify, or its method is not safe.
        DeterministicInvalid => "deterministic_invalid",
    }
}

impl CheckResult {
    /// Whether a request with this result passed the request filter: a verified
    /// signature, or an admitted Deterministic Request.
    pub fn passed(self) -> bool {
        matches!(self, CheckResult::Valid | CheckResult::Deterministic)
    }
}

labelled! {
    /// Why a datagram was dropped without any answer.
    pub enum DropReason {
        /// Longer than `max_datagram`.
        TooLarge => "too_large",
        /// Not a CoAP message, or a malformed one (RFC 7252 §3).
        Malformed => "malformed",
        /// A Message ID seen before within its lifetime (RFC 7252 §4.5).
        DuplicateRequest => "duplicate_request",
        /// For one of the proxy's recent tokens whose exchange has ended (`late_memory`).
        LateResponse => "late_response",
        /// A response with a token the proxy never used or has forgotten.
        UnknownToken => "unknown_token",
        /// A message the receiving socket has no use for, e.g. a request on an egress port.
        UnexpectedMessage => "unexpected_message",
        /// A CON left unacknowledged after MAX_RETRANSMIT retransmissions (RFC 7252 §4.2).
        GaveUpRetransmitting => "gave_up_retransmitting",
        /// A request the signature check refused (the Checked event says why).
        RequestCheckFailed => "request_check_failed",
        /// A group-mode response whose signature did not verify.
        ResponseCheckFailed => "response_check_failed",
        /// A verified response whose Partial IV this server already used in the exchange.
        ResponseReplay => "response_replay",
        /// Every Message ID toward the destination is still live (RFC 7252 §4.4): the
        /// message is not sent rather than reuse one.
        MessageIdsExhausted => "message_ids_exhausted",
        /// The table of destinations' Message IDs is full: a message to a new destination
        /// is not sent.
        DestinationsFull => "destinations_full",
        /// An RST or Early Stop Request that does not match what it would end: no response
        /// with that Message ID went to that client, or the stop lacks the protection of the
        /// request it names.
        UnmatchedStop => "unmatched_stop",
        /// A datagram to a group not sent because the replay state its admission moved could
        /// not be written to stable storage (counted by the driver, per datagram; `from` is
        /// the address it was for).
        ReplayStateUnsaved => "replay_state_unsaved",
        /// A 5.08 (Hop Limit Reached) whose diagnostic already names this proxy: a loop
        /// through it, not relayed (RFC 8768 §4), and logged.
        HopLoop => "hop_loop",
    }
}

labelled! {
    /// How an exchange ended.
    pub enum CloseReason {
        /// The Multicast-Timeout (or a unicast exchange's deadline) passed.
        Timeout => "timeout",
        /// The client reset a relayed response (groupcomm-proxy §5.2.3).
        EarlyStopReset => "early_stop_reset",
        /// The client sent an Early Stop Request (groupcomm-proxy §5.2.3), or a new request under the token.
        EarlyStopRequest => "early_stop_request",
        /// A unicast exchange got its response.
        UnicastAnswered => "unicast_answered",
        /// A unicast origin did not answer in time: 5.04 to the client.
        UnicastTimeout => "unicast_timeout",
        /// A unicast origin reset the forwarded request.
        OriginReset => "origin_reset",
        /// An observation: the client deregistered (Observe 1 under its token, RFC 7641
        /// §3.6); the exchange relays the answers to that request until its T'.
        Deregistered => "deregistered",
        /// An observation: a CON notification to the client went unacknowledged (RFC 7641
        /// §4.5).
        InterestLapsed => "interest_lapsed",
        /// An observation: every device (or the origin) ended its notifications with a
        /// non-2.xx response or one without Observe (groupcomm-proxy §5.4.2).
        NotificationsEnded => "notifications_ended",
        /// An observation past T' relayed no notification for `observe.interest_check`.
        ObserveIdle => "observe_idle",
        /// The proxy is shutting down (SIGTERM): observations end with a deregistration.
        Shutdown => "shutdown",
    }
}

labelled! {
    /// Why a notification of an observation was not relayed to the client (besides the
    /// signature filter's drops, counted as `Dropped`).
    pub enum NotificationDrop {
        /// Older than the last one relayed from that device (RFC 7641 §3.4).
        Reordered => "reordered",
        /// Over the client's `observe.notification_rate` (RFC 10020 §3.7).
        RateLimited => "rate_limited",
        /// From a device beyond `observe.max_devices` of one observation.
        DevicesFull => "devices_full",
    }
}

/// One thing the engine did, for metrics and logs; `group` is an index into
/// [`ProxyConfig::groups`](super::ProxyConfig::groups), `None` for unicast.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A request was answered with an error code.
    Rejected {
        /// The group the request was for, if it got as far as naming one.
        group: Option<usize>,
        /// The rule the request broke.
        reason: RejectReason,
        /// The response code sent.
        code: u8,
        /// Where the request came from.
        client: SocketAddr,
    },
    /// A group request was sent to the group; `timeout` is the Multicast-Timeout applied.
    FanOut {
        /// Index into `ProxyConfig::groups`.
        group: usize,
        /// The Multicast-Timeout applied: `asked`, lowered to the group's `max_timeout`.
        timeout: Duration,
        /// The Multicast-Timeout the client asked for.
        asked: Duration,
    },
    /// A request was forwarded to a unicast origin.
    UnicastForward,
    /// A response went back to the client, `after` the request was forwarded.
    Relayed {
        /// The group, `None` for a unicast origin's response.
        group: Option<usize>,
        /// Time since the request was forwarded.
        after: Duration,
    },
    /// A datagram was dropped without an answer.
    Dropped {
        /// The rule the datagram broke.
        reason: DropReason,
        /// The sender (for [`DropReason::ReplayStateUnsaved`], the destination).
        from: SocketAddr,
    },
    /// An exchange ended.
    Closed {
        /// The group, `None` for a unicast exchange.
        group: Option<usize>,
        /// Responses relayed to the client in the exchange.
        responses: u32,
        /// How it ended.
        reason: CloseReason,
    },
    /// A configuration reload was applied (`ok`) or refused, keeping the running one.
    ConfigReload {
        /// Whether the new configuration was applied.
        ok: bool,
    },
    /// A request (or response) of a group was checked; `enforced` is false when the
    /// group's policy is monitor and a failure was forwarded anyway.
    Checked {
        /// Index into `ProxyConfig::groups`.
        group: usize,
        /// A request, else a response.
        request: bool,
        /// Valid, or what failed.
        result: CheckResult,
        /// Whether a failure dropped the message (policy enforce).
        enforced: bool,
    },
    /// An observation started (RFC 7641; groupcomm-proxy §5.2.2): the exchange outlives
    /// T' while a device notifies.
    ObserveStarted {
        /// The group, `None` for a unicast origin.
        group: Option<usize>,
    },
    /// A client re-registered under the token of its observation (RFC 7641 §3.3.1): the
    /// registration was sent again, no second observation started.
    ObserveRefreshed {
        /// The group, `None` for a unicast origin.
        group: Option<usize>,
    },
    /// A notification of an observation went to the client.
    Notified {
        /// The group, `None` for a unicast origin.
        group: Option<usize>,
        /// Sent as CON to check the client's interest (RFC 7641 §4.5).
        interest_check: bool,
    },
    /// A notification of an observation was not relayed.
    NotificationDropped {
        /// The group, `None` for a unicast origin.
        group: Option<usize>,
        /// Why.
        reason: NotificationDrop,
        /// The device or origin it came from.
        from: SocketAddr,
    },
    /// An observation ended (its exchange closed, or turned back into an ordinary one by
    /// the client's deregistration).
    ObserveEnded {
        /// The group, `None` for a unicast origin.
        group: Option<usize>,
        /// How it ended.
        reason: CloseReason,
        /// Whether the proxy sent the group (or origin) a deregistration.
        deregistered: bool,
    },
    // Chains of proxies (groupcomm-proxy §8, issue 16).
    /// A group request went to the group's next hop instead of the group (§8.1).
    ChainForwarded {
        /// Index into `ProxyConfig::groups`.
        group: usize,
        /// This hop's T' (after `max_timeout`).
        timeout: Duration,
        /// T'', the Multicast-Timeout passed on.
        next: Duration,
    },
    /// The client's early stop was passed on to the next hop (§8.1.2).
    ChainStopped {
        /// Index into `ProxyConfig::groups`.
        group: usize,
    },
    // Reverse-proxy mode (groupcomm-proxy §6, issue 16).
    /// A reverse-proxied resource was used.
    Reverse {
        /// Index into `ProxyConfig::groups`: the resource's group.
        group: usize,
        /// What happened.
        action: ReverseAction,
    },
    // Response cache (groupcomm-proxy §7, RFC 7252 §5.6; issue 16).
    /// Something the response cache did, for a group's request (`Some`) or a unicast one.
    Cache {
        /// Index into `ProxyConfig::groups`; None for unicast requests.
        group: Option<usize>,
        /// What happened.
        what: CacheEvent,
    },
}

labelled! {
    /// What the response cache did (groupcomm-proxy §7, RFC 7252 §5.6).
    pub enum CacheEvent {
        /// A cacheable request was answered from the cache alone (nothing forwarded).
        Hit => "hit",
        /// A cacheable request was forwarded: nothing (complete and fresh) was stored.
        Miss => "miss",
        /// A group request's Group-ETag matched the current set: one 2.03 (§7.3).
        GroupEtagValid => "group_etag_valid",
        /// A server's 2.03 refreshed a stale stored response (RFC 7252 §5.6.2,
        /// groupcomm-proxy §7.2); the client got the stored representation.
        Revalidated => "revalidated",
        /// A response was stored (or replaced the server's earlier one, §7).
        Stored => "stored",
        /// A stored response was evicted to stay within the bounds (or at a resize).
        Evicted => "evicted",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Labels are what operators query: unique within a vocabulary, snake case.
    #[test]
    fn every_reason_has_a_distinct_snake_case_label() {
        fn check(labels: Vec<&'static str>) {
            let mut seen = std::collections::HashSet::new();
            for l in labels {
                assert!(seen.insert(l), "label {l} twice");
                assert!(
                    !l.is_empty() && l.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                    "label {l}"
                );
            }
        }
        check(RejectReason::ALL.iter().map(|r| r.as_str()).collect());
        check(CheckResult::ALL.iter().map(|r| r.as_str()).collect());
        check(DropReason::ALL.iter().map(|r| r.as_str()).collect());
        check(CloseReason::ALL.iter().map(|r| r.as_str()).collect());
        check(NotificationDrop::ALL.iter().map(|r| r.as_str()).collect());
        check(ReverseAction::ALL.iter().map(|r| r.as_str()).collect());
    }
}
