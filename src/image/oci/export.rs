//! Writing an OCI image layout.

#[allow(unused_imports)]
use super::*;
use crate::error::{Error, IoContext, Result};
use serde_json::{json, Value};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A layer to export: its uncompressed tar on disk and that tar's digest.
#[derive(Debug, Clone)]
pub struct ExportLayer {
    pub tar_path: PathBuf,
    pub diff_id: Digest,
}

/// A temporary name next to `path` for an atomic replacement.
pub(super) fn tmp_name(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp.{}.{n}", std::process::id()))
}

pub(super) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Write `path` atomically (temporary file, fsync, rename) with mode 0644,
/// the content produced by `fill`. `fill` may refuse (its error is
/// returned and the temporary removed).
pub(super) fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> Result<()>,
) -> Result<()> {
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

pub(super) fn write_bytes_atomic(path: &Path, data: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(data).at(path))
}

/// Does `path` hold content with `digest`? (A missing file does not.)
pub(super) fn blob_ok(path: &Path, digest: &Digest) -> Result<bool> {
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
pub(super) fn put_blob_bytes(blobs: &Path, data: &[u8]) -> Result<Digest> {
    let digest = Digest::of(data);
    let path = blobs.join(digest.hex());
    if !blob_ok(&path, &digest)? {
        write_bytes_atomic(&path, data)?;
    }
    Ok(digest)
}

/// Copy a layer tar into the blob store under its diff_id, verifying the
/// digest while copying. Returns its size.
pub(super) fn put_layer_blob(blobs: &Path, layer: &ExportLayer) -> Result<u64> {
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

pub(super) fn create_dir_0755(path: &Path) -> Result<()> {
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
