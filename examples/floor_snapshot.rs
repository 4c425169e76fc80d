//! The kernel floor for the snapshot benchmark (`bench_snapshot`): the least
//! work any tool can do to create and activate a thin snapshot.
//!
//! One invocation = one process start, one open of /dev/mapper/control and
//! four ioctls: `create_snap NEW ORIGIN` sent to the pool, DM_DEV_CREATE,
//! DM_TABLE_LOAD (`thin POOL_DEV NEW`), DM_DEV_SUSPEND (resume). No metadata
//! of its own, no locking, no udev. The origin must be inactive (or already
//! suspended by the caller): this program does not suspend it.
//!
//! With MOUNT_DIR and FSTYPE it also mounts the new device there (one
//! mount(2) of `/dev/dm-N`): the floor of provisioning a writable rootfs
//! (`bench_image`).
//!
//! Usage: floor_snapshot POOL_DM_NAME POOL_MAJ:MIN NEW_ID ORIGIN_ID SECTORS NEW_DM_NAME
//!        [MOUNT_DIR FSTYPE]

use anyhow::{bail, Context, Result};
use devicemapper::{DevId, DmName, DmOptions, DM};

fn run(args: &[String]) -> Result<()> {
    if args.len() != 6 && args.len() != 8 {
        bail!(
            "usage: floor_snapshot POOL_DM_NAME POOL_MAJ:MIN NEW_ID ORIGIN_ID SECTORS NEW_DM_NAME \
             [MOUNT_DIR FSTYPE]"
        );
    }
    let pool = DmName::new(&args[0]).context("pool name")?;
    let pool_dev = &args[1];
    let new_id: u32 = args[2].parse().context("NEW_ID")?;
    let origin_id: u32 = args[3].parse().context("ORIGIN_ID")?;
    let sectors: u64 = args[4].parse().context("SECTORS")?;
    let name = DmName::new(&args[5]).context("new device name")?;

    let dm = DM::new().context("opening /dev/mapper/control")?;
    dm.target_msg(
        &DevId::Name(pool),
        None,
        &format!("create_snap {new_id} {origin_id}"),
    )
    .with_context(|| format!("create_snap {new_id} {origin_id} on {pool}"))?;
    dm.device_create(name, None, DmOptions::default())
        .with_context(|| format!("creating dm device {name}"))?;
    let id = DevId::Name(name);
    dm.table_load(
        &id,
        &[(0, sectors, "thin".into(), format!("{pool_dev} {new_id}"))],
        DmOptions::default(),
    )
    .with_context(|| format!("loading thin table into {name}"))?;
    // DM_DEV_SUSPEND without DM_SUSPEND = resume: makes the loaded table live.
    let info = dm
        .device_suspend(&id, DmOptions::default())
        .with_context(|| format!("resuming {name}"))?;
    if let [dir, fstype] = &args[6..] {
        // devtmpfs makes the node; there is no udev to wait for.
        let node = format!("/dev/dm-{}", info.device().minor);
        nix::mount::mount(
            Some(node.as_str()),
            dir.as_str(),
            Some(fstype.as_str()),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .with_context(|| format!("mounting {node} on {dir}"))?;
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = run(&args) {
        eprintln!("floor_snapshot: error: {e:#}");
        std::process::exit(1);
    }
}
