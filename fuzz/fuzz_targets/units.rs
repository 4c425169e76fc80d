//! Sizes given on the command line: no panic, and a parsed size parses
//! again from its plain byte count.
#![no_main]
use dmctl::units::{format_size, parse_size};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(n) = parse_size(s) {
        assert_eq!(parse_size(&n.to_string()).ok(), Some(n), "{s:?}");
        let _ = format_size(n);
    }
});
