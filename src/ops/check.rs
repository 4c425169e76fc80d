//! `dmctl check POOL [--repair]`: compare dmctl's JSON metadata with the
//! kernel's pool metadata (read with `thin_dump` from a metadata snapshot of
//! the live pool) and report drift; with repair, fix what can be fixed
//! without losing data that dmctl knows about.

use super::metadata::read_kernel_metadata;
use super::{txn, Ctx};
use crate::error::Result;
use crate::names;
use crate::store::model::PoolRecord;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, Default)]
pub struct CheckReport {
    pub pool: String,
    pub kernel_transaction_id: u64,
    pub recorded_transaction_id: u64,
    /// The transaction a crashed command left open, if any.
    pub open_transaction: Option<u64>,
    /// Thin ids in the kernel that no volume records.
    pub orphan_ids: Vec<u32>,
    /// Volumes whose thin id the kernel does not have.
    pub missing_ids: Vec<String>,
    /// Thin ids recorded by more than one volume.
    pub duplicate_ids: Vec<u32>,
    /// Volume files that cannot be read.
    pub corrupt_files: Vec<String>,
    /// Images with a missing layer: `IMAGE: layer N of M (VOLUME) is missing`.
    pub broken_images: Vec<String>,
    /// containerd snapshots (`dmctl serve`) whose volume is missing.
    pub broken_snapshots: Vec<String>,
    /// What --repair did.
    pub repaired: Vec<String>,
    pub clean: bool,
}

fn examine(ctx: &Ctx, pool: &PoolRecord) -> Result<CheckReport> {
    let dump = read_kernel_metadata(ctx, pool)?;
    let mut r = CheckReport {
        pool: pool.name.clone(),
        kernel_transaction_id: dump.transaction,
        recorded_transaction_id: pool.transaction_id,
        open_transaction: ctx.store.load_txn(&pool.name)?.map(|t| t.transaction_id),
        ..Default::default()
    };
    let mut by_id: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for name in ctx.store.volume_names(&pool.name)? {
        match ctx.store.volume(&pool.name, &name) {
            Ok(v) => by_id.entry(v.device_id).or_default().push(v.name),
            Err(e) => r.corrupt_files.push(e.to_string()),
        }
    }
    let kernel_ids: Vec<u32> = dump.devices.iter().map(|d| d.dev_id).collect();
    r.broken_images = super::image::broken_images(ctx, &pool.name)?
        .into_iter()
        .map(|(img, what)| format!("{}: {what}", img.reference))
        .collect();
    r.broken_snapshots = super::snapshotter::broken(ctx, &pool.name)?;
    r.orphan_ids = kernel_ids
        .iter()
        .copied()
        .filter(|id| !by_id.contains_key(id))
        .collect();
    for (id, vols) in &by_id {
        if !kernel_ids.contains(id) {
            r.missing_ids.extend(vols.iter().cloned());
        }
        if vols.len() > 1 {
            r.duplicate_ids.push(*id);
        }
    }
    r.clean = r.orphan_ids.is_empty()
        && r.missing_ids.is_empty()
        && r.duplicate_ids.is_empty()
        && r.corrupt_files.is_empty()
        && r.broken_images.is_empty()
        && r.broken_snapshots.is_empty()
        && r.open_transaction.is_none()
        && r.kernel_transaction_id == r.recorded_transaction_id;
    Ok(r)
}

/// Whether a record set aside by an earlier `check --repair` is still
/// without a rebuilt record (`NAME.json.corrupt-TIME`, no `NAME.json`).
fn has_set_aside_records(ctx: &Ctx, pool: &PoolRecord) -> Result<bool> {
    for (name, _) in ctx.store.set_aside_records(&pool.name)? {
        if ctx
            .store
            .load_volume(&pool.name, &name)
            .ok()
            .flatten()
            .is_none()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `dmctl check POOL [--repair]`.
pub fn check(ctx: &Ctx, pool: &str, repair: bool) -> Result<CheckReport> {
    if !repair {
        let rec = ctx.ready_pool(pool)?;
        ctx.active_pool_device(&rec)?;
        return examine(ctx, &rec);
    }
    // The image commands' lock first, as they take it (then the pool's).
    let _images = super::image::lock_images(ctx, pool)?;
    let _lock = ctx.store.lock_pool(pool)?;
    let mut rec = ctx.ready_pool(pool)?;
    ctx.active_pool_device(&rec)?;
    let mut repaired = vec![];
    repaired.extend(txn::recover(ctx, &mut rec)?);
    let found = examine(ctx, &rec)?;
    // Unreadable records first: one may own an orphan id, whose data is
    // then the user's, not garbage.
    let mut orphans = found.orphan_ids.clone();
    if !found.corrupt_files.is_empty() || has_set_aside_records(ctx, &rec)? {
        let dump = read_kernel_metadata(ctx, &rec)?;
        let rebuilt = super::repair::rebuild_records(ctx, &mut rec, &dump, &orphans)?;
        repaired.extend(rebuilt.notes);
        orphans.retain(|id| !rebuilt.claimed.contains(id));
        if !rebuilt.unpaired.is_empty() {
            for id in &orphans {
                repaired.push(format!(
                    "kept orphan thin id {id}: it may hold the data of a record set aside \
                     ({}); remove that file to let check --repair delete the id",
                    rebuilt
                        .unpaired
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            orphans.clear();
        }
    }
    for id in &orphans {
        // A leftover dm device of that id (ours by its uuid) goes first.
        let uuid = names::thin_dm_uuid(&rec.uuid, *id);
        for dev in ctx.dm()?.list_owned()? {
            if dev.uuid.as_deref() == Some(uuid.as_str()) {
                ctx.dm()?.remove(&dev.name, false)?;
            }
        }
        txn::delete_thin_id(ctx, &rec, *id)?;
        rec.next_device_id = rec.next_device_id.max(txn::next_id(*id));
        repaired.push(format!("deleted orphan thin id {id}"));
    }
    for name in &found.missing_ids {
        // The kernel has no blocks for it: the record describes nothing.
        if let Ok(v) = ctx.store.volume(&rec.name, name) {
            txn::remove_thin_device(ctx, &rec, &v)?;
        }
        ctx.store.remove_volume(&rec.name, name)?;
        repaired.push(format!(
            "dropped the record of {name}, whose thin id the pool does not have"
        ));
    }
    for (img, what) in super::image::broken_images(ctx, &rec.name)? {
        super::image::forget_broken_image(ctx, &rec.name, &img)?;
        repaired.push(format!(
            "dropped image {} ({what}; import it again to get it back)",
            img.reference
        ));
    }
    if !found.broken_snapshots.is_empty() {
        // The server keeps the table under its own lock while it runs.
        match ctx.store.lock_server(&rec.name) {
            Ok(_server) => {
                for key in super::snapshotter::forget_broken(ctx, &rec.name)? {
                    repaired.push(format!(
                        "dropped containerd snapshot {key:?}, whose volume is missing"
                    ));
                }
            }
            Err(_) => repaired.push(
                "containerd snapshots with a missing volume kept: `dmctl serve` is running \
                 on the pool (stop it, then check --repair)"
                    .into(),
            ),
        }
    }
    if found.kernel_transaction_id != rec.transaction_id {
        repaired.push(format!(
            "recorded transaction id {} -> {} (the kernel's)",
            rec.transaction_id, found.kernel_transaction_id
        ));
        rec.transaction_id = found.kernel_transaction_id;
    }
    ctx.store.save_pool(&rec)?;
    let mut after = examine(ctx, &rec)?;
    after.repaired = repaired;
    Ok(after)
}
