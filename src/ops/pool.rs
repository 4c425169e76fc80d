//! Pool operations: create, activate, deactivate, destroy, extend, status.

use super::{txn, Ctx};
use crate::error::{Error, IoContext, Result};
use crate::kernel::dm::TableLine;
use crate::kernel::status::{PoolMode, PoolStatusLine, PoolTable, META_BLOCK_BYTES};
use crate::kernel::{blockdev, loopdev, mount};
use crate::names::{self, validate_name};
use crate::store::model::{now, Backing, PoolRecord, PoolState};
use crate::units::{format_size, SECTOR};
use serde::Serialize;
use std::path::{Path, PathBuf};

pub const DEFAULT_DATA_SIZE: u64 = 100 << 30;
pub const DEFAULT_BLOCK_SIZE: u64 = 64 << 10;
const MIN_BLOCK_SIZE: u64 = 64 << 10;
const MAX_BLOCK_SIZE: u64 = 1 << 30;
const MIN_META_SIZE: u64 = 2 << 20;
const MAX_META_SIZE: u64 = 16 << 30;
/// Bytes of metadata zeroed to make it fresh (the superblock).
const META_HEADER: usize = 4096;

#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub name: String,
    pub data_size: Option<u64>,
    pub meta_size: Option<u64>,
    pub block_size: Option<u64>,
    pub low_water_mark: Option<u64>,
    pub data_dev: Option<PathBuf>,
    pub meta_dev: Option<PathBuf>,
    pub zeroing: bool,
    pub error_if_no_space: bool,
    /// Refuse new volumes below this much free space, in percent (default 10).
    pub min_free_percent: Option<u8>,
    /// Refuse volumes whose sizes add up to more than this many times the
    /// data size (none: no limit).
    pub max_overcommit: Option<f64>,
}

/// The largest accepted `--min-free` percentage.
pub const MAX_MIN_FREE_PERCENT: u8 = 90;
/// What the kernel uses of a metadata device at most (dm-thin's
/// THIN_METADATA_MAX_SECTORS: 255 * 2^14 * 8 sectors, 15.94 GiB).
const KERNEL_META_LIMIT: u64 = 255 * (1 << 14) * 8 * SECTOR;

fn validate_min_free(pct: u8) -> Result<u8> {
    if pct > MAX_MIN_FREE_PERCENT {
        return Err(Error::Invalid(format!(
            "invalid free space threshold {pct}%: must be 0 to {MAX_MIN_FREE_PERCENT}"
        )));
    }
    Ok(pct)
}

/// Metadata size for a data size: ~48 bytes per data block (the kernel
/// documentation's estimate), doubled for snapshots' extra btree nodes,
/// at least 2 MiB, at most 16 GiB (the kernel never uses more).
pub fn default_meta_size(data_size: u64, block_size: u64) -> u64 {
    let est = 48 * (data_size / block_size) * 2;
    let mib = 1 << 20;
    est.div_ceil(mib)
        .saturating_mul(mib)
        .clamp(MIN_META_SIZE, MAX_META_SIZE)
}

fn validate_request(req: &CreateRequest) -> Result<(u64, u64, u64)> {
    validate_name("pool", &req.name)?;
    if let Some(p) = req.min_free_percent {
        validate_min_free(p)?;
    }
    let block = req.block_size.unwrap_or(DEFAULT_BLOCK_SIZE);
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block) || !block.is_multiple_of(MIN_BLOCK_SIZE)
    {
        return Err(Error::Invalid(format!(
            "invalid block size {}: must be a multiple of 64K between 64K and 1G",
            format_size(block)
        )));
    }
    if req.data_dev.is_some() != req.meta_dev.is_some() {
        return Err(Error::Invalid(
            "--data-dev and --meta-dev go together".into(),
        ));
    }
    if req.data_dev.is_some() && (req.data_size.is_some() || req.meta_size.is_some()) {
        return Err(Error::Invalid(
            "--data-size/--meta-size do not apply to --data-dev/--meta-dev (the devices' sizes are used)"
                .into(),
        ));
    }
    let data = match &req.data_dev {
        Some(dev) => device_size(dev)?,
        None => req.data_size.unwrap_or(DEFAULT_DATA_SIZE),
    };
    if data / block < 16 {
        return Err(Error::Invalid(format!(
            "data size {} is too small: the minimum is {} (16 blocks of {})",
            format_size(data),
            format_size(block * 16),
            format_size(block)
        )));
    }
    let data = data / block * block;
    let meta = match &req.meta_dev {
        Some(dev) => device_size(dev)?.min(MAX_META_SIZE),
        None => req
            .meta_size
            .unwrap_or_else(|| default_meta_size(data, block)),
    };
    if !(MIN_META_SIZE..=MAX_META_SIZE).contains(&meta) {
        return Err(Error::Invalid(format!(
            "metadata size {} is out of range: 2M to 16G",
            format_size(meta)
        )));
    }
    Ok((data, meta / META_BLOCK_BYTES * META_BLOCK_BYTES, block))
}

fn device_size(dev: &Path) -> Result<u64> {
    if !blockdev::is_block_device(dev) {
        return Err(Error::Invalid(format!(
            "{}: not a block device",
            dev.display()
        )));
    }
    blockdev::size_bytes(dev)
}

/// `dmctl pool create`.
pub fn create(ctx: &Ctx, req: &CreateRequest) -> Result<PoolRecord> {
    let (data_size, meta_size, block_size) = validate_request(req)?;
    let _lock = ctx.store.lock_new_pool(&req.name)?;
    if let Ok(old) = ctx.store.load_pool(&req.name) {
        if old.state != PoolState::Creating {
            return Err(Error::Exists(format!("pool '{}' already exists", req.name)));
        }
        undo_create(ctx, &old)?;
    }
    let dm = ctx.dm()?;
    let dm_name = names::pool_dm_name(&req.name);
    if dm.info(&dm_name)?.is_some() {
        return Err(Error::Exists(format!(
            "a dm device named {dm_name} already exists"
        )));
    }
    if let Some(meta_dev) = &req.meta_dev {
        if !blockdev::is_zeroed_start(meta_dev, META_HEADER)? {
            return Err(Error::Invalid(format!(
                "metadata device {} is not empty (it may hold another pool); \
                 zero its first 4 KiB to use it",
                meta_dev.display()
            )));
        }
    }
    let dir = ctx.store.pool_dir(&req.name)?;
    let (data, meta) = match (&req.data_dev, &req.meta_dev) {
        (Some(d), Some(m)) => (
            Backing::Device { path: d.clone() },
            Backing::Device { path: m.clone() },
        ),
        _ => (
            Backing::File {
                path: dir.join("data.img"),
            },
            Backing::File {
                path: dir.join("meta.img"),
            },
        ),
    };
    let blocks = data_size / block_size;
    let mut rec = PoolRecord {
        name: req.name.clone(),
        uuid: names::new_pool_uuid(),
        state: PoolState::Creating,
        data,
        meta,
        data_size,
        meta_size,
        block_size,
        low_water_mark: req
            .low_water_mark
            .unwrap_or(block_size * (blocks / 10).clamp(1, 32768)),
        zeroing: req.zeroing,
        error_if_no_space: req.error_if_no_space,
        transaction_id: 0,
        next_device_id: 0,
        min_free_percent: req.min_free_percent.unwrap_or(10),
        max_overcommit: req.max_overcommit,
        created: now(),
    };
    if rec.low_water_mark >= data_size {
        return Err(Error::Invalid(format!(
            "low water mark {} must be below the data size {}",
            format_size(rec.low_water_mark),
            format_size(data_size)
        )));
    }
    // Intent first: a crash from here on leaves a Creating record that the
    // next command on this pool rolls back.
    ctx.store.save_pool(&rec)?;
    crate::crashpoint::hit("pool-create:after-record");
    let made = (|| {
        if let Backing::File { path } = &rec.meta {
            make_sparse(path, meta_size)?;
        }
        if let Backing::File { path } = &rec.data {
            make_sparse(path, data_size)?;
        }
        blockdev::zero_start(rec.meta.path(), META_HEADER)?;
        crate::crashpoint::hit("pool-create:after-files");
        load_pool_table(ctx, &rec)?;
        crate::crashpoint::hit("pool-create:after-table");
        rec.state = PoolState::Ready;
        ctx.store.save_pool(&rec)
    })();
    if let Err(e) = made {
        let _ = undo_create(ctx, &rec);
        return Err(e);
    }
    Ok(rec)
}

fn make_sparse(path: &Path, size: u64) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .at(path)?;
    f.set_len(size).at(path)?;
    f.sync_all().at(path)
}

/// Roll back a pool creation: dm device, loops, files, record.
fn undo_create(ctx: &Ctx, rec: &PoolRecord) -> Result<()> {
    if ctx.pool_device(rec)?.is_some() {
        ctx.dm()?.remove(&names::pool_dm_name(&rec.name), false)?;
    }
    detach_loops(rec)?;
    ctx.store.remove_pool(&rec.name)
}

/// Backing devices of the pool: loop devices for files (attached if
/// needed, reused if already attached), the devices themselves otherwise.
fn backing_devices(rec: &PoolRecord) -> Result<(PathBuf, PathBuf)> {
    let dev = |b: &Backing, size: u64| -> Result<PathBuf> {
        match b {
            Backing::File { path } => {
                // An extend that crashed before growing the file is finished here.
                let len = std::fs::metadata(path).at(path)?.len();
                if len < size {
                    make_sparse(path, size)?;
                }
                let l = loopdev::attach_or_reuse(path, false, true)?;
                if blockdev::size_bytes(&l.path)? < size {
                    loopdev::refresh_capacity(&l.path)?;
                }
                Ok(l.path)
            }
            Backing::Device { path } => {
                if !blockdev::is_block_device(path) {
                    return Err(Error::NotFound(format!(
                        "pool '{}': device {} is missing",
                        rec.name,
                        path.display()
                    )));
                }
                Ok(path.clone())
            }
        }
    };
    Ok((
        dev(&rec.meta, rec.meta_size)?,
        dev(&rec.data, rec.data_size)?,
    ))
}

fn detach_loops(rec: &PoolRecord) -> Result<()> {
    for b in [&rec.meta, &rec.data] {
        if let Backing::File { path } = b {
            if path.exists() {
                loopdev::detach_backing_file(path)?;
            }
        }
    }
    Ok(())
}

fn pool_table(rec: &PoolRecord, meta: &Path, data: &Path) -> Result<Vec<TableLine>> {
    let mut features = vec![];
    if !rec.zeroing {
        features.push("skip_block_zeroing".to_string());
    }
    if rec.error_if_no_space {
        features.push("error_if_no_space".to_string());
    }
    let table = PoolTable {
        meta_dev: blockdev::devno(meta)?,
        data_dev: blockdev::devno(data)?,
        block_sectors: rec.block_size / SECTOR,
        low_water_blocks: (rec.low_water_mark / rec.block_size).max(1),
        features,
    };
    Ok(crate::kernel::thin::pool_table(&table, rec.data_size))
}

/// Attach the backing devices and load the pool table (a new dm device).
fn load_pool_table(ctx: &Ctx, rec: &PoolRecord) -> Result<()> {
    let (meta, data) = backing_devices(rec)?;
    let table = pool_table(rec, &meta, &data)?;
    ctx.dm()?.create(
        &names::pool_dm_name(&rec.name),
        &names::pool_dm_uuid(&rec.uuid),
        &table,
        false,
    )?;
    Ok(())
}

/// `dmctl pool activate`: idempotent. After a reboot: re-attach the loop
/// devices, `thin_check` the metadata, load the table, finish or roll back
/// an interrupted transaction, re-activate the volumes that were active.
/// Returns notes on what it repaired.
pub fn activate(ctx: &Ctx, pool: &str) -> Result<Vec<String>> {
    let _lock = ctx.store.lock_pool(pool)?;
    let mut notes = vec![];
    let mut rec = ctx.store.load_pool(pool)?;
    if rec.state == PoolState::Creating {
        undo_create(ctx, &rec)?;
        return Err(Error::NotFound(format!(
            "pool '{pool}' was never completely created; the interrupted creation was rolled back"
        )));
    }
    if ctx.pool_device(&rec)?.is_none() {
        let (meta, _) = backing_devices(&rec)?;
        crate::crashpoint::hit("pool-activate:after-loops");
        // Zeroed metadata is formatted afresh by the kernel: right for a
        // pool that never held anything, the loss of every volume for one
        // whose superblock was wiped.
        let never_used = rec.transaction_id == 0
            && ctx.store.volume_names(pool)?.is_empty()
            && ctx.store.load_txn(pool)?.is_none();
        if let Err(e) = check_metadata(pool, &meta, never_used) {
            // Leave nothing attached: `pool repair` works on the files.
            let _ = detach_loops(&rec);
            return Err(e);
        }
        load_pool_table(ctx, &rec)?;
        crate::crashpoint::hit("pool-activate:after-table");
        notes.push(format!("pool {pool}: activated"));
    }
    notes.extend(txn::recover(ctx, &mut rec)?);
    notes.extend(super::claim::recover(ctx, &rec)?);
    for v in ctx.store.list_volumes(pool)? {
        if v.active && ctx.thin_device(&rec, &v)?.is_none() {
            super::device::activate_device(ctx, &rec, &v, v.read_only)?;
            notes.push(format!("{pool}/{}: re-activated", v.name));
        }
    }
    Ok(notes)
}

/// `thin_check` before activation, as LVM does: a pool whose metadata is
/// damaged is not activated. Zeroed metadata has nothing to check only in a
/// pool that was never used (`never_used`); in any other it is damage.
fn check_metadata(pool: &str, meta: &Path, never_used: bool) -> Result<()> {
    if never_used && blockdev::is_zeroed_start(meta, META_HEADER)? {
        return Ok(());
    }
    let out = crate::tools::thin_check_clearing_flag(meta)?;
    if !out.status.success() {
        // Its findings, without the progress lines ("examining ...").
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        let found: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("examining") && !l.starts_with("checking"))
            .take(3)
            .collect();
        let found = if found.is_empty() {
            out.status.to_string()
        } else {
            found.join("; ")
        };
        return Err(Error::PoolState(format!(
            "pool '{pool}': metadata on {} failed thin_check ({found}); not activating it; \
             run `dmctl pool repair {pool}` to rebuild it with thin_repair",
            meta.display(),
        )));
    }
    Ok(())
}

/// Names of the pool's volumes that are mounted now, with where.
fn mounted_volumes(ctx: &Ctx, rec: &PoolRecord) -> Result<Vec<String>> {
    let mut out = vec![];
    if ctx.pool_device(rec)?.is_none() {
        return Ok(out);
    }
    for v in ctx.store.list_volumes(&rec.name)? {
        // Waiting spares are dmctl's own mounts, taken down by the caller.
        if names::is_spare_name(&v.name) {
            continue;
        }
        if let Some(info) = ctx.thin_device(rec, &v)? {
            for mp in mount::mountpoints_of(info.devno)? {
                out.push(format!("{} at {}", v.name, mp.display()));
            }
        }
    }
    Ok(out)
}

/// `dmctl pool deactivate`: remove the volumes' and the pool's dm devices
/// and detach the loops. Volumes keep their `active` flag so the next
/// `pool activate` restores them.
pub fn deactivate(ctx: &Ctx, pool: &str) -> Result<()> {
    let _lock = ctx.store.lock_pool(pool)?;
    let _server = refuse_while_served(ctx, pool)?;
    let rec = ctx.ready_pool(pool)?;
    // Waiting spares are dmctl's own mounts: they go, the spares stay.
    super::spare::unmount_all(ctx, &rec)?;
    let mounted = mounted_volumes(ctx, &rec)?;
    if !mounted.is_empty() {
        return Err(Error::Busy(format!(
            "pool '{pool}' has mounted volumes: {}",
            mounted.join(", ")
        )));
    }
    if ctx.pool_device(&rec)?.is_some() {
        for v in ctx.store.list_volumes(pool)? {
            txn::remove_thin_device(ctx, &rec, &v)?;
        }
        ctx.dm()?.remove(&names::pool_dm_name(pool), false)?;
    }
    detach_loops(&rec)
}

/// A pool that `dmctl serve` serves is not taken away under containerd,
/// `--force` or not: stop the server first. The server's lock is held for
/// the caller's operation, so no server starts meanwhile.
fn refuse_while_served(ctx: &Ctx, pool: &str) -> Result<crate::fsutil::LockFile> {
    ctx.store.lock_server(pool).map_err(|e| match e {
        Error::Busy(_) => Error::Busy(format!(
            "pool '{pool}' is served to containerd by `dmctl serve`: stop it first \
             (systemctl stop dmctl-serve@{pool})"
        )),
        other => other,
    })
}

/// `dmctl pool destroy`: everything of the pool goes: volumes, devices,
/// backing files, metadata. Refused while volumes are mounted; a pool with
/// volumes needs `force`.
pub fn destroy(ctx: &Ctx, pool: &str, force: bool) -> Result<()> {
    let _lock = ctx.store.lock_pool(pool)?;
    let _server = refuse_while_served(ctx, pool)?;
    let rec = ctx.store.load_pool(pool)?;
    if rec.state == PoolState::Creating {
        return undo_create(ctx, &rec);
    }
    let vols = ctx.store.list_volumes(pool)?;
    if !force {
        let mounted = mounted_volumes(ctx, &rec)?;
        if !mounted.is_empty() {
            return Err(Error::Busy(format!(
                "pool '{pool}' has mounted volumes: {}; unmount them, or use --force",
                mounted.join(", ")
            )));
        }
        if !vols.is_empty() {
            return Err(Error::Busy(format!(
                "pool '{pool}' has {} volume(s); use --force to destroy it with them",
                vols.len()
            )));
        }
    }
    super::spare::unmount_all(ctx, &rec)?;
    // --force means what it means for rm: mounted volumes are unmounted
    // (a volume a process holds is refused before any is).
    super::volume::unmount_all_forced(ctx, &rec)?;
    if ctx.pool_device(&rec)?.is_some() {
        for v in &vols {
            txn::remove_thin_device(ctx, &rec, v)?;
        }
        crate::crashpoint::hit("pool-destroy:after-volumes");
        ctx.dm()?.remove(&names::pool_dm_name(pool), false)?;
        crate::crashpoint::hit("pool-destroy:after-pool-device");
    }
    detach_loops(&rec)?;
    if let Backing::Device { path } = &rec.meta {
        // Leave the device reusable by a new `pool create`.
        blockdev::zero_start(path, META_HEADER)?;
    }
    ctx.store.remove_pool(pool)
}

/// `dmctl pool extend`: grow data and/or metadata, live.
pub fn extend(
    ctx: &Ctx,
    pool: &str,
    data_size: Option<u64>,
    meta_size: Option<u64>,
) -> Result<PoolRecord> {
    extend_with(ctx, pool, data_size, meta_size, None)
}

/// `extend`, optionally setting a new low-water mark (bytes) in the same
/// table reload (`pool monitor` keeps it at its threshold).
pub fn extend_with(
    ctx: &Ctx,
    pool: &str,
    data_size: Option<u64>,
    meta_size: Option<u64>,
    low_water_mark: Option<u64>,
) -> Result<PoolRecord> {
    let _lock = ctx.store.lock_pool(pool)?;
    let mut rec = ctx.ready_pool(pool)?;
    if data_size.is_none() && meta_size.is_none() && low_water_mark.is_none() {
        return Err(Error::Invalid(
            "nothing to extend: give --data-size and/or --meta-size".into(),
        ));
    }
    let new_data = match (&rec.data, data_size) {
        (_, Some(s)) => s / rec.block_size * rec.block_size,
        (Backing::Device { path }, None) if low_water_mark.is_none() => {
            device_size(path)? / rec.block_size * rec.block_size
        }
        _ => rec.data_size,
    };
    let new_meta = match (&rec.meta, meta_size) {
        (_, Some(s)) => s / META_BLOCK_BYTES * META_BLOCK_BYTES,
        (Backing::Device { path }, None) if low_water_mark.is_none() => {
            device_size(path)?.min(MAX_META_SIZE)
        }
        _ => rec.meta_size,
    };
    grow_locked(ctx, &mut rec, new_data, new_meta, low_water_mark)?;
    Ok(rec)
}

/// Grow a pool (lock held) to the given sizes and low-water mark: record
/// first, then the backing files and loops, then the table reload. Checks
/// that the kernel did grow it: it refuses while the metadata needs_check.
fn grow_locked(
    ctx: &Ctx,
    rec: &mut PoolRecord,
    new_data: u64,
    new_meta: u64,
    low_water_mark: Option<u64>,
) -> Result<()> {
    let pool = rec.name.clone();
    if new_data < rec.data_size || new_meta < rec.meta_size {
        return Err(Error::Invalid(format!(
            "pools only grow: data {} -> {}, metadata {} -> {}",
            format_size(rec.data_size),
            format_size(new_data),
            format_size(rec.meta_size),
            format_size(new_meta)
        )));
    }
    if new_meta > MAX_META_SIZE {
        return Err(Error::Invalid(
            "metadata larger than 16G is never used".into(),
        ));
    }
    let lwm = low_water_mark.unwrap_or(rec.low_water_mark);
    if lwm >= new_data {
        return Err(Error::Invalid(format!(
            "low water mark {} must be below the data size {}",
            format_size(lwm),
            format_size(new_data)
        )));
    }
    for (b, size) in [(&rec.data, new_data), (&rec.meta, new_meta)] {
        if let Backing::Device { path } = b {
            if device_size(path)? < size {
                return Err(Error::Invalid(format!(
                    "{} is smaller than {}",
                    path.display(),
                    format_size(size)
                )));
            }
        }
    }
    // Record first: activation grows a file that is shorter than recorded,
    // so a crash anywhere below is finished by the next activation.
    rec.data_size = new_data;
    rec.meta_size = new_meta;
    rec.low_water_mark = lwm;
    ctx.store.save_pool(rec)?;
    crate::crashpoint::hit("pool-extend:after-record");
    let (meta, data) = backing_devices(rec)?;
    if ctx.pool_device(rec)?.is_some() {
        if !matches!(ctx.pool_status(rec)?, PoolStatusLine::Active(_)) {
            // A failed pool (e.g. its metadata ran out mid-transaction) is
            // not resized by the kernel; the next activation loads the
            // recorded size.
            return Err(Error::PoolState(format!(
                "pool '{pool}' has failed (fail mode), and the kernel grows no failed pool; \
                 the new size is recorded: run `dmctl pool deactivate {pool}` and \
                 `dmctl pool activate {pool}` (thin_check), which load it at the new size \
                 (`dmctl pool repair {pool}` if thin_check fails)"
            )));
        }
        let table = pool_table(rec, &meta, &data)?;
        ctx.dm()?
            .reload(&names::pool_dm_name(&pool), &table, false)?;
        if let PoolStatusLine::Active(s) = ctx.pool_status(rec)? {
            let (data_now, meta_now) = (
                s.total_data_blocks * rec.block_size,
                s.total_meta_blocks * META_BLOCK_BYTES,
            );
            if data_now < new_data || meta_now < new_meta.min(KERNEL_META_LIMIT) {
                let why = if s.needs_check {
                    format!(
                        ": its metadata is flagged needs_check, and the kernel grows no such pool; \
                         run `dmctl pool deactivate {pool}` and `dmctl pool activate {pool}` \
                         (thin_check --clear-needs-check-flag), which loads it at the new size"
                    )
                } else {
                    String::new()
                };
                return Err(Error::PoolState(format!(
                    "pool '{pool}': the kernel did not grow it (data {} of {}, metadata {} of {}){why}",
                    format_size(data_now),
                    format_size(new_data),
                    format_size(meta_now),
                    format_size(new_meta)
                )));
            }
        }
    }
    Ok(())
}

/// What `pool set` changes; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Free-space threshold below which new volumes and snapshots are refused.
    pub min_free_percent: Option<u8>,
    /// The low-water mark (a table reload).
    pub low_water_mark: Option<u64>,
    /// Overcommit limit as a ratio of the data size; `Some(0.0)` removes it.
    pub max_overcommit: Option<f64>,
}

/// `dmctl pool set`: the free-space threshold, the overcommit limit and/or
/// the low-water mark (a table reload).
pub fn set(ctx: &Ctx, pool: &str, s: &Settings) -> Result<PoolRecord> {
    if s.min_free_percent.is_none() && s.low_water_mark.is_none() && s.max_overcommit.is_none() {
        return Err(Error::Invalid(
            "nothing to set: give --min-free, --low-water-mark and/or --max-overcommit".into(),
        ));
    }
    if let Some(p) = s.min_free_percent {
        validate_min_free(p)?;
    }
    if let Some(r) = s.max_overcommit {
        if !(r == 0.0 || (r.is_finite() && r >= 1.0)) {
            return Err(Error::Invalid(format!(
                "invalid overcommit limit {r}: at least 1, or 0 for none"
            )));
        }
    }
    let _lock = ctx.store.lock_pool(pool)?;
    let mut rec = ctx.ready_pool(pool)?;
    if s.min_free_percent.is_some() || s.max_overcommit.is_some() {
        if let Some(p) = s.min_free_percent {
            rec.min_free_percent = p;
        }
        if let Some(r) = s.max_overcommit {
            rec.max_overcommit = (r > 0.0).then_some(r);
        }
        ctx.store.save_pool(&rec)?;
    }
    if let Some(lwm) = s.low_water_mark {
        if lwm < rec.block_size {
            return Err(Error::Invalid(format!(
                "low water mark {} is below one block ({})",
                format_size(lwm),
                format_size(rec.block_size)
            )));
        }
        let (data, meta) = (rec.data_size, rec.meta_size);
        grow_locked(ctx, &mut rec, data, meta, Some(lwm))?;
    }
    Ok(rec)
}

#[derive(Debug, Clone, Serialize)]
pub struct PoolReport {
    pub name: String,
    pub dm_name: String,
    pub uuid: String,
    pub active: bool,
    pub transaction_id: u64,
    pub data_size: u64,
    pub data_used: Option<u64>,
    pub meta_size: u64,
    pub meta_used: Option<u64>,
    pub block_size: u64,
    pub low_water_mark: u64,
    /// New volumes and snapshots are refused below this much free space.
    pub min_free_percent: u8,
    pub mode: Option<PoolMode>,
    pub needs_check: Option<bool>,
    pub no_space_policy: &'static str,
    pub discard_passdown: Option<bool>,
    pub data: PathBuf,
    pub meta: PathBuf,
    pub backing: &'static str,
    pub volumes: usize,
    /// Sum of the volumes' sizes: what they could take if all were written.
    pub provisioned: u64,
    /// Volumes are refused beyond this many times the data size.
    pub max_overcommit: Option<f64>,
    pub open_transaction: Option<u64>,
}

/// `dmctl pool status`: the record plus, if active, the kernel's status line.
pub fn status(ctx: &Ctx, pool: &str) -> Result<PoolReport> {
    let rec = ctx.store.load_pool(pool)?;
    let mut r = PoolReport {
        name: rec.name.clone(),
        dm_name: names::pool_dm_name(&rec.name),
        uuid: rec.uuid.clone(),
        active: false,
        transaction_id: rec.transaction_id,
        data_size: rec.data_size,
        data_used: None,
        meta_size: rec.meta_size,
        meta_used: None,
        block_size: rec.block_size,
        low_water_mark: rec.low_water_mark,
        min_free_percent: rec.min_free_percent,
        mode: None,
        needs_check: None,
        no_space_policy: if rec.error_if_no_space {
            "error"
        } else {
            "queue"
        },
        discard_passdown: None,
        data: rec.data.path().to_path_buf(),
        meta: rec.meta.path().to_path_buf(),
        backing: match rec.data {
            Backing::File { .. } => "file",
            Backing::Device { .. } => "device",
        },
        volumes: ctx.store.volume_names(pool)?.len(),
        provisioned: ctx.store.provisioned_bytes(pool)?,
        max_overcommit: rec.max_overcommit,
        open_transaction: ctx.store.load_txn(pool)?.map(|t| t.transaction_id),
    };
    if rec.state == PoolState::Ready && ctx.pool_device(&rec)?.is_some() {
        r.active = true;
        match ctx.pool_status(&rec)? {
            PoolStatusLine::Active(s) => {
                r.transaction_id = s.transaction_id;
                r.data_used = Some(s.used_data_blocks * rec.block_size);
                r.data_size = s.total_data_blocks * rec.block_size;
                r.meta_used = Some(s.used_meta_blocks * META_BLOCK_BYTES);
                r.meta_size = s.total_meta_blocks * META_BLOCK_BYTES;
                r.mode = Some(s.mode);
                r.needs_check = Some(s.needs_check);
                r.discard_passdown = Some(s.discard_passdown);
                r.no_space_policy = if s.error_if_no_space {
                    "error"
                } else {
                    "queue"
                };
            }
            PoolStatusLine::Fail | PoolStatusLine::Error => r.mode = Some(PoolMode::Fail),
        }
    }
    Ok(r)
}

/// A new volume bigger than the pool's free data space: it is thin, so it
/// is allowed, but writing it out would fill the pool, and writes fail
/// then unless the pool is extended first (LVM warns about overcommit the
/// same way). Cheap on purpose (one status ioctl): the sum of all volume
/// sizes means reading every record, which `pool status` does on demand
/// and `--max-overcommit` when set.
#[derive(Debug, Clone, Serialize)]
pub struct Oversized {
    pub size: u64,
    pub free: u64,
    pub data_size: u64,
}

impl std::fmt::Display for Oversized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a volume of {} is more than the pool's free data space, {} of {}: writes fail \
             if it fills (`dmctl pool monitor` extends it in time; `pool status` shows the \
             volumes' total)",
            format_size(self.size),
            format_size(self.free),
            format_size(self.data_size)
        )
    }
}

/// Whether a volume of `size` is bigger than the pool's free data space.
pub fn oversized(ctx: &Ctx, pool: &str, size: u64) -> Result<Option<Oversized>> {
    let rec = ctx.store.load_pool(pool)?;
    let PoolStatusLine::Active(s) = ctx.pool_status(&rec)? else {
        return Ok(None);
    };
    let free = s.total_data_blocks.saturating_sub(s.used_data_blocks) * rec.block_size;
    Ok((size > free).then_some(Oversized {
        size,
        free,
        data_size: s.total_data_blocks * rec.block_size,
    }))
}

/// `dmctl pool ls`.
pub fn list(ctx: &Ctx) -> Result<Vec<PoolReport>> {
    ctx.store
        .list_pools()?
        .iter()
        .map(|p| status(ctx, p))
        .collect()
}

/// `dmctl pool activate --all`: every pool; errors are collected so one
/// broken pool does not keep the others down.
pub fn activate_all(ctx: &Ctx) -> Vec<(String, Result<Vec<String>>)> {
    // At boot on a machine without pools there is nothing to do.
    if !ctx.store.root().exists() {
        return vec![];
    }
    match ctx.store.list_pools() {
        Ok(pools) => pools
            .into_iter()
            .map(|p| {
                let r = activate(ctx, &p);
                (p, r)
            })
            .collect(),
        Err(e) => vec![("*".into(), Err(e))],
    }
}
