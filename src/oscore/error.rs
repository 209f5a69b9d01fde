//! Typed errors of the OSCORE layer. Each says what was wrong; callers map them to the
//! CoAP codes or counted drops the specs name.

use thiserror::Error;

/// Why an OSCORE option value is malformed (RFC 8613 §6.1, RFC 10021 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum OptionError {
    /// Flag bits 6 and 7 are reserved and must be zero (RFC 8613 §6.1).
    #[error("reserved flag bits set (0x{0:02x})")]
    ReservedBits(u8),
    /// Partial IV lengths 6 and 7 are reserved (RFC 8613 §6.1).
    #[error("Partial IV length {0} is reserved (at most 5)")]
    PivLength(u8),
    /// The flags promise more bytes than the value holds.
    #[error("option value ends before the Partial IV or kid context it announces")]
    Truncated,
    /// RFC 8613 §6.1: only a kid, whose length is implicit, may take the rest of the value.
    #[error("bytes after the flags and no kid flag to account for them")]
    TrailingBytes,
    /// RFC 8613 §2: an option with all flags zero has an empty value.
    #[error("a one-byte value of zero flags must be sent as an empty option")]
    NonMinimal,
}

/// Errors of configuration: algorithms, credentials, keys.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// An algorithm identifier (COSE) that this build does not implement.
    #[error("unsupported {what} algorithm {id} (supported: {supported})")]
    UnsupportedAlgorithm {
        /// Which parameter it was for: "encryption", "signature", "pairwise key agreement".
        what: &'static str,
        /// The COSE algorithm identifier given.
        id: i64,
        /// The identifiers that are implemented, for the message.
        supported: &'static str,
    },
    /// An authentication credential (CCS, RFC 10021 §2.4) that cannot be used.
    #[error("bad authentication credential: {0}")]
    BadCredential(String),
    /// A private key that cannot be used with its algorithm (its length, its value).
    #[error("bad private key: {0}")]
    BadPrivateKey(String),
    /// Any other inconsistency in the parameters (lengths, identifiers, limits).
    #[error("{0}")]
    Invalid(String),
}

/// Errors of protecting or verifying a message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OscoreError {
    /// The datagram itself is malformed.
    #[error("not a CoAP message: {0}")]
    Coap(#[from] crate::coap::ViewError),
    /// The OSCORE option is malformed.
    #[error("malformed OSCORE option: {0}")]
    Option(#[from] OptionError),
    /// A message without the OSCORE option where one was required.
    #[error("message carries no OSCORE option")]
    NotProtected,
    /// RFC 10021 §3.2: the kid context carries the Gid that selects the group context.
    #[error(
        "request has no kid context, but Group OSCORE requests always carry one (RFC 10021 §3.2)"
    )]
    MissingKidContext,
    /// RFC 8613 §8.2: the kid and Partial IV identify the sender and the nonce.
    #[error("request has no kid or no Partial IV")]
    MissingKidOrPiv,
    /// No group context under the kid context (RFC 10021 §6).
    #[error("no security context for this Gid")]
    UnknownGid,
    /// No recipient context under the kid, and none can be derived (RFC 10021 §6).
    #[error("no recipient context for this kid")]
    UnknownKid,
    /// The context has no group encryption or signature parameters (RFC 10021 §2.1.7, §2.1.8).
    #[error("group mode is not set up in this context")]
    GroupModeUnavailable,
    /// The context has no pairwise key agreement parameters (RFC 10021 §2.1.10, §8.1).
    #[error("pairwise mode is not set up in this context")]
    PairwiseModeUnavailable,
    /// RFC 10021 §7.2: too short to hold the tag and the countersignature.
    #[error("payload shorter than the tag and countersignature")]
    ShortPayload,
    /// RFC 10021 §7.2, §7.4: the message is discarded.
    #[error("countersignature does not verify")]
    BadSignature,
    /// The AEAD tag does not verify (RFC 8613 §8.2, §8.4).
    #[error("decryption failed")]
    DecryptFailed,
    /// RFC 8613 §5.3: the plaintext starts with the code, then options and payload.
    #[error("decrypted plaintext is not a CoAP code and options")]
    BadPlaintext,
    /// RFC 8613 §7.4: the Partial IV was seen before.
    #[error("Partial IV already received (replay)")]
    Replay,
    /// RFC 8613 §7.4: the Partial IV is below the replay window.
    #[error("Partial IV is older than the replay window")]
    TooOld,
    /// The window is unusable until resynchronised (RFC 10021 §2.6.1.2, §9).
    #[error("replay window is invalid after lost state (RFC 10021 §2.6.1.2)")]
    ReplayWindowInvalid,
    /// RFC 10021 §2.6.2: the endpoint needs a new Sender ID or context.
    #[error("Sender Sequence Number space exhausted (RFC 10021 §2.6.2)")]
    SequenceExhausted,
    /// The driver has not yet made a Sender Sequence Number durable (RFC 8613 Appendix B.1.1).
    #[error("Sender Sequence Number not yet reserved on stable storage")]
    SequenceNotReserved,
    /// A silent server sends nothing protected (RFC 10021 §1.1).
    #[error("this endpoint has no sender context (silent server)")]
    NoSenderContext,
    /// A message under this endpoint's own Sender ID: a loop or a forgery.
    #[error("message is from this endpoint's own Sender ID")]
    OwnSenderId,
    /// A response whose kid, Partial IV or mode disagrees with its request (the reason in words).
    #[error("response does not match the request: {0}")]
    Mismatch(&'static str),
    /// RFC 8613 §4.1.3.3: Proxy-Uri cannot be protected whole.
    #[error("Proxy-Uri must be decomposed into Proxy-Scheme and Uri-* before protection")]
    ProxyUriUnsupported,
    /// Building the protected message failed (the reason in words).
    #[error("CoAP serialization failed: {0}")]
    Serialize(String),
    /// A configuration error met while protecting or verifying.
    #[error("{0}")]
    Config(#[from] ConfigError),
}
