//! Finding files in incoming/ that are ready to claim.
//!
//! Only `NAME.jsonl` is claimed: temporary names (so writers can write, then rename), sidecars
//! (`NAME.jsonl.toml`, which move with their file) and anything else are left alone, and what
//! the operator should hear of is told once ([`super::strays`]). A request file becomes a job
//! once it has held still: its type, size, modification time and inode unchanged across two
//! looks at least `settle_time` apart, and, for a regular file, no process holding it open for
//! writing ([`super::writers`]: a paused writer is still a writer). A regular file then goes on
//! to validation; anything else by such a name (a symbolic link, a directory, a FIFO, a
//! socket, a device) or a name that is not UTF-8 is claimed too, and rejected with its reason,
//! so that it leaves incoming/ with an explanation instead of sitting there unexplained.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::time::Duration;

use crate::clock::{self, Timestamp};

use super::FileLook;
use super::strays::{self, Entry, Notice, Strays};
use super::writers::{self, WriteRecord, Writers};

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
    /// Why it could not be checked for writers, when it could not ([`Writers::Unknown`]).
    pub unchecked: Option<String>,
}

/// What a scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// The entries to claim, by name.
    pub ready: Vec<Ready>,
    /// Files that held still but that a process has open, found so for the first time.
    pub newly_open: Vec<OsString>,
    /// What to tell the operator about entries left in incoming/, each once.
    pub notices: Vec<Notice>,
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
    /// Files that held still but were open at the last scan.
    open: HashSet<OsString>,
    /// What is not claimed, and what was told of it.
    strays: Strays,
}

impl Scanner {
    pub fn new(settle: Duration) -> Scanner {
        Scanner {
            settle,
            seen: HashMap::new(),
            held: HashMap::new(),
            open: HashSet::new(),
            strays: Strays::default(),
        }
    }

    /// Changes how long an entry must hold still (a reload), keeping what was seen.
    pub fn set_settle(&mut self, settle: Duration) {
        self.settle = settle;
    }

    /// Lists `dir` and returns the entries that held still since an earlier look at least
    /// `settle` ago and that no process has open for writing (asked of the kernel, and of
    /// `record`, what inotify said of `dir`). `now` is passed in so tests need not sleep.
    pub fn scan(
        &mut self,
        dir: &std::path::Path,
        now: Timestamp,
        record: &WriteRecord,
    ) -> io::Result<Scan> {
        let mut present = HashMap::new();
        let mut open = HashSet::new();
        let mut found = Scan::default();
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            names.push(name.clone());
            if strays::entry(&name) != Entry::Request
                || self.held.get(&name).is_some_and(|until| now < *until)
            {
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
            let unchecked = if meta.is_file() {
                let lease = writers::probe(&entry.path());
                match writers::judge(lease, record.seen(&name), meta.len()) {
                    Writers::Closed => None,
                    Writers::Open => {
                        if !self.open.contains(&name) {
                            found.newly_open.push(name.clone());
                        }
                        open.insert(name);
                        continue;
                    }
                    Writers::Unknown(why) => Some(why),
                }
            } else {
                None
            };
            found.ready.push(Ready {
                kind: classify(&name, &meta),
                name,
                unchecked,
            });
        }
        self.seen = present;
        self.open = open;
        found.notices = self.strays.observe(&names, now);
        self.held
            .retain(|name, until| now < *until || self.seen.contains_key(name));
        found.ready.sort_by(|a, b| a.name.cmp(&b.name));
        found.newly_open.sort();
        Ok(found)
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
    use std::os::unix::ffi::OsStrExt;

    /// No inotify record: the lease alone decides (these tests own their files).
    fn none() -> WriteRecord {
        WriteRecord::default()
    }

    #[test]
    fn a_file_is_ready_only_after_holding_still_for_the_settle_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut scanner = Scanner::new(Duration::from_secs(1));
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        std::fs::write(dir.path().join("a.jsonl"), "x").unwrap();
        assert!(
            scanner
                .scan(dir.path(), t0, &none())
                .unwrap()
                .ready
                .is_empty(),
            "first sight"
        );
        assert!(
            scanner
                .scan(
                    dir.path(),
                    clock::add(t0, Duration::from_millis(500)),
                    &none()
                )
                .unwrap()
                .ready
                .is_empty(),
            "too soon"
        );
        // It grows: the clock starts again.
        std::fs::write(dir.path().join("a.jsonl"), "xy").unwrap();
        assert!(
            scanner
                .scan(
                    dir.path(),
                    clock::add(t0, Duration::from_millis(1100)),
                    &none()
                )
                .unwrap()
                .ready
                .is_empty()
        );
        let found = scanner
            .scan(
                dir.path(),
                clock::add(t0, Duration::from_millis(2200)),
                &none(),
            )
            .unwrap();
        assert_eq!(
            found.ready,
            vec![Ready {
                name: "a.jsonl".into(),
                kind: Kind::File { bytes: 2 },
                unchecked: None,
            }]
        );
    }

    #[test]
    fn a_file_that_held_still_is_not_ready_while_a_writer_has_it_open() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let mut scanner = Scanner::new(Duration::from_secs(1));
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let at = |s| clock::add(t0, Duration::from_secs(s));
        let mut writer = std::fs::File::create(dir.path().join("slow.jsonl")).unwrap();
        writer.write_all(b"{}\n").unwrap();
        scanner.scan(dir.path(), t0, &none()).unwrap();
        // Held still for long enough, but its writer only paused: reported once, not ready.
        let found = scanner.scan(dir.path(), at(5), &none()).unwrap();
        assert_eq!(
            found,
            Scan {
                ready: vec![],
                newly_open: vec!["slow.jsonl".into()],
                notices: vec![],
            }
        );
        assert_eq!(
            scanner.scan(dir.path(), at(6), &none()).unwrap(),
            Scan::default()
        );
        assert!(scanner.pending(), "still to be looked at");
        // Closed: ready at once, as it held still all along.
        drop(writer);
        let found = scanner.scan(dir.path(), at(7), &none()).unwrap();
        assert_eq!(found.ready.len(), 1);
        assert_eq!(found.ready[0].unchecked, None);
        assert!(found.newly_open.is_empty());
    }

    #[test]
    fn a_held_entry_is_left_alone_until_its_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut scanner = Scanner::new(Duration::from_millis(1));
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        std::fs::write(dir.path().join("stuck.jsonl"), "x").unwrap();
        scanner.scan(dir.path(), t0, &none()).unwrap();
        assert_eq!(
            scanner
                .scan(dir.path(), clock::add(t0, Duration::from_secs(1)), &none())
                .unwrap()
                .ready
                .len(),
            1
        );
        scanner.hold(
            OsStr::new("stuck.jsonl"),
            clock::add(t0, Duration::from_secs(60)),
        );
        assert!(
            scanner
                .scan(dir.path(), clock::add(t0, Duration::from_secs(2)), &none())
                .unwrap()
                .ready
                .is_empty()
        );
        assert!(
            scanner
                .scan(dir.path(), clock::add(t0, Duration::from_secs(30)), &none())
                .unwrap()
                .ready
                .is_empty()
        );
        scanner
            .scan(dir.path(), clock::add(t0, Duration::from_secs(61)), &none())
            .unwrap();
        assert_eq!(
            scanner
                .scan(dir.path(), clock::add(t0, Duration::from_secs(62)), &none())
                .unwrap()
                .ready
                .len(),
            1
        );
    }

    #[test]
    fn only_request_files_are_ready_and_strays_are_told_once() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "a.jsonl",
            "notes.txt",
            "a.jsonl.toml",
            "b.jsonl.part",
            ".c.jsonl",
        ] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        let mut scanner = Scanner::new(Duration::from_millis(1));
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        let first = scanner.scan(dir.path(), t0, &none()).unwrap();
        assert_eq!(first.notices, vec![Notice::Stray("notes.txt".into())]);
        let found = scanner
            .scan(dir.path(), clock::add(t0, Duration::from_secs(1)), &none())
            .unwrap();
        let names: Vec<&OsStr> = found.ready.iter().map(|r| r.name.as_os_str()).collect();
        assert_eq!(names, ["a.jsonl"]);
        assert!(found.notices.is_empty(), "told once");
    }

    #[test]
    fn links_directories_and_fifos_are_unfit() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("link.jsonl")).unwrap();
        std::fs::create_dir(dir.path().join("dir.jsonl")).unwrap();
        let fifo =
            std::ffi::CString::new(dir.path().join("fifo.jsonl").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid path and mode.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let mut scanner = Scanner::new(Duration::from_millis(1));
        let t0 = Timestamp::from_second(1_800_000_000).unwrap();
        scanner.scan(dir.path(), t0, &none()).unwrap();
        let ready = scanner
            .scan(dir.path(), clock::add(t0, Duration::from_secs(1)), &none())
            .unwrap()
            .ready;
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
