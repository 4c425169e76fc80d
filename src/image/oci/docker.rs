//! docker save, podman save and skopeo docker-archive archives.

#[allow(unused_imports)]
use super::*;
use crate::error::{Error, IoContext, Result};
use std::fs::{self, File};
use std::io;
/// How well a docker RepoTag matches `name`: 2 exact, 1 normalized.
pub(super) fn docker_match(tag: &str, name: &str) -> u8 {
    if tag == name {
        2
    } else if normalize_ref(tag) == normalize_ref(name) {
        1
    } else {
        0
    }
}

pub(super) fn docker_entry_name(e: &DockerEntry) -> String {
    e.repo_tags
        .as_ref()
        .and_then(|t| t.first())
        .cloned()
        .unwrap_or_else(|| e.config.clone())
}

pub(super) fn open_docker(
    src: &Source<'_>,
    name: Option<&str>,
    hint: Option<&str>,
) -> Result<Opened> {
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
pub(super) fn select_docker_entry<'e>(
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
pub(super) fn docker_config(src: &Source<'_>, entry: &DockerEntry) -> Result<(Digest, Vec<u8>)> {
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
pub(super) fn docker_layers(
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
