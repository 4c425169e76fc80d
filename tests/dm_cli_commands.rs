//! Every dmctl command end to end in the guest: pool lifecycle and extend,
//! create/activate/deactivate/info, xfs and ext4 snapshot chains (with writes
//! going on), resize, rm with discard, `ls --tree`, parallel dmctl processes.
//!
//! The tests live in a module named after the file so that
//! `./vm-tests/guest-tests dm_cli_commands` (a libtest name filter) selects
//! exactly them.

mod common;

mod dm_cli_commands {
    use super::common::{self, Dmctl};
    use crate::require_dm;
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    // ---- helpers ------------------------------------------------------

    fn tid(d: &Dmctl, pool: &str) -> u64 {
        d.json(&["pool", "status", pool])["transaction_id"]
            .as_u64()
            .unwrap()
    }

    fn dm_exists(name: &str) -> bool {
        Command::new("dmsetup")
            .args(["--noudevsync", "info", name])
            .output()
            .expect("run dmsetup")
            .status
            .success()
    }

    /// Backing files of every attached loop device.
    fn loop_backing_files() -> Vec<PathBuf> {
        let mut out = vec![];
        for e in fs::read_dir("/sys/block").unwrap().flatten() {
            if let Ok(s) = fs::read_to_string(e.path().join("loop/backing_file")) {
                out.push(PathBuf::from(s.trim()));
            }
        }
        out
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o7777
    }

    /// Size of the filesystem mounted at `dir`, as `df` computes it.
    fn fs_bytes(dir: &Path) -> u64 {
        let s = nix::sys::statvfs::statvfs(dir).unwrap();
        s.blocks() as u64 * s.fragment_size() as u64
    }

    /// Mount options of `dir` in /proc/self/mounts, if it is a mountpoint.
    fn mount_options(dir: &Path) -> Option<String> {
        let dir = fs::canonicalize(dir).ok()?;
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
        mounts.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 3 && Path::new(f[1]) == dir).then(|| f[3].to_string())
        })
    }

    fn subdir(base: &tempfile::TempDir, name: &str) -> PathBuf {
        let p = base.path().join(name);
        fs::create_dir_all(&p).unwrap();
        p
    }

    fn s(p: &Path) -> &str {
        p.to_str().unwrap()
    }

    // ---- 1. pool lifecycle --------------------------------------------

    #[test]
    fn pool_create_status_ls_modes_deactivate_activate_destroy() {
        require_dm!("pool_create_status_ls_modes_deactivate_activate_destroy");
        let d = Dmctl::new();
        let rec = d.json(&[
            "pool",
            "create",
            "lc",
            "--data-size",
            "2G",
            "--block-size",
            "128K",
            "--low-water-mark",
            "64M",
            "--zeroing",
            "--error-if-no-space",
        ]);
        assert_eq!(rec["name"], "lc");
        assert_eq!(rec["block_size"], 128 << 10);
        assert_eq!(rec["low_water_mark"], 64 * MIB);
        assert_eq!(rec["zeroing"], true);
        assert_eq!(rec["error_if_no_space"], true);

        let st = d.json(&["pool", "status", "lc"]);
        assert_eq!(st["name"], "lc");
        let dm_name = st["dm_name"].as_str().unwrap().to_string();
        assert!(!dm_name.is_empty());
        assert!(dm_exists(&dm_name), "{dm_name} should exist");
        assert_eq!(st["active"], true);
        assert_eq!(st["transaction_id"], 0);
        assert_eq!(st["data_size"], 2 * GIB);
        assert_eq!(st["data_used"], 0);
        let meta_size = st["meta_size"].as_u64().unwrap();
        assert_eq!(meta_size, rec["meta_size"].as_u64().unwrap());
        assert!(meta_size >= 2 * MIB, "{st}");
        let meta_used = st["meta_used"].as_u64().unwrap();
        assert!(meta_used > 0 && meta_used < meta_size, "{st}");
        assert_eq!(st["block_size"], 128 << 10);
        assert_eq!(st["low_water_mark"], 64 * MIB);
        assert_eq!(st["mode"], "rw");
        assert_eq!(st["needs_check"], false);
        assert_eq!(st["no_space_policy"], "error");
        assert_eq!(st["backing"], "file");
        assert_eq!(st["volumes"], 0);

        // The kernel got what was asked: 128K = 256 sectors, low water mark
        // 64M / 128K = 512 blocks, zeroing on (no skip_block_zeroing).
        let table = common::run("dmsetup", &["--noudevsync", "table", &dm_name]);
        let f: Vec<&str> = table.split_whitespace().collect();
        assert_eq!(f[2], "thin-pool", "{table}");
        assert_eq!(f[5], "256", "{table}");
        assert_eq!(f[6], "512", "{table}");
        assert!(table.contains("error_if_no_space"), "{table}");
        assert!(!table.contains("skip_block_zeroing"), "{table}");

        let ls = d.json(&["pool", "ls"]);
        let ls = ls.as_array().unwrap();
        assert_eq!(ls.len(), 1, "{ls:?}");
        assert_eq!(ls[0]["name"], "lc");
        assert_eq!(ls[0]["active"], true);
        assert_eq!(ls[0]["data_size"], 2 * GIB);

        d.ok(&["create", "lc/v", "--size", "64M", "--fs", "none"]);
        assert_eq!(tid(&d, "lc"), 1);

        // State files are private.
        let pool_dir = d.root.path().join("pools/lc");
        assert_eq!(mode(&pool_dir), 0o700);
        assert_eq!(mode(&pool_dir.join("devices")), 0o700);
        assert_eq!(mode(&d.root.path().join("pools")), 0o700);
        assert_eq!(mode(&pool_dir.join("pool.json")), 0o600);
        assert_eq!(mode(&pool_dir.join("devices/v.json")), 0o600);
        let jsons = d.snapshot_state();
        assert!(jsons.len() >= 2, "{jsons:?}");
        for rel in jsons.keys() {
            assert_eq!(mode(&d.root.path().join(rel)), 0o600, "{rel}");
        }

        let data = fs::canonicalize(st["data"].as_str().unwrap()).unwrap();
        let meta = fs::canonicalize(st["meta"].as_str().unwrap()).unwrap();
        assert!(data.starts_with(fs::canonicalize(&pool_dir).unwrap()));
        let loops = loop_backing_files();
        assert!(loops.contains(&data) && loops.contains(&meta), "{loops:?}");
        let vol_dm = d.json(&["info", "lc/v"])["dm_name"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(dm_exists(&vol_dm));

        // Deactivate: dm devices gone, loops detached, files kept.
        d.ok(&["pool", "deactivate", "lc"]);
        assert!(!dm_exists(&dm_name), "{dm_name} still exists");
        assert!(!dm_exists(&vol_dm), "{vol_dm} still exists");
        let loops = loop_backing_files();
        assert!(
            !loops.contains(&data) && !loops.contains(&meta),
            "loops still attached: {loops:?}"
        );
        assert!(data.exists() && meta.exists());
        let st = d.json(&["pool", "status", "lc"]);
        assert_eq!(st["active"], false);
        assert_eq!(st["mode"], serde_json::Value::Null);
        assert_eq!(st["data_used"], serde_json::Value::Null);
        assert_eq!(st["transaction_id"], 1);
        let info = d.json(&["info", "lc/v"]);
        assert_eq!(info["active"], false);
        assert_eq!(info["devnode"], serde_json::Value::Null);

        // Activate, twice: the second is a no-op.
        let notes = d.json(&["pool", "activate", "lc"]);
        let notes: Vec<&str> = notes
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        assert!(notes.iter().any(|n| n.contains("activated")), "{notes:?}");
        assert!(
            notes.iter().any(|n| n.contains("lc/v: re-activated")),
            "{notes:?}"
        );
        let again = d.json(&["pool", "activate", "lc"]);
        assert_eq!(again, serde_json::json!([]), "second activate: {again}");
        assert!(dm_exists(&dm_name) && dm_exists(&vol_dm));
        let loops = loop_backing_files();
        assert_eq!(loops.iter().filter(|l| **l == data).count(), 1, "{loops:?}");
        assert_eq!(loops.iter().filter(|l| **l == meta).count(), 1, "{loops:?}");
        let st = d.json(&["pool", "status", "lc"]);
        assert_eq!(st["mode"], "rw");
        assert_eq!(st["transaction_id"], 1);
        assert_eq!(st["no_space_policy"], "error");
        assert_eq!(st["block_size"], 128 << 10);
        common::thin_check_live(&d, "lc");

        // Destroy: refused with a volume unless --force; then all gone.
        d.fails(&["pool", "destroy", "lc"]);
        assert!(dm_exists(&dm_name));
        d.ok(&["pool", "destroy", "lc", "--force"]);
        assert!(!dm_exists(&dm_name) && !dm_exists(&vol_dm));
        assert!(!data.exists() && !meta.exists());
        assert!(!pool_dir.exists(), "{} still exists", pool_dir.display());
        let loops = loop_backing_files();
        assert!(
            !loops.contains(&data) && !loops.contains(&meta),
            "{loops:?}"
        );
        assert_eq!(d.json(&["pool", "ls"]), serde_json::json!([]));
        d.fails(&["pool", "status", "lc"]);
    }

    // ---- 2. pool extend, live -----------------------------------------

    #[test]
    fn pool_extend_data_and_meta_live_with_mounted_volume() {
        require_dm!("pool_extend_data_and_meta_live_with_mounted_volume");
        let mnt = tempfile::tempdir().unwrap();
        let d = Dmctl::new();
        d.ok(&["pool", "create", "ext", "--data-size", "1G"]);
        d.ok(&["create", "ext/v", "--size", "256M", "--fs", "ext4"]);
        let mv = subdir(&mnt, "v");
        d.ok(&["mount", "ext/v", s(&mv)]);
        common::write_synced(&mv.join("before.txt"), b"before\n").unwrap();
        let st0 = d.json(&["pool", "status", "ext"]);
        assert_eq!(st0["data_size"], GIB);
        let meta0 = st0["meta_size"].as_u64().unwrap();

        let rec = d.json(&["pool", "extend", "ext", "--data-size", "2G"]);
        assert_eq!(rec["data_size"], 2 * GIB);
        let st = d.json(&["pool", "status", "ext"]);
        assert_eq!(st["data_size"], 2 * GIB, "kernel sees the new size: {st}");
        assert_eq!(st["meta_size"], meta0);
        assert_eq!(st["mode"], "rw");
        let data_file = st["data"].as_str().unwrap();
        assert_eq!(fs::metadata(data_file).unwrap().len(), 2 * GIB);
        // The volume stayed mounted and writable through the reload.
        let info = d.json(&["info", "ext/v"]);
        assert_eq!(info["mountpoint"], s(&fs::canonicalize(&mv).unwrap()));
        assert!(mount_options(&mv).unwrap().starts_with("rw"));
        common::write_synced(&mv.join("after.txt"), &[7u8; 1 << 20]).unwrap();
        assert_eq!(fs::read(mv.join("after.txt")).unwrap(), vec![7u8; 1 << 20]);
        assert_eq!(
            fs::read_to_string(mv.join("before.txt")).unwrap(),
            "before\n"
        );

        let new_meta = (meta0 * 2).to_string();
        let rec = d.json(&["pool", "extend", "ext", "--meta-size", &new_meta]);
        assert_eq!(rec["meta_size"], meta0 * 2);
        let st = d.json(&["pool", "status", "ext"]);
        assert_eq!(
            st["meta_size"],
            meta0 * 2,
            "kernel sees the new metadata size: {st}"
        );
        assert_eq!(st["data_size"], 2 * GIB);
        assert_eq!(
            fs::metadata(st["meta"].as_str().unwrap()).unwrap().len(),
            meta0 * 2
        );
        common::write_synced(&mv.join("after-meta.txt"), b"still writable\n").unwrap();

        // Shrinking and extending nothing are refused, state unchanged.
        let before = d.snapshot_state();
        d.fails(&["pool", "extend", "ext", "--data-size", "1G"]);
        d.fails(&["pool", "extend", "ext"]);
        assert_eq!(d.snapshot_state(), before);
        assert_eq!(d.json(&["pool", "status", "ext"])["data_size"], 2 * GIB);
        common::thin_check_live(&d, "ext");
    }

    // ---- 3. create variants, activate --ro, deactivate, info ------------

    #[test]
    fn create_fs_variants_mkfs_args_activate_ro_deactivate_info() {
        require_dm!("create_fs_variants_mkfs_args_activate_ro_deactivate_info");
        let mnt = tempfile::tempdir().unwrap();
        let d = Dmctl::new();
        d.ok(&["pool", "create", "cv", "--data-size", "2G"]);

        // --fs none: a raw device, usable as such, not mountable.
        let raw = d.json(&["create", "cv/raw", "--size", "64M", "--fs", "none"]);
        assert_eq!(raw["fs"], serde_json::Value::Null);
        assert_eq!(raw["device_id"], 0);
        let info = d.json(&["info", "cv/raw"]);
        assert_eq!(info["fs"], serde_json::Value::Null);
        assert_eq!(info["mapped_bytes"], 0, "nothing written yet: {info}");
        let node = common::devnode(&d, "cv/raw");
        let mut f = fs::OpenOptions::new().write(true).open(&node).unwrap();
        f.write_all(&[0x5a; 4096]).unwrap();
        f.sync_all().unwrap();
        drop(f);
        let mut buf = vec![0u8; 4096];
        std::io::Read::read_exact(&mut fs::File::open(&node).unwrap(), &mut buf).unwrap();
        assert_eq!(buf, vec![0x5a; 4096]);
        assert!(
            d.json(&["info", "cv/raw"])["mapped_bytes"]
                .as_u64()
                .unwrap()
                >= 4096
        );
        let m = subdir(&mnt, "raw");
        let err = d.fails(&["mount", "cv/raw", s(&m)]);
        assert!(err.contains("no filesystem"), "{err}");

        // --fs xfs.
        d.ok(&["create", "cv/x", "--size", "512M", "--fs", "xfs"]);
        let node_x = common::devnode(&d, "cv/x");
        let mut magic = [0u8; 4];
        std::io::Read::read_exact(&mut fs::File::open(&node_x).unwrap(), &mut magic).unwrap();
        assert_eq!(&magic, b"XFSB");
        let info = d.json(&["info", "cv/x"]);
        for key in [
            "name",
            "pool",
            "device_id",
            "size",
            "parent",
            "transaction_id",
            "initialized",
            "active",
            "dm_name",
            "devnode",
            "mountpoint",
            "fs",
            "mapped_bytes",
        ] {
            assert!(info.get(key).is_some(), "info lacks {key}: {info}");
        }
        assert_eq!(info["name"], "x");
        assert_eq!(info["pool"], "cv");
        assert_eq!(info["device_id"], 1);
        assert_eq!(info["size"], 512 * MIB);
        assert_eq!(info["parent"], serde_json::Value::Null);
        assert_eq!(info["transaction_id"], 2);
        assert_eq!(info["initialized"], true);
        assert_eq!(info["active"], true);
        let dm_x = info["dm_name"].as_str().unwrap();
        assert!(dm_exists(dm_x));
        assert_eq!(info["devnode"], node_x.as_str());
        assert!(fs::metadata(&node_x).unwrap().file_type().is_block_device());
        assert_eq!(info["mountpoint"], serde_json::Value::Null);
        assert_eq!(info["fs"], "xfs");
        assert!(
            info["mapped_bytes"].as_u64().unwrap() > 0,
            "mkfs wrote: {info}"
        );
        let mx = subdir(&mnt, "x");
        d.ok(&["mount", "cv/x", s(&mx)]);
        assert_eq!(
            d.json(&["info", "cv/x"])["mountpoint"],
            s(&fs::canonicalize(&mx).unwrap())
        );
        common::write_synced(&mx.join("hello"), b"xfs\n").unwrap();
        d.ok(&["umount", "cv/x"]);
        assert_eq!(mount_options(&mx), None);

        // --mkfs-arg reaches mkfs.ext4.
        d.ok(&[
            "create",
            "cv/lab",
            "--size",
            "128M",
            "--fs",
            "ext4",
            "--mkfs-arg=-L",
            "--mkfs-arg=mylabel",
        ]);
        let node_l = common::devnode(&d, "cv/lab");
        let hdr = common::run("dumpe2fs", &["-h", &node_l]);
        assert!(
            hdr.lines().any(|l| l.starts_with("Filesystem volume name:")
                && l.split_whitespace().last() == Some("mylabel")),
            "{hdr}"
        );
        assert_eq!(tid(&d, "cv"), 3);

        // deactivate, then activate --ro: the device refuses writes, and a
        // mount is read-only.
        let dm_l = d.json(&["info", "cv/lab"])["dm_name"]
            .as_str()
            .unwrap()
            .to_string();
        d.ok(&["deactivate", "cv/lab"]);
        assert!(!dm_exists(&dm_l));
        let info = d.json(&["info", "cv/lab"]);
        assert_eq!(info["active"], false);
        assert_eq!(info["devnode"], serde_json::Value::Null);
        assert_eq!(info["mapped_bytes"], serde_json::Value::Null);
        // deactivating an inactive volume is fine.
        d.ok(&["deactivate", "cv/lab"]);

        let act = d.json(&["activate", "cv/lab", "--ro"]);
        assert_eq!(act["name"], "cv/lab");
        let node_ro = act["devnode"].as_str().unwrap().to_string();
        let dm_info = common::run("dmsetup", &["--noudevsync", "info", &dm_l]);
        assert!(dm_info.contains("READ-ONLY"), "{dm_info}");
        let info = d.json(&["info", "cv/lab"]);
        assert_eq!(info["read_only"], true);
        assert_eq!(info["devnode"], node_ro.as_str());
        let wrote = fs::OpenOptions::new()
            .write(true)
            .open(&node_ro)
            .and_then(|mut f| {
                f.write_all(&[0u8; 4096])?;
                f.sync_all()
            });
        assert!(
            wrote.is_err(),
            "a write to the read-only {node_ro} succeeded"
        );
        let ml = subdir(&mnt, "lab");
        d.ok(&["mount", "cv/lab", s(&ml)]);
        let opts = mount_options(&ml).unwrap();
        assert!(opts.split(',').any(|o| o == "ro"), "{opts}");
        let e = fs::write(ml.join("nope"), b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
        assert!(fs::read_dir(&ml)
            .unwrap()
            .any(|e| e.unwrap().file_name() == "lost+found"));
        // Mounted: deactivate refused.
        let err = d.fails(&["deactivate", "cv/lab"]);
        assert!(err.contains("mounted"), "{err}");
        d.ok(&["umount", "cv/lab"]);
        d.ok(&["deactivate", "cv/lab"]);
        assert!(!dm_exists(&dm_l));
        // Back to read-write.
        let act = d.json(&["activate", "cv/lab"]);
        assert_eq!(d.json(&["info", "cv/lab"])["read_only"], false);
        let dm_info = common::run("dmsetup", &["--noudevsync", "info", &dm_l]);
        assert!(!dm_info.contains("READ-ONLY"), "{dm_info}");
        assert!(act["devnode"].as_str().is_some());
        common::run("e2fsck", &["-fn", &node_l]);

        let ls = d.json(&["ls", "cv"]);
        let names: Vec<&str> = ls
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["lab", "raw", "x"]);
        common::thin_check_live(&d, "cv");
    }

    // ---- 4. xfs chain --------------------------------------------------

    #[test]
    fn xfs_snapshot_chain_of_mounted_origins() {
        require_dm!("xfs_snapshot_chain_of_mounted_origins");
        let mnt = tempfile::tempdir().unwrap();
        let d = Dmctl::new();
        d.ok(&["pool", "create", "xc", "--data-size", "2G"]);
        d.ok(&["create", "xc/base", "--size", "512M", "--fs", "xfs"]);
        let chain = ["base", "s1", "s2", "s3"];
        let dirs: Vec<PathBuf> = chain.iter().map(|n| subdir(&mnt, n)).collect();
        d.ok(&["mount", "xc/base", s(&dirs[0])]);
        common::write_synced(&dirs[0].join("id.txt"), b"base\n").unwrap();
        for i in 1..chain.len() {
            let (origin, name) = (format!("xc/{}", chain[i - 1]), format!("xc/{}", chain[i]));
            let snap = d.json(&["snapshot", &origin, &name]);
            assert_eq!(snap["parent"], chain[i - 1]);
            assert_eq!(snap["fs"], "xfs");
            assert_eq!(
                d.json(&["info", &name])["active"],
                false,
                "snapshots start inactive"
            );
            d.ok(&["mount", &name, s(&dirs[i])]);
            let opts = mount_options(&dirs[i]).unwrap();
            assert!(opts.contains("nouuid"), "{opts}");
            let want = format!("{}\n", chain[i - 1]);
            assert_eq!(fs::read_to_string(dirs[i].join("id.txt")).unwrap(), want);
            common::write_synced(
                &dirs[i].join("id.txt"),
                format!("{}\n", chain[i]).as_bytes(),
            )
            .unwrap();
            common::write_synced(&dirs[i].join(format!("only-{}", chain[i])), b"x").unwrap();
        }
        for (i, dir) in dirs.iter().enumerate() {
            assert_eq!(
                fs::read_to_string(dir.join("id.txt")).unwrap(),
                format!("{}\n", chain[i])
            );
            // Each level sees its ancestors' files, not its descendants'.
            for (j, n) in chain.iter().enumerate().skip(1) {
                assert_eq!(dir.join(format!("only-{n}")).exists(), j <= i, "{n} in {i}");
            }
        }
        assert_eq!(tid(&d, "xc"), 4);

        // A snapshot of a mounted xfs is a frozen image: XFS leaves its log
        // dirty on freeze (on purpose), so the first mount replays it; after
        // that mount and an unmount it is clean.
        d.ok(&["snapshot", "xc/s2", "xc/frozen"]);
        let mf = subdir(&mnt, "frozen");
        d.ok(&["mount", "xc/frozen", s(&mf)]);
        assert_eq!(fs::read_to_string(mf.join("id.txt")).unwrap(), "s2\n");
        assert!(!mf.join("only-s3").exists());
        d.ok(&["umount", "xc/frozen"]);
        common::run("xfs_repair", &["-n", &common::devnode(&d, "xc/frozen")]);
        // An unmounted level of the chain is clean too.
        d.ok(&["umount", "xc/s3"]);
        common::run("xfs_repair", &["-n", &common::devnode(&d, "xc/s3")]);
        let tree = d.ok(&["ls", "xc", "--tree"]);
        let s3 = tree
            .lines()
            .find(|l| l.contains("s3 ("))
            .unwrap_or_default();
        assert!(s3.starts_with("      └─ s3 (id 3, "), "{tree}");
        assert!(s3.ends_with(", active)"), "{tree}");
        common::thin_check_live(&d, "xc");
    }

    // ---- 5. ext4 snapshots while writes go on --------------------------

    fn content_of(name: &str) -> Vec<u8> {
        name.repeat(700).into_bytes()
    }

    #[test]
    fn ext4_snapshots_during_writes_are_clean_and_complete() {
        require_dm!("ext4_snapshots_during_writes_are_clean_and_complete");
        let mnt = tempfile::tempdir().unwrap();
        let d = Dmctl::new();
        d.ok(&["pool", "create", "ew", "--data-size", "2G"]);
        d.ok(&["create", "ew/o", "--size", "256M", "--fs", "ext4"]);
        let mo = subdir(&mnt, "o");
        d.ok(&["mount", "ew/o", s(&mo)]);

        // The writer: files f00000, f00001, ... each its name repeated,
        // fsynced; `done` counts the files complete on disk.
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let writer = {
            let (stop, done, dir) = (stop.clone(), done.clone(), mo.clone());
            std::thread::spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::SeqCst) && i < 5000 {
                    let name = format!("f{i:05}");
                    common::write_synced(&dir.join(&name), &content_of(&name)).unwrap();
                    i += 1;
                    done.store(i, Ordering::SeqCst);
                }
            })
        };
        let wait_for = |n: usize| {
            let t = std::time::Instant::now();
            while done.load(Ordering::SeqCst) < n {
                assert!(t.elapsed().as_secs() < 60, "writer stalled");
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        };
        let mut complete_before = vec![];
        for k in 0..5 {
            let c = done.load(Ordering::SeqCst);
            wait_for(c + 10);
            let before = done.load(Ordering::SeqCst);
            d.ok(&["snapshot", "ew/o", &format!("ew/s{k}")]);
            complete_before.push(before);
        }
        // Files begun after the last snapshot returned are in no snapshot.
        wait_for(done.load(Ordering::SeqCst) + 5);
        stop.store(true, Ordering::SeqCst);
        writer.join().unwrap();
        let total = done.load(Ordering::SeqCst);
        assert!(
            complete_before.windows(2).all(|w| w[0] < w[1]),
            "writes went on between the snapshots: {complete_before:?}"
        );
        assert_eq!(tid(&d, "ew"), 6);

        for (k, &before) in complete_before.iter().enumerate() {
            let vol = format!("ew/s{k}");
            let node = d.json(&["activate", &vol])["devnode"]
                .as_str()
                .unwrap()
                .to_string();
            let out = Command::new("e2fsck")
                .args(["-fn", &node])
                .output()
                .unwrap();
            assert_eq!(
                out.status.code(),
                Some(0),
                "e2fsck -fn {vol}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let dir = subdir(&mnt, &format!("s{k}"));
            d.ok(&["mount", &vol, s(&dir), "--ro"]);
            assert!(mount_options(&dir).unwrap().split(',').any(|o| o == "ro"));
            let mut seen = 0;
            for i in 0..total {
                let name = format!("f{i:05}");
                match fs::read(dir.join(&name)) {
                    Ok(got) => {
                        seen += 1;
                        // A file being written at the freeze is empty or whole.
                        assert!(
                            got == content_of(&name) || (i >= before && got.is_empty()),
                            "{vol}: {name} has {} bytes",
                            got.len()
                        );
                    }
                    Err(e) => assert!(i >= before, "{vol}: {name} fsynced before, missing: {e}"),
                }
            }
            assert!(
                seen >= before && seen < total,
                "{vol}: {seen} files ({before}..{total})"
            );
            d.ok(&["umount", &vol]);
            d.ok(&["deactivate", &vol]);
        }
        // The origin has everything.
        for i in 0..total {
            let name = format!("f{i:05}");
            assert_eq!(fs::read(mo.join(&name)).unwrap(), content_of(&name));
        }
        common::thin_check_live(&d, "ew");
    }

    // ---- 6. resize -----------------------------------------------------

    #[test]
    fn resize_ext4_and_xfs_mounted_unmounted_and_refuse_shrink() {
        require_dm!("resize_ext4_and_xfs_mounted_unmounted_and_refuse_shrink");
        let mnt = tempfile::tempdir().unwrap();
        let d = Dmctl::new();
        d.ok(&["pool", "create", "rs", "--data-size", "2G"]);

        // ext4, mounted.
        d.ok(&["create", "rs/e", "--size", "128M", "--fs", "ext4"]);
        let me = subdir(&mnt, "e");
        d.ok(&["mount", "rs/e", s(&me)]);
        common::write_synced(&me.join("keep"), b"ext4 data\n").unwrap();
        let e0 = fs_bytes(&me);
        let r = d.json(&["resize", "rs/e", "--size", "256M"]);
        assert_eq!(r["size"], 256 * MIB);
        let e1 = fs_bytes(&me);
        assert!(e1 > e0 + 100 * MIB, "ext4 grew online: {e0} -> {e1}");
        let node = common::devnode(&d, "rs/e");
        let len = {
            let dev = fs::File::open(&node).unwrap();
            std::io::Seek::seek(&mut &dev, std::io::SeekFrom::End(0)).unwrap()
        };
        assert_eq!(len, 256 * MIB, "the device grew");
        common::write_synced(&me.join("after"), &[1u8; 1 << 20]).unwrap();

        // ext4, active but unmounted.
        d.ok(&["umount", "rs/e"]);
        d.ok(&["resize", "rs/e", "--size", "320M"]);
        assert_eq!(d.json(&["info", "rs/e"])["active"], true);
        // ext4, inactive: stays inactive.
        d.ok(&["deactivate", "rs/e"]);
        d.ok(&["resize", "rs/e", "--size", "384M"]);
        let info = d.json(&["info", "rs/e"]);
        assert_eq!(info["size"], 384 * MIB);
        assert_eq!(info["active"], false);
        d.ok(&["mount", "rs/e", s(&me)]);
        let e2 = fs_bytes(&me);
        assert!(e2 > e1 + 100 * MIB, "ext4 grew offline: {e1} -> {e2}");
        assert_eq!(fs::read_to_string(me.join("keep")).unwrap(), "ext4 data\n");

        // Shrinking is refused, nothing changes.
        let before = d.snapshot_state();
        let err = d.fails(&["resize", "rs/e", "--size", "64M"]);
        assert!(err.contains("only grow"), "{err}");
        assert_eq!(d.snapshot_state(), before);
        assert_eq!(fs_bytes(&me), e2);

        // xfs, mounted then unmounted.
        d.ok(&["create", "rs/x", "--size", "512M", "--fs", "xfs"]);
        let mx = subdir(&mnt, "x");
        d.ok(&["mount", "rs/x", s(&mx)]);
        common::write_synced(&mx.join("keep"), b"xfs data\n").unwrap();
        let x0 = fs_bytes(&mx);
        d.ok(&["resize", "rs/x", "--size", "768M"]);
        let x1 = fs_bytes(&mx);
        assert!(x1 > x0 + 200 * MIB, "xfs grew online: {x0} -> {x1}");
        d.ok(&["umount", "rs/x"]);
        d.ok(&["resize", "rs/x", "--size", "1G"]);
        assert_eq!(d.json(&["info", "rs/x"])["size"], GIB);
        d.ok(&["mount", "rs/x", s(&mx)]);
        let x2 = fs_bytes(&mx);
        assert!(x2 > x1 + 200 * MIB, "xfs grew offline: {x1} -> {x2}");
        assert_eq!(fs::read_to_string(mx.join("keep")).unwrap(), "xfs data\n");
        d.fails(&["resize", "rs/x", "--size", "512M"]);
        assert_eq!(d.json(&["info", "rs/x"])["size"], GIB);
        assert_eq!(fs_bytes(&mx), x2);
        // No temporary mount left behind under the state root.
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(
            !mounts.contains(s(d.root.path())),
            "leftover mount under the state root: {mounts}"
        );
        d.ok(&["umount", "rs/x"]);
        common::run("xfs_repair", &["-n", &common::devnode(&d, "rs/x")]);
        d.ok(&["umount", "rs/e"]);
        common::run("e2fsck", &["-fn", &common::devnode(&d, "rs/e")]);
        common::thin_check_live(&d, "rs");
    }

    // ---- 7. rm -----------------------------------------------------------

    #[test]
    fn rm_mounted_needs_force_discards_and_bumps_transaction() {
        require_dm!("rm_mounted_needs_force_discards_and_bumps_transaction");
        let mnt = tempfile::tempdir().unwrap();
        let d = Dmctl::new();
        d.ok(&["pool", "create", "rmp", "--data-size", "2G"]);
        assert_eq!(tid(&d, "rmp"), 0);
        d.ok(&["create", "rmp/big", "--size", "256M", "--fs", "ext4"]);
        assert_eq!(tid(&d, "rmp"), 1);
        let mb = subdir(&mnt, "big");
        d.ok(&["mount", "rmp/big", s(&mb)]);
        {
            let mut f = fs::File::create(mb.join("blob")).unwrap();
            let chunk: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8 | 1).collect();
            for _ in 0..24 {
                f.write_all(&chunk).unwrap();
            }
            f.sync_all().unwrap();
        }
        d.ok(&["snapshot", "rmp/big", "rmp/snap"]);
        assert_eq!(tid(&d, "rmp"), 2);
        assert_eq!(d.json(&["info", "rmp/snap"])["active"], false);

        // Mounted: refused without --force, volume intact.
        let before = d.snapshot_state();
        let err = d.fails(&["rm", "rmp/big"]);
        assert!(err.contains("mounted"), "{err}");
        assert_eq!(d.snapshot_state(), before);
        assert_eq!(tid(&d, "rmp"), 2);
        let info = d.json(&["info", "rmp/big"]);
        assert_eq!(info["active"], true);
        assert_eq!(info["mountpoint"], s(&fs::canonicalize(&mb).unwrap()));
        assert_eq!(fs::metadata(mb.join("blob")).unwrap().len(), 24 * MIB);

        // An inactive snapshot.
        let snap_dm = d.json(&["info", "rmp/snap"])["dm_name"]
            .as_str()
            .unwrap()
            .to_string();
        d.ok(&["rm", "rmp/snap"]);
        assert_eq!(tid(&d, "rmp"), 3);
        assert!(!dm_exists(&snap_dm), "rm left {snap_dm} behind");
        d.fails(&["info", "rmp/snap"]);
        let ls = d.json(&["ls", "rmp"]);
        assert_eq!(ls.as_array().unwrap().len(), 1, "{ls}");
        assert_eq!(ls[0]["name"], "big");

        // The mounted volume with data, --force: unmounted, discarded.
        let st = d.json(&["pool", "status", "rmp"]);
        let used1 = st["data_used"].as_u64().unwrap();
        let data_file = st["data"].as_str().unwrap().to_string();
        let blocks1 = fs::metadata(&data_file).unwrap().blocks() * 512;
        assert!(used1 >= 24 * MIB, "{st}");
        assert!(blocks1 >= 24 * MIB, "data file holds {blocks1} bytes");
        let big_dm = d.json(&["info", "rmp/big"])["dm_name"]
            .as_str()
            .unwrap()
            .to_string();
        d.ok(&["rm", "rmp/big", "--force"]);
        assert_eq!(tid(&d, "rmp"), 4);
        assert_eq!(mount_options(&mb), None, "still mounted");
        assert!(!dm_exists(&big_dm));
        let st = d.json(&["pool", "status", "rmp"]);
        let used2 = st["data_used"].as_u64().unwrap();
        assert!(used2 + 24 * MIB <= used1, "data_used {used1} -> {used2}");
        let blocks2 = fs::metadata(&data_file).unwrap().blocks() * 512;
        assert!(
            blocks2 + 20 * MIB <= blocks1,
            "data file allocation {blocks1} -> {blocks2}"
        );
        assert_eq!(d.json(&["ls", "rmp"]), serde_json::json!([]));
        assert_eq!(d.json(&["ls"]), serde_json::json!([]));
        assert_eq!(st["volumes"], 0);
        let err = d.fails(&["rm", "rmp/big"]);
        assert!(err.contains("not found"), "{err}");
        assert_eq!(tid(&d, "rmp"), 4);

        // Ids are not reused; the pool works on.
        let v = d.json(&["create", "rmp/next", "--size", "64M", "--fs", "none"]);
        assert_eq!(v["device_id"], 2);
        assert_eq!(tid(&d, "rmp"), 5);
        common::thin_check_live(&d, "rmp");
    }

    // ---- 8. ls --tree ----------------------------------------------------

    #[test]
    fn ls_tree_depth_four_with_branch() {
        require_dm!("ls_tree_depth_four_with_branch");
        let d = Dmctl::new();
        d.ok(&["pool", "create", "tr", "--data-size", "2G"]);
        d.ok(&["create", "tr/a", "--size", "64M", "--fs", "none"]);
        d.ok(&["snapshot", "tr/a", "tr/b"]);
        d.ok(&["snapshot", "tr/b", "tr/c"]);
        d.ok(&["snapshot", "tr/c", "tr/d"]);
        d.ok(&["snapshot", "tr/a", "tr/e"]);
        let tree = d.ok(&["ls", "tr", "--tree"]);
        // Drawn as `tree` and `lsblk` do (regression: every child was `└─`).
        let want = "tr/a (id 0, 64M, active)\n\
                    ├─ b (id 1, 64M)\n\
                    │  └─ c (id 2, 64M)\n\
                    │     └─ d (id 3, 64M)\n\
                    └─ e (id 4, 64M)\n";
        assert_eq!(tree, want, "got:\n{tree}\nwant:\n{want}");
        assert_eq!(d.ok(&["ls", "--tree"]), want, "all pools");
        let ls = d.json(&["ls", "tr"]);
        let parents: Vec<(&str, Option<&str>)> = ls
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["name"].as_str().unwrap(), v["parent"].as_str()))
            .collect();
        assert_eq!(
            parents,
            [
                ("a", None),
                ("b", Some("a")),
                ("c", Some("b")),
                ("d", Some("c")),
                ("e", Some("a"))
            ]
        );
        // Activation shows in the tree; the plain listing has every volume.
        d.ok(&["activate", "tr/c"]);
        let tree = d.ok(&["ls", "tr", "--tree"]);
        assert!(tree.contains("\n│  └─ c (id 2, 64M, active)\n"), "{tree}");
        let plain = d.ok(&["ls", "tr"]);
        assert_eq!(plain.lines().count(), 6, "{plain}");
        assert!(plain.lines().any(|l| l.starts_with("tr/d ")), "{plain}");
        assert_eq!(tid(&d, "tr"), 5);
        common::thin_check_live(&d, "tr");
    }

    // ---- 9. parallel dmctl processes -------------------------------------

    #[test]
    fn parallel_snapshot_processes_on_one_pool() {
        require_dm!("parallel_snapshot_processes_on_one_pool");
        let d = Dmctl::new();
        d.ok(&["pool", "create", "par", "--data-size", "2G"]);
        d.ok(&["create", "par/o", "--size", "64M", "--fs", "ext4"]);
        d.ok(&["deactivate", "par/o"]);
        assert_eq!(tid(&d, "par"), 1);
        let children: Vec<_> = (0..6)
            .map(|i| {
                Command::new(env!("CARGO_BIN_EXE_dmctl"))
                    .arg("--root")
                    .arg(d.root.path())
                    .args(["--json", "snapshot", "par/o", &format!("par/p{i}")])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("spawn dmctl")
            })
            .collect();
        let mut ids = vec![];
        for (i, c) in children.into_iter().enumerate() {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "snapshot p{i}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v["name"], format!("p{i}"));
            assert_eq!(v["parent"], "o");
            ids.push(v["device_id"].as_u64().unwrap());
        }
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, [1, 2, 3, 4, 5, 6], "distinct ids: {ids:?}");
        assert_eq!(tid(&d, "par"), 7);
        let st = d.json(&["pool", "status", "par"]);
        assert_eq!(st["open_transaction"], serde_json::Value::Null);
        assert_eq!(st["volumes"], 7);
        let ls = d.json(&["ls", "par"]);
        let ls = ls.as_array().unwrap();
        assert_eq!(ls.len(), 7);
        for v in ls {
            assert_eq!(v["initialized"], true, "{v}");
        }
        // The kernel has exactly these thin ids.
        let dm_name = st["dm_name"].as_str().unwrap();
        let meta = common::loop_of(st["meta"].as_str().unwrap());
        common::run(
            "dmsetup",
            &[
                "--noudevsync",
                "message",
                dm_name,
                "0",
                "reserve_metadata_snap",
            ],
        );
        let thin_ls = Command::new("thin_ls")
            .args(["--metadata-snap", "--no-headers", "-o", "DEV", &meta])
            .output()
            .unwrap();
        common::run(
            "dmsetup",
            &[
                "--noudevsync",
                "message",
                dm_name,
                "0",
                "release_metadata_snap",
            ],
        );
        assert!(thin_ls.status.success(), "{thin_ls:?}");
        let mut kernel_ids: Vec<u64> = String::from_utf8_lossy(&thin_ls.stdout)
            .split_whitespace()
            .map(|w| w.parse().unwrap())
            .collect();
        kernel_ids.sort();
        assert_eq!(kernel_ids, [0, 1, 2, 3, 4, 5, 6]);
        // Each snapshot has the origin's filesystem.
        let node = d.json(&["activate", "par/p3"])["devnode"]
            .as_str()
            .unwrap()
            .to_string();
        common::run("e2fsck", &["-fn", &node]);
        common::thin_check_live(&d, "par");
    }
}
