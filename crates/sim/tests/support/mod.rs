//! The simulator's test kit: a simulator on `127.0.0.1:0` per test with a plain HTTP client
//! for it (`sim`), the wait loop, the tests that skip when something is missing (`skips`). The
//! simulator's own tests use it (`tests/sim/`), and so do batchwatch's (`tests/it/` at the top
//! includes this file), so both hold the simulator the same way; it never uses batchwatch's
//! client. Each test binary uses a part of it.

pub mod sim;
pub mod skips;

use std::time::{Duration, Instant};

/// The API key every test uses, for the daemon, the clients and the simulator alike. No log
/// line, file or database row may contain it.
pub const KEY: &str = "sk-batchwatch-test-KEY-do-not-leak-5f4e3d2c1b";

/// Polls `cond` every 50 ms until it holds; panics with `what` and the last answer after
/// `timeout`. The one wait loop of the tests: every wait for something to happen is this, or
/// [`poll_until`] where the caller says more on a timeout.
pub async fn wait_until<T: std::fmt::Debug>(
    what: &str,
    timeout: Duration,
    cond: impl AsyncFnMut() -> (bool, T),
) -> T {
    poll_until(timeout, cond)
        .await
        .unwrap_or_else(|seen| panic!("waited {timeout:?} for {what}; last saw {seen:#?}"))
}

/// As [`wait_until`], but a timeout is `Err` with the last answer, for a caller that adds its
/// own account (a log tail, say) before it fails.
pub async fn poll_until<T>(
    timeout: Duration,
    mut cond: impl AsyncFnMut() -> (bool, T),
) -> Result<T, T> {
    let deadline = Instant::now() + timeout;
    loop {
        let (done, seen) = cond().await;
        if done {
            return Ok(seen);
        }
        if Instant::now() >= deadline {
            return Err(seen);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
