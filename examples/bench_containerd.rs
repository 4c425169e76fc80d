//! Container start latency through containerd, per snapshotter (issue 12).
//! Run inside the test guest by `vm-tests/bench-containerd`; see
//! docs/benchmarks.md.
//!
//! One containerd, four snapshotters, all in this boot:
//! - `overlayfs`: containerd's built-in overlay snapshotter (the baseline);
//! - `devmapper`: containerd's built-in devmapper snapshotter, on its own
//!   thin pool (made with dmsetup on loop files of the same size as dmctl's);
//! - `dmctl`: `dmctl serve` on a dmctl pool, no spares (cold);
//! - `dmctl-warm`: `dmctl serve --spares N` on another dmctl pool.
//!
//! 1. The image is imported once without unpacking, then unpacked into each
//!    snapshotter (`ctr images import --snapshotter S`), timed.
//! 2. `--runs` rounds of `ctr run --rm --snapshotter S IMAGE ID /bin/true`,
//!    one per snapshotter per round (interleaved, the order rotated each
//!    round), each timed from spawn to exit.
//! 3. A burst per snapshotter: `--burst` `ctr run --rm` started at once,
//!    timed until the last one exits.
//!
//! Creates loop and dm devices and mounts: it refuses to run without
//! `--in-guest`.

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

#[path = "common/bench.rs"]
mod bench_common;
use bench_common::{
    fmt_ms, ms, print_builds, print_kernel_cpu_mem, run_output, spawn_cost, stats, timed,
};

const SNAPSHOTTERS: [&str; 4] = ["overlayfs", "devmapper", "dmctl", "dmctl-warm"];
const POOL_BYTES: u64 = 4 << 30;

struct Config {
    dmctl: PathBuf,
    image: PathBuf,
    reference: String,
    work: PathBuf,
    runs: usize,
    burst: usize,
    spares: usize,
    prepares: usize,
}

fn usage() -> &'static str {
    "usage: bench_containerd --in-guest --image TAR --ref REF [--dmctl PATH] [--work DIR]\n\
     \x20      [--runs 50] [--burst 20] [--spares 4] [--prepares 50] (0 skips a phase)\n\
     Creates loop and dm devices and mounts: run it in a throwaway guest (vm-tests/bench-containerd)."
}

fn parse_args() -> Result<Config> {
    let exe = std::env::current_exe().context("locating this program")?;
    let exe_dir = exe.parent().unwrap_or(Path::new(".")).to_path_buf();
    let mut cfg = Config {
        dmctl: exe_dir.join("../dmctl"),
        image: PathBuf::new(),
        reference: String::new(),
        work: PathBuf::from("/tmp/bench-containerd"),
        runs: 50,
        burst: 20,
        spares: 4,
        prepares: 50,
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
            "--image" => cfg.image = PathBuf::from(val()?),
            "--ref" => cfg.reference = val()?,
            "--work" => cfg.work = PathBuf::from(val()?),
            "--runs" => cfg.runs = val()?.parse().context("--runs")?,
            "--burst" => cfg.burst = val()?.parse().context("--burst")?,
            "--spares" => cfg.spares = val()?.parse().context("--spares")?,
            "--prepares" => cfg.prepares = val()?.parse().context("--prepares")?,
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
    if cfg.image.as_os_str().is_empty() || cfg.reference.is_empty() {
        bail!("--image and --ref are required\n{}", usage());
    }
    Ok(cfg)
}

fn run(cmd: &mut Command) -> Result<String> {
    run_output(cmd, 800).map(|(out, _)| out)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready()? {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn stop(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// What runs during the benchmark and is stopped at its end.
struct World {
    children: Vec<Child>,
    ctr_sock: PathBuf,
}

impl Drop for World {
    fn drop(&mut self) {
        // containerd first (it holds mounts of every snapshotter), then
        // the servers.
        for c in self.children.iter_mut().rev() {
            stop(c);
        }
    }
}

impl World {
    fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a").arg(&self.ctr_sock);
        c
    }
}

/// The devmapper snapshotter's pool: a thin-pool on two loop files, as its
/// documentation sets one up (64K blocks, no zeroing).
fn devmapper_pool(work: &Path) -> Result<String> {
    let data = work.join("devmapper-data.img");
    let meta = work.join("devmapper-meta.img");
    fs::File::create(&data)?.set_len(POOL_BYTES)?;
    fs::File::create(&meta)?.set_len(64 << 20)?;
    // busybox's losetup: the first free device, then attach (no --show).
    let losetup = |f: &Path| -> Result<String> {
        let dev = run(Command::new("losetup").arg("-f"))?.trim().to_string();
        run(Command::new("losetup").args([dev.as_str(), s(f)]))?;
        Ok(dev)
    };
    let data_dev = losetup(&data)?.trim().to_string();
    let meta_dev = losetup(&meta)?.trim().to_string();
    let name = "bench-devmapper-pool".to_string();
    let table = format!(
        "0 {} thin-pool {meta_dev} {data_dev} 128 32768 1 skip_block_zeroing",
        POOL_BYTES / 512
    );
    // No udev in the guest: libdevmapper makes /dev/mapper/NAME itself
    // (containerd's devmapper opens the pool there, and its thin devices).
    run(Command::new("dmsetup").env("DM_DISABLE_UDEV", "1").args([
        "--noudevsync",
        "create",
        &name,
        "--table",
        &table,
    ]))?;
    run(Command::new("dmsetup").env("DM_DISABLE_UDEV", "1").args([
        "--noudevsync",
        "mknodes",
        &name,
    ]))?;
    Ok(name)
}

fn start_serve(
    cfg: &Config,
    root: &Path,
    pool: &str,
    sock: &Path,
    spares: usize,
    log: &Path,
) -> Result<Child> {
    run(Command::new(&cfg.dmctl).arg("--root").arg(root).args([
        "pool",
        "create",
        pool,
        "--data-size",
        "4G",
    ]))?;
    let err = fs::File::create(log)?;
    let mut child = Command::new(&cfg.dmctl)
        .arg("--root")
        .arg(root)
        .args(["serve", pool, "--address", s(sock), "--size", "512M"])
        .args(["--spares", &spares.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::from(err))
        .spawn()?;
    wait_for("dmctl serve", Duration::from_secs(60), || {
        if let Some(st) = child.try_wait()? {
            bail!(
                "dmctl serve exited ({st}): {}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        Ok(UnixStream::connect(sock).is_ok())
    })?;
    Ok(child)
}

fn setup(cfg: &Config) -> Result<World> {
    let w = &cfg.work;
    let _ = fs::remove_dir_all(w);
    fs::create_dir_all(w)?;
    let root = w.join("dmctl-root");
    let mut world = World {
        children: vec![],
        ctr_sock: w.join("containerd.sock"),
    };
    let cold = w.join("dmctl.sock");
    let warm = w.join("dmctl-warm.sock");
    world.children.push(start_serve(
        cfg,
        &root,
        "cold",
        &cold,
        0,
        &w.join("serve-cold.log"),
    )?);
    world.children.push(start_serve(
        cfg,
        &root,
        "warm",
        &warm,
        cfg.spares,
        &w.join("serve-warm.log"),
    )?);
    let dm_pool = devmapper_pool(w)?;
    let config = w.join("config.toml");
    fs::write(
        &config,
        format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n\
             [plugins.\"io.containerd.snapshotter.v1.devmapper\"]\n  \
             root_path = \"{dmroot}\"\n  pool_name = \"{dm_pool}\"\n  \
             base_image_size = \"512MB\"\n\
             [proxy_plugins]\n  [proxy_plugins.dmctl]\n    type = \"snapshot\"\n    \
             address = \"{cold}\"\n  [proxy_plugins.dmctl-warm]\n    type = \"snapshot\"\n    \
             address = \"{warm}\"\n",
            root = s(&w.join("ctd-root")),
            state = s(&w.join("ctd-state")),
            sock = s(&world.ctr_sock),
            dmroot = s(&w.join("devmapper-root")),
            cold = s(&cold),
            warm = s(&warm),
        ),
    )?;
    let log = fs::File::create(w.join("containerd.log"))?;
    // No udev in the guest: devmapper's dmsetup calls must not wait for it.
    let child = Command::new("containerd")
        .arg("--config")
        .arg(&config)
        .env("DM_DISABLE_UDEV", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .context("starting containerd")?;
    world.children.push(child);
    wait_for("containerd", Duration::from_secs(120), || {
        Ok(world.ctr().arg("version").output()?.status.success())
    })?;
    let plugins = run(world.ctr().args(["plugins", "ls"]))?;
    for sn in SNAPSHOTTERS {
        let ok = plugins.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.first() == Some(&"io.containerd.snapshotter.v1")
                && f.get(1) == Some(&sn)
                && f.last() == Some(&"ok")
        });
        if !ok {
            bail!(
                "snapshotter {sn} is not ok in containerd: {plugins}\ncontainerd log: {}",
                fs::read_to_string(w.join("containerd.log")).unwrap_or_default()
            );
        }
    }
    Ok(world)
}

fn bench(cfg: &Config) -> Result<()> {
    let start = Instant::now();
    println!("# Container start through containerd, per snapshotter (issue 12)\n");
    println!("- date: {}", run(Command::new("date").arg("-u"))?.trim());
    print_kernel_cpu_mem();
    println!(
        "- containerd: {}",
        run(Command::new("containerd").arg("--version"))?.trim()
    );
    println!(
        "- runc: {}",
        run(Command::new("runc").arg("--version"))?
            .lines()
            .next()
            .unwrap_or_default()
    );
    println!(
        "- image: {} ({}), pools: {} GiB data each, 512M per new snapshot",
        cfg.reference,
        cfg.image.display(),
        POOL_BYTES >> 30
    );
    println!("- dmctl-warm: --spares {}", cfg.spares);
    print_builds(&[("dmctl", &cfg.dmctl)]);
    for (what, prog, arg) in [
        ("busybox `true`", "true", None),
        ("`ctr --version`", "ctr", Some("--version")),
    ] {
        let cost = spawn_cost(20, || {
            let mut c = Command::new(prog);
            c.args(arg);
            c
        });
        if cost.error.is_none() {
            let (m, p, _) = stats(&cost.samples);
            println!(
                "- spawn of {what}: median {} ms, p95 {} ms (20 runs)",
                fmt_ms(m),
                fmt_ms(p)
            );
        }
    }
    let world = setup(cfg)?;
    println!("- setup: {:.1} s\n", start.elapsed().as_secs_f64());

    // Content once, then an unpack per snapshotter.
    run(world
        .ctr()
        .args(["images", "import", "--no-unpack", s(&cfg.image)]))?;
    println!("## Image unpack (`ctr images import --snapshotter S`, content already present)\n");
    let mut unpack = Vec::new();
    for sn in SNAPSHOTTERS {
        let d = timed(|| {
            run(world
                .ctr()
                .args(["images", "import", "--snapshotter", sn, s(&cfg.image)]))
            .map(|_| ())
        })?;
        unpack.push((sn, d));
    }
    println!("| snapshotter | unpack ms |\n|---|---:|");
    for (sn, d) in &unpack {
        println!("| {sn} | {} |", fmt_ms(ms(*d)));
    }

    if cfg.prepares > 0 {
        prepare_phase(&world, cfg)?;
    }
    if cfg.runs > 0 {
        // One warm-up run each (first starts page in the shim and runc).
        for sn in SNAPSHOTTERS {
            ctr_run(&world, cfg, sn, &format!("warmup-{sn}"))?;
        }
        let mut samples: Vec<Vec<Duration>> = vec![vec![]; SNAPSHOTTERS.len()];
        for round in 0..cfg.runs {
            for k in 0..SNAPSHOTTERS.len() {
                let i = (k + round) % SNAPSHOTTERS.len();
                let sn = SNAPSHOTTERS[i];
                let t = Instant::now();
                ctr_run(&world, cfg, sn, &format!("r{round}-{sn}"))?;
                samples[i].push(t.elapsed());
            }
            // Give the warm server's refill a moment, as a runner between
            // jobs would; every contender gets the same pause.
            std::thread::sleep(Duration::from_millis(200));
        }
        println!(
            "\n## `ctr run --rm --snapshotter S IMAGE ID /bin/true`, {} runs each, interleaved\n",
            cfg.runs
        );
        let base = stats(&samples[0]);
        println!("| snapshotter | p50 ms | p95 ms | p50 / overlayfs | p95 / overlayfs |\n|---|---:|---:|---:|---:|");
        let mut p50 = Vec::new();
        for (i, sn) in SNAPSHOTTERS.iter().enumerate() {
            let (med, p95, _) = stats(&samples[i]);
            p50.push((med, p95));
            println!(
                "| {sn} | {} | {} | {:.2} | {:.2} |",
                fmt_ms(med),
                fmt_ms(p95),
                med / base.0,
                p95 / base.1
            );
        }
        println!(
            "\ndevmapper / dmctl (p50): cold {:.2}, warm {:.2}",
            p50[1].0 / p50[2].0,
            p50[1].0 / p50[3].0
        );
    }
    if cfg.burst > 0 {
        println!(
            "\n## Burst: {} `ctr run --rm` started at once, until the last exits\n",
            cfg.burst
        );
        println!("| snapshotter | burst ms | / overlayfs |\n|---|---:|---:|");
        let mut bursts = Vec::new();
        for sn in SNAPSHOTTERS {
            std::thread::sleep(Duration::from_secs(2));
            let d = at_once(&format!("burst on {sn}"), cfg.burst, |i| {
                let mut c = world.ctr();
                let id = format!("b{i}-{sn}");
                c.args([
                    "run",
                    "--rm",
                    "--snapshotter",
                    sn,
                    &cfg.reference,
                    &id,
                    "/bin/true",
                ]);
                c
            })?;
            bursts.push(d);
        }
        for (i, sn) in SNAPSHOTTERS.iter().enumerate() {
            println!(
                "| {sn} | {} | {:.2} |",
                fmt_ms(ms(bursts[i])),
                ms(bursts[i]) / ms(bursts[0])
            );
        }
        println!(
            "\ndevmapper / dmctl (burst): cold {:.2}, warm {:.2}",
            ms(bursts[1]) / ms(bursts[2]),
            ms(bursts[1]) / ms(bursts[3])
        );
    }
    drop(world);
    println!("\ntotal run time {:.0} s", start.elapsed().as_secs_f64());
    Ok(())
}

/// The snapshotter alone: `ctr snapshots --snapshotter S prepare KEY TOP`
/// on the image's top layer (what a container start asks of it), timed
/// from spawn to exit, `--prepares` rounds interleaved; then the same
/// number at once per snapshotter. Each snapshot is removed untimed, with
/// a synchronous garbage collection so removals never overlap a sample.
fn prepare_phase(world: &World, cfg: &Config) -> Result<()> {
    let mut tops = Vec::new();
    for sn in SNAPSHOTTERS {
        // The committed snapshot with a parent: the top of the 2-layer image.
        let listed = run(world.ctr().args(["snapshots", "--snapshotter", sn, "ls"]))?;
        let top = listed
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() == 3 && f[2] == "Committed" && f[1].starts_with("sha256:"))
            .map(|f| f[0].to_string())
            .ok_or_else(|| anyhow!("no top layer in {sn}'s snapshots: {listed}"))?;
        tops.push(top);
    }
    let mut samples: Vec<Vec<Duration>> = vec![vec![]; SNAPSHOTTERS.len()];
    for round in 0..cfg.prepares {
        for k in 0..SNAPSHOTTERS.len() {
            let i = (k + round) % SNAPSHOTTERS.len();
            let (sn, key) = (SNAPSHOTTERS[i], format!("p{round}"));
            let prep = ["snapshots", "--snapshotter", sn, "prepare", &key, &tops[i]];
            samples[i].push(timed(|| run(world.ctr().args(prep)).map(|_| ()))?);
        }
        for sn in SNAPSHOTTERS {
            run(world
                .ctr()
                .args(["snapshots", "--snapshotter", sn, "rm", &format!("p{round}")]))?;
        }
        gc(world)?;
    }
    println!(
        "\n## Prepare of a container root: `ctr snapshots --snapshotter S prepare KEY TOP`, {} each, interleaved\n",
        cfg.prepares
    );
    println!("| snapshotter | p50 ms | p95 ms | p50 / overlayfs | devmapper / S (p50) |\n|---|---:|---:|---:|---:|");
    let base = stats(&samples[0]).0;
    let dm = stats(&samples[1]).0;
    for (i, sn) in SNAPSHOTTERS.iter().enumerate() {
        let (med, p95, _) = stats(&samples[i]);
        println!(
            "| {sn} | {} | {} | {:.2} | {:.2} |",
            fmt_ms(med),
            fmt_ms(p95),
            med / base,
            dm / med
        );
    }
    println!(
        "\n## {} Prepares at once on the top layer, until the last is done\n",
        cfg.burst.max(1)
    );
    println!("| snapshotter | burst ms | / overlayfs | devmapper / S |\n|---|---:|---:|---:|");
    let mut bursts = Vec::new();
    for (i, sn) in SNAPSHOTTERS.iter().enumerate() {
        std::thread::sleep(Duration::from_secs(2));
        let d = at_once(&format!("prepare burst on {sn}"), cfg.burst.max(1), |j| {
            let mut c = world.ctr();
            let key = format!("b{j}");
            c.args(["snapshots", "--snapshotter", sn, "prepare", &key, &tops[i]]);
            c
        })?;
        bursts.push(d);
        for j in 0..cfg.burst.max(1) {
            run(world
                .ctr()
                .args(["snapshots", "--snapshotter", sn, "rm", &format!("b{j}")]))?;
        }
        gc(world)?;
    }
    for (i, sn) in SNAPSHOTTERS.iter().enumerate() {
        println!(
            "| {sn} | {} | {:.2} | {:.2} |",
            fmt_ms(ms(bursts[i])),
            ms(bursts[i]) / ms(bursts[0]),
            ms(bursts[1]) / ms(bursts[i])
        );
    }
    Ok(())
}

/// Start `n` commands at once (`command(i)` makes the i-th); the time until
/// the last one exits. Any failure fails the burst.
fn at_once(what: &str, n: usize, command: impl Fn(usize) -> Command) -> Result<Duration> {
    let t = Instant::now();
    let kids: Vec<Child> = (0..n)
        .map(|i| {
            command(i)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
        })
        .collect::<std::io::Result<_>>()?;
    for k in kids {
        let out = k.wait_with_output()?;
        if !out.status.success() {
            bail!("{what}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(t.elapsed())
}

/// A synchronous garbage collection of containerd's: the removal of an
/// empty lease with `--sync`.
fn gc(world: &World) -> Result<()> {
    let id = run(world.ctr().args(["leases", "create"]))?;
    run(world.ctr().args(["leases", "delete", "--sync", id.trim()])).map(|_| ())
}

fn ctr_run(world: &World, cfg: &Config, sn: &str, id: &str) -> Result<()> {
    run(world.ctr().args([
        "run",
        "--rm",
        "--snapshotter",
        sn,
        &cfg.reference,
        id,
        "/bin/true",
    ]))
    .map(|_| ())
    .with_context(|| format!("ctr run on {sn}"))
}

fn main() {
    let cfg = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench_containerd: {e:#}");
            std::process::exit(2);
        }
    };
    if let Err(e) = bench(&cfg) {
        eprintln!("bench_containerd: error: {e:#}");
        std::process::exit(1);
    }
}
