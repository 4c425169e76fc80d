//! Everything that talks to the kernel: device-mapper, loop devices, mounts,
//! block device ioctls.

pub(crate) mod blockdev;
pub mod dm;
#[cfg(test)]
pub mod fake;
pub mod loopdev;
pub(crate) mod mount;
pub mod status;
pub(crate) mod thin;
