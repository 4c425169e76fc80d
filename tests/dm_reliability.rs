//! Reliability under use, in the guest: many dmctl processes on one pool at
//! once, volumes held busy by other processes, and broken state (damaged
//! pool metadata, unreadable volume records) with the repairs for it.
//! Every test ends with `common::check_invariants`.
//!
//! Every test lives in `mod dm_reliability`, so
//! `./vm-tests/guest-tests dm_reliability` selects them.

mod common;

mod dm_reliability {
    use super::common::{self, Dmctl};
    use crate::require_dm;
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// A process killed on drop.
    struct Holder(Child);

    impl Holder {
        /// `sleep` with its cwd in `dir`, or its stdin open on `file`.
        fn spawn(cwd: Option<&Path>, stdin: Option<&Path>) -> Holder {
            let mut c = Command::new("sleep");
            c.arg("600").stdout(Stdio::null()).stderr(Stdio::null());
            if let Some(dir) = cwd {
                c.current_dir(dir);
            }
            match stdin {
                Some(f) => c.stdin(std::fs::File::open(f).unwrap()),
                None => c.stdin(Stdio::null()),
            };
            let child = c.spawn().expect("spawn sleep");
            let pid = child.id();
            // comm becomes "sleep" at exec.
            let t0 = Instant::now();
            while std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default()
                != "sleep\n"
            {
                assert!(
                    t0.elapsed() < Duration::from_secs(20),
                    "sleep did not start"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Holder(child)
        }

        fn pid(&self) -> u32 {
            self.0.id()
        }
    }

    impl Drop for Holder {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// A step, also written past libtest's capture: the figures the
    /// reliability report quotes show in the guest log of a passing run.
    fn report(msg: &str) {
        use std::io::Write;
        common::step(msg);
        let _ = writeln!(std::io::stderr(), "dm_reliability: {msg}");
    }

    fn mkdir(base: &Path, name: &str) -> PathBuf {
        let p = base.join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Write `len` bytes of a pattern made from `seed` at the start of a device.
    fn pattern(seed: u8, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn write_dev(dev: &str, data: &[u8]) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(dev).unwrap();
        f.write_all(data).unwrap();
        f.sync_all().unwrap();
    }

    fn read_dev(dev: &str, len: usize) -> Vec<u8> {
        use std::io::Read;
        let mut buf = vec![0; len];
        std::fs::File::open(dev)
            .unwrap()
            .read_exact(&mut buf)
            .unwrap();
        buf
    }

    /// xorshift: a reproducible operation mix per worker.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn pick<'a>(&mut self, set: &'a BTreeSet<String>) -> Option<&'a String> {
            if set.is_empty() {
                return None;
            }
            let i = self.below(set.len() as u64) as usize;
            set.iter().nth(i)
        }
    }

    const WORKERS: usize = 8;
    const OPS_PER_WORKER: usize = 50;

    /// What one worker did and believes at its end.
    #[derive(Default)]
    struct Outcome {
        ops: usize,
        by_kind: BTreeMap<&'static str, usize>,
        /// Its volumes: name -> thin id.
        mine: BTreeMap<String, u64>,
        active: BTreeSet<String>,
        /// Every (name, id) it was ever given.
        created: Vec<(String, u64)>,
        failures: Vec<String>,
    }

    fn worker(d: &Dmctl, pool: &str, w: usize, start: &std::sync::Barrier) -> Outcome {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((w as u64 + 1) * 0x1000_0001));
        let mut o = Outcome::default();
        let mut n = 0;
        start.wait();
        for _ in 0..OPS_PER_WORKER {
            let names: BTreeSet<String> = o.mine.keys().cloned().collect();
            let r = rng.below(100);
            let target = rng.pick(&names).cloned();
            let (kind, args): (&'static str, Vec<String>) = match (r, &target) {
                (_, None) | (0..=21, _) => {
                    n += 1;
                    let name = format!("w{w}-v{n}");
                    (
                        "create",
                        vec![
                            "create".into(),
                            format!("{pool}/{name}"),
                            "--size".into(),
                            "4M".into(),
                            "--fs".into(),
                            "none".into(),
                        ],
                    )
                }
                (22..=36, Some(t)) => {
                    n += 1;
                    (
                        "snapshot",
                        vec![
                            "snapshot".into(),
                            format!("{pool}/{t}"),
                            format!("{pool}/w{w}-s{n}"),
                        ],
                    )
                }
                (37..=48, Some(t)) => ("activate", vec!["activate".into(), format!("{pool}/{t}")]),
                (49..=60, Some(t)) => (
                    "deactivate",
                    vec!["deactivate".into(), format!("{pool}/{t}")],
                ),
                (61..=75, Some(t)) => ("rm", vec!["rm".into(), format!("{pool}/{t}")]),
                (76..=88, Some(t)) => ("info", vec!["info".into(), format!("{pool}/{t}")]),
                _ => ("ls", vec!["ls".into(), pool.into()]),
            };
            let mut full = vec!["--json".to_string()];
            full.extend(args.iter().cloned());
            let argv: Vec<&str> = full.iter().map(String::as_str).collect();
            let out = d.run(&argv);
            o.ops += 1;
            *o.by_kind.entry(kind).or_default() += 1;
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            if !out.status.success() {
                o.failures.push(format!(
                    "worker {w}: dmctl {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
                continue;
            }
            let json: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
                panic!("worker {w}: dmctl {args:?}: torn JSON ({e}): {stdout}")
            });
            match kind {
                "create" | "snapshot" => {
                    let name = json["name"].as_str().unwrap().to_string();
                    let id = json["device_id"].as_u64().unwrap();
                    o.created.push((name.clone(), id));
                    o.mine.insert(name.clone(), id);
                    if kind == "create" {
                        o.active.insert(name);
                    }
                }
                "activate" => {
                    o.active.insert(target.unwrap());
                }
                "deactivate" => {
                    o.active.remove(&target.unwrap());
                }
                "rm" => {
                    let t = target.unwrap();
                    o.mine.remove(&t);
                    o.active.remove(&t);
                }
                "info" => {
                    let t = target.unwrap();
                    assert_eq!(json["name"], t.as_str(), "worker {w}: info {t}: {json}");
                    assert_eq!(
                        json["device_id"].as_u64(),
                        o.mine.get(&t).copied(),
                        "worker {w}: info {t}: {json}"
                    );
                    assert_eq!(
                        json["active"].as_bool(),
                        Some(o.active.contains(&t)),
                        "worker {w}: info {t}: {json}"
                    );
                }
                _ => {
                    // Its own volumes are all there, with their ids.
                    let listed: BTreeMap<String, u64> = json
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| {
                            (
                                v["name"].as_str().unwrap().to_string(),
                                v["device_id"].as_u64().unwrap(),
                            )
                        })
                        .collect();
                    for (name, id) in &o.mine {
                        assert_eq!(
                            listed.get(name),
                            Some(id),
                            "worker {w}: ls lacks {name} (id {id}): {listed:?}"
                        );
                    }
                }
            }
        }
        o
    }

    #[test]
    fn parallel_mixed_operations() {
        require_dm!("dm_reliability::parallel_mixed_operations");
        let d = Dmctl::new();
        let pool = "rel-par";
        d.ok(&[
            "pool",
            "create",
            pool,
            "--data-size",
            "2G",
            "--meta-size",
            "16M",
        ]);
        let t0 = Instant::now();
        let start = std::sync::Barrier::new(WORKERS);
        let outcomes: Vec<Outcome> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..WORKERS)
                .map(|w| {
                    let (d, start) = (&d, &start);
                    s.spawn(move || worker(d, pool, w, start))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let elapsed = t0.elapsed();

        let ops: usize = outcomes.iter().map(|o| o.ops).sum();
        let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
        for o in &outcomes {
            for (k, n) in &o.by_kind {
                *by_kind.entry(k).or_default() += n;
            }
        }
        let failures: Vec<&String> = outcomes.iter().flat_map(|o| &o.failures).collect();
        report(&format!(
            "parallel: {ops} operations by {WORKERS} processes at once in {:.1} s \
             ({by_kind:?}), {} failed",
            elapsed.as_secs_f64(),
            failures.len()
        ));
        // Nothing holds these volumes: no operation may fail, busy or not.
        assert!(failures.is_empty(), "failed operations: {failures:#?}");
        assert_eq!(ops, WORKERS * OPS_PER_WORKER);

        // No id handed out twice, ever.
        let all: Vec<&(String, u64)> = outcomes.iter().flat_map(|o| &o.created).collect();
        let ids: BTreeSet<u64> = all.iter().map(|(_, id)| *id).collect();
        assert_eq!(
            ids.len(),
            all.len(),
            "a thin id was handed out twice: {all:?}"
        );

        // Every success is reflected: the final ls is what the workers believe.
        let believed: BTreeMap<String, u64> = outcomes
            .iter()
            .flat_map(|o| o.mine.iter().map(|(n, id)| (n.clone(), *id)))
            .collect();
        let active: BTreeSet<String> = outcomes
            .iter()
            .flat_map(|o| o.active.iter().cloned())
            .collect();
        let listed = d.json(&["ls", pool]);
        let listed_ids: BTreeMap<String, u64> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|v| {
                (
                    v["name"].as_str().unwrap().to_string(),
                    v["device_id"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            listed_ids, believed,
            "final ls differs from the workers' view"
        );
        let listed_active: BTreeSet<String> = listed
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["active"] == true)
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(listed_active, active, "active volumes differ");
        report(&format!(
            "parallel: {} volumes left ({} active), {} thin ids handed out, all distinct",
            believed.len(),
            active.len(),
            ids.len()
        ));
        common::check_invariants(&d, pool);
    }

    #[test]
    fn busy_volumes_are_refused_naming_the_holder() {
        require_dm!("dm_reliability::busy_volumes_are_refused_naming_the_holder");
        let d = Dmctl::new();
        let pool = "rel-busy";
        let mnt = tempfile::tempdir().unwrap();
        d.ok(&["pool", "create", pool, "--data-size", "1G"]);
        let mut cases = 0;

        // A process with its cwd inside the mount.
        d.ok(&["create", "rel-busy/v", "--size", "64M"]);
        let mv = mkdir(mnt.path(), "v");
        d.ok(&["mount", "rel-busy/v", mv.to_str().unwrap()]);
        std::fs::create_dir(mv.join("sub")).unwrap();
        std::fs::write(mv.join("keep.txt"), "keep\n").unwrap();
        let h = Holder::spawn(Some(&mv.join("sub")), None);
        let held = format!("held by sleep (pid {}, cwd)", h.pid());
        for (args, what) in [
            (vec!["rm", "rel-busy/v"], "mounted"),
            (vec!["umount", "rel-busy/v"], "busy"),
            (vec!["rm", "rel-busy/v", "--force"], "busy"),
            (vec!["deactivate", "rel-busy/v"], "mounted"),
        ] {
            common::refused(&d, &args, &[what, &held]);
            cases += 1;
        }
        assert_eq!(
            std::fs::read_to_string(mv.join("keep.txt")).unwrap(),
            "keep\n"
        );
        drop(h);
        // Mounted but not busy: --force unmounts and removes it.
        d.ok(&["rm", "rel-busy/v", "--force"]);
        cases += 1;
        assert!(d.fails(&["info", "rel-busy/v"]).contains("not found"));
        assert!(!common::dm_names().iter().any(|n| n.ends_with("+v")));

        // A process with the device node open (not mounted).
        d.ok(&["create", "rel-busy/raw", "--size", "16M", "--fs", "none"]);
        let node = common::devnode(&d, "rel-busy/raw");
        let data = pattern(7, 1 << 20);
        write_dev(&node, &data);
        let h = Holder::spawn(None, Some(Path::new(&node)));
        let held = format!("held by sleep (pid {}, fd 0)", h.pid());
        for args in [
            vec!["rm", "rel-busy/raw"],
            vec!["rm", "rel-busy/raw", "--force"],
            vec!["deactivate", "rel-busy/raw"],
        ] {
            common::refused(&d, &args, &["is open", &held]);
            cases += 1;
        }
        // Nothing was discarded: the holder's data is intact.
        assert_eq!(
            read_dev(&node, data.len()),
            data,
            "rm touched a held device's data"
        );

        // Mounted and its node held open: --force refuses before unmounting.
        d.ok(&["create", "rel-busy/w", "--size", "64M"]);
        let mw = mkdir(mnt.path(), "w");
        d.ok(&["mount", "rel-busy/w", mw.to_str().unwrap()]);
        let wnode = common::devnode(&d, "rel-busy/w");
        let hw = Holder::spawn(None, Some(Path::new(&wnode)));
        common::refused(
            &d,
            &["rm", "rel-busy/w", "--force"],
            &[
                "is open",
                &format!("held by sleep (pid {}, fd 0)", hw.pid()),
            ],
        );
        cases += 1;
        drop(hw);
        d.ok(&["rm", "rel-busy/w", "--force"]);
        cases += 1;

        drop(h);
        d.ok(&["rm", "rel-busy/raw"]);
        cases += 1;
        assert!(d.json(&["ls", pool]).as_array().unwrap().is_empty());
        report(&format!("busy: {cases} cases tried"));
        common::check_invariants(&d, pool);
    }

    /// A loop device on a metadata file, detached on drop: the thin tools
    /// open with O_DIRECT, which files on the guest's tmpfs refuse.
    struct LoopOf(PathBuf);

    impl LoopOf {
        fn new(file: &Path, read_only: bool) -> LoopOf {
            LoopOf(
                dmctl::kernel::loopdev::attach(file, read_only, false)
                    .unwrap()
                    .path,
            )
        }
    }

    impl Drop for LoopOf {
        fn drop(&mut self) {
            let _ = dmctl::kernel::loopdev::detach(&self.0);
        }
    }

    /// thin_dump's devices and mappings of a metadata device (the
    /// superblock line left out: its flags may differ after a repair).
    fn dump_body(dev: &Path) -> Option<String> {
        let out = Command::new("thin_dump").arg(dev).output().unwrap();
        out.status.success().then(|| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| !l.trim_start().starts_with("<superblock"))
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    fn thin_check_ok(dev: &Path) -> bool {
        Command::new("thin_check")
            .arg("-q")
            .arg(dev)
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    fn zero_block(file: &Path, block: u64) {
        common::run(
            "dd",
            &[
                "if=/dev/zero",
                &format!("of={}", file.display()),
                "bs=4096",
                &format!("seek={block}"),
                "count=1",
                "conv=notrunc",
            ],
        );
    }

    /// A non-superblock metadata block whose loss thin_check notices and
    /// thin_repair fully recovers from (tried on copies of `meta`).
    fn repairable_block(meta: &Path, tmp: &Path) -> u64 {
        let want = {
            let l = LoopOf::new(meta, true);
            dump_body(&l.0).expect("thin_dump of the intact metadata")
        };
        let bytes = std::fs::read(meta).unwrap();
        let copy = tmp.join("try.img");
        let out = tmp.join("try.out");
        for b in 1..(bytes.len() / 4096) as u64 {
            let blk = &bytes[b as usize * 4096..(b as usize + 1) * 4096];
            if blk.iter().all(|&x| x == 0) {
                continue;
            }
            std::fs::copy(meta, &copy).unwrap();
            zero_block(&copy, b);
            let input = LoopOf::new(&copy, true);
            if thin_check_ok(&input.0) {
                continue;
            }
            let _ = std::fs::remove_file(&out);
            let f = std::fs::File::create(&out).unwrap();
            f.set_len(bytes.len() as u64).unwrap();
            drop(f);
            let output = LoopOf::new(&out, false);
            let rep = Command::new("thin_repair")
                .arg("-i")
                .arg(&input.0)
                .arg("-o")
                .arg(&output.0)
                .stderr(Stdio::null())
                .status()
                .unwrap();
            if rep.success() && dump_body(&output.0).as_deref() == Some(want.as_str()) {
                return b;
            }
        }
        panic!("no metadata block of {} is repairable", meta.display());
    }

    #[test]
    fn damaged_pool_metadata_is_repaired() {
        require_dm!("dm_reliability::damaged_pool_metadata_is_repaired");
        let d = Dmctl::new();
        let pool = "rel-meta";
        let mnt = tempfile::tempdir().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        d.ok(&["pool", "create", pool, "--data-size", "512M"]);
        d.ok(&["create", "rel-meta/a", "--size", "64M"]);
        let ma = mkdir(mnt.path(), "a");
        d.ok(&["mount", "rel-meta/a", ma.to_str().unwrap()]);
        std::fs::write(ma.join("a.txt"), "origin\n").unwrap();
        d.ok(&["umount", "rel-meta/a"]);
        d.ok(&["snapshot", "rel-meta/a", "rel-meta/s", "--activate"]);
        let ms = mkdir(mnt.path(), "s");
        d.ok(&["mount", "rel-meta/s", ms.to_str().unwrap()]);
        std::fs::write(ms.join("a.txt"), "snapshot\n").unwrap();
        d.ok(&["umount", "rel-meta/s"]);
        d.ok(&["create", "rel-meta/b", "--size", "16M", "--fs", "none"]);
        let data = pattern(42, 3 << 20);
        write_dev(&common::devnode(&d, "rel-meta/b"), &data);
        let meta = PathBuf::from(d.json(&["pool", "status", pool])["meta"].as_str().unwrap());
        let dir = meta.parent().unwrap().to_path_buf();

        common::refused(&d, &["pool", "repair", pool], &["active", "deactivate"]);

        let verify = |d: &Dmctl| {
            for (vol, dir, want) in [
                ("rel-meta/a", &ma, "origin\n"),
                ("rel-meta/s", &ms, "snapshot\n"),
            ] {
                d.ok(&["mount", vol, dir.to_str().unwrap()]);
                assert_eq!(
                    std::fs::read_to_string(dir.join("a.txt")).unwrap(),
                    want,
                    "{vol}"
                );
                d.ok(&["umount", vol]);
            }
            assert_eq!(
                read_dev(&common::devnode(d, "rel-meta/b"), data.len()),
                data,
                "b"
            );
        };

        let mut cases = 0;
        let mut repaired = 0;
        for case in ["btree", "superblock"] {
            d.ok(&["pool", "deactivate", pool]);
            let block = match case {
                "superblock" => 0,
                _ => repairable_block(&meta, tmp.path()),
            };
            let intact = std::fs::read(&meta).unwrap();
            zero_block(&meta, block);
            common::step(&format!("zeroed metadata block {block} ({case})"));
            // Never activated: the kernel would format zeroed metadata
            // afresh, losing every volume.
            let line = common::refused(
                &d,
                &["pool", "activate", pool],
                &["thin_check", "dmctl pool repair rel-meta"],
            );
            assert!(
                !common::dm_names().iter().any(|n| n.contains("rel-meta")),
                "{line}"
            );
            let before: BTreeSet<PathBuf> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            let damaged_bytes = std::fs::read(&meta).unwrap();
            let out = d.run(&["pool", "repair", pool]);
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            let after: BTreeSet<PathBuf> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            if !out.status.success() {
                // thin_repair may not manage (0.9 needs the superblock's
                // fields, and may still fail): a clean refusal that
                // changes nothing is the honest outcome then.
                assert_eq!(case, "superblock", "repair failed: {stderr}");
                assert_eq!(out.status.code(), Some(1), "{stderr}");
                assert_eq!(stderr.lines().count(), 1, "{stderr}");
                assert!(stderr.contains("left as it was"), "{stderr}");
                assert_eq!(before, after, "repair left files behind");
                assert!(std::fs::read(&meta).unwrap() == damaged_bytes);
                report(&format!(
                    "pool repair ({case}) refused cleanly: {}",
                    stderr.trim()
                ));
                std::fs::write(&meta, &intact).unwrap();
                common::step("restored the saved metadata block");
            } else {
                report(&format!("pool repair ({case}): {}", stdout.trim()));
                repaired += 1;
                let new: Vec<&PathBuf> = after.difference(&before).collect();
                assert!(
                    new.len() == 1 && new[0].to_string_lossy().contains("meta.img.damaged-"),
                    "{new:?}"
                );
                assert!(!dir.join("meta.img.repaired").exists());
                assert!(thin_check_ok(&LoopOf::new(&meta, true).0));
            }
            d.ok(&["pool", "activate", pool]);
            verify(&d);
            common::check_invariants(&d, pool);
            // The next case's damaged copy must be a new name.
            std::thread::sleep(Duration::from_millis(1100));
            cases += 1;
        }
        assert!(repaired >= 1);
        report(&format!(
            "metadata repair: {cases} corruptions tried, {repaired} repaired, data intact"
        ));
    }

    /// `dmctl --json check POOL [--repair]`: exit code and the report.
    fn check_json(d: &Dmctl, pool: &str, repair: bool) -> (i32, serde_json::Value) {
        let mut args = vec!["--json", "check", pool];
        if repair {
            args.push("--repair");
        }
        let out = d.run(&args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let v = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "check {args:?}: bad JSON {e}: {text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap(), v)
    }

    #[test]
    fn corrupt_volume_records_are_rebuilt() {
        require_dm!("dm_reliability::corrupt_volume_records_are_rebuilt");
        let d = Dmctl::new();
        let pool = "rel-json";
        let mnt = tempfile::tempdir().unwrap();
        d.ok(&["pool", "create", pool, "--data-size", "512M"]);
        let mut orig = BTreeMap::new();
        for (vol, content) in [("a", "alpha\n"), ("b", "beta\n")] {
            let v = d.json(&["create", &format!("rel-json/{vol}"), "--size", "64M"]);
            orig.insert(vol, v);
            let m = mkdir(mnt.path(), vol);
            d.ok(&["mount", &format!("rel-json/{vol}"), m.to_str().unwrap()]);
            std::fs::write(m.join("f.txt"), content).unwrap();
            d.ok(&["umount", &format!("rel-json/{vol}")]);
        }
        d.ok(&["create", "rel-json/c", "--size", "8M", "--fs", "none"]);
        // a stays active; b is inactive.
        d.ok(&["deactivate", "rel-json/b"]);
        let devices = d.state_root().join("pools/rel-json/devices");
        let a_json = devices.join("a.json");
        let b_json = devices.join("b.json");
        let text = std::fs::read_to_string(&a_json).unwrap();
        std::fs::write(&a_json, &text[..text.len() / 2]).unwrap();
        std::fs::write(&b_json, b"\x00\xffnot json at all\n{{{\x01").unwrap();

        let mut cases = 0;
        for (args, file) in [
            (vec!["info", "rel-json/a"], &a_json),
            (vec!["ls", "rel-json"], &a_json),
            (vec!["rm", "rel-json/b"], &b_json),
            (vec!["activate", "rel-json/b"], &b_json),
            (vec!["mount", "rel-json/a", "/mnt"], &a_json),
            (vec!["snapshot", "rel-json/b", "rel-json/b2"], &b_json),
            (vec!["pool", "activate", "rel-json"], &a_json),
        ] {
            common::refused(&d, &args, &["corrupt", file.to_str().unwrap()]);
            cases += 1;
        }
        let (code, r) = check_json(&d, pool, false);
        assert_eq!(code, 1, "{r}");
        assert_eq!(r["corrupt_files"].as_array().unwrap().len(), 2, "{r}");
        cases += 1;

        let (code, r) = check_json(&d, pool, true);
        common::step(&format!("check --repair: {r}"));
        assert_eq!(code, 0, "{r}");
        let notes = r["repaired"].to_string();
        assert!(notes.contains("moved the unreadable"), "{notes}");
        assert!(notes.contains("from its active dm table"), "{notes}");
        assert!(!notes.contains("deleted orphan"), "{notes}");
        let asides: Vec<String> = std::fs::read_dir(&devices)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".json.corrupt-"))
            .collect();
        assert_eq!(asides.len(), 2, "{asides:?}");
        for vol in ["a", "b"] {
            let now = d.json(&["info", &format!("rel-json/{vol}")]);
            for key in ["device_id", "size", "fs"] {
                assert_eq!(now[key], orig[vol][key], "{vol}: {key}: {now}");
            }
        }
        assert_eq!(d.json(&["info", "rel-json/a"])["active"], true);
        assert_eq!(d.json(&["info", "rel-json/b"])["active"], false);
        for (vol, content) in [("a", "alpha\n"), ("b", "beta\n")] {
            let m = mnt.path().join(vol);
            d.ok(&["mount", &format!("rel-json/{vol}"), m.to_str().unwrap()]);
            assert_eq!(std::fs::read_to_string(m.join("f.txt")).unwrap(), content);
            d.ok(&["umount", &format!("rel-json/{vol}")]);
        }
        cases += 1;
        report(&format!("corrupt records: {cases} cases tried"));
        common::check_invariants(&d, pool);
    }

    #[test]
    fn unpairable_corrupt_records_keep_their_thin_ids() {
        require_dm!("dm_reliability::unpairable_corrupt_records_keep_their_thin_ids");
        let d = Dmctl::new();
        let pool = "rel-orph";
        d.ok(&["pool", "create", pool, "--data-size", "512M"]);
        for vol in ["x", "y"] {
            d.ok(&[
                "create",
                &format!("rel-orph/{vol}"),
                "--size",
                "8M",
                "--fs",
                "none",
            ]);
            d.ok(&["deactivate", &format!("rel-orph/{vol}")]);
        }
        let devices = d.state_root().join("pools/rel-orph/devices");
        for vol in ["x", "y"] {
            std::fs::write(devices.join(format!("{vol}.json")), b"garbage\n").unwrap();
        }
        // Two records, two ids, nothing to tell them apart: keep both ids.
        let (code, r) = check_json(&d, pool, true);
        common::step(&format!("check --repair: {r}"));
        assert_eq!(code, 1, "{r}");
        assert_eq!(r["orphan_ids"].as_array().unwrap().len(), 2, "{r}");
        assert!(
            r["repaired"].to_string().contains("kept orphan thin id"),
            "{r}"
        );
        assert!(!r["repaired"].to_string().contains("deleted orphan"), "{r}");
        // Still kept on a second run, and with one of the files gone.
        let aside = |vol: &str| {
            std::fs::read_dir(&devices)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| {
                    p.file_name()
                        .unwrap()
                        .to_string_lossy()
                        .starts_with(&format!("{vol}.json.corrupt-"))
                })
                .unwrap()
        };
        std::fs::remove_file(aside("y")).unwrap();
        let (code, r) = check_json(&d, pool, true);
        assert_eq!(code, 1, "{r}");
        assert_eq!(r["orphan_ids"].as_array().unwrap().len(), 2, "{r}");
        // The user gives up on the data: the ids go.
        std::fs::remove_file(aside("x")).unwrap();
        let (code, r) = check_json(&d, pool, true);
        assert_eq!(code, 0, "{r}");
        assert!(
            r["repaired"].to_string().contains("deleted orphan thin id"),
            "{r}"
        );
        common::check_invariants(&d, pool);
    }
}
