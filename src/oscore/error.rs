//! Typed errors of the OSCORE layer. Each says what was wrong; callers map them to the
//! CoAP codes or counted drops the specs name.

use thiserror::Error;

/// Why an OSCORE option value is malformed (RFC 8613 §6.1, RFC 10021 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum OptionError {
    #[error("reserved flag bits set (0x{0:02x})")]
    ReservedBits(u8),
    #[error("Partial IV length {0} is reserved (at most 5)")]
    PivLength(u8),
    #[error("option value ends before the Partial IV or kid context it announces")]
    Truncated,
    #[error("bytes after the flags and no kid flag to account for them")]
    TrailingBytes,
    #[error("a one-byte value of zero flags must be sent as an empty option")]
    NonMinimal,
}

/// Errors of configuration: algorithms, credentials, keys.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("unsupported {what} algorithm {id} (supported: {supported})")]
    UnsupportedAlgorithm {
        what: &'static str,
        id: i64,
        supported: &'static str,
    },
    #[error("bad authentication credential: {0}")]
    BadCredential(String),
    #[error("bad private key: {0}")]
    BadPrivateKey(String),
    #[error("{0}")]
    Invalid(String),
}

/// Errors of protecting or verifying a message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OscoreError {
    #[error("not a CoAP message: {0}")]
    Coap(#[from] crate::coap::ViewError),
    #[error("malformed OSCORE option: {0}")]
    Option(#[from] OptionError),
    #[error("message carries no OSCORE option")]
    NotProtected,
    #[error(
        "request has no kid context, but Group OSCORE requests always carry one (RFC 10021 §3.2)"
    )]
    MissingKidContext,
    #[error("request has no kid or no Partial IV")]
    MissingKidOrPiv,
    #[error("no security context for this Gid")]
    UnknownGid,
    #[error("no recipient context for this kid")]
    UnknownKid,
    #[error("group mode is not set up in this context")]
    GroupModeUnavailable,
    #[error("pairwise mode is not set up in this context")]
    PairwiseModeUnavailable,
    #[error("payload shorter than the tag and countersignature")]
    ShortPayload,
    #[error("countersignature does not verify")]
    BadSignature,
    #[error("decryption failed")]
    DecryptFailed,
    #[error("decrypted plaintext is not a CoAP code and options")]
    BadPlaintext,
    #[error("Partial IV already received (replay)")]
    Replay,
    #[error("Partial IV is older than the replay window")]
    TooOld,
    #[error("replay window is invalid after lost state (RFC 10021 §2.6.1.2)")]
    ReplayWindowInvalid,
    #[error("Sender Sequence Number space exhausted (RFC 10021 §2.6.2)")]
    SequenceExhausted,
    #[error("Sender Sequence Number not yet reserved on stable storage")]
    SequenceNotReserved,
    #[error("this endpoint has no sender context (silent server)")]
    NoSenderContext,
    #[error("message is from this endpoint's own Sender ID")]
    OwnSenderId,
    #[error("response does not match the request: {0}")]
    Mismatch(&'static str),
    #[error("Proxy-Uri must be decomposed into Proxy-Scheme and Uri-* before protection")]
    ProxyUriUnsupported,
    #[error("CoAP serialization failed: {0}")]
    Serialize(String),
    #[error("{0}")]
    Config(#[from] ConfigError),
}
