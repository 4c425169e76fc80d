//! `dmctl serve` with the real containerd, ctr and runc (Debian's
//! packages, staged into the guest by vm-tests/lib.sh), and containerd's
//! own snapshotter conformance suite (vm-tests/containerd/suite_test.go,
//! built from Debian's containerd source package).
//!
//! The guest exports `DMCTL_CONTAINERD_SUITE` (the suite's test binary),
//! `DMCTL_CONTAINERD_IMAGE` (a two-layer image tar for `ctr images import`)
//! and `DMCTL_CONTAINERD_IMAGE_REF` (its name). Inside the guest these are
//! required; on a host without device-mapper the tests say they are skipped.

mod common;

use common::Dmctl;
use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const POOL: &str = "ctd";

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set (the guest sets it)"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sigterm_and_wait(child: &mut Child) -> std::process::ExitStatus {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running `dmctl serve`, its stderr in a log file.
struct Serve {
    child: Child,
    log: PathBuf,
}

impl Serve {
    fn start(d: &Dmctl, sock: &Path, log: &Path, crash_at: Option<&str>, extra: &[&str]) -> Serve {
        let mut cmd = d.command(&["serve", POOL, "--address", s(sock), "--size", "512M"]);
        cmd.args(extra);
        if let Some(point) = crash_at {
            cmd.env("DMCTL_CRASH_AT", point);
        }
        let err = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap();
        let mut serve = Serve {
            child,
            log: log.to_path_buf(),
        };
        wait_for("dmctl serve's socket", Duration::from_secs(60), || {
            if let Some(st) = serve.child.try_wait().unwrap() {
                panic!("dmctl serve exited ({st}): {}", serve.log_text());
            }
            UnixStream::connect(sock).is_ok()
        });
        serve
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(mut self) -> String {
        let st = sigterm_and_wait(&mut self.child);
        assert!(
            st.success(),
            "dmctl serve exit on SIGTERM: {st}: {}",
            self.log_text()
        );
        self.log_text()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Wait for the server to die (at a crash point).
    fn wait_dead(mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "dmctl serve did not die");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A server a failing test leaves running is killed, so the pool can be
/// destroyed (`pool destroy` refuses a served pool).
impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A running containerd with its own root, state and socket, and the
/// dmctl proxy snapshotter at `snap_sock`.
struct Containerd {
    child: Child,
    sock: PathBuf,
    log: PathBuf,
}

impl Containerd {
    fn start(dir: &Path, snap_sock: &Path) -> Containerd {
        let sock = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        let log = dir.join("containerd.log");
        // The garbage collector runs only when a test asks (`request(gc)`):
        // on its own it would remove a container's snapshot between two
        // commands, or run while the server is down and forget the work.
        fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{sock}\"\n\
                 [plugins.\"io.containerd.gc.v1.scheduler\"]\n  deletion_threshold = 100000\n  \
                 mutation_threshold = 100000\n  startup_delay = \"0s\"\n\
                 [proxy_plugins]\n  [proxy_plugins.dmctl]\n    type = \"snapshot\"\n    \
                 address = \"{snap}\"\n",
                root = s(&dir.join("root")),
                state = s(&dir.join("state")),
                sock = s(&sock),
                snap = s(snap_sock),
            ),
        )
        .unwrap();
        let err = fs::File::create(&log).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::from(err))
            .spawn()
            .expect("start containerd");
        let c = Containerd { child, sock, log };
        wait_for("containerd", Duration::from_secs(120), || {
            c.ctr(&["version"]).status.success()
        });
        c
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("-a")
            .arg(&self.sock)
            .args(args)
            .output()
            .expect("run ctr")
    }

    /// `ctr ARGS`, asked again while containerd has not reconnected to a
    /// restarted server (it does on its own, with backoff; until then its
    /// requests fail "unavailable").
    fn ctr_reconnecting(&self, args: &[&str]) -> Output {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.ctr(args);
            if !text(&out).contains("unavailable") || Instant::now() > deadline {
                return out;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.ctr_reconnecting(args);
        assert!(
            out.status.success(),
            "ctr {args:?} failed ({}): {}\ncontainerd log tail: {}",
            out.status,
            text(&out),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn log_tail(&self) -> String {
        let t = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    fn stop(mut self) {
        sigterm_and_wait(&mut self.child);
    }
}

/// containerd holds mounts of the pool's devices: it goes before the pool.
impl Drop for Containerd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            sigterm_and_wait(&mut self.child);
        }
    }
}

/// `ctr snapshots --snapshotter dmctl ARGS...`
fn snap_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["snapshots", "--snapshotter", "dmctl"];
    v.extend_from_slice(args);
    v
}

/// The pool's snapshot table as dmctl keeps it: (key, kind, volume).
fn table(d: &Dmctl) -> Vec<(String, String, String, bool)> {
    let path = d
        .state_root()
        .join("pools")
        .join(POOL)
        .join("snapshots.json");
    let Ok(text) = fs::read_to_string(path) else {
        return vec![];
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["key"].as_str().unwrap().to_string(),
                r["kind"].as_str().unwrap().to_string(),
                r["volume"].as_str().unwrap().to_string(),
                r["creating"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

/// The `ctr.N` volumes of the pool.
fn snapshot_volumes(d: &Dmctl) -> Vec<String> {
    d.json(&["ls", POOL])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .filter(|n| n.starts_with("ctr."))
        .collect()
}

/// Every record has its volume and every `ctr.N` volume its record; the
/// pool passes `dmctl check`.
fn agree(d: &Dmctl) {
    common::check_invariants(d, POOL);
    let t = table(d);
    let vols = snapshot_volumes(d);
    for (key, _, vol, creating) in &t {
        assert!(!creating, "record {key:?} left creating: {t:?}");
        if vol.starts_with("ctr.") {
            assert!(
                vols.contains(vol),
                "record {key:?} has no volume {vol}: {vols:?}"
            );
        }
    }
    let spare_vols: Vec<String> = spares(d).into_iter().map(|(v, _)| v).collect();
    for v in &vols {
        assert!(
            t.iter().any(|(_, _, tv, _)| tv == v) || spare_vols.contains(v),
            "volume {v} has no snapshot or spare record: {t:?} {spare_vols:?}"
        );
    }
}

struct Fixture {
    d: Dmctl,
    dir: tempfile::TempDir,
    snap_sock: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let d = Dmctl::new();
        d.ok(&["pool", "create", POOL, "--data-size", "4G"]);
        let dir = tempfile::Builder::new().prefix("ctd-").tempdir().unwrap();
        let snap_sock = dir.path().join("dmctl.sock");
        Fixture { d, dir, snap_sock }
    }

    fn serve(&self, crash_at: Option<&str>) -> Serve {
        self.serve_with(crash_at, &[])
    }

    fn serve_with(&self, crash_at: Option<&str>, extra: &[&str]) -> Serve {
        let log = self.dir.path().join("serve.log");
        Serve::start(&self.d, &self.snap_sock, &log, crash_at, extra)
    }

    fn containerd(&self) -> Containerd {
        Containerd::start(self.dir.path(), &self.snap_sock)
    }
}

/// containerd's snapshotter test suite, every test, against `dmctl serve`
/// (a fresh pool and server per test, as the suite asks).
#[test]
fn serve_passes_containerds_snapshotter_conformance_suite() {
    require_dm!("serve_passes_containerds_snapshotter_conformance_suite");
    let suite = env("DMCTL_CONTAINERD_SUITE");
    let root = tempfile::Builder::new().prefix("suite-").tempdir().unwrap();
    let started = Instant::now();
    let out = Command::new(&suite)
        .args(["-test.v", "-test.timeout", "30m"])
        .env("DMCTL_BIN", env!("CARGO_BIN_EXE_dmctl"))
        .env("TMPDIR", root.path())
        .output()
        .expect("run the conformance suite");
    let log = text(&out);
    let passed = log
        .lines()
        .filter(|l| l.trim_start().starts_with("--- PASS"))
        .count();
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.trim_start().starts_with("--- FAIL"))
        .collect();
    println!(
        "conformance suite: {passed} passed, {} failed in {:.0} s",
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success() && failed.is_empty() && passed > 20,
        "conformance suite failed ({}), failed: {failed:?}\n{log}",
        out.status
    );
}

/// ctr imports an image with the dmctl snapshotter and runs containers on
/// it: output and exit codes come through; a container's snapshot is
/// committed and run again; containerd and the server restart with their
/// state; a size label sizes a container's root.
#[test]
fn serve_runs_ctr_containers_across_restarts() {
    require_dm!("serve_runs_ctr_containers_across_restarts");
    let image = env("DMCTL_CONTAINERD_IMAGE");
    let reference = env("DMCTL_CONTAINERD_IMAGE_REF");
    let f = Fixture::new();
    let serve = f.serve(None);
    let other = f.dir.path().join("second.sock");
    let second = f.d.fails(&["serve", POOL, "--address", s(&other)]);
    assert!(
        second.contains("already served"),
        "a second server: {second}"
    );
    assert!(!other.exists(), "the refused server made no socket");
    let ctd = f.containerd();
    let plugins = ctd.ok(&["plugins", "ls"]);
    assert!(
        plugins
            .lines()
            .any(|l| l.contains("io.containerd.snapshotter.v1")
                && l.contains("dmctl")
                && l.contains("ok")),
        "dmctl is not a working snapshotter plugin: {plugins}"
    );
    ctd.ok(&["images", "import", "--snapshotter", "dmctl", &image]);
    let layers = table(&f.d);
    assert_eq!(
        layers.iter().filter(|r| r.1 == "committed").count(),
        2,
        "two committed layer snapshots: {layers:?}"
    );

    let out = ctd.ctr(&[
        "run",
        "--rm",
        "--snapshotter",
        "dmctl",
        &reference,
        "c1",
        "/bin/sh",
        "-c",
        "cat /etc/dmctl-test; echo written > /tmp/x; cat /tmp/x; exit 3",
    ]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit code of the container: {}",
        text(&out)
    );
    assert!(said.contains("written"), "container output: {said}");
    let marker = said.lines().next().unwrap_or_default().to_string();
    assert!(
        !marker.is_empty(),
        "the image's /etc/dmctl-test is readable: {said}"
    );

    // A container's writable snapshot, committed, then run again as a rootfs.
    ctd.ok(&[
        "run",
        "--snapshotter",
        "dmctl",
        &reference,
        "c2",
        "/bin/sh",
        "-c",
        "echo persisted > /data",
    ]);
    // ctr run's snapshot has no gc.root label (ctr snapshots commands add
    // one): without it the snapshot would go with its container.
    ctd.ok(&snap_args(&["label", "c2", "containerd.io/gc.root=test"]));
    ctd.ok(&["containers", "rm", "--keep-snapshot", "c2"]);
    ctd.ok(&snap_args(&["commit", "c2-committed", "c2"]));
    ctd.ok(&snap_args(&["prepare", "c3", "c2-committed"]));
    let rootfs = f.dir.path().join("c3-rootfs");
    fs::create_dir_all(&rootfs).unwrap();
    let mount_cmd = ctd.ok(&snap_args(&["mounts", s(&rootfs), "c3"]));
    common::run("sh", &["-c", &mount_cmd]);
    let out = ctd.ctr(&[
        "run",
        "--rm",
        "--rootfs",
        s(&rootfs),
        "c3run",
        "/bin/cat",
        "/data",
    ]);
    common::run("umount", &[s(&rootfs)]);
    assert!(
        out.status.success(),
        "run on the committed snapshot: {}",
        text(&out)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "persisted");

    // Both restart; the state is kept.
    ctd.stop();
    let log = serve.stop();
    assert!(log.contains("stopped"), "serve's log: {log}");
    let serve = f.serve(None);
    let ctd = f.containerd();
    let listed = ctd.ok(&snap_args(&["ls"]));
    assert!(
        listed.contains("c2-committed") && listed.contains("c3"),
        "after restart: {listed}"
    );
    let out = ctd.ok(&[
        "run",
        "--rm",
        "--snapshotter",
        "dmctl",
        &reference,
        "c4",
        "/bin/cat",
        "/etc/dmctl-test",
    ]);
    assert_eq!(out.lines().next().unwrap_or_default(), marker);

    // A size label: the container's root is 2G, its image's 512M.
    let out = ctd.ok(&[
        "run",
        "--rm",
        "--snapshotter",
        "dmctl",
        "--snapshotter-label",
        "containerd.io/snapshot/dmctl.size=2G",
        &reference,
        "c5",
        "/bin/df",
        "-k",
        "/",
    ]);
    let kb: u64 = out
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("df output: {out}"));
    assert!(
        kb > 1_800_000 && kb < 2_200_000,
        "root of 2G: {kb} KiB: {out}"
    );

    ctd.ok(&snap_args(&["rm", "c3"]));
    ctd.ok(&snap_args(&["rm", "c2-committed"]));
    ctd.stop();
    serve.stop();
    agree(&f.d);
}

/// Layers that `dmctl image import` holds are adopted by containerd's
/// unpacker instead of being unpacked again: the suite binary's
/// TestUnpackerAdoptsLayers does, through the real containerd, what the
/// unpacker does for each layer on a pull (Prepare with the layer's
/// ChainID label, AlreadyExists, containerd links the committed snapshot).
/// Then `ctr images import` finds every layer unpacked, and a container runs
/// on the adopted layers.
#[test]
fn serve_lets_containerd_adopt_layers_imported_by_dmctl() {
    require_dm!("serve_lets_containerd_adopt_layers_imported_by_dmctl");
    let suite = env("DMCTL_CONTAINERD_SUITE");
    let image = env("DMCTL_CONTAINERD_IMAGE");
    let reference = env("DMCTL_CONTAINERD_IMAGE_REF");
    let f = Fixture::new();
    f.d.ok(&[
        "image", "import", POOL, &image, "--name", "adopt", "--size", "512M",
    ]);
    let chains: Vec<String> = f.d.json(&["image", "inspect", POOL, "adopt"])["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["chain_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(chains.len(), 2);
    let serve = f.serve(None);
    let ctd = f.containerd();
    let out = Command::new(&suite)
        .args(["-test.run", "TestUnpackerAdoptsLayers", "-test.v"])
        .env("DMCTL_ADOPT_CONTAINERD", &ctd.sock)
        .env("DMCTL_ADOPT_CHAINS", chains.join(","))
        .output()
        .unwrap();
    assert!(
        out.status.success() && text(&out).contains("--- PASS: TestUnpackerAdoptsLayers"),
        "adoption through containerd: {}\nserve: {}",
        text(&out),
        serve.log_text()
    );
    let t = table(&f.d);
    let adopted: Vec<_> = t.iter().filter(|r| r.2.starts_with("layer-")).collect();
    assert_eq!(adopted.len(), 2, "both layers adopted: {t:?}");
    ctd.ok(&["images", "import", "--snapshotter", "dmctl", &image]);
    assert!(
        snapshot_volumes(&f.d).is_empty(),
        "no layer unpacked again: {t:?}"
    );
    let out = ctd.ok(&[
        "run",
        "--rm",
        "--snapshotter",
        "dmctl",
        &reference,
        "a1",
        "/bin/cat",
        "/etc/dmctl-test",
    ]);
    assert!(!out.trim().is_empty(), "output: {out}");
    ctd.stop();
    let log = serve.stop();
    // The adopted snapshots' volumes are the image's layers, kept for
    // `dmctl image rm`.
    let layer_vols =
        f.d.json(&["ls", POOL])
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["name"].as_str().unwrap().starts_with("layer-"))
            .count();
    assert_eq!(layer_vols, 2, "serve: {log}");
    agree(&f.d);
}

/// Twenty Prepares at once on one parent: distinct, complete devices.
#[test]
fn serve_gives_twenty_parallel_prepares_distinct_devices() {
    require_dm!("serve_gives_twenty_parallel_prepares_distinct_devices");
    let f = Fixture::new();
    let serve = f.serve(None);
    let ctd = f.containerd();
    ctd.ok(&snap_args(&["prepare", "base-a"]));
    ctd.ok(&snap_args(&["commit", "base", "base-a"]));
    let children: Vec<Child> = (0..20)
        .map(|i| {
            Command::new("ctr")
                .arg("-a")
                .arg(&ctd.sock)
                .args(snap_args(&["prepare", &format!("p{i}"), "base"]))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "prepare p{i}: {}", text(&out));
    }
    let mut sources = std::collections::BTreeSet::new();
    for i in 0..20 {
        let target = f.dir.path().join(format!("m{i}"));
        let cmd = ctd.ok(&snap_args(&["mounts", s(&target), &format!("p{i}")]));
        let dev = cmd
            .split_whitespace()
            .find(|w| w.starts_with("/dev/"))
            .unwrap_or_else(|| panic!("no device in {cmd}"))
            .to_string();
        assert!(sources.insert(dev.clone()), "device {dev} handed out twice");
        // Complete: it has a filesystem that e2fsck finds clean.
        common::run("e2fsck", &["-fn", &dev]);
    }
    ctd.stop();
    serve.stop();
    agree(&f.d);
}

/// `ctr snapshots --snapshotter dmctl ARGS`, or for `gc` a synchronous
/// garbage collection of containerd's (through the removal of an image
/// imported for that, `images rm --sync`).
fn request(ctd: &Containerd, args: &[&str]) -> Output {
    if args != ["gc"] {
        return ctd.ctr(&snap_args(args));
    }
    let image = env("DMCTL_CONTAINERD_IMAGE");
    ctd.ok(&["images", "import", "--no-unpack", &image]);
    ctd.ctr(&["images", "rm", "--sync", &env("DMCTL_CONTAINERD_IMAGE_REF")])
}

/// SIGKILL of the server at each crash point of its changing methods; the
/// server started again repairs what was left, containerd's view and
/// dmctl's agree, and the request asked again succeeds.
#[test]
fn serve_killed_at_every_crash_point_recovers_on_restart() {
    require_dm!("serve_killed_at_every_crash_point_recovers_on_restart");
    let f = Fixture::new();
    let ctd = f.containerd();
    let serve = f.serve(None);
    ctd.ok(&snap_args(&["prepare", "base-a"]));
    ctd.ok(&snap_args(&["commit", "base", "base-a"]));
    serve.stop();
    let cases: [(&str, &[&str]); 6] = [
        ("serve-prepare:recorded", &["prepare", "k1", "base"]),
        ("serve-prepare:made", &["prepare", "k2", "base"]),
        ("create:after-mkfs", &["prepare", "k3"]),
        ("snapshot:after-message", &["prepare", "k4", "base"]),
        ("serve-commit:recorded", &["commit", "c5", "k1"]),
        // containerd removes a snapshot from its own metadata at once and
        // from the snapshotter in its garbage collection: `gc` runs one.
        ("serve-remove:unrecorded", &["rm", "c5"]),
    ];
    for (point, args) in cases {
        let mut serve = f.serve(Some(point));
        // containerd reconnects to the restarted server on its own; a
        // request without side effects waits for that.
        let probe = ctd.ctr_reconnecting(&snap_args(&["usage", "base"]));
        assert!(probe.status.success(), "{point}: usage: {}", text(&probe));
        let mut out = request(&ctd, args);
        if args[0] == "rm" {
            out = request(&ctd, &["gc"]);
        }
        if serve.alive() {
            std::thread::sleep(Duration::from_secs(5));
        }
        assert!(
            !serve.alive(),
            "{point}: the server is still alive after {args:?}: ctr: {}\nserve: {}\ncontainerd: {}",
            text(&out),
            serve.log_text(),
            ctd.log_tail()
        );
        let status = serve.wait_dead();
        assert!(
            !status.success(),
            "{point}: the server was not killed ({status}); ctr: {}",
            text(&out)
        );
        let serve = f.serve(None);
        // Asked again (containerd saw an error), the request succeeds; a
        // commit or remove the server finished before it died is found done
        // or absent. containerd reconnects to the proxy on its own, with
        // backoff: until it has, requests fail "unavailable".
        let again = ctd.ctr_reconnecting(&snap_args(args));
        if args[0] == "rm" {
            // containerd's next collection removes what it holds no more.
            let out = request(&ctd, &["gc"]);
            assert!(out.status.success(), "gc: {}", text(&out));
        }
        match args[0] {
            "rm" => assert!(
                again.status.success() || text(&again).contains("not found"),
                "{point}: rm again: {}",
                text(&again)
            ),
            _ => assert!(
                again.status.success(),
                "{point}: {args:?} again: {}",
                text(&again)
            ),
        }
        let log = serve.stop();
        agree(&f.d);
        // containerd lists what dmctl holds.
        let serve = f.serve(None);
        let listed = ctd.ok(&snap_args(&["ls"]));
        for (key, kind, _, _) in table(&f.d) {
            let name = key.rsplit('/').next().unwrap().to_string();
            assert!(
                listed.contains(&name),
                "{point}: dmctl's {key:?} ({kind}) is not in containerd's list: {listed}\n{log}"
            );
        }
        serve.stop();
    }
    ctd.stop();
}

/// The spares of `dmctl serve --spares`, as a table of (volume, creating).
fn spares(d: &Dmctl) -> Vec<(String, bool)> {
    let path = d
        .state_root()
        .join("pools")
        .join(POOL)
        .join("snapshots.json");
    let Ok(text) = fs::read_to_string(path) else {
        return vec![];
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["spares"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|sp| {
                    (
                        sp["volume"].as_str().unwrap().to_string(),
                        sp["creating"].as_bool().unwrap_or(false),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `--spares 2`: a container root on a committed parent makes the parent
/// hot; two spares are made in the background and the next Prepare takes
/// one (its volume is a spare's). A server killed while making a spare
/// (crash point serve-spare:recorded) is repaired by the next start.
#[test]
fn serve_hands_out_warm_spares_and_recovers_a_crashed_refill() {
    require_dm!("serve_hands_out_warm_spares_and_recovers_a_crashed_refill");
    let f = Fixture::new();
    let ctd = f.containerd();
    let serve = f.serve_with(None, &["--spares", "2"]);
    ctd.ok(&snap_args(&["prepare", "base-a"]));
    ctd.ok(&snap_args(&["commit", "base", "base-a"]));
    ctd.ok(&snap_args(&["prepare", "c1", "base"]));
    let ready = || {
        let sp = spares(&f.d);
        sp.len() == 2 && sp.iter().all(|(_, creating)| !creating)
    };
    wait_for("two spares", Duration::from_secs(60), ready);
    let before: Vec<String> = spares(&f.d).into_iter().map(|(v, _)| v).collect();
    ctd.ok(&snap_args(&["prepare", "c2", "base"]));
    let c2 = table(&f.d)
        .into_iter()
        .find(|r| r.0.ends_with("/c2"))
        .unwrap_or_else(|| panic!("c2 recorded: {:?}", table(&f.d)));
    assert!(
        before.contains(&c2.2),
        "c2's volume {} is a spare's: {before:?}",
        c2.2
    );
    // It is a working root: a filesystem e2fsck finds clean.
    let target = f.dir.path().join("m");
    let cmd = ctd.ok(&snap_args(&["mounts", s(&target), "c2"]));
    let dev = cmd
        .split_whitespace()
        .find(|w| w.starts_with("/dev/"))
        .unwrap()
        .to_string();
    common::run("e2fsck", &["-fn", &dev]);
    wait_for("the spare refilled", Duration::from_secs(60), ready);
    ctd.ok(&snap_args(&["commit", "c1-committed", "c1"]));
    serve.stop();
    agree(&f.d);

    // Killed while recording the first spare of a new hot parent.
    let mut serve = f.serve_with(Some("serve-spare:recorded"), &["--spares", "2"]);
    let probe = ctd.ctr_reconnecting(&snap_args(&["usage", "base"]));
    assert!(probe.status.success(), "usage: {}", text(&probe));
    // The server may die before or after it answers.
    let _ = ctd.ctr(&snap_args(&["prepare", "c3", "c1-committed"]));
    let deadline = Instant::now() + Duration::from_secs(60);
    while serve.alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !serve.alive(),
        "the refill did not reach its crash point: {}",
        serve.log_text()
    );
    assert!(
        spares(&f.d).iter().any(|(_, creating)| *creating),
        "a spare was being made"
    );
    let serve = f.serve_with(None, &["--spares", "2"]);
    let log = serve.stop();
    assert!(
        spares(&f.d).iter().all(|(_, creating)| !creating),
        "the interrupted spare was swept: {:?}\n{log}",
        spares(&f.d)
    );
    agree(&f.d);
    ctd.stop();
}
