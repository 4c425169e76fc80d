//! `dmctl pool monitor`: grow a file-backed pool before it fills.
//!
//! The check: when the data (or metadata) usage is at or above the threshold
//! (or the kernel already switched the pool to `out_of_data_space`, or to
//! read-only for lack of metadata), extend it by `--grow`, as often as needed
//! to bring the usage below the threshold, with the same live path as
//! `dmctl pool extend` (record, grow the sparse file, refresh the loop's
//! capacity, reload the table).
//!
//! The wait between checks: device-mapper's event poll. The monitor keeps the
//! pool's low-water mark at `100 - threshold` percent of its data size, so
//! the kernel raises an event on the pool the moment the free data blocks
//! fall below it (once per resume; every extend resumes the pool, re-arming
//! it); mode changes (`out_of_data_space`, read-only) and the metadata
//! low-water mark raise events too. Any dm event wakes the monitor, which
//! re-checks; without one it re-checks every `--interval` seconds anyway.
//!
//! Why not `DM_DEV_WAIT` (`devicemapper::DM::device_wait`): the kernel waits
//! until the device's event counter differs from the `event_nr` in the
//! request, and the crate always sends 0 there (the field carries its udev
//! flags), so after a pool's first event it returns at once, forever. The
//! control node's poll (`DM_DEV_ARM_POLL`, kernel 4.13+) has no such problem.

use super::{pool, Ctx};
use crate::error::{Error, Result};
use crate::kernel::status::{PoolMode, PoolStatusLine, META_BLOCK_BYTES};
use crate::store::model::{now, Backing, PoolRecord};
use crate::units::format_size;
use serde::Serialize;
use std::time::{Duration, Instant};

/// The kernel never uses more metadata than this (see `pool extend`).
const MAX_META: u64 = 16 << 30;
/// Metadata grows by at least this much.
const MIN_META_GROWTH: u64 = 1 << 20;

/// How much one extension adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grow {
    /// A percentage of the current size.
    Percent(u32),
    /// Bytes.
    Bytes(u64),
}

impl Grow {
    fn of(self, size: u64) -> u64 {
        match self {
            Grow::Percent(p) => size / 100 * u64::from(p),
            Grow::Bytes(b) => b,
        }
    }
}

impl std::str::FromStr for Grow {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Grow, String> {
        let g = match s.strip_suffix('%') {
            Some(p) => Grow::Percent(
                p.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("invalid percentage '{s}'"))?,
            ),
            None => Grow::Bytes(crate::units::parse_size(s).map_err(|e| e.to_string())?),
        };
        match g {
            Grow::Percent(0) | Grow::Bytes(0) => Err(format!("invalid growth '{s}': must be > 0")),
            Grow::Percent(p) if p > 1000 => Err(format!("invalid growth '{s}': at most 1000%")),
            g => Ok(g),
        }
    }
}

impl std::fmt::Display for Grow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Grow::Percent(p) => write!(f, "{p}%"),
            Grow::Bytes(b) => f.write_str(&format_size(*b)),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Percent used (data or metadata) at which the pool is extended.
    pub threshold: u8,
    pub grow: Grow,
    /// Re-check at least this often.
    pub interval: Duration,
    /// Check (and extend) at most once, then return.
    pub once: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            threshold: 80,
            grow: Grow::Percent(20),
            interval: Duration::from_secs(10),
            once: false,
        }
    }
}

/// What one check found and did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub pool: String,
    /// Unix seconds.
    pub time: u64,
    /// Seconds since the monitor started.
    pub elapsed: f64,
    pub mode: Option<PoolMode>,
    pub data_used: u64,
    pub data_size: u64,
    pub meta_used: u64,
    pub meta_size: u64,
    /// The new data size, if this check extended the data.
    pub data_extended_to: Option<u64>,
    pub meta_extended_to: Option<u64>,
    /// The low-water mark set, if this check changed it.
    pub low_water_mark: Option<u64>,
    /// What went wrong, for a check that failed (the monitor goes on).
    pub error: Option<String>,
}

impl Report {
    pub fn extended(&self) -> bool {
        self.data_extended_to.is_some() || self.meta_extended_to.is_some()
    }

    /// One line for the text output.
    pub fn line(&self) -> String {
        let pct = |u: u64, s: u64| u * 100 / s.max(1);
        let mut s = format!(
            "[{:.1}s] pool {}: {} data {}/{} ({}%), metadata {}/{} ({}%)",
            self.elapsed,
            self.pool,
            self.mode.map(|m| m.as_str()).unwrap_or("inactive"),
            format_size(self.data_used),
            format_size(self.data_size),
            pct(self.data_used, self.data_size),
            format_size(self.meta_used),
            format_size(self.meta_size),
            pct(self.meta_used, self.meta_size),
        );
        if let Some(d) = self.data_extended_to {
            s.push_str(&format!("; extended data to {}", format_size(d)));
        }
        if let Some(m) = self.meta_extended_to {
            s.push_str(&format!("; extended metadata to {}", format_size(m)));
        }
        if let Some(l) = self.low_water_mark {
            s.push_str(&format!("; low-water mark {}", format_size(l)));
        }
        if let Some(e) = &self.error {
            s.push_str(&format!("; error: {e}"));
        }
        s
    }
}

fn validate(rec: &PoolRecord, opts: &Options) -> Result<()> {
    if !(1..=99).contains(&opts.threshold) {
        return Err(Error::Invalid(format!(
            "invalid threshold {}%: must be 1 to 99",
            opts.threshold
        )));
    }
    if !matches!(
        (&rec.data, &rec.meta),
        (Backing::File { .. }, Backing::File { .. })
    ) {
        return Err(Error::Invalid(format!(
            "pool '{}' is on block devices, which dmctl cannot grow; grow them \
             (e.g. lvextend) and run `dmctl pool extend {}` (`pool monitor` \
             grows file-backed pools only)",
            rec.name, rec.name
        )));
    }
    Ok(())
}

/// The low-water mark for a threshold: (100 - threshold)% of the data size,
/// in whole blocks, at least one.
fn low_water_for(data_size: u64, block_size: u64, threshold: u8) -> u64 {
    let blocks = data_size / block_size;
    let lw = blocks * u64::from(100 - threshold) / 100;
    lw.clamp(1, blocks.saturating_sub(1).max(1)) * block_size
}

/// The size to grow to: by `grow` steps until `used` is below the threshold.
fn target(size: u64, used: u64, grow: u64, threshold: u8, align: u64, max: u64) -> u64 {
    let grow = grow.max(align);
    let mut t = size;
    loop {
        t = t.saturating_add(grow);
        if used * 100 < t * u64::from(threshold) || t >= max {
            return (t / align * align).min(max / align * align);
        }
    }
}

/// One check: read the pool's status and extend what crossed the threshold.
/// `manage_low_water`: also keep the low-water mark at the threshold.
pub fn check(
    ctx: &Ctx,
    pool_name: &str,
    opts: &Options,
    manage_low_water: bool,
    started: Instant,
) -> Result<Report> {
    let rec = ctx.ready_pool(pool_name)?;
    validate(&rec, opts)?;
    ctx.active_pool_device(&rec)?;
    let s = match ctx.pool_status(&rec)? {
        PoolStatusLine::Active(s) => s,
        PoolStatusLine::Fail | PoolStatusLine::Error => {
            return Err(Error::PoolState(format!(
                "pool '{pool_name}' has failed; nothing to extend (its metadata may need \
                 `dmctl pool repair`)"
            )))
        }
    };
    let mut r = Report {
        pool: pool_name.to_string(),
        time: now(),
        elapsed: started.elapsed().as_secs_f64(),
        mode: Some(s.mode),
        data_used: s.used_data_blocks * rec.block_size,
        data_size: s.total_data_blocks * rec.block_size,
        meta_used: s.used_meta_blocks * META_BLOCK_BYTES,
        meta_size: s.total_meta_blocks * META_BLOCK_BYTES,
        data_extended_to: None,
        meta_extended_to: None,
        low_water_mark: None,
        error: None,
    };
    let th = u64::from(opts.threshold);
    let data_hot =
        s.mode == PoolMode::OutOfDataSpace || r.data_used * 100 >= r.data_size.max(1) * th;
    let meta_free = s.total_meta_blocks.saturating_sub(s.used_meta_blocks);
    let meta_hot = r.meta_used * 100 >= r.meta_size.max(1) * th
        || (s.mode == PoolMode::ReadOnly && meta_free <= (s.total_meta_blocks / 10).min(4096) + 1);
    let new_data = data_hot.then(|| {
        target(
            rec.data_size,
            r.data_used,
            opts.grow.of(rec.data_size),
            opts.threshold,
            rec.block_size,
            u64::MAX,
        )
    });
    let new_meta = (meta_hot && rec.meta_size < MAX_META).then(|| {
        target(
            rec.meta_size,
            r.meta_used,
            opts.grow.of(rec.meta_size).max(MIN_META_GROWTH),
            opts.threshold,
            META_BLOCK_BYTES,
            MAX_META,
        )
    });
    let final_data = new_data.unwrap_or(rec.data_size);
    let want_lw = low_water_for(final_data, rec.block_size, opts.threshold);
    let lw = (manage_low_water && want_lw != rec.low_water_mark).then_some(want_lw);
    if new_data.is_some() || new_meta.is_some() || lw.is_some() {
        let done = pool::extend_with(
            ctx,
            pool_name,
            Some(final_data),
            Some(new_meta.unwrap_or(rec.meta_size)),
            lw,
        )?;
        r.data_extended_to = new_data.map(|_| done.data_size);
        r.meta_extended_to = new_meta.map(|_| done.meta_size);
        r.low_water_mark = lw.map(|_| done.low_water_mark);
    }
    Ok(r)
}

/// `dmctl pool monitor`: check, extend if needed, wait for a dm event or the
/// interval, again; with `once`, one check. `report` gets every check that
/// extended something or failed, and the first one. A failed check (pool
/// inactive, lock held too long...) is reported and retried, except the
/// first: a monitor that cannot start says so and exits.
pub fn run(
    ctx: &Ctx,
    pool_name: &str,
    opts: &Options,
    mut report: impl FnMut(&Report),
) -> Result<()> {
    let started = Instant::now();
    let rec = ctx.ready_pool(pool_name)?;
    validate(&rec, opts)?;
    if opts.once {
        let r = check(ctx, pool_name, opts, false, started)?;
        report(&r);
        return Ok(());
    }
    let events = crate::kernel::dm::Events::open();
    let mut first = true;
    let mut last_error: Option<String> = None;
    loop {
        // Armed before the check: an event during it wakes the wait at once.
        if let Some(e) = &events {
            e.arm();
        }
        match check(ctx, pool_name, opts, true, started) {
            Ok(r) => {
                if first || r.extended() || last_error.is_some() {
                    report(&r);
                }
                last_error = None;
                if r.extended() {
                    // Writers may still be going: look again at once.
                    first = false;
                    continue;
                }
            }
            Err(e) if first => return Err(e),
            Err(e) => {
                let msg = e.to_string();
                if last_error.as_deref() != Some(msg.as_str()) {
                    report(&Report {
                        pool: pool_name.to_string(),
                        time: now(),
                        elapsed: started.elapsed().as_secs_f64(),
                        mode: None,
                        data_used: 0,
                        data_size: 0,
                        meta_used: 0,
                        meta_size: 0,
                        data_extended_to: None,
                        meta_extended_to: None,
                        low_water_mark: None,
                        error: Some(msg.clone()),
                    });
                }
                last_error = Some(msg);
            }
        }
        first = false;
        match &events {
            Some(e) => {
                e.wait(opts.interval);
            }
            None => std::thread::sleep(opts.interval),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grow_parses() {
        assert_eq!("20%".parse::<Grow>(), Ok(Grow::Percent(20)));
        assert_eq!("1G".parse::<Grow>(), Ok(Grow::Bytes(1 << 30)));
        assert!("0%".parse::<Grow>().is_err());
        assert!("0".parse::<Grow>().is_err());
        assert!("x%".parse::<Grow>().is_err());
        assert!("2000%".parse::<Grow>().is_err());
    }

    #[test]
    fn target_grows_below_threshold() {
        let m = 1 << 20;
        // 256M at 100% used, +20% steps, threshold 80: 256 -> 307.2 (83%) -> 358.4.
        let t = target(256 * m, 256 * m, 256 * m / 100 * 20, 80, 64 << 10, u64::MAX);
        assert!(256 * m * 100 < t * 80, "{t}");
        assert_eq!(t % (64 << 10), 0);
        // Already below after one step.
        let t = target(256 * m, 205 * m, 51 * m, 80, 64 << 10, u64::MAX);
        assert_eq!(t, 307 * m);
        // Capped.
        assert_eq!(
            target(15 << 30, 15 << 30, 4 << 30, 80, 4096, MAX_META),
            MAX_META
        );
    }

    #[test]
    fn low_water_follows_threshold() {
        let b = 64 << 10;
        assert_eq!(low_water_for(256 << 20, b, 80), 819 * b);
        assert_eq!(low_water_for(16 * b, b, 99), b);
        assert!(low_water_for(16 * b, b, 1) < 16 * b);
    }
}
