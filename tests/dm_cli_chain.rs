//! dmctl end to end in the guest: pools, volumes, snapshot chains.

mod common;

use common::Dmctl;
use std::fs;

#[test]
fn walkthrough_with_dmctl_three_level_chain() {
    require_dm!("walkthrough_with_dmctl_three_level_chain");
    let d = Dmctl::new();
    common::step("dmctl pool create demo --data-size 10G");
    d.ok(&["pool", "create", "demo", "--data-size", "10G"]);
    let st = d.json(&["pool", "status", "demo"]);
    assert_eq!(st["mode"], "rw");
    assert_eq!(st["transaction_id"], 0);
    assert_eq!(st["data_size"], 10u64 << 30);
    assert_eq!(st["block_size"], 65536);

    common::step("dmctl create demo/base --size 1G --fs ext4");
    d.ok(&["create", "demo/base", "--size", "1G", "--fs", "ext4"]);
    let mnt = tempfile::tempdir().unwrap();
    let m = |n: &str| {
        let p = mnt.path().join(n);
        fs::create_dir_all(&p).unwrap();
        p
    };
    let (mb, m1, m2) = (m("base"), m("l1"), m("l2"));
    d.ok(&["mount", "demo/base", mb.to_str().unwrap()]);
    fs::write(mb.join("id.txt"), "base\n").unwrap();

    common::step("dmctl snapshot demo/base demo/l1 (origin mounted)");
    d.ok(&["snapshot", "demo/base", "demo/l1"]);
    d.ok(&["mount", "demo/l1", m1.to_str().unwrap()]);
    assert_eq!(fs::read_to_string(m1.join("id.txt")).unwrap(), "base\n");
    fs::write(m1.join("id.txt"), "l1\n").unwrap();

    d.ok(&["snapshot", "demo/l1", "demo/l2"]);
    d.ok(&["mount", "demo/l2", m2.to_str().unwrap()]);
    assert_eq!(fs::read_to_string(m2.join("id.txt")).unwrap(), "l1\n");
    fs::write(m2.join("id.txt"), "l2\n").unwrap();

    for (dir, want) in [(&mb, "base\n"), (&m1, "l1\n"), (&m2, "l2\n")] {
        assert_eq!(fs::read_to_string(dir.join("id.txt")).unwrap(), want);
    }
    let info = d.json(&["info", "demo/l2"]);
    assert_eq!(info["parent"], "l1");
    assert_eq!(info["pool"], "demo");
    assert_eq!(info["active"], true);
    assert_eq!(info["fs"], "ext4");
    assert_eq!(info["initialized"], true);
    assert_eq!(info["size"], 1u64 << 30);
    assert!(info["mapped_bytes"].as_u64().unwrap() > 0);
    assert_eq!(info["mountpoint"], m2.to_str().unwrap());
    let tree = d.ok(&["ls", "demo", "--tree"]);
    common::step(&format!("dmctl ls --tree:\n{tree}"));
    assert!(tree.contains("demo/base"), "{tree}");
    assert!(tree.contains("└─ l1"), "{tree}");
    assert!(tree.contains("   └─ l2"), "{tree}");
    assert_eq!(d.json(&["pool", "status", "demo"])["transaction_id"], 3);
    common::thin_check_live(&d, "demo");

    common::step("umount, rm the chain top-down, thin_check");
    for v in ["demo/l2", "demo/l1", "demo/base"] {
        d.ok(&["umount", v]);
    }
    d.ok(&["rm", "demo/l2"]);
    assert_eq!(d.json(&["ls", "demo"]).as_array().unwrap().len(), 2);
    d.ok(&["pool", "deactivate", "demo"]);
    d.ok(&["pool", "activate", "demo"]);
    // base was active (mounted once): re-activated; its data intact.
    d.ok(&["mount", "demo/base", mb.to_str().unwrap()]);
    assert_eq!(fs::read_to_string(mb.join("id.txt")).unwrap(), "base\n");
    d.ok(&["umount", "demo/base"]);
    common::thin_check_live(&d, "demo");
    d.ok(&["pool", "destroy", "demo", "--force"]);
    assert!(d.json(&["pool", "ls"]).as_array().unwrap().is_empty());
}
