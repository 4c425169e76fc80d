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

#[test]
fn power_cut_pool_volumes_and_synced_data_survive() {
    require_dm!("power_cut_pool_volumes_and_synced_data_survive");
    let vol_mnt = Path::new("/mnt/base");
    let snap_mnt = Path::new("/mnt/snap");
    if common::power_cut_phase() == 1 {
        common::run("mkfs.ext4", &["-q", "-F", DISK]);
        mount_disk();
        let d = dmctl_on_disk();
        d.ok(&["pool", "create", "pc", "--data-size", "4G"]);
        d.ok(&["create", "pc/base", "--size", "256M"]);
        fs::create_dir_all(vol_mnt).unwrap();
        d.ok(&["mount", "pc/base", vol_mnt.to_str().unwrap()]);
        common::write_synced(
            &vol_mnt.join("before-snap.txt"),
            "in base and snapshot\n".as_bytes(),
        )
        .unwrap();
        d.ok(&["snapshot", "pc/base", "pc/snap"]);
        common::write_synced(&vol_mnt.join("after-snap.txt"), "only in base\n".as_bytes()).unwrap();
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

/// Regression: `dmctl resize` of an unmounted ext4 volume ran offline
/// `resize2fs`, which rewrites the group descriptors and the resize inode
/// in place with no journal; a power cut in the middle left a corrupt
/// filesystem (random-mix seed 10005071: a snapshot's resize inode pointed
/// past the end of its filesystem). The grow is now an online, journaled
/// one: cut while `resize2fs` runs, the filesystem is the old size or the
/// new one, clean, and the same resize run again completes it.
#[test]
fn power_cut_during_resize_of_unmounted_volume_leaves_a_clean_fs() {
    require_dm!("power_cut_during_resize_of_unmounted_volume_leaves_a_clean_fs");
    let (pool, snap, big) = ("rz", "rz/s", 1024 * 1024 * 1024u64);
    if common::power_cut_phase() == 1 {
        common::run("mkfs.ext4", &["-q", "-F", DISK]);
        mount_disk();
        let d = dmctl_on_disk();
        d.ok(&["pool", "create", pool, "--data-size", "4G"]);
        d.ok(&["create", "rz/v", "--size", "64M"]);
        // A snapshot, as in the failure: its blocks are shared with v.
        d.ok(&["snapshot", "rz/v", snap, "--activate"]);
        // Another volume whose fsyncs make the pool commit its metadata
        // all the time, as the failure's background writer did: without
        // them the pool commits only at resize2fs's own flush, and the
        // offline resize happened to be all or nothing.
        let wmnt = Path::new("/mnt/rzw");
        fs::create_dir_all(wmnt).unwrap();
        d.ok(&["create", "rz/w", "--size", "64M"]);
        d.ok(&["mount", "rz/w", wmnt.to_str().unwrap()]);
        std::thread::spawn(move || {
            for i in 0u64.. {
                common::write_synced(&wmnt.join(format!("f{}", i % 64)), "synced\n".as_bytes())
                    .unwrap();
            }
        });
        let mut child = d
            .command(&["resize", snap, "--size", &big.to_string()])
            .spawn()
            .unwrap();
        let t0 = std::time::Instant::now();
        let pid = loop {
            if let Some(&pid) = common::pids_of("resize2fs").first() {
                break pid;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("resize ended ({status}) before resize2fs was seen running");
            }
            assert!(t0.elapsed().as_secs() < 60, "resize2fs never started");
            std::thread::sleep(std::time::Duration::from_millis(2));
        };
        // Cut the power while resize2fs waits in the kernel for its
        // writes: offline, in the fsync that writes back all it changed
        // (a cut before that loses only page cache, after it changes
        // nothing); online, in the resize ioctl. x86-64 syscall numbers:
        // ioctl 16, fsync 74, fdatasync 75.
        let syscall = || {
            fs::read_to_string(format!("/proc/{pid}/syscall"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<i64>().ok())
        };
        let seen = std::time::Instant::now();
        let mut in_syscall = None;
        while seen.elapsed().as_secs() < 60 && child.try_wait().unwrap().is_none() {
            if let Some(n @ (16 | 74 | 75)) = syscall() {
                in_syscall = Some(n);
                break;
            }
        }
        let mut console = fs::OpenOptions::new()
            .write(true)
            .open("/dev/console")
            .unwrap();
        writeln!(
            console,
            "\nDMCTL-RESIZE: cutting the power {} ms into resize2fs, in syscall {in_syscall:?}",
            seen.elapsed().as_millis(),
        )
        .unwrap();
        std::mem::forget(d);
        power_cut();
    }

    mount_disk();
    let d = dmctl_on_disk();
    d.ok(&["pool", "activate", pool]);
    let info = d.json(&["info", snap]);
    assert_eq!(info["size"], big, "the resize was recorded first: {info}");
    let node = info["devnode"].as_str().unwrap().to_string();
    // Mounting replays the journal; then the filesystem must be clean.
    let mnt = Path::new("/mnt/rz");
    fs::create_dir_all(mnt).unwrap();
    d.ok(&["mount", snap, mnt.to_str().unwrap()]);
    d.ok(&["umount", snap]);
    common::run("e2fsck", &["-fn", &node]);
    d.ok(&["resize", snap, "--size", &big.to_string()]);
    common::run("e2fsck", &["-fn", &node]);
    assert_eq!(common::ext4_bytes(&node), big);
    common::thin_check_live(&d, pool);
    d.ok(&["pool", "destroy", pool, "--force"]);
}
