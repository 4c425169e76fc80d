//! Block device helpers: device numbers, sizes, discard, zeroing, device
//! nodes, and finding the processes that keep a device or a mount busy.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::stat::{self, Mode, SFlag};

use crate::error::{Error, IoContext, Result};

// BLKGETSIZE64 is _IOR(0x12, 114, size_t) but the kernel writes a u64.
nix::ioctl_read_bad!(
    blkgetsize64,
    nix::request_code_read!(0x12, 114, std::mem::size_of::<usize>()),
    u64
);
// BLKDISCARD is _IO(0x12, 119) and takes a pointer to `[start, len]`.
nix::ioctl_write_ptr_bad!(blkdiscard, nix::request_code_none!(0x12, 119), [u64; 2]);

/// Chunk size for zeroing and reading back.
const CHUNK: usize = 1 << 20;

/// How long `wait_for_node` waits for devtmpfs before creating the node.
const NODE_WAIT: Duration = Duration::from_secs(2);
const NODE_POLL: Duration = Duration::from_millis(10);

fn split_devno(rdev: u64) -> (u32, u32) {
    (stat::major(rdev) as u32, stat::minor(rdev) as u32)
}

/// `(major, minor)` of the block device at `path` (symlinks followed).
pub fn devno(path: &Path) -> Result<(u32, u32)> {
    let meta = fs::metadata(path).at(path)?;
    if !meta.file_type().is_block_device() {
        return Err(Error::Invalid(format!(
            "{}: not a block device",
            path.display()
        )));
    }
    Ok(split_devno(meta.rdev()))
}

/// Whether `path` exists and is a block device (symlinks followed).
pub fn is_block_device(path: &Path) -> bool {
    fs::metadata(path)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false)
}

/// Size in bytes of a block device (BLKGETSIZE64). For a regular file,
/// its length.
pub fn size_bytes(dev: &Path) -> Result<u64> {
    let file = File::open(dev).at(dev)?;
    let meta = file.metadata().at(dev)?;
    if meta.file_type().is_file() {
        return Ok(meta.len());
    }
    if !meta.file_type().is_block_device() {
        return Err(Error::Invalid(format!(
            "{}: not a block device",
            dev.display()
        )));
    }
    let mut size: u64 = 0;
    // SAFETY: the fd is open for the duration of the call and `size` is a
    // valid u64 for the kernel to write into.
    unsafe { blkgetsize64(file.as_raw_fd(), &mut size) }.map_err(|e| Error::io(dev, e.into()))?;
    Ok(size)
}

/// `discard` through a device the caller has open (`dev` names it in
/// errors).
pub fn discard_open(file: &File, dev: &Path, offset: u64, len: u64) -> Result<()> {
    if len == 0 {
        return Ok(());
    }
    let range = [offset, len];
    // SAFETY: the fd is open and `range` outlives the call.
    match unsafe { blkdiscard(file.as_raw_fd(), &range) } {
        Ok(_) => Ok(()),
        Err(Errno::EOPNOTSUPP) => Ok(()),
        Err(e) => Err(Error::io(
            dev,
            io::Error::new(
                io::Error::from(e).kind(),
                format!("discard of {len} bytes at {offset}: {}", e.desc()),
            ),
        )),
    }
}

/// Open a block device for writing with `O_EXCL`: the kernel refuses
/// (EBUSY) while it is mounted or another exclusive opener holds it, and
/// no one can mount it while the returned file is open.
pub fn claim(dev: &Path) -> std::result::Result<File, Errno> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
        .open(dev)
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
}

/// Write `len` zero bytes at offset 0 of `path` (a file or a block device,
/// which must exist) and fsync it.
pub fn zero_start(path: &Path, len: usize) -> Result<()> {
    let file = OpenOptions::new().write(true).open(path).at(path)?;
    let zeros = vec![0u8; len.min(CHUNK)];
    let mut done = 0usize;
    while done < len {
        let n = (len - done).min(zeros.len());
        file.write_all_at(&zeros[..n], done as u64).at(path)?;
        done += n;
    }
    file.sync_all().at(path)
}

/// Whether the first `len` bytes of `path` are all zero. Bytes past the
/// end of a short file count as zero (they read as zero once it grows).
pub fn is_zeroed_start(path: &Path, len: usize) -> Result<bool> {
    let file = File::open(path).at(path)?;
    let mut buf = vec![0u8; len.min(CHUNK)];
    let mut done = 0usize;
    while done < len {
        let want = (len - done).min(buf.len());
        let n = match file.read_at(&mut buf[..want], done as u64) {
            Ok(0) => return Ok(true),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(path, e)),
        };
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        done += n;
    }
    Ok(true)
}

/// The devtmpfs node of device-mapper device `minor`: `/dev/dm-{minor}`.
pub fn dm_devnode(minor: u32) -> PathBuf {
    PathBuf::from(format!("/dev/dm-{minor}"))
}

/// State of a would-be device node.
enum NodeState {
    Missing,
    Ok,
    Wrong(String),
}

fn node_state(path: &Path, devno: (u32, u32)) -> Result<NodeState> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(NodeState::Missing),
        Err(e) => Err(Error::io(path, e)),
        Ok(m) if m.file_type().is_block_device() => {
            let got = split_devno(m.rdev());
            if got == devno {
                Ok(NodeState::Ok)
            } else {
                Ok(NodeState::Wrong(format!(
                    "{}: is block device {}:{}, expected {}:{}",
                    path.display(),
                    got.0,
                    got.1,
                    devno.0,
                    devno.1
                )))
            }
        }
        // udev-style symlinks: follow them.
        Ok(m) if m.file_type().is_symlink() => match fs::metadata(path) {
            Ok(t) if t.file_type().is_block_device() && split_devno(t.rdev()) == devno => {
                Ok(NodeState::Ok)
            }
            Ok(_) | Err(_) => Ok(NodeState::Wrong(format!(
                "{}: is a symlink to something other than block device {}:{}",
                path.display(),
                devno.0,
                devno.1
            ))),
        },
        Ok(_) => Ok(NodeState::Wrong(format!(
            "{}: exists and is not a block device",
            path.display()
        ))),
    }
}

/// Wait (up to about 2 s) for devtmpfs to create the node `path` for block
/// device `devno`; if it does not appear, create it (mode 0600) so that the
/// caller always gets a usable node. A node with another device number is
/// an error.
pub fn wait_for_node(path: &Path, devno: (u32, u32)) -> Result<()> {
    let deadline = Instant::now() + NODE_WAIT;
    let last = loop {
        match node_state(path, devno)? {
            NodeState::Ok => return Ok(()),
            state => {
                if Instant::now() >= deadline {
                    break state;
                }
            }
        }
        std::thread::sleep(NODE_POLL);
    };
    match last {
        NodeState::Ok => Ok(()),
        NodeState::Wrong(msg) => Err(Error::Invalid(msg)),
        NodeState::Missing => {
            let dev = stat::makedev(u64::from(devno.0), u64::from(devno.1));
            match stat::mknod(path, SFlag::S_IFBLK, Mode::from_bits_truncate(0o600), dev) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(Error::io(path, e.into())),
            }
            match node_state(path, devno)? {
                NodeState::Ok => Ok(()),
                NodeState::Wrong(msg) => Err(Error::Invalid(msg)),
                NodeState::Missing => Err(Error::NotFound(format!(
                    "{}: device node vanished after mknod",
                    path.display()
                ))),
            }
        }
    }
}

/// A process that keeps a device or a mount busy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Holder {
    pub pid: i32,
    /// `/proc/PID/comm`.
    pub command: String,
    /// How it holds it: `fd 3`, `cwd`, `root`, `open file /mnt/x/y`.
    pub how: String,
}

/// Processes (other than this one) that have `devnode` (or any node of
/// block device `devno` under /dev) open, or whose cwd, root or open files
/// are under `mountpoint`. Processes that vanish or cannot be read are
/// ignored.
pub fn users_of(devnode: &Path, devno: (u32, u32), mountpoint: Option<&Path>) -> Vec<Holder> {
    let mountpoint = mountpoint.map(|m| fs::canonicalize(m).unwrap_or_else(|_| m.to_path_buf()));
    let mountpoint = mountpoint.as_deref();
    let devnode_canon = fs::canonicalize(devnode).ok();
    let own = std::process::id() as i32;
    let mut out = Vec::new();

    let Ok(proc_dir) = fs::read_dir("/proc") else {
        return out;
    };
    let mut pids: Vec<i32> = proc_dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != own)
        .collect();
    pids.sort_unstable();

    for pid in pids {
        let base = PathBuf::from(format!("/proc/{pid}"));
        let mut hows = Vec::new();

        if let Some(mp) = mountpoint {
            for what in ["cwd", "root"] {
                if let Ok(target) = fs::read_link(base.join(what)) {
                    if target.starts_with(mp) {
                        hows.push(what.to_string());
                    }
                }
            }
        }

        if let Ok(fds) = fs::read_dir(base.join("fd")) {
            let mut fds: Vec<(u32, PathBuf)> = fds
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let n = e.file_name().to_str()?.parse::<u32>().ok()?;
                    Some((n, e.path()))
                })
                .collect();
            fds.sort_unstable_by_key(|(n, _)| *n);
            for (n, link) in fds {
                let Ok(target) = fs::read_link(&link) else {
                    continue;
                };
                if target == devnode || Some(&target) == devnode_canon.as_ref() {
                    hows.push(format!("fd {n}"));
                } else if mountpoint.is_some_and(|mp| target.starts_with(mp)) {
                    hows.push(format!("open file {}", target.display()));
                } else if target.starts_with("/dev") {
                    // Another node of the same device (e.g. /dev/mapper/x
                    // vs /dev/dm-3). Only stat nodes under /dev: statting
                    // arbitrary files could block on a hung network or
                    // FUSE file system.
                    if let Ok(m) = fs::metadata(&link) {
                        if m.file_type().is_block_device() && split_devno(m.rdev()) == devno {
                            hows.push(format!("fd {n}"));
                        }
                    }
                }
            }
        }

        if hows.is_empty() {
            continue;
        }
        let command = fs::read_to_string(base.join("comm"))
            .map(|c| c.trim_end_matches('\n').to_string())
            .unwrap_or_else(|_| "?".to_string());
        out.extend(hows.into_iter().map(|how| Holder {
            pid,
            command: command.clone(),
            how,
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::loopdev;
    use std::io::Write as _;
    use std::process::{Child, Command, Stdio};

    fn host_ok(name: &str) -> bool {
        let ok = nix::unistd::geteuid().is_root() && Path::new("/dev/loop-control").exists();
        if !ok {
            let _ = writeln!(std::io::stderr(), "skipped: needs root and loop: {name}");
        }
        ok
    }

    /// Detaches the loop device when dropped.
    struct LoopGuard(Option<loopdev::Loop>);
    impl Drop for LoopGuard {
        fn drop(&mut self) {
            if let Some(l) = self.0.take() {
                let _ = loopdev::detach(&l.path);
            }
        }
    }

    /// Kills and reaps the child when dropped.
    struct ChildGuard(Child);
    impl Drop for ChildGuard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn sparse_file(dir: &Path, name: &str, size: u64) -> PathBuf {
        let p = dir.join(name);
        let f = File::create(&p).unwrap();
        f.set_len(size).unwrap();
        p
    }

    #[test]
    fn dm_devnode_path() {
        assert_eq!(dm_devnode(3), PathBuf::from("/dev/dm-3"));
    }

    #[test]
    fn devno_rejects_regular_file() {
        let f = tempfile::NamedTempFile::new().unwrap();
        assert!(!is_block_device(f.path()));
        match devno(f.path()) {
            Err(Error::Invalid(msg)) => assert!(msg.ends_with("not a block device"), "{msg}"),
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            devno(Path::new("/nonexistent/dmctl-x")),
            Err(Error::Io { .. })
        ));
    }

    #[test]
    fn zero_start_and_check() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("meta");
        fs::write(&p, vec![0xabu8; 3 * CHUNK + 17]).unwrap();
        assert!(!is_zeroed_start(&p, 4096).unwrap());
        zero_start(&p, 2 * CHUNK + 5).unwrap();
        assert!(is_zeroed_start(&p, 2 * CHUNK + 5).unwrap());
        assert!(!is_zeroed_start(&p, 2 * CHUNK + 6).unwrap());
        // Rest of the file is untouched.
        let data = fs::read(&p).unwrap();
        assert_eq!(data.len(), 3 * CHUNK + 17);
        assert_eq!(data[2 * CHUNK + 5], 0xab);
        // Short file: missing bytes count as zero.
        let short = dir.path().join("short");
        fs::write(&short, [0u8; 10]).unwrap();
        assert!(is_zeroed_start(&short, 4096).unwrap());
        // zero_start does not create files.
        assert!(zero_start(&dir.path().join("absent"), 10).is_err());
    }

    #[test]
    fn size_of_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = sparse_file(dir.path(), "f", 12345);
        assert_eq!(size_bytes(&p).unwrap(), 12345);
    }

    #[test]
    fn wait_for_node_existing_and_mismatch() {
        // /dev/null is a char device: never a valid block node.
        let err = wait_for_node(Path::new("/dev/null"), (1, 3));
        assert!(matches!(err, Err(Error::Invalid(_))), "{err:?}");
    }

    #[test]
    fn wait_for_node_creates_missing_node() {
        if !host_ok("wait_for_node_creates_missing_node") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("dm-test");
        // 7:0 is /dev/loop0; we only create the node, never open it.
        let start = Instant::now();
        wait_for_node(&node, (7, 0)).unwrap();
        assert!(start.elapsed() >= NODE_WAIT);
        assert_eq!(devno(&node).unwrap(), (7, 0));
        let meta = fs::metadata(&node).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        // Now it exists: returns at once.
        let start = Instant::now();
        wait_for_node(&node, (7, 0)).unwrap();
        assert!(start.elapsed() < Duration::from_secs(1));
        assert!(matches!(
            wait_for_node(&node, (7, 1)),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn loop_devno_size_discard_and_holders() {
        if !host_ok("loop_devno_size_discard_and_holders") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = sparse_file(dir.path(), "disk", 64 << 20);
        fs::write(dir.path().join("x"), b"x").unwrap();
        let l = loopdev::attach(&file, false, false).unwrap();
        let guard = LoopGuard(Some(l.clone()));
        assert!(is_block_device(&l.path));
        assert_eq!(devno(&l.path).unwrap(), l.devno);
        assert_eq!(size_bytes(&l.path).unwrap(), 64 << 20);
        let held = File::options().write(true).open(&l.path).unwrap();
        discard_open(&held, &l.path, 0, 1 << 20).unwrap();
        discard_open(&held, &l.path, 4 << 20, 0).unwrap();
        drop(held);

        // A child holding the device open on fd 0 is found by path.
        let child = Command::new("sleep")
            .arg("30")
            .stdin(File::open(&l.path).unwrap())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let child = ChildGuard(child);
        let pid = child.0.id() as i32;
        let holders = users_of(&l.path, l.devno, None);
        assert!(
            holders.iter().any(|h| h.pid == pid && h.how == "fd 0"),
            "{holders:?}"
        );
        // ... and by device number through another node.
        let other = dir.path().join("node");
        stat::mknod(
            &other,
            SFlag::S_IFBLK,
            Mode::from_bits_truncate(0o600),
            stat::makedev(u64::from(l.devno.0), u64::from(l.devno.1)),
        )
        .unwrap();
        let holders = users_of(&other, l.devno, None);
        assert!(
            holders.iter().any(|h| h.pid == pid && h.how == "fd 0"),
            "{holders:?}"
        );
        drop(child);
        drop(guard);
    }

    #[test]
    fn users_of_finds_cwd_and_open_files() {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        fs::create_dir_all(mnt.join("sub")).unwrap();
        let held = mnt.join("held");
        fs::write(&held, b"data").unwrap();
        let child = Command::new("sleep")
            .arg("30")
            .current_dir(mnt.join("sub"))
            .stdin(File::open(&held).unwrap())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let child = ChildGuard(child);
        let pid = child.0.id() as i32;
        let held_canon = fs::canonicalize(&held).unwrap();

        // comm changes to "sleep" at exec; wait for it.
        let deadline = Instant::now() + Duration::from_secs(5);
        let holders = loop {
            let h = users_of(Path::new("/nonexistent/dmctl-dev"), (0, 0), Some(&mnt));
            let mine: Vec<Holder> = h.into_iter().filter(|h| h.pid == pid).collect();
            if mine.iter().any(|h| h.command == "sleep") || Instant::now() > deadline {
                break mine;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(holders.iter().all(|h| h.command == "sleep"), "{holders:?}");
        assert!(holders.iter().any(|h| h.how == "cwd"), "{holders:?}");
        let want = format!("open file {}", held_canon.display());
        assert!(holders.iter().any(|h| h.how == want), "{holders:?}");
        assert!(!holders.iter().any(|h| h.how == "root"), "{holders:?}");
        // Never reports ourselves.
        let own = std::process::id() as i32;
        assert!(
            users_of(Path::new("/dev/null"), (0, 0), Some(Path::new("/")))
                .iter()
                .all(|h| h.pid != own)
        );

        // Outside the mount point: not a holder.
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        let h = users_of(
            Path::new("/nonexistent/dmctl-dev"),
            (0, 0),
            Some(&elsewhere),
        );
        assert!(h.iter().all(|h| h.pid != pid), "{h:?}");
        drop(child);
    }
}
