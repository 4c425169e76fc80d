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

/// A failed command: exit 1 with exactly one `dmctl: error:` line and
/// nothing else on stderr, or exit 2 (clap) whose first line is its only
/// `error:` line. Nothing on stdout. Returns the error line.
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
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("dmctl: error:") || l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{what}: one error line, got: {err}");
    let first = err.lines().next().unwrap_or_default();
    assert_eq!(first, errors[0], "{what}: the error comes first: {err}");
    if code(out) == Some(1) {
        assert!(first.starts_with("dmctl: error: "), "{what}: {err}");
        assert_eq!(err.lines().count(), 1, "{what}: only the error line: {err}");
    } else {
        assert!(first.starts_with("error: "), "{what}: {err}");
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
fn failed_command_leaves_a_private_state_root() {
    let s = Scratch::new();
    // A mutating command takes the pool lock (creating the root) before it
    // finds that the pool does not exist.
    for args in [
        &["create", "nopool/x", "--size", "1G"][..],
        &["rm", "nopool/x"][..],
        &["pool", "destroy", "nopool"][..],
    ] {
        let out = s.run(args);
        let line = error_line(&out, &format!("{args:?}"));
        assert_eq!(code(&out), Some(1), "{args:?}");
        assert!(line.contains("not found"), "{args:?}: {line}");
    }
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let root = s.root();
    if root.exists() {
        // umask 0, and still private: created parents included.
        for d in [
            s.base.path().join("a"),
            s.base.path().join("a/b"),
            root.clone(),
        ] {
            assert_eq!(mode(&d), 0o700, "{}", d.display());
        }
        for sub in ["pools", "locks"] {
            let d = root.join(sub);
            if d.exists() {
                assert_eq!(mode(&d), 0o700, "{}", d.display());
            }
        }
        if let Ok(rd) = std::fs::read_dir(root.join("locks")) {
            for e in rd.flatten() {
                assert_eq!(mode(&e.path()), 0o600, "{}", e.path().display());
            }
        }
    }
    s.assert_nothing_created("failed commands");
    if let Ok(rd) = std::fs::read_dir(root.join("pools")) {
        assert_eq!(rd.count(), 0, "pools dir not empty");
    }
    // In an existing root, dmctl's own directories are private whatever the
    // root's mode (the administrator's choice, left alone).
    let s2 = Scratch::new();
    std::fs::create_dir_all(s2.root()).unwrap();
    std::fs::set_permissions(s2.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = s2.run(&["create", "nopool/x", "--size", "1G"]);
    error_line(&out, "create in an existing root");
    assert_eq!(mode(&s2.root()), 0o755);
    for sub in ["pools", "locks"] {
        assert_eq!(mode(&s2.root().join(sub)), 0o700, "{sub}");
    }
}
