//! Crash points for tests: with `BATCHWATCH_CRASH_AT=NAME` in its environment, the process
//! kills itself with SIGKILL when it reaches the point NAME, exactly as `kill -9` would at that
//! moment; with `BATCHWATCH_STOP_AT=NAME`, it stops itself with SIGSTOP there, the first time,
//! as a pause of its host would (until a SIGCONT). Without the variables, a point costs two
//! comparisons.
//!
//! The points sit right after each step that the next start must be able to pick up from:
//! see the `hit` calls in `daemon::intake`, `daemon::submit` and `daemon::collect`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// The environment variable naming the crash point.
pub const ENV: &str = "BATCHWATCH_CRASH_AT";

/// The environment variable naming the stop point.
pub const STOP_ENV: &str = "BATCHWATCH_STOP_AT";

fn read(var: &'static str, cell: &'static OnceLock<Option<String>>) -> Option<&'static str> {
    cell.get_or_init(|| std::env::var(var).ok().filter(|v| !v.is_empty()))
        .as_deref()
}

fn armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    read(ENV, &ARMED)
}

fn stop_armed() -> Option<&'static str> {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    read(STOP_ENV, &ARMED)
}

/// Dies here, hard, if this is the armed crash point; stops here, the first time, if this is
/// the armed stop point.
pub fn hit(name: &str) {
    static STOPPED: AtomicBool = AtomicBool::new(false);
    if stop_armed() == Some(name) && !STOPPED.swap(true, Ordering::Relaxed) {
        eprintln!("batchwatch: stop point {name} reached: stopping this process with SIGSTOP");
        // SAFETY: sending a signal to our own pid has no memory effects.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGSTOP);
        }
    }
    if armed() == Some(name) {
        eprintln!("batchwatch: crash point {name} reached: killing this process with SIGKILL");
        // SAFETY: sending a signal to our own pid has no memory effects.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
