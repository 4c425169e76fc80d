//! Hostile layer tars against `apply_layer`, on the host, as root.
//!
//! Each case builds its tar from raw 512-byte headers (so names may hold
//! `..`, absolute paths, anything), applies it to `TMP/root` next to a
//! sentinel `TMP/outside` (with `victim`, mode 0644, known content), and
//! checks that the case ended as expected (a clean error, or a harmless
//! result inside the root) and that nothing outside the root changed or
//! appeared.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use dmctl::image::layer::apply_layer;
use dmctl::Error;
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

const VICTIM: &[u8] = b"precious host data\n";

// ---------------------------------------------------------------- raw tar

struct Ent {
    name: Vec<u8>,
    ty: EntryType,
    mode: u32,
    uid: u64,
    data: Vec<u8>,
    link: Vec<u8>,
    dev: (u32, u32),
    pax: Vec<(Vec<u8>, Vec<u8>)>,
    gnu_longname: Option<Vec<u8>>,
}

fn ent(name: &str, ty: EntryType) -> Ent {
    Ent {
        name: name.as_bytes().to_vec(),
        ty,
        mode: if ty == EntryType::Directory {
            0o755
        } else {
            0o644
        },
        uid: 0,
        data: Vec::new(),
        link: Vec::new(),
        dev: (0, 0),
        pax: Vec::new(),
        gnu_longname: None,
    }
}

fn file(name: &str, data: &str) -> Ent {
    let mut e = ent(name, EntryType::Regular);
    e.data = data.as_bytes().to_vec();
    e
}

fn dir(name: &str) -> Ent {
    ent(name, EntryType::Directory)
}

fn symlink(name: &str, target: &str) -> Ent {
    let mut e = ent(name, EntryType::Symlink);
    e.link = target.as_bytes().to_vec();
    e.mode = 0o777;
    e
}

fn hardlink(name: &str, target: &str) -> Ent {
    let mut e = ent(name, EntryType::Link);
    e.link = target.as_bytes().to_vec();
    e
}

fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while body + len.to_string().len() != len {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} ").into_bytes();
    r.extend_from_slice(key);
    r.push(b'=');
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

fn put(buf: &mut Vec<u8>, h: &Header, data: &[u8]) {
    buf.extend_from_slice(h.as_bytes());
    buf.extend_from_slice(data);
    let rem = buf.len() % 512;
    if rem != 0 {
        buf.resize(buf.len() + 512 - rem, 0);
    }
}

/// Write the name bytes straight into the header: `Header::set_path`
/// refuses `..`, which is the point here.
fn raw_name(field: &mut [u8], name: &[u8]) {
    let n = name.len().min(field.len());
    field[..n].copy_from_slice(&name[..n]);
}

fn build(ents: Vec<Ent>) -> Vec<u8> {
    let mut buf = Vec::new();
    for e in ents {
        if let Some(long) = &e.gnu_longname {
            let mut h = Header::new_gnu();
            h.set_entry_type(EntryType::GNULongName);
            raw_name(&mut h.as_old_mut().name, b"././@LongLink");
            let mut data = long.clone();
            data.push(0);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            put(&mut buf, &h, &data);
        }
        if !e.pax.is_empty() {
            let mut body = Vec::new();
            for (k, v) in &e.pax {
                body.extend_from_slice(&pax_record(k, v));
            }
            let mut h = Header::new_ustar();
            h.set_entry_type(EntryType::XHeader);
            raw_name(&mut h.as_old_mut().name, b"PaxHeader");
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            put(&mut buf, &h, &body);
        }
        let mut h = Header::new_ustar();
        h.set_entry_type(e.ty);
        raw_name(&mut h.as_old_mut().name, &e.name);
        raw_name(&mut h.as_old_mut().linkname, &e.link);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.uid);
        h.set_mtime(1_600_000_000);
        h.set_size(e.data.len() as u64);
        h.set_device_major(e.dev.0).unwrap();
        h.set_device_minor(e.dev.1).unwrap();
        h.set_cksum();
        put(&mut buf, &h, &e.data);
    }
    buf.extend_from_slice(&[0u8; 1024]);
    buf
}

// ---------------------------------------------------------------- sandbox

struct Sandbox {
    tmp: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let tmp = tempfile::Builder::new()
            .prefix("dmctl-hostile-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(tmp.path().join("root")).unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::create_dir(outside.join("subdir")).unwrap();
        std::fs::write(outside.join("victim"), VICTIM).unwrap();
        std::fs::set_permissions(
            outside.join("victim"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o755)).unwrap();
        Sandbox { tmp }
    }
    fn root(&self) -> PathBuf {
        self.tmp.path().join("root")
    }
    fn outside(&self) -> String {
        self.tmp
            .path()
            .join("outside")
            .to_str()
            .unwrap()
            .to_string()
    }
}

#[derive(Debug, PartialEq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    ino: u64,
    nlink: u64,
    mtime: (i64, i64),
    sha: Option<String>,
    link: Option<PathBuf>,
}

/// Everything under `base` except the `root` subtree.
fn snapshot(base: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut todo = vec![base.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
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
        } else {
            "other"
        };
        out.insert(
            p.clone(),
            Node {
                kind,
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                ino: m.ino(),
                nlink: m.nlink(),
                mtime: (m.mtime(), m.mtime_nsec()),
                sha: ft
                    .is_file()
                    .then(|| hex::encode(Sha256::digest(std::fs::read(&p).unwrap()))),
                link: ft.is_symlink().then(|| std::fs::read_link(&p).unwrap()),
            },
        );
        if ft.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                let c = e.unwrap().path();
                if c != base.join("root") {
                    todo.push(c);
                }
            }
        }
    }
    out
}

enum Expect {
    /// A clean `Error::Invalid` naming the entry (substring).
    Invalid(&'static str),
    /// Success; then this check on the root.
    Ok(Box<dyn Fn(&Path)>),
}

/// Apply the case's tar to an empty root. `host`: host paths that must not
/// exist afterwards.
fn case(label: &str, ents: impl FnOnce(&Sandbox) -> Vec<Ent>, expect: Expect, host: &[&str]) {
    case_with(label, |_| {}, ents, expect, host)
}

/// The same on a root prepared by `lower` (a lower layer's content).
fn case_with(
    label: &str,
    lower: impl FnOnce(&Path),
    ents: impl FnOnce(&Sandbox) -> Vec<Ent>,
    expect: Expect,
    host: &[&str],
) {
    let sb = Sandbox::new();
    lower(&sb.root());
    let before = snapshot(sb.tmp.path());
    let victim_before = std::fs::read(sb.tmp.path().join("outside/victim")).unwrap();
    assert_eq!(victim_before, VICTIM);
    let tar = build(ents(&sb));
    let r = apply_layer(&sb.root(), &tar[..]);
    match (&expect, &r) {
        (Expect::Invalid(needle), Err(Error::Invalid(msg))) => {
            assert!(
                msg.contains(needle),
                "{label}: error {msg:?} lacks {needle:?}"
            );
            assert!(!msg.contains('\n'), "{label}: one-line message");
        }
        (Expect::Ok(check), Ok(_)) => check(&sb.root()),
        (Expect::Invalid(_), other) => panic!("{label}: expected Invalid, got {other:?}"),
        (Expect::Ok(_), Err(e)) => panic!("{label}: expected success, got {e}"),
    }
    let after = snapshot(sb.tmp.path());
    let gained: Vec<_> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    assert!(
        gained.is_empty(),
        "{label}: created outside the root: {gained:?}"
    );
    let lost: Vec<_> = before.keys().filter(|k| !after.contains_key(*k)).collect();
    assert!(
        lost.is_empty(),
        "{label}: removed outside the root: {lost:?}"
    );
    for (k, v) in &before {
        assert_eq!(&after[k], v, "{label}: {} changed", k.display());
    }
    assert_eq!(
        std::fs::read(sb.tmp.path().join("outside/victim")).unwrap(),
        VICTIM,
        "{label}: victim content"
    );
    for h in host {
        assert!(
            std::fs::symlink_metadata(h).is_err(),
            "{label}: host path {h} exists"
        );
    }
}

fn ok(f: impl Fn(&Path) + 'static) -> Expect {
    Expect::Ok(Box::new(f))
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

fn is_file_with(p: &Path, content: &str) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert!(m.is_file(), "{} is not a regular file", p.display());
    assert_eq!(read(p), content, "{}", p.display());
}

fn absent(p: &Path) {
    assert!(
        std::fs::symlink_metadata(p).is_err(),
        "{} exists",
        p.display()
    );
}

// ---------------------------------------------------------------- cases

#[test]
fn dotdot_name_is_clamped_into_root() {
    case(
        "../outside/evil",
        |_| vec![file("../outside/evil", "evil")],
        ok(|r| is_file_with(&r.join("outside/evil"), "evil")),
        &[],
    );
    case(
        "a/../../outside/evil",
        |_| vec![file("a/../../outside/evil", "evil")],
        ok(|r| {
            is_file_with(&r.join("outside/evil"), "evil");
            absent(&r.join("a"));
        }),
        &[],
    );
    case(
        "../../../../../../../../tmp/evil-deep",
        |_| vec![file("../../../../../../../../outside/evil", "evil")],
        ok(|r| is_file_with(&r.join("outside/evil"), "evil")),
        &[],
    );
}

#[test]
fn absolute_names_land_inside_root() {
    let abs = format!("/dmctl-hostile-abs-{}", std::process::id());
    let abs2 = abs.clone();
    case(
        "/abs/evil",
        move |_| vec![file(&format!("{abs2}/evil"), "evil")],
        ok({
            let abs = abs.clone();
            move |r| is_file_with(&r.join(abs.trim_start_matches('/')).join("evil"), "evil")
        }),
        &[&abs],
    );
    // The real absolute path of the sentinel.
    case(
        "absolute path of outside",
        |sb| vec![file(&format!("{}/evil", sb.outside()), "evil")],
        ok(|r| {
            let found = walk_files(r);
            assert_eq!(found.len(), 1, "{found:?}");
            assert!(found[0].ends_with("outside/evil"));
        }),
        &[],
    );
}

fn walk_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn symlink_parent_escapes() {
    case(
        "link -> ../outside, link/evil",
        |_| vec![symlink("link", "../outside"), file("link/evil", "evil")],
        // Resolved in the root: root/outside, which does not exist; the
        // dangling symlink cannot be made a directory.
        Expect::Invalid("link/evil"),
        &[],
    );
    case(
        "outside/ in root, link -> ../outside, link/evil",
        |_| {
            vec![
                dir("outside/"),
                symlink("link", "../outside"),
                file("link/evil", "evil"),
            ]
        },
        ok(|r| {
            is_file_with(&r.join("outside/evil"), "evil");
            assert!(std::fs::symlink_metadata(r.join("link"))
                .unwrap()
                .file_type()
                .is_symlink());
        }),
        &[],
    );
    case(
        "link -> ../../.., link/evil",
        |_| vec![symlink("link", "../../.."), file("link/evil", "evil")],
        ok(|r| is_file_with(&r.join("evil"), "evil")),
        &[],
    );
    case(
        "link -> /abs/path/of/outside, link/evil",
        |sb| vec![symlink("link", &sb.outside()), file("link/evil", "evil")],
        Expect::Invalid("link/evil"),
        &[],
    );
    case(
        "link -> /tmp/../../../outside, link/evil",
        |sb| {
            let t = format!("{}/../../../outside", sb.tmp.path().display());
            vec![symlink("link", &t), file("link/evil", "evil")]
        },
        Expect::Invalid("link/evil"),
        &[],
    );
    case(
        "chain a -> b -> ../outside",
        |_| {
            vec![
                symlink("a", "b"),
                symlink("b", "../outside"),
                file("a/evil", "evil"),
            ]
        },
        Expect::Invalid("a/evil"),
        &[],
    );
    case(
        "link -> /proc/self/cwd (magic link)",
        |_| vec![symlink("link", "/proc/self/cwd"), file("link/evil", "evil")],
        Expect::Invalid("link/evil"),
        &[],
    );
    case(
        "device node below a symlink out",
        |sb| {
            let mut d = ent("link/dev", EntryType::Char);
            d.dev = (1, 3);
            vec![symlink("link", &sb.outside()), d]
        },
        Expect::Invalid("link/dev"),
        &[],
    );
}

#[test]
fn hardlink_escapes() {
    case(
        "hardlink to ../outside/victim",
        |_| vec![hardlink("h", "../outside/victim")],
        Expect::Invalid("\"h\""),
        &[],
    );
    case(
        "hardlink to the absolute victim",
        |sb| vec![hardlink("h", &format!("{}/victim", sb.outside()))],
        Expect::Invalid("\"h\""),
        &[],
    );
    case(
        "hardlink through a symlink out",
        |_| vec![symlink("link", "../outside"), hardlink("h", "link/victim")],
        Expect::Invalid("\"h\""),
        &[],
    );
    case(
        "hardlink through an absolute symlink out",
        |sb| vec![symlink("link", &sb.outside()), hardlink("h", "link/victim")],
        Expect::Invalid("\"h\""),
        &[],
    );
    case(
        "hardlink named ../outside/hl to a root file",
        |_| vec![file("f", "inside"), hardlink("../outside/hl", "f")],
        ok(|r| {
            let a = std::fs::metadata(r.join("f")).unwrap();
            let b = std::fs::symlink_metadata(r.join("outside/hl")).unwrap();
            assert_eq!(a.ino(), b.ino());
        }),
        &[],
    );
    case(
        "hardlink to a symlink out, then write through its name",
        |sb| {
            vec![
                symlink("s", &format!("{}/victim", sb.outside())),
                hardlink("h", "s"),
                file("h", "overwritten"),
            ]
        },
        ok(|r| {
            is_file_with(&r.join("h"), "overwritten");
            assert!(std::fs::symlink_metadata(r.join("s"))
                .unwrap()
                .file_type()
                .is_symlink());
        }),
        &[],
    );
    case(
        "write over a hardlinked name does not write through",
        |_| vec![file("t", "orig"), hardlink("h", "t"), file("h", "new")],
        ok(|r| {
            is_file_with(&r.join("t"), "orig");
            is_file_with(&r.join("h"), "new");
        }),
        &[],
    );
}

#[test]
fn root_entry_as_symlink() {
    // CVE-2021-29136 (umoci): "/." as a symlink.
    for name in [".", "./", "/.", "/", "./."] {
        case(
            &format!("root entry {name:?} as a symlink out"),
            |sb| vec![symlink(name, &sb.outside()), file("evil", "evil")],
            Expect::Invalid("non-directory entry for the root"),
            &[],
        );
    }
    case(
        "root entry as a regular file",
        |_| vec![file("./", "x")],
        Expect::Invalid("root"),
        &[],
    );
    case(
        "root entry as a directory changes only the root",
        |_| {
            let mut d = dir("./");
            d.mode = 0o700;
            vec![d, file("f", "x")]
        },
        ok(|r| {
            let m = std::fs::symlink_metadata(r).unwrap();
            assert!(m.is_dir());
            assert_eq!(m.mode() & 0o7777, 0o700);
            is_file_with(&r.join("f"), "x");
        }),
        &[],
    );
    case(
        "'..' alone",
        |_| vec![dir("../")],
        Expect::Invalid("'..'"),
        &[],
    );
}

#[test]
fn final_symlink_is_replaced_never_followed() {
    case(
        "x -> ../outside/victim, then file x",
        |_| vec![symlink("x", "../outside/victim"), file("x", "pwned")],
        ok(|r| is_file_with(&r.join("x"), "pwned")),
        &[],
    );
    case(
        "x -> /abs/outside/victim, then file x",
        |sb| {
            vec![
                symlink("x", &format!("{}/victim", sb.outside())),
                file("x", "pwned"),
            ]
        },
        ok(|r| is_file_with(&r.join("x"), "pwned")),
        &[],
    );
    // CVE-2021-32760: a chmod-only directory entry over a symlink out.
    case(
        "symlink to outside, then dir entry with the same name",
        |sb| {
            let mut d = dir("l");
            d.mode = 0o777;
            d.uid = 1234;
            let mut d2 = dir("l2/");
            d2.mode = 0o4777;
            d2.uid = 1234;
            vec![
                symlink("l", &format!("{}/victim", sb.outside())),
                d,
                symlink("l2", &sb.outside()),
                d2,
            ]
        },
        ok(|r| {
            for n in ["l", "l2"] {
                let m = std::fs::symlink_metadata(r.join(n)).unwrap();
                assert!(m.is_dir(), "{n}");
                assert_eq!(m.uid(), 1234);
            }
        }),
        &[],
    );
    case(
        "symlink out, then fifo, device and hardlink with its name",
        |sb| {
            let v = format!("{}/victim", sb.outside());
            let mut c = ent("c", EntryType::Char);
            c.dev = (1, 3);
            c.mode = 0o777;
            vec![
                file("t", "t"),
                symlink("f", &v),
                ent("f", EntryType::Fifo),
                symlink("c", &v),
                c,
                symlink("h", &v),
                hardlink("h", "t"),
            ]
        },
        ok(|r| {
            assert!(std::fs::symlink_metadata(r.join("f"))
                .unwrap()
                .file_type()
                .is_fifo());
            assert!(std::fs::symlink_metadata(r.join("c"))
                .unwrap()
                .file_type()
                .is_char_device());
            is_file_with(&r.join("h"), "t");
        }),
        &[],
    );
}

#[test]
fn whiteout_escapes() {
    case(
        ".wh... (whiteout of '..')",
        |_| vec![file(".wh...", "")],
        Expect::Invalid(".wh..."),
        &[],
    );
    case(
        "dir/.wh... (whiteout of '..')",
        |_| vec![dir("d/"), file("d/.wh...", "")],
        Expect::Invalid("d/.wh..."),
        &[],
    );
    case_with(
        "../.wh.victim",
        |r| std::fs::write(r.join("victim"), "lower's own").unwrap(),
        |_| vec![file("../.wh.victim", "")],
        // Clamped: hides the root's own (lower) victim, nothing outside.
        ok(|r| absent(&r.join("victim"))),
        &[],
    );
    case(
        "../.wh.victim after this layer's own victim",
        |_| vec![file("victim", "mine"), file("../.wh.victim", "")],
        // A whiteout hides only lower content, never its own layer's.
        ok(|r| is_file_with(&r.join("victim"), "mine")),
        &[],
    );
    case(
        "../outside/.wh.victim",
        |_| vec![file("../outside/.wh.victim", "")],
        ok(|r| absent(&r.join("outside"))),
        &[],
    );
    case_with(
        "link/.wh.victim through a symlink, lower has root/outside/victim",
        |r| {
            std::fs::create_dir(r.join("outside")).unwrap();
            std::fs::write(r.join("outside/victim"), "lower").unwrap();
        },
        |sb| vec![symlink("link", &sb.outside()), file("link/.wh.victim", "")],
        // The absolute target resolves inside the root: root/<tmp>/outside
        // does not exist, so nothing is hidden.
        ok(|r| is_file_with(&r.join("outside/victim"), "lower")),
        &[],
    );
    case(
        "link/.wh.victim through a relative symlink",
        |_| vec![symlink("link", "../outside"), file("link/.wh.victim", "")],
        ok(|r| assert!(std::fs::symlink_metadata(r.join("link")).is_ok())),
        &[],
    );
    case(
        "link/.wh.victim through an absolute symlink",
        |sb| vec![symlink("link", &sb.outside()), file("link/.wh.victim", "")],
        ok(|_| {}),
        &[],
    );
    case(
        ".wh.subdir through a symlink to the outside dir",
        |sb| vec![symlink("link", &sb.outside()), file("link/.wh.subdir", "")],
        ok(|_| {}),
        &[],
    );
}

#[test]
fn opaque_marker_in_symlinked_dir() {
    case(
        "link -> abs outside, link/.wh..wh..opq",
        |sb| {
            vec![
                symlink("link", &sb.outside()),
                file("link/.wh..wh..opq", ""),
            ]
        },
        ok(|r| assert!(std::fs::symlink_metadata(r.join("link")).is_ok())),
        &[],
    );
    case(
        "link -> ../outside, link/.wh..wh..opq",
        |_| vec![symlink("link", "../outside"), file("link/.wh..wh..opq", "")],
        ok(|_| {}),
        &[],
    );
    case_with(
        "link -> ../../.. (the root), opaque prunes only inside the root",
        |r| std::fs::write(r.join("lower"), "l").unwrap(),
        |_| {
            vec![
                symlink("link", "../../.."),
                file("mine", "m"),
                file("link/.wh..wh..opq", ""),
            ]
        },
        ok(|r| {
            is_file_with(&r.join("mine"), "m");
            assert!(std::fs::symlink_metadata(r.join("link")).is_ok());
            absent(&r.join("lower"));
        }),
        &[],
    );
    case_with(
        "link -> ../outside with a lower outside/ in the root",
        |r| {
            std::fs::create_dir(r.join("outside")).unwrap();
            std::fs::write(r.join("outside/victim"), "lower").unwrap();
        },
        |_| vec![symlink("link", "../outside"), file("link/.wh..wh..opq", "")],
        ok(|r| {
            absent(&r.join("outside/victim"));
            assert!(std::fs::symlink_metadata(r.join("outside"))
                .unwrap()
                .is_dir());
        }),
        &[],
    );
    case(
        "../.wh..wh..opq",
        |_| vec![file("keep", "k"), file("../.wh..wh..opq", "")],
        ok(|r| is_file_with(&r.join("keep"), "k")),
        &[],
    );
}

#[test]
fn duplicate_entries() {
    case(
        "same file twice, then a dir with its name",
        |_| {
            vec![
                file("dup", "1"),
                file("dup", "2"),
                dir("dup/"),
                file("dup/x", "x"),
                dir("dup"),
            ]
        },
        ok(|r| {
            assert!(std::fs::symlink_metadata(r.join("dup")).unwrap().is_dir());
            is_file_with(&r.join("dup/x"), "x");
        }),
        &[],
    );
    case(
        "symlink out twice, then a file",
        |sb| {
            vec![
                symlink("d2", &sb.outside()),
                symlink("d2", &sb.outside()),
                file("d2", "plain"),
            ]
        },
        ok(|r| is_file_with(&r.join("d2"), "plain")),
        &[],
    );
    case(
        "file, then symlink out with the same name, then a file below it",
        |_| {
            vec![
                file("s", "f"),
                symlink("s", "../outside"),
                file("s/evil", "evil"),
            ]
        },
        Expect::Invalid("s/evil"),
        &[],
    );
}

#[test]
fn long_name_records_pointing_outside() {
    case(
        "PAX path ../../outside/evil",
        |_| {
            let mut e = file("innocent", "evil");
            e.pax
                .push((b"path".to_vec(), b"../../outside/evil".to_vec()));
            vec![e]
        },
        ok(|r| {
            is_file_with(&r.join("outside/evil"), "evil");
            absent(&r.join("innocent"));
        }),
        &[],
    );
    case(
        "PAX path absolute to the real outside",
        |sb| {
            let mut e = file("innocent", "evil");
            e.pax.push((
                b"path".to_vec(),
                format!("{}/evil", sb.outside()).into_bytes(),
            ));
            vec![e]
        },
        ok(|r| assert_eq!(walk_files(r).len(), 1)),
        &[],
    );
    case(
        "PAX linkpath of a hardlink outside",
        |_| {
            let mut e = hardlink("h", "innocent");
            e.pax
                .push((b"linkpath".to_vec(), b"../../../outside/victim".to_vec()));
            vec![e]
        },
        Expect::Invalid("\"h\""),
        &[],
    );
    case(
        "GNU longname ../../.../outside/evil",
        |_| {
            let long = format!("{}outside/evil", "../".repeat(40));
            let mut e = file("innocent", "evil");
            e.gnu_longname = Some(long.into_bytes());
            vec![e]
        },
        ok(|r| {
            is_file_with(&r.join("outside/evil"), "evil");
            absent(&r.join("innocent"));
        }),
        &[],
    );
    case(
        "GNU longname through a symlink out",
        |sb| {
            let long = format!("link/{}/evil", "x".repeat(120));
            let mut e = file("innocent", "evil");
            e.gnu_longname = Some(long.into_bytes());
            vec![symlink("link", &sb.outside()), e]
        },
        Expect::Invalid("evil"),
        &[],
    );
}

#[test]
fn device_node_outside() {
    case(
        "char device ../outside/dev",
        |_| {
            let mut d = ent("../outside/dev", EntryType::Char);
            d.dev = (1, 3);
            vec![d]
        },
        ok(|r| {
            let m = std::fs::symlink_metadata(r.join("outside/dev")).unwrap();
            assert!(m.file_type().is_char_device());
        }),
        &[],
    );
    case(
        "block device /outside/blk",
        |_| {
            let mut d = ent("/outside/blk", EntryType::Block);
            d.dev = (7, 0);
            vec![d]
        },
        ok(|r| {
            let m = std::fs::symlink_metadata(r.join("outside/blk")).unwrap();
            assert!(m.file_type().is_block_device());
        }),
        &[],
    );
}

#[test]
fn odd_entries_are_clean_errors() {
    case(
        "unknown entry type",
        |_| vec![ent("x", EntryType::new(b'Q'))],
        Expect::Invalid("unsupported"),
        &[],
    );
    case(
        "whiteout used as a directory",
        |_| vec![file(".wh.x/evil", "")],
        Expect::Invalid("whiteout"),
        &[],
    );
    case(
        "hardlink to the root",
        |_| vec![hardlink("h", "..")],
        Expect::Invalid("\"h\""),
        &[],
    );
    case(
        "symlink without a target",
        |_| vec![symlink("s", "")],
        Expect::Invalid("\"s\""),
        &[],
    );
}
