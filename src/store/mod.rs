//! The state root: JSON metadata of pools and volumes, and their locks.
//!
//! Every path under the state root is made here, and only here:
//!
//! ```text
//! ROOT/                      0700
//!   locks/POOL.lock          flock: held exclusively by mutating commands
//!   locks/images/POOL.lock   flock: held by image commands (taken first)
//!   locks/POOL.serve.lock    flock: held by the pool's `dmctl serve` while it runs
//!   tmp/                     private mount point of `resize`'s grow tool
//!   tmp/POOL+NAME/           scratch mount of a new snapshot of `dmctl serve`
//!   pools/POOL/pool.json     PoolRecord
//!   pools/POOL/txn.json      Transaction, only while one is open
//!   pools/POOL/claim.json    Claim of a warm spare, only while one is open
//!   pools/POOL/snapshots.json  SnapshotTable of `dmctl serve` (containerd's keys)
//!   pools/POOL/devices/NAME.json  VolumeRecord
//!   pools/POOL/devices/NAME.json.corrupt-TIME  a record set aside by check --repair
//!   pools/POOL/spares/NAME/  mount points of warm spares (ops::spare)
//!   pools/POOL/images/KEY.json    ImageRecord (KEY: sha256 of the reference)
//!   pools/POOL/layers/CHAIN.json  LayerRecord
//!   pools/POOL/blobs/HEX     layer tars and configs, by digest
//!   pools/POOL/mnt/          temporary mounts and extraction of image commands
//!   pools/POOL/data.img, meta.img  sparse backing files (file-backed pools)
//! ```
//! Every write is temp + fsync + rename + fsync(dir) (see `fsutil`); files
//! are 0600 and directories 0700. Names are validated before they become
//! paths, so nothing resolves outside the root.

pub mod model;

use crate::error::{Error, Result};
use crate::fsutil::{self, LockFile};
use crate::names::validate_name;
use model::{Claim, PoolRecord, SnapshotTable, Transaction, VolumeRecord};
use std::path::{Path, PathBuf};

pub const DEFAULT_ROOT: &str = "/var/lib/dmctl";

/// Between a record's name and the time it was set aside.
const SET_ASIDE_INFIX: &str = ".corrupt-";

/// A sha256 hex digest, the only thing besides validated names that
/// becomes a file name.
fn checked_hex(hex: &str) -> Result<&str> {
    if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(hex)
    } else {
        Err(Error::Invalid(format!(
            "not a sha256 digest: {}",
            hex.escape_debug()
        )))
    }
}

/// The directories of a pool's image store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageDir {
    Images,
    Layers,
    Blobs,
    /// Temporary mounts and extraction.
    Work,
}

impl ImageDir {
    fn as_str(self) -> &'static str {
        match self {
            ImageDir::Images => "images",
            ImageDir::Layers => "layers",
            ImageDir::Blobs => "blobs",
            ImageDir::Work => "mnt",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Create the root and its fixed subdirectories (0700).
    pub fn init(&self) -> Result<()> {
        fsutil::create_private_dir(&self.root.join("pools"))?;
        fsutil::create_private_dir(&self.root.join("locks"))
    }

    pub fn pool_dir(&self, pool: &str) -> Result<PathBuf> {
        validate_name("pool", pool)?;
        Ok(self.root.join("pools").join(pool))
    }

    fn pool_file(&self, pool: &str) -> Result<PathBuf> {
        Ok(self.pool_dir(pool)?.join("pool.json"))
    }

    fn txn_file(&self, pool: &str) -> Result<PathBuf> {
        Ok(self.pool_dir(pool)?.join("txn.json"))
    }

    fn claim_file(&self, pool: &str) -> Result<PathBuf> {
        Ok(self.pool_dir(pool)?.join("claim.json"))
    }

    fn devices_dir(&self, pool: &str) -> Result<PathBuf> {
        Ok(self.pool_dir(pool)?.join("devices"))
    }

    /// Where warm spares are mounted while they wait (a private mount).
    pub fn spares_dir(&self, pool: &str) -> Result<PathBuf> {
        Ok(self.pool_dir(pool)?.join("spares"))
    }

    /// Where spare `spare` waits.
    pub fn spare_mountpoint(&self, pool: &str, spare: &str) -> Result<PathBuf> {
        validate_name("volume", spare)?;
        Ok(self.spares_dir(pool)?.join(spare))
    }

    /// A directory of the image store: `images`, `layers`, `blobs` or `mnt`.
    pub fn image_dir(&self, pool: &str, which: ImageDir) -> Result<PathBuf> {
        Ok(self.pool_dir(pool)?.join(which.as_str()))
    }

    /// An image's record: named by the sha256 of its reference, so a
    /// reference (any string a registry allows) never becomes a path.
    pub fn image_file(&self, pool: &str, reference: &str) -> Result<PathBuf> {
        use sha2::Digest as _;
        let key = hex::encode(sha2::Sha256::digest(reference.as_bytes()));
        Ok(self
            .image_dir(pool, ImageDir::Images)?
            .join(format!("{}.json", &key[..32])))
    }

    /// A layer's record, by the hex of its ChainID.
    pub fn layer_file(&self, pool: &str, chain_hex: &str) -> Result<PathBuf> {
        let hex = checked_hex(chain_hex)?;
        Ok(self
            .image_dir(pool, ImageDir::Layers)?
            .join(format!("{hex}.json")))
    }

    /// A blob of the content store, by the hex of its digest.
    pub fn blob_file(&self, pool: &str, digest_hex: &str) -> Result<PathBuf> {
        let hex = checked_hex(digest_hex)?;
        Ok(self.image_dir(pool, ImageDir::Blobs)?.join(hex))
    }

    /// The lock image commands take before the pool's.
    pub fn images_lock_file(&self, pool: &str) -> Result<PathBuf> {
        validate_name("pool", pool)?;
        Ok(self
            .root
            .join("locks")
            .join("images")
            .join(format!("{pool}.lock")))
    }

    /// A private scratch directory (the grow tool's mount point).
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A scratch mount point for volume `name` of `pool` (made 0700 by the
    /// caller, removed after use).
    pub fn scratch_mountpoint(&self, pool: &str, name: &str) -> Result<PathBuf> {
        validate_name("pool", pool)?;
        validate_name("volume", name)?;
        Ok(self.tmp_dir().join(format!("{pool}+{name}")))
    }

    /// Sum of the sizes of the pool's volumes.
    pub fn provisioned_bytes(&self, pool: &str) -> Result<u64> {
        Ok(self
            .list_volumes(pool)?
            .iter()
            .map(|v| v.size)
            .fold(0u64, u64::saturating_add))
    }

    /// Where `check --repair` sets an unreadable record aside:
    /// `NAME.json.corrupt-TIME`.
    pub fn set_aside_file(&self, pool: &str, name: &str, unix_time: u64) -> Result<PathBuf> {
        let file = format!("{name}.json{SET_ASIDE_INFIX}{unix_time}");
        Ok(self.devices_dir(pool)?.join(file))
    }

    /// Records set aside by `check --repair`, as (volume name, file),
    /// sorted by file name.
    pub fn set_aside_records(&self, pool: &str) -> Result<Vec<(String, PathBuf)>> {
        let dir = self.devices_dir(pool)?;
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(Error::io(dir, e)),
        };
        let mut out = vec![];
        for e in rd.flatten() {
            let file = e.file_name();
            let Some((stem, _)) = file.to_str().and_then(|f| f.split_once(SET_ASIDE_INFIX)) else {
                continue;
            };
            let Some(name) = stem.strip_suffix(".json") else {
                continue;
            };
            if crate::names::is_valid_name(name) {
                out.push((name.to_string(), e.path()));
            }
        }
        out.sort_by(|a, b| a.1.cmp(&b.1));
        Ok(out)
    }

    /// The directory of the pool's volume records (fsync'd after renames).
    pub fn devices_dir_path(&self, pool: &str) -> Result<PathBuf> {
        self.devices_dir(pool)
    }

    pub fn volume_file(&self, pool: &str, name: &str) -> Result<PathBuf> {
        validate_name("volume", name)?;
        Ok(self.devices_dir(pool)?.join(format!("{name}.json")))
    }

    /// Take the lock of a pool that exists: exclusive, for commands that
    /// change anything. A pool that does not exist is `NotFound`, and
    /// nothing is created for it. Read-only commands take none (every file
    /// is replaced atomically).
    pub fn lock_pool(&self, pool: &str) -> Result<LockFile> {
        self.require_pool(pool)?;
        self.lock_file(pool)
    }

    /// `NotFound` unless the pool has a record (a stat, not a parse: the
    /// caller reads the record under its lock).
    pub fn require_pool(&self, pool: &str) -> Result<()> {
        if self.pool_file(pool)?.is_file() {
            Ok(())
        } else {
            Err(self.no_pool(pool))
        }
    }

    /// The lock of a pool about to be created: the state root is made if
    /// missing (`pool create` is the one command that makes it).
    pub fn lock_new_pool(&self, pool: &str) -> Result<LockFile> {
        validate_name("pool", pool)?;
        self.init()?;
        self.lock_file(pool)
    }

    fn lock_file(&self, pool: &str) -> Result<LockFile> {
        fsutil::lock_exclusive(&self.root.join("locks").join(format!("{pool}.lock")))
    }

    /// The lock a pool's `dmctl serve` holds while it runs: a second
    /// server on the pool is refused (`Busy`), without waiting.
    pub fn lock_server(&self, pool: &str) -> Result<LockFile> {
        self.require_pool(pool)?;
        let path = self.root.join("locks").join(format!("{pool}.serve.lock"));
        fsutil::try_lock_exclusive(&path)?.ok_or_else(|| {
            Error::Busy(format!(
                "pool '{pool}' is already served by another `dmctl serve` (it holds {})",
                path.display()
            ))
        })
    }

    fn snapshots_file(&self, pool: &str) -> Result<PathBuf> {
        Ok(self.pool_dir(pool)?.join("snapshots.json"))
    }

    /// The pool's containerd snapshots (empty if it never served any).
    pub fn load_snapshots(&self, pool: &str) -> Result<SnapshotTable> {
        Ok(fsutil::read_json_opt(&self.snapshots_file(pool)?)?.unwrap_or_default())
    }

    pub fn save_snapshots(&self, pool: &str, table: &SnapshotTable) -> Result<()> {
        fsutil::write_json_atomic(&self.snapshots_file(pool)?, table)
    }

    pub fn pool_exists(&self, pool: &str) -> Result<bool> {
        Ok(self.pool_file(pool)?.exists())
    }

    /// The pools under the state root. A root that does not exist is an
    /// error that says so (a mistyped `--root` is not an empty list).
    pub fn list_pools(&self) -> Result<Vec<String>> {
        if !self.root.exists() {
            return Err(Error::NotFound(format!(
                "state root {} does not exist (no pool was created there)",
                self.root.display()
            )));
        }
        let dir = self.root.join("pools");
        let mut names = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| crate::names::is_valid_name(n))
                .filter(|n| dir.join(n).join("pool.json").exists())
                .collect::<Vec<_>>(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
            Err(e) => return Err(Error::io(dir, e)),
        };
        names.sort();
        Ok(names)
    }

    pub fn load_pool(&self, pool: &str) -> Result<PoolRecord> {
        let file = self.pool_file(pool)?;
        match fsutil::read_json_opt(&file) {
            Ok(Some(rec)) => Ok(rec),
            Ok(None) => Err(self.no_pool(pool)),
            // `--root` naming a file: no pool there either.
            Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOTDIR) => {
                Err(self.no_pool(pool))
            }
            Err(e) => Err(e),
        }
    }

    fn no_pool(&self, pool: &str) -> Error {
        if self.root.is_dir() {
            Error::NotFound(format!("pool '{pool}' not found"))
        } else {
            Error::NotFound(format!(
                "pool '{pool}' not found: state root {} does not exist",
                self.root.display()
            ))
        }
    }

    /// Create the pool's directories and write its record.
    pub fn save_pool(&self, rec: &PoolRecord) -> Result<()> {
        fsutil::create_private_dir(&self.devices_dir(&rec.name)?)?;
        fsutil::write_json_atomic(&self.pool_file(&rec.name)?, rec)
    }

    /// Remove the pool's whole directory (after its devices are gone).
    pub fn remove_pool(&self, pool: &str) -> Result<()> {
        let dir = self.pool_dir(pool)?;
        // pool.json goes first, durably: a crash mid-way leaves no pool
        // record pointing at half-removed files.
        fsutil::remove_file_durable(&dir.join("pool.json"))?;
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&dir, e)),
        }
        fsutil::fsync_dir(&self.root.join("pools"))
    }

    pub fn load_volume(&self, pool: &str, name: &str) -> Result<Option<VolumeRecord>> {
        fsutil::read_json_opt(&self.volume_file(pool, name)?)
    }

    /// A volume that must exist.
    pub fn volume(&self, pool: &str, name: &str) -> Result<VolumeRecord> {
        self.load_volume(pool, name)?
            .ok_or_else(|| Error::NotFound(format!("volume '{pool}/{name}' not found")))
    }

    pub fn save_volume(&self, pool: &str, rec: &VolumeRecord) -> Result<()> {
        fsutil::write_json_atomic(&self.volume_file(pool, &rec.name)?, rec)
    }

    pub fn remove_volume(&self, pool: &str, name: &str) -> Result<bool> {
        fsutil::remove_file_durable(&self.volume_file(pool, name)?)
    }

    /// Names of the pool's volume files, sorted (temp files of an
    /// interrupted write are not volumes).
    pub fn volume_names(&self, pool: &str) -> Result<Vec<String>> {
        Ok(fsutil::json_files(&self.devices_dir(pool)?)?
            .into_iter()
            .map(|(name, _)| name)
            .filter(|name| crate::names::is_valid_name(name))
            .collect())
    }

    /// Every volume of the pool, sorted by name. A corrupt file is an
    /// error naming it (`dmctl check` reports such files one by one). A
    /// file removed between listing and reading (by a concurrent `rm`;
    /// readers take no lock) is a volume that is gone, not an error.
    pub fn list_volumes(&self, pool: &str) -> Result<Vec<VolumeRecord>> {
        let mut out = vec![];
        for n in self.volume_names(pool)? {
            out.extend(self.load_volume(pool, &n)?);
        }
        Ok(out)
    }

    pub fn load_txn(&self, pool: &str) -> Result<Option<Transaction>> {
        fsutil::read_json_opt(&self.txn_file(pool)?)
    }

    pub fn save_txn(&self, pool: &str, txn: &Transaction) -> Result<()> {
        fsutil::write_json_atomic(&self.txn_file(pool)?, txn)
    }

    pub fn clear_txn(&self, pool: &str) -> Result<()> {
        fsutil::remove_file_durable(&self.txn_file(pool)?).map(|_| ())
    }

    pub fn load_claim(&self, pool: &str) -> Result<Option<Claim>> {
        fsutil::read_json_opt(&self.claim_file(pool)?)
    }

    /// Whether a claim is open, without reading it.
    pub fn has_claim(&self, pool: &str) -> Result<bool> {
        Ok(self.claim_file(pool)?.exists())
    }

    pub fn save_claim(&self, pool: &str, claim: &Claim) -> Result<()> {
        fsutil::write_json_atomic(&self.claim_file(pool)?, claim)
    }

    pub fn clear_claim(&self, pool: &str) -> Result<()> {
        fsutil::remove_file_durable(&self.claim_file(pool)?).map(|_| ())
    }
}
