//! Everything that talks to the kernel: device-mapper, loop devices, mounts,
//! block device ioctls.

pub mod blockdev;
pub mod dm;
#[cfg(test)]
pub mod fake;
pub mod loopdev;
pub mod mount;
pub mod status;
pub mod thin;
