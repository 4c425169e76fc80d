//! OCI layer tars (hostile input) applied with `apply_layer`, as root, onto a
//! fresh directory per input; nothing may appear, change or vanish outside
//! that directory.
//!
//! Safety: a bug here could write or delete outside the root, so the target
//! first moves into a private mount namespace where every mount is read-only
//! except a private tmpfs at `/tmp/dmctl-fuzz-layer` (the roots and the
//! `outside` sentinel live there) and this fuzz project's directory (where
//! libFuzzer keeps its corpus and artifacts). It needs root (CAP_SYS_ADMIN).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const WORK: &str = "/tmp/dmctl-fuzz-layer";
const VICTIM: &[u8] = b"precious data outside the root\n";

fn mount(src: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) -> i32 {
    let c = |s: &str| CString::new(s).unwrap();
    let (src, target, fstype, data) = (c(src), c(target), c(fstype), c(data));
    unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    }
}

/// Undo the octal escapes of /proc/self/mountinfo (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn sandbox() -> PathBuf {
    let keep = env!("CARGO_MANIFEST_DIR");
    std::fs::create_dir_all(WORK).unwrap();
    assert_eq!(
        unsafe { libc::unshare(libc::CLONE_NEWNS) },
        0,
        "the layer target needs root: unshare(CLONE_NEWNS): {}",
        std::io::Error::last_os_error()
    );
    assert_eq!(
        mount("none", "/", "", libc::MS_REC | libc::MS_PRIVATE, ""),
        0
    );
    assert_eq!(mount("tmpfs", WORK, "tmpfs", 0, "size=64m,mode=0755"), 0);
    assert_eq!(mount(keep, keep, "", libc::MS_BIND | libc::MS_REC, ""), 0);
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    for line in info.lines() {
        let mp = unescape(line.split(' ').nth(4).unwrap());
        if mp == WORK || mp == keep || mp.starts_with(&format!("{keep}/")) {
            continue;
        }
        // Best effort for pseudo filesystems; checked below where it matters.
        mount(
            "none",
            &mp,
            "",
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            "",
        );
    }
    for probe in ["/tmp/dmctl-fuzz-probe", "/dmctl-fuzz-probe"] {
        let e = std::fs::write(probe, b"x").expect_err("sandbox: / is still writable");
        assert_eq!(
            e.raw_os_error(),
            Some(libc::EROFS),
            "sandbox probe {probe}: {e}"
        );
    }
    let parent = Path::new(keep).parent().unwrap().join("dmctl-fuzz-probe");
    assert!(
        std::fs::write(&parent, b"x").is_err(),
        "sandbox: {} writable",
        parent.display()
    );
    let work = PathBuf::from(WORK);
    std::fs::create_dir(work.join("outside")).unwrap();
    std::fs::write(work.join("outside/victim"), VICTIM).unwrap();
    work
}

/// Every path under `dir` (not following symlinks), relative, sorted.
fn listing(dir: &Path) -> Vec<String> {
    fn walk(d: &Path, base: &Path, out: &mut Vec<String>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                out.push(p.strip_prefix(base).unwrap().display().to_string());
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&p, base, out);
                }
            }
        }
    }
    let mut out = vec![];
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fuzz_target!(|data: &[u8]| {
    static WORK_DIR: OnceLock<PathBuf> = OnceLock::new();
    let work = WORK_DIR.get_or_init(sandbox);
    let root = work.join("root");
    std::fs::create_dir(&root).unwrap();
    let _ = dmctl::image::layer::apply_layer(&root, data);
    // Outside the root: exactly the sentinel, unchanged.
    let mut top: Vec<String> = std::fs::read_dir(work)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(
        top,
        ["outside", "root"],
        "something appeared next to the root"
    );
    assert_eq!(
        listing(&work.join("outside")),
        ["victim"],
        "outside/ changed"
    );
    let meta = std::fs::symlink_metadata(work.join("outside/victim")).unwrap();
    assert!(meta.file_type().is_file(), "outside/victim replaced");
    assert_eq!(std::fs::read(work.join("outside/victim")).unwrap(), VICTIM);
    // Root ignores modes: a layer's 0000 directories are removable.
    std::fs::remove_dir_all(&root).unwrap_or_else(|e| panic!("cleaning the root: {e}"));
});
