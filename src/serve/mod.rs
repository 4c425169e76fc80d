//! `dmctl serve`: containerd's snapshots API
//! (`containerd.services.snapshots.v1.Snapshots`) on a unix socket, so
//! containerd uses a pool as a proxy snapshotter.
//!
//! This is a front end: each request becomes one call of
//! `ops::snapshotter::Snapshotter` on a blocking thread (the operations do
//! kernel work and take the pool lock), and its error becomes a gRPC code
//! that containerd maps back to its own errors (`errdefs`).

mod proto;
mod service;

use crate::error::{Error, Result};
use crate::ops::snapshotter::{Settings, Snapshotter};
use crate::ops::Ctx;
use crate::store::Store;
use proto::snapshots::snapshots_server::SnapshotsServer;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where a pool's server listens unless told otherwise.
pub fn default_address(pool: &str) -> PathBuf {
    PathBuf::from(format!("/run/dmctl/{pool}.sock"))
}

/// A server's configuration.
pub struct Config {
    pub root: PathBuf,
    pub settings: Settings,
    pub address: PathBuf,
    /// Group allowed to use the socket (0660); none: root only (0600).
    pub group: Option<nix::unistd::Gid>,
    /// Where log lines go (the CLI: stderr).
    pub log: fn(&str),
}

/// How often orphaned volumes (removed snapshots whose volume was busy)
/// are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// Serve until SIGTERM or SIGINT. Refuses to start while another server
/// holds the pool, or while something answers on the address.
pub fn run(cfg: Config) -> Result<()> {
    let store = Store::new(&cfg.root);
    let pool = cfg.settings.pool.clone();
    let _server_lock = store.lock_server(&pool)?;
    let ctx = Ctx::new(store.clone());
    let rec = ctx.ready_pool(&pool)?;
    ctx.active_pool_device(&rec)?;
    let snapshotter = Arc::new(Snapshotter::new(cfg.settings.clone()));
    let swept = snapshotter.sweep(&ctx, true)?;
    if !swept.removed.is_empty() || !swept.kept.is_empty() {
        (cfg.log)(&format!(
            "start-up sweep: removed {} volume(s) of interrupted or removed snapshots{}",
            swept.removed.len(),
            if swept.kept.is_empty() {
                String::new()
            } else {
                format!(", {} still in use kept for later", swept.kept.len())
            }
        ));
    }
    let listener = bind(&cfg.address, cfg.group)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("tokio runtime", e))?;
    (cfg.log)(&format!(
        "serving pool {pool} to containerd on {} (fs {}, default size {}, {} spare(s) per hot parent)",
        cfg.address.display(),
        cfg.settings.fs.as_str(),
        crate::units::format_size(cfg.settings.size),
        cfg.settings.spares
    ));
    let service = service::Service::new(snapshotter.clone(), cfg.root.clone(), cfg.log);
    let hot = snapshotter.hot_parents(&ctx)?;
    let result = runtime.block_on(async {
        // Parents that had spares are topped up again.
        for parent in hot {
            service.refill(parent);
        }
        let listener =
            tokio::net::UnixListener::from_std(listener).map_err(|e| Error::io(&cfg.address, e))?;
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        let sweeper = tokio::spawn(sweep_periodically(snapshotter, cfg.root.clone(), cfg.log));
        let served = tonic::transport::Server::builder()
            .add_service(SnapshotsServer::new(service))
            .serve_with_incoming_shutdown(incoming, shutdown_signal(cfg.log))
            .await;
        sweeper.abort();
        served.map_err(|e| Error::Invalid(format!("gRPC server: {e}")))
    });
    let _ = std::fs::remove_file(&cfg.address);
    (cfg.log)("stopped");
    result
}

/// Bind the socket: its directory is made 0700 (0750 with a group) if
/// missing; a stale socket file is replaced, a live one refused.
fn bind(path: &Path, group: Option<nix::unistd::Gid>) -> Result<std::os::unix::net::UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            let mode = if group.is_some() { 0o750 } else { 0o700 };
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                .map_err(|e| Error::io(dir, e))?;
            if let Some(g) = group {
                nix::unistd::chown(dir, None, Some(g)).map_err(|e| Error::io(dir, e.into()))?;
            }
        }
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::Busy(format!(
                "{}: another server is listening there",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
    }
    // The socket is made 0600 (umask), then opened to the group if asked:
    // never a moment world-writable.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = std::os::unix::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(|e| Error::io(path, e))?;
    if let Some(g) = group {
        nix::unistd::chown(path, None, Some(g)).map_err(|e| Error::io(path, e.into()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| Error::io(path, e))?;
    }
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io(path, e))?;
    Ok(listener)
}

async fn shutdown_signal(log: fn(&str)) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    log(&format!(
        "{name}: finishing requests in flight, then stopping"
    ));
}

/// Remove, now and then, volumes whose snapshot was removed while they
/// were in use.
async fn sweep_periodically(snapshotter: Arc<Snapshotter>, root: PathBuf, log: fn(&str)) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let s = snapshotter.clone();
        let root = root.clone();
        let swept =
            tokio::task::spawn_blocking(move || s.sweep(&Ctx::new(Store::new(root)), false)).await;
        if let Ok(Ok(swept)) = swept {
            if !swept.removed.is_empty() {
                log(&format!(
                    "removed {} volume(s) of removed snapshots",
                    swept.removed.len()
                ));
            }
        }
    }
}
