//! OSCORE (RFC 8613) and Group OSCORE (RFC 10021): no sockets, no clock, no tokio.

pub mod aad;
pub mod alg;
pub mod batch;
pub mod checker;
pub mod context;
pub mod cred;
pub mod derive;
pub mod deterministic;
pub mod error;
pub mod group;
pub mod option;
pub mod protect;
pub mod replay;
pub(crate) mod ssn;

pub use aad::TbsForm;
pub use checker::{
    CheckerConfig, GroupChecker, ReplayState, Restored, SharedWindows, SignatureChecker, Verdict,
};
pub use context::{ContextConfig, SecurityContext};
pub use error::{ConfigError, OptionError, OscoreError};
pub use group::GroupMember;
pub use protect::{Exchange, Layer, Mode, ResponseInfo};
