//! The JSON state under the state root (pool.json, devices/NAME.json,
//! txn.json): no panic on any document, and what parses serializes and
//! parses back to the same value.
#![no_main]
use dmctl::store::model::{PoolRecord, Transaction, VolumeRecord};
use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};

fn roundtrip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<T>(data) {
        let text = serde_json::to_vec_pretty(&v).unwrap();
        let again: T = serde_json::from_slice(&text).unwrap_or_else(|e| {
            panic!(
                "{}: does not parse back: {e}",
                String::from_utf8_lossy(&text)
            )
        });
        assert_eq!(again, v);
    }
}

fuzz_target!(|data: &[u8]| {
    roundtrip::<PoolRecord>(data);
    roundtrip::<VolumeRecord>(data);
    roundtrip::<Transaction>(data);
});
