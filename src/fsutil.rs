//! Crash-safe handling of state files: atomic replacement, durable removal,
//! private directories, JSON state files, and advisory `flock` locks.
//!
//! "Durable" means the change is fsynced, including the directory entry,
//! so that after a crash the file is either wholly old or wholly new.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, IoContext, Result};

/// Mode of state files and lock files.
pub const FILE_MODE: u32 = 0o600;

/// Mode of state directories.
pub const DIR_MODE: u32 = 0o700;

/// The directory holding `path`; `.` for a bare file name.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// `path.tmp.<pid>`, next to `path`.
fn tmp_path(path: &Path) -> Result<PathBuf> {
    let name = path.file_name().ok_or_else(|| {
        Error::Invalid(format!("cannot write {}: not a file path", path.display()))
    })?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    Ok(path.with_file_name(tmp_name))
}

/// fsync a directory, making the creation, rename or removal of entries in
/// it durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Replace `path` with `data` atomically and durably: write a temporary
/// file (mode 0600) in the same directory, fsync it, rename it over `path`
/// and fsync the directory. Readers see the old or the new content, never
/// a mix, even across a crash.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    crate::trace::step(|| format!("write {}", path.display()));
    let tmp = tmp_path(path)?;
    // A temporary file left by a crashed process with our pid (pids are
    // reused) is stale: nobody else writes this name.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&tmp, e)),
    }
    let written = (|| -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        // The umask may have removed bits but cannot have added any; make
        // the mode exact regardless.
        file.set_permissions(fs::Permissions::from_mode(FILE_MODE))?;
        file.write_all(data)?;
        file.sync_all()
    })()
    .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    fsync_dir(parent_dir(path))
}

/// [`write_atomic`] of `value` as pretty JSON with a trailing newline.
pub fn write_json_atomic<T: Serialize + ?Sized>(path: &Path, value: &T) -> Result<()> {
    let mut data = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::Invalid(format!("cannot serialize {}: {e}", path.display())))?;
    data.push(b'\n');
    write_atomic(path, &data)
}

fn parse_json<T: DeserializeOwned>(path: &Path, data: &[u8]) -> Result<T> {
    if data.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            msg: "file is empty".to_string(),
        });
    }
    serde_json::from_slice(data).map_err(|e| Error::Corrupt {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

/// Read a JSON state file. A missing file is an `Error::Io` (NotFound)
/// naming the path; unparseable content, including an empty or truncated
/// file, is `Error::Corrupt` naming the path.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let data = fs::read(path).at(path)?;
    parse_json(path, &data)
}

/// Like [`read_json`], but `Ok(None)` when the file does not exist.
pub fn read_json_opt<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match fs::read(path) {
        Ok(data) => parse_json(path, &data).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// The `NAME.json` files of a directory: `(NAME, path)`, sorted by name;
/// none if the directory does not exist. Temp files of an interrupted
/// write (`NAME.json.tmp.PID`) do not end in `.json` and are not listed.
pub fn json_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut out = vec![];
    for entry in rd {
        let entry = entry.at(dir)?;
        let file = entry.file_name();
        if let Some(stem) = file.to_str().and_then(|f| f.strip_suffix(".json")) {
            out.push((stem.to_string(), entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Create `path` and any missing parents with mode 0700. The final
/// directory is set to 0700 even if it already existed; parents that
/// already existed are left alone.
pub fn create_private_dir(path: &Path) -> Result<()> {
    // Note which ancestors are about to be created, so their modes can be
    // fixed up whatever the umask.
    let mut missing = Vec::new();
    for dir in path.ancestors() {
        if dir.as_os_str().is_empty() {
            break;
        }
        match fs::symlink_metadata(dir) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(dir),
            Err(e) => return Err(Error::io(dir, e)),
        }
    }
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
        .at(path)?;
    let perms = || fs::Permissions::from_mode(DIR_MODE);
    for dir in missing.iter().skip(1) {
        fs::set_permissions(dir, perms()).at(*dir)?;
    }
    fs::set_permissions(path, perms()).at(path)?;
    Ok(())
}

/// Remove a file and fsync its directory. `Ok(false)` if it did not exist.
pub fn remove_file_durable(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(path, e)),
    }
    fsync_dir(parent_dir(path))?;
    Ok(true)
}

/// An advisory `flock(2)` lock on a file, released when dropped.
///
/// `flock` locks belong to the open file description, so two `LockFile`s
/// on the same path exclude each other even within one process.
#[derive(Debug)]
pub struct LockFile {
    file: File,
    path: PathBuf,
}

impl LockFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl std::os::fd::AsRawFd for LockFile {
    /// The locked descriptor: a child that inherits it (e.g. a long
    /// filesystem grow) keeps the lock held even if this process dies.
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        // Closing the file releases the lock too, unless a forked child
        // still holds a copy of the descriptor; unlock explicitly.
        // SAFETY: flock on a descriptor we own.
        unsafe {
            libc::flock(self.file.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)
        .at(path)
}

/// `flock` with retry on EINTR; `Ok(false)` if non-blocking and held.
fn flock(file: &File, op: libc::c_int) -> io::Result<bool> {
    loop {
        // SAFETY: flock on a descriptor owned by `file`.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if op & libc::LOCK_NB != 0 => return Ok(false),
            _ => return Err(err),
        }
    }
}

fn lock(path: &Path, op: libc::c_int) -> Result<Option<LockFile>> {
    let file = open_lock_file(path)?;
    if flock(&file, op).at(path)? {
        Ok(Some(LockFile {
            file,
            path: path.to_path_buf(),
        }))
    } else {
        Ok(None)
    }
}

/// Take an exclusive lock on `path` (created 0600 if missing), waiting for
/// other holders to release it.
pub fn lock_exclusive(path: &Path) -> Result<LockFile> {
    lock(path, libc::LOCK_EX)?
        .ok_or_else(|| Error::io(path, io::Error::from_raw_os_error(libc::EWOULDBLOCK)))
}

/// Take an exclusive lock on `path` if nobody holds it; `None` if someone does.
pub fn try_lock_exclusive(path: &Path) -> Result<Option<LockFile>> {
    lock(path, libc::LOCK_EX | libc::LOCK_NB)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::sync::mpsc;
    use std::time::Duration;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct State {
        name: String,
        ids: Vec<u32>,
    }

    fn state() -> State {
        State {
            name: "tank".into(),
            ids: vec![1, 2, 3],
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn corrupt_msg<T: std::fmt::Debug>(r: Result<T>, expect_path: &Path) -> String {
        match r {
            Err(Error::Corrupt { path, msg }) => {
                assert_eq!(path, expect_path);
                msg
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn write_atomic_round_trip_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        write_atomic(&path, b"one").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(mode(&path), 0o600);
        write_atomic(&path, b"two, longer").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two, longer");
        assert_eq!(mode(&path), 0o600);
        // Nothing but the file itself is left in the directory.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state"]);
    }

    #[test]
    fn write_atomic_replaces_a_stale_tmp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let tmp = tmp_path(&path).unwrap();
        assert_eq!(
            tmp.file_name().unwrap().to_str().unwrap(),
            format!("state.json.tmp.{}", std::process::id())
        );
        fs::write(&tmp, b"stale garbage from a crash").unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o444)).unwrap();
        write_atomic(&path, b"fresh").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"fresh");
        assert!(!tmp.exists());
    }

    #[test]
    fn write_atomic_does_not_follow_a_tmp_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep").unwrap();
        std::os::unix::fs::symlink(&victim, tmp_path(&path).unwrap()).unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert!(!fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn write_atomic_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("state");
        match write_atomic(&path, b"x") {
            Err(Error::Io { path: p, source }) => {
                assert_eq!(p, path);
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            write_atomic(Path::new("/"), b"x"),
            Err(Error::Invalid(_))
        ));
    }

    #[test]
    fn json_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.json");
        write_json_atomic(&path, &state()).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("}\n"), "{text:?}");
        assert!(text.contains("\n  \"name\": \"tank\""), "{text}");
        assert_eq!(read_json::<State>(&path).unwrap(), state());
        assert_eq!(read_json_opt::<State>(&path).unwrap(), Some(state()));
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn json_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.json");
        match read_json::<State>(&path) {
            Err(Error::Io { path: p, source }) => {
                assert_eq!(p, path);
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(read_json_opt::<State>(&path).unwrap(), None);
    }

    #[test]
    fn json_garbage_truncated_and_empty_are_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.json");

        fs::write(&path, b"\x00\xffnot json at all").unwrap();
        corrupt_msg(read_json::<State>(&path), &path);
        corrupt_msg(read_json_opt::<State>(&path), &path);

        let full = serde_json::to_vec_pretty(&state()).unwrap();
        fs::write(&path, &full[..full.len() / 2]).unwrap();
        corrupt_msg(read_json::<State>(&path), &path);

        fs::write(&path, b"").unwrap();
        let msg = corrupt_msg(read_json::<State>(&path), &path);
        assert_eq!(msg, "file is empty");
        fs::write(&path, b" \n").unwrap();
        corrupt_msg(read_json_opt::<State>(&path), &path);

        // Valid JSON of the wrong shape is corrupt too.
        fs::write(&path, br#"{"name": 5}"#).unwrap();
        corrupt_msg(read_json::<State>(&path), &path);

        // And the rendered error names the file.
        let err = read_json::<State>(&path).unwrap_err();
        assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
    }

    #[test]
    fn private_dir_modes() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let leaf = dir.path().join("a").join("b").join("c");
        create_private_dir(&leaf).unwrap();
        for d in [
            dir.path().join("a"),
            dir.path().join("a/b"),
            dir.path().join("a/b/c"),
        ] {
            assert!(d.is_dir());
            assert_eq!(mode(&d), 0o700, "{}", d.display());
        }
        // The pre-existing parent is left alone.
        assert_eq!(mode(dir.path()), 0o755);

        // An existing directory with loose permissions is tightened, and a
        // second call is fine.
        let loose = dir.path().join("loose");
        fs::create_dir(&loose).unwrap();
        fs::set_permissions(&loose, fs::Permissions::from_mode(0o777)).unwrap();
        create_private_dir(&loose).unwrap();
        assert_eq!(mode(&loose), 0o700);
        create_private_dir(&loose).unwrap();

        // A file in the way is an error naming the path.
        let file = dir.path().join("file");
        fs::write(&file, b"").unwrap();
        assert!(matches!(create_private_dir(&file), Err(Error::Io { .. })));
    }

    #[test]
    fn remove_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        fs::write(&path, b"x").unwrap();
        assert!(remove_file_durable(&path).unwrap());
        assert!(!path.exists());
        assert!(!remove_file_durable(&path).unwrap());
        fsync_dir(dir.path()).unwrap();
        assert!(matches!(
            fsync_dir(&dir.path().join("nope")),
            Err(Error::Io { .. })
        ));
    }

    #[test]
    fn exclusive_lock_excludes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let held = lock_exclusive(&path).unwrap();
        assert_eq!(held.path(), path);
        assert_eq!(mode(&path), 0o600);
        assert!(lock(&path, libc::LOCK_EX | libc::LOCK_NB)
            .unwrap()
            .is_none());
        assert!(lock(&path, libc::LOCK_SH | libc::LOCK_NB)
            .unwrap()
            .is_none());
        drop(held);
        let again = lock(&path, libc::LOCK_EX | libc::LOCK_NB).unwrap();
        assert!(again.is_some());
    }

    #[test]
    fn shared_locks_coexist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let a = lock(&path, libc::LOCK_SH).unwrap().unwrap();
        let b = lock(&path, libc::LOCK_SH).unwrap().unwrap();
        let c = lock(&path, libc::LOCK_SH | libc::LOCK_NB).unwrap();
        assert!(c.is_some());
        assert!(lock(&path, libc::LOCK_EX | libc::LOCK_NB)
            .unwrap()
            .is_none());
        drop((a, b, c));
        assert!(lock(&path, libc::LOCK_EX | libc::LOCK_NB)
            .unwrap()
            .is_some());
    }

    #[test]
    fn blocking_lock_waits_for_release() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let held = lock_exclusive(&path).unwrap();
        let (tx, rx) = mpsc::channel();
        let p = path.clone();
        let waiter = std::thread::spawn(move || {
            let lock = lock_exclusive(&p).unwrap();
            tx.send(()).unwrap();
            drop(lock);
        });
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        drop(held);
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        waiter.join().unwrap();
    }

    #[test]
    fn lock_in_missing_dir_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope").join("lock");
        match lock_exclusive(&path) {
            Err(Error::Io { path: p, .. }) => assert_eq!(p, path),
            other => panic!("{other:?}"),
        }
    }
}
