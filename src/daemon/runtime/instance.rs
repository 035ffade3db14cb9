//! One daemon per queue tree and SQLite database; several on a PostgreSQL database.
//!
//! Two daemons on one SQLite database would both pick up the same submission intents and could
//! create two batches for one job; two on one queue tree would each recover the other's files
//! in `processing/`. So a daemon on SQLite holds an exclusive lock on
//! `QUEUE_DIR/.batchwatch.lock` and on `DATABASE.lock` for its whole life, and a second one
//! refuses to start, naming the lock and the process that holds it. The locks are `flock(2)`
//! locks: the kernel drops them when the process ends, however it ends, so a crash never leaves
//! a stale lock behind. Status queries and `batchwatch cancel` take no lock.
//!
//! Daemons on one PostgreSQL database share the queue tree: each registers in the database as
//! an instance with a lease, and the leases decide who moves which job (`runtime::lease`).
//! They hold the queue's lock file shared, so that a daemon on a SQLite database is refused
//! on a tree they use, and they on its. Across hosts (NFS, CephFS) flock is not relied on: the
//! leases are what keeps the instances apart there.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::config::ConfigError;

/// The lock file's name inside the queue directory.
pub const QUEUE_LOCK: &str = ".batchwatch.lock";

/// The locks a running daemon holds; dropping it releases them.
#[derive(Debug)]
pub struct InstanceLock {
    _held: Vec<File>,
}

impl InstanceLock {
    /// Locks the queue tree and, for a SQLite database, the database, or says which one
    /// another process holds. Without a SQLite database (on PostgreSQL), the queue tree is
    /// locked shared: other daemons on PostgreSQL may share it.
    pub fn acquire(queue_dir: &Path, database: Option<&Path>) -> anyhow::Result<InstanceLock> {
        let Some(database) = database else {
            let shared = lock("queue.dir", &queue_lock(queue_dir), Mode::Shared)?;
            return Ok(InstanceLock {
                _held: vec![shared],
            });
        };
        let held = vec![
            lock("queue.dir", &queue_lock(queue_dir), Mode::Exclusive)?,
            lock_database(database)?,
        ];
        Ok(InstanceLock { _held: held })
    }
}

/// Locks the SQLite database at `database` and checks that this user may write it.
fn lock_database(database: &Path) -> anyhow::Result<File> {
    // The lock must be the same file whatever path reaches the database (SQLite follows
    // symlinks), so its directory is resolved; the queue's directory is one inode anyway.
    let parent = database_dir(database);
    let unusable = |what: &str, e: std::io::Error| {
        ConfigError::key(
            "database.path",
            format!("cannot {what} {}: {}", parent.display(), as_user(&e)),
        )
    };
    std::fs::create_dir_all(parent).map_err(|e| unusable("create", e))?;
    let parent = parent.canonicalize().map_err(|e| unusable("resolve", e))?;
    let database = parent.join(database.file_name().unwrap_or_default());
    let held = lock("database.path", &database_lock(&database), Mode::Exclusive)?;
    database_writable(&database).map_err(|e| {
        ConfigError::key(
            "database.path",
            format!("cannot write {}: {}", database.display(), as_user(&e)),
        )
    })?;
    Ok(held)
}

/// The directory the database at `database` lives in (`.` for a bare file name): where SQLite
/// makes its journal beside it, and whose filesystem holds it.
pub fn database_dir(database: &Path) -> &Path {
    database
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Whether this user may create a file in `dir` (a temporary one, removed at once).
pub fn dir_writable(dir: &Path) -> std::io::Result<()> {
    tempfile::Builder::new()
        .prefix(".batchwatch-check-")
        .tempfile_in(dir)
        .map(drop)
}

/// Whether this user may write the database at `database`: create files beside it (SQLite's
/// journal), and open it for writing when it exists.
pub fn database_writable(database: &Path) -> std::io::Result<()> {
    dir_writable(database_dir(database))?;
    match OpenOptions::new().write(true).open(database) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other.map(drop),
    }
}

fn queue_lock(queue_dir: &Path) -> PathBuf {
    queue_dir.join(QUEUE_LOCK)
}

/// `state.db` -> `state.db.lock`, beside it.
pub fn database_lock(database: &Path) -> PathBuf {
    let mut name = database.file_name().unwrap_or_default().to_owned();
    name.push(".lock");
    database.with_file_name(name)
}

/// An I/O error, and for a permission, who was refused: the fix is an owner or a mode.
fn as_user(e: &std::io::Error) -> String {
    if e.kind() != std::io::ErrorKind::PermissionDenied {
        return e.to_string();
    }
    // SAFETY: geteuid and getegid have no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    format!("{e} (batchwatch runs as uid {uid}, gid {gid}: that user needs write access there)")
}

/// How a lock file is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// By one daemon alone, whose pid the file holds.
    Exclusive,
    /// By the daemons of a shared database together.
    Shared,
}

/// Takes the lock on `path` without waiting, and, held exclusively, writes our pid into the
/// file. A lock file that cannot be opened is a fault of the configuration (`key`'s path, its
/// owner or mode), as the queue tree or database that cannot be used is.
fn lock(key: &str, path: &Path, mode: Mode) -> anyhow::Result<File> {
    let opened = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path);
    // A lock file left by another user (a `sudo batchwatch run` once) still locks when it is
    // only readable: flock needs no write access. When there is none to read, the refusal to
    // create it is the error to report.
    let mut file = match opened {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            File::open(path).map_err(|_| e)
        }
        other => other,
    }
    .map_err(|e| {
        ConfigError::key(
            key,
            format!(
                "cannot open the lock file {}: {}",
                path.display(),
                as_user(&e)
            ),
        )
    })?;
    let locked = match mode {
        Mode::Exclusive => file.try_lock(),
        Mode::Shared => file.try_lock_shared(),
    };
    match locked {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) if mode == Mode::Shared => {
            anyhow::bail!(
                "a batchwatch daemon on a SQLite database holds {} alone: daemons on a \
                 PostgreSQL database may share a queue directory only with each other; stop it \
                 first",
                path.display()
            );
        }
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => String::new(),
                pid => format!(" (pid {pid})"),
            };
            anyhow::bail!(
                "another batchwatch daemon{holder} holds {}: only one may run on a queue \
                 directory and a SQLite database at a time, or a job could be submitted twice; \
                 stop it first",
                path.display()
            );
        }
        Err(TryLockError::Error(e)) => {
            anyhow::bail!("cannot lock {}: {e}", path.display());
        }
    }
    if mode == Mode::Shared {
        // No single holder to name: a pid left by a daemon on SQLite would mislead.
        let _ = file.set_len(0);
        return Ok(file);
    }
    // The pid is for the message a second daemon prints; a read-only lock file goes without.
    let pid = std::process::id();
    let _ = file
        .set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| writeln!(file, "{pid}"));
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_database_file_name_lives_in_the_current_directory() {
        assert_eq!(database_dir(Path::new("state.db")), Path::new("."));
        assert_eq!(
            database_dir(Path::new("/var/lib/b/state.db")),
            Path::new("/var/lib/b")
        );
    }

    #[test]
    fn database_lock_sits_beside_the_database() {
        assert_eq!(
            database_lock(Path::new("/var/lib/batchwatch/state.db")),
            Path::new("/var/lib/batchwatch/state.db.lock")
        );
    }

    #[test]
    fn a_second_lock_is_refused_naming_the_file_and_the_holder_until_the_first_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().canonicalize().unwrap();
        let queue = dir.join("queue");
        std::fs::create_dir(&queue).unwrap();
        let db = dir.join("state.db");
        let first = InstanceLock::acquire(&queue, Some(&db)).unwrap();
        let pid = std::process::id();
        assert_eq!(
            std::fs::read_to_string(queue.join(QUEUE_LOCK)).unwrap(),
            format!("{pid}\n")
        );

        let err = InstanceLock::acquire(&queue, Some(&db))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "another batchwatch daemon (pid {pid}) holds {}",
                queue.join(QUEUE_LOCK).display()
            )),
            "{err}"
        );
        assert!(err.contains("only one may run"), "{err}");

        // Another queue on the same database is refused too, at the database.
        let other_queue = dir.join("other");
        std::fs::create_dir(&other_queue).unwrap();
        let err = InstanceLock::acquire(&other_queue, Some(&db))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("holds {}", db.display())), "{err}");
        assert!(err.contains("state.db.lock"), "{err}");

        // The same database through a symlinked directory is the same lock.
        let link = dir.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let err = InstanceLock::acquire(&other_queue, Some(&link.join("state.db")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("state.db.lock"), "{err}");

        drop(first);
        InstanceLock::acquire(&queue, Some(&db)).unwrap();
    }

    #[test]
    fn daemons_on_postgresql_share_a_queue_tree_with_each_other_and_never_with_one_on_sqlite() {
        let tmp = tempfile::tempdir().unwrap();
        let queue = tmp.path().join("queue");
        std::fs::create_dir(&queue).unwrap();
        let db = tmp.path().join("state.db");
        let first = InstanceLock::acquire(&queue, None).unwrap();
        let second = InstanceLock::acquire(&queue, None).unwrap();
        let err = InstanceLock::acquire(&queue, Some(&db))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "another batchwatch daemon holds {}",
                queue.join(QUEUE_LOCK).display()
            )),
            "{err}"
        );
        drop((first, second));
        let alone = InstanceLock::acquire(&queue, Some(&db)).unwrap();
        let err = InstanceLock::acquire(&queue, None).unwrap_err().to_string();
        assert!(
            err.contains("a batchwatch daemon on a SQLite database holds")
                && err.contains(".batchwatch.lock alone"),
            "{err}"
        );
        drop(alone);
    }
}
