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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Name of the volume this one is a snapshot of, if any.
    pub parent: Option<String>,
    pub parent_device_id: Option<u32>,
    pub fs: Option<Filesystem>,
    pub created: u64,
    /// Whether it should be active; `pool activate` restores this after a reboot.
    pub active: bool,
    pub read_only: bool,
    /// Where `dmctl mount` last mounted it.
    pub mountpoint: Option<PathBuf>,
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

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
