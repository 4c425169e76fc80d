//! Apply an uncompressed OCI layer tar onto a directory.
//!
//! The layer rules are those of the OCI image-spec (`layer.md`): whiteouts
//! (`.wh.NAME`) and opaque markers (`.wh..wh..opq`) hide content of lower
//! layers, a path replaced by another type is removed first, a directory over
//! a directory is merged and takes the new attributes.
//!
//! Security: the tar is hostile input. Nothing is ever written outside
//! `root`: the root is opened once as an `O_PATH` directory, every parent
//! directory is resolved with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`
//! (so `..` and symlinks, absolute or relative, stay clamped inside the root),
//! and the final name is handled with `*at` syscalls relative to that parent
//! without following a final symlink (CVE-2021-32760). `tar::Archive::unpack*`
//! and `Entry::unpack*` are never used (RUSTSEC-2018-0002, 2021-0080,
//! 2026-0067).

use std::collections::{BTreeMap, HashSet};
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{
    fchmodat, fstatat, mkdirat, mknodat, utimensat, FchmodatFlags, FileStat, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use serde::Serialize;
use tar::EntryType;

use crate::error::{Error, IoContext, Result};

/// Counters of one applied layer.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ApplyStats {
    /// Tar entries created or updated (whiteouts not included).
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// Whiteout entries processed (`.wh.NAME` and `.wh..wh..opq`).
    pub whiteouts: u64,
}

/// Prefix of a whiteout name.
pub(crate) const WH_PREFIX: &[u8] = b".wh.";
/// Prefix of aufs metadata names (never applied).
pub(crate) const WH_META_PREFIX: &[u8] = b".wh..wh.";
/// The opaque-directory marker.
pub(crate) const WH_OPAQUE: &[u8] = b".wh..wh..opq";

/// Apply the uncompressed OCI layer tar `layer` onto the directory `root`.
///
/// On error the directory is left half-applied: the caller discards it.
pub fn apply_layer<R: Read>(root: &Path, layer: R) -> Result<ApplyStats> {
    let rootfd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
    .at(root)?;
    let mut applier = Applier {
        root,
        rootfd,
        touched: HashSet::new(),
        marked_dirs: HashSet::new(),
        dir_times: BTreeMap::new(),
        stats: ApplyStats::default(),
    };
    let mut archive = tar::Archive::new(layer);
    let entries = archive
        .entries()
        .map_err(|e| Error::Invalid(format!("malformed layer tar: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| Error::Invalid(format!("malformed layer tar: {e}")))?;
        applier.apply_entry(&mut entry)?;
    }
    applier.finish()?;
    Ok(applier.stats)
}

/// What a tar entry creates.
enum Kind {
    File,
    Dir,
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
    Fifo,
    Char(u64),
    Block(u64),
}

/// Attributes taken from the tar header and its PAX records.
struct Attrs {
    mode: u32,
    uid: u32,
    gid: u32,
    atime: TimeSpec,
    mtime: TimeSpec,
    xattrs: Vec<(CString, Vec<u8>)>,
}

/// A lexically normalized entry name: components without `.`, with `..`
/// resolved (clamped at the root).
struct Norm {
    comps: Vec<Vec<u8>>,
    /// A `..` component was seen.
    dotdot: bool,
}

/// Normalize a tar name: strip leading `/`, drop empty and `.` components,
/// resolve `..` lexically, never going above the root.
fn normalize(raw: &[u8]) -> Norm {
    let mut comps: Vec<Vec<u8>> = Vec::new();
    let mut dotdot = false;
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                dotdot = true;
                comps.pop();
            }
            _ => comps.push(c.to_vec()),
        }
    }
    Norm { comps, dotdot }
}

fn join(comps: &[Vec<u8>]) -> Vec<u8> {
    comps.join(&b'/')
}

fn cstring(bytes: &[u8], entry: &str) -> Result<CString> {
    CString::new(bytes).map_err(|_| invalid(entry, "name contains a NUL byte"))
}

fn invalid(entry: &str, msg: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("layer entry {entry}: {msg}"))
}

/// Errors that come from what the layer holds (a file where a directory is
/// needed, a missing hardlink target, a loop) are `Invalid`; the others
/// (disk full, I/O) are `Io` on the path inside the root.
fn sys_err(root: &Path, rel: &[u8], entry: &str, op: &str, e: Errno) -> Error {
    match e {
        Errno::ENOENT
        | Errno::ENOTDIR
        | Errno::EEXIST
        | Errno::ELOOP
        | Errno::EISDIR
        | Errno::EXDEV
        | Errno::ENAMETOOLONG
        | Errno::EINVAL
        | Errno::ENOTEMPTY
        | Errno::EMLINK => invalid(entry, format!("{op}: {}", e.desc())),
        _ => {
            let path = root.join(std::ffi::OsStr::from_bytes(rel));
            let io = io::Error::new(
                io::Error::from(e).kind(),
                format!("layer entry {entry}: {op}: {}", e.desc()),
            );
            Error::io(path, io)
        }
    }
}

fn is_dir(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Parse a PAX time (`-?SECONDS[.FRACTION]`).
fn parse_pax_time(v: &[u8]) -> Option<TimeSpec> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let mut nanos: i64 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nanos += i64::from(b - b'0') * 10i64.pow(8 - i as u32);
    }
    let (secs, nanos) = if neg {
        if nanos > 0 {
            (secs.checked_neg()?.checked_sub(1)?, 1_000_000_000 - nanos)
        } else {
            (secs.checked_neg()?, 0)
        }
    } else {
        (secs, nanos)
    };
    Some(TimeSpec::new(secs, nanos))
}

fn errno_of(e: &io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn cvt(r: libc::c_int) -> nix::Result<()> {
    Errno::result(r).map(drop)
}

fn fchown(fd: BorrowedFd, uid: u32, gid: u32) -> nix::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    cvt(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) })
}

fn fchmod(fd: BorrowedFd, mode: u32) -> nix::Result<()> {
    // SAFETY: plain syscall on a valid fd.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) })
}

fn futimens(fd: BorrowedFd, atime: &TimeSpec, mtime: &TimeSpec) -> nix::Result<()> {
    let times = [*atime.as_ref(), *mtime.as_ref()];
    // SAFETY: `times` is a valid array of two timespecs.
    cvt(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) })
}

fn fsetxattr(fd: BorrowedFd, name: &CStr, value: &[u8]) -> nix::Result<()> {
    // SAFETY: name is NUL-terminated, value is a valid buffer of its length.
    cvt(unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

fn lsetxattr(path: &CStr, name: &CStr, value: &[u8]) -> nix::Result<()> {
    // SAFETY: path and name are NUL-terminated, value is a valid buffer.
    cvt(unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    })
}

/// Names of the extended attributes of an open file.
fn flistxattr(fd: BorrowedFd) -> nix::Result<Vec<CString>> {
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: buf is a valid writable buffer of its length.
        let n = unsafe { libc::flistxattr(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            buf.truncate(n as usize);
            break;
        }
        match Errno::last() {
            Errno::ERANGE if buf.len() < (1 << 20) => buf.resize(buf.len() * 4, 0),
            Errno::ENOTSUP => return Ok(Vec::new()),
            e => return Err(e),
        }
    }
    Ok(buf
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .filter_map(|n| CString::new(n).ok())
        .collect())
}

fn fremovexattr(fd: BorrowedFd, name: &CStr) -> nix::Result<()> {
    // SAFETY: name is NUL-terminated.
    cvt(unsafe { libc::fremovexattr(fd.as_raw_fd(), name.as_ptr()) })
}

/// Names in a directory (without `.` and `..`).
fn list_dir(dirfd: BorrowedFd) -> nix::Result<Vec<CString>> {
    use std::os::fd::IntoRawFd;
    let fd = openat(
        dirfd,
        c".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let raw = fd.into_raw_fd();
    // SAFETY: `raw` is an open directory fd whose ownership passes to the
    // DIR stream (closed by closedir below, or here on failure).
    let dir = unsafe { libc::fdopendir(raw) };
    if dir.is_null() {
        let e = Errno::last();
        // SAFETY: fdopendir failed, so `raw` is still ours.
        unsafe { libc::close(raw) };
        return Err(e);
    }
    let mut names = Vec::new();
    let result = loop {
        Errno::clear();
        // SAFETY: `dir` is a valid DIR stream used by this thread only.
        let ent = unsafe { libc::readdir(dir) };
        if ent.is_null() {
            match Errno::last_raw() {
                0 => break Ok(()),
                e => break Err(Errno::from_raw(e)),
            }
        }
        // SAFETY: readdir returned a valid dirent with a NUL-terminated name.
        let n = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        if n != c"." && n != c".." {
            names.push(n.to_owned());
        }
    };
    // SAFETY: `dir` is valid and closed exactly once.
    unsafe { libc::closedir(dir) };
    result.map(|()| names)
}

fn open_dir_nofollow(parent: BorrowedFd, name: &CStr) -> nix::Result<OwnedFd> {
    openat(
        parent,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Remove `name` in `parent`, recursively if it is a directory. Never
/// follows symlinks. Iterative, so a deep tree cannot exhaust the stack.
fn remove_all(parent: BorrowedFd, name: &CStr) -> nix::Result<()> {
    let st = match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if !is_dir(&st) {
        return unlinkat(parent, name, UnlinkatFlags::NoRemoveDir);
    }
    struct Frame {
        fd: OwnedFd,
        pending: Vec<CString>,
        name: CString,
    }
    let fd = open_dir_nofollow(parent, name)?;
    let pending = list_dir(fd.as_fd())?;
    let mut stack = vec![Frame {
        fd,
        pending,
        name: name.to_owned(),
    }];
    while let Some(top) = stack.last_mut() {
        if let Some(child) = top.pending.pop() {
            let st = match fstatat(
                top.fd.as_fd(),
                child.as_c_str(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(e),
            };
            if is_dir(&st) {
                let fd = open_dir_nofollow(top.fd.as_fd(), &child)?;
                let pending = list_dir(fd.as_fd())?;
                stack.push(Frame {
                    fd,
                    pending,
                    name: child,
                });
            } else {
                unlinkat(top.fd.as_fd(), child.as_c_str(), UnlinkatFlags::NoRemoveDir)?;
            }
        } else {
            let done = stack.pop().expect("stack is not empty");
            drop(done.fd);
            let pfd = stack.last().map(|f| f.fd.as_fd()).unwrap_or(parent);
            unlinkat(pfd, done.name.as_c_str(), UnlinkatFlags::RemoveDir)?;
        }
    }
    Ok(())
}

struct Applier<'a> {
    root: &'a Path,
    rootfd: OwnedFd,
    /// (dev, ino) of every object this layer created or wrote to, and of
    /// the directories above them. Keyed by inode, not by name, so aliases
    /// through symlinks cannot confuse the opaque and whiteout rules.
    touched: HashSet<(u64, u64)>,
    /// Parent paths whose directories are already in `touched`.
    marked_dirs: HashSet<Vec<u8>>,
    /// Directory times, applied at the end (after their content).
    dir_times: BTreeMap<Vec<u8>, (TimeSpec, TimeSpec)>,
    stats: ApplyStats,
}

impl Applier<'_> {
    /// Open `rel` (a normalized path, empty for the root) inside the root,
    /// following symlinks with the root as `/`.
    fn open_in_root(&self, rel: &[u8], flags: OFlag) -> nix::Result<OwnedFd> {
        let path = if rel.is_empty() {
            c".".to_owned()
        } else {
            CString::new(rel).map_err(|_| Errno::EINVAL)?
        };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        let mut tries = 0;
        loop {
            match openat2(self.rootfd.as_fd(), path.as_c_str(), how) {
                // A concurrent rename elsewhere in the tree: retry.
                Err(Errno::EAGAIN) if tries < 64 => tries += 1,
                r => return r,
            }
        }
    }

    fn resolve_dir(&self, comps: &[Vec<u8>]) -> nix::Result<OwnedFd> {
        self.open_in_root(&join(comps), OFlag::O_PATH | OFlag::O_DIRECTORY)
    }

    fn err(&self, rel: &[u8], entry: &str, op: &str, e: Errno) -> Error {
        if e == Errno::ENOSYS {
            return Error::Invalid(format!(
                "layer entry {entry}: {op}: the kernel lacks openat2 (Linux 5.6 or newer is needed)"
            ));
        }
        sys_err(self.root, rel, entry, op, e)
    }

    /// Resolve the directory `comps` inside the root, creating missing
    /// directories (0755, root-owned) on the way.
    fn ensure_dir(&mut self, comps: &[Vec<u8>], entry: &str) -> Result<OwnedFd> {
        match self.resolve_dir(comps) {
            Ok(fd) => return Ok(fd),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(self.err(&join(comps), entry, "opening parent directory", e)),
        }
        let mut cur: Option<OwnedFd> = None;
        for i in 0..comps.len() {
            let prefix = join(&comps[..=i]);
            match self.resolve_dir(&comps[..=i]) {
                Ok(fd) => cur = Some(fd),
                Err(Errno::ENOENT) => {
                    let pfd = cur
                        .as_ref()
                        .map(|f| f.as_fd())
                        .unwrap_or(self.rootfd.as_fd());
                    let name = cstring(&comps[i], entry)?;
                    let op = "creating parent directory";
                    mkdirat(pfd, name.as_c_str(), Mode::from_bits_truncate(0o700))
                        .map_err(|e| self.err(&prefix, entry, op, e))?;
                    let d = open_dir_nofollow(pfd, &name)
                        .map_err(|e| self.err(&prefix, entry, op, e))?;
                    fchown(d.as_fd(), 0, 0).map_err(|e| self.err(&prefix, entry, op, e))?;
                    fchmod(d.as_fd(), 0o755).map_err(|e| self.err(&prefix, entry, op, e))?;
                    if let Ok(st) = nix::sys::stat::fstat(d.as_fd()) {
                        self.mark(&st);
                    }
                    cur = Some(d);
                }
                Err(e) => return Err(self.err(&prefix, entry, "opening parent directory", e)),
            }
        }
        match cur {
            Some(fd) => Ok(fd),
            None => self
                .rootfd
                .try_clone()
                .map_err(|e| self.err(b"", entry, "dup", errno_of(&e))),
        }
    }

    /// Forget the deferred times of `rel` and everything below it.
    fn forget_times(&mut self, rel: &[u8]) {
        if rel.is_empty() {
            self.dir_times.clear();
            return;
        }
        let mut below = rel.to_vec();
        below.push(b'/');
        let doomed: Vec<Vec<u8>> = self
            .dir_times
            .range(rel.to_vec()..)
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(rel))
            .filter(|k| k.as_slice() == rel || k.starts_with(&below))
            .cloned()
            .collect();
        for k in doomed {
            self.dir_times.remove(&k);
        }
    }

    fn mark(&mut self, st: &FileStat) {
        self.touched.insert((st.st_dev, st.st_ino));
    }

    fn is_touched(&self, st: &FileStat) -> bool {
        self.touched.contains(&(st.st_dev, st.st_ino))
    }

    /// Mark the object `name` in `parent` as this layer's.
    fn mark_at(&mut self, parent: BorrowedFd, name: &CStr) {
        if let Ok(st) = fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            self.mark(&st);
        }
    }

    /// Mark the directories of the parent path `comps` (and above) as this
    /// layer's, once per path.
    fn mark_parents(&mut self, comps: &[Vec<u8>]) {
        for i in 1..=comps.len() {
            let p = join(&comps[..i]);
            if self.marked_dirs.contains(&p) {
                continue;
            }
            if let Ok(fd) = self.resolve_dir(&comps[..i]) {
                if let Ok(st) = nix::sys::stat::fstat(fd.as_fd()) {
                    self.mark(&st);
                }
            }
            self.marked_dirs.insert(p);
        }
    }

    /// Remove whatever stands at `name` in `parent`, unless it is a real
    /// directory and `keep_dir` is set. Returns whether a directory was kept.
    fn clear(
        &mut self,
        parent: BorrowedFd,
        name: &CStr,
        rel: &[u8],
        entry: &str,
        keep_dir: bool,
    ) -> Result<bool> {
        match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(self.err(rel, entry, "stat", e)),
            Ok(st) if keep_dir && is_dir(&st) => Ok(true),
            Ok(_) => {
                remove_all(parent, name)
                    .map_err(|e| self.err(rel, entry, "removing old path", e))?;
                self.forget_times(rel);
                Ok(false)
            }
        }
    }

    /// Remove, below the directory `dir` (at normalized path `rel`), every
    /// path this layer did not create.
    fn prune(&mut self, dir: OwnedFd, rel: &[u8], entry: &str) -> Result<()> {
        struct Frame {
            fd: OwnedFd,
            rel: Vec<u8>,
            pending: Vec<CString>,
        }
        let pending = list_dir(dir.as_fd()).map_err(|e| self.err(rel, entry, "listing", e))?;
        let mut stack = vec![Frame {
            fd: dir,
            rel: rel.to_vec(),
            pending,
        }];
        while let Some(top) = stack.last_mut() {
            let Some(child) = top.pending.pop() else {
                stack.pop();
                continue;
            };
            let mut crel = top.rel.clone();
            if !crel.is_empty() {
                crel.push(b'/');
            }
            crel.extend_from_slice(child.as_bytes());
            let st = match fstatat(
                top.fd.as_fd(),
                child.as_c_str(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(sys_err(self.root, &crel, entry, "stat", e)),
            };
            if !self.touched.contains(&(st.st_dev, st.st_ino)) {
                let fd = top.fd.as_fd();
                remove_all(fd, &child)
                    .map_err(|e| sys_err(self.root, &crel, entry, "removing", e))?;
                self.forget_times(&crel);
                continue;
            }
            if is_dir(&st) {
                let fd = open_dir_nofollow(top.fd.as_fd(), &child)
                    .map_err(|e| sys_err(self.root, &crel, entry, "opening", e))?;
                let pending = list_dir(fd.as_fd())
                    .map_err(|e| sys_err(self.root, &crel, entry, "listing", e))?;
                stack.push(Frame {
                    fd,
                    rel: crel,
                    pending,
                });
            }
        }
        Ok(())
    }

    /// `.wh.NAME` in the directory `parent`.
    fn whiteout(&mut self, parent: &[Vec<u8>], name: &[u8], entry: &str) -> Result<()> {
        if name.is_empty() || name == b"." || name == b".." {
            return Err(invalid(entry, "whiteout names no valid file"));
        }
        let prel = join(parent);
        let pfd = match self.resolve_dir(parent) {
            Ok(fd) => fd,
            // Nothing below a missing directory to hide.
            Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => return Ok(()),
            Err(e) => return Err(self.err(&prel, entry, "opening parent directory", e)),
        };
        let mut comps = parent.to_vec();
        comps.push(name.to_vec());
        let rel = join(&comps);
        let cname = cstring(name, entry)?;
        let st = match fstatat(pfd.as_fd(), cname.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(self.err(&rel, entry, "stat", e)),
        };
        if self.is_touched(&st) {
            // Created by this layer: only lower content below it is hidden.
            match open_dir_nofollow(pfd.as_fd(), &cname) {
                Ok(dfd) => self.prune(dfd, &rel, entry)?,
                Err(Errno::ENOTDIR) | Err(Errno::ELOOP) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(self.err(&rel, entry, "opening", e)),
            }
            return Ok(());
        }
        remove_all(pfd.as_fd(), &cname).map_err(|e| self.err(&rel, entry, "removing", e))?;
        self.forget_times(&rel);
        Ok(())
    }

    /// `.wh..wh..opq` in the directory `dir`.
    fn opaque(&mut self, dir: &[Vec<u8>], entry: &str) -> Result<()> {
        let rel = join(dir);
        let fd = match self.open_in_root(&rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => return Ok(()),
            Err(e) => return Err(self.err(&rel, entry, "opening opaque directory", e)),
        };
        self.prune(fd, &rel, entry)
    }

    fn read_attrs<R: Read>(&self, entry: &mut tar::Entry<R>, name: &str) -> Result<Attrs> {
        let h = entry.header();
        let bad =
            |what: &str, e: io::Error| invalid(name, format!("bad {what} in tar header: {e}"));
        let mode = h.mode().map_err(|e| bad("mode", e))? & 0o7777;
        let uid = h.uid().map_err(|e| bad("uid", e))?;
        let gid = h.gid().map_err(|e| bad("gid", e))?;
        let id = |v: u64, what: &str| -> Result<u32> {
            u32::try_from(v)
                .ok()
                .filter(|v| *v != u32::MAX)
                .ok_or_else(|| invalid(name, format!("{what} {v} is out of range")))
        };
        let uid = id(uid, "uid")?;
        let gid = id(gid, "gid")?;
        let hmtime = h.mtime().map_err(|e| bad("mtime", e))?;
        let mut mtime = TimeSpec::new(i64::try_from(hmtime).unwrap_or(i64::MAX), 0);
        let mut atime = None;
        let mut xattrs = Vec::new();
        let exts = entry
            .pax_extensions()
            .map_err(|e| invalid(name, format!("bad PAX header: {e}")))?;
        if let Some(exts) = exts {
            for ext in exts {
                let ext = ext.map_err(|e| invalid(name, format!("bad PAX record: {e}")))?;
                let key = ext.key_bytes();
                let val = ext.value_bytes();
                if key == b"mtime" {
                    mtime =
                        parse_pax_time(val).ok_or_else(|| invalid(name, "bad PAX mtime record"))?;
                } else if key == b"atime" {
                    atime = Some(
                        parse_pax_time(val).ok_or_else(|| invalid(name, "bad PAX atime record"))?,
                    );
                } else if let Some(x) = key.strip_prefix(b"SCHILY.xattr.") {
                    if x.is_empty() {
                        return Err(invalid(name, "empty xattr name in PAX record"));
                    }
                    let x = CString::new(x)
                        .map_err(|_| invalid(name, "xattr name contains a NUL byte"))?;
                    xattrs.push((x, val.to_vec()));
                }
            }
        }
        Ok(Attrs {
            mode,
            uid,
            gid,
            atime: atime.unwrap_or(mtime),
            mtime,
            xattrs,
        })
    }

    fn apply_entry<R: Read>(&mut self, entry: &mut tar::Entry<R>) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        let name = format!("{:?}", String::from_utf8_lossy(&raw));
        let name = name.as_str();
        let etype = entry.header().entry_type();
        if etype.is_pax_global_extensions() {
            return Ok(());
        }
        let norm = normalize(&raw);
        let comps = norm.comps;

        // Whiteouts and aufs metadata.
        for (i, c) in comps.iter().enumerate() {
            let last = i + 1 == comps.len();
            if c.starts_with(WH_META_PREFIX) && !(last && c.as_slice() == WH_OPAQUE) {
                // aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs): never applied.
                return Ok(());
            }
            if !last && c.starts_with(WH_PREFIX) {
                return Err(invalid(name, "whiteout name used as a directory"));
            }
        }
        if let Some((last, parent)) = comps.split_last() {
            if last.as_slice() == WH_OPAQUE {
                self.stats.whiteouts += 1;
                return self.opaque(parent, name);
            }
            if let Some(hidden) = last.strip_prefix(WH_PREFIX) {
                self.stats.whiteouts += 1;
                return self.whiteout(parent, hidden, name);
            }
        }

        let kind = entry_kind(entry, &raw, name)?;
        let attrs = self.read_attrs(entry, name)?;

        let Some((last, parent)) = comps.split_last() else {
            return self.apply_root(&kind, &attrs, norm.dotdot, name);
        };
        let rel = join(&comps);
        let cname = cstring(last, name)?;
        let pfd = self.ensure_dir(parent, name)?;
        let pfd = pfd.as_fd();
        self.mark_parents(parent);

        match kind {
            Kind::File => self.write_file(entry, pfd, &cname, &rel, &attrs, name)?,
            Kind::Dir => {
                if !self.clear(pfd, &cname, &rel, name, true)? {
                    mkdirat(pfd, cname.as_c_str(), Mode::from_bits_truncate(0o700))
                        .map_err(|e| self.err(&rel, name, "creating directory", e))?;
                }
                let dfd = open_dir_nofollow(pfd, &cname)
                    .map_err(|e| self.err(&rel, name, "opening directory", e))?;
                self.set_fd_attrs(dfd.as_fd(), &attrs, &rel, name, true)?;
                self.dir_times
                    .insert(rel.clone(), (attrs.atime, attrs.mtime));
            }
            Kind::Symlink(target) => {
                self.clear(pfd, &cname, &rel, name, false)?;
                let target = cstring(&target, name)?;
                symlinkat(target.as_c_str(), pfd, cname.as_c_str())
                    .map_err(|e| self.err(&rel, name, "creating symlink", e))?;
                self.set_at_attrs(pfd, &cname, &attrs, &rel, name, false)?;
            }
            Kind::Hardlink(target) => self.hardlink(pfd, &cname, &rel, &target, name)?,
            Kind::Fifo | Kind::Char(_) | Kind::Block(_) => {
                self.clear(pfd, &cname, &rel, name, false)?;
                let (sflag, dev) = match kind {
                    Kind::Char(dev) => (SFlag::S_IFCHR, dev),
                    Kind::Block(dev) => (SFlag::S_IFBLK, dev),
                    _ => (SFlag::S_IFIFO, 0),
                };
                mknodat(
                    pfd,
                    cname.as_c_str(),
                    sflag,
                    Mode::from_bits_truncate(0o600),
                    dev,
                )
                .map_err(|e| self.err(&rel, name, "creating special file", e))?;
                self.set_at_attrs(pfd, &cname, &attrs, &rel, name, true)?;
            }
        }
        self.mark_at(pfd, &cname);
        self.stats.entries += 1;
        Ok(())
    }

    /// An entry for the root itself: only a directory, whose attributes
    /// the root takes.
    fn apply_root(&mut self, kind: &Kind, attrs: &Attrs, dotdot: bool, name: &str) -> Result<()> {
        if dotdot {
            return Err(invalid(name, "name escapes the root through '..'"));
        }
        if !matches!(kind, Kind::Dir) {
            return Err(invalid(name, "a non-directory entry for the root"));
        }
        let fd = self
            .open_in_root(b"", OFlag::O_RDONLY | OFlag::O_DIRECTORY)
            .map_err(|e| self.err(b"", name, "opening root", e))?;
        self.set_fd_attrs(fd.as_fd(), attrs, b"", name, true)?;
        self.dir_times
            .insert(Vec::new(), (attrs.atime, attrs.mtime));
        self.stats.entries += 1;
        Ok(())
    }

    /// A regular file: created (never through a link), filled, its
    /// attributes and times set.
    fn write_file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<R>,
        pfd: BorrowedFd,
        cname: &CStr,
        rel: &[u8],
        attrs: &Attrs,
        name: &str,
    ) -> Result<()> {
        self.clear(pfd, cname, rel, name, false)?;
        let fd = openat(
            pfd,
            cname,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| self.err(rel, name, "creating file", e))?;
        let mut file = File::from(fd);
        let mut buf = vec![0u8; 128 * 1024];
        let mut n: u64 = 0;
        loop {
            let got = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(invalid(name, format!("reading layer data: {e}"))),
            };
            file.write_all(&buf[..got])
                .map_err(|e| self.err(rel, name, "writing", errno_of(&e)))?;
            n += got as u64;
        }
        if entry.header().entry_type() != EntryType::GNUSparse && n != entry.size() {
            return Err(invalid(name, "layer tar is truncated"));
        }
        self.stats.bytes += n;
        self.set_fd_attrs(file.as_fd(), attrs, rel, name, false)?;
        futimens(file.as_fd(), &attrs.atime, &attrs.mtime)
            .map_err(|e| self.err(rel, name, "setting times", e))?;
        Ok(())
    }

    fn hardlink(
        &mut self,
        pfd: BorrowedFd,
        cname: &CStr,
        rel: &[u8],
        target: &[u8],
        name: &str,
    ) -> Result<()> {
        let t = normalize(target);
        let Some((tlast, tparent)) = t.comps.split_last() else {
            return Err(invalid(name, "hardlink to the root directory"));
        };
        let trel = join(&t.comps);
        let tfd = self
            .resolve_dir(tparent)
            .map_err(|e| self.err(&trel, name, "resolving hardlink target", e))?;
        let tname = cstring(tlast, name)?;
        let tst = fstatat(tfd.as_fd(), tname.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| self.err(&trel, name, "hardlink target", e))?;
        if is_dir(&tst) {
            return Err(invalid(name, "hardlink to a directory"));
        }
        match fstatat(pfd, cname, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_dev == tst.st_dev && st.st_ino == tst.st_ino => return Ok(()),
            Ok(_) => {
                self.clear(pfd, cname, rel, name, false)?;
            }
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(self.err(rel, name, "stat", e)),
        }
        linkat(tfd.as_fd(), tname.as_c_str(), pfd, cname, AtFlags::empty())
            .map_err(|e| self.err(rel, name, "creating hardlink", e))
    }

    /// Owner, mode and xattrs on an open regular file or directory.
    fn set_fd_attrs(
        &self,
        fd: BorrowedFd,
        a: &Attrs,
        rel: &[u8],
        name: &str,
        replace_xattrs: bool,
    ) -> Result<()> {
        fchown(fd, a.uid, a.gid).map_err(|e| self.err(rel, name, "chown", e))?;
        // After chown, which clears setuid/setgid.
        fchmod(fd, a.mode).map_err(|e| self.err(rel, name, "chmod", e))?;
        if replace_xattrs {
            // Directory merged over an old one: the new entry's xattrs win.
            if let Ok(old) = flistxattr(fd) {
                for x in old {
                    if !a.xattrs.iter().any(|(n, _)| *n == x) {
                        let _ = fremovexattr(fd, &x);
                    }
                }
            }
        }
        for (x, v) in &a.xattrs {
            fsetxattr(fd, x, v).map_err(|e| {
                self.err(
                    rel,
                    name,
                    &format!("setting xattr {}", x.to_string_lossy()),
                    e,
                )
            })?;
        }
        Ok(())
    }

    /// Attributes of a symlink or special file, never following it.
    fn set_at_attrs(
        &self,
        pfd: BorrowedFd,
        cname: &CStr,
        a: &Attrs,
        rel: &[u8],
        name: &str,
        chmod: bool,
    ) -> Result<()> {
        fchownat(
            pfd,
            cname,
            Some(Uid::from_raw(a.uid)),
            Some(Gid::from_raw(a.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.err(rel, name, "chown", e))?;
        if chmod {
            fchmodat(
                pfd,
                cname,
                Mode::from_bits_truncate(a.mode),
                FchmodatFlags::NoFollowSymlink,
            )
            .map_err(|e| self.err(rel, name, "chmod", e))?;
        }
        if !a.xattrs.is_empty() {
            // The parent through its fd, the final name not followed.
            let mut p = format!("/proc/self/fd/{}/", pfd.as_raw_fd()).into_bytes();
            p.extend_from_slice(cname.to_bytes());
            let p = CString::new(p).map_err(|_| invalid(name, "name contains a NUL byte"))?;
            for (x, v) in &a.xattrs {
                lsetxattr(&p, x, v).map_err(|e| {
                    self.err(
                        rel,
                        name,
                        &format!("setting xattr {}", x.to_string_lossy()),
                        e,
                    )
                })?;
            }
        }
        utimensat(
            pfd,
            cname,
            &a.atime,
            &a.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| self.err(rel, name, "setting times", e))
    }

    /// Directory times, after all content is in place.
    fn finish(&mut self) -> Result<()> {
        for (rel, (atime, mtime)) in std::mem::take(&mut self.dir_times) {
            let fd = match self.open_in_root(
                &rel,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW,
            ) {
                Ok(fd) => fd,
                // Replaced or removed by a later entry.
                Err(Errno::ENOENT) | Err(Errno::ENOTDIR) | Err(Errno::ELOOP) => continue,
                Err(e) => {
                    return Err(self.err(
                        &rel,
                        &format!("{:?}", String::from_utf8_lossy(&rel)),
                        "opening directory",
                        e,
                    ))
                }
            };
            futimens(fd.as_fd(), &atime, &mtime).map_err(|e| {
                self.err(
                    &rel,
                    &format!("{:?}", String::from_utf8_lossy(&rel)),
                    "setting times",
                    e,
                )
            })?;
        }
        Ok(())
    }
}

/// What a tar entry makes, checked: links with a target, devices with
/// their numbers; other entry types are refused.
fn entry_kind<R: Read>(entry: &tar::Entry<R>, raw: &[u8], name: &str) -> Result<Kind> {
    let etype = entry.header().entry_type();
    Ok(match etype {
        EntryType::Regular if raw.ends_with(b"/") && entry.size() == 0 => Kind::Dir,
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Kind::File,
        EntryType::Directory => Kind::Dir,
        EntryType::Symlink | EntryType::Link => {
            let target = entry
                .link_name_bytes()
                .map(|t| t.into_owned())
                .filter(|t| !t.is_empty())
                .ok_or_else(|| invalid(name, "link without a target"))?;
            if target.contains(&0) {
                return Err(invalid(name, "link target contains a NUL byte"));
            }
            if etype == EntryType::Symlink {
                Kind::Symlink(target)
            } else {
                Kind::Hardlink(target)
            }
        }
        EntryType::Fifo => Kind::Fifo,
        EntryType::Char | EntryType::Block => {
            let h = entry.header();
            let bad = |e: io::Error| invalid(name, format!("bad device number: {e}"));
            let major = h.device_major().map_err(bad)?;
            let minor = h.device_minor().map_err(bad)?;
            let (Some(major), Some(minor)) = (major, minor) else {
                return Err(invalid(name, "device entry without device numbers"));
            };
            let dev = libc::makedev(major, minor);
            if etype == EntryType::Char {
                Kind::Char(dev)
            } else {
                Kind::Block(dev)
            }
        }
        other => {
            return Err(invalid(
                name,
                format!("unsupported tar entry type {other:?}"),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    /// A hand-rolled tar writer: raw ustar headers, optional PAX records.
    pub(crate) struct Tb {
        buf: Vec<u8>,
    }

    pub(crate) struct E {
        name: Vec<u8>,
        ty: EntryType,
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: u64,
        data: Vec<u8>,
        link: Vec<u8>,
        dev: (u32, u32),
        pax: Vec<(Vec<u8>, Vec<u8>)>,
    }

    fn e(name: &str, ty: EntryType) -> E {
        E {
            name: name.as_bytes().to_vec(),
            ty,
            mode: if ty == EntryType::Directory {
                0o755
            } else {
                0o644
            },
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
            data: Vec::new(),
            link: Vec::new(),
            dev: (0, 0),
            pax: Vec::new(),
        }
    }
    fn file(name: &str, data: &str) -> E {
        let mut x = e(name, EntryType::Regular);
        x.data = data.as_bytes().to_vec();
        x
    }
    fn dir(name: &str) -> E {
        e(name, EntryType::Directory)
    }
    fn symlink(name: &str, target: &str) -> E {
        let mut x = e(name, EntryType::Symlink);
        x.link = target.as_bytes().to_vec();
        x.mode = 0o777;
        x
    }
    fn hardlink(name: &str, target: &str) -> E {
        let mut x = e(name, EntryType::Link);
        x.link = target.as_bytes().to_vec();
        x
    }
    fn wh(name: &str) -> E {
        file(name, "")
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

    impl Tb {
        fn new() -> Tb {
            Tb { buf: Vec::new() }
        }
        fn raw(&mut self, h: &tar::Header, data: &[u8]) {
            self.buf.extend_from_slice(h.as_bytes());
            self.buf.extend_from_slice(data);
            let rem = self.buf.len() % 512;
            if rem != 0 {
                self.buf.resize(self.buf.len() + 512 - rem, 0);
            }
        }
        fn add(mut self, x: E) -> Tb {
            if !x.pax.is_empty() {
                let mut body = Vec::new();
                for (k, v) in &x.pax {
                    body.extend_from_slice(&pax_record(k, v));
                }
                let mut h = tar::Header::new_ustar();
                h.set_entry_type(EntryType::XHeader);
                h.as_old_mut().name[..4].copy_from_slice(b"pax!");
                h.set_size(body.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                self.raw(&h, &body);
            }
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(x.ty);
            let n = x.name.len().min(100);
            h.as_old_mut().name[..n].copy_from_slice(&x.name[..n]);
            let l = x.link.len().min(100);
            h.as_old_mut().linkname[..l].copy_from_slice(&x.link[..l]);
            h.set_mode(x.mode);
            h.set_uid(x.uid);
            h.set_gid(x.gid);
            h.set_mtime(x.mtime);
            h.set_size(x.data.len() as u64);
            h.set_device_major(x.dev.0).unwrap();
            h.set_device_minor(x.dev.1).unwrap();
            h.set_cksum();
            self.raw(&h, &x.data);
            self
        }
        fn done(mut self) -> Vec<u8> {
            self.buf.extend_from_slice(&[0u8; 1024]);
            self.buf
        }
    }

    fn apply(root: &Path, tar: Vec<u8>) -> Result<ApplyStats> {
        apply_layer(root, io::Cursor::new(tar))
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap()
    }

    fn lmeta(p: &Path) -> std::fs::Metadata {
        std::fs::symlink_metadata(p).unwrap()
    }

    fn exists(p: &Path) -> bool {
        std::fs::symlink_metadata(p).is_ok()
    }

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    fn user_xattrs_supported(dir: &Path) -> bool {
        let p = dir.join(".xattr-probe");
        std::fs::write(&p, b"").unwrap();
        let f = File::open(&p).unwrap();
        let ok = fsetxattr(f.as_fd(), c"user.probe", b"1").is_ok();
        std::fs::remove_file(&p).unwrap();
        ok
    }

    #[test]
    fn normalize_names() {
        let n = |s: &str| {
            let n = normalize(s.as_bytes());
            (join(&n.comps), n.dotdot)
        };
        assert_eq!(n("./a/b/"), (b"a/b".to_vec(), false));
        assert_eq!(n("/abs//x/./y"), (b"abs/x/y".to_vec(), false));
        assert_eq!(n("../x"), (b"x".to_vec(), true));
        assert_eq!(n("a/../../b"), (b"b".to_vec(), true));
        assert_eq!(n(".."), (Vec::new(), true));
        assert_eq!(n("./"), (Vec::new(), false));
        assert_eq!(n("/"), (Vec::new(), false));
    }

    #[test]
    fn pax_times() {
        let t = |s: &str| parse_pax_time(s.as_bytes()).map(|t| (t.tv_sec(), t.tv_nsec()));
        assert_eq!(
            t("1600000000.123456789"),
            Some((1_600_000_000, 123_456_789))
        );
        assert_eq!(t("5.5"), Some((5, 500_000_000)));
        assert_eq!(t("7"), Some((7, 0)));
        assert_eq!(t("1.1234567891"), Some((1, 123_456_789)));
        assert_eq!(t("-1.5"), Some((-2, 500_000_000)));
        assert_eq!(t("x"), None);
        assert_eq!(t("1.x"), None);
        assert_eq!(t(""), None);
    }

    #[test]
    fn creates_all_types_with_attributes() {
        let td = tmp();
        let root = td.path();
        let xattr_ok = user_xattrs_supported(root);
        if !xattr_ok {
            eprintln!(
                "NOTE: user xattrs unsupported on {}: xattr assertion skipped",
                root.display()
            );
        }
        let mut f = file("d/suid", "payload");
        f.mode = 0o4755;
        f.uid = 1234;
        f.gid = 5678;
        f.pax
            .push((b"mtime".to_vec(), b"1500000000.123456789".to_vec()));
        if xattr_ok {
            f.pax
                .push((b"SCHILY.xattr.user.test".to_vec(), b"value\0bin".to_vec()));
        }
        let mut d = dir("d/");
        d.mode = 0o1777;
        d.uid = 1234;
        d.gid = 5678;
        d.mtime = 1_400_000_000;
        let mut s = symlink("d/sym", "suid");
        s.uid = 1234;
        s.gid = 5678;
        s.mtime = 1_300_000_000;
        let mut fifo = e("d/fifo", EntryType::Fifo);
        fifo.mode = 0o640;
        let mut chr = e("d/null", EntryType::Char);
        chr.dev = (1, 3);
        chr.mode = 0o666;
        chr.uid = 1234;
        let mut blk = e("d/blk", EntryType::Block);
        blk.dev = (7, 0);
        let tar = Tb::new()
            .add(d)
            .add(f)
            .add(s)
            .add(hardlink("d/hard", "d/suid"))
            .add(fifo)
            .add(chr)
            .add(blk)
            .done();
        let st = apply(root, tar).unwrap();
        assert_eq!(st.entries, 7);
        assert_eq!(st.bytes, 7);
        assert_eq!(st.whiteouts, 0);

        let m = lmeta(&root.join("d/suid"));
        assert_eq!(read(&root.join("d/suid")), "payload");
        assert_eq!(m.mode() & 0o7777, 0o4755, "setuid survives chown");
        assert_eq!((m.uid(), m.gid()), (1234, 5678));
        assert_eq!((m.mtime(), m.mtime_nsec()), (1_500_000_000, 123_456_789));
        assert_eq!(m.nlink(), 2);
        if xattr_ok {
            let v = read_xattr(&root.join("d/suid"), "user.test");
            assert_eq!(v.as_deref(), Some(&b"value\0bin"[..]));
        }
        assert_eq!(lmeta(&root.join("d/hard")).ino(), m.ino());

        let dm = lmeta(&root.join("d"));
        assert!(dm.is_dir());
        assert_eq!(dm.mode() & 0o7777, 0o1777);
        assert_eq!((dm.uid(), dm.gid()), (1234, 5678));
        assert_eq!(dm.mtime(), 1_400_000_000, "dir mtime set after its content");

        let sm = lmeta(&root.join("d/sym"));
        assert!(sm.file_type().is_symlink());
        assert_eq!(
            std::fs::read_link(root.join("d/sym")).unwrap(),
            Path::new("suid")
        );
        assert_eq!((sm.uid(), sm.gid()), (1234, 5678));
        assert_eq!(sm.mtime(), 1_300_000_000);

        let fm = lmeta(&root.join("d/fifo"));
        assert!(fm.file_type().is_fifo());
        assert_eq!(fm.mode() & 0o7777, 0o640);
        let cm = lmeta(&root.join("d/null"));
        assert!(cm.file_type().is_char_device());
        assert_eq!(cm.rdev(), libc::makedev(1, 3));
        assert_eq!(cm.mode() & 0o7777, 0o666);
        assert_eq!(cm.uid(), 1234);
        let bm = lmeta(&root.join("d/blk"));
        assert!(bm.file_type().is_block_device());
        assert_eq!(bm.rdev(), libc::makedev(7, 0));
    }

    fn read_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
        let cp = CString::new(p.as_os_str().as_bytes()).unwrap();
        let cn = CString::new(name).unwrap();
        let mut buf = vec![0u8; 4096];
        // SAFETY: valid strings and buffer.
        let n = unsafe {
            libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        };
        if n < 0 {
            return None;
        }
        buf.truncate(n as usize);
        Some(buf)
    }

    #[test]
    fn missing_parents_are_created_root_owned_0755() {
        let td = tmp();
        let root = td.path();
        apply(root, Tb::new().add(file("x/y/z/f", "1")).done()).unwrap();
        for d in ["x", "x/y", "x/y/z"] {
            let m = lmeta(&root.join(d));
            assert!(m.is_dir());
            assert_eq!(m.mode() & 0o7777, 0o755, "{d}");
            assert_eq!((m.uid(), m.gid()), (0, 0));
        }
        assert_eq!(read(&root.join("x/y/z/f")), "1");
    }

    #[test]
    fn whiteouts_remove_files_and_trees() {
        let td = tmp();
        let root = td.path();
        std::fs::create_dir_all(root.join("d/sub/deep")).unwrap();
        std::fs::write(root.join("d/sub/deep/f"), "x").unwrap();
        std::fs::write(root.join("d/keep"), "k").unwrap();
        std::fs::write(root.join("d/gone"), "g").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("d/lnk")).unwrap();
        let st = apply(
            root,
            Tb::new()
                .add(wh("d/.wh.sub"))
                .add(wh("d/.wh.gone"))
                .add(wh("d/.wh.lnk"))
                .add(wh("d/.wh.absent"))
                .add(wh("nodir/.wh.x"))
                .done(),
        )
        .unwrap();
        assert_eq!(st.whiteouts, 5);
        assert_eq!(st.entries, 0);
        assert!(!exists(&root.join("d/sub")));
        assert!(!exists(&root.join("d/gone")));
        assert!(!exists(&root.join("d/lnk")));
        assert!(exists(Path::new("/etc/passwd")));
        assert_eq!(read(&root.join("d/keep")), "k");
        assert!(!exists(&root.join("d/.wh.sub")));
        assert!(!exists(&root.join("nodir")));
        // Bad whiteout names.
        for bad in ["d/.wh.", "d/.wh..", "d/.wh...", ".wh..wh..opq/x/.wh.y"] {
            let r = apply(root, Tb::new().add(wh(bad)).done());
            if bad.starts_with(".wh..wh.") {
                // aufs metadata: ignored
                assert!(r.is_ok(), "{bad}");
            } else {
                assert!(matches!(r, Err(Error::Invalid(_))), "{bad}: {r:?}");
            }
        }
        assert!(matches!(
            apply(root, Tb::new().add(file(".wh.x/y", "")).done()),
            Err(Error::Invalid(_))
        ));
    }

    fn lower_for_opaque(root: &Path) {
        std::fs::create_dir_all(root.join("d/lowerdir/x")).unwrap();
        std::fs::create_dir_all(root.join("d/shared")).unwrap();
        std::fs::write(root.join("d/lowerfile"), "l").unwrap();
        std::fs::write(root.join("d/shared/lowerchild"), "l").unwrap();
        std::fs::write(root.join("d/own"), "old").unwrap();
        std::fs::write(root.join("other"), "o").unwrap();
    }

    fn check_opaque(root: &Path) {
        let mut names: Vec<String> = std::fs::read_dir(root.join("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["own", "shared"]);
        assert_eq!(read(&root.join("d/own")), "new");
        let mut names: Vec<String> = std::fs::read_dir(root.join("d/shared"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["mine"]);
        assert_eq!(read(&root.join("other")), "o");
        assert!(!exists(&root.join("d/.wh..wh..opq")));
    }

    #[test]
    fn opaque_before_own_entries() {
        let td = tmp();
        let root = td.path();
        lower_for_opaque(root);
        let st = apply(
            root,
            Tb::new()
                .add(dir("d/"))
                .add(wh("d/.wh..wh..opq"))
                .add(file("d/own", "new"))
                .add(file("d/shared/mine", "m"))
                .done(),
        )
        .unwrap();
        assert_eq!(st.whiteouts, 1);
        check_opaque(root);
    }

    #[test]
    fn opaque_after_own_entries() {
        let td = tmp();
        let root = td.path();
        lower_for_opaque(root);
        apply(
            root,
            Tb::new()
                .add(dir("d/"))
                .add(file("d/own", "new"))
                .add(file("d/shared/mine", "m"))
                .add(wh("d/.wh..wh..opq"))
                .done(),
        )
        .unwrap();
        check_opaque(root);
    }

    #[test]
    fn whiteout_after_own_entry_keeps_it() {
        let td = tmp();
        let root = td.path();
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("d/lower"), "l").unwrap();
        apply(
            root,
            Tb::new()
                .add(file("f", "mine"))
                .add(wh(".wh.f"))
                .add(file("d/new", "n"))
                .add(wh(".wh.d"))
                .done(),
        )
        .unwrap();
        assert_eq!(read(&root.join("f")), "mine");
        assert_eq!(read(&root.join("d/new")), "n");
        assert!(!exists(&root.join("d/lower")));
    }

    #[test]
    fn replacements() {
        let td = tmp();
        let root = td.path();
        std::fs::write(root.join("f2d"), "file").unwrap();
        std::fs::create_dir_all(root.join("d2f/sub")).unwrap();
        std::fs::write(root.join("d2f/sub/x"), "x").unwrap();
        std::fs::create_dir(root.join("merge")).unwrap();
        std::fs::write(root.join("merge/old"), "old").unwrap();
        std::fs::set_permissions(root.join("merge"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        std::os::unix::fs::symlink("merge", root.join("s2f")).unwrap();
        let mut m = dir("merge/");
        m.mode = 0o750;
        m.uid = 1234;
        let tar = Tb::new()
            .add(dir("f2d/"))
            .add(file("f2d/inner", "i"))
            .add(file("d2f", "now a file"))
            .add(m)
            .add(file("merge/new", "n"))
            .add(file("s2f", "regular"))
            .done();
        apply(root, tar).unwrap();
        assert!(lmeta(&root.join("f2d")).is_dir());
        assert_eq!(read(&root.join("f2d/inner")), "i");
        assert_eq!(read(&root.join("d2f")), "now a file");
        let mm = lmeta(&root.join("merge"));
        assert_eq!(mm.mode() & 0o7777, 0o750);
        assert_eq!(mm.uid(), 1234);
        assert_eq!(read(&root.join("merge/old")), "old");
        assert_eq!(read(&root.join("merge/new")), "n");
        assert!(lmeta(&root.join("s2f")).is_file());
        assert_eq!(read(&root.join("s2f")), "regular");
    }

    #[test]
    fn hardlink_rules() {
        let td = tmp();
        let root = td.path();
        std::fs::create_dir(root.join("dir")).unwrap();
        let r = apply(root, Tb::new().add(hardlink("h", "dir")).done());
        assert!(
            matches!(r, Err(Error::Invalid(ref m)) if m.contains("directory")),
            "{r:?}"
        );
        let r = apply(root, Tb::new().add(hardlink("h", "missing")).done());
        assert!(matches!(r, Err(Error::Invalid(_))), "{r:?}");
        let r = apply(root, Tb::new().add(hardlink("h", "./")).done());
        assert!(matches!(r, Err(Error::Invalid(_))), "{r:?}");
        // Hardlink to a lower file, replacing an existing path; twice.
        std::fs::write(root.join("lower"), "L").unwrap();
        std::fs::write(root.join("h"), "old").unwrap();
        let tar = Tb::new()
            .add(hardlink("h", "/lower"))
            .add(hardlink("h", "lower"))
            .done();
        apply(root, tar).unwrap();
        assert_eq!(
            lmeta(&root.join("h")).ino(),
            lmeta(&root.join("lower")).ino()
        );
        // A hardlink to a symlink links the symlink itself.
        std::os::unix::fs::symlink("/etc/passwd", root.join("sl")).unwrap();
        apply(root, Tb::new().add(hardlink("h2", "sl")).done()).unwrap();
        assert!(lmeta(&root.join("h2")).file_type().is_symlink());
    }

    #[test]
    fn root_entries() {
        let td = tmp();
        let root = td.path();
        let mut d = dir("./");
        d.mode = 0o711;
        d.mtime = 1_234_567_890;
        apply(root, Tb::new().add(d).add(file("f", "x")).done()).unwrap();
        let m = lmeta(root);
        assert_eq!(m.mode() & 0o7777, 0o711);
        assert_eq!(m.mtime(), 1_234_567_890);
        for name in [".", "/", "./", "/."] {
            let r = apply(root, Tb::new().add(file(name, "x")).done());
            assert!(matches!(r, Err(Error::Invalid(_))), "{name}: {r:?}");
            let r = apply(root, Tb::new().add(symlink(name, "/etc")).done());
            assert!(matches!(r, Err(Error::Invalid(_))), "{name}: {r:?}");
        }
        for name in ["..", "../..", "a/../.."] {
            let r = apply(root, Tb::new().add(dir(name)).done());
            assert!(matches!(r, Err(Error::Invalid(_))), "{name}: {r:?}");
        }
        assert!(lmeta(root).is_dir());
    }

    #[test]
    fn unknown_type_and_malformed_tar_are_errors() {
        let td = tmp();
        let root = td.path();
        let r = apply(root, Tb::new().add(e("x", EntryType::new(b'Z'))).done());
        assert!(
            matches!(r, Err(Error::Invalid(ref m)) if m.contains("\"x\"")),
            "{r:?}"
        );
        let mut bad = Tb::new().add(file("f", "data")).done();
        bad[0] ^= 0x55; // checksum mismatch
        assert!(matches!(apply(root, bad), Err(Error::Invalid(_))));
        // Truncated data.
        let mut t = Tb::new().add(file("big", &"y".repeat(2000))).done();
        t.truncate(1024);
        assert!(apply(root, t).is_err());
        // Garbage never panics.
        let mut seed = 0x1234_5678u32;
        for _ in 0..50 {
            let mut g = Tb::new()
                .add(file("a/b", "c"))
                .add(symlink("l", "../x"))
                .done();
            for _ in 0..20 {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let i = (seed as usize >> 8) % g.len();
                g[i] = (seed >> 16) as u8;
            }
            let _ = apply(root, g);
        }
    }

    #[test]
    fn duplicates_last_wins() {
        let td = tmp();
        let root = td.path();
        let tar = Tb::new()
            .add(file("f", "one"))
            .add(file("f", "two"))
            .add(dir("d/"))
            .add(file("d/x", "x"))
            .add(dir("d/"))
            .add(symlink("s", "a"))
            .add(symlink("s", "b"))
            .done();
        apply(root, tar).unwrap();
        assert_eq!(read(&root.join("f")), "two");
        assert_eq!(read(&root.join("d/x")), "x");
        assert_eq!(std::fs::read_link(root.join("s")).unwrap(), Path::new("b"));
    }

    #[test]
    fn attributes_never_follow_a_final_symlink() {
        let td = tmp();
        let base = td.path();
        let root = base.join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(base.join("victim"), "v").unwrap();
        std::fs::set_permissions(base.join("victim"), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        let victim = base.join("victim");
        let link_target = victim.to_str().unwrap();
        // A symlink in the root, then a fifo and a dir entry with its name.
        let mut d = dir("l");
        d.mode = 0o777;
        d.uid = 1234;
        let tar = Tb::new()
            .add(symlink("l", link_target))
            .add(d)
            .add(symlink("m", link_target))
            .add(e("m", EntryType::Fifo))
            .done();
        apply(&root, tar).unwrap();
        let vm = lmeta(&victim);
        assert_eq!(vm.mode() & 0o7777, 0o644);
        assert_eq!(vm.uid(), 0);
        assert_eq!(read(&victim), "v");
        assert!(lmeta(&root.join("l")).is_dir());
        assert!(lmeta(&root.join("m")).file_type().is_fifo());
    }

    #[test]
    fn parents_through_symlinks_stay_inside() {
        let td = tmp();
        let base = td.path();
        let root = base.join("root");
        std::fs::create_dir_all(root.join("real")).unwrap();
        let tar = Tb::new()
            .add(symlink("rel", "real"))
            .add(symlink("abs", "/real"))
            .add(symlink("up", "../../.."))
            .add(file("rel/a", "1"))
            .add(file("abs/b", "2"))
            .add(file("up/c", "3"))
            .done();
        apply(&root, tar).unwrap();
        assert_eq!(read(&root.join("real/a")), "1");
        assert_eq!(read(&root.join("real/b")), "2");
        assert_eq!(read(&root.join("c")), "3");
        let mut outside: Vec<_> = std::fs::read_dir(base)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        outside.sort();
        assert_eq!(outside, ["root"]);
        // A dangling symlink where a directory is needed: a clean error.
        let r = apply(
            &root,
            Tb::new()
                .add(symlink("dangling", "/nope"))
                .add(file("dangling/x", "1"))
                .done(),
        );
        assert!(matches!(r, Err(Error::Invalid(_))), "{r:?}");
        // A file where a directory is needed.
        let r = apply(&root, Tb::new().add(file("real/a/x", "1")).done());
        assert!(matches!(r, Err(Error::Invalid(_))), "{r:?}");
    }

    #[test]
    fn long_names_and_pax_paths() {
        let td = tmp();
        let root = td.path();
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(150));
        let mut x = file("short-in-header", "long");
        x.pax.push((b"path".to_vec(), long.as_bytes().to_vec()));
        let ltarget = format!("{}/t", "t".repeat(130));
        let mut s = symlink("sym", "x");
        s.pax
            .push((b"linkpath".to_vec(), ltarget.as_bytes().to_vec()));
        apply(root, Tb::new().add(x).add(s).done()).unwrap();
        assert_eq!(read(&root.join(&long)), "long");
        assert!(!exists(&root.join("short-in-header")));
        assert_eq!(
            std::fs::read_link(root.join("sym")).unwrap(),
            Path::new(&ltarget)
        );
    }
}
