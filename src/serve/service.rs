//! The gRPC methods: request -> `Snapshotter` call (on a blocking thread)
//! -> response; errors -> gRPC codes; one log line per changing request.

use super::proto::snapshots::snapshots_server::Snapshots;
use super::proto::snapshots::{
    CleanupRequest, CommitSnapshotRequest, Info, Kind, ListSnapshotsRequest, ListSnapshotsResponse,
    MountsRequest, MountsResponse, PrepareSnapshotRequest, PrepareSnapshotResponse,
    RemoveSnapshotRequest, StatSnapshotRequest, StatSnapshotResponse, UpdateSnapshotRequest,
    UpdateSnapshotResponse, UsageRequest, UsageResponse, ViewSnapshotRequest, ViewSnapshotResponse,
};
use super::proto::types::Mount;
use crate::error::Error;
use crate::ops::snapshotter::{Filters, MountSpec, Snapshotter};
use crate::ops::Ctx;
use crate::store::model::{SnapshotKind, SnapshotRecord, Stamp};
use crate::store::Store;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Infos per List response message.
const LIST_CHUNK: usize = 100;

pub struct Service {
    snapshotter: Arc<Snapshotter>,
    root: PathBuf,
    log: fn(&str),
}

impl Service {
    pub fn new(snapshotter: Arc<Snapshotter>, root: PathBuf, log: fn(&str)) -> Service {
        Service {
            snapshotter,
            root,
            log,
        }
    }

    /// Run `f` with a fresh context on a blocking thread (operations wait
    /// for the pool lock and the kernel).
    async fn call<T, F>(&self, f: F) -> Result<T, Status>
    where
        T: Send + 'static,
        F: FnOnce(&Snapshotter, &Ctx) -> crate::error::Result<T> + Send + 'static,
    {
        let s = self.snapshotter.clone();
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || f(&s, &Ctx::new(Store::new(root))))
            .await
            .map_err(|e| Status::internal(format!("request thread: {e}")))?
            .map_err(status)
    }

    /// Log a changing request and its outcome.
    fn log<T>(&self, what: String, start: Instant, r: &Result<T, Status>) {
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        match r {
            Ok(_) => (self.log)(&format!("{what}: ok ({ms:.1} ms)")),
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                (self.log)(&format!("{what}: {} ({ms:.1} ms)", s.message()))
            }
            Err(s) => (self.log)(&format!(
                "{what}: error {:?}: {} ({ms:.1} ms)",
                s.code(),
                s.message()
            )),
        }
    }

    async fn prepare_kind(
        &self,
        kind: SnapshotKind,
        key: String,
        parent: String,
        labels: std::collections::HashMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        let start = Instant::now();
        let what = format!("{} {key:?} parent {parent:?}", verb(kind));
        let labels: BTreeMap<String, String> = labels.into_iter().collect();
        let hot = self
            .snapshotter
            .is_hot_prepare(kind, &parent, &labels)
            .then(|| parent.clone());
        let r = self
            .call(move |s, ctx| s.prepare(ctx, kind, &key, &parent, labels))
            .await
            .map(|m| m.into_iter().map(mount).collect());
        self.log(what, start, &r);
        if let (Some(parent), Ok(_)) = (hot, &r) {
            self.refill(parent);
        }
        r
    }

    /// Make spares of a hot parent in the background.
    pub fn refill(&self, parent: String) {
        let (s, root, log) = (self.snapshotter.clone(), self.root.clone(), self.log);
        tokio::task::spawn_blocking(move || {
            let start = Instant::now();
            match s.refill(&Ctx::new(Store::new(root)), &parent) {
                Ok(0) => {}
                Ok(n) => log(&format!(
                    "{n} spare(s) of {parent:?} made ({:.1} ms)",
                    start.elapsed().as_secs_f64() * 1000.0
                )),
                Err(e) => log(&format!("spares of {parent:?}: {e}")),
            }
        });
    }
}

fn verb(kind: SnapshotKind) -> &'static str {
    match kind {
        SnapshotKind::View => "view",
        _ => "prepare",
    }
}

/// An error as containerd's `errdefs` reads it back from gRPC.
fn status(e: Error) -> Status {
    let msg = e.to_string();
    match e {
        Error::Invalid(_) => Status::invalid_argument(msg),
        Error::NotFound(_) => Status::not_found(msg),
        Error::Exists(_) => Status::already_exists(msg),
        Error::Busy(_) | Error::NotMounted(_) | Error::PoolState(_) => {
            Status::failed_precondition(msg)
        }
        _ => Status::unknown(msg),
    }
}

fn mount(m: MountSpec) -> Mount {
    Mount {
        r#type: m.fs_type,
        source: m.source,
        target: String::new(),
        options: m.options,
    }
}

fn timestamp(s: Stamp) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: s.secs,
        nanos: s.nanos,
    }
}

fn info(r: SnapshotRecord) -> Info {
    Info {
        name: r.key,
        parent: r.parent.unwrap_or_default(),
        kind: match r.kind {
            SnapshotKind::View => Kind::View,
            SnapshotKind::Active => Kind::Active,
            SnapshotKind::Committed => Kind::Committed,
        } as i32,
        created_at: Some(timestamp(r.created)),
        updated_at: Some(timestamp(r.updated)),
        labels: r.labels.into_iter().collect(),
    }
}

type ListStream = Pin<Box<dyn Stream<Item = Result<ListSnapshotsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Snapshots for Service {
    async fn prepare(
        &self,
        req: Request<PrepareSnapshotRequest>,
    ) -> Result<Response<PrepareSnapshotResponse>, Status> {
        let r = req.into_inner();
        let mounts = self
            .prepare_kind(SnapshotKind::Active, r.key, r.parent, r.labels)
            .await?;
        Ok(Response::new(PrepareSnapshotResponse { mounts }))
    }

    async fn view(
        &self,
        req: Request<ViewSnapshotRequest>,
    ) -> Result<Response<ViewSnapshotResponse>, Status> {
        let r = req.into_inner();
        let mounts = self
            .prepare_kind(SnapshotKind::View, r.key, r.parent, r.labels)
            .await?;
        Ok(Response::new(ViewSnapshotResponse { mounts }))
    }

    async fn mounts(
        &self,
        req: Request<MountsRequest>,
    ) -> Result<Response<MountsResponse>, Status> {
        let key = req.into_inner().key;
        let mounts = self.call(move |s, ctx| s.mounts(ctx, &key)).await?;
        Ok(Response::new(MountsResponse {
            mounts: mounts.into_iter().map(mount).collect(),
        }))
    }

    async fn commit(&self, req: Request<CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        let start = Instant::now();
        let what = format!("commit {:?} as {:?}", r.key, r.name);
        let labels: BTreeMap<String, String> = r.labels.into_iter().collect();
        let out = self
            .call(move |s, ctx| s.commit(ctx, &r.name, &r.key, labels))
            .await;
        self.log(what, start, &out);
        out.map(Response::new)
    }

    async fn remove(&self, req: Request<RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let key = req.into_inner().key;
        let start = Instant::now();
        let what = format!("remove {key:?}");
        let out = self.call(move |s, ctx| s.remove(ctx, &key)).await;
        self.log(what, start, &out);
        out.map(Response::new)
    }

    async fn stat(
        &self,
        req: Request<StatSnapshotRequest>,
    ) -> Result<Response<StatSnapshotResponse>, Status> {
        let key = req.into_inner().key;
        let r = self.call(move |s, ctx| s.stat(ctx, &key)).await?;
        Ok(Response::new(StatSnapshotResponse {
            info: Some(info(r)),
        }))
    }

    async fn update(
        &self,
        req: Request<UpdateSnapshotRequest>,
    ) -> Result<Response<UpdateSnapshotResponse>, Status> {
        let r = req.into_inner();
        let given = r
            .info
            .ok_or_else(|| Status::invalid_argument("update without a snapshot info"))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let labels: BTreeMap<String, String> = given.labels.into_iter().collect();
        let key = given.name;
        let start = Instant::now();
        let what = format!("update {key:?} {paths:?}");
        let out = self
            .call(move |s, ctx| s.update(ctx, &key, labels, &paths))
            .await;
        self.log(what, start, &out);
        Ok(Response::new(UpdateSnapshotResponse {
            info: Some(info(out?)),
        }))
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        req: Request<ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let filters = Filters::parse(&req.into_inner().filters).map_err(status)?;
        let all = self.call(move |s, ctx| s.list(ctx, &filters)).await?;
        let mut chunks: Vec<Result<ListSnapshotsResponse, Status>> = Vec::new();
        let mut infos: Vec<Info> = all.into_iter().map(info).collect();
        while !infos.is_empty() {
            let rest = infos.split_off(infos.len().min(LIST_CHUNK));
            chunks.push(Ok(ListSnapshotsResponse { info: infos }));
            infos = rest;
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn usage(&self, req: Request<UsageRequest>) -> Result<Response<UsageResponse>, Status> {
        let key = req.into_inner().key;
        let u = self.call(move |s, ctx| s.usage(ctx, &key)).await?;
        Ok(Response::new(UsageResponse {
            size: i64::try_from(u.size).unwrap_or(i64::MAX),
            inodes: i64::try_from(u.inodes).unwrap_or(i64::MAX),
        }))
    }

    async fn cleanup(&self, _req: Request<CleanupRequest>) -> Result<Response<()>, Status> {
        let start = Instant::now();
        let out = self.call(|s, ctx| s.sweep(ctx, false)).await;
        if out
            .as_ref()
            .is_ok_and(|s| !s.removed.is_empty() || !s.kept.is_empty())
        {
            let s = out.as_ref().ok().cloned().unwrap_or_default();
            self.log(
                format!(
                    "cleanup: removed {} volume(s), {} in use kept",
                    s.removed.len(),
                    s.kept.len()
                ),
                start,
                &out,
            );
        }
        out.map(|_| Response::new(()))
    }
}
