//! Container images on disk: reading them for import and writing them for
//! export.
//!
//! Three source forms are read by [`open`]:
//!
//! * an OCI image layout directory (`oci-layout`, `index.json`,
//!   `blobs/sha256/<hex>`), per the OCI image-spec;
//! * a tar archive of such a layout (optionally gzip or zstd compressed);
//! * a `docker save` archive (`manifest.json`, `<hex>.json` configs,
//!   `<hex>/layer.tar` layers, or the newer `blobs/sha256/<hex>` names).
//!
//! Tar sources are extracted into a private temporary directory, only
//! regular files with a fixed set of names, never through `tar`'s own
//! unpacking. Every digest is verified: the manifest and config blobs when
//! the image is opened, each layer blob (compressed digest) and its
//! uncompressed stream (DiffID) while the layer is read through
//! [`LayerReader`].
//!
//! [`write_layout`] writes (or extends) an OCI image layout with
//! uncompressed layers.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, IoContext, Result};

/// `org.opencontainers.image.ref.name`: the name of a manifest in an index.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's (and Docker 25+'s) full image name annotation.
const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MEDIA_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The platform picked from a multi-architecture image index.
const WANT_OS: &str = "linux";
const WANT_ARCH: &str = "amd64";

/// Largest JSON document (index, manifest, config) read into memory.
const MAX_JSON: u64 = 64 << 20;
/// Deepest nesting of image indexes followed.
const MAX_INDEX_DEPTH: usize = 4;

// ---------------------------------------------------------------------------
// Digests and chain ids

/// A content digest, `sha256:<64 lowercase hex digits>`; no other
/// algorithm is accepted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct Digest(String);

impl Digest {
    /// Parse `sha256:<64 lowercase hex>`.
    pub fn parse(s: &str) -> Result<Digest> {
        let Some((alg, hex)) = s.split_once(':') else {
            return Err(Error::Invalid(format!(
                "invalid digest {s:?}: expected sha256:<64 hex digits>"
            )));
        };
        if alg != "sha256" {
            return Err(Error::Invalid(format!(
                "unsupported digest algorithm {alg:?} in {s:?}: only sha256 is supported"
            )));
        }
        if !is_hex64(hex) {
            return Err(Error::Invalid(format!(
                "invalid digest {s:?}: expected sha256:<64 lowercase hex digits>"
            )));
        }
        Ok(Digest(s.to_string()))
    }

    /// The sha256 digest of `data`.
    pub fn of(data: impl AsRef<[u8]>) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(data.as_ref()))
    }

    fn from_hasher(hasher: Sha256) -> Digest {
        Digest(format!("sha256:{}", hex::encode(hasher.finalize())))
    }

    fn from_hex(hex: &str) -> Result<Digest> {
        Digest::parse(&format!("sha256:{hex}"))
    }

    /// The 64 hex digits, without the `sha256:` prefix.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Digest {
    type Error = Error;
    fn try_from(s: String) -> Result<Digest> {
        Digest::parse(&s)
    }
}

impl std::str::FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Digest> {
        Digest::parse(s)
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// ChainID of a layer: `ChainID(L1) = DiffID(L1)`,
/// `ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))` over the
/// `sha256:...` string forms.
pub fn chain_id(parent: Option<&Digest>, diff_id: &Digest) -> Digest {
    match parent {
        None => diff_id.clone(),
        Some(p) => Digest::of(format!("{p} {diff_id}")),
    }
}

/// The ChainIDs of a stack of layers, bottom first.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = chain_id(out.last(), d);
        out.push(next);
    }
    out
}

// ---------------------------------------------------------------------------
// Compression

/// Compression of a layer blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// From a layer media type. `Ok(None)` when the media type does not
    /// say (absent, generic, or Docker's plain `...diff.tar`, which is
    /// compressed in practice): sniff the magic bytes then.
    fn from_media_type(media_type: &str) -> Result<Option<Compression>> {
        let m = media_type.trim();
        if m.is_empty()
            || m == "application/octet-stream"
            || m == "application/vnd.docker.image.rootfs.diff.tar"
        {
            return Ok(None);
        }
        let is_layer = m.starts_with("application/vnd.oci.image.layer.")
            || m.starts_with("application/vnd.docker.image.rootfs.");
        if is_layer {
            if m.ends_with("+gzip") || m.ends_with(".tar.gzip") {
                return Ok(Some(Compression::Gzip));
            }
            if m.ends_with("+zstd") || m.ends_with(".tar.zstd") {
                return Ok(Some(Compression::Zstd));
            }
            if m.ends_with(".tar") {
                return Ok(Some(Compression::None));
            }
        }
        Err(Error::Invalid(format!(
            "unsupported layer media type {media_type:?}"
        )))
    }

    /// From the first bytes of a blob.
    fn sniff(magic: &[u8]) -> Compression {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => MEDIA_OCI_LAYER,
            Compression::Gzip => MEDIA_OCI_LAYER_GZIP,
            Compression::Zstd => MEDIA_OCI_LAYER_ZSTD,
        }
    }
}

fn sniff_file(path: &Path) -> Result<Compression> {
    let mut f = File::open(path).at(path)?;
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < magic.len() {
        let r = f.read(&mut magic[n..]).at(path)?;
        if r == 0 {
            break;
        }
        n += r;
    }
    Ok(Compression::sniff(&magic[..n]))
}

// ---------------------------------------------------------------------------
// Image and layers

/// One layer of an opened image.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Digest of the blob as stored (compressed).
    pub digest: Digest,
    pub media_type: String,
    /// Size of the blob as stored.
    pub size: u64,
    /// Digest of the uncompressed tar stream (`rootfs.diff_ids[i]`).
    pub diff_id: Digest,
    pub chain_id: Digest,
    pub compression: Compression,
    path: PathBuf,
}

/// An opened image. Manifest and config are verified; layers are verified
/// while read through [`Image::open_layer`]. For tar sources the image
/// holds the extracted files in a temporary directory removed on drop.
#[derive(Debug)]
pub struct Image {
    /// The name the image was found under (index annotation or docker
    /// RepoTag), else the name asked for.
    pub reference: Option<String>,
    /// Digest of the manifest blob. For legacy `docker save` archives,
    /// which have no manifest blob, the digest of an equivalent OCI
    /// manifest synthesized from the archive.
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub config_bytes: Vec<u8>,
    /// Bottom layer first.
    pub layers: Vec<Layer>,
    _tmp: Option<TempDirGuard>,
}

impl Image {
    /// The image config, parsed.
    pub fn config_json(&self) -> Result<Value> {
        serde_json::from_slice(&self.config_bytes)
            .map_err(|e| Error::Invalid(format!("image config {}: {e}", self.config_digest)))
    }

    /// The DiffIDs of the layers, bottom first.
    pub fn diff_ids(&self) -> Vec<Digest> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }

    /// The ChainIDs of the layers, bottom first.
    pub fn chain_ids(&self) -> Vec<Digest> {
        self.layers.iter().map(|l| l.chain_id.clone()).collect()
    }

    /// Read layer `i` (0-based) as an uncompressed tar stream. Call
    /// [`LayerReader::finish`] at the end: only it verifies the digests.
    pub fn open_layer(&self, i: usize) -> Result<LayerReader> {
        let layer = self.layers.get(i).ok_or_else(|| {
            Error::NotFound(format!(
                "layer index {i} out of range: the image has {} layers",
                self.layers.len()
            ))
        })?;
        let file = File::open(&layer.path).at(&layer.path)?;
        let raw = HashRead::new(file);
        let decode = match layer.compression {
            Compression::None => Decode::Plain(raw),
            Compression::Gzip => Decode::Gzip(Box::new(flate2::read::MultiGzDecoder::new(raw))),
            Compression::Zstd => Decode::Zstd(Box::new(
                zstd::stream::read::Decoder::new(raw).at(&layer.path)?,
            )),
        };
        Ok(LayerReader {
            number: i + 1,
            digest: layer.digest.clone(),
            diff_id: layer.diff_id.clone(),
            size: layer.size,
            path: layer.path.clone(),
            decode,
            hasher: Sha256::new(),
            count: 0,
        })
    }

    /// Stream every layer through [`LayerReader::finish`], verifying all
    /// digests.
    pub fn verify_all(&self) -> Result<()> {
        for i in 0..self.layers.len() {
            self.open_layer(i)?.finish()?;
        }
        Ok(())
    }
}

/// A reader that hashes and counts what passes through it.
struct HashRead<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R> HashRead<R> {
    fn new(inner: R) -> Self {
        HashRead {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
}

impl<R: Read> Read for HashRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

type ZstdDecoder = zstd::stream::read::Decoder<'static, BufReader<HashRead<File>>>;

enum Decode {
    Plain(HashRead<File>),
    Gzip(Box<flate2::read::MultiGzDecoder<HashRead<File>>>),
    Zstd(Box<ZstdDecoder>),
}

/// The uncompressed tar stream of one layer. Reading hashes both the blob
/// as stored and the uncompressed bytes; [`LayerReader::finish`] checks
/// them against the layer's digest and DiffID.
pub struct LayerReader {
    /// 1-based, for messages.
    number: usize,
    digest: Digest,
    diff_id: Digest,
    size: u64,
    path: PathBuf,
    decode: Decode,
    hasher: Sha256,
    count: u64,
}

impl fmt::Debug for LayerReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayerReader")
            .field("layer", &self.number)
            .field("digest", &self.digest)
            .field("diff_id", &self.diff_id)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl Read for LayerReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = match &mut self.decode {
            Decode::Plain(r) => r.read(buf),
            Decode::Gzip(r) => r.read(buf),
            Decode::Zstd(r) => r.read(buf),
        };
        let n = r.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("layer {} ({}): {e}", self.number, self.digest),
            )
        })?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

impl LayerReader {
    /// Drain the rest of the stream (a tar reader may stop before the
    /// end-of-archive padding), then verify the blob digest and size and
    /// the DiffID. Returns the number of uncompressed bytes.
    pub fn finish(mut self) -> Result<u64> {
        let drained = io::copy(&mut self, &mut io::sink());
        let mut raw = match self.decode {
            Decode::Plain(r) => r,
            Decode::Gzip(d) => d.into_inner(),
            Decode::Zstd(d) => d.finish().into_inner(),
        };
        // Whatever the decompressor left unread (trailing data, or all of
        // it after a decoding error) still belongs to the blob.
        io::copy(&mut raw, &mut io::sink()).at(&self.path)?;
        let what = format!("layer {} ({})", self.number, self.digest);
        let got = Digest::from_hasher(raw.hasher);
        if got != self.digest {
            return Err(Error::Invalid(format!(
                "{what}: blob digest mismatch: expected {}, got {got}",
                self.digest
            )));
        }
        if raw.count != self.size {
            return Err(Error::Invalid(format!(
                "{what}: blob size mismatch: expected {}, got {}",
                self.size, raw.count
            )));
        }
        if let Err(e) = drained {
            return Err(Error::Invalid(format!("{what}: cannot decompress: {e}")));
        }
        let got = Digest::from_hasher(self.hasher);
        if got != self.diff_id {
            return Err(Error::Invalid(format!(
                "{what}: uncompressed diff_id digest mismatch: expected {}, got {got}",
                self.diff_id
            )));
        }
        Ok(self.count)
    }
}

// ---------------------------------------------------------------------------
// Private temporary directory

/// A 0700 directory removed (recursively) when dropped.
#[derive(Debug)]
struct TempDirGuard(PathBuf);

impl TempDirGuard {
    fn new(parent: &Path) -> Result<TempDirGuard> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .at(parent)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        for _ in 0..100 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = parent.join(format!(".oci-import.{}.{nanos:x}.{n}", std::process::id()));
            match DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    let guard = TempDirGuard(path);
                    fs::set_permissions(&guard.0, fs::Permissions::from_mode(0o700)).at(&guard.0)?;
                    return Ok(guard);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::io(path, e)),
            }
        }
        Err(Error::Exists(format!(
            "cannot create a temporary directory in {}",
            parent.display()
        )))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDirGuard {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// Safe extraction of tar sources

/// Is `name` one of the archive member names we extract?
fn allowed_name(name: &str) -> bool {
    if matches!(
        name,
        "index.json" | "oci-layout" | "manifest.json" | "repositories"
    ) {
        return true;
    }
    let parts: Vec<&str> = name.split('/').collect();
    match parts.as_slice() {
        ["blobs", "sha256", h] => is_hex64(h),
        // `<hex>.json` configs; `<hex>.tar` layers (skopeo, podman).
        [f] => f
            .strip_suffix(".json")
            .or_else(|| f.strip_suffix(".tar"))
            .is_some_and(is_hex64),
        [h, "layer.tar" | "json" | "VERSION"] => is_hex64(h),
        _ => false,
    }
}

/// Normalize a path lexically (`.` dropped, `..` popped); `None` when it
/// is absolute or climbs above the root.
fn normalize_member(path: &str) -> Option<String> {
    if path.starts_with('/') {
        return None;
    }
    let mut out: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            p => out.push(p),
        }
    }
    Some(out.join("/"))
}

/// The name under which an archive member is extracted, if it is one we
/// want. Only a leading `./` is tolerated; no `..`, no absolute names.
fn member_name(raw: &[u8]) -> Option<String> {
    let mut s = std::str::from_utf8(raw).ok()?;
    while let Some(rest) = s.strip_prefix("./") {
        s = rest;
    }
    allowed_name(s).then(|| s.to_string())
}

/// Create the parent directories of `name` (at most one level below
/// `blobs/`) inside `root`, which we created and only we write to.
fn make_parents(root: &Path, name: &str) -> Result<()> {
    let mut dir = root.to_path_buf();
    let parts: Vec<&str> = name.split('/').collect();
    for part in &parts[..parts.len() - 1] {
        dir.push(part);
        match DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let meta = fs::symlink_metadata(&dir).at(&dir)?;
                if !meta.is_dir() {
                    return Err(Error::Invalid(format!(
                        "{}: not a directory",
                        dir.display()
                    )));
                }
            }
            Err(e) => return Err(Error::io(&dir, e)),
        }
    }
    Ok(())
}

/// Extract the wanted members of the tar `source` into a new private
/// directory under `work_dir`. Returns the directory and the sha256 of
/// each extracted file.
fn extract_tar(source: &Path, work_dir: &Path) -> Result<(TempDirGuard, HashMap<String, Digest>)> {
    let guard = TempDirGuard::new(work_dir)?;
    let root = guard.path().to_path_buf();
    let bad = |msg: String| Error::Invalid(format!("{}: {msg}", source.display()));

    let file = File::open(source).at(source)?;
    let mut buffered = BufReader::new(file);
    let magic = buffered.fill_buf().at(source)?;
    let stream: Box<dyn Read> = match Compression::sniff(magic) {
        Compression::None => Box::new(buffered),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(buffered)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(buffered).at(source)?)
        }
    };
    let mut archive = tar::Archive::new(stream);
    let mut digests: HashMap<String, Digest> = HashMap::new();
    let mut links: Vec<(String, String)> = Vec::new();

    let entries = archive
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("bad tar archive: {e}")))?;
        let Some(name) = member_name(&entry.path_bytes()) else {
            continue;
        };
        let kind = entry.header().entry_type();
        if kind.is_file() {
            if digests.contains_key(&name) {
                return Err(bad(format!("duplicate archive member {name}")));
            }
            make_parents(&root, &name)?;
            let path = root.join(&name);
            let out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path);
            let mut out = match out {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(bad(format!("duplicate archive member {name}")));
                }
                Err(e) => return Err(Error::io(&path, e)),
            };
            let mut hashing = HashRead::new(&mut entry);
            io::copy(&mut hashing, &mut out)
                .map_err(|e| bad(format!("reading member {name}: {e}")))?;
            digests.insert(name, Digest::from_hasher(hashing.hasher));
        } else if kind.is_symlink() || kind.is_hard_link() {
            // docker save stores a layer repeated in the image as a link
            // to the first copy. Record it when both ends are names we
            // extract; it becomes a hard link between our own files.
            let Some(target) = entry.link_name_bytes() else {
                continue;
            };
            let Ok(target) = std::str::from_utf8(&target) else {
                continue;
            };
            let joined = if kind.is_symlink() {
                match name.rsplit_once('/') {
                    Some((dir, _)) => format!("{dir}/{target}"),
                    None => target.to_string(),
                }
            } else {
                target.to_string()
            };
            if let Some(t) = normalize_member(&joined).filter(|t| allowed_name(t)) {
                links.push((name, t));
            }
        }
    }
    for (name, target) in links {
        if digests.contains_key(&name) {
            continue;
        }
        let Some(d) = digests.get(&target).cloned() else {
            continue;
        };
        make_parents(&root, &name)?;
        let path = root.join(&name);
        fs::hard_link(root.join(&target), &path).at(&path)?;
        digests.insert(name, d);
    }
    Ok((guard, digests))
}

// ---------------------------------------------------------------------------
// JSON documents

#[derive(Debug, Clone, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    platform: Option<Platform>,
}

impl Descriptor {
    fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }

    fn is_linux_amd64(&self) -> bool {
        self.platform
            .as_ref()
            .is_some_and(|p| p.os == WANT_OS && p.architecture == WANT_ARCH)
    }

    fn platform_string(&self) -> String {
        match &self.platform {
            None => "unknown".to_string(),
            Some(p) => match &p.variant {
                Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                None => format!("{}/{}", p.os, p.architecture),
            },
        }
    }

    /// A name for messages: the ref name annotations, else the digest.
    fn display_name(&self) -> String {
        self.annotation(ANNOTATION_CONTAINERD_NAME)
            .or_else(|| self.annotation(ANNOTATION_REF_NAME))
            .map(str::to_string)
            .unwrap_or_else(|| self.digest.clone())
    }
}

#[derive(Debug, Deserialize)]
struct IndexJson {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<i64>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct ManifestJson {
    #[serde(rename = "schemaVersion", default)]
    schema_version: Option<i64>,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

#[derive(Serialize)]
struct OutDescriptor<'a> {
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    digest: &'a Digest,
    size: u64,
}

#[derive(Serialize)]
struct OutManifest<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    config: OutDescriptor<'a>,
    layers: Vec<OutDescriptor<'a>>,
}

/// An OCI manifest (compact JSON) for a config and layers given as
/// (media type, digest, size).
fn manifest_bytes(config: &Digest, config_size: u64, layers: &[(&str, &Digest, u64)]) -> Vec<u8> {
    let m = OutManifest {
        schema_version: 2,
        media_type: MEDIA_OCI_MANIFEST,
        config: OutDescriptor {
            media_type: MEDIA_OCI_CONFIG,
            digest: config,
            size: config_size,
        },
        layers: layers
            .iter()
            .map(|(media_type, digest, size)| OutDescriptor {
                media_type,
                digest,
                size: *size,
            })
            .collect(),
    };
    serde_json::to_vec(&m).expect("manifest serializes")
}

/// Read at most `limit` bytes of `path`; larger files are refused.
fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let file = File::open(path).at(path)?;
    let mut data = Vec::new();
    file.take(limit + 1).read_to_end(&mut data).at(path)?;
    if data.len() as u64 > limit {
        return Err(Error::Invalid(format!(
            "{}: larger than {limit} bytes",
            path.display()
        )));
    }
    Ok(data)
}

/// The `rootfs.diff_ids` of an image config.
fn config_diff_ids(config: &Value) -> Result<Vec<Digest>> {
    let rootfs = config
        .get("rootfs")
        .ok_or_else(|| Error::Invalid("image config has no rootfs".to_string()))?;
    if let Some(t) = rootfs.get("type") {
        if t != "layers" {
            return Err(Error::Invalid(format!(
                "image config rootfs.type is {t}, expected \"layers\""
            )));
        }
    }
    let ids = rootfs
        .get("diff_ids")
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Invalid("image config has no rootfs.diff_ids".to_string()))?;
    ids.iter()
        .map(|v| {
            let s = v.as_str().ok_or_else(|| {
                Error::Invalid(format!("image config rootfs.diff_ids: {v} is not a string"))
            })?;
            Digest::parse(s)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Opening images

/// An image source being read: its root directory and, for tar sources,
/// the digests of the extracted files.
struct Source<'a> {
    root: &'a Path,
    /// The path the user gave, for messages.
    name: String,
    file_digests: &'a HashMap<String, Digest>,
}

impl Source<'_> {
    fn bad(&self, msg: impl fmt::Display) -> Error {
        Error::Invalid(format!("{}: {msg}", self.name))
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join("sha256").join(digest.hex())
    }

    fn read_json<T: serde::de::DeserializeOwned>(&self, file: &str) -> Result<T> {
        let path = self.root.join(file);
        let data = read_limited(&path, MAX_JSON)?;
        serde_json::from_slice(&data).map_err(|e| self.bad(format!("invalid {file}: {e}")))
    }

    /// Read a JSON blob and verify it against its descriptor.
    fn read_blob(&self, desc: &Descriptor, what: &str) -> Result<(Digest, Vec<u8>)> {
        let digest =
            Digest::parse(&desc.digest).map_err(|e| self.bad(format!("{what} descriptor: {e}")))?;
        let size = self.desc_size(desc, what)?;
        if size > MAX_JSON {
            return Err(self.bad(format!("{what} {digest} is too large ({size} bytes)")));
        }
        let path = self.blob_path(&digest);
        let data = match read_limited(&path, MAX_JSON) {
            Ok(d) => d,
            Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Err(self.bad(format!("{what} blob {digest} is missing")));
            }
            Err(e) => return Err(e),
        };
        let got = Digest::of(&data);
        if got != digest {
            return Err(self.bad(format!(
                "{what} blob blobs/sha256/{}: digest mismatch: expected {digest}, got {got}",
                digest.hex()
            )));
        }
        if data.len() as u64 != size {
            return Err(self.bad(format!(
                "{what} blob {digest}: size mismatch: descriptor says {size}, blob has {}",
                data.len()
            )));
        }
        Ok((digest, data))
    }

    fn desc_size(&self, desc: &Descriptor, what: &str) -> Result<u64> {
        u64::try_from(desc.size)
            .map_err(|_| self.bad(format!("{what} descriptor has negative size {}", desc.size)))
    }
}

/// Open an image for import. `source` is an OCI image layout directory, a
/// tar of one, or a `docker save` archive; `name` selects among several
/// images; tar sources are extracted into a private temporary directory
/// under `work_dir`, removed when the [`Image`] is dropped.
/// Open the image `name` of `source` (an OCI layout, a tar of one, or a
/// docker/podman/skopeo archive); without `name`, its only image, or, if it
/// holds several, the one named `hint`.
pub fn open(
    source: &Path,
    name: Option<&str>,
    hint: Option<&str>,
    work_dir: &Path,
) -> Result<Image> {
    let meta = fs::metadata(source).at(source)?;
    let (tmp, file_digests) = if meta.is_dir() {
        (None, HashMap::new())
    } else {
        let (guard, digests) = extract_tar(source, work_dir)?;
        (Some(guard), digests)
    };
    let root = tmp.as_ref().map_or(source, |g| g.path());
    let src = Source {
        root,
        name: source.display().to_string(),
        file_digests: &file_digests,
    };
    let has_index = root.join("index.json").is_file();
    let has_docker = root.join("manifest.json").is_file();
    let opened = if has_index {
        match open_oci(&src, name, hint) {
            // Docker 25+ archives carry both; RepoTags may know the name.
            Err(Error::NotFound(_)) if has_docker => open_docker(&src, name, hint),
            r => r,
        }
    } else if has_docker {
        open_docker(&src, name, hint)
    } else {
        Err(src
            .bad("not an OCI image layout or docker-save archive (no index.json or manifest.json)"))
    };
    let (reference, manifest_digest, config_digest, config_bytes, layers) = opened?;
    Ok(Image {
        reference,
        manifest_digest,
        config_digest,
        config_bytes,
        layers,
        _tmp: tmp,
    })
}

type Opened = (Option<String>, Digest, Digest, Vec<u8>, Vec<Layer>);

/// `(repository, tag)` of a reference; the tag is after the last `:` that
/// follows the last `/` (so a registry port is not a tag).
fn split_tag(r: &str) -> (&str, Option<&str>) {
    let r = r.split_once('@').map_or(r, |(n, _)| n);
    let start = r.rfind('/').map_or(0, |i| i + 1);
    match r[start..].rfind(':') {
        Some(i) => (&r[..start + i], Some(&r[start + i + 1..])),
        None => (r, None),
    }
}

/// A reference with Docker Hub's defaults made explicit and stripped:
/// `docker.io/library/foo` and `foo` both give `foo:latest`.
fn normalize_ref(r: &str) -> String {
    let r = r.strip_prefix("docker.io/").unwrap_or(r);
    let r = r.strip_prefix("library/").unwrap_or(r);
    let (repo, tag) = split_tag(r);
    format!("{repo}:{}", tag.unwrap_or("latest"))
}

/// How well an index entry matches `name`: 3 exact, 2 same normalized
/// reference, 1 same tag only, 0 no match.
fn oci_match(desc: &Descriptor, name: &str) -> u8 {
    let refname = desc.annotation(ANNOTATION_REF_NAME);
    let full = desc.annotation(ANNOTATION_CONTAINERD_NAME);
    let names: Vec<&str> = refname.into_iter().chain(full).collect();
    if names.contains(&name) {
        return 3;
    }
    let norm = normalize_ref(name);
    if names
        .iter()
        .any(|n| n.contains([':', '/']) && normalize_ref(n) == norm)
    {
        return 2;
    }
    let name_tag = split_tag(name).1;
    if names
        .iter()
        .any(|n| Some(*n) == name_tag || split_tag(n).1 == Some(name))
    {
        return 1;
    }
    0
}

/// The reference to report for an index entry.
fn oci_reference(desc: &Descriptor, name: Option<&str>) -> Option<String> {
    let refname = desc.annotation(ANNOTATION_REF_NAME);
    let full = desc.annotation(ANNOTATION_CONTAINERD_NAME);
    match (refname, full) {
        // Docker 25+ puts only the tag in ref.name; prefer the full name.
        (Some(r), Some(f)) if !r.contains([':', '/']) => Some(f.to_string()),
        (Some(r), _) => Some(r.to_string()),
        (None, Some(f)) => Some(f.to_string()),
        (None, None) => name.map(str::to_string),
    }
}

/// Keep one descriptor per digest, in order.
fn dedup_by_digest(descs: Vec<&Descriptor>) -> Vec<&Descriptor> {
    let mut out: Vec<&Descriptor> = Vec::new();
    for d in descs {
        if !out.iter().any(|o| o.digest == d.digest) {
            out.push(d);
        }
    }
    out
}

fn list_names(descs: &[&Descriptor]) -> String {
    descs
        .iter()
        .map(|d| d.display_name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `name` selects the image; `hint` (the name it is to get here) selects
/// one only when the source holds several and no `name` was given.
fn open_oci(src: &Source<'_>, name: Option<&str>, hint: Option<&str>) -> Result<Opened> {
    let layout_path = src.root.join("oci-layout");
    if !layout_path.is_file() {
        return Err(src.bad("index.json without oci-layout: not an OCI image layout"));
    }
    let layout: Value = src.read_json("oci-layout")?;
    if !layout
        .get("imageLayoutVersion")
        .is_some_and(Value::is_string)
    {
        return Err(src.bad("oci-layout has no imageLayoutVersion"));
    }
    let index: IndexJson = src.read_json("index.json")?;
    if index.schema_version.is_some_and(|v| v != 2) {
        return Err(src.bad("index.json: unsupported schemaVersion (expected 2)"));
    }
    if index.manifests.is_empty() {
        return Err(src.bad("index.json lists no images"));
    }
    let mut candidates: Vec<&Descriptor> = match name {
        Some(n) => {
            let best = index
                .manifests
                .iter()
                .map(|d| oci_match(d, n))
                .max()
                .unwrap_or(0);
            if best == 0 {
                let all: Vec<&Descriptor> = index.manifests.iter().collect();
                return Err(Error::NotFound(format!(
                    "{}: no image named {n:?} (images: {})",
                    src.name,
                    list_names(&all)
                )));
            }
            index
                .manifests
                .iter()
                .filter(|d| oci_match(d, n) == best)
                .collect()
        }
        None => index.manifests.iter().collect(),
    };
    candidates = dedup_by_digest(candidates);
    if candidates.len() > 1 && candidates.iter().all(|d| d.platform.is_some()) {
        // A multi-platform image listed directly in index.json.
        let amd64: Vec<&Descriptor> = candidates
            .iter()
            .copied()
            .filter(|d| d.is_linux_amd64())
            .collect();
        if !amd64.is_empty() {
            candidates = amd64;
        }
    }
    if candidates.len() > 1 && name.is_none() {
        if let Some(h) = hint {
            return open_oci(src, Some(h), None);
        }
    }
    if candidates.len() > 1 {
        return Err(src.bad(format!(
            "{} images{}, choose one by name: {}",
            candidates.len(),
            name.map(|n| format!(" match {n:?}")).unwrap_or_default(),
            list_names(&candidates)
        )));
    }
    let desc = candidates[0];
    let reference = oci_reference(desc, name);
    let (manifest_digest, manifest) = resolve_manifest(src, desc, 0)?;
    let (config_digest, config_bytes, layers) = load_oci_image(src, &manifest_digest, &manifest)?;
    Ok((
        reference,
        manifest_digest,
        config_digest,
        config_bytes,
        layers,
    ))
}

fn is_index_media_type(m: &str) -> bool {
    m == MEDIA_OCI_INDEX || m == MEDIA_DOCKER_LIST
}

/// Follow `desc` (a manifest, or an index of them) to an image manifest.
fn resolve_manifest(
    src: &Source<'_>,
    desc: &Descriptor,
    depth: usize,
) -> Result<(Digest, ManifestJson)> {
    if depth > MAX_INDEX_DEPTH {
        return Err(src.bad("image indexes nested too deeply"));
    }
    let what = if is_index_media_type(&desc.media_type) {
        "index"
    } else {
        "manifest"
    };
    let (digest, data) = src.read_blob(desc, what)?;
    let value: Value = serde_json::from_slice(&data)
        .map_err(|e| src.bad(format!("{what} {digest}: invalid JSON: {e}")))?;
    let media_type = value
        .get("mediaType")
        .and_then(Value::as_str)
        .unwrap_or(&desc.media_type);
    let is_index = is_index_media_type(media_type)
        || (media_type.is_empty() && value.get("manifests").is_some());
    if is_index {
        let index: IndexJson =
            serde_json::from_value(value).map_err(|e| src.bad(format!("index {digest}: {e}")))?;
        let Some(chosen) = index.manifests.iter().find(|d| d.is_linux_amd64()) else {
            let platforms: Vec<String> = index
                .manifests
                .iter()
                .map(|d| d.platform_string())
                .collect();
            return Err(src.bad(format!(
                "index {digest} has no {WANT_OS}/{WANT_ARCH} image (platforms: {})",
                platforms.join(", ")
            )));
        };
        return resolve_manifest(src, chosen, depth + 1);
    }
    if !media_type.is_empty()
        && media_type != MEDIA_OCI_MANIFEST
        && media_type != MEDIA_DOCKER_MANIFEST
    {
        return Err(src.bad(format!(
            "manifest {digest}: unsupported media type {media_type:?}"
        )));
    }
    let manifest: ManifestJson =
        serde_json::from_value(value).map_err(|e| src.bad(format!("manifest {digest}: {e}")))?;
    if manifest.schema_version != Some(2) {
        return Err(src.bad(format!(
            "manifest {digest}: unsupported schemaVersion (expected 2)"
        )));
    }
    if let Some(m) = &manifest.media_type {
        if m != MEDIA_OCI_MANIFEST && m != MEDIA_DOCKER_MANIFEST {
            return Err(src.bad(format!("manifest {digest}: unsupported media type {m:?}")));
        }
    }
    Ok((digest, manifest))
}

/// Parse and check a config against the number of layers.
fn check_config(
    src: &Source<'_>,
    digest: &Digest,
    data: &[u8],
    layers: usize,
) -> Result<Vec<Digest>> {
    let config: Value = serde_json::from_slice(data)
        .map_err(|e| src.bad(format!("config {digest}: invalid JSON: {e}")))?;
    let diff_ids =
        config_diff_ids(&config).map_err(|e| src.bad(format!("config {digest}: {e}")))?;
    if diff_ids.len() != layers {
        return Err(src.bad(format!(
            "config {digest} lists {} rootfs.diff_ids but the image has {layers} layers",
            diff_ids.len()
        )));
    }
    Ok(diff_ids)
}

fn load_oci_image(
    src: &Source<'_>,
    manifest_digest: &Digest,
    manifest: &ManifestJson,
) -> Result<(Digest, Vec<u8>, Vec<Layer>)> {
    let cm = manifest.config.media_type.as_str();
    if !cm.is_empty() && cm != MEDIA_OCI_CONFIG && cm != MEDIA_DOCKER_CONFIG {
        return Err(src.bad(format!(
            "manifest {manifest_digest}: config media type {cm:?} is not a container image config"
        )));
    }
    let (config_digest, config_bytes) = src.read_blob(&manifest.config, "config")?;
    let diff_ids = check_config(src, &config_digest, &config_bytes, manifest.layers.len())?;
    let chains = chain_ids(&diff_ids);
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for (i, ((desc, diff_id), chain)) in
        manifest.layers.iter().zip(diff_ids).zip(chains).enumerate()
    {
        let what = format!("layer {}", i + 1);
        let digest =
            Digest::parse(&desc.digest).map_err(|e| src.bad(format!("{what} descriptor: {e}")))?;
        let size = src.desc_size(desc, &what)?;
        let declared = Compression::from_media_type(&desc.media_type)
            .map_err(|e| src.bad(format!("{what} ({digest}): {e}")))?;
        let path = src.blob_path(&digest);
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(src.bad(format!("{what} blob {digest} is missing")));
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        if meta.len() != size {
            return Err(src.bad(format!(
                "{what} blob {digest}: size mismatch: descriptor says {size}, blob has {}",
                meta.len()
            )));
        }
        let compression = match declared {
            Some(c) => c,
            None => sniff_file(&path)?,
        };
        let media_type = if desc.media_type.is_empty() {
            compression.oci_media_type().to_string()
        } else {
            desc.media_type.clone()
        };
        layers.push(Layer {
            digest,
            media_type,
            size,
            diff_id,
            chain_id: chain,
            compression,
            path,
        });
    }
    Ok((config_digest, config_bytes, layers))
}

/// How well a docker RepoTag matches `name`: 2 exact, 1 normalized.
fn docker_match(tag: &str, name: &str) -> u8 {
    if tag == name {
        2
    } else if normalize_ref(tag) == normalize_ref(name) {
        1
    } else {
        0
    }
}

fn docker_entry_name(e: &DockerEntry) -> String {
    e.repo_tags
        .as_ref()
        .and_then(|t| t.first())
        .cloned()
        .unwrap_or_else(|| e.config.clone())
}

fn open_docker(src: &Source<'_>, name: Option<&str>, hint: Option<&str>) -> Result<Opened> {
    let entries: Vec<DockerEntry> = src.read_json("manifest.json")?;
    if entries.is_empty() {
        return Err(src.bad("manifest.json lists no images"));
    }
    let (entry, reference) = select_docker_entry(src, &entries, name, hint)?;
    let (config_digest, config_bytes) = docker_config(src, entry)?;
    let diff_ids = check_config(src, &config_digest, &config_bytes, entry.layers.len())?;
    let layers = docker_layers(src, entry, diff_ids)?;
    let descs: Vec<(&str, &Digest, u64)> = layers
        .iter()
        .map(|l| (l.media_type.as_str(), &l.digest, l.size))
        .collect();
    let manifest_digest = Digest::of(manifest_bytes(
        &config_digest,
        config_bytes.len() as u64,
        &descs,
    ));
    Ok((
        reference,
        manifest_digest,
        config_digest,
        config_bytes,
        layers,
    ))
}

/// The entry of `manifest.json` named `name` (or `hint`, when the archive
/// holds several and no name was given), and the reference it goes by.
fn select_docker_entry<'e>(
    src: &Source<'_>,
    entries: &'e [DockerEntry],
    name: Option<&str>,
    hint: Option<&str>,
) -> Result<(&'e DockerEntry, Option<String>)> {
    let tags = |e: &DockerEntry| e.repo_tags.clone().unwrap_or_default();
    match name {
        Some(n) => {
            let score = |e: &DockerEntry| {
                tags(e)
                    .iter()
                    .map(|t| docker_match(t, n))
                    .max()
                    .unwrap_or(0)
            };
            let best = entries.iter().map(score).max().unwrap_or(0);
            if best == 0 {
                let all: Vec<String> = entries.iter().map(docker_entry_name).collect();
                return Err(Error::NotFound(format!(
                    "{}: no image named {n:?} (images: {})",
                    src.name,
                    all.join(", ")
                )));
            }
            let matching: Vec<&DockerEntry> = entries.iter().filter(|e| score(e) == best).collect();
            if matching.len() > 1 {
                let names: Vec<String> = matching.iter().map(|e| docker_entry_name(e)).collect();
                return Err(src.bad(format!(
                    "{} images match {n:?}, choose one by name: {}",
                    matching.len(),
                    names.join(", ")
                )));
            }
            let e = matching[0];
            let tag = tags(e).into_iter().find(|t| docker_match(t, n) == best);
            Ok((e, tag.or_else(|| Some(n.to_string()))))
        }
        None => {
            if let (true, Some(h)) = (entries.len() > 1, hint) {
                return select_docker_entry(src, entries, Some(h), None);
            }
            if entries.len() > 1 {
                let names: Vec<String> = entries.iter().map(docker_entry_name).collect();
                return Err(src.bad(format!(
                    "{} images, choose one by name: {}",
                    entries.len(),
                    names.join(", ")
                )));
            }
            let e = &entries[0];
            Ok((e, tags(e).into_iter().next()))
        }
    }
}

/// The image config of a docker archive entry: `<hex>.json` or
/// `blobs/sha256/<hex>`, checked against the digest its name carries.
fn docker_config(src: &Source<'_>, entry: &DockerEntry) -> Result<(Digest, Vec<u8>)> {
    let config_name = entry.config.trim_start_matches("./");
    let config_ok = config_name
        .strip_prefix("blobs/sha256/")
        .is_some_and(is_hex64)
        || config_name.strip_suffix(".json").is_some_and(is_hex64);
    if !config_ok {
        return Err(src.bad(format!(
            "manifest.json: unexpected config path {:?}",
            entry.config
        )));
    }
    let config_bytes = read_limited(&src.root.join(config_name), MAX_JSON)?;
    let config_digest = Digest::of(&config_bytes);
    let expected_hex = config_name
        .strip_prefix("blobs/sha256/")
        .or_else(|| config_name.strip_suffix(".json"));
    if let Some(hex) = expected_hex {
        if hex != config_digest.hex() {
            return Err(src.bad(format!(
                "config blob {config_name}: digest mismatch: expected sha256:{hex}, got {config_digest}"
            )));
        }
    }
    Ok((config_digest, config_bytes))
}

/// The layers of a docker archive entry, with their digests and
/// compression, paired with the config's diff ids.
fn docker_layers(
    src: &Source<'_>,
    entry: &DockerEntry,
    diff_ids: Vec<Digest>,
) -> Result<Vec<Layer>> {
    let chains = chain_ids(&diff_ids);
    let mut layers = Vec::with_capacity(entry.layers.len());
    for (i, ((rel, diff_id), chain)) in entry.layers.iter().zip(diff_ids).zip(chains).enumerate() {
        let what = format!("layer {}", i + 1);
        let rel = rel.trim_start_matches("./");
        // docker save: `<id>/layer.tar` (before 25) or `blobs/sha256/<hex>`;
        // skopeo and podman (containers/image): `<hex>.tar`, with
        // `<id>/layer.tar` symlinks to it that the manifest does not name.
        let layer_name = rel.strip_prefix("blobs/sha256/").is_some_and(is_hex64)
            || rel.strip_suffix("/layer.tar").is_some_and(is_hex64)
            || rel.strip_suffix(".tar").is_some_and(is_hex64);
        if !layer_name {
            return Err(src.bad(format!("manifest.json: unexpected {what} path {rel:?}")));
        }
        let path = src.root.join(rel);
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(src.bad(format!("{what} file {rel} is missing")));
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        let digest = match rel.strip_prefix("blobs/sha256/") {
            // Content-addressed: verified while streaming.
            Some(hex) => Digest::from_hex(hex)?,
            None => match src.file_digests.get(rel) {
                Some(d) => d.clone(),
                None => {
                    let mut f = HashRead::new(File::open(&path).at(&path)?);
                    io::copy(&mut f, &mut io::sink()).at(&path)?;
                    Digest::from_hasher(f.hasher)
                }
            },
        };
        let compression = sniff_file(&path)?;
        layers.push(Layer {
            digest,
            media_type: compression.oci_media_type().to_string(),
            size: meta.len(),
            diff_id,
            chain_id: chain,
            compression,
            path,
        });
    }
    Ok(layers)
}

// ---------------------------------------------------------------------------
// Export

/// A layer to export: its uncompressed tar on disk and that tar's digest.
#[derive(Debug, Clone)]
pub struct ExportLayer {
    pub tar_path: PathBuf,
    pub diff_id: Digest,
}

/// A temporary name next to `path` for an atomic replacement.
fn tmp_name(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp.{}.{n}", std::process::id()))
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Write `path` atomically (temporary file, fsync, rename) with mode 0644,
/// the content produced by `fill`. `fill` may refuse (its error is
/// returned and the temporary removed).
fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut File) -> Result<()>) -> Result<()> {
    let tmp = tmp_name(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .at(&tmp)?;
    let result = (|| {
        file.set_permissions(fs::Permissions::from_mode(0o644))
            .at(&tmp)?;
        fill(&mut file)?;
        file.sync_all().at(&tmp)?;
        fs::rename(&tmp, path).at(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn write_bytes_atomic(path: &Path, data: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(data).at(path))
}

/// Does `path` hold content with `digest`? (A missing file does not.)
fn blob_ok(path: &Path, digest: &Digest) -> Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(path, e)),
    }
    let mut f = HashRead::new(File::open(path).at(path)?);
    io::copy(&mut f, &mut io::sink()).at(path)?;
    Ok(Digest::from_hasher(f.hasher) == *digest)
}

/// Write a blob from memory unless an intact copy is there already.
fn put_blob_bytes(blobs: &Path, data: &[u8]) -> Result<Digest> {
    let digest = Digest::of(data);
    let path = blobs.join(digest.hex());
    if !blob_ok(&path, &digest)? {
        write_bytes_atomic(&path, data)?;
    }
    Ok(digest)
}

/// Copy a layer tar into the blob store under its diff_id, verifying the
/// digest while copying. Returns its size.
fn put_layer_blob(blobs: &Path, layer: &ExportLayer) -> Result<u64> {
    let path = blobs.join(layer.diff_id.hex());
    if blob_ok(&path, &layer.diff_id)? {
        return Ok(fs::metadata(&path).at(&path)?.len());
    }
    let src = &layer.tar_path;
    let mut size = 0;
    write_atomic_with(&path, |out| {
        let mut input = HashRead::new(File::open(src).at(src)?);
        io::copy(&mut input, out).map_err(|e| Error::io(src, e))?;
        let got = Digest::from_hasher(input.hasher);
        if got != layer.diff_id {
            return Err(Error::Invalid(format!(
                "layer tar {}: diff_id digest mismatch: expected {}, got {got}",
                src.display(),
                layer.diff_id
            )));
        }
        size = input.count;
        Ok(())
    })?;
    Ok(size)
}

fn create_dir_0755(path: &Path) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .at(path)
}

/// Write (or extend) an OCI image layout in `dir` with an image of
/// uncompressed `layers` and `config_bytes`, named `reference` in
/// index.json (an entry with the same name is replaced). Returns the
/// manifest digest.
pub fn write_layout(
    dir: &Path,
    reference: &str,
    config_bytes: &[u8],
    layers: &[ExportLayer],
) -> Result<Digest> {
    if reference.is_empty() {
        return Err(Error::Invalid(
            "image reference must not be empty".to_string(),
        ));
    }
    let config: Value = serde_json::from_slice(config_bytes)
        .map_err(|e| Error::Invalid(format!("image config: invalid JSON: {e}")))?;
    let ids = config_diff_ids(&config)?;
    let want: Vec<&Digest> = layers.iter().map(|l| &l.diff_id).collect();
    if ids.iter().collect::<Vec<_>>() != want {
        return Err(Error::Invalid(format!(
            "image config rootfs.diff_ids ({} entries) do not match the {} exported layers",
            ids.len(),
            layers.len()
        )));
    }

    let blobs = dir.join("blobs").join("sha256");
    create_dir_0755(&blobs)?;
    let layout = dir.join("oci-layout");
    if fs::symlink_metadata(&layout).is_err() {
        write_bytes_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    }

    let mut sizes = Vec::with_capacity(layers.len());
    for layer in layers {
        sizes.push(put_layer_blob(&blobs, layer)?);
    }
    let config_digest = put_blob_bytes(&blobs, config_bytes)?;
    let descs: Vec<(&str, &Digest, u64)> = layers
        .iter()
        .zip(&sizes)
        .map(|(l, s)| (MEDIA_OCI_LAYER, &l.diff_id, *s))
        .collect();
    let manifest = manifest_bytes(&config_digest, config_bytes.len() as u64, &descs);
    let manifest_digest = put_blob_bytes(&blobs, &manifest)?;

    let index_path = dir.join("index.json");
    let mut index: Value = match fs::read(&index_path) {
        Ok(data) => serde_json::from_slice(&data)
            .map_err(|e| Error::Invalid(format!("{}: invalid JSON: {e}", index_path.display())))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_INDEX,
            "manifests": [],
        }),
        Err(e) => return Err(Error::io(&index_path, e)),
    };
    let obj = index
        .as_object_mut()
        .ok_or_else(|| Error::Invalid(format!("{}: not a JSON object", index_path.display())))?;
    let manifests = obj.entry("manifests").or_insert_with(|| json!([]));
    let list = manifests.as_array_mut().ok_or_else(|| {
        Error::Invalid(format!("{}: manifests is not a list", index_path.display()))
    })?;
    list.retain(|d| {
        d.get("annotations")
            .and_then(|a| a.get(ANNOTATION_REF_NAME))
            .and_then(Value::as_str)
            != Some(reference)
    });
    list.push(json!({
        "mediaType": MEDIA_OCI_MANIFEST,
        "digest": manifest_digest,
        "size": manifest.len(),
        "annotations": { ANNOTATION_REF_NAME: reference },
    }));
    let mut data = serde_json::to_vec_pretty(&index).expect("index serializes");
    data.push(b'\n');
    write_bytes_atomic(&index_path, &data)?;
    Ok(manifest_digest)
}

/// A new image config: platform and runtime `config` from the parent
/// (else amd64/linux), `rootfs.diff_ids`, and the parent's history plus
/// one entry created by `comment`.
pub fn new_config(parent_config: Option<&Value>, diff_ids: &[Digest], comment: &str) -> Vec<u8> {
    let get = |key: &str| parent_config.and_then(|p| p.get(key));
    let mut cfg = serde_json::Map::new();
    let arch = get("architecture").filter(|v| v.is_string()).cloned();
    let os = get("os").filter(|v| v.is_string()).cloned();
    cfg.insert(
        "architecture".into(),
        arch.unwrap_or_else(|| json!(WANT_ARCH)),
    );
    cfg.insert("os".into(), os.unwrap_or_else(|| json!(WANT_OS)));
    for key in ["variant", "os.version", "os.features", "config"] {
        if let Some(v) = get(key) {
            cfg.insert(key.into(), v.clone());
        }
    }
    cfg.insert(
        "rootfs".into(),
        json!({ "type": "layers", "diff_ids": diff_ids }),
    );
    let mut history = get("history")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let parent_layers = parent_config
        .and_then(|p| config_diff_ids(p).ok())
        .map_or(0, |ids| ids.len());
    let mut entry = serde_json::Map::new();
    entry.insert("created_by".into(), json!(comment));
    if parent_config.is_some() && parent_layers == diff_ids.len() {
        entry.insert("empty_layer".into(), json!(true));
    }
    history.push(Value::Object(entry));
    cfg.insert("history".into(), Value::Array(history));
    serde_json::to_vec(&Value::Object(cfg)).expect("config serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn compress(data: &[u8], c: Compression) -> Vec<u8> {
        match c {
            Compression::None => data.to_vec(),
            Compression::Gzip => {
                let mut e =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(Cursor::new(data), 3).unwrap(),
        }
    }

    fn put_blob(dir: &Path, data: &[u8]) -> Digest {
        let d = Digest::of(data);
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).unwrap();
        fs::write(blobs.join(d.hex()), data).unwrap();
        d
    }

    fn config_for(arch: &str, diff_ids: &[Digest]) -> Value {
        json!({
            "architecture": arch,
            "os": "linux",
            "config": { "Env": ["PATH=/bin"] },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": [],
        })
    }

    struct Built {
        manifest: Digest,
        manifest_size: usize,
        diff_ids: Vec<Digest>,
        layer_digests: Vec<Digest>,
        tars: Vec<Vec<u8>>,
    }

    /// Write layer, config and manifest blobs of one image into `dir`.
    fn put_image(
        dir: &Path,
        layers: &[(Compression, Vec<u8>)],
        arch: &str,
        tweak: impl FnOnce(&mut Value),
    ) -> Built {
        let mut diff_ids = Vec::new();
        let mut descs = Vec::new();
        let mut layer_digests = Vec::new();
        for (c, tar) in layers {
            diff_ids.push(Digest::of(tar));
            let blob = compress(tar, *c);
            let d = put_blob(dir, &blob);
            descs.push(json!({
                "mediaType": c.oci_media_type(),
                "digest": d,
                "size": blob.len(),
            }));
            layer_digests.push(d);
        }
        let mut config = config_for(arch, &diff_ids);
        tweak(&mut config);
        let config_bytes = serde_json::to_vec(&config).unwrap();
        let cd = put_blob(dir, &config_bytes);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_MANIFEST,
            "config": { "mediaType": MEDIA_OCI_CONFIG, "digest": cd, "size": config_bytes.len() },
            "layers": descs,
        });
        let mb = serde_json::to_vec(&manifest).unwrap();
        let md = put_blob(dir, &mb);
        Built {
            manifest: md,
            manifest_size: mb.len(),
            diff_ids,
            layer_digests,
            tars: layers.iter().map(|(_, t)| t.clone()).collect(),
        }
    }

    fn manifest_desc(b: &Built, refname: Option<&str>) -> Value {
        let mut d = json!({
            "mediaType": MEDIA_OCI_MANIFEST,
            "digest": b.manifest,
            "size": b.manifest_size,
        });
        if let Some(r) = refname {
            d["annotations"] = json!({ ANNOTATION_REF_NAME: r });
        }
        d
    }

    fn write_index(dir: &Path, manifests: Vec<Value>) {
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let index =
            json!({ "schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": manifests });
        fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    }

    fn three_layers() -> Vec<(Compression, Vec<u8>)> {
        vec![
            (Compression::None, layer_tar(&[("etc/a", b"alpha")])),
            (
                Compression::Gzip,
                layer_tar(&[("etc/b", b"beta"), ("etc/c", b"gamma")]),
            ),
            (Compression::Zstd, layer_tar(&[("usr/d", &[7u8; 5000])])),
        ]
    }

    /// Read every layer back and compare with the original tars.
    fn check_layers(img: &Image, tars: &[Vec<u8>]) {
        assert_eq!(img.layers.len(), tars.len());
        for (i, tar) in tars.iter().enumerate() {
            let mut r = img.open_layer(i).unwrap();
            let mut got = Vec::new();
            r.read_to_end(&mut got).unwrap();
            assert_eq!(&got, tar, "layer {i}");
            assert_eq!(r.finish().unwrap(), tar.len() as u64);
        }
        img.verify_all().unwrap();
    }

    /// A tar of the regular files under `dir`, names prefixed by `prefix`.
    fn tar_dir(dir: &Path, prefix: &str) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        fn walk(b: &mut tar::Builder<Vec<u8>>, root: &Path, dir: &Path, prefix: &str) {
            let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
            entries.sort_by_key(|e| e.path());
            for e in entries {
                let p = e.path();
                let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
                if p.is_dir() {
                    walk(b, root, &p, prefix);
                } else {
                    let data = fs::read(&p).unwrap();
                    let mut h = tar::Header::new_gnu();
                    h.set_size(data.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, format!("{prefix}{rel}"), &data[..])
                        .unwrap();
                }
            }
        }
        walk(&mut b, dir, dir, prefix);
        b.into_inner().unwrap()
    }

    fn err_text<T: fmt::Debug>(r: Result<T>) -> String {
        let e = r.expect_err("expected an error");
        assert!(matches!(e, Error::Invalid(_)), "not Invalid: {e:?}");
        e.to_string()
    }

    #[test]
    fn digest_parse_and_display() {
        let d = Digest::of(b"hello");
        assert_eq!(
            d.to_string(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(Digest::parse(d.as_str()).unwrap(), d);
        assert_eq!(d.hex().len(), 64);
        let upper = d.as_str().to_uppercase().replace("SHA256", "sha256");
        assert!(Digest::parse(&upper).is_err());
        assert!(Digest::parse("sha256:abc").is_err());
        assert!(Digest::parse("nocolon").is_err());
        let e = Digest::parse(&format!("sha512:{}", "a".repeat(128))).unwrap_err();
        assert!(
            e.to_string().contains("unsupported digest algorithm"),
            "{e}"
        );
        let back: Digest = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back, d);
        assert!(serde_json::from_str::<Digest>("\"md5:00\"").is_err());
    }

    #[test]
    fn chain_id_vectors() {
        let a = Digest::of(b"A");
        let b = Digest::of(b"B");
        assert_eq!(chain_id(None, &a), a);
        assert_eq!(chain_ids(std::slice::from_ref(&a)), vec![a.clone()]);
        let ab = Digest::of(format!("{a} {b}"));
        assert_eq!(chain_id(Some(&a), &b), ab);
        let ids = chain_ids(&[a.clone(), b.clone(), a.clone()]);
        assert_eq!(
            ids,
            vec![a.clone(), ab.clone(), Digest::of(format!("{ab} {a}"))]
        );
        // Known vector: the string hashed is "sha256:<A> sha256:<B>".
        let s = format!("sha256:{} sha256:{}", a.hex(), b.hex());
        assert_eq!(hex::encode(Sha256::digest(s.as_bytes())), ab.hex());
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn compression_from_media_type() {
        let f = Compression::from_media_type;
        assert_eq!(f(MEDIA_OCI_LAYER).unwrap(), Some(Compression::None));
        assert_eq!(f(MEDIA_OCI_LAYER_GZIP).unwrap(), Some(Compression::Gzip));
        assert_eq!(f(MEDIA_OCI_LAYER_ZSTD).unwrap(), Some(Compression::Zstd));
        assert_eq!(
            f("application/vnd.docker.image.rootfs.diff.tar.gzip").unwrap(),
            Some(Compression::Gzip)
        );
        assert_eq!(f("").unwrap(), None);
        assert_eq!(
            f("application/vnd.docker.image.rootfs.diff.tar").unwrap(),
            None
        );
        assert!(f("application/vnd.oci.image.layer.v1.tar+lz4").is_err());
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"etc/"), Compression::None);
    }

    #[test]
    fn member_names() {
        let h = "a".repeat(64);
        for ok in [
            "index.json".to_string(),
            "./oci-layout".to_string(),
            format!("blobs/sha256/{h}"),
            format!("./blobs/sha256/{h}"),
            format!("{h}.json"),
            format!("{h}/layer.tar"),
            format!("{h}/VERSION"),
            "repositories".to_string(),
        ] {
            assert!(member_name(ok.as_bytes()).is_some(), "{ok}");
        }
        for bad in [
            "../x".to_string(),
            "/index.json".to_string(),
            format!("blobs/sha256/../../{h}"),
            format!("blobs/sha256/{h}/"),
            format!("blobs/sha512/{h}"),
            format!("blobs/sha256/{}", h.to_uppercase()),
            "blobs/".to_string(),
            format!("{h}/../index.json"),
            "etc/passwd".to_string(),
        ] {
            assert!(member_name(bad.as_bytes()).is_none(), "{bad}");
        }
        assert_eq!(normalize_member("a/../b/./c"), Some("b/c".to_string()));
        assert_eq!(normalize_member("../b"), None);
        assert_eq!(normalize_member("/b"), None);
    }

    #[test]
    fn reference_matching() {
        assert_eq!(
            split_tag("localhost:5000/foo"),
            ("localhost:5000/foo", None)
        );
        assert_eq!(
            split_tag("localhost:5000/foo:1"),
            ("localhost:5000/foo", Some("1"))
        );
        assert_eq!(normalize_ref("docker.io/library/busybox"), "busybox:latest");
        assert_eq!(docker_match("busybox:latest", "busybox"), 1);
        assert_eq!(docker_match("busybox:latest", "busybox:latest"), 2);
        assert_eq!(docker_match("busybox:latest", "alpine"), 0);
    }

    #[test]
    fn open_oci_layout_dir_all_compressions() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("layout");
        let b = put_image(&dir, &three_layers(), "amd64", |_| {});
        write_index(&dir, vec![manifest_desc(&b, Some("example.com/app:1.0"))]);
        let img = open(&dir, None, None, &t.path().join("work")).unwrap();
        assert_eq!(img.reference.as_deref(), Some("example.com/app:1.0"));
        assert_eq!(img.manifest_digest, b.manifest);
        let comps: Vec<Compression> = img.layers.iter().map(|l| l.compression).collect();
        assert_eq!(
            comps,
            [Compression::None, Compression::Gzip, Compression::Zstd]
        );
        assert_eq!(img.diff_ids(), b.diff_ids);
        assert_eq!(img.chain_ids(), chain_ids(&b.diff_ids));
        assert_eq!(img.layers[0].chain_id, b.diff_ids[0]);
        let digests: Vec<Digest> = img.layers.iter().map(|l| l.digest.clone()).collect();
        assert_eq!(digests, b.layer_digests);
        assert_eq!(img.config_json().unwrap()["architecture"], "amd64");
        assert_eq!(Digest::of(&img.config_bytes), img.config_digest);
        check_layers(&img, &b.tars);
        // Directory sources need no temporary directory.
        assert!(!t.path().join("work").exists());
        // Select by full name and by tag.
        assert!(open(&dir, Some("example.com/app:1.0"), None, t.path()).is_ok());
        assert!(open(&dir, Some("1.0"), None, t.path()).is_ok());
        let e = open(&dir, Some("other:2"), None, t.path()).unwrap_err();
        assert!(matches!(e, Error::NotFound(_)), "{e:?}");
        assert!(img.open_layer(3).is_err());
    }

    #[test]
    fn open_reads_partially_then_finish_drains() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("layout");
        let b = put_image(&dir, &three_layers(), "amd64", |_| {});
        write_index(&dir, vec![manifest_desc(&b, None)]);
        let img = open(&dir, None, None, t.path()).unwrap();
        assert_eq!(img.reference, None);
        for i in 0..3 {
            // A tar reader stops at the end-of-archive marker.
            let mut r = img.open_layer(i).unwrap();
            let mut ar = tar::Archive::new(&mut r);
            let n = ar.entries().unwrap().count();
            assert!(n >= 1);
            assert_eq!(r.finish().unwrap(), b.tars[i].len() as u64);
        }
    }

    #[test]
    fn open_tar_of_oci_layout() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("layout");
        let b = put_image(&dir, &three_layers(), "amd64", |_| {});
        write_index(&dir, vec![manifest_desc(&b, Some("app:latest"))]);
        let work = t.path().join("work");
        for (prefix, comp) in [
            ("", Compression::None),
            ("./", Compression::None),
            ("", Compression::Gzip),
        ] {
            let archive = t.path().join("image.tar");
            fs::write(&archive, compress(&tar_dir(&dir, prefix), comp)).unwrap();
            let img = open(&archive, Some("app:latest"), None, &work).unwrap();
            assert_eq!(img.reference.as_deref(), Some("app:latest"));
            assert_eq!(img.manifest_digest, b.manifest);
            check_layers(&img, &b.tars);
            // The extraction directory is private and removed on drop.
            let tmp: Vec<_> = fs::read_dir(&work).unwrap().collect();
            assert_eq!(tmp.len(), 1);
            let tmp = tmp[0].as_ref().unwrap().path();
            assert_eq!(
                fs::metadata(&tmp).unwrap().permissions().mode() & 0o777,
                0o700
            );
            drop(img);
            assert!(!tmp.exists());
        }
    }

    /// A `docker save` archive of one image with the given layers; the
    /// second copy of a repeated layer is a symlink, as docker writes it.
    fn docker_save(layers: &[(Compression, Vec<u8>)], tags: &[&str], symlink_dup: bool) -> Vec<u8> {
        let diff_ids: Vec<Digest> = layers.iter().map(|(_, t)| Digest::of(t)).collect();
        let config = serde_json::to_vec(&config_for("amd64", &diff_ids)).unwrap();
        let config_name = format!("{}.json", Digest::of(&config).hex());
        let mut b = tar::Builder::new(Vec::new());
        let add = |b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, data).unwrap();
        };
        let mut names = Vec::new();
        for (i, (c, tar)) in layers.iter().enumerate() {
            let id = Digest::of(format!("layer-id-{i}"));
            let name = format!("{}/layer.tar", id.hex());
            if symlink_dup && i > 0 && layers[..i].iter().any(|(_, t)| t == tar) {
                let first = layers.iter().position(|(_, t)| t == tar).unwrap();
                let target = format!(
                    "../{}/layer.tar",
                    Digest::of(format!("layer-id-{first}")).hex()
                );
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                h.set_mode(0o777);
                b.append_link(&mut h, &name, &target).unwrap();
            } else {
                add(&mut b, &format!("{}/VERSION", id.hex()), b"1.0");
                add(&mut b, &name, &compress(tar, *c));
            }
            names.push(name);
        }
        add(&mut b, &config_name, &config);
        let manifest = json!([{ "Config": config_name, "RepoTags": tags, "Layers": names }]);
        add(
            &mut b,
            "manifest.json",
            &serde_json::to_vec(&manifest).unwrap(),
        );
        add(&mut b, "repositories", b"{}");
        b.into_inner().unwrap()
    }

    #[test]
    fn open_docker_save_archive() {
        let t = tempfile::tempdir().unwrap();
        let base = layer_tar(&[("bin/sh", b"#!")]);
        let layers = vec![
            (Compression::None, base.clone()),
            (Compression::Gzip, layer_tar(&[("etc/x", b"x")])),
            (Compression::None, base.clone()),
        ];
        let archive = t.path().join("save.tar");
        fs::write(&archive, docker_save(&layers, &["busybox:latest"], true)).unwrap();
        for name in [
            None,
            Some("busybox:latest"),
            Some("busybox"),
            Some("docker.io/library/busybox"),
        ] {
            let img = open(&archive, name, None, &t.path().join("work")).unwrap();
            assert_eq!(img.reference.as_deref(), Some("busybox:latest"));
            assert_eq!(img.layers[1].compression, Compression::Gzip);
            assert_eq!(img.layers[0].compression, Compression::None);
            assert_eq!(img.layers[0].digest, Digest::of(&base));
            assert_eq!(img.layers[2].digest, Digest::of(&base));
            let tars: Vec<Vec<u8>> = layers.iter().map(|(_, t)| t.clone()).collect();
            check_layers(&img, &tars);
            assert_eq!(img.chain_ids(), chain_ids(&img.diff_ids()));
        }
        let e = open(&archive, Some("alpine"), None, t.path()).unwrap_err();
        assert!(matches!(e, Error::NotFound(_)), "{e:?}");

        // A config whose content does not match its name.
        let mut data = docker_save(&layers[..1], &["a:1"], false);
        let pos = data.windows(8).position(|w| w == b"\"amd64\",").unwrap();
        data[pos + 1] = b'A';
        fs::write(&archive, &data).unwrap();
        let msg = err_text(open(&archive, None, None, t.path()));
        assert!(msg.contains("digest mismatch"), "{msg}");
    }

    #[test]
    fn docker_25_archive_with_index_and_manifest_json() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("save");
        let b = put_image(&dir, &three_layers(), "amd64", |_| {});
        let mut d = manifest_desc(&b, None);
        d["annotations"] = json!({
            ANNOTATION_CONTAINERD_NAME: "docker.io/library/app:latest",
            ANNOTATION_REF_NAME: "latest",
        });
        write_index(&dir, vec![d]);
        let m: Value = serde_json::from_slice(
            &fs::read(dir.join("blobs/sha256").join(b.manifest.hex())).unwrap(),
        )
        .unwrap();
        let config = m["config"]["digest"]
            .as_str()
            .unwrap()
            .replace("sha256:", "blobs/sha256/");
        let layers: Vec<String> = b
            .layer_digests
            .iter()
            .map(|d| format!("blobs/sha256/{}", d.hex()))
            .collect();
        let mj = json!([{ "Config": config, "RepoTags": ["app:latest", "other:tag"], "Layers": layers }]);
        fs::write(dir.join("manifest.json"), serde_json::to_vec(&mj).unwrap()).unwrap();

        // Found through index.json.
        let img = open(&dir, Some("app"), None, t.path()).unwrap();
        assert_eq!(
            img.reference.as_deref(),
            Some("docker.io/library/app:latest")
        );
        assert_eq!(img.manifest_digest, b.manifest);
        check_layers(&img, &b.tars);
        // Only manifest.json knows this name: docker-save path, with the
        // content-addressed layer names verified while streaming.
        let img = open(&dir, Some("other:tag"), None, t.path()).unwrap();
        assert_eq!(img.reference.as_deref(), Some("other:tag"));
        assert_eq!(img.layers[2].digest, b.layer_digests[2]);
        assert_eq!(img.layers[2].compression, Compression::Zstd);
        check_layers(&img, &b.tars);
        // A blob named by a digest it does not have fails on read.
        let path = dir.join("blobs/sha256").join(b.layer_digests[0].hex());
        fs::write(&path, layer_tar(&[("etc/a", b"alphX")])).unwrap();
        let img = open(&dir, Some("other:tag"), None, t.path()).unwrap();
        let msg = err_text(img.verify_all());
        assert!(
            msg.contains("layer 1 (") && msg.contains("blob digest mismatch"),
            "{msg}"
        );
    }

    #[test]
    fn docker_save_corrupt_layer_and_diff_id() {
        let t = tempfile::tempdir().unwrap();
        let layers = vec![(Compression::Gzip, layer_tar(&[("a", &[1u8; 3000])]))];
        let dir = t.path().join("extracted");
        fs::create_dir(&dir).unwrap();
        let archive = t.path().join("save.tar");
        fs::write(&archive, docker_save(&layers, &["x:1"], false)).unwrap();
        tar::Archive::new(File::open(&archive).unwrap())
            .unpack(&dir)
            .unwrap();
        // As a directory: the stored digest is computed at open time.
        let img = open(&dir, None, None, t.path()).unwrap();
        img.verify_all().unwrap();
        let layer_path = img.layers[0].path.clone();
        let mut blob = fs::read(&layer_path).unwrap();
        let n = blob.len();
        blob[n - 3] ^= 0xff; // in the gzip trailer: the CRC/size check fails
        fs::write(&layer_path, &blob).unwrap();
        // The digest recorded at open time came from the good copy.
        let msg = err_text(img.verify_all());
        assert!(
            msg.contains("layer 1 (") && msg.contains("digest mismatch"),
            "{msg}"
        );
        drop(img);
        // Reopened, the stored digest is the corrupt one, but the DiffID
        // (or the decompressor) catches it.
        let img = open(&dir, None, None, t.path()).unwrap();
        let msg = err_text(img.verify_all());
        assert!(msg.contains("layer 1 ("), "{msg}");
    }

    #[test]
    fn selection_among_several_images() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("layout");
        let a = put_image(
            &dir,
            &[(Compression::Gzip, layer_tar(&[("a", b"a")]))],
            "amd64",
            |_| {},
        );
        let b = put_image(
            &dir,
            &[(Compression::Gzip, layer_tar(&[("b", b"b")]))],
            "amd64",
            |_| {},
        );
        write_index(
            &dir,
            vec![
                manifest_desc(&a, Some("repo/a:1")),
                manifest_desc(&b, Some("repo/b:2")),
            ],
        );
        let img = open(&dir, Some("repo/b:2"), None, t.path()).unwrap();
        assert_eq!(img.manifest_digest, b.manifest);
        assert_eq!(img.reference.as_deref(), Some("repo/b:2"));
        check_layers(&img, &b.tars);
        let img = open(&dir, Some("1"), None, t.path()).unwrap();
        assert_eq!(img.manifest_digest, a.manifest);
        let msg = err_text(open(&dir, None, None, t.path()));
        assert!(
            msg.contains("repo/a:1") && msg.contains("repo/b:2"),
            "{msg}"
        );

        // Same tag in two repositories: a tag alone is ambiguous.
        write_index(
            &dir,
            vec![
                manifest_desc(&a, Some("repo/a:1")),
                manifest_desc(&b, Some("repo/b:1")),
            ],
        );
        let msg = err_text(open(&dir, Some("1"), None, t.path()));
        assert!(
            msg.contains("repo/a:1") && msg.contains("repo/b:1"),
            "{msg}"
        );
        assert_eq!(
            open(&dir, Some("repo/b:1"), None, t.path())
                .unwrap()
                .manifest_digest,
            b.manifest
        );

        // Bare tags in ref.name (as Docker 25 writes) match a full name.
        write_index(
            &dir,
            vec![manifest_desc(&a, Some("1")), manifest_desc(&b, Some("2"))],
        );
        let img = open(&dir, Some("foo:2"), None, t.path()).unwrap();
        assert_eq!(img.manifest_digest, b.manifest);
    }

    #[test]
    fn multi_arch_index_picks_linux_amd64() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("layout");
        let arm = put_image(
            &dir,
            &[(Compression::Gzip, layer_tar(&[("arm", b"1")]))],
            "arm64",
            |_| {},
        );
        let amd = put_image(
            &dir,
            &[(Compression::Zstd, layer_tar(&[("amd", b"2")]))],
            "amd64",
            |_| {},
        );
        let platform = |b: &Built, arch: &str| {
            let mut d = manifest_desc(b, None);
            d["platform"] = json!({ "architecture": arch, "os": "linux" });
            d
        };
        let nested = json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_INDEX,
            "manifests": [platform(&arm, "arm64"), platform(&amd, "amd64")],
        });
        let nb = serde_json::to_vec(&nested).unwrap();
        let nd = put_blob(&dir, &nb);
        write_index(
            &dir,
            vec![json!({
                "mediaType": MEDIA_OCI_INDEX,
                "digest": nd,
                "size": nb.len(),
                "annotations": { ANNOTATION_REF_NAME: "multi:latest" },
            })],
        );
        let img = open(&dir, Some("multi:latest"), None, t.path()).unwrap();
        assert_eq!(img.manifest_digest, amd.manifest);
        assert_eq!(img.config_json().unwrap()["architecture"], "amd64");
        check_layers(&img, &amd.tars);

        // The platforms listed directly in index.json.
        write_index(&dir, vec![platform(&arm, "arm64"), platform(&amd, "amd64")]);
        assert_eq!(
            open(&dir, None, None, t.path()).unwrap().manifest_digest,
            amd.manifest
        );

        // No amd64 in the nested index.
        let nested = json!({ "schemaVersion": 2, "manifests": [platform(&arm, "arm64")] });
        let nb = serde_json::to_vec(&nested).unwrap();
        let nd = put_blob(&dir, &nb);
        write_index(
            &dir,
            vec![json!({ "mediaType": MEDIA_OCI_INDEX, "digest": nd, "size": nb.len() })],
        );
        let msg = err_text(open(&dir, None, None, t.path()));
        assert!(msg.contains("linux/arm64"), "{msg}");
    }

    #[test]
    fn flipped_byte_in_compressed_layer() {
        for comp in [Compression::Gzip, Compression::Zstd, Compression::None] {
            let t = tempfile::tempdir().unwrap();
            let dir = t.path().join("layout");
            let layers = vec![
                (Compression::None, layer_tar(&[("ok", b"ok")])),
                (comp, layer_tar(&[("big", &[42u8; 20000])])),
            ];
            let b = put_image(&dir, &layers, "amd64", |_| {});
            write_index(&dir, vec![manifest_desc(&b, None)]);
            let path = dir.join("blobs/sha256").join(b.layer_digests[1].hex());
            let mut blob = fs::read(&path).unwrap();
            let mid = blob.len() / 2;
            blob[mid] ^= 0x01;
            fs::write(&path, &blob).unwrap();
            let img = open(&dir, None, None, t.path()).unwrap();
            img.open_layer(0).unwrap().finish().unwrap();
            let mut r = img.open_layer(1).unwrap();
            let _ = r.read_to_end(&mut Vec::new());
            let msg = err_text(r.finish());
            let got = Digest::of(&blob);
            assert!(
                msg.contains(&format!("layer 2 ({})", b.layer_digests[1]))
                    && msg.contains("blob digest mismatch")
                    && msg.contains(&format!("expected {}", b.layer_digests[1]))
                    && msg.contains(&format!("got {got}")),
                "{comp:?}: {msg}"
            );
        }
    }

    #[test]
    fn wrong_diff_id_in_config() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("layout");
        let wrong = Digest::of(b"not the layer");
        let w = wrong.clone();
        let b = put_image(&dir, &three_layers(), "amd64", move |c| {
            c["rootfs"]["diff_ids"][1] = json!(w);
        });
        write_index(&dir, vec![manifest_desc(&b, None)]);
        let img = open(&dir, None, None, t.path()).unwrap();
        img.open_layer(0).unwrap().finish().unwrap();
        let msg = err_text(img.open_layer(1).unwrap().finish());
        assert!(
            msg.contains("layer 2 (")
                && msg.contains("diff_id digest mismatch")
                && msg.contains(&format!("expected {wrong}"))
                && msg.contains(&format!("got {}", b.diff_ids[1])),
            "{msg}"
        );
        assert!(img.verify_all().is_err());
    }

    #[test]
    fn manifest_digest_and_size_mismatch() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("layout");
        let b = put_image(&dir, &three_layers(), "amd64", |_| {});
        // Content changed under the same name.
        let path = dir.join("blobs/sha256").join(b.manifest.hex());
        let mut m: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        m["annotations"] = json!({ "x": "y" });
        let changed = serde_json::to_vec(&m).unwrap();
        fs::write(&path, &changed).unwrap();
        write_index(&dir, vec![manifest_desc(&b, None)]);
        let msg = err_text(open(&dir, None, None, t.path()));
        assert!(
            msg.contains(&format!("blobs/sha256/{}", b.manifest.hex()))
                && msg.contains("digest mismatch")
                && msg.contains(&format!("expected {}", b.manifest))
                && msg.contains(&format!("got {}", Digest::of(&changed))),
            "{msg}"
        );
        // Right content, wrong size in the descriptor.
        let b = put_image(&dir, &three_layers(), "amd64", |_| {});
        let mut d = manifest_desc(&b, None);
        d["size"] = json!(b.manifest_size + 1);
        write_index(&dir, vec![d]);
        let msg = err_text(open(&dir, None, None, t.path()));
        assert!(msg.contains("size mismatch"), "{msg}");
        // A missing manifest blob.
        let mut d = manifest_desc(&b, None);
        d["digest"] = json!(Digest::of(b"nothing"));
        write_index(&dir, vec![d]);
        let msg = err_text(open(&dir, None, None, t.path()));
        assert!(msg.contains("missing"), "{msg}");
    }

    #[test]
    fn config_digest_mismatch() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("layout");
        let b = put_image(&dir, &three_layers(), "amd64", |_| {});
        write_index(&dir, vec![manifest_desc(&b, None)]);
        let img = open(&dir, None, None, t.path()).unwrap();
        let cpath = dir.join("blobs/sha256").join(img.config_digest.hex());
        let mut data = img.config_bytes.clone();
        let pos = data.iter().position(|&c| c == b'4').unwrap(); // in "amd64"
        data[pos] = b'5';
        fs::write(&cpath, &data).unwrap();
        let msg = err_text(open(&dir, None, None, t.path()));
        assert!(
            msg.contains("config blob") && msg.contains("digest mismatch"),
            "{msg}"
        );
    }

    #[test]
    fn layer_count_mismatch() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("layout");
        let b = put_image(&dir, &three_layers(), "amd64", |c| {
            c["rootfs"]["diff_ids"].as_array_mut().unwrap().pop();
        });
        write_index(&dir, vec![manifest_desc(&b, None)]);
        let msg = err_text(open(&dir, None, None, t.path()));
        assert!(
            msg.contains("2 rootfs.diff_ids") && msg.contains("3 layers"),
            "{msg}"
        );
    }

    #[test]
    fn not_an_image() {
        let t = tempfile::tempdir().unwrap();
        let msg = err_text(open(t.path(), None, None, t.path()));
        assert!(msg.contains("not an OCI image layout"), "{msg}");
        let junk = t.path().join("junk");
        fs::write(&junk, vec![0x55u8; 1000]).unwrap();
        assert!(open(&junk, None, None, &t.path().join("w")).is_err());
        // Nothing left behind by a failed open.
        assert_eq!(fs::read_dir(t.path().join("w")).unwrap().count(), 0);
    }

    /// Append a member with a raw name (bypassing tar's own checks).
    fn raw_member(
        b: &mut tar::Builder<Vec<u8>>,
        name: &str,
        kind: tar::EntryType,
        link: Option<&str>,
        data: &[u8],
    ) {
        let mut h = tar::Header::new_gnu();
        {
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name = [0; 100];
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(l) = link {
                gnu.linkname = [0; 100];
                gnu.linkname[..l.len()].copy_from_slice(l.as_bytes());
            }
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    #[test]
    fn hostile_tar_members_stay_inside() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("layout");
        let b = put_image(&dir, &three_layers(), "amd64", |_| {});
        write_index(&dir, vec![manifest_desc(&b, None)]);
        let base = t.path().join("base");
        let work = base.join("work");
        fs::create_dir_all(&work).unwrap();
        let secret = t.path().join("secret");
        fs::write(&secret, b"secret").unwrap();
        let h = "b".repeat(64);

        let mut ar = tar::Builder::new(Vec::new());
        raw_member(&mut ar, "../x", tar::EntryType::Regular, None, b"evil");
        raw_member(&mut ar, "../../x", tar::EntryType::Regular, None, b"evil");
        raw_member(
            &mut ar,
            &format!("blobs/sha256/../../x{}", &h[..40]),
            tar::EntryType::Regular,
            None,
            b"evil",
        );
        raw_member(
            &mut ar,
            "/tmp/dmctl-oci-test-evil",
            tar::EntryType::Regular,
            None,
            b"evil",
        );
        // A symlink then a file through it.
        raw_member(&mut ar, "blobs", tar::EntryType::Symlink, Some(".."), b"");
        raw_member(
            &mut ar,
            &format!("{h}/layer.tar"),
            tar::EntryType::Symlink,
            Some(secret.to_str().unwrap()),
            b"",
        );
        raw_member(
            &mut ar,
            &format!("{h}.json"),
            tar::EntryType::Link,
            Some("../secret"),
            b"",
        );
        raw_member(&mut ar, "x", tar::EntryType::Directory, None, b"");
        let layout = tar_dir(&dir, "");
        let mut inner = tar::Archive::new(&layout[..]);
        for e in inner.entries().unwrap() {
            let mut e = e.unwrap();
            let name = String::from_utf8(e.path_bytes().to_vec()).unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            raw_member(&mut ar, &name, tar::EntryType::Regular, None, &data);
        }
        // A symlink named like a wanted file, pointing outside.
        raw_member(
            &mut ar,
            "repositories",
            tar::EntryType::Symlink,
            Some("/etc/passwd"),
            b"",
        );
        let archive = t.path().join("hostile.tar");
        fs::write(&archive, ar.into_inner().unwrap()).unwrap();

        let before: Vec<_> = walk_all(t.path());
        let img = open(&archive, None, None, &work).unwrap();
        check_layers(&img, &b.tars);
        let tmp = img._tmp.as_ref().unwrap().path().to_path_buf();
        // Only regular files and directories, only the wanted names.
        for p in walk_all(&tmp) {
            let m = fs::symlink_metadata(&p).unwrap();
            assert!(m.is_file() || m.is_dir(), "{}", p.display());
            let rel = p.strip_prefix(&tmp).unwrap().to_str().unwrap().to_string();
            assert!(
                allowed_name(&rel) || rel == "blobs" || rel == "blobs/sha256",
                "{rel}"
            );
        }
        assert!(!tmp.join(format!("{h}/layer.tar")).exists());
        assert!(!tmp.join("repositories").exists());
        drop(img);
        let after: Vec<_> = walk_all(t.path());
        assert_eq!(before, after);
        assert!(!Path::new("/tmp/dmctl-oci-test-evil").exists());
        assert_eq!(fs::read(&secret).unwrap(), b"secret");
    }

    fn walk_all(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if fs::symlink_metadata(&p).unwrap().is_dir() {
                    stack.push(p.clone());
                }
                out.push(p);
            }
        }
        out.sort();
        out
    }

    #[test]
    fn duplicate_member_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let mut ar = tar::Builder::new(Vec::new());
        raw_member(&mut ar, "index.json", tar::EntryType::Regular, None, b"{}");
        raw_member(
            &mut ar,
            "./index.json",
            tar::EntryType::Regular,
            None,
            b"{}",
        );
        let archive = t.path().join("dup.tar");
        fs::write(&archive, ar.into_inner().unwrap()).unwrap();
        let msg = err_text(open(&archive, None, None, &t.path().join("w")));
        assert!(msg.contains("duplicate"), "{msg}");
        assert_eq!(fs::read_dir(t.path().join("w")).unwrap().count(), 0);
    }

    #[test]
    fn write_layout_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        let tars = [
            layer_tar(&[("etc/base", b"base")]),
            layer_tar(&[("etc/top", b"top")]),
        ];
        let mut layers = Vec::new();
        for (i, tar) in tars.iter().enumerate() {
            let p = src.join(format!("l{i}.tar"));
            fs::write(&p, tar).unwrap();
            layers.push(ExportLayer {
                tar_path: p,
                diff_id: Digest::of(tar),
            });
        }
        let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id.clone()).collect();
        let parent = config_for("arm64", &diff_ids[..1]);
        let config = new_config(Some(&parent), &diff_ids, "dmctl commit");
        let out = t.path().join("out");
        let md = write_layout(&out, "app:1", &config, &layers).unwrap();
        let mode = fs::metadata(out.join("blobs/sha256").join(diff_ids[0].hex()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);

        let img = open(&out, Some("app:1"), None, t.path()).unwrap();
        assert_eq!(img.manifest_digest, md);
        assert_eq!(img.reference.as_deref(), Some("app:1"));
        assert_eq!(img.chain_ids(), chain_ids(&diff_ids));
        assert_eq!(img.config_bytes, config);
        for l in &img.layers {
            assert_eq!(l.digest, l.diff_id);
            assert_eq!(l.compression, Compression::None);
            assert_eq!(l.media_type, MEDIA_OCI_LAYER);
        }
        check_layers(&img, &tars);
        let cfg = img.config_json().unwrap();
        assert_eq!(cfg["architecture"], "arm64");
        assert_eq!(cfg["config"]["Env"][0], "PATH=/bin");
        assert_eq!(cfg["history"][0]["created_by"], "dmctl commit");
        drop(img);

        // A second image (the base alone) and a re-write of the first.
        let base_cfg = new_config(None, &diff_ids[..1], "base");
        write_layout(&out, "base:1", &base_cfg, &layers[..1]).unwrap();
        assert_eq!(write_layout(&out, "app:1", &config, &layers).unwrap(), md);
        let index: Value =
            serde_json::from_slice(&fs::read(out.join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
        let base = open(&out, Some("base:1"), None, t.path()).unwrap();
        assert_eq!(base.chain_ids(), vec![diff_ids[0].clone()]);
        assert_eq!(base.config_json().unwrap()["architecture"], "amd64");
        base.verify_all().unwrap();
        let msg = err_text(open(&out, None, None, t.path()));
        assert!(msg.contains("app:1") && msg.contains("base:1"), "{msg}");

        // The tar of the layout opens as well.
        let archive = t.path().join("out.tar");
        fs::write(&archive, tar_dir(&out, "")).unwrap();
        let img = open(&archive, Some("app:1"), None, &t.path().join("w")).unwrap();
        assert_eq!(img.chain_ids(), chain_ids(&diff_ids));
        img.verify_all().unwrap();

        // Leftover temporaries: none.
        for p in walk_all(&out) {
            let name = p.file_name().unwrap().to_str().unwrap().to_string();
            assert!(!name.starts_with('.'), "{name}");
        }
    }

    #[test]
    fn write_layout_refuses_mismatches() {
        let t = tempfile::tempdir().unwrap();
        let tar = layer_tar(&[("f", b"f")]);
        let p = t.path().join("l.tar");
        fs::write(&p, &tar).unwrap();
        let good = ExportLayer {
            tar_path: p.clone(),
            diff_id: Digest::of(&tar),
        };
        let out = t.path().join("out");
        // Config diff_ids disagree with the layers.
        let config = new_config(None, &[Digest::of(b"other")], "x");
        let msg = err_text(write_layout(
            &out,
            "a:1",
            &config,
            std::slice::from_ref(&good),
        ));
        assert!(msg.contains("diff_ids"), "{msg}");
        // The tar on disk is not what its diff_id says.
        let bad = ExportLayer {
            tar_path: p,
            diff_id: Digest::of(b"other"),
        };
        let msg = err_text(write_layout(&out, "a:1", &config, &[bad]));
        assert!(msg.contains("digest mismatch"), "{msg}");
        assert!(!out.join("index.json").exists());
        assert!(!out
            .join("blobs/sha256")
            .join(Digest::of(b"other").hex())
            .exists());
        assert_eq!(fs::read_dir(out.join("blobs/sha256")).unwrap().count(), 0);
        assert!(err_text(write_layout(&out, "", &config, &[])).contains("reference"));
    }

    #[test]
    fn new_config_defaults() {
        let ids = [Digest::of(b"1")];
        let c: Value = serde_json::from_slice(&new_config(None, &ids, "hello")).unwrap();
        assert_eq!(c["architecture"], "amd64");
        assert_eq!(c["os"], "linux");
        assert_eq!(
            c["rootfs"],
            json!({ "type": "layers", "diff_ids": [ids[0]] })
        );
        assert_eq!(c["history"], json!([{ "created_by": "hello" }]));
        assert!(c.get("config").is_none());
        let mut parent = config_for("arm64", &ids);
        parent["history"] = json!([{ "created_by": "first" }]);
        let c: Value = serde_json::from_slice(&new_config(Some(&parent), &ids, "noop")).unwrap();
        assert_eq!(c["history"][0]["created_by"], "first");
        assert_eq!(
            c["history"][1],
            json!({ "created_by": "noop", "empty_layer": true })
        );
    }

    #[test]
    fn readers_are_send() {
        fn is_send<T: Send>() {}
        is_send::<LayerReader>();
        is_send::<Image>();
    }
}
