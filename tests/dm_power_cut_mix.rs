//! Power cuts in the middle of a seeded random mix of dmctl operations and
//! file writes, in two guest boots on one persistent virtio disk (see
//! `tests/dm_power_cut.rs` for the two-phase protocol).
//!
//! Phase 1 (`DMCTL_VM_PHASE=1`): a pool on `/dev/vda`, then a random mix of
//! `create`, `snapshot` (of mounted origins too), `mount`, `umount`, `rm`,
//! `resize` and fsynced file writes, while a second thread writes files into
//! a mounted volume and a third cuts the power at a random moment. Every
//! operation that reported success is appended to an ack log on the disk and
//! fsynced (a write: after its own fsync, with the file's sha256). Before each
//! operation a `begin` line is logged the same way, so phase 2 knows what may
//! have been in flight.
//!
//! Phase 2 (`DMCTL_VM_PHASE=2`): `pool activate`, then every acked effect must
//! be there (acked volumes exist, complete, with their parent, size and files;
//! acked removals are gone), an operation in flight may have happened or not
//! but never half, the invariants hold, and the next commands work.
//!
//! The seed comes from `DMCTL_VM_SEED` (the host passes `dmctl.seed=N` to both
//! boots), else from the clock; it is printed on the console and kept in the
//! ack log. It fixes the sequence of operations, file contents and the cut's
//! delay; the exact interleaving with the cut still depends on timing.

mod common;

use common::Dmctl;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const DISK: &str = "/dev/vda";
const DISK_MNT: &str = "/mnt/disk";
const POOL: &str = "mix";
/// Mountpoints of the volumes in phase 1 (in the guest's RAM).
const VOL_MNT: &str = "/mnt/mix";
/// The volume the background writer writes into; never removed.
const WRITER_VOL: &str = "w";
/// At most this many live volumes: beyond, `rm` is picked.
const MAX_VOLUMES: usize = 9;
const MIB: u64 = 1 << 20;

fn ack_log_path() -> PathBuf {
    Path::new(DISK_MNT).join("mix-ack.log")
}

/// A line on the console, past libtest's capture (the host keeps the log).
fn console(msg: &str) {
    if let Ok(mut c) = fs::OpenOptions::new().write(true).open("/dev/console") {
        let _ = writeln!(c, "DMCTL-MIX: {msg}");
    }
}

/// splitmix64: small, seedable, good enough to pick operations.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            Some(&items[(self.next() % items.len() as u64) as usize])
        }
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 8);
        while v.len() < n {
            v.extend_from_slice(&self.next().to_le_bytes());
        }
        v.truncate(n);
        v
    }
}

fn seed() -> u64 {
    match std::env::var("DMCTL_VM_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("DMCTL_VM_SEED={s:?} is not a number")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn mount_disk() {
    fs::create_dir_all(DISK_MNT).unwrap();
    common::run("mount", &[DISK, DISK_MNT]);
}

fn dmctl_on_disk() -> Dmctl {
    let state = Path::new(DISK_MNT).join("state");
    fs::create_dir_all(&state).unwrap();
    Dmctl::with_root(&state)
}

fn fsync_dir(dir: &Path) {
    fs::File::open(dir).unwrap().sync_all().unwrap();
}

/// The ack log: one line per event, each written and fsynced before the
/// caller goes on. Shared by the threads of phase 1.
#[derive(Clone)]
struct AckLog(Arc<Mutex<fs::File>>);

impl AckLog {
    fn create() -> AckLog {
        let path = ack_log_path();
        let f = fs::OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .unwrap();
        f.sync_all().unwrap();
        fsync_dir(path.parent().unwrap());
        AckLog(Arc::new(Mutex::new(f)))
    }

    /// Log that an operation starts, on the disk and on the console (so a
    /// failure report shows what was in flight at the cut).
    fn begin(&self, what: &str) {
        console(&format!("begin {what}"));
        self.line(&format!("begin {what}"));
    }

    fn line(&self, line: &str) {
        let mut f = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(format!("{line}\n").as_bytes()).unwrap();
        f.sync_data().unwrap();
    }
}

fn vref(name: &str) -> String {
    format!("{POOL}/{name}")
}

fn mountpoint(name: &str) -> PathBuf {
    Path::new(VOL_MNT).join(name)
}

/// Phase 1's view of a live volume.
#[derive(Clone, Debug)]
struct P1Vol {
    size: u64,
    mounted: bool,
    /// Bytes written into it by this test (to stay clear of ENOSPC).
    written: u64,
}

#[test]
fn power_cut_random_mix() {
    require_dm!("power_cut_random_mix");
    if common::power_cut_phase() == 1 {
        phase1();
    } else {
        phase2();
    }
}

fn phase1() -> ! {
    let seed = seed();
    console(&format!("seed={seed} (rerun: DMCTL_VM_SEED={seed})"));
    let mut rng = Rng(seed);
    common::run("mkfs.ext4", &["-q", "-F", DISK]);
    mount_disk();
    let d = dmctl_on_disk();
    let log = AckLog::create();
    log.line(&format!("seed {seed}"));
    d.ok(&["pool", "create", POOL, "--data-size", "4G"]);
    log.line("pool");

    // The writer's volume, mounted, before anything random happens.
    let wsize = 256 * MIB;
    log.begin(&format!("create {WRITER_VOL} {wsize}"));
    d.ok(&["create", &vref(WRITER_VOL), "--size", &wsize.to_string()]);
    log.line(&format!("create {WRITER_VOL} {wsize}"));
    fs::create_dir_all(mountpoint(WRITER_VOL)).unwrap();
    d.ok(&[
        "mount",
        &vref(WRITER_VOL),
        mountpoint(WRITER_VOL).to_str().unwrap(),
    ]);
    log.line(&format!("mount {WRITER_VOL}"));

    // Background writer: fsynced files (acked) and unsynced overwrites.
    {
        let log = log.clone();
        let mut rng = Rng(seed ^ 0x5752_4954_4552);
        std::thread::spawn(move || {
            let dir = mountpoint(WRITER_VOL);
            let mut total = 0u64;
            for i in 0u64.. {
                if total > 96 * MIB {
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
                let n = rng.range(1, 192 * 1024) as usize;
                let data = rng.bytes(n);
                total += data.len() as u64;
                if i % 3 == 2 {
                    let _ = fs::write(dir.join(format!("u-{}", i % 8)), &data);
                    continue;
                }
                let file = format!("bg-{i}");
                match common::write_synced(&dir.join(&file), &data) {
                    Ok(()) => log.line(&format!("write {WRITER_VOL} {file} {}", sha256_hex(&data))),
                    Err(e) => log.line(&format!("error write {WRITER_VOL} {file}: {e}")),
                }
            }
        });
    }

    // The power cut, at a random moment of the mix: after a random number
    // of completed operations (so a slow, loaded host still gets a mix),
    // plus a random delay that lands it inside the next ones.
    let done = Arc::new(AtomicU64::new(0));
    let after_ops = rng.range(0, 8);
    let delay = Duration::from_millis(rng.range(0, 2500));
    console(&format!(
        "power cut after {after_ops} operations + {} ms",
        delay.as_millis()
    ));
    {
        let done = done.clone();
        std::thread::spawn(move || {
            while done.load(Ordering::SeqCst) < after_ops {
                std::thread::sleep(Duration::from_millis(20));
            }
            std::thread::sleep(delay);
            console("cutting the power");
            let mut c = fs::OpenOptions::new()
                .write(true)
                .open("/dev/console")
                .unwrap();
            writeln!(c, "\nDMCTL-VM-POWERCUT").unwrap();
            std::thread::sleep(Duration::from_secs(300));
            console("the host did not cut the power");
            std::process::exit(3);
        });
    }

    let mut vols: BTreeMap<String, P1Vol> = BTreeMap::new();
    vols.insert(
        WRITER_VOL.into(),
        P1Vol {
            size: wsize,
            mounted: true,
            written: 0,
        },
    );
    let mut counter = 0u64;
    let started = Instant::now();
    loop {
        counter += 1;
        let names: Vec<String> = vols.keys().cloned().collect();
        let removable: Vec<String> = names
            .iter()
            .filter(|n| n.as_str() != WRITER_VOL)
            .cloned()
            .collect();
        let mounted: Vec<String> = vols
            .iter()
            .filter(|(n, v)| v.mounted && v.written < v.size / 3 && n.as_str() != WRITER_VOL)
            .map(|(n, _)| n.clone())
            .collect();
        let unmounted: Vec<String> = vols
            .iter()
            .filter(|(_, v)| !v.mounted)
            .map(|(n, _)| n.clone())
            .collect();
        let resizable: Vec<String> = vols
            .iter()
            .filter(|(_, v)| v.size < 512 * MIB)
            .map(|(n, _)| n.clone())
            .collect();
        let roll = rng.range(0, 99);
        let op = if vols.len() >= MAX_VOLUMES {
            "rm"
        } else {
            match roll {
                0..=17 => "create",
                18..=37 => "snapshot",
                38..=49 => "mount",
                50..=71 => "write",
                72..=77 => "umount",
                78..=87 => "rm",
                _ => "resize",
            }
        };
        let t0 = Instant::now();
        let (what, result) = match op {
            "create" => {
                let name = format!("v{counter}");
                let size = rng.range(8, 24) * 4 * MIB;
                log.begin(&format!("create {name} {size}"));
                let out = d.run(&["create", &vref(&name), "--size", &size.to_string()]);
                if out.status.success() {
                    log.line(&format!("create {name} {size}"));
                    vols.insert(
                        name.clone(),
                        P1Vol {
                            size,
                            mounted: false,
                            written: 0,
                        },
                    );
                }
                (format!("create {name} {size}"), out)
            }
            "snapshot" => {
                let Some(origin) = rng.pick(&names).cloned() else {
                    continue;
                };
                let name = format!("s{counter}");
                let activate = rng.range(0, 2) == 0;
                let act = if activate { "active" } else { "inactive" };
                log.begin(&format!("snapshot {origin} {name} {act}"));
                let mut args = vec!["snapshot", &vref(&origin), &vref(&name)]
                    .into_iter()
                    .map(String::from)
                    .collect::<Vec<_>>();
                if activate {
                    args.push("--activate".into());
                }
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let out = d.run(&args);
                if out.status.success() {
                    log.line(&format!("snapshot {origin} {name} {act}"));
                    let size = vols[&origin].size;
                    vols.insert(
                        name.clone(),
                        P1Vol {
                            size,
                            mounted: false,
                            written: 0,
                        },
                    );
                }
                (format!("snapshot {origin} {name} {act}"), out)
            }
            "mount" => {
                let Some(name) = rng.pick(&unmounted).cloned() else {
                    continue;
                };
                let mp = mountpoint(&name);
                fs::create_dir_all(&mp).unwrap();
                log.begin(&format!("mount {name}"));
                let out = d.run(&["mount", &vref(&name), mp.to_str().unwrap()]);
                if out.status.success() {
                    log.line(&format!("mount {name}"));
                    vols.get_mut(&name).unwrap().mounted = true;
                }
                (format!("mount {name}"), out)
            }
            "umount" => {
                let cands: Vec<String> = removable
                    .iter()
                    .filter(|n| vols[*n].mounted)
                    .cloned()
                    .collect();
                let Some(name) = rng.pick(&cands).cloned() else {
                    continue;
                };
                log.begin(&format!("umount {name}"));
                let out = d.run(&["umount", &vref(&name)]);
                if out.status.success() {
                    log.line(&format!("umount {name}"));
                    vols.get_mut(&name).unwrap().mounted = false;
                }
                (format!("umount {name}"), out)
            }
            "write" => {
                let Some(name) = rng.pick(&mounted).cloned() else {
                    continue;
                };
                let file = format!("f-{counter}");
                let n = rng.range(1, 768 * 1024) as usize;
                let data = rng.bytes(n);
                vols.get_mut(&name).unwrap().written += data.len() as u64 + 4096;
                match common::write_synced(&mountpoint(&name).join(&file), &data) {
                    Ok(()) => log.line(&format!("write {name} {file} {}", sha256_hex(&data))),
                    Err(e) => log.line(&format!("error write {name} {file}: {e}")),
                }
                done.fetch_add(1, Ordering::SeqCst);
                console(&format!(
                    "{:>6} ms  write {name}/{file} ({} bytes)",
                    started.elapsed().as_millis(),
                    data.len()
                ));
                continue;
            }
            "rm" => {
                let Some(name) = rng.pick(&removable).cloned() else {
                    continue;
                };
                log.begin(&format!("rm {name}"));
                let out = d.run(&["rm", "--force", &vref(&name)]);
                if out.status.success() {
                    log.line(&format!("rm {name}"));
                    vols.remove(&name);
                }
                (format!("rm {name}"), out)
            }
            _ => {
                let Some(name) = rng.pick(&resizable).cloned() else {
                    continue;
                };
                let size = vols[&name].size + rng.range(1, 8) * 4 * MIB;
                log.begin(&format!("resize {name} {size}"));
                let out = d.run(&["resize", &vref(&name), "--size", &size.to_string()]);
                if out.status.success() {
                    log.line(&format!("resize {name} {size}"));
                    vols.get_mut(&name).unwrap().size = size;
                }
                (format!("resize {name} {size}"), out)
            }
        };
        done.fetch_add(1, Ordering::SeqCst);
        if result.status.success() {
            console(&format!(
                "{:>6} ms  ok {what} ({} ms)",
                started.elapsed().as_millis(),
                t0.elapsed().as_millis()
            ));
        } else {
            // A command that fails without a power cut is a finding: phase 2
            // reports it. The name is uncertain from here on.
            let err = String::from_utf8_lossy(&result.stderr).replace('\n', " | ");
            log.line(&format!("error {what}: {err}"));
            console(&format!("FAILED {what}: {err}"));
            let name = what
                .split_whitespace()
                .nth(if op == "snapshot" { 2 } else { 1 });
            if let Some(n) = name {
                vols.remove(n);
            }
        }
    }
}

/// Phase 2's model of a volume, from the ack log.
#[derive(Clone, Debug, Default)]
struct Vol {
    parent: Option<String>,
    /// Recorded size after the last acked create/snapshot/resize.
    size: u64,
    /// A resize to this size was begun and not acked: the record may have it.
    pending_size: Option<u64>,
    /// The filesystem is at least this big (the last acked mkfs or resize).
    fs_min: u64,
    /// `pool activate` must bring it back active.
    active: bool,
    /// Files whose write and fsync were acked: name -> sha256.
    files: BTreeMap<String, String>,
    /// The volume's create was not acked, or its rm was begun: may be absent.
    may_be_absent: bool,
    /// The volume's create/snapshot was not acked: it may be absent and
    /// nothing else about it is required but completeness.
    unacked: bool,
}

#[derive(Debug, Default)]
struct Model {
    seed: Option<u64>,
    vols: BTreeMap<String, Vol>,
    removed: BTreeSet<String>,
    errors: Vec<String>,
    acked_ops: usize,
    acked_writes: usize,
    last_line: String,
}

fn parse_ack_log(text: &str) -> Model {
    let mut m = Model::default();
    // A last line without its newline was cut while being written: not acked.
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    for line in complete.lines() {
        m.last_line = line.to_string();
        let w: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| -> u64 {
            w.get(i)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("bad ack log line {line:?}"))
        };
        match w.as_slice() {
            ["seed", _] => m.seed = Some(num(1)),
            ["pool"] => {}
            ["error", ..] => m.errors.push(line.to_string()),
            ["begin", "create", name, _] => {
                let size = num(3);
                m.vols.insert(
                    name.to_string(),
                    Vol {
                        size,
                        fs_min: size,
                        may_be_absent: true,
                        unacked: true,
                        ..Vol::default()
                    },
                );
            }
            ["create", name, _] => {
                let v = m.vols.get_mut(*name).expect("create without begin");
                v.may_be_absent = false;
                v.unacked = false;
                v.active = true;
                m.acked_ops += 1;
            }
            ["begin", "snapshot", origin, name, act] => {
                let o = m.vols[*origin].clone();
                m.vols.insert(
                    name.to_string(),
                    Vol {
                        parent: Some(origin.to_string()),
                        size: o.size,
                        fs_min: o.fs_min,
                        files: o.files,
                        active: *act == "active",
                        may_be_absent: true,
                        unacked: true,
                        ..Vol::default()
                    },
                );
            }
            ["snapshot", _, name, _] => {
                let v = m.vols.get_mut(*name).expect("snapshot without begin");
                v.may_be_absent = false;
                v.unacked = false;
                m.acked_ops += 1;
            }
            ["begin", "mount" | "umount", _] => {}
            ["mount", name] => {
                m.vols.get_mut(*name).unwrap().active = true;
                m.acked_ops += 1;
            }
            ["umount", _] => m.acked_ops += 1,
            ["begin", "rm", name] => m.vols.get_mut(*name).unwrap().may_be_absent = true,
            ["rm", name] => {
                m.vols.remove(*name);
                m.removed.insert(name.to_string());
                m.acked_ops += 1;
            }
            ["begin", "resize", name, _] => {
                m.vols.get_mut(*name).unwrap().pending_size = Some(num(3));
            }
            ["resize", name, _] => {
                let v = m.vols.get_mut(*name).unwrap();
                v.size = num(2);
                v.fs_min = v.size;
                v.pending_size = None;
                m.acked_ops += 1;
            }
            ["write", name, file, sha] => {
                m.vols
                    .get_mut(*name)
                    .unwrap()
                    .files
                    .insert(file.to_string(), sha.to_string());
                m.acked_writes += 1;
            }
            _ => panic!("unknown ack log line {line:?}"),
        }
    }
    m
}

fn phase2() {
    mount_disk();
    let text = fs::read_to_string(ack_log_path()).unwrap();
    let m = parse_ack_log(&text);
    let seed = m.seed.expect("the ack log has no seed line");
    console(&format!(
        "phase 2 of seed {seed}: {} acked operations, {} acked writes, last ack line {:?}",
        m.acked_ops, m.acked_writes, m.last_line
    ));
    let ctx = |msg: String| format!("seed {seed}: {msg}");
    assert!(
        m.errors.is_empty(),
        "{}",
        ctx(format!(
            "commands failed in phase 1 before the cut:\n{}",
            m.errors.join("\n")
        ))
    );

    let d = dmctl_on_disk();
    let act = d.run(&["pool", "activate", POOL]);
    assert!(
        act.status.success(),
        "{}",
        ctx(format!(
            "pool activate after the cut failed: {}{}",
            String::from_utf8_lossy(&act.stdout),
            String::from_utf8_lossy(&act.stderr)
        ))
    );
    console(&format!(
        "pool activate: {}",
        String::from_utf8_lossy(&act.stdout).replace('\n', " | ")
    ));
    common::check_invariants(&d, POOL);

    // The volumes dmctl has, against the model.
    let listed = d.json(&["ls", POOL]);
    let listed: BTreeMap<String, serde_json::Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap().to_string(), v.clone()))
        .collect();
    for (name, v) in &listed {
        assert!(
            m.vols.contains_key(name),
            "{}",
            ctx(format!(
                "volume {name} exists but was removed (acked: {}) or never begun: {v}",
                m.removed.contains(name)
            ))
        );
        assert_eq!(
            v["initialized"],
            true,
            "{}",
            ctx(format!("volume {name} is left half-created: {v}"))
        );
    }
    for name in &m.removed {
        let out = d.run(&["info", &vref(name)]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}",
            ctx(format!("removed volume {name} is back"))
        );
    }
    for (name, want) in &m.vols {
        let Some(v) = listed.get(name) else {
            assert!(
                want.may_be_absent,
                "{}",
                ctx(format!("acked volume {name} is missing: {want:?}"))
            );
            continue;
        };
        if want.unacked {
            console(&format!("volume {name} (create in flight) exists: {v}"));
        }
        assert_eq!(
            v["parent"].as_str(),
            want.parent.as_deref(),
            "{}",
            ctx(format!("parent of {name}: {v}"))
        );
        let size = v["size"].as_u64().unwrap();
        assert!(
            size == want.size || Some(size) == want.pending_size,
            "{}",
            ctx(format!(
                "size of {name} is {size}, acked {} (in flight: {:?})",
                want.size, want.pending_size
            ))
        );
        if want.active && !want.unacked {
            assert_eq!(
                v["active"],
                true,
                "{}",
                ctx(format!("{name} was active before the cut: {v}"))
            );
        }
    }

    // Every volume there: mount it (replays its journal), the acked files
    // with their content, unmount, fsck, filesystem size.
    for name in listed.keys() {
        let want = &m.vols[name];
        let mp = Path::new("/mnt/check").join(name);
        fs::create_dir_all(&mp).unwrap();
        d.ok(&["mount", &vref(name), mp.to_str().unwrap()]);
        for (file, sha) in &want.files {
            let got = fs::read(mp.join(file)).map(|data| sha256_hex(&data));
            assert!(
                got.as_ref().ok() == Some(sha),
                "{}",
                ctx(format!(
                    "{name}/{file}: acked write (sha256 {sha}) reads back as {got:?}"
                ))
            );
        }
        d.ok(&["umount", &vref(name)]);
        let info = d.json(&["info", &vref(name)]);
        let node = info["devnode"].as_str().unwrap().to_string();
        let fsck = std::process::Command::new("e2fsck")
            .args(["-fn", &node])
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "{}",
            ctx(format!(
                "e2fsck -fn of {name}: {}{}",
                String::from_utf8_lossy(&fsck.stdout),
                String::from_utf8_lossy(&fsck.stderr)
            ))
        );
        let fs_bytes = common::ext4_bytes(&node);
        let size = info["size"].as_u64().unwrap();
        assert!(
            fs_bytes >= want.fs_min && fs_bytes <= size,
            "{}",
            ctx(format!(
                "filesystem of {name} is {fs_bytes} bytes: acked at least {}, device {size}",
                want.fs_min
            ))
        );
    }
    console(&format!(
        "checked {} volumes ({} files), {} removed",
        listed.len(),
        listed.keys().map(|n| m.vols[n].files.len()).sum::<usize>(),
        m.removed.len()
    ));

    // The next mutating commands work.
    d.ok(&["create", &vref("after"), "--size", "64M"]);
    let origin = listed.keys().next().cloned().unwrap_or("after".into());
    d.ok(&["snapshot", &vref(&origin), &vref("after-snap")]);
    d.ok(&["resize", &vref("after"), "--size", "96M"]);
    d.ok(&["rm", &vref("after-snap")]);
    d.ok(&["rm", "--force", &vref("after")]);
    common::check_invariants(&d, POOL);
    d.ok(&["pool", "destroy", POOL, "--force"]);
}
