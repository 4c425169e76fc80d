//! Loop devices over pool backing files: attach (race-safe), find by
//! backing file, reuse, detach, and capacity refresh.
//!
//! Loop devices are attached persistently (no autoclear), so they survive
//! the dmctl process; `attach_or_reuse` makes activation idempotent.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use loopdev::{LoopControl, LoopDevice};

use crate::error::{Error, IoContext, Result};

// LOOP_SET_DIRECT_IO (0x4C08) takes its argument by value. loopdev-3 only
// exposes it behind a feature this crate does not enable.
nix::ioctl_write_int_bad!(loop_set_direct_io, 0x4C08);

const LOOP_CONTROL: &str = "/dev/loop-control";

/// How many free devices `attach` tries before giving up when other
/// processes keep taking them first.
const ATTACH_TRIES: u32 = 20;

/// How long `detach` waits for the kernel to release the backing file.
const DETACH_WAIT: Duration = Duration::from_secs(1);

/// An attached loop device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loop {
    /// `/dev/loopN`.
    pub path: PathBuf,
    /// `(major, minor)`.
    pub devno: (u32, u32),
}

/// Errors of the attach ioctls that mean "someone else got this device
/// first (or removed it)": try another free device.
fn is_race(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBUSY) | Some(libc::ENXIO) | Some(libc::ENOENT) | Some(libc::ENODEV)
    )
}

/// Attach `file` to a free loop device, persistently (no autoclear).
/// With `direct_io`, direct I/O is enabled if the backing file system
/// allows it (tmpfs does not; that is not an error).
pub fn attach(file: &Path, read_only: bool, direct_io: bool) -> Result<Loop> {
    // Open the backing file ourselves so that its errors name it, and so
    // that the device is read-only exactly when the fd is.
    let backing = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(file)
        .at(file)?;
    if !backing.metadata().at(file)?.is_file() {
        return Err(Error::Invalid(format!(
            "{}: not a regular file",
            file.display()
        )));
    }
    let control = LoopControl::open().at(LOOP_CONTROL)?;

    let mut last_err: Option<(PathBuf, io::Error)> = None;
    for _ in 0..ATTACH_TRIES {
        let dev = match control.next_free() {
            Ok(d) => d,
            Err(e) if is_race(&e) => {
                last_err = Some((PathBuf::from(LOOP_CONTROL), e));
                continue;
            }
            Err(e) => return Err(Error::io(LOOP_CONTROL, e)),
        };
        let path = dev
            .path()
            .ok_or_else(|| Error::NotFound("free loop device has no path".to_string()))?;
        match dev
            .with()
            .read_only(read_only)
            .autoclear(false)
            .attach_fd(backing.as_raw_fd())
        {
            Ok(()) => {}
            Err(e) if is_race(&e) => {
                last_err = Some((path, e));
                continue;
            }
            Err(e) => return Err(Error::io(&path, e)),
        }
        return finish_attach(&dev, path, direct_io);
    }
    let detail = match last_err {
        Some((path, e)) => format!(" (last: {}: {e})", path.display()),
        None => String::new(),
    };
    Err(Error::Busy(format!(
        "cannot attach {}: no free loop device after {ATTACH_TRIES} tries{detail}",
        file.display()
    )))
}

fn finish_attach(dev: &LoopDevice, path: PathBuf, direct_io: bool) -> Result<Loop> {
    if direct_io {
        // SAFETY: the fd is open for the duration of the call; the ioctl
        // takes its argument by value. Failure (e.g. tmpfs) is fine.
        let _ = unsafe { loop_set_direct_io(dev.as_raw_fd(), 1) };
    }
    let devno = (|| Ok::<_, io::Error>((dev.major()?, dev.minor()?)))();
    match devno {
        Ok(devno) => Ok(Loop { path, devno }),
        Err(e) => {
            let _ = dev.detach();
            Err(Error::io(path, e))
        }
    }
}

/// The contents of `/sys/block/NAME/loop/backing_file`, if attached.
fn sysfs_backing_file(name: &str) -> Option<String> {
    let s = fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
    let s = s.strip_suffix('\n').unwrap_or(&s);
    if s.is_empty() {
        None
    } else {
        Some(s.to_string())
    }
}

fn sysfs_devno(name: &str) -> Option<(u32, u32)> {
    let s = fs::read_to_string(format!("/sys/block/{name}/dev")).ok()?;
    let (maj, min) = s.trim().split_once(':')?;
    Some((maj.parse().ok()?, min.parse().ok()?))
}

fn sysfs_read_only(name: &str) -> bool {
    fs::read_to_string(format!("/sys/block/{name}/ro"))
        .map(|s| s.trim() == "1")
        .unwrap_or(false)
}

/// The loop device (`/dev/loopN`) whose backing file is `file`, as its
/// name under /sys/block, e.g. `loop3`.
fn find_name(file: &Path) -> Result<Option<String>> {
    let canon = match fs::canonicalize(file) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(file, e)),
    };
    let rd = match fs::read_dir("/sys/block") {
        Ok(rd) => rd,
        Err(e) => return Err(Error::io("/sys/block", e)),
    };
    let mut names: Vec<(u32, String)> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let n = name.strip_prefix("loop")?.parse::<u32>().ok()?;
            Some((n, name))
        })
        .collect();
    names.sort_unstable();
    for (_, name) in names {
        let Some(backing) = sysfs_backing_file(&name) else {
            continue;
        };
        // The kernel appends " (deleted)" when the file was unlinked: that
        // is a different file even if a new one now has the same name.
        if backing.ends_with(" (deleted)") {
            continue;
        }
        if Path::new(&backing) == canon {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

fn loop_of(name: &str) -> Option<Loop> {
    Some(Loop {
        path: PathBuf::from(format!("/dev/{name}")),
        devno: sysfs_devno(name)?,
    })
}

/// The loop device attached to `file`, if any (by canonical path; a loop
/// whose backing file was deleted never matches).
pub fn find_by_backing_file(file: &Path) -> Result<Option<Loop>> {
    Ok(find_name(file)?.and_then(|n| loop_of(&n)))
}

/// Reuse the loop device already attached to `file` (e.g. after a crash
/// between attach and activation), or attach a new one. Reusing a
/// read-only loop for read-write use is refused.
pub fn attach_or_reuse(file: &Path, read_only: bool, direct_io: bool) -> Result<Loop> {
    if let Some(name) = find_name(file)? {
        if let Some(l) = loop_of(&name) {
            if !read_only && sysfs_read_only(&name) {
                return Err(Error::Busy(format!(
                    "{} is already attached read-only to {}",
                    file.display(),
                    l.path.display()
                )));
            }
            return Ok(l);
        }
    }
    attach(file, read_only, direct_io)
}

/// Detach loop device `path` and wait (briefly) for the kernel to release
/// it. If another user (a mount, a dm table, an open fd) still has it open,
/// the kernel detaches it only when that user closes it: that is reported
/// as `Busy`, but the detach is already scheduled.
pub fn detach(path: &Path) -> Result<()> {
    let dev = LoopDevice::open(path).at(path)?;
    match dev.detach() {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
            return Err(Error::NotFound(format!(
                "{}: loop device is not attached",
                path.display()
            )))
        }
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            return Err(Error::Busy(format!("{} is busy", path.display())))
        }
        Err(e) => return Err(Error::io(path, e)),
    }
    // The backing file is released on the last close: ours.
    drop(dev);

    let name = fs::canonicalize(path)
        .ok()
        .and_then(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_string));
    let Some(name) = name else {
        return Ok(());
    };
    let deadline = Instant::now() + DETACH_WAIT;
    while sysfs_backing_file(&name).is_some() {
        if Instant::now() >= deadline {
            return Err(Error::Busy(format!(
                "{} is still in use; it will be detached when its last user closes it",
                path.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Detach whatever loop device has `file` as backing file. Returns false
/// if there was none.
pub fn detach_backing_file(file: &Path) -> Result<bool> {
    match find_by_backing_file(file)? {
        Some(l) => match detach(&l.path) {
            Ok(()) => Ok(true),
            // Detached concurrently by someone else.
            Err(Error::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        },
        None => Ok(false),
    }
}

/// Tell the loop driver that the backing file of `path` changed size
/// (LOOP_SET_CAPACITY).
pub fn refresh_capacity(path: &Path) -> Result<()> {
    let dev = LoopDevice::open(path).at(path)?;
    dev.set_capacity().at(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::blockdev;
    use std::fs::File;
    use std::io::Write as _;

    fn host_ok(name: &str) -> bool {
        let ok = nix::unistd::geteuid().is_root() && Path::new(LOOP_CONTROL).exists();
        if !ok {
            let _ = writeln!(std::io::stderr(), "skipped: needs root and loop: {name}");
        }
        ok
    }

    /// Detaches the loop device when dropped (unless already detached).
    struct Guard(Option<PathBuf>);
    impl Drop for Guard {
        fn drop(&mut self) {
            if let Some(p) = self.0.take() {
                let _ = detach(&p);
            }
        }
    }

    fn sparse_file(dir: &Path, name: &str, size: u64) -> PathBuf {
        let p = dir.join(name);
        File::create(&p).unwrap().set_len(size).unwrap();
        p
    }

    #[test]
    fn attach_find_reuse_grow_detach() {
        if !host_ok("attach_find_reuse_grow_detach") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = sparse_file(dir.path(), "pool.img", 16 << 20);

        assert_eq!(find_by_backing_file(&file).unwrap(), None);
        let l = attach(&file, false, true).unwrap();
        let mut guard = Guard(Some(l.path.clone()));
        assert!(l.path.to_str().unwrap().starts_with("/dev/loop"), "{l:?}");
        assert_eq!(blockdev::devno(&l.path).unwrap(), l.devno);
        assert_eq!(blockdev::size_bytes(&l.path).unwrap(), 16 << 20);

        // Found through a non-canonical path too.
        let odd = dir.path().join(".").join("pool.img");
        assert_eq!(find_by_backing_file(&odd).unwrap(), Some(l.clone()));
        assert_eq!(attach_or_reuse(&file, false, true).unwrap(), l);

        // Grow the backing file; the device follows after refresh.
        File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        refresh_capacity(&l.path).unwrap();
        assert_eq!(blockdev::size_bytes(&l.path).unwrap(), 32 << 20);

        detach(&l.path).unwrap();
        guard.0 = None;
        assert_eq!(find_by_backing_file(&file).unwrap(), None);
        assert!(!detach_backing_file(&file).unwrap());
        assert!(matches!(
            detach(&l.path),
            Err(Error::NotFound(_)) | Err(Error::Io { .. })
        ));
    }

    #[test]
    fn read_only_attach_and_detach_backing_file() {
        if !host_ok("read_only_attach_and_detach_backing_file") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = sparse_file(dir.path(), "ro.img", 4 << 20);
        let l = attach(&file, true, false).unwrap();
        let _guard = Guard(Some(l.path.clone()));
        let name = l.path.file_name().unwrap().to_str().unwrap().to_string();
        assert!(sysfs_read_only(&name));
        // Read-write reuse of a read-only loop is refused; read-only is fine.
        assert!(matches!(
            attach_or_reuse(&file, false, false),
            Err(Error::Busy(_))
        ));
        assert_eq!(attach_or_reuse(&file, true, false).unwrap(), l);
        assert!(detach_backing_file(&file).unwrap());
        assert_eq!(find_by_backing_file(&file).unwrap(), None);
    }

    #[test]
    fn deleted_backing_file_does_not_match() {
        if !host_ok("deleted_backing_file_does_not_match") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = sparse_file(dir.path(), "gone.img", 4 << 20);
        let l = attach(&file, false, false).unwrap();
        let _guard = Guard(Some(l.path.clone()));
        fs::remove_file(&file).unwrap();
        // Same name, new file: not the same backing file.
        sparse_file(dir.path(), "gone.img", 4 << 20);
        assert_eq!(find_by_backing_file(&file).unwrap(), None);
        let l2 = attach_or_reuse(&file, false, false).unwrap();
        let _guard2 = Guard(Some(l2.path.clone()));
        assert_ne!(l2, l);
    }

    #[test]
    fn concurrent_attach() {
        if !host_ok("concurrent_attach") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<PathBuf> = (0..6)
            .map(|i| sparse_file(dir.path(), &format!("c{i}.img"), 1 << 20))
            .collect();
        let loops: Vec<Result<Loop>> = std::thread::scope(|s| {
            let hs: Vec<_> = files
                .iter()
                .map(|f| s.spawn(move || attach(f, false, false)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let _guards: Vec<Guard> = loops
            .iter()
            .filter_map(|l| l.as_ref().ok())
            .map(|l| Guard(Some(l.path.clone())))
            .collect();
        let ok: Vec<&Loop> = loops.iter().map(|l| l.as_ref().unwrap()).collect();
        let mut paths: Vec<&PathBuf> = ok.iter().map(|l| &l.path).collect();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), files.len());
        for (f, l) in files.iter().zip(&ok) {
            assert_eq!(find_by_backing_file(f).unwrap().as_ref(), Some(*l));
        }
    }

    #[test]
    fn attach_errors_name_the_file() {
        let missing = Path::new("/nonexistent/dmctl-pool.img");
        match attach(missing, false, false) {
            Err(e @ Error::Io { .. }) => assert!(e.to_string().contains("dmctl-pool.img"), "{e}"),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(find_by_backing_file(missing).unwrap(), None);
        assert!(!detach_backing_file(missing).unwrap());
    }
}
