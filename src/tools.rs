//! Every external program dmctl runs is named here, once. `doctor` checks them
//! all; operations call them through [`Tool::run`] so a failure names the
//! program and carries its stderr.

use crate::error::{Error, Result};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    MkfsExt4,
    MkfsXfs,
    Resize2fs,
    XfsGrowfs,
    ThinCheck,
    ThinDump,
    ThinLs,
    ThinRepair,
    ThinRestore,
    ThinDelta,
}

impl Tool {
    pub const ALL: [Tool; 10] = [
        Tool::MkfsExt4,
        Tool::MkfsXfs,
        Tool::Resize2fs,
        Tool::XfsGrowfs,
        Tool::ThinCheck,
        Tool::ThinDump,
        Tool::ThinLs,
        Tool::ThinRepair,
        Tool::ThinRestore,
        Tool::ThinDelta,
    ];

    pub fn program(self) -> &'static str {
        match self {
            Tool::MkfsExt4 => "mkfs.ext4",
            Tool::MkfsXfs => "mkfs.xfs",
            Tool::Resize2fs => "resize2fs",
            Tool::XfsGrowfs => "xfs_growfs",
            Tool::ThinCheck => "thin_check",
            Tool::ThinDump => "thin_dump",
            Tool::ThinLs => "thin_ls",
            Tool::ThinRepair => "thin_repair",
            Tool::ThinRestore => "thin_restore",
            Tool::ThinDelta => "thin_delta",
        }
    }

    /// Debian package that ships the program, for error messages.
    pub fn package(self) -> &'static str {
        match self {
            Tool::MkfsExt4 | Tool::Resize2fs => "e2fsprogs",
            Tool::MkfsXfs | Tool::XfsGrowfs => "xfsprogs",
            _ => "thin-provisioning-tools",
        }
    }

    /// Full path of the program, searching PATH plus the sbin directories
    /// (which a non-login root shell may lack).
    pub fn find(self) -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
            .map(|dir| dir.join(self.program()))
            .find(|p| p.is_file())
    }

    /// Run the program to completion; a non-zero exit is an error carrying
    /// the last line of its stderr.
    pub fn run<I, S>(self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.succeeded(self.output(args)?)
    }

    /// `out` if the program exited 0, else the error [`Tool::failed`] makes.
    pub fn succeeded(self, out: Output) -> Result<Output> {
        if out.status.success() {
            Ok(out)
        } else {
            Err(self.failed(&out))
        }
    }

    /// Run the program and return its output whatever the exit status.
    pub fn output<I, S>(self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = self.command()?;
        command.args(args).output().map_err(|e| self.not_started(e))
    }

    /// The program as a `Command` (stdin from /dev/null), for callers that
    /// need more than [`Tool::run`]: a pre-exec hook, a spawn.
    pub fn command(self) -> Result<Command> {
        crate::trace::step(|| format!("run {}", self.program()));
        let exe = self.find().ok_or_else(|| Error::Tool {
            program: self.program().into(),
            msg: format!("not found (install {})", self.package()),
        })?;
        let mut command = Command::new(exe);
        command.stdin(Stdio::null());
        Ok(command)
    }

    /// The error for a program that could not be started.
    pub fn not_started(self, e: std::io::Error) -> Error {
        Error::Tool {
            program: self.program().into(),
            msg: format!("cannot start: {e}"),
        }
    }

    /// The error for a failed run: exit status and the last stderr line.
    pub fn failed(self, out: &Output) -> Error {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stderr
            .lines()
            .chain(stdout.lines())
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string();
        Error::Tool {
            program: self.program().into(),
            msg: format!("{}: {last}", out.status),
        }
    }
}
