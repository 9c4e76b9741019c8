//! Fuzzes registration-key parsing (operators paste these; they may be damaged or hostile).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = lifeboat_protocol::regkey::RegistrationKey::decode(s);
    }
});
