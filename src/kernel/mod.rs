//! Everything that talks to the kernel: device-mapper, loop devices, mounts.

pub mod status;
