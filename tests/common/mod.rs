//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;

/// Whether this kernel can run a test that needs device-mapper.
///
/// On a host without dm the test is skipped, and says so on stderr, written
/// past libtest's output capture so it is visible in the run. Inside the test
/// guest (`DMCTL_REQUIRE_DM=1`) a missing dm is a failure, never a skip.
pub fn require_dm(test: &str) -> bool {
    if Path::new("/dev/mapper/control").exists() {
        return true;
    }
    if std::env::var_os("DMCTL_REQUIRE_DM").is_some() {
        panic!("{test}: DMCTL_REQUIRE_DM is set but /dev/mapper/control is missing");
    }
    let _ = writeln!(std::io::stderr(), "skipped: needs device-mapper: {test}");
    false
}

/// Skip the calling test (with a visible line) unless device-mapper is here.
#[macro_export]
macro_rules! require_dm {
    () => {
        if !common::require_dm(module_path!()) {
            return;
        }
    };
    ($name:expr) => {
        if !common::require_dm($name) {
            return;
        }
    };
}

/// Run a program, panic with its output if it fails; return stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Print a step of a walk-through (shown with --nocapture, e.g. by the demo).
pub fn step(msg: &str) {
    println!("==> {msg}");
}
