//! A small tmpfs, for tests of a full disk. Mounting needs root (the tests run as root in CI);
//! where it is not allowed the test is skipped with a printed reason, unless
//! `BATCHWATCH_REQUIRE_TMPFS=1` (which `.ci/run` sets): then it fails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs, unmounted when dropped.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

fn required() -> bool {
    std::env::var("BATCHWATCH_REQUIRE_TMPFS").as_deref() == Ok("1")
}

impl Tmpfs {
    /// Mounts a tmpfs of `kib` KiB on a new directory, or says why it cannot (and the test
    /// should return).
    pub fn mount(kib: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("temp dir");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={kib}k,mode=0755"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output();
        let reason = match out {
            Ok(o) if o.status.success() => return Some(Tmpfs { dir }),
            Ok(o) => format!(
                "cannot mount a tmpfs ({})",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => format!("cannot run mount: {e}"),
        };
        if required() {
            panic!("BATCHWATCH_REQUIRE_TMPFS=1, but {reason}");
        }
        eprintln!("skipped: {reason}");
        None
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system up with a file named `name`; returns its path.
    pub fn fill(&self, name: &str) -> PathBuf {
        let path = self.path().join(name);
        let mut file = std::fs::File::create(&path).expect("create filler");
        let block = vec![0xA5u8; 4096];
        while file.write_all(&block).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
