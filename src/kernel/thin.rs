//! dm-thin, in one place: the messages a thin pool takes (`create_thin`,
//! `create_snap`, `delete`, `set_transaction_id`, metadata snapshots) and
//! the pool and thin tables, built from the typed structs of
//! `kernel::status`. Each message is sent exactly once; its error keeps the
//! kernel's errno.

use super::dm::{DeviceMapper, TableLine};
use super::status::{parse_thin_table, PoolTable, ThinTable};
use crate::error::Result;
use crate::units::SECTOR;
use nix::errno::Errno;

/// A live thin pool, by its dm name.
pub struct ThinPool<'a> {
    dm: &'a dyn DeviceMapper,
    name: &'a str,
}

impl<'a> ThinPool<'a> {
    pub fn new(dm: &'a dyn DeviceMapper, dm_name: &'a str) -> ThinPool<'a> {
        ThinPool { dm, name: dm_name }
    }

    fn send(&self, msg: &str) -> Result<()> {
        self.dm.message(self.name, msg).map(|_| ())
    }

    /// `create_thin ID`: EEXIST (in the error's errno) if the id is taken.
    pub fn create_thin(&self, id: u32) -> Result<()> {
        self.send(&format!("create_thin {id}"))
    }

    /// `create_snap ID ORIGIN`. An active origin (its dm name given) must be
    /// suspended around the message (the kernel does not enforce it;
    /// skipping it corrupts snapshots): it is suspended, the message sent
    /// once, and the origin resumed on every path. The message's error
    /// comes first; a failed resume is the error otherwise (and the next
    /// command's recovery resumes it).
    pub fn create_snap(&self, id: u32, origin_id: u32, active_origin: Option<&str>) -> Result<()> {
        let msg = format!("create_snap {id} {origin_id}");
        let Some(origin) = active_origin else {
            return self.send(&msg);
        };
        self.dm.suspend(origin)?;
        crate::crashpoint::hit("snapshot:origin-suspended");
        let sent = self.send(&msg);
        let resumed = self.dm.resume(origin);
        sent.and(resumed)
    }

    /// `delete ID`; an id that is already gone (ENODATA) is fine.
    pub fn delete(&self, id: u32) -> Result<()> {
        match self.send(&format!("delete {id}")) {
            Err(e) if e.errno() == Some(Errno::ENODATA) => Ok(()),
            r => r,
        }
    }

    /// `set_transaction_id OLD NEW`: the kernel's compare-and-swap that
    /// commits a step of dmctl's transaction protocol.
    pub fn set_transaction_id(&self, old: u64, new: u64) -> Result<()> {
        self.send(&format!("set_transaction_id {old} {new}"))
    }

    /// Run `read` while a metadata snapshot of the live pool is held
    /// (`thin_dump --metadata-snap` reads it); the snapshot is released on
    /// every path, and `read`'s error comes first.
    pub fn with_metadata_snap<T>(&self, read: impl FnOnce() -> Result<T>) -> Result<T> {
        self.send("reserve_metadata_snap")?;
        let out = read();
        let released = self.send("release_metadata_snap");
        let out = out?;
        released.map(|()| out)
    }
}

/// The table line of a thin pool of `data_bytes`.
pub fn pool_table(table: &PoolTable, data_bytes: u64) -> Vec<TableLine> {
    vec![(
        0,
        data_bytes / SECTOR,
        "thin-pool".into(),
        table.to_params(),
    )]
}

/// The table line of thin device `device_id` of `size` bytes in the pool
/// whose device is `pool_devno`.
pub fn thin_table(pool_devno: (u32, u32), device_id: u32, size: u64) -> Vec<TableLine> {
    let t = ThinTable {
        pool_dev: pool_devno,
        device_id,
        external_origin: None,
    };
    vec![(0, size / SECTOR, "thin".into(), t.to_params())]
}

/// The thin id and length in bytes of a live thin device's table, if it
/// is one.
pub fn thin_id_of(dm: &dyn DeviceMapper, dm_name: &str) -> Result<Option<(u32, u64)>> {
    let Some(line) = dm.table(dm_name)?.into_iter().next() else {
        return Ok(None);
    };
    if line.2 != "thin" {
        return Ok(None);
    }
    Ok(Some((
        parse_thin_table(&line.3)?.device_id,
        line.1 * SECTOR,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::FakeDm;

    #[test]
    fn create_snap_of_an_active_origin_resumes_it_when_the_message_fails() {
        let dm = FakeDm::default();
        dm.kernel().add_pool("pool", "DMCTL-x");
        dm.kernel().add_device("origin", "DMCTL-y", vec![]);
        dm.kernel()
            .pools
            .get_mut("pool")
            .unwrap()
            .thin_ids
            .insert(0);
        dm.kernel()
            .fail_next("message pool: create_snap", Errno::ENOSPC);
        let err = ThinPool::new(&dm, "pool")
            .create_snap(1, 0, Some("origin"))
            .unwrap_err();
        assert_eq!(err.errno(), Some(Errno::ENOSPC));
        let k = dm.kernel();
        assert!(!k.devices["origin"].suspended);
        assert_eq!(k.calls_of("message").len(), 1, "{:?}", k.calls);
    }

    #[test]
    fn metadata_snapshot_is_released_when_the_read_fails() {
        let dm = FakeDm::default();
        dm.kernel().add_pool("pool", "DMCTL-x");
        let r: Result<()> = ThinPool::new(&dm, "pool")
            .with_metadata_snap(|| Err(crate::error::Error::Invalid("thin_dump failed".into())));
        assert!(r.is_err());
        assert_eq!(
            dm.kernel().calls_of("message"),
            [
                "message pool: reserve_metadata_snap",
                "message pool: release_metadata_snap"
            ]
        );
    }

    #[test]
    fn tables_are_the_kernel_syntax() {
        assert_eq!(
            thin_table((253, 2), 7, 1 << 30),
            [(0, 2097152, "thin".to_string(), "253:2 7".to_string())]
        );
        let t = PoolTable {
            meta_dev: (7, 1),
            data_dev: (7, 0),
            block_sectors: 128,
            low_water_blocks: 512,
            features: vec!["skip_block_zeroing".into()],
        };
        assert_eq!(
            pool_table(&t, 1 << 30)[0].3,
            "7:1 7:0 128 512 1 skip_block_zeroing"
        );
    }
}
