//! Sizes: parsing user-given sizes (`10G`, `512M`, `1.5GiB`), formatting
//! byte counts for humans, and converting between bytes and 512-byte
//! sectors.
//!
//! All units are binary: `K` is 1024 bytes, `M` is 1024 K, and so on up to
//! `P`. A suffix may be followed by `B` or `iB` (`64KB`, `1GiB`), and all
//! letters are case-insensitive.

use crate::error::{Error, Result};

/// The size of a device-mapper sector in bytes.
pub const SECTOR: u64 = 512;

/// Unit letters and their multipliers, largest first.
const UNITS: [(char, u64); 5] = [
    ('P', 1 << 50),
    ('T', 1 << 40),
    ('G', 1 << 30),
    ('M', 1 << 20),
    ('K', 1 << 10),
];

/// More significant fractional digits than this cannot give a whole number
/// of bytes with any supported unit (the largest multiplier is 2^50, and a
/// fraction with `n` significant digits needs `2^n` to divide it), and would
/// overflow the exact arithmetic below.
const MAX_FRACTION_DIGITS: usize = 30;

fn invalid(s: &str, reason: &str) -> Error {
    Error::Invalid(format!("invalid size '{}': {reason}", s.escape_debug()))
}

/// The multiplier for a unit suffix (the part after the number), or `None`
/// when the suffix is not one we accept.
fn unit_multiplier(suffix: &str) -> Option<u64> {
    let upper = suffix.to_ascii_uppercase();
    if upper.is_empty() || upper == "B" {
        return Some(1);
    }
    let mut chars = upper.chars();
    let letter = chars.next()?;
    let rest = chars.as_str();
    if !(rest.is_empty() || rest == "B" || rest == "IB") {
        return None;
    }
    UNITS
        .iter()
        .find(|(u, _)| *u == letter)
        .map(|&(_, mult)| mult)
}

/// Parse a size in bytes: a plain byte count (`512`), or a number with a
/// binary unit suffix `K`, `M`, `G`, `T` or `P`, optionally followed by `B`
/// or `iB`, in any case (`64K`, `512m`, `10G`, `1TiB`).
///
/// A decimal point is accepted (`1.5G`) as long as the result is a whole
/// number of bytes. Zero parses; callers decide whether it is acceptable.
/// Whitespace, signs, overflow and unknown units are errors.
pub fn parse_size(s: &str) -> Result<u64> {
    if s.is_empty() {
        return Err(invalid(s, "empty"));
    }
    if s.starts_with('-') {
        return Err(invalid(s, "must not be negative"));
    }
    let num_len = s
        .bytes()
        .position(|b| !(b.is_ascii_digit() || b == b'.'))
        .unwrap_or(s.len());
    // Every byte in `..num_len` is ASCII, so this is a char boundary.
    let (number, suffix) = s.split_at(num_len);
    if number.is_empty() {
        return Err(invalid(
            s,
            "expected a number, optionally followed by K, M, G, T or P",
        ));
    }
    let mult = unit_multiplier(suffix).ok_or_else(|| {
        invalid(
            s,
            "unknown unit (expected a number, optionally followed by K, M, G, T or P)",
        )
    })?;

    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (number, None),
    };
    if int_part.is_empty() || !int_part.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(s, "malformed number"));
    }
    let too_large = || invalid(s, "too large");

    // Integer part: accumulate in u128 and stop as soon as it cannot fit.
    let mut int_value: u128 = 0;
    for b in int_part.bytes() {
        int_value = int_value * 10 + u128::from(b - b'0');
        if int_value > u128::from(u64::MAX) {
            return Err(too_large());
        }
    }
    let mut total = int_value * u128::from(mult);

    if let Some(frac) = frac_part {
        if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(s, "malformed number"));
        }
        let frac = frac.trim_end_matches('0');
        if frac.len() > MAX_FRACTION_DIGITS {
            return Err(invalid(s, "not a whole number of bytes"));
        }
        let mut frac_value: u128 = 0;
        let mut denom: u128 = 1;
        for b in frac.bytes() {
            frac_value = frac_value * 10 + u128::from(b - b'0');
            denom *= 10;
        }
        // frac_value can reach 10^MAX_FRACTION_DIGITS and mult 2^50: their
        // product may not fit in u128 (found by fuzzing), so check it.
        let scaled = frac_value
            .checked_mul(u128::from(mult))
            .ok_or_else(|| invalid(s, "too many fraction digits"))?;
        if !scaled.is_multiple_of(denom) {
            return Err(invalid(s, "not a whole number of bytes"));
        }
        total += scaled / denom;
    }

    u64::try_from(total).map_err(|_| too_large())
}

/// Format a byte count for humans, as `lsblk` does: the largest binary unit
/// not greater than it, one decimal, `.0` dropped (`10G`, `1.5G`, `49.1M`,
/// `512B`). Sizes that are whole tenths of their unit parse back to the
/// same value with [`parse_size`].
pub fn format_size(bytes: u64) -> String {
    let Some(idx) = UNITS.iter().position(|&(_, mult)| bytes >= mult) else {
        return format!("{bytes}B");
    };
    let (mut unit, mut mult) = UNITS[idx];
    // Tenths of the unit, rounded half up, in exact integer arithmetic.
    let mut tenths = (u128::from(bytes) * 10 + u128::from(mult) / 2) / u128::from(mult);
    // 1023.96K rounds to 1024.0K; show that as 1M instead.
    if tenths >= 10240 && idx > 0 {
        (unit, mult) = UNITS[idx - 1];
        tenths = (u128::from(bytes) * 10 + u128::from(mult) / 2) / u128::from(mult);
    }
    if tenths % 10 == 0 {
        format!("{}{unit}", tenths / 10)
    } else {
        format!("{}.{}{unit}", tenths / 10, tenths % 10)
    }
}

/// Bytes to sectors, truncating. Use [`require_sector_multiple`] to reject
/// byte counts that are not a whole number of sectors.
pub fn bytes_to_sectors(bytes: u64) -> u64 {
    bytes / SECTOR
}

/// Sectors to bytes, saturating at `u64::MAX` (no real device gets there).
pub fn sectors_to_bytes(sectors: u64) -> u64 {
    sectors.saturating_mul(SECTOR)
}

/// The number of sectors in `bytes`, or an error naming `what` when `bytes`
/// is not a multiple of the 512-byte sector size.
pub fn require_sector_multiple(bytes: u64, what: &str) -> Result<u64> {
    if !bytes.is_multiple_of(SECTOR) {
        return Err(Error::Invalid(format!(
            "invalid {what} {bytes} bytes: must be a multiple of {SECTOR} bytes"
        )));
    }
    Ok(bytes / SECTOR)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u64 = 1 << 10;
    const M: u64 = 1 << 20;
    const G: u64 = 1 << 30;
    const T: u64 = 1 << 40;
    const P: u64 = 1 << 50;

    fn err(s: &str) -> String {
        match parse_size(s) {
            Err(Error::Invalid(msg)) => msg,
            other => panic!("expected Invalid for {s:?}, got {other:?}"),
        }
    }

    #[test]
    fn plain_bytes() {
        assert_eq!(parse_size("0").unwrap(), 0);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("512B").unwrap(), 512);
        assert_eq!(parse_size("512b").unwrap(), 512);
        assert_eq!(parse_size("007").unwrap(), 7);
        assert_eq!(parse_size("18446744073709551615").unwrap(), u64::MAX);
    }

    #[test]
    fn units_and_suffixes() {
        assert_eq!(parse_size("64K").unwrap(), 64 * K);
        assert_eq!(parse_size("64k").unwrap(), 64 * K);
        assert_eq!(parse_size("512M").unwrap(), 512 * M);
        assert_eq!(parse_size("10G").unwrap(), 10 * G);
        assert_eq!(parse_size("1T").unwrap(), T);
        assert_eq!(parse_size("2P").unwrap(), 2 * P);
        assert_eq!(parse_size("1GiB").unwrap(), G);
        assert_eq!(parse_size("1gib").unwrap(), G);
        assert_eq!(parse_size("1GB").unwrap(), G);
        assert_eq!(parse_size("1Mb").unwrap(), M);
        assert_eq!(parse_size("0G").unwrap(), 0);
    }

    #[test]
    fn decimals() {
        assert_eq!(parse_size("1.5G").unwrap(), G + G / 2);
        assert_eq!(parse_size("0.5K").unwrap(), 512);
        assert_eq!(parse_size("1.0G").unwrap(), G);
        assert_eq!(
            parse_size("1.000000000000000000000000000000000000000G").unwrap(),
            G
        );
        assert_eq!(parse_size("0.25M").unwrap(), M / 4);
        assert_eq!(parse_size("2.0").unwrap(), 2);
        assert!(err("1.5").contains("whole number"));
        assert!(err("0.3K").contains("whole number"));
        assert!(err("1.0000000000000000000000000000000001P").contains("whole number"));
        assert!(err("1.").contains("malformed"));
        assert!(err(".5G").contains("malformed"));
        assert!(err("1.2.3G").contains("malformed"));
        assert!(err("1..5G").contains("malformed"));
    }

    #[test]
    fn rejects_junk() {
        for s in [
            "", "G", "K", "10X", "1 0G", " 5", "5 ", "5G ", "+5", "0x10", "1e3", "10GG", "10GiBB",
            "10iB", "10Gi", "1.5 G", "５", "5\n", "10Ĝ", "ten",
        ] {
            let msg = err(s);
            assert!(msg.starts_with("invalid size '"), "{s:?}: {msg}");
        }
        assert!(err("").contains("empty"));
        assert!(err("10X").contains("unknown unit"));
        assert!(err("-1").contains("negative"));
        assert!(err("-1G").contains("negative"));
        // Control characters are escaped so the message stays on one line.
        assert!(!err("5\n").contains('\n'));
    }

    #[test]
    fn rejects_overflow() {
        assert!(err("18446744073709551616").contains("too large"));
        assert!(err("99999999999999999999999999999999999999999999").contains("too large"));
        assert!(err("16384P").contains("too large"));
        assert_eq!(parse_size("16383P").unwrap(), 16383 * P);
        assert!(err("16777216T").contains("too large"));
        assert_eq!(
            parse_size("16383.99951171875P").unwrap(),
            u64::MAX - (1 << 39) + 1
        );
        assert!(err("16384.5P").contains("too large"));
    }

    #[test]
    fn format_whole_units() {
        assert_eq!(format_size(0), "0B");
        assert_eq!(format_size(1), "1B");
        assert_eq!(format_size(512), "512B");
        assert_eq!(format_size(1023), "1023B");
        assert_eq!(format_size(K), "1K");
        assert_eq!(format_size(64 * K), "64K");
        assert_eq!(format_size(10 * G), "10G");
        assert_eq!(format_size(T), "1T");
        assert_eq!(format_size(3 * P), "3P");
        assert_eq!(format_size(16383 * P), "16383P");
    }

    #[test]
    fn format_one_decimal_like_lsblk() {
        // The three forms the old format mixed in one listing.
        assert_eq!(format_size(49 * M), "49M");
        assert_eq!(format_size(50240 * K), "49.1M");
        assert_eq!(format_size(1536 * K), "1.5M");
        assert_eq!(format_size(1025), "1K");
        assert_eq!(format_size(1536 + 1), "1.5K");
        assert_eq!(format_size(G + G / 2 + 1), "1.5G");
        assert_eq!(format_size(G + 1), "1G");
        assert_eq!(format_size(M - 1), "1M");
        assert_eq!(format_size(u64::MAX), "16384P");
        assert_eq!(format_size(10 * G - 1), "10G");
    }

    #[test]
    fn format_round_trips_whole_tenths() {
        for v in [
            K,
            3 * K,
            1536 * K,
            5 * M,
            7 * G,
            9 * T,
            11 * P,
            2 * G + G / 2,
        ] {
            assert_eq!(parse_size(&format_size(v)).unwrap(), v, "{v}");
        }
    }

    #[test]
    fn sectors() {
        assert_eq!(SECTOR, 512);
        assert_eq!(bytes_to_sectors(G), 2 * M);
        assert_eq!(bytes_to_sectors(1000), 1);
        assert_eq!(sectors_to_bytes(8), 4096);
        assert_eq!(sectors_to_bytes(u64::MAX), u64::MAX);
        assert_eq!(require_sector_multiple(64 * K, "size").unwrap(), 128);
        assert_eq!(require_sector_multiple(0, "size").unwrap(), 0);
        match require_sector_multiple(1000, "volume size") {
            Err(Error::Invalid(msg)) => {
                assert!(msg.contains("volume size"), "{msg}");
                assert!(msg.contains("512"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn regression_long_fraction_with_big_unit_overflowed_u128() {
        // fuzz/artifacts/units: 25 fraction digits times 2^50 overflowed.
        let e = parse_size("0.0510000000000200000000002P").unwrap_err();
        assert!(e.to_string().contains("invalid size"), "{e}");
        assert_eq!(parse_size("1.5P").unwrap(), 3 << 49);
    }
}
