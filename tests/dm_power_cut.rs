//! Reboot persistence across a power cut, in two guest boots on one
//! persistent virtio disk (`/dev/vda`). `vm-tests/test-all` runs every test
//! whose name contains `power_cut` twice: `DMCTL_VM_PHASE=1` prepares state
//! and asks for the cut (the host SIGKILLs QEMU), `DMCTL_VM_PHASE=2` boots on
//! the same disk and checks what survived.

mod common;

use common::Dmctl;
use std::fs;
use std::io::Write;
use std::path::Path;

const DISK: &str = "/dev/vda";
const DISK_MNT: &str = "/mnt/disk";

fn phase() -> u32 {
    std::env::var("DMCTL_VM_PHASE")
        .ok()
        .and_then(|p| p.parse().ok())
        .expect("power-cut tests run in two boots with DMCTL_VM_PHASE=1|2 (vm-tests/test-all)")
}

/// dmctl with its state root on the persistent disk.
fn dmctl_on_disk() -> Dmctl {
    let state = Path::new(DISK_MNT).join("state");
    fs::create_dir_all(&state).unwrap();
    Dmctl::with_root(&state)
}

fn mount_disk() {
    fs::create_dir_all(DISK_MNT).unwrap();
    common::run("mount", &[DISK, DISK_MNT]);
}

/// Ask the host to cut the power now, and wait for it.
fn power_cut() -> ! {
    let mut console = fs::OpenOptions::new()
        .write(true)
        .open("/dev/console")
        .unwrap();
    // A line of its own: libtest may have left "test NAME ... " unfinished.
    writeln!(console, "\nDMCTL-VM-POWERCUT").unwrap();
    std::thread::sleep(std::time::Duration::from_secs(600));
    panic!("the host did not cut the power");
}

fn write_synced(path: &Path, content: &str) {
    let mut f = fs::File::create(path).unwrap();
    f.write_all(content.as_bytes()).unwrap();
    f.sync_all().unwrap();
    fs::File::open(path.parent().unwrap())
        .unwrap()
        .sync_all()
        .unwrap();
}

#[test]
fn power_cut_pool_volumes_and_synced_data_survive() {
    require_dm!("power_cut_pool_volumes_and_synced_data_survive");
    let vol_mnt = Path::new("/mnt/base");
    let snap_mnt = Path::new("/mnt/snap");
    if phase() == 1 {
        common::run("mkfs.ext4", &["-q", "-F", DISK]);
        mount_disk();
        let d = dmctl_on_disk();
        d.ok(&["pool", "create", "pc", "--data-size", "4G"]);
        d.ok(&["create", "pc/base", "--size", "256M"]);
        fs::create_dir_all(vol_mnt).unwrap();
        d.ok(&["mount", "pc/base", vol_mnt.to_str().unwrap()]);
        write_synced(&vol_mnt.join("before-snap.txt"), "in base and snapshot\n");
        d.ok(&["snapshot", "pc/base", "pc/snap"]);
        write_synced(&vol_mnt.join("after-snap.txt"), "only in base\n");
        d.ok(&["create", "pc/scratch", "--size", "64M", "--fs", "none"]);
        d.ok(&["rm", "pc/scratch"]);
        // Unsynced writes in flight when the power goes.
        let dir = vol_mnt.to_path_buf();
        std::thread::spawn(move || {
            for i in 0.. {
                let _ = fs::write(dir.join(format!("unsynced-{i}")), vec![b'x'; 65536]);
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        std::mem::forget(d); // no cleanup: the power goes out
        power_cut();
    }

    mount_disk();
    let d = dmctl_on_disk();
    let notes = d.ok(&["pool", "activate", "pc"]);
    common::step(&format!("pool activate after the power cut:\n{notes}"));
    let base = d.json(&["info", "pc/base"]);
    assert_eq!(
        base["active"], true,
        "base was active before the cut: {base}"
    );
    let snap = d.json(&["info", "pc/snap"]);
    assert_eq!(snap["parent"], "base");
    assert!(
        d.run(&["info", "pc/scratch"]).status.code() == Some(1),
        "removed volume stays removed"
    );
    assert_eq!(d.json(&["pool", "status", "pc"])["transaction_id"], 4);
    d.ok(&["check", "pc"]);

    fs::create_dir_all(vol_mnt).unwrap();
    fs::create_dir_all(snap_mnt).unwrap();
    d.ok(&["mount", "pc/base", vol_mnt.to_str().unwrap()]);
    assert_eq!(
        fs::read_to_string(vol_mnt.join("before-snap.txt")).unwrap(),
        "in base and snapshot\n"
    );
    assert_eq!(
        fs::read_to_string(vol_mnt.join("after-snap.txt")).unwrap(),
        "only in base\n"
    );
    d.ok(&["mount", "pc/snap", snap_mnt.to_str().unwrap()]);
    assert_eq!(
        fs::read_to_string(snap_mnt.join("before-snap.txt")).unwrap(),
        "in base and snapshot\n"
    );
    assert!(!snap_mnt.join("after-snap.txt").exists());
    d.ok(&["umount", "pc/base"]);
    d.ok(&["umount", "pc/snap"]);
    let node = d.json(&["info", "pc/base"])["devnode"]
        .as_str()
        .unwrap()
        .to_string();
    common::run("e2fsck", &["-fn", &node]);
    common::thin_check_live(&d, "pc");
    d.ok(&["pool", "destroy", "pc", "--force"]);
}
