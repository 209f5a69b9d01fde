//! The configuration file (TOML): any text either loads or returns errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = groxy::settings::load_str(text);
    }
});
