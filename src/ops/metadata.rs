//! The kernel's view of a live pool's metadata, for `check` and `repair`:
//! the device that holds it, and `thin_dump` of a metadata snapshot (held
//! only while it is read, see `kernel::thin`).

use super::Ctx;
use crate::error::{Error, Result};
use crate::kernel::loopdev;
use crate::names;
use crate::store::model::{Backing, PoolRecord};
use crate::thinmeta::{parse_thin_dump, ThinDump};
use crate::tools::{self, DumpOf};
use std::path::PathBuf;

/// The device holding the pool's metadata.
pub(crate) fn meta_device(pool: &PoolRecord) -> Result<PathBuf> {
    match &pool.meta {
        Backing::Device { path } => Ok(path.clone()),
        Backing::File { path } => loopdev::find_by_backing_file(path)?
            .map(|l| l.path)
            .ok_or_else(|| {
                Error::PoolState(format!(
                    "pool '{}': metadata file has no loop device",
                    pool.name
                ))
            }),
    }
}

/// `thin_dump` of a metadata snapshot of the live pool.
fn dump_snapshot(ctx: &Ctx, pool: &PoolRecord, what: DumpOf) -> Result<String> {
    let meta = meta_device(pool)?;
    let dm_name = names::pool_dm_name(&pool.name);
    ctx.thin_pool(&dm_name)?
        .with_metadata_snap(|| tools::thin_dump_snapshot(&meta, what))
}

/// Every thin device of the live pool and its transaction id (no mappings).
pub fn read_kernel_metadata(ctx: &Ctx, pool: &PoolRecord) -> Result<ThinDump> {
    parse_thin_dump(&dump_snapshot(ctx, pool, DumpOf::Devices)?)
}

/// `thin_dump` XML of one thin device, with its mappings.
pub fn dump_device(ctx: &Ctx, pool: &PoolRecord, id: u32) -> Result<String> {
    dump_snapshot(ctx, pool, DumpOf::Device(id))
}
