//! What dmctl records about pools and volumes, as stored in JSON.
//! Field names follow Docker's devicemapper driver where they overlap
//! (`device_id`, `size`, `transaction_id`, `initialized`).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where a pool's data or metadata lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Backing {
    /// A sparse file under the pool's directory, attached to a loop device.
    File { path: PathBuf },
    /// A block device given by the user.
    Device { path: PathBuf },
}

impl Backing {
    pub fn path(&self) -> &std::path::Path {
        match self {
            Backing::File { path } | Backing::Device { path } => path,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolState {
    /// `pool create` is under way (or crashed): the next command on this
    /// pool rolls the creation back.
    Creating,
    Ready,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolRecord {
    pub name: String,
    /// Random id; dm UUIDs of the pool and its volumes derive from it.
    pub uuid: String,
    pub state: PoolState,
    pub data: Backing,
    pub meta: Backing,
    /// Bytes of data space (the pool table's length).
    pub data_size: u64,
    pub meta_size: u64,
    /// Data block size in bytes (fixed for the pool's life).
    pub block_size: u64,
    pub low_water_mark: u64,
    pub zeroing: bool,
    pub error_if_no_space: bool,
    /// The pool's committed transaction id, as set in the kernel metadata.
    pub transaction_id: u64,
    /// Next thin device id to try. Only ever grows (wrapping at 2^24), so an
    /// id is not handed out again while the kernel may still hold it.
    pub next_device_id: u32,
    /// Refuse new volumes and snapshots when less than this percentage of
    /// data space is free.
    #[serde(default = "default_min_free")]
    pub min_free_percent: u8,
    /// Refuse volumes whose sizes add up to more than this many times the
    /// data size (`None`: no limit; overcommit is still warned about).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_overcommit: Option<f64>,
    /// Unix seconds.
    pub created: u64,
}

fn default_min_free() -> u8 {
    10
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    Ext4,
    Xfs,
}

impl Filesystem {
    pub fn as_str(self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Xfs => "xfs",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub name: String,
    pub device_id: u32,
    /// Bytes (the thin table's length).
    pub size: u64,
    /// The pool transaction that created this volume.
    pub transaction_id: u64,
    /// Created completely (formatted, if it has a filesystem).
    pub initialized: bool,
    /// Name the volume this one is a snapshot of had when the snapshot was
    /// made. Which volume it is goes by its thin id and transaction
    /// (`parent_link`), never by this name: the parent may be removed and
    /// its name given to an unrelated volume.
    pub parent: Option<String>,
    pub parent_device_id: Option<u32>,
    /// The transaction that created the parent (its `transaction_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_transaction_id: Option<u64>,
    /// The parent's own ancestors, nearest first: what `diff
    /// --nearest-ancestor` falls back on once the parent is removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<Ancestor>,
    pub fs: Option<Filesystem>,
    pub created: u64,
    /// Whether it should be active; `pool activate` restores this after a reboot.
    pub active: bool,
    pub read_only: bool,
    /// Where `dmctl mount` last mounted it.
    pub mountpoint: Option<PathBuf>,
}

/// A volume as a snapshot's lineage remembers it: its thin id and the
/// transaction that created it identify it for the pool's whole life (thin
/// ids are not handed out again soon, transaction ids never); the name is
/// what it was called then.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ancestor {
    pub device_id: u32,
    pub transaction_id: Option<u64>,
    pub name: String,
}

impl Ancestor {
    /// Whether `v` is this ancestor (a record without the transaction, from
    /// before it was kept, matches on the thin id and name).
    pub fn is(&self, v: &VolumeRecord) -> bool {
        v.device_id == self.device_id
            && match self.transaction_id {
                Some(t) => v.transaction_id == t,
                None => v.name == self.name,
            }
    }
}

impl VolumeRecord {
    /// The parent, as a lineage entry.
    pub fn parent_link(&self) -> Option<Ancestor> {
        Some(Ancestor {
            device_id: self.parent_device_id?,
            transaction_id: self.parent_transaction_id,
            name: self.parent.clone()?,
        })
    }

    /// The record of this volume's parent among `all`, if it still exists.
    pub fn live_parent<'a>(&self, all: &'a [VolumeRecord]) -> Option<&'a VolumeRecord> {
        let link = self.parent_link()?;
        all.iter().find(|v| link.is(v))
    }

    /// The nearest ancestor among `all` that still exists.
    pub fn nearest_live_ancestor<'a>(&self, all: &'a [VolumeRecord]) -> Option<&'a VolumeRecord> {
        self.parent_link()
            .into_iter()
            .chain(self.ancestors.iter().cloned())
            .find_map(|a| all.iter().find(|v| a.is(v)))
    }

    /// Make this record a snapshot of `origin`.
    pub fn set_parent(&mut self, origin: &VolumeRecord) {
        self.parent = Some(origin.name.clone());
        self.parent_device_id = Some(origin.device_id);
        self.parent_transaction_id = Some(origin.transaction_id);
        self.ancestors = origin
            .parent_link()
            .into_iter()
            .chain(origin.ancestors.iter().cloned())
            .collect();
    }
}

/// A kernel-changing step under way. Written before the pool message,
/// removed after `set_transaction_id` committed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// The transaction id this step commits (the pool's id + 1).
    pub transaction_id: u64,
    pub op: TxnOp,
    pub started: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TxnOp {
    /// create_thin (no parent) or create_snap (parent_device_id set).
    Create { volume: VolumeRecord },
    /// delete of a volume's thin device.
    Delete { volume: VolumeRecord },
}

/// A warm spare being handed out under a user's name by `image provision`
/// (see `ops::spare`). Written before the dm rename; removed once the
/// volume's record under its new name is saved. No pool transaction: the
/// kernel's thin metadata does not change, only names and a mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The spare's record as it was.
    pub spare: VolumeRecord,
    /// The name it takes.
    pub name: String,
    /// Where it is to be mounted (canonical), if anywhere.
    pub mount_at: Option<PathBuf>,
    pub started: u64,
}

/// The kind of a containerd snapshot (containerd's `snapshots.Kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotKind {
    View,
    Active,
    Committed,
}

impl SnapshotKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotKind::View => "view",
            SnapshotKind::Active => "active",
            SnapshotKind::Committed => "committed",
        }
    }
}

/// A point in time with containerd's precision (a protobuf Timestamp).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub secs: i64,
    pub nanos: i32,
}

impl Stamp {
    pub fn now() -> Stamp {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Stamp {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos() as i32,
        }
    }
}

/// One snapshot of `dmctl serve` (see `ops::snapshotter`). containerd's
/// key is data here, never a path or a dm name: the volume is
/// `names::snapshot_volume_name(id)`, or an image layer's volume for a
/// snapshot adopted from `dmctl image import`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub key: String,
    pub id: u64,
    pub kind: SnapshotKind,
    /// The key of the committed snapshot this one is made from.
    pub parent: Option<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub created: Stamp,
    pub updated: Stamp,
    /// The thin volume that holds its filesystem.
    pub volume: String,
    /// False for a layer of `dmctl image import` that containerd adopted:
    /// removing the snapshot leaves the layer to `dmctl image rm`.
    pub owns_volume: bool,
    /// Still being made: its volume may be missing or half made. Such a
    /// record is invisible to containerd and is swept (with its volume)
    /// when the server starts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub creating: bool,
    /// Bytes used, as recorded at commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<u64>,
    /// The active key it was committed from: a commit that containerd
    /// retries (the server died before it answered) is found done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed_from: Option<String>,
}

/// A warm spare of `dmctl serve`: an active thin snapshot of a committed
/// snapshot's volume, made ahead of time, that a Prepare on that parent
/// takes instead of making one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSpare {
    /// The key of the committed snapshot it is made from.
    pub parent: String,
    pub id: u64,
    pub volume: String,
    pub size: u64,
    /// Being made (swept at start, as a creating snapshot is).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub creating: bool,
}

/// Every snapshot of a pool's `dmctl serve`: one file, rewritten atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotTable {
    /// The next snapshot number (never handed out twice).
    pub next_id: u64,
    pub snapshots: Vec<SnapshotRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spares: Vec<SnapshotSpare>,
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
