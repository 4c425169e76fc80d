//! Typed errors of the dmctl library. The CLI turns them into one
//! `dmctl: error: ...` line; callers of the library can match on them.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input from the user: a name, a size, an argument combination.
    #[error("{0}")]
    Invalid(String),

    /// Something that was asked for does not exist.
    #[error("{0}")]
    NotFound(String),

    /// Something that was asked to be created already exists.
    #[error("{0}")]
    Exists(String),

    /// An unmount of a path that is not a mount point.
    #[error("{} is not mounted", .0.display())]
    NotMounted(PathBuf),

    /// A device or pool is in use and the operation would disturb it.
    #[error("{0}")]
    Busy(String),

    /// The pool refuses the operation (out of space, read-only, failed).
    #[error("{0}")]
    PoolState(String),

    /// A device-mapper ioctl failed; `errno` is the kernel's answer when
    /// that is what failed (callers decide on it, never on the text).
    #[error("device-mapper: {op}: {msg}")]
    Dm {
        op: String,
        msg: String,
        errno: Option<i32>,
    },

    /// An external program failed or is missing.
    #[error("{program}: {msg}")]
    Tool { program: String, msg: String },

    /// A state file could not be parsed.
    #[error("corrupt state file {path}: {msg}")]
    Corrupt { path: PathBuf, msg: String },

    /// An I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Kernel metadata and dmctl's JSON metadata disagree in a way that
    /// cannot be repaired automatically.
    #[error("{0}")]
    Drift(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The errno behind a failed kernel call, if that is what failed.
    pub fn errno(&self) -> Option<nix::errno::Errno> {
        match self {
            Error::Dm { errno, .. } => errno.map(nix::errno::Errno::from_raw),
            Error::Io { source, .. } => source.raw_os_error().map(nix::errno::Errno::from_raw),
            _ => None,
        }
    }

    /// Attach the path to an I/O error, so messages say which file failed.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// Extension to turn `io::Result<T>` into `Result<T>` naming the path.
pub trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
