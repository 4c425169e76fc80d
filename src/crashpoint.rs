//! Named crash points for tests: `DMCTL_CRASH_AT=NAME` makes the process
//! kill itself with SIGKILL when it reaches the point NAME, as a power cut
//! or `kill -9` would, with no cleanup. Unset, a point costs one cached
//! environment lookup. `DMCTL_CRASH_LIST=1` prints every point reached, so
//! tests can enumerate a command's points.

use std::sync::OnceLock;

fn target() -> &'static Option<String> {
    static T: OnceLock<Option<String>> = OnceLock::new();
    T.get_or_init(|| std::env::var("DMCTL_CRASH_AT").ok())
}

fn listing() -> bool {
    static L: OnceLock<bool> = OnceLock::new();
    *L.get_or_init(|| std::env::var_os("DMCTL_CRASH_LIST").is_some())
}

/// Reach the crash point `name`.
pub fn hit(name: &str) {
    if listing() {
        // The CLI's sink writes it to stderr as `dmctl: crash point NAME`.
        crate::trace::note(&format!("crash point {name}"));
    }
    if target().as_deref() == Some(name) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
