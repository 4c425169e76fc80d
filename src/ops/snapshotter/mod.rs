//! containerd's snapshotter contract over a pool: what `dmctl serve` does
//! for each request of containerd's snapshots API (the gRPC front end is
//! `crate::serve`; this module knows nothing of gRPC).
//!
//! A snapshot is a thin volume of the pool, made with the same transaction
//! protocol as `dmctl create` and `dmctl snapshot`: an active snapshot or a
//! view without a parent is a new formatted volume, one with a parent is a
//! thin snapshot of the parent's volume. containerd's keys are arbitrary
//! strings: they are kept in `snapshots.json` (`SnapshotTable`) and never
//! become paths or dm names; the volume of snapshot number N is `ctr.N`.
//!
//! Crash safety comes from the order of the two writes:
//! * prepare records the snapshot as `creating` first, then makes its
//!   volume, then clears the flag; a server that starts finds `creating`
//!   records (a crash in between) and removes them and their volumes;
//! * remove drops the record first, then the volume; a `ctr.N` volume with
//!   no record is an orphan that `cleanup` (and every start) removes.
//!   A volume still in use (mounted by containerd, busy) stays an orphan
//!   until it is free: containerd's own removal is asynchronous too.
//!
//! The table's read-modify-write is serialized by a mutex; kernel work is
//! done outside it, under the pool lock of each volume operation, so
//! requests wait for each other only where the kernel needs it.

pub mod filter;
#[cfg(test)]
mod tests;

use super::session::{self, Session};
use super::volume::{self, CreateRequest};
use super::{devnode, image, Ctx};
use crate::error::{Error, Result};
use crate::image::oci::Digest;
use crate::kernel::mount;
use crate::names::{self, VolumeRef};
use crate::store::model::{
    Filesystem, SnapshotKind, SnapshotRecord, SnapshotSpare, SnapshotTable, Stamp, VolumeRecord,
};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

pub use filter::Filters;

/// The label that sizes a snapshot (`ctr run --snapshotter-label`).
pub const SIZE_LABEL: &str = "containerd.io/snapshot/dmctl.size";
/// The label containerd's unpacker puts on a layer's snapshot: its ChainID.
pub const REF_LABEL: &str = "containerd.io/snapshot.ref";

/// How the server makes new volumes.
#[derive(Debug, Clone)]
pub struct Settings {
    pub pool: String,
    pub fs: Filesystem,
    /// Size of a snapshot without a parent (a child gets its parent's size
    /// unless its size label asks for more).
    pub size: u64,
    /// Warm spares kept per hot parent (see `refill`).
    pub spares: usize,
}

/// A mount for containerd to perform (containerd's `Mount`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub fs_type: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Bytes and inodes a snapshot uses (containerd's `Usage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub size: u64,
    pub inodes: u64,
}

/// What `cleanup` and a start-up sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    /// Volumes removed (orphans, or of interrupted prepares).
    pub removed: Vec<String>,
    /// Orphans still in use, left for a later sweep.
    pub kept: Vec<String>,
}

/// One pool's snapshotter.
pub struct Snapshotter {
    settings: Settings,
    table: Mutex<()>,
    /// Parents whose spares are being made (one refill per parent).
    refilling: Mutex<std::collections::HashSet<String>>,
    /// Prepares making a volume now: a refill waits for them (they would
    /// otherwise queue behind it for the pool lock).
    making: std::sync::atomic::AtomicUsize,
}

fn not_found(key: &str) -> Error {
    Error::NotFound(format!("snapshot {key:?} does not exist"))
}

impl Snapshotter {
    pub fn new(settings: Settings) -> Snapshotter {
        Snapshotter {
            settings,
            table: Mutex::new(()),
            refilling: Mutex::new(Default::default()),
            making: Default::default(),
        }
    }

    /// Read, change and write the table under the mutex. `change` returns
    /// its result and whether the table is to be written.
    fn with_table<T>(
        &self,
        ctx: &Ctx,
        change: impl FnOnce(&mut SnapshotTable) -> Result<(T, bool)>,
    ) -> Result<T> {
        let _guard = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let mut table = ctx.store.load_snapshots(&self.settings.pool)?;
        let (out, write) = change(&mut table)?;
        if write {
            ctx.store.save_snapshots(&self.settings.pool, &table)?;
        }
        Ok(out)
    }

    /// A finished snapshot by key.
    fn get(&self, ctx: &Ctx, key: &str) -> Result<SnapshotRecord> {
        self.with_table(ctx, |t| {
            let r = find(t, key).filter(|r| !r.creating).cloned();
            Ok((r.ok_or_else(|| not_found(key))?, false))
        })
    }

    /// `Prepare` (kind Active) and `View` (kind View).
    pub fn prepare(
        &self,
        ctx: &Ctx,
        kind: SnapshotKind,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<MountSpec>> {
        if key.is_empty() {
            return Err(Error::Invalid("a snapshot key must not be empty".into()));
        }
        let size = labels
            .get(SIZE_LABEL)
            .map(|s| {
                crate::units::parse_size(s)
                    .map_err(|e| Error::Invalid(format!("label {SIZE_LABEL}={s:?}: {e}")))
            })
            .transpose()?;
        let parent = (!parent.is_empty()).then(|| parent.to_string());
        if let (Some(chain), SnapshotKind::Active) = (labels.get(REF_LABEL), kind) {
            // The adopted record is written before containerd hears
            // AlreadyExists: it looks for it next.
            let adopted = self.with_table(ctx, |t| {
                if find(t, key).is_some() {
                    return Ok((false, false));
                }
                let before = t.snapshots.len();
                let adopted = self.adopt(ctx, t, chain, parent.as_deref())?;
                Ok((adopted, t.snapshots.len() != before))
            })?;
            if adopted {
                return Err(Error::Exists(format!(
                    "target snapshot {chain:?} already exists"
                )));
            }
        }
        let (rec, parent_rec, warm) = self.with_table(ctx, |t| {
            if find(t, key).is_some() {
                return Err(Error::Exists(format!("snapshot {key:?} already exists")));
            }
            let parent_rec = match &parent {
                None => None,
                Some(p) => {
                    let r = find(t, p).filter(|r| !r.creating).ok_or_else(|| {
                        Error::NotFound(format!("parent snapshot {p:?} does not exist"))
                    })?;
                    if r.kind != SnapshotKind::Committed {
                        return Err(Error::Invalid(format!(
                            "parent snapshot {p:?} is not committed"
                        )));
                    }
                    Some(r.clone())
                }
            };
            // A warm spare of the parent, if one is ready and big enough:
            // taking it is this one write.
            let spare = match (&parent, kind) {
                (Some(p), SnapshotKind::Active) => t.spares.iter().position(|sp| {
                    &sp.parent == p && !sp.creating && size.is_none_or(|s| s <= sp.size)
                }),
                _ => None,
            };
            let (id, volume) = match spare {
                Some(i) => {
                    let sp = t.spares.remove(i);
                    (sp.id, sp.volume)
                }
                None => {
                    let id = next_id(t);
                    (id, names::snapshot_volume_name(id))
                }
            };
            let now = Stamp::now();
            let rec = SnapshotRecord {
                key: key.to_string(),
                id,
                kind,
                parent: parent.clone(),
                labels: labels.clone(),
                created: now,
                updated: now,
                volume,
                owns_volume: true,
                creating: spare.is_none(),
                usage: None,
                committed_from: None,
            };
            t.snapshots.push(rec.clone());
            Ok(((rec, parent_rec, spare.is_some()), true))
        })?;
        if warm {
            return self.mounts_of(ctx, &rec);
        }
        crate::crashpoint::hit("serve-prepare:recorded");
        self.making.fetch_add(1, Ordering::SeqCst);
        let made = self.make_volume(ctx, &rec, parent_rec.as_ref(), size);
        self.making.fetch_sub(1, Ordering::SeqCst);
        if let Err(e) = made {
            // The volume operations undid their own part; drop the record.
            self.with_table(ctx, |t| {
                t.snapshots
                    .retain(|r| !(r.key == rec.key && r.id == rec.id));
                Ok(((), true))
            })?;
            return Err(e);
        }
        crate::crashpoint::hit("serve-prepare:made");
        self.with_table(ctx, |t| {
            if let Some(r) = t.snapshots.iter_mut().find(|r| r.id == rec.id) {
                r.creating = false;
            }
            Ok(((), true))
        })?;
        self.mounts_of(ctx, &rec)
    }

    /// Make the volume of a new snapshot: a formatted volume, or a thin
    /// snapshot of the parent's (grown if the size label asks for more).
    fn make_volume(
        &self,
        ctx: &Ctx,
        rec: &SnapshotRecord,
        parent: Option<&SnapshotRecord>,
        size: Option<u64>,
    ) -> Result<()> {
        let pool = &self.settings.pool;
        let new = VolumeRef::new(pool, &rec.volume)?;
        let Some(parent) = parent else {
            let mut s = session::open(ctx, pool)?;
            let req = CreateRequest {
                volume: new,
                size: size.unwrap_or(self.settings.size),
                fs: Some(self.settings.fs),
                mkfs_args: mkfs_args(self.settings.fs),
            };
            let (vol, info) = volume::create_locked(ctx, &mut s, &req)?;
            if vol.fs == Some(Filesystem::Ext4) {
                remove_lost_found(ctx, pool, &vol.name, &devnode(&info))?;
            }
            return Ok(());
        };
        let made = self.snapshot_of(ctx, &parent.volume, &rec.volume)?;
        if let Some(size) = size.filter(|&s| s > made.size) {
            volume::resize(ctx, &new, size)?;
        }
        Ok(())
    }

    /// An active thin snapshot `new` of the volume `origin`, in a pool
    /// session of its own (a child's volume, or a spare).
    fn snapshot_of(&self, ctx: &Ctx, origin: &str, new: &str) -> Result<VolumeRecord> {
        let pool = &self.settings.pool;
        let Session {
            lock: _lock,
            pool: mut pool_rec,
            device,
        } = session::open(ctx, pool)?;
        let (origin, new) = (VolumeRef::new(pool, origin)?, VolumeRef::new(pool, new)?);
        volume::snapshot_locked(ctx, &mut pool_rec, &device, &origin, &new, None, true)
            .map(|(v, _)| v)
    }

    /// Adopt a layer that `dmctl image import` holds as the committed
    /// snapshot containerd's unpacker asks for (`chain` is its ChainID,
    /// `parent` the key of the snapshot below it): true if there is one,
    /// already recorded or recorded now. containerd then finds it with the
    /// filter `labels."containerd.io/snapshot.ref"==CHAIN,parent==PARENT`.
    fn adopt(
        &self,
        ctx: &Ctx,
        t: &mut SnapshotTable,
        chain: &str,
        parent: Option<&str>,
    ) -> Result<bool> {
        let known = t.snapshots.iter().any(|r| {
            !r.creating
                && r.kind == SnapshotKind::Committed
                && r.labels.get(REF_LABEL).map(String::as_str) == Some(chain)
                && r.parent.as_deref() == parent
        });
        if known {
            return Ok(true);
        }
        let Ok(digest) = chain.parse::<Digest>() else {
            return Ok(false);
        };
        let Some(layer) = image::load_layer(ctx, &self.settings.pool, &digest)? else {
            return Ok(false);
        };
        // The layer below must be the parent snapshot's volume.
        let parent_volume = match parent {
            None => None,
            Some(p) => match find(t, p) {
                Some(r) if !r.creating && r.kind == SnapshotKind::Committed => {
                    Some(r.volume.clone())
                }
                _ => return Ok(false),
            },
        };
        let below = match &layer.parent {
            None => None,
            Some(c) => match image::load_layer(ctx, &self.settings.pool, c)? {
                Some(l) => Some(l.volume),
                None => return Ok(false),
            },
        };
        if below != parent_volume
            || ctx
                .store
                .load_volume(&self.settings.pool, &layer.volume)?
                .is_none()
        {
            return Ok(false);
        }
        let key = format!("dmctl/layer/{chain}");
        if find(t, &key).is_some() {
            return Ok(false);
        }
        let id = next_id(t);
        let now = Stamp::now();
        t.snapshots.push(SnapshotRecord {
            key,
            id,
            kind: SnapshotKind::Committed,
            parent: parent.map(str::to_string),
            labels: BTreeMap::from([(REF_LABEL.to_string(), chain.to_string())]),
            created: now,
            updated: now,
            volume: layer.volume,
            owns_volume: false,
            creating: false,
            usage: None,
            committed_from: None,
        });
        Ok(true)
    }

    /// Parents that have spares (to top up when a server starts).
    pub fn hot_parents(&self, ctx: &Ctx) -> Result<Vec<String>> {
        if self.settings.spares == 0 {
            return Ok(vec![]);
        }
        self.with_table(ctx, |t| {
            let mut out: Vec<String> = t.spares.iter().map(|sp| sp.parent.clone()).collect();
            out.sort();
            out.dedup();
            Ok((out, false))
        })
    }

    /// Whether a Prepare makes `parent` a hot parent, whose spares are
    /// kept: a container's root (an active snapshot without the unpacker's
    /// layer label) on a committed parent, with spares asked for.
    pub fn is_hot_prepare(
        &self,
        kind: SnapshotKind,
        parent: &str,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        self.settings.spares > 0
            && kind == SnapshotKind::Active
            && !parent.is_empty()
            && !labels.contains_key(REF_LABEL)
    }

    /// Make spares of `parent` until it has `Settings::spares` of them: each
    /// an active thin snapshot of the parent's volume, recorded `creating`
    /// first (a start-up sweep drops an unfinished one). Returns how many
    /// were made. One refill per parent at a time; a failure ends it.
    pub fn refill(&self, ctx: &Ctx, parent: &str) -> Result<usize> {
        {
            let mut busy = self.refilling.lock().unwrap_or_else(|e| e.into_inner());
            if !busy.insert(parent.to_string()) {
                return Ok(0);
            }
        }
        let made = self.refill_unlocked(ctx, parent);
        self.refilling
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(parent);
        made
    }

    fn refill_unlocked(&self, ctx: &Ctx, parent: &str) -> Result<usize> {
        let mut made = 0;
        loop {
            // Spares are for later: a Prepare making a volume now goes first.
            while self.making.load(Ordering::SeqCst) > 0 {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let next = self.with_table(ctx, |t| {
                let have = t.spares.iter().filter(|sp| sp.parent == parent).count();
                let p =
                    find(t, parent).filter(|r| r.kind == SnapshotKind::Committed && !r.creating);
                let Some(p) = p.cloned() else {
                    return Ok((None, false));
                };
                if have >= self.settings.spares {
                    return Ok((None, false));
                }
                let id = next_id(t);
                let volume = names::snapshot_volume_name(id);
                t.spares.push(SnapshotSpare {
                    parent: parent.to_string(),
                    id,
                    volume: volume.clone(),
                    size: 0,
                    creating: true,
                });
                Ok((Some((p, id, volume)), true))
            })?;
            let Some((p, id, volume)) = next else {
                return Ok(made);
            };
            crate::crashpoint::hit("serve-spare:recorded");
            let made_one = self.snapshot_of(ctx, &p.volume, &volume).map(|v| v.size);
            self.with_table(ctx, |t| {
                match &made_one {
                    Ok(size) => {
                        if let Some(sp) = t.spares.iter_mut().find(|sp| sp.id == id) {
                            sp.creating = false;
                            sp.size = *size;
                        }
                    }
                    Err(_) => t.spares.retain(|sp| sp.id != id),
                }
                Ok(((), true))
            })?;
            made_one?;
            made += 1;
        }
    }

    /// `Mounts`: how to mount an active snapshot or a view.
    pub fn mounts(&self, ctx: &Ctx, key: &str) -> Result<Vec<MountSpec>> {
        let rec = self.get(ctx, key)?;
        if rec.kind == SnapshotKind::Committed {
            return Err(Error::Busy(format!(
                "snapshot {key:?} is committed: only active snapshots and views have mounts"
            )));
        }
        self.mounts_of(ctx, &rec)
    }

    /// The mount of a snapshot's volume, activating it if needed (after a
    /// reboot or `pool deactivate`).
    fn mounts_of(&self, ctx: &Ctx, rec: &SnapshotRecord) -> Result<Vec<MountSpec>> {
        let pool = ctx.ready_pool(&self.settings.pool)?;
        let vol = ctx.store.volume(&pool.name, &rec.volume)?;
        let info = match ctx.thin_device(&pool, &vol)? {
            Some(info) => info,
            None => {
                let s = session::open(ctx, &pool.name)?;
                super::device::activate_device(ctx, &s.pool, &vol, false)?
            }
        };
        let fs = vol.fs.unwrap_or(self.settings.fs);
        let mut options = Vec::new();
        if rec.kind == SnapshotKind::View {
            options.push("ro".to_string());
        }
        match fs {
            // Snapshots share their origin's XFS UUID.
            Filesystem::Xfs => options.push("nouuid".into()),
            // The inode tables were left unwritten by mkfs (a new thin
            // device reads as zeros, and ext4 trusts only the initialized
            // part); zeroing them later would provision blocks for nothing.
            Filesystem::Ext4 => options.push("noinit_itable".into()),
        }
        Ok(vec![MountSpec {
            fs_type: fs.as_str().to_string(),
            source: devnode(&info).display().to_string(),
            options,
        }])
    }

    /// `Commit`: the active snapshot `key` becomes the committed `name`.
    pub fn commit(
        &self,
        ctx: &Ctx,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<()> {
        if name.is_empty() {
            return Err(Error::Invalid("a snapshot name must not be empty".into()));
        }
        let usage = self.usage(ctx, key).ok().map(|u| u.size);
        self.with_table(ctx, |t| {
            if find(t, key).is_none() {
                // A commit containerd retries after the server died before
                // answering: under the same name, or a fresh one (its keys
                // carry a counter), which the snapshot committed from `key`
                // then takes.
                let free = find(t, name).is_none();
                if let Some(r) = t.snapshots.iter_mut().find(|r| {
                    r.kind == SnapshotKind::Committed
                        && r.committed_from.as_deref() == Some(key)
                        && (free || r.key == name)
                }) {
                    r.key = name.to_string();
                    r.labels = labels;
                    r.updated = Stamp::now();
                    return Ok(((), true));
                }
            }
            if find(t, name).is_some() {
                return Err(Error::Exists(format!("snapshot {name:?} already exists")));
            }
            let r = t
                .snapshots
                .iter_mut()
                .find(|r| r.key == key && !r.creating)
                .ok_or_else(|| not_found(key))?;
            if r.kind != SnapshotKind::Active {
                return Err(Error::Busy(format!(
                    "snapshot {key:?} is not active ({}): only active snapshots are committed",
                    r.kind.as_str()
                )));
            }
            let now = Stamp::now();
            r.key = name.to_string();
            r.kind = SnapshotKind::Committed;
            r.labels = labels;
            r.created = now;
            r.updated = now;
            r.usage = usage;
            r.committed_from = Some(key.to_string());
            Ok(((), true))
        })?;
        crate::crashpoint::hit("serve-commit:recorded");
        Ok(())
    }

    /// `Remove`: the record goes first, then the volume (see the module
    /// comment); a volume still in use is left for `cleanup`.
    pub fn remove(&self, ctx: &Ctx, key: &str) -> Result<()> {
        let rec = self.with_table(ctx, |t| {
            let r = find(t, key)
                .filter(|r| !r.creating)
                .cloned()
                .ok_or_else(|| not_found(key))?;
            if t.snapshots.iter().any(|c| c.parent.as_deref() == Some(key)) {
                return Err(Error::Busy(format!(
                    "cannot remove snapshot {key:?}: snapshots are made from it (remove them first)"
                )));
            }
            t.snapshots.retain(|c| c.id != r.id);
            // Its spares go with it (their volumes below, or by a sweep).
            let spares: Vec<String> = t
                .spares
                .iter()
                .filter(|sp| sp.parent == key)
                .map(|sp| sp.volume.clone())
                .collect();
            t.spares.retain(|sp| sp.parent != key);
            Ok(((r, spares), true))
        })?;
        let (rec, spares) = rec;
        crate::crashpoint::hit("serve-remove:unrecorded");
        if rec.owns_volume {
            if let Err(e) = self.remove_volume(ctx, &rec.volume) {
                crate::trace::note(&format!(
                    "snapshot {key:?} removed; its volume {} is kept until it is free ({e})",
                    rec.volume
                ));
            }
        }
        for v in spares {
            // A failure leaves an orphan for the sweep.
            let _ = self.remove_volume(ctx, &v);
        }
        Ok(())
    }

    /// Remove a volume of the server's (never unmounting: one in use
    /// stays); one already gone is fine.
    fn remove_volume(&self, ctx: &Ctx, name: &str) -> Result<()> {
        let v = VolumeRef::new(&self.settings.pool, name)?;
        match volume::remove(ctx, &v, false) {
            Err(Error::NotFound(_)) => Ok(()),
            other => other,
        }
    }

    /// `Stat`.
    pub fn stat(&self, ctx: &Ctx, key: &str) -> Result<SnapshotRecord> {
        self.get(ctx, key)
    }

    /// `Update`: only labels change. `paths` is containerd's field mask:
    /// empty (every mutable field: all labels are replaced), `labels`
    /// (the same), or `labels.KEY` (that label is set, or removed if
    /// `labels` has no KEY).
    pub fn update(
        &self,
        ctx: &Ctx,
        key: &str,
        labels: BTreeMap<String, String>,
        paths: &[String],
    ) -> Result<SnapshotRecord> {
        for p in paths {
            if p != "labels" && !p.starts_with("labels.") {
                return Err(Error::Invalid(format!(
                    "cannot update {p:?} of snapshot {key:?}: only labels change"
                )));
            }
        }
        self.with_table(ctx, |t| {
            let r = t
                .snapshots
                .iter_mut()
                .find(|r| r.key == key && !r.creating)
                .ok_or_else(|| not_found(key))?;
            if paths.is_empty() || paths.iter().any(|p| p == "labels") {
                r.labels = labels;
            } else {
                for p in paths {
                    let k = &p["labels.".len()..];
                    match labels.get(k) {
                        Some(v) => r.labels.insert(k.to_string(), v.clone()),
                        None => r.labels.remove(k),
                    };
                }
            }
            r.updated = Stamp::now();
            Ok((r.clone(), true))
        })
    }

    /// `List`: the finished snapshots that match.
    pub fn list(&self, ctx: &Ctx, filters: &Filters) -> Result<Vec<SnapshotRecord>> {
        self.with_table(ctx, |t| {
            let out = t
                .snapshots
                .iter()
                .filter(|r| !r.creating && filters.matches(r))
                .cloned()
                .collect();
            Ok((out, false))
        })
    }

    /// `Usage`: the bytes the snapshot's thin device maps (for a committed
    /// snapshot whose device is not active, what was recorded at commit).
    pub fn usage(&self, ctx: &Ctx, key: &str) -> Result<Usage> {
        let rec = self.get(ctx, key)?;
        let pool = ctx.ready_pool(&self.settings.pool)?;
        let vol = ctx.store.volume(&pool.name, &rec.volume)?;
        let mapped = match ctx.thin_device(&pool, &vol)? {
            Some(_) => volume::mapped_bytes(ctx, &pool, &vol)?,
            None => None,
        };
        Ok(Usage {
            size: mapped.or(rec.usage).unwrap_or(0),
            inodes: 0,
        })
    }

    /// `Cleanup`, and what a server does when it starts: drop the records
    /// of interrupted prepares (only at start, `interrupted`), and remove
    /// every `ctr.N` volume that no record holds.
    pub fn sweep(&self, ctx: &Ctx, interrupted: bool) -> Result<Swept> {
        let held: std::collections::HashSet<String> = self.with_table(ctx, |t| {
            let before = (t.snapshots.len(), t.spares.len());
            if interrupted {
                t.snapshots.retain(|r| !r.creating);
                t.spares.retain(|sp| !sp.creating);
            }
            let held = t
                .snapshots
                .iter()
                .map(|r| r.volume.clone())
                .chain(t.spares.iter().map(|sp| sp.volume.clone()))
                .collect();
            Ok((held, (t.snapshots.len(), t.spares.len()) != before))
        })?;
        let mut swept = Swept::default();
        for name in ctx.store.volume_names(&self.settings.pool)? {
            if names::snapshot_volume_id(&name).is_none() || held.contains(&name) {
                continue;
            }
            match self.remove_volume(ctx, &name) {
                Ok(()) => swept.removed.push(name),
                Err(_) => swept.kept.push(name),
            }
        }
        Ok(swept)
    }
}

/// An empty snapshot is empty: mke2fs makes `lost+found`, which
/// containerd's layers do not have (its devmapper snapshotter removes it
/// the same way, through a scratch mount).
fn remove_lost_found(ctx: &Ctx, pool: &str, volume: &str, dev: &std::path::Path) -> Result<()> {
    let dir = ctx.store.scratch_mountpoint(pool, volume)?;
    crate::fsutil::create_private_dir(&dir)?;
    mount::mount(dev, &dir, Filesystem::Ext4.as_str(), false, "noinit_itable")?;
    let removed = std::fs::remove_dir(dir.join("lost+found")).map_err(|e| Error::io(&dir, e));
    let unmounted = mount::umount(&dir);
    let _ = std::fs::remove_dir(&dir);
    removed.and(unmounted)
}

/// containerd snapshots of the pool whose volume is missing (`dmctl rm
/// --force` of one, or a lost record): what `dmctl check` reports.
pub fn broken(ctx: &Ctx, pool: &str) -> Result<Vec<String>> {
    let t = ctx.store.load_snapshots(pool)?;
    let mut out = Vec::new();
    for r in t.snapshots.iter().filter(|r| !r.creating) {
        if ctx.store.load_volume(pool, &r.volume)?.is_none() {
            out.push(format!("{:?} (volume {} is missing)", r.key, r.volume));
        }
    }
    Ok(out)
}

/// `dmctl check --repair` with no server running: drop the records of
/// snapshots whose volume is missing (and spares whose volume is); their
/// keys.
pub fn forget_broken(ctx: &Ctx, pool: &str) -> Result<Vec<String>> {
    let mut t = ctx.store.load_snapshots(pool)?;
    let mut gone = Vec::new();
    let mut keep = Vec::new();
    for r in std::mem::take(&mut t.snapshots) {
        if !r.creating && ctx.store.load_volume(pool, &r.volume)?.is_none() {
            gone.push(r.key);
        } else {
            keep.push(r);
        }
    }
    t.snapshots = keep;
    let mut spares = Vec::new();
    for sp in std::mem::take(&mut t.spares) {
        if ctx.store.load_volume(pool, &sp.volume)?.is_some() {
            spares.push(sp);
        }
    }
    t.spares = spares;
    ctx.store.save_snapshots(pool, &t)?;
    Ok(gone)
}

fn find<'a>(t: &'a SnapshotTable, key: &str) -> Option<&'a SnapshotRecord> {
    t.snapshots.iter().find(|r| r.key == key)
}

/// A snapshot number not used by any record (and so by no volume of this
/// table's: volumes are named after their record's number).
fn next_id(t: &mut SnapshotTable) -> u64 {
    let max = t
        .snapshots
        .iter()
        .map(|r| r.id + 1)
        .chain(t.spares.iter().map(|sp| sp.id + 1))
        .max()
        .unwrap_or(0);
    let id = t.next_id.max(max).max(1);
    t.next_id = id + 1;
    id
}

/// mkfs options for the server's volumes: ext4's inode tables are not
/// written (lazy init, and `noinit_itable` at mount); a thin device reads
/// unwritten blocks as zeros, so a 10G filesystem costs its journal, not
/// 160 MB of zeroed tables (containerd#6119: ~9 s per mkfs on cloud disks).
fn mkfs_args(fs: Filesystem) -> Vec<String> {
    match fs {
        // mke2fs keeps only the last -E: the defaults are repeated.
        Filesystem::Ext4 => vec![
            "-E".into(),
            "nodiscard,lazy_itable_init=1,lazy_journal_init=0".into(),
        ],
        Filesystem::Xfs => vec![],
    }
}
