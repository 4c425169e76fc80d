//! Container images on disk: reading them for import and writing them for
//! export.
//!
//! Three source forms are read by [`open`]:
//!
//! * an OCI image layout directory (`oci-layout`, `index.json`,
//!   `blobs/sha256/<hex>`), per the OCI image-spec;
//! * a tar archive of such a layout (optionally gzip or zstd compressed);
//! * a `docker save`, `podman save` or `skopeo copy ... docker-archive:`
//!   archive (`manifest.json`, `<hex>.json` configs, `<hex>/layer.tar` or
//!   `<hex>.tar` layers, or the newer `blobs/sha256/<hex>` names).
//!
//! One module per part: `digest`, `compression`, `reader` (an opened image,
//! its layers read with their digests verified), `extract` (tar sources,
//! safely), `json` (the documents), `open` (OCI layouts and selection by
//! name), `docker` (docker-style archives), `export` (writing a layout).
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

mod compression;
mod digest;
mod docker;
mod export;
mod extract;
mod json;
mod open;
mod reader;
pub use compression::*;
pub use digest::*;
use docker::*;
pub use export::*;
use extract::*;
use json::*;
pub use open::*;
pub use reader::*;

/// `org.opencontainers.image.ref.name`: the name of a manifest in an index.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's (and Docker 25+'s) full image name annotation.
pub(super) const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MEDIA_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MEDIA_OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub(super) const MEDIA_DOCKER_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
pub(super) const MEDIA_DOCKER_MANIFEST: &str =
    "application/vnd.docker.distribution.manifest.v2+json";
pub(super) const MEDIA_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The platform picked from a multi-architecture image index.
pub(super) const WANT_OS: &str = "linux";
pub(super) const WANT_ARCH: &str = "amd64";

/// Largest JSON document (index, manifest, config) read into memory.
pub(super) const MAX_JSON: u64 = 64 << 20;
/// Deepest nesting of image indexes followed.
pub(super) const MAX_INDEX_DEPTH: usize = 4;

#[cfg(test)]
mod tests;
