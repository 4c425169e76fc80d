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

// ---------------------------------------------------------------------------
// One function per program and use, with typed arguments: callers never
// build an argv (stratisd's `cmd.rs` is the model).

/// The filesystems dmctl makes (mirrors `store::model::Filesystem`, which
/// this module does not depend on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MkfsKind {
    Ext4,
    Xfs,
}

/// `mkfs.ext4`/`mkfs.xfs` on `dev`, quietly, with the user's extra args.
/// Docker's choices: no discard pass (a new thin device is all unmapped
/// already) and no lazy init that would write later.
pub fn mkfs(kind: MkfsKind, dev: &std::path::Path, extra: &[String]) -> Result<()> {
    let (tool, base): (Tool, &[&str]) = match kind {
        MkfsKind::Ext4 => (
            Tool::MkfsExt4,
            &[
                "-q",
                "-F",
                "-E",
                "nodiscard,lazy_itable_init=0,lazy_journal_init=0",
            ],
        ),
        MkfsKind::Xfs => (Tool::MkfsXfs, &["-q", "-f", "-K"]),
    };
    let mut args: Vec<&OsStr> = base.iter().map(OsStr::new).collect();
    args.extend(extra.iter().map(OsStr::new));
    args.push(dev.as_os_str());
    tool.run(args).map(|_| ())
}

/// `thin_check -q DEV`.
pub fn thin_check_quiet(dev: &std::path::Path) -> Result<()> {
    Tool::ThinCheck
        .run([OsStr::new("-q"), dev.as_os_str()])
        .map(|_| ())
}

/// `thin_check --clear-needs-check-flag META`, whatever its exit status
/// (the caller reports its findings).
pub fn thin_check_clearing_flag(meta: &std::path::Path) -> Result<Output> {
    Tool::ThinCheck.output([OsStr::new("--clear-needs-check-flag"), meta.as_os_str()])
}

/// What `thin_repair` needs when the superblock is unreadable.
#[derive(Debug, Clone, Copy)]
pub struct Superblock {
    pub transaction_id: u64,
    pub data_block_sectors: u64,
    pub data_blocks: u64,
}

/// `thin_repair -i INPUT -o OUTPUT [superblock fields]`, whatever its exit
/// status.
pub fn thin_repair(
    input: &std::path::Path,
    output: &std::path::Path,
    superblock: Option<&Superblock>,
) -> Result<Output> {
    let mut args: Vec<std::ffi::OsString> =
        vec!["-i".into(), input.into(), "-o".into(), output.into()];
    if let Some(sb) = superblock {
        for (flag, value) in [
            ("--transaction-id", sb.transaction_id),
            ("--data-block-size", sb.data_block_sectors),
            ("--nr-data-blocks", sb.data_blocks),
        ] {
            args.push(flag.into());
            args.push(value.to_string().into());
        }
    }
    Tool::ThinRepair.output(args)
}

/// What `thin_dump --metadata-snap` is to print.
#[derive(Debug, Clone, Copy)]
pub enum DumpOf {
    /// Every device, without mappings.
    Devices,
    /// One device, with its mappings.
    Device(u32),
}

/// `thin_dump --metadata-snap ... META`: the XML, as text.
pub fn thin_dump_snapshot(meta: &std::path::Path, what: DumpOf) -> Result<String> {
    let id;
    let mut args: Vec<&OsStr> = vec![OsStr::new("--metadata-snap")];
    match what {
        DumpOf::Devices => args.push(OsStr::new("--skip-mappings")),
        DumpOf::Device(dev) => {
            id = dev.to_string();
            args.extend([OsStr::new("--dev-id"), OsStr::new(id.as_str())]);
        }
    }
    args.push(meta.as_os_str());
    let out = Tool::ThinDump.run(args)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The program that grows a mounted filesystem, and its argument:
/// `resize2fs DEV` (ext4 asks the kernel to grow it online) or
/// `xfs_growfs MOUNTPOINT`.
fn grower(
    kind: MkfsKind,
    dev: &std::path::Path,
    mountpoint: &std::path::Path,
) -> (Tool, std::ffi::OsString) {
    match kind {
        MkfsKind::Ext4 => (Tool::Resize2fs, dev.as_os_str().to_owned()),
        MkfsKind::Xfs => (Tool::XfsGrowfs, mountpoint.as_os_str().to_owned()),
    }
}

/// Grow the filesystem on `dev`, mounted at `mountpoint`, to its device.
pub fn grow_mounted(
    kind: MkfsKind,
    dev: &std::path::Path,
    mountpoint: &std::path::Path,
) -> Result<()> {
    let (tool, arg) = grower(kind, dev, mountpoint);
    tool.run([arg]).map(|_| ())
}

/// The grow of [`grow_mounted`] as a command not yet started (for a caller
/// that mounts the filesystem in the child's own namespace first), and
/// the program it runs.
pub fn grow_command(
    kind: MkfsKind,
    dev: &std::path::Path,
    mountpoint: &std::path::Path,
) -> Result<(Tool, Command)> {
    let (tool, arg) = grower(kind, dev, mountpoint);
    let mut command = tool.command()?;
    command.arg(arg);
    Ok((tool, command))
}
