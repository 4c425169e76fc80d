//! Device-mapper: the [`DeviceMapper`] trait, the operations dmctl uses
//! (create/load/resume/suspend/remove/rename devices, send messages, read
//! tables and status), and [`Dm`], the kernel's, through the
//! `devicemapper` crate's ioctl interface. Operations reach the kernel only
//! through the trait, so their logic (transactions, recovery, undo paths)
//! runs on the host against a fake (`kernel::fake`).
//!
//! One rule of ownership: dmctl never touches a dm device whose UUID does
//! not carry dmctl's prefix (see [`crate::names::DM_UUID_PREFIX`]).

use crate::error::{Error, Result};
use crate::names::is_dmctl_uuid;
use devicemapper::{errors, DevId, DmError, DmFlags, DmName, DmOptions, DmUuid, DM};
use nix::errno::Errno;

/// One target line: start sector, length in sectors, target type, params.
pub type TableLine = (u64, u64, String, String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevInfo {
    pub name: String,
    pub uuid: Option<String>,
    pub devno: (u32, u32),
    pub open_count: i32,
    pub suspended: bool,
    pub read_only: bool,
    pub has_live_table: bool,
}

/// What dmctl asks of device-mapper. Errors keep the kernel's errno
/// ([`Error::errno`]): EBUSY is `Error::Busy`, a name taken is
/// `Error::Exists`, a device that is not there is `Ok(None)`/`Ok(())` where
/// the method says so.
pub trait DeviceMapper {
    /// Info on a device by name; None if there is no such device.
    fn info(&self, name: &str) -> Result<Option<DevInfo>>;
    /// Create a device, load its table and resume it. On any failure the
    /// half-made device is removed again.
    fn create(
        &self,
        name: &str,
        uuid: &str,
        table: &[TableLine],
        read_only: bool,
    ) -> Result<DevInfo>;
    /// Remove a device (gone already is fine); `deferred` asks the kernel to
    /// remove it when its last user closes it.
    fn remove(&self, name: &str, deferred: bool) -> Result<()>;
    /// Rename a device (DM_DEV_RENAME): uuid, number and table stay.
    fn rename(&self, old: &str, new: &str) -> Result<DevInfo>;
    /// Suspend: I/O is queued, the filesystem on it frozen and flushed first.
    fn suspend(&self, name: &str) -> Result<()>;
    fn resume(&self, name: &str) -> Result<()>;
    /// Send a message to sector 0 of a device (for a pool: create_thin,
    /// create_snap, delete, set_transaction_id, reserve_metadata_snap...).
    /// Sent exactly once: a caller never sends it again to learn why it
    /// failed, the error says.
    fn message(&self, name: &str, msg: &str) -> Result<Option<String>>;
    /// Status lines of the live table.
    fn status(&self, name: &str) -> Result<Vec<TableLine>>;
    /// Table lines of the live table.
    fn table(&self, name: &str) -> Result<Vec<TableLine>>;
    /// Replace the live table: load, suspend, resume (resumed on every path).
    fn reload(&self, name: &str, table: &[TableLine], read_only: bool) -> Result<()>;
    /// Every dm device whose uuid is dmctl's.
    fn list_owned(&self) -> Result<Vec<DevInfo>>;

    /// Info on a device that dmctl owns. A device of that name that dmctl
    /// did not create is refused, so nothing else is ever touched.
    fn owned(&self, name: &str) -> Result<Option<DevInfo>> {
        match self.info(name)? {
            Some(i) if !i.uuid.as_deref().is_some_and(is_dmctl_uuid) => Err(Error::Busy(format!(
                "dm device {name} exists but was not created by dmctl (uuid {}); not touching it",
                i.uuid.as_deref().unwrap_or("none")
            ))),
            other => Ok(other),
        }
    }
}

/// The kernel's device-mapper.
pub struct Dm {
    dm: DM,
}

/// The errno of a failed ioctl, if that is what failed.
fn errno_of(err: &DmError) -> Option<Errno> {
    match err {
        DmError::Core(errors::Error::Ioctl(_, _, _, e)) => Some(**e),
        _ => None,
    }
}

fn dm_err(op: impl Into<String>, err: DmError) -> Error {
    let msg = match errno_of(&err) {
        Some(e) => e.desc().to_string(),
        None => err.to_string(),
    };
    let op = op.into();
    match errno_of(&err) {
        Some(Errno::EBUSY) => Error::Busy(format!("device-mapper: {op}: device is busy")),
        errno => Error::Dm {
            op,
            msg,
            errno: errno.map(|e| e as i32),
        },
    }
}

/// dmctl's view of the kernel's reply to any device ioctl.
fn dev_info(name: &str, i: &devicemapper::DeviceInfo) -> DevInfo {
    let flags = i.flags();
    DevInfo {
        name: name.to_string(),
        uuid: i.uuid().map(|u| u.to_string()),
        devno: (i.device().major, i.device().minor),
        open_count: i.open_count(),
        suspended: flags.contains(DmFlags::DM_SUSPEND),
        read_only: flags.contains(DmFlags::DM_READONLY),
        has_live_table: flags.contains(DmFlags::DM_ACTIVE_PRESENT),
    }
}

fn dm_name(name: &str) -> Result<&DmName> {
    DmName::new(name).map_err(|e| Error::Invalid(format!("invalid dm name '{name}': {e}")))
}

impl Dm {
    pub fn open() -> Result<Dm> {
        DM::new().map(|dm| Dm { dm }).map_err(|_| {
            Error::PoolState(
                "device-mapper is not available: /dev/mapper/control cannot be opened \
                 (modprobe dm-thin-pool; see `dmctl doctor`)"
                    .into(),
            )
        })
    }
}

impl DeviceMapper for Dm {
    fn info(&self, name: &str) -> Result<Option<DevInfo>> {
        crate::trace::step(|| format!("dm info {name}"));
        match self.dm.device_info(&DevId::Name(dm_name(name)?)) {
            Ok(i) => Ok(Some(dev_info(name, &i))),
            Err(e) if errno_of(&e) == Some(Errno::ENXIO) => Ok(None),
            Err(e) => Err(dm_err(format!("info {name}"), e)),
        }
    }

    fn create(
        &self,
        name: &str,
        uuid: &str,
        table: &[TableLine],
        read_only: bool,
    ) -> Result<DevInfo> {
        crate::trace::step(|| format!("dm create {name}: {table:?}"));
        let dname = dm_name(name)?;
        let duuid = DmUuid::new(uuid)
            .map_err(|e| Error::Invalid(format!("invalid dm uuid '{uuid}': {e}")))?;
        match self
            .dm
            .device_create(dname, Some(duuid), DmOptions::default())
        {
            Ok(_) => {}
            Err(e) if errno_of(&e) == Some(Errno::EBUSY) => {
                return Err(Error::Exists(format!("dm device {name} already exists")))
            }
            Err(e) => return Err(dm_err(format!("create {name}"), e)),
        }
        let id = DevId::Name(dname);
        let flags = if read_only {
            DmFlags::DM_READONLY
        } else {
            DmFlags::empty()
        };
        let loaded = self
            .dm
            .table_load(&id, table, DmOptions::default().set_flags(flags))
            .map_err(|e| dm_err(format!("load table of {name}"), e))
            .and_then(|_| {
                self.dm
                    .device_suspend(&id, DmOptions::default())
                    .map_err(|e| dm_err(format!("resume {name}"), e))
            });
        match loaded {
            // The resume's reply describes the live device: no further
            // info ioctl is needed.
            Ok(i) => Ok(dev_info(name, &i)),
            Err(e) => {
                let _ = self.dm.device_remove(&id, DmOptions::default());
                Err(e)
            }
        }
    }

    /// Remove a device. The crate retries EBUSY a few times; `deferred`
    /// asks the kernel to remove it when its last user closes it.
    fn remove(&self, name: &str, deferred: bool) -> Result<()> {
        crate::trace::step(|| format!("dm remove {name}"));
        let flags = if deferred {
            DmFlags::DM_DEFERRED_REMOVE
        } else {
            DmFlags::empty()
        };
        match self.dm.device_remove(
            &DevId::Name(dm_name(name)?),
            DmOptions::default().set_flags(flags),
        ) {
            Ok(_) => Ok(()),
            Err(e) if errno_of(&e) == Some(Errno::ENXIO) => Ok(()),
            Err(e) => Err(dm_err(format!("remove {name}"), e)),
        }
    }

    /// Rename a device (DM_DEV_RENAME). Its uuid, number and table stay;
    /// only the name changes, in one ioctl.
    fn rename(&self, old: &str, new: &str) -> Result<DevInfo> {
        crate::trace::step(|| format!("dm rename {old} -> {new}"));
        match self
            .dm
            .device_rename(dm_name(old)?, &DevId::Name(dm_name(new)?))
        {
            // The reply describes the device (under its old name).
            Ok(i) => Ok(dev_info(new, &i)),
            Err(e) if errno_of(&e) == Some(Errno::EBUSY) => {
                Err(Error::Exists(format!("dm device {new} already exists")))
            }
            Err(e) => Err(dm_err(format!("rename {old} to {new}"), e)),
        }
    }

    /// Suspend: I/O is queued, and (by default) the filesystem on it is
    /// frozen and flushed first.
    fn suspend(&self, name: &str) -> Result<()> {
        crate::trace::step(|| format!("dm suspend {name}"));
        self.dm
            .device_suspend(
                &DevId::Name(dm_name(name)?),
                DmOptions::default().set_flags(DmFlags::DM_SUSPEND),
            )
            .map(|_| ())
            .map_err(|e| dm_err(format!("suspend {name}"), e))
    }

    fn resume(&self, name: &str) -> Result<()> {
        crate::trace::step(|| format!("dm resume {name}"));
        self.dm
            .device_suspend(&DevId::Name(dm_name(name)?), DmOptions::default())
            .map(|_| ())
            .map_err(|e| dm_err(format!("resume {name}"), e))
    }

    fn message(&self, name: &str, msg: &str) -> Result<Option<String>> {
        crate::trace::step(|| format!("dm message {name}: {msg}"));
        self.dm
            .target_msg(&DevId::Name(dm_name(name)?), None, msg)
            .map(|(_, out)| out)
            .map_err(|e| dm_err(format!("message '{msg}' to {name}"), e))
    }

    /// Status lines of the live table. With NOFLUSH: a thin-pool's status
    /// would otherwise commit its metadata first, a whole commit per query
    /// (the counts are then at most one periodic commit, ~1 s, old).
    fn status(&self, name: &str) -> Result<Vec<TableLine>> {
        crate::trace::step(|| format!("dm status {name}"));
        self.dm
            .table_status(
                &DevId::Name(dm_name(name)?),
                DmOptions::default().set_flags(DmFlags::DM_NOFLUSH),
            )
            .map(|(_, s)| s)
            .map_err(|e| dm_err(format!("status of {name}"), e))
    }

    /// Table lines of the live table.
    fn table(&self, name: &str) -> Result<Vec<TableLine>> {
        self.dm
            .table_status(
                &DevId::Name(dm_name(name)?),
                DmOptions::default().set_flags(DmFlags::DM_STATUS_TABLE),
            )
            .map(|(_, s)| s)
            .map_err(|e| dm_err(format!("table of {name}"), e))
    }

    /// Replace the live table: load into the inactive slot, suspend, resume.
    /// The device is resumed on every path.
    fn reload(&self, name: &str, table: &[TableLine], read_only: bool) -> Result<()> {
        let id = DevId::Name(dm_name(name)?);
        let flags = if read_only {
            DmFlags::DM_READONLY
        } else {
            DmFlags::empty()
        };
        self.dm
            .table_load(&id, table, DmOptions::default().set_flags(flags))
            .map_err(|e| dm_err(format!("load table of {name}"), e))?;
        let suspended = self.suspend(name);
        let resumed = self.resume(name);
        suspended.and(resumed)
    }

    /// Names and UUIDs of every dm device dmctl owns.
    fn list_owned(&self) -> Result<Vec<DevInfo>> {
        let devs = self
            .dm
            .list_devices()
            .map_err(|e| dm_err("list devices", e))?;
        let mut out = vec![];
        for (name, _, _) in devs {
            if let Some(info) = self.info(&name.to_string())? {
                if info.uuid.as_deref().is_some_and(is_dmctl_uuid) {
                    out.push(info);
                }
            }
        }
        Ok(out)
    }
}

/// dm's event poll on the control node: any dm device's event (a pool's
/// low-water mark, a mode change) makes the control node readable until the
/// next arm.
pub struct Events {
    dm: DM,
}

impl Events {
    /// `None` without device-mapper (the caller polls on its interval).
    pub fn open() -> Option<Events> {
        let dm = DM::new().ok()?;
        dm.arm_poll().ok()?;
        Some(Events { dm })
    }

    pub fn arm(&self) {
        let _ = self.dm.arm_poll();
    }

    /// Wait for an event or the timeout; true on an event.
    pub fn wait(&self, timeout: std::time::Duration) -> bool {
        use std::os::fd::AsRawFd;
        let mut fds = [libc::pollfd {
            fd: self.dm.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd, for the length given.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
        n > 0 && fds[0].revents & libc::POLLIN != 0
    }
}

/// Why device-mapper cannot be opened, or the control interface's version
/// (for `doctor`).
pub fn interface_version() -> std::result::Result<(u32, u32, u32), String> {
    let dm = DM::new().map_err(|e| e.to_string())?;
    dm.version().map_err(|e| e.to_string())
}

/// The version of a loaded target type (`thin-pool`), if it is loaded.
pub fn target_version(target: &str) -> std::result::Result<Option<(u32, u32, u32)>, String> {
    let dm = DM::new().map_err(|_| "no device-mapper".to_string())?;
    let targets = dm.list_versions().map_err(|e| e.to_string())?;
    Ok(targets
        .into_iter()
        .find(|t| t.0 == target)
        .map(|(_, a, b, c)| (a, b, c)))
}
