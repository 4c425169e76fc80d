//! The JSON documents of OCI layouts and docker archives.

#[allow(unused_imports)]
use super::*;
use crate::error::{Error, IoContext, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
pub(super) struct Platform {
    #[serde(default)]
    pub(super) architecture: String,
    #[serde(default)]
    pub(super) os: String,
    #[serde(default)]
    pub(super) variant: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub(super) media_type: String,
    pub(super) digest: String,
    pub(super) size: i64,
    #[serde(default)]
    pub(super) annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub(super) platform: Option<Platform>,
}

impl Descriptor {
    pub(super) fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }

    pub(super) fn is_linux_amd64(&self) -> bool {
        self.platform
            .as_ref()
            .is_some_and(|p| p.os == WANT_OS && p.architecture == WANT_ARCH)
    }

    pub(super) fn platform_string(&self) -> String {
        match &self.platform {
            None => "unknown".to_string(),
            Some(p) => match &p.variant {
                Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                None => format!("{}/{}", p.os, p.architecture),
            },
        }
    }

    /// A name for messages: the ref name annotations, else the digest.
    pub(super) fn display_name(&self) -> String {
        self.annotation(ANNOTATION_CONTAINERD_NAME)
            .or_else(|| self.annotation(ANNOTATION_REF_NAME))
            .map(str::to_string)
            .unwrap_or_else(|| self.digest.clone())
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct IndexJson {
    #[serde(rename = "schemaVersion", default)]
    pub(super) schema_version: Option<i64>,
    #[serde(default)]
    pub(super) manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
pub(super) struct ManifestJson {
    #[serde(rename = "schemaVersion", default)]
    pub(super) schema_version: Option<i64>,
    #[serde(rename = "mediaType", default)]
    pub(super) media_type: Option<String>,
    pub(super) config: Descriptor,
    #[serde(default)]
    pub(super) layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
pub(super) struct DockerEntry {
    #[serde(rename = "Config")]
    pub(super) config: String,
    #[serde(rename = "RepoTags", default)]
    pub(super) repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    pub(super) layers: Vec<String>,
}

#[derive(Serialize)]
pub(super) struct OutDescriptor<'a> {
    #[serde(rename = "mediaType")]
    pub(super) media_type: &'a str,
    pub(super) digest: &'a Digest,
    pub(super) size: u64,
}

#[derive(Serialize)]
pub(super) struct OutManifest<'a> {
    #[serde(rename = "schemaVersion")]
    pub(super) schema_version: u32,
    #[serde(rename = "mediaType")]
    pub(super) media_type: &'a str,
    pub(super) config: OutDescriptor<'a>,
    pub(super) layers: Vec<OutDescriptor<'a>>,
}

/// An OCI manifest (compact JSON) for a config and layers given as
/// (media type, digest, size).
pub(super) fn manifest_bytes(
    config: &Digest,
    config_size: u64,
    layers: &[(&str, &Digest, u64)],
) -> Vec<u8> {
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
pub(super) fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>> {
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
pub(super) fn config_diff_ids(config: &Value) -> Result<Vec<Digest>> {
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
