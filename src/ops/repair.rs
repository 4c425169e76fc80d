//! Repairs of broken state.
//!
//! - `dmctl pool repair POOL`: rebuild damaged kernel metadata with
//!   `thin_repair` (as LVM's `lvconvert --repair`): into a new file of the
//!   same size, keep the damaged copy, swap the new one in, `thin_check` it.
//! - [`rebuild_records`], for `dmctl check --repair`: set aside volume JSON
//!   files that cannot be read and rebuild a record for each from the
//!   kernel's metadata when its thin id can be told.

use super::Ctx;
use crate::error::{Error, IoContext, Result};
use crate::kernel::loopdev::{self, Loop};
use crate::kernel::mount;
use crate::names;
use crate::store::model::{now, Backing, Filesystem, PoolRecord, VolumeRecord};
use crate::thinmeta::ThinDump;
use crate::tools::Tool;
use crate::units::{format_size, SECTOR};
use serde::Serialize;
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize)]
pub struct PoolRepairReport {
    pub pool: String,
    /// The metadata now in use (repaired).
    pub metadata: PathBuf,
    /// Where the damaged metadata was kept.
    pub damaged_copy: PathBuf,
    pub notes: Vec<String>,
}

/// Suffix of the file `thin_repair` writes, next to the metadata file.
const REPAIRED_SUFFIX: &str = "repaired";

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}

/// A loop device attached for the repair, detached on every path. The
/// thin tools open their input and output with O_DIRECT, which a state
/// root on tmpfs does not allow for files: they get loop devices.
struct TempLoop(Option<Loop>);

impl TempLoop {
    fn attach(file: &Path, read_only: bool) -> Result<TempLoop> {
        loopdev::attach(file, read_only, false).map(|l| TempLoop(Some(l)))
    }

    fn path(&self) -> &Path {
        self.0
            .as_ref()
            .map(|l| l.path.as_path())
            .unwrap_or(Path::new(""))
    }

    fn detach(mut self) -> Result<()> {
        match self.0.take() {
            Some(l) => loopdev::detach(&l.path),
            None => Ok(()),
        }
    }
}

impl Drop for TempLoop {
    fn drop(&mut self) {
        if let Some(l) = self.0.take() {
            let _ = loopdev::detach(&l.path);
        }
    }
}

fn thin_check_dev(dev: &Path) -> Result<()> {
    crate::tools::thin_check_quiet(dev)
}

/// `thin_check` of a metadata file, through a read-only loop device.
fn thin_check_file(meta: &Path) -> Result<()> {
    let l = TempLoop::attach(meta, true)?;
    let r = thin_check_dev(l.path());
    l.detach()?;
    r
}

/// `dmctl pool repair POOL [--spare-dev DEV]`: the pool must be inactive.
pub fn repair_pool(ctx: &Ctx, pool: &str, spare_dev: Option<&Path>) -> Result<PoolRepairReport> {
    let _lock = ctx.store.lock_pool(pool)?;
    let rec = ctx.ready_pool(pool)?;
    if ctx.pool_device(&rec)?.is_some() {
        return Err(Error::Busy(format!(
            "pool '{pool}' is active; deactivate it first (`dmctl pool deactivate {pool}`)"
        )));
    }
    let meta = metadata_file(&rec, spare_dev)?;
    let mut notes = vec![];
    // A failed `pool activate` may have left the loop devices attached.
    for b in [&rec.meta, &rec.data] {
        if let Backing::File { path } = b {
            if path.exists() && crate::kernel::loopdev::detach_backing_file(path)? {
                notes.push(format!("detached the loop device of {}", path.display()));
            }
        }
    }
    if !meta.exists() {
        return Err(Error::NotFound(format!(
            "pool '{pool}': metadata file {} is missing",
            meta.display()
        )));
    }
    if thin_check_file(&meta).is_ok() {
        notes.push(format!(
            "{} passes thin_check; repairing it anyway",
            meta.display()
        ));
    }
    let repaired = with_suffix(&meta, REPAIRED_SUFFIX);
    let rebuilt = rebuild_metadata(&rec, &meta, &repaired, &mut notes);
    if let Err(e) = rebuilt {
        let _ = std::fs::remove_file(&repaired);
        return Err(e);
    }
    let damaged = swap_in(&meta, &repaired)?;
    thin_check_file(&meta).map_err(|e| {
        Error::PoolState(format!(
            "pool '{pool}': repaired metadata {} fails thin_check after the swap: {e}",
            meta.display()
        ))
    })?;
    notes.push(format!(
        "rebuilt {} with thin_repair; the damaged copy is {}",
        meta.display(),
        damaged.display()
    ));
    Ok(PoolRepairReport {
        pool: pool.to_string(),
        metadata: meta,
        damaged_copy: damaged,
        notes,
    })
}

/// The metadata file `repair` rebuilds: file-backed pools only, for now.
fn metadata_file(rec: &PoolRecord, spare_dev: Option<&Path>) -> Result<PathBuf> {
    let pool = &rec.name;
    match (&rec.meta, spare_dev) {
        (Backing::File { path }, None) => Ok(path.clone()),
        (Backing::File { .. }, Some(_)) => Err(Error::Invalid(format!(
            "pool '{pool}' keeps its metadata in a file: --spare-dev does not apply"
        ))),
        (Backing::Device { path }, None) => Err(Error::Invalid(format!(
            "pool '{pool}' keeps its metadata on {}: repairing it needs a spare \
             device of at least {} (--spare-dev DEV)",
            path.display(),
            format_size(rec.meta_size)
        ))),
        (Backing::Device { .. }, Some(_)) => Err(Error::Invalid(format!(
            "pool '{pool}': repairing metadata on a block device is not supported yet"
        ))),
    }
}

/// `thin_repair` of `meta` into a new file `repaired` of its size, checked
/// with `thin_check` and synced. A superblock thin_repair cannot read is
/// rebuilt from the fields the pool record keeps.
fn rebuild_metadata(
    rec: &PoolRecord,
    meta: &Path,
    repaired: &Path,
    notes: &mut Vec<String>,
) -> Result<()> {
    let pool = &rec.name;
    let len = std::fs::metadata(meta).at(meta)?.len();
    let _ = std::fs::remove_file(repaired);
    let f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(repaired)
        .at(repaired)?;
    f.set_len(len).at(repaired)?;
    drop(f);
    let input = TempLoop::attach(meta, true)?;
    let output = TempLoop::attach(repaired, false)?;
    let out = crate::tools::thin_repair(input.path(), output.path(), None)?;
    if !out.status.success() {
        // A damaged superblock: thin_repair asks for what it held, which
        // the pool record knows.
        let first = Tool::ThinRepair.failed(&out);
        let fields = crate::tools::Superblock {
            transaction_id: rec.transaction_id,
            data_block_sectors: rec.block_size / SECTOR,
            data_blocks: rec.data_size / rec.block_size,
        };
        let out2 = crate::tools::thin_repair(input.path(), output.path(), Some(&fields))?;
        if !out2.status.success() {
            return Err(Error::PoolState(format!(
                "pool '{pool}': thin_repair cannot rebuild {} ({first}; with the \
                 recorded superblock fields: {}); the metadata is left as it was",
                meta.display(),
                Tool::ThinRepair.failed(&out2)
            )));
        }
        notes.push(format!(
            "the superblock was unreadable: rebuilt with the recorded transaction id {}, \
             block size {} and {} data blocks",
            rec.transaction_id,
            format_size(rec.block_size),
            rec.data_size / rec.block_size
        ));
    }
    thin_check_dev(output.path()).map_err(|e| {
        Error::PoolState(format!(
            "pool '{pool}': the metadata thin_repair wrote fails thin_check ({e}); \
             the metadata is left as it was"
        ))
    })?;
    output.detach()?;
    input.detach()?;
    std::fs::File::open(repaired)
        .and_then(|f| f.sync_all())
        .at(repaired)
}

/// Swap: the damaged copy keeps a second name first, then the repaired
/// file replaces the metadata in one rename. A crash leaves either the
/// damaged or the repaired metadata in place, never none. Returns the
/// damaged copy's name.
fn swap_in(meta: &Path, repaired: &Path) -> Result<PathBuf> {
    let dir = meta
        .parent()
        .ok_or_else(|| Error::Invalid(format!("{}: no directory", meta.display())))?;
    let damaged = with_suffix(meta, &format!("damaged-{}", now()));
    std::fs::hard_link(meta, &damaged).at(&damaged)?;
    crate::fsutil::fsync_dir(dir)?;
    std::fs::rename(repaired, meta).at(meta)?;
    crate::fsutil::fsync_dir(dir)?;
    Ok(damaged)
}

/// A volume record that could not be read, and what it held.
struct Candidate {
    name: String,
    /// Where its file is now (set aside).
    file: PathBuf,
    raw: String,
}

/// What [`rebuild_records`] did and found.
#[derive(Debug, Default)]
pub struct Rebuilt {
    pub notes: Vec<String>,
    /// Orphan thin ids that got a record.
    pub claimed: BTreeSet<u32>,
    /// Records set aside that no thin id could be told for (file paths):
    /// while any is left, orphan ids are kept, never deleted.
    pub unpaired: Vec<PathBuf>,
}

/// The number after `"key":` in a damaged JSON text, if it is complete
/// (followed by a delimiter, not cut off by a truncation).
fn salvage_u64(raw: &str, key: &str) -> Option<u64> {
    let pat = format!("\"{key}\"");
    let at = raw.find(&pat)? + pat.len();
    let rest = raw[at..].trim_start().strip_prefix(':')?.trim_start();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let after = rest[digits.len()..].trim_start().chars().next()?;
    (!digits.is_empty() && matches!(after, ',' | '}')).then(|| digits.parse().ok())?
}

fn salvage_str(raw: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\"");
    let at = raw.find(&pat)? + pat.len();
    let rest = raw[at..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    let end = rest.find('"')?;
    Some(rest[..end].to_string())
}

/// The end of the highest mapped block of thin id `id`, in pool blocks,
/// from `thin_dump --dev-id` of a metadata snapshot of the live pool.
fn mapped_extent(ctx: &Ctx, pool: &PoolRecord, id: u32) -> Result<u64> {
    Ok(crate::thinmeta::highest_mapped_block(
        &super::metadata::dump_device(ctx, pool, id)?,
    ))
}

/// The filesystem at the start of a device and its size in bytes, from
/// its superblock (ext4 or XFS).
pub fn probe_fs(head: &[u8]) -> Option<(Filesystem, u64)> {
    let le32 = |o: usize| -> Option<u64> {
        Some(u64::from(u32::from_le_bytes(
            head.get(o..o + 4)?.try_into().ok()?,
        )))
    };
    if head.get(0..4) == Some(b"XFSB") {
        let bs = u64::from(u32::from_be_bytes(head.get(4..8)?.try_into().ok()?));
        let blocks = u64::from_be_bytes(head.get(8..16)?.try_into().ok()?);
        return Some((Filesystem::Xfs, blocks.checked_mul(bs)?));
    }
    let sb = 1024;
    if head.get(sb + 56..sb + 58) == Some(&[0x53, 0xEF]) {
        let bs = 1024u64.checked_shl(le32(sb + 24)? as u32)?;
        let mut blocks = le32(sb + 4)?;
        if le32(sb + 96)? & 0x80 != 0 {
            blocks |= le32(sb + 0x150)? << 32;
        }
        return Some((Filesystem::Ext4, blocks.checked_mul(bs)?));
    }
    None
}

fn read_head(dev: &Path) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    let mut f = std::fs::File::open(dev).at(dev)?;
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]).at(dev)? {
            0 => break,
            n => got += n,
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// Unreadable volume records, set aside now, and those an earlier run set
/// aside whose volume still has no record.
fn candidates(ctx: &Ctx, pool: &PoolRecord, notes: &mut Vec<String>) -> Result<Vec<Candidate>> {
    let devices = ctx.store.devices_dir_path(&pool.name)?;
    let mut cands = vec![];
    for name in ctx.store.volume_names(&pool.name)? {
        if ctx.store.volume(&pool.name, &name).is_ok() {
            continue;
        }
        let file = ctx.store.volume_file(&pool.name, &name)?;
        let raw = String::from_utf8_lossy(&std::fs::read(&file).at(&file)?).into_owned();
        let aside = ctx.store.set_aside_file(&pool.name, &name, now())?;
        std::fs::rename(&file, &aside).at(&file)?;
        crate::fsutil::fsync_dir(&devices)?;
        notes.push(format!(
            "moved the unreadable {} aside to {}",
            file.display(),
            aside.display()
        ));
        cands.push(Candidate {
            name,
            file: aside,
            raw,
        });
    }
    // Earlier runs' files whose volume still has no record.
    for (name, file) in ctx.store.set_aside_records(&pool.name)? {
        if cands.iter().any(|c| c.file == file || c.name == name)
            || ctx
                .store
                .load_volume(&pool.name, &name)
                .ok()
                .flatten()
                .is_some()
        {
            continue;
        }
        let raw = String::from_utf8_lossy(&std::fs::read(&file).at(&file)?).into_owned();
        cands.push(Candidate { name, file, raw });
    }
    Ok(cands)
}

/// For `dmctl check --repair`: move every unreadable volume file aside
/// (`NAME.json.corrupt-TIME`) and rebuild a record for each one whose thin
/// id can be told among `orphans` (thin ids no readable record claims):
/// from its active dm device (id and size from the table), from the id
/// left in the damaged text, or as the only orphan left for the only
/// record left. Files set aside earlier whose volume has no record again
/// are tried too.
pub fn rebuild_records(
    ctx: &Ctx,
    pool: &mut PoolRecord,
    dump: &ThinDump,
    orphans: &[u32],
) -> Result<Rebuilt> {
    let mut out = Rebuilt::default();
    let cands = candidates(ctx, pool, &mut out.notes)?;
    if cands.is_empty() {
        return Ok(out);
    }
    let mut free: BTreeSet<u32> = orphans.iter().copied().collect();
    // (candidate index, thin id, size from an active table)
    let mut pairs: Vec<(usize, u32, Option<u64>)> = vec![];
    // 1. An active dm device of the volume's name: its table has the id.
    for (i, c) in cands.iter().enumerate() {
        let dm_name = names::thin_dm_name(&pool.name, &c.name);
        if ctx.dm()?.owned(&dm_name)?.is_none() {
            continue;
        }
        let Some((id, len)) = crate::kernel::thin::thin_id_of(ctx.dm()?, &dm_name)? else {
            continue;
        };
        if free.remove(&id) {
            pairs.push((i, id, Some(len)));
        }
    }
    // 2. The id left in the damaged text.
    for (i, c) in cands.iter().enumerate() {
        if pairs.iter().any(|p| p.0 == i) {
            continue;
        }
        if let Some(id) = salvage_u64(&c.raw, "device_id").and_then(|id| u32::try_from(id).ok()) {
            if free.remove(&id) {
                pairs.push((i, id, None));
            }
        }
    }
    // 3. One record and one id left: they belong together.
    let left: Vec<usize> = (0..cands.len())
        .filter(|i| !pairs.iter().any(|p| p.0 == *i))
        .collect();
    if left.len() == 1 && free.len() == 1 {
        let id = *free.iter().next().unwrap_or(&0);
        free.remove(&id);
        pairs.push((left[0], id, None));
    }
    for (i, c) in cands.iter().enumerate() {
        let Some(&(_, id, table_size)) = pairs.iter().find(|p| p.0 == i) else {
            out.unpaired.push(c.file.clone());
            out.notes.push(format!(
                "could not tell the thin id of {} (record set aside as {}); \
                 orphan thin ids are kept",
                c.name,
                c.file.display()
            ));
            continue;
        };
        let rec = rebuild_one(ctx, pool, dump, c, id, table_size, &mut out.notes)?;
        ctx.store.save_volume(&pool.name, &rec)?;
        pool.next_device_id = pool.next_device_id.max(super::txn::next_id(id));
        out.claimed.insert(id);
    }
    Ok(out)
}

fn rebuild_one(
    ctx: &Ctx,
    pool: &PoolRecord,
    dump: &ThinDump,
    c: &Candidate,
    id: u32,
    table_size: Option<u64>,
    notes: &mut Vec<String>,
) -> Result<VolumeRecord> {
    let salvaged_size = salvage_u64(&c.raw, "size").filter(|s| *s > 0 && s % SECTOR == 0);
    let extent = mapped_extent(ctx, pool, id)? * pool.block_size;
    let mut how;
    let mut size = match (table_size, salvaged_size) {
        (Some(s), _) => {
            how = "from its active dm table".to_string();
            s
        }
        (None, Some(s)) => {
            how = "from the damaged record".to_string();
            s.max(extent)
        }
        (None, None) => {
            how = format!(
                "unknown: the end of its highest mapped block ({})",
                format_size(extent)
            );
            extent.max(pool.block_size)
        }
    };
    let mut rec = VolumeRecord {
        name: c.name.clone(),
        device_id: id,
        size,
        transaction_id: dump
            .devices
            .iter()
            .find(|d| d.dev_id == id)
            .map(|d| d.transaction)
            .unwrap_or(pool.transaction_id),
        initialized: true,
        parent: None,
        parent_device_id: None,
        parent_transaction_id: None,
        ancestors: vec![],
        fs: match salvage_str(&c.raw, "fs").as_deref() {
            Some("ext4") => Some(Filesystem::Ext4),
            Some("xfs") => Some(Filesystem::Xfs),
            _ => None,
        },
        created: salvage_u64(&c.raw, "created").unwrap_or_else(now),
        active: false,
        read_only: false,
        mountpoint: None,
    };
    if let (Some(p), Some(pid)) = (
        salvage_str(&c.raw, "parent"),
        salvage_u64(&c.raw, "parent_device_id"),
    ) {
        rec.parent = Some(p);
        rec.parent_device_id = u32::try_from(pid).ok();
        rec.parent_transaction_id = salvage_u64(&c.raw, "parent_transaction_id");
    }
    // The filesystem's superblock says what it is and how big: a device
    // smaller than its filesystem would not mount.
    let was_active = ctx.thin_device(pool, &rec)?;
    let info = super::device::activate_device(ctx, pool, &rec, true)?;
    let head = read_head(&super::devnode(&info));
    if was_active.is_none() {
        ctx.dm()?.remove(&ctx.thin_dm_name(pool, &rec), false)?;
    }
    if let Some((fs, fs_size)) = probe_fs(&head?) {
        rec.fs = Some(fs);
        if table_size.is_none() && fs_size.div_ceil(SECTOR) * SECTOR > size {
            size = fs_size.div_ceil(SECTOR) * SECTOR;
            how = format!("from its {} filesystem", fs.as_str());
        }
    }
    rec.size = size;
    if let Some(info) = &was_active {
        rec.active = true;
        rec.read_only = info.read_only;
        rec.mountpoint = mount::mountpoints_of(info.devno)?.into_iter().next();
    }
    notes.push(format!(
        "rebuilt the record of {} for orphan thin id {id}: size {} ({how}), filesystem {}{}",
        c.name,
        format_size(size),
        rec.fs.map(|f| f.as_str()).unwrap_or("unknown"),
        if rec.parent.is_some() {
            ", parent from the damaged record"
        } else {
            ""
        }
    ));
    Ok(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salvage_from_truncated_json() {
        let raw = "{\n  \"name\": \"a\",\n  \"device_id\": 7,\n  \"size\": 671";
        assert_eq!(salvage_u64(raw, "device_id"), Some(7));
        // Cut inside the number: not trusted.
        assert_eq!(salvage_u64(raw, "size"), None);
        assert_eq!(salvage_str(raw, "name").as_deref(), Some("a"));
        assert_eq!(salvage_u64("garbage\u{1}\"device_id", "device_id"), None);
        assert_eq!(salvage_u64("{\"size\": 512}", "size"), Some(512));
    }

    #[test]
    fn probes_ext4_and_xfs() {
        let mut h = vec![0u8; 4096];
        h[1024 + 56] = 0x53;
        h[1024 + 57] = 0xEF;
        h[1024 + 4..1024 + 8].copy_from_slice(&16384u32.to_le_bytes());
        h[1024 + 24..1024 + 28].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(probe_fs(&h), Some((Filesystem::Ext4, 64 << 20)));
        let mut x = vec![0u8; 4096];
        x[0..4].copy_from_slice(b"XFSB");
        x[4..8].copy_from_slice(&4096u32.to_be_bytes());
        x[8..16].copy_from_slice(&4096u64.to_be_bytes());
        assert_eq!(probe_fs(&x), Some((Filesystem::Xfs, 16 << 20)));
        assert_eq!(probe_fs(&[0u8; 4096]), None);
    }
}
