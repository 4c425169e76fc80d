//! Pool and volume names, `POOL/NAME` references and dm names: no panic,
//! the checks agree with each other, a reference prints back to itself.
#![no_main]
use dmctl::names::{is_valid_name, parse_dm_name, validate_name, VolumeRef};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let valid = validate_name("volume", s).is_ok();
    assert_eq!(valid, is_valid_name(s), "{s:?}");
    if let Ok(r) = s.parse::<VolumeRef>() {
        assert!(is_valid_name(&r.pool) && is_valid_name(&r.name), "{s:?}");
        assert_eq!(r.to_string(), s);
        let _ = parse_dm_name(&r.dm_name());
    }
    let _ = parse_dm_name(s);
});
