//! The seed walk-through, driven straight from Rust with the `devicemapper`
//! crate (no dmctl code): a sparse 10G data file and a metadata file on loop
//! devices, a thin-pool, `create_thin 0`, ext4, `id.txt`, then a chain of two
//! snapshots, each level changed and checked, and `thin_check` clean at the end.
//! It proves the guest harness and documents the kernel protocol dmctl speaks.

mod common;

use devicemapper::{DevId, DmFlags, DmName, DmOptions, DM};
use loopdev::{LoopControl, LoopDevice};
use std::fs;
use std::path::{Path, PathBuf};

const POOL: &str = "seedtest-pool";
const DATA_SIZE: u64 = 10 << 30;
const META_SIZE: u64 = 64 << 20;
const BLOCK_SECTORS: u64 = 128; // 64 KiB

/// Everything the walk-through created, torn down in reverse on drop so a
/// failing assertion does not leave devices behind.
struct Fixture {
    dm: DM,
    dir: tempfile::TempDir,
    loops: Vec<LoopDevice>,
    dm_devices: Vec<String>,
    mounts: Vec<PathBuf>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for m in self.mounts.drain(..).rev() {
            let _ = nix::mount::umount(&m);
        }
        for name in self.dm_devices.drain(..).rev() {
            let n = DmName::new(&name).unwrap();
            let _ = self.dm.device_remove(&DevId::Name(n), DmOptions::default());
        }
        for l in self.loops.drain(..) {
            let _ = l.detach();
        }
    }
}

fn attach(ctl: &LoopControl, file: &Path) -> LoopDevice {
    let dev = ctl.next_free().expect("free loop device");
    dev.with().attach(file).expect("attach loop device");
    dev
}

fn devno(dev: &LoopDevice) -> String {
    format!("{}:{}", dev.major().unwrap(), dev.minor().unwrap())
}

fn name(s: &str) -> &DmName {
    DmName::new(s).unwrap()
}

fn create_device(fx: &mut Fixture, dm_name: &str, table: (u64, u64, String, String)) -> PathBuf {
    let info = fx
        .dm
        .device_create(name(dm_name), None, DmOptions::default())
        .expect("DM_DEV_CREATE");
    fx.dm_devices.push(dm_name.to_string());
    let id = DevId::Name(name(dm_name));
    fx.dm
        .table_load(&id, &[table], DmOptions::default())
        .expect("DM_TABLE_LOAD");
    fx.dm
        .device_suspend(&id, DmOptions::default())
        .expect("resume");
    // No udev in the guest: devtmpfs makes /dev/dm-N.
    PathBuf::from(format!("/dev/dm-{}", info.device().minor))
}

fn pool_message(fx: &Fixture, msg: &str) {
    common::step(&format!("message to the pool: {msg}"));
    fx.dm
        .target_msg(&DevId::Name(name(POOL)), None, msg)
        .unwrap_or_else(|e| panic!("pool message '{msg}': {e}"));
}

fn thin_table(pool_devno: &str, id: u32) -> (u64, u64, String, String) {
    // 4 GiB thin devices.
    (0, 8 << 20, "thin".into(), format!("{pool_devno} {id}"))
}

fn mount_ext4(fx: &mut Fixture, dev: &Path, dir: &str) -> PathBuf {
    let mnt = fx.dir.path().join(dir);
    fs::create_dir_all(&mnt).unwrap();
    nix::mount::mount(
        Some(dev),
        &mnt,
        Some("ext4"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap_or_else(|e| panic!("mount {} on {}: {e}", dev.display(), mnt.display()));
    fx.mounts.push(mnt.clone());
    mnt
}

/// Suspend an active origin around create_snap, as the kernel's thin-provisioning
/// documentation requires, and resume it on every path.
fn snapshot_active(fx: &Fixture, origin_dm: &str, new_id: u32, origin_id: u32) {
    let id = DevId::Name(name(origin_dm));
    common::step(&format!("suspend {origin_dm} (flushes and freezes the fs)"));
    fx.dm
        .device_suspend(&id, DmOptions::default().set_flags(DmFlags::DM_SUSPEND))
        .expect("suspend origin");
    let result = fx.dm.target_msg(
        &DevId::Name(name(POOL)),
        None,
        &format!("create_snap {new_id} {origin_id}"),
    );
    fx.dm
        .device_suspend(&id, DmOptions::default())
        .expect("resume origin");
    common::step(&format!(
        "message to the pool: create_snap {new_id} {origin_id}; resumed {origin_dm}"
    ));
    result.expect("create_snap");
}

fn read(mnt: &Path, file: &str) -> String {
    fs::read_to_string(mnt.join(file)).unwrap_or_else(|e| panic!("read {file}: {e}"))
}

#[test]
fn seed_walkthrough_three_level_chain() {
    require_dm!("seed_walkthrough_three_level_chain");
    let dm = DM::new().expect("open /dev/mapper/control");
    let (maj, min, patch) = dm.version().unwrap();
    common::step(&format!(
        "device-mapper ioctl interface {maj}.{min}.{patch}"
    ));
    let mut fx = Fixture {
        dm,
        dir: tempfile::tempdir().unwrap(),
        loops: vec![],
        dm_devices: vec![],
        mounts: vec![],
    };

    common::step("sparse files: data 10G, metadata 64M; first 4 KiB of metadata zeroed");
    let data = fx.dir.path().join("data.img");
    let meta = fx.dir.path().join("meta.img");
    fs::File::create(&data).unwrap().set_len(DATA_SIZE).unwrap();
    let f = fs::File::create(&meta).unwrap();
    f.set_len(META_SIZE).unwrap();
    drop(f);
    fs::write(&meta, vec![0u8; 4096]).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&meta)
        .unwrap()
        .set_len(META_SIZE)
        .unwrap();
    assert!(
        fs::metadata(&data).unwrap().len() == DATA_SIZE,
        "data file has its full apparent size"
    );

    let ctl = LoopControl::open().expect("/dev/loop-control");
    let meta_loop = attach(&ctl, &meta);
    fx.loops.push(meta_loop);
    let data_loop = attach(&ctl, &data);
    fx.loops.push(data_loop);
    let (meta_dev, data_dev) = (devno(&fx.loops[0]), devno(&fx.loops[1]));
    common::step(&format!(
        "loop devices: metadata {} ({meta_dev}), data {} ({data_dev})",
        fx.loops[0].path().unwrap().display(),
        fx.loops[1].path().unwrap().display()
    ));

    let pool_params = format!("{meta_dev} {data_dev} {BLOCK_SECTORS} 32768 1 skip_block_zeroing");
    common::step(&format!("thin-pool table: thin-pool {pool_params}"));
    let pool_node = create_device(
        &mut fx,
        POOL,
        (0, DATA_SIZE / 512, "thin-pool".into(), pool_params),
    );
    let pool_info = fx.dm.device_info(&DevId::Name(name(POOL))).unwrap();
    let pool_devno = format!("{}:{}", pool_info.device().major, pool_info.device().minor);
    let (_, status) = fx
        .dm
        .table_status(&DevId::Name(name(POOL)), DmOptions::default())
        .unwrap();
    common::step(&format!("pool status: {}", status[0].3));
    assert!(
        status[0].3.starts_with("0 "),
        "fresh pool has transaction id 0"
    );
    assert!(pool_node.exists(), "pool node {}", pool_node.display());

    // Level 0: the base.
    pool_message(&fx, "create_thin 0");
    let base = create_device(&mut fx, "seedtest-base", thin_table(&pool_devno, 0));
    common::step(&format!("mkfs.ext4 {}", base.display()));
    common::run(
        "mkfs.ext4",
        &[
            "-q",
            "-E",
            "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
            base.to_str().unwrap(),
        ],
    );
    let base_mnt = mount_ext4(&mut fx, &base, "base");
    fs::write(base_mnt.join("id.txt"), "base\n").unwrap();
    fs::write(base_mnt.join("shared.txt"), "written once in the base\n").unwrap();

    // Level 1: snapshot of the mounted, active base.
    snapshot_active(&fx, "seedtest-base", 1, 0);
    let snap1 = create_device(&mut fx, "seedtest-snap1", thin_table(&pool_devno, 1));
    let snap1_mnt = mount_ext4(&mut fx, &snap1, "snap1");
    assert_eq!(
        read(&snap1_mnt, "id.txt"),
        "base\n",
        "snapshot starts as the base"
    );
    fs::write(snap1_mnt.join("id.txt"), "snap1\n").unwrap();
    fs::write(snap1_mnt.join("level1.txt"), "only in snap1 and below\n").unwrap();

    // Level 2: snapshot of the snapshot.
    snapshot_active(&fx, "seedtest-snap1", 2, 1);
    let snap2 = create_device(&mut fx, "seedtest-snap2", thin_table(&pool_devno, 2));
    let snap2_mnt = mount_ext4(&mut fx, &snap2, "snap2");
    assert_eq!(read(&snap2_mnt, "id.txt"), "snap1\n");
    fs::write(snap2_mnt.join("id.txt"), "snap2\n").unwrap();
    fs::remove_file(snap2_mnt.join("shared.txt")).unwrap();

    common::step("each level sees exactly its own content");
    for m in [&base_mnt, &snap1_mnt, &snap2_mnt] {
        nix::unistd::syncfs(fs::File::open(m).unwrap()).unwrap();
    }
    assert_eq!(read(&base_mnt, "id.txt"), "base\n");
    assert!(
        !base_mnt.join("level1.txt").exists(),
        "base never sees level 1"
    );
    assert_eq!(read(&base_mnt, "shared.txt"), "written once in the base\n");
    assert_eq!(read(&snap1_mnt, "id.txt"), "snap1\n");
    assert_eq!(read(&snap1_mnt, "shared.txt"), "written once in the base\n");
    assert_eq!(read(&snap2_mnt, "id.txt"), "snap2\n");
    assert_eq!(read(&snap2_mnt, "level1.txt"), "only in snap1 and below\n");
    assert!(!snap2_mnt.join("shared.txt").exists(), "deleted in snap2");

    // Remount the base from scratch to be sure its blocks, not a cache, say so.
    nix::mount::umount(&base_mnt).unwrap();
    fx.mounts.retain(|m| m != &base_mnt);
    let base_again = mount_ext4(&mut fx, &base, "base-again");
    assert_eq!(
        read(&base_again, "id.txt"),
        "base\n",
        "base unchanged on disk"
    );
    common::step("base unchanged after remount");

    let (_, status) = fx
        .dm
        .table_status(&DevId::Name(name(POOL)), DmOptions::default())
        .unwrap();
    common::step(&format!("pool status: {}", status[0].3));

    // Tear down the devices and check the pool metadata offline.
    let meta_node = fx.loops[0].path().unwrap();
    drop(
        fx.mounts
            .drain(..)
            .rev()
            .map(|m| nix::mount::umount(&m))
            .collect::<Vec<_>>(),
    );
    for dev in fx.dm_devices.drain(..).rev() {
        fx.dm
            .device_remove(&DevId::Name(name(&dev)), DmOptions::default())
            .unwrap_or_else(|e| panic!("remove {dev}: {e}"));
    }
    common::step(&format!("thin_check {}", meta_node.display()));
    common::run("thin_check", &[meta_node.to_str().unwrap()]);
    let dump = common::run("thin_dump", &[meta_node.to_str().unwrap()]);
    for id in 0..3 {
        assert!(
            dump.contains(&format!("dev_id=\"{id}\"")),
            "thin_dump lists device {id}"
        );
    }
    common::step("thin_check clean; thin_dump lists devices 0, 1, 2");
}
