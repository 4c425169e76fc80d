//! Parsers for the status and table parameter strings of the `thin-pool`
//! and `thin` device-mapper targets (what `dmsetup status` and `dmsetup
//! table` print after `<start> <length> <target>`), as documented in the
//! kernel's `Documentation/admin-guide/device-mapper/thin-provisioning.rst`
//! and emitted by `drivers/md/dm-thin.c`.
//!
//! The input comes from the kernel, but these parsers must still never
//! panic on any input: every token is checked, numbers are parsed with
//! overflow checks, and nothing is indexed without a bounds check.

use std::fmt;

use crate::error::{Error, Result};

/// Size of a thin-pool metadata block in bytes.
pub const META_BLOCK_BYTES: u64 = 4096;

/// The largest thin device id the kernel accepts (24 bits).
pub const MAX_THIN_DEV_ID: u32 = (1 << 24) - 1;

/// The mode a thin pool is running in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum PoolMode {
    #[serde(rename = "rw")]
    ReadWrite,
    #[serde(rename = "ro")]
    ReadOnly,
    #[serde(rename = "out_of_data_space")]
    OutOfDataSpace,
    #[serde(rename = "fail")]
    Fail,
}

impl PoolMode {
    pub fn as_str(&self) -> &'static str {
        match self {
            PoolMode::ReadWrite => "rw",
            PoolMode::ReadOnly => "ro",
            PoolMode::OutOfDataSpace => "out_of_data_space",
            PoolMode::Fail => "fail",
        }
    }
}

impl fmt::Display for PoolMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status of a working thin pool.
///
/// Metadata blocks are [`META_BLOCK_BYTES`]; data blocks are the pool's
/// block size (see [`PoolTable::block_sectors`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PoolStatus {
    pub transaction_id: u64,
    pub used_meta_blocks: u64,
    pub total_meta_blocks: u64,
    pub used_data_blocks: u64,
    pub total_data_blocks: u64,
    /// Root of a reserved metadata snapshot, if one is held.
    pub held_metadata_root: Option<u64>,
    /// `ReadWrite`, `ReadOnly` or `OutOfDataSpace`; a failed pool reports
    /// [`PoolStatusLine::Fail`] instead.
    pub mode: PoolMode,
    /// Whether discards are passed down to the data device. `false` both for
    /// `no_discard_passdown` and for `ignore_discard` (discards disabled).
    pub discard_passdown: bool,
    /// `error_if_no_space` (true) or `queue_if_no_space` (false).
    pub error_if_no_space: bool,
    /// The metadata needs `thin_check` before the pool may go read-write.
    pub needs_check: bool,
    /// Metadata low-water mark in metadata blocks, on kernels that report it.
    pub meta_low_water: Option<u64>,
}

/// A parsed thin-pool status parameter string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolStatusLine {
    Active(PoolStatus),
    /// The pool is in fail mode (`Fail`).
    Fail,
    /// The kernel could not read the pool's metadata to report a status
    /// (`Error`).
    Error,
}

/// A parsed thin status parameter string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThinStatus {
    Active {
        mapped_sectors: u64,
        /// `None` when nothing is mapped.
        highest_mapped_sector: Option<u64>,
    },
    /// The pool the volume lives in is in fail mode (`Fail`).
    Fail,
    /// The kernel could not report a status (`Error`, or a lone `-` for a
    /// thin target without an open device).
    Error,
}

/// Parameters of a `thin-pool` table line:
/// `META_DEV DATA_DEV BLOCK_SECTORS LOW_WATER_BLOCKS [N FEATURE...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolTable {
    /// Metadata device as (major, minor).
    pub meta_dev: (u32, u32),
    /// Data device as (major, minor).
    pub data_dev: (u32, u32),
    /// Data block size in 512-byte sectors.
    pub block_sectors: u64,
    /// Free data blocks below which the kernel raises an event.
    pub low_water_blocks: u64,
    /// Feature arguments (`skip_block_zeroing`, `ignore_discard`,
    /// `no_discard_passdown`, `read_only`, `error_if_no_space`). Each must be
    /// a single non-empty word without whitespace for [`Self::to_params`] to
    /// round-trip.
    pub features: Vec<String>,
}

impl PoolTable {
    /// The table parameter string; the feature count and features are
    /// omitted when there are none.
    pub fn to_params(&self) -> String {
        let mut s = format!(
            "{} {} {} {}",
            fmt_dev(self.meta_dev),
            fmt_dev(self.data_dev),
            self.block_sectors,
            self.low_water_blocks
        );
        if !self.features.is_empty() {
            s.push_str(&format!(" {}", self.features.len()));
            for f in &self.features {
                s.push(' ');
                s.push_str(f);
            }
        }
        s
    }

    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }
}

/// Parameters of a `thin` table line: `POOL_DEV DEV_ID [EXTERNAL_ORIGIN]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThinTable {
    /// Pool device as (major, minor).
    pub pool_dev: (u32, u32),
    /// Thin device id inside the pool.
    pub device_id: u32,
    /// External origin device, if the volume has one (dmctl does not create
    /// them, but a table may still carry one).
    pub external_origin: Option<(u32, u32)>,
}

impl ThinTable {
    pub fn to_params(&self) -> String {
        let mut s = format!("{} {}", fmt_dev(self.pool_dev), self.device_id);
        if let Some(origin) = self.external_origin {
            s.push(' ');
            s.push_str(&fmt_dev(origin));
        }
        s
    }
}

/// Formats a device number as the kernel does in tables: `major:minor`.
pub fn fmt_dev((major, minor): (u32, u32)) -> String {
    format!("{major}:{minor}")
}

/// Echo kernel output in an error message, escaped and cut short so that
/// the message stays one readable line whatever the input.
fn echo(s: &str) -> String {
    const MAX_ECHO: usize = 200;
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == MAX_ECHO {
            out.push_str("...");
            break;
        }
        out.extend(c.escape_debug());
    }
    out
}

/// Builds the error for one kind of parameter string.
struct Ctx<'a> {
    what: &'static str,
    params: &'a str,
}

impl Ctx<'_> {
    fn err(&self, reason: impl fmt::Display) -> Error {
        Error::Invalid(format!(
            "unparseable {} '{}': {reason}",
            self.what,
            echo(self.params)
        ))
    }

    fn u64(&self, field: &str, tok: &str) -> Result<u64> {
        parse_u64(tok).ok_or_else(|| {
            self.err(format_args!(
                "{field} '{}' is not an unsigned 64-bit number",
                echo(tok)
            ))
        })
    }

    fn u32(&self, field: &str, tok: &str) -> Result<u32> {
        parse_u32(tok).ok_or_else(|| {
            self.err(format_args!(
                "{field} '{}' is not an unsigned 32-bit number",
                echo(tok)
            ))
        })
    }

    fn ratio(&self, field: &str, tok: &str) -> Result<(u64, u64)> {
        let (used, total) = tok
            .split_once('/')
            .ok_or_else(|| self.err(format_args!("{field} '{}' is not USED/TOTAL", echo(tok))))?;
        Ok((self.u64(field, used)?, self.u64(field, total)?))
    }

    fn dev(&self, field: &str, tok: &str) -> Result<(u32, u32)> {
        let bad = || self.err(format_args!("{field} '{}' is not MAJOR:MINOR", echo(tok)));
        let (major, minor) = tok.split_once(':').ok_or_else(bad)?;
        Ok((
            parse_u32(major).ok_or_else(bad)?,
            parse_u32(minor).ok_or_else(bad)?,
        ))
    }

    fn required<'t>(&self, tok: Option<&'t str>, field: &str) -> Result<&'t str> {
        tok.ok_or_else(|| self.err(format_args!("missing {field}")))
    }
}

/// Digits only: `str::parse` would also accept a leading `+`.
fn parse_u64(tok: &str) -> Option<u64> {
    if tok.is_empty() || !tok.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    tok.parse().ok()
}

fn parse_u32(tok: &str) -> Option<u32> {
    parse_u64(tok).and_then(|v| u32::try_from(v).ok())
}

/// Parse a thin-pool status parameter string, e.g.
/// `0 10/4096 0/163840 - rw discard_passdown queue_if_no_space - 1024`.
///
/// The fields after the mode were added over several kernel releases; any
/// missing ones take their defaults (discard passdown, queue if no space,
/// no check needed, no low-water mark). Fields added by future kernels after
/// the low-water mark are ignored.
pub fn parse_pool_status(params: &str) -> Result<PoolStatusLine> {
    let ctx = Ctx {
        what: "thin-pool status",
        params,
    };
    let mut toks = params.split_ascii_whitespace();
    let first = ctx.required(toks.next(), "transaction id")?;
    match first {
        "Fail" | "Error" => {
            if toks.next().is_some() {
                return Err(ctx.err(format_args!("unexpected fields after '{first}'")));
            }
            return Ok(if first == "Fail" {
                PoolStatusLine::Fail
            } else {
                PoolStatusLine::Error
            });
        }
        _ => {}
    }
    let transaction_id = ctx.u64("transaction id", first)?;
    let (used_meta_blocks, total_meta_blocks) = ctx.ratio(
        "metadata blocks",
        ctx.required(toks.next(), "metadata blocks")?,
    )?;
    let (used_data_blocks, total_data_blocks) =
        ctx.ratio("data blocks", ctx.required(toks.next(), "data blocks")?)?;
    let held_metadata_root = match ctx.required(toks.next(), "held metadata root")? {
        "-" => None,
        tok => Some(ctx.u64("held metadata root", tok)?),
    };
    let mode = match ctx.required(toks.next(), "pool mode")? {
        "rw" => PoolMode::ReadWrite,
        "ro" => PoolMode::ReadOnly,
        "out_of_data_space" => PoolMode::OutOfDataSpace,
        tok => return Err(ctx.err(format_args!("unknown pool mode '{}'", echo(tok)))),
    };
    let discard_passdown = match toks.next() {
        None | Some("discard_passdown") => true,
        Some("no_discard_passdown") | Some("ignore_discard") => false,
        Some(tok) => return Err(ctx.err(format_args!("unknown discard mode '{}'", echo(tok)))),
    };
    let error_if_no_space = match toks.next() {
        None | Some("queue_if_no_space") => false,
        Some("error_if_no_space") => true,
        Some(tok) => return Err(ctx.err(format_args!("unknown no-space policy '{}'", echo(tok)))),
    };
    let needs_check = match toks.next() {
        None | Some("-") => false,
        Some("needs_check") => true,
        Some(tok) => return Err(ctx.err(format_args!("unknown needs_check field '{}'", echo(tok)))),
    };
    let meta_low_water = match toks.next() {
        None => None,
        Some(tok) => Some(ctx.u64("metadata low watermark", tok)?),
    };
    Ok(PoolStatusLine::Active(PoolStatus {
        transaction_id,
        used_meta_blocks,
        total_meta_blocks,
        used_data_blocks,
        total_data_blocks,
        held_metadata_root,
        mode,
        discard_passdown,
        error_if_no_space,
        needs_check,
        meta_low_water,
    }))
}

/// Parse a thin status parameter string: `<mapped sectors> <highest mapped
/// sector>` where the latter is `-` when nothing is mapped, or `Fail`.
pub fn parse_thin_status(params: &str) -> Result<ThinStatus> {
    let ctx = Ctx {
        what: "thin status",
        params,
    };
    let toks: Vec<&str> = params.split_ascii_whitespace().collect();
    match toks.as_slice() {
        ["Fail"] => Ok(ThinStatus::Fail),
        ["Error"] | ["-"] => Ok(ThinStatus::Error),
        [mapped, highest] => {
            let mapped_sectors = ctx.u64("mapped sectors", mapped)?;
            let highest_mapped_sector = match *highest {
                "-" => None,
                tok => Some(ctx.u64("highest mapped sector", tok)?),
            };
            Ok(ThinStatus::Active {
                mapped_sectors,
                highest_mapped_sector,
            })
        }
        [] => Err(ctx.err("empty")),
        _ => Err(ctx.err(format_args!("expected 2 fields, found {}", toks.len()))),
    }
}

/// Parse a thin-pool table parameter string, e.g.
/// `253:0 253:1 128 32768 1 skip_block_zeroing`.
pub fn parse_pool_table(params: &str) -> Result<PoolTable> {
    let ctx = Ctx {
        what: "thin-pool table",
        params,
    };
    let mut toks = params.split_ascii_whitespace();
    let meta_dev = ctx.dev(
        "metadata device",
        ctx.required(toks.next(), "metadata device")?,
    )?;
    let data_dev = ctx.dev("data device", ctx.required(toks.next(), "data device")?)?;
    let block_sectors = ctx.u64("block size", ctx.required(toks.next(), "block size")?)?;
    let low_water_blocks = ctx.u64(
        "low water mark",
        ctx.required(toks.next(), "low water mark")?,
    )?;
    let mut features = Vec::new();
    if let Some(count_tok) = toks.next() {
        let count = ctx.u64("feature count", count_tok)?;
        for tok in toks.by_ref() {
            features.push(tok.to_string());
        }
        if features.len() as u64 != count {
            return Err(ctx.err(format_args!(
                "feature count is {count} but {} features follow",
                features.len()
            )));
        }
    }
    Ok(PoolTable {
        meta_dev,
        data_dev,
        block_sectors,
        low_water_blocks,
        features,
    })
}

/// Parse a thin table parameter string, e.g. `253:2 7`.
pub fn parse_thin_table(params: &str) -> Result<ThinTable> {
    let ctx = Ctx {
        what: "thin table",
        params,
    };
    let toks: Vec<&str> = params.split_ascii_whitespace().collect();
    let (pool, id, origin) = match toks.as_slice() {
        [pool, id] => (*pool, *id, None),
        [pool, id, origin] => (*pool, *id, Some(*origin)),
        _ => return Err(ctx.err(format_args!("expected 2 or 3 fields, found {}", toks.len()))),
    };
    Ok(ThinTable {
        pool_dev: ctx.dev("pool device", pool)?,
        device_id: ctx.u32("device id", id)?,
        external_origin: match origin {
            Some(tok) => Some(ctx.dev("external origin", tok)?),
            None => None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(params: &str) -> PoolStatus {
        match parse_pool_status(params) {
            Ok(PoolStatusLine::Active(s)) => s,
            other => panic!("{params:?}: {other:?}"),
        }
    }

    fn invalid<T: fmt::Debug>(r: Result<T>) -> String {
        match r {
            Err(Error::Invalid(msg)) => msg,
            other => panic!("expected Error::Invalid, got {other:?}"),
        }
    }

    #[test]
    fn pool_status_full_line() {
        let s = active("0 10/4096 0/163840 - rw discard_passdown queue_if_no_space - 1024");
        assert_eq!(
            s,
            PoolStatus {
                transaction_id: 0,
                used_meta_blocks: 10,
                total_meta_blocks: 4096,
                used_data_blocks: 0,
                total_data_blocks: 163840,
                held_metadata_root: None,
                mode: PoolMode::ReadWrite,
                discard_passdown: true,
                error_if_no_space: false,
                needs_check: false,
                meta_low_water: Some(1024),
            }
        );
    }

    #[test]
    fn pool_status_variants() {
        // As emitted by the kernel, with its trailing space.
        let s = active(
            "17 291/16384 81920/163840 1234 out_of_data_space no_discard_passdown \
             error_if_no_space needs_check 4096 ",
        );
        assert_eq!(s.transaction_id, 17);
        assert_eq!(s.held_metadata_root, Some(1234));
        assert_eq!(s.mode, PoolMode::OutOfDataSpace);
        assert!(!s.discard_passdown);
        assert!(s.error_if_no_space);
        assert!(s.needs_check);
        assert_eq!(s.meta_low_water, Some(4096));

        let s = active("3 1/2 3/4 - ro ignore_discard queue_if_no_space - 10");
        assert_eq!(s.mode, PoolMode::ReadOnly);
        assert!(!s.discard_passdown);

        // Extra fields from a future kernel are ignored.
        let s = active("3 1/2 3/4 - rw discard_passdown queue_if_no_space - 10 new_field 7");
        assert_eq!(s.meta_low_water, Some(10));
    }

    #[test]
    fn pool_status_short_lines_take_defaults() {
        let base = "5 1/2 3/4 - rw";
        let s = active(base);
        assert!(s.discard_passdown);
        assert!(!s.error_if_no_space);
        assert!(!s.needs_check);
        assert_eq!(s.meta_low_water, None);

        let s = active("5 1/2 3/4 - ro no_discard_passdown");
        assert!(!s.discard_passdown);
        assert!(!s.error_if_no_space);

        let s = active("5 1/2 3/4 - rw discard_passdown error_if_no_space");
        assert!(s.error_if_no_space);
        assert!(!s.needs_check);

        let s = active("5 1/2 3/4 - rw discard_passdown error_if_no_space needs_check");
        assert!(s.needs_check);
        assert_eq!(s.meta_low_water, None);
    }

    #[test]
    fn pool_status_fail_and_error() {
        assert_eq!(parse_pool_status("Fail").unwrap(), PoolStatusLine::Fail);
        assert_eq!(parse_pool_status(" Fail \n").unwrap(), PoolStatusLine::Fail);
        assert_eq!(parse_pool_status("Error").unwrap(), PoolStatusLine::Error);
        assert!(invalid(parse_pool_status("Fail 1")).contains("unexpected"));
        assert!(parse_pool_status("fail").is_err());
    }

    #[test]
    fn pool_status_huge_numbers() {
        let max = u64::MAX;
        let s = active(&format!("{max} {max}/{max} {max}/{max} {max} rw"));
        assert_eq!(s.transaction_id, max);
        assert_eq!(s.held_metadata_root, Some(max));
        let msg = invalid(parse_pool_status("18446744073709551616 1/2 3/4 - rw"));
        assert!(msg.contains("transaction id"), "{msg}");
    }

    #[test]
    fn pool_status_garbage() {
        for params in [
            "",
            "   ",
            "0",
            "0 10/4096",
            "0 10/4096 0/163840",
            "0 10/4096 0/163840 -",
            "-1 10/4096 0/163840 - rw",
            "+1 10/4096 0/163840 - rw",
            "0 -10/4096 0/163840 - rw",
            "0 10-4096 0/163840 - rw",
            "0 10/4096/1 0/163840 - rw",
            "0 /4096 0/163840 - rw",
            "0 10/ 0/163840 - rw",
            "0 10/4096 0/163840 x rw",
            "0 10/4096 0/163840 - RW",
            "0 10/4096 0/163840 - rw maybe_discard",
            "0 10/4096 0/163840 - rw discard_passdown panic_if_no_space",
            "0 10/4096 0/163840 - rw discard_passdown queue_if_no_space yes",
            "0 10/4096 0/163840 - rw discard_passdown queue_if_no_space - -5",
            "0 10/4096 0/163840 - rw discard_passdown queue_if_no_space - 1.5",
            "0x10 1/2 3/4 - rw",
            "١ 1/2 3/4 - rw",
            "0 1/2 3/4 - r\u{0}w",
        ] {
            let msg = invalid(parse_pool_status(params));
            assert!(msg.starts_with("unparseable thin-pool status '"), "{msg}");
            assert!(!msg.contains('\n') && !msg.contains('\0'), "{msg:?}");
        }
    }

    #[test]
    fn pool_mode_strings() {
        for (mode, s) in [
            (PoolMode::ReadWrite, "rw"),
            (PoolMode::ReadOnly, "ro"),
            (PoolMode::OutOfDataSpace, "out_of_data_space"),
            (PoolMode::Fail, "fail"),
        ] {
            assert_eq!(mode.as_str(), s);
            assert_eq!(mode.to_string(), s);
            assert_eq!(serde_json::to_string(&mode).unwrap(), format!("\"{s}\""));
        }
        let s = active("0 10/4096 0/163840 - rw discard_passdown queue_if_no_space - 1024");
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["mode"], "rw");
        assert_eq!(v["held_metadata_root"], serde_json::Value::Null);
        assert_eq!(v["meta_low_water"], 1024);
    }

    #[test]
    fn thin_status() {
        assert_eq!(
            parse_thin_status("0 -").unwrap(),
            ThinStatus::Active {
                mapped_sectors: 0,
                highest_mapped_sector: None
            }
        );
        assert_eq!(
            parse_thin_status("2048 131071\n").unwrap(),
            ThinStatus::Active {
                mapped_sectors: 2048,
                highest_mapped_sector: Some(131071)
            }
        );
        assert_eq!(parse_thin_status("Fail").unwrap(), ThinStatus::Fail);
        assert_eq!(parse_thin_status("Error").unwrap(), ThinStatus::Error);
        assert_eq!(parse_thin_status("-").unwrap(), ThinStatus::Error);
        let max = u64::MAX;
        assert_eq!(
            parse_thin_status(&format!("{max} {max}")).unwrap(),
            ThinStatus::Active {
                mapped_sectors: max,
                highest_mapped_sector: Some(max)
            }
        );
        for params in [
            "",
            "0",
            "- -",
            "-1 5",
            "1 -5",
            "1 2 3",
            "Fail 1",
            "1 18446744073709551616",
            "a b",
            "1 +2",
            "1\u{0}2 3",
        ] {
            let msg = invalid(parse_thin_status(params));
            assert!(msg.starts_with("unparseable thin status '"), "{msg}");
        }
    }

    #[test]
    fn pool_table_round_trip() {
        let t = parse_pool_table("253:0 253:1 128 32768").unwrap();
        assert_eq!(
            t,
            PoolTable {
                meta_dev: (253, 0),
                data_dev: (253, 1),
                block_sectors: 128,
                low_water_blocks: 32768,
                features: vec![],
            }
        );
        assert_eq!(t.to_params(), "253:0 253:1 128 32768");

        // The kernel emits the feature count even when it is 0.
        let t = parse_pool_table("7:0 7:1 1024 0 0 ").unwrap();
        assert!(t.features.is_empty());
        assert_eq!(t.to_params(), "7:0 7:1 1024 0");

        let line = "259:3 259:4 2097152 10 2 skip_block_zeroing no_discard_passdown";
        let t = parse_pool_table(line).unwrap();
        assert_eq!(t.features, ["skip_block_zeroing", "no_discard_passdown"]);
        assert!(t.has_feature("skip_block_zeroing"));
        assert!(!t.has_feature("read_only"));
        assert_eq!(t.to_params(), line);
        assert_eq!(parse_pool_table(&t.to_params()).unwrap(), t);

        let t = parse_pool_table("4294967295:4294967295 0:0 18446744073709551615 0").unwrap();
        assert_eq!(t.meta_dev, (u32::MAX, u32::MAX));
        assert_eq!(t.block_sectors, u64::MAX);
    }

    #[test]
    fn pool_table_garbage() {
        for params in [
            "",
            "253:0",
            "253:0 253:1",
            "253:0 253:1 128",
            "/dev/loop0 253:1 128 0",
            "253 253:1 128 0",
            "253:0:1 253:1 128 0",
            "253:-1 253:1 128 0",
            ":1 253:1 128 0",
            "4294967296:0 253:1 128 0",
            "253:0 253:1 -128 0",
            "253:0 253:1 128 0 1",
            "253:0 253:1 128 0 2 skip_block_zeroing",
            "253:0 253:1 128 0 0 skip_block_zeroing",
            "253:0 253:1 128 0 x",
            "253:0 253:1 128 0 18446744073709551616 a",
        ] {
            let msg = invalid(parse_pool_table(params));
            assert!(msg.starts_with("unparseable thin-pool table '"), "{msg}");
        }
    }

    #[test]
    fn thin_table() {
        let t = parse_thin_table("253:2 7").unwrap();
        assert_eq!(
            t,
            ThinTable {
                pool_dev: (253, 2),
                device_id: 7,
                external_origin: None
            }
        );
        assert_eq!(t.to_params(), "253:2 7");
        let t = parse_thin_table("253:2 16777215 8:16\n").unwrap();
        assert_eq!(t.device_id, MAX_THIN_DEV_ID);
        assert_eq!(t.external_origin, Some((8, 16)));
        assert_eq!(t.to_params(), "253:2 16777215 8:16");
        for params in [
            "",
            "253:2",
            "253:2 7 8:16 9",
            "253:2 -7",
            "253:2 4294967296",
            "253 7",
            "253:2 7 origin",
            "7 253:2",
        ] {
            let msg = invalid(parse_thin_table(params));
            assert!(msg.starts_with("unparseable thin table '"), "{msg}");
        }
    }

    #[test]
    fn error_messages_are_bounded_one_liners() {
        let long = format!("{}\n{}", "9".repeat(5000), "x".repeat(5000));
        for msg in [
            invalid(parse_pool_status(&long)),
            invalid(parse_thin_status(&long)),
            invalid(parse_pool_table(&long)),
            invalid(parse_thin_table(&long)),
        ] {
            assert!(!msg.contains('\n'), "{msg}");
            assert!(msg.len() < 1000, "{}", msg.len());
        }
    }

    /// A cheap stand-in for fuzzing: mutations of real lines and arbitrary
    /// byte soup must give `Ok` or `Err`, never a panic.
    #[test]
    fn never_panics() {
        let seeds = [
            "0 10/4096 0/163840 - rw discard_passdown queue_if_no_space - 1024",
            "253:0 253:1 128 32768 2 skip_block_zeroing read_only",
            "2048 131071",
            "253:2 7 8:16",
            "Fail",
        ];
        let alphabet: Vec<char> = " \t\n0123456789/:-+.aFrwé\u{0}".chars().collect();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..5000 {
            let seed = seeds[(next() % seeds.len() as u64) as usize];
            let mut chars: Vec<char> = seed.chars().collect();
            for _ in 0..(next() % 6) {
                let c = alphabet[(next() % alphabet.len() as u64) as usize];
                let pos = (next() % (chars.len() as u64 + 1)) as usize;
                match next() % 3 {
                    0 => chars.insert(pos, c),
                    1 if pos < chars.len() => {
                        chars.remove(pos);
                    }
                    _ if pos < chars.len() => chars[pos] = c,
                    _ => {}
                }
            }
            let s: String = chars.into_iter().collect();
            let _ = parse_pool_status(&s);
            let _ = parse_thin_status(&s);
            let _ = parse_pool_table(&s);
            let _ = parse_thin_table(&s);
        }
    }
}
