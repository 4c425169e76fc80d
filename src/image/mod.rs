//! Layered images: OCI image layouts and docker-save archives imported into
//! snapshot chains, one thin device per layer keyed by ChainID.

pub mod diff;
pub mod layer;
pub mod oci;
