//! Bad input against real pools, in the guest: every refused command gives
//! one clear `dmctl: error:` line, exit 1, and leaves the JSON metadata, the
//! dm devices (names, tables, pool transaction ids) and the loop devices as
//! they were. Out-of-space pools refuse new thin devices until extended.
//!
//! Every test lives in `mod dm_cli_errors`, so
//! `./vm-tests/guest-tests dm_cli_errors` selects them.

mod common;

mod dm_cli_errors {
    use super::common::{self, Dmctl};
    use crate::require_dm;
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// Run a command that must be refused: exit 1, one error line that
    /// contains `expect`, and the world unchanged. Returns the line.
    fn refused(d: &Dmctl, args: &[&str], expect: &str) -> String {
        common::refused(d, args, &[expect])
    }

    /// A usage error (clap): exit 2, its `error:` line first, world unchanged.
    fn usage_error(d: &Dmctl, args: &[&str], expect: &str) -> String {
        let before = common::world(d);
        let out = d.run(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "dmctl {args:?}: {err}");
        let line = err.lines().next().unwrap_or_default().to_string();
        assert!(line.starts_with("dmctl: error: "), "dmctl {args:?}: {err}");
        let errors = err.lines().filter(|l| l.contains("error:")).count();
        assert_eq!(errors, 1, "dmctl {args:?}: {err}");
        // clap may list what is missing on the lines after its error line.
        assert!(err.contains(expect), "dmctl {args:?}: {err}");
        assert_eq!(before, common::world(d), "dmctl {args:?} changed the world");
        line
    }

    /// The thin ids the kernel holds in the pool, from `thin_dump` of a
    /// metadata snapshot of the live pool.
    fn kernel_thin_ids(d: &Dmctl, pool: &str) -> BTreeSet<u32> {
        let st = d.json(&["pool", "status", pool]);
        let dm_name = st["dm_name"].as_str().unwrap().to_string();
        let meta = st["meta"].as_str().unwrap();
        let meta_dev = if meta.starts_with("/dev/") {
            meta.to_string()
        } else {
            common::loop_of(meta)
        };
        let msg = |m: &str| common::run("dmsetup", &["--noudevsync", "message", &dm_name, "0", m]);
        msg("reserve_metadata_snap");
        let out = Command::new("thin_dump")
            .args(["--metadata-snap", &meta_dev])
            .output()
            .unwrap();
        msg("release_metadata_snap");
        assert!(
            out.status.success(),
            "thin_dump: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let xml = String::from_utf8_lossy(&out.stdout);
        xml.split("<device dev_id=\"")
            .skip(1)
            .map(|s| s.split('"').next().unwrap().parse().unwrap())
            .collect()
    }

    /// The thin ids dmctl's JSON records for the pool's volumes.
    fn json_thin_ids(d: &Dmctl, pool: &str) -> BTreeSet<u32> {
        d.json(&["ls", pool])
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["device_id"].as_u64().unwrap() as u32)
            .collect()
    }

    fn pool(d: &Dmctl, name: &str, extra: &[&str]) {
        let mut args = vec!["pool", "create", name];
        args.extend_from_slice(extra);
        d.ok(&args);
    }

    fn mkdir(base: &Path, name: &str) -> PathBuf {
        let p = base.join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Removes a dm device made by the test itself (never one of dmctl's).
    struct ForeignDm(&'static str);

    impl ForeignDm {
        fn create(name: &'static str) -> ForeignDm {
            common::run(
                "dmsetup",
                &["--noudevsync", "create", name, "--table", "0 8 error"],
            );
            ForeignDm(name)
        }
    }

    impl Drop for ForeignDm {
        fn drop(&mut self) {
            let _ = Command::new("dmsetup")
                .args(["--noudevsync", "remove", self.0])
                .status();
        }
    }

    /// Loop devices attached by the test, detached on drop.
    struct Loops(Vec<loopdev::LoopDevice>);

    impl Loops {
        fn attach(&mut self, file: &Path) -> String {
            let ctl = loopdev::LoopControl::open().unwrap();
            let dev = ctl.next_free().unwrap();
            dev.with().attach(file).unwrap();
            let path = dev.path().unwrap().display().to_string();
            self.0.push(dev);
            path
        }
    }

    impl Drop for Loops {
        fn drop(&mut self) {
            for l in self.0.drain(..) {
                let _ = l.detach();
            }
        }
    }

    /// A child process killed on drop (a writer that may be stuck).
    struct Writer(Child);

    impl Writer {
        fn dd(dev: &str, count_mib: u32) -> Writer {
            Writer(
                Command::new("dd")
                    .args([
                        "if=/dev/zero",
                        &format!("of={dev}"),
                        "bs=1M",
                        &format!("count={count_mib}"),
                        "oflag=direct",
                        "conv=fsync",
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn dd"),
            )
        }

        /// Its exit status if it ends within `limit`; None if still running.
        fn wait_for(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
            let t0 = Instant::now();
            loop {
                if let Some(st) = self.0.try_wait().unwrap() {
                    return Some(st);
                }
                if t0.elapsed() > limit {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    impl Drop for Writer {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Poll the pool's mode until it is `want` or `limit` passes.
    fn wait_mode(d: &Dmctl, pool: &str, want: &str, limit: Duration) -> serde_json::Value {
        let t0 = Instant::now();
        loop {
            let st = d.json(&["pool", "status", pool]);
            if st["mode"] == want || t0.elapsed() > limit {
                return st;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    #[test]
    fn duplicates_and_missing_names() {
        require_dm!("dm_cli_errors::duplicates_and_missing_names");
        let d = Dmctl::new();
        pool(&d, "ce-a", &["--data-size", "1G"]);
        pool(&d, "ce-b", &["--data-size", "1G"]);
        d.ok(&["create", "ce-a/v", "--size", "64M", "--fs", "none"]);
        d.ok(&["snapshot", "ce-a/v", "ce-a/s"]);

        refused(&d, &["pool", "create", "ce-a"], "already exists");
        refused(
            &d,
            &["pool", "create", "ce-a", "--data-size", "2G"],
            "already exists",
        );
        refused(
            &d,
            &["create", "ce-a/v", "--size", "64M", "--fs", "none"],
            "already exists",
        );
        refused(&d, &["create", "ce-a/s", "--size", "64M"], "already exists");
        refused(&d, &["snapshot", "ce-a/v", "ce-a/s"], "already exists");
        refused(&d, &["snapshot", "ce-a/v", "ce-a/v"], "already exists");
        refused(&d, &["snapshot", "ce-a/nope", "ce-a/s2"], "not found");
        refused(&d, &["snapshot", "ce-a/v", "ce-b/s"], "origin's pool");
        refused(&d, &["snapshot", "ce-a/v", "ce-nopool/s"], "origin's pool");
        refused(&d, &["snapshot", "ce-nopool/v", "ce-nopool/s"], "not found");
        refused(
            &d,
            &["create", "ce-nopool/v", "--size", "64M"],
            "pool 'ce-nopool' not found",
        );
        refused(&d, &["rm", "ce-a/nope"], "not found");
        refused(&d, &["rm", "ce-nopool/v"], "not found");
        refused(&d, &["activate", "ce-a/nope"], "not found");
        refused(&d, &["deactivate", "ce-a/nope"], "not found");
        refused(&d, &["info", "ce-a/nope"], "not found");
        refused(&d, &["resize", "ce-a/nope", "--size", "1G"], "not found");
        refused(&d, &["pool", "status", "ce-nopool"], "not found");
        refused(&d, &["pool", "activate", "ce-nopool"], "not found");
        refused(&d, &["pool", "deactivate", "ce-nopool"], "not found");
        refused(
            &d,
            &["pool", "destroy", "ce-nopool", "--force"],
            "not found",
        );
        refused(
            &d,
            &["pool", "extend", "ce-nopool", "--data-size", "2G"],
            "not found",
        );
        assert_eq!(
            kernel_thin_ids(&d, "ce-a"),
            json_thin_ids(&d, "ce-a"),
            "kernel and JSON agree"
        );
        common::thin_check_live(&d, "ce-a");
    }

    #[test]
    fn inactive_pool_refuses_volume_commands() {
        require_dm!("dm_cli_errors::inactive_pool_refuses_volume_commands");
        let d = Dmctl::new();
        pool(&d, "ce-off", &["--data-size", "1G"]);
        d.ok(&["create", "ce-off/v", "--size", "64M", "--fs", "none"]);
        d.ok(&["pool", "deactivate", "ce-off"]);
        assert_eq!(d.json(&["pool", "status", "ce-off"])["active"], false);
        refused(&d, &["create", "ce-off/w", "--size", "64M"], "not active");
        refused(&d, &["snapshot", "ce-off/v", "ce-off/s"], "not active");
        refused(&d, &["activate", "ce-off/v"], "not active");
        refused(&d, &["rm", "ce-off/v"], "not active");
        refused(&d, &["resize", "ce-off/v", "--size", "128M"], "not active");
        refused(
            &d,
            &["pool", "extend", "ce-off", "--data-size", "512M"],
            "only grow",
        );
        d.ok(&["pool", "activate", "ce-off"]);
        assert_eq!(d.json(&["info", "ce-off/v"])["active"], true);
        common::thin_check_live(&d, "ce-off");
    }

    #[test]
    fn mkfs_failure_rolls_the_thin_id_back() {
        require_dm!("dm_cli_errors::mkfs_failure_rolls_the_thin_id_back");
        let d = Dmctl::new();
        pool(&d, "ce-mkfs", &["--data-size", "1G"]);
        d.ok(&["create", "ce-mkfs/base", "--size", "64M", "--fs", "none"]);
        let before = common::world(&d);
        let ids_before = kernel_thin_ids(&d, "ce-mkfs");
        let tid = d.json(&["pool", "status", "ce-mkfs"])["transaction_id"].clone();

        let line = d.fails(&[
            "create",
            "ce-mkfs/bad",
            "--size",
            "64M",
            "--mkfs-arg=--definitely-bad-flag",
        ]);
        assert!(line.contains("mkfs"), "{line}");
        common::step(&format!("mkfs failed: {line}"));

        let after = common::world(&d);
        // The only change: pool.json's next_device_id may move past the id
        // the failed create used, so it is never handed out again.
        let strip = |w: &common::World| -> BTreeMap<String, serde_json::Value> {
            w.state
                .iter()
                .map(|(k, v)| {
                    let mut j: serde_json::Value = serde_json::from_str(v).unwrap();
                    if k.ends_with("pool.json") {
                        j.as_object_mut().unwrap().remove("next_device_id");
                    }
                    (k.clone(), j)
                })
                .collect()
        };
        assert_eq!(strip(&before), strip(&after), "JSON changed");
        assert_eq!(before.dm_ls, after.dm_ls, "dm devices changed");
        assert_eq!(before.dm_tables, after.dm_tables);
        assert_eq!(before.pool_tids, after.pool_tids, "transaction id moved");
        assert_eq!(before.loops, after.loops);
        let st = d.json(&["pool", "status", "ce-mkfs"]);
        assert_eq!(st["transaction_id"], tid);
        assert_eq!(st["open_transaction"], serde_json::Value::Null);
        assert!(!d
            .root
            .path()
            .join("pools/ce-mkfs/devices/bad.json")
            .exists());
        refused(&d, &["info", "ce-mkfs/bad"], "not found");
        assert_eq!(
            kernel_thin_ids(&d, "ce-mkfs"),
            ids_before,
            "an orphan thin id is left in the kernel"
        );
        common::thin_check_live(&d, "ce-mkfs");

        // The next create gets an id the kernel does not hold, and commits.
        let v = d.json(&["create", "ce-mkfs/good", "--size", "64M", "--fs", "ext4"]);
        let id = v["device_id"].as_u64().unwrap() as u32;
        assert!(!ids_before.contains(&id), "id {id} reused");
        let ids_now = kernel_thin_ids(&d, "ce-mkfs");
        assert_eq!(ids_now, json_thin_ids(&d, "ce-mkfs"));
        assert!(ids_now.contains(&id));
        assert_eq!(
            d.json(&["pool", "status", "ce-mkfs"])["transaction_id"],
            tid.as_u64().unwrap() + 1
        );
        common::thin_check_live(&d, "ce-mkfs");
    }

    #[test]
    fn mounted_and_busy_volumes() {
        require_dm!("dm_cli_errors::mounted_and_busy_volumes");
        let mnt = tempfile::tempdir().unwrap();
        let d = Dmctl::new();
        pool(&d, "ce-mnt", &["--data-size", "1G"]);
        d.ok(&["create", "ce-mnt/v", "--size", "64M"]);
        d.ok(&["create", "ce-mnt/raw", "--size", "64M", "--fs", "none"]);
        let mv = mkdir(mnt.path(), "v");
        d.ok(&["mount", "ce-mnt/v", mv.to_str().unwrap()]);
        std::fs::write(mv.join("keep.txt"), "keep\n").unwrap();

        refused(&d, &["pool", "destroy", "ce-mnt"], "mounted");
        // --force unmounts (as rm --force), but not under a process that
        // works in the mount: refused before anything is unmounted.
        let mut holder = Command::new("sleep")
            .arg("600")
            .current_dir(&mv)
            .spawn()
            .unwrap();
        let line = refused(&d, &["pool", "destroy", "ce-mnt", "--force"], "busy");
        assert!(line.contains("sleep"), "names the holder: {line}");
        holder.kill().unwrap();
        holder.wait().unwrap();
        refused(&d, &["pool", "deactivate", "ce-mnt"], "mounted");
        refused(&d, &["deactivate", "ce-mnt/v"], "mounted");
        refused(&d, &["rm", "ce-mnt/v"], "mounted");
        refused(&d, &["umount", "ce-mnt/raw"], "not mounted");
        refused(
            &d,
            &["mount", "ce-mnt/raw", mv.to_str().unwrap()],
            "no filesystem",
        );
        refused(
            &d,
            &[
                "mount",
                "ce-mnt/v",
                mnt.path().join("nodir").to_str().unwrap(),
            ],
            "nodir",
        );
        // A mount the kernel refuses leaves an inactive volume inactive.
        d.ok(&["create", "ce-mnt/w", "--size", "64M"]);
        d.ok(&["deactivate", "ce-mnt/w"]);
        let mw = mkdir(mnt.path(), "w");
        refused(
            &d,
            &[
                "mount",
                "ce-mnt/w",
                mw.to_str().unwrap(),
                "-o",
                "definitely_bad_option",
            ],
            "cannot mount",
        );
        assert_eq!(
            std::fs::read_to_string(mv.join("keep.txt")).unwrap(),
            "keep\n"
        );

        d.ok(&["umount", "ce-mnt/v"]);
        refused(&d, &["umount", "ce-mnt/v"], "not mounted");
        refused(&d, &["pool", "destroy", "ce-mnt"], "--force");
        common::thin_check_live(&d, "ce-mnt");
    }

    #[test]
    fn sizes_that_cannot_be() {
        require_dm!("dm_cli_errors::sizes_that_cannot_be");
        let d = Dmctl::new();
        pool(&d, "ce-size", &["--data-size", "1G"]);
        d.ok(&["create", "ce-size/v", "--size", "128M", "--fs", "ext4"]);
        refused(&d, &["resize", "ce-size/v", "--size", "64M"], "only grow");
        refused(
            &d,
            &["snapshot", "ce-size/v", "ce-size/s", "--size", "64M"],
            "smaller than its origin",
        );
        refused(&d, &["create", "ce-size/odd", "--size", "1000"], "multiple");
        refused(
            &d,
            &["pool", "extend", "ce-size", "--data-size", "512M"],
            "only grow",
        );
        refused(&d, &["pool", "extend", "ce-size"], "nothing to extend");
        refused(
            &d,
            &[
                "pool",
                "create",
                "ce-blk",
                "--data-size",
                "1G",
                "--block-size",
                "100K",
            ],
            "multiple of 64K",
        );
        refused(
            &d,
            &[
                "pool",
                "create",
                "ce-blk",
                "--data-size",
                "1G",
                "--block-size",
                "32K",
            ],
            "multiple of 64K",
        );
        refused(
            &d,
            &["pool", "create", "ce-blk", "--data-size", "64K"],
            "too small",
        );
        refused(
            &d,
            &[
                "pool",
                "create",
                "ce-blk",
                "--data-size",
                "1G",
                "--meta-size",
                "1M",
            ],
            "out of range",
        );
        refused(
            &d,
            &[
                "pool",
                "create",
                "ce-blk",
                "--data-size",
                "1G",
                "--low-water-mark",
                "2G",
            ],
            "low water mark",
        );
        assert!(!d.root.path().join("pools/ce-blk").exists());
        usage_error(&d, &["create", "ce-size/z", "--size", "0"], "'0'");
        common::thin_check_live(&d, "ce-size");
    }

    #[test]
    fn block_device_arguments() {
        require_dm!("dm_cli_errors::block_device_arguments");
        let files = tempfile::tempdir().unwrap();
        // Declared before `d`: dropped after it, so a leftover pool goes first.
        let mut mine = Loops(vec![]);
        let d = Dmctl::new();
        let data_file = files.path().join("data");
        std::fs::File::create(&data_file)
            .unwrap()
            .set_len(256 << 20)
            .unwrap();
        let meta_file = files.path().join("meta");
        // Looks like somebody's metadata: nothing in its first 4K is zero.
        let used: Vec<u8> = (0..(16u32 << 20)).map(|i| (i % 251 + 1) as u8).collect();
        std::fs::write(&meta_file, &used).unwrap();
        let data_dev = mine.attach(&data_file);
        let meta_dev = mine.attach(&meta_file);

        usage_error(
            &d,
            &["pool", "create", "ce-dev", "--data-dev", &data_dev],
            "--meta-dev",
        );
        usage_error(
            &d,
            &["pool", "create", "ce-dev", "--meta-dev", &meta_dev],
            "--data-dev",
        );
        refused(
            &d,
            &[
                "pool",
                "create",
                "ce-dev",
                "--data-dev",
                &data_dev,
                "--meta-dev",
                &meta_dev,
                "--data-size",
                "1G",
            ],
            "do not apply",
        );
        refused(
            &d,
            &[
                "pool",
                "create",
                "ce-dev",
                "--data-dev",
                data_file.to_str().unwrap(),
                "--meta-dev",
                &meta_dev,
            ],
            "not a block device",
        );
        refused(
            &d,
            &[
                "pool",
                "create",
                "ce-dev",
                "--data-dev",
                &data_dev,
                "--meta-dev",
                &meta_dev,
            ],
            "not empty",
        );
        assert_eq!(
            std::fs::read(&meta_file).unwrap(),
            used,
            "metadata device touched"
        );
        assert!(d.json(&["pool", "ls"]).as_array().unwrap().is_empty());

        // Zeroed, the same device is taken; destroying the pool leaves both
        // loops attached (they are the user's).
        common::run(
            "dd",
            &[
                "if=/dev/zero",
                &format!("of={meta_dev}"),
                "bs=4096",
                "count=1",
                "conv=fsync",
            ],
        );
        d.ok(&[
            "pool",
            "create",
            "ce-dev",
            "--data-dev",
            &data_dev,
            "--meta-dev",
            &meta_dev,
        ]);
        d.ok(&["create", "ce-dev/v", "--size", "64M", "--fs", "none"]);
        common::thin_check_live(&d, "ce-dev");
        refused(&d, &["pool", "destroy", "ce-dev"], "--force");
        d.ok(&["pool", "destroy", "ce-dev", "--force"]);
        let attached = common::loops();
        for dev in [&data_dev, &meta_dev] {
            let n = dev.trim_start_matches("/dev/");
            assert!(
                attached.iter().any(|l| l.starts_with(&format!("{n} "))),
                "{dev} was detached"
            );
        }
    }

    #[test]
    fn foreign_dm_device_with_dmctl_name() {
        require_dm!("dm_cli_errors::foreign_dm_device_with_dmctl_name");
        let d = Dmctl::new();
        let _foreign = ForeignDm::create("dmctl+ce-foreign");
        let table = common::run("dmsetup", &["--noudevsync", "table", "dmctl+ce-foreign"]);
        refused(
            &d,
            &["pool", "create", "ce-foreign", "--data-size", "1G"],
            "already exists",
        );
        refused(&d, &["pool", "status", "ce-foreign"], "not found");
        refused(
            &d,
            &["pool", "destroy", "ce-foreign", "--force"],
            "not found",
        );
        refused(&d, &["pool", "deactivate", "ce-foreign"], "not found");
        assert!(d.json(&["pool", "ls"]).as_array().unwrap().is_empty());

        // A pool of dmctl's whose name is taken while it is inactive.
        pool(&d, "ce-own", &["--data-size", "1G"]);
        d.ok(&["create", "ce-own/v", "--size", "64M", "--fs", "none"]);
        d.ok(&["pool", "deactivate", "ce-own"]);
        let squatter = ForeignDm::create("dmctl+ce-own");
        refused(&d, &["pool", "activate", "ce-own"], "not created by dmctl");
        refused(
            &d,
            &["pool", "deactivate", "ce-own"],
            "not created by dmctl",
        );
        refused(
            &d,
            &["pool", "destroy", "ce-own", "--force"],
            "not created by dmctl",
        );
        refused(&d, &["rm", "ce-own/v"], "not created by dmctl");
        drop(squatter);
        d.ok(&["pool", "activate", "ce-own"]);

        // A volume whose dm name is taken.
        let _vsquat = ForeignDm::create("dmctl+ce-own+w");
        let ids = kernel_thin_ids(&d, "ce-own");
        refused(
            &d,
            &["create", "ce-own/w", "--size", "64M", "--fs", "none"],
            "already exists",
        );
        refused(&d, &["snapshot", "ce-own/v", "ce-own/w"], "already exists");
        assert_eq!(kernel_thin_ids(&d, "ce-own"), ids, "orphan thin id");
        common::thin_check_live(&d, "ce-own");
        d.ok(&["create", "ce-own/x", "--size", "64M", "--fs", "none"]);

        // Never touched, whatever dmctl did around it.
        assert_eq!(
            common::run("dmsetup", &["--noudevsync", "table", "dmctl+ce-foreign"]),
            table
        );
        assert!(common::run("dmsetup", &["--noudevsync", "ls"]).contains("dmctl+ce-own+w"));
    }

    /// A 64M pool filled by a writer to a 1G volume: out of data space,
    /// refuses new thin devices, and comes back to rw when extended.
    fn out_of_space(pool_name: &str, error_if_no_space: bool) {
        let d = Dmctl::new();
        let mut extra = vec!["--data-size", "64M"];
        if error_if_no_space {
            extra.push("--error-if-no-space");
        }
        pool(&d, pool_name, &extra);
        let vol = format!("{pool_name}/big");
        d.ok(&["create", &vol, "--size", "1G", "--fs", "none"]);
        let st = d.json(&["pool", "status", pool_name]);
        assert_eq!(st["mode"], "rw");
        assert_eq!(
            st["no_space_policy"],
            if error_if_no_space { "error" } else { "queue" }
        );
        let dev = common::devnode(&d, &vol);
        common::step(&format!("dd 200M into {dev} (pool of 64M)"));
        let mut writer = Writer::dd(&dev, 200);
        let t0 = Instant::now();
        if error_if_no_space {
            let st = writer
                .wait_for(Duration::from_secs(20))
                .expect("with error_if_no_space the writer must fail quickly");
            assert!(!st.success(), "dd of 200M into a 64M pool succeeded");
        }
        let st = wait_mode(&d, pool_name, "out_of_data_space", Duration::from_secs(20));
        assert_eq!(st["mode"], "out_of_data_space", "{st}");
        common::step(&format!(
            "out of data space after {:.1}s: {}/{} bytes",
            t0.elapsed().as_secs_f64(),
            st["data_used"],
            st["data_size"]
        ));
        if !error_if_no_space {
            assert!(
                writer.0.try_wait().unwrap().is_none(),
                "the writer should be queued, not finished"
            );
        }
        refused(
            &d,
            &["snapshot", &vol, &format!("{pool_name}/snap")],
            "not rw",
        );
        refused(
            &d,
            &[
                "create",
                &format!("{pool_name}/new"),
                "--size",
                "64M",
                "--fs",
                "none",
            ],
            "out_of_data_space",
        );

        d.ok(&["pool", "extend", pool_name, "--data-size", "256M"]);
        let st = wait_mode(&d, pool_name, "rw", Duration::from_secs(10));
        assert_eq!(st["mode"], "rw", "{st}");
        assert_eq!(st["data_size"], 256u64 << 20);
        if !error_if_no_space {
            let done = writer
                .wait_for(Duration::from_secs(60))
                .expect("the queued writer did not finish after the extend");
            assert!(done.success(), "queued writer failed after the extend");
            let st = d.json(&["pool", "status", pool_name]);
            assert!(st["data_used"].as_u64().unwrap() >= 200 << 20, "{st}");
        } else {
            let mut w = Writer::dd(&dev, 16);
            let done = w.wait_for(Duration::from_secs(60)).expect("dd hangs");
            assert!(done.success(), "write after the extend failed");
        }
        d.ok(&["snapshot", &vol, &format!("{pool_name}/snap")]);
        assert_eq!(kernel_thin_ids(&d, pool_name), json_thin_ids(&d, pool_name));
        common::thin_check_live(&d, pool_name);
    }

    #[test]
    fn out_of_data_space_queue() {
        require_dm!("dm_cli_errors::out_of_data_space_queue");
        out_of_space("ce-oos-q", false);
    }

    #[test]
    fn out_of_data_space_error() {
        require_dm!("dm_cli_errors::out_of_data_space_error");
        out_of_space("ce-oos-e", true);
    }

    #[test]
    fn free_space_threshold() {
        require_dm!("dm_cli_errors::free_space_threshold");
        let d = Dmctl::new();
        pool(&d, "ce-thr", &["--data-size", "64M"]);
        d.ok(&["create", "ce-thr/v", "--size", "1G", "--fs", "none"]);
        let dev = common::devnode(&d, "ce-thr/v");
        let mut w = Writer::dd(&dev, 60);
        let done = w.wait_for(Duration::from_secs(60)).expect("dd hangs");
        assert!(done.success(), "60M into a 64M pool failed");
        let st = d.json(&["pool", "status", "ce-thr"]);
        assert_eq!(st["mode"], "rw", "{st}");
        let (used, size) = (
            st["data_used"].as_u64().unwrap(),
            st["data_size"].as_u64().unwrap(),
        );
        assert!(used * 10 > size * 9, "not above 90%: {used}/{size}");
        refused(&d, &["snapshot", "ce-thr/v", "ce-thr/s"], "threshold");
        refused(
            &d,
            &["create", "ce-thr/w", "--size", "64M", "--fs", "none"],
            "threshold",
        );
        d.ok(&["pool", "extend", "ce-thr", "--data-size", "256M"]);
        d.ok(&["snapshot", "ce-thr/v", "ce-thr/s"]);
        common::thin_check_live(&d, "ce-thr");
    }
}
