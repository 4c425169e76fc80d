//! Snapshot create+activate latency with 10, 100 and 1000 existing thin
//! volumes in the pool, for four contenders (issue 3). Run inside the test
//! guest by `vm-tests/bench`; see docs/benchmarks.md.
//!
//! Contenders, each on its own pool (own sparse files and loop devices):
//! - floor:  `floor_snapshot` (examples/floor_snapshot.rs), one process and
//!   four dm ioctls per snapshot: the kernel's cost plus one process start.
//! - script: `sh snap.sh ...` running `dmsetup message POOL 0 "create_snap"` and
//!   `dmsetup create --noudevsync --table ...` (three process starts).
//! - dmctl:  `dmctl --root R snapshot P/base P/sK` then
//!   `dmctl --root R activate P/sK` (two process starts).
//! - lvm:    `lvm lvcreate -s -n sK VG/base` then `lvm lvchange -ay -K VG/sK`.
//!
//! In every pool the origin `base` is an inactive thin volume without data.
//! Levels are cumulative: before measuring level N the pool is filled with
//! cheap, inactive snapshots of `base` until it holds N thin volumes; then
//! `--ops` snapshots are created and activated one by one, each timed from
//! here (spawn to exit of the last command). The measured snapshots stay and
//! count for the next level. Operations are interleaved round-robin across the
//! contenders so that drift in the (emulated) machine hits all alike.
//!
//! A contender whose command fails is reported as failed with its error and
//! the others go on. A level whose setup would not fit in the time budget is
//! skipped for that contender, and the output says so.
//!
//! This program creates loop and device-mapper devices and never removes
//! them: it is meant for a throwaway guest and refuses to run without
//! `--in-guest`.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use devicemapper::{DevId, DmName, DmOptions, DM};

#[path = "common/bench.rs"]
mod bench_common;
use bench_common::{
    fmt_ms, ms, print_builds, print_kernel_cpu_mem, run_output, spawn_cost, stats, timed,
};

/// Virtual size of every thin volume, in 512-byte sectors (64 MiB).
const THIN_SECTORS: u64 = 131_072;
/// Pool data size (sparse; nothing is written to it).
const DATA_BYTES: u64 = 2 << 30;
/// Pool metadata size.
const META_BYTES: u64 = 128 << 20;
/// Pool block size in sectors (64 KiB).
const BLOCK_SECTORS: u64 = 128;

// ---------------------------------------------------------------- options

struct Config {
    dmctl: PathBuf,
    floor: PathBuf,
    work: PathBuf,
    levels: Vec<usize>,
    ops: usize,
    budget: Duration,
    only: Option<Vec<String>>,
}

fn usage() -> &'static str {
    "usage: bench_snapshot --in-guest [--dmctl PATH] [--floor PATH] [--work DIR]\n\
     \x20      [--levels 10,100,1000] [--ops 20] [--budget-secs 600] [--only floor,script,dmctl,lvm]\n\
     Creates loop and dm devices it never removes: run it in a throwaway guest (vm-tests/bench)."
}

fn parse_args() -> Result<Config> {
    let exe = std::env::current_exe().context("locating this program")?;
    let exe_dir = exe.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut cfg = Config {
        // target/release/examples/bench_snapshot -> target/release/dmctl
        dmctl: exe_dir.join("../dmctl"),
        floor: exe_dir.join("floor_snapshot"),
        work: PathBuf::from("/tmp/bench-snapshot"),
        levels: vec![10, 100, 1000],
        ops: 20,
        budget: Duration::from_secs(600),
        only: None,
    };
    let mut in_guest = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .ok_or_else(|| anyhow!("{a} needs a value\n{}", usage()))
        };
        match a.as_str() {
            "--in-guest" => in_guest = true,
            "--dmctl" => cfg.dmctl = PathBuf::from(val()?),
            "--floor" => cfg.floor = PathBuf::from(val()?),
            "--work" => cfg.work = PathBuf::from(val()?),
            "--levels" => {
                cfg.levels = val()?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<std::result::Result<_, _>>()
                    .context("--levels")?;
                cfg.levels.sort_unstable();
                if cfg.levels.first() == Some(&0) {
                    bail!("--levels: a level must be at least 1 (the origin)");
                }
            }
            "--ops" => cfg.ops = val()?.parse().context("--ops")?,
            "--budget-secs" => {
                cfg.budget = Duration::from_secs(val()?.parse().context("--budget-secs")?)
            }
            "--only" => cfg.only = Some(val()?.split(',').map(str::to_string).collect()),
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            _ => bail!("unknown argument {a}\n{}", usage()),
        }
    }
    if !in_guest {
        bail!("refusing to run without --in-guest\n{}", usage());
    }
    if cfg.ops == 0 {
        bail!("--ops must be at least 1");
    }
    Ok(cfg)
}

// ---------------------------------------------------------------- helpers

/// Run a command to completion; on failure, an error with its stderr.
fn run(cmd: &mut Command) -> Result<()> {
    run_output(cmd, 600).map(drop)
}

/// A sparse file of `size` bytes attached to a free loop device; returns the
/// device path and its "MAJ:MIN".
fn loop_file(path: &Path, size: u64) -> Result<(PathBuf, String)> {
    let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(size)?;
    drop(f);
    let lc = loopdev::LoopControl::open().context("opening /dev/loop-control")?;
    let ld = lc.next_free().context("finding a free loop device")?;
    ld.with()
        .attach(path)
        .with_context(|| format!("attaching {} to a loop device", path.display()))?;
    let dev = ld
        .path()
        .ok_or_else(|| anyhow!("loop device has no path"))?;
    let rdev = fs::metadata(&dev)
        .with_context(|| format!("stat {}", dev.display()))?
        .rdev();
    let majmin = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
    Ok((dev, majmin))
}

fn dm_name(s: &str) -> Result<&DmName> {
    DmName::new(s).map_err(|e| anyhow!("bad dm name {s}: {e}"))
}

// ------------------------------------------------------------- contenders

trait Contender {
    fn name(&self) -> &'static str;
    /// Pool plus the inactive origin `base` (one thin volume).
    fn setup(&mut self) -> Result<()>;
    /// Thin volumes now in the pool.
    fn volumes(&self) -> usize;
    /// Add one cheap, inactive volume.
    fn add_filler(&mut self) -> Result<()>;
    /// One measured snapshot create + activate; returns its latency.
    fn op(&mut self) -> Result<Duration>;
}

/// A thin pool made directly with dm ioctls (for floor and script); fillers
/// are `create_snap` messages sent from this process, no activation.
struct RawPool {
    dm: DM,
    tag: &'static str,
    work: PathBuf,
    pool: String,
    pool_dev: String,
    next_id: u32,
    count: usize,
}

impl RawPool {
    fn new(dm: DM, tag: &'static str, work: &Path) -> RawPool {
        RawPool {
            dm,
            tag,
            work: work.join(tag),
            pool: format!("bench-{tag}-pool"),
            pool_dev: String::new(),
            next_id: 1,
            count: 0,
        }
    }

    fn setup(&mut self) -> Result<()> {
        fs::create_dir_all(&self.work)?;
        let (_, meta) = loop_file(&self.work.join("meta"), META_BYTES)?;
        let (_, data) = loop_file(&self.work.join("data"), DATA_BYTES)?;
        let name = dm_name(&self.pool)?;
        let info = self
            .dm
            .device_create(name, None, DmOptions::default())
            .context("creating pool device")?;
        let d = info.device();
        self.pool_dev = format!("{}:{}", d.major, d.minor);
        let params = format!("{meta} {data} {BLOCK_SECTORS} 1024 1 skip_block_zeroing");
        self.dm
            .table_load(
                &DevId::Name(name),
                &[(0, DATA_BYTES / 512, "thin-pool".into(), params)],
                DmOptions::default(),
            )
            .context("loading thin-pool table")?;
        self.dm
            .device_suspend(&DevId::Name(name), DmOptions::default())
            .context("resuming pool")?;
        self.message("create_thin 0")?;
        self.count = 1;
        Ok(())
    }

    fn message(&self, msg: &str) -> Result<()> {
        self.dm
            .target_msg(&DevId::Name(dm_name(&self.pool)?), None, msg)
            .with_context(|| format!("message '{msg}' to {}", self.pool))?;
        Ok(())
    }

    fn add_filler(&mut self) -> Result<()> {
        let id = self.next_id;
        self.message(&format!("create_snap {id} 0"))?;
        self.next_id += 1;
        self.count += 1;
        Ok(())
    }

    /// Arguments of floor_snapshot and of the script, for the next snapshot.
    fn next_op_args(&mut self) -> Vec<String> {
        let id = self.next_id;
        self.next_id += 1;
        self.count += 1;
        vec![
            self.pool.clone(),
            self.pool_dev.clone(),
            id.to_string(),
            "0".into(),
            THIN_SECTORS.to_string(),
            format!("bench-{}-s{id}", self.tag),
        ]
    }
}

struct Floor {
    raw: RawPool,
    bin: PathBuf,
}

impl Contender for Floor {
    fn name(&self) -> &'static str {
        "floor"
    }
    fn setup(&mut self) -> Result<()> {
        if !self.bin.exists() {
            bail!("{} not found", self.bin.display());
        }
        self.raw.setup()
    }
    fn volumes(&self) -> usize {
        self.raw.count
    }
    fn add_filler(&mut self) -> Result<()> {
        self.raw.add_filler()
    }
    fn op(&mut self) -> Result<Duration> {
        let args = self.raw.next_op_args();
        let bin = &self.bin;
        timed(|| run(Command::new(bin).args(&args)))
    }
}

const SCRIPT: &str = r#"#!/bin/sh
# Snapshot + activate with dmsetup. Args: POOL POOL_MAJ:MIN NEW_ID ORIGIN_ID SECTORS NAME
set -e
dmsetup message "$1" 0 "create_snap $3 $4"
dmsetup create "$6" --noudevsync --table "0 $5 thin $2 $3"
"#;

struct Script {
    raw: RawPool,
    script: PathBuf,
}

impl Contender for Script {
    fn name(&self) -> &'static str {
        "script"
    }
    fn setup(&mut self) -> Result<()> {
        self.raw.setup()?;
        let mut f = File::create(&self.script)?;
        f.write_all(SCRIPT.as_bytes())?;
        Ok(())
    }
    fn volumes(&self) -> usize {
        self.raw.count
    }
    fn add_filler(&mut self) -> Result<()> {
        self.raw.add_filler()
    }
    fn op(&mut self) -> Result<Duration> {
        let args = self.raw.next_op_args();
        let script = &self.script;
        timed(|| run(Command::new("sh").arg(script).args(&args)))
    }
}

struct Dmctl {
    bin: PathBuf,
    root: PathBuf,
    count: usize,
    next: usize,
}

impl Dmctl {
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root").arg(&self.root);
        c
    }
}

impl Contender for Dmctl {
    fn name(&self) -> &'static str {
        "dmctl"
    }
    fn setup(&mut self) -> Result<()> {
        if !self.bin.exists() {
            bail!("{} not found", self.bin.display());
        }
        fs::create_dir_all(&self.root)?;
        run(self.cmd().args([
            "pool",
            "create",
            "bench",
            "--data-size",
            "2G",
            "--meta-size",
            "128M",
            "--block-size",
            "64K",
        ]))?;
        run(self
            .cmd()
            .args(["create", "bench/base", "--size", "64M", "--fs", "none"]))?;
        // The origin must be inactive, as for the other contenders (an active
        // origin costs a suspend/resume per snapshot). `create` may or may not
        // activate; deactivating an inactive volume may be an error.
        if let Err(e) = run(self.cmd().args(["deactivate", "bench/base"])) {
            println!("note: dmctl deactivate bench/base: {e:#}");
        }
        self.count = 1;
        Ok(())
    }
    fn volumes(&self) -> usize {
        self.count
    }
    fn add_filler(&mut self) -> Result<()> {
        let name = format!("bench/f{}", self.count);
        run(self.cmd().args(["snapshot", "bench/base", &name]))?;
        self.count += 1;
        Ok(())
    }
    fn op(&mut self) -> Result<Duration> {
        self.next += 1;
        let name = format!("bench/s{}", self.next);
        // One process: `snapshot --activate` creates and activates in one
        // transaction, as the floor does in one program run.
        let d = timed(|| {
            run(self
                .cmd()
                .args(["snapshot", "bench/base", &name, "--activate"]))
        })?;
        self.count += 1;
        Ok(d)
    }
}

struct Lvm {
    work: PathBuf,
    config: String,
    count: usize,
    next: usize,
}

const VG: &str = "benchvg";

impl Lvm {
    fn lvm(&self, sub: &str) -> Command {
        let mut c = Command::new("lvm");
        c.arg(sub).arg("--config").arg(&self.config);
        c.env("DM_DISABLE_UDEV", "1");
        c.env("LVM_SUPPRESS_FD_WARNINGS", "1");
        c
    }
}

impl Contender for Lvm {
    fn name(&self) -> &'static str {
        "lvm"
    }
    fn setup(&mut self) -> Result<()> {
        fs::create_dir_all(&self.work)?;
        // PV: 8 GiB sparse; the pool uses 2 GiB of it like the others.
        let (dev, _) = loop_file(&self.work.join("pv"), 8 << 30)?;
        let dev = dev.to_string_lossy().into_owned();
        // Only scan our PV, no devices file, no archive/backup copies of the
        // VG metadata on every change: all of it favours LVM (see docs).
        self.config = format!(
            "devices {{ global_filter = [ \"a|^{dev}$|\", \"r|.*|\" ] use_devicesfile = 0 }} \
             backup {{ backup = 0 archive = 0 }}"
        );
        run(self.lvm("pvcreate").args(["--metadatasize", "32m", &dev]))?;
        run(self.lvm("vgcreate").args([VG, &dev]))?;
        run(self.lvm("lvcreate").args([
            "-T",
            &format!("{VG}/pool"),
            "-L",
            "2G",
            "--poolmetadatasize",
            "128m",
            "-c",
            "64k",
            "-Zn",
        ]))?;
        run(self
            .lvm("lvcreate")
            .args(["-V", "64m", "-T", &format!("{VG}/pool"), "-n", "base"]))?;
        // Origin inactive; keep the pool itself active so that every command
        // does not activate (and thin_check) it again.
        run(self.lvm("lvchange").args(["-an", &format!("{VG}/base")]))?;
        run(self.lvm("lvchange").args(["-ay", &format!("{VG}/pool")]))?;
        self.count = 1;
        Ok(())
    }
    fn volumes(&self) -> usize {
        self.count
    }
    fn add_filler(&mut self) -> Result<()> {
        let name = format!("f{}", self.count);
        run(self
            .lvm("lvcreate")
            .args(["-s", "-n", &name, &format!("{VG}/base")]))?;
        self.count += 1;
        Ok(())
    }
    fn op(&mut self) -> Result<Duration> {
        self.next += 1;
        let name = format!("s{}", self.next);
        let d = timed(|| {
            run(self
                .lvm("lvcreate")
                .args(["-s", "-n", &name, &format!("{VG}/base")]))?;
            run(self
                .lvm("lvchange")
                .args(["-ay", "-K", &format!("{VG}/{name}")]))
        })?;
        self.count += 1;
        Ok(d)
    }
}

// ------------------------------------------------------------------ driver

enum Cell {
    Measured { median: f64, p95: f64 },
    Skipped,
    Failed,
}

struct Entry {
    c: Box<dyn Contender>,
    failed: Option<String>,
    /// Skipped from this level on (setup would not fit the budget).
    skipped_from: Option<(usize, String)>,
    /// (average volumes during the batch, seconds per volume added) of the
    /// filler batches so far, to extrapolate the next one.
    fills: Vec<(f64, f64)>,
    /// Per level: setup time and fillers added.
    fill_log: Vec<(usize, usize, Duration)>,
    cells: Vec<Cell>,
}

/// The header of the report: when, on what machine, with which tool versions
/// and builds. Results are only comparable within one boot, and process
/// starts weigh heavily in them, so the report must say all of this.
fn describe_env(cfg: &Config) {
    let date = Command::new("date")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let dmsetup = Command::new("dmsetup")
        .arg("version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .replace('\n', "; ")
        })
        .unwrap_or_default();
    let lvm = Command::new("lvm")
        .arg("version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default();
    println!("- date: {date}");
    print_kernel_cpu_mem();
    println!("- dmsetup: {dmsetup}");
    println!("- lvm: {lvm}");
    print_builds(&[("dmctl", &cfg.dmctl), ("floor_snapshot", &cfg.floor)]);
}

/// The timer's resolution and cost, and the cost of a process start (20 runs
/// of each probe, median / p95): every contender is timed with `Instant` and
/// pays one or more process starts per operation, so both bound what the
/// results can show.
fn timer_and_spawn_checks(cfg: &Config) {
    let mut res = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_getres writes one timespec into the valid pointer.
    let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC, &mut res) };
    let mut min_step = Duration::MAX;
    let t0 = Instant::now();
    let mut prev = t0;
    for _ in 0..100_000 {
        let now = Instant::now();
        let d = now - prev;
        if !d.is_zero() && d < min_step {
            min_step = d;
        }
        prev = now;
    }
    let per_call = t0.elapsed() / 100_000;
    println!(
        "- timer: clock_getres(CLOCK_MONOTONIC) = {} ns (rc {rc}); smallest observed Instant step {} ns; Instant::now() costs {} ns",
        res.tv_nsec,
        min_step.as_nanos(),
        per_call.as_nanos()
    );
    // Process start cost, which every contender pays once or more per op.
    let probes: [(&str, &Path, &[&str]); 5] = [
        ("busybox `true` (static)", Path::new("true"), &[]),
        (
            "`dmsetup version` (C, dynamic, one dm ioctl)",
            Path::new("dmsetup"),
            &["version"],
        ),
        ("`lvm version` (C, dynamic)", Path::new("lvm"), &["version"]),
        (
            "floor_snapshot without arguments (Rust start, usage error)",
            &cfg.floor,
            &[],
        ),
        (
            "`dmctl --version` (Rust start, prints its version)",
            &cfg.dmctl,
            &["--version"],
        ),
    ];
    for (what, prog, args) in probes {
        let cost = spawn_cost(20, || {
            let mut c = Command::new(prog);
            c.args(args).stdin(Stdio::null());
            c
        });
        if let Some(e) = &cost.error {
            println!("- spawn of {what}: failed: {e}");
        }
        if !cost.samples.is_empty() {
            let (m, p, _) = stats(&cost.samples);
            println!(
                "- spawn of {what}: median {} ms, p95 {} ms ({} runs)",
                fmt_ms(m),
                fmt_ms(p),
                cost.samples.len()
            );
        }
    }
}

fn main() {
    let cfg = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench_snapshot: {e:#}");
            std::process::exit(2);
        }
    };
    if let Err(e) = bench(&cfg) {
        eprintln!("bench_snapshot: error: {e:#}");
        std::process::exit(1);
    }
}

fn bench(cfg: &Config) -> Result<()> {
    let start = Instant::now();
    let deadline = start + cfg.budget;
    println!("# Snapshot create+activate latency (issue 3)\n");
    describe_env(cfg);
    timer_and_spawn_checks(cfg);
    println!(
        "- per level: {} measured snapshots per contender, interleaved; budget {} s\n",
        cfg.ops,
        cfg.budget.as_secs()
    );

    fs::create_dir_all(&cfg.work)?;
    let mut all: Vec<Box<dyn Contender>> = vec![
        Box::new(Floor {
            raw: RawPool::new(
                DM::new().context("opening /dev/mapper/control")?,
                "floor",
                &cfg.work,
            ),
            bin: cfg.floor.clone(),
        }),
        Box::new(Script {
            raw: RawPool::new(
                DM::new().context("opening /dev/mapper/control")?,
                "script",
                &cfg.work,
            ),
            script: cfg.work.join("snap.sh"),
        }),
        Box::new(Dmctl {
            bin: cfg.dmctl.clone(),
            root: cfg.work.join("dmctl-root"),
            count: 0,
            next: 0,
        }),
        Box::new(Lvm {
            work: cfg.work.join("lvm"),
            config: String::new(),
            count: 0,
            next: 0,
        }),
    ];
    if let Some(only) = &cfg.only {
        all.retain(|c| only.iter().any(|o| o == c.name()));
    }
    let mut entries: Vec<Entry> = all
        .into_iter()
        .map(|c| Entry {
            c,
            failed: None,
            skipped_from: None,
            fills: Vec::new(),
            fill_log: Vec::new(),
            cells: Vec::new(),
        })
        .collect();

    for e in &mut entries {
        let name = e.c.name();
        match timed(|| e.c.setup()) {
            Ok(d) => println!("setup {name}: pool + origin in {} ms", fmt_ms(ms(d))),
            Err(err) => {
                println!("setup {name}: FAILED: {err:#}");
                e.failed = Some(format!("setup: {err:#}"));
            }
        }
    }

    for (li, &level) in cfg.levels.iter().enumerate() {
        let levels_left = cfg.levels.len() - li;
        println!("\n## level N={level}");
        // Fill every contender up to N volumes, fastest kinds first.
        for e in &mut entries {
            if e.failed.is_some() || e.skipped_from.is_some() {
                continue;
            }
            let name = e.c.name();
            let have = e.c.volumes();
            let need = level.saturating_sub(have);
            // Keep time for the measurements of this and later levels.
            let reserve = Duration::from_secs(30 * levels_left as u64);
            let left = deadline.saturating_duration_since(Instant::now());
            if let Some(per) = per_volume_estimate(&e.fills, (have + level) as f64 / 2.0) {
                let est = Duration::from_secs_f64(per * need as f64);
                if est + reserve > left {
                    let why = format!(
                        "setup would exceed budget (est. {:.0} s for {need} more volumes, {:.0} s left)",
                        est.as_secs_f64(),
                        left.as_secs_f64()
                    );
                    println!("{name}: {level} skipped: {why}");
                    e.skipped_from = Some((level, why));
                    continue;
                }
            }
            let t = Instant::now();
            let mut added = 0;
            let mut err = None;
            while e.c.volumes() < level {
                if Instant::now() + reserve > deadline {
                    let why = format!(
                        "setup exceeded budget (reached {} of {level} volumes in {:.0} s)",
                        e.c.volumes(),
                        t.elapsed().as_secs_f64()
                    );
                    println!("{name}: {level} skipped: {why}");
                    e.skipped_from = Some((level, why));
                    break;
                }
                if let Err(x) = e.c.add_filler() {
                    err = Some(x);
                    break;
                }
                added += 1;
            }
            let d = t.elapsed();
            if let Some(x) = err {
                println!("{name}: FAILED while adding volumes: {x:#}");
                e.failed = Some(format!("filling to {level}: {x:#}"));
                continue;
            }
            if added > 0 {
                e.fills.push((
                    (have + e.c.volumes()) as f64 / 2.0,
                    d.as_secs_f64() / added as f64,
                ));
            }
            e.fill_log.push((level, added, d));
            if e.skipped_from.is_none() {
                println!(
                    "{name}: filled {have} -> {} volumes in {} ms ({} ms per volume)",
                    e.c.volumes(),
                    fmt_ms(ms(d)),
                    fmt_ms(if added > 0 { ms(d) / added as f64 } else { 0.0 })
                );
            }
        }

        // Measure, round-robin.
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); entries.len()];
        for _ in 0..cfg.ops {
            for (i, e) in entries.iter_mut().enumerate() {
                if e.failed.is_some() || e.skipped_from.is_some() {
                    continue;
                }
                match e.c.op() {
                    Ok(d) => samples[i].push(d),
                    Err(x) => {
                        println!("{}: FAILED: {x:#}", e.c.name());
                        e.failed = Some(format!("{x:#}"));
                    }
                }
            }
        }
        for (i, e) in entries.iter_mut().enumerate() {
            let cell = if e.failed.is_some() {
                Cell::Failed
            } else if e.skipped_from.is_some() {
                Cell::Skipped
            } else {
                let (median, p95, _) = stats(&samples[i]);
                let all: Vec<String> = samples[i]
                    .iter()
                    .map(|d| format!("{:.1}", ms(*d)))
                    .collect();
                println!(
                    "{}: N={level} median {} ms, p95 {} ms; samples (ms): {}",
                    e.c.name(),
                    fmt_ms(median),
                    fmt_ms(p95),
                    all.join(" ")
                );
                Cell::Measured { median, p95 }
            };
            e.cells.push(cell);
        }
    }

    report(cfg, &entries);
    println!("\ntotal run time {:.0} s", start.elapsed().as_secs_f64());
    Ok(())
}

/// Seconds per added volume when the pool holds about `avg` volumes: a
/// straight line through the last two filler batches (cost growing with the
/// volume count, as LVM's whole-VG metadata does), or the one batch so far
/// with a 1.5x margin. The fill loop also stops at the deadline, so a wrong
/// guess costs time, not honesty.
fn per_volume_estimate(fills: &[(f64, f64)], avg: f64) -> Option<f64> {
    match fills {
        [] => None,
        [(_, c)] => Some(c * 1.5),
        [.., (x0, c0), (x1, c1)] => {
            let slope = if x1 > x0 {
                ((c1 - c0) / (x1 - x0)).max(0.0)
            } else {
                0.0
            };
            Some((c1 + slope * (avg - x1)).max(*c1))
        }
    }
}

fn median_of(entries: &[Entry], name: &str, li: usize) -> Option<f64> {
    entries
        .iter()
        .find(|e| e.c.name() == name)
        .and_then(|e| match e.cells.get(li) {
            Some(Cell::Measured { median, .. }) => Some(*median),
            _ => None,
        })
}

fn ratio(entries: &[Entry], a: &str, b: &str, li: usize) -> String {
    match (median_of(entries, a, li), median_of(entries, b, li)) {
        (Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
        _ => "n/a".into(),
    }
}

fn report(cfg: &Config, entries: &[Entry]) {
    println!("\n## Results: snapshot create + activate, median / p95 in ms\n");
    let mut head = String::from("| existing volumes N |");
    let mut sep = String::from("|---:|");
    for e in entries {
        head.push_str(&format!(" {} |", e.c.name()));
        sep.push_str("---:|");
    }
    let ratios = [
        ("dmctl", "floor"),
        ("lvm", "dmctl"),
        ("script", "dmctl"),
        ("script", "floor"),
        ("lvm", "floor"),
    ];
    let have = |n: &str| entries.iter().any(|e| e.c.name() == n);
    let ratios: Vec<_> = ratios.iter().filter(|(a, b)| have(a) && have(b)).collect();
    for (a, b) in &ratios {
        head.push_str(&format!(" {a}/{b} |"));
        sep.push_str("---:|");
    }
    println!("{head}\n{sep}");
    for (li, level) in cfg.levels.iter().enumerate() {
        let mut row = format!("| {level} |");
        for e in entries {
            let s = match e.cells.get(li) {
                Some(Cell::Measured { median, p95 }) => {
                    format!("{} / {}", fmt_ms(*median), fmt_ms(*p95))
                }
                Some(Cell::Skipped) => "skipped".into(),
                Some(Cell::Failed) | None => "failed".into(),
            };
            row.push_str(&format!(" {s} |"));
        }
        for (a, b) in &ratios {
            row.push_str(&format!(" {} |", ratio(entries, a, b, li)));
        }
        println!("{row}");
    }
    if cfg.levels.len() >= 2 {
        let (lo, hi) = (0, cfg.levels.len() - 1);
        let mut row = format!(
            "| flatness: median at {} / median at {} |",
            cfg.levels[hi], cfg.levels[lo]
        );
        for e in entries {
            let s = match (
                median_of(entries, e.c.name(), hi),
                median_of(entries, e.c.name(), lo),
            ) {
                (Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
                _ => "n/a".into(),
            };
            row.push_str(&format!(" {s} |"));
        }
        for _ in &ratios {
            row.push_str(" |");
        }
        println!("{row}");
    }

    println!("\nSetup (filling the pool with inactive snapshots of the origin):\n");
    for e in entries {
        let parts: Vec<String> = e
            .fill_log
            .iter()
            .filter(|(_, added, _)| *added > 0)
            .map(|(level, added, d)| {
                format!(
                    "to {level}: {added} in {:.1} s ({} ms each)",
                    d.as_secs_f64(),
                    fmt_ms(ms(*d) / *added as f64)
                )
            })
            .collect();
        println!(
            "- {}: {}",
            e.c.name(),
            if parts.is_empty() {
                "-".into()
            } else {
                parts.join("; ")
            }
        );
    }
    let notes: Vec<String> = entries
        .iter()
        .flat_map(|e| {
            let mut v = Vec::new();
            if let Some(f) = &e.failed {
                v.push(format!("- {}: failed: {f}", e.c.name()));
            }
            if let Some((level, why)) = &e.skipped_from {
                v.push(format!(
                    "- {}: {level} and above skipped: {why}",
                    e.c.name()
                ));
            }
            v
        })
        .collect();
    if !notes.is_empty() {
        println!("\nFailures and skips:\n");
        for n in notes {
            println!("{n}");
        }
    }
}
