//! Operations: one function per command, each with its transaction. They
//! combine the kernel layer (`kernel::*`) and the metadata store (`store`).
//!
//! Mutating operations take the pool's lock, then finish or roll back any
//! transaction a crashed command left (see `txn::recover`) before doing
//! anything else.

pub mod check;
mod claim;
mod device;
pub mod image;
mod metadata;
pub mod monitor;

pub mod pool;
pub mod remove;
pub mod repair;
mod session;
pub mod snapshotter;
pub mod spare;
#[cfg(test)]
mod tests;
pub mod txn;
pub mod volume;

use crate::error::{Error, Result};
use crate::kernel::dm::{DevInfo, DeviceMapper, Dm};
use crate::kernel::status::{self, PoolStatus, PoolStatusLine};
use crate::kernel::thin::ThinPool;
use crate::names;
use crate::store::model::{PoolRecord, PoolState, VolumeRecord};
use crate::store::Store;
use std::cell::OnceCell;
use std::path::PathBuf;

/// What every operation works with: the state root and, opened on first
/// use, device-mapper (the kernel's, or a fake in host tests).
pub struct Ctx {
    pub store: Store,
    dm: OnceCell<Box<dyn DeviceMapper>>,
}

impl Ctx {
    pub fn new(store: Store) -> Ctx {
        Ctx {
            store,
            dm: OnceCell::new(),
        }
    }

    /// A context on another device-mapper (a fake, in tests).
    pub fn with_dm(store: Store, dm: Box<dyn DeviceMapper>) -> Ctx {
        Ctx {
            store,
            dm: OnceCell::from(dm),
        }
    }

    pub fn dm(&self) -> Result<&dyn DeviceMapper> {
        if let Some(dm) = self.dm.get() {
            return Ok(dm.as_ref());
        }
        let dm: Box<dyn DeviceMapper> = Box::new(Dm::open()?);
        Ok(self.dm.get_or_init(|| dm).as_ref())
    }

    /// Load a pool that is fully created.
    pub fn ready_pool(&self, pool: &str) -> Result<PoolRecord> {
        let rec = self.store.load_pool(pool)?;
        if rec.state != PoolState::Ready {
            return Err(Error::PoolState(format!(
                "pool '{pool}' is being created (or its creation was interrupted); \
                 run `dmctl pool create {pool}` again or `dmctl pool destroy {pool}`"
            )));
        }
        Ok(rec)
    }

    /// The pool's dm device, if it is active. Refuses a device of that name
    /// that dmctl did not create.
    pub fn pool_device(&self, pool: &PoolRecord) -> Result<Option<DevInfo>> {
        self.dm()?.owned(&names::pool_dm_name(&pool.name))
    }

    /// The pool's dm device; an error if the pool is not active.
    pub fn active_pool_device(&self, pool: &PoolRecord) -> Result<DevInfo> {
        self.pool_device(pool)?.ok_or_else(|| {
            Error::PoolState(format!(
                "pool '{}' is not active (run `dmctl pool activate {}`)",
                pool.name, pool.name
            ))
        })
    }

    /// The kernel's status of an active pool.
    pub fn pool_status(&self, pool: &PoolRecord) -> Result<PoolStatusLine> {
        let name = names::pool_dm_name(&pool.name);
        let lines = self.dm()?.status(&name)?;
        let line = lines
            .first()
            .ok_or_else(|| Error::PoolState(format!("pool '{}' has no table", pool.name)))?;
        status::parse_pool_status(&line.3)
    }

    /// The status of a pool that must be usable (active, not failed).
    pub fn usable_pool_status(&self, pool: &PoolRecord) -> Result<PoolStatus> {
        match self.pool_status(pool)? {
            PoolStatusLine::Active(s) => Ok(s),
            PoolStatusLine::Fail | PoolStatusLine::Error => Err(Error::PoolState(format!(
                "pool '{}' has failed (its metadata may need `dmctl pool repair`)",
                pool.name
            ))),
        }
    }

    /// The pool's dm-thin messages (`kernel::thin`), for a pool whose dm
    /// name the caller holds.
    pub fn thin_pool<'a>(&'a self, dm_name: &'a str) -> Result<ThinPool<'a>> {
        Ok(ThinPool::new(self.dm()?, dm_name))
    }

    pub fn thin_dm_name(&self, pool: &PoolRecord, vol: &VolumeRecord) -> String {
        names::thin_dm_name(&pool.name, &vol.name)
    }

    /// The volume's dm device, if active.
    pub fn thin_device(&self, pool: &PoolRecord, vol: &VolumeRecord) -> Result<Option<DevInfo>> {
        self.dm()?.owned(&self.thin_dm_name(pool, vol))
    }
}

/// Node of an active dm device: `/dev/dm-N` (there may be no udev).
pub fn devnode(info: &DevInfo) -> PathBuf {
    crate::kernel::blockdev::dm_devnode(info.devno.1)
}
