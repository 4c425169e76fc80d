//! Image import time and provisioning latency (issue 4). Run inside the test
//! guest by `vm-tests/bench-image`; see docs/benchmarks.md.
//!
//! 1. An OCI image is built in the guest with umoci: a deterministic rootfs
//!    of files of varied sizes in `--layers` layers (umoci writes gzip
//!    layers). Then, `--reps` times, each contender imports it into its own
//!    fresh dmctl pool (round-robin, the order rotated each round):
//!    - dmctl:    `dmctl image import POOL LAYOUT --name REF --size 1G`
//!    - umoci:    `umoci unpack --image LAYOUT:REF DIR/bundle`, DIR a fresh,
//!      mounted ext4 thin volume (`dmctl create` + `dmctl mount`, untimed)
//!    - tar-gz:   the floor: `gzip -dc BLOB | tar -x -C DIR` for each layer in
//!      order (one `sh -c`), into a fresh mounted ext4 thin volume
//!    - tar:      `tar -x -f LAYER.tar -C DIR` of the layers decompressed
//!      beforehand (untimed), into a fresh mounted ext4 thin volume
//!
//!    For umoci and the tars the timed region ends with a `syncfs` of the
//!    volume, because dmctl syncs every layer before it returns.
//! 2. With the image imported (the last dmctl pool), `--provisions` times,
//!    interleaved: `dmctl image provision POOL REF jobN --mount DIR` and an
//!    overlay mount (`mount -t overlay` with the umoci-unpacked rootfs as
//!    lowerdir and a fresh upper and work dir on tmpfs), each one spawned
//!    process, timed from spawn to exit. Then all are removed (untimed).
//!
//! Creates loop and dm devices and mounts: it refuses to run without
//! `--in-guest`.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::symlink;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

#[path = "common/bench.rs"]
mod bench_common;
use bench_common::{
    first_line, fmt_ms, ms, print_builds, print_kernel_cpu_mem, run_output, spawn_cost, stats,
    timed,
};

const REF: &str = "bench";

// ---------------------------------------------------------------- options

struct Config {
    dmctl: PathBuf,
    floor: PathBuf,
    work: PathBuf,
    mb: u64,
    layers: usize,
    reps: usize,
    provisions: usize,
}

fn usage() -> &'static str {
    "usage: bench_image --in-guest [--dmctl PATH] [--floor PATH] [--work DIR] [--mb 80] [--layers 3]\n\
     \x20      [--reps 3] [--provisions 100]\n\
     Creates loop and dm devices and mounts: run it in a throwaway guest (vm-tests/bench-image)."
}

fn parse_args() -> Result<Config> {
    let exe = std::env::current_exe().context("locating this program")?;
    let exe_dir = exe.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut cfg = Config {
        dmctl: exe_dir.join("../dmctl"),
        floor: exe_dir.join("floor_snapshot"),
        work: PathBuf::from("/tmp/bench-image"),
        mb: 80,
        layers: 3,
        reps: 3,
        provisions: 100,
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
            "--mb" => cfg.mb = val()?.parse().context("--mb")?,
            "--layers" => cfg.layers = val()?.parse().context("--layers")?,
            "--reps" => cfg.reps = val()?.parse().context("--reps")?,
            "--provisions" => cfg.provisions = val()?.parse().context("--provisions")?,
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
    if cfg.reps == 0 || cfg.provisions == 0 || cfg.layers == 0 || cfg.mb == 0 {
        bail!("--reps, --provisions, --layers and --mb must be at least 1");
    }
    Ok(cfg)
}

// ---------------------------------------------------------------- helpers

/// Run a command to completion; its stdout, or an error with its stderr.
fn run(cmd: &mut Command) -> Result<String> {
    run_full(cmd).map(|(out, _)| out)
}

/// Run a command to completion; its stdout and stderr, or an error with its
/// stderr.
fn run_full(cmd: &mut Command) -> Result<(String, String)> {
    run_output(cmd, 800)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

fn syncfs(dir: &Path) -> Result<()> {
    let f = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("syncfs {}", dir.display()));
    }
    Ok(())
}

/// The header of the report: when, on what machine, with which tool versions
/// and builds, and where the work files go. Results are only comparable
/// within one boot, so the report must say all of this.
fn describe_env(cfg: &Config) {
    let date = first_line(Command::new("date").arg("-u"));
    let overlay = fs::read_to_string("/proc/filesystems")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().last() == Some("overlay"));
    println!("- date: {date}");
    print_kernel_cpu_mem();
    println!(
        "- dmctl: {} ({})",
        first_line(Command::new(&cfg.dmctl).arg("--version")),
        cfg.dmctl.display()
    );
    print_builds(&[("dmctl", &cfg.dmctl)]);
    println!(
        "- umoci: {}",
        first_line(Command::new("umoci").arg("--version"))
    );
    println!(
        "- tar, gzip, mount: {}",
        first_line(&mut Command::new("busybox"))
    );
    println!(
        "- overlay in /proc/filesystems: {}",
        if overlay { "yes" } else { "NO" }
    );
    println!(
        "- work dir {} (tmpfs: pools' sparse files, layout, overlay upper dirs)",
        cfg.work.display()
    );
}

/// What one process start costs, for the report line: "MEDIAN / P95 ms" of
/// `n` runs of a trivial command ([`spawn_cost`]), or "failed" if one could
/// not be spawned (the run goes on without it).
fn process_start(n: usize, cmd: impl Fn() -> Command) -> String {
    let cost = spawn_cost(n, cmd);
    if cost.error.is_some() {
        return "failed".into();
    }
    let (m, p, _) = stats(&cost.samples);
    format!("{} / {} ms", fmt_ms(m), fmt_ms(p))
}

// ---------------------------------------------------------- image content

/// xorshift64*: deterministic content, fast even under TCG.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// Log-uniform in [lo, hi).
    fn log_uniform(&mut self, lo: u64, hi: u64) -> u64 {
        let (a, b) = ((lo as f64).ln(), (hi as f64).ln());
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        (a + (b - a) * u).exp() as u64
    }
}

const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "config",
    "value",
    "return",
    "static",
    "const",
    "int",
    "char",
    "struct",
    "void",
    "if",
    "else",
    "for",
    "while",
    "true",
    "false",
    "null",
    "error",
    "path",
    "file",
    "data",
    "size",
    "buffer",
    "length",
    "index",
    "count",
    "name",
    "type",
    "module",
    "import",
    "export",
    "function",
    "class",
    "self",
    "string",
    "list",
    "map",
    "license",
    "copyright",
    "version",
    "library",
    "system",
    "user",
    "group",
    "mode",
    "<div>",
    "</div>",
    "{",
    "}",
    "(",
    ")",
    ";",
    "=",
    "==",
    "->",
    "::",
    "#include",
    "0x00",
    "0xff",
    "42",
    "1024",
];

/// A file's content: text (compresses ~3-4x) or binary-like (half random
/// 4 KiB chunks, half low-entropy ones), like a rootfs of docs, scripts,
/// libraries and executables.
fn content(rng: &mut Rng, size: u64, text: bool) -> Vec<u8> {
    let mut v = Vec::with_capacity(size as usize + 16);
    if text {
        while (v.len() as u64) < size {
            let w = WORDS[rng.below(WORDS.len() as u64) as usize];
            v.extend_from_slice(w.as_bytes());
            v.push(if rng.below(12) == 0 { b'\n' } else { b' ' });
        }
    } else {
        while (v.len() as u64) < size {
            let random = rng.below(2) == 0;
            for _ in 0..512 {
                let x = rng.next();
                let x = if random { x } else { x & 0x0303_0303_0303_0303 };
                v.extend_from_slice(&x.to_le_bytes());
            }
        }
    }
    v.truncate(size as usize);
    v
}

#[derive(Default)]
struct Gen {
    files: u64,
    bytes: u64,
    dirs: u64,
    symlinks: u64,
    deleted: u64,
    overwritten: u64,
    /// Files made so far, relative paths (candidates for changes).
    paths: Vec<PathBuf>,
}

impl Gen {
    /// Add files under `root/top` until `budget` bytes are written.
    fn add_tree(&mut self, rng: &mut Rng, root: &Path, top: &str, budget: u64) -> Result<()> {
        let mut written = 0u64;
        let mut dir = PathBuf::new();
        let mut in_dir = 0;
        while written < budget {
            if in_dir == 0 {
                // A new directory, 1-3 levels below `top`, of ~5-40 entries.
                let depth = 1 + rng.below(3);
                dir = PathBuf::from(top);
                for _ in 0..depth {
                    dir.push(format!("d{:03}", rng.below(40)));
                }
                fs::create_dir_all(root.join(&dir))?;
                self.dirs += 1;
                in_dir = 5 + rng.below(36);
            }
            in_dir -= 1;
            let k = rng.below(1000);
            let size = if k < 950 {
                rng.log_uniform(64, 32 << 10)
            } else if k < 995 {
                rng.log_uniform(32 << 10, 1 << 20)
            } else {
                rng.log_uniform(1 << 20, 8 << 20)
            }
            .min(budget - written + 64);
            let rel = dir.join(format!("f{}", self.files));
            if rng.below(20) == 0 && !self.paths.is_empty() {
                // A symlink to an earlier file (relative to the root).
                let target = &self.paths[rng.below(self.paths.len() as u64) as usize];
                let _ = fs::remove_file(root.join(&rel));
                symlink(Path::new("/").join(target), root.join(&rel))?;
                self.symlinks += 1;
                self.files += 1;
                continue;
            }
            let text = rng.below(10) < 6;
            fs::write(root.join(&rel), content(rng, size, text))?;
            written += size;
            self.bytes += size;
            self.files += 1;
            self.paths.push(rel);
        }
        Ok(())
    }

    /// Change layer: overwrite and delete some of the earlier files.
    fn churn(&mut self, rng: &mut Rng, root: &Path, overwrite: usize, delete: usize) -> Result<()> {
        for _ in 0..overwrite {
            let p = &self.paths[rng.below(self.paths.len() as u64) as usize];
            let full = root.join(p);
            if full.is_file() {
                let size = rng.log_uniform(64, 64 << 10);
                fs::write(&full, content(rng, size, true))?;
                self.bytes += size;
                self.overwritten += 1;
            }
        }
        for _ in 0..delete {
            let i = rng.below(self.paths.len() as u64) as usize;
            let p = self.paths.swap_remove(i);
            if fs::remove_file(root.join(&p)).is_ok() {
                self.deleted += 1;
            }
        }
        Ok(())
    }
}

struct ImageInfo {
    layout: PathBuf,
    /// Compressed blob path and size of each layer, bottom first.
    blobs: Vec<(PathBuf, u64)>,
    /// Uncompressed layer tars (for the plain tar floor).
    tars: Vec<(PathBuf, u64)>,
}

/// Build the image with umoci: one bundle, one repack (`--refresh-bundle`)
/// per layer.
fn build_image(cfg: &Config) -> Result<ImageInfo> {
    let dir = cfg.work.join("image");
    fs::create_dir_all(&dir)?;
    let layout = dir.join("layout");
    let l = layout.to_str().context("layout path")?;
    let bundle = dir.join("bundle");
    let image = format!("{l}:{REF}");
    run(Command::new("umoci").args(["init", "--layout", l]))?;
    run(Command::new("umoci").args(["new", "--image", &image]))?;
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle))?;
    let root = bundle.join("rootfs");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut g = Gen::default();
    let total = cfg.mb << 20;
    // Layer shares: the base OS gets the most, the top the least.
    let weights: Vec<u64> = (0..cfg.layers).map(|i| 1 << (cfg.layers - 1 - i)).collect();
    let wsum: u64 = weights.iter().sum();
    for (i, w) in weights.iter().enumerate() {
        let t = Instant::now();
        let budget = total * w / wsum;
        if i > 0 {
            let n = g.paths.len();
            g.churn(&mut rng, &root, n / 40 + 1, n / 100 + 1)?;
        }
        let top = match i {
            0 => "usr".to_string(),
            1 => "opt/runtime".to_string(),
            _ => format!("srv/app{i}"),
        };
        g.add_tree(&mut rng, &root, &top, budget)?;
        let gen_time = t.elapsed();
        let t = Instant::now();
        run(Command::new("umoci")
            .args(["repack", "--refresh-bundle", "--image", &image])
            .arg(&bundle))?;
        println!(
            "- layer {}: generated in {:.1} s, `umoci repack` {:.1} s",
            i + 1,
            gen_time.as_secs_f64(),
            t.elapsed().as_secs_f64()
        );
    }
    println!(
        "- rootfs: {} regular files ({}), {} symlinks, {} directories made; \
         {} files overwritten and {} deleted in upper layers",
        g.files - g.symlinks,
        mib(g.bytes),
        g.symlinks,
        g.dirs,
        g.overwritten,
        g.deleted
    );
    fs::remove_dir_all(&bundle)?;

    // The manifest's layers, from the layout (index -> manifest).
    let blob = |digest: &str| -> Result<PathBuf> {
        let hex = digest
            .strip_prefix("sha256:")
            .ok_or_else(|| anyhow!("unexpected digest {digest}"))?;
        Ok(layout.join("blobs/sha256").join(hex))
    };
    let index: serde_json::Value = serde_json::from_slice(&fs::read(layout.join("index.json"))?)?;
    let mdesc = index["manifests"]
        .as_array()
        .and_then(|m| {
            m.iter().find(|d| {
                d["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(REF)
            })
        })
        .ok_or_else(|| anyhow!("no manifest for {REF} in index.json"))?;
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(blob(mdesc["digest"].as_str().unwrap_or(""))?)?)?;
    let mut blobs = vec![];
    let mut tars = vec![];
    let tar_dir = dir.join("tars");
    fs::create_dir_all(&tar_dir)?;
    for (i, l) in manifest["layers"]
        .as_array()
        .ok_or_else(|| anyhow!("manifest has no layers"))?
        .iter()
        .enumerate()
    {
        let p = blob(l["digest"].as_str().unwrap_or(""))?;
        let size = fs::metadata(&p)?.len();
        let media = l["mediaType"].as_str().unwrap_or("?");
        let tar = tar_dir.join(format!("layer{}.tar", i + 1));
        let out = File::create(&tar)?;
        let st = Command::new("gzip")
            .arg("-dc")
            .arg(&p)
            .stdout(out)
            .status()?;
        if !st.success() {
            bail!("gzip -dc {} failed: {st}", p.display());
        }
        let tsize = fs::metadata(&tar)?.len();
        println!(
            "- layer {}: {media}, {} compressed, {} uncompressed",
            i + 1,
            mib(size),
            mib(tsize)
        );
        blobs.push((p, size));
        tars.push((tar, tsize));
    }
    println!(
        "- image: {} layers, {} compressed, {} uncompressed (layer tars)",
        blobs.len(),
        mib(blobs.iter().map(|b| b.1).sum()),
        mib(tars.iter().map(|b| b.1).sum())
    );
    Ok(ImageInfo {
        layout,
        blobs,
        tars,
    })
}

// ------------------------------------------------------------- contenders

struct Bench<'a> {
    cfg: &'a Config,
    root: PathBuf,
    img: ImageInfo,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    Dmctl,
    Umoci,
    TarGz,
    Tar,
}

impl Who {
    const ALL: [Who; 4] = [Who::Dmctl, Who::Umoci, Who::TarGz, Who::Tar];
    fn name(self) -> &'static str {
        match self {
            Who::Dmctl => "dmctl image import",
            Who::Umoci => "umoci unpack",
            Who::TarGz => "tar floor: gzip -dc | tar -x",
            Who::Tar => "tar -x of uncompressed layers",
        }
    }
    /// The name inside a Markdown table cell.
    fn cell(self) -> String {
        self.name().replace('|', "\\|")
    }
    fn tag(self) -> &'static str {
        match self {
            Who::Dmctl => "imp",
            Who::Umoci => "umo",
            Who::TarGz => "tgz",
            Who::Tar => "tar",
        }
    }
}

/// One import sample: total (what is compared) and, for the non-dmctl
/// contenders, the syncfs part of it.
struct Sample {
    total: Duration,
    sync: Duration,
}

impl Bench<'_> {
    fn dmctl(&self) -> Command {
        let mut c = Command::new(&self.cfg.dmctl);
        c.arg("--root").arg(&self.root);
        c
    }

    /// A fresh pool, and for the non-dmctl contenders a fresh mounted ext4
    /// thin volume `POOL/u` at `mnt/POOL`; untimed.
    fn prepare(&self, who: Who, rep: usize) -> Result<(String, PathBuf)> {
        let pool = format!("{}{rep}", who.tag());
        run(self
            .dmctl()
            .args(["pool", "create", &pool, "--data-size", "8G"]))?;
        let dir = self.cfg.work.join("mnt").join(&pool);
        if who != Who::Dmctl {
            fs::create_dir_all(&dir)?;
            run(self.dmctl().args([
                "create",
                &format!("{pool}/u"),
                "--size",
                "1G",
                "--fs",
                "ext4",
            ]))?;
            run(self.dmctl().args(["mount", &format!("{pool}/u")]).arg(&dir))?;
        }
        Ok((pool, dir))
    }

    /// One timed import. With `trace`, dmctl runs with `-v` (one stderr
    /// line per kernel call, state write and program run; negligible cost)
    /// and the trace is printed.
    fn import(&self, who: Who, pool: &str, dir: &Path, trace: bool) -> Result<Sample> {
        let layout = self.img.layout.to_str().context("layout path")?;
        let t = Instant::now();
        match who {
            Who::Dmctl => {
                let mut c = self.dmctl();
                if trace {
                    c.arg("-v");
                }
                let (_, err) = run_full(c.args([
                    "image", "import", pool, layout, "--name", REF, "--size", "1G",
                ]))?;
                let total = t.elapsed();
                if trace {
                    print_trace("dmctl -v image import (this round's sample)", &err);
                }
                return Ok(Sample {
                    total,
                    sync: Duration::ZERO,
                });
            }
            Who::Umoci => {
                run(Command::new("umoci")
                    .args(["unpack", "--image", &format!("{layout}:{REF}")])
                    .arg(dir.join("bundle")))?;
            }
            Who::TarGz => {
                let mut script = String::from("set -e\n");
                for (b, _) in &self.img.blobs {
                    script.push_str(&format!(
                        "gzip -dc '{}' | tar -x -C '{}'\n",
                        b.display(),
                        dir.display()
                    ));
                }
                run(Command::new("sh").arg("-c").arg(script))?;
            }
            Who::Tar => {
                let mut script = String::from("set -e\n");
                for (tar, _) in &self.img.tars {
                    script.push_str(&format!(
                        "tar -x -f '{}' -C '{}'\n",
                        tar.display(),
                        dir.display()
                    ));
                }
                run(Command::new("sh").arg("-c").arg(script))?;
            }
        }
        let s = Instant::now();
        syncfs(dir)?;
        Ok(Sample {
            total: t.elapsed(),
            sync: s.elapsed(),
        })
    }

    /// Unmount and destroy a pool that is not needed any more (frees its
    /// sparse files on tmpfs).
    fn discard(&self, who: Who, pool: &str) -> Result<()> {
        if who != Who::Dmctl {
            run(self.dmctl().args(["umount", &format!("{pool}/u")]))?;
        }
        run(self.dmctl().args(["pool", "destroy", pool, "--force"]))?;
        Ok(())
    }
}

/// The kernel floor of provisioning: `floor_snapshot` sends `create_snap`
/// of the image's top layer to dmctl's pool, creates and resumes the thin
/// device and mounts it, in one process, with no metadata of its own. Its
/// thin ids come from the top of the 24-bit range, far above dmctl's, and
/// its devices are not dmctl's (no dmctl UUID); they are removed after the
/// run.
struct FloorProvision {
    pool_dm: String,
    pool_devno: String,
    origin_id: u64,
    sectors: u64,
    fstype: String,
}

impl FloorProvision {
    const FIRST_ID: u64 = 16_000_000;

    fn new(b: &Bench, pool: &str) -> Result<FloorProvision> {
        let json = |args: &[&str]| -> Result<serde_json::Value> {
            let out = run(b.dmctl().arg("--json").args(args))?;
            serde_json::from_str(&out).with_context(|| format!("parsing dmctl {args:?}"))
        };
        let img = json(&["image", "inspect", pool, REF])?;
        let top = img["layers"]
            .as_array()
            .and_then(|l| l.last())
            .and_then(|l| l["volume"].as_str())
            .ok_or_else(|| anyhow!("image inspect: no top layer volume"))?
            .to_string();
        let vol = json(&["info", &format!("{pool}/{top}")])?;
        let origin_id = vol["device_id"]
            .as_u64()
            .ok_or_else(|| anyhow!("info {top}: no device_id"))?;
        let size = vol["size"]
            .as_u64()
            .ok_or_else(|| anyhow!("info {top}: no size"))?;
        let fstype = vol["fs"].as_str().unwrap_or("ext4").to_string();
        // dmctl names its pools' devices dmctl+POOL (names.rs); the pool's
        // device number is in sysfs (there is no udev for /dev/mapper).
        let pool_dm = format!("dmctl+{pool}");
        let mut pool_devno = None;
        for e in fs::read_dir("/sys/block")? {
            let p = e?.path();
            if fs::read_to_string(p.join("dm/name")).is_ok_and(|n| n.trim() == pool_dm) {
                pool_devno = Some(fs::read_to_string(p.join("dev"))?.trim().to_string());
            }
        }
        let pool_devno = pool_devno.ok_or_else(|| anyhow!("{pool_dm} not found in /sys/block"))?;
        Ok(FloorProvision {
            pool_dm,
            pool_devno,
            origin_id,
            sectors: size / 512,
            fstype,
        })
    }

    fn name(i: usize) -> String {
        format!("benchfloor{i}")
    }

    fn provision(&self, cfg: &Config, i: usize, dir: &Path) -> Result<()> {
        run(Command::new(&cfg.floor)
            .arg(&self.pool_dm)
            .arg(&self.pool_devno)
            .arg((Self::FIRST_ID + i as u64).to_string())
            .arg(self.origin_id.to_string())
            .arg(self.sectors.to_string())
            .arg(Self::name(i))
            .arg(dir)
            .arg(&self.fstype))
        .map(drop)
    }

    fn remove(&self, i: usize, dir: &Path) -> Result<()> {
        run(Command::new("umount").arg(dir))?;
        run(Command::new("dmsetup").args(["remove", &Self::name(i)]))?;
        run(Command::new("dmsetup").args([
            "message",
            &self.pool_dm,
            "0",
            &format!("delete {}", Self::FIRST_ID + i as u64),
        ]))
        .map(drop)
    }
}

fn print_trace(what: &str, stderr: &str) {
    println!("\n{what}:\n\n```");
    for l in stderr.lines() {
        println!("{l}");
    }
    println!("```\n");
}

/// Entries and regular-file bytes of a tree (not following symlinks),
/// skipping mkfs's lost+found.
fn tree_summary(root: &Path) -> Result<(u64, u64)> {
    let (mut n, mut bytes) = (0u64, 0u64);
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let e = e?;
            if d == root && e.file_name() == "lost+found" {
                continue;
            }
            let m = e.path().symlink_metadata()?;
            n += 1;
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                bytes += m.len();
            }
        }
    }
    Ok((n, bytes))
}

// ------------------------------------------------------------------ driver

fn main() {
    let cfg = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench_image: {e:#}");
            std::process::exit(2);
        }
    };
    if let Err(e) = bench(&cfg) {
        eprintln!("bench_image: error: {e:#}");
        std::process::exit(1);
    }
}

fn bench(cfg: &Config) -> Result<()> {
    let start = Instant::now();
    println!("# Image import and provisioning (issue 4)\n");
    describe_env(cfg);
    println!(
        "- process start (20 runs, median / p95): busybox true {}; dmctl --version {}",
        process_start(20, || Command::new("true")),
        process_start(20, || {
            let mut c = Command::new(&cfg.dmctl);
            c.arg("--version");
            c
        })
    );
    fs::create_dir_all(&cfg.work)?;
    let root = cfg.work.join("dmctl-root");
    fs::create_dir_all(&root)?;

    println!("\n## Image (built in the guest with umoci)\n");
    let img = build_image(cfg)?;
    let b = Bench { cfg, root, img };
    println!("- built in {:.1} s", start.elapsed().as_secs_f64());

    // ---------------------------------------------------------- imports
    println!(
        "\n## Import: {} rounds, each contender into its own fresh pool\n",
        cfg.reps
    );
    let mut samples: Vec<Vec<Sample>> = Who::ALL.iter().map(|_| vec![]).collect();
    // What stays for part 2: the last dmctl pool and the last umoci rootfs.
    let mut kept_dmctl = None;
    let mut kept_umoci = None;
    for rep in 1..=cfg.reps {
        for k in 0..Who::ALL.len() {
            let wi = (k + rep - 1) % Who::ALL.len();
            let who = Who::ALL[wi];
            let (pool, dir) = b.prepare(who, rep)?;
            let s = b
                .import(who, &pool, &dir, rep == cfg.reps)
                .with_context(|| format!("{} (round {rep})", who.name()))?;
            println!(
                "- round {rep}: {:<32} {:>8.2} s{}",
                who.name(),
                s.total.as_secs_f64(),
                if who == Who::Dmctl {
                    String::new()
                } else {
                    format!(" (of which syncfs {:.2} s)", s.sync.as_secs_f64())
                }
            );
            samples[wi].push(s);
            let last = rep == cfg.reps;
            match who {
                Who::Dmctl if last => kept_dmctl = Some(pool),
                Who::Umoci if last => kept_umoci = Some(dir.join("bundle/rootfs")),
                _ => b.discard(who, &pool)?,
            }
        }
    }
    let pool = kept_dmctl.ok_or_else(|| anyhow!("no dmctl pool kept"))?;
    let lower = kept_umoci.ok_or_else(|| anyhow!("no umoci rootfs kept"))?;
    let import_done = start.elapsed();

    // ----------------------------------------------------- provisioning
    println!(
        "\n## Provisioning: {} x `dmctl image provision --mount`, {} x the kernel floor \
         (`floor_snapshot ... --mount`) and {} x overlay mount, interleaved\n",
        cfg.provisions, cfg.provisions, cfg.provisions
    );
    let mnt = cfg.work.join("prov");
    let ov = cfg.work.join("ov");
    let fl = cfg.work.join("floor");
    let floor = FloorProvision::new(&b, &pool)?;
    println!(
        "- floor: create_snap of thin id {} (the image's top layer) in {} ({}), {} sectors, \
         thin ids from {}, mounted as {}",
        floor.origin_id,
        floor.pool_dm,
        floor.pool_devno,
        floor.sectors,
        FloorProvision::FIRST_ID,
        floor.fstype
    );
    // An overlay mount of the umoci-unpacked rootfs with a fresh upper dir
    // under `o`, timed.
    let overlay_mount = |o: &Path| -> Result<Duration> {
        let (u, w, mp) = (o.join("upper"), o.join("work"), o.join("merged"));
        for p in [&u, &w, &mp] {
            fs::create_dir_all(p)?;
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            u.display(),
            w.display()
        );
        timed(|| {
            run(Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o", &opts])
                .arg(&mp))
            .map(drop)
        })
    };
    // `dmctl image provision POOL REF NAME --mount mnt/NAME`, timed.
    let provision = |name: &str| -> Result<Duration> {
        let m = mnt.join(name);
        fs::create_dir_all(&m)?;
        timed(|| {
            run(b
                .dmctl()
                .args(["image", "provision", &pool, REF, name, "--mount"])
                .arg(&m))
            .map(drop)
        })
        .with_context(|| format!("provision {name}"))
    };
    // The same with -v, its trace printed under `what`.
    let traced_provision = |name: &str, what: &str| -> Result<()> {
        let m = mnt.join(name);
        fs::create_dir_all(&m)?;
        let t = Instant::now();
        let (_, err) = run_full(
            b.dmctl()
                .args(["-v", "image", "provision", &pool, REF, name, "--mount"])
                .arg(&m),
        )?;
        print_trace(
            &format!(
                "{what} with -v ({} ms from spawn to exit; not in the table)",
                fmt_ms(ms(t.elapsed()))
            ),
            &err,
        );
        Ok(())
    };
    let mut prov = vec![];
    let mut over = vec![];
    let mut flo = vec![];
    for i in 1..=cfg.provisions {
        let f = fl.join(i.to_string());
        fs::create_dir_all(&f)?;
        let d = timed(|| floor.provision(cfg, i, &f)).with_context(|| format!("floor {i}"))?;
        flo.push(d);
        prov.push(provision(&format!("job{i}"))?);
        over.push(overlay_mount(&ov.join(i.to_string())).with_context(|| format!("overlay {i}"))?);
    }
    let fmt_all = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.0}", ms(*d)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("- provision samples (ms, in order): {}", fmt_all(&prov));
    println!("- floor samples (ms, in order): {}", fmt_all(&flo));
    println!("- overlay samples (ms, in order): {}", fmt_all(&over));

    // Sanity: the provisioned rootfs and the overlay see the same tree.
    let a = tree_summary(&mnt.join("job1"))?;
    let o = tree_summary(&ov.join("1/merged"))?;
    let f = tree_summary(&fl.join("1"))?;
    println!(
        "- check: job1 has {} entries / {} of files; overlay 1 has {} / {}; floor 1 has {} / {}{}",
        a.0,
        mib(a.1),
        o.0,
        mib(o.1),
        f.0,
        mib(f.1),
        if a == o && a == f {
            " (same)"
        } else {
            " (DIFFERENT)"
        }
    );

    // Where a provision's time goes: one more, not in the table, with -v,
    // then its removal with -v.
    traced_provision("traced", "one more provision")?;
    let t = Instant::now();
    let (_, err) = run_full(
        b.dmctl()
            .args(["-v", "rm", &format!("{pool}/traced"), "--force"]),
    )?;
    print_trace(
        &format!(
            "its removal with -v ({} ms from spawn to exit)",
            fmt_ms(ms(t.elapsed()))
        ),
        &err,
    );

    // Warm provisioning: `image warm` makes the spares ahead (timed, not
    // part of a provision), then provisions hand them out, interleaved
    // with overlay mounts as above.
    println!(
        "\n## Warm provisioning: `dmctl image warm --spares {n}`, then {n} x `dmctl image \
         provision --mount` (each hands out a spare) and {n} x overlay mount, interleaved\n",
        n = cfg.provisions
    );
    let t = Instant::now();
    run(b.dmctl().args([
        "image",
        "warm",
        &pool,
        REF,
        "--spares",
        &cfg.provisions.to_string(),
    ]))
    .context("image warm")?;
    let warm_time = t.elapsed();
    println!(
        "- image warm --spares {}: {:.1} s ({} ms per spare, off the provision's path)",
        cfg.provisions,
        warm_time.as_secs_f64(),
        fmt_ms(ms(warm_time) / cfg.provisions as f64)
    );
    let mut wprov = vec![];
    let mut wover = vec![];
    for i in 1..=cfg.provisions {
        wprov.push(provision(&format!("warm{i}"))?);
        wover.push(
            overlay_mount(&ov.join(format!("w{i}"))).with_context(|| format!("overlay w{i}"))?,
        );
    }
    println!(
        "- warm provision samples (ms, in order): {}",
        fmt_all(&wprov)
    );
    println!("- overlay samples (ms, in order): {}", fmt_all(&wover));
    let left = run(b.dmctl().args(["--json", "image", "inspect", &pool, REF]))?;
    let left: serde_json::Value = serde_json::from_str(&left)?;
    println!("- spares left after the provisions: {}", left["spares"]);
    let w = tree_summary(&mnt.join("warm1"))?;
    let o = tree_summary(&ov.join("w1/merged"))?;
    println!(
        "- check: warm1 has {} entries / {} of files; overlay w1 has {} / {}{}",
        w.0,
        mib(w.1),
        o.0,
        mib(o.1),
        if w == o { " (same)" } else { " (DIFFERENT)" }
    );
    run(b
        .dmctl()
        .args(["image", "warm", &pool, REF, "--spares", "1"]))?;
    traced_provision("traced-warm", "one more warm provision")?;
    run(b
        .dmctl()
        .args(["rm", &format!("{pool}/traced-warm"), "--force"]))?;

    let t = Instant::now();
    for i in 1..=cfg.provisions {
        run(b.dmctl().args(["rm", &format!("{pool}/job{i}"), "--force"]))
            .with_context(|| format!("rm job{i}"))?;
    }
    let rm_time = t.elapsed();
    for i in 1..=cfg.provisions {
        floor.remove(i, &fl.join(i.to_string()))?;
    }
    let t = Instant::now();
    for i in 1..=cfg.provisions {
        run(Command::new("umount").arg(ov.join(format!("{i}/merged"))))?;
    }
    let umount_time = t.elapsed();
    for i in 1..=cfg.provisions {
        run(b
            .dmctl()
            .args(["rm", &format!("{pool}/warm{i}"), "--force"]))
        .with_context(|| format!("rm warm{i}"))?;
        run(Command::new("umount").arg(ov.join(format!("w{i}/merged"))))?;
    }
    println!(
        "- teardown (untimed above): {} x `dmctl rm --force` {:.1} s ({} ms each); \
         {} x overlay umount {:.1} s",
        cfg.provisions,
        rm_time.as_secs_f64(),
        fmt_ms(ms(rm_time) / cfg.provisions as f64),
        cfg.provisions,
        umount_time.as_secs_f64()
    );

    // ----------------------------------------------------------- tables
    println!(
        "\n## Results (import {:.0} s, whole run {:.0} s)\n",
        import_done.as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    let med = |wi: usize| -> f64 {
        let v: Vec<Duration> = samples[wi].iter().map(|s| s.total).collect();
        stats(&v).0
    };
    println!(
        "Import of {} layers, {} uncompressed ({} gzip), median of {}:\n",
        b.img.blobs.len(),
        mib(b.img.tars.iter().map(|t| t.1).sum()),
        mib(b.img.blobs.iter().map(|t| t.1).sum()),
        cfg.reps
    );
    println!("| contender | median s | min s | max s | / tar floor (gzip) |");
    println!("|---|---:|---:|---:|---:|");
    let floor = med(2);
    for (wi, who) in Who::ALL.iter().enumerate() {
        let v: Vec<f64> = samples[wi].iter().map(|s| s.total.as_secs_f64()).collect();
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(0.0, f64::max);
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            who.cell(),
            med(wi) / 1e3,
            min,
            max,
            med(wi) / floor
        );
    }
    let (dm, um, tr) = (med(0), med(1), med(3));
    println!(
        "\n- dmctl / tar floor (gzip -dc | tar -x): **{:.2}** (target <= 1.2: {})",
        dm / floor,
        if dm / floor <= 1.2 { "met" } else { "MISSED" }
    );
    println!("- dmctl / tar of uncompressed layers: {:.2}", dm / tr);
    println!("- dmctl / umoci unpack: **{:.2}**", dm / um);

    println!(
        "\nProvisioning, {} each, interleaved (ms):\n",
        cfg.provisions
    );
    println!("| operation | p50 | p95 | max |");
    println!("|---|---:|---:|---:|");
    let (pm, pp) = latency_row("dmctl image provision --mount", &prov);
    let (fm, _) = latency_row(
        "kernel floor: create_snap + dm create + mount (one static process)",
        &flo,
    );
    let (om, op) = latency_row("mount -t overlay (fresh upper on tmpfs)", &over);
    against_overlay("provision", (pm, pp), (om, op));
    println!(
        "- kernel floor p50 / overlay p50: {:.2} (what no tool that makes a thin snapshot \
         and mounts it can beat)",
        fm / om
    );
    println!("- provision p50 / kernel floor p50: {:.2}", pm / fm);
    println!(
        "\nWarm provisioning (spares made ahead by `image warm`), {} each, interleaved (ms):\n",
        cfg.provisions
    );
    println!("| operation | p50 | p95 | max |");
    println!("|---|---:|---:|---:|");
    let warm = latency_row("dmctl image provision --mount (hands out a spare)", &wprov);
    let overlay = latency_row("mount -t overlay (fresh upper on tmpfs)", &wover);
    against_overlay("warm provision", warm, overlay);
    println!(
        "- image warm, per spare: {} ms (the cold provision's work, done ahead)",
        fmt_ms(ms(warm_time) / cfg.provisions as f64)
    );
    std::io::stdout().flush()?;
    Ok(())
}

/// A `| label | p50 | p95 | max |` table row; returns (p50, p95) in ms.
fn latency_row(label: &str, samples: &[Duration]) -> (f64, f64) {
    let (p50, p95, max) = stats(samples);
    println!(
        "| {label} | {} | {} | {} |",
        fmt_ms(p50),
        fmt_ms(p95),
        fmt_ms(max)
    );
    (p50, p95)
}

/// The ratios of `what` (p50, p95) to the overlay mount's, with the
/// issue's target (p50 under 3x).
fn against_overlay(what: &str, (p50, p95): (f64, f64), (o50, o95): (f64, f64)) {
    println!(
        "\n- {what} p50 / overlay p50: **{:.2}** (target < 3: {})",
        p50 / o50,
        if p50 / o50 < 3.0 { "met" } else { "MISSED" }
    );
    println!("- {what} p95 / overlay p95: {:.2}", p95 / o95);
}
