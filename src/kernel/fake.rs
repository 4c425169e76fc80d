//! A fake device-mapper for host tests: devices with tables and suspend
//! state, and a dm-thin pool model behind each `thin-pool` device (thin ids,
//! transaction id) answering `create_thin`, `create_snap`, `delete` and
//! `set_transaction_id` as the kernel does, errno for errno. Every call is
//! recorded; any call can be made to fail once with an errno, to walk the
//! undo and recovery paths that a real kernel only takes on bad days.
//! (youki's `TestHelperSyscall` and stratisd's sim engine are the models.)

use super::dm::{DevInfo, DeviceMapper, TableLine};
use crate::error::{Error, Result};
use crate::names::is_dmctl_uuid;
use nix::errno::Errno;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

/// One device.
#[derive(Debug, Clone)]
pub struct FakeDev {
    pub uuid: String,
    pub table: Vec<TableLine>,
    pub minor: u32,
    pub suspended: bool,
    pub read_only: bool,
    pub open_count: i32,
}

/// The metadata of one thin pool.
#[derive(Debug, Clone, Default)]
pub struct FakePool {
    pub transaction_id: u64,
    pub thin_ids: BTreeSet<u32>,
}

/// The whole fake kernel, shared between the `FakeDm` a `Ctx` holds and
/// the test that looks at it.
#[derive(Debug, Default)]
pub struct FakeKernel {
    pub devices: BTreeMap<String, FakeDev>,
    /// By pool device name.
    pub pools: BTreeMap<String, FakePool>,
    /// Every call, as `op name[: arg]`, in order.
    pub calls: Vec<String>,
    /// Calls that fail once: (prefix of the call's record, errno).
    pub failures: Vec<(String, Errno)>,
    next_minor: u32,
}

impl FakeKernel {
    /// A pool device `name` with an empty pool behind it.
    pub fn add_pool(&mut self, name: &str, uuid: &str) {
        self.add_device(
            name,
            uuid,
            vec![(0, 2097152, "thin-pool".into(), String::new())],
        );
        self.pools.insert(name.to_string(), FakePool::default());
    }

    pub fn add_device(&mut self, name: &str, uuid: &str, table: Vec<TableLine>) {
        self.next_minor += 1;
        self.devices.insert(
            name.to_string(),
            FakeDev {
                uuid: uuid.to_string(),
                table,
                minor: self.next_minor,
                suspended: false,
                read_only: false,
                open_count: 0,
            },
        );
    }

    /// Make the next call whose record starts with `prefix` fail with `errno`.
    pub fn fail_next(&mut self, prefix: &str, errno: Errno) {
        self.failures.push((prefix.to_string(), errno));
    }

    /// The calls whose record starts with `prefix`.
    pub fn calls_of(&self, prefix: &str) -> Vec<String> {
        self.calls
            .iter()
            .filter(|c| c.starts_with(prefix))
            .cloned()
            .collect()
    }

    fn record(&mut self, call: String) -> Result<()> {
        let failing = self
            .failures
            .iter()
            .position(|(p, _)| call.starts_with(p.as_str()));
        self.calls.push(call.clone());
        match failing {
            Some(i) => {
                let (_, errno) = self.failures.remove(i);
                Err(errno_error(&call, errno))
            }
            None => Ok(()),
        }
    }

    fn info_of(&self, name: &str) -> Option<DevInfo> {
        self.devices.get(name).map(|d| DevInfo {
            name: name.to_string(),
            uuid: Some(d.uuid.clone()),
            devno: (253, d.minor),
            open_count: d.open_count,
            suspended: d.suspended,
            read_only: d.read_only,
            has_live_table: true,
        })
    }

    fn pool_message(&mut self, name: &str, msg: &str) -> std::result::Result<(), Errno> {
        let pool = self.pools.get_mut(name).ok_or(Errno::EINVAL)?;
        let words: Vec<&str> = msg.split_whitespace().collect();
        let num = |i: usize| -> std::result::Result<u64, Errno> {
            words
                .get(i)
                .and_then(|w| w.parse().ok())
                .ok_or(Errno::EINVAL)
        };
        match words.first().copied() {
            Some("create_thin") => {
                let id = num(1)? as u32;
                if !pool.thin_ids.insert(id) {
                    return Err(Errno::EEXIST);
                }
            }
            Some("create_snap") => {
                let (id, origin) = (num(1)? as u32, num(2)? as u32);
                if !pool.thin_ids.contains(&origin) {
                    return Err(Errno::ENODATA);
                }
                if !pool.thin_ids.insert(id) {
                    return Err(Errno::EEXIST);
                }
            }
            Some("delete") => {
                if !pool.thin_ids.remove(&(num(1)? as u32)) {
                    return Err(Errno::ENODATA);
                }
            }
            Some("set_transaction_id") => {
                if num(1)? != pool.transaction_id {
                    return Err(Errno::EINVAL);
                }
                pool.transaction_id = num(2)?;
            }
            Some("reserve_metadata_snap" | "release_metadata_snap") => {}
            _ => return Err(Errno::EINVAL),
        }
        Ok(())
    }
}

fn errno_error(call: &str, errno: Errno) -> Error {
    match errno {
        Errno::EBUSY => Error::Busy(format!("device-mapper: {call}: device is busy")),
        e => Error::Dm {
            op: call.to_string(),
            msg: e.desc().to_string(),
            errno: Some(e as i32),
        },
    }
}

/// The `DeviceMapper` a `Ctx` holds in host tests.
#[derive(Clone, Default)]
pub struct FakeDm(pub Arc<Mutex<FakeKernel>>);

impl FakeDm {
    pub fn kernel(&self) -> std::sync::MutexGuard<'_, FakeKernel> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl DeviceMapper for FakeDm {
    fn info(&self, name: &str) -> Result<Option<DevInfo>> {
        let mut k = self.kernel();
        k.record(format!("info {name}"))?;
        Ok(k.info_of(name))
    }

    fn create(
        &self,
        name: &str,
        uuid: &str,
        table: &[TableLine],
        read_only: bool,
    ) -> Result<DevInfo> {
        let mut k = self.kernel();
        k.record(format!("create {name}"))?;
        if k.devices.contains_key(name) {
            return Err(Error::Exists(format!("dm device {name} already exists")));
        }
        k.add_device(name, uuid, table.to_vec());
        if let Some(d) = k.devices.get_mut(name) {
            d.read_only = read_only;
        }
        Ok(k.info_of(name).expect("just made"))
    }

    fn remove(&self, name: &str, _deferred: bool) -> Result<()> {
        let mut k = self.kernel();
        k.record(format!("remove {name}"))?;
        match k.devices.get(name) {
            None => Ok(()),
            Some(d) if d.open_count > 0 => {
                Err(errno_error(&format!("remove {name}"), Errno::EBUSY))
            }
            Some(_) => {
                k.devices.remove(name);
                Ok(())
            }
        }
    }

    fn rename(&self, old: &str, new: &str) -> Result<DevInfo> {
        let mut k = self.kernel();
        k.record(format!("rename {old}: {new}"))?;
        if k.devices.contains_key(new) {
            return Err(Error::Exists(format!("dm device {new} already exists")));
        }
        let dev = k
            .devices
            .remove(old)
            .ok_or_else(|| errno_error(&format!("rename {old}"), Errno::ENXIO))?;
        k.devices.insert(new.to_string(), dev);
        Ok(k.info_of(new).expect("just renamed"))
    }

    fn suspend(&self, name: &str) -> Result<()> {
        let mut k = self.kernel();
        k.record(format!("suspend {name}"))?;
        let dev = k
            .devices
            .get_mut(name)
            .ok_or_else(|| errno_error(&format!("suspend {name}"), Errno::ENXIO))?;
        dev.suspended = true;
        Ok(())
    }

    fn resume(&self, name: &str) -> Result<()> {
        let mut k = self.kernel();
        k.record(format!("resume {name}"))?;
        let dev = k
            .devices
            .get_mut(name)
            .ok_or_else(|| errno_error(&format!("resume {name}"), Errno::ENXIO))?;
        dev.suspended = false;
        Ok(())
    }

    fn message(&self, name: &str, msg: &str) -> Result<Option<String>> {
        let mut k = self.kernel();
        let call = format!("message {name}: {msg}");
        k.record(call.clone())?;
        k.pool_message(name, msg)
            .map(|()| None)
            .map_err(|e| errno_error(&call, e))
    }

    fn status(&self, name: &str) -> Result<Vec<TableLine>> {
        let mut k = self.kernel();
        k.record(format!("status {name}"))?;
        let dev = k
            .devices
            .get(name)
            .ok_or_else(|| errno_error(&format!("status {name}"), Errno::ENXIO))?;
        let (start, len, target, _) = dev.table.first().cloned().unwrap_or_default();
        let params = match k.pools.get(name) {
            Some(p) => format!(
                "{} 10/4096 {}/16384 - rw discard_passdown queue_if_no_space - 1024",
                p.transaction_id,
                p.thin_ids.len()
            ),
            None => "0 -".to_string(),
        };
        Ok(vec![(start, len, target, params)])
    }

    fn table(&self, name: &str) -> Result<Vec<TableLine>> {
        let mut k = self.kernel();
        k.record(format!("table {name}"))?;
        k.devices
            .get(name)
            .map(|d| d.table.clone())
            .ok_or_else(|| errno_error(&format!("table {name}"), Errno::ENXIO))
    }

    fn reload(&self, name: &str, table: &[TableLine], read_only: bool) -> Result<()> {
        let mut k = self.kernel();
        k.record(format!("reload {name}"))?;
        let dev = k
            .devices
            .get_mut(name)
            .ok_or_else(|| errno_error(&format!("reload {name}"), Errno::ENXIO))?;
        dev.table = table.to_vec();
        dev.read_only = read_only;
        Ok(())
    }

    fn list_owned(&self) -> Result<Vec<DevInfo>> {
        let mut k = self.kernel();
        k.record("list".to_string())?;
        Ok(k.devices
            .iter()
            .filter(|(_, d)| is_dmctl_uuid(&d.uuid))
            .filter_map(|(n, _)| k.info_of(n))
            .collect())
    }
}
