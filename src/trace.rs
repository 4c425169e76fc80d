//! What the library has to say besides its return values, handed to the
//! front end: `-v` trace lines (one per kernel call, state write and
//! external program, with the milliseconds since the command started) and
//! notes (recovery of an interrupted command, warnings). The library never
//! prints; the CLI installs a sink that writes stderr, a server logs them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// What a line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A `-v` step.
    Trace,
    /// Something the user should know: work a command did besides the one
    /// asked (finishing an interrupted one), or a warning.
    Note,
    Warning,
}

/// Where lines go.
pub type Sink = fn(Kind, &str);

static ENABLED: AtomicBool = AtomicBool::new(false);
static START: OnceLock<Instant> = OnceLock::new();
static SINK: OnceLock<Sink> = OnceLock::new();

/// Install the sink (once per process; later calls are ignored).
pub fn set_sink(sink: Sink) {
    let _ = SINK.set(sink);
}

fn send(kind: Kind, msg: &str) {
    if let Some(sink) = SINK.get() {
        sink(kind, msg);
    }
}

/// Turn tracing on (the CLI does for `-v`).
pub fn enable() {
    START.get_or_init(Instant::now);
    ENABLED.store(true, Ordering::Relaxed);
}

/// Send a step if tracing is on; the message is only built then.
pub fn step(msg: impl FnOnce() -> String) {
    if ENABLED.load(Ordering::Relaxed) {
        let ms = START.get_or_init(Instant::now).elapsed().as_secs_f64() * 1000.0;
        send(Kind::Trace, &format!("[{ms:8.2} ms] {}", msg()));
    }
}

/// A note for the user.
pub fn note(msg: &str) {
    send(Kind::Note, msg);
}

/// A warning for the user.
pub fn warn(msg: &str) {
    send(Kind::Warning, msg);
}
