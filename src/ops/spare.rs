//! Warm spares: snapshots of an image's top layer made, activated and
//! mounted ahead of time (`dmctl image warm`), so that `image provision`
//! hands one out instead of making one. Handing out is a dm rename and a
//! mount move; making one is a pool metadata commit (two, with the
//! transaction id), a dm device and an ext4 mount, most of a cold
//! provision's time (docs/benchmarks.md).
//!
//! A spare is an ordinary volume named `spare.KEY.N` (KEY from the layer's
//! volume name; the prefix is reserved, see `names::check_not_reserved`),
//! mounted at `pools/POOL/spares/NAME`. `pools/POOL/spares` is a private
//! mount point of its own (Docker makes its home one for the same reason):
//! the kernel refuses to `MS_MOVE` a mount whose parent mount is shared,
//! which `/` is under systemd.
//!
//! A claim renames a spare to the user's name:
//! 1. `claim.json`: the spare's record, the new name, the mount point.
//! 2. DM_DEV_RENAME `dmctl+POOL+spare.KEY.N` -> `dmctl+POOL+NAME`. The dm
//!    uuid names the pool and thin id, not the volume, so it stays.
//! 3. `MS_MOVE` of its mount to the user's directory (or its umount, when
//!    not asked to mount).
//! 4. `NAME.json` saved, the spare's record removed, `claim.json` removed.
//!
//! The kernel's thin metadata does not change, so there is no pool
//! transaction. A failure in step 3 is undone on the spot (the spare stays
//! a spare). A crash leaves `claim.json`, and `recover`, run by every
//! command that locks the pool, rolls it forward: the rename is finished,
//! a mount the claim made is taken down, and the volume is recorded under
//! its new name, unmounted. `image provision` asked again then mounts it,
//! as after a crash of a cold provision.

use super::session::{self, Session};
use super::volume::{self, MountAt, VolumeReport};
use super::Ctx;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::kernel::mount;
use crate::names::{self, VolumeRef, SPARE_PREFIX};
use crate::store::model::{now, Claim, PoolRecord};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Most spares one image may keep (each is an active dm device and a mount).
pub const MAX_SPARES: usize = 1000;

/// The part of a layer's volume name that names its spares.
fn layer_key(layer_volume: &str) -> &str {
    layer_volume.strip_prefix("layer-").unwrap_or(layer_volume)
}

/// The name of `layer_volume`'s spare number `n`.
pub fn spare_name(layer_volume: &str, n: u32) -> String {
    format!("{SPARE_PREFIX}{}.{n}", layer_key(layer_volume))
}

/// The number of a spare of `layer_volume`, if `name` is one.
fn spare_number(layer_volume: &str, name: &str) -> Option<u32> {
    name.strip_prefix(SPARE_PREFIX)?
        .strip_prefix(layer_key(layer_volume))?
        .strip_prefix('.')?
        .parse()
        .ok()
}

fn spares_dir(ctx: &Ctx, pool: &str) -> Result<PathBuf> {
    ctx.store.spares_dir(pool)
}

/// Where a spare is mounted while it waits.
fn spare_mountpoint(ctx: &Ctx, pool: &str, spare: &str) -> Result<PathBuf> {
    ctx.store.spare_mountpoint(pool, spare)
}

/// The spares of `layer_volume`, by number, from the names of the volume
/// files alone (no record is read).
fn spares_of(ctx: &Ctx, pool: &str, layer_volume: &str) -> Result<Vec<(u32, String)>> {
    let mut out: Vec<(u32, String)> = ctx
        .store
        .volume_names(pool)?
        .into_iter()
        .filter_map(|n| spare_number(layer_volume, &n).map(|k| (k, n)))
        .collect();
    out.sort();
    Ok(out)
}

/// How many spares `layer_volume` has.
pub fn count(ctx: &Ctx, pool: &str, layer_volume: &str) -> Result<usize> {
    Ok(spares_of(ctx, pool, layer_volume)?.len())
}

#[derive(Debug, Clone, Serialize)]
pub struct WarmReport {
    pub reference: String,
    /// The layer volume the spares are snapshots of.
    pub layer: String,
    /// Size of the spares (a provision with another `--size` gets none).
    pub size: u64,
    /// The spares of that size now, ready.
    pub spares: Vec<String>,
    pub made: usize,
    /// Spares that were there but not mounted (after a reboot or a
    /// `pool deactivate`), mounted again.
    pub remounted: usize,
    pub removed: usize,
}

/// `dmctl image warm POOL REF --spares N [--size SIZE]`: keep exactly `want`
/// spares of `size` (default: the layer's) for the image whose top layer is
/// `layer_volume`: missing ones are made, surplus ones removed, waiting
/// ones that lost their mount are mounted again. Spares of other sizes are
/// left alone.
pub fn warm(
    ctx: &Ctx,
    pool_name: &str,
    reference: &str,
    layer_volume: &str,
    want: usize,
    size: Option<u64>,
) -> Result<WarmReport> {
    if want > MAX_SPARES {
        return Err(Error::Invalid(format!(
            "at most {MAX_SPARES} spares per image (asked for {want})"
        )));
    }
    let origin = VolumeRef::new(pool_name, layer_volume)?;
    let Session {
        lock: _lock,
        mut pool,
        device: pool_dev,
    } = session::open(ctx, pool_name)?;
    let layer = ctx.store.volume(pool_name, layer_volume)?;
    let size = size.unwrap_or(layer.size);
    let dir = spares_dir(ctx, pool_name)?;
    fsutil::create_private_dir(&dir)?;
    mount::make_private_mountpoint(&dir)?;
    let mut report = WarmReport {
        reference: reference.to_string(),
        layer: layer_volume.to_string(),
        size,
        spares: vec![],
        made: 0,
        remounted: 0,
        removed: 0,
    };
    let mut next = 0;
    for (n, name) in spares_of(ctx, pool_name, layer_volume)? {
        next = next.max(n + 1);
        let mut rec = ctx.store.volume(pool_name, &name)?;
        if rec.size != size {
            continue;
        }
        if report.spares.len() >= want {
            remove_spare(ctx, &mut pool, &name)?;
            report.removed += 1;
            continue;
        }
        let info = super::device::activate_device(ctx, &pool, &rec, false)?;
        let at = spare_mountpoint(ctx, pool_name, &name)?;
        if !mount::mountpoints_of(info.devno)?.contains(&at) {
            fsutil::create_private_dir(&at)?;
            volume::mount_locked(ctx, &pool, &mut rec, &info, &MountAt::fresh(&at))?;
            report.remounted += 1;
        }
        report.spares.push(name);
    }
    while report.spares.len() < want {
        let name = spare_name(layer_volume, next);
        next += 1;
        let new = VolumeRef::new(pool_name, &name)?;
        let (mut rec, info) =
            volume::snapshot_locked(ctx, &mut pool, &pool_dev, &origin, &new, Some(size), true)?;
        crate::crashpoint::hit("warm:after-snapshot");
        let info = info.ok_or_else(|| {
            Error::Drift(format!("spare '{new}' was activated but has no device"))
        })?;
        let at = spare_mountpoint(ctx, pool_name, &name)?;
        fsutil::create_private_dir(&at)?;
        volume::mount_locked(ctx, &pool, &mut rec, &info, &MountAt::fresh(&at))?;
        report.made += 1;
        report.spares.push(name);
    }
    Ok(report)
}

/// Hand out a spare of `origin` of `size` (default: the origin's) as `new`,
/// mounted at `mount_at` if given. `None`: there is no such spare, or `new`
/// exists (after the recovery of a crashed claim): the caller goes on as
/// without spares.
pub fn claim(
    ctx: &Ctx,
    origin: &VolumeRef,
    new: &VolumeRef,
    size: Option<u64>,
    mount_at: Option<&Path>,
) -> Result<Option<VolumeReport>> {
    let pool_name = origin.pool.as_str();
    // Cheap first: no spare and no claim to recover, no lock taken.
    let spares = spares_of(ctx, pool_name, &origin.name)?;
    if spares.is_empty() && !ctx.store.has_claim(pool_name)? {
        return Ok(None);
    }
    let Session {
        lock: _lock, pool, ..
    } = session::open(ctx, pool_name)?;
    if ctx.store.load_volume(pool_name, &new.name)?.is_some() {
        return Ok(None);
    }
    volume::check_new_name(ctx, &pool, &new.name)?;
    let target = match mount_at {
        Some(dir) => Some(volume::mount_dir(dir)?),
        None => None,
    };
    let origin_rec = ctx.store.volume(pool_name, &origin.name)?;
    let size = size.unwrap_or(origin_rec.size);
    for (_, name) in spares {
        let Some(spare) = ctx.store.load_volume(pool_name, &name)? else {
            continue;
        };
        if !spare.parent_link().is_some_and(|p| p.is(&origin_rec))
            || !spare.initialized
            || spare.size != size
        {
            continue;
        }
        let claim = Claim {
            spare,
            name: new.name.clone(),
            mount_at: target,
            started: now(),
        };
        ctx.store.save_claim(pool_name, &claim)?;
        crate::crashpoint::hit("claim:journaled");
        let (vol, info) = super::claim::hand_out(ctx, &pool, &claim)?;
        let info =
            info.ok_or_else(|| Error::Drift(format!("claimed volume '{new}' has no device")))?;
        let mountpoint = vol.mountpoint.clone();
        return volume::report_fresh(ctx, &pool, vol, &info, mountpoint).map(Some);
    }
    Ok(None)
}

/// Take every spare's mount down, and the private mount of the spares'
/// directory: before `pool deactivate` or `pool destroy`. The spares stay;
/// `image warm` mounts them again. The pool is locked by the caller.
pub fn unmount_all(ctx: &Ctx, pool: &PoolRecord) -> Result<()> {
    let dir = spares_dir(ctx, &pool.name)?;
    if !dir.exists() {
        return Ok(());
    }
    for name in ctx.store.volume_names(&pool.name)? {
        if !names::is_spare_name(&name) {
            continue;
        }
        mount::umount_if_mounted(&spare_mountpoint(ctx, &pool.name, &name)?)?;
        if let Some(mut rec) = ctx.store.load_volume(&pool.name, &name)? {
            if rec.mountpoint.take().is_some() {
                ctx.store.save_volume(&pool.name, &rec)?;
            }
        }
    }
    mount::umount_if_mounted(&dir)
}

/// Remove one spare (mounted, as it waits) and its mount point; the pool
/// is locked by the caller.
fn remove_spare(ctx: &Ctx, pool: &mut PoolRecord, name: &str) -> Result<()> {
    let v = VolumeRef::new(&pool.name, name)?;
    volume::remove_locked(ctx, pool, &v, true)?;
    let _ = std::fs::remove_dir(spare_mountpoint(ctx, &v.pool, name)?);
    Ok(())
}

/// Remove every spare of `layer_volume` (`image rm`, `image warm
/// --spares 0` of every size). Returns how many went.
pub fn remove_all(ctx: &Ctx, pool_name: &str, layer_volume: &str) -> Result<usize> {
    let spares = spares_of(ctx, pool_name, layer_volume)?;
    if spares.is_empty() {
        return Ok(0);
    }
    let Session {
        lock: _lock,
        mut pool,
        ..
    } = session::open(ctx, pool_name)?;
    for (_, name) in &spares {
        remove_spare(ctx, &mut pool, name)?;
    }
    Ok(spares.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spare_names_round_trip_and_do_not_match_other_layers() {
        let layer = "layer-0123456789abcdef0123456789abcdef";
        let name = spare_name(layer, 7);
        assert_eq!(name, "spare.0123456789abcdef0123456789abcdef.7");
        assert!(names::is_valid_name(&name));
        assert!(names::is_spare_name(&name));
        assert_eq!(spare_number(layer, &name), Some(7));
        assert_eq!(spare_number("layer-0123", &name), None);
        assert_eq!(spare_number(layer, "job"), None);
        assert_eq!(
            spare_number(layer, "spare.0123456789abcdef0123456789abcdef.x"),
            None
        );
    }

    #[test]
    fn user_names_with_the_spare_prefix_are_refused() {
        assert!(names::check_not_reserved("spare.x").is_err());
        assert!(names::check_not_reserved("job").is_ok());
        assert!(names::check_not_reserved("spares").is_ok());
    }
}
