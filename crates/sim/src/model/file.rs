//! A file the simulator holds: its content in the data directory, and its object.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::clock::SimMs;

/// A file in the data directory, removed when the last reference to it goes: a batch keeps its
/// input alive after the file object is deleted, as the real service keeps running it.
#[derive(Debug)]
pub(crate) struct StoredFile {
    path: PathBuf,
    /// Set once a saved state refers to the file (see `persist`): it must outlive this process.
    keep: AtomicBool,
}

impl StoredFile {
    pub(crate) fn new(path: PathBuf) -> StoredFile {
        StoredFile {
            path,
            keep: AtomicBool::new(false),
        }
    }

    /// A file known by name only, as a saved state names it before it is resolved against the
    /// data directory; dropping it removes nothing.
    pub(crate) fn named(name: PathBuf) -> StoredFile {
        StoredFile {
            path: name,
            keep: AtomicBool::new(true),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves the file on disk when the last reference goes.
    pub(crate) fn keep(&self) {
        self.keep.store(true, Ordering::Relaxed);
    }
}

impl Drop for StoredFile {
    fn drop(&mut self) {
        if !self.keep.load(Ordering::Relaxed) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Saves a stored file as its name in the data directory, and reads it back as a
/// [`StoredFile::named`] that `persist::load` resolves.
pub(crate) mod file_name {
    use std::path::PathBuf;
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer, de::Error as _, ser::Error as _};

    use super::StoredFile;

    pub(crate) fn serialize<S: Serializer>(
        file: &Arc<StoredFile>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let name = file
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| S::Error::custom(format!("{}: no file name", file.path().display())))?;
        s.serialize_str(name)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Arc<StoredFile>, D::Error> {
        let name = String::deserialize(d)?;
        // Only names the simulator gives (see `State::new_path`): never a path out of the dir.
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(D::Error::custom(format!(
                "{name:?} is not a data file name"
            )));
        }
        Ok(Arc::new(StoredFile::named(PathBuf::from(name))))
    }
}

/// Whether a generated file has been written yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum FileReady {
    Pending,
    Ready { bytes: u64 },
    Failed(String),
}

/// An uploaded or generated file.
#[derive(Debug)]
pub(crate) struct FileEntry {
    pub(crate) seq: u64,
    pub(crate) id: String,
    pub(crate) filename: String,
    pub(crate) purpose: String,
    pub(crate) created_at: SimMs,
    pub(crate) expires_at: Option<SimMs>,
    pub(crate) data: Arc<StoredFile>,
    pub(crate) ready: watch::Receiver<FileReady>,
}
