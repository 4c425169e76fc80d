//! Command-line interface: one short function per command over the library.
//! Errors become one line on stderr, `dmctl: error: ...`, exit 1; usage
//! errors exit 2 (clap).

use anyhow::Result;
use clap::{Parser, Subcommand};
use dmctl::doctor;
use dmctl::names::VolumeRef;
use dmctl::ops::{self, pool, volume, Ctx};
use dmctl::store::model::Filesystem;
use dmctl::store::{Store, DEFAULT_ROOT};
use dmctl::units::{format_size, parse_size};
use serde::Serialize;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "dmctl",
    version,
    about = "Manage device-mapper thin pools, thin volumes and snapshot chains"
)]
struct Cli {
    /// State root (default: $DMCTL_ROOT, else /var/lib/dmctl).
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,

    /// Print one JSON document on stdout.
    #[arg(long, global = true)]
    json: bool,

    /// Say more about what is done.
    #[arg(short, long, global = true)]
    verbose: bool,

    #[command(subcommand)]
    command: Command,
}

fn size(s: &str) -> Result<u64, String> {
    match parse_size(s) {
        Ok(0) => Err(format!("invalid size '{s}': must be greater than 0")),
        r => r.map_err(|e| e.to_string()),
    }
}

fn volref(s: &str) -> Result<VolumeRef, String> {
    s.parse::<VolumeRef>().map_err(|e| e.to_string())
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum FsArg {
    Ext4,
    Xfs,
    None,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check what dmctl needs on this host.
    Doctor,
    /// Thin pools.
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Create a thin volume (activated and formatted).
    Create {
        #[arg(value_parser = volref, value_name = "POOL/NAME")]
        volume: VolumeRef,
        #[arg(long, value_parser = size)]
        size: u64,
        #[arg(long, value_enum, default_value = "ext4")]
        fs: FsArg,
        /// Extra argument for mkfs (repeatable).
        #[arg(long = "mkfs-arg", value_name = "ARG", allow_hyphen_values = true)]
        mkfs_args: Vec<String>,
    },
    /// Snapshot a volume (active or not, mounted or not).
    Snapshot {
        #[arg(value_parser = volref, value_name = "POOL/ORIGIN")]
        origin: VolumeRef,
        #[arg(value_parser = volref, value_name = "POOL/NAME")]
        volume: VolumeRef,
        #[arg(long, value_parser = size)]
        size: Option<u64>,
        /// Activate the snapshot too (one command: create_snap + device).
        #[arg(long)]
        activate: bool,
    },
    /// Activate a volume's device.
    Activate {
        #[arg(value_parser = volref, value_name = "POOL/NAME")]
        volume: VolumeRef,
        #[arg(long)]
        ro: bool,
    },
    /// Deactivate a volume's device.
    Deactivate {
        #[arg(value_parser = volref, value_name = "POOL/NAME")]
        volume: VolumeRef,
    },
    /// Mount a volume (activating it if needed).
    Mount {
        #[arg(value_parser = volref, value_name = "POOL/NAME")]
        volume: VolumeRef,
        dir: PathBuf,
        #[arg(long)]
        ro: bool,
        #[arg(short = 'o', value_name = "OPTS", default_value = "")]
        options: String,
    },
    /// Unmount a volume.
    Umount {
        #[arg(value_parser = volref, value_name = "POOL/NAME")]
        volume: VolumeRef,
    },
    /// Remove a volume: discard, deactivate, delete its thin id.
    Rm {
        #[arg(value_parser = volref, value_name = "POOL/NAME")]
        volume: VolumeRef,
        /// Unmount it first if mounted.
        #[arg(long)]
        force: bool,
    },
    /// Grow a volume and its filesystem.
    Resize {
        #[arg(value_parser = volref, value_name = "POOL/NAME")]
        volume: VolumeRef,
        #[arg(long, value_parser = size)]
        size: u64,
    },
    /// List volumes.
    Ls {
        pool: Option<String>,
        /// Show snapshot chains as a tree.
        #[arg(long)]
        tree: bool,
    },
    /// Layered images: OCI import, provision, commit, export.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Write a volume's changes against its parent as an OCI layer tar.
    Diff {
        #[arg(value_parser = volref, value_name = "POOL/NAME")]
        volume: VolumeRef,
        /// Output file (default: stdout, unless it is a terminal).
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Compare dmctl's metadata with the kernel's; --repair fixes drift.
    Check {
        pool: String,
        #[arg(long)]
        repair: bool,
    },
    /// Show one volume.
    Info {
        #[arg(value_parser = volref, value_name = "POOL/NAME")]
        volume: VolumeRef,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum ImageFs {
    Ext4,
    Xfs,
}

#[derive(Subcommand, Debug)]
enum ImageCommand {
    /// Import an OCI image layout (dir or tar) or a docker-save archive.
    Import {
        pool: String,
        source: PathBuf,
        /// Which image of the source, and the name it gets here.
        #[arg(long, value_name = "REF")]
        name: Option<String>,
        /// Size of the layer volumes (default 10G; thin, so sparse).
        #[arg(long, value_parser = size)]
        size: Option<u64>,
        #[arg(long, value_enum, default_value = "ext4")]
        fs: ImageFs,
    },
    /// List the pool's images.
    Ls { pool: String },
    /// Layers, chain ids, sizes and shared bytes of an image.
    Inspect { pool: String, reference: String },
    /// Remove an image (layers still used elsewhere are kept).
    Rm { pool: String, reference: String },
    /// A writable, active snapshot of the image's top layer (a CI rootfs).
    Provision {
        pool: String,
        reference: String,
        name: String,
        #[arg(long, value_parser = size)]
        size: Option<u64>,
        #[arg(long, value_name = "DIR")]
        mount: Option<PathBuf>,
    },
    /// Keep N spare rootfs of the image made, active and mounted, so that
    /// `image provision` hands one out at once (0 removes them).
    Warm {
        pool: String,
        reference: String,
        /// How many spares to keep (of this size).
        #[arg(long, value_name = "N")]
        spares: usize,
        /// Size of the spares (default: the image's); a provision gets a
        /// spare only if it asks for the same size.
        #[arg(long, value_parser = size)]
        size: Option<u64>,
    },
    /// Turn a provisioned volume into a new image (its diff is a new layer).
    Commit {
        #[arg(value_parser = volref, value_name = "POOL/NAME")]
        volume: VolumeRef,
        reference: String,
    },
    /// Write an image as an OCI image layout.
    Export {
        pool: String,
        reference: String,
        dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum PoolCommand {
    /// Create a pool on sparse files (default) or on block devices.
    Create {
        pool: String,
        #[arg(long, value_parser = size)]
        data_size: Option<u64>,
        #[arg(long, value_parser = size)]
        meta_size: Option<u64>,
        #[arg(long, value_parser = size)]
        block_size: Option<u64>,
        #[arg(long, value_parser = size)]
        low_water_mark: Option<u64>,
        #[arg(long, requires = "meta_dev")]
        data_dev: Option<PathBuf>,
        #[arg(long, requires = "data_dev")]
        meta_dev: Option<PathBuf>,
        /// Zero newly provisioned blocks (slower; off by default).
        #[arg(long)]
        zeroing: bool,
        /// Fail writes at once when the pool is full, instead of queueing
        /// them. Queued writes wait for `pool extend` at most the kernel's
        /// /sys/module/dm_thin_pool/parameters/no_space_timeout (60 s by
        /// default; 0 waits forever), then fail; dmctl does not change it.
        #[arg(long)]
        error_if_no_space: bool,
        /// Refuse new volumes and snapshots below this much free data (or
        /// metadata) space, in percent (default 10).
        #[arg(long, value_name = "PCT", value_parser = clap::value_parser!(u8).range(0..=90))]
        min_free: Option<u8>,
    },
    /// Change a pool's settings.
    Set {
        pool: String,
        /// Refuse new volumes and snapshots below this much free data (or
        /// metadata) space, in percent (0 to 90).
        #[arg(long, value_name = "PCT", value_parser = clap::value_parser!(u8).range(0..=90))]
        min_free: Option<u8>,
        /// Free data space below which the kernel raises an event (a table reload).
        #[arg(long, value_parser = size)]
        low_water_mark: Option<u64>,
    },
    /// Extend a file-backed pool automatically before it fills: when its data
    /// or metadata usage reaches the threshold. Waits for the pool's
    /// low-water-mark event (kept at the threshold), re-checking every
    /// --interval seconds.
    Monitor {
        pool: String,
        /// Percent used at which to extend.
        #[arg(long, value_name = "PCT", default_value_t = 80,
              value_parser = clap::value_parser!(u8).range(1..=99))]
        threshold: u8,
        /// How much to add each time: a size (1G) or a percentage of the
        /// current size (20%).
        #[arg(long, value_name = "SIZE|PCT%", default_value = "20%")]
        grow: ops::monitor::Grow,
        /// Re-check at least every SECS seconds.
        #[arg(long, value_name = "SECS", default_value_t = 10,
              value_parser = clap::value_parser!(u64).range(1..=86400))]
        interval: u64,
        /// Check and extend at most once, then exit (cron, systemd timers).
        #[arg(long)]
        once: bool,
    },
    /// List pools.
    Ls,
    /// Show a pool's status.
    Status { pool: String },
    /// Activate a pool (after a reboot: loops, thin_check, table, volumes).
    Activate {
        #[arg(required_unless_present = "all")]
        pool: Option<String>,
        #[arg(long, conflicts_with = "pool")]
        all: bool,
    },
    /// Deactivate a pool and its volumes.
    Deactivate { pool: String },
    /// Destroy a pool, its volumes and its backing files.
    Destroy {
        pool: String,
        #[arg(long)]
        force: bool,
    },
    /// Rebuild a pool's damaged metadata with thin_repair (pool inactive).
    Repair {
        pool: String,
        /// A device to write the repaired metadata to (device-backed pools).
        #[arg(long, value_name = "DEV")]
        spare_dev: Option<PathBuf>,
    },
    /// Grow a pool's data and/or metadata space, live.
    Extend {
        pool: String,
        #[arg(long, value_parser = size)]
        data_size: Option<u64>,
        #[arg(long, value_parser = size)]
        meta_size: Option<u64>,
    },
}

pub fn main() -> i32 {
    let cli = Cli::try_parse().unwrap_or_else(|mut e| {
        // clap echoes a bad value raw: a newline in it would split the error line.
        use clap::error::{ContextKind, ContextValue};
        if let Some(ContextValue::String(v)) = e.get(ContextKind::InvalidValue) {
            let v = ContextValue::String(v.escape_debug().to_string());
            e.insert(ContextKind::InvalidValue, v);
        }
        e.exit()
    });
    let result = run(&cli);
    // With -v: when the work ended (what follows is the process's exit).
    dmctl::trace::step(|| "done".into());
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("dmctl: error: {}", format!("{e:#}").replace('\n', " "));
            1
        }
    }
}

fn root(cli: &Cli) -> PathBuf {
    cli.root
        .clone()
        .or_else(|| std::env::var_os("DMCTL_ROOT").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
}

/// Print a value: as JSON with --json, else with the text printer.
fn emit<T: Serialize>(cli: &Cli, value: &T, text: impl FnOnce(&T)) -> Result<i32> {
    if cli.json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        text(value);
    }
    Ok(0)
}

fn run(cli: &Cli) -> Result<i32> {
    if cli.verbose {
        dmctl::trace::enable();
    }
    let ctx = Ctx::new(Store::new(root(cli)));
    match &cli.command {
        Command::Doctor => cmd_doctor(cli),
        Command::Pool(p) => run_pool(cli, &ctx, p),
        Command::Create {
            volume,
            size,
            fs,
            mkfs_args,
        } => {
            let fs = match fs {
                FsArg::Ext4 => Some(Filesystem::Ext4),
                FsArg::Xfs => Some(Filesystem::Xfs),
                FsArg::None => None,
            };
            let req = volume::CreateRequest {
                volume: volume.clone(),
                size: *size,
                fs,
                mkfs_args: mkfs_args.clone(),
            };
            let v = volume::create(&ctx, &req)?;
            emit(cli, &v, |v| {
                println!(
                    "created {volume} (thin id {}, {})",
                    v.device_id,
                    format_size(v.size)
                )
            })
        }
        Command::Snapshot {
            origin,
            volume,
            size,
            activate,
        } => {
            let v = volume::snapshot(&ctx, origin, volume, *size, *activate)?;
            emit(cli, &v, |v| {
                println!(
                    "created {volume} (thin id {}), a snapshot of {origin}",
                    v.device_id
                )
            })
        }
        Command::Activate { volume, ro } => {
            let info = volume::activate(&ctx, volume, *ro)?;
            let node = ops::devnode(&info);
            emit(
                cli,
                &serde_json::json!({ "name": volume.to_string(), "devnode": node }),
                |_| println!("{}", node.display()),
            )
        }
        Command::Deactivate { volume } => {
            volume::deactivate(&ctx, volume)?;
            emit(
                cli,
                &serde_json::json!({ "deactivated": volume.to_string() }),
                |_| {},
            )
        }
        Command::Mount {
            volume,
            dir,
            ro,
            options,
        } => {
            let at = volume::mount(&ctx, volume, dir, *ro, options)?;
            emit(
                cli,
                &serde_json::json!({ "name": volume.to_string(), "mountpoint": at }),
                |_| {},
            )
        }
        Command::Umount { volume } => {
            let done = volume::umount(&ctx, volume)?;
            emit(
                cli,
                &serde_json::json!({ "name": volume.to_string(), "unmounted": done }),
                |_| {},
            )
        }
        Command::Rm { volume, force } => {
            volume::remove(&ctx, volume, *force)?;
            emit(
                cli,
                &serde_json::json!({ "removed": volume.to_string() }),
                |_| {},
            )
        }
        Command::Resize { volume, size } => {
            let v = volume::resize(&ctx, volume, *size)?;
            emit(cli, &v, |v| println!("{volume} is {}", format_size(v.size)))
        }
        Command::Ls { pool, tree } => {
            let vols = volume::list(&ctx, pool.as_deref())?;
            emit(cli, &vols, |vols| {
                if *tree {
                    print_tree(vols)
                } else {
                    print_volumes(vols)
                }
            })
        }
        Command::Image(i) => run_image(cli, &ctx, i),
        Command::Diff { volume, output } => {
            use std::io::IsTerminal;
            let stats = match output {
                Some(path) => {
                    let mut f = std::fs::File::create(path)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                    let st = ops::image::diff(&ctx, volume, &mut f)?;
                    f.sync_all()?;
                    st
                }
                None if std::io::stdout().is_terminal() => {
                    anyhow::bail!("refusing to write a tar to a terminal; use -o FILE")
                }
                None => {
                    let mut out = std::io::stdout().lock();
                    ops::image::diff(&ctx, volume, &mut out)?
                }
            };
            if cli.json && output.is_some() {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                eprintln!(
                    "{volume}: {} added, {} modified, {} deleted ({} bytes of file content)",
                    stats.added, stats.modified, stats.deleted, stats.bytes
                );
            }
            Ok(0)
        }
        Command::Check { pool, repair } => {
            let r = ops::check::check(&ctx, pool, *repair)?;
            emit(cli, &r, |r| {
                for line in &r.repaired {
                    println!("repaired: {line}");
                }
                println!(
                    "pool {}: transaction id {} (recorded {}), {} orphan id(s), {} missing, {} corrupt file(s){}",
                    r.pool,
                    r.kernel_transaction_id,
                    r.recorded_transaction_id,
                    r.orphan_ids.len(),
                    r.missing_ids.len(),
                    r.corrupt_files.len(),
                    if r.open_transaction.is_some() { ", an open transaction" } else { "" }
                );
                for f in &r.corrupt_files {
                    println!("corrupt: {f}");
                }
            })?;
            if !r.clean {
                anyhow::bail!(
                    "pool {pool}: metadata drift found; run `dmctl check {pool} --repair`"
                );
            }
            Ok(0)
        }
        Command::Info { volume } => {
            let r = volume::info(&ctx, volume)?;
            emit(cli, &r, |r| {
                let v = serde_json::to_value(r).unwrap_or_default();
                if let Some(m) = v.as_object() {
                    for (k, val) in m {
                        println!("{k:<15} {}", val.to_string().trim_matches('"'));
                    }
                }
            })
        }
    }
}

fn run_image(cli: &Cli, ctx: &Ctx, cmd: &ImageCommand) -> Result<i32> {
    use dmctl::ops::image;
    let import_text = |r: &image::ImportReport| {
        if r.already_present {
            println!(
                "image {} is already imported ({} layers); nothing to do",
                r.reference, r.layers
            );
        } else {
            println!(
                "imported {}: {} layers, {} new, {} shared, {} applied; top layer volume {}",
                r.reference,
                r.layers,
                r.layers_created,
                r.layers_shared,
                format_size(r.bytes_applied),
                r.top_volume
            );
        }
    };
    match cmd {
        ImageCommand::Import {
            pool,
            source,
            name,
            size,
            fs,
        } => {
            let req = image::ImportRequest {
                pool,
                source,
                name: name.as_deref(),
                size: *size,
                fs: match fs {
                    ImageFs::Ext4 => Filesystem::Ext4,
                    ImageFs::Xfs => Filesystem::Xfs,
                },
                quiet: cli.json,
            };
            let r = image::import(ctx, &req)?;
            emit(cli, &r, import_text)
        }
        ImageCommand::Ls { pool } => {
            let imgs = image::list_images(ctx, pool)?;
            emit(cli, &imgs, |imgs| {
                println!("{:<40} {:>6} {:<12} TOP LAYER", "IMAGE", "LAYERS", "CONFIG");
                for i in imgs {
                    println!(
                        "{:<40} {:>6} {:<12} {}",
                        i.reference,
                        i.layers.len(),
                        &i.config_digest.hex()[..12],
                        i.top().map(image::layer_volume_name).unwrap_or_default()
                    );
                }
            })
        }
        ImageCommand::Inspect { pool, reference } => {
            let r = image::inspect(ctx, pool, reference)?;
            emit(cli, &r, |r| {
                println!(
                    "image {} (config {}), {} shared, {} warm spare(s)",
                    r.reference,
                    r.config_digest,
                    format_size(r.shared_bytes),
                    r.spares
                );
                for (i, l) in r.layers.iter().enumerate() {
                    println!(
                        "  {i}: {} {} {:>8} chain {}{}",
                        l.volume,
                        l.diff_id,
                        format_size(l.size),
                        l.chain_id,
                        if l.shared_with.is_empty() {
                            String::new()
                        } else {
                            format!(" (shared with {})", l.shared_with.join(", "))
                        }
                    );
                }
            })
        }
        ImageCommand::Rm { pool, reference } => {
            let r = image::remove(ctx, pool, reference)?;
            emit(cli, &r, |r| {
                println!(
                    "removed image {}: {} layer(s) removed, {} kept (still used)",
                    r.reference,
                    r.layers_removed.len(),
                    r.layers_kept.len()
                )
            })
        }
        ImageCommand::Provision {
            pool,
            reference,
            name,
            size,
            mount,
        } => {
            let r = image::provision(ctx, pool, reference, name, *size, mount.as_deref())?;
            emit(cli, &r, |r| match &r.mountpoint {
                Some(m) => println!("{}", m.display()),
                None => println!(
                    "{}",
                    r.devnode
                        .as_ref()
                        .map(|d| d.display().to_string())
                        .unwrap_or_default()
                ),
            })
        }
        ImageCommand::Warm {
            pool,
            reference,
            spares,
            size,
        } => {
            let r = image::warm(ctx, pool, reference, *spares, *size)?;
            emit(cli, &r, |r| {
                println!(
                    "image {}: {} spare(s) of {} ready ({} made, {} mounted again, {} removed)",
                    r.reference,
                    r.spares.len(),
                    format_size(r.size),
                    r.made,
                    r.remounted,
                    r.removed
                )
            })
        }
        ImageCommand::Commit { volume, reference } => {
            let r = image::commit(ctx, volume, reference)?;
            emit(cli, &r, import_text)
        }
        ImageCommand::Export {
            pool,
            reference,
            dir,
        } => {
            let digest = image::export(ctx, pool, reference, dir)?;
            emit(
                cli,
                &serde_json::json!({ "reference": reference, "manifest": digest.to_string(), "dir": dir }),
                |_| {
                    println!(
                        "exported {reference} to {} (manifest {digest})",
                        dir.display()
                    )
                },
            )
        }
    }
}

fn run_pool(cli: &Cli, ctx: &Ctx, cmd: &PoolCommand) -> Result<i32> {
    match cmd {
        PoolCommand::Create {
            pool,
            data_size,
            meta_size,
            block_size,
            low_water_mark,
            data_dev,
            meta_dev,
            zeroing,
            error_if_no_space,
            min_free,
        } => {
            let req = pool::CreateRequest {
                name: pool.clone(),
                data_size: *data_size,
                meta_size: *meta_size,
                block_size: *block_size,
                low_water_mark: *low_water_mark,
                data_dev: data_dev.clone(),
                meta_dev: meta_dev.clone(),
                zeroing: *zeroing,
                error_if_no_space: *error_if_no_space,
                min_free_percent: *min_free,
            };
            let rec = pool::create(ctx, &req)?;
            emit(cli, &rec, |r| {
                println!(
                    "created pool {} (data {}, metadata {}, block {})",
                    r.name,
                    format_size(r.data_size),
                    format_size(r.meta_size),
                    format_size(r.block_size)
                )
            })
        }
        PoolCommand::Ls => {
            let pools = pool::list(ctx)?;
            emit(cli, &pools, |pools| {
                println!(
                    "{:<20} {:<7} {:>10} {:>10} {:>5} {:>8}",
                    "POOL", "MODE", "DATA", "USED", "TID", "VOLUMES"
                );
                for p in pools {
                    println!(
                        "{:<20} {:<7} {:>10} {:>10} {:>5} {:>8}",
                        p.name,
                        p.mode.map(|m| m.as_str()).unwrap_or("inactive"),
                        format_size(p.data_size),
                        p.data_used.map(format_size).unwrap_or_else(|| "-".into()),
                        p.transaction_id,
                        p.volumes
                    );
                }
            })
        }
        PoolCommand::Status { pool } => {
            let r = pool::status(ctx, pool)?;
            emit(cli, &r, |r| {
                let v = serde_json::to_value(r).unwrap_or_default();
                if let Some(m) = v.as_object() {
                    for (k, val) in m {
                        println!("{k:<18} {}", val.to_string().trim_matches('"'));
                    }
                }
            })
        }
        PoolCommand::Activate { pool, all } => {
            if *all {
                let results = pool::activate_all(ctx);
                let mut failed = 0;
                let mut doc = vec![];
                for (p, r) in results {
                    match r {
                        Ok(notes) => {
                            if !cli.json {
                                notes.iter().for_each(|n| println!("{n}"));
                            }
                            doc.push(serde_json::json!({"pool": p, "ok": true, "notes": notes}));
                        }
                        Err(e) => {
                            failed += 1;
                            eprintln!("dmctl: error: pool {p}: {e}");
                            doc.push(
                                serde_json::json!({"pool": p, "ok": false, "error": e.to_string()}),
                            );
                        }
                    }
                }
                if cli.json {
                    println!("{}", serde_json::to_string_pretty(&doc)?);
                }
                return Ok(if failed > 0 { 1 } else { 0 });
            }
            let pool = pool.as_deref().unwrap_or_default();
            let notes = pool::activate(ctx, pool)?;
            emit(cli, &notes, |n| n.iter().for_each(|n| println!("{n}")))
        }
        PoolCommand::Deactivate { pool } => {
            pool::deactivate(ctx, pool)?;
            emit(cli, &serde_json::json!({ "deactivated": pool }), |_| {})
        }
        PoolCommand::Destroy { pool, force } => {
            pool::destroy(ctx, pool, *force)?;
            emit(cli, &serde_json::json!({ "destroyed": pool }), |_| {})
        }
        PoolCommand::Repair { pool, spare_dev } => {
            let r = ops::repair::repair_pool(ctx, pool, spare_dev.as_deref())?;
            emit(cli, &r, |r| r.notes.iter().for_each(|n| println!("{n}")))
        }
        PoolCommand::Extend {
            pool,
            data_size,
            meta_size,
        } => {
            let rec = pool::extend(ctx, pool, *data_size, *meta_size)?;
            emit(cli, &rec, |r| {
                println!(
                    "pool {}: data {}, metadata {}",
                    r.name,
                    format_size(r.data_size),
                    format_size(r.meta_size)
                )
            })
        }
        PoolCommand::Set {
            pool,
            min_free,
            low_water_mark,
        } => {
            let rec = pool::set(ctx, pool, *min_free, *low_water_mark)?;
            emit(cli, &rec, |r| {
                println!(
                    "pool {}: min free {}%, low-water mark {}",
                    r.name,
                    r.min_free_percent,
                    format_size(r.low_water_mark)
                )
            })
        }
        PoolCommand::Monitor {
            pool,
            threshold,
            grow,
            interval,
            once,
        } => {
            let opts = ops::monitor::Options {
                threshold: *threshold,
                grow: *grow,
                interval: std::time::Duration::from_secs(*interval),
                once: *once,
            };
            if !cli.json && !*once {
                println!(
                    "monitoring pool {pool}: extend by {grow} at {threshold}% used, \
                     checking on dm events and every {interval}s"
                );
            }
            ops::monitor::run(ctx, pool, &opts, |r| {
                if cli.json {
                    // One JSON document per line: a stream of checks.
                    println!("{}", serde_json::to_string(r).unwrap_or_default());
                } else {
                    println!("{}", r.line());
                }
            })?;
            Ok(0)
        }
    }
}

fn print_volumes(vols: &[volume::VolumeReport]) {
    println!(
        "{:<24} {:>6} {:>10} {:>10} {:<6} {:<16} MOUNTPOINT",
        "VOLUME", "ID", "SIZE", "MAPPED", "FS", "PARENT"
    );
    for v in vols {
        println!(
            "{:<24} {:>6} {:>10} {:>10} {:<6} {:<16} {}",
            format!("{}/{}", v.pool, v.name),
            v.device_id,
            format_size(v.size),
            v.mapped_bytes
                .map(format_size)
                .unwrap_or_else(|| if v.active { "0".into() } else { "-".into() }),
            v.fs.map(|f| f.as_str()).unwrap_or("none"),
            v.parent.as_deref().unwrap_or("-"),
            v.mountpoint
                .as_ref()
                .map(|m| m.display().to_string())
                .unwrap_or_default()
        );
    }
}

/// Snapshot chains as a tree: roots are volumes without a (living) parent.
fn print_tree(vols: &[volume::VolumeReport]) {
    fn walk(vols: &[volume::VolumeReport], pool: &str, parent: &str, depth: usize) {
        for v in vols
            .iter()
            .filter(|v| v.pool == pool && v.parent.as_deref() == Some(parent))
        {
            println!(
                "{}└─ {} (id {}{})",
                "   ".repeat(depth),
                v.name,
                v.device_id,
                if v.active { ", active" } else { "" }
            );
            walk(vols, pool, &v.name, depth + 1);
        }
    }
    for v in vols {
        let orphan = match &v.parent {
            None => true,
            Some(p) => !vols.iter().any(|o| o.pool == v.pool && &o.name == p),
        };
        if orphan {
            println!(
                "{}/{} (id {}{})",
                v.pool,
                v.name,
                v.device_id,
                if v.active { ", active" } else { "" }
            );
            walk(vols, &v.pool, &v.name, 0);
        }
    }
}

fn cmd_doctor(cli: &Cli) -> Result<i32> {
    let checks = doctor::run_checks();
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for c in &checks {
            let verdict = match c.verdict {
                doctor::Verdict::Ok => "ok",
                doctor::Verdict::Warn => "warn",
                doctor::Verdict::Fail => "FAIL",
            };
            println!("{verdict:>4}  {:<14} {}", c.name, c.detail);
        }
    }
    Ok(if doctor::all_required_ok(&checks) {
        0
    } else {
        1
    })
}
