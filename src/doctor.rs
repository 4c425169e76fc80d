//! `dmctl doctor`: what dmctl needs on this host, one verdict per check.

use crate::tools::Tool;
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    /// Works, but something is worth knowing (e.g. no udev).
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
    pub detail: String,
    /// Whether dmctl cannot work without it.
    pub required: bool,
}

fn check(name: &str, required: bool, res: Result<String, String>) -> Check {
    let (verdict, detail) = match res {
        Ok(d) => (Verdict::Ok, d),
        Err(d) if required => (Verdict::Fail, d),
        Err(d) => (Verdict::Warn, d),
    };
    Check {
        name: name.into(),
        verdict,
        detail,
        required,
    }
}

fn dm_control() -> Result<String, String> {
    let (a, b, c) = crate::kernel::dm::interface_version().map_err(|e| {
        if Path::new("/dev/mapper/control").exists() {
            if nix::unistd::geteuid().is_root() {
                format!("/dev/mapper/control: {e}")
            } else {
                format!("/dev/mapper/control: {e} (needs root)")
            }
        } else {
            "/dev/mapper/control missing: this kernel has no device-mapper (modprobe dm-mod)"
                .to_string()
        }
    })?;
    Ok(format!("ioctl interface {a}.{b}.{c}"))
}

fn thin_pool_target() -> Result<String, String> {
    match crate::kernel::dm::target_version("thin-pool")? {
        Some((a, b, c)) => Ok(format!("thin-pool target {a}.{b}.{c}")),
        None => Err("thin-pool target not loaded (modprobe dm-thin-pool)".into()),
    }
}

fn loop_control() -> Result<String, String> {
    loopdev::LoopControl::open()
        .map(|_| "/dev/loop-control".to_string())
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EACCES | libc::EPERM) => format!("/dev/loop-control: {e} (needs root)"),
            _ if !Path::new("/dev/loop-control").exists() => {
                "/dev/loop-control missing (modprobe loop)".to_string()
            }
            _ => format!("/dev/loop-control: {e}"),
        })
}

fn udev() -> Result<String, String> {
    if Path::new("/run/udev/control").exists() {
        Ok("udev is running: /dev/mapper links appear".into())
    } else {
        Err("udev not running: dmctl uses /dev/dm-N nodes and skips udev sync".into())
    }
}

fn root() -> Result<String, String> {
    if nix::unistd::geteuid().is_root() {
        Ok("running as root".into())
    } else {
        Err("not root: device-mapper, loop and mount need root".into())
    }
}

fn tool(t: Tool) -> Result<String, String> {
    t.find()
        .map(|p| p.display().to_string())
        .ok_or_else(|| format!("not found (install {})", t.package()))
}

/// Run every check. Programs that only some commands need are not required.
pub fn run_checks() -> Vec<Check> {
    let mut checks = vec![
        check("root", true, root()),
        check("device-mapper", true, dm_control()),
        check("thin-pool", true, thin_pool_target()),
        check("loop", true, loop_control()),
        check("udev", false, udev()),
    ];
    for t in Tool::ALL {
        let required = matches!(t, Tool::MkfsExt4 | Tool::ThinCheck | Tool::ThinDump);
        checks.push(check(t.program(), required, tool(t)));
    }
    checks
}

/// True if every required check passed.
pub fn all_required_ok(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.verdict != Verdict::Fail)
}
