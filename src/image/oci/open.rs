//! Opening an image: OCI layouts (and tars of them), and selection by name.

#[allow(unused_imports)]
use super::*;
use crate::error::{Error, IoContext, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;
use std::fs::{self};
use std::io::{self};
use std::path::{Path, PathBuf};

/// An image source being read: its root directory and, for tar sources,
/// the digests of the extracted files.
pub(super) struct Source<'a> {
    pub(super) root: &'a Path,
    /// The path the user gave, for messages.
    pub(super) name: String,
    pub(super) file_digests: &'a HashMap<String, Digest>,
}

impl Source<'_> {
    pub(super) fn bad(&self, msg: impl fmt::Display) -> Error {
        Error::Invalid(format!("{}: {msg}", self.name))
    }

    pub(super) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs").join("sha256").join(digest.hex())
    }

    pub(super) fn read_json<T: serde::de::DeserializeOwned>(&self, file: &str) -> Result<T> {
        let path = self.root.join(file);
        let data = read_limited(&path, MAX_JSON)?;
        serde_json::from_slice(&data).map_err(|e| self.bad(format!("invalid {file}: {e}")))
    }

    /// Read a JSON blob and verify it against its descriptor.
    pub(super) fn read_blob(&self, desc: &Descriptor, what: &str) -> Result<(Digest, Vec<u8>)> {
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

    pub(super) fn desc_size(&self, desc: &Descriptor, what: &str) -> Result<u64> {
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

pub(super) type Opened = (Option<String>, Digest, Digest, Vec<u8>, Vec<Layer>);

/// `(repository, tag)` of a reference; the tag is after the last `:` that
/// follows the last `/` (so a registry port is not a tag).
pub(super) fn split_tag(r: &str) -> (&str, Option<&str>) {
    let r = r.split_once('@').map_or(r, |(n, _)| n);
    let start = r.rfind('/').map_or(0, |i| i + 1);
    match r[start..].rfind(':') {
        Some(i) => (&r[..start + i], Some(&r[start + i + 1..])),
        None => (r, None),
    }
}

/// A reference with Docker Hub's defaults made explicit and stripped:
/// `docker.io/library/foo` and `foo` both give `foo:latest`.
pub(super) fn normalize_ref(r: &str) -> String {
    let r = r.strip_prefix("docker.io/").unwrap_or(r);
    let r = r.strip_prefix("library/").unwrap_or(r);
    let (repo, tag) = split_tag(r);
    format!("{repo}:{}", tag.unwrap_or("latest"))
}

/// How well an index entry matches `name`: 3 exact, 2 same normalized
/// reference, 1 same tag only, 0 no match.
pub(super) fn oci_match(desc: &Descriptor, name: &str) -> u8 {
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
pub(super) fn oci_reference(desc: &Descriptor, name: Option<&str>) -> Option<String> {
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
pub(super) fn dedup_by_digest(descs: Vec<&Descriptor>) -> Vec<&Descriptor> {
    let mut out: Vec<&Descriptor> = Vec::new();
    for d in descs {
        if !out.iter().any(|o| o.digest == d.digest) {
            out.push(d);
        }
    }
    out
}

pub(super) fn list_names(descs: &[&Descriptor]) -> String {
    descs
        .iter()
        .map(|d| d.display_name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `name` selects the image; `hint` (the name it is to get here) selects
/// one only when the source holds several and no `name` was given.
pub(super) fn open_oci(src: &Source<'_>, name: Option<&str>, hint: Option<&str>) -> Result<Opened> {
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

pub(super) fn is_index_media_type(m: &str) -> bool {
    m == MEDIA_OCI_INDEX || m == MEDIA_DOCKER_LIST
}

/// Follow `desc` (a manifest, or an index of them) to an image manifest.
pub(super) fn resolve_manifest(
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
pub(super) fn check_config(
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

pub(super) fn load_oci_image(
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
