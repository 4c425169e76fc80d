//! Helpers shared by the benchmark drivers `bench_snapshot` and `bench_image`
//! (see docs/benchmarks.md): running commands, timing, statistics,
//! process-start cost and the common lines of the environment report.
//!
//! Each driver includes this file with
//! `#[path = "common/bench.rs"] mod bench_common;`. It lives in a
//! subdirectory because cargo auto-discovers `examples/*.rs` and
//! `examples/*/main.rs` as examples: `examples/bench_common.rs` would be built
//! as an example of its own and fail for want of a `main`.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

// ------------------------------------------------------------ running

/// Run a command to completion (stdin from /dev/null): its stdout and
/// stderr, or an error naming the command with its stderr (else its
/// stdout) on one line, cut at `max_msg` bytes so a report stays readable.
pub fn run_output(cmd: &mut Command, max_msg: usize) -> Result<(String, String)> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        let mut msg = String::from_utf8_lossy(&out.stderr)
            .trim()
            .replace('\n', " | ");
        if msg.is_empty() {
            msg = String::from_utf8_lossy(&out.stdout)
                .trim()
                .replace('\n', " | ");
        }
        if msg.len() > max_msg {
            let mut cut = max_msg;
            while !msg.is_char_boundary(cut) {
                cut -= 1;
            }
            msg.truncate(cut);
            msg.push_str(" ...");
        }
        bail!("{cmd:?} failed ({}): {msg}", out.status);
    }
    Ok((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

// ------------------------------------------------------- timing, statistics

/// Wall time of `f`, from call to return. An error from `f` is returned
/// instead of a time, so a failed operation never becomes a sample.
pub fn timed(f: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let t = Instant::now();
    f()?;
    Ok(t.elapsed())
}

/// A duration in milliseconds: the unit of every number the reports print.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Milliseconds for the report: two decimals below 10 ms and one above, so
/// that a 3 ms process start and a 300 ms operation both show about three
/// significant digits (docs/benchmarks.md quotes numbers in this form).
pub fn fmt_ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.1}")
    }
}

/// (median, p95, max) of the samples, in ms. The p95 is by nearest rank, the
/// ceil(0.95 n)-th smallest sample (the 19th of 20), not interpolated: it is
/// always a time that was actually measured, and the docs define it so.
/// `samples` must not be empty.
pub fn stats(samples: &[Duration]) -> (f64, f64, f64) {
    let mut v: Vec<f64> = samples.iter().copied().map(ms).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    let rank = ((0.95 * n as f64).ceil() as usize).clamp(1, n);
    (median, v[rank - 1], v[n - 1])
}

// ---------------------------------------------------------- process starts

/// Spawn-to-exit times of up to `n` runs of a command, and the error that
/// ended the runs early, if one could not be spawned.
pub struct SpawnCost {
    pub samples: Vec<Duration>,
    pub error: Option<std::io::Error>,
}

/// What one process start costs: `n` runs of a trivial command (`cmd` builds
/// a fresh one each time; stdout and stderr go to /dev/null, stdin is left
/// to `cmd`), each timed from spawn to exit. Every contender pays one or more
/// process starts per operation, and under QEMU/TCG a start costs
/// milliseconds to tens of milliseconds, so the results cannot be read
/// without it. Stops at the first spawn failure: a missing program should
/// show in the report, not abort the run.
pub fn spawn_cost(n: usize, cmd: impl Fn() -> Command) -> SpawnCost {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = cmd();
        c.stdout(Stdio::null()).stderr(Stdio::null());
        let t = Instant::now();
        if let Err(e) = c.status() {
            return SpawnCost {
                samples,
                error: Some(e),
            };
        }
        samples.push(t.elapsed());
    }
    SpawnCost {
        samples,
        error: None,
    }
}

// ------------------------------------------------------ environment report

/// The first line of a command's output (stdout, then stderr), trimmed, or
/// the spawn error in parentheses: for one-line version strings in the
/// environment report, where a missing tool must show rather than abort the
/// run. (Only `bench_image` uses it; each driver compiles its own copy of
/// this module.)
#[allow(dead_code)]
pub fn first_line(cmd: &mut Command) -> String {
    cmd.stdin(Stdio::null())
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_else(|e| format!("({e})"))
}

/// Print the `- kernel:` and `- cpu:` lines of the environment report (the
/// kernel release; CPU count and model from /proc/cpuinfo; total memory from
/// /proc/meminfo). Results are only comparable within one boot of one
/// machine, so the report must say which one it was. Unreadable files give
/// empty or placeholder values rather than an error.
pub fn print_kernel_cpu_mem() {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let mem = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(1)
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb / 1024)
        .unwrap_or(0);
    println!("- kernel: {}", kernel.trim());
    println!("- cpu: {cpus} x {model}, memory {mem} MiB");
}

/// Print one `- build of NAME: KIND (PATH)` line per project binary in
/// `bins`, then one for the running driver itself, KIND from
/// [`elf_link_kind`]. Under QEMU/TCG how a binary is linked changes its start
/// time several-fold (vm-tests/lib.sh), so a result dominated by process
/// starts means little unless the report says which build ran.
pub fn print_builds(bins: &[(&str, &Path)]) {
    for (name, path) in bins {
        println!(
            "- build of {name}: {} ({})",
            elf_link_kind(path),
            path.display()
        );
    }
    match std::env::current_exe() {
        Ok(exe) => {
            let name = exe
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "?".into());
            println!(
                "- build of {name} (this driver): {} ({})",
                elf_link_kind(&exe),
                exe.display()
            );
        }
        Err(e) => println!("- build of this driver: unknown (locating it: {e})"),
    }
}

// ------------------------------------------------------------ ELF headers

/// `e_type` of an executable with a fixed load address (not PIE).
const ET_EXEC: u16 = 2;
/// `e_type` of a position-independent object: a PIE (or a shared library).
const ET_DYN: u16 = 3;
/// `p_type` of the program header naming the dynamic loader.
const PT_INTERP: u32 = 3;
/// Size of the ELF64 file header.
const EHDR64_LEN: usize = 64;
/// Size of one ELF64 program header.
const PHDR64_LEN: usize = 56;
/// `e_phnum` meaning "too many; the count is in section header 0".
const PN_XNUM: u16 = 0xffff;

/// How an executable is linked, read from its ELF file header and program
/// headers: "static, non-PIE", "static PIE", "dynamic, non-PIE",
/// "dynamic PIE", or "unknown (why)". Non-PIE is `e_type` ET_EXEC (loaded at
/// a fixed address), PIE is ET_DYN; dynamic means a PT_INTERP program header
/// (the kernel starts the dynamic loader it names), static means none. Why it
/// matters: see [`print_builds`]. A shared library also is ET_DYN without
/// PT_INTERP and would read as "static PIE"; this is only asked about
/// executables. Only 64-bit little-endian ELF (what the guest runs) is
/// parsed; anything else is "unknown". Reads the headers only, not the whole
/// file. std only, no ELF crate.
pub fn elf_link_kind(path: &Path) -> String {
    match read_link_kind(path) {
        Ok(kind) => kind.to_string(),
        Err(why) => format!("unknown ({why})"),
    }
}

fn read_link_kind(path: &Path) -> std::result::Result<&'static str, String> {
    let mut f = File::open(path).map_err(|e| format!("cannot open: {e}"))?;

    // File header (Elf64_Ehdr), all fields little-endian:
    //   0..4  e_ident magic "\x7fELF"   4 EI_CLASS (2 = 64-bit)
    //   5     EI_DATA (1 = little-endian)
    //   16    e_type u16                32 e_phoff u64
    //   54    e_phentsize u16           56 e_phnum u16
    let mut h = [0u8; EHDR64_LEN];
    f.read_exact(&mut h).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => "too short for an ELF header".to_string(),
        _ => format!("cannot read an ELF header: {e}"),
    })?;
    if h[0..4] != *b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if h[4] != 2 {
        return Err(format!("ELF class {}, not 64-bit", h[4]));
    }
    if h[5] != 1 {
        return Err(format!("ELF data encoding {}, not little-endian", h[5]));
    }
    let u16_at = |o: usize| u16::from_le_bytes([h[o], h[o + 1]]);
    let e_type = u16_at(16);
    let e_phoff = u64::from_le_bytes([h[32], h[33], h[34], h[35], h[36], h[37], h[38], h[39]]);
    let e_phentsize = u16_at(54) as usize;
    let e_phnum = u16_at(56);
    let pie = match e_type {
        ET_EXEC => false,
        ET_DYN => true,
        t => return Err(format!("ELF type {t}, not an executable")),
    };
    if e_phnum == PN_XNUM {
        return Err("program header count in section header 0, not read".into());
    }
    if e_phnum > 0 && e_phentsize != PHDR64_LEN {
        return Err(format!(
            "program header size {e_phentsize}, expected {PHDR64_LEN}"
        ));
    }

    // Program headers (Elf64_Phdr): p_type is the u32 at offset 0 of each.
    let mut table = vec![0u8; PHDR64_LEN * e_phnum as usize];
    f.seek(SeekFrom::Start(e_phoff))
        .and_then(|_| f.read_exact(&mut table))
        .map_err(|e| format!("cannot read the program headers: {e}"))?;
    let interp = table
        .chunks_exact(PHDR64_LEN)
        .any(|p| u32::from_le_bytes([p[0], p[1], p[2], p[3]]) == PT_INTERP);

    Ok(match (interp, pie) {
        (false, false) => "static, non-PIE",
        (false, true) => "static PIE",
        (true, false) => "dynamic, non-PIE",
        (true, true) => "dynamic PIE",
    })
}
