//! Volume operations: create, snapshot, activate, deactivate, mount, umount,
//! rm, resize, info, ls.

use super::session::{self, Session};
use super::{device, devnode, txn, Ctx};
use crate::error::{Error, Result};
use crate::kernel::dm::DevInfo;
use crate::kernel::status::{
    parse_thin_status, PoolMode, PoolStatus, ThinStatus, META_BLOCK_BYTES,
};
use crate::kernel::thin::thin_table;
use crate::kernel::{blockdev, mount};
use crate::names::{self, validate_name, VolumeRef};
use crate::store::model::{now, Filesystem, PoolRecord, Transaction, TxnOp, VolumeRecord};
use crate::tools::MkfsKind;
use crate::units::{format_size, require_sector_multiple, SECTOR};
use nix::errno::Errno;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// How many taken ids `create_thin`/`create_snap` skip before giving up.
const ID_RETRIES: u32 = 64;

#[derive(Debug, Clone)]
pub struct CreateRequest {
    pub volume: VolumeRef,
    pub size: u64,
    pub fs: Option<Filesystem>,
    pub mkfs_args: Vec<String>,
}

/// The status of a pool that is to take a new thin device: a failed pool
/// is refused with what brings it back.
fn room_status(ctx: &Ctx, pool: &PoolRecord) -> Result<PoolStatus> {
    match ctx.pool_status(pool)? {
        crate::kernel::status::PoolStatusLine::Active(s) => Ok(s),
        _ => Err(Error::PoolState(format!(
            "pool '{}' has failed (fail mode: its metadata ran out of space or could not \
             be written); run `dmctl pool deactivate {}` and `dmctl pool activate {}` \
             (thin_check), after `dmctl pool extend {} --meta-size` if its metadata is \
             full; `dmctl pool repair {}` if thin_check fails",
            pool.name, pool.name, pool.name, pool.name, pool.name
        ))),
    }
}

/// Refuse new thin devices on a pool that cannot take them: not read-write,
/// or with less free data (or metadata) space than its threshold (Docker's
/// `dm.min_free_space`).
fn check_room(pool: &PoolRecord, s: &PoolStatus) -> Result<()> {
    let meta = format!(
        "metadata {} of {} used",
        format_size(s.used_meta_blocks * META_BLOCK_BYTES),
        format_size(s.total_meta_blocks * META_BLOCK_BYTES)
    );
    if s.needs_check {
        return Err(Error::PoolState(format!(
            "pool '{}' is {} and its metadata needs a check ({meta}); run \
             `dmctl pool deactivate {}` and `dmctl pool activate {}` (thin_check), \
             then extend it with `dmctl pool extend --meta-size` if it is full",
            pool.name,
            s.mode.as_str(),
            pool.name,
            pool.name
        )));
    }
    if s.mode != PoolMode::ReadWrite {
        // The kernel keeps a reserve of metadata blocks (a tenth, at most
        // 16M): a pool that ran out of metadata space is read-only with the
        // reserve or less free.
        let meta_full = s.mode == PoolMode::ReadOnly
            && s.total_meta_blocks.saturating_sub(s.used_meta_blocks)
                <= (s.total_meta_blocks / 10).min(4096) + 1;
        let how = match s.mode {
            PoolMode::OutOfDataSpace => "out of data space; extend it with \
                                         `dmctl pool extend --data-size`"
                .to_string(),
            _ if meta_full => "out of metadata space; extend it with \
                               `dmctl pool extend --meta-size`"
                .to_string(),
            _ => "extend it with `dmctl pool extend`".to_string(),
        };
        return Err(Error::PoolState(format!(
            "pool '{}' is {} (not rw; {meta}): {how}",
            pool.name,
            s.mode.as_str(),
        )));
    }
    let free = s.total_data_blocks.saturating_sub(s.used_data_blocks);
    if free * 100 < s.total_data_blocks * u64::from(pool.min_free_percent) {
        return Err(Error::PoolState(format!(
            "pool '{}' has {}% of its data space free, below its {}% threshold; \
             extend it with `dmctl pool extend`",
            pool.name,
            free * 100 / s.total_data_blocks.max(1),
            pool.min_free_percent
        )));
    }
    let mfree = s.total_meta_blocks.saturating_sub(s.used_meta_blocks);
    if mfree * 100 < s.total_meta_blocks * u64::from(pool.min_free_percent) {
        return Err(Error::PoolState(format!(
            "pool '{}' has {}% of its metadata space free ({meta}), below its {}% \
             threshold; extend it with `dmctl pool extend --meta-size`",
            pool.name,
            mfree * 100 / s.total_meta_blocks.max(1),
            pool.min_free_percent
        )));
    }
    Ok(())
}

/// Refuse a new volume of `size` that would take the sum of the pool's
/// volume sizes past its overcommit limit (`pool set --max-overcommit`).
fn check_overcommit(ctx: &Ctx, pool: &PoolRecord, size: u64) -> Result<()> {
    let Some(limit) = pool.max_overcommit else {
        return Ok(());
    };
    let total = ctx
        .store
        .provisioned_bytes(&pool.name)?
        .saturating_add(size);
    if total as f64 > limit * pool.data_size as f64 {
        return Err(Error::PoolState(format!(
            "pool '{}': its volumes would add up to {}, more than {limit}x its data size {} \
             (change the limit with `dmctl pool set {} --max-overcommit RATIO`)",
            pool.name,
            format_size(total),
            format_size(pool.data_size),
            pool.name
        )));
    }
    Ok(())
}

pub(super) fn check_new_name(ctx: &Ctx, pool: &PoolRecord, name: &str) -> Result<()> {
    validate_name("volume", name)?;
    let dm_name = names::thin_dm_name(&pool.name, name);
    names::check_dm_name(&dm_name)?;
    if ctx.store.load_volume(&pool.name, name)?.is_some() {
        return Err(Error::Exists(format!(
            "volume '{}/{name}' already exists",
            pool.name
        )));
    }
    // A device of that name that is not ours (ours has a record, above)
    // would make the create fail half-way and its undo refuse to touch it.
    if ctx.dm()?.info(&dm_name)?.is_some() {
        return Err(Error::Exists(format!(
            "a dm device named {dm_name} already exists"
        )));
    }
    Ok(())
}

fn check_size(size: u64) -> Result<u64> {
    if size == 0 {
        return Err(Error::Invalid("size must be greater than 0".into()));
    }
    require_sector_multiple(size, "size")?;
    Ok(size)
}

/// Send `create_thin`/`create_snap` for the transaction's volume. If the id
/// is taken in the kernel (EEXIST: a leftover dmctl does not know), move to
/// the next id, recording it in the transaction first.
fn create_in_pool(
    ctx: &Ctx,
    pool: &PoolRecord,
    txn: &mut Transaction,
    suspended_origin: Option<&str>,
) -> Result<VolumeRecord> {
    for _ in 0..ID_RETRIES {
        let TxnOp::Create { volume } = &txn.op else {
            unreachable!("create_in_pool on a delete transaction")
        };
        let dm_name = names::pool_dm_name(&pool.name);
        let thin = ctx.thin_pool(&dm_name)?;
        let sent = match volume.parent_device_id {
            Some(origin) => thin.create_snap(volume.device_id, origin, suspended_origin),
            None => thin.create_thin(volume.device_id),
        };
        match sent {
            Ok(_) => {
                crate::crashpoint::hit(if volume.parent_device_id.is_some() {
                    "snapshot:after-message"
                } else {
                    "create:after-message"
                });
                return Ok(volume.clone());
            }
            Err(e) if e.errno() == Some(Errno::EEXIST) => {
                let mut v = volume.clone();
                v.device_id = txn::next_id(v.device_id);
                txn.op = TxnOp::Create { volume: v };
                ctx.store.save_txn(&pool.name, txn)?;
            }
            // Sent once, answered once: never sent again to learn why (a
            // create_snap sent again after the resume would snapshot a live
            // origin).
            Err(e) => return Err(e),
        }
    }
    Err(Error::PoolState(format!(
        "pool '{}': {ID_RETRIES} consecutive thin ids are taken; run `dmctl check {} --repair`",
        pool.name, pool.name
    )))
}

/// Run the body of a create-like transaction; on failure undo everything
/// (the same path a crash takes on the next command).
fn in_create_txn<F>(
    ctx: &Ctx,
    pool: &mut PoolRecord,
    volume: VolumeRecord,
    body: F,
) -> Result<VolumeRecord>
where
    F: FnOnce(&mut PoolRecord, &mut Transaction) -> Result<VolumeRecord>,
{
    let point = if volume.parent_device_id.is_some() {
        "snapshot:after-begin"
    } else {
        "create:after-begin"
    };
    let mut t = txn::begin(ctx, pool, TxnOp::Create { volume })?;
    crate::crashpoint::hit(point);
    let id_floor = pool.next_device_id;
    match body(pool, &mut t) {
        Ok(v) => Ok(v),
        Err(e) => {
            if let Err(undo) = txn::recover(ctx, pool) {
                return Err(Error::Drift(format!(
                    "{e}; and undoing it failed: {undo} (the next command retries)"
                )));
            }
            debug_assert!(pool.next_device_id >= id_floor);
            Err(e)
        }
    }
}

fn new_record(pool: &PoolRecord, name: &str, size: u64) -> VolumeRecord {
    VolumeRecord {
        name: name.to_string(),
        device_id: pool.next_device_id,
        size,
        transaction_id: pool.transaction_id + 1,
        initialized: false,
        parent: None,
        parent_device_id: None,
        parent_transaction_id: None,
        ancestors: vec![],
        fs: None,
        created: now(),
        active: false,
        read_only: false,
        mountpoint: None,
    }
}

/// `dmctl create POOL/NAME --size SIZE [--fs ext4|xfs|none]`: a new thin
/// volume, active, formatted.
pub fn create(ctx: &Ctx, req: &CreateRequest) -> Result<VolumeRecord> {
    check_size(req.size)?;
    names::check_not_reserved(&req.volume.name)?;
    let mut s = session::open(ctx, &req.volume.pool)?;
    create_locked(ctx, &mut s, req).map(|(v, _)| v)
}

/// `create` in an open session: the committed volume and its device.
pub(super) fn create_locked(
    ctx: &Ctx,
    s: &mut Session,
    req: &CreateRequest,
) -> Result<(VolumeRecord, DevInfo)> {
    let size = check_size(req.size)?;
    let (pool, pool_dev) = (&mut s.pool, &s.device);
    check_new_name(ctx, pool, &req.volume.name)?;
    check_room(pool, &room_status(ctx, pool)?)?;
    check_overcommit(ctx, pool, size)?;
    let mut vol = new_record(pool, &req.volume.name, size);
    vol.fs = req.fs;
    vol.active = true;
    let mut device = None;
    let v = in_create_txn(ctx, pool, vol, |pool, t| {
        let mut v = create_in_pool(ctx, pool, t, None)?;
        ctx.store.save_volume(&pool.name, &v)?;
        let info = device::create_device(ctx, pool, pool_dev.devno, &v, false)?;
        crate::crashpoint::hit("create:after-activate");
        if let Some(fs) = v.fs {
            mkfs(fs, &devnode(&info), &req.mkfs_args)?;
            crate::crashpoint::hit("create:after-mkfs");
        }
        device = Some(info);
        v.initialized = true;
        ctx.store.save_volume(&pool.name, &v)?;
        t.op = TxnOp::Create { volume: v.clone() };
        txn::commit_saved(ctx, pool, t)?;
        Ok(v)
    })?;
    let info = device.ok_or_else(|| Error::Drift(format!("volume '{}' has no device", v.name)))?;
    Ok((v, info))
}

fn mkfs(fs: Filesystem, dev: &Path, extra: &[String]) -> Result<()> {
    let kind = match fs {
        Filesystem::Ext4 => MkfsKind::Ext4,
        Filesystem::Xfs => MkfsKind::Xfs,
    };
    crate::tools::mkfs(kind, dev, extra)
}

/// `dmctl snapshot POOL/ORIGIN POOL/NAME [--size SIZE] [--activate]`: a
/// snapshot of an active or inactive, mounted or unmounted origin. The
/// snapshot is left inactive (as LVM does) unless `activate`; activation is
/// then part of the transaction, so a failure to activate undoes the
/// snapshot too.
pub fn snapshot(
    ctx: &Ctx,
    origin: &VolumeRef,
    new: &VolumeRef,
    size: Option<u64>,
    activate: bool,
) -> Result<VolumeRecord> {
    names::check_not_reserved(&new.name)?;
    let Session {
        lock: _lock,
        mut pool,
        device: pool_dev,
    } = open_snapshot_pool(ctx, origin, new)?;
    snapshot_locked(ctx, &mut pool, &pool_dev, origin, new, size, activate).map(|(v, _)| v)
}

/// The snapshot command's prologue: both names in one pool, locked.
fn open_snapshot_pool(ctx: &Ctx, origin: &VolumeRef, new: &VolumeRef) -> Result<Session> {
    if origin.pool != new.pool {
        return Err(Error::Invalid(format!(
            "a snapshot lives in its origin's pool: {origin} and {new} differ"
        )));
    }
    session::open(ctx, &origin.pool)
}

/// `snapshot` with the pool locked by the caller. Returns the new record
/// and, if activated, its device.
pub(super) fn snapshot_locked(
    ctx: &Ctx,
    pool: &mut PoolRecord,
    pool_dev: &DevInfo,
    origin: &VolumeRef,
    new: &VolumeRef,
    size: Option<u64>,
    activate: bool,
) -> Result<(VolumeRecord, Option<DevInfo>)> {
    let o = ctx.store.volume(&origin.pool, &origin.name)?;
    if !o.initialized {
        return Err(Error::PoolState(format!(
            "volume '{origin}' is not fully created"
        )));
    }
    check_new_name(ctx, pool, &new.name)?;
    check_room(pool, &room_status(ctx, pool)?)?;
    let size = match size {
        Some(s) if s < o.size => {
            return Err(Error::Invalid(format!(
                "snapshot size {} is smaller than its origin's {}",
                format_size(s),
                format_size(o.size)
            )))
        }
        Some(s) => check_size(s)?,
        None => o.size,
    };
    check_overcommit(ctx, pool, size)?;
    let mut vol = new_record(pool, &new.name, size);
    vol.set_parent(&o);
    vol.fs = o.fs;
    let origin_dm = ctx
        .thin_device(pool, &o)?
        .map(|_| ctx.thin_dm_name(pool, &o));
    let mut device = None;
    let v = in_create_txn(ctx, pool, vol, |pool, t| {
        let mut v = create_in_pool(ctx, pool, t, origin_dm.as_deref())?;
        v.initialized = true;
        v.active = activate;
        ctx.store.save_volume(&pool.name, &v)?;
        if activate {
            device = Some(device::create_device(ctx, pool, pool_dev.devno, &v, false)?);
        }
        t.op = TxnOp::Create { volume: v.clone() };
        txn::commit_saved(ctx, pool, t)?;
        Ok(v)
    })?;
    Ok((v, device))
}

/// What `snapshot_mounted` made.
pub enum MountedSnapshot {
    /// The committed snapshot, active and (if asked) mounted.
    Ready(VolumeReport),
    /// The snapshot is committed and active, but its mount failed.
    MountFailed(Error),
}

/// An active snapshot of `origin`, mounted at `mount_at` if given, under
/// one pool lock: what `image provision` does for a CI job. The snapshot
/// is committed before the mount; the caller decides what a failed mount
/// means (provision removes the snapshot again).
pub fn snapshot_mounted(
    ctx: &Ctx,
    origin: &VolumeRef,
    new: &VolumeRef,
    size: Option<u64>,
    mount_at: Option<&Path>,
) -> Result<MountedSnapshot> {
    let Session {
        lock: _lock,
        mut pool,
        device: pool_dev,
    } = open_snapshot_pool(ctx, origin, new)?;
    let (mut volume, info) = snapshot_locked(ctx, &mut pool, &pool_dev, origin, new, size, true)?;
    crate::crashpoint::hit("provision:after-snapshot");
    let info = info
        .ok_or_else(|| Error::Drift(format!("snapshot '{new}' was activated but has no device")))?;
    let mut mountpoint = None;
    if let Some(dir) = mount_at {
        match mount_locked(ctx, &pool, &mut volume, &info, &MountAt::fresh(dir)) {
            Ok(mp) => mountpoint = Some(mp),
            Err(e) => return Ok(MountedSnapshot::MountFailed(e)),
        }
    }
    let report = report_fresh(ctx, &pool, volume, &info, mountpoint)?;
    Ok(MountedSnapshot::Ready(report))
}

/// `dmctl activate POOL/NAME [--ro]`.
pub fn activate(ctx: &Ctx, v: &VolumeRef, read_only: bool) -> Result<DevInfo> {
    let Session {
        lock: _lock, pool, ..
    } = session::open(ctx, &v.pool)?;
    let mut vol = ctx.store.volume(&v.pool, &v.name)?;
    let info = device::activate_device(ctx, &pool, &vol, read_only)?;
    if !vol.active || vol.read_only != read_only {
        vol.active = true;
        vol.read_only = read_only;
        ctx.store.save_volume(&pool.name, &vol)?;
    }
    Ok(info)
}

/// Error for a volume that is in use, naming what holds it.
fn busy(v: &VolumeRef, info: &DevInfo, mountpoint: Option<&Path>, what: &str) -> Error {
    let holders = blockdev::users_of(&devnode(info), info.devno, mountpoint);
    let held = if holders.is_empty() {
        String::new()
    } else {
        format!(
            "; held by {}",
            holders
                .iter()
                .map(|h| format!("{} (pid {}, {})", h.command, h.pid, h.how))
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    Error::Busy(format!("volume '{v}' {what}{held}"))
}

/// `--force` on a whole pool, as `rm --force` on each volume: unmount every
/// mounted volume of the pool. A volume a process holds (files open under
/// its mount, its device open) is refused before anything is unmounted.
pub(super) fn unmount_all_forced(ctx: &Ctx, pool: &PoolRecord) -> Result<()> {
    if ctx.pool_device(pool)?.is_none() {
        return Ok(());
    }
    let mut mounted = vec![];
    for vol in ctx.store.list_volumes(&pool.name)? {
        let Some(info) = ctx.thin_device(pool, &vol)? else {
            continue;
        };
        let v = VolumeRef::new(&pool.name, &vol.name)?;
        for mp in mount::mountpoints_of(info.devno)? {
            if !blockdev::users_of(&devnode(&info), info.devno, Some(&mp)).is_empty() {
                return Err(busy(
                    &v,
                    &info,
                    Some(&mp),
                    &format!("is busy at {}", mp.display()),
                ));
            }
            mounted.push((v.clone(), info.clone(), mp));
        }
    }
    for (v, info, mp) in mounted {
        if let Err(Error::Busy(_)) = mount::umount(&mp) {
            return Err(busy(
                &v,
                &info,
                Some(&mp),
                &format!("is busy at {}", mp.display()),
            ));
        }
    }
    Ok(())
}

fn first_mountpoint(info: &DevInfo) -> Result<Option<PathBuf>> {
    Ok(mount::mountpoints_of(info.devno)?.into_iter().next())
}

/// `dmctl deactivate POOL/NAME`.
pub fn deactivate(ctx: &Ctx, v: &VolumeRef) -> Result<()> {
    let Session {
        lock: _lock, pool, ..
    } = session::open(ctx, &v.pool)?;
    let mut vol = ctx.store.volume(&v.pool, &v.name)?;
    if let Some(info) = ctx.thin_device(&pool, &vol)? {
        if let Some(mp) = first_mountpoint(&info)? {
            return Err(busy(
                v,
                &info,
                Some(&mp),
                &format!("is mounted at {}", mp.display()),
            ));
        }
        if let Err(e) = ctx.dm()?.remove(&ctx.thin_dm_name(&pool, &vol), false) {
            return Err(match e {
                Error::Busy(_) => busy(v, &info, None, "is open"),
                e => e,
            });
        }
    }
    if vol.active {
        vol.active = false;
        ctx.store.save_volume(&pool.name, &vol)?;
    }
    Ok(())
}

/// `dmctl mount POOL/NAME DIR [--ro] [-o OPTS]`.
pub fn mount(
    ctx: &Ctx,
    v: &VolumeRef,
    dir: &Path,
    read_only: bool,
    options: &str,
) -> Result<PathBuf> {
    let Session {
        lock: _lock,
        pool,
        device: pool_dev,
    } = session::open(ctx, &v.pool)?;
    let mut vol = ctx.store.volume(&v.pool, &v.name)?;
    let was_active = ctx.thin_device(&pool, &vol)?;
    let info = match &was_active {
        Some(info) => info.clone(),
        None => device::create_device(ctx, &pool, pool_dev.devno, &vol, vol.read_only)?,
    };
    let at = MountAt {
        dir,
        read_only,
        options,
        fresh_device: false,
    };
    let mounted = mount_locked(ctx, &pool, &mut vol, &info, &at);
    if mounted.is_err() && was_active.is_none() {
        let _ = ctx.dm()?.remove(&ctx.thin_dm_name(&pool, &vol), false);
    }
    mounted
}

/// Where and how a volume is mounted.
pub(super) struct MountAt<'a> {
    pub dir: &'a Path,
    pub read_only: bool,
    /// Mount options, comma-separated ("" for none).
    pub options: &'a str,
    /// The device was created by this command: it cannot be mounted yet,
    /// so the mount table (which grows with every mount on the host) is
    /// not read.
    pub fresh_device: bool,
}

impl<'a> MountAt<'a> {
    /// Read-write, no options, on a device this command just made.
    pub fn fresh(dir: &'a Path) -> MountAt<'a> {
        MountAt {
            dir,
            read_only: false,
            options: "",
            fresh_device: true,
        }
    }
}

/// Mount an active volume (`info` is its device) and record the mount
/// point; the pool is locked by the caller.
pub(super) fn mount_locked(
    ctx: &Ctx,
    pool: &PoolRecord,
    vol: &mut VolumeRecord,
    info: &DevInfo,
    at: &MountAt,
) -> Result<PathBuf> {
    let MountAt {
        dir,
        read_only,
        options,
        fresh_device: fresh,
    } = *at;
    let fs = vol.fs.ok_or_else(|| {
        Error::Invalid(format!(
            "volume '{}/{}' has no filesystem (created with --fs none)",
            pool.name, vol.name
        ))
    })?;
    let dir = mount_dir(dir)?;
    if !fresh && mount::mountpoints_of(info.devno)?.contains(&dir) {
        return Ok(dir);
    }
    device::mount_device(fs, info, &dir, read_only || vol.read_only, options)?;
    vol.active = true;
    vol.mountpoint = Some(dir.clone());
    ctx.store.save_volume(&pool.name, vol)?;
    Ok(dir)
}

/// A mount point given by the user: canonical, and a directory.
pub(super) fn mount_dir(dir: &Path) -> Result<PathBuf> {
    let dir = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
    if !dir.is_dir() {
        return Err(Error::Invalid(format!(
            "{}: not a directory",
            dir.display()
        )));
    }
    Ok(dir)
}

/// `dmctl umount POOL/NAME`: unmount it wherever it is mounted.
pub fn umount(ctx: &Ctx, v: &VolumeRef) -> Result<Vec<PathBuf>> {
    let Session {
        lock: _lock, pool, ..
    } = session::open(ctx, &v.pool)?;
    let mut vol = ctx.store.volume(&v.pool, &v.name)?;
    let mut done = vec![];
    if let Some(info) = ctx.thin_device(&pool, &vol)? {
        for mp in mount::mountpoints_of(info.devno)? {
            match mount::umount(&mp) {
                Ok(()) => done.push(mp),
                Err(Error::Busy(_)) => {
                    return Err(busy(
                        v,
                        &info,
                        Some(&mp),
                        &format!("is busy at {}", mp.display()),
                    ))
                }
                Err(e) => return Err(e),
            }
        }
    }
    if done.is_empty() && vol.mountpoint.is_none() {
        return Err(Error::Invalid(format!("volume '{v}' is not mounted")));
    }
    vol.mountpoint = None;
    ctx.store.save_volume(&pool.name, &vol)?;
    Ok(done)
}

/// `dmctl rm POOL/NAME [--force]`: unmount (with force), discard the blocks
/// so a loop file shrinks, remove the dm device, `delete` the thin id.
///
/// A volume in use is refused before anything changes, naming what holds
/// it: mounted (without force), a busy mount, or a device that a process
/// has open. The last is refused even with force: the kernel will not
/// `delete` the thin id of an open device, and a deferred removal would
/// leave the id and its record behind until the holder lets go.
pub fn remove(ctx: &Ctx, v: &VolumeRef, force: bool) -> Result<()> {
    let Session {
        lock: _lock,
        mut pool,
        ..
    } = session::open(ctx, &v.pool)?;
    remove_locked(ctx, &mut pool, v, force)
}

/// `remove` with the pool locked by the caller.
pub(super) fn remove_locked(
    ctx: &Ctx,
    pool: &mut PoolRecord,
    v: &VolumeRef,
    force: bool,
) -> Result<()> {
    let vol = ctx.store.volume(&v.pool, &v.name)?;
    let was_active = ctx.thin_device(pool, &vol)?;
    // Everything that can refuse comes before the transaction opens.
    if let Some(info) = &was_active {
        unmount_for_removal(v, info, force)?;
    }
    let claimed = match &was_active {
        Some(info) => Some(claim_for_removal(ctx, pool, v, &vol, info)?),
        None => None,
    };
    let t = txn::begin(
        ctx,
        pool,
        TxnOp::Delete {
            volume: vol.clone(),
        },
    )?;
    if let Err(e) = discard_and_remove_device(ctx, pool, v, &vol, claimed) {
        // Nothing is committed yet: close the transaction and put the
        // device back the way it was.
        ctx.store.clear_txn(&pool.name)?;
        let active_now = ctx.thin_device(pool, &vol)?.is_some();
        if was_active.is_some() && !active_now {
            device::activate_device(ctx, pool, &vol, vol.read_only)?;
        } else if was_active.is_none() && active_now {
            let _ = ctx.dm()?.remove(&ctx.thin_dm_name(pool, &vol), false);
        }
        return Err(e);
    }
    crate::crashpoint::hit("rm:after-device-removed");
    txn::delete_thin_id(ctx, pool, vol.device_id)?;
    crate::crashpoint::hit("rm:after-delete");
    txn::commit(ctx, pool, &t)
}

/// Remove `v` if it has a record (`rm --force`), in an open session.
pub(super) fn remove_if_present(ctx: &Ctx, pool: &mut PoolRecord, v: &VolumeRef) -> Result<()> {
    if ctx.store.load_volume(&v.pool, &v.name)?.is_none() {
        return Ok(());
    }
    remove_locked(ctx, pool, v, true)
}

/// Deactivate an unmounted volume and record it read-only and inactive
/// (a finished image layer), in an open session.
pub(super) fn seal_locked(ctx: &Ctx, pool: &PoolRecord, v: &VolumeRef) -> Result<()> {
    let mut rec = ctx.store.volume(&v.pool, &v.name)?;
    ctx.dm()?.remove(&ctx.thin_dm_name(pool, &rec), false)?;
    rec.read_only = true;
    rec.active = false;
    rec.mountpoint = None;
    ctx.store.save_volume(&pool.name, &rec)
}

const OPEN_MSG: &str = "is open (the kernel cannot delete an open thin device; \
                        close it and run rm again)";

/// Refuse a mounted volume (without force), or unmount it (with force)
/// unless a process holds its device node open.
fn unmount_for_removal(v: &VolumeRef, info: &DevInfo, force: bool) -> Result<()> {
    let mountpoints = mount::mountpoints_of(info.devno)?;
    if force && !mountpoints.is_empty() {
        // An open device node keeps the device whatever is unmounted:
        // refuse before unmounting anything.
        if !blockdev::users_of(&devnode(info), info.devno, None).is_empty() {
            return Err(busy(v, info, None, OPEN_MSG));
        }
    }
    for mp in mountpoints {
        if !force {
            return Err(busy(
                v,
                info,
                Some(&mp),
                &format!(
                    "is mounted at {} (dmctl umount it, or rm --force)",
                    mp.display()
                ),
            ));
        }
        if let Err(Error::Busy(_)) = mount::umount(&mp) {
            return Err(busy(
                v,
                info,
                Some(&mp),
                &format!("is busy at {}", mp.display()),
            ));
        }
    }
    Ok(())
}

/// Claim the active device: O_EXCL fails while anything still has it
/// mounted or claimed, and once we hold it nothing can mount it; then the
/// kernel's open count must be ours alone. Nothing has changed yet if it is
/// not (the discard that follows would destroy a holder's data).
fn claim_for_removal(
    ctx: &Ctx,
    pool: &PoolRecord,
    v: &VolumeRef,
    vol: &VolumeRecord,
    info: &DevInfo,
) -> Result<(std::fs::File, PathBuf)> {
    let node = devnode(info);
    let file = match blockdev::claim(&node) {
        Ok(f) => f,
        Err(Errno::EBUSY) => return Err(busy(v, info, None, OPEN_MSG)),
        Err(e) => return Err(Error::io(&node, e.into())),
    };
    match ctx.thin_device(pool, vol)? {
        Some(now) if now.open_count <= 1 => Ok((file, node)),
        Some(now) => Err(busy(v, &now, None, OPEN_MSG)),
        None => Err(Error::Busy(format!(
            "volume '{v}' was deactivated by someone else meanwhile; run rm again"
        ))),
    }
}

/// Discard the blocks (so a loop file shrinks) through the claimed device,
/// or through a device made for it, then remove the device: the kernel
/// refuses (EBUSY) if anyone opened it meanwhile.
fn discard_and_remove_device(
    ctx: &Ctx,
    pool: &PoolRecord,
    v: &VolumeRef,
    vol: &VolumeRecord,
    claimed: Option<(std::fs::File, PathBuf)>,
) -> Result<()> {
    let (file, node) = match claimed {
        Some(held) => held,
        None => {
            let info = device::activate_device(ctx, pool, vol, false)?;
            let node = devnode(&info);
            let file = blockdev::claim(&node).map_err(|e| Error::io(&node, e.into()))?;
            (file, node)
        }
    };
    blockdev::discard_open(&file, &node, 0, vol.size)?;
    drop(file);
    match ctx.dm()?.remove(&ctx.thin_dm_name(pool, vol), false) {
        Ok(()) => Ok(()),
        Err(e @ Error::Busy(_)) => Err(match ctx.thin_device(pool, vol)? {
            Some(info) => busy(v, &info, None, OPEN_MSG),
            None => e,
        }),
        Err(e) => Err(e),
    }
}

/// `dmctl resize POOL/NAME --size SIZE`: grow the device and its filesystem.
pub fn resize(ctx: &Ctx, v: &VolumeRef, size: u64) -> Result<VolumeRecord> {
    let size = check_size(size)?;
    let Session { lock, pool, .. } = session::open(ctx, &v.pool)?;
    let mut vol = ctx.store.volume(&v.pool, &v.name)?;
    if size < vol.size {
        return Err(Error::Invalid(format!(
            "volumes only grow: '{v}' is {}, asked for {}",
            format_size(vol.size),
            format_size(size)
        )));
    }
    // Record first: a bigger device under an old filesystem is harmless,
    // a filesystem bigger than its device is not. The recorded size asked
    // again is not a no-op: it finishes a resize interrupted after its
    // record (the device or filesystem may still be smaller).
    if size > vol.size {
        vol.size = size;
        ctx.store.save_volume(&pool.name, &vol)?;
        crate::crashpoint::hit("resize:after-record");
    }
    let was_active = ctx.thin_device(&pool, &vol)?.is_some();
    let info = device::activate_device(ctx, &pool, &vol, false)?;
    let pool_dev = ctx.active_pool_device(&pool)?;
    if was_active {
        ctx.dm()?.reload(
            &ctx.thin_dm_name(&pool, &vol),
            &thin_table(pool_dev.devno, vol.device_id, size),
            vol.read_only,
        )?;
    }
    let node = devnode(&info);
    let grown = match vol.fs {
        Some(fs) => grow_fs(ctx, &lock, &info, &node, fs),
        None => Ok(()),
    };
    if !was_active {
        ctx.dm()?.remove(&ctx.thin_dm_name(&pool, &vol), false)?;
    }
    grown.map(|_| vol)
}

/// Grow the filesystem to its device, always online: ext4's online resize
/// and xfs_growfs go through the filesystem's journal, so a power cut leaves
/// the old size or the new one. Offline `resize2fs` rewrites group
/// descriptors and the resize inode in place with no journal; cut in the
/// middle, it left a corrupt filesystem (the random-mix power cut, seed
/// 10005071). An unmounted volume is mounted for the grow only, by the
/// grow tool's own process in a mount namespace of its own (on the state
/// root's `tmp`): no one else sees the mount, it is gone when the tool
/// exits, and the tool holds the pool lock until then even if dmctl is
/// killed meanwhile.
fn grow_fs(
    ctx: &Ctx,
    lock: &crate::fsutil::LockFile,
    info: &DevInfo,
    node: &Path,
    fs: Filesystem,
) -> Result<()> {
    let kind = match fs {
        Filesystem::Ext4 => MkfsKind::Ext4,
        Filesystem::Xfs => MkfsKind::Xfs,
    };
    if let Some(mp) = first_mountpoint(info)? {
        return crate::tools::grow_mounted(kind, node, &mp);
    }
    let dir = ctx.store.tmp_dir();
    crate::fsutil::create_private_dir(&dir)?;
    let (tool, mut command) = crate::tools::grow_command(kind, node, &dir)?;
    // An xfs snapshot has its origin's uuid.
    let opts = if fs == Filesystem::Xfs { "nouuid" } else { "" };
    mount::in_private_mount(
        &mut command,
        node,
        &dir,
        fs.as_str(),
        opts,
        Some(std::os::fd::AsRawFd::as_raw_fd(lock)),
    )?;
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Error::Tool {
            program: tool.program().into(),
            msg: format!(
                "cannot start with {} mounted privately on {}: {e}",
                node.display(),
                dir.display()
            ),
        })?;
    crate::crashpoint::hit("resize:growing");
    let out = child.wait_with_output().map_err(|e| tool.not_started(e))?;
    tool.succeeded(out).map(|_| ())
}

#[derive(Debug, Clone, Serialize)]
pub struct VolumeReport {
    pub name: String,
    pub pool: String,
    pub device_id: u32,
    pub size: u64,
    /// The parent's name, while the parent exists.
    pub parent: Option<String>,
    /// The name the parent had, if it was removed since.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_removed: Option<String>,
    pub transaction_id: u64,
    pub initialized: bool,
    pub active: bool,
    pub read_only: bool,
    pub dm_name: String,
    pub devnode: Option<PathBuf>,
    pub mountpoint: Option<PathBuf>,
    pub fs: Option<Filesystem>,
    pub mapped_bytes: Option<u64>,
    pub created: u64,
}

fn report(
    ctx: &Ctx,
    pool: &PoolRecord,
    vol: VolumeRecord,
    all: &[VolumeRecord],
    pool_active: bool,
) -> Result<VolumeReport> {
    let info = if pool_active {
        ctx.thin_device(pool, &vol)?
    } else {
        None
    };
    let (mut mountpoint, mut mapped) = (None, None);
    if let Some(info) = &info {
        mountpoint = first_mountpoint(info)?;
        // Another process may remove the device meanwhile (ls and info
        // take no lock): a device gone since is simply not active.
        mapped = match mapped_bytes(ctx, pool, &vol) {
            Ok(m) => m,
            Err(_) if ctx.thin_device(pool, &vol)?.is_none() => None,
            Err(e) => return Err(e),
        };
    }
    let mut r = build_report(pool, vol.clone(), info.as_ref(), mountpoint, mapped);
    (r.parent, r.parent_removed) = parent_names(&vol, all);
    Ok(r)
}

/// The parent's name while it exists, else the name it had.
fn parent_names(vol: &VolumeRecord, all: &[VolumeRecord]) -> (Option<String>, Option<String>) {
    match (vol.live_parent(all), &vol.parent) {
        (Some(p), _) => (Some(p.name.clone()), None),
        (None, Some(was)) => (None, Some(was.clone())),
        (None, None) => (None, None),
    }
}

/// The report of a volume this command has just activated (and mounted at
/// `mountpoint`): what it knows is not looked up again.
pub(super) fn report_fresh(
    ctx: &Ctx,
    pool: &PoolRecord,
    vol: VolumeRecord,
    info: &DevInfo,
    mountpoint: Option<PathBuf>,
) -> Result<VolumeReport> {
    let mapped = mapped_bytes(ctx, pool, &vol)?;
    Ok(build_report(pool, vol, Some(info), mountpoint, mapped))
}

/// Bytes the thin device maps, from its status line.
pub(super) fn mapped_bytes(
    ctx: &Ctx,
    pool: &PoolRecord,
    vol: &VolumeRecord,
) -> Result<Option<u64>> {
    let lines = ctx.dm()?.status(&ctx.thin_dm_name(pool, vol))?;
    if let Some(line) = lines.first() {
        if let ThinStatus::Active { mapped_sectors, .. } = parse_thin_status(&line.3)? {
            return Ok(Some(mapped_sectors * SECTOR));
        }
    }
    Ok(None)
}

fn build_report(
    pool: &PoolRecord,
    vol: VolumeRecord,
    info: Option<&DevInfo>,
    mountpoint: Option<PathBuf>,
    mapped: Option<u64>,
) -> VolumeReport {
    VolumeReport {
        dm_name: names::thin_dm_name(&pool.name, &vol.name),
        pool: pool.name.clone(),
        device_id: vol.device_id,
        size: vol.size,
        parent: vol.parent,
        parent_removed: None,
        transaction_id: vol.transaction_id,
        initialized: vol.initialized,
        active: info.is_some(),
        read_only: vol.read_only,
        devnode: info.map(devnode),
        mountpoint,
        fs: vol.fs,
        mapped_bytes: mapped,
        created: vol.created,
        name: vol.name,
    }
}

fn pool_is_active(ctx: &Ctx, pool: &PoolRecord) -> Result<bool> {
    // Without dm (e.g. on a host without the module) nothing is active;
    // the JSON is still worth showing.
    match ctx.dm() {
        Ok(_) => Ok(ctx.pool_device(pool)?.is_some()),
        Err(_) => Ok(false),
    }
}

/// `dmctl info POOL/NAME`.
pub fn info(ctx: &Ctx, v: &VolumeRef) -> Result<VolumeReport> {
    let pool = ctx.store.load_pool(&v.pool)?;
    let vol = ctx.store.volume(&v.pool, &v.name)?;
    let all = ctx.store.list_volumes(&v.pool)?;
    let active = pool_is_active(ctx, &pool)?;
    report(ctx, &pool, vol, &all, active)
}

/// `dmctl ls [POOL]`.
pub fn list(ctx: &Ctx, pool: Option<&str>) -> Result<Vec<VolumeReport>> {
    let pools = match pool {
        Some(p) => vec![p.to_string()],
        None => ctx.store.list_pools()?,
    };
    let mut out = vec![];
    for p in pools {
        let rec = ctx.store.load_pool(&p)?;
        let active = pool_is_active(ctx, &rec)?;
        let all = ctx.store.list_volumes(&p)?;
        for v in &all {
            out.push(report(ctx, &rec, v.clone(), &all, active)?);
        }
    }
    Ok(out)
}
