//! Image operations: OCI import into snapshot chains, ls, inspect, rm,
//! provision, diff, commit, export.
//!
//! Each layer is one thin volume named `layer-<first 32 hex of its ChainID>`:
//! the first layer a `create` (+ mkfs), each next one a `snapshot` of its
//! parent layer, the layer applied into it, then left read-only and inactive.
//! Images sharing layers share those volumes. A layer counts as present
//! only once its record `layers/<chain hex>.json` is written, after the
//! apply and the digest checks; a layer volume without one is the remains
//! of an interrupted import and is removed and redone.
//!
//! The uncompressed layer tars are kept in `blobs/` (a content store, as
//! containerd has), so `export` writes the same diff ids, hence the same
//! ChainIDs, and `commit` records the tar it applied.
//!
//! Records live in the pool's image store (`store::ImageDir`: images by
//! reference, layers by ChainID, blobs by digest; see `store` for the tree).

use super::{session, spare, volume, Ctx};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, LockFile};
use crate::image::oci::{self, chain_id, Digest};
use crate::image::{diff, layer};
use crate::kernel::mount;
use crate::names::VolumeRef;
use crate::store::model::{now, Filesystem, VolumeRecord};
use crate::store::ImageDir;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub const DEFAULT_IMAGE_SIZE: u64 = 10 << 30;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub chain_id: Digest,
    pub diff_id: Digest,
    pub parent: Option<Digest>,
    pub volume: String,
    /// Uncompressed bytes of the layer tar.
    pub size: u64,
    pub created: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub reference: String,
    pub config_digest: Digest,
    /// Layers bottom to top.
    pub layers: Vec<Digest>,
    pub size: u64,
    pub fs: Filesystem,
    pub created: u64,
}

impl ImageRecord {
    pub fn top(&self) -> Option<&Digest> {
        self.layers.last()
    }
}

fn pool_path(ctx: &Ctx, pool: &str, which: ImageDir) -> Result<PathBuf> {
    ctx.store.image_dir(pool, which)
}

fn image_file(ctx: &Ctx, pool: &str, reference: &str) -> Result<PathBuf> {
    ctx.store.image_file(pool, reference)
}

fn layer_file(ctx: &Ctx, pool: &str, chain: &Digest) -> Result<PathBuf> {
    ctx.store.layer_file(pool, chain.hex())
}

fn blob_file(ctx: &Ctx, pool: &str, digest: &Digest) -> Result<PathBuf> {
    ctx.store.blob_file(pool, digest.hex())
}

/// The volume that holds a layer.
pub fn layer_volume_name(chain: &Digest) -> String {
    format!("layer-{}", &chain.hex()[..32])
}

pub(super) fn lock_images(ctx: &Ctx, pool: &str) -> Result<LockFile> {
    // A pool that does not exist gets no lock file.
    ctx.store.require_pool(pool)?;
    let file = ctx.store.images_lock_file(pool)?;
    if let Some(dir) = file.parent() {
        fsutil::create_private_dir(dir)?;
    }
    fsutil::lock_exclusive(&file)
}

fn init_dirs(ctx: &Ctx, pool: &str) -> Result<()> {
    ctx.store.load_pool(pool)?;
    for which in [
        ImageDir::Images,
        ImageDir::Layers,
        ImageDir::Blobs,
        ImageDir::Work,
    ] {
        fsutil::create_private_dir(&pool_path(ctx, pool, which)?)?;
    }
    Ok(())
}

pub fn load_layer(ctx: &Ctx, pool: &str, chain: &Digest) -> Result<Option<LayerRecord>> {
    fsutil::read_json_opt(&layer_file(ctx, pool, chain)?)
}

pub fn load_image(ctx: &Ctx, pool: &str, reference: &str) -> Result<ImageRecord> {
    fsutil::read_json_opt(&image_file(ctx, pool, reference)?)?
        .ok_or_else(|| Error::NotFound(format!("image '{reference}' not found in pool '{pool}'")))
}

pub fn list_images(ctx: &Ctx, pool: &str) -> Result<Vec<ImageRecord>> {
    ctx.store.load_pool(pool)?;
    let mut out: Vec<ImageRecord> = read_records(&pool_path(ctx, pool, ImageDir::Images)?)?;
    out.sort_by(|a, b| a.reference.cmp(&b.reference));
    Ok(out)
}

/// Every JSON record in a directory of the pool.
fn read_records<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<Vec<T>> {
    fsutil::json_files(dir)?
        .iter()
        .map(|(_, path)| fsutil::read_json(path))
        .collect()
}

/// A private mount point under the pool's directory, removed on drop
/// (after unmounting, if still mounted).
struct TempMount {
    dir: PathBuf,
    mounted: bool,
}

impl TempMount {
    fn new(ctx: &Ctx, pool: &str, tag: &str) -> Result<TempMount> {
        let work = pool_path(ctx, pool, ImageDir::Work)?;
        remove_dead_mount_points(&work);
        let dir = work.join(format!("{}-{tag}", std::process::id()));
        fsutil::create_private_dir(&dir)?;
        Ok(TempMount {
            dir,
            mounted: false,
        })
    }

    fn mount(&mut self, ctx: &Ctx, v: &VolumeRef, read_only: bool) -> Result<()> {
        volume::mount(ctx, v, &self.dir, read_only, "")?;
        self.mounted = true;
        Ok(())
    }

    /// Flush and unmount (the volume's record is the caller's to update).
    fn umount(&mut self) -> Result<()> {
        if self.mounted {
            nix::unistd::syncfs(std::fs::File::open(&self.dir).at(&self.dir)?)
                .map_err(|e| Error::io(&self.dir, e.into()))?;
            mount::umount(&self.dir)?;
            self.mounted = false;
        }
        Ok(())
    }
}

/// Mount points `PID-TAG` that a killed command left: removed once their
/// process is gone (an empty directory only: `rmdir` fails on anything
/// else, a mount point included, which the next `rm --force` of its volume
/// takes down).
fn remove_dead_mount_points(work: &Path) {
    let Ok(rd) = std::fs::read_dir(work) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split_once('-'))
            .map(|(p, _)| p)
        else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

impl Drop for TempMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = mount::umount(&self.dir);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Progress of one import, passed on to the caller's callback.
struct Progress<'a> {
    callback: Option<&'a ProgressFn<'a>>,
    layers: usize,
}

impl Progress<'_> {
    fn applying(&self, layer: usize, bytes: u64, blob_size: u64) {
        if let Some(f) = self.callback {
            f(ImportEvent::Applying {
                layer,
                layers: self.layers,
                bytes,
                blob_size,
            });
        }
    }

    fn done(&self, layer: usize, bytes: u64, shared: bool) {
        if let Some(f) = self.callback {
            f(ImportEvent::Done {
                layer,
                layers: self.layers,
                bytes,
                shared,
            });
        }
    }
}

/// Chunks of a layer's uncompressed tar, from the decoding thread to the
/// applying one.
const CHUNK: usize = 256 << 10;

/// How many chunks may wait between the two threads (2 MiB).
const CHUNKS_IN_FLIGHT: usize = 8;

/// The applying side of the import pipeline: a `Read` over the chunks the
/// decoding thread sends. It also writes each chunk to the blob's copy (the
/// decoder, which decompresses and hashes twice, is the busier thread) and
/// reports progress.
struct ChunkReader<'a> {
    chunks: std::sync::mpsc::Receiver<Vec<u8>>,
    copy: std::fs::File,
    chunk: Vec<u8>,
    at: usize,
    bytes: u64,
    progress: &'a Progress<'a>,
    layer: usize,
    blob_size: u64,
    /// Time spent waiting for the decoder (for `-v`).
    waited: std::time::Duration,
}

impl Read for ChunkReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            let t = std::time::Instant::now();
            let got = self.chunks.recv();
            self.waited += t.elapsed();
            match got {
                Ok(c) => {
                    self.copy.write_all(&c).map_err(|e| {
                        std::io::Error::new(
                            e.kind(),
                            format!("writing the layer's copy in blobs/: {e}"),
                        )
                    })?;
                    (self.chunk, self.at) = (c, 0);
                }
                // The decoder ended (end of stream or an error it reports
                // itself when joined).
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        self.bytes += n as u64;
        if self.bytes % (8 << 20) < n as u64 {
            self.progress
                .applying(self.layer, self.bytes, self.blob_size);
        }
        Ok(n)
    }
}

/// Apply one layer into `root` while a second thread reads the blob,
/// hashes it, decompresses it, hashes the tar and writes its copy to
/// `blob_tmp`: the two halves of the work run on two CPUs, as `gzip -dc |
/// tar -x` does. Returns the uncompressed size once both digests are
/// verified.
fn apply_pipelined(
    root: &Path,
    reader: oci::LayerReader,
    blob_tmp: &Path,
    progress: &Progress,
    layer: usize,
    blob_size: u64,
) -> Result<u64> {
    let copy = std::fs::File::create(blob_tmp).at(blob_tmp)?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(CHUNKS_IN_FLIGHT);
    std::thread::scope(|scope| {
        let decoder = scope.spawn(move || -> Result<(u64, std::time::Duration)> {
            let mut reader = reader;
            let mut reading = Ok(());
            let mut waited = std::time::Duration::ZERO;
            loop {
                let mut chunk = vec![0u8; CHUNK];
                let n = match reader.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        reading = Err(Error::io(blob_tmp, e));
                        break;
                    }
                };
                chunk.truncate(n);
                let t = std::time::Instant::now();
                let sent = tx.send(chunk);
                waited += t.elapsed();
                if sent.is_err() {
                    // The applier stopped early; finish() below still
                    // drains the stream and checks the digests.
                    break;
                }
            }
            drop(tx);
            // Check both digests even after a read error: a corrupt blob
            // usually also breaks the stream, and the digest is then the
            // error worth reporting.
            let verified = reader.finish();
            let bytes = match (verified, reading) {
                (Err(e), _) | (Ok(_), Err(e)) => return Err(e),
                (Ok(bytes), Ok(())) => bytes,
            };
            Ok((bytes, waited))
        });
        let mut chunks = ChunkReader {
            chunks: rx,
            copy,
            chunk: vec![],
            at: 0,
            bytes: 0,
            progress,
            layer,
            blob_size,
            waited: std::time::Duration::ZERO,
        };
        let started = std::time::Instant::now();
        let applied = layer::apply_layer(root, &mut chunks);
        // The tar reader stops at the end-of-archive marker; the rest of
        // the stream still belongs to the blob and the digest.
        let drained = std::io::copy(&mut chunks, &mut std::io::sink());
        let applier_waited = chunks.waited;
        let copied = chunks.copy.sync_all();
        drop(chunks);
        let verified = decoder.join().unwrap_or_else(|_| {
            Err(Error::io(
                blob_tmp,
                std::io::Error::other("layer decoder panicked"),
            ))
        });
        if let Ok((_, decoder_waited)) = &verified {
            // Which half is the bottleneck: the one that waits less.
            crate::trace::step(|| {
                format!(
                    "layer {}: applied in {:.0} ms; the applier waited {:.0} ms for data, \
                     the decoder {:.0} ms for the applier",
                    layer + 1,
                    started.elapsed().as_secs_f64() * 1e3,
                    applier_waited.as_secs_f64() * 1e3,
                    decoder_waited.as_secs_f64() * 1e3
                )
            });
        }
        match (applied, drained, verified) {
            (_, _, Err(e)) => Err(e),
            (Err(e), _, _) => Err(e),
            (_, Err(e), _) => Err(Error::io(blob_tmp, e)),
            (Ok(_), Ok(_), Ok((bytes, _))) => copied.at(blob_tmp).map(|()| bytes),
        }
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    pub reference: String,
    pub layers: usize,
    pub layers_created: usize,
    pub layers_shared: usize,
    pub bytes_applied: u64,
    pub already_present: bool,
    pub top_volume: String,
}

pub struct ImportRequest<'a> {
    pub pool: &'a str,
    pub source: &'a Path,
    /// Which image of the source (by its name there); a source with one
    /// image needs none.
    pub selector: Option<&'a str>,
    /// The name it gets in the pool (default: its name in the source).
    pub name: Option<&'a str>,
    pub size: Option<u64>,
    pub fs: Filesystem,
    /// Told about each layer as it goes.
    pub progress: Option<&'a ProgressFn<'a>>,
}

/// What an import is doing, for a progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportEvent {
    /// Layer `layer` (0-based) of `layers` is being applied: `bytes` of its
    /// tar so far, of a blob of `blob_size` bytes (compressed).
    Applying {
        layer: usize,
        layers: usize,
        bytes: u64,
        blob_size: u64,
    },
    /// Layer `layer` is done: `bytes` applied, or shared (already in the pool).
    Done {
        layer: usize,
        layers: usize,
        bytes: u64,
        shared: bool,
    },
}

/// A progress callback (called from the importing thread).
pub type ProgressFn<'a> = dyn Fn(ImportEvent) + Sync + 'a;

/// `SOURCE:REF` as skopeo writes `oci:DIR:REF`: the path, and the image
/// selected in it. A path that exists as given is taken whole (it may
/// contain a colon).
pub fn split_source(arg: &str) -> (PathBuf, Option<String>) {
    if Path::new(arg).exists() {
        return (PathBuf::from(arg), None);
    }
    // The path ends at the first colon after which the rest is a
    // reference and before which the path exists (REF may hold colons:
    // `alpine:3.20`, `localhost:5000/x:1`).
    for (i, _) in arg.match_indices(':') {
        let (path, rest) = (&arg[..i], &arg[i + 1..]);
        if !rest.is_empty() && Path::new(path).exists() {
            return (PathBuf::from(path), Some(rest.to_string()));
        }
    }
    (PathBuf::from(arg), None)
}

/// Remove a layer volume left by an interrupted import (no layer record).
fn remove_stale_layer(ctx: &Ctx, pool: &str, vol: &str) -> Result<()> {
    let v = VolumeRef::new(pool, vol)?;
    match volume::remove(ctx, &v, true) {
        // Absent, or a half-made create that `rm`'s own recovery just
        // rolled back: either way it is gone.
        Ok(()) | Err(Error::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Fills a mounted layer volume (first argument) and writes the layer tar to
/// the blob path (second); returns the layer's diff id and size.
type ApplyFn<'a> = dyn FnMut(&Path, &Path) -> Result<(Digest, u64)> + 'a;

/// Make one layer: its volume (create or snapshot of the parent layer),
/// the tar applied into it, the blob kept, then read-only and inactive.
/// Returns the record; it is written by the caller only after the digests
/// are verified.
///
/// Two pool sessions per layer: one makes the volume and mounts it, one
/// unmounts and seals it. The pool's lock is not held while the tar is
/// applied (minutes for a big layer): a CI fleet's provisions on the same
/// pool go on meanwhile. The volume has no layer record until the import
/// ends, so nothing else takes it for a layer.
fn make_layer(
    ctx: &Ctx,
    pool: &str,
    fs: Filesystem,
    parent: Option<&LayerRecord>,
    chain: &Digest,
    size: u64,
    apply: &mut ApplyFn,
) -> Result<LayerRecord> {
    let name = layer_volume_name(chain);
    let v = VolumeRef::new(pool, &name)?;
    let mut m = TempMount::new(ctx, pool, &name)?;
    let blob_tmp = pool_path(ctx, pool, ImageDir::Blobs)?.join(format!(".{name}.tmp"));
    let made = (|| {
        make_layer_volume(ctx, &v, fs, parent, size, &mut m)?;
        let (diff_id, bytes) = apply(&m.dir, &blob_tmp)?;
        crate::crashpoint::hit("layer:after-apply");
        {
            let s = session::open(ctx, pool)?;
            m.umount()?;
            volume::seal_locked(ctx, &s.pool, &v)?;
        }
        let blob = blob_file(ctx, pool, &diff_id)?;
        std::fs::rename(&blob_tmp, &blob).at(&blob)?;
        fsutil::fsync_dir(blob.parent().unwrap_or(Path::new("/")))?;
        Ok(LayerRecord {
            chain_id: chain.clone(),
            diff_id,
            parent: parent.map(|p| p.chain_id.clone()),
            volume: name.clone(),
            size: bytes,
            created: now(),
        })
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(&blob_tmp);
        let _ = m.umount();
        let _ = remove_stale_layer(ctx, pool, &name);
    }
    made
}

/// The first session of `make_layer`: a stale volume of the name (an
/// interrupted import's) removed, the layer's volume made (active) and
/// mounted at `m`.
fn make_layer_volume(
    ctx: &Ctx,
    v: &VolumeRef,
    fs: Filesystem,
    parent: Option<&LayerRecord>,
    size: u64,
    m: &mut TempMount,
) -> Result<()> {
    let mut s = session::open(ctx, &v.pool)?;
    volume::remove_if_present(ctx, &mut s.pool, v)?;
    let (mut rec, info) = match parent {
        None => {
            let req = volume::CreateRequest {
                volume: v.clone(),
                size,
                fs: Some(fs),
                mkfs_args: vec![],
            };
            volume::create_locked(ctx, &mut s, &req)?
        }
        Some(p) => {
            let pv = VolumeRef::new(&v.pool, &p.volume)?;
            let size = size.max(ctx.store.volume(&v.pool, &p.volume)?.size);
            let (rec, info) =
                volume::snapshot_locked(ctx, &mut s.pool, &s.device, &pv, v, Some(size), true)?;
            let info = info.ok_or_else(|| {
                Error::Drift(format!(
                    "layer volume '{v}' was activated but has no device"
                ))
            })?;
            (rec, info)
        }
    };
    crate::crashpoint::hit("layer:after-volume");
    volume::mount_locked(
        ctx,
        &s.pool,
        &mut rec,
        &info,
        &volume::MountAt::fresh(&m.dir),
    )?;
    m.mounted = true;
    Ok(())
}

/// `dmctl image import POOL SOURCE [--name REF] [--size SIZE] [--fs ext4|xfs]`.
pub fn import(ctx: &Ctx, req: &ImportRequest) -> Result<ImportReport> {
    init_dirs(ctx, req.pool)?;
    let _lock = lock_images(ctx, req.pool)?;
    let work = pool_path(ctx, req.pool, ImageDir::Work)?;
    let img = oci::open(req.source, req.selector, req.name, &work)?;
    let reference = req
        .name
        .map(String::from)
        .or_else(|| img.reference.clone())
        .or_else(|| req.selector.map(String::from))
        .ok_or_else(|| Error::Invalid("the image has no name: give --name NAME".into()))?;
    let size = req.size.unwrap_or(DEFAULT_IMAGE_SIZE);
    let chains: Vec<Digest> = img.layers.iter().map(|l| l.chain_id.clone()).collect();
    let Some(top) = chains.last() else {
        return Err(Error::Invalid(format!("image '{reference}' has no layers")));
    };
    let mut report = ImportReport {
        reference: reference.clone(),
        layers: chains.len(),
        layers_created: 0,
        layers_shared: 0,
        bytes_applied: 0,
        already_present: false,
        top_volume: layer_volume_name(top),
    };
    if let Ok(existing) = load_image(ctx, req.pool, &reference) {
        if existing.layers == chains
            && existing.config_digest == img.config_digest
            && layers_present(ctx, req.pool, &chains)?
        {
            report.layers_shared = chains.len();
            report.already_present = true;
            return Ok(report);
        }
    }
    let mut created: Vec<LayerRecord> = vec![];
    let made = make_layers(ctx, req, &img, size, &mut report, &mut created);
    if let Err(e) = made {
        // Nothing of this import stays behind: its layer volumes and blobs.
        for rec in created.iter().rev() {
            let _ = remove_stale_layer(ctx, req.pool, &rec.volume);
            let _ = std::fs::remove_file(blob_file(ctx, req.pool, &rec.diff_id)?);
        }
        return Err(e);
    }
    crate::crashpoint::hit("image-import:before-records");
    // Layers become visible only now that every digest checked out.
    for rec in &created {
        fsutil::write_json_atomic(&layer_file(ctx, req.pool, &rec.chain_id)?, rec)?;
    }
    let config_blob = blob_file(ctx, req.pool, &img.config_digest)?;
    fsutil::write_atomic(&config_blob, &img.config_bytes)?;
    let rec = ImageRecord {
        reference,
        config_digest: img.config_digest.clone(),
        layers: chains,
        size,
        fs: req.fs,
        created: now(),
    };
    fsutil::write_json_atomic(&image_file(ctx, req.pool, &rec.reference)?, &rec)?;
    Ok(report)
}

/// Make the layers the pool does not have yet, bottom up, each on its
/// parent; the ones made are pushed to `created` (for the caller's undo).
fn make_layers(
    ctx: &Ctx,
    req: &ImportRequest,
    img: &oci::Image,
    size: u64,
    report: &mut ImportReport,
    created: &mut Vec<LayerRecord>,
) -> Result<()> {
    let progress = Progress {
        callback: req.progress,
        layers: img.layers.len(),
    };
    let mut parent: Option<LayerRecord> = None;
    for (i, l) in img.layers.iter().enumerate() {
        if let Some(rec) = load_layer(ctx, req.pool, &l.chain_id)? {
            if ctx.store.load_volume(req.pool, &rec.volume)?.is_some() {
                report.layers_shared += 1;
                progress.done(i, rec.size, true);
                parent = Some(rec);
                continue;
            }
        }
        let mut apply = |root: &Path, blob_tmp: &Path| -> Result<(Digest, u64)> {
            let reader = img.open_layer(i)?;
            let bytes = apply_pipelined(root, reader, blob_tmp, &progress, i, l.size)?;
            progress.done(i, bytes, false);
            Ok((l.diff_id.clone(), bytes))
        };
        let rec = make_layer(
            ctx,
            req.pool,
            req.fs,
            parent.as_ref(),
            &l.chain_id,
            size,
            &mut apply,
        )?;
        report.bytes_applied += rec.size;
        report.layers_created += 1;
        created.push(rec.clone());
        parent = Some(rec);
    }
    Ok(())
}

/// Whether every layer has its record and its volume.
fn layers_present(ctx: &Ctx, pool: &str, chains: &[Digest]) -> Result<bool> {
    for chain in chains {
        let Some(rec) = load_layer(ctx, pool, chain)? else {
            return Ok(false);
        };
        if ctx.store.load_volume(pool, &rec.volume)?.is_none() {
            return Ok(false);
        }
    }
    Ok(true)
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerInfo {
    pub chain_id: Digest,
    pub diff_id: Digest,
    pub volume: String,
    pub size: u64,
    pub mapped_bytes: Option<u64>,
    /// Other images that use this layer.
    pub shared_with: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    pub reference: String,
    pub config_digest: Digest,
    pub size: u64,
    pub fs: Filesystem,
    pub layers: Vec<LayerInfo>,
    /// Bytes of layers that other images share.
    pub shared_bytes: u64,
    /// Warm spares waiting for `image provision` (`image warm`).
    pub spares: usize,
    pub created: u64,
}

/// `dmctl image inspect POOL REF`.
pub fn inspect(ctx: &Ctx, pool: &str, reference: &str) -> Result<ImageInfo> {
    let img = load_image(ctx, pool, reference)?;
    let all = list_images(ctx, pool)?;
    let mut layers = vec![];
    let mut shared_bytes = 0;
    for chain in &img.layers {
        let rec = load_layer(ctx, pool, chain)?.ok_or_else(|| {
            Error::Drift(format!("image '{reference}': layer {chain} has no record"))
        })?;
        let shared_with: Vec<String> = all
            .iter()
            .filter(|o| o.reference != img.reference && o.layers.contains(chain))
            .map(|o| o.reference.clone())
            .collect();
        if !shared_with.is_empty() {
            shared_bytes += rec.size;
        }
        let mapped = volume::info(ctx, &VolumeRef::new(pool, &rec.volume)?)
            .ok()
            .and_then(|i| i.mapped_bytes);
        layers.push(LayerInfo {
            chain_id: rec.chain_id,
            diff_id: rec.diff_id,
            volume: rec.volume,
            size: rec.size,
            mapped_bytes: mapped,
            shared_with,
        });
    }
    let spares = match layers.last() {
        Some(top) => spare::count(ctx, pool, &top.volume)?,
        None => 0,
    };
    Ok(ImageInfo {
        reference: img.reference,
        config_digest: img.config_digest,
        size: img.size,
        fs: img.fs,
        layers,
        shared_bytes,
        spares,
        created: img.created,
    })
}

/// Names of volumes that descend from `vol` (snapshots of it, at any depth).
fn descendants(all: &[VolumeRecord], vol: &str) -> Vec<String> {
    let mut out = vec![];
    let mut frontier: Vec<&VolumeRecord> = all.iter().filter(|v| v.name == vol).collect();
    while let Some(v) = frontier.pop() {
        for c in all
            .iter()
            .filter(|c| c.parent_link().is_some_and(|p| p.is(v)))
        {
            out.push(c.name.clone());
            frontier.push(c);
        }
    }
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct RemoveReport {
    pub reference: String,
    pub layers_removed: Vec<String>,
    pub layers_kept: Vec<String>,
}

/// `dmctl image rm POOL REF`: the image goes, then every layer that no
/// image references and no volume descends from (a provisioned rootfs, a
/// layer of another image) is removed, top down. A layer kept earlier for a
/// provisioned volume that is gone by now is collected here too.
pub fn remove(ctx: &Ctx, pool: &str, reference: &str) -> Result<RemoveReport> {
    let _lock = lock_images(ctx, pool)?;
    let img = load_image(ctx, pool, reference)?;
    // The image's spares go first (a failure leaves the image as it was),
    // unless another image has the same top layer.
    if let Some(top) = img.top() {
        let shared = list_images(ctx, pool)?
            .iter()
            .any(|o| o.reference != img.reference && o.top() == Some(top));
        if !shared {
            spare::remove_all(ctx, pool, &layer_volume_name(top))?;
        }
    }
    fsutil::remove_file_durable(&image_file(ctx, pool, reference)?)?;
    let mut report = RemoveReport {
        reference: reference.to_string(),
        layers_removed: vec![],
        layers_kept: vec![],
    };
    let images = list_images(ctx, pool)?;
    loop {
        let all = ctx.store.list_volumes(pool)?;
        let mut removed_one = false;
        for rec in list_layers(ctx, pool)? {
            let referenced = images.iter().any(|o| o.layers.contains(&rec.chain_id));
            if referenced || !descendants(&all, &rec.volume).is_empty() {
                continue;
            }
            fsutil::remove_file_durable(&layer_file(ctx, pool, &rec.chain_id)?)?;
            remove_stale_layer(ctx, pool, &rec.volume)?;
            let _ = fsutil::remove_file_durable(&blob_file(ctx, pool, &rec.diff_id)?);
            report.layers_removed.push(rec.volume);
            removed_one = true;
        }
        if !removed_one {
            break;
        }
    }
    for chain in &img.layers {
        if load_layer(ctx, pool, chain)?.is_some() {
            report.layers_kept.push(layer_volume_name(chain));
        }
    }
    Ok(report)
}

fn list_layers(ctx: &Ctx, pool: &str) -> Result<Vec<LayerRecord>> {
    read_records(&pool_path(ctx, pool, ImageDir::Layers)?)
}

/// The layer a volume holds, and the images that use it (`None`: the volume
/// holds no layer). A pool that never imported an image has none.
pub(super) fn layer_of_volume(
    ctx: &Ctx,
    pool: &str,
    volume: &str,
) -> Result<Option<(LayerRecord, Vec<String>)>> {
    if !pool_path(ctx, pool, ImageDir::Layers)?.is_dir() {
        return Ok(None);
    }
    let Some(rec) = list_layers(ctx, pool)?
        .into_iter()
        .find(|l| l.volume == volume)
    else {
        return Ok(None);
    };
    let users = list_images(ctx, pool)?
        .into_iter()
        .filter(|i| i.layers.contains(&rec.chain_id))
        .map(|i| i.reference)
        .collect();
    Ok(Some((rec, users)))
}

/// Drop a layer's record once its volume was removed by force: the layer is
/// then absent, and the next import of an image that has it makes it again.
pub(super) fn forget_layer(ctx: &Ctx, pool: &str, rec: &LayerRecord) -> Result<()> {
    fsutil::remove_file_durable(&layer_file(ctx, pool, &rec.chain_id)?).map(|_| ())
}

/// Images one of whose layers is gone (no record, or no volume), each with
/// what is missing. Such an image cannot be provisioned until it is
/// imported again.
pub(super) fn broken_images(ctx: &Ctx, pool: &str) -> Result<Vec<(ImageRecord, String)>> {
    if !pool_path(ctx, pool, ImageDir::Images)?.is_dir() {
        return Ok(vec![]);
    }
    let mut out = vec![];
    for img in list_images(ctx, pool)? {
        for (i, chain) in img.layers.iter().enumerate() {
            let volume = layer_volume_name(chain);
            let present = load_layer(ctx, pool, chain)?.is_some()
                && ctx.store.load_volume(pool, &volume)?.is_some();
            if !present {
                let what = format!(
                    "layer {} of {} ({volume}) is missing",
                    i + 1,
                    img.layers.len()
                );
                out.push((img, what));
                break;
            }
        }
    }
    Ok(out)
}

/// Drop the record of a broken image and the records of its layers whose
/// volumes are gone (`check --repair`).
pub(super) fn forget_broken_image(ctx: &Ctx, pool: &str, img: &ImageRecord) -> Result<()> {
    fsutil::remove_file_durable(&image_file(ctx, pool, &img.reference)?)?;
    for chain in &img.layers {
        if let Some(rec) = load_layer(ctx, pool, chain)? {
            if ctx.store.load_volume(pool, &rec.volume)?.is_none() {
                forget_layer(ctx, pool, &rec)?;
            }
        }
    }
    Ok(())
}

/// The volume that holds the top layer of image `reference`.
fn top_layer_volume(ctx: &Ctx, pool: &str, reference: &str) -> Result<String> {
    let img = load_image(ctx, pool, reference)?;
    let top = img
        .top()
        .ok_or_else(|| Error::Invalid(format!("image '{reference}' has no layers")))?;
    let volume = load_layer(ctx, pool, top)?
        .map(|rec| rec.volume)
        .filter(|v| matches!(ctx.store.load_volume(pool, v), Ok(Some(_))));
    volume.ok_or_else(|| {
        Error::NotFound(format!(
            "image '{reference}' is missing its top layer ({}, removed by `rm --force`?); \
             import it again, or `dmctl check {pool} --repair` drops the image",
            layer_volume_name(top)
        ))
    })
}

/// `dmctl image provision POOL REF NAME [--size SIZE] [--mount DIR]`: a
/// writable snapshot of the image's top layer, active (and mounted). A warm
/// spare of the image (`image warm`) is handed out if there is one of that
/// size; otherwise the snapshot is made now.
pub fn provision(
    ctx: &Ctx,
    pool: &str,
    reference: &str,
    name: &str,
    size: Option<u64>,
    mount_at: Option<&Path>,
) -> Result<volume::VolumeReport> {
    let layer = top_layer_volume(ctx, pool, reference)?;
    let origin = VolumeRef::new(pool, &layer)?;
    let new = VolumeRef::new(pool, name)?;
    crate::names::check_not_reserved(name)?;
    // An open claim (a crashed provision) is rolled forward by `claim`
    // before the name is looked at.
    if ctx.store.has_claim(pool)? || ctx.store.load_volume(pool, name)?.is_none() {
        if let Some(report) = spare::claim(ctx, &origin, &new, size, mount_at)? {
            return Ok(report);
        }
    }
    match ctx.store.load_volume(pool, name)? {
        // A provision interrupted after its snapshot (or its claim of a
        // spare): finish it.
        Some(v) if is_child_of(ctx, pool, &v, &layer)? && v.mountpoint.is_none() => {
            volume::activate(ctx, &new, false)?;
        }
        Some(_) => {
            return Err(Error::Exists(format!(
                "volume '{pool}/{name}' already exists"
            )));
        }
        None => {
            // Snapshot, activation and mount under one lock.
            return match volume::snapshot_mounted(ctx, &origin, &new, size, mount_at)? {
                volume::MountedSnapshot::Ready(report) => Ok(report),
                volume::MountedSnapshot::MountFailed(e) => {
                    // Nothing half-provisioned: the snapshot goes again.
                    let _ = volume::remove(ctx, &new, true);
                    Err(e)
                }
            };
        }
    }
    crate::crashpoint::hit("provision:after-snapshot");
    if let Some(dir) = mount_at {
        if let Err(e) = volume::mount(ctx, &new, dir, false, "") {
            // Nothing half-provisioned: the snapshot goes again.
            let _ = volume::remove(ctx, &new, true);
            return Err(e);
        }
    }
    volume::info(ctx, &new)
}

/// Whether `v` is a snapshot of the volume named `parent` (by thin id).
fn is_child_of(ctx: &Ctx, pool: &str, v: &VolumeRecord, parent: &str) -> Result<bool> {
    let Some(link) = v.parent_link() else {
        return Ok(false);
    };
    Ok(ctx
        .store
        .load_volume(pool, parent)?
        .is_some_and(|p| link.is(&p)))
}

/// `dmctl image warm POOL REF --spares N [--size SIZE]`: keep N spares of
/// the image ready for `image provision` (see `ops::spare`).
pub fn warm(
    ctx: &Ctx,
    pool: &str,
    reference: &str,
    spares: usize,
    size: Option<u64>,
) -> Result<spare::WarmReport> {
    let _lock = lock_images(ctx, pool)?;
    let layer = top_layer_volume(ctx, pool, reference)?;
    spare::warm(ctx, pool, reference, &layer, spares, size)
}

/// Write the changes of `v` against its parent as an OCI layer tar.
/// Both are mounted read-only on private mount points for the walk.
pub fn diff(
    ctx: &Ctx,
    v: &VolumeRef,
    nearest_ancestor: bool,
    out: &mut dyn Write,
) -> Result<diff::DiffStats> {
    let vol = ctx.store.volume(&v.pool, &v.name)?;
    let parent = diff_base(ctx, v, &vol, nearest_ancestor)?;
    let pv = VolumeRef::new(&v.pool, &parent)?;
    if vol.fs.is_none() {
        return Err(Error::Invalid(format!("volume '{v}' has no filesystem")));
    }
    let mut lower = TempMount::new(ctx, &v.pool, "lower")?;
    let mut upper = TempMount::new(ctx, &v.pool, "upper")?;
    // A volume mounted elsewhere is read through that mount.
    let upper_dir = match volume::info(ctx, v)?.mountpoint {
        Some(mp) => {
            nix::unistd::syncfs(std::fs::File::open(&mp).at(&mp)?)
                .map_err(|e| Error::io(&mp, e.into()))?;
            mp
        }
        None => {
            mount_ro(ctx, &mut upper, v)?;
            upper.dir.clone()
        }
    };
    let lower_was_active = volume::info(ctx, &pv)?.active;
    mount_ro(ctx, &mut lower, &pv)?;
    let stats = diff::write_diff(&lower.dir, &upper_dir, out);
    // Leave both as they were.
    unmount_temp(ctx, &mut lower, &pv, lower_was_active)?;
    if upper.mounted {
        unmount_temp(ctx, &mut upper, v, vol.active)?;
    }
    stats
}

/// The volume a diff of `vol` is taken against: its parent, by thin id and
/// transaction (a volume that took a removed parent's name is not it). If
/// the parent is gone, its nearest live ancestor when asked, else an error.
fn diff_base(
    ctx: &Ctx,
    v: &VolumeRef,
    vol: &VolumeRecord,
    nearest_ancestor: bool,
) -> Result<String> {
    let all = ctx.store.list_volumes(&v.pool)?;
    if let Some(p) = vol.live_parent(&all) {
        return Ok(p.name.clone());
    }
    let Some(was) = &vol.parent else {
        return Err(Error::Invalid(format!(
            "volume '{v}' has no parent to diff against"
        )));
    };
    let nearest = vol.nearest_live_ancestor(&all);
    match (nearest_ancestor, nearest) {
        (true, Some(a)) => Ok(a.name.clone()),
        (true, None) => Err(Error::NotFound(format!(
            "volume '{v}': its parent '{was}' and every older ancestor were removed"
        ))),
        (false, Some(a)) => Err(Error::NotFound(format!(
            "volume '{v}': its parent '{was}' was removed; `dmctl diff {v} --nearest-ancestor` \
             diffs against '{}', its nearest ancestor (the changes of the removed ones included)",
            a.name
        ))),
        (false, None) => Err(Error::NotFound(format!(
            "volume '{v}': its parent '{was}' and every older ancestor were removed"
        ))),
    }
}

fn mount_ro(ctx: &Ctx, m: &mut TempMount, v: &VolumeRef) -> Result<()> {
    m.mount(ctx, v, true)
}

/// Unmount a temporary mount and restore the volume's activation state
/// and recorded mountpoint.
fn unmount_temp(ctx: &Ctx, m: &mut TempMount, v: &VolumeRef, was_active: bool) -> Result<()> {
    // Only this mount point: the volume may be mounted elsewhere too.
    mount::umount(&m.dir)?;
    m.mounted = false;
    let mut rec = ctx.store.volume(&v.pool, &v.name)?;
    rec.mountpoint = None;
    ctx.store.save_volume(&v.pool, &rec)?;
    if !was_active {
        volume::deactivate(ctx, v)?;
    }
    Ok(())
}

/// The image whose top layer is the volume `layer_volume`, for commit.
fn image_with_top(ctx: &Ctx, pool: &str, layer_volume: &str) -> Result<ImageRecord> {
    list_images(ctx, pool)?
        .into_iter()
        .find(|i| i.top().map(layer_volume_name).as_deref() == Some(layer_volume))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "volume's parent {layer_volume} is not the top layer of an image"
            ))
        })
}

/// `dmctl image commit POOL/NAME REF`: the volume's diff becomes a new
/// layer on top of its parent image, and a new image REF.
pub fn commit(ctx: &Ctx, v: &VolumeRef, reference: &str) -> Result<ImportReport> {
    init_dirs(ctx, &v.pool)?;
    let vol = ctx.store.volume(&v.pool, &v.name)?;
    if vol.parent.is_none() {
        return Err(Error::Invalid(format!(
            "volume '{v}' was not provisioned from an image"
        )));
    }
    let parent_vol = diff_base(ctx, v, &vol, false)?;
    let parent_img = image_with_top(ctx, &v.pool, &parent_vol)?;
    let parent_chain = parent_img.top().cloned().expect("image has a top layer");
    let parent_layer = load_layer(ctx, &v.pool, &parent_chain)?
        .ok_or_else(|| Error::Drift(format!("layer {parent_chain} has no record")))?;

    // The diff, into the content store under a temporary name.
    let tmp = pool_path(ctx, &v.pool, ImageDir::Blobs)?
        .join(format!(".commit-{}.tmp", std::process::id()));
    let mut f = std::fs::File::create(&tmp).at(&tmp)?;
    diff(ctx, v, false, &mut f)?;
    f.sync_all().at(&tmp)?;
    drop(f);
    let diff_id = {
        let mut h = Sha256::new();
        let mut r = std::fs::File::open(&tmp).at(&tmp)?;
        std::io::copy(&mut r, &mut h).at(&tmp)?;
        Digest::parse(&format!("sha256:{}", hex::encode(h.finalize())))?
    };
    let chain = chain_id(Some(&parent_chain), &diff_id);
    let _lock = lock_images(ctx, &v.pool)?;
    let mut layers = parent_img.layers.clone();
    layers.push(chain.clone());
    let mut report = ImportReport {
        reference: reference.to_string(),
        layers: layers.len(),
        layers_created: 0,
        layers_shared: layers.len() - 1,
        bytes_applied: 0,
        already_present: false,
        top_volume: layer_volume_name(&chain),
    };
    if load_layer(ctx, &v.pool, &chain)?.is_none() {
        // The new layer is its parent layer plus exactly this tar, so what
        // export writes re-imports to the same volume content.
        let mut apply = |root: &Path, blob_tmp: &Path| -> Result<(Digest, u64)> {
            std::fs::rename(&tmp, blob_tmp).at(blob_tmp)?;
            let f = std::fs::File::open(blob_tmp).at(blob_tmp)?;
            layer::apply_layer(root, f)?;
            let len = std::fs::metadata(blob_tmp).at(blob_tmp)?.len();
            Ok((diff_id.clone(), len))
        };
        let size = vol.size.max(parent_img.size);
        let rec = make_layer(
            ctx,
            &v.pool,
            parent_img.fs,
            Some(&parent_layer),
            &chain,
            size,
            &mut apply,
        );
        let _ = std::fs::remove_file(&tmp);
        let rec = rec?;
        report.bytes_applied = rec.size;
        report.layers_created = 1;
        fsutil::write_json_atomic(&layer_file(ctx, &v.pool, &chain)?, &rec)?;
    } else {
        let _ = std::fs::remove_file(&tmp);
        report.layers_shared += 1;
    }
    let parent_config = std::fs::read(blob_file(ctx, &v.pool, &parent_img.config_digest)?)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let diff_ids: Vec<Digest> = layers
        .iter()
        .map(|c| {
            load_layer(ctx, &v.pool, c)?
                .map(|l| l.diff_id)
                .ok_or_else(|| Error::Drift(format!("layer {c} has no record")))
        })
        .collect::<Result<_>>()?;
    let config = oci::new_config(
        parent_config.as_ref(),
        &diff_ids,
        &format!("dmctl image commit {v}"),
    );
    let config_digest = Digest::of(&config);
    fsutil::write_atomic(&blob_file(ctx, &v.pool, &config_digest)?, &config)?;
    let rec = ImageRecord {
        reference: reference.to_string(),
        config_digest,
        layers,
        size: vol.size.max(parent_img.size),
        fs: parent_img.fs,
        created: now(),
    };
    fsutil::write_json_atomic(&image_file(ctx, &v.pool, reference)?, &rec)?;
    Ok(report)
}

/// `dmctl image export POOL REF DIR`: an OCI image layout with the image's
/// uncompressed layers and its config, so a re-import gives the same
/// ChainIDs.
pub fn export(ctx: &Ctx, pool: &str, reference: &str, dir: &Path) -> Result<Digest> {
    let img = load_image(ctx, pool, reference)?;
    let config = std::fs::read(blob_file(ctx, pool, &img.config_digest)?).map_err(|e| {
        Error::io(
            blob_file(ctx, pool, &img.config_digest).unwrap_or_default(),
            e,
        )
    })?;
    let mut layers = vec![];
    for chain in &img.layers {
        let rec = load_layer(ctx, pool, chain)?
            .ok_or_else(|| Error::Drift(format!("layer {chain} has no record")))?;
        layers.push(oci::ExportLayer {
            tar_path: blob_file(ctx, pool, &rec.diff_id)?,
            diff_id: rec.diff_id,
        });
    }
    std::fs::create_dir_all(dir).at(dir)?;
    oci::write_layout(dir, reference, &config, &layers)
}
