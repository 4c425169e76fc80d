//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;

/// Whether this kernel can run a test that needs device-mapper.
///
/// On a host without dm the test is skipped, and says so on stderr, written
/// past libtest's output capture so it is visible in the run. Inside the test
/// guest (`DMCTL_REQUIRE_DM=1`) a missing dm is a failure, never a skip.
pub fn require_dm(test: &str) -> bool {
    // The node alone proves nothing: libdevmapper creates it even on a
    // kernel without dm. Opening it does.
    let opened = std::fs::File::open("/dev/mapper/control");
    if opened.is_ok() {
        return true;
    }
    if std::env::var_os("DMCTL_REQUIRE_DM").is_some() {
        panic!(
            "{test}: DMCTL_REQUIRE_DM is set but /dev/mapper/control cannot be opened: {opened:?}"
        );
    }
    let _ = writeln!(std::io::stderr(), "skipped: needs device-mapper: {test}");
    false
}

/// Skip the calling test (with a visible line) unless device-mapper is here.
#[macro_export]
macro_rules! require_dm {
    () => {
        if !common::require_dm(module_path!()) {
            return;
        }
    };
    ($name:expr) => {
        if !common::require_dm($name) {
            return;
        }
    };
}

/// Run a program, panic with its output if it fails; return stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Print a step of a walk-through (shown with --nocapture, e.g. by the demo).
pub fn step(msg: &str) {
    println!("==> {msg}");
}

/// The dmctl binary against a private state root, for integration tests.
/// On drop it unmounts and destroys every pool it made, so a failing test
/// leaves no device behind for the next one.
pub struct Dmctl {
    pub root: tempfile::TempDir,
    /// A state root elsewhere (e.g. on a persistent disk), used instead.
    fixed_root: Option<std::path::PathBuf>,
}

impl Default for Dmctl {
    fn default() -> Self {
        Self::new()
    }
}

impl Dmctl {
    pub fn new() -> Dmctl {
        Dmctl {
            root: tempfile::Builder::new()
                .prefix("dmctl-test-")
                .tempdir()
                .unwrap(),
            fixed_root: None,
        }
    }

    /// dmctl with its state in `root` (which outlives the test).
    pub fn with_root(root: &Path) -> Dmctl {
        let mut d = Dmctl::new();
        d.fixed_root = Some(root.to_path_buf());
        d
    }

    pub fn state_root(&self) -> &Path {
        self.fixed_root.as_deref().unwrap_or(self.root.path())
    }

    /// `dmctl --root ROOT ARGS...`, not started (e.g. to spawn it).
    pub fn command(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_dmctl"));
        c.arg("--root").arg(self.state_root()).args(args);
        c
    }

    /// Run `dmctl --root ROOT ARGS...`.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        self.command(args).output().expect("run dmctl")
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "dmctl {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run with --json and parse stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let out = self.ok(&a);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("dmctl {args:?}: bad JSON {e}: {out}"))
    }

    /// Run and require failure with exit code 1 and one `dmctl: error:`
    /// line; returns that line.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(1),
            "dmctl {args:?} should fail with exit 1; stdout: {} stderr: {stderr}",
            String::from_utf8_lossy(&out.stdout)
        );
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("dmctl: error:"))
            .collect();
        assert_eq!(errors.len(), 1, "exactly one error line, got: {stderr}");
        errors[0].to_string()
    }

    /// The state root's files, for before/after comparisons: path -> content.
    pub fn snapshot_state(&self) -> std::collections::BTreeMap<String, String> {
        let mut out = std::collections::BTreeMap::new();
        fn walk(dir: &Path, base: &Path, out: &mut std::collections::BTreeMap<String, String>) {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, base, out);
                } else if p.extension().is_some_and(|x| x == "json") {
                    let rel = p.strip_prefix(base).unwrap().display().to_string();
                    out.insert(rel, std::fs::read_to_string(&p).unwrap_or_default());
                }
            }
        }
        walk(self.state_root(), self.state_root(), &mut out);
        out
    }
}

impl Drop for Dmctl {
    fn drop(&mut self) {
        let pools = self.state_root().join("pools");
        if let Ok(rd) = std::fs::read_dir(&pools) {
            for e in rd.flatten() {
                let pool = e.file_name().to_string_lossy().into_owned();
                let vols = e.path().join("devices");
                if let Ok(vr) = std::fs::read_dir(&vols) {
                    for v in vr.flatten() {
                        if let Some(name) = v.file_name().to_string_lossy().strip_suffix(".json") {
                            let _ = self.run(&["umount", &format!("{pool}/{name}")]);
                        }
                    }
                }
                let _ = self.run(&["pool", "destroy", &pool, "--force"]);
            }
        }
    }
}

/// `thin_check` of a pool's metadata, live: on a metadata snapshot.
pub fn thin_check_live(d: &Dmctl, pool: &str) {
    let st = d.json(&["pool", "status", pool]);
    let dm_name = st["dm_name"].as_str().unwrap();
    let meta = st["meta"].as_str().unwrap();
    let meta_dev = if meta.starts_with("/dev/") {
        meta.to_string()
    } else {
        loop_of(meta)
    };
    run(
        "dmsetup",
        &[
            "--noudevsync",
            "message",
            dm_name,
            "0",
            "reserve_metadata_snap",
        ],
    );
    let out = std::process::Command::new("thin_check")
        .args(["--metadata-snap", &meta_dev])
        .output()
        .unwrap();
    run(
        "dmsetup",
        &[
            "--noudevsync",
            "message",
            dm_name,
            "0",
            "release_metadata_snap",
        ],
    );
    assert!(
        out.status.success(),
        "thin_check {pool}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The loop device whose backing file is `file`.
pub fn loop_of(file: &str) -> String {
    let file = std::fs::canonicalize(file).unwrap();
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let bf = e.path().join("loop/backing_file");
        if let Ok(s) = std::fs::read_to_string(&bf) {
            if Path::new(s.trim()) == file {
                return format!("/dev/{}", e.file_name().to_string_lossy());
            }
        }
    }
    panic!("no loop device for {}", file.display());
}

/// The invariants every reliability test checks after a command (or a crash
/// and the command that repairs it), for pool `pool`:
/// - `dmctl check POOL` exits 0: JSON and kernel thin ids agree, transaction
///   ids agree, no transaction is open;
/// - `thin_check` of the live metadata is clean;
/// - every dm device named `dmctl+POOL+...` is the device of a volume that
///   `dmctl --json ls POOL` reports active, and none is suspended; the pool's
///   own device is not suspended;
/// - every loop device backed by a file under the state root is the
///   `data.img` or `meta.img` of an existing pool;
/// - no `txn.json` is left in the pool's directory;
/// - every volume JSON parses.
pub fn check_invariants(d: &Dmctl, pool: &str) {
    let out = d.run(&["check", pool]);
    assert!(
        out.status.success(),
        "invariants of {pool}: `dmctl check {pool}` failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    thin_check_live(d, pool);

    // dm devices of the pool and its volumes.
    let pool_dm = d.json(&["pool", "status", pool])["dm_name"]
        .as_str()
        .unwrap()
        .to_string();
    let vols = d.json(&["ls", pool]);
    let active: std::collections::BTreeSet<String> = vols
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["active"] == true)
        .map(|v| v["dm_name"].as_str().unwrap().to_string())
        .collect();
    let prefix = format!("{pool_dm}+");
    let listed = run("dmsetup", &["--noudevsync", "ls"]);
    let names: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        names.contains(&pool_dm.as_str()),
        "invariants of {pool}: pool device {pool_dm} is missing: {listed}"
    );
    let suspended = |name: &str| {
        run("dmsetup", &["--noudevsync", "info", name])
            .lines()
            .any(|l| l.starts_with("State:") && l.contains("SUSPENDED"))
    };
    assert!(
        !suspended(&pool_dm),
        "invariants of {pool}: pool device {pool_dm} is suspended"
    );
    for name in names.iter().filter(|n| n.starts_with(&prefix)) {
        assert!(
            active.contains(*name),
            "invariants of {pool}: dm device {name} is no active volume's \
             (active: {active:?})"
        );
        assert!(
            !suspended(name),
            "invariants of {pool}: dm device {name} is suspended"
        );
    }

    // Loop devices backed by files under the state root.
    let root = std::fs::canonicalize(d.state_root()).unwrap();
    let pools_dir = root.join("pools");
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        let Ok(s) = std::fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        let file = Path::new(s.trim());
        if !file.starts_with(&root) {
            continue;
        }
        let dev = e.file_name().to_string_lossy().into_owned();
        let in_pool = file
            .parent()
            .filter(|p| p.parent() == Some(pools_dir.as_path()));
        let ok = in_pool.is_some_and(|dir| dir.join("pool.json").is_file())
            && file
                .file_name()
                .is_some_and(|n| n == "data.img" || n == "meta.img");
        assert!(
            ok,
            "invariants of {pool}: loop device {dev} is backed by {}, \
             which is no existing pool's data.img or meta.img",
            file.display()
        );
    }

    // The pool directory: no open transaction, every volume JSON parses.
    let dir = pools_dir.join(pool);
    assert!(
        !dir.join("txn.json").exists(),
        "invariants of {pool}: txn.json is left: {}",
        std::fs::read_to_string(dir.join("txn.json")).unwrap_or_default()
    );
    if let Ok(rd) = std::fs::read_dir(dir.join("devices")) {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                let text = std::fs::read_to_string(&p).unwrap();
                if let Err(err) = serde_json::from_str::<serde_json::Value>(&text) {
                    panic!(
                        "invariants of {pool}: {} does not parse: {err}: {text}",
                        p.display()
                    );
                }
            }
        }
    }
}

/// Everything a refused command must leave as it was: the state root's
/// files, dm devices and tables, each pool's transaction id, loop devices
/// and mounts.
#[derive(Debug, PartialEq, Eq)]
pub struct World {
    pub state: std::collections::BTreeMap<String, String>,
    pub dm_ls: Vec<String>,
    pub dm_tables: Vec<String>,
    /// Transaction id of every thin-pool device, from its status.
    pub pool_tids: Vec<String>,
    /// loopN -> backing file.
    pub loops: Vec<String>,
    pub mounts: Vec<String>,
}

fn sorted_lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(str::to_string).collect();
    v.sort();
    v
}

/// Attached loop devices, "loopN BACKING-FILE", sorted.
pub fn loops() -> Vec<String> {
    let mut out = vec![];
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        if let Ok(s) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
            out.push(format!("{} {}", e.file_name().to_string_lossy(), s.trim()));
        }
    }
    out.sort();
    out
}

/// Names of every dm device (`dmsetup ls`).
pub fn dm_names() -> Vec<String> {
    run("dmsetup", &["--noudevsync", "ls"])
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// The world as `d`'s commands can change it.
pub fn world(d: &Dmctl) -> World {
    let status = run("dmsetup", &["--noudevsync", "status"]);
    let pool_tids = status
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(": ")?;
            let f: Vec<&str> = rest.split_whitespace().collect();
            (f.get(2) == Some(&"thin-pool")).then(|| format!("{name} {:?}", f.get(3)))
        })
        .collect();
    World {
        state: d.snapshot_state(),
        dm_ls: sorted_lines(&run("dmsetup", &["--noudevsync", "ls"])),
        dm_tables: sorted_lines(&run("dmsetup", &["--noudevsync", "table"])),
        pool_tids,
        loops: loops(),
        mounts: sorted_lines(&std::fs::read_to_string("/proc/self/mounts").unwrap()),
    }
}

/// `dumpe2fs -h` of a device: the ext4 filesystem's size in bytes.
pub fn ext4_bytes(dev: &str) -> u64 {
    let out = run("dumpe2fs", &["-h", dev]);
    let field = |k: &str| -> u64 {
        out.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("dumpe2fs -h {dev}: no {k}\n{out}"))
    };
    field("Block count:") * field("Block size:")
}

/// Pids of running processes whose command (`/proc/PID/comm`) is `comm`.
pub fn pids_of(comm: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .collect()
}

/// Write `data` to a new file and fsync it and its directory: what a job
/// does to make data durable before a crash or power cut.
pub fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::File::open(path.parent().unwrap_or(Path::new("/")))?.sync_all()
}

/// The device node of an active volume.
pub fn devnode(d: &Dmctl, vol: &str) -> String {
    let info = d.json(&["info", vol]);
    assert_eq!(info["active"], true, "{vol} should be active: {info}");
    info["devnode"]
        .as_str()
        .unwrap_or_else(|| panic!("{vol} has no devnode: {info}"))
        .to_string()
}

/// A command that must be refused: exit 1, one `dmctl: error:` line
/// containing every string of `expect`, and the world (state, dm devices
/// and tables, loops, mounts) unchanged. Returns the line.
pub fn refused(d: &Dmctl, args: &[&str], expect: &[&str]) -> String {
    let before = world(d);
    let line = d.fails(args);
    for e in expect {
        assert!(
            line.contains(e),
            "dmctl {args:?}: error should say '{e}': {line}"
        );
    }
    assert_eq!(
        before,
        world(d),
        "dmctl {args:?} changed the world ({line})"
    );
    step(&format!("refused {args:?}: {line}"));
    line
}

/// Which boot of a power-cut test this is (`DMCTL_VM_PHASE`, 1 or 2).
pub fn power_cut_phase() -> u32 {
    std::env::var("DMCTL_VM_PHASE")
        .ok()
        .and_then(|p| p.parse().ok())
        .expect("power-cut tests run in two boots with DMCTL_VM_PHASE=1|2 (vm-tests/test-all)")
}
