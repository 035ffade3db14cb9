//! Set-up shared by the integration tests.

pub mod bigfile;
pub mod chaos;
pub mod client;
pub mod cluster;
pub mod containers;
pub mod daemon;
pub mod docker;
pub mod fixtures;
pub mod in_process;
pub mod memory;
pub mod notify;
pub mod partition;
pub mod postgres;
pub mod process;
pub mod static_bin;
pub mod tmpfs;

// The simulator's test kit, shared with its own tests: the key, the wait loop, a simulator per
// test with a plain HTTP client, the skip checks. These tests use a part of it.
#[allow(dead_code)]
#[path = "../../../crates/sim/tests/support/mod.rs"]
mod kit;
pub use kit::{KEY, poll_until, sim, skips, wait_until};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};

/// A port nothing listens on now, for something a test starts (or expects to find free) later.
///
/// Taken below the kernel's ephemeral range (32768 and up by default), where `bind(:0)` and every
/// outgoing connection take theirs: a port found free there can be taken by another test's
/// connection before it is used, which made a check that the port is free fail now and then.
/// Each test process starts at its own place in 20000..32000 and walks on from there.
pub fn unused_port() -> u16 {
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = (std::process::id() % u32::from(SPAN)) as u16;
    for _ in 0..SPAN {
        let port = FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN)
}

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

/// A JSON file's content.
pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
