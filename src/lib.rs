//! groxy: a Group OSCORE forward proxy.
//!
//! The crate is layered as in `DESIGN.md`: [`coap`] knows the CoAP vocabulary, [`oscore`]
//! implements RFC 8613 and Group OSCORE (RFC 10021) without any I/O or clock. Later layers
//! (the forwarding engine, the tokio runtime, operations) build on these two; [`tools`]
//! are the client and the simulated device that come with the proxy.

pub mod cbor;
pub mod cli;
pub mod coap;
pub mod config;
pub mod ops;
pub mod oscore;
pub mod proxy;
pub mod runtime;
pub mod tools;
