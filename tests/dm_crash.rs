//! Crash safety, in the guest: every mutating command is SIGKILLed at every
//! crash point it reaches (`DMCTL_CRASH_AT`, see `src/crashpoint.rs`), and
//! the next ordinary command must repair what it left, with no manual help.
//!
//! The points of each command are not listed here: they are enumerated by
//! running the command once with `DMCTL_CRASH_LIST=1`, so a new point is
//! tried as soon as it exists. After each crash and repair,
//! `common::check_invariants` holds, plus what the command promises: a
//! create or snapshot is absent or complete, a snapshot's mounted origin is
//! not left suspended, an rm is all or nothing, a resize or pool extend
//! completes when run again.
//!
//! Every test lives in `mod dm_crash`, so `./vm-tests/guest-tests dm_crash`
//! selects them.

mod common;

mod dm_crash {
    use super::common::{self, Dmctl};
    use crate::require_dm;
    use std::fs;
    use std::io::Write;
    use std::os::unix::process::ExitStatusExt;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output};
    use std::time::{Duration, Instant};

    const POOL: &str = "cr";
    const VOL: &str = "cr/v";
    const SNAP: &str = "cr/s";
    const MIB: u64 = 1 << 20;
    const DATA: &str = "written before the crash\n";

    /// A state root (with its pool, volumes, mounts) for one run.
    /// Field order matters: `d` is dropped (unmount, destroy) before the
    /// mount directories go.
    struct Fixture {
        d: Dmctl,
        mnt: tempfile::TempDir,
    }

    impl Fixture {
        fn empty() -> Fixture {
            Fixture {
                d: Dmctl::new(),
                mnt: tempfile::tempdir().unwrap(),
            }
        }

        fn with_pool() -> Fixture {
            let fx = Fixture::empty();
            fx.d.ok(&["pool", "create", POOL, "--data-size", "1G"]);
            fx
        }

        /// A mount directory for `vol` (`cr/NAME` -> `MNT/NAME`).
        fn dir(&self, vol: &str) -> PathBuf {
            let p = self.mnt.path().join(vol.rsplit('/').next().unwrap());
            fs::create_dir_all(&p).unwrap();
            p
        }

        /// A pool with `cr/v`, 32M ext4, holding `data` with DATA; left
        /// mounted at `dir("cr/v")`.
        fn with_mounted_volume() -> Fixture {
            let fx = Fixture::with_pool();
            fx.d.ok(&["create", VOL, "--size", "32M", "--fs", "ext4"]);
            let dir = fx.dir(VOL);
            fx.d.ok(&["mount", VOL, s(&dir)]);
            common::write_synced(&dir.join("data"), DATA.as_bytes()).unwrap();
            fx
        }

        /// As above, unmounted but active.
        fn with_active_volume() -> Fixture {
            let fx = Fixture::with_mounted_volume();
            fx.d.ok(&["umount", VOL]);
            fx
        }

        /// As above, inactive.
        fn with_inactive_volume() -> Fixture {
            let fx = Fixture::with_active_volume();
            fx.d.ok(&["deactivate", VOL]);
            fx
        }

        /// The volume's entry in `dmctl --json ls`, if it exists.
        fn entry(&self, vol: &str) -> Option<serde_json::Value> {
            let name = vol.rsplit('/').next().unwrap();
            self.d
                .json(&["ls", POOL])
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == name)
                .cloned()
        }

        /// The next mutating command after a crash: it must repair first.
        fn probe(&self) {
            self.d.ok(&[
                "create",
                &format!("{POOL}/probe"),
                "--size",
                "16M",
                "--fs",
                "none",
            ]);
        }

        /// `vol` (an ext4 volume) is complete: recorded as initialized, its
        /// filesystem clean, mountable, holding `want` in `data` (if given),
        /// writable. Activates it if it is not; leaves it unmounted.
        fn assert_complete(&self, vol: &str, want: Option<&str>) {
            let e = self.entry(vol).unwrap();
            assert_eq!(e["initialized"], true, "{vol} is recorded: {e}");
            assert_eq!(e["fs"], "ext4", "{vol}: {e}");
            if e["active"] != true {
                self.d.ok(&["activate", vol]);
            }
            e2fsck_clean(&self.devnode(vol));
            let dir = self.dir(vol);
            self.d.ok(&["mount", vol, s(&dir)]);
            if let Some(want) = want {
                assert_eq!(fs::read_to_string(dir.join("data")).unwrap(), want, "{vol}");
            }
            common::write_synced(&dir.join("probe"), b"after\n").unwrap();
            self.d.ok(&["umount", vol]);
        }

        /// `vol` is gone: no record, no JSON file, no dm device (its thin
        /// id is checked by `dmctl check` in the invariants).
        fn assert_gone(&self, vol: &str) {
            let name = vol.rsplit('/').next().unwrap();
            assert!(self.entry(vol).is_none(), "{vol} should be gone");
            let json = self
                .d
                .state_root()
                .join(format!("pools/{POOL}/devices/{name}.json"));
            assert!(!json.exists(), "{} is left", json.display());
            let dm = format!("dmctl+{POOL}+{name}");
            let ls = common::run("dmsetup", &["--noudevsync", "ls"]);
            assert!(
                !ls.lines().any(|l| l.split_whitespace().next() == Some(&dm)),
                "{dm} is left: {ls}"
            );
        }

        fn devnode(&self, vol: &str) -> String {
            common::devnode(&self.d, vol)
        }
    }

    fn s(p: &Path) -> &str {
        p.to_str().unwrap()
    }

    fn e2fsck_clean(dev: &str) {
        let out = Command::new("e2fsck").args(["-fn", dev]).output().unwrap();
        assert!(
            out.status.success(),
            "e2fsck -fn {dev}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Size in bytes of a block device.
    fn dev_bytes(dev: &str) -> u64 {
        let f = fs::File::open(dev).unwrap();
        std::io::Seek::seek(&mut &f, std::io::SeekFrom::End(0)).unwrap()
    }

    /// Size in bytes of the ext4 filesystem on `dev`, from its superblock.
    /// `dmctl --root ROOT ARGS` with one extra environment variable.
    fn dmctl_env(d: &Dmctl, args: &[&str], var: &str, value: &str) -> Output {
        Command::new(env!("CARGO_BIN_EXE_dmctl"))
            .arg("--root")
            .arg(d.state_root())
            .args(args)
            .env(var, value)
            .output()
            .expect("run dmctl")
    }

    /// A write and fsync into `dir` must complete within 10 s (it hangs
    /// while the device under it is suspended). On a hang, resume
    /// `dm_name` so the test can clean up, and fail.
    fn write_completes(dir: &Path, dm_name: &str, what: &str) {
        let (tx, rx) = std::sync::mpsc::channel();
        let path = dir.join("after-crash");
        std::thread::spawn(move || {
            common::write_synced(&path, b"written after the crash\n").unwrap();
            fs::File::open(path.parent().unwrap())
                .unwrap()
                .sync_all()
                .unwrap();
            let _ = tx.send(());
        });
        if rx.recv_timeout(Duration::from_secs(10)).is_err() {
            let _ = Command::new("dmsetup")
                .args(["--noudevsync", "resume", dm_name])
                .status();
            panic!(
                "{what}: a write+fsync into {} hung for 10 s: {dm_name} is suspended",
                dir.display()
            );
        }
    }

    /// The crash points `args` reaches from `setup`'s state, in order.
    fn crash_points(setup: &dyn Fn() -> Fixture, args: &[&str]) -> Vec<String> {
        let fx = setup();
        let out = dmctl_env(&fx.d, args, "DMCTL_CRASH_LIST", "1");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "dmctl {args:?} with DMCTL_CRASH_LIST=1 failed: {}\n{stderr}",
            out.status
        );
        let mut points: Vec<String> = vec![];
        for l in stderr.lines() {
            if let Some(p) = l.strip_prefix("dmctl: crash point ") {
                if !points.iter().any(|q| q == p) {
                    points.push(p.to_string());
                }
            }
        }
        points
    }

    /// One mutating command under test.
    struct Case<'a> {
        /// Name in the summary.
        label: &'a str,
        /// The state it starts from (fresh for every point).
        setup: &'a dyn Fn() -> Fixture,
        args: &'a [&'a str],
        /// Points it must reach (it may reach more).
        expected: &'a [&'a str],
        /// Points it must not reach.
        unexpected: &'a [&'a str],
        /// Repair and check, after the command was killed at `point`.
        verify: &'a dyn Fn(&Fixture, &str),
    }

    /// Enumerate the case's points, then for each: fresh setup, kill the
    /// command there, verify. Returns the points tried.
    fn crash_everywhere(case: &Case) -> Vec<String> {
        let t0 = Instant::now();
        let points = crash_points(case.setup, case.args);
        assert!(
            !points.is_empty(),
            "{}: dmctl {:?} reached no crash point",
            case.label,
            case.args
        );
        for p in case.expected {
            assert!(
                points.iter().any(|q| q == p),
                "{}: dmctl {:?} should reach crash point {p}; it reached {points:?}",
                case.label,
                case.args
            );
        }
        for p in case.unexpected {
            assert!(
                !points.iter().any(|q| q == p),
                "{}: dmctl {:?} should not reach crash point {p}; it reached {points:?}",
                case.label,
                case.args
            );
        }
        for point in &points {
            let fx = (case.setup)();
            let out = dmctl_env(&fx.d, case.args, "DMCTL_CRASH_AT", point);
            assert_eq!(
                out.status.signal(),
                Some(9),
                "{}: dmctl {:?} with DMCTL_CRASH_AT={point} should die from SIGKILL: {}\n{}",
                case.label,
                case.args,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            (case.verify)(&fx, point);
            common::step(&format!(
                "{}: crashed at {point}, repaired, checked",
                case.label
            ));
        }
        report(&format!(
            "{}: {} crash points in {:.1}s: {}",
            case.label,
            points.len(),
            t0.elapsed().as_secs_f64(),
            points.join(" ")
        ));
        points
    }

    /// A summary line: a `common::step`, and also written past libtest's
    /// capture, so the guest log has it even when the test passes.
    fn report(line: &str) {
        common::step(line);
        let _ = writeln!(std::io::stderr(), "==> {line}");
    }

    /// Whether the kernel side of the transaction was committed before the
    /// crash: the repair must then finish it, not undo it.
    fn committed(point: &str) -> bool {
        point.starts_with("txn:")
    }

    fn verify_pool_create(fx: &Fixture, point: &str) {
        fx.d.ok(&["pool", "create", POOL, "--data-size", "1G"]);
        fx.probe();
        common::check_invariants(&fx.d, POOL);
        // Exactly the new pool's two loops: the killed create's are gone.
        let root = fs::canonicalize(fx.d.state_root()).unwrap();
        let loops = fs::read_dir("/sys/block")
            .unwrap()
            .flatten()
            .filter_map(|e| fs::read_to_string(e.path().join("loop/backing_file")).ok())
            .filter(|f| Path::new(f.trim()).starts_with(&root))
            .count();
        assert_eq!(
            loops, 2,
            "pool-create at {point}: loops under the state root"
        );
    }

    fn verify_create(fx: &Fixture, point: &str) {
        fx.probe();
        common::check_invariants(&fx.d, POOL);
        match fx.entry(VOL) {
            Some(_) => fx.assert_complete(VOL, None),
            None => {
                assert!(
                    !committed(point),
                    "create at {point}: committed, yet rolled back"
                );
                fx.assert_gone(VOL);
                // The name is free again.
                fx.d.ok(&["create", VOL, "--size", "32M", "--fs", "ext4"]);
                fx.assert_complete(VOL, None);
                common::check_invariants(&fx.d, POOL);
            }
        }
    }

    /// After a killed snapshot: absent or complete, holding the origin's
    /// data; the origin intact.
    fn verify_snapshot_outcome(fx: &Fixture, point: &str, activated: bool) {
        match fx.entry(SNAP) {
            Some(e) => {
                assert_eq!(e["parent"], "v", "snapshot at {point}: {e}");
                if activated {
                    assert_eq!(e["active"], true, "snapshot --activate at {point}: {e}");
                }
                fx.assert_complete(SNAP, Some(DATA));
            }
            None => {
                assert!(
                    !committed(point),
                    "snapshot at {point}: committed, yet rolled back"
                );
                fx.assert_gone(SNAP);
            }
        }
        common::check_invariants(&fx.d, POOL);
    }

    fn verify_snapshot(fx: &Fixture, point: &str) {
        fx.probe();
        common::check_invariants(&fx.d, POOL);
        verify_snapshot_outcome(fx, point, false);
        fx.assert_complete(VOL, Some(DATA));
    }

    fn verify_snapshot_mounted(fx: &Fixture, point: &str) {
        fx.probe();
        let dir = fx.dir(VOL);
        write_completes(
            &dir,
            &format!("dmctl+{POOL}+v"),
            &format!("snapshot at {point}"),
        );
        assert_eq!(fs::read_to_string(dir.join("data")).unwrap(), DATA);
        common::check_invariants(&fx.d, POOL);
        verify_snapshot_outcome(fx, point, false);
    }

    fn verify_snapshot_activate(fx: &Fixture, point: &str) {
        fx.probe();
        common::check_invariants(&fx.d, POOL);
        verify_snapshot_outcome(fx, point, true);
        fx.assert_complete(VOL, Some(DATA));
    }

    fn verify_rm(fx: &Fixture, point: &str) {
        fx.probe();
        common::check_invariants(&fx.d, POOL);
        match fx.entry(VOL) {
            Some(_) => {
                assert!(
                    !committed(point),
                    "rm at {point}: committed, yet the volume is back"
                );
                fx.assert_complete(VOL, Some(DATA));
            }
            None => fx.assert_gone(VOL),
        }
        // The pool still takes new volumes, and the name is free.
        if fx.entry(VOL).is_none() {
            fx.d.ok(&["create", VOL, "--size", "32M", "--fs", "none"]);
        }
        common::check_invariants(&fx.d, POOL);
    }

    /// After a killed `resize cr/v --size 48M`: the filesystem is clean,
    /// and the same resize run again completes: device and filesystem at
    /// 48M, data intact.
    fn verify_resize(fx: &Fixture, point: &str) {
        // Killed at resize:growing, dmctl leaves its resize2fs running on
        // (it holds the pool lock and its private mount): let it finish.
        let t0 = Instant::now();
        while !common::pids_of("resize2fs").is_empty() {
            assert!(t0.elapsed().as_secs() < 60, "resize2fs still running");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        fx.probe();
        common::check_invariants(&fx.d, POOL);
        let was_active = fx.entry(VOL).unwrap()["active"] == true;
        if was_active {
            e2fsck_clean(&fx.devnode(VOL));
        }
        fx.d.ok(&["resize", VOL, "--size", "48M"]);
        let e = fx.entry(VOL).unwrap();
        assert_eq!(e["size"], 48 * MIB, "resize at {point}: {e}");
        assert_eq!(e["active"], was_active, "resize at {point}: {e}");
        if !was_active {
            fx.d.ok(&["activate", VOL]);
        }
        let dev = fx.devnode(VOL);
        e2fsck_clean(&dev);
        assert_eq!(dev_bytes(&dev), 48 * MIB, "resize at {point}: device size");
        assert_eq!(
            common::ext4_bytes(&dev),
            48 * MIB,
            "resize at {point}: filesystem size"
        );
        fx.assert_complete(VOL, Some(DATA));
        common::check_invariants(&fx.d, POOL);
    }

    /// After a killed `pool extend cr --data-size 2G --meta-size 4M`: the
    /// same extend run again reaches the new sizes.
    fn verify_pool_extend(fx: &Fixture, point: &str) {
        fx.d.ok(&[
            "pool",
            "extend",
            POOL,
            "--data-size",
            "2G",
            "--meta-size",
            "4M",
        ]);
        let st = fx.d.json(&["pool", "status", POOL]);
        assert_eq!(st["data_size"], 2u64 << 30, "pool extend at {point}: {st}");
        assert_eq!(st["meta_size"], 4 * MIB, "pool extend at {point}: {st}");
        assert_eq!(st["mode"], "rw", "pool extend at {point}: {st}");
        let data = st["data"].as_str().unwrap();
        assert_eq!(fs::metadata(data).unwrap().len(), 2u64 << 30);
        assert_eq!(dev_bytes(&common::loop_of(data)), 2u64 << 30);
        common::check_invariants(&fx.d, POOL);
        // Its volume is still there and active, and it takes new ones.
        assert_eq!(fx.entry(VOL).unwrap()["active"], true);
        fx.probe();
        common::check_invariants(&fx.d, POOL);
    }

    /// A two-layer OCI image (umoci) built once per test binary run and
    /// shared read-only by every point: `base` adds etc/base, `v2` adds
    /// etc/top and deletes etc/base.
    fn image_layout() -> &'static Path {
        static LAYOUT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        LAYOUT.get_or_init(|| {
            let work = std::env::temp_dir().join(format!("dmctl-crash-img-{}", std::process::id()));
            let l = work.join("L");
            let (ls, b) = (s(&l).to_string(), work.join("b"));
            fs::create_dir_all(&work).unwrap();
            common::run("umoci", &["init", "--layout", &ls]);
            common::run("umoci", &["new", "--image", &format!("{ls}:base")]);
            common::run(
                "umoci",
                &["unpack", "--image", &format!("{ls}:base"), s(&b)],
            );
            fs::create_dir_all(b.join("rootfs/etc")).unwrap();
            fs::write(b.join("rootfs/etc/base"), "base\n").unwrap();
            common::run(
                "umoci",
                &["repack", "--image", &format!("{ls}:base"), s(&b)],
            );
            let b2 = work.join("b2");
            common::run(
                "umoci",
                &["unpack", "--image", &format!("{ls}:base"), s(&b2)],
            );
            fs::write(b2.join("rootfs/etc/top"), "top\n").unwrap();
            fs::remove_file(b2.join("rootfs/etc/base")).unwrap();
            common::run("umoci", &["repack", "--image", &format!("{ls}:v2"), s(&b2)]);
            l
        })
    }

    fn import_args() -> Vec<String> {
        [
            "image",
            "import",
            POOL,
            s(image_layout()),
            "--name",
            "v2",
            "--size",
            "64M",
        ]
        .map(String::from)
        .to_vec()
    }

    fn with_image() -> Fixture {
        let fx = Fixture::with_pool();
        let args = import_args();
        fx.d.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        fx
    }

    /// The image's content, through a provisioned rootfs (removed again).
    fn assert_image_content(fx: &Fixture, what: &str) {
        let dir = fx.dir("cr/check");
        fx.d.ok(&[
            "image",
            "provision",
            POOL,
            "v2",
            "check",
            "--mount",
            s(&dir),
        ]);
        assert_eq!(
            fs::read_to_string(dir.join("etc/top")).unwrap(),
            "top\n",
            "{what}"
        );
        assert!(!dir.join("etc/base").exists(), "{what}: whiteout applied");
        fx.d.ok(&["rm", "cr/check", "--force"]);
    }

    fn verify_image_import(fx: &Fixture, point: &str) {
        let args = import_args();
        fx.d.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let inspect = fx.d.json(&["image", "inspect", POOL, "v2"]);
        assert_eq!(
            inspect["layers"].as_array().unwrap().len(),
            2,
            "{point}: {inspect}"
        );
        assert_image_content(fx, point);
        fx.probe();
        common::check_invariants(&fx.d, POOL);
    }

    fn verify_provision(fx: &Fixture, point: &str) {
        // Asking again finishes (or redoes) the interrupted provision.
        let dir = fx.dir("cr/job");
        fx.d.ok(&["image", "provision", POOL, "v2", "job", "--mount", s(&dir)]);
        assert_eq!(
            fs::read_to_string(dir.join("etc/top")).unwrap(),
            "top\n",
            "{point}"
        );
        common::write_synced(&dir.join("out"), b"job output\n").unwrap();
        fx.d.ok(&["rm", "cr/job", "--force"]);
        fx.probe();
        common::check_invariants(&fx.d, POOL);
    }

    /// The image imported, with one warm spare.
    fn with_warm_image() -> Fixture {
        let fx = with_image();
        fx.d.ok(&["image", "warm", POOL, "v2", "--spares", "1"]);
        fx
    }

    fn verify_warm(fx: &Fixture, point: &str) {
        // Asking again finishes: one spare, ready; provision hands it out.
        let w = fx.d.json(&["image", "warm", POOL, "v2", "--spares", "1"]);
        assert_eq!(w["spares"].as_array().unwrap().len(), 1, "{point}: {w}");
        let spare = fx.d.json(&[
            "info",
            &format!("{POOL}/{}", w["spares"][0].as_str().unwrap()),
        ]);
        assert!(spare["mountpoint"].is_string(), "{point}: {spare}");
        verify_provision(fx, point);
        assert_eq!(
            fx.d.json(&["image", "inspect", POOL, "v2"])["spares"],
            0,
            "{point}: the spare was handed out"
        );
    }

    /// The image imported and provisioned as `cr/job`, with the job's output
    /// written and the volume unmounted: ready for `image commit`.
    fn with_job() -> Fixture {
        let fx = with_image();
        let dir = fx.dir("cr/job");
        fx.d.ok(&["image", "provision", POOL, "v2", "job", "--mount", s(&dir)]);
        common::write_synced(&dir.join("artifact"), b"built\n").unwrap();
        fx.d.ok(&["umount", "cr/job"]);
        fx
    }

    fn verify_image_commit(fx: &Fixture, point: &str) {
        // Asking again finishes (or redoes) the interrupted commit.
        fx.d.ok(&["image", "commit", "cr/job", "v3"]);
        let inspect = fx.d.json(&["image", "inspect", POOL, "v3"]);
        assert_eq!(
            inspect["layers"].as_array().unwrap().len(),
            3,
            "{point}: {inspect}"
        );
        let dir = fx.dir("cr/v3check");
        fx.d.ok(&[
            "image",
            "provision",
            POOL,
            "v3",
            "v3check",
            "--mount",
            s(&dir),
        ]);
        assert_eq!(
            fs::read_to_string(dir.join("artifact")).unwrap(),
            "built\n",
            "{point}"
        );
        assert_eq!(
            fs::read_to_string(dir.join("etc/top")).unwrap(),
            "top\n",
            "{point}"
        );
        fx.d.ok(&["rm", "cr/v3check", "--force"]);
        fx.probe();
        common::check_invariants(&fx.d, POOL);
    }

    fn with_deactivated_pool() -> Fixture {
        let fx = Fixture::with_active_volume();
        fx.d.ok(&["pool", "deactivate", POOL]);
        fx
    }

    fn verify_pool_activate(fx: &Fixture, point: &str) {
        fx.d.ok(&["pool", "activate", POOL]);
        fx.d.ok(&["pool", "activate", POOL]);
        fx.assert_complete(VOL, Some(DATA));
        fx.probe();
        common::check_invariants(&fx.d, POOL);
        let _ = point;
    }

    fn verify_pool_destroy(fx: &Fixture, point: &str) {
        fx.d.ok(&["pool", "destroy", POOL, "--force"]);
        assert!(
            fx.d.json(&["pool", "ls"]).as_array().unwrap().is_empty(),
            "{point}"
        );
        let ls = common::run("dmsetup", &["--noudevsync", "ls"]);
        assert!(
            !ls.contains(&format!("dmctl+{POOL}")),
            "{point}: dm devices left: {ls}"
        );
        let root = fs::canonicalize(fx.d.state_root()).unwrap();
        let loops = fs::read_dir("/sys/block")
            .unwrap()
            .flatten()
            .filter_map(|e| fs::read_to_string(e.path().join("loop/backing_file")).ok())
            .filter(|f| Path::new(f.trim()).starts_with(&root))
            .count();
        assert_eq!(loops, 0, "{point}: loops left under the state root");
        // The name is free again.
        fx.d.ok(&["pool", "create", POOL, "--data-size", "1G"]);
    }

    fn with_raw_volume() -> Fixture {
        let fx = Fixture::with_pool();
        fx.d.ok(&["create", VOL, "--size", "32M", "--fs", "none"]);
        fx
    }

    #[test]
    fn every_crash_point_of_every_mutating_command_is_repaired() {
        require_dm!("every_crash_point_of_every_mutating_command_is_repaired");
        let t0 = Instant::now();
        let import_owned = import_args();
        let import_refs: Vec<&str> = import_owned.iter().map(String::as_str).collect();
        let job_dir = std::env::temp_dir().join("dmctl-crash-job");
        fs::create_dir_all(&job_dir).unwrap();
        let provision_args = [
            "image",
            "provision",
            POOL,
            "v2",
            "job",
            "--mount",
            s(&job_dir),
        ];
        let cases = [
            Case {
                label: "pool-create",
                setup: &Fixture::empty,
                args: &["pool", "create", POOL, "--data-size", "1G"],
                expected: &[
                    "pool-create:after-record",
                    "pool-create:after-files",
                    "pool-create:after-table",
                ],
                unexpected: &[],
                verify: &verify_pool_create,
            },
            Case {
                label: "create",
                setup: &Fixture::with_pool,
                args: &["create", VOL, "--size", "32M", "--fs", "ext4"],
                expected: &[
                    "create:after-begin",
                    "create:after-message",
                    "create:after-activate",
                    "create:after-mkfs",
                    "txn:after-set-transaction-id",
                    "txn:after-pool-save",
                ],
                unexpected: &[],
                verify: &verify_create,
            },
            Case {
                label: "snapshot",
                setup: &Fixture::with_inactive_volume,
                args: &["snapshot", VOL, SNAP],
                expected: &[
                    "snapshot:after-begin",
                    "snapshot:after-message",
                    "txn:after-set-transaction-id",
                    "txn:after-pool-save",
                ],
                // An inactive origin has nothing to suspend.
                unexpected: &["snapshot:origin-suspended"],
                verify: &verify_snapshot,
            },
            Case {
                label: "snapshot-mounted",
                setup: &Fixture::with_mounted_volume,
                args: &["snapshot", VOL, SNAP],
                expected: &[
                    "snapshot:after-begin",
                    "snapshot:origin-suspended",
                    "snapshot:after-message",
                    "txn:after-set-transaction-id",
                    "txn:after-pool-save",
                ],
                unexpected: &[],
                verify: &verify_snapshot_mounted,
            },
            Case {
                label: "snapshot-activate",
                setup: &Fixture::with_active_volume,
                args: &["snapshot", VOL, SNAP, "--activate"],
                expected: &[
                    "snapshot:after-begin",
                    "snapshot:origin-suspended",
                    "snapshot:after-message",
                    "txn:after-set-transaction-id",
                    "txn:after-pool-save",
                ],
                unexpected: &[],
                verify: &verify_snapshot_activate,
            },
            Case {
                label: "rm-active",
                setup: &Fixture::with_mounted_volume,
                args: &["rm", VOL, "--force"],
                expected: &[
                    "rm:after-device-removed",
                    "rm:after-delete",
                    "txn:after-set-transaction-id",
                    "txn:after-pool-save",
                ],
                unexpected: &[],
                verify: &verify_rm,
            },
            Case {
                label: "rm-inactive",
                setup: &Fixture::with_inactive_volume,
                args: &["rm", VOL],
                expected: &[
                    "rm:after-device-removed",
                    "rm:after-delete",
                    "txn:after-set-transaction-id",
                    "txn:after-pool-save",
                ],
                unexpected: &[],
                verify: &verify_rm,
            },
            Case {
                label: "resize-active",
                setup: &Fixture::with_active_volume,
                args: &["resize", VOL, "--size", "48M"],
                expected: &["resize:after-record", "resize:growing"],
                unexpected: &[],
                verify: &verify_resize,
            },
            Case {
                label: "resize-inactive",
                setup: &Fixture::with_inactive_volume,
                args: &["resize", VOL, "--size", "48M"],
                expected: &["resize:after-record", "resize:growing"],
                unexpected: &[],
                verify: &verify_resize,
            },
            Case {
                label: "pool-extend",
                setup: &with_raw_volume,
                args: &[
                    "pool",
                    "extend",
                    POOL,
                    "--data-size",
                    "2G",
                    "--meta-size",
                    "4M",
                ],
                expected: &["pool-extend:after-record"],
                unexpected: &[],
                verify: &verify_pool_extend,
            },
            Case {
                label: "pool-activate",
                setup: &with_deactivated_pool,
                args: &["pool", "activate", POOL],
                expected: &["pool-activate:after-loops", "pool-activate:after-table"],
                unexpected: &[],
                verify: &verify_pool_activate,
            },
            Case {
                label: "pool-destroy",
                setup: &Fixture::with_inactive_volume,
                args: &["pool", "destroy", POOL, "--force"],
                expected: &[
                    "pool-destroy:after-volumes",
                    "pool-destroy:after-pool-device",
                ],
                unexpected: &[],
                verify: &verify_pool_destroy,
            },
            Case {
                label: "image-import",
                setup: &Fixture::with_pool,
                args: &import_refs,
                expected: &[
                    "create:after-mkfs",
                    "layer:after-volume",
                    "layer:after-apply",
                    "snapshot:after-message",
                    "image-import:before-records",
                ],
                unexpected: &[],
                verify: &verify_image_import,
            },
            Case {
                label: "provision",
                setup: &with_image,
                args: &provision_args,
                expected: &["snapshot:after-message", "provision:after-snapshot"],
                unexpected: &[],
                verify: &verify_provision,
            },
            Case {
                label: "image-warm",
                setup: &with_image,
                args: &["image", "warm", POOL, "v2", "--spares", "1"],
                expected: &["snapshot:after-message", "warm:after-snapshot"],
                unexpected: &[],
                verify: &verify_warm,
            },
            Case {
                label: "provision-warm",
                setup: &with_warm_image,
                args: &provision_args,
                expected: &[
                    "claim:journaled",
                    "claim:renamed",
                    "claim:mounted",
                    "claim:recorded",
                ],
                unexpected: &["snapshot:after-message"],
                verify: &verify_provision,
            },
            Case {
                label: "image-commit",
                setup: &with_job,
                args: &["image", "commit", "cr/job", "v3"],
                expected: &["layer:after-volume", "layer:after-apply"],
                unexpected: &[],
                verify: &verify_image_commit,
            },
        ];
        let mut summary = vec![];
        let mut total = 0;
        for case in &cases {
            let points = crash_everywhere(case);
            total += points.len();
            summary.push(format!("{}={}", case.label, points.len()));
        }
        let line = format!(
            "crash points tried: {} total={total} ({:.0}s)",
            summary.join(" "),
            t0.elapsed().as_secs_f64()
        );
        report(&line);
    }
}
