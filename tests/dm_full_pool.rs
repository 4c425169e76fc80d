//! Full pools, in the guest: data or metadata space running out while
//! volumes are written. No writer hangs past a bound, dmctl reports the
//! state without hanging, refuses new thin devices below the (configurable)
//! threshold, and `pool extend` or `pool monitor` brings the pool back, with
//! what was written intact. (dm_cli_errors covers the basic out-of-data-space
//! cases; this file adds what they do not.)
//!
//! Every test lives in `mod dm_full_pool`: `./vm-tests/guest-tests dm_full_pool`.

mod common;

mod dm_full_pool {
    use super::common::{self, Dmctl};
    use crate::require_dm;
    use sha2::{Digest, Sha256};
    use std::io::Read;
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    const MIB: u64 = 1 << 20;

    /// A figure for the record: on stderr past libtest's capture, so it shows
    /// for passing tests too.
    fn note(msg: &str) {
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "==> {msg}");
    }

    /// The kernel's dm messages so far.
    fn dmesg_lines() -> Vec<String> {
        let out = Command::new("dmesg")
            .output()
            .or_else(|_| Command::new("busybox").arg("dmesg").output());
        match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.contains("thin") || l.contains("device-mapper"))
                .map(str::to_string)
                .collect(),
            Err(_) => vec![],
        }
    }
    const NO_SPACE_TIMEOUT: &str = "/sys/module/dm_thin_pool/parameters/no_space_timeout";

    /// A child process killed on drop.
    struct Proc(Child);

    impl Proc {
        fn wait_for(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
            let t0 = Instant::now();
            loop {
                if let Some(st) = self.0.try_wait().unwrap() {
                    return Some(st);
                }
                if t0.elapsed() > limit {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }

        fn stderr(&mut self) -> String {
            let mut s = String::new();
            if let Some(e) = self.0.stderr.as_mut() {
                let _ = e.read_to_string(&mut s);
            }
            s
        }
    }

    impl Drop for Proc {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn dd(args: &[&str]) -> Proc {
        Proc(
            Command::new("dd")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn dd"),
        )
    }

    /// `dmctl ARGS` that must finish within `limit` (killed otherwise):
    /// (exit ok, stdout, how long it took).
    fn timed(d: &Dmctl, args: &[&str], limit: Duration) -> (bool, String, Duration) {
        let t0 = Instant::now();
        let mut p = Proc(
            Command::new(env!("CARGO_BIN_EXE_dmctl"))
                .arg("--root")
                .arg(d.state_root())
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let st = p.wait_for(limit);
        let took = t0.elapsed();
        let st = st.unwrap_or_else(|| panic!("dmctl {args:?} hangs: no exit after {limit:?}"));
        let mut out = String::new();
        p.0.stdout
            .as_mut()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let err = p.stderr();
        assert!(st.success(), "dmctl {args:?} failed: {out}{err}");
        (st.success(), out, took)
    }

    fn status(d: &Dmctl, pool: &str) -> serde_json::Value {
        d.json(&["pool", "status", pool])
    }

    fn wait_mode(d: &Dmctl, pool: &str, want: &str, limit: Duration) -> serde_json::Value {
        let t0 = Instant::now();
        loop {
            let st = status(d, pool);
            if st["mode"] == want || t0.elapsed() > limit {
                return st;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn refused(d: &Dmctl, args: &[&str], expect: &[&str]) -> String {
        let line = d.fails(args);
        for e in expect {
            assert!(
                line.contains(e),
                "dmctl {args:?}: error should say '{e}': {line}"
            );
        }
        note(&format!("refused {args:?}: {line}"));
        line
    }

    /// Deterministic bytes for chunk `i` (xorshift), so what was written can
    /// be checked without keeping it.
    fn pattern(i: u64, len: usize) -> Vec<u8> {
        let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut v = Vec::with_capacity(len);
        while v.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.truncate(len);
        v
    }

    /// A 4K-aligned buffer for O_DIRECT.
    struct Aligned {
        raw: Vec<u8>,
        off: usize,
        len: usize,
    }

    impl Aligned {
        fn new(len: usize) -> Aligned {
            let raw = vec![0u8; len + 4096];
            let off = (4096 - raw.as_ptr() as usize % 4096) % 4096;
            Aligned { raw, off, len }
        }
        fn buf(&mut self) -> &mut [u8] {
            &mut self.raw[self.off..self.off + self.len]
        }
    }

    fn open_direct(dev: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(dev)
            .unwrap_or_else(|e| panic!("open {dev}: {e}"))
    }

    fn sha256_of(path: &Path, len: u64) -> String {
        let mut f = std::fs::File::open(path).unwrap();
        let mut h = Sha256::new();
        let mut buf = vec![0u8; MIB as usize];
        let mut left = len;
        while left > 0 {
            let n = f.read(&mut buf[..left.min(MIB) as usize]).unwrap();
            assert!(n > 0, "{} is shorter than {len}", path.display());
            h.update(&buf[..n]);
            left -= n as u64;
        }
        hex::encode(h.finalize())
    }

    /// Restores the kernel's no_space_timeout on drop.
    struct NoSpaceTimeout(String);

    impl NoSpaceTimeout {
        fn set(secs: u32) -> NoSpaceTimeout {
            let old = std::fs::read_to_string(NO_SPACE_TIMEOUT).unwrap();
            std::fs::write(NO_SPACE_TIMEOUT, secs.to_string()).unwrap();
            NoSpaceTimeout(old.trim().to_string())
        }
    }

    impl Drop for NoSpaceTimeout {
        fn drop(&mut self) {
            let _ = std::fs::write(NO_SPACE_TIMEOUT, &self.0);
        }
    }

    fn no_space_timeout() -> u64 {
        std::fs::read_to_string(NO_SPACE_TIMEOUT)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    #[test]
    fn free_space_threshold_is_configurable() {
        require_dm!("dm_full_pool::free_space_threshold_is_configurable");
        let d = Dmctl::new();
        let out = d.run(&[
            "pool",
            "create",
            "fp-thr",
            "--data-size",
            "64M",
            "--min-free",
            "91",
        ]);
        assert_eq!(out.status.code(), Some(2), "--min-free 91 is a usage error");
        d.ok(&[
            "pool",
            "create",
            "fp-thr",
            "--data-size",
            "64M",
            "--min-free",
            "30",
        ]);
        assert_eq!(status(&d, "fp-thr")["min_free_percent"], 30);
        d.ok(&["create", "fp-thr/v", "--size", "1G", "--fs", "none"]);
        let dev = common::devnode(&d, "fp-thr/v");
        let of = format!("of={dev}");
        let mut w = dd(&["if=/dev/urandom", &of, "bs=1M", "count=40", "oflag=direct"]);
        assert!(w.wait_for(Duration::from_secs(120)).unwrap().success());
        // 40M of 64M used: 37% free, above 30%.
        d.ok(&["snapshot", "fp-thr/v", "fp-thr/s1"]);
        let mut w = dd(&[
            "if=/dev/urandom",
            &of,
            "bs=1M",
            "seek=40",
            "count=10",
            "oflag=direct",
        ]);
        assert!(w.wait_for(Duration::from_secs(120)).unwrap().success());
        let st = status(&d, "fp-thr");
        note(&format!("used {} of {}", st["data_used"], st["data_size"]));
        refused(
            &d,
            &["snapshot", "fp-thr/v", "fp-thr/s2"],
            &["below its 30% threshold"],
        );
        refused(
            &d,
            &["create", "fp-thr/w", "--size", "64M", "--fs", "none"],
            &["below its 30% threshold", "pool extend"],
        );
        refused(&d, &["pool", "set", "fp-thr"], &["nothing to set"]);
        let out = d.run(&["pool", "set", "fp-thr", "--min-free", "95"]);
        assert_eq!(out.status.code(), Some(2), "--min-free 95 is a usage error");
        let rec = d.json(&["pool", "set", "fp-thr", "--min-free", "15"]);
        assert_eq!(rec["min_free_percent"], 15);
        let pool_json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(d.state_root().join("pools/fp-thr/pool.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(pool_json["min_free_percent"], 15, "stored in pool.json");
        assert_eq!(status(&d, "fp-thr")["min_free_percent"], 15);
        d.ok(&["snapshot", "fp-thr/v", "fp-thr/s2"]);
        // The low-water mark can be set too (a live table reload).
        let rec = d.json(&["pool", "set", "fp-thr", "--low-water-mark", "8M"]);
        assert_eq!(rec["low_water_mark"], 8 * MIB);
        let table = common::run("dmsetup", &["--noudevsync", "table", "dmctl+fp-thr"]);
        let lw_blocks = table.split_whitespace().nth(6).unwrap();
        assert_eq!(lw_blocks, "128", "8M of 64K blocks in the table: {table}");
        common::check_invariants(&d, "fp-thr");
    }

    /// A queue-mode pool runs out of data space under a writer of random
    /// data: the writer waits, `ls`, `pool ls`, `pool status` and `info`
    /// answer at once, and after `pool extend` the writer completes and the
    /// volume holds exactly what it wrote.
    #[test]
    fn queued_writer_completes_after_extend_and_ls_does_not_hang() {
        require_dm!("dm_full_pool::queued_writer_completes_after_extend_and_ls_does_not_hang");
        let timeout = no_space_timeout();
        note(&format!("no_space_timeout is {timeout}s"));
        let d = Dmctl::new();
        d.ok(&["pool", "create", "fp-q", "--data-size", "64M"]);
        d.ok(&["create", "fp-q/v", "--size", "1G", "--fs", "none"]);
        let dev = common::devnode(&d, "fp-q/v");
        let src: PathBuf = d.state_root().join("src.bin");
        let len = 160 * MIB;
        {
            let mut f = std::fs::File::create(&src).unwrap();
            for i in 0..len / MIB {
                std::io::Write::write_all(&mut f, &pattern(i, MIB as usize)).unwrap();
            }
        }
        let want = sha256_of(&src, len);
        let t0 = Instant::now();
        let mut w = dd(&[
            &format!("if={}", src.display()),
            &format!("of={dev}"),
            "bs=1M",
            "oflag=direct",
            "conv=fsync",
        ]);
        let st = wait_mode(&d, "fp-q", "out_of_data_space", Duration::from_secs(30));
        assert_eq!(st["mode"], "out_of_data_space", "{st}");
        let t_full = t0.elapsed();
        assert!(
            w.0.try_wait().unwrap().is_none(),
            "the writer should be queued"
        );
        let limit = Duration::from_secs(10);
        let mut took = vec![];
        for args in [
            vec!["ls"],
            vec!["ls", "fp-q"],
            vec!["ls", "--tree"],
            vec!["--json", "pool", "ls"],
            vec!["pool", "status", "fp-q"],
            vec!["info", "fp-q/v"],
        ] {
            let (_, out, t) = timed(&d, &args, limit);
            if args.contains(&"pool") {
                assert!(out.contains("out_of_data_space"), "{args:?}: {out}");
            }
            took.push(format!("{} {:.2}s", args.join(" "), t.as_secs_f64()));
        }
        note(&format!("while full: {}", took.join(", ")));
        refused(
            &d,
            &["snapshot", "fp-q/v", "fp-q/s"],
            &["out of data space", "--data-size"],
        );
        let queued = t0.elapsed() - t_full;
        assert!(
            queued.as_secs() + 5 < timeout,
            "the checks took {queued:?}: too close to the kernel's no_space_timeout ({timeout}s)"
        );
        assert!(
            w.0.try_wait().unwrap().is_none(),
            "the writer should still be queued"
        );
        let te = Instant::now();
        d.ok(&["pool", "extend", "fp-q", "--data-size", "256M"]);
        let done = w
            .wait_for(Duration::from_secs(60))
            .expect("the queued writer did not finish after the extend");
        let stderr = w.stderr();
        assert!(
            done.success(),
            "queued writer failed after the extend: {stderr}"
        );
        note(&format!(
            "full after {:.1}s, queued {:.1}s, writer done {:.1}s after the extend",
            t_full.as_secs_f64(),
            queued.as_secs_f64(),
            te.elapsed().as_secs_f64()
        ));
        assert_eq!(status(&d, "fp-q")["mode"], "rw");
        assert_eq!(
            sha256_of(Path::new(&dev), len),
            want,
            "data lost or damaged"
        );
        d.ok(&["snapshot", "fp-q/v", "fp-q/s"]);
        common::check_invariants(&d, "fp-q");
    }

    /// A queue-mode pool that stays full: the kernel errors the queued
    /// writes after no_space_timeout (lowered here to 5 s, restored after),
    /// reports error_if_no_space from then on, and an extend brings it back
    /// to rw and to queueing.
    #[test]
    fn queued_writer_gets_an_error_after_no_space_timeout() {
        require_dm!("dm_full_pool::queued_writer_gets_an_error_after_no_space_timeout");
        let _guard = NoSpaceTimeout::set(5);
        let d = Dmctl::new();
        d.ok(&["pool", "create", "fp-nst", "--data-size", "64M"]);
        d.ok(&["create", "fp-nst/v", "--size", "1G", "--fs", "none"]);
        let dev = common::devnode(&d, "fp-nst/v");
        let of = format!("of={dev}");
        let mut w = dd(&["if=/dev/zero", &of, "bs=1M", "count=200", "oflag=direct"]);
        let st = wait_mode(&d, "fp-nst", "out_of_data_space", Duration::from_secs(30));
        assert_eq!(st["mode"], "out_of_data_space", "{st}");
        let t_full = Instant::now();
        let done = w
            .wait_for(Duration::from_secs(40))
            .expect("the queued writer still hangs 40s after the pool filled (timeout 5s)");
        let errored = t_full.elapsed();
        assert!(!done.success(), "200M into a 64M pool succeeded");
        let stderr = w.stderr();
        note(&format!(
            "writer failed {:.1}s after the pool filled: {}",
            errored.as_secs_f64(),
            stderr.lines().next().unwrap_or("")
        ));
        let st = status(&d, "fp-nst");
        assert_eq!(st["mode"], "out_of_data_space", "{st}");
        assert_eq!(st["no_space_policy"], "error", "after the timeout: {st}");
        let (_, _, t) = timed(&d, &["ls", "fp-nst"], Duration::from_secs(10));
        note(&format!("ls took {:.2}s", t.as_secs_f64()));
        d.ok(&["pool", "extend", "fp-nst", "--data-size", "256M"]);
        let st = wait_mode(&d, "fp-nst", "rw", Duration::from_secs(10));
        assert_eq!(st["mode"], "rw", "{st}");
        assert_eq!(st["no_space_policy"], "queue", "back to queueing: {st}");
        let mut w = dd(&["if=/dev/zero", &of, "bs=1M", "count=16", "oflag=direct"]);
        assert!(w.wait_for(Duration::from_secs(60)).unwrap().success());
        common::check_invariants(&d, "fp-nst");
    }

    /// Metadata runs out: a pool with 2M of metadata, 64K blocks and 16G of
    /// data, one 4K write per block until the kernel stops provisioning.
    #[test]
    fn metadata_exhaustion_and_live_metadata_resize() {
        require_dm!("dm_full_pool::metadata_exhaustion_and_live_metadata_resize");
        let d = Dmctl::new();
        d.ok(&[
            "pool",
            "create",
            "fp-meta",
            "--data-size",
            "64G",
            "--meta-size",
            "2M",
            "--block-size",
            "64K",
        ]);
        d.ok(&["create", "fp-meta/v", "--size", "64G", "--fs", "none"]);
        let dmesg0 = dmesg_lines().len();
        let dev = common::devnode(&d, "fp-meta/v");
        let f = open_direct(&dev);
        let mut buf = Aligned::new(4096);
        let block = 64 * 1024u64;
        let t0 = Instant::now();
        let (mut written, mut synced) = (0u64, 0u64);
        let mut failure = None;
        'fill: while written < 200_000 {
            for _ in 0..4096 {
                let p = pattern(written, 4096);
                buf.buf().copy_from_slice(&p);
                if let Err(e) = f.write_at(buf.buf(), written * block) {
                    failure = Some(e);
                    break 'fill;
                }
                written += 1;
            }
            if f.sync_all().is_err() {
                break;
            }
            synced = written;
            let st = status(&d, "fp-meta");
            if st["mode"] != "rw" {
                break;
            }
        }
        let took = t0.elapsed();
        let st = status(&d, "fp-meta");
        note(&format!(
            "{written} blocks written ({synced} synced) in {:.1}s; write error: {failure:?}; \
             status: mode {} meta {}/{} needs_check {} data {}",
            took.as_secs_f64(),
            st["mode"],
            st["meta_used"],
            st["meta_size"],
            st["needs_check"],
            st["data_used"]
        ));
        note(&format!(
            "kernel: {:#?}",
            dmesg_lines().into_iter().skip(dmesg0).collect::<Vec<_>>()
        ));
        assert!(
            failure.is_some() || st["mode"] != "rw",
            "metadata never ran out"
        );
        let failed = st["mode"] == "fail";
        if !failed {
            assert_eq!(st["mode"], "ro", "{st}");
            let (mu, ms) = (
                st["meta_used"].as_u64().unwrap(),
                st["meta_size"].as_u64().unwrap(),
            );
            assert_eq!(ms, 2 * MIB);
            assert!(mu * 10 >= ms * 8, "metadata not nearly full: {mu}/{ms}");
        }
        // A write that needs a new block fails at once (no hang).
        let tw = Instant::now();
        let r = f.write_at(buf.buf(), (written + 10) * block);
        assert!(
            r.is_err(),
            "a new block was provisioned in a read-only pool"
        );
        note(&format!(
            "a new write fails in {:.3}s: {:?}",
            tw.elapsed().as_secs_f64(),
            r.err()
        ));
        let mut took = vec![];
        for args in [
            vec!["ls"],
            vec!["--json", "pool", "ls"],
            vec!["pool", "status", "fp-meta"],
        ] {
            let (_, _, t) = timed(&d, &args, Duration::from_secs(10));
            took.push(format!("{} {:.2}s", args.join(" "), t.as_secs_f64()));
        }
        note(&format!("while out of metadata: {}", took.join(", ")));
        let needs_check = st["needs_check"] == true;
        let expect: &[&str] = if failed {
            &["fail mode", "pool activate", "--meta-size"]
        } else if needs_check {
            &["needs a check", "pool activate"]
        } else {
            &["out of metadata space", "--meta-size"]
        };
        refused(
            &d,
            &["create", "fp-meta/w", "--size", "1G", "--fs", "none"],
            expect,
        );
        refused(&d, &["snapshot", "fp-meta/v", "fp-meta/s"], expect);
        drop(f);

        let te = Instant::now();
        let out = d.run(&["pool", "extend", "fp-meta", "--meta-size", "16M"]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if failed {
            // Nor a failed one: the size is recorded, an activation loads it.
            assert!(!out.status.success());
            assert!(stderr.contains("fail mode"), "{stderr}");
            d.ok(&["pool", "deactivate", "fp-meta"]);
            let act = d.run(&["pool", "activate", "fp-meta"]);
            note(&format!(
                "activate after fail: {}{}",
                String::from_utf8_lossy(&act.stdout),
                String::from_utf8_lossy(&act.stderr)
            ));
            if !act.status.success() {
                d.ok(&["pool", "repair", "fp-meta"]);
                d.ok(&["pool", "activate", "fp-meta"]);
            }
        } else if needs_check {
            // The kernel grows no needs_check pool: dmctl says so, and a
            // deactivate + activate (thin_check --clear-needs-check-flag)
            // loads it at the recorded size.
            assert!(!out.status.success());
            assert!(stderr.contains("needs_check"), "{stderr}");
            d.ok(&["pool", "deactivate", "fp-meta"]);
            d.ok(&["pool", "activate", "fp-meta"]);
        } else {
            assert!(out.status.success(), "extend failed: {stderr}");
        }
        let st = wait_mode(&d, "fp-meta", "rw", Duration::from_secs(10));
        note(&format!(
            "after extend ({:.2}s, fail {failed}, needs_check {needs_check}): mode {} meta {}/{}",
            te.elapsed().as_secs_f64(),
            st["mode"],
            st["meta_used"],
            st["meta_size"]
        ));
        assert_eq!(st["mode"], "rw", "{st}");
        assert_eq!(st["meta_size"], 16 * MIB, "{st}");
        assert_eq!(status(&d, "fp-meta")["needs_check"], false);
        let meta_img = d.state_root().join("pools/fp-meta/meta.img");
        assert_eq!(std::fs::metadata(&meta_img).unwrap().len(), 16 * MIB);

        // Everything synced before the pool stopped is there.
        let dev = common::devnode(&d, "fp-meta/v");
        let f = open_direct(&dev);
        let mut bad = vec![];
        for i in 0..synced {
            f.read_at(buf.buf(), i * block).unwrap();
            if buf.buf()[..] != pattern(i, 4096)[..] {
                bad.push(i);
            }
        }
        assert!(
            bad.is_empty(),
            "{} of {synced} synced blocks differ: {:?}",
            bad.len(),
            &bad[..bad.len().min(10)]
        );
        // And it takes new blocks, volumes and snapshots again.
        for i in written + 100..written + 2100 {
            buf.buf().copy_from_slice(&pattern(i, 4096));
            f.write_at(buf.buf(), i * block).unwrap();
        }
        f.sync_all().unwrap();
        drop(f);
        d.ok(&["create", "fp-meta/w", "--size", "1G", "--fs", "none"]);
        d.ok(&["snapshot", "fp-meta/v", "fp-meta/s"]);
        common::check_invariants(&d, "fp-meta");
    }

    /// `pool monitor --once`: extends data at the threshold, metadata at the
    /// threshold, nothing below it; refuses nothing else.
    #[test]
    fn monitor_once_extends_data_and_metadata() {
        require_dm!("dm_full_pool::monitor_once_extends_data_and_metadata");
        let d = Dmctl::new();
        d.ok(&[
            "pool",
            "create",
            "fp-mon1",
            "--data-size",
            "64M",
            "--meta-size",
            "2M",
        ]);
        d.ok(&["create", "fp-mon1/v", "--size", "1G", "--fs", "none"]);
        let r = d.json(&["pool", "monitor", "fp-mon1", "--once"]);
        assert!(
            r["data_extended_to"].is_null() && r["meta_extended_to"].is_null(),
            "{r}"
        );
        // Metadata: at a 1% threshold the few percent a new pool uses count
        // (and its data, none used, does not).
        let r = d.json(&["pool", "monitor", "fp-mon1", "--once", "--threshold", "1"]);
        note(&format!("monitor --once --threshold 1: {r}"));
        assert!(r["data_extended_to"].is_null(), "{r}");
        let meta = r["meta_extended_to"]
            .as_u64()
            .expect("metadata not extended");
        assert!(meta > 2 * MIB, "{r}");
        let st = status(&d, "fp-mon1");
        assert_eq!(st["meta_size"], meta, "{st}");
        assert_eq!(st["data_size"], 64 * MIB, "{st}");
        assert_eq!(st["mode"], "rw");
        let meta_img = d.state_root().join("pools/fp-mon1/meta.img");
        assert_eq!(std::fs::metadata(&meta_img).unwrap().len(), meta);
        let dev = common::devnode(&d, "fp-mon1/v");
        let mut w = dd(&[
            "if=/dev/urandom",
            &format!("of={dev}"),
            "bs=1M",
            "count=56",
            "oflag=direct",
        ]);
        assert!(w.wait_for(Duration::from_secs(120)).unwrap().success());
        let r = d.json(&["pool", "monitor", "fp-mon1", "--once"]);
        note(&format!("monitor --once at 87%: {r}"));
        let new = r["data_extended_to"].as_u64().expect("data not extended");
        assert!(new > 64 * MIB && 56 * MIB * 100 < new * 80, "{r}");
        assert!(r["meta_extended_to"].is_null(), "{r}");
        let st = status(&d, "fp-mon1");
        assert_eq!(st["data_size"], new);
        let data_img = d.state_root().join("pools/fp-mon1/data.img");
        assert_eq!(std::fs::metadata(&data_img).unwrap().len(), new);
        let r = d.json(&["pool", "monitor", "fp-mon1", "--once"]);
        assert!(
            r["data_extended_to"].is_null(),
            "below the threshold now: {r}"
        );
        let usage = d.run(&["pool", "monitor", "fp-mon1", "--threshold", "100"]);
        assert_eq!(usage.status.code(), Some(2));
        common::check_invariants(&d, "fp-mon1");
    }

    /// `pool monitor` in the background on a 256M pool; a writer writes
    /// 230M: the monitor extends the pool before it fills, the writer
    /// completes, the data is intact.
    #[test]
    fn monitor_extends_before_the_pool_fills() {
        require_dm!("dm_full_pool::monitor_extends_before_the_pool_fills");
        let d = Dmctl::new();
        d.ok(&["pool", "create", "fp-mon", "--data-size", "256M"]);
        d.ok(&["create", "fp-mon/v", "--size", "1G", "--fs", "none"]);
        let dev = common::devnode(&d, "fp-mon/v");
        let dmesg0 = dmesg_lines().len();
        let log = d.state_root().join("monitor.log");
        let mut mon = Proc(
            Command::new(env!("CARGO_BIN_EXE_dmctl"))
                .arg("--root")
                .arg(d.state_root())
                .args(["pool", "monitor", "fp-mon", "--interval", "5"])
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        // Started: it reports its first check (and sets the low-water mark).
        let t0 = Instant::now();
        while std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
            < 2
        {
            assert!(
                mon.0.try_wait().unwrap().is_none(),
                "monitor exited: {}",
                mon.stderr()
            );
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "monitor does not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let st = status(&d, "fp-mon");
        assert_eq!(
            st["low_water_mark"],
            256 * MIB / 100 * 20 / (64 << 10) * (64 << 10),
            "{st}"
        );

        let len = 230 * MIB;
        let devp = dev.clone();
        let writer = std::thread::spawn(move || {
            let f = open_direct(&devp);
            let mut buf = Aligned::new(MIB as usize);
            let mut h = Sha256::new();
            let t0 = Instant::now();
            for i in 0..len / MIB {
                let p = pattern(i, MIB as usize);
                h.update(&p);
                buf.buf().copy_from_slice(&p);
                f.write_all_at(buf.buf(), i * MIB).unwrap();
            }
            f.sync_all().unwrap();
            (hex::encode(h.finalize()), t0.elapsed())
        });
        let t0 = Instant::now();
        let (mut crossed, mut extended) = (None, None);
        let mut modes = std::collections::BTreeSet::new();
        let mut max_pct = 0;
        while !writer.is_finished() {
            let st = status(&d, "fp-mon");
            let (u, s) = (
                st["data_used"].as_u64().unwrap(),
                st["data_size"].as_u64().unwrap(),
            );
            modes.insert(st["mode"].as_str().unwrap_or("?").to_string());
            max_pct = max_pct.max(u * 100 / s);
            if crossed.is_none() && u * 100 >= s * 80 {
                crossed = Some(t0.elapsed());
            }
            if extended.is_none() && s > 256 * MIB {
                extended = Some(t0.elapsed());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(300),
                "writer hangs: {st}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let (want, wtook) = writer.join().expect("writer failed");
        let kernel: Vec<String> = dmesg_lines().into_iter().skip(dmesg0).collect();
        let st = status(&d, "fp-mon");
        let text = std::fs::read_to_string(&log).unwrap();
        note(&format!(
            "writer: 230M in {:.1}s; seen >=80% at {crossed:?}, extended seen at {extended:?}; \
             max usage seen {max_pct}%; modes seen {modes:?}; now {}/{}\nmonitor log:\n{text}\nkernel: {kernel:#?}",
            wtook.as_secs_f64(),
            st["data_used"],
            st["data_size"]
        ));
        assert!(
            mon.0.try_wait().unwrap().is_none(),
            "monitor died: {}",
            mon.stderr()
        );
        drop(mon);
        assert!(
            st["data_size"].as_u64().unwrap() > 256 * MIB,
            "never extended: {st}"
        );
        assert!(text.contains("extended data to"), "{text}");
        assert!(
            !modes.contains("out_of_data_space"),
            "the pool filled before the monitor extended it: {modes:?}"
        );
        assert_eq!(st["mode"], "rw");
        assert_eq!(
            sha256_of(Path::new(&dev), len),
            want,
            "data lost or damaged"
        );
        common::check_invariants(&d, "fp-mon");
    }
}
