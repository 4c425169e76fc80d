//! The transaction logic on the host, against the fake device-mapper
//! (`kernel::fake`): the snapshot protocol, its failure and undo paths, and
//! recovery from every state a crash can leave a transaction in. The guest
//! tier runs the same operations against the real kernel (tests/dm_*.rs,
//! the crash points of tests/dm_crash.rs).

use super::{txn, volume, Ctx};
use crate::error::Error;
use crate::kernel::fake::FakeDm;
use crate::names::{self, VolumeRef};
use crate::store::model::{now, Backing, PoolRecord, PoolState, Transaction, TxnOp, VolumeRecord};
use crate::store::Store;
use nix::errno::Errno;

pub(crate) const POOL: &str = "p";
const POOL_DM: &str = "dmctl+p";

pub(crate) struct Fixture {
    _dir: tempfile::TempDir,
    pub(crate) ctx: Ctx,
    pub(crate) dm: FakeDm,
}

/// A ready pool `p`, active in the fake kernel, with no volumes.
pub(crate) fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::new(dir.path().join("root"));
    let uuid = names::new_pool_uuid();
    let rec = PoolRecord {
        name: POOL.into(),
        uuid: uuid.clone(),
        state: PoolState::Ready,
        data: Backing::File {
            path: dir.path().join("data.img"),
        },
        meta: Backing::File {
            path: dir.path().join("meta.img"),
        },
        data_size: 1 << 30,
        meta_size: 16 << 20,
        block_size: 64 << 10,
        low_water_mark: 64 << 20,
        zeroing: false,
        error_if_no_space: false,
        transaction_id: 0,
        next_device_id: 0,
        min_free_percent: 10,
        max_overcommit: None,
        created: now(),
    };
    store.init().unwrap();
    store.save_pool(&rec).unwrap();
    let dm = FakeDm::default();
    dm.kernel().add_pool(POOL_DM, &names::pool_dm_uuid(&uuid));
    Fixture {
        ctx: Ctx::with_dm(store, Box::new(dm.clone())),
        _dir: dir,
        dm,
    }
}

impl Fixture {
    fn pool(&self) -> PoolRecord {
        self.ctx.store.load_pool(POOL).unwrap()
    }

    /// A committed volume `name` with thin id `id`, active (a dm device) if
    /// asked, as `create` leaves one.
    pub(crate) fn add_volume(&self, name: &str, id: u32, active: bool) -> VolumeRecord {
        let mut pool = self.pool();
        let v = VolumeRecord {
            name: name.into(),
            device_id: id,
            size: 64 << 20,
            transaction_id: pool.transaction_id + 1,
            initialized: true,
            parent: None,
            parent_device_id: None,
            parent_transaction_id: None,
            ancestors: vec![],
            fs: None,
            created: now(),
            active,
            read_only: false,
            mountpoint: None,
        };
        {
            let mut k = self.dm.kernel();
            let p = k.pools.get_mut(POOL_DM).unwrap();
            p.thin_ids.insert(id);
            p.transaction_id += 1;
            if active {
                let uuid = names::thin_dm_uuid(&pool.uuid, id);
                k.add_device(&names::thin_dm_name(POOL, name), &uuid, vec![]);
            }
        }
        pool.transaction_id += 1;
        pool.next_device_id = id + 1;
        self.ctx.store.save_pool(&pool).unwrap();
        self.ctx.store.save_volume(POOL, &v).unwrap();
        v
    }

    /// `dmctl snapshot p/a p/b` (not activated).
    fn snapshot_a_as_b(&self) -> crate::error::Result<VolumeRecord> {
        volume::snapshot(
            &self.ctx,
            &Fixture::vref("a"),
            &Fixture::vref("b"),
            None,
            false,
        )
    }

    fn kernel_tid(&self) -> u64 {
        self.dm.kernel().pools[POOL_DM].transaction_id
    }

    pub(crate) fn kernel_ids(&self) -> Vec<u32> {
        self.dm.kernel().pools[POOL_DM]
            .thin_ids
            .iter()
            .copied()
            .collect()
    }

    fn vref(name: &str) -> VolumeRef {
        VolumeRef::new(POOL, name).unwrap()
    }

    /// Recovery as every mutating command runs it first.
    fn recover(&self) -> Option<String> {
        let mut pool = self.pool();
        txn::recover(&self.ctx, &mut pool).unwrap()
    }
}

#[test]
fn snapshot_of_an_active_origin_suspends_sends_create_snap_once_and_resumes() {
    let f = fixture();
    f.add_volume("a", 0, true);
    let v = f.snapshot_a_as_b().unwrap();
    assert_eq!(v.device_id, 1);
    assert_eq!(v.parent_device_id, Some(0));
    let k = f.dm.kernel();
    let calls: Vec<&String> = k
        .calls
        .iter()
        .filter(|c| {
            c.starts_with("suspend") || c.starts_with("resume") || c.contains("create_snap")
        })
        .collect();
    assert_eq!(
        calls,
        [
            "suspend dmctl+p+a",
            "message dmctl+p: create_snap 1 0",
            "resume dmctl+p+a"
        ],
        "{:?}",
        k.calls
    );
    assert!(!k.devices["dmctl+p+a"].suspended);
    drop(k);
    assert_eq!(f.kernel_tid(), 2);
    assert_eq!(f.pool().transaction_id, 2);
    assert!(f.ctx.store.load_txn(POOL).unwrap().is_none());
}

/// Regression (the hazard of issue 11): when `create_snap` failed with
/// anything but EEXIST, the same message was sent again after the origin
/// was resumed, to learn the error: a snapshot of a live origin.
#[test]
fn create_snap_failure_is_not_sent_again_after_the_origin_resumes() {
    let f = fixture();
    f.add_volume("a", 0, true);
    f.dm.kernel()
        .fail_next("message dmctl+p: create_snap", Errno::EINVAL);
    let err = f.snapshot_a_as_b().unwrap_err();
    assert_eq!(err.errno(), Some(Errno::EINVAL), "{err}");
    let k = f.dm.kernel();
    assert_eq!(
        k.calls_of("message dmctl+p: create_snap").len(),
        1,
        "{:?}",
        k.calls
    );
    // The origin was resumed after the one message and never suspended again.
    let around: Vec<&String> = k
        .calls
        .iter()
        .filter(|c| c.starts_with("suspend") || c.starts_with("resume"))
        .collect();
    assert_eq!(
        around,
        ["suspend dmctl+p+a", "resume dmctl+p+a"],
        "{:?}",
        k.calls
    );
    assert!(!k.devices["dmctl+p+a"].suspended);
    drop(k);
    // Nothing leaked: no thin id, no record, no open transaction.
    assert_eq!(f.kernel_ids(), [0]);
    assert!(f.ctx.store.load_volume(POOL, "b").unwrap().is_none());
    assert!(f.ctx.store.load_txn(POOL).unwrap().is_none());
    assert_eq!(f.kernel_tid(), 1);
    assert_eq!(f.pool().transaction_id, 1);
}

#[test]
fn create_snap_on_a_taken_id_moves_to_the_next_one() {
    let f = fixture();
    f.add_volume("a", 0, false);
    // A leftover id dmctl does not know about (thin id 1).
    f.dm.kernel()
        .pools
        .get_mut(POOL_DM)
        .unwrap()
        .thin_ids
        .insert(1);
    let v = f.snapshot_a_as_b().unwrap();
    assert_eq!(v.device_id, 2);
    let k = f.dm.kernel();
    assert_eq!(
        k.calls_of("message dmctl+p: create_snap"),
        [
            "message dmctl+p: create_snap 1 0",
            "message dmctl+p: create_snap 2 0"
        ]
    );
    drop(k);
    assert_eq!(f.pool().next_device_id, 3);
    assert_eq!(f.kernel_ids(), [0, 1, 2]);
}

#[test]
fn failed_set_transaction_id_rolls_the_snapshot_back() {
    let f = fixture();
    f.add_volume("a", 0, false);
    f.dm.kernel()
        .fail_next("message dmctl+p: set_transaction_id", Errno::EIO);
    let err = f.snapshot_a_as_b().unwrap_err();
    assert_eq!(err.errno(), Some(Errno::EIO), "{err}");
    // The undo is the recovery path: the id deleted, the record dropped,
    // and the id never handed out again.
    assert_eq!(f.kernel_ids(), [0]);
    assert!(f.ctx.store.load_volume(POOL, "b").unwrap().is_none());
    assert!(f.ctx.store.load_txn(POOL).unwrap().is_none());
    assert_eq!(f.pool().next_device_id, 2);
    assert_eq!(f.kernel_tid(), 1);
}

#[test]
fn failed_delete_is_reported_once_and_leaves_the_volume() {
    let f = fixture();
    f.add_volume("a", 0, false);
    let pool = f.pool();
    f.dm.kernel()
        .fail_next("message dmctl+p: delete", Errno::EBUSY);
    let err = txn::delete_thin_id(&f.ctx, &pool, 0).unwrap_err();
    assert!(matches!(err, Error::Busy(_)), "{err}");
    assert_eq!(f.dm.kernel().calls_of("message dmctl+p: delete").len(), 1);
    assert_eq!(f.kernel_ids(), [0]);
    // An id that is already gone is fine (ENODATA).
    txn::delete_thin_id(&f.ctx, &pool, 7).unwrap();
}

/// A crash left `txn.json` for a create the kernel never committed.
fn crashed_create(
    f: &Fixture,
    id_in_kernel: bool,
    record: bool,
    origin_suspended: bool,
) -> VolumeRecord {
    let origin = f.add_volume("a", 0, true);
    let pool = f.pool();
    let mut v = origin.clone();
    v.name = "b".into();
    v.device_id = 1;
    v.transaction_id = pool.transaction_id + 1;
    v.initialized = false;
    v.active = false;
    v.set_parent(&origin);
    txn::begin(&f.ctx, &pool, TxnOp::Create { volume: v.clone() }).unwrap();
    let mut k = f.dm.kernel();
    if id_in_kernel {
        k.pools.get_mut(POOL_DM).unwrap().thin_ids.insert(1);
    }
    if origin_suspended {
        k.devices.get_mut("dmctl+p+a").unwrap().suspended = true;
    }
    drop(k);
    if record {
        f.ctx.store.save_volume(POOL, &v).unwrap();
    }
    v
}

#[test]
fn recovery_rolls_back_a_create_at_every_uncommitted_step() {
    // after-begin (nothing in the kernel), after-message (id, no record),
    // after the record (id and record), with the origin left suspended.
    for (id_in_kernel, record, suspended) in [
        (false, false, false),
        (true, false, true),
        (true, true, false),
        (true, true, true),
    ] {
        let f = fixture();
        crashed_create(&f, id_in_kernel, record, suspended);
        let note = f.recover().expect("a note");
        assert!(note.contains("rolled back"), "{note}");
        assert_eq!(f.kernel_ids(), [0], "{id_in_kernel} {record} {suspended}");
        assert!(f.ctx.store.load_volume(POOL, "b").unwrap().is_none());
        assert!(f.ctx.store.load_txn(POOL).unwrap().is_none());
        assert!(
            !f.dm.kernel().devices["dmctl+p+a"].suspended,
            "origin resumed"
        );
        // The id may have reached the kernel: it is never handed out again.
        assert_eq!(f.pool().next_device_id, 2);
        assert_eq!(f.pool().transaction_id, 1);
        assert_eq!(f.kernel_tid(), 1);
        // Nothing is left to recover.
        assert_eq!(f.recover(), None);
    }
}

#[test]
fn recovery_finishes_a_create_the_kernel_committed() {
    for record in [false, true] {
        let f = fixture();
        let v = crashed_create(&f, true, record, false);
        // The crash came after set_transaction_id, before pool.json.
        f.dm.kernel().pools.get_mut(POOL_DM).unwrap().transaction_id = v.transaction_id;
        let note = f.recover().expect("a note");
        assert!(note.contains("finished"), "{note}");
        let got = f
            .ctx
            .store
            .load_volume(POOL, "b")
            .unwrap()
            .expect("record kept");
        assert!(got.initialized);
        assert_eq!(got.parent_device_id, Some(0));
        assert_eq!(f.pool().transaction_id, v.transaction_id);
        assert_eq!(f.pool().next_device_id, 2);
        assert!(f.ctx.store.load_txn(POOL).unwrap().is_none());
        assert_eq!(f.kernel_ids(), [0, 1]);
    }
}

#[test]
fn recovery_finishes_an_interrupted_delete_either_side_of_the_commit() {
    for committed in [false, true] {
        let f = fixture();
        let v = f.add_volume("a", 0, true);
        let pool = f.pool();
        let t = txn::begin(&f.ctx, &pool, TxnOp::Delete { volume: v.clone() }).unwrap();
        {
            let mut k = f.dm.kernel();
            k.devices.remove("dmctl+p+a");
            if committed {
                let p = k.pools.get_mut(POOL_DM).unwrap();
                p.thin_ids.remove(&0);
                p.transaction_id = t.transaction_id;
            }
        }
        let note = f.recover().expect("a note");
        assert!(note.contains("finished"), "{note}");
        assert!(f.kernel_ids().is_empty());
        assert!(f.ctx.store.load_volume(POOL, "a").unwrap().is_none());
        assert!(f.ctx.store.load_txn(POOL).unwrap().is_none());
        assert_eq!(f.pool().transaction_id, t.transaction_id);
        assert_eq!(f.kernel_tid(), t.transaction_id);
    }
}

#[test]
fn recovery_refuses_a_kernel_transaction_id_it_cannot_explain() {
    let f = fixture();
    crashed_create(&f, true, true, false);
    f.dm.kernel().pools.get_mut(POOL_DM).unwrap().transaction_id = 9;
    let mut pool = f.pool();
    let err = txn::recover(&f.ctx, &mut pool).unwrap_err();
    assert!(matches!(err, Error::Drift(_)), "{err}");
    assert!(err.to_string().contains("check p --repair"), "{err}");
    // Nothing was changed: the transaction is still open for `check`.
    assert!(f.ctx.store.load_txn(POOL).unwrap().is_some());
    assert_eq!(f.kernel_ids(), [0, 1]);
}

#[test]
fn a_refused_snapshot_changes_nothing() {
    let f = fixture();
    f.add_volume("a", 0, true);
    f.add_volume("b", 1, false);
    let before = f.dm.kernel().pools[POOL_DM].clone();
    let err = f.snapshot_a_as_b().unwrap_err();
    assert!(matches!(err, Error::Exists(_)), "{err}");
    let k = f.dm.kernel();
    assert!(k.calls_of("message").is_empty(), "{:?}", k.calls);
    assert!(k.calls_of("suspend").is_empty(), "{:?}", k.calls);
    assert_eq!(k.pools[POOL_DM].thin_ids, before.thin_ids);
    drop(k);
    assert!(f.ctx.store.load_txn(POOL).unwrap().is_none());
}

#[test]
fn a_dm_device_of_the_name_that_dmctl_did_not_make_is_not_touched() {
    let f = fixture();
    f.add_volume("a", 0, false);
    f.dm.kernel()
        .add_device("dmctl+p+b", "LVM-someone-else", vec![]);
    let err = f.snapshot_a_as_b().unwrap_err();
    assert!(matches!(err, Error::Exists(_)), "{err}");
    let k = f.dm.kernel();
    assert!(k.calls_of("message").is_empty(), "{:?}", k.calls);
    assert!(k.calls_of("remove").is_empty(), "{:?}", k.calls);
    assert!(k.devices.contains_key("dmctl+p+b"));
}

#[test]
fn transaction_record_round_trips() {
    // What a crash leaves is what recovery reads.
    let f = fixture();
    let v = f.add_volume("a", 0, false);
    let pool = f.pool();
    let t = txn::begin(&f.ctx, &pool, TxnOp::Delete { volume: v }).unwrap();
    let read: Transaction = f.ctx.store.load_txn(POOL).unwrap().unwrap();
    assert_eq!(read, t);
}
