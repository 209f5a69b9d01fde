//! The forward proxy's state machine: exchanges, token mapping, deadlines, policy and
//! limits. No sockets, no tokio, no clock: time comes in as an argument.

pub mod config;
pub mod engine;
pub mod events;
pub(crate) mod mids;
pub mod prefix;
pub mod shared;
pub(crate) mod tables;

pub use config::{
    GroupSecurity, GroupSpec, Limits, LocalNames, OptionNumbers, Policy, ProxyConfig, ReverseSpec,
    StandIn, UnicastPolicy,
};
pub use engine::{Engine, Link, Output, Seed, Transmit};
pub use events::{CheckResult, CloseReason, DropReason, Event, RejectReason, ReverseAction};
pub use prefix::Prefix;
// The response cache (issue 16).
pub use config::{CacheConfig, GroupCache};
pub use events::CacheEvent;
pub use shared::Shared;
#[doc(hidden)]
pub use tables::DedupBench;
