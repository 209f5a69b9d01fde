//! groxy: a Group OSCORE forward proxy.
//!
//! The crate is layered as in `DESIGN.md`: [`coap`] knows the CoAP vocabulary, [`oscore`]
//! implements RFC 8613 and Group OSCORE (RFC 10021) without any I/O or clock. Later layers
//! (the forwarding engine, the tokio runtime, operations) build on these two.

pub mod cbor;
pub mod cli;
pub mod client;
pub mod coap;
pub mod config;
pub mod device;
pub mod ops;
pub mod oscore;
pub mod proxy;
pub mod runtime;
