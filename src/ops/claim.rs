//! The claim journal: a warm spare handed out under a user's name (see
//! `ops::spare` for the protocol). `claim.json` is written before the dm
//! rename; every step after it is idempotent, and `recover` (run by every
//! pool session) rolls an interrupted claim forward.

use super::Ctx;
use crate::error::{Error, Result};
use crate::kernel::dm::DevInfo;
use crate::kernel::mount;
use crate::names;
use crate::store::model::{Claim, PoolRecord, VolumeRecord};
use std::path::{Path, PathBuf};

/// Steps 2 to 4 of a claim (see the module's comment), for the command
/// that journaled it. A mount that cannot be placed undoes the rename.
pub(super) fn hand_out(
    ctx: &Ctx,
    pool: &PoolRecord,
    claim: &Claim,
) -> Result<(VolumeRecord, Option<DevInfo>)> {
    let info = rename_device(ctx, pool, claim)?;
    crate::crashpoint::hit("claim:renamed");
    let spare_at = ctx.store.spare_mountpoint(&pool.name, &claim.spare.name)?;
    let mut mountpoint = None;
    if let Some(info) = &info {
        match &claim.mount_at {
            Some(target) => match place_mount(claim, info, &spare_at, target) {
                Ok(()) => mountpoint = Some(target.clone()),
                Err(e) => {
                    undo_rename(ctx, pool, claim)?;
                    return Err(e);
                }
            },
            None => {
                if let Err(e) = mount::umount_if_mounted(&spare_at) {
                    undo_rename(ctx, pool, claim)?;
                    return Err(e);
                }
            }
        }
    }
    crate::crashpoint::hit("claim:mounted");
    let vol = record(ctx, pool, claim, mountpoint)?;
    Ok((vol, info))
}

/// Step 2: the spare's dm device takes the new name (if it is active: a
/// spare whose pool was re-activated after a crash may not be). Idempotent.
fn rename_device(ctx: &Ctx, pool: &PoolRecord, claim: &Claim) -> Result<Option<DevInfo>> {
    let dm = ctx.dm()?;
    let from = names::thin_dm_name(&pool.name, &claim.spare.name);
    let to = names::thin_dm_name(&pool.name, &claim.name);
    match dm.owned(&from)? {
        Some(_) => dm.rename(&from, &to).map(Some),
        None => dm.owned(&to),
    }
}

/// A claim that cannot be completed gives the name back: the spare stays
/// a spare, and the command fails with nothing changed. If even that
/// fails, `claim.json` stays and the next command rolls the claim forward.
fn undo_rename(ctx: &Ctx, pool: &PoolRecord, claim: &Claim) -> Result<()> {
    let dm = ctx.dm()?;
    let from = names::thin_dm_name(&pool.name, &claim.name);
    let to = names::thin_dm_name(&pool.name, &claim.spare.name);
    if dm.owned(&from)?.is_some() {
        dm.rename(&from, &to)?;
    }
    ctx.store.clear_claim(&pool.name)
}

/// Step 3: the waiting mount moves to `target`. A spare that lost its
/// mount (a reboot, `pool deactivate`), or whose mount cannot move, is
/// mounted afresh there instead.
fn place_mount(claim: &Claim, info: &DevInfo, spare_at: &Path, target: &Path) -> Result<()> {
    if mount::move_mount(spare_at, target).is_ok() {
        return Ok(());
    }
    let fs = claim.spare.fs.ok_or_else(|| {
        Error::Invalid(format!(
            "spare '{}' has no filesystem to mount",
            claim.spare.name
        ))
    })?;
    super::device::mount_device(fs, info, target, false, "")?;
    mount::umount_if_mounted(spare_at).inspect_err(|_| {
        let _ = mount::umount(target);
    })
}

/// Step 4: the volume's record under its new name; the spare's goes, then
/// the journal. Idempotent.
fn record(
    ctx: &Ctx,
    pool: &PoolRecord,
    claim: &Claim,
    mountpoint: Option<PathBuf>,
) -> Result<VolumeRecord> {
    let mut vol = claim.spare.clone();
    vol.name = claim.name.clone();
    vol.mountpoint = mountpoint;
    ctx.store.save_volume(&pool.name, &vol)?;
    crate::crashpoint::hit("claim:recorded");
    ctx.store.remove_volume(&pool.name, &claim.spare.name)?;
    ctx.store.clear_claim(&pool.name)?;
    let _ = std::fs::remove_dir(ctx.store.spare_mountpoint(&pool.name, &claim.spare.name)?);
    Ok(vol)
}

/// Roll forward a claim a crash interrupted (see the module's comment).
/// The pool is locked by the caller.
pub(super) fn recover(ctx: &Ctx, pool: &PoolRecord) -> Result<Option<String>> {
    if !ctx.store.has_claim(&pool.name)? {
        return Ok(None);
    }
    let Some(claim) = ctx.store.load_claim(&pool.name)? else {
        return Ok(None);
    };
    if ctx.pool_device(pool)?.is_some() {
        if let Some(info) = rename_device(ctx, pool, &claim)? {
            // The command that made these mounts died before it reported
            // success: nobody uses them yet.
            let spare_at = ctx.store.spare_mountpoint(&pool.name, &claim.spare.name)?;
            for mp in mount::mountpoints_of(info.devno)? {
                if mp == spare_at || Some(&mp) == claim.mount_at.as_ref() {
                    mount::umount(&mp)?;
                }
            }
        }
    }
    record(ctx, pool, &claim, None)?;
    Ok(Some(format!(
        "pool {}: finished the interrupted claim of spare {} as {} (not mounted)",
        pool.name, claim.spare.name, claim.name
    )))
}
