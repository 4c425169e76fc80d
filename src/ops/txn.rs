//! Pool transactions, tied to the kernel's transaction id.
//!
//! Protocol (after Docker's devicemapper driver and LVM):
//! 1. `begin`: write `txn.json` with the intent and the id it will commit
//!    (pool id + 1).
//! 2. The pool message (`create_thin`, `create_snap`, `delete`) and any
//!    further steps (activation, mkfs, volume JSON).
//! 3. `commit`: `set_transaction_id OLD NEW` in the kernel (compare and swap),
//!    then `pool.json`, then `txn.json` removed.
//!
//! A crash anywhere leaves `txn.json`; `recover` compares the kernel's id
//! with it. Kernel id == NEW: the commit happened, finish the JSON side.
//! Kernel id == OLD: it did not; a create is rolled back (device removed,
//! thin id deleted, volume JSON dropped), a delete is finished. Every step
//! is idempotent: an id may already exist or already be gone. A failure in
//! the middle of a command is undone by the same `recover`.

use super::Ctx;
use crate::error::{Error, Result};
use crate::names;
use crate::store::model::{now, PoolRecord, Transaction, TxnOp, VolumeRecord};

/// Record the intent of a kernel-changing step.
pub fn begin(ctx: &Ctx, pool: &PoolRecord, op: TxnOp) -> Result<Transaction> {
    let txn = Transaction {
        transaction_id: pool.transaction_id + 1,
        op,
        started: now(),
    };
    ctx.store.save_txn(&pool.name, &txn)?;
    Ok(txn)
}

/// Commit: the kernel's transaction id moves, then the JSON follows.
pub fn commit(ctx: &Ctx, pool: &mut PoolRecord, txn: &Transaction) -> Result<()> {
    set_transaction_id(ctx, pool, txn)?;
    finish(ctx, pool, txn, false)
}

/// `commit` of a create whose command has already saved the complete,
/// initialized volume record: the JSON side does not read it back.
pub fn commit_saved(ctx: &Ctx, pool: &mut PoolRecord, txn: &Transaction) -> Result<()> {
    set_transaction_id(ctx, pool, txn)?;
    finish(ctx, pool, txn, true)
}

fn set_transaction_id(ctx: &Ctx, pool: &PoolRecord, txn: &Transaction) -> Result<()> {
    let dm_name = names::pool_dm_name(&pool.name);
    ctx.thin_pool(&dm_name)?
        .set_transaction_id(txn.transaction_id - 1, txn.transaction_id)?;
    crate::crashpoint::hit("txn:after-set-transaction-id");
    Ok(())
}

/// The JSON side of a committed transaction (idempotent). `record_saved`:
/// the caller wrote the created volume's final record itself.
fn finish(ctx: &Ctx, pool: &mut PoolRecord, txn: &Transaction, record_saved: bool) -> Result<()> {
    match &txn.op {
        TxnOp::Create { volume } => {
            // The command normally wrote the complete record already; after
            // a crash it may be missing or not yet marked initialized.
            if !record_saved {
                match ctx.store.load_volume(&pool.name, &volume.name)? {
                    Some(current) if current.initialized => {}
                    current => {
                        let mut v = current.unwrap_or_else(|| volume.clone());
                        v.initialized = true;
                        ctx.store.save_volume(&pool.name, &v)?;
                    }
                }
            }
            pool.next_device_id = pool.next_device_id.max(next_id(volume.device_id));
        }
        TxnOp::Delete { volume } => {
            ctx.store.remove_volume(&pool.name, &volume.name)?;
        }
    }
    pool.transaction_id = txn.transaction_id;
    ctx.store.save_pool(pool)?;
    crate::crashpoint::hit("txn:after-pool-save");
    ctx.store.clear_txn(&pool.name)
}

/// The id after `id`, wrapping inside the kernel's 24 bits.
pub fn next_id(id: u32) -> u32 {
    (id + 1) & crate::kernel::status::MAX_THIN_DEV_ID
}

/// Delete a thin id in the pool; an id that is already gone is fine. The
/// message is sent once, whatever the answer.
pub fn delete_thin_id(ctx: &Ctx, pool: &PoolRecord, device_id: u32) -> Result<()> {
    let dm_name = names::pool_dm_name(&pool.name);
    ctx.thin_pool(&dm_name)?.delete(device_id)
}

/// Remove a volume's dm device if present (it must be unmounted).
pub fn remove_thin_device(ctx: &Ctx, pool: &PoolRecord, vol: &VolumeRecord) -> Result<()> {
    if ctx.thin_device(pool, vol)?.is_some() {
        ctx.dm()?.remove(&ctx.thin_dm_name(pool, vol), false)?;
    }
    Ok(())
}

/// Finish or roll back the pool's open transaction, if any. Returns what it
/// did, for the caller to report.
pub fn recover(ctx: &Ctx, pool: &mut PoolRecord) -> Result<Option<String>> {
    let Some(txn) = ctx.store.load_txn(&pool.name)? else {
        return Ok(None);
    };
    let status = ctx.usable_pool_status(pool)?;
    let kernel = status.transaction_id;
    let (old, new) = (txn.transaction_id - 1, txn.transaction_id);
    let what = match &txn.op {
        TxnOp::Create { volume } => format!("create of {}", volume.name),
        TxnOp::Delete { volume } => format!("removal of {}", volume.name),
    };
    if let TxnOp::Create { volume } = &txn.op {
        resume_origin(ctx, pool, volume)?;
    }
    if kernel == new {
        finish(ctx, pool, &txn, false)?;
        return Ok(Some(format!(
            "pool {}: finished the interrupted {what} (transaction {new})",
            pool.name
        )));
    }
    if kernel != old {
        return Err(Error::Drift(format!(
            "pool {}: kernel transaction id is {kernel}, while expected {old} or {new} \
             for the open {what}; run `dmctl check {} --repair`",
            pool.name, pool.name
        )));
    }
    match &txn.op {
        TxnOp::Create { volume } => {
            resume_origin(ctx, pool, volume)?;
            // Not committed: undo every step the create may have taken.
            if let Some(mp) = mounted_at(ctx, pool, volume)? {
                crate::kernel::mount::umount(&mp)?;
            }
            remove_thin_device(ctx, pool, volume)?;
            delete_thin_id(ctx, pool, volume.device_id)?;
            ctx.store.remove_volume(&pool.name, &volume.name)?;
            // The id may have reached the kernel: never hand it out again.
            pool.next_device_id = pool.next_device_id.max(next_id(volume.device_id));
            ctx.store.save_pool(pool)?;
            ctx.store.clear_txn(&pool.name)?;
            Ok(Some(format!(
                "pool {}: rolled back the interrupted {what}",
                pool.name
            )))
        }
        TxnOp::Delete { volume } => {
            if let Some(mp) = mounted_at(ctx, pool, volume)? {
                crate::kernel::mount::umount(&mp)?;
            }
            remove_thin_device(ctx, pool, volume)?;
            delete_thin_id(ctx, pool, volume.device_id)?;
            commit(ctx, pool, &txn)?;
            Ok(Some(format!(
                "pool {}: finished the interrupted {what}",
                pool.name
            )))
        }
    }
}

/// A snapshot's origin is suspended around `create_snap`; a command killed
/// in between leaves it suspended, its I/O queued. Resume it.
fn resume_origin(ctx: &Ctx, pool: &PoolRecord, snap: &VolumeRecord) -> Result<()> {
    let Some(origin) = &snap.parent else {
        return Ok(());
    };
    let name = names::thin_dm_name(&pool.name, origin);
    if let Some(info) = ctx.dm()?.owned(&name)? {
        if info.suspended {
            ctx.dm()?.resume(&name)?;
        }
    }
    Ok(())
}

/// Where an active volume is mounted, if it is.
fn mounted_at(
    ctx: &Ctx,
    pool: &PoolRecord,
    vol: &VolumeRecord,
) -> Result<Option<std::path::PathBuf>> {
    match ctx.thin_device(pool, vol)? {
        Some(info) => Ok(crate::kernel::mount::mountpoints_of(info.devno)?
            .into_iter()
            .next()),
        None => Ok(None),
    }
}
