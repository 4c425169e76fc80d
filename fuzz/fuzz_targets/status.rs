//! Kernel status and table lines (`dmsetup status` / `table` parameters):
//! no panic on any input, and a parsed table prints back to itself.
#![no_main]
use dmctl::kernel::status::{
    parse_pool_status, parse_pool_table, parse_thin_status, parse_thin_table,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_pool_status(s);
    let _ = parse_thin_status(s);
    if let Ok(t) = parse_pool_table(s) {
        let again = parse_pool_table(&t.to_params())
            .unwrap_or_else(|e| panic!("pool table {s:?} -> {:?}: {e}", t.to_params()));
        assert_eq!(again, t, "pool table {s:?} does not round-trip");
    }
    if let Ok(t) = parse_thin_table(s) {
        let again = parse_thin_table(&t.to_params())
            .unwrap_or_else(|e| panic!("thin table {s:?} -> {:?}: {e}", t.to_params()));
        assert_eq!(again, t, "thin table {s:?} does not round-trip");
    }
});
