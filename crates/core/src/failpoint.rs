//! Crash points for tests: with `BATCHWATCH_CRASH_AT=NAME` in its environment, the process
//! kills itself with SIGKILL when it reaches the point NAME, exactly as `kill -9` would at that
//! moment. Without the variable, a point costs one comparison.
//!
//! The points sit right after each step that the next start must be able to pick up from:
//! see the `hit` calls in `daemon::intake`, `daemon::submit` and `daemon::collect`.

use std::sync::OnceLock;

/// The environment variable naming the crash point.
pub const ENV: &str = "BATCHWATCH_CRASH_AT";

fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var(ENV).ok().filter(|v| !v.is_empty()))
        .as_deref()
}

/// Dies here, hard, if this is the armed point.
pub fn hit(name: &str) {
    if armed() == Some(name) {
        eprintln!("batchwatch: crash point {name} reached: killing this process with SIGKILL");
        // SAFETY: sending a signal to our own pid has no memory effects.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
