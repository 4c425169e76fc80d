//! Everything the CLI shows on stdout: text tables and lines, or JSON. The
//! library never prints; every write here returns its error, so a full disk
//! or a closed pipe is an error line (or a quiet exit), never a panic.

use super::args::Units;
use anyhow::Result;
use dmctl::doctor;
use dmctl::ops::check::CheckReport;
use dmctl::ops::image::{ImageInfo, ImageRecord, ImportReport, RemoveReport};
use dmctl::ops::pool::PoolReport;
use dmctl::ops::spare::WarmReport;
use dmctl::ops::volume::VolumeReport;
use dmctl::units::format_size;
use serde::Serialize;
use std::io::Write;

/// Write a line to stdout, returning the error instead of panicking.
macro_rules! outln {
    () => { writeln!(std::io::stdout().lock()) };
    ($($arg:tt)*) => { writeln!(std::io::stdout().lock(), $($arg)*) };
}

/// How the CLI prints: JSON or text, and in which units.
#[derive(Clone, Copy, Debug)]
pub struct Printer {
    pub json: bool,
    pub units: Units,
}

impl Printer {
    /// A size in the chosen units.
    pub fn size(&self, bytes: u64) -> String {
        let unit = |mult: u64| {
            if bytes.is_multiple_of(mult) {
                (bytes / mult).to_string()
            } else {
                format!("{:.2}", bytes as f64 / mult as f64)
            }
        };
        match self.units {
            Units::H => format_size(bytes),
            Units::B => bytes.to_string(),
            Units::K => unit(1 << 10),
            Units::M => unit(1 << 20),
            Units::G => unit(1 << 30),
            Units::T => unit(1 << 40),
        }
    }

    /// Print a value: as JSON with --json, else with the text printer.
    pub fn emit<T: Serialize + ?Sized>(
        &self,
        value: &T,
        text: impl FnOnce(&T) -> std::io::Result<()>,
    ) -> Result<()> {
        if self.json {
            self.json(value)
        } else {
            Ok(text(value)?)
        }
    }

    pub fn json<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        outln!("{}", serde_json::to_string_pretty(value)?)?;
        Ok(())
    }

    /// One line of text (nothing with --json).
    pub fn line(&self, text: &str) -> Result<()> {
        if !self.json {
            outln!("{text}")?;
        }
        Ok(())
    }
}

/// Local time of Unix seconds as an ISO date, `2026-12-03 14:02:11`.
pub fn local_time(secs: u64) -> String {
    let Ok(t) = libc::time_t::try_from(secs) else {
        return secs.to_string();
    };
    // SAFETY: localtime_r writes only into `tm`.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return secs.to_string();
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// `N thing` / `N things`.
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn percent(used: u64, total: u64) -> String {
    if total == 0 {
        return "-".into();
    }
    format!("{:.1}%", used as f64 * 100.0 / total as f64)
}

/// A table: columns sized to their widest cell, the last one left ragged.
struct Table {
    rows: Vec<Vec<String>>,
    right: Vec<bool>,
}

impl Table {
    fn new(header: Option<Vec<String>>, right: Vec<bool>) -> Table {
        Table {
            rows: header.into_iter().collect(),
            right,
        }
    }

    fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    fn print(&self) -> std::io::Result<()> {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..cols)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|s| s.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                let last = c + 1 == row.len();
                let pad = widths[c].saturating_sub(cell.chars().count());
                if self.right.get(c).copied().unwrap_or(false) {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    if !last {
                        line.push_str(&" ".repeat(pad));
                    }
                }
                if !last {
                    line.push_str("  ");
                }
            }
            outln!("{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// The fields `ls -o` knows, and whether each is right-aligned.
pub const VOLUME_FIELDS: &[(&str, bool)] = &[
    ("volume", false),
    ("pool", false),
    ("name", false),
    ("id", true),
    ("size", true),
    ("mapped", true),
    ("fs", false),
    ("parent", false),
    ("active", false),
    ("mountpoint", false),
    ("created", false),
    ("dm_name", false),
];

const DEFAULT_VOLUME_FIELDS: &[&str] = &[
    "volume",
    "id",
    "size",
    "mapped",
    "fs",
    "parent",
    "mountpoint",
];

/// Check `-o` fields before anything is done.
pub fn check_volume_fields(fields: &[String]) -> Result<()> {
    for f in fields {
        if !VOLUME_FIELDS.iter().any(|(n, _)| n == f) {
            anyhow::bail!(
                "unknown field '{}' (fields: {})",
                f.escape_debug(),
                VOLUME_FIELDS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(())
}

fn parent_text(v: &VolumeReport) -> String {
    match (&v.parent, &v.parent_removed) {
        (Some(p), _) => p.clone(),
        (None, Some(was)) => format!("({was}: removed)"),
        (None, None) => "-".into(),
    }
}

fn volume_field(p: &Printer, v: &VolumeReport, field: &str) -> String {
    match field {
        "volume" => format!("{}/{}", v.pool, v.name),
        "pool" => v.pool.clone(),
        "name" => v.name.clone(),
        "id" => v.device_id.to_string(),
        "size" => p.size(v.size),
        "mapped" => match v.mapped_bytes {
            Some(b) => p.size(b),
            None => "-".into(),
        },
        "fs" => v.fs.map(|f| f.as_str()).unwrap_or("-").into(),
        "parent" => parent_text(v),
        "active" => if v.active { "yes" } else { "no" }.into(),
        "mountpoint" => v
            .mountpoint
            .as_ref()
            .map(|m| m.display().to_string())
            .unwrap_or_else(|| "-".into()),
        "created" => local_time(v.created),
        "dm_name" => v.dm_name.clone(),
        _ => String::new(),
    }
}

/// `dmctl ls`: a table of the chosen fields.
pub fn volumes(
    p: &Printer,
    vols: &[VolumeReport],
    fields: &[String],
    headings: bool,
) -> Result<()> {
    let fields: Vec<&str> = if fields.is_empty() {
        DEFAULT_VOLUME_FIELDS.to_vec()
    } else {
        fields.iter().map(String::as_str).collect()
    };
    let right = fields
        .iter()
        .map(|f| VOLUME_FIELDS.iter().any(|(n, r)| n == f && *r))
        .collect();
    let header = headings.then(|| fields.iter().map(|f| f.to_uppercase()).collect());
    let mut t = Table::new(header, right);
    for v in vols {
        t.push(fields.iter().map(|f| volume_field(p, v, f)).collect());
    }
    Ok(t.print()?)
}

/// `dmctl ls --tree`: snapshot chains drawn as `tree` and `lsblk` do.
/// Roots are volumes without a parent, or whose parent was removed.
pub fn tree(p: &Printer, vols: &[VolumeReport]) -> Result<()> {
    fn label(p: &Printer, v: &VolumeReport) -> String {
        let mut extra = vec![format!("id {}", v.device_id), p.size(v.size)];
        if v.active {
            extra.push("active".into());
        }
        if let Some(m) = &v.mountpoint {
            extra.push(format!("on {}", m.display()));
        }
        if let Some(was) = &v.parent_removed {
            extra.push(format!("parent {was} removed"));
        }
        format!("{} ({})", v.name, extra.join(", "))
    }
    fn walk(
        p: &Printer,
        vols: &[VolumeReport],
        parent: &VolumeReport,
        prefix: &str,
    ) -> std::io::Result<()> {
        let children: Vec<&VolumeReport> = vols
            .iter()
            .filter(|v| v.pool == parent.pool && v.parent.as_deref() == Some(parent.name.as_str()))
            .collect();
        for (i, c) in children.iter().enumerate() {
            let last = i + 1 == children.len();
            outln!(
                "{prefix}{}{}",
                if last { "└─ " } else { "├─ " },
                label(p, c)
            )?;
            let deeper = format!("{prefix}{}", if last { "   " } else { "│  " });
            walk(p, vols, c, &deeper)?;
        }
        Ok(())
    }
    for v in vols.iter().filter(|v| v.parent.is_none()) {
        outln!("{}/{}", v.pool, label(p, v))?;
        walk(p, vols, v, "")?;
    }
    Ok(())
}

/// `dmctl info`: one field per line, no nulls.
pub fn volume_info(p: &Printer, v: &VolumeReport) -> Result<()> {
    let rows: Vec<(&str, String)> = vec![
        ("volume", format!("{}/{}", v.pool, v.name)),
        ("thin id", v.device_id.to_string()),
        ("size", p.size(v.size)),
        (
            "mapped",
            v.mapped_bytes
                .map(|b| format!("{} ({})", p.size(b), percent(b, v.size)))
                .unwrap_or_else(|| "- (inactive)".into()),
        ),
        (
            "filesystem",
            v.fs.map(|f| f.as_str()).unwrap_or("none").into(),
        ),
        ("parent", parent_text(v)),
        ("active", if v.active { "yes" } else { "no" }.into()),
        ("read-only", if v.read_only { "yes" } else { "no" }.into()),
        (
            "device",
            v.devnode
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_else(|| "-".into()),
        ),
        ("dm name", v.dm_name.clone()),
        (
            "mountpoint",
            v.mountpoint
                .as_ref()
                .map(|m| m.display().to_string())
                .unwrap_or_else(|| "-".into()),
        ),
        ("transaction", v.transaction_id.to_string()),
        ("created", local_time(v.created)),
    ];
    for (k, val) in rows {
        outln!("{k:<12} {val}")?;
    }
    Ok(())
}

pub fn pools(p: &Printer, pools: &[PoolReport]) -> Result<()> {
    let mut t = Table::new(
        Some(
            [
                "POOL", "MODE", "DATA", "USED", "USE%", "META%", "VOLUMES", "TID",
            ]
            .map(String::from)
            .to_vec(),
        ),
        vec![false, false, true, true, true, true, true, true],
    );
    for r in pools {
        t.push(vec![
            r.name.clone(),
            r.mode.map(|m| m.as_str()).unwrap_or("inactive").into(),
            p.size(r.data_size),
            r.data_used.map(|u| p.size(u)).unwrap_or_else(|| "-".into()),
            r.data_used
                .map(|u| percent(u, r.data_size))
                .unwrap_or_else(|| "-".into()),
            r.meta_used
                .map(|u| percent(u, r.meta_size))
                .unwrap_or_else(|| "-".into()),
            r.volumes.to_string(),
            r.transaction_id.to_string(),
        ]);
    }
    Ok(t.print()?)
}

pub fn pool_status(p: &Printer, r: &PoolReport) -> Result<()> {
    let used = |u: Option<u64>, total: u64| match u {
        Some(u) => format!(
            "{} of {} used ({})",
            p.size(u),
            p.size(total),
            percent(u, total)
        ),
        None => format!("{} (inactive)", p.size(total)),
    };
    let yes_no = |b: Option<bool>| match b {
        Some(true) => "yes",
        Some(false) => "no",
        None => "-",
    };
    let rows: Vec<(&str, String)> = vec![
        ("pool", r.name.clone()),
        (
            "state",
            r.mode.map(|m| m.as_str()).unwrap_or("inactive").into(),
        ),
        ("data", used(r.data_used, r.data_size)),
        ("metadata", used(r.meta_used, r.meta_size)),
        ("volumes", r.volumes.to_string()),
        (
            "provisioned",
            format!(
                "{} ({} of data)",
                p.size(r.provisioned),
                percent(r.provisioned, r.data_size)
            ),
        ),
        ("block size", p.size(r.block_size)),
        ("low water", p.size(r.low_water_mark)),
        ("min free", format!("{}%", r.min_free_percent)),
        (
            "overcommit",
            match r.max_overcommit {
                Some(x) => format!("at most {x}x"),
                None => "no limit".into(),
            },
        ),
        ("when full", r.no_space_policy.into()),
        ("needs check", yes_no(r.needs_check).into()),
        ("discards", yes_no(r.discard_passdown).into()),
        ("backing", r.backing.into()),
        ("data on", r.data.display().to_string()),
        ("metadata on", r.meta.display().to_string()),
        ("dm name", r.dm_name.clone()),
        ("transaction", r.transaction_id.to_string()),
        (
            "open txn",
            r.open_transaction
                .map(|t| t.to_string())
                .unwrap_or_else(|| "none".into()),
        ),
    ];
    for (k, val) in rows {
        outln!("{k:<12} {val}")?;
    }
    Ok(())
}

pub fn check(r: &CheckReport) -> std::io::Result<()> {
    for line in &r.repaired {
        outln!("repaired: {line}")?;
    }
    outln!(
        "pool {}: transaction id {} (recorded {}), {}, {} missing, {}, {}{}",
        r.pool,
        r.kernel_transaction_id,
        r.recorded_transaction_id,
        count(r.orphan_ids.len(), "orphan id", "orphan ids"),
        r.missing_ids.len(),
        count(r.corrupt_files.len(), "corrupt file", "corrupt files"),
        count(r.broken_images.len(), "broken image", "broken images"),
        if r.open_transaction.is_some() {
            ", an open transaction"
        } else {
            ""
        }
    )?;
    for f in &r.corrupt_files {
        outln!("corrupt: {f}")?;
    }
    for b in &r.broken_images {
        outln!("broken image: {b}")?;
    }
    for b in &r.broken_snapshots {
        outln!("broken containerd snapshot: {b}")?;
    }
    Ok(())
}

pub fn import(p: &Printer, r: &ImportReport) -> std::io::Result<()> {
    if r.already_present {
        outln!(
            "image {} is already imported ({}); nothing to do",
            r.reference,
            count(r.layers, "layer", "layers")
        )
    } else {
        outln!(
            "imported {}: {}, {} new, {} shared, {} applied; top layer volume {}",
            r.reference,
            count(r.layers, "layer", "layers"),
            r.layers_created,
            r.layers_shared,
            p.size(r.bytes_applied),
            r.top_volume
        )
    }
}

pub fn images(imgs: &[ImageRecord]) -> std::io::Result<()> {
    let mut t = Table::new(
        Some(
            ["IMAGE", "LAYERS", "CONFIG", "CREATED", "TOP LAYER"]
                .map(String::from)
                .to_vec(),
        ),
        vec![false, true, false, false, false],
    );
    for i in imgs {
        t.push(vec![
            i.reference.clone(),
            i.layers.len().to_string(),
            i.config_digest.hex()[..12].to_string(),
            local_time(i.created),
            i.top()
                .map(dmctl::ops::image::layer_volume_name)
                .unwrap_or_default(),
        ]);
    }
    t.print()
}

pub fn image_info(p: &Printer, r: &ImageInfo) -> std::io::Result<()> {
    outln!(
        "image {} (config {}), {}, {} shared, {}",
        r.reference,
        r.config_digest,
        count(r.layers.len(), "layer", "layers"),
        p.size(r.shared_bytes),
        count(r.spares, "warm spare", "warm spares")
    )?;
    for (i, l) in r.layers.iter().enumerate() {
        outln!(
            "  {i}: {} {} {:>8} chain {}{}",
            l.volume,
            l.diff_id,
            p.size(l.size),
            l.chain_id,
            if l.shared_with.is_empty() {
                String::new()
            } else {
                format!(" (shared with {})", l.shared_with.join(", "))
            }
        )?;
    }
    Ok(())
}

pub fn image_removed(r: &RemoveReport) -> std::io::Result<()> {
    outln!(
        "removed image {}: {} removed, {} kept (still used)",
        r.reference,
        count(r.layers_removed.len(), "layer", "layers"),
        r.layers_kept.len()
    )
}

pub fn warmed(p: &Printer, r: &WarmReport) -> std::io::Result<()> {
    outln!(
        "image {}: {} of {} ready ({} made, {} mounted again, {} removed)",
        r.reference,
        count(r.spares.len(), "spare", "spares"),
        p.size(r.size),
        r.made,
        r.remounted,
        r.removed
    )
}

pub fn doctor(checks: &[doctor::Check]) -> std::io::Result<()> {
    for c in checks {
        let verdict = match c.verdict {
            doctor::Verdict::Ok => "ok",
            doctor::Verdict::Warn => "warn",
            doctor::Verdict::Fail => "FAIL",
        };
        outln!("{verdict:>4}  {:<14} {}", c.name, c.detail)?;
    }
    Ok(())
}
