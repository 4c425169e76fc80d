//! A pool session: what every mutating command (or server request) does
//! first, once: take the pool's lock, load its record, require its dm
//! device, and finish what a crashed command left open (a transaction,
//! `txn::recover`; a claim of a warm spare, `claim::recover`). Building
//! blocks take the session's parts; the lock is held while it lives.

use super::{claim, txn, Ctx};
use crate::error::Result;
use crate::fsutil::LockFile;
use crate::kernel::dm::DevInfo;
use crate::store::model::PoolRecord;

pub(super) struct Session {
    /// Held for the session's life.
    pub lock: LockFile,
    pub pool: PoolRecord,
    /// The pool's dm device (its number goes into thin tables).
    pub device: DevInfo,
}

/// Open a session on an active, ready pool. What recovery did is said
/// through `trace::note`.
pub(super) fn open(ctx: &Ctx, pool: &str) -> Result<Session> {
    let lock = ctx.store.lock_pool(pool)?;
    let mut rec = ctx.ready_pool(pool)?;
    let device = ctx.active_pool_device(&rec)?;
    if let Some(note) = txn::recover(ctx, &mut rec)? {
        crate::trace::note(&note);
    }
    if let Some(note) = claim::recover(ctx, &rec)? {
        crate::trace::note(&note);
    }
    Ok(Session {
        lock,
        pool: rec,
        device,
    })
}
