//! `dmctl -v`: one line on stderr per kernel call, state write and external
//! program, with the milliseconds since the command started.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static START: OnceLock<Instant> = OnceLock::new();

/// Turn tracing on (the CLI does for `-v`).
pub fn enable() {
    START.get_or_init(Instant::now);
    ENABLED.store(true, Ordering::Relaxed);
}

/// Print a step if tracing is on; the message is only built then.
pub fn step(msg: impl FnOnce() -> String) {
    if ENABLED.load(Ordering::Relaxed) {
        let ms = START.get_or_init(Instant::now).elapsed().as_secs_f64() * 1000.0;
        eprintln!("dmctl: [{ms:8.2} ms] {}", msg());
    }
}
