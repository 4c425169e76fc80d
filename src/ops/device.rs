//! A volume's dm device and its filesystem mount, as building blocks: the
//! kernel calls alone, nothing recorded (the caller's transaction or
//! journal records what it did).

use super::{devnode, Ctx};
use crate::error::Result;
use crate::kernel::dm::DevInfo;
use crate::kernel::thin::thin_table;
use crate::kernel::{blockdev, mount};
use crate::names;
use crate::store::model::{Filesystem, PoolRecord, VolumeRecord};
use std::path::Path;

/// Create the volume's dm device (no-op if it exists).
pub(crate) fn activate_device(
    ctx: &Ctx,
    pool: &PoolRecord,
    vol: &VolumeRecord,
    read_only: bool,
) -> Result<DevInfo> {
    if let Some(info) = ctx.thin_device(pool, vol)? {
        return Ok(info);
    }
    let pool_dev = ctx.active_pool_device(pool)?;
    create_device(ctx, pool, pool_dev.devno, vol, read_only)
}

/// Create the volume's dm device on the pool `pool_devno`, looking nothing
/// up first. Called directly for a thin id that this transaction has just
/// created: no device of its name can be ours yet (the name was checked
/// under the pool lock), and a foreign device that took the name since
/// makes the create fail, and the transaction is undone.
pub(super) fn create_device(
    ctx: &Ctx,
    pool: &PoolRecord,
    pool_devno: (u32, u32),
    vol: &VolumeRecord,
    read_only: bool,
) -> Result<DevInfo> {
    let info = ctx.dm()?.create(
        &ctx.thin_dm_name(pool, vol),
        &names::thin_dm_uuid(&pool.uuid, vol.device_id),
        &thin_table(pool_devno, vol.device_id, vol.size),
        read_only,
    )?;
    blockdev::wait_for_node(&devnode(&info), info.devno)?;
    Ok(info)
}

/// Mount a volume's device: the kernel call alone, nothing recorded.
pub(super) fn mount_device(
    fs: Filesystem,
    info: &DevInfo,
    dir: &Path,
    read_only: bool,
    options: &str,
) -> Result<()> {
    let mut opts = options.to_string();
    if fs == Filesystem::Xfs {
        // Snapshots share their origin's XFS UUID.
        opts = if opts.is_empty() {
            "nouuid".into()
        } else {
            format!("{opts},nouuid")
        };
    }
    mount::mount(&devnode(info), dir, fs.as_str(), read_only, &opts)
}
