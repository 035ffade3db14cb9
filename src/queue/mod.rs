//! The queue tree under `queue.dir`, and every move a file makes through it.
//!
//! ```text
//! incoming/     users drop NAME (and an optional sidecar NAME.toml) here
//! processing/   JOBID__NAME while batchwatch works on it
//! done/         NAME when the job completed
//! failed/       NAME and NAME.reason.json when it was rejected, failed, expired or was cancelled
//! results/      JOBID/ with the output and error files and manifest.json
//! ```
//!
//! All five are checked to be on one filesystem at start, so every move is a rename, which is
//! atomic: a file is always wholly in one place. Moves never replace anything (renameat2 with
//! RENAME_NOREPLACE, or link-then-unlink where the filesystem lacks it), and batchwatch never
//! deletes or rewrites a user's file.
//!
//! The job id in the processing name is what ties a file to its database row, so after a crash
//! the directory alone says which job a file belongs to.

pub mod scan;
pub mod sidecar;

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::model::JobId;

/// The separator between job id and original name in processing/.
const ID_SEPARATOR: &str = "__";

/// The suffix of a sidecar file: `NAME.toml` configures `NAME`.
pub const SIDECAR_SUFFIX: &str = ".toml";

/// The suffix of a reason file: `failed/NAME.reason.json` says why `NAME` is there.
pub const REASON_SUFFIX: &str = ".reason.json";

/// Where a finished job's file goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    Done,
    Failed,
}

/// The queue tree.
#[derive(Debug, Clone)]
pub struct Queue {
    root: PathBuf,
    pub incoming: PathBuf,
    pub processing: PathBuf,
    pub done: PathBuf,
    pub failed: PathBuf,
    pub results: PathBuf,
}

/// What a `.reason.json` file says.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Reason {
    pub job_id: String,
    /// The file's original name.
    pub file: String,
    /// The job's final state: rejected, failed, expired or cancelled.
    pub state: String,
    /// A stable code: the validation rule, or what ended the job.
    pub code: String,
    /// The 1-based line at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    pub message: String,
    /// Where partial results are, relative to queue.dir, when there are any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results_dir: Option<String>,
    pub at: String,
}

impl Queue {
    /// Creates the tree where it is missing and checks it is on one filesystem.
    ///
    /// New directories get the process's umask (the systemd unit's UMask=0027 gives 0750);
    /// existing ones are never changed, so the modes an administrator or tmpfiles.d gave them
    /// (a group-writable incoming/, say) stay.
    pub fn open(root: &Path) -> io::Result<Queue> {
        let queue = Queue {
            root: root.to_owned(),
            incoming: root.join("incoming"),
            processing: root.join("processing"),
            done: root.join("done"),
            failed: root.join("failed"),
            results: root.join("results"),
        };
        for dir in queue.dirs() {
            std::fs::create_dir_all(dir)?;
        }
        let root_dev = std::fs::metadata(root)?.dev();
        for dir in queue.dirs() {
            let meta = std::fs::metadata(dir)?;
            if !meta.is_dir() {
                return Err(io::Error::other(format!(
                    "{} is not a directory",
                    dir.display()
                )));
            }
            if meta.dev() != root_dev {
                return Err(io::Error::other(format!(
                    "{} is on another filesystem than {}; every queue directory must be on one filesystem so moves are atomic renames",
                    dir.display(),
                    root.display()
                )));
            }
        }
        Ok(queue)
    }

    fn dirs(&self) -> [&PathBuf; 5] {
        [
            &self.incoming,
            &self.processing,
            &self.done,
            &self.failed,
            &self.results,
        ]
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `path` relative to the queue root, for the database and reports.
    pub fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    }

    /// The path of `name` in incoming/.
    pub fn incoming_path(&self, name: &OsStr) -> PathBuf {
        self.incoming.join(name)
    }

    /// The path a job's file has in processing/.
    pub fn processing_path(&self, job: &JobId, name: &OsStr) -> PathBuf {
        let mut file = OsString::from(job.as_str());
        file.push(ID_SEPARATOR);
        file.push(name);
        self.processing.join(file)
    }

    /// The results directory of a job.
    pub fn results_dir(&self, job: &str) -> PathBuf {
        self.results.join(job)
    }

    /// Claims `incoming/NAME` (and its sidecar, if any) for `job`: moves it into processing/.
    /// Returns the new path, and the sidecar's when one moved with it.
    pub fn claim(&self, name: &OsStr, job: &JobId) -> io::Result<(PathBuf, Option<PathBuf>)> {
        let to = self.processing_path(job, name);
        rename_noreplace(&self.incoming_path(name), &to)?;
        let sidecar = self.adopt_sidecar(name, job)?;
        Ok((to, sidecar))
    }

    /// Moves `incoming/NAME.toml` to processing/ beside its claimed file, if it exists and is
    /// not there yet. Also used at recovery, for a crash between the two renames.
    pub fn adopt_sidecar(&self, name: &OsStr, job: &JobId) -> io::Result<Option<PathBuf>> {
        let from = self.incoming_path(&sidecar_name(name));
        let to = sidecar_path(&self.processing_path(job, name));
        match std::fs::symlink_metadata(&from) {
            Ok(_) => {
                rename_noreplace(&from, &to)?;
                Ok(Some(to))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(to.exists().then_some(to)),
            Err(e) => Err(e),
        }
    }

    /// Every file in processing/ that belongs to a job: (job id, original name, path).
    /// Sidecars are not listed; they follow their file.
    pub fn processing_files(&self) -> io::Result<Vec<(JobId, OsString, PathBuf)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.processing)? {
            let entry = entry?;
            let file = entry.file_name();
            if let Some((job, name)) = split_processing_name(&file) {
                let is_sidecar = name.as_bytes().ends_with(SIDECAR_SUFFIX.as_bytes())
                    && self
                        .processing
                        .join(strip_suffix(&file, SIDECAR_SUFFIX))
                        .exists();
                if !is_sidecar {
                    out.push((job, name, entry.path()));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Where a finished job's file would go: `NAME` in the destination, or `JOBID__NAME` when
    /// a file of that name is already there.
    pub fn final_path(&self, dest: Destination, job: &JobId, name: &OsStr) -> PathBuf {
        let dir = match dest {
            Destination::Done => &self.done,
            Destination::Failed => &self.failed,
        };
        let plain = dir.join(name);
        let taken = |p: &Path| {
            p.symlink_metadata().is_ok()
                || sidecar_path(p).symlink_metadata().is_ok()
                || reason_path(p).symlink_metadata().is_ok()
        };
        if taken(&plain) {
            self.processing_path(job, name)
                .file_name()
                .map(|f| dir.join(f))
                .unwrap_or(plain)
        } else {
            plain
        }
    }

    /// Moves a finished job's file (and its sidecar) from `from` in processing/ to `to`, after
    /// writing `reason` beside it when given. Safe to repeat after a crash: a move already made
    /// is not made again.
    pub fn finish(&self, from: &Path, to: &Path, reason: Option<&Reason>) -> io::Result<()> {
        if let Some(reason) = reason {
            let text = serde_json::to_vec_pretty(reason).map_err(io::Error::other)?;
            write_atomically(&reason_path(to), &text)?;
        }
        move_if_present(&sidecar_path(from), &sidecar_path(to))?;
        move_if_present(from, to)
    }
}

/// Moves `from` to `to` unless it was moved already.
fn move_if_present(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(from) {
        Ok(_) => rename_noreplace(from, to),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// `NAME.toml`, the sidecar of `NAME`.
pub fn sidecar_name(name: &OsStr) -> OsString {
    let mut s = name.to_owned();
    s.push(SIDECAR_SUFFIX);
    s
}

/// The sidecar path beside `path`.
pub fn sidecar_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(SIDECAR_SUFFIX);
    PathBuf::from(s)
}

/// The reason file beside `path`.
pub fn reason_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(REASON_SUFFIX);
    PathBuf::from(s)
}

fn strip_suffix(name: &OsStr, suffix: &str) -> OsString {
    let bytes = name.as_bytes();
    OsString::from_vec(
        bytes
            .strip_suffix(suffix.as_bytes())
            .unwrap_or(bytes)
            .to_vec(),
    )
}

/// Splits `JOBID__NAME` into its parts.
pub fn split_processing_name(file: &OsStr) -> Option<(JobId, OsString)> {
    let bytes = file.as_bytes();
    let sep = bytes
        .windows(ID_SEPARATOR.len())
        .position(|w| w == ID_SEPARATOR.as_bytes())?;
    let job = JobId::parse(std::str::from_utf8(&bytes[..sep]).ok()?)?;
    let name = &bytes[sep + ID_SEPARATOR.len()..];
    (!name.is_empty()).then(|| (job, OsString::from_vec(name.to_vec())))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a reader sees the whole
/// file or none of it. Replaces an earlier version (only ever batchwatch's own files).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("no parent directory"))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".batchwatch-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Renames `from` to `to`, failing with `AlreadyExists` rather than replacing anything.
pub fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::ffi::CString;
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (cfrom, cto) = (c(from)?, c(to)?);
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            cfrom.as_ptr(),
            libc::AT_FDCWD,
            cto.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        // The filesystem (some FUSE and overlay ones) cannot do it atomically: a hard link also
        // refuses to replace; a crash between link and unlink leaves two names for one file,
        // which recovery resolves because the source keeps its job id.
        Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::ENOTSUP) => {
            if std::fs::symlink_metadata(from)?.is_dir() {
                if std::fs::symlink_metadata(to).is_ok() {
                    return Err(io::Error::from(io::ErrorKind::AlreadyExists));
                }
                return std::fs::rename(from, to);
            }
            std::fs::hard_link(from, to)?;
            std::fs::remove_file(from)
        }
        _ => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processing_names_carry_the_job_id_and_the_original_name() {
        let job = JobId::generate(1);
        let q = Queue::open(tempfile::tempdir().unwrap().path()).unwrap();
        let path = q.processing_path(&job, OsStr::new("my__file.jsonl"));
        let (id, name) = split_processing_name(path.file_name().unwrap()).unwrap();
        assert_eq!((id, name), (job, OsString::from("my__file.jsonl")));
        assert_eq!(split_processing_name(OsStr::new("random.jsonl")), None);
        assert_eq!(split_processing_name(OsStr::new("job_short__x")), None);
    }

    #[test]
    fn renames_never_replace() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "a").unwrap();
        std::fs::write(&b, "b").unwrap();
        assert_eq!(
            rename_noreplace(&a, &b).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "b");
        let c = dir.path().join("c");
        rename_noreplace(&a, &c).unwrap();
        assert_eq!(std::fs::read_to_string(&c).unwrap(), "a");
        assert!(!a.exists());
    }

    #[test]
    fn the_tree_is_created_and_a_taken_name_gets_the_job_id() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("q")).unwrap();
        for d in q.dirs() {
            assert!(d.is_dir());
        }
        let job = JobId::generate(5);
        let name = OsStr::new("x.jsonl");
        assert_eq!(
            q.final_path(Destination::Done, &job, name),
            q.done.join("x.jsonl")
        );
        std::fs::write(q.done.join("x.jsonl"), "earlier").unwrap();
        let taken = q.final_path(Destination::Done, &job, name);
        assert_eq!(taken, q.done.join(format!("{job}__x.jsonl")));
    }

    #[test]
    fn finishing_moves_the_file_and_its_sidecar_and_can_be_repeated() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let job = JobId::generate(9);
        let name = OsStr::new("in.jsonl");
        std::fs::write(q.incoming_path(name), "content").unwrap();
        std::fs::write(q.incoming_path(&sidecar_name(name)), "deadline = \"1h\"").unwrap();
        let (path, sidecar) = q.claim(name, &job).unwrap();
        assert!(sidecar.is_some());
        let to = q.final_path(Destination::Failed, &job, name);
        let reason = Reason {
            job_id: job.to_string(),
            file: "in.jsonl".into(),
            state: "rejected".into(),
            code: "empty_file".into(),
            line: None,
            message: "m".into(),
            results_dir: None,
            at: "t".into(),
        };
        q.finish(&path, &to, Some(&reason)).unwrap();
        q.finish(&path, &to, Some(&reason)).unwrap();
        assert_eq!(std::fs::read_to_string(&to).unwrap(), "content");
        assert!(sidecar_path(&to).exists());
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(reason_path(&to)).unwrap()).unwrap();
        assert_eq!(written["code"], "empty_file");
        assert!(std::fs::read_dir(&q.processing).unwrap().next().is_none());
    }
}
