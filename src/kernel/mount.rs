//! Mounts: parsing /proc/self/mountinfo, mounting and unmounting.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

use crate::error::{Error, IoContext, Result};

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// `(major, minor)` of the mounted device (`st_dev` of files in it).
    pub devno: (u32, u32),
    /// Where it is mounted (unescaped).
    pub mount_point: PathBuf,
    /// File system type, e.g. `ext4`.
    pub fstype: String,
    /// Mount source, e.g. `/dev/dm-3` (unescaped).
    pub source: String,
    /// Super block options, e.g. `rw,errors=continue`.
    pub options: String,
}

/// Undo the kernel's octal escaping (`\040` space, `\011` tab, `\012`
/// newline, `\134` backslash; any `\NNN` in fact). A backslash not
/// followed by three octal digits is kept as is.
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = &b[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if v <= 0xff {
                    out.push(v as u8);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn unescape_string(field: &str) -> String {
    String::from_utf8_lossy(&unescape(field)).into_owned()
}

fn parse_devno(s: &str) -> Option<(u32, u32)> {
    let (maj, min) = s.split_once(':')?;
    Some((maj.parse().ok()?, min.parse().ok()?))
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let fields: Vec<&str> = line.split(' ').collect();
    // id parent maj:min root mount_point options [optional...] - fstype source super_options
    if fields.len() < 10 {
        return None;
    }
    fields[0].parse::<u64>().ok()?;
    fields[1].parse::<u64>().ok()?;
    let devno = parse_devno(fields[2])?;
    let mount_point = PathBuf::from(OsString::from_vec(unescape(fields[4])));
    if !mount_point.is_absolute() {
        return None;
    }
    let sep = fields.iter().skip(6).position(|f| *f == "-")? + 6;
    let rest = &fields[sep + 1..];
    if rest.len() < 3 || rest[0].is_empty() {
        return None;
    }
    Some(MountEntry {
        devno,
        mount_point,
        fstype: unescape_string(rest[0]),
        source: unescape_string(rest[1]),
        options: unescape_string(&rest[2..].join(" ")),
    })
}

/// Parse the text of /proc/self/mountinfo. Malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

/// Current mounts (of this process's mount namespace), in mount order.
pub fn mounts() -> Result<Vec<MountEntry>> {
    let text = fs::read_to_string(MOUNTINFO).at(MOUNTINFO)?;
    Ok(parse_mountinfo(&text))
}

/// Where block device `devno` is mounted (all bind mounts included).
pub fn mountpoints_of(devno: (u32, u32)) -> Result<Vec<PathBuf>> {
    Ok(mounts()?
        .into_iter()
        .filter(|m| m.devno == devno)
        .map(|m| m.mount_point)
        .collect())
}

/// Whether `path` (canonicalized) is a mount point.
pub fn is_mountpoint(path: &Path) -> Result<bool> {
    let canon = fs::canonicalize(path).at(path)?;
    Ok(mounts()?.iter().any(|m| m.mount_point == canon))
}

fn errno_io(e: Errno, what: String) -> io::Error {
    io::Error::new(io::Error::from(e).kind(), format!("{what}: {}", e.desc()))
}

/// Generic (VFS) mount options that are flags, not file-system data, as
/// mount(8) handles them: `(name, flag to set, flag to clear)`.
const VFS_OPTIONS: &[(&str, MsFlags, MsFlags)] = &[
    ("ro", MsFlags::MS_RDONLY, MsFlags::empty()),
    ("rw", MsFlags::empty(), MsFlags::MS_RDONLY),
    ("noatime", MsFlags::MS_NOATIME, MsFlags::empty()),
    ("nodiratime", MsFlags::MS_NODIRATIME, MsFlags::empty()),
    ("relatime", MsFlags::MS_RELATIME, MsFlags::empty()),
    ("strictatime", MsFlags::MS_STRICTATIME, MsFlags::empty()),
    ("lazytime", MsFlags::MS_LAZYTIME, MsFlags::empty()),
    ("nosuid", MsFlags::MS_NOSUID, MsFlags::empty()),
    ("nodev", MsFlags::MS_NODEV, MsFlags::empty()),
    ("noexec", MsFlags::MS_NOEXEC, MsFlags::empty()),
    ("sync", MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
    ("dirsync", MsFlags::MS_DIRSYNC, MsFlags::empty()),
];

/// Split a mount(8)-style option string into VFS flags and the remaining
/// file-system data string.
fn split_options(options: &str) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for opt in options.split(',').filter(|o| !o.is_empty()) {
        match VFS_OPTIONS.iter().find(|(name, _, _)| *name == opt) {
            Some((_, set, clear)) => {
                flags.remove(*clear);
                flags.insert(*set);
            }
            None => data.push(opt),
        }
    }
    (flags, data.join(","))
}

/// Mount `dev` on `target` as `fstype`. `options` is the file-system data
/// string (e.g. `discard,errors=remount-ro`); empty for none. Generic
/// options that the kernel takes as flags (`noatime`, `nosuid`, `ro`, ...)
/// may be mixed in, as with mount(8). `read_only` wins over `rw`.
pub fn mount(
    dev: &Path,
    target: &Path,
    fstype: &str,
    read_only: bool,
    options: &str,
) -> Result<()> {
    let (mut flags, data) = split_options(options);
    if read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    let data = if data.is_empty() {
        None
    } else {
        Some(data.as_str())
    };
    match nix::mount::mount(Some(dev), target, Some(fstype), flags, data) {
        Ok(()) => Ok(()),
        Err(Errno::EBUSY) => Err(Error::Busy(format!(
            "cannot mount {} on {}: {}",
            dev.display(),
            target.display(),
            Errno::EBUSY.desc()
        ))),
        Err(e) => Err(Error::io(
            dev,
            errno_io(
                e,
                format!("cannot mount on {} as {fstype}", target.display()),
            ),
        )),
    }
}

fn umount_with(target: &Path, flags: MntFlags) -> Result<()> {
    match nix::mount::umount2(target, flags) {
        Ok(()) => Ok(()),
        Err(Errno::EBUSY) => Err(Error::Busy(format!("{} is busy", target.display()))),
        Err(Errno::EINVAL) => Err(Error::NotMounted(target.to_path_buf())),
        Err(e) => Err(Error::io(target, e.into())),
    }
}

/// Prepare `command` to run with `dev` mounted on `target` in a mount
/// namespace of the child's own, from which nothing propagates back: no
/// other process sees that mount, and it lives exactly as long as the
/// child. When the child exits (even killed, even if its parent died) the
/// kernel unmounts the filesystem cleanly, before the parent's wait
/// returns. `keep_fd` (a lock) is inherited by the child, so the lock
/// stays held while the child runs, whatever happens to the parent.
pub fn in_private_mount(
    command: &mut std::process::Command,
    dev: &Path,
    target: &Path,
    fstype: &str,
    options: &str,
    keep_fd: Option<std::os::fd::RawFd>,
) -> Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let c = |s: &[u8]| {
        CString::new(s).map_err(|_| Error::Invalid(format!("NUL byte in mount argument {s:?}")))
    };
    let (dev, target) = (
        c(dev.as_os_str().as_bytes())?,
        c(target.as_os_str().as_bytes())?,
    );
    let (fstype, options, root) = (c(fstype.as_bytes())?, c(options.as_bytes())?, c(b"/")?);
    let hook = move || -> io::Result<()> {
        // Between fork and exec: raw syscalls only, no allocation.
        let check = |r: libc::c_int| {
            if r == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        };
        // SAFETY: plain syscalls on NUL-terminated strings owned by the
        // closure; the descriptor is the caller's open lock file.
        unsafe {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            let data = if options.as_bytes().is_empty() {
                std::ptr::null()
            } else {
                options.as_ptr().cast()
            };
            check(libc::mount(
                dev.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                data,
            ))?;
            if let Some(fd) = keep_fd {
                check(libc::fcntl(fd, libc::F_SETFD, 0))?;
            }
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe syscalls.
    unsafe {
        command.pre_exec(hook);
    }
    Ok(())
}

/// Move the mount at `from` to `to` (MS_MOVE): the same mount, with its
/// open files, appears at `to` in one step. The kernel refuses to move a
/// mount whose parent mount is shared; see [`make_private_mountpoint`].
pub fn move_mount(from: &Path, to: &Path) -> Result<()> {
    crate::trace::step(|| format!("move mount {} -> {}", from.display(), to.display()));
    nix::mount::mount(Some(from), to, None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(|e| {
        Error::io(
            from,
            errno_io(e, format!("cannot move the mount to {}", to.display())),
        )
    })
}

/// Make `dir` a mount point of its own with private propagation (bind it
/// onto itself first if it is not one), as Docker does with its home: the
/// mounts made under it can then be moved out with [`move_mount`] even when
/// `/` is shared (systemd's default), and they do not propagate to other
/// mount namespaces.
pub fn make_private_mountpoint(dir: &Path) -> Result<()> {
    if !is_mountpoint(dir)? {
        nix::mount::mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| Error::io(dir, errno_io(e, "cannot bind-mount onto itself".into())))?;
    }
    nix::mount::mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| Error::io(dir, errno_io(e, "cannot make the mount private".into())))
}

/// Unmount `target`. A busy mount is `Error::Busy` (callers add the
/// holders, see `blockdev::users_of`); `target` not being a mount point is
/// `Error::NotMounted`.
pub fn umount(target: &Path) -> Result<()> {
    umount_with(target, MntFlags::empty())
}

/// Unmount `target` if it is a mount point; one that is not is fine.
pub fn umount_if_mounted(target: &Path) -> Result<()> {
    match umount(target) {
        Ok(()) | Err(Error::NotMounted(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{blockdev, loopdev};
    use std::fs::File;
    use std::io::Write as _;
    use std::process::{Child, Command, Stdio};

    const SAMPLE: &str = "\
22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/mapper/root rw,errors=remount-ro
36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
40 22 0:35 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc rw
41 22 7:3 / /mnt/with\\040space\\011tab\\134slash rw,relatime - ext4 /dev/loop3 rw
42 22 253:4 /sub /srv/thin ro,relatime shared:5 master:2 - xfs /dev/mapper/pool-thin ro,attr2,inode64
garbage
43 22 7:x / /bad rw - ext4 /dev/loop4 rw
44 22 7:5 / /no/separator rw ext4 /dev/loop5 rw
45 22 7:6 / relative rw - ext4 /dev/loop6 rw
46 22 7:7 / /short rw -

47 22 0:50 / /dev/shm rw - tmpfs shm\\040name rw,size=65536k
";

    #[test]
    fn parses_realistic_mountinfo() {
        let m = parse_mountinfo(SAMPLE);
        let points: Vec<&str> = m.iter().map(|e| e.mount_point.to_str().unwrap()).collect();
        assert_eq!(
            points,
            [
                "/",
                "/mnt2",
                "/proc",
                "/mnt/with space\ttab\\slash",
                "/srv/thin",
                "/dev/shm"
            ]
        );
        assert_eq!(
            m[1],
            MountEntry {
                devno: (98, 0),
                mount_point: PathBuf::from("/mnt2"),
                fstype: "ext3".into(),
                source: "/dev/root".into(),
                options: "rw,errors=continue".into(),
            }
        );
        assert_eq!(m[3].devno, (7, 3));
        assert_eq!(m[3].source, "/dev/loop3");
        assert_eq!(m[4].devno, (253, 4));
        assert_eq!(m[4].fstype, "xfs");
        assert_eq!(m[4].options, "ro,attr2,inode64");
        assert_eq!(m[5].source, "shm name");
    }

    #[test]
    fn splits_vfs_options_from_data() {
        assert_eq!(split_options(""), (MsFlags::empty(), String::new()));
        assert_eq!(
            split_options("noatime,discard,,nosuid,errors=remount-ro"),
            (
                MsFlags::MS_NOATIME | MsFlags::MS_NOSUID,
                "discard,errors=remount-ro".to_string()
            )
        );
        assert_eq!(split_options("ro,rw").0, MsFlags::empty());
        assert_eq!(split_options("rw,ro").0, MsFlags::MS_RDONLY);
    }

    #[test]
    fn unescape_edge_cases() {
        assert_eq!(unescape("a\\012b"), b"a\nb");
        assert_eq!(unescape("\\134\\134"), b"\\\\");
        // Not an escape: kept literally, no panic at the end of the field.
        assert_eq!(unescape("x\\"), b"x\\");
        assert_eq!(unescape("x\\0"), b"x\\0");
        assert_eq!(unescape("x\\01"), b"x\\01");
        assert_eq!(unescape("x\\089"), b"x\\089");
        assert_eq!(unescape("\\777"), b"\\777");
        assert_eq!(unescape("\\040"), b" ");
    }

    #[test]
    fn parse_never_panics_on_garbage() {
        let inputs = [
            "",
            "\n\n",
            "- - - - - - - - - -",
            "1 2 3:4 / / - - - -",
            "1 2 3:4 / /x opts - ",
            "1 2 3:4 / /\\ opts - a b c",
            "1 2 3:4 / /\u{e9}\\3 o - a b c",
            "\\\\\\ \\1 \\12 \\123 \\",
        ];
        for i in inputs {
            let _ = parse_mountinfo(i);
        }
        let m = parse_mountinfo("1 2 3:4 / /x opts - a b c");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].options, "c");
    }

    #[test]
    fn host_mountinfo_has_root() {
        let m = mounts().unwrap();
        assert!(m.iter().any(|e| e.mount_point == Path::new("/")));
        assert!(is_mountpoint(Path::new("/")).unwrap());
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mountpoint(dir.path()).unwrap());
        assert!(is_mountpoint(Path::new("/nonexistent/dmctl")).is_err());
    }

    fn host_ok(name: &str) -> bool {
        let ok = nix::unistd::geteuid().is_root() && Path::new("/dev/loop-control").exists();
        if !ok {
            let _ = writeln!(std::io::stderr(), "skipped: needs root and loop: {name}");
        }
        ok
    }

    /// Cleans up in reverse order: child, mount, loop.
    #[derive(Default)]
    struct Cleanup {
        child: Option<Child>,
        mounted: Option<PathBuf>,
        looped: Option<PathBuf>,
    }
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Some(mut c) = self.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            if let Some(m) = self.mounted.take() {
                if umount(&m).is_err() {
                    let _ = umount_with(&m, MntFlags::MNT_DETACH);
                }
            }
            if let Some(l) = self.looped.take() {
                let _ = loopdev::detach(&l);
            }
        }
    }

    #[test]
    fn mount_find_busy_umount() {
        if !host_ok("mount_find_busy_umount") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("fs.img");
        File::create(&img).unwrap().set_len(64 << 20).unwrap();
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&img)
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!("mkfs.ext4 failed: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "skipped: needs mkfs.ext4 ({e}): mount_find_busy_umount"
                );
                return;
            }
        }
        let target = dir.path().join("mnt");
        fs::create_dir(&target).unwrap();

        let mut cleanup = Cleanup::default();
        let l = loopdev::attach(&img, false, false).unwrap();
        cleanup.looped = Some(l.path.clone());

        // Bad fstype: error names device and target.
        let err = mount(&l.path, &target, "nosuchfs", false, "").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(l.path.to_str().unwrap()) && msg.contains("mnt"),
            "{msg}"
        );

        mount(&l.path, &target, "ext4", false, "noatime").unwrap();
        cleanup.mounted = Some(target.clone());
        let canon = fs::canonicalize(&target).unwrap();
        assert_eq!(mountpoints_of(l.devno).unwrap(), vec![canon.clone()]);
        assert!(is_mountpoint(&target).unwrap());
        let entry = mounts()
            .unwrap()
            .into_iter()
            .find(|m| m.mount_point == canon)
            .unwrap();
        assert_eq!(entry.fstype, "ext4");
        assert_eq!(entry.devno, l.devno);

        // A process with its cwd inside keeps it busy.
        fs::create_dir(target.join("d")).unwrap();
        let child = Command::new("sleep")
            .arg("30")
            .current_dir(target.join("d"))
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        cleanup.child = Some(child);
        match umount(&target) {
            Err(Error::Busy(msg)) => assert!(msg.ends_with("is busy"), "{msg}"),
            other => panic!("expected Busy, got {other:?}"),
        }
        let holders = blockdev::users_of(&l.path, l.devno, Some(&target));
        assert!(
            holders.iter().any(|h| h.pid == pid && h.how == "cwd"),
            "{holders:?}"
        );

        let mut c = cleanup.child.take().unwrap();
        c.kill().unwrap();
        c.wait().unwrap();
        umount(&target).unwrap();
        cleanup.mounted = None;
        assert!(!is_mountpoint(&target).unwrap());
        assert!(mountpoints_of(l.devno).unwrap().is_empty());
        match umount(&target) {
            Err(e @ Error::NotMounted(_)) => assert!(e.to_string().ends_with("is not mounted")),
            other => panic!("expected NotMounted, got {other:?}"),
        }

        // Read-only mount, then lazy unmount.
        mount(&l.path, &target, "ext4", true, "").unwrap();
        cleanup.mounted = Some(target.clone());
        let entry = mounts()
            .unwrap()
            .into_iter()
            .find(|m| m.mount_point == canon)
            .unwrap();
        assert!(entry.options.split(',').any(|o| o == "ro"), "{entry:?}");
        umount_with(&target, MntFlags::MNT_DETACH).unwrap();
        cleanup.mounted = None;
        assert!(!is_mountpoint(&target).unwrap());
    }
}
