//! CoAP (RFC 7252) written for the forwarding path: option numbers and their OSCORE
//! classes, the option encoding that OSCORE needs for its inner plaintext, a zero-copy
//! view of a datagram and an encoder into reused buffers, so that the hot path never
//! allocates a parsed packet; CRIs for Reply-From; Proxy-Uri decomposition. (coap-lite
//! serves the tests as an independent codec.)

pub mod build;
pub mod cri;
pub mod options;
pub mod token;
pub mod uri;
pub mod view;

pub use options::{OptionClass, oscore_class};
pub use token::Token;
pub use view::{MessageView, ViewError, split_options};
