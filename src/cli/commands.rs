//! One short function per command: call the library, print the result.

use super::args::Columns;
use super::print::{self, Printer};
use anyhow::{Context, Result};
use dmctl::names::VolumeRef;
use dmctl::ops::{self, volume, Ctx};
use dmctl::store::model::Filesystem;
use dmctl::{doctor as checks, trace};
use std::io::Write;
use std::path::Path;

/// Where the library's notes and -v trace lines go: stderr.
pub fn install_sink() {
    trace::set_sink(|kind, msg| match kind {
        trace::Kind::Trace | trace::Kind::Note => eprintln!("dmctl: {msg}"),
        trace::Kind::Warning => eprintln!("dmctl: warning: {msg}"),
    });
}

pub fn doctor(p: &Printer) -> Result<i32> {
    let found = checks::run_checks();
    p.emit(&found, |c| print::doctor(c))?;
    Ok(if checks::all_required_ok(&found) {
        0
    } else {
        1
    })
}

/// A warning when the new volume is bigger than the pool's free space.
fn warn_overcommit(ctx: &Ctx, pool: &str, size: u64) -> Result<()> {
    if let Some(o) = ops::pool::oversized(ctx, pool, size)? {
        trace::warn(&format!("pool {pool}: {o}"));
    }
    Ok(())
}

pub fn create(
    ctx: &Ctx,
    p: &Printer,
    v: &VolumeRef,
    size: u64,
    fs: Option<Filesystem>,
    mkfs_args: &[String],
) -> Result<i32> {
    let req = volume::CreateRequest {
        volume: v.clone(),
        size,
        fs,
        mkfs_args: mkfs_args.to_vec(),
    };
    let rec = volume::create(ctx, &req)?;
    warn_overcommit(ctx, &v.pool, rec.size)?;
    p.emit(&rec, |r| {
        outln!("created {v} (thin id {}, {})", r.device_id, p.size(r.size))
    })?;
    Ok(0)
}

pub fn snapshot(
    ctx: &Ctx,
    p: &Printer,
    origin: &VolumeRef,
    v: &VolumeRef,
    size: Option<u64>,
    activate: bool,
) -> Result<i32> {
    let rec = volume::snapshot(ctx, origin, v, size, activate)?;
    warn_overcommit(ctx, &v.pool, rec.size)?;
    p.emit(&rec, |r| {
        outln!(
            "created {v} (thin id {}), a snapshot of {origin}",
            r.device_id
        )
    })?;
    Ok(0)
}

pub fn activate(ctx: &Ctx, p: &Printer, v: &VolumeRef, ro: bool) -> Result<i32> {
    let info = volume::activate(ctx, v, ro)?;
    let node = ops::devnode(&info);
    let doc = serde_json::json!({ "name": v.to_string(), "devnode": node });
    p.emit(&doc, |_| outln!("{}", node.display()))?;
    Ok(0)
}

pub fn deactivate(ctx: &Ctx, p: &Printer, v: &VolumeRef) -> Result<i32> {
    volume::deactivate(ctx, v)?;
    p.emit(&serde_json::json!({ "deactivated": v.to_string() }), |_| {
        Ok(())
    })?;
    Ok(0)
}

pub fn mount(
    ctx: &Ctx,
    p: &Printer,
    v: &VolumeRef,
    dir: &Path,
    ro: bool,
    opts: &str,
) -> Result<i32> {
    let at = volume::mount(ctx, v, dir, ro, opts)?;
    let doc = serde_json::json!({ "name": v.to_string(), "mountpoint": at });
    p.emit(&doc, |_| Ok(()))?;
    Ok(0)
}

pub fn umount(ctx: &Ctx, p: &Printer, v: &VolumeRef) -> Result<i32> {
    let done = volume::umount(ctx, v)?;
    let doc = serde_json::json!({ "name": v.to_string(), "unmounted": done });
    p.emit(&doc, |_| Ok(()))?;
    Ok(0)
}

pub fn rm(ctx: &Ctx, p: &Printer, v: &VolumeRef, force: bool) -> Result<i32> {
    let r = ops::remove::remove(ctx, v, force)?;
    if !r.broken_images.is_empty() {
        trace::warn(&format!(
            "{v} was a layer of image {}, which cannot be provisioned now: `dmctl image \
             import` makes the layer again, `dmctl check {} --repair` drops the image",
            r.broken_images.join(", "),
            v.pool
        ));
    }
    p.emit(&r, |_| Ok(()))?;
    Ok(0)
}

pub fn resize(ctx: &Ctx, p: &Printer, v: &VolumeRef, size: u64) -> Result<i32> {
    let rec = volume::resize(ctx, v, size)?;
    p.emit(&rec, |r| outln!("{v} is {}", p.size(r.size)))?;
    Ok(0)
}

pub fn ls(ctx: &Ctx, p: &Printer, pool: Option<&str>, tree: bool, cols: &Columns) -> Result<i32> {
    print::check_volume_fields(&cols.options)?;
    let vols = volume::list(ctx, pool)?;
    if p.json {
        p.json(&vols)?;
    } else if tree {
        print::tree(p, &vols)?;
    } else {
        print::volumes(p, &vols, &cols.options, !cols.noheadings)?;
    }
    Ok(0)
}

pub fn info(ctx: &Ctx, p: &Printer, v: &VolumeRef) -> Result<i32> {
    let r = volume::info(ctx, v)?;
    if p.json {
        p.json(&r)?;
    } else {
        print::volume_info(p, &r)?;
    }
    Ok(0)
}

pub fn check(ctx: &Ctx, p: &Printer, pool: &str, repair: bool) -> Result<i32> {
    let r = ops::check::check(ctx, pool, repair)?;
    p.emit(&r, print::check)?;
    if !r.clean {
        anyhow::bail!("pool {pool}: metadata drift found; run `dmctl check {pool} --repair`");
    }
    Ok(0)
}

pub fn diff(
    ctx: &Ctx,
    p: &Printer,
    v: &VolumeRef,
    output: Option<&Path>,
    nearest_ancestor: bool,
) -> Result<i32> {
    use std::io::IsTerminal;
    let stats = match output {
        // Into a temporary file beside it, renamed once complete: a failed
        // diff leaves no file (and no half-written one) behind.
        Some(path) => {
            let tmp = path.with_file_name(format!(
                ".{}.dmctl-tmp",
                path.file_name().unwrap_or_default().to_string_lossy()
            ));
            let written = (|| -> Result<_> {
                let mut f =
                    std::fs::File::create(&tmp).with_context(|| format!("{}", path.display()))?;
                let st = ops::image::diff(ctx, v, nearest_ancestor, &mut f)?;
                f.sync_all()
                    .with_context(|| format!("{}", path.display()))?;
                std::fs::rename(&tmp, path).with_context(|| format!("{}", path.display()))?;
                Ok(st)
            })();
            if written.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            written?
        }
        None if std::io::stdout().is_terminal() => {
            anyhow::bail!("refusing to write a tar to a terminal; use -o FILE")
        }
        None => {
            let mut out = std::io::stdout().lock();
            ops::image::diff(ctx, v, nearest_ancestor, &mut out)?
        }
    };
    if p.json && output.is_some() {
        p.json(&stats)?;
    } else {
        eprintln!(
            "{v}: {} added, {} modified, {} deleted ({} of file content)",
            stats.added,
            stats.modified,
            stats.deleted,
            p.size(stats.bytes)
        );
    }
    Ok(0)
}

/// `dmctl serve`: runs until SIGTERM/SIGINT.
pub fn serve(ctx: &Ctx, a: &super::args::ServeArgs) -> Result<i32> {
    let group = match &a.group {
        None => None,
        Some(g) => Some(
            nix::unistd::Group::from_name(g)
                .with_context(|| format!("group '{g}'"))?
                .with_context(|| format!("no group '{g}'"))?
                .gid,
        ),
    };
    dmctl::serve::run(dmctl::serve::Config {
        root: ctx.store.root().to_path_buf(),
        settings: ops::snapshotter::Settings {
            pool: a.pool.clone(),
            fs: a.fs.filesystem(),
            size: a.size,
            spares: usize::from(a.spares),
        },
        address: a
            .address
            .clone()
            .unwrap_or_else(|| dmctl::serve::default_address(&a.pool)),
        group,
        log: |line| eprintln!("dmctl serve: {line}"),
    })?;
    Ok(0)
}

pub fn completions(shell: clap_complete::Shell) -> Result<i32> {
    use clap::CommandFactory;
    let mut cmd = super::args::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "dmctl", &mut out);
    std::io::Write::write_all(&mut std::io::stdout().lock(), &out)?;
    Ok(0)
}

/// `dmctl.1` and one page per subcommand (`dmctl-pool-create.1`).
pub fn manpages(dir: &Path) -> Result<i32> {
    use clap::CommandFactory;
    fn write(cmd: &clap::Command, name: &str, dir: &Path) -> Result<()> {
        let cmd = cmd.clone().name(name.to_string());
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut buf)?;
        std::fs::write(&path, buf).with_context(|| format!("{}", path.display()))?;
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            write(sub, &format!("{name}-{}", sub.get_name()), dir)?;
        }
        Ok(())
    }
    std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    let mut cmd = super::args::Cli::command();
    cmd.build();
    write(&cmd, "dmctl", dir)?;
    Ok(0)
}

pub mod pool {
    use super::super::args::{MonitorArgs, PoolCreateArgs};
    use super::super::print::{self, Printer};
    use anyhow::Result;
    use dmctl::ops::{self, pool, Ctx};
    use std::io::Write;
    use std::path::Path;

    pub fn create(ctx: &Ctx, p: &Printer, a: &PoolCreateArgs) -> Result<i32> {
        let req = pool::CreateRequest {
            name: a.pool.clone(),
            data_size: a.data_size,
            meta_size: a.meta_size,
            block_size: a.block_size,
            low_water_mark: a.low_water_mark,
            data_dev: a.data_dev.clone(),
            meta_dev: a.meta_dev.clone(),
            zeroing: a.zeroing,
            error_if_no_space: a.error_if_no_space,
            min_free_percent: Some(a.min_free),
            max_overcommit: a.max_overcommit.filter(|r| *r > 0.0),
        };
        let rec = pool::create(ctx, &req)?;
        p.emit(&rec, |r| {
            outln!(
                "created pool {} (data {}, metadata {}, block {})",
                r.name,
                p.size(r.data_size),
                p.size(r.meta_size),
                p.size(r.block_size)
            )
        })?;
        Ok(0)
    }

    pub fn ls(ctx: &Ctx, p: &Printer) -> Result<i32> {
        let pools = pool::list(ctx)?;
        if p.json {
            p.json(&pools)?;
        } else {
            print::pools(p, &pools)?;
        }
        Ok(0)
    }

    pub fn status(ctx: &Ctx, p: &Printer, name: &str) -> Result<i32> {
        let r = pool::status(ctx, name)?;
        if p.json {
            p.json(&r)?;
        } else {
            print::pool_status(p, &r)?;
        }
        Ok(0)
    }

    pub fn activate(ctx: &Ctx, p: &Printer, name: Option<&str>, all: bool) -> Result<i32> {
        if !all {
            let notes = pool::activate(ctx, name.unwrap_or_default())?;
            p.emit(&notes, |n| n.iter().try_for_each(|n| outln!("{n}")))?;
            return Ok(0);
        }
        let mut failed = 0;
        let mut doc = vec![];
        for (name, r) in pool::activate_all(ctx) {
            match r {
                Ok(notes) => {
                    for n in &notes {
                        p.line(n)?;
                    }
                    doc.push(serde_json::json!({"pool": name, "ok": true, "notes": notes}));
                }
                Err(e) => {
                    failed += 1;
                    eprintln!("dmctl: error: pool {name}: {e}");
                    doc.push(
                        serde_json::json!({"pool": name, "ok": false, "error": e.to_string()}),
                    );
                }
            }
        }
        if p.json {
            p.json(&doc)?;
        }
        Ok(if failed > 0 { 1 } else { 0 })
    }

    pub fn deactivate(ctx: &Ctx, p: &Printer, name: &str) -> Result<i32> {
        pool::deactivate(ctx, name)?;
        p.emit(&serde_json::json!({ "deactivated": name }), |_| Ok(()))?;
        Ok(0)
    }

    pub fn destroy(ctx: &Ctx, p: &Printer, name: &str, force: bool) -> Result<i32> {
        pool::destroy(ctx, name, force)?;
        p.emit(&serde_json::json!({ "destroyed": name }), |_| Ok(()))?;
        Ok(0)
    }

    pub fn repair(ctx: &Ctx, p: &Printer, name: &str, spare_dev: Option<&Path>) -> Result<i32> {
        let r = ops::repair::repair_pool(ctx, name, spare_dev)?;
        p.emit(&r, |r| r.notes.iter().try_for_each(|n| outln!("{n}")))?;
        Ok(0)
    }

    pub fn extend(
        ctx: &Ctx,
        p: &Printer,
        name: &str,
        data: Option<u64>,
        meta: Option<u64>,
    ) -> Result<i32> {
        let rec = pool::extend(ctx, name, data, meta)?;
        p.emit(&rec, |r| {
            outln!(
                "pool {}: data {}, metadata {}",
                r.name,
                p.size(r.data_size),
                p.size(r.meta_size)
            )
        })?;
        Ok(0)
    }

    pub fn set(
        ctx: &Ctx,
        p: &Printer,
        name: &str,
        min_free: Option<u8>,
        low_water_mark: Option<u64>,
        max_overcommit: Option<f64>,
    ) -> Result<i32> {
        let settings = pool::Settings {
            min_free_percent: min_free,
            low_water_mark,
            max_overcommit,
        };
        let rec = pool::set(ctx, name, &settings)?;
        p.emit(&rec, |r| {
            outln!(
                "pool {}: min free {}%, low-water mark {}, overcommit {}",
                r.name,
                r.min_free_percent,
                p.size(r.low_water_mark),
                r.max_overcommit
                    .map(|x| format!("at most {x}x"))
                    .unwrap_or_else(|| "not limited".into())
            )
        })?;
        Ok(0)
    }

    pub fn monitor(ctx: &Ctx, p: &Printer, a: &MonitorArgs) -> Result<i32> {
        let (name, threshold, grow, interval, once) =
            (a.pool.as_str(), a.threshold, a.grow, a.interval, a.once);
        let opts = ops::monitor::Options {
            threshold,
            grow,
            interval: std::time::Duration::from_secs(interval),
            once,
        };
        // The pool must exist before anything is said about watching it.
        ctx.ready_pool(name)?;
        if !once {
            p.line(&format!(
                "monitoring pool {name}: extend by {grow} at {threshold}% used, \
                 checking on dm events and every {interval}s"
            ))?;
        }
        let json = p.json;
        let mut written = Ok(());
        ops::monitor::run(ctx, name, &opts, |r| {
            // One JSON document per line with --json: a stream of checks.
            let line = if json {
                serde_json::to_string(r).unwrap_or_default()
            } else {
                r.line()
            };
            if written.is_ok() {
                written = outln!("{line}");
            }
        })?;
        written?;
        Ok(0)
    }
}

pub mod image {
    use super::super::args::ImportArgs;
    use super::super::print::{self, Printer};
    use anyhow::Result;
    use dmctl::names::VolumeRef;
    use dmctl::ops::image::{self, ImportEvent};
    use dmctl::ops::Ctx;
    use std::io::Write;
    use std::path::Path;

    /// Import progress: an indicatif spinner per layer on a terminal, a
    /// plain line per layer otherwise (nothing with --json).
    struct Progress {
        bar: Option<indicatif::ProgressBar>,
        plain: bool,
        units: Printer,
    }

    impl Progress {
        fn new(p: &Printer) -> Progress {
            use std::io::IsTerminal;
            let tty = !p.json && std::io::stderr().is_terminal();
            let bar = tty.then(|| {
                let bar = indicatif::ProgressBar::new_spinner();
                bar.set_style(
                    indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
                );
                bar.enable_steady_tick(std::time::Duration::from_millis(120));
                bar
            });
            Progress {
                bar,
                plain: !p.json && !tty,
                units: *p,
            }
        }

        fn event(&self, e: ImportEvent) {
            let p = &self.units;
            match (e, &self.bar) {
                (
                    ImportEvent::Applying {
                        layer,
                        layers,
                        bytes,
                        blob_size,
                    },
                    Some(bar),
                ) => {
                    bar.set_message(format!(
                        "layer {}/{layers}: {} applied (blob {})",
                        layer + 1,
                        p.size(bytes),
                        p.size(blob_size)
                    ));
                }
                (
                    ImportEvent::Done {
                        layer,
                        layers,
                        bytes,
                        shared,
                    },
                    bar,
                ) => {
                    let line = if shared {
                        format!("layer {}/{layers}: already in the pool (shared)", layer + 1)
                    } else {
                        format!("layer {}/{layers}: {} applied", layer + 1, p.size(bytes))
                    };
                    match bar {
                        Some(bar) => bar.println(line),
                        None if self.plain => eprintln!("{line}"),
                        None => {}
                    }
                }
                _ => {}
            }
        }

        fn finish(&self) {
            if let Some(bar) = &self.bar {
                bar.finish_and_clear();
            }
        }
    }

    pub fn import(ctx: &Ctx, p: &Printer, a: &ImportArgs) -> Result<i32> {
        let (pool, source, selector, name) = (
            a.pool.as_str(),
            a.source.as_str(),
            a.selector.as_deref(),
            a.name.as_deref(),
        );
        let (path, in_source) = image::split_source(source);
        if in_source.is_some() && selector.is_some() {
            anyhow::bail!("give the image either as SOURCE:REF or with --ref, not both");
        }
        let progress = Progress::new(p);
        let callback = |e: ImportEvent| progress.event(e);
        let req = image::ImportRequest {
            pool,
            source: &path,
            selector: selector.or(in_source.as_deref()),
            name,
            size: Some(a.size),
            fs: a.fs,
            progress: Some(&callback),
        };
        let r = image::import(ctx, &req);
        progress.finish();
        let r = r?;
        p.emit(&r, |r| print::import(p, r))?;
        Ok(0)
    }

    pub fn ls(ctx: &Ctx, p: &Printer, pool: &str) -> Result<i32> {
        let imgs = image::list_images(ctx, pool)?;
        p.emit(&imgs, |i| print::images(i))?;
        Ok(0)
    }

    pub fn inspect(ctx: &Ctx, p: &Printer, pool: &str, reference: &str) -> Result<i32> {
        let r = image::inspect(ctx, pool, reference)?;
        p.emit(&r, |r| print::image_info(p, r))?;
        Ok(0)
    }

    pub fn rm(ctx: &Ctx, p: &Printer, pool: &str, reference: &str) -> Result<i32> {
        let r = image::remove(ctx, pool, reference)?;
        p.emit(&r, print::image_removed)?;
        Ok(0)
    }

    pub fn provision(
        ctx: &Ctx,
        p: &Printer,
        pool: &str,
        reference: &str,
        name: &str,
        size: Option<u64>,
        mount: Option<&Path>,
    ) -> Result<i32> {
        let r = image::provision(ctx, pool, reference, name, size, mount)?;
        p.emit(&r, |r| {
            let shown = match (&r.mountpoint, &r.devnode) {
                (Some(m), _) => m.display().to_string(),
                (None, Some(d)) => d.display().to_string(),
                (None, None) => String::new(),
            };
            outln!("{shown}")
        })?;
        Ok(0)
    }

    pub fn warm(
        ctx: &Ctx,
        p: &Printer,
        pool: &str,
        reference: &str,
        spares: usize,
        size: Option<u64>,
    ) -> Result<i32> {
        let r = image::warm(ctx, pool, reference, spares, size)?;
        p.emit(&r, |r| print::warmed(p, r))?;
        Ok(0)
    }

    pub fn commit(ctx: &Ctx, p: &Printer, v: &VolumeRef, reference: &str) -> Result<i32> {
        let r = image::commit(ctx, v, reference)?;
        p.emit(&r, |r| print::import(p, r))?;
        Ok(0)
    }

    pub fn export(ctx: &Ctx, p: &Printer, pool: &str, reference: &str, dir: &Path) -> Result<i32> {
        let digest = image::export(ctx, pool, reference, dir)?;
        let doc = serde_json::json!({ "reference": reference, "manifest": digest.to_string(), "dir": dir });
        p.emit(&doc, |_| {
            outln!(
                "exported {reference} to {} (manifest {digest})",
                dir.display()
            )
        })?;
        Ok(0)
    }
}
