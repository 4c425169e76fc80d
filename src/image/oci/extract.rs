//! Tar sources extracted safely into a private temporary directory.

#[allow(unused_imports)]
use super::*;
use crate::error::{Error, IoContext, Result};
use std::collections::HashMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A 0700 directory removed (recursively) when dropped.
#[derive(Debug)]
pub(super) struct TempDirGuard(PathBuf);

impl TempDirGuard {
    pub(super) fn new(parent: &Path) -> Result<TempDirGuard> {
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

    pub(super) fn path(&self) -> &Path {
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
pub(super) fn allowed_name(name: &str) -> bool {
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
pub(super) fn normalize_member(path: &str) -> Option<String> {
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
pub(super) fn member_name(raw: &[u8]) -> Option<String> {
    let mut s = std::str::from_utf8(raw).ok()?;
    while let Some(rest) = s.strip_prefix("./") {
        s = rest;
    }
    allowed_name(s).then(|| s.to_string())
}

/// Create the parent directories of `name` (at most one level below
/// `blobs/`) inside `root`, which we created and only we write to.
pub(super) fn make_parents(root: &Path, name: &str) -> Result<()> {
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
pub(super) fn extract_tar(
    source: &Path,
    work_dir: &Path,
) -> Result<(TempDirGuard, HashMap<String, Digest>)> {
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
