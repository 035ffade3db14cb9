//! Whether a process still has a file of incoming/ open for writing: what the kernel knows.
//!
//! A file that held still for `queue.settle_time` may still be half written: its writer may
//! only be pausing. So before a regular file is claimed, the kernel is asked:
//!
//! 1. **A read lease** (`fcntl(F_SETLEASE, F_RDLCK)`) is granted only while no process has the
//!    file open for writing, and refused with `EAGAIN` while one has. It is taken and given
//!    back at once ([`probe`]): a writer that opens the file in between waits those
//!    microseconds. A lease's break is signalled with SIGURG, which is ignored, instead of
//!    SIGIO, which would end the daemon.
//! 2. The kernel grants leases only to the file's owner or a holder of CAP_LEASE (in the
//!    initial user namespace, so not under the unit's `PrivateUsers=yes`), and some
//!    filesystems have none (NFS, FUSE, some overlay setups). Then the daemon's **inotify
//!    record** of incoming/ decides ([`WriteRecord`]): a name is being written from its
//!    `IN_CREATE` or any `IN_MODIFY` until an `IN_CLOSE_WRITE`. Opens are not counted:
//!    inotify merges identical events that follow each other unread, so two opens (or two
//!    closes) can arrive as one. What it cannot see: a second writer that keeps the file open
//!    after the first one closed it, a writer that opened an existing file and has not written
//!    yet, writes through a memory mapping, and anything not done through incoming/ on this
//!    host.
//! 3. When neither can tell (a file that was there before the daemon started, or whose
//!    events were lost to a queue overflow, or `queue.watch = false`), the file is claimed as
//!    before, once it held still, and the claim says why it could not be checked.
//!
//! ```text
//!   lease granted ──────────────────────────────▶ closed: claim
//!   lease refused, EAGAIN ──────────────────────▶ open for writing: wait for IN_CLOSE_WRITE
//!   lease impossible ─▶ inotify record: closed ──▶ claim
//!                                       writing ─▶ wait
//!                                       created ─▶ empty: a writer is yet to write: wait;
//!                                                  not empty: it came whole (a link): claim
//!                                       none ────▶ unknown: claim, saying so
//! ```
//!
//! A writer that opens the file in the instant between this check and the claim, or later
//! through processing/, is caught by the comparisons that follow the claim (see
//! `daemon::intake`), last of all at the job's end.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// fcntl(2)'s command that chooses a lease's break signal (Linux's fcntl.h; the libc crate
/// does not have it).
const F_SETSIG: libc::c_int = 10;

/// What the kernel said when asked for a read lease on a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lease {
    /// Granted (and given back): no process had the file open for writing.
    Granted,
    /// Refused because a process has it open for writing.
    WriterOpen,
    /// The file is gone (renamed away since it was listed).
    Gone,
    /// Not possible here: why (not the owner and no CAP_LEASE, no leases on this filesystem,
    /// the file cannot be opened for reading).
    Impossible(String),
}

/// Asks for a read lease on `path` and gives it back at once.
pub fn probe(path: &Path) -> Lease {
    use std::os::unix::fs::OpenOptionsExt;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Lease::Gone,
        Err(e) => return Lease::Impossible(format!("it cannot be opened for reading: {e}")),
    };
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function owns, with integer arguments only.
    if unsafe { libc::fcntl(fd, F_SETSIG, libc::SIGURG) } == -1 {
        let e = io::Error::last_os_error();
        return Lease::Impossible(format!("F_SETSIG: {e}"));
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) } == -1 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN) => Lease::WriterOpen,
            _ => Lease::Impossible(format!("no read lease: {e}")),
        };
    }
    // SAFETY: as above. Closing the file would give the lease back too; this says so.
    unsafe { libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK) };
    Lease::Granted
}

/// Whether a file may be claimed, as far as its writers go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Writers {
    /// No process has it open for writing.
    Closed,
    /// A process has it open for writing.
    Open,
    /// Neither the lease nor the inotify record can tell: why.
    Unknown(String),
}

/// Decides from the lease and, when no lease is possible, from what the inotify record says
/// of the file (`None`: nothing) and its size now.
pub fn judge(lease: Lease, seen: Option<Seen>, bytes: u64) -> Writers {
    match lease {
        Lease::Granted | Lease::Gone => Writers::Closed,
        Lease::WriterOpen => Writers::Open,
        Lease::Impossible(why) => match seen {
            Some(Seen::Closed) => Writers::Closed,
            Some(Seen::Writing) => Writers::Open,
            Some(Seen::Created) if bytes == 0 => Writers::Open,
            Some(Seen::Created) => Writers::Closed,
            None => Writers::Unknown(format!(
                "{why}; and inotify has no record of it (it was there before the daemon \
                 started, events were lost, or queue.watch is off)"
            )),
        },
    }
}

/// An inotify event of incoming/, as the record needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Created(OsString),
    /// Written to.
    Modified(OsString),
    /// Closed by a process that had it open for writing.
    ClosedWrite(OsString),
    MovedFrom {
        name: OsString,
        cookie: u32,
    },
    MovedTo {
        name: OsString,
        cookie: u32,
    },
    Deleted(OsString),
    /// Events were lost (the kernel's queue overflowed, or the watch ended).
    Lost,
}

impl Event {
    /// Whether the event may have made an entry ready to claim: something arrived, a writer
    /// closed, or what is known was lost.
    pub fn may_ready(&self) -> bool {
        !matches!(
            self,
            Event::Modified(_) | Event::MovedFrom { .. } | Event::Deleted(_)
        )
    }
}

/// What inotify said last of a name's writers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Created, and neither written to nor closed after writing since: a writer that has yet to
    /// write, or a file that came whole (a hard link).
    Created,
    /// Written to, and not closed after that.
    Writing,
    /// Closed after writing, or renamed into incoming/ from elsewhere.
    Closed,
}

/// What inotify said of the writers of each name of incoming/ that appeared while watched.
#[derive(Debug, Default)]
pub struct WriteRecord {
    names: HashMap<OsString, Seen>,
    /// A name just renamed away (its cookie and what was seen of it), until the event after.
    moving: Option<(u32, Option<Seen>)>,
}

impl WriteRecord {
    /// Takes one event into account.
    pub fn apply(&mut self, event: &Event) {
        // A rename within the directory is a MOVED_FROM directly followed by its MOVED_TO.
        let moving = self.moving.take();
        match event {
            Event::Created(name) => {
                self.names.insert(name.clone(), Seen::Created);
            }
            Event::Modified(name) => {
                self.names.insert(name.clone(), Seen::Writing);
            }
            Event::ClosedWrite(name) => {
                self.names.insert(name.clone(), Seen::Closed);
            }
            Event::MovedFrom { name, cookie } => {
                self.moving = Some((*cookie, self.names.remove(name)));
            }
            Event::MovedTo { name, cookie } => match moving {
                Some((from, seen)) if from == *cookie => match seen {
                    Some(seen) => {
                        self.names.insert(name.clone(), seen);
                    }
                    None => {
                        self.names.remove(name);
                    }
                },
                // From outside incoming/: by the convention, a rename is its writer's last step.
                _ => {
                    self.names.insert(name.clone(), Seen::Closed);
                }
            },
            Event::Deleted(name) => {
                self.names.remove(name);
            }
            Event::Lost => self.names.clear(),
        }
    }

    /// What was seen of `name`; `None` when the record does not know it.
    pub fn seen(&self, name: &OsStr) -> Option<Seen> {
        self.names.get(name).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> OsString {
        OsString::from(s)
    }

    #[test]
    fn a_lease_is_refused_while_a_writer_has_the_file_open_and_granted_once_it_closed() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.jsonl");
        let mut writer = std::fs::File::create(&path).unwrap();
        writer.write_all(b"{}\n").unwrap();
        assert_eq!(probe(&path), Lease::WriterOpen);
        let _reader = std::fs::File::open(&path).unwrap();
        drop(writer);
        assert_eq!(probe(&path), Lease::Granted, "a reader does not count");
        // Given back: a writer's open is not held up (without O_NONBLOCK it would wait for
        // the lease's break; with it, it would fail with EWOULDBLOCK).
        use std::os::unix::fs::OpenOptionsExt;
        let again = std::fs::OpenOptions::new()
            .append(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path);
        assert!(again.is_ok(), "{again:?}");
        assert_eq!(probe(&dir.path().join("gone")), Lease::Gone);
    }

    #[test]
    fn the_lease_decides_and_the_record_only_when_no_lease_is_possible() {
        let impossible = || Lease::Impossible("no read lease: EACCES".into());
        assert_eq!(
            judge(Lease::Granted, Some(Seen::Writing), 9),
            Writers::Closed
        );
        assert_eq!(
            judge(Lease::WriterOpen, Some(Seen::Closed), 9),
            Writers::Open
        );
        assert_eq!(judge(Lease::WriterOpen, None, 9), Writers::Open);
        assert_eq!(judge(impossible(), Some(Seen::Closed), 9), Writers::Closed);
        assert_eq!(judge(impossible(), Some(Seen::Writing), 9), Writers::Open);
        assert_eq!(judge(impossible(), Some(Seen::Created), 0), Writers::Open);
        assert_eq!(judge(impossible(), Some(Seen::Created), 9), Writers::Closed);
        match judge(impossible(), None, 9) {
            Writers::Unknown(why) => assert!(
                why.starts_with("no read lease: EACCES; and inotify has no record of it"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_name_is_written_from_its_creation_or_a_write_until_a_close_after_writing() {
        let mut r = WriteRecord::default();
        let seen = |r: &WriteRecord| r.seen(OsStr::new("a"));
        r.apply(&Event::Modified(name("before")));
        r.apply(&Event::ClosedWrite(name("before")));
        assert_eq!(r.seen(OsStr::new("before")), Some(Seen::Closed));
        r.apply(&Event::Created(name("a")));
        assert_eq!(seen(&r), Some(Seen::Created));
        r.apply(&Event::Modified(name("a")));
        assert_eq!(seen(&r), Some(Seen::Writing));
        r.apply(&Event::ClosedWrite(name("a")));
        assert_eq!(seen(&r), Some(Seen::Closed));
        // Opened again and written to.
        r.apply(&Event::Modified(name("a")));
        assert_eq!(seen(&r), Some(Seen::Writing));
        r.apply(&Event::Deleted(name("a")));
        assert_eq!(seen(&r), None);
    }

    #[test]
    fn a_rename_within_incoming_carries_what_was_seen_and_one_from_elsewhere_is_closed() {
        let mut r = WriteRecord::default();
        for e in [
            Event::Created(name(".a.part")),
            Event::Modified(name(".a.part")),
            Event::MovedFrom {
                name: name(".a.part"),
                cookie: 7,
            },
            Event::MovedTo {
                name: name("a.jsonl"),
                cookie: 7,
            },
        ] {
            r.apply(&e);
        }
        assert_eq!(r.seen(OsStr::new(".a.part")), None);
        assert_eq!(
            r.seen(OsStr::new("a.jsonl")),
            Some(Seen::Writing),
            "still open"
        );

        r.apply(&Event::MovedTo {
            name: name("b.jsonl"),
            cookie: 9,
        });
        assert_eq!(r.seen(OsStr::new("b.jsonl")), Some(Seen::Closed));

        // Renamed away (claimed), then another event: what was seen is gone for good.
        r.apply(&Event::MovedFrom {
            name: name("a.jsonl"),
            cookie: 11,
        });
        r.apply(&Event::Modified(name("b.jsonl")));
        r.apply(&Event::MovedTo {
            name: name("c.jsonl"),
            cookie: 11,
        });
        assert_eq!(r.seen(OsStr::new("c.jsonl")), Some(Seen::Closed));
        assert_eq!(r.seen(OsStr::new("a.jsonl")), None);

        // A name the record never knew, renamed within: still unknown.
        r.apply(&Event::MovedFrom {
            name: name("old"),
            cookie: 12,
        });
        r.apply(&Event::MovedTo {
            name: name("b.jsonl"),
            cookie: 12,
        });
        assert_eq!(r.seen(OsStr::new("b.jsonl")), None);
    }

    #[test]
    fn lost_events_forget_everything() {
        let mut r = WriteRecord::default();
        r.apply(&Event::Created(name("a")));
        r.apply(&Event::Lost);
        assert_eq!(r.seen(OsStr::new("a")), None);
        assert!(Event::Lost.may_ready());
        assert!(Event::ClosedWrite(name("a")).may_ready());
        assert!(!Event::Modified(name("a")).may_ready());
    }
}
