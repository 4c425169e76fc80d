//! Regressions a new user hit (issue 10), in the guest, each test named
//! after what broke. The image ones (a removed layer, importing under
//! another name) live in dm_image.rs beside the image fixtures.

mod common;

use common::Dmctl;
use std::fs;
use std::path::Path;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Regression: the parent link was the parent's name. `rm p/b` in the
/// middle of a chain left `info p/c` showing `parent b`; after an unrelated
/// `create p/b`, `ls --tree` showed c under it and `diff p/c` ran against it.
#[test]
fn removed_parent_is_not_taken_over_by_a_new_volume_of_its_name() {
    require_dm!("removed_parent_is_not_taken_over_by_a_new_volume_of_its_name");
    let d = Dmctl::new();
    let mnt = tempfile::tempdir().unwrap();
    d.ok(&["pool", "create", "pl", "--data-size", "2G"]);
    d.ok(&["create", "pl/a", "--size", "64M"]);
    let ma = mnt.path().join("a");
    fs::create_dir_all(&ma).unwrap();
    d.ok(&["mount", "pl/a", s(&ma)]);
    fs::write(ma.join("from-a"), "a\n").unwrap();
    d.ok(&["umount", "pl/a"]);
    d.ok(&["snapshot", "pl/a", "pl/b", "--activate"]);
    let mb = mnt.path().join("b");
    fs::create_dir_all(&mb).unwrap();
    d.ok(&["mount", "pl/b", s(&mb)]);
    fs::write(mb.join("from-b"), "b\n").unwrap();
    d.ok(&["umount", "pl/b"]);
    d.ok(&["snapshot", "pl/b", "pl/c"]);
    assert_eq!(d.json(&["info", "pl/c"])["parent"], "b");

    d.ok(&["rm", "pl/b"]);
    let info = d.json(&["info", "pl/c"]);
    assert!(info["parent"].is_null(), "{info}");
    assert_eq!(info["parent_removed"], "b", "{info}");
    let text = d.ok(&["info", "pl/c"]);
    assert!(text.contains("(b: removed)"), "{text}");

    // An unrelated volume takes the name.
    d.ok(&["create", "pl/b", "--size", "64M"]);
    let info = d.json(&["info", "pl/c"]);
    assert!(
        info["parent"].is_null(),
        "c is not a snapshot of the new b: {info}"
    );
    let tree = d.ok(&["ls", "pl", "--tree"]);
    common::step(&format!("ls --tree:\n{tree}"));
    let c_line = tree.lines().find(|l| l.contains("c (")).unwrap();
    assert!(c_line.starts_with("pl/c ("), "c is a root now: {tree}");
    assert!(c_line.contains("parent b removed"), "{tree}");
    let new_b = tree.lines().position(|l| l.starts_with("pl/b (")).unwrap();
    let after_b = tree.lines().nth(new_b + 1).unwrap_or("");
    assert!(
        !after_b.starts_with("└─ c (") && !after_b.starts_with("├─ c ("),
        "c drawn under the new b: {tree}"
    );

    // diff refuses, and says how to diff against what is left.
    let line = d.fails(&["diff", "pl/c", "-o", s(&mnt.path().join("x.tar"))]);
    assert!(line.contains("--nearest-ancestor"), "{line}");
    assert!(line.contains("'a'"), "names the nearest ancestor: {line}");
    assert!(
        !mnt.path().join("x.tar").exists(),
        "a refused diff left its output file"
    );
    let tar = mnt.path().join("c.tar");
    d.ok(&["diff", "pl/c", "--nearest-ancestor", "-o", s(&tar)]);
    let listing = common::run("tar", &["-tf", s(&tar)]);
    assert!(
        listing
            .lines()
            .any(|l| l.trim_start_matches("./") == "from-b"),
        "{listing}"
    );
    assert!(
        !listing
            .lines()
            .any(|l| l.trim_start_matches("./") == "from-a"),
        "{listing}"
    );

    // With the whole lineage gone there is nothing to diff against.
    d.ok(&["rm", "pl/a"]);
    let line = d.fails(&["diff", "pl/c", "--nearest-ancestor", "-o", s(&tar)]);
    assert!(line.contains("every older ancestor"), "{line}");
    common::check_invariants(&d, "pl");
}

/// Regression: `pool destroy --force` refused mounted volumes while `rm
/// --force` unmounted them. One meaning of --force: unmount, then remove.
#[test]
fn pool_destroy_force_unmounts_like_rm_force() {
    require_dm!("pool_destroy_force_unmounts_like_rm_force");
    let d = Dmctl::new();
    let mnt = tempfile::tempdir().unwrap();
    d.ok(&["pool", "create", "pf", "--data-size", "1G"]);
    d.ok(&["create", "pf/v", "--size", "64M"]);
    d.ok(&["snapshot", "pf/v", "pf/w", "--activate"]);
    let (mv, mw) = (mnt.path().join("v"), mnt.path().join("w"));
    fs::create_dir_all(&mv).unwrap();
    fs::create_dir_all(&mw).unwrap();
    d.ok(&["mount", "pf/v", s(&mv)]);
    d.ok(&["mount", "pf/w", s(&mw)]);
    let before = common::world(&d);
    let line = d.fails(&["pool", "destroy", "pf"]);
    assert!(line.contains("--force"), "{line}");
    assert_eq!(
        before,
        common::world(&d),
        "a refused destroy changed the world"
    );

    d.ok(&["pool", "destroy", "pf", "--force"]);
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(s(&mv)) && !mounts.contains(s(&mw)),
        "{mounts}"
    );
    assert!(
        !common::dm_names().iter().any(|n| n.starts_with("dmctl+pf")),
        "{:?}",
        common::dm_names()
    );
    d.fails(&["pool", "status", "pf"]);
}

/// A volume far bigger than its pool's free space is allowed (thin) but
/// warned about, as LVM warns about overcommit; a pool with
/// --max-overcommit refuses volumes past the ratio. Regression: a 100T
/// volume in a 2G pool was accepted silently.
#[test]
fn overcommit_is_warned_about_and_refused_past_the_limit() {
    require_dm!("overcommit_is_warned_about_and_refused_past_the_limit");
    let d = Dmctl::new();
    d.ok(&["pool", "create", "oc", "--data-size", "1G"]);
    let out = d.run(&["create", "oc/small", "--size", "64M"]);
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = d.run(&["create", "oc/huge", "--size", "100T", "--fs", "none"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.starts_with(
            "dmctl: warning: pool oc: a volume of 100T is more than the pool's free data space"
        ),
        "{err}"
    );
    d.ok(&["pool", "set", "oc", "--max-overcommit", "2"]);
    let before = common::world(&d);
    let line = d.fails(&["create", "oc/more", "--size", "1G"]);
    assert!(line.contains("more than 2x"), "{line}");
    assert_eq!(before, common::world(&d));
    let st = d.json(&["pool", "status", "oc"]);
    assert_eq!(st["max_overcommit"], 2.0);
    assert_eq!(st["provisioned"], (100u64 << 40) + (64 << 20));
    d.ok(&["rm", "oc/huge"]);
    d.ok(&["create", "oc/more", "--size", "1G"]);
    d.ok(&["pool", "set", "oc", "--max-overcommit", "0"]);
    assert!(d.json(&["pool", "status", "oc"])["max_overcommit"].is_null());
    common::check_invariants(&d, "oc");
}
