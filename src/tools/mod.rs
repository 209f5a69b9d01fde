//! The tools that come with the proxy but are not part of it: the cloud client of
//! `groxy client` and the simulated group member of `groxy device` (and `groxy demo`,
//! the tests and the load runs). The proxy never uses them; `src/cli` is their command
//! line.

pub mod client;
pub mod device;
