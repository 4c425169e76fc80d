//! `dmctl rm POOL/NAME [--force]`: a volume, with the layers of images
//! protected. A layer volume goes with `image rm`; `rm --force` removes it
//! anyway and says which images it breaks (`check` reports them, `check
//! --repair` drops them, and importing the image again makes the layer).
//! A volume of a containerd snapshot (`dmctl serve`) is protected the same
//! way: it goes when containerd removes the snapshot.

use super::{image, volume, Ctx};
use crate::error::{Error, Result};
use crate::names::VolumeRef;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct RemoveReport {
    pub removed: String,
    /// Whether it held an image layer.
    pub was_layer: bool,
    /// Images that used the layer and are now broken.
    pub broken_images: Vec<String>,
}

pub fn remove(ctx: &Ctx, v: &VolumeRef, force: bool) -> Result<RemoveReport> {
    // The image commands' lock first, as they take it (then the pool's);
    // a pool that does not exist gets none.
    let _images = image::lock_images(ctx, &v.pool)?;
    let layer = image::layer_of_volume(ctx, &v.pool, &v.name)?;
    if !force && snapshot_holds(ctx, v)? {
        return Err(Error::Busy(format!(
            "volume '{v}' holds a containerd snapshot (dmctl serve); remove it through \
             containerd (`ctr snapshots --snapshotter dmctl rm KEY`), or `dmctl rm {v} \
             --force`"
        )));
    }
    if let (Some((_, users)), false) = (&layer, force) {
        return Err(Error::Busy(if users.is_empty() {
            format!(
                "volume '{v}' is an image layer kept for the volumes provisioned from it; \
                 `dmctl rm {v} --force` removes it (their diff and commit then fail)"
            )
        } else {
            format!(
                "volume '{v}' is a layer of image {}; remove the image with `dmctl image rm {} \
                 IMAGE`, or `dmctl rm {v} --force` (which breaks it)",
                users.join(", "),
                v.pool
            )
        }));
    }
    volume::remove(ctx, v, force)?;
    let mut report = RemoveReport {
        removed: v.to_string(),
        was_layer: layer.is_some(),
        broken_images: vec![],
    };
    if let Some((rec, users)) = layer {
        image::forget_layer(ctx, &v.pool, &rec)?;
        report.broken_images = users;
    }
    Ok(report)
}

/// Whether a snapshot of `dmctl serve` holds the volume.
fn snapshot_holds(ctx: &Ctx, v: &VolumeRef) -> Result<bool> {
    if crate::names::snapshot_volume_id(&v.name).is_none() {
        return Ok(false);
    }
    let table = ctx.store.load_snapshots(&v.pool)?;
    Ok(table.snapshots.iter().any(|r| r.volume == v.name))
}
