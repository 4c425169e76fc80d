//! OCI digests (`sha256:<64 hex>`), as strings and as JSON values: no panic,
//! and only well-formed digests are accepted.
#![no_main]
use dmctl::image::oci::Digest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(d) = Digest::parse(s) {
            assert_eq!(d.as_str(), s);
            let hex = d.hex();
            assert!(
                s.starts_with("sha256:")
                    && hex.len() == 64
                    && hex
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "accepted {s:?}"
            );
        }
    }
    if let Ok(d) = serde_json::from_slice::<Digest>(data) {
        assert!(Digest::parse(d.as_str()).is_ok());
    }
});
