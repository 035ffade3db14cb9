//! Set-up shared by the integration tests.

pub mod bigfile;
pub mod client;
pub mod containers;
pub mod daemon;
pub mod docker;
pub mod fixtures;
pub mod in_process;
pub mod notify;
pub mod process;
pub mod schema;
pub mod sim;
pub mod static_bin;
pub mod tmpfs;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The API key every test uses, for the daemon, the clients and the simulator alike. No log
/// line, file or database row may contain it.
pub const KEY: &str = "sk-batchwatch-test-KEY-do-not-leak-5f4e3d2c1b";

/// A scratch directory with a configuration file whose paths all point inside it.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn queue_dir(&self) -> PathBuf {
        self.path().join("queue")
    }

    pub fn db_path(&self) -> PathBuf {
        self.path().join("state.db")
    }

    /// Writes `batchwatch.toml` with the sandbox's paths, then `extra` TOML, and returns its path.
    /// The metrics endpoint is off unless `extra` has a `[metrics]` table: tests run side by side.
    pub fn write_config(&self, extra: &str) -> PathBuf {
        let path = self.path().join("batchwatch.toml");
        let metrics = if extra.contains("[metrics]") {
            ""
        } else {
            "[metrics]\nlisten = \"\"\n\n"
        };
        let text = format!(
            "[queue]\ndir = {:?}\n\n[database]\npath = {:?}\n\n{metrics}{extra}\n",
            self.queue_dir().display().to_string(),
            self.db_path().display().to_string(),
        );
        std::fs::write(&path, text).expect("write config");
        path
    }
}

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

/// A JSON file's content.
pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
