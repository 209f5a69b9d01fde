//! groxy: a Group OSCORE forward proxy.
//!
//! The crate is layered as in `DESIGN.md`: [`coap`] knows the CoAP vocabulary, [`oscore`]
//! implements RFC 8613 and Group OSCORE (RFC 10021) without any I/O or clock. Later layers
//! (the forwarding engine, the tokio runtime, operations) build on these two; [`tools`]
//! are the client and the simulated device that come with the proxy.

// Every public item is documented, and `pub` means reachable from outside the crate:
// what only the crate uses is `pub(crate)` (issue 11). CI's `-D warnings` makes both hard.
#![warn(missing_docs, unreachable_pub)]
// The sans-I/O layers need no unsafe code; only the runtime's batched socket calls
// (recvmmsg/sendmmsg, socket options through libc) do, and it opts in below.
#![deny(unsafe_code)]

pub(crate) mod cbor;
pub mod cli;
pub mod coap;
pub mod http;
pub mod ops;
pub mod oscore;
pub mod proxy;
#[allow(unsafe_code)]
pub mod runtime;
pub mod settings;
pub(crate) mod sync;
pub mod tools;
