//! What the engine reports besides datagrams: every accepted, relayed and dropped message
//! with its reason, for metrics and rate-limited logs.

use std::net::SocketAddr;
use std::time::Duration;

/// Why a client's request was answered with an error instead of being forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    NotAllowed,
    MissingMulticastTimeout,
    BadMulticastTimeout,
    UnknownCriticalOption,
    UnsafeUnknownOption,
    GroupNotEnabled,
    UnicastNotAllowed,
    SchemeNotSupported,
    UnknownHost,
    BadTarget,
    NotForProxy,
    HopLimit,
    TableFull,
    ClientBusy,
    RateLimited,
    TooManyClients,
    TokenReuse,
    /// Dropped by the signature filter (reported by a Checked event, no error response).
    SignatureCheck,
    /// The proxy's own OSCORE layer failed (RFC 8613 §8.2 error codes).
    OscoreLayer,
    /// More OSCORE layers than the proxy removes (oscore-capable-proxies §2.1).
    TooManyLayers,
    /// The kid the signature checker authenticated is not on the group's `allow_kids`
    /// (groupcomm-proxy §10.1).
    KidNotAllowed,
    /// A verified request of unknown freshness got the Echo challenge (RFC 10021 §9).
    EchoChallenge,
    /// The proxy is draining before exit.
    ShuttingDown,
    /// No Message ID is free toward the group, the origin or the client within its
    /// lifetime (RFC 7252 §4.4), on any egress port: 5.03 with Max-Age.
    MessageIdsExhausted,
    /// The deduplication table is full and the client has not reached its share: 5.03
    /// with Max-Age until an entry expires (RFC 7252 §4.5, see `Dedup`).
    DedupFull,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        use RejectReason::*;
        match self {
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
            SignatureCheck => "signature_check",
            OscoreLayer => "oscore_layer",
            TooManyLayers => "too_many_layers",
            KidNotAllowed => "kid_not_allowed",
            EchoChallenge => "echo_challenge",
            ShuttingDown => "shutting_down",
            MessageIdsExhausted => "message_ids_exhausted",
            DedupFull => "dedup_full",
        }
    }
}

/// The outcome of a countersignature check (RFC 10021 §7.5) by the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckResult {
    Valid,
    BadSignature,
    UnknownGid,
    UnknownKid,
    Malformed,
    /// Not OSCORE at all, sent to a group whose traffic must be Group OSCORE.
    NotProtected,
    /// Pairwise mode: no signature to check (§8).
    Unverifiable,
    /// Validly signed, but its Partial IV was seen already.
    Replay,
}

impl CheckResult {
    pub fn as_str(self) -> &'static str {
        use CheckResult::*;
        match self {
            Valid => "valid",
            BadSignature => "bad_signature",
            UnknownGid => "unknown_gid",
            UnknownKid => "unknown_kid",
            Malformed => "malformed",
            NotProtected => "not_protected",
            Unverifiable => "unverifiable",
            Replay => "replay",
        }
    }
}

/// Why a datagram was dropped without any answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    TooLarge,
    Malformed,
    DuplicateRequest,
    LateResponse,
    UnknownToken,
    UnexpectedMessage,
    ResponseAfterStop,
    GaveUpRetransmitting,
    /// A request the signature check refused (the Checked event says why).
    RequestCheckFailed,
    /// A group-mode response whose signature did not verify.
    ResponseCheckFailed,
    /// A verified response whose Partial IV this server already used in the exchange.
    ResponseReplay,
    /// Every Message ID toward the destination is still live (RFC 7252 §4.4): the
    /// message is not sent rather than reuse one.
    MessageIdsExhausted,
    /// The table of destinations' Message IDs is full: a message to a new destination
    /// is not sent.
    DestinationsFull,
    /// An RST or Early Stop Request that does not match what it would end: no response
    /// with that Message ID went to that client, or the stop lacks the protection of the
    /// request it names.
    UnmatchedStop,
    /// A datagram to a group not sent because the replay state its admission moved could
    /// not be written to stable storage (counted by the driver, per datagram; `from` is
    /// the address it was for).
    ReplayStateUnsaved,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        use DropReason::*;
        match self {
            TooLarge => "too_large",
            Malformed => "malformed",
            DuplicateRequest => "duplicate_request",
            LateResponse => "late_response",
            UnknownToken => "unknown_token",
            UnexpectedMessage => "unexpected_message",
            ResponseAfterStop => "response_after_stop",
            GaveUpRetransmitting => "gave_up_retransmitting",
            RequestCheckFailed => "request_check_failed",
            ResponseCheckFailed => "response_check_failed",
            ResponseReplay => "response_replay",
            MessageIdsExhausted => "message_ids_exhausted",
            DestinationsFull => "destinations_full",
            UnmatchedStop => "unmatched_stop",
            ReplayStateUnsaved => "replay_state_unsaved",
        }
    }
}

/// How an exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    Timeout,
    EarlyStopReset,
    EarlyStopRequest,
    UnicastAnswered,
    UnicastTimeout,
    OriginReset,
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
