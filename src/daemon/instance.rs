//! One daemon per queue tree and per database.
//!
//! Two daemons on one database would both pick up the same submission intents and could create
//! two batches for one job; two on one queue tree would each recover the other's files in
//! `processing/`. So `batchwatch run` holds an exclusive lock on `QUEUE_DIR/.batchwatch.lock`
//! and on `DATABASE.lock` for its whole life, and a second one refuses to start, naming the
//! lock and the process that holds it. The locks are `flock(2)` locks: the kernel drops them
//! when the process ends, however it ends, so a crash never leaves a stale lock behind. Status
//! queries and `batchwatch cancel` take no lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file's name inside the queue directory.
pub const QUEUE_LOCK: &str = ".batchwatch.lock";

/// The locks a running daemon holds; dropping it releases them.
#[derive(Debug)]
pub struct InstanceLock {
    _held: Vec<File>,
}

impl InstanceLock {
    /// Locks the queue tree and the database, or says which one another process holds.
    pub fn acquire(queue_dir: &Path, database: &Path) -> anyhow::Result<InstanceLock> {
        // The lock must be the same file whatever path reaches the database (SQLite follows
        // symlinks), so its directory is resolved; the queue's directory is one inode anyway.
        let parent = database
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", parent.display()))?;
        let parent = parent
            .canonicalize()
            .map_err(|e| anyhow::anyhow!("cannot resolve {}: {e}", parent.display()))?;
        let database = parent.join(database.file_name().unwrap_or_default());
        let held = [queue_lock(queue_dir), database_lock(&database)]
            .iter()
            .map(|path| lock(path))
            .collect::<anyhow::Result<_>>()?;
        Ok(InstanceLock { _held: held })
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

/// Takes the exclusive lock on `path` without waiting, and writes our pid into the file.
fn lock(path: &Path) -> anyhow::Result<File> {
    let opened = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path);
    // A lock file left by another user (a `sudo batchwatch run` once) still locks when it is
    // only readable: flock needs no write access.
    let mut file = match opened {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => File::open(path),
        other => other,
    }
    .map_err(|e| anyhow::anyhow!("cannot open the lock file {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => String::new(),
                pid => format!(" (pid {pid})"),
            };
            anyhow::bail!(
                "another batchwatch daemon{holder} holds {}: only one may run on a queue \
                 directory and a database at a time, or a job could be submitted twice; stop \
                 it first",
                path.display()
            );
        }
        Err(TryLockError::Error(e)) => {
            anyhow::bail!("cannot lock {}: {e}", path.display());
        }
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
        let first = InstanceLock::acquire(&queue, &db).unwrap();
        let pid = std::process::id();
        assert_eq!(
            std::fs::read_to_string(queue.join(QUEUE_LOCK)).unwrap(),
            format!("{pid}\n")
        );

        let err = InstanceLock::acquire(&queue, &db).unwrap_err().to_string();
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
        let err = InstanceLock::acquire(&other_queue, &db)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("holds {}", db.display())), "{err}");
        assert!(err.contains("state.db.lock"), "{err}");

        // The same database through a symlinked directory is the same lock.
        let link = dir.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let err = InstanceLock::acquire(&other_queue, &link.join("state.db"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("state.db.lock"), "{err}");

        drop(first);
        InstanceLock::acquire(&queue, &db).unwrap();
    }
}
