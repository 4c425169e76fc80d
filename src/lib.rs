//! dmctl: device-mapper thin pools, thin volumes and snapshot chains.
//!
//! The path of a command: `cli` (thin, in the binary) -> `ops` (one
//! operation, with its transaction) -> `kernel` (dm, loop, mount) and
//! `store` (JSON metadata under the state root).

pub(crate) mod crashpoint;
pub mod doctor;
pub mod error;
pub(crate) mod fsutil;
pub mod image;
pub mod kernel;
pub mod names;
pub mod ops;
pub mod serve;
pub mod store;
pub mod thinmeta;
pub(crate) mod tools;
pub mod trace;
pub mod units;

pub use error::{Error, Result};
