//! The snapshotter's bookkeeping on the host, against the fake kernel: the
//! contract's refusals change nothing, labels update as containerd's suite
//! expects, removal order and sweeps, a retried commit. Making and
//! mounting volumes for real is tested in the guest (tests/dm_containerd.rs,
//! with containerd's conformance suite).

use super::{Settings, Snapshotter, REF_LABEL};
use crate::error::Error;
use crate::ops::tests::{fixture, Fixture, POOL};
use crate::store::model::{
    Filesystem, SnapshotKind, SnapshotRecord, SnapshotSpare, SnapshotTable, Stamp,
};
use std::collections::BTreeMap;

fn snapshotter() -> Snapshotter {
    Snapshotter::new(Settings {
        pool: POOL.into(),
        fs: Filesystem::Ext4,
        size: 64 << 20,
        spares: 2,
    })
}

fn record(key: &str, id: u64, kind: SnapshotKind, parent: Option<&str>) -> SnapshotRecord {
    let t = Stamp { secs: 1, nanos: 5 };
    SnapshotRecord {
        key: key.into(),
        id,
        kind,
        parent: parent.map(Into::into),
        labels: BTreeMap::new(),
        created: t,
        updated: t,
        volume: crate::names::snapshot_volume_name(id),
        owns_volume: true,
        creating: false,
        usage: None,
        committed_from: None,
    }
}

/// A pool with committed `base` (ctr.1), active `a` on it (ctr.2) and a
/// view `v` (ctr.3); their volumes exist, inactive.
fn with_table(f: &Fixture) -> SnapshotTable {
    let t = SnapshotTable {
        next_id: 4,
        snapshots: vec![
            record("base", 1, SnapshotKind::Committed, None),
            record("a", 2, SnapshotKind::Active, Some("base")),
            record("v", 3, SnapshotKind::View, Some("base")),
        ],
        spares: vec![],
    };
    for r in &t.snapshots {
        f.add_volume(&r.volume, r.id as u32, false);
    }
    f.ctx.store.save_snapshots(POOL, &t).unwrap();
    t
}

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn refused_prepares_change_nothing() {
    let f = fixture();
    let before = with_table(&f);
    let s = snapshotter();
    let cases = [
        ("a", "base", "exists"),
        ("new", "missing", "not found"),
        ("new", "a", "not committed"),
        ("", "", "empty"),
    ];
    for (key, parent, why) in cases {
        let r = s.prepare(&f.ctx, SnapshotKind::Active, key, parent, BTreeMap::new());
        let e = r.expect_err(why);
        assert!(
            matches!(e, Error::Exists(_) | Error::NotFound(_) | Error::Invalid(_)),
            "{why}: {e:?}"
        );
    }
    let bad_size = labels(&[(super::SIZE_LABEL, "lots")]);
    assert!(matches!(
        s.prepare(&f.ctx, SnapshotKind::Active, "new", "base", bad_size),
        Err(Error::Invalid(_))
    ));
    assert_eq!(f.ctx.store.load_snapshots(POOL).unwrap(), before);
    assert_eq!(f.kernel_ids(), vec![1, 2, 3]);
}

#[test]
fn labels_update_as_containerds_suite_expects() {
    let f = fixture();
    with_table(&f);
    let s = snapshotter();
    let all = labels(&[("l1", "v1"), ("l2", "v2"), ("l3", "v3")]);
    let r = s.update(&f.ctx, "a", all, &[]).unwrap();
    assert_eq!(r.labels.len(), 3);
    assert_eq!(
        r.created,
        Stamp { secs: 1, nanos: 5 },
        "created never changes"
    );
    assert_ne!(r.updated, r.created);
    // Paths name labels one by one: l1 set, l2 (absent from the given
    // labels) removed, l4 (not in the mask) ignored.
    let given = labels(&[("l1", "updated"), ("l4", "v4")]);
    let paths = ["labels.l1".to_string(), "labels.l2".to_string()];
    let r = s.update(&f.ctx, "a", given, &paths).unwrap();
    assert_eq!(r.labels, labels(&[("l1", "updated"), ("l3", "v3")]));
    let r = s
        .update(
            &f.ctx,
            "a",
            labels(&[("l4", "v4")]),
            &["labels".to_string()],
        )
        .unwrap();
    assert_eq!(r.labels, labels(&[("l4", "v4")]));
    let e = s
        .update(&f.ctx, "a", BTreeMap::new(), &["parent".to_string()])
        .unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");
    assert_eq!(s.stat(&f.ctx, "a").unwrap().labels, labels(&[("l4", "v4")]));
}

#[test]
fn a_parent_with_children_is_not_removed_and_a_leaf_goes_record_first() {
    let f = fixture();
    let before = with_table(&f);
    let s = snapshotter();
    let e = s.remove(&f.ctx, "base").unwrap_err();
    assert!(matches!(e, Error::Busy(_)), "{e:?}");
    assert!(
        e.to_string().contains("remove"),
        "containerd's suite looks for it: {e}"
    );
    assert_eq!(f.ctx.store.load_snapshots(POOL).unwrap(), before);
    s.remove(&f.ctx, "v").unwrap();
    s.remove(&f.ctx, "a").unwrap();
    s.remove(&f.ctx, "base").unwrap();
    assert!(f
        .ctx
        .store
        .load_snapshots(POOL)
        .unwrap()
        .snapshots
        .is_empty());
    assert!(matches!(s.remove(&f.ctx, "a"), Err(Error::NotFound(_))));
    // The fake kernel has no device nodes to discard through, so the
    // volumes could not go: like volumes still in use, they stay for the
    // sweep, and the removals succeeded for containerd.
    assert_eq!(f.kernel_ids(), vec![1, 2, 3]);
    let swept = s.sweep(&f.ctx, false).unwrap();
    assert_eq!(swept.kept, ["ctr.1", "ctr.2", "ctr.3"]);
}

#[test]
fn commit_needs_an_active_snapshot_and_a_free_name() {
    let f = fixture();
    with_table(&f);
    let s = snapshotter();
    assert!(matches!(
        s.commit(&f.ctx, "c", "v", BTreeMap::new()),
        Err(Error::Busy(_))
    ));
    assert!(matches!(
        s.commit(&f.ctx, "base", "a", BTreeMap::new()),
        Err(Error::Exists(_))
    ));
    assert!(matches!(
        s.commit(&f.ctx, "c", "nope", BTreeMap::new()),
        Err(Error::NotFound(_))
    ));
    s.commit(&f.ctx, "c", "a", labels(&[("x", "1")])).unwrap();
    let c = s.stat(&f.ctx, "c").unwrap();
    assert_eq!(
        (c.kind, c.parent.as_deref(), c.volume.as_str()),
        (SnapshotKind::Committed, Some("base"), "ctr.2")
    );
    assert_eq!(c.created, c.updated);
    assert!(matches!(s.stat(&f.ctx, "a"), Err(Error::NotFound(_))));
}

/// Regression guard for a crash between dmctl's commit and containerd's:
/// containerd asks again under a fresh name (its keys carry a counter).
#[test]
fn a_commit_retried_under_a_new_name_finds_the_snapshot_committed() {
    let f = fixture();
    with_table(&f);
    let s = snapshotter();
    s.commit(&f.ctx, "default/5/c", "a", BTreeMap::new())
        .unwrap();
    s.commit(&f.ctx, "default/6/c", "a", labels(&[("k", "v")]))
        .unwrap();
    let c = s.stat(&f.ctx, "default/6/c").unwrap();
    assert_eq!((c.volume.as_str(), c.labels.len()), ("ctr.2", 1));
    assert!(s.stat(&f.ctx, "default/5/c").is_err());
    assert_eq!(f.ctx.store.load_snapshots(POOL).unwrap().snapshots.len(), 3);
}

#[test]
fn start_up_sweep_drops_interrupted_prepares_and_orphaned_volumes() {
    let f = fixture();
    let mut t = with_table(&f);
    // An interrupted prepare (record creating, volume made) and an orphan
    // (its record removed, the volume left).
    let mut creating = record("half", 4, SnapshotKind::Active, Some("base"));
    creating.creating = true;
    t.snapshots.push(creating);
    t.next_id = 6;
    f.add_volume("ctr.4", 4, false);
    f.add_volume("ctr.5", 5, false);
    f.add_volume("user-volume", 9, false);
    f.ctx.store.save_snapshots(POOL, &t).unwrap();
    let s = snapshotter();
    // Hidden from containerd while creating.
    assert!(matches!(s.stat(&f.ctx, "half"), Err(Error::NotFound(_))));
    assert_eq!(s.list(&f.ctx, &Default::default()).unwrap().len(), 3);
    // Cleanup leaves a record being made alone; a start drops it. (The
    // fake kernel cannot discard through a device node, so the volumes
    // are reported kept for a later sweep rather than removed; which
    // volumes are swept is what this checks.)
    let swept = s.sweep(&f.ctx, false).unwrap();
    assert_eq!(swept.kept, ["ctr.5"]);
    let swept = s.sweep(&f.ctx, true).unwrap();
    assert_eq!(swept.kept, ["ctr.4", "ctr.5"]);
    let left = f.ctx.store.load_snapshots(POOL).unwrap();
    assert!(left.snapshots.iter().all(|r| r.key != "half"));
    assert!(swept.removed.is_empty() && !swept.kept.contains(&"user-volume".to_string()));
    // Numbers are not handed out again.
    let mut t = f.ctx.store.load_snapshots(POOL).unwrap();
    assert_eq!(super::next_id(&mut t), 6);
}

#[test]
fn list_applies_containerds_filters() {
    let f = fixture();
    let mut t = with_table(&f);
    t.snapshots[0].labels = labels(&[(REF_LABEL, "sha256:aa")]);
    f.ctx.store.save_snapshots(POOL, &t).unwrap();
    let s = snapshotter();
    let q = |texts: &[&str]| {
        let texts: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
        let filters = super::Filters::parse(&texts).unwrap();
        let mut keys: Vec<String> = s
            .list(&f.ctx, &filters)
            .unwrap()
            .into_iter()
            .map(|r| r.key)
            .collect();
        keys.sort();
        keys
    };
    assert_eq!(q(&[]), ["a", "base", "v"]);
    assert_eq!(q(&["parent==base"]), ["a", "v"]);
    assert_eq!(
        q(&[r#"labels."containerd.io/snapshot.ref"==sha256:aa"#]),
        ["base"]
    );
    assert_eq!(q(&["kind==view", "kind==committed"]), ["base", "v"]);
}

/// A Prepare on a parent with a ready spare takes it: one table write, no
/// kernel message; the spare's volume is the snapshot's, and spares are
/// kept by sweeps and go with their parent.
#[test]
fn a_prepare_takes_a_ready_spare_without_kernel_work() {
    let f = fixture();
    let mut t = with_table(&f);
    f.add_volume("ctr.4", 4, true);
    f.add_volume("ctr.5", 5, false);
    t.spares = vec![
        SnapshotSpare {
            parent: "base".into(),
            id: 4,
            volume: "ctr.4".into(),
            size: 64 << 20,
            creating: false,
        },
        SnapshotSpare {
            parent: "base".into(),
            id: 5,
            volume: "ctr.5".into(),
            size: 64 << 20,
            creating: true,
        },
    ];
    t.next_id = 6;
    f.ctx.store.save_snapshots(POOL, &t).unwrap();
    let s = snapshotter();
    assert!(s.is_hot_prepare(SnapshotKind::Active, "base", &BTreeMap::new()));
    let unpack = labels(&[(REF_LABEL, "sha256:aa")]);
    assert!(!s.is_hot_prepare(SnapshotKind::Active, "base", &unpack));
    let calls = f.dm.kernel().calls.len();
    let mounts = s
        .prepare(&f.ctx, SnapshotKind::Active, "job", "base", BTreeMap::new())
        .unwrap();
    assert_eq!(mounts.len(), 1);
    let messages: Vec<String> = f.dm.kernel().calls[calls..]
        .iter()
        .filter(|c| c.starts_with("message"))
        .cloned()
        .collect();
    assert!(
        messages.is_empty(),
        "no thin message for a warm prepare: {messages:?}"
    );
    let job = s.stat(&f.ctx, "job").unwrap();
    assert_eq!((job.volume.as_str(), job.creating), ("ctr.4", false));
    let t = f.ctx.store.load_snapshots(POOL).unwrap();
    assert_eq!(
        t.spares.len(),
        1,
        "the one being made stays: {:?}",
        t.spares
    );
    // Sweeps keep spares' volumes; a start drops the unfinished one.
    assert!(s.sweep(&f.ctx, false).unwrap().kept.is_empty());
    assert_eq!(s.sweep(&f.ctx, true).unwrap().kept, ["ctr.5"]);
}

/// Regression: the adopted record was made in the table but not written
/// (the AlreadyExists answer left the table unsaved), so containerd's
/// lookup that follows found nothing.
#[test]
fn an_adopted_layer_is_recorded_before_containerd_looks_for_it() {
    use crate::image::oci::Digest;
    use crate::ops::image::LayerRecord;
    let f = fixture();
    with_table(&f);
    let chain = format!("sha256:{}", "ab".repeat(32));
    let digest: Digest = chain.parse().unwrap();
    let volume = crate::ops::image::layer_volume_name(&digest);
    f.add_volume(&volume, 7, false);
    let layer = LayerRecord {
        chain_id: digest.clone(),
        diff_id: digest.clone(),
        parent: None,
        volume: volume.clone(),
        size: 1,
        created: 0,
    };
    let file = f.ctx.store.layer_file(POOL, digest.hex()).unwrap();
    crate::fsutil::create_private_dir(file.parent().unwrap()).unwrap();
    crate::fsutil::write_json_atomic(&file, &layer).unwrap();
    let s = snapshotter();
    let key = format!("default/1/extract-1 {chain}");
    let e = s
        .prepare(
            &f.ctx,
            SnapshotKind::Active,
            &key,
            "",
            labels(&[(REF_LABEL, &chain)]),
        )
        .unwrap_err();
    assert!(matches!(e, Error::Exists(_)), "{e:?}");
    // containerd's unpacker's lookup.
    let filter = format!(r#"labels."containerd.io/snapshot.ref"=={chain},parent=="""#);
    let found = s
        .list(&f.ctx, &super::Filters::parse(&[filter]).unwrap())
        .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        (found[0].volume.as_str(), found[0].owns_volume),
        (volume.as_str(), false)
    );
    assert_eq!(found[0].kind, SnapshotKind::Committed);
    // Asked again (another namespace), the same record answers.
    let again = s.prepare(
        &f.ctx,
        SnapshotKind::Active,
        "default/2/x",
        "",
        labels(&[(REF_LABEL, &chain)]),
    );
    assert!(matches!(again, Err(Error::Exists(_))));
    assert_eq!(s.list(&f.ctx, &Default::default()).unwrap().len(), 4);
}
