//! Layer compression: from media types and magic bytes.

#[allow(unused_imports)]
use super::*;
use crate::error::{Error, IoContext, Result};
use serde::Serialize;
use std::fs::File;
use std::io::Read;
use std::path::Path;

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
    pub(super) fn from_media_type(media_type: &str) -> Result<Option<Compression>> {
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
    pub(super) fn sniff(magic: &[u8]) -> Compression {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    pub(super) fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => MEDIA_OCI_LAYER,
            Compression::Gzip => MEDIA_OCI_LAYER_GZIP,
            Compression::Zstd => MEDIA_OCI_LAYER_ZSTD,
        }
    }
}

pub(super) fn sniff_file(path: &Path) -> Result<Compression> {
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
