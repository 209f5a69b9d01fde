//! CoAP vocabulary on top of coap-lite: option numbers and their OSCORE classes, the option
//! encoding that OSCORE needs for its inner plaintext, and a zero-copy view of a datagram for
//! the paths that must not allocate.

pub mod build;
pub mod cri;
pub mod options;
pub mod token;
pub mod uri;
pub mod view;

pub use options::{OptionClass, oscore_class};
pub use token::Token;
pub use view::{MessageView, ViewError, split_options};
