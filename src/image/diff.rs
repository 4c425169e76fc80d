//! Write the OCI layer that turns one directory tree into another.
//!
//! `lower` and `upper` are meant to be two mounted thin snapshots of the same
//! filesystem, parent and child: a thin snapshot keeps its origin's inode
//! numbers, so a path with the same (inode, size, mtime, ctime) on both sides
//! is unchanged without reading it. Everything else is compared in full.
//!
//! The tar is deterministic: names sorted bytewise, a directory before its
//! children, and every changed path preceded by its parent directories (so
//! the applier can restore their mtimes). Long names, link targets,
//! sub-second mtimes, large ids and xattrs (`SCHILY.xattr.NAME`) go into PAX
//! records; owners are numeric only.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;
use tar::{EntryType, Header};

use crate::error::{Error, IoContext, Result};
use crate::image::layer::{WH_OPAQUE, WH_PREFIX};

/// Counters of one written diff.
#[derive(Debug, Default, Clone, Serialize)]
pub struct DiffStats {
    /// Paths present only in `upper` (including the content of replaced or
    /// recreated directories).
    pub added: u64,
    /// Paths present on both sides that changed (or changed type).
    pub modified: u64,
    /// Paths of `lower` gone in `upper` (one whiteout each).
    pub deleted: u64,
    /// Bytes of regular-file content written into the tar.
    pub bytes: u64,
}

/// Write to `out` an uncompressed OCI layer tar with the changes that turn
/// `lower` into `upper`. Symlinks are never followed.
pub fn write_diff<W: Write>(lower: &Path, upper: &Path, out: W) -> Result<DiffStats> {
    write_diff_opts(lower, upper, out, true)
}

/// `dir_identity`: a directory whose inode differs between the two sides was
/// deleted and recreated (true for snapshots). Tests on unrelated trees turn
/// it off to exercise whiteouts.
pub(crate) fn write_diff_opts<W: Write>(
    lower: &Path,
    upper: &Path,
    out: W,
    dir_identity: bool,
) -> Result<DiffStats> {
    let lmeta = std::fs::symlink_metadata(lower).at(lower)?;
    let umeta = std::fs::symlink_metadata(upper).at(upper)?;
    if !lmeta.is_dir() {
        return Err(Error::Invalid(format!(
            "{}: not a directory",
            lower.display()
        )));
    }
    if !umeta.is_dir() {
        return Err(Error::Invalid(format!(
            "{}: not a directory",
            upper.display()
        )));
    }
    let mut d = Differ {
        out: TarOut { w: out, pos: 0 },
        stats: DiffStats::default(),
        links: HashMap::new(),
        pending: Vec::new(),
        dir_identity,
    };
    let lst = Stat::of(&lmeta);
    let ust = Stat::of(&umeta);
    d.pending.push(Pending {
        rel: Vec::new(),
        path: upper.to_path_buf(),
        stat: ust.clone(),
        emitted: false,
    });
    let root_changed = !fast_unchanged(&lst, &ust)
        && (attrs_differ(&lst, &ust) || read_xattrs(lower)? != read_xattrs(upper)?);
    if root_changed {
        d.stats.modified += 1;
        d.flush_pending()?;
    }
    d.diff_dir(b"", lower, upper)?;
    d.out.finish()?;
    Ok(d.stats)
}

/// The file kinds a layer can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Char,
    Block,
    Socket,
}

/// What the comparison needs of an lstat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stat {
    pub kind: FileKind,
    pub ino: u64,
    pub nlink: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub rdev: u64,
}

impl Stat {
    pub(crate) fn of(m: &Metadata) -> Stat {
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            FileKind::Dir
        } else if ft.is_symlink() {
            FileKind::Symlink
        } else if ft.is_fifo() {
            FileKind::Fifo
        } else if ft.is_char_device() {
            FileKind::Char
        } else if ft.is_block_device() {
            FileKind::Block
        } else if ft.is_socket() {
            FileKind::Socket
        } else {
            FileKind::File
        };
        Stat {
            kind,
            ino: m.ino(),
            nlink: m.nlink(),
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            rdev: m.rdev(),
        }
    }
}

/// The snapshot fast path: same inode, size, mtime and ctime means the
/// inode was not touched since the snapshot was taken (any write, chmod,
/// chown, xattr or link change moves ctime).
pub(crate) fn fast_unchanged(lower: &Stat, upper: &Stat) -> bool {
    lower.kind == upper.kind
        && lower.ino == upper.ino
        && lower.size == upper.size
        && lower.mtime == upper.mtime
        && lower.ctime == upper.ctime
}

/// Metadata differences visible in a layer (xattrs and content aside).
pub(crate) fn attrs_differ(lower: &Stat, upper: &Stat) -> bool {
    if lower.kind != upper.kind
        || lower.mode != upper.mode
        || lower.uid != upper.uid
        || lower.gid != upper.gid
        || lower.mtime != upper.mtime
    {
        return true;
    }
    match upper.kind {
        FileKind::Dir => false,
        FileKind::Char | FileKind::Block => lower.rdev != upper.rdev,
        _ => lower.size != upper.size,
    }
}

fn path_bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

fn io_err(path: &Path, e: io::Error) -> Error {
    Error::io(path, e)
}

/// Extended attributes of a path (not followed), sorted by name.
fn read_xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let cpath = CString::new(path_bytes(path))
        .map_err(|_| Error::Invalid(format!("{}: NUL in path", path.display())))?;
    let mut buf = vec![0u8; 1024];
    let n = loop {
        // SAFETY: cpath is NUL-terminated, buf is writable for its length.
        let n = unsafe { libc::llistxattr(cpath.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) if buf.len() < (1 << 24) => {
                let len = buf.len() * 4;
                buf.resize(len, 0);
            }
            Some(libc::ENOTSUP) => return Ok(Vec::new()),
            _ => return Err(io_err(path, e)),
        }
    };
    buf.truncate(n);
    let mut out = Vec::new();
    for name in buf.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).expect("split on NUL");
        let mut val = vec![0u8; 256];
        let got = loop {
            // SAFETY: valid NUL-terminated strings and a writable buffer.
            let r = unsafe {
                libc::lgetxattr(
                    cpath.as_ptr(),
                    cname.as_ptr(),
                    val.as_mut_ptr().cast(),
                    val.len(),
                )
            };
            if r >= 0 {
                break Some(r as usize);
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ERANGE) if val.len() < (1 << 24) => {
                    let len = val.len() * 4;
                    val.resize(len, 0);
                }
                // Removed between list and get.
                Some(libc::ENODATA) => break None,
                _ => return Err(io_err(path, e)),
            }
        };
        if let Some(got) = got {
            val.truncate(got);
            out.push((name.to_vec(), val));
        }
    }
    out.sort();
    Ok(out)
}

fn open_nofollow(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .at(path)
}

/// Whether two regular files have the same bytes.
fn same_content(a: &Path, b: &Path) -> Result<bool> {
    let mut fa = open_nofollow(a)?;
    let mut fb = open_nofollow(b)?;
    let mut ba = vec![0u8; 64 * 1024];
    let mut bb = vec![0u8; 64 * 1024];
    loop {
        let na = read_full(&mut fa, &mut ba).at(a)?;
        let nb = read_full(&mut fb, &mut bb).at(b)?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Sorted names of a directory.
fn list(dir: &Path) -> Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for ent in std::fs::read_dir(dir).at(dir)? {
        let ent = ent.at(dir)?;
        names.push(ent.file_name().as_bytes().to_vec());
    }
    names.sort();
    Ok(names)
}

fn child(rel: &[u8], name: &[u8]) -> Vec<u8> {
    let mut r = rel.to_vec();
    if !r.is_empty() {
        r.push(b'/');
    }
    r.extend_from_slice(name);
    r
}

/// A directory on the current walk path, emitted at most once.
struct Pending {
    rel: Vec<u8>,
    path: PathBuf,
    stat: Stat,
    emitted: bool,
}

struct Differ<W: Write> {
    out: TarOut<W>,
    stats: DiffStats,
    /// Upper inode (with nlink > 1) -> the first path of the walk that has
    /// it, and whether that path was written in full (else it is unchanged
    /// and already present in lower).
    links: HashMap<u64, (Vec<u8>, bool)>,
    pending: Vec<Pending>,
    dir_identity: bool,
}

impl<W: Write> Differ<W> {
    /// Emit the directories of the walk path not emitted yet.
    fn flush_pending(&mut self) -> Result<()> {
        for i in 0..self.pending.len() {
            if !self.pending[i].emitted {
                let (rel, path, stat) = {
                    let p = &self.pending[i];
                    (p.rel.clone(), p.path.clone(), p.stat.clone())
                };
                self.write_node(&rel, &path, &stat)?;
                self.pending[i].emitted = true;
            }
        }
        Ok(())
    }

    fn diff_dir(&mut self, rel: &[u8], lower: &Path, upper: &Path) -> Result<()> {
        let lnames = list(lower)?;
        let unames = list(upper)?;
        let (mut i, mut j) = (0, 0);
        while i < lnames.len() || j < unames.len() {
            let ord = match (lnames.get(i), unames.get(j)) {
                (Some(l), Some(u)) => l.cmp(u),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match ord {
                std::cmp::Ordering::Less => {
                    let name = &lnames[i];
                    i += 1;
                    self.flush_pending()?;
                    let mut wh = WH_PREFIX.to_vec();
                    wh.extend_from_slice(name);
                    self.out.write_marker(&child(rel, &wh))?;
                    self.stats.deleted += 1;
                }
                std::cmp::Ordering::Greater => {
                    let name = &unames[j];
                    j += 1;
                    let upath = upper.join(OsStr::from_bytes(name));
                    self.add_tree(&child(rel, name), &upath)?;
                }
                std::cmp::Ordering::Equal => {
                    let name = lnames[i].clone();
                    i += 1;
                    j += 1;
                    if rel.is_empty() && name == b"lost+found" {
                        continue;
                    }
                    let lpath = lower.join(OsStr::from_bytes(&name));
                    let upath = upper.join(OsStr::from_bytes(&name));
                    self.diff_path(&child(rel, &name), &lpath, &upath)?;
                }
            }
        }
        Ok(())
    }

    fn diff_path(&mut self, rel: &[u8], lpath: &Path, upath: &Path) -> Result<()> {
        let lst = Stat::of(&std::fs::symlink_metadata(lpath).at(lpath)?);
        let ust = Stat::of(&std::fs::symlink_metadata(upath).at(upath)?);
        if ust.kind == FileKind::Dir {
            if lst.kind == FileKind::Dir && (!self.dir_identity || lst.ino == ust.ino) {
                let changed = !fast_unchanged(&lst, &ust)
                    && (attrs_differ(&lst, &ust) || read_xattrs(lpath)? != read_xattrs(upath)?);
                self.pending.push(Pending {
                    rel: rel.to_vec(),
                    path: upath.to_path_buf(),
                    stat: ust,
                    emitted: false,
                });
                if changed {
                    self.stats.modified += 1;
                    self.flush_pending()?;
                }
                self.diff_dir(rel, lpath, upath)?;
                self.pending.pop();
                return Ok(());
            }
            // Recreated, or replacing a non-directory: opaque, full content.
            self.stats.modified += 1;
            self.flush_pending()?;
            return self.write_whole_dir(rel, upath, ust, true);
        }
        if ust.kind == FileKind::Socket {
            if lst.kind != FileKind::Socket {
                // A socket cannot be in a layer: the old path just goes.
                self.flush_pending()?;
                let (parent, name) = split_rel(rel);
                let mut wh = WH_PREFIX.to_vec();
                wh.extend_from_slice(name);
                self.out.write_marker(&child(parent, &wh))?;
                self.stats.deleted += 1;
            }
            return Ok(());
        }
        let changed = lst.kind == FileKind::Dir || !self.same_nondir(&lst, &ust, lpath, upath)?;
        if changed {
            self.stats.modified += 1;
            self.flush_pending()?;
            self.write_node(rel, upath, &ust)?;
        } else if ust.nlink > 1 {
            match self.links.get(&ust.ino) {
                // Unchanged, but its inode was written in full earlier
                // under another name: link it to that one.
                Some((_, true)) => {
                    self.stats.modified += 1;
                    self.flush_pending()?;
                    self.write_node(rel, upath, &ust)?;
                }
                Some((_, false)) => {}
                None => {
                    self.links.insert(ust.ino, (rel.to_vec(), false));
                }
            }
        }
        Ok(())
    }

    /// Two non-directories hold the same thing.
    fn same_nondir(&self, l: &Stat, u: &Stat, lpath: &Path, upath: &Path) -> Result<bool> {
        if fast_unchanged(l, u) {
            return Ok(true);
        }
        if attrs_differ(l, u) {
            return Ok(false);
        }
        if u.kind == FileKind::Symlink
            && std::fs::read_link(lpath).at(lpath)? != std::fs::read_link(upath).at(upath)?
        {
            return Ok(false);
        }
        if read_xattrs(lpath)? != read_xattrs(upath)? {
            return Ok(false);
        }
        if u.kind == FileKind::File {
            return same_content(lpath, upath);
        }
        Ok(true)
    }

    /// A path only in upper, with everything below it.
    fn add_tree(&mut self, rel: &[u8], upath: &Path) -> Result<()> {
        let ust = Stat::of(&std::fs::symlink_metadata(upath).at(upath)?);
        if ust.kind == FileKind::Socket {
            return Ok(());
        }
        self.stats.added += 1;
        self.flush_pending()?;
        if ust.kind == FileKind::Dir {
            return self.write_whole_dir(rel, upath, ust, false);
        }
        self.write_node(rel, upath, &ust)
    }

    /// A directory written in full: its entry, an opaque marker if it hides
    /// the lower one, then every child (it is the pending parent of each).
    fn write_whole_dir(&mut self, rel: &[u8], upath: &Path, ust: Stat, opaque: bool) -> Result<()> {
        self.write_node(rel, upath, &ust)?;
        if opaque {
            self.out.write_marker(&child(rel, WH_OPAQUE))?;
        }
        self.pending.push(Pending {
            rel: rel.to_vec(),
            path: upath.to_path_buf(),
            stat: ust,
            emitted: true,
        });
        self.add_children(rel, upath)?;
        self.pending.pop();
        Ok(())
    }

    fn add_children(&mut self, rel: &[u8], upath: &Path) -> Result<()> {
        for name in list(upath)? {
            self.add_tree(&child(rel, &name), &upath.join(OsStr::from_bytes(&name)))?;
        }
        Ok(())
    }

    /// Write one upper node (not its children).
    fn write_node(&mut self, rel: &[u8], path: &Path, st: &Stat) -> Result<()> {
        let mut name = if rel.is_empty() {
            b".".to_vec()
        } else {
            rel.to_vec()
        };
        let mut h = Header::new_ustar();
        let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut link: Option<Vec<u8>> = None;
        let mut size = 0u64;
        let hardlink_to = if st.kind != FileKind::Dir && st.nlink > 1 {
            match self.links.get(&st.ino) {
                Some((first, _)) => Some(first.clone()),
                None => {
                    self.links.insert(st.ino, (rel.to_vec(), true));
                    None
                }
            }
        } else {
            None
        };
        if let Some(first) = hardlink_to {
            h.set_entry_type(EntryType::Link);
            link = Some(first);
        } else {
            match st.kind {
                FileKind::Dir => {
                    h.set_entry_type(EntryType::Directory);
                    name.push(b'/');
                }
                FileKind::File => {
                    h.set_entry_type(EntryType::Regular);
                    size = st.size;
                }
                FileKind::Symlink => {
                    h.set_entry_type(EntryType::Symlink);
                    let t = std::fs::read_link(path).at(path)?;
                    link = Some(path_bytes(&t).to_vec());
                }
                FileKind::Fifo => h.set_entry_type(EntryType::Fifo),
                FileKind::Char | FileKind::Block => {
                    h.set_entry_type(if st.kind == FileKind::Char {
                        EntryType::Char
                    } else {
                        EntryType::Block
                    });
                    let major = libc::major(st.rdev);
                    let minor = libc::minor(st.rdev);
                    set_dev(&mut h, major, minor, &mut pax, path)?;
                }
                FileKind::Socket => return Ok(()),
            }
        }
        h.set_mode(st.mode);
        const MAX_ID: u32 = 0o7777777;
        h.set_uid(u64::from(st.uid.min(MAX_ID)));
        h.set_gid(u64::from(st.gid.min(MAX_ID)));
        if st.uid > MAX_ID {
            pax.push((b"uid".to_vec(), st.uid.to_string().into_bytes()));
        }
        if st.gid > MAX_ID {
            pax.push((b"gid".to_vec(), st.gid.to_string().into_bytes()));
        }
        let (secs, nsec) = st.mtime;
        h.set_mtime(secs.clamp(0, 0o77777777777) as u64);
        if nsec != 0 || !(0..=0o77777777777).contains(&secs) {
            pax.push((b"mtime".to_vec(), format_time(secs, nsec).into_bytes()));
        }
        const MAX_SIZE: u64 = 0o77777777777;
        if size > MAX_SIZE {
            pax.push((b"size".to_vec(), size.to_string().into_bytes()));
            h.set_size(0);
        } else {
            h.set_size(size);
        }
        if h.entry_type() != EntryType::Link {
            for (k, v) in read_xattrs(path)? {
                let mut key = b"SCHILY.xattr.".to_vec();
                key.extend_from_slice(&k);
                pax.push((key, v));
            }
        }
        if size == 0 {
            self.out
                .write_entry(&name, &mut h, link.as_deref(), pax, None)?;
        } else {
            let mut f = open_nofollow(path)?;
            self.out.write_entry(
                &name,
                &mut h,
                link.as_deref(),
                pax,
                Some((&mut f, size, path)),
            )?;
            self.stats.bytes += size;
        }
        Ok(())
    }
}

fn split_rel(rel: &[u8]) -> (&[u8], &[u8]) {
    match rel.iter().rposition(|b| *b == b'/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (b"", rel),
    }
}

fn set_dev(
    h: &mut Header,
    major: u32,
    minor: u32,
    pax: &mut Vec<(Vec<u8>, Vec<u8>)>,
    path: &Path,
) -> Result<()> {
    const MAX: u32 = 0o7777777;
    if major > MAX || minor > MAX {
        // GNU/star PAX keywords for large device numbers.
        pax.push((b"SCHILY.devmajor".to_vec(), major.to_string().into_bytes()));
        pax.push((b"SCHILY.devminor".to_vec(), minor.to_string().into_bytes()));
    }
    h.set_device_major(major.min(MAX)).at(path)?;
    h.set_device_minor(minor.min(MAX)).at(path)?;
    Ok(())
}

/// A PAX time value: `SECONDS.NANOSECONDS`, negative times as `-S.F`.
fn format_time(secs: i64, nsec: i64) -> String {
    if secs < 0 && nsec > 0 {
        format!("-{}.{:09}", -(secs + 1), 1_000_000_000 - nsec)
    } else {
        format!("{secs}.{nsec:09}")
    }
}

/// One PAX record: `LEN KEY=VALUE\n`, LEN counting itself.
fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while body + len.to_string().len() != len {
        len = body + len.to_string().len();
    }
    let mut r = len.to_string().into_bytes();
    r.push(b' ');
    r.extend_from_slice(key);
    r.push(b'=');
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// A raw tar stream writer (512-byte blocks).
struct TarOut<W: Write> {
    w: W,
    pos: u64,
}

fn out_err(e: io::Error) -> Error {
    Error::io("<layer diff output>", e)
}

fn set_name_field(field: &mut [u8], name: &[u8]) {
    let n = name.len().min(field.len());
    field.iter_mut().for_each(|b| *b = 0);
    field[..n].copy_from_slice(&name[..n]);
}

impl<W: Write> TarOut<W> {
    fn put(&mut self, data: &[u8]) -> Result<()> {
        self.w.write_all(data).map_err(out_err)?;
        self.pos += data.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<()> {
        let rem = (self.pos % 512) as usize;
        if rem != 0 {
            self.put(&[0u8; 512][..512 - rem])?;
        }
        Ok(())
    }

    /// A whiteout or opaque marker: an empty regular file.
    fn write_marker(&mut self, name: &[u8]) -> Result<()> {
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o600);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        self.write_entry(name, &mut h, None, Vec::new(), None)
    }

    fn write_entry(
        &mut self,
        name: &[u8],
        h: &mut Header,
        link: Option<&[u8]>,
        mut pax: Vec<(Vec<u8>, Vec<u8>)>,
        data: Option<(&mut dyn Read, u64, &Path)>,
    ) -> Result<()> {
        if name.len() > 100 {
            pax.insert(0, (b"path".to_vec(), name.to_vec()));
        }
        if let Some(l) = link {
            if l.len() > 100 {
                pax.push((b"linkpath".to_vec(), l.to_vec()));
            }
        }
        if !pax.is_empty() {
            let mut body = Vec::new();
            for (k, v) in &pax {
                body.extend_from_slice(&pax_record(k, v));
            }
            let mut ph = Header::new_ustar();
            ph.set_entry_type(EntryType::XHeader);
            set_name_field(&mut ph.as_old_mut().name, b"././@PaxHeader");
            ph.set_mode(0o644);
            ph.set_uid(0);
            ph.set_gid(0);
            ph.set_mtime(0);
            ph.set_size(body.len() as u64);
            ph.set_cksum();
            self.put(ph.as_bytes())?;
            self.put(&body)?;
            self.pad()?;
        }
        set_name_field(&mut h.as_old_mut().name, name);
        if let Some(l) = link {
            set_name_field(&mut h.as_old_mut().linkname, l);
        }
        h.set_cksum();
        self.put(h.as_bytes())?;
        if let Some((r, size, path)) = data {
            let mut buf = vec![0u8; 128 * 1024];
            let mut left = size;
            while left > 0 {
                let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = read_full(r, &mut buf[..want]).at(path)?;
                if n == 0 {
                    return Err(Error::io(
                        path,
                        io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while read"),
                    ));
                }
                self.put(&buf[..n])?;
                left -= n as u64;
            }
            self.pad()?;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        self.put(&[0u8; 1024])?;
        self.w.flush().map_err(out_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::layer::apply_layer;
    use sha2::{Digest, Sha256};
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;

    fn st(ino: u64, size: u64, mtime: (i64, i64), ctime: (i64, i64)) -> Stat {
        Stat {
            kind: FileKind::File,
            ino,
            nlink: 1,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size,
            mtime,
            ctime,
            rdev: 0,
        }
    }

    #[test]
    fn fast_path_needs_same_ino_size_mtime_ctime() {
        let a = st(10, 5, (100, 1), (200, 2));
        assert!(fast_unchanged(&a, &a.clone()));
        assert!(!fast_unchanged(&a, &st(11, 5, (100, 1), (200, 2))));
        assert!(!fast_unchanged(&a, &st(10, 6, (100, 1), (200, 2))));
        assert!(!fast_unchanged(&a, &st(10, 5, (100, 2), (200, 2))));
        assert!(!fast_unchanged(&a, &st(10, 5, (100, 1), (200, 3))));
        let mut d = a.clone();
        d.kind = FileKind::Dir;
        assert!(!fast_unchanged(&a, &d));
        // Mode/owner changes move ctime in reality; the fast path trusts it.
        let mut m = a.clone();
        m.mode = 0o600;
        assert!(fast_unchanged(&a, &m));
        assert!(attrs_differ(&a, &m));
    }

    #[test]
    fn attrs_comparison() {
        let a = st(1, 5, (100, 0), (1, 0));
        let mut b = st(2, 5, (100, 0), (2, 0));
        assert!(!attrs_differ(&a, &b), "ino and ctime do not count");
        b.uid = 1;
        assert!(attrs_differ(&a, &b));
        let mut b = a.clone();
        b.size = 6;
        assert!(attrs_differ(&a, &b));
        let mut da = a.clone();
        da.kind = FileKind::Dir;
        let mut db = da.clone();
        db.size = 4096 * 2;
        assert!(!attrs_differ(&da, &db), "directory sizes do not count");
        let mut ca = a.clone();
        ca.kind = FileKind::Char;
        let mut cb = ca.clone();
        cb.rdev = 7;
        assert!(attrs_differ(&ca, &cb));
    }

    #[test]
    fn pax_record_lengths() {
        assert_eq!(pax_record(b"path", b"ab"), b"11 path=ab\n");
        // Length field growing from 2 to 3 digits.
        let r = pax_record(b"k", &[b'v'; 94]);
        assert_eq!(r.len(), 101);
        assert!(r.starts_with(b"101 k="));
        assert_eq!(format_time(5, 1), "5.000000001");
        assert_eq!(format_time(-2, 500_000_000), "-1.500000000");
    }

    // ---- tree building and comparison ----

    fn fnv(s: &[u8]) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in s {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
        h
    }

    fn cpath(p: &Path) -> CString {
        CString::new(p.as_os_str().as_bytes()).unwrap()
    }

    fn set_time(p: &Path, secs: i64, nsec: i64) {
        let t = libc::timespec {
            tv_sec: secs,
            tv_nsec: nsec,
        };
        let c = cpath(p);
        // SAFETY: valid path and times.
        let r = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                [t, t].as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        assert_eq!(r, 0, "utimensat {}", p.display());
    }

    fn lchown(p: &Path, uid: u32, gid: u32) {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn setx(p: &Path, name: &str, v: &[u8]) {
        let c = cpath(p);
        let n = CString::new(name).unwrap();
        // SAFETY: valid strings and buffer.
        let r = unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
        assert_eq!(r, 0, "setxattr {}", p.display());
    }

    fn rmx(p: &Path, name: &str) {
        let c = cpath(p);
        let n = CString::new(name).unwrap();
        // SAFETY: valid strings.
        assert_eq!(unsafe { libc::lremovexattr(c.as_ptr(), n.as_ptr()) }, 0);
    }

    fn mknod(p: &Path, kind: libc::mode_t, dev: libc::dev_t) {
        let c = cpath(p);
        // SAFETY: valid path.
        assert_eq!(unsafe { libc::mknod(c.as_ptr(), kind | 0o644, dev) }, 0);
    }

    fn xattrs_ok(dir: &Path) -> bool {
        let p = dir.join(".probe");
        std::fs::write(&p, "").unwrap();
        let c = cpath(&p);
        // SAFETY: valid strings.
        let ok =
            unsafe { libc::lsetxattr(c.as_ptr(), c"user.p".as_ptr(), b"1".as_ptr().cast(), 1, 0) }
                == 0;
        std::fs::remove_file(&p).unwrap();
        ok
    }

    fn write(root: &Path, rel: &str, data: &[u8]) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    /// Every path below root, sorted, without following symlinks.
    fn all_paths(root: &Path) -> Vec<PathBuf> {
        let mut out = vec![root.to_path_buf()];
        let mut i = 0;
        while i < out.len() {
            let p = out[i].clone();
            i += 1;
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                let mut kids: Vec<PathBuf> = std::fs::read_dir(&p)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect();
                kids.sort();
                out.extend(kids);
            }
        }
        out
    }

    /// Deterministic times for every path of a tree.
    fn stamp(root: &Path) {
        for p in all_paths(root) {
            let rel = p.strip_prefix(root).unwrap();
            let h = fnv(rel.as_os_str().as_bytes());
            set_time(
                &p,
                1_500_000_000 + (h % 1_000_000) as i64,
                (h % 1_000_000_000) as i64,
            );
        }
    }

    fn build_base(root: &Path, xattrs: bool) {
        std::fs::create_dir_all(root).unwrap();
        for d in [
            "a/b/c",
            "d",
            "e",
            "gone_dir/sub",
            "repl_d2f/x",
            "emptyd",
            "lost+found",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        write(root, "a/f1", b"hello");
        let big: Vec<u8> = (0..8192u32).map(|i| (i * 7 % 251) as u8).collect();
        write(root, "a/b/f2", &big);
        write(root, "a/b/c/f3", b"f3");
        write(root, "d/f4", b"four");
        write(root, "e/x", b"x");
        write(root, "top.txt", b"top");
        write(root, "hl1", b"linked");
        std::fs::hard_link(root.join("hl1"), root.join("hl2")).unwrap();
        write(root, "hl5", b"pair");
        std::fs::hard_link(root.join("hl5"), root.join("hl6")).unwrap();
        write(root, "gone_file", b"bye");
        write(root, "gone_dir/sub/f", b"bye");
        write(root, "repl_f2d", b"file");
        write(root, "repl_d2f/x/y", b"y");
        for f in [
            "chmod_me",
            "chown_me",
            "mtime_me",
            "xattr_change",
            "xattr_remove",
        ] {
            write(root, f, f.as_bytes());
        }
        write(root, "a/suid", b"#!/bin/sh\n");
        chmod(&root.join("a/suid"), 0o4755);
        lchown(&root.join("a/suid"), 1234, 5678);
        chmod(&root.join("a/suid"), 0o4755);
        std::os::unix::fs::symlink("b/f2", root.join("a/link")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("a", root.join("sym_retarget")).unwrap();
        lchown(&root.join("abs"), 1234, 5678);
        mknod(&root.join("a/fifo"), libc::S_IFIFO, 0);
        mknod(&root.join("cdev"), libc::S_IFCHR, libc::makedev(1, 3));
        chmod(&root.join("emptyd"), 0o1777);
        if xattrs {
            setx(&root.join("a/f1"), "user.test", b"1");
            setx(&root.join("xattr_change"), "user.test", b"old");
            setx(&root.join("xattr_remove"), "user.test", b"x");
            setx(&root.join("d"), "user.dir", b"dirval");
        }
        stamp(root);
    }

    fn mutate(root: &Path, xattrs: bool) {
        let r = |s: &str| root.join(s);
        // Same size, different bytes.
        let mut f2 = std::fs::read(r("a/b/f2")).unwrap();
        f2[4000] ^= 0xff;
        std::fs::write(r("a/b/f2"), f2).unwrap();
        std::fs::write(r("d/f4"), b"four, longer now").unwrap();
        chmod(&r("chmod_me"), 0o600);
        lchown(&r("chown_me"), 1234, 5678);
        set_time(&r("mtime_me"), 1_000_000_000, 42);
        std::fs::remove_file(r("gone_file")).unwrap();
        std::fs::remove_dir_all(r("gone_dir")).unwrap();
        std::fs::remove_file(r("repl_f2d")).unwrap();
        write(root, "repl_f2d/inside", b"now a dir");
        std::fs::remove_dir_all(r("repl_d2f")).unwrap();
        write(root, "repl_d2f", b"now a file");
        std::fs::remove_file(r("sym_retarget")).unwrap();
        std::os::unix::fs::symlink("d", r("sym_retarget")).unwrap();
        write(root, "new/n1/n2/file", b"deep");
        let long_dir = "L".repeat(90);
        let long_file = "F".repeat(200);
        write(root, &format!("new/{long_dir}/{long_file}"), b"long");
        std::os::unix::fs::symlink("t".repeat(150), r("new/longlink")).unwrap();
        // Hardlinks: new name first in walk order (a/hl3 < hl1), new name
        // last (zz_l5 > hl5), and a new pair.
        std::fs::hard_link(r("hl1"), r("a/hl3")).unwrap();
        std::fs::hard_link(r("hl5"), r("zz_l5")).unwrap();
        write(root, "zz_p1", b"new pair");
        std::fs::hard_link(r("zz_p1"), r("zz_p2")).unwrap();
        mknod(&r("new/fifo"), libc::S_IFIFO, 0);
        mknod(&r("new/blk"), libc::S_IFBLK, libc::makedev(7, 1));
        lchown(&r("new/blk"), 1234, 5678);
        write(root, "a/b/c/added", b"added");
        chmod(&r("lost+found"), 0o777);
        chmod(&r("emptyd"), 0o755);
        if xattrs {
            setx(&r("xattr_change"), "user.test", b"new");
            rmx(&r("xattr_remove"), "user.test");
            setx(&r("e/x"), "user.added", &[0, 1, 2, 255]);
            setx(&r("new/n1"), "user.d", b"v");
        }
    }

    #[derive(Debug, PartialEq)]
    struct Desc {
        kind: FileKind,
        mode: u32,
        uid: u32,
        gid: u32,
        size: Option<u64>,
        sha: Option<String>,
        link: Option<PathBuf>,
        xattrs: Vec<(Vec<u8>, Vec<u8>)>,
        mtime: (i64, i64),
        rdev: u64,
        nlink: Option<u64>,
    }

    fn tree(root: &Path) -> BTreeMap<PathBuf, Desc> {
        let mut out = BTreeMap::new();
        for p in all_paths(root) {
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            if rel.starts_with("lost+found") {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let s = Stat::of(&m);
            let file = s.kind == FileKind::File;
            out.insert(
                rel,
                Desc {
                    kind: s.kind,
                    mode: s.mode,
                    uid: s.uid,
                    gid: s.gid,
                    size: file.then_some(s.size),
                    sha: file.then(|| hex::encode(Sha256::digest(std::fs::read(&p).unwrap()))),
                    link: (s.kind == FileKind::Symlink).then(|| std::fs::read_link(&p).unwrap()),
                    xattrs: read_xattrs(&p).unwrap(),
                    mtime: s.mtime,
                    rdev: s.rdev,
                    nlink: (s.kind != FileKind::Dir).then_some(s.nlink),
                },
            );
        }
        out
    }

    fn assert_same_tree(got: &Path, want: &Path) {
        let g = tree(got);
        let w = tree(want);
        let gk: Vec<_> = g.keys().collect();
        let wk: Vec<_> = w.keys().collect();
        assert_eq!(gk, wk, "paths differ");
        for (k, wd) in &w {
            assert_eq!(&g[k], wd, "path {}", k.display());
        }
    }

    fn names(tar: &[u8]) -> Vec<(String, EntryType, Option<String>)> {
        let mut a = tar::Archive::new(tar);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    String::from_utf8_lossy(&e.path_bytes()).into_owned(),
                    e.header().entry_type(),
                    e.link_name_bytes()
                        .map(|l| String::from_utf8_lossy(&l).into_owned()),
                )
            })
            .collect()
    }

    struct Trees {
        _td: tempfile::TempDir,
        lower: PathBuf,
        upper: PathBuf,
        target: PathBuf,
    }

    fn trees() -> Trees {
        let td = tempfile::tempdir().unwrap();
        let lower = td.path().join("lower");
        let upper = td.path().join("upper");
        let target = td.path().join("target");
        std::fs::create_dir(&lower).unwrap();
        let x = xattrs_ok(&lower);
        if !x {
            eprintln!(
                "NOTE: no user xattrs on {}: xattr changes not tested",
                lower.display()
            );
        }
        build_base(&lower, x);
        build_base(&upper, x);
        build_base(&target, x);
        assert_same_tree(&target, &lower);
        mutate(&upper, x);
        Trees {
            _td: td,
            lower,
            upper,
            target,
        }
    }

    #[test]
    fn identical_trees_give_an_empty_layer() {
        let td = tempfile::tempdir().unwrap();
        let (l, u) = (td.path().join("l"), td.path().join("u"));
        std::fs::create_dir(&l).unwrap();
        let x = xattrs_ok(&l);
        build_base(&l, x);
        build_base(&u, x);
        let mut tar = Vec::new();
        let s = write_diff_opts(&l, &u, &mut tar, false).unwrap();
        assert_eq!((s.added, s.modified, s.deleted, s.bytes), (0, 0, 0, 0));
        assert_eq!(tar, vec![0u8; 1024]);
    }

    #[test]
    fn round_trip_with_whiteouts() {
        let t = trees();
        let mut tar = Vec::new();
        let s = write_diff_opts(&t.lower, &t.upper, &mut tar, false).unwrap();
        let n = names(&tar);
        let has = |name: &str| n.iter().any(|(p, _, _)| p == name);
        assert!(has("./"), "{n:?}");
        assert!(has(".wh.gone_file"));
        assert!(has(".wh.gone_dir"));
        assert!(!n.iter().any(|(p, _, _)| p.starts_with("gone_dir/")));
        assert!(!n.iter().any(|(p, _, _)| p.contains("lost+found")));
        assert!(!has("top.txt"), "unchanged files are not written");
        assert!(has("repl_f2d/") && has("repl_f2d/.wh..wh..opq") && has("repl_f2d/inside"));
        assert!(has("repl_d2f") && !n.iter().any(|(p, _, _)| p.starts_with("repl_d2f/")));
        assert!(has("a/") && has("a/b/"), "parents of changes are written");
        // Hardlinks.
        let link = |name: &str| {
            n.iter()
                .find(|(p, _, _)| p == name)
                .filter(|(_, t, _)| *t == EntryType::Link)
                .and_then(|(_, _, l)| l.clone())
        };
        assert_eq!(link("hl1").as_deref(), Some("a/hl3"));
        assert_eq!(link("hl2").as_deref(), Some("a/hl3"));
        assert_eq!(link("zz_l5").as_deref(), Some("hl5"));
        assert_eq!(link("zz_p2").as_deref(), Some("zz_p1"));
        assert!(s.added >= 10 && s.modified >= 8, "{s:?}");
        assert_eq!(s.deleted, 2, "{s:?}");
        // Sorted, parents before children.
        let order: Vec<&String> = n.iter().map(|(p, _, _)| p).collect();
        let pos = |name: &str| order.iter().position(|p| *p == name).unwrap();
        assert!(pos("./") < pos("a/") && pos("a/") < pos("a/b/") && pos("a/b/") < pos("a/b/f2"));
        assert!(pos("new/") < pos("new/n1/") && pos("new/n1/") < pos("new/n1/n2/"));

        let st = apply_layer(&t.target, &tar[..]).unwrap();
        assert_eq!(st.whiteouts, 3);
        assert_same_tree(&t.target, &t.upper);

        // Deterministic.
        let mut again = Vec::new();
        write_diff_opts(&t.lower, &t.upper, &mut again, false).unwrap();
        assert!(again == tar, "same trees give the same bytes");
    }

    #[test]
    fn round_trip_with_recreated_directories() {
        // Unrelated trees: every directory has another inode, so with
        // snapshot semantics every directory counts as recreated.
        let t = trees();
        let mut tar = Vec::new();
        write_diff(&t.lower, &t.upper, &mut tar).unwrap();
        let n = names(&tar);
        let has = |name: &str| n.iter().any(|(p, _, _)| p == name);
        assert!(has("a/.wh..wh..opq") && has("a/f1") && has("a/b/f2"));
        assert!(
            !has("a/b/.wh..wh..opq"),
            "content of an opaque dir is complete"
        );
        assert!(!has("top.txt"), "the root itself is never 'recreated'");
        assert!(has(".wh.gone_file") && has(".wh.gone_dir"));
        assert!(
            !n.iter()
                .any(|(p, _, _)| p.contains("/.wh.") && !p.ends_with("/.wh..wh..opq")),
            "no whiteouts below an opaque directory"
        );
        assert!(!has("lost+found/"));
        apply_layer(&t.target, &tar[..]).unwrap();
        assert_same_tree(&t.target, &t.upper);
    }

    #[test]
    fn same_tree_takes_the_fast_path() {
        // One tree against itself: every inode matches, nothing is read.
        let td = tempfile::tempdir().unwrap();
        let x = xattrs_ok(td.path());
        build_base(&td.path().join("t"), x);
        let t = td.path().join("t");
        let mut tar = Vec::new();
        let s = write_diff(&t, &t, &mut tar).unwrap();
        assert_eq!((s.added, s.modified, s.deleted, s.bytes), (0, 0, 0, 0));
        assert_eq!(tar, vec![0u8; 1024]);
    }

    #[test]
    fn refuses_non_directories() {
        let td = tempfile::tempdir().unwrap();
        let f = td.path().join("f");
        std::fs::write(&f, "").unwrap();
        assert!(write_diff(&f, td.path(), Vec::new()).is_err());
        assert!(write_diff(td.path(), &f, Vec::new()).is_err());
    }
}
