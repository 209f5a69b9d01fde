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
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$v,)*];

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
        NotAllowed => "not_allowed",
        MissingMulticastTimeout => "missing_multicast_timeout",
        BadMulticastTimeout => "bad_multicast_timeout",
        UnknownCriticalOption => "unknown_critical_option",
        UnsafeUnknownOption => "unsafe_unknown_option",
        GroupNotEnabled => "group_not_enabled",
        UnicastNotAllowed => "unicast_not_allowed",
        SchemeNotSupported => "scheme_not_supported",
        UnknownHost => "unknown_host",
        BadTarget => "bad_target",
        NotForProxy => "not_for_proxy",
        HopLimit => "hop_limit",
        TableFull => "table_full",
        ClientBusy => "client_busy",
        RateLimited => "rate_limited",
        TooManyClients => "too_many_clients",
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
    }
}

labelled! {
    /// The outcome of a countersignature check (RFC 10021 §7.5) by the proxy.
    pub enum CheckResult {
        Valid => "valid",
        BadSignature => "bad_signature",
        UnknownGid => "unknown_gid",
        UnknownKid => "unknown_kid",
        Malformed => "malformed",
        /// Not OSCORE at all, sent to a group whose traffic must be Group OSCORE.
        NotProtected => "not_protected",
        /// Pairwise mode: no signature to check (§8).
        Unverifiable => "unverifiable",
        /// Validly signed, but its Partial IV was seen already.
        Replay => "replay",
    }
}

labelled! {
    /// Why a datagram was dropped without any answer.
    pub enum DropReason {
        TooLarge => "too_large",
        Malformed => "malformed",
        DuplicateRequest => "duplicate_request",
        LateResponse => "late_response",
        UnknownToken => "unknown_token",
        UnexpectedMessage => "unexpected_message",
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
    }
}

labelled! {
    /// How an exchange ended.
    pub enum CloseReason {
        Timeout => "timeout",
        EarlyStopReset => "early_stop_reset",
        EarlyStopRequest => "early_stop_request",
        UnicastAnswered => "unicast_answered",
        UnicastTimeout => "unicast_timeout",
        OriginReset => "origin_reset",
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A request was answered with an error code.
    Rejected {
        group: Option<usize>,
        reason: RejectReason,
        code: u8,
        client: SocketAddr,
    },
    /// A group request was sent to the group; `timeout` is the Multicast-Timeout applied.
    FanOut {
        group: usize,
        timeout: Duration,
        asked: Duration,
    },
    /// A request was forwarded to a unicast origin.
    UnicastForward,
    /// A response went back to the client, `after` the request was forwarded.
    Relayed {
        group: Option<usize>,
        after: Duration,
    },
    Dropped {
        reason: DropReason,
        from: SocketAddr,
    },
    Closed {
        group: Option<usize>,
        responses: u32,
        reason: CloseReason,
    },
    /// A configuration reload was applied (`ok`) or refused, keeping the running one.
    ConfigReload { ok: bool },
    /// A request (or response) of a group was checked; `enforced` is false when the
    /// group's policy is monitor and a failure was forwarded anyway.
    Checked {
        group: usize,
        request: bool,
        result: CheckResult,
        enforced: bool,
    },
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
    }
}
