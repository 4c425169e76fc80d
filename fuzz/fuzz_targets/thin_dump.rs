//! `thin_dump` XML as read by `dmctl check`: no panic on any input.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = dmctl::thinmeta::parse_thin_dump(s);
    }
});
