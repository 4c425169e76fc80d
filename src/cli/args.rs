//! The command line: clap definitions only. Every argument says what it is,
//! defaults are shown, and each command's help ends with an example.

use clap::{Args, Parser, Subcommand, ValueEnum};
use dmctl::names::{validate_name, VolumeRef};
use dmctl::ops;
use dmctl::store::model::Filesystem;
use dmctl::units::parse_size;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "dmctl",
    version,
    about = "Manage device-mapper thin pools, thin volumes, snapshot chains and layered images",
    after_help = "Sizes take binary units: K, M, G, T, P (1K = 1024 bytes).\n\
                  State lives under --root, $DMCTL_ROOT or /var/lib/dmctl.\n\n\
                  Example:\n  dmctl pool create ci --data-size 100G\n  \
                  dmctl create ci/base --size 10G\n  dmctl snapshot ci/base ci/job1"
)]
pub struct Cli {
    /// State root [default: $DMCTL_ROOT, else /var/lib/dmctl]
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        help_heading = "Global options"
    )]
    pub root: Option<PathBuf>,

    /// Print one JSON document on stdout instead of text
    #[arg(long, global = true, help_heading = "Global options")]
    pub json: bool,

    /// Trace every kernel call, state write and program run on stderr
    #[arg(short, long, global = true, help_heading = "Global options")]
    pub verbose: bool,

    /// Show sizes in bytes (same as --units b)
    #[arg(
        long,
        global = true,
        conflicts_with = "units",
        help_heading = "Global options"
    )]
    pub bytes: bool,

    /// Units of sizes in text output: h (human, like lsblk), b, k, m, g, t
    #[arg(long, global = true, value_enum, default_value_t = Units::H, help_heading = "Global options")]
    pub units: Units,

    #[command(subcommand)]
    pub command: Command,
}

/// How text output shows sizes.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Units {
    /// Human-readable, one decimal (49.1M)
    H,
    /// Bytes
    B,
    /// KiB
    K,
    /// MiB
    M,
    /// GiB
    G,
    /// TiB
    T,
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

fn pool_name(s: &str) -> Result<String, String> {
    validate_name("pool", s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

fn volume_name(s: &str) -> Result<String, String> {
    validate_name("volume", s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

fn ratio(s: &str) -> Result<f64, String> {
    match s.trim_end_matches(['x', 'X']).parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 1.0 => Ok(r),
        _ => Err(format!(
            "invalid ratio '{}': a number of at least 1 (e.g. 4 or 2.5)",
            s.escape_debug()
        )),
    }
}

/// The filesystem a volume gets.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsArg {
    Ext4,
    Xfs,
    /// No filesystem: a raw block device
    None,
}

impl FsArg {
    pub fn filesystem(self) -> Option<Filesystem> {
        match self {
            FsArg::Ext4 => Some(Filesystem::Ext4),
            FsArg::Xfs => Some(Filesystem::Xfs),
            FsArg::None => None,
        }
    }
}

/// An image's layers need a filesystem: `none` is not offered.
fn image_fs(s: &str) -> Result<Filesystem, String> {
    match s {
        "ext4" => Ok(Filesystem::Ext4),
        "xfs" => Ok(Filesystem::Xfs),
        _ => Err(format!(
            "invalid filesystem '{}': ext4 or xfs",
            s.escape_debug()
        )),
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check what dmctl needs on this host, one line per check
    #[command(after_help = "Example:\n  dmctl doctor")]
    Doctor,
    /// Thin pools: create, list, status, activate, extend, monitor, destroy
    #[command(subcommand)]
    Pool(PoolCommand),
    /// Create a thin volume (activated and formatted)
    #[command(after_help = "Example:\n  dmctl create ci/base --size 10G --fs ext4")]
    Create {
        /// The new volume
        #[arg(value_parser = volref, value_name = "POOL/NAME")]
        volume: VolumeRef,
        /// Its size (thin: blocks are allocated on write)
        #[arg(long, value_parser = size)]
        size: u64,
        /// Filesystem to make on it
        #[arg(long, value_enum, default_value = "ext4")]
        fs: FsArg,
        /// Extra argument for mkfs (repeatable)
        #[arg(long = "mkfs-arg", value_name = "ARG", allow_hyphen_values = true)]
        mkfs_args: Vec<String>,
    },
    /// Snapshot a volume (active or not, mounted or not)
    #[command(after_help = "Example:\n  dmctl snapshot ci/base ci/job1 --activate")]
    Snapshot {
        /// The volume to snapshot
        #[arg(value_parser = volref, value_name = "POOL/ORIGIN")]
        origin: VolumeRef,
        /// The new snapshot, in the origin's pool
        #[arg(value_parser = volref, value_name = "POOL/NAME")]
        volume: VolumeRef,
        /// Size of the snapshot, at least the origin's [default: the origin's]
        #[arg(long, value_parser = size)]
        size: Option<u64>,
        /// Activate the snapshot too (one command: create_snap + device)
        #[arg(long)]
        activate: bool,
    },
    /// Activate a volume's device and print its node
    #[command(after_help = "Example:\n  dmctl activate ci/job1")]
    Activate {
        /// The volume
        #[arg(value_parser = volref, value_name = "POOL/NAME")]
        volume: VolumeRef,
        /// Read-only device
        #[arg(long)]
        ro: bool,
    },
    /// Deactivate a volume's device
    #[command(after_help = "Example:\n  dmctl deactivate ci/job1")]
    Deactivate {
        /// The volume
        #[arg(value_parser = volref, value_name = "POOL/NAME")]
        volume: VolumeRef,
    },
    /// Mount a volume (activating it if needed)
    #[command(after_help = "Example:\n  dmctl mount ci/job1 /mnt/job1 -o noatime")]
    Mount {
        /// The volume
        #[arg(value_parser = volref, value_name = "POOL/NAME")]
        volume: VolumeRef,
        /// Mount point (an existing directory)
        dir: PathBuf,
        /// Mount read-only
        #[arg(long)]
        ro: bool,
        /// Mount options, comma-separated
        #[arg(short = 'o', value_name = "OPTS", default_value = "")]
        options: String,
    },
    /// Unmount a volume wherever it is mounted
    #[command(after_help = "Example:\n  dmctl umount ci/job1")]
    Umount {
        /// The volume
        #[arg(value_parser = volref, value_name = "POOL/NAME")]
        volume: VolumeRef,
    },
    /// Remove a volume: discard its blocks, deactivate, delete its thin id
    #[command(
        after_help = "--force never removes a volume that a process holds open.\n\n\
                      Example:\n  dmctl rm ci/job1 --force"
    )]
    Rm {
        /// The volume
        #[arg(value_parser = volref, value_name = "POOL/NAME")]
        volume: VolumeRef,
        /// Unmount it first if mounted; remove it even if it is a layer of an
        /// image (the image is then broken: `check --repair` drops it)
        #[arg(long)]
        force: bool,
    },
    /// Grow a volume and its filesystem (online)
    #[command(after_help = "Example:\n  dmctl resize ci/job1 --size 20G")]
    Resize {
        /// The volume
        #[arg(value_parser = volref, value_name = "POOL/NAME")]
        volume: VolumeRef,
        /// The new size (volumes only grow)
        #[arg(long, value_parser = size)]
        size: u64,
    },
    /// List volumes
    #[command(
        after_help = "Fields: volume, pool, name, id, size, mapped, fs, parent, active, mountpoint, created, dm_name.\n\n\
                      Example:\n  dmctl ls ci --tree\n  dmctl ls -o name,size,mapped --noheadings --bytes"
    )]
    Ls {
        /// Only this pool's volumes [default: every pool]
        #[arg(value_parser = pool_name)]
        pool: Option<String>,
        /// Show snapshot chains as a tree
        #[arg(long, conflicts_with_all = ["options", "noheadings"])]
        tree: bool,
        #[command(flatten)]
        columns: Columns,
    },
    /// Show one volume
    #[command(after_help = "Example:\n  dmctl info ci/job1")]
    Info {
        /// The volume
        #[arg(value_parser = volref, value_name = "POOL/NAME")]
        volume: VolumeRef,
    },
    /// Compare dmctl's metadata with the kernel's; --repair fixes drift
    #[command(after_help = "Example:\n  dmctl check ci --repair")]
    Check {
        /// The pool
        #[arg(value_parser = pool_name)]
        pool: String,
        /// Fix what can be fixed without losing data dmctl knows about
        #[arg(long)]
        repair: bool,
    },
    /// Write a volume's changes against its parent as an OCI layer tar
    #[command(after_help = "Example:\n  dmctl diff ci/job42 -o changes.tar")]
    Diff {
        /// The volume (a snapshot)
        #[arg(value_parser = volref, value_name = "POOL/NAME")]
        volume: VolumeRef,
        /// Output file [default: stdout, unless it is a terminal]
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
        /// If the volume's parent was removed, diff against its nearest
        /// ancestor that still exists
        #[arg(long)]
        nearest_ancestor: bool,
    },
    /// Layered images: OCI import, provision, warm, commit, export
    #[command(subcommand)]
    Image(ImageCommand),
    /// Serve a pool to containerd as a snapshotter (its snapshots API over gRPC)
    #[command(
        long_about = "Serve a pool to containerd as a proxy snapshotter: containerd's \
                      snapshots API (gRPC) on a unix socket, in the foreground, logging on \
                      stderr, until SIGTERM or SIGINT. Each snapshot is a thin volume of the \
                      pool (named ctr.N; containerd's keys are kept in the pool's metadata). \
                      A snapshot without a parent is a new volume of --size (or of the label \
                      containerd.io/snapshot/dmctl.size); a child is a thin snapshot of its \
                      parent. Layers imported with `dmctl image import` are adopted by \
                      containerd instead of unpacked again.",
        after_help = "containerd's config (/etc/containerd/config.toml, version 2):\n  \
                      [proxy_plugins.dmctl]\n    type = \"snapshot\"\n    \
                      address = \"/run/dmctl/ci.sock\"\n\n\
                      Example:\n  dmctl serve ci --size 10G\n  \
                      ctr run --rm --snapshotter dmctl docker.io/library/debian:bookworm job1 true"
    )]
    Serve(ServeArgs),
    /// Print a shell completion script
    #[command(after_help = "Example:\n  dmctl completions bash > /etc/bash_completion.d/dmctl")]
    Completions {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (dmctl.1 and one per command) into a directory
    #[command(after_help = "Example:\n  dmctl manpages /usr/share/man/man1")]
    Manpages {
        /// Where to write them (created if missing)
        dir: PathBuf,
    },
}

/// Column selection for listings (`lvs`-style).
#[derive(Args, Debug, Clone, Default)]
pub struct Columns {
    /// Columns to show, comma-separated (see the list of fields below)
    #[arg(
        short = 'o',
        long = "options",
        value_name = "FIELDS",
        value_delimiter = ','
    )]
    pub options: Vec<String>,
    /// Do not print the header line
    #[arg(long)]
    pub noheadings: bool,
}

#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Import an OCI image layout (directory or tar) or a docker/podman/skopeo
    /// archive: one thin volume per layer, shared by ChainID
    #[command(
        after_help = "SOURCE:REF selects an image of a source that holds several (like \
                            skopeo's oci:DIR:REF); so does --ref.\n\n\
                            Example:\n  dmctl image import ci ./alpine-oci --name alpine:3.20\n  \
                            dmctl image import ci ./images.tar:alpine:3.20"
    )]
    Import(ImportArgs),
    /// List the pool's images
    #[command(after_help = "Example:\n  dmctl image ls ci")]
    Ls {
        /// The pool
        #[arg(value_parser = pool_name)]
        pool: String,
    },
    /// Layers, chain ids, sizes and shared bytes of an image
    #[command(after_help = "Example:\n  dmctl image inspect ci alpine:3.20")]
    Inspect {
        /// The pool
        #[arg(value_parser = pool_name)]
        pool: String,
        /// The image
        reference: String,
    },
    /// Remove an image (layers still used elsewhere are kept)
    #[command(after_help = "Example:\n  dmctl image rm ci alpine:3.20")]
    Rm {
        /// The pool
        #[arg(value_parser = pool_name)]
        pool: String,
        /// The image
        reference: String,
    },
    /// A writable, active snapshot of the image's top layer (a CI rootfs)
    #[command(
        after_help = "Example:\n  dmctl image provision ci alpine:3.20 job42 --mount /run/job42"
    )]
    Provision {
        /// The pool
        #[arg(value_parser = pool_name)]
        pool: String,
        /// The image
        reference: String,
        /// Name of the new volume
        #[arg(value_parser = volume_name)]
        name: String,
        /// Its size [default: the image's]
        #[arg(long, value_parser = size)]
        size: Option<u64>,
        /// Mount it here (an existing directory)
        #[arg(long, value_name = "DIR")]
        mount: Option<PathBuf>,
    },
    /// Keep N spare rootfs of the image made, active and mounted, so that
    /// `image provision` hands one out at once (0 removes them)
    #[command(after_help = "Example:\n  dmctl image warm ci alpine:3.20 --spares 8")]
    Warm {
        /// The pool
        #[arg(value_parser = pool_name)]
        pool: String,
        /// The image
        reference: String,
        /// How many spares to keep (of this size)
        #[arg(long, value_name = "N")]
        spares: usize,
        /// Size of the spares [default: the image's]; a provision gets a
        /// spare only if it asks for the same size
        #[arg(long, value_parser = size)]
        size: Option<u64>,
    },
    /// Turn a provisioned volume into a new image (its diff is a new layer)
    #[command(after_help = "Example:\n  dmctl image commit ci/job42 alpine:built")]
    Commit {
        /// The provisioned volume
        #[arg(value_parser = volref, value_name = "POOL/NAME")]
        volume: VolumeRef,
        /// Name of the new image
        reference: String,
    },
    /// Write an image as an OCI image layout
    #[command(after_help = "Example:\n  dmctl image export ci alpine:built ./out")]
    Export {
        /// The pool
        #[arg(value_parser = pool_name)]
        pool: String,
        /// The image
        reference: String,
        /// Directory of the layout (created if missing)
        dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum PoolCommand {
    /// Create a pool on sparse files (default) or on block devices
    #[command(after_help = "Example:\n  dmctl pool create ci --data-size 100G\n  \
                            dmctl pool create fast --data-dev /dev/nvme0n1p2 --meta-dev /dev/nvme0n1p3")]
    Create(PoolCreateArgs),
    /// Change a pool's settings
    #[command(after_help = "Example:\n  dmctl pool set ci --min-free 5 --max-overcommit 4")]
    Set {
        /// The pool
        #[arg(value_parser = pool_name)]
        pool: String,
        /// Refuse new volumes and snapshots below this much free data (or
        /// metadata) space, in percent (0 to 90)
        #[arg(long, value_name = "PCT", value_parser = clap::value_parser!(u8).range(0..=90))]
        min_free: Option<u8>,
        /// Free data space below which the kernel raises an event (a table reload)
        #[arg(long, value_parser = size)]
        low_water_mark: Option<u64>,
        /// Refuse volumes whose sizes add up to more than RATIO times the
        /// pool's data size (0 turns the limit off; over 1x is always warned about)
        #[arg(long, value_name = "RATIO", value_parser = overcommit)]
        max_overcommit: Option<f64>,
    },
    /// Extend a file-backed pool automatically before it fills
    #[command(
        long_about = "Extend a file-backed pool automatically before it fills: when its data \
                      or metadata usage reaches the threshold. Waits for the pool's \
                      low-water-mark event (kept at the threshold), re-checking every \
                      --interval seconds.",
        after_help = "Example:\n  dmctl pool monitor ci --threshold 80 --grow 20%"
    )]
    Monitor(MonitorArgs),
    /// List pools
    #[command(after_help = "Example:\n  dmctl pool ls")]
    Ls,
    /// Show a pool's status: usage, mode, settings
    #[command(after_help = "Example:\n  dmctl pool status ci")]
    Status {
        /// The pool
        #[arg(value_parser = pool_name)]
        pool: String,
    },
    /// Activate a pool (after a reboot: loops, thin_check, table, volumes)
    #[command(after_help = "Example:\n  dmctl pool activate --all")]
    Activate {
        /// The pool
        #[arg(required_unless_present = "all", value_parser = pool_name)]
        pool: Option<String>,
        /// Every pool under the state root
        #[arg(long, conflicts_with = "pool")]
        all: bool,
    },
    /// Deactivate a pool and its volumes (they must be unmounted)
    #[command(after_help = "Example:\n  dmctl pool deactivate ci")]
    Deactivate {
        /// The pool
        #[arg(value_parser = pool_name)]
        pool: String,
    },
    /// Destroy a pool, its volumes and its backing files
    #[command(
        after_help = "--force never removes a volume that a process holds open.\n\n\
                      Example:\n  dmctl pool destroy ci --force"
    )]
    Destroy {
        /// The pool
        #[arg(value_parser = pool_name)]
        pool: String,
        /// Destroy it with its volumes, unmounting mounted ones (as rm --force)
        #[arg(long)]
        force: bool,
    },
    /// Rebuild a pool's damaged metadata with thin_repair (pool inactive)
    #[command(after_help = "Example:\n  dmctl pool repair ci")]
    Repair {
        /// The pool
        #[arg(value_parser = pool_name)]
        pool: String,
        /// A device to write the repaired metadata to (device-backed pools)
        #[arg(long, value_name = "DEV")]
        spare_dev: Option<PathBuf>,
    },
    /// Grow a pool's data and/or metadata space, live
    #[command(after_help = "Example:\n  dmctl pool extend ci --data-size 200G")]
    Extend {
        /// The pool
        #[arg(value_parser = pool_name)]
        pool: String,
        /// New data size (file-backed: the file grows; device-backed: [default: the device's])
        #[arg(long, value_parser = size)]
        data_size: Option<u64>,
        /// New metadata size
        #[arg(long, value_parser = size)]
        meta_size: Option<u64>,
    },
}

fn overcommit(s: &str) -> Result<f64, String> {
    if s == "0" {
        return Ok(0.0);
    }
    ratio(s)
}

#[derive(Args, Debug)]
pub struct PoolCreateArgs {
    /// The new pool's name
    #[arg(value_parser = pool_name)]
    pub pool: String,
    /// Data space of a file-backed pool (a sparse file) [default: 100G]
    #[arg(long, value_parser = size)]
    pub data_size: Option<u64>,
    /// Metadata space [default: from the data size, as thin_metadata_size]
    #[arg(long, value_parser = size)]
    pub meta_size: Option<u64>,
    /// Data block size, 64K to 1G, a multiple of 64K [default: 64K]
    #[arg(long, value_parser = size)]
    pub block_size: Option<u64>,
    /// Free data space below which the kernel raises an event
    #[arg(long, value_parser = size)]
    pub low_water_mark: Option<u64>,
    /// A block device for data (with --meta-dev) instead of a file
    #[arg(long, requires = "meta_dev")]
    pub data_dev: Option<PathBuf>,
    /// A block device for metadata (with --data-dev)
    #[arg(long, requires = "data_dev")]
    pub meta_dev: Option<PathBuf>,
    /// Zero newly provisioned blocks (slower; off by default)
    #[arg(long)]
    pub zeroing: bool,
    /// Fail writes at once when the pool is full, instead of queueing them.
    /// Queued writes wait for `pool extend` at most the kernel's
    /// /sys/module/dm_thin_pool/parameters/no_space_timeout (60 s by
    /// default; 0 waits forever), then fail; dmctl does not change it
    #[arg(long)]
    pub error_if_no_space: bool,
    /// Refuse new volumes and snapshots below this much free data (or
    /// metadata) space, in percent
    #[arg(long, value_name = "PCT", default_value_t = 10,
          value_parser = clap::value_parser!(u8).range(0..=90))]
    pub min_free: u8,
    /// Refuse volumes whose sizes add up to more than RATIO times the data
    /// size [default: no limit; over 1x is warned about]
    #[arg(long, value_name = "RATIO", value_parser = overcommit)]
    pub max_overcommit: Option<f64>,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The pool
    #[arg(value_parser = pool_name)]
    pub pool: String,
    /// The image source, optionally with :REF
    #[arg(value_name = "SOURCE[:REF]")]
    pub source: String,
    /// Which image of the source [default: its only image]
    #[arg(long = "ref", value_name = "REF")]
    pub selector: Option<String>,
    /// The name it gets in the pool [default: its name in the source]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Size of the layer volumes (thin, so sparse)
    #[arg(long, value_parser = size, default_value = "10G")]
    pub size: u64,
    /// Filesystem of the layer volumes (ext4 or xfs)
    #[arg(long, value_parser = image_fs, default_value = "ext4")]
    pub fs: Filesystem,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The pool (active)
    #[arg(value_parser = pool_name)]
    pub pool: String,
    /// The unix socket to listen on [default: /run/dmctl/POOL.sock]
    #[arg(long, value_name = "PATH")]
    pub address: Option<PathBuf>,
    /// Filesystem of new snapshots without a parent
    #[arg(long, value_enum, default_value = "ext4")]
    pub fs: ServeFs,
    /// Size of new snapshots without a parent (a child has its parent's
    /// size unless its label containerd.io/snapshot/dmctl.size asks for more)
    #[arg(long, value_parser = size, default_value = "10G")]
    pub size: u64,
    /// Group allowed to use the socket (0660) [default: root only, 0600]
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Warm spares to keep of each image a container started from: its
    /// next container's root is then handed out, not made
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=1000))]
    pub spares: u16,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServeFs {
    Ext4,
    Xfs,
}

impl ServeFs {
    pub fn filesystem(self) -> Filesystem {
        match self {
            ServeFs::Ext4 => Filesystem::Ext4,
            ServeFs::Xfs => Filesystem::Xfs,
        }
    }
}

#[derive(Args, Debug)]
pub struct MonitorArgs {
    /// The pool
    #[arg(value_parser = pool_name)]
    pub pool: String,
    /// Percent used at which to extend
    #[arg(long, value_name = "PCT", default_value_t = 80,
          value_parser = clap::value_parser!(u8).range(1..=99))]
    pub threshold: u8,
    /// How much to add each time: a size (1G) or a percentage of the
    /// current size (20%)
    #[arg(long, value_name = "SIZE|PCT%", default_value = "20%")]
    pub grow: ops::monitor::Grow,
    /// Re-check at least every SECS seconds
    #[arg(long, value_name = "SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub interval: u64,
    /// Check and extend at most once, then exit (cron, systemd timers)
    #[arg(long)]
    pub once: bool,
}
