//! The command line on bad input, on any host (no device-mapper needed):
//! one clear error line, exit 1 (runtime) or 2 (usage), and nothing created
//! outside the state root, nothing under its pools directory.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch directory with a state root (not created up front) and a
/// working directory for dmctl, so stray files would show up in it.
struct Scratch {
    base: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            base: tempfile::Builder::new()
                .prefix("dmctl-usage-")
                .tempdir()
                .unwrap(),
        }
    }

    /// The state root: two levels down, so `pools/../../x` stays inside
    /// `base` where a stray file would be seen.
    fn root(&self) -> PathBuf {
        self.base.path().join("a/b/root")
    }

    fn cwd(&self) -> PathBuf {
        let p = self.base.path().join("cwd");
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// `dmctl --root ROOT ARGS...` from the scratch working directory, with
    /// `DMCTL_ROOT` pointing into the scratch directory too and umask 0, so
    /// modes are dmctl's own.
    fn run(&self, args: &[&str]) -> Output {
        self.run_raw(&[&["--root", self.root().to_str().unwrap()], args].concat())
    }

    fn run_raw(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("umask 000; exec \"$0\" \"$@\"")
            .arg(env!("CARGO_BIN_EXE_dmctl"))
            .args(args)
            .current_dir(self.cwd())
            .env("DMCTL_ROOT", self.base.path().join("envroot"));
        cmd.output().expect("run dmctl")
    }

    /// Every path under the scratch directory, relative to it.
    fn tree(&self) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                out.push(p.strip_prefix(base).unwrap().display().to_string());
                if p.is_dir() && !p.is_symlink() {
                    walk(&p, base, out);
                }
            }
        }
        let mut out = vec![];
        walk(self.base.path(), self.base.path(), &mut out);
        out.sort();
        out
    }

    /// Nothing exists but the working directory and, possibly, the state
    /// root's own directories and lock files; its pools directory is empty.
    fn assert_nothing_created(&self, what: &str) {
        let allowed = |p: &str| {
            matches!(
                p,
                "cwd" | "a" | "a/b" | "a/b/root" | "a/b/root/pools" | "a/b/root/locks"
            ) || (p.starts_with("a/b/root/locks/") && p.ends_with(".lock"))
        };
        let tree = self.tree();
        let stray: Vec<&String> = tree.iter().filter(|p| !allowed(p)).collect();
        assert!(stray.is_empty(), "{what}: created {stray:?}");
    }
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A failed command: exit 1 (runtime) or 2 (usage), its first stderr line
/// `dmctl: error: ...` and the only error line; a runtime error has no
/// other line, a usage error may be followed by hints (clap's usage and
/// `--help` tip). Nothing on stdout. Returns the error line.
fn error_line(out: &Output, what: &str) -> String {
    let err = stderr(out);
    assert!(
        matches!(code(out), Some(1) | Some(2)),
        "{what}: exit {:?}, stderr: {err}",
        out.status
    );
    assert!(
        out.stdout.is_empty(),
        "{what}: stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(errors.len(), 1, "{what}: one error line, got: {err}");
    let first = err.lines().next().unwrap_or_default();
    assert_eq!(first, errors[0], "{what}: the error comes first: {err}");
    assert!(first.starts_with("dmctl: error: "), "{what}: {err}");
    if code(out) == Some(1) {
        assert_eq!(err.lines().count(), 1, "{what}: only the error line: {err}");
    }
    first.to_string()
}

const LONG_NAME: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn bad_names() -> Vec<&'static str> {
    assert_eq!(LONG_NAME.len(), 65);
    vec![
        "..",
        ".",
        "a/b",
        "-a",
        "",
        LONG_NAME,
        "a b",
        "é",
        "a\nb",
        "../../etc",
    ]
}

#[test]
fn version_and_help() {
    let s = Scratch::new();
    let out = s.run_raw(&["--version"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("dmctl {}", env!("CARGO_PKG_VERSION"))
    );
    let out = s.run_raw(&["--help"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let help = String::from_utf8_lossy(&out.stdout);
    for cmd in [
        "doctor",
        "pool",
        "create",
        "snapshot",
        "activate",
        "deactivate",
        "mount",
        "umount",
        "rm",
        "resize",
        "ls",
        "info",
    ] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(cmd)),
            "--help lacks {cmd}: {help}"
        );
    }
    assert!(help.contains("--root"), "{help}");
    let out = s.run(&["pool", "create", "--help"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let help = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--data-size",
        "--meta-dev",
        "--block-size",
        "--error-if-no-space",
    ] {
        assert!(help.contains(opt), "pool create --help lacks {opt}: {help}");
    }
    s.assert_nothing_created("--version/--help");
    assert!(!s.root().exists(), "--help created the state root");
}

#[test]
fn missing_subcommand_is_a_usage_error() {
    let s = Scratch::new();
    for args in [&[][..], &["pool"][..]] {
        let out = s.run(args);
        assert_eq!(code(&out), Some(2), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("Usage:"), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    let out = s.run(&["pool", "frobnicate", "p"]);
    let line = error_line(&out, "pool frobnicate");
    assert_eq!(code(&out), Some(2));
    assert!(line.contains("frobnicate"), "{line}");
    s.assert_nothing_created("missing subcommand");
}

#[test]
fn bad_names_are_refused_and_create_nothing() {
    for name in bad_names() {
        let s = Scratch::new();
        let cases: Vec<Vec<String>> = vec![
            vec!["pool".into(), "create".into(), name.into()],
            vec![
                "create".into(),
                format!("{name}/x"),
                "--size".into(),
                "1G".into(),
            ],
            vec![
                "create".into(),
                format!("pool/{name}"),
                "--size".into(),
                "1G".into(),
            ],
            vec!["snapshot".into(), "pool/x".into(), format!("pool/{name}")],
            vec![
                "pool".into(),
                "destroy".into(),
                name.into(),
                "--force".into(),
            ],
        ];
        for args in cases {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let what = format!("dmctl {args:?}");
            let out = s.run(&args);
            let line = error_line(&out, &what);
            assert!(
                line.contains("invalid") || line.contains("unexpected argument"),
                "{what}: unclear error: {line}"
            );
            if name.contains('\n') {
                // Shown escaped, so the message stays on its line.
                assert!(line.contains("a\\nb"), "{what}: {line}");
            }
            if code(&out) == Some(1) && !name.is_empty() && name != LONG_NAME {
                assert!(
                    line.contains(&name.escape_debug().to_string()),
                    "{what}: {line}"
                );
            }
            s.assert_nothing_created(&what);
        }
    }
}

#[test]
fn bad_sizes_are_usage_errors_naming_the_value() {
    let s = Scratch::new();
    for value in [
        "0",
        "-1",
        "10X",
        "1.5",
        "",
        "99999999999999T",
        "1G1",
        "1 G",
        "G",
    ] {
        let cases: Vec<Vec<String>> = vec![
            vec!["create".into(), "p/x".into(), format!("--size={value}")],
            vec!["resize".into(), "p/x".into(), format!("--size={value}")],
            vec![
                "snapshot".into(),
                "p/x".into(),
                "p/y".into(),
                format!("--size={value}"),
            ],
            vec![
                "pool".into(),
                "create".into(),
                "p".into(),
                format!("--data-size={value}"),
            ],
            vec![
                "pool".into(),
                "create".into(),
                "p".into(),
                format!("--meta-size={value}"),
            ],
            vec![
                "pool".into(),
                "create".into(),
                "p".into(),
                format!("--block-size={value}"),
            ],
            vec![
                "pool".into(),
                "extend".into(),
                "p".into(),
                format!("--data-size={value}"),
            ],
        ];
        for args in cases {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let what = format!("dmctl {args:?}");
            let out = s.run(&args);
            let line = error_line(&out, &what);
            assert_eq!(code(&out), Some(2), "{what}: {line}");
            assert!(
                line.contains(&format!("invalid value '{value}'")),
                "{what}: the value is not named: {line}"
            );
            assert!(line.contains("size"), "{what}: {line}");
            s.assert_nothing_created(&what);
        }
    }
    // Written as a separate argument, a negative size is refused too.
    let out = s.run(&["create", "p/x", "--size", "-1"]);
    let line = error_line(&out, "--size -1");
    assert_eq!(code(&out), Some(2));
    assert!(line.contains("'-1'"), "{line}");
    s.assert_nothing_created("--size -1");
}

#[test]
fn info_of_a_missing_pool_is_not_found() {
    let s = Scratch::new();
    let out = s.run(&["info", "nopool/x"]);
    let line = error_line(&out, "info nopool/x");
    assert_eq!(code(&out), Some(1));
    assert!(line.contains("not found"), "{line}");
    assert!(line.contains("nopool"), "{line}");
    // A read-only command creates no state root.
    assert!(!s.root().exists(), "info created {}", s.root().display());
    for args in [&["pool", "status", "nopool"][..], &["ls", "nopool"][..]] {
        let out = s.run(args);
        let line = error_line(&out, &format!("{args:?}"));
        assert_eq!(code(&out), Some(1));
        assert!(line.contains("not found"), "{args:?}: {line}");
    }
    s.assert_nothing_created("info nopool/x");
}

#[test]
fn commands_on_a_missing_pool_create_nothing() {
    let s = Scratch::new();
    // Mutating commands too: no state root, no lock file for a pool that
    // is not there (regression: `locks/NAME.lock` and the root were made).
    for args in [
        &["create", "nopool/x", "--size", "1G"][..],
        &["rm", "nopool/x"][..],
        &["rm", "nopool/x", "--force"][..],
        &["pool", "destroy", "nopool"][..],
        &["pool", "set", "nopool", "--min-free", "5"][..],
        &["pool", "monitor", "nopool", "--once"][..],
        // Regression: said "monitoring pool nopool" before finding it missing.
        &["pool", "monitor", "nopool"][..],
        &["image", "ls", "nopool"][..],
        &["image", "rm", "nopool", "x"][..],
        &["check", "nopool"][..],
    ] {
        let out = s.run(args);
        let line = error_line(&out, &format!("{args:?}"));
        assert_eq!(code(&out), Some(1), "{args:?}");
        assert!(line.contains("not found"), "{args:?}: {line}");
        assert!(
            !s.root().exists(),
            "{args:?} created {}",
            s.root().display()
        );
    }
    s.assert_nothing_created("commands on a missing pool");
}

#[test]
fn failed_pool_create_leaves_a_private_state_root() {
    // The one command that makes the state root; on this host it fails
    // (no device-mapper) and rolls back, leaving dmctl's own directories
    // private whatever the umask (0 here) and the root's mode.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let s = Scratch::new();
    std::fs::create_dir_all(s.root()).unwrap();
    std::fs::set_permissions(s.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = s.run(&["pool", "create", "p", "--data-size", "64M"]);
    if code(&out) == Some(0) {
        eprintln!("skipped: needs a host without device-mapper: failed_pool_create_leaves_a_private_state_root");
        return;
    }
    error_line(&out, "pool create without dm");
    assert_eq!(mode(&s.root()), 0o755);
    for sub in ["pools", "locks"] {
        let d = s.root().join(sub);
        if d.exists() {
            assert_eq!(mode(&d), 0o700, "{sub}");
        }
    }
    if let Ok(rd) = std::fs::read_dir(s.root().join("locks")) {
        for e in rd.flatten() {
            assert_eq!(mode(&e.path()), 0o600, "{}", e.path().display());
        }
    }
    let pools: Vec<_> = std::fs::read_dir(s.root().join("pools"))
        .map(|r| r.flatten().collect())
        .unwrap_or_default();
    assert!(pools.is_empty(), "a failed pool create left {pools:?}");
}

#[test]
fn invalid_names_are_usage_errors_everywhere() {
    // Regression: `pool create ../x` exited 1 (the library refused it) and
    // `create ../x/y` exited 2 (clap did): one convention, exit 2.
    let s = Scratch::new();
    for args in [
        &["pool", "create", "../x"][..],
        &["create", "../x/y", "--size", "1G"][..],
        &["pool", "status", "../x"][..],
        &["ls", "../x"][..],
        &["image", "ls", "a/b"][..],
        &["image", "provision", "p", "img", "../job"][..],
        &["check", "a b"][..],
    ] {
        let out = s.run(args);
        let line = error_line(&out, &format!("{args:?}"));
        assert_eq!(code(&out), Some(2), "{args:?}: {line}");
        assert!(line.contains("invalid"), "{args:?}: {line}");
    }
    s.assert_nothing_created("invalid names");
}

#[test]
fn os_errors_are_shown_once() {
    // Regression: `.../pools: Not a directory (os error 20): Not a
    // directory (os error 20)`.
    let s = Scratch::new();
    let file = s.base.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let out = s.run_raw(&["--root", file.to_str().unwrap(), "pool", "ls"]);
    let line = error_line(&out, "pool ls in a file");
    assert_eq!(line.matches("os error").count(), 1, "{line}");
    let out = s.run_raw(&["--root", file.to_str().unwrap(), "info", "p/x"]);
    let line = error_line(&out, "info in a file");
    assert!(line.matches("os error").count() <= 1, "{line}");
}

#[test]
fn a_missing_state_root_is_said_not_listed_as_empty() {
    let s = Scratch::new();
    for args in [&["ls"][..], &["pool", "ls"][..]] {
        let out = s.run(args);
        let line = error_line(&out, &format!("{args:?}"));
        assert_eq!(code(&out), Some(1));
        assert!(line.contains("does not exist"), "{args:?}: {line}");
    }
    // At boot on a machine without pools, activating them all is a no-op.
    let out = s.run(&["pool", "activate", "--all"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    s.assert_nothing_created("missing root");
    assert!(!s.root().exists());
}

#[test]
fn a_full_or_closed_stdout_is_an_error_line_not_a_panic() {
    let s = Scratch::new();
    // Regression: `dmctl doctor > /dev/full` panicked (exit 101, backtrace).
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dmctl"))
        .args(["doctor"])
        .stdout(full)
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(code(&out), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("dmctl: error: stdout: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // A reader that went away: a quiet exit, as coreutils.
    let mut child = Command::new(env!("CARGO_BIN_EXE_dmctl"))
        .args(["completions", "bash"])
        .current_dir(s.cwd())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), Some(141), "{}", stderr(&out));
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
}

#[test]
fn too_small_data_size_names_the_minimum() {
    // Regression: `--data-size 1K` said "data size 0 is too small".
    let s = Scratch::new();
    let out = s.run(&["pool", "create", "p", "--data-size", "1K"]);
    let line = error_line(&out, "pool create --data-size 1K");
    assert!(line.contains("data size 1K is too small"), "{line}");
    assert!(line.contains("minimum is 1M"), "{line}");
    s.assert_nothing_created("too small");
}

#[test]
fn every_argument_has_help_and_every_command_an_example() {
    let s = Scratch::new();
    let out = s.run(&["--help"]);
    let top = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut commands: Vec<Vec<String>> = vec![];
    let list = |text: &str| -> Vec<String> {
        text.split("Commands:")
            .nth(1)
            .unwrap_or_default()
            .split("\n\n")
            .next()
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .filter(|c| c != "help")
            .collect()
    };
    for c in list(&top) {
        let out = s.run(&[&c, "--help"]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let subs = list(&text);
        if subs.is_empty() {
            commands.push(vec![c.clone()]);
        }
        for sub in subs {
            commands.push(vec![c.clone(), sub]);
        }
    }
    assert!(commands.len() > 30, "{commands:?}");
    for cmd in commands {
        let args: Vec<&str> = cmd.iter().map(String::as_str).chain(["--help"]).collect();
        let out = s.run(&args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(code(&out), Some(0), "{cmd:?}");
        assert!(
            text.contains("Example:\n  dmctl "),
            "{cmd:?} has no example:\n{text}"
        );
        // Every argument and option line is followed by a description
        // (clap leaves an undocumented one bare on its line).
        for block in ["Arguments:", "Options:"] {
            let Some(part) = text.split(block).nth(1) else {
                continue;
            };
            let part = part.split("\n\n").next().unwrap_or_default();
            let lines: Vec<&str> = part.lines().map(str::trim).collect();
            let is_item = |l: &str| l.starts_with('-') || l.starts_with('<');
            for (i, l) in lines.iter().enumerate() {
                if is_item(l) {
                    // On the same line, or on the next one (long help).
                    let same_line = l.split("  ").filter(|x| !x.trim().is_empty()).count() >= 2;
                    let next_line = lines
                        .get(i + 1)
                        .is_some_and(|n| !n.is_empty() && !is_item(n));
                    assert!(same_line || next_line, "{cmd:?}: '{l}' has no description");
                }
            }
        }
    }
}

#[test]
fn doctor_as_a_user_says_root_is_needed_not_modprobe() {
    // Regression: as a non-root user doctor suggested `modprobe loop` for
    // what was a permission error.
    let setpriv = Command::new("setpriv").arg("--version").output();
    if !nix::unistd::geteuid().is_root() || !setpriv.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "skipped: needs root and setpriv: doctor_as_a_user_says_root_is_needed_not_modprobe"
        );
        return;
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_dmctl"))
        .arg("doctor")
        .current_dir("/")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(code(&out), Some(1), "{text}{}", stderr(&out));
    let line = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no {name} line: {text}"))
            .to_string()
    };
    assert!(line("root").contains("not root"), "{text}");
    let loop_line = line("loop");
    if std::path::Path::new("/dev/loop-control").exists() {
        assert!(loop_line.contains("needs root"), "{loop_line}");
        assert!(!loop_line.contains("modprobe"), "{loop_line}");
    }
}
