//! Finding files in incoming/ that are ready to claim.
//!
//! A name is ignored when it starts with `.` or ends in `.part` or `.tmp` (so writers can write,
//! then rename), and a `NAME.toml` is a sidecar that moves with `NAME`, never a job of its own.
//! Everything else becomes a job once it has held still: its type, size, modification time and
//! inode unchanged across two looks at least `settle_time` apart. A regular file then goes on to
//! validation; anything else (a symbolic link, a directory, a FIFO, a socket, a device) or a
//! name that is not UTF-8 is claimed too, and rejected with its reason, so that it leaves
//! incoming/ with an explanation instead of sitting there unexplained.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::time::Duration;

use crate::clock::{self, Timestamp};

use super::{FileLook, SIDECAR_SUFFIX};

/// What a ready entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file of this many bytes.
    File { bytes: u64 },
    /// Something that cannot be a job: the rule's code and why.
    Unfit { code: &'static str, message: String },
}

/// An entry of incoming/ that held still and may be claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    pub name: OsString,
    pub kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Look {
    kind: u32,
    file: FileLook,
}

/// Remembers what it saw, so that the next scan can tell which files held still.
#[derive(Debug)]
pub struct Scanner {
    settle: Duration,
    seen: HashMap<OsString, (Look, Timestamp)>,
    /// Entries that could not be claimed (a permission problem), left alone until then.
    held: HashMap<OsString, Timestamp>,
}

/// Whether `name` is skipped by the scan entirely.
pub fn is_ignored(name: &OsStr) -> bool {
    let b = name.as_bytes();
    b.starts_with(b".")
        || b.ends_with(b".part")
        || b.ends_with(b".tmp")
        || b.ends_with(SIDECAR_SUFFIX.as_bytes())
}

impl Scanner {
    pub fn new(settle: Duration) -> Scanner {
        Scanner {
            settle,
            seen: HashMap::new(),
            held: HashMap::new(),
        }
    }

    /// Lists `dir` and returns the entries that held still since an earlier look at least
    /// `settle` ago. `now` is passed in so tests need not sleep.
    pub fn scan(&mut self, dir: &std::path::Path, now: Timestamp) -> io::Result<Vec<Ready>> {
        let mut present = HashMap::new();
        let mut ready = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if is_ignored(&name) || self.held.get(&name).is_some_and(|until| now < *until) {
                continue;
            }
            let meta = match std::fs::symlink_metadata(entry.path()) {
                Ok(m) => m,
                // Gone between the listing and the look: a writer renamed it away.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let look = Look {
                kind: meta.mode() & libc::S_IFMT,
                file: FileLook::of(&meta),
            };
            let first_seen = match self.seen.get(&name) {
                Some((before, since)) if *before == look => *since,
                _ => now,
            };
            present.insert(name.clone(), (look, first_seen));
            if clock::between(first_seen, now) < self.settle || first_seen == now {
                continue;
            }
            ready.push(Ready {
                kind: classify(&name, &meta),
                name,
            });
        }
        self.seen = present;
        self.held
            .retain(|name, until| now < *until || self.seen.contains_key(name));
        ready.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(ready)
    }

    /// Whether entries seen at the last scan are still settling.
    pub fn pending(&self) -> bool {
        !self.seen.is_empty()
    }

    /// Leaves an entry alone until `until`: it could not be claimed, and trying again at every
    /// scan would only repeat the same error.
    pub fn hold(&mut self, name: &OsStr, until: Timestamp) {
        self.held.insert(name.to_owned(), until);
        self.seen.remove(name);
    }

    /// Forgets a name (it was claimed).
    pub fn forget(&mut self, name: &OsStr) {
        self.seen.remove(name);
    }
}

fn classify(name: &OsStr, meta: &std::fs::Metadata) -> Kind {
    let ft = meta.file_type();
    let unfit = |what: &str| Kind::Unfit {
        code: "not_a_regular_file",
        message: format!("it is {what}, not a regular file; only regular files are processed"),
    };
    if ft.is_symlink() {
        return unfit("a symbolic link (links are not followed)");
    }
    if ft.is_dir() {
        return unfit("a directory");
    }
    if ft.is_fifo() {
        return unfit("a FIFO (named pipe)");
    }
    if ft.is_socket() {
        return unfit("a socket");
    }
    if ft.is_block_device() || ft.is_char_device() {
        return unfit("a device");
    }
    if name.to_str().is_none() {
        return Kind::Unfit {
            code: "invalid_file_name",
            message: "the file name is not valid UTF-8; rename it".into(),
        };
    }
    Kind::File { bytes: meta.len() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_ready_only_after_holding_still_for_the_settle_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut scanner = Scanner::new(Duration::from_secs(1));
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        std::fs::write(dir.path().join("a.jsonl"), "x").unwrap();
        assert!(
            scanner.scan(dir.path(), t0).unwrap().is_empty(),
            "first sight"
        );
        assert!(
            scanner
                .scan(dir.path(), clock::add(t0, Duration::from_millis(500)))
                .unwrap()
                .is_empty(),
            "too soon"
        );
        // It grows: the clock starts again.
        std::fs::write(dir.path().join("a.jsonl"), "xy").unwrap();
        assert!(
            scanner
                .scan(dir.path(), clock::add(t0, Duration::from_millis(1100)))
                .unwrap()
                .is_empty()
        );
        let ready = scanner
            .scan(dir.path(), clock::add(t0, Duration::from_millis(2200)))
            .unwrap();
        assert_eq!(
            ready,
            vec![Ready {
                name: "a.jsonl".into(),
                kind: Kind::File { bytes: 2 }
            }]
        );
    }

    #[test]
    fn a_held_entry_is_left_alone_until_its_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut scanner = Scanner::new(Duration::from_millis(1));
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        std::fs::write(dir.path().join("stuck"), "x").unwrap();
        scanner.scan(dir.path(), t0).unwrap();
        assert_eq!(
            scanner
                .scan(dir.path(), clock::add(t0, Duration::from_secs(1)))
                .unwrap()
                .len(),
            1
        );
        scanner.hold(OsStr::new("stuck"), clock::add(t0, Duration::from_secs(60)));
        assert!(
            scanner
                .scan(dir.path(), clock::add(t0, Duration::from_secs(2)))
                .unwrap()
                .is_empty()
        );
        assert!(
            scanner
                .scan(dir.path(), clock::add(t0, Duration::from_secs(30)))
                .unwrap()
                .is_empty()
        );
        scanner
            .scan(dir.path(), clock::add(t0, Duration::from_secs(61)))
            .unwrap();
        assert_eq!(
            scanner
                .scan(dir.path(), clock::add(t0, Duration::from_secs(62)))
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn temporary_hidden_and_sidecar_names_are_ignored() {
        for name in [".hidden", "a.jsonl.part", "b.tmp", "c.jsonl.toml"] {
            assert!(is_ignored(OsStr::new(name)), "{name}");
        }
        assert!(!is_ignored(OsStr::new("d.jsonl")));
    }

    #[test]
    fn links_directories_and_fifos_are_unfit() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("link")).unwrap();
        std::fs::create_dir(dir.path().join("dir")).unwrap();
        let fifo = std::ffi::CString::new(dir.path().join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid path and mode.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let mut scanner = Scanner::new(Duration::from_millis(1));
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        scanner.scan(dir.path(), t0).unwrap();
        let ready = scanner
            .scan(dir.path(), clock::add(t0, Duration::from_secs(1)))
            .unwrap();
        assert_eq!(ready.len(), 3);
        for r in ready {
            assert!(
                matches!(
                    r.kind,
                    Kind::Unfit {
                        code: "not_a_regular_file",
                        ..
                    }
                ),
                "{r:?}"
            );
        }
    }
}
