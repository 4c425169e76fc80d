//! Layered images in the guest, for real: images built with umoci, imported
//! with dmctl, the provisioned rootfs compared with `umoci unpack` of the
//! same image; shared layers; provision, diff, commit, export, re-import.

mod common;

use common::Dmctl;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};

/// What a tree entry is, for comparisons: everything an image must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    sha256: Option<String>,
    link: Option<PathBuf>,
    rdev: u64,
    mtime: Option<i64>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return out;
    }
    for name in buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
    {
        let cname = std::ffi::CString::new(name).unwrap();
        let mut val = vec![0u8; 4096];
        let m = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                val.as_mut_ptr().cast(),
                val.len(),
            )
        };
        if m >= 0 {
            val.truncate(m as usize);
            out.insert(String::from_utf8_lossy(name).into_owned(), val);
        }
    }
    out
}

/// Every entry under `root` (not following symlinks), keyed by path.
fn tree(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, Entry>) {
        let mut names: Vec<_> = fs::read_dir(dir).unwrap().flatten().collect();
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if rel == "lost+found" {
                continue; // mkfs.ext4's, not the image's
            }
            let m = fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            use std::os::unix::fs::FileTypeExt;
            let kind = if ft.is_dir() {
                "dir"
            } else if ft.is_symlink() {
                "symlink"
            } else if ft.is_file() {
                "file"
            } else if ft.is_fifo() {
                "fifo"
            } else if ft.is_char_device() {
                "char"
            } else if ft.is_block_device() {
                "block"
            } else {
                "other"
            };
            let entry = Entry {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                size: if ft.is_file() { m.len() } else { 0 },
                sha256: ft
                    .is_file()
                    .then(|| hex::encode(Sha256::digest(fs::read(&p).unwrap()))),
                link: ft.is_symlink().then(|| fs::read_link(&p).unwrap()),
                rdev: m.rdev(),
                mtime: ft.is_file().then(|| m.mtime()),
                xattrs: xattrs(&p),
            };
            out.insert(rel, entry);
            if ft.is_dir() {
                walk(&p, root, out);
            }
        }
    }
    walk(root, root, &mut out);
    out
}

fn assert_same_tree(ours: &Path, reference: &Path) {
    let (a, b) = (tree(ours), tree(reference));
    let mut diffs = vec![];
    for (k, v) in &b {
        match a.get(k) {
            None => diffs.push(format!("missing in dmctl's: {k}")),
            Some(x) if x != v => {
                diffs.push(format!("differs: {k}\n  dmctl: {x:?}\n  umoci: {v:?}"))
            }
            _ => {}
        }
    }
    for k in a.keys() {
        if !b.contains_key(k) {
            diffs.push(format!("extra in dmctl's: {k}"));
        }
    }
    assert!(diffs.is_empty(), "trees differ:\n{}", diffs.join("\n"));
    assert!(b.len() > 20, "the reference tree is not trivially small");
}

fn mknod(path: &Path, kind: libc::mode_t, mode: u32, dev: u64) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let r = unsafe { libc::mknod(c.as_ptr(), kind | mode, dev) };
    assert_eq!(r, 0, "mknod {}", path.display());
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn setxattr(path: &Path, name: &str, value: &[u8]) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr {name} on {}", path.display());
}

/// The base layer's rootfs: a busybox system with every kind of entry.
fn populate_base(r: &Path) {
    for d in [
        "bin",
        "etc/app/conf.d",
        "usr/bin",
        "usr/share/doc",
        "run",
        "dev",
        "opt/replaceme/sub",
        "var/cache/pkg",
        "tmp",
    ] {
        fs::create_dir_all(r.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", r.join("bin/busybox")).unwrap();
    symlink("busybox", r.join("bin/sh")).unwrap();
    symlink("/bin/busybox", r.join("bin/ls")).unwrap();
    fs::write(
        r.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1234:5678::/:/bin/sh\n",
    )
    .unwrap();
    setxattr(&r.join("etc/passwd"), "user.origin", b"base-layer");
    fs::write(r.join("etc/app/conf.d/a.conf"), "a=1\n").unwrap();
    fs::write(r.join("etc/app/conf.d/b.conf"), "b=2\n").unwrap();
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    fs::write(r.join("usr/share/doc/readme"), &big).unwrap();
    fs::write(r.join("usr/bin/su-like"), "#!/bin/sh\nexit 0\n").unwrap();
    chmod(&r.join("usr/bin/su-like"), 0o4755);
    fs::hard_link(r.join("usr/bin/su-like"), r.join("usr/bin/hardlinked")).unwrap();
    fs::write(r.join("etc/app/secret"), "owned by app\n").unwrap();
    chown(&r.join("etc/app/secret"), 1234, 5678);
    chmod(&r.join("etc/app/secret"), 0o640);
    chmod(&r.join("tmp"), 0o1777);
    mknod(&r.join("run/fifo"), libc::S_IFIFO, 0o644, 0);
    mknod(
        &r.join("dev/null"),
        libc::S_IFCHR,
        0o666,
        libc::makedev(1, 3),
    );
    fs::write(
        r.join("opt/replaceme/sub/file"),
        "under a dir that becomes a file\n",
    )
    .unwrap();
    fs::write(r.join("var/cache/pkg/old"), "stale cache\n").unwrap();
    fs::write(
        r.join("var/cache/keep-not"),
        "also gone after the recreation\n",
    )
    .unwrap();
}

/// The second layer: deletions, a dir replaced by a file, a directory
/// deleted and made again (opaque), changed content, mode and owner.
fn modify_for_v2(r: &Path) {
    fs::remove_file(r.join("etc/app/conf.d/b.conf")).unwrap();
    fs::remove_dir_all(r.join("opt/replaceme")).unwrap();
    fs::write(r.join("opt/replaceme"), "now a file\n").unwrap();
    fs::remove_dir_all(r.join("var/cache")).unwrap();
    fs::create_dir_all(r.join("var/cache/new")).unwrap();
    fs::write(r.join("var/cache/new/fresh"), "fresh\n").unwrap();
    fs::write(r.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    setxattr(&r.join("etc/passwd"), "user.origin", b"v2-layer");
    chmod(&r.join("usr/share/doc/readme"), 0o600);
    chown(&r.join("etc/app/conf.d/a.conf"), 42, 43);
    fs::create_dir_all(r.join("new")).unwrap();
    fs::write(r.join("new/file.txt"), "added in v2\n").unwrap();
    fs::remove_file(r.join("bin/ls")).unwrap();
    symlink("busybox", r.join("bin/ls")).unwrap();
}

/// Build layout `L` with tags `base` (one layer) and `v2` (two layers).
fn build_image(work: &Path) -> PathBuf {
    let layout = work.join("L");
    let l = layout.to_str().unwrap();
    common::run("umoci", &["init", "--layout", l]);
    common::run("umoci", &["new", "--image", &format!("{l}:base")]);
    let b = work.join("bundle-base");
    common::run(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{l}:base"),
            b.to_str().unwrap(),
        ],
    );
    populate_base(&b.join("rootfs"));
    common::run(
        "umoci",
        &[
            "repack",
            "--image",
            &format!("{l}:base"),
            b.to_str().unwrap(),
        ],
    );
    let b2 = work.join("bundle-v2");
    common::run(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{l}:base"),
            b2.to_str().unwrap(),
        ],
    );
    modify_for_v2(&b2.join("rootfs"));
    common::run(
        "umoci",
        &[
            "repack",
            "--image",
            &format!("{l}:v2"),
            b2.to_str().unwrap(),
        ],
    );
    layout
}

fn umoci_unpack(layout: &Path, tag: &str, dest: &Path) -> PathBuf {
    common::run(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:{tag}", layout.display()),
            dest.to_str().unwrap(),
        ],
    );
    dest.join("rootfs")
}

/// A work directory on an ext4 dmctl volume of `pool`: the guest's /tmp is
/// tmpfs, which on this kernel keeps no user xattrs.
fn work_volume(d: &Dmctl, pool: &str, at: &Path) -> PathBuf {
    fs::create_dir_all(at).unwrap();
    d.ok(&["create", &format!("{pool}/work"), "--size", "1G"]);
    d.ok(&["mount", &format!("{pool}/work"), at.to_str().unwrap()]);
    at.to_path_buf()
}

fn chain_ids(d: &Dmctl, pool: &str, reference: &str) -> Vec<String> {
    let v = d.json(&["image", "inspect", pool, reference]);
    v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["chain_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn image_import_matches_umoci_unpack_and_shares_layers() {
    require_dm!("image_import_matches_umoci_unpack_and_shares_layers");
    let tmp = tempfile::tempdir().unwrap();
    let d = Dmctl::new();
    d.ok(&["pool", "create", "img", "--data-size", "4G"]);
    let work = work_volume(&d, "img", &tmp.path().join("work"));
    let layout = build_image(&work);

    common::step("dmctl image import img L --name v2");
    let r = d.json(&[
        "image",
        "import",
        "img",
        layout.to_str().unwrap(),
        "--name",
        "v2",
        "--size",
        "256M",
    ]);
    assert_eq!(r["layers"], 2);
    assert_eq!(r["layers_created"], 2);
    assert_eq!(r["already_present"], false);

    let again = d.json(&[
        "image",
        "import",
        "img",
        layout.to_str().unwrap(),
        "--name",
        "v2",
        "--size",
        "256M",
    ]);
    assert_eq!(again["already_present"], true, "second import is a no-op");
    let text = d.ok(&[
        "image",
        "import",
        "img",
        layout.to_str().unwrap(),
        "--name",
        "v2",
    ]);
    assert!(text.contains("already imported"), "{text}");

    common::step("base shares its layer with v2: nothing new");
    let base = d.json(&[
        "image",
        "import",
        "img",
        layout.to_str().unwrap(),
        "--name",
        "base",
        "--size",
        "256M",
    ]);
    assert_eq!(base["layers_created"], 0);
    assert_eq!(base["layers_shared"], 1);
    let v2_chain = chain_ids(&d, "img", "v2");
    assert_eq!(chain_ids(&d, "img", "base")[0], v2_chain[0]);
    let inspect = d.json(&["image", "inspect", "img", "v2"]);
    assert_eq!(inspect["layers"][0]["shared_with"][0], "base");
    assert!(inspect["shared_bytes"].as_u64().unwrap() > 3_000_000);
    assert_eq!(d.json(&["image", "ls", "img"]).as_array().unwrap().len(), 2);

    common::step("provision v2 and compare with umoci unpack");
    let mnt = work.join("rootfs");
    fs::create_dir_all(&mnt).unwrap();
    d.ok(&[
        "image",
        "provision",
        "img",
        "v2",
        "job1",
        "--mount",
        mnt.to_str().unwrap(),
    ]);
    let reference = umoci_unpack(&layout, "v2", &work.join("ref-v2"));
    assert_same_tree(&mnt, &reference);
    assert!(
        !mnt.join("etc/app/conf.d/b.conf").exists(),
        "whiteout applied"
    );
    assert_eq!(
        fs::read_to_string(mnt.join("opt/replaceme")).unwrap(),
        "now a file\n"
    );
    assert!(
        !mnt.join("var/cache/pkg").exists(),
        "recreated dir hides old children"
    );
    // The layer volumes are read-only and inactive; the rootfs is writable.
    fs::write(mnt.join("job-output"), "ci job wrote this\n").unwrap();
    for l in inspect["layers"].as_array().unwrap() {
        let info = d.json(&["info", &format!("img/{}", l["volume"].as_str().unwrap())]);
        assert_eq!(info["read_only"], true);
        assert_eq!(info["active"], false);
    }

    common::step("base provisioned too, compared with umoci");
    let mnt_base = work.join("rootfs-base");
    fs::create_dir_all(&mnt_base).unwrap();
    d.ok(&[
        "image",
        "provision",
        "img",
        "base",
        "job2",
        "--mount",
        mnt_base.to_str().unwrap(),
    ]);
    assert_same_tree(
        &mnt_base,
        &umoci_unpack(&layout, "base", &work.join("ref-base")),
    );
    d.ok(&["rm", "img/job2", "--force"]);

    common::step("image rm keeps layers a provisioned volume uses");
    let rm = d.json(&["image", "rm", "img", "v2"]);
    assert_eq!(rm["layers_removed"].as_array().unwrap().len(), 0, "{rm}");
    assert_eq!(
        fs::read_to_string(mnt.join("job-output")).unwrap(),
        "ci job wrote this\n"
    );
    d.ok(&["rm", "img/job1", "--force"]);
    common::thin_check_live(&d, "img");
    // v2's top layer (kept for job1, now gone) and the base layer go.
    let rm = d.json(&["image", "rm", "img", "base"]);
    assert_eq!(rm["layers_removed"].as_array().unwrap().len(), 2, "{rm}");
    assert!(d
        .json(&["image", "ls", "img"])
        .as_array()
        .unwrap()
        .is_empty());
    let left: Vec<_> = d
        .json(&["ls", "img"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        left,
        vec!["work".to_string()],
        "only the work volume is left"
    );
    common::thin_check_live(&d, "img");
}

#[test]
fn image_provision_diff_commit_export_reimport_round_trip() {
    require_dm!("image_provision_diff_commit_export_reimport_round_trip");
    let tmp = tempfile::tempdir().unwrap();
    let d = Dmctl::new();
    d.ok(&["pool", "create", "rt", "--data-size", "4G"]);
    let work = work_volume(&d, "rt", &tmp.path().join("work"));
    let layout = build_image(&work);
    d.ok(&[
        "image",
        "import",
        "rt",
        layout.to_str().unwrap(),
        "--name",
        "v2",
        "--size",
        "256M",
    ]);
    let mnt = work.join("job");
    fs::create_dir_all(&mnt).unwrap();
    d.ok(&[
        "image",
        "provision",
        "rt",
        "v2",
        "job",
        "--mount",
        mnt.to_str().unwrap(),
    ]);

    common::step("the job changes its rootfs");
    fs::write(mnt.join("new/file.txt"), "changed by the job\n").unwrap();
    fs::write(mnt.join("build-artifact"), vec![7u8; 100_000]).unwrap();
    fs::remove_file(mnt.join("etc/app/conf.d/a.conf")).unwrap();
    fs::remove_dir_all(mnt.join("var/cache")).unwrap();
    fs::create_dir_all(mnt.join("var/cache")).unwrap();
    fs::write(mnt.join("var/cache/rebuilt"), "x\n").unwrap();
    let expected = tree(&mnt);

    common::step("dmctl diff: an OCI layer with the changes");
    let diff_tar = work.join("diff.tar");
    d.ok(&["diff", "rt/job", "-o", diff_tar.to_str().unwrap()]);
    let listing = common::run("tar", &["-tvf", diff_tar.to_str().unwrap()]);
    assert!(listing.contains("etc/app/conf.d/.wh.a.conf"), "{listing}");
    assert!(listing.contains("var/cache/.wh..wh..opq"), "{listing}");
    assert!(listing.contains("build-artifact"), "{listing}");
    assert!(
        !listing.contains("usr/share/doc/readme"),
        "unchanged files are not in the diff: {listing}"
    );

    common::step("dmctl image commit rt/job v3, export, re-import elsewhere");
    let c = d.json(&["image", "commit", "rt/job", "v3"]);
    assert_eq!(c["layers"], 3);
    assert_eq!(c["layers_created"], 1);
    let v3_chain = chain_ids(&d, "rt", "v3");
    assert_eq!(v3_chain[..2], chain_ids(&d, "rt", "v2")[..]);
    let out = work.join("exported");
    d.ok(&["image", "export", "rt", "v3", out.to_str().unwrap()]);
    d.ok(&["pool", "create", "rt2", "--data-size", "4G"]);
    d.ok(&[
        "image",
        "import",
        "rt2",
        out.to_str().unwrap(),
        "--name",
        "v3",
        "--size",
        "256M",
    ]);
    assert_eq!(
        chain_ids(&d, "rt2", "v3"),
        v3_chain,
        "same chain ids after export + import"
    );

    let mnt2 = work.join("reimported");
    fs::create_dir_all(&mnt2).unwrap();
    d.ok(&[
        "image",
        "provision",
        "rt2",
        "v3",
        "check",
        "--mount",
        mnt2.to_str().unwrap(),
    ]);
    let got = tree(&mnt2);
    let strip = |t: &BTreeMap<String, Entry>| {
        // Directory mtimes move as the job writes; everything else must match.
        t.iter()
            .map(|(k, e)| {
                (
                    k.clone(),
                    Entry {
                        mtime: if e.kind == "dir" { None } else { e.mtime },
                        ..e.clone()
                    },
                )
            })
            .collect::<BTreeMap<_, _>>()
    };
    assert_eq!(
        strip(&got),
        strip(&expected),
        "re-imported v3 is what the job left"
    );
    // umoci agrees with the exported layout too.
    assert_same_tree(&mnt2, &umoci_unpack(&out, "v3", &work.join("ref-v3")));
    common::thin_check_live(&d, "rt");
    common::thin_check_live(&d, "rt2");
}

#[test]
fn image_with_bad_digest_leaves_nothing_behind() {
    require_dm!("image_with_bad_digest_leaves_nothing_behind");
    let tmp = tempfile::tempdir().unwrap();
    let d = Dmctl::new();
    d.ok(&["pool", "create", "bad", "--data-size", "4G"]);
    let work = work_volume(&d, "bad", &tmp.path().join("work"));
    let layout = build_image(&work);
    d.ok(&[
        "image",
        "import",
        "bad",
        layout.to_str().unwrap(),
        "--name",
        "base",
        "--size",
        "256M",
    ]);
    let state = d.snapshot_state();
    let dm_before = common::run("dmsetup", &["--noudevsync", "ls"]);

    // Flip one byte in the middle of v2's top layer blob.
    let index: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(layout.join("index.json")).unwrap()).unwrap();
    let m = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "v2")
        .unwrap();
    let blob = |digest: &str| {
        layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let manifest: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(blob(m["digest"].as_str().unwrap())).unwrap())
            .unwrap();
    let top = blob(manifest["layers"][1]["digest"].as_str().unwrap());
    let mut bytes = fs::read(&top).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&top, bytes).unwrap();

    let err = d.fails(&[
        "image",
        "import",
        "bad",
        layout.to_str().unwrap(),
        "--name",
        "v2",
        "--size",
        "256M",
    ]);
    assert!(
        err.contains("digest") || err.contains("corrupt") || err.contains("invalid"),
        "{err}"
    );
    // Everything as before but pool.json's counters: the half-made layer was
    // created and rolled back, two committed kernel transactions, and ids
    // only move forward so none is ever reused.
    let without_counters = |mut st: std::collections::BTreeMap<String, String>| {
        let pool = st.get_mut("pools/bad/pool.json").unwrap();
        let mut v: serde_json::Value = serde_json::from_str(pool).unwrap();
        v.as_object_mut().unwrap().remove("transaction_id");
        v.as_object_mut().unwrap().remove("next_device_id");
        *pool = v.to_string();
        st
    };
    assert_eq!(
        without_counters(d.snapshot_state()),
        without_counters(state),
        "JSON metadata as before"
    );
    let blobs = |st: &Path| fs::read_dir(st.join("pools/bad/blobs")).unwrap().count();
    assert_eq!(
        blobs(d.state_root()),
        2,
        "only base's layer and config blobs"
    );
    assert_eq!(
        common::run("dmsetup", &["--noudevsync", "ls"]),
        dm_before,
        "dm devices as before"
    );
    assert_eq!(d.json(&["image", "ls", "bad"]).as_array().unwrap().len(), 1);
    d.ok(&["check", "bad"]);
    common::thin_check_live(&d, "bad");
}

/// The mount points in this namespace, from /proc/self/mountinfo.
fn mount_points() -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
        .collect()
}

/// The kernel's id of the mount at `at` (mountinfo's first field): a mount
/// moved with MS_MOVE keeps it, a new mount gets another.
fn mount_id(at: &Path) -> Option<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.len() > 4 && Path::new(f[4]) == at)
        .map(|f| f[0].to_string())
}

#[test]
fn image_warm_spares_are_handed_out_by_provision() {
    require_dm!("image_warm_spares_are_handed_out_by_provision");
    let tmp = tempfile::tempdir().unwrap();
    let d = Dmctl::new();
    d.ok(&["pool", "create", "wm", "--data-size", "4G"]);
    let work = work_volume(&d, "wm", &tmp.path().join("work"));
    let layout = build_image(&work);
    let l = layout.to_str().unwrap();
    d.ok(&["image", "import", "wm", l, "--name", "v2", "--size", "256M"]);
    let dir = |n: &str| {
        let p = work.join(n);
        fs::create_dir_all(&p).unwrap();
        p
    };

    common::step("a cold provision, for reference");
    let cold = dir("cold");
    d.ok(&[
        "image",
        "provision",
        "wm",
        "v2",
        "cold",
        "--mount",
        cold.to_str().unwrap(),
    ]);
    let want = tree(&cold);

    common::step("dmctl image warm wm v2 --spares 3");
    let w = d.json(&["image", "warm", "wm", "v2", "--spares", "3"]);
    assert_eq!(w["made"], 3, "{w}");
    let spares: Vec<String> = w["spares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    assert_eq!(spares.len(), 3);
    assert_eq!(d.json(&["image", "inspect", "wm", "v2"])["spares"], 3);
    common::check_invariants(&d, "wm");
    let again = d.json(&["image", "warm", "wm", "v2", "--spares", "3"]);
    assert_eq!(
        (again["made"].clone(), again["removed"].clone()),
        (0.into(), 0.into())
    );
    let spare_info = d.json(&["info", &format!("wm/{}", spares[0])]);
    let spare_mp = PathBuf::from(spare_info["mountpoint"].as_str().unwrap());
    assert!(
        mount_points().contains(&spare_mp),
        "spare is mounted at {spare_mp:?}"
    );
    let spare_dev = spare_info["device_id"].clone();
    let spare_mount_id = mount_id(&spare_mp).unwrap();

    common::step("refused provisions leave the spares as they were");
    let before = common::world(&d);
    let missing = work.join("no-such-dir");
    let err = d.fails(&[
        "image",
        "provision",
        "wm",
        "v2",
        "j",
        "--mount",
        missing.to_str().unwrap(),
    ]);
    assert!(err.contains("no-such-dir"), "{err}");
    let err = d.fails(&["image", "provision", "wm", "v2", "cold"]);
    assert!(err.contains("exists"), "{err}");
    assert_eq!(
        before,
        common::world(&d),
        "a refused provision changed the world"
    );

    common::step("provision hands the first spare out: renamed, its mount moved");
    let job = dir("job");
    let r = d.json(&[
        "image",
        "provision",
        "wm",
        "v2",
        "job",
        "--mount",
        job.to_str().unwrap(),
    ]);
    assert_eq!(r["device_id"], spare_dev, "the spare's thin device: {r}");
    assert_eq!(r["name"], "job");
    assert_eq!(
        PathBuf::from(r["mountpoint"].as_str().unwrap()),
        fs::canonicalize(&job).unwrap()
    );
    let names = common::dm_names();
    assert!(names.contains(&"dmctl+wm+job".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n.ends_with(&spares[0])), "{names:?}");
    let mps = mount_points();
    assert!(mps.contains(&fs::canonicalize(&job).unwrap()), "{mps:?}");
    assert!(!mps.contains(&spare_mp), "the spare's mount moved: {mps:?}");
    assert!(!spare_mp.exists(), "the spare's mount point is gone");
    assert_eq!(
        mount_id(&fs::canonicalize(&job).unwrap()),
        Some(spare_mount_id),
        "the job's rootfs is the spare's mount, moved (not a new mount)"
    );
    assert!(d.run(&["info", &format!("wm/{}", spares[0])]).status.code() == Some(1));
    assert_eq!(tree(&job), want, "a spare's rootfs is the image's");
    assert_eq!(d.json(&["image", "inspect", "wm", "v2"])["spares"], 2);
    fs::write(job.join("out"), "job output\n").unwrap();
    d.ok(&["rm", "wm/job", "--force"]);

    common::step("another size gets no spare; no --mount gets an unmounted one");
    let big = dir("big");
    let b = d.json(&[
        "image",
        "provision",
        "wm",
        "v2",
        "big",
        "--size",
        "512M",
        "--mount",
        big.to_str().unwrap(),
    ]);
    assert_ne!(
        b["device_id"],
        d.json(&["info", &format!("wm/{}", spares[1])])["device_id"]
    );
    assert_eq!(d.json(&["image", "inspect", "wm", "v2"])["spares"], 2);
    let bare = d.json(&["image", "provision", "wm", "v2", "bare"]);
    assert!(bare["mountpoint"].is_null(), "{bare}");
    assert!(bare["devnode"].is_string(), "{bare}");
    assert_eq!(d.json(&["image", "inspect", "wm", "v2"])["spares"], 1);
    d.ok(&["rm", "wm/bare"]);
    d.ok(&["rm", "wm/big", "--force"]);

    common::step("user names cannot take the spare prefix");
    let err = d.fails(&["create", "wm/spare.mine", "--size", "16M"]);
    assert!(err.contains("reserved"), "{err}");
    let err = d.fails(&["image", "provision", "wm", "v2", "spare.mine"]);
    assert!(err.contains("reserved"), "{err}");

    common::step("pool deactivate takes the spares' mounts down; warm mounts them again");
    d.ok(&["rm", "wm/cold", "--force"]);
    d.ok(&["umount", "wm/work"]);
    d.ok(&["pool", "deactivate", "wm"]);
    d.ok(&["pool", "activate", "wm"]);
    d.ok(&["mount", "wm/work", work.to_str().unwrap()]);
    let left = d.json(&["image", "inspect", "wm", "v2"]);
    assert_eq!(left["spares"], 1);
    let w = d.json(&["image", "warm", "wm", "v2", "--spares", "2"]);
    assert_eq!(
        (w["made"].clone(), w["remounted"].clone()),
        (1.into(), 1.into()),
        "{w}"
    );

    common::step("a spare that lost its mount is mounted afresh by provision");
    let lone = w["spares"][0].as_str().unwrap().to_string();
    let lone_mp = PathBuf::from(
        d.json(&["info", &format!("wm/{lone}")])["mountpoint"]
            .as_str()
            .unwrap(),
    );
    common::run("umount", &[lone_mp.to_str().unwrap()]);
    let job2 = dir("job2");
    let r = d.json(&[
        "image",
        "provision",
        "wm",
        "v2",
        "job2",
        "--mount",
        job2.to_str().unwrap(),
    ]);
    assert_eq!(
        PathBuf::from(r["mountpoint"].as_str().unwrap()),
        fs::canonicalize(&job2).unwrap()
    );
    assert_eq!(tree(&job2), want);
    d.ok(&["rm", "wm/job2", "--force"]);

    common::step("image rm takes the spares with it");
    d.ok(&["image", "rm", "wm", "v2"]);
    let names = common::dm_names();
    assert!(!names.iter().any(|n| n.contains("spare.")), "{names:?}");
    assert!(!mount_points()
        .iter()
        .any(|m| m.to_string_lossy().contains("spare.")));
    common::check_invariants(&d, "wm");
}

/// Regression: `rm POOL/layer-<hash>` removed a layer while an image used
/// it and a job provisioned from it was mounted; then `check` said clean,
/// `image import` said "already imported", and provision failed with
/// "volume not found".
#[test]
fn image_layer_removed_by_rm_is_refused_then_reported_and_reimported() {
    require_dm!("image_layer_removed_by_rm_is_refused_then_reported_and_reimported");
    let tmp = tempfile::tempdir().unwrap();
    let d = Dmctl::new();
    d.ok(&["pool", "create", "lp", "--data-size", "4G"]);
    let work = work_volume(&d, "lp", &tmp.path().join("work"));
    let layout = build_image(&work);
    let l = layout.to_str().unwrap();
    d.ok(&["image", "import", "lp", l, "--ref", "v2", "--size", "256M"]);
    let job = work.join("job");
    fs::create_dir_all(&job).unwrap();
    d.ok(&[
        "image",
        "provision",
        "lp",
        "v2",
        "job",
        "--mount",
        job.to_str().unwrap(),
    ]);
    let layers: Vec<String> = d.json(&["image", "inspect", "lp", "v2"])["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["volume"].as_str().unwrap().to_string())
        .collect();
    let top = format!("lp/{}", layers[1]);

    common::step("rm of a layer volume is refused, world unchanged");
    let before = common::world(&d);
    let line = d.fails(&["rm", &top]);
    assert!(line.contains("layer of image v2"), "{line}");
    assert!(line.contains("image rm"), "{line}");
    assert_eq!(before, common::world(&d), "a refused rm changed the world");
    d.ok(&["check", "lp"]);

    common::step("rm --force removes it and says what breaks");
    let out = d.run(&["rm", &top, "--force"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    assert!(err.contains("warning") && err.contains("v2"), "{err}");
    let out = d.run(&["check", "lp"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "check must see the broken image: {text}"
    );
    assert!(text.contains("broken image: v2: layer 2 of 2"), "{text}");
    let line = d.fails(&["image", "provision", "lp", "v2", "job2"]);
    assert!(line.contains("import it again"), "{line}");
    // The job's parent layer is gone: its diff says so.
    let line = d.fails(&["diff", "lp/job", "-o", work.join("d.tar").to_str().unwrap()]);
    assert!(line.contains("was removed"), "{line}");

    common::step("import makes the layer again (not 'already imported')");
    let r = d.json(&["image", "import", "lp", l, "--ref", "v2", "--size", "256M"]);
    assert_eq!(r["already_present"], false, "{r}");
    assert_eq!(r["layers_created"], 1, "{r}");
    d.ok(&["check", "lp"]);
    let job2 = work.join("job2");
    fs::create_dir_all(&job2).unwrap();
    d.ok(&[
        "image",
        "provision",
        "lp",
        "v2",
        "job2",
        "--mount",
        job2.to_str().unwrap(),
    ]);
    assert_same_tree(&job2, &umoci_unpack(&layout, "v2", &work.join("ref-v2")));

    common::step("check --repair drops an image whose layer is gone");
    d.ok(&["umount", "lp/job2"]);
    d.ok(&["rm", "lp/job2"]);
    d.ok(&["rm", &top, "--force"]);
    let out = d.run(&["check", "lp", "--repair"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("dropped image v2"), "{text}");
    assert!(d
        .json(&["image", "ls", "lp"])
        .as_array()
        .unwrap()
        .is_empty());
    d.ok(&["check", "lp"]);
    common::thin_check_live(&d, "lp");
}

/// Regression: `--name` both selected the image in the source and named it
/// here, so a one-image layout tagged `v2` could not be imported as
/// `reimported` ("no image named").
#[test]
fn image_import_under_another_name() {
    require_dm!("image_import_under_another_name");
    let tmp = tempfile::tempdir().unwrap();
    let d = Dmctl::new();
    d.ok(&["pool", "create", "rn", "--data-size", "4G"]);
    let work = work_volume(&d, "rn", &tmp.path().join("work"));
    let layout = build_image(&work);
    let l = layout.to_str().unwrap();
    // Two images in the layout: the selector is needed, and an unknown
    // one is refused naming what there is.
    let line = d.fails(&["image", "import", "rn", l]);
    assert!(line.contains("base") && line.contains("v2"), "{line}");
    let line = d.fails(&["image", "import", "rn", l, "--ref", "nosuch"]);
    assert!(line.contains("no image named"), "{line}");
    // SOURCE:REF selects, --name names.
    let r = d.json(&[
        "image",
        "import",
        "rn",
        &format!("{l}:v2"),
        "--name",
        "mine:1",
        "--size",
        "256M",
    ]);
    assert_eq!(r["reference"], "mine:1");
    let out = work.join("exported");
    d.ok(&["image", "export", "rn", "mine:1", out.to_str().unwrap()]);
    // A one-image source needs no selector, whatever --name says.
    let r = d.json(&[
        "image",
        "import",
        "rn",
        out.to_str().unwrap(),
        "--name",
        "reimported",
        "--size",
        "256M",
    ]);
    assert_eq!(r["reference"], "reimported");
    assert_eq!(r["layers_created"], 0, "its layers are shared: {r}");
    let names: Vec<String> = d
        .json(&["image", "ls", "rn"])
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["reference"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["mine:1", "reimported"]);
    assert_eq!(
        chain_ids(&d, "rn", "mine:1"),
        chain_ids(&d, "rn", "reimported")
    );
    // --ref and SOURCE:REF together are one too many.
    let out = d.run(&["image", "import", "rn", &format!("{l}:v2"), "--ref", "v2"]);
    assert_eq!(out.status.code(), Some(1));
    common::thin_check_live(&d, "rn");
}
