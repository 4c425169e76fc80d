//! Image archives as the real tools write them (no device-mapper needed):
//! an image built with umoci, written by `skopeo copy ... docker-archive:`,
//! `podman save` (docker-archive and oci-archive) and as a plain OCI layout;
//! each opened with dmctl's reader, its layers applied into a directory and
//! the tree compared with `umoci unpack` of the same image.
//!
//! Regression: `dmctl: error: .../x.docker.tar: manifest.json: unexpected
//! layer 1 path "<hex>.tar"` for skopeo's and podman's layout (layers as
//! `<hex>.tar` at the top, `<id>/layer.tar` symlinks to them).

use dmctl::image::{layer, oci};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two layers with what layers carry: files, dirs, a symlink, a hardlink,
/// modes, owners, and in the second a change, a deletion and an opaque dir.
fn build_layout(work: &Path) -> PathBuf {
    let l = work.join("L");
    let ls = l.to_str().unwrap();
    run("umoci", &["init", "--layout", ls]);
    run("umoci", &["new", "--image", &format!("{ls}:app")]);
    let b = work.join("bundle");
    let bs = b.to_str().unwrap();
    run("umoci", &["unpack", "--image", &format!("{ls}:app"), bs]);
    let r = b.join("rootfs");
    fs::create_dir_all(r.join("etc/app")).unwrap();
    fs::write(r.join("etc/app/a.conf"), "a\n").unwrap();
    fs::write(r.join("etc/app/b.conf"), "b\n").unwrap();
    fs::create_dir_all(r.join("usr/bin")).unwrap();
    fs::write(r.join("usr/bin/tool"), vec![7u8; 70_000]).unwrap();
    fs::set_permissions(r.join("usr/bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    std::os::unix::fs::symlink("tool", r.join("usr/bin/alias")).unwrap();
    fs::hard_link(r.join("usr/bin/tool"), r.join("usr/bin/tool2")).unwrap();
    fs::create_dir_all(r.join("var/cache/x")).unwrap();
    fs::write(r.join("var/cache/x/old"), "old\n").unwrap();
    std::os::unix::fs::lchown(r.join("etc/app/b.conf"), Some(1000), Some(1000)).unwrap();
    run("umoci", &["repack", "--image", &format!("{ls}:app"), bs]);
    run(
        "umoci",
        &["unpack", "--image", &format!("{ls}:app"), &format!("{bs}2")],
    );
    let r = work.join("bundle2/rootfs");
    fs::write(r.join("etc/app/a.conf"), "changed\n").unwrap();
    fs::remove_file(r.join("etc/app/b.conf")).unwrap();
    fs::remove_dir_all(r.join("var/cache")).unwrap();
    fs::create_dir_all(r.join("var/cache")).unwrap();
    fs::write(r.join("var/cache/new"), "new\n").unwrap();
    run(
        "umoci",
        &["repack", "--image", &format!("{ls}:app"), &format!("{bs}2")],
    );
    l
}

#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    content: Option<Vec<u8>>,
    link: Option<PathBuf>,
    mtime: Option<i64>,
}

fn tree(root: &Path) -> BTreeMap<String, Entry> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, Entry>) {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let m = fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                "dir"
            } else if ft.is_symlink() {
                "symlink"
            } else {
                "file"
            };
            out.insert(
                p.strip_prefix(root).unwrap().display().to_string(),
                Entry {
                    kind,
                    mode: m.mode(),
                    uid: m.uid(),
                    gid: m.gid(),
                    content: ft.is_file().then(|| fs::read(&p).unwrap()),
                    link: ft.is_symlink().then(|| fs::read_link(&p).unwrap()),
                    // Directory mtimes move as later layers write into them.
                    mtime: (!ft.is_dir()).then_some(m.mtime()),
                },
            );
            if ft.is_dir() {
                walk(&p, root, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Open `source` with dmctl's reader and apply its layers into `dest`.
fn apply(source: &Path, selector: Option<&str>, work: &Path, dest: &Path) {
    fs::create_dir_all(dest).unwrap();
    let img = oci::open(source, selector, None, work)
        .unwrap_or_else(|e| panic!("{}: {e}", source.display()));
    assert_eq!(img.layers.len(), 2, "{}", source.display());
    for i in 0..img.layers.len() {
        let mut reader = img.open_layer(i).unwrap();
        layer::apply_layer(dest, &mut reader).unwrap();
        reader.finish().unwrap();
    }
}

#[test]
fn archives_written_by_skopeo_and_podman_give_umoci_unpack_tree() {
    let tools = ["umoci", "skopeo", "podman"];
    if !nix::unistd::geteuid().is_root() || tools.iter().any(|t| !have(t)) {
        eprintln!(
            "skipped: needs root, umoci, skopeo and podman: \
             archives_written_by_skopeo_and_podman_give_umoci_unpack_tree"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let layout = build_layout(work);
    let ls = layout.to_str().unwrap();
    let reference = tree(&{
        let b = work.join("ref");
        run(
            "umoci",
            &[
                "unpack",
                "--image",
                &format!("{ls}:app"),
                b.to_str().unwrap(),
            ],
        );
        b.join("rootfs")
    });
    assert!(reference.contains_key("var/cache/new"), "{reference:?}");
    assert!(!reference.contains_key("etc/app/b.conf"));

    let skopeo_tar = work.join("skopeo.docker.tar");
    run(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            &format!("oci:{ls}:app"),
            &format!("docker-archive:{}:example/app:1", skopeo_tar.display()),
        ],
    );
    // podman with a private store under the temp dir (no daemon needed).
    let store = work.join("podman");
    let podman = |args: &[&str]| {
        let base = [
            "--root",
            &format!("{}/root", store.display()),
            "--runroot",
            &format!("{}/run", store.display()),
            "--storage-driver",
            "vfs",
        ]
        .map(String::from);
        let all: Vec<String> = base
            .iter()
            .cloned()
            .chain(args.iter().map(|a| a.to_string()))
            .collect();
        run(
            "podman",
            &all.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };
    podman(&["load", "-i", skopeo_tar.to_str().unwrap()]);
    let podman_docker = work.join("podman.docker.tar");
    let podman_oci = work.join("podman.oci.tar");
    podman(&[
        "save",
        "--format",
        "docker-archive",
        "-o",
        podman_docker.to_str().unwrap(),
        "example/app:1",
    ]);
    podman(&[
        "save",
        "--format",
        "oci-archive",
        "-o",
        podman_oci.to_str().unwrap(),
        "example/app:1",
    ]);
    let listing = run("tar", &["-tf", podman_docker.to_str().unwrap()]);
    assert!(
        listing
            .lines()
            .any(|l| l.len() == 68 && l.ends_with(".tar")),
        "podman's layout has <hex>.tar layers: {listing}"
    );

    for (name, source, selector) in [
        ("skopeo docker-archive", &skopeo_tar, None),
        ("podman docker-archive", &podman_docker, None),
        ("podman oci-archive", &podman_oci, None),
        ("umoci layout", &layout, Some("app")),
    ] {
        let dest = work.join(format!("applied-{}", name.replace(' ', "-")));
        apply(source, selector, &work.join("extract"), &dest);
        let got = tree(&dest);
        for (path, want) in &reference {
            assert_eq!(got.get(path), Some(want), "{name}: {path}");
        }
        let extra: Vec<&String> = got.keys().filter(|k| !reference.contains_key(*k)).collect();
        assert!(extra.is_empty(), "{name}: extra entries {extra:?}");
        let img = oci::open(source, selector, None, &work.join("extract")).unwrap();
        assert!(
            img.reference
                .as_deref()
                .is_some_and(|r| r.ends_with("app:1") || r == "app"),
            "{name}: {:?}",
            img.reference
        );
    }
}
