//! The queue tree under `queue.dir`, and every move a file makes through it.
//!
//! ```text
//! incoming/     users drop NAME (and an optional sidecar NAME.toml) here
//! processing/   JOBID/NAME (and JOBID/NAME.toml) while batchwatch works on it
//! done/         NAME when the job completed
//! failed/       NAME and NAME.reason.json when it was rejected, failed, expired or was cancelled
//! results/      JOBID/ with the output and error files and manifest.json
//! ```
//!
//! When `NAME` (or its sidecar or reason file) is already taken in done/ or failed/, or, in
//! failed/, the reason file's name would be longer than a file name may be (`NAME` of 244 bytes
//! or more), the file goes to `JOBID/NAME` there instead, with `JOBID/NAME.reason.json` (or
//! `JOBID/reason.json`) beside it. Names up to the 255-byte limit work; from 251 bytes on,
//! `NAME.toml` cannot exist, so such a file simply has no sidecar.
//!
//! All five are checked to be on one filesystem at start, so every move is a rename, which is
//! atomic: a file is always wholly in one place. Moves never replace anything (renameat2 with
//! RENAME_NOREPLACE, or link-then-unlink where the filesystem lacks it), and batchwatch never
//! deletes or rewrites a user's file. A file keeps its own name in processing/, inside a
//! directory named after its job: so after a crash the tree alone says which job a file
//! belongs to, and a name never grows past the 255-byte limit on its way through.

pub mod manifest;
pub mod scan;
pub mod sidecar;
pub mod strays;
pub mod writers;

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use crate::model::FileLook;
use crate::model::JobId;
pub use batchwatch_core::process::shared_temp_file;
pub use batchwatch_provider::DOWNLOAD_PREFIX;

/// The suffix of a sidecar file: `NAME.toml` configures `NAME`.
pub const SIDECAR_SUFFIX: &str = ".toml";

/// The suffix of a reason file: `failed/NAME.reason.json` says why `NAME` is there.
pub const REASON_SUFFIX: &str = ".reason.json";

/// A job's manifest, in its results directory: what is there, and how the job ended.
pub use manifest::FILE as MANIFEST_FILE;

/// The reason file's name in a `JOBID/` directory when `NAME.reason.json` would be too long.
const REASON_FILE: &str = "reason.json";

/// The longest file name Linux filesystems allow, in bytes.
const NAME_MAX: usize = 255;

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

/// A job's directory in processing/, and the file in it (none once it has moved on, or when
/// a crash came between creating the directory and the rename).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobDir {
    pub job: JobId,
    pub dir: PathBuf,
    pub file: Option<(OsString, PathBuf)>,
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
    /// Their manifest (`results_dir/manifest.json`), relative to queue.dir.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
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

    /// The five directories of the tree: incoming, processing, done, failed, results.
    pub fn dirs(&self) -> [&PathBuf; 5] {
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

    /// `path` relative to the queue root, for the database and reports (a name that is not
    /// UTF-8 is shown with U+FFFD).
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

    /// A job's directory in processing/.
    pub fn job_dir(&self, job: &JobId) -> PathBuf {
        self.processing.join(job.as_str())
    }

    /// The results directory of a job.
    pub fn results_dir(&self, job: &str) -> PathBuf {
        self.results.join(job)
    }

    /// Removes the temporary files that downloads killed midway left in `results/JOBID/`
    /// (only names starting with [`DOWNLOAD_PREFIX`], only in job directories, except the jobs
    /// `spare` names: another daemon's, whose downloads may be under way); returns how many.
    /// Called at start, when none of this daemon's downloads runs.
    pub fn remove_download_leftovers(&self, spare: impl Fn(&str) -> bool) -> io::Result<usize> {
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.results)? {
            let entry = entry?;
            let name = entry.file_name();
            let job = name.to_str().filter(|n| JobId::parse(n).is_some());
            if job.is_none_or(&spare) || !entry.file_type()?.is_dir() {
                continue;
            }
            for inner in std::fs::read_dir(entry.path())? {
                let inner = inner?;
                if inner
                    .file_name()
                    .as_bytes()
                    .starts_with(DOWNLOAD_PREFIX.as_bytes())
                    && inner.file_type()?.is_file()
                {
                    std::fs::remove_file(inner.path())?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Claims `incoming/NAME` for `job`: moves it to `processing/JOBID/NAME`, and returns that.
    pub fn claim(&self, name: &OsStr, job: &JobId) -> io::Result<PathBuf> {
        let dir = self.job_dir(job);
        std::fs::create_dir(&dir)?;
        let to = dir.join(name);
        if let Err(e) = rename_noreplace(&self.incoming_path(name), &to) {
            let _ = std::fs::remove_dir(&dir);
            return Err(e);
        }
        Ok(to)
    }

    /// Moves `incoming/NAME.toml` beside its claimed file, if it is there. Also used by the
    /// sweep, for a crash between the two renames.
    pub fn adopt_sidecar(&self, name: &OsStr, job: &JobId) -> io::Result<()> {
        let (Some(from), Some(to)) = (
            sidecar_path(&self.incoming_path(name)),
            sidecar_path(&self.job_dir(job).join(name)),
        ) else {
            return Ok(());
        };
        move_if_present(&from, &to)
    }

    /// The job directories in processing/, each with its file.
    pub fn job_dirs(&self) -> io::Result<Vec<JobDir>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.processing)? {
            let entry = entry?;
            let Some(job) = entry.file_name().to_str().and_then(JobId::parse) else {
                continue;
            };
            if !entry.file_type()?.is_dir() {
                continue;
            }
            out.extend(read_job_dir(job, entry.path())?);
        }
        out.sort_by(|a, b| a.job.cmp(&b.job));
        Ok(out)
    }

    /// One job's directory in processing/, or `None` when there is none (its file moved on).
    pub fn job_dir_of(&self, job: &JobId) -> io::Result<Option<JobDir>> {
        let dir = self.job_dir(job);
        match std::fs::symlink_metadata(&dir) {
            Ok(meta) if meta.is_dir() => read_job_dir(job.clone(), dir),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Removes the hard link `incoming/NAME` when it is the very file claimed as `claimed`: what
    /// a crash between the link and the unlink of the fallback move leaves behind.
    pub fn drop_incoming_twin(&self, name: &OsStr, claimed: &Path) -> io::Result<()> {
        let twin = self.incoming_path(name);
        if same_file(&twin, claimed)? {
            std::fs::remove_file(&twin)?;
        }
        Ok(())
    }

    /// Chooses where a finished job's file goes: `NAME` in the destination when it and the
    /// names beside it are free there: its sidecar's (when one can exist) and, in failed/, its
    /// reason file's, which must fit. Else `JOBID/NAME`, in a directory created for it.
    pub fn choose_final(
        &self,
        dest: Destination,
        job: &JobId,
        name: &OsStr,
    ) -> io::Result<PathBuf> {
        let plain = self.plain_final(dest, name);
        let free = |p: &Path| p.symlink_metadata().is_err();
        let sidecar_free = sidecar_path(&plain).is_none_or(|p| free(&p));
        let reason_free = match dest {
            Destination::Done => true,
            Destination::Failed => fits(name, REASON_SUFFIX) && free(&reason_path(&plain)),
        };
        if free(&plain) && sidecar_free && reason_free {
            return Ok(plain);
        }
        let own = self.own_final(dest, job, name);
        std::fs::create_dir_all(own.parent().expect("has a parent"))?;
        Ok(own)
    }

    /// `done/NAME` or `failed/NAME`.
    pub fn plain_final(&self, dest: Destination, name: &OsStr) -> PathBuf {
        match dest {
            Destination::Done => self.done.join(name),
            Destination::Failed => self.failed.join(name),
        }
    }

    /// `done/JOBID/NAME` or `failed/JOBID/NAME`.
    pub fn own_final(&self, dest: Destination, job: &JobId, name: &OsStr) -> PathBuf {
        let dir = match dest {
            Destination::Done => &self.done,
            Destination::Failed => &self.failed,
        };
        dir.join(job.as_str()).join(name)
    }

    /// Moves a finished job's file (and its sidecar) from `from` to `to`, after writing
    /// `reason` beside it when given, then removes its empty job directory. Safe to repeat
    /// after a crash: a move already made is not made again.
    pub fn finish(&self, from: &Path, to: &Path, reason: Option<&Reason>) -> io::Result<()> {
        if let Some(reason) = reason {
            let text = serde_json::to_vec_pretty(reason).map_err(io::Error::other)?;
            write_atomically(&reason_path(to), &text)?;
        }
        if let (Some(from), Some(to)) = (sidecar_path(from), sidecar_path(to)) {
            move_if_present(&from, &to)?;
        }
        move_if_present(from, to)?;
        if let Some(dir) = from
            .parent()
            .filter(|d| d.parent() == Some(self.processing.as_path()))
        {
            let _ = std::fs::remove_dir(dir);
        }
        Ok(())
    }
}

/// A job directory and the file in it: the entry that is not the sidecar of another one.
/// `None` when the directory is gone: since it was listed, the job's file was moved on (by
/// another daemon on the same queue tree, say).
fn read_job_dir(job: JobId, dir: PathBuf) -> io::Result<Option<JobDir>> {
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut names: Vec<OsString> = entries
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    names.sort();
    let file = names
        .iter()
        .find(|n| !names.iter().any(|other| sidecar_name(other) == **n))
        .map(|n| (n.clone(), dir.join(n)));
    Ok(Some(JobDir { job, dir, file }))
}

/// Whether `name` plus `suffix` is still a valid file name length.
fn fits(name: &OsStr, suffix: &str) -> bool {
    name.len() + suffix.len() <= NAME_MAX
}

/// Whether two paths name the same file (same device and inode). A missing path is not.
fn same_file(a: &Path, b: &Path) -> io::Result<bool> {
    match (std::fs::symlink_metadata(a), std::fs::symlink_metadata(b)) {
        (Ok(x), Ok(y)) => Ok(x.dev() == y.dev() && x.ino() == y.ino()),
        (Err(e), _) | (_, Err(e)) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

/// Moves `from` to `to` unless it was moved already (by a move a crash left half done by the
/// link-then-unlink fallback, or by another process doing the same move at the same time).
pub fn move_if_present(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(from) {
        Ok(_) => match rename_noreplace(from, to) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && same_file(from, to)? => {
                std::fs::remove_file(from)
            }
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    && std::fs::symlink_metadata(from).is_err() =>
            {
                Ok(())
            }
            other => other,
        },
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

/// The sidecar path beside `path`; `None` when `NAME.toml` would be longer than a file name may
/// be: a file of such a name (251 to 255 bytes) has no sidecar, since none can exist.
pub fn sidecar_path(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?;
    fits(name, SIDECAR_SUFFIX).then(|| path.with_file_name(sidecar_name(name)))
}

/// The reason file of the file at `path`: `NAME.reason.json` beside it, or `reason.json` in its
/// own job directory when that name would be too long.
pub fn reason_path(path: &Path) -> PathBuf {
    match path.file_name() {
        Some(name) if !fits(name, REASON_SUFFIX) => path.with_file_name(REASON_FILE),
        _ => {
            let mut s = path.as_os_str().to_owned();
            s.push(REASON_SUFFIX);
            PathBuf::from(s)
        }
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a reader sees the whole
/// file or none of it. Replaces an earlier version (only ever batchwatch's own files).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("no parent directory"))?;
    let mut tmp = shared_temp_file(dir, ".batchwatch-", ".tmp")?;
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
        // refuses to replace. A crash between link and unlink leaves two names for one file:
        // `move_if_present` and `Queue::drop_incoming_twin` finish such a move.
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
    fn download_leftovers_go_except_in_the_job_directories_spared() {
        let tmp = tempfile::tempdir().unwrap();
        let queue = Queue::open(tmp.path()).unwrap();
        let (mine, theirs) = (JobId::generate(1), JobId::generate(2));
        for job in [&mine, &theirs] {
            let dir = queue.results_dir(job.as_str());
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("{DOWNLOAD_PREFIX}x")), "part").unwrap();
            std::fs::write(dir.join("output.jsonl"), "{}").unwrap();
        }
        let removed = queue
            .remove_download_leftovers(|job| job == theirs.as_str())
            .unwrap();
        assert_eq!(removed, 1);
        let left = |job: &JobId| {
            std::fs::read_dir(queue.results_dir(job.as_str()))
                .unwrap()
                .count()
        };
        assert_eq!((left(&mine), left(&theirs)), (1, 2));
    }

    #[test]
    fn a_job_directory_gone_since_it_was_listed_is_skipped_not_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let queue = Queue::open(tmp.path()).unwrap();
        let (gone, kept) = (JobId::generate(1), JobId::generate(2));
        std::fs::create_dir_all(queue.job_dir(&kept)).unwrap();
        // What another daemon's move leaves between the listing and the read.
        assert!(
            read_job_dir(gone.clone(), queue.job_dir(&gone))
                .unwrap()
                .is_none()
        );
        assert!(queue.job_dir_of(&gone).unwrap().is_none());
        let listed: Vec<JobId> = queue
            .job_dirs()
            .unwrap()
            .into_iter()
            .map(|d| d.job)
            .collect();
        assert_eq!(listed, [kept]);
    }

    fn reason() -> Reason {
        Reason {
            job_id: "j".into(),
            file: "in.jsonl".into(),
            state: "rejected".into(),
            code: "empty_file".into(),
            line: None,
            message: "m".into(),
            results_dir: None,
            manifest: None,
            at: "t".into(),
        }
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
    fn a_claimed_file_keeps_its_name_in_its_job_directory() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let job = JobId::generate(1);
        let name = OsString::from(format!("{}.jsonl", "n".repeat(240)));
        std::fs::write(q.incoming_path(&name), "x").unwrap();
        std::fs::write(q.incoming_path(&sidecar_name(&name)), "deadline = \"1h\"").unwrap();
        let path = q.claim(&name, &job).unwrap();
        q.adopt_sidecar(&name, &job).unwrap();
        assert_eq!(path, q.job_dir(&job).join(&name));
        let dirs = q.job_dirs().unwrap();
        assert_eq!(
            dirs,
            vec![JobDir {
                job: job.clone(),
                dir: q.job_dir(&job),
                file: Some((name.clone(), path))
            }]
        );
        assert!(std::fs::read_dir(&q.incoming).unwrap().next().is_none());
    }

    #[test]
    fn a_taken_or_too_long_name_goes_to_the_job_directory() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("q")).unwrap();
        let job = JobId::generate(5);
        let name = OsStr::new("x.jsonl");
        assert_eq!(
            q.choose_final(Destination::Done, &job, name).unwrap(),
            q.done.join("x.jsonl")
        );
        std::fs::write(q.done.join("x.jsonl.toml"), "a sidecar of an earlier file").unwrap();
        let taken = q.choose_final(Destination::Done, &job, name).unwrap();
        assert_eq!(taken, q.done.join(job.as_str()).join("x.jsonl"));
        assert!(taken.parent().unwrap().is_dir());

        // A reason file's name must fit beside a file in failed/; none is written in done/.
        let long = OsString::from("l".repeat(244));
        let to = q.choose_final(Destination::Failed, &job, &long).unwrap();
        assert_eq!(to, q.failed.join(job.as_str()).join(&long));
        assert_eq!(
            reason_path(&to),
            q.failed.join(job.as_str()).join("reason.json")
        );
        let fits = OsString::from("l".repeat(243));
        assert_eq!(
            q.choose_final(Destination::Failed, &job, &fits).unwrap(),
            q.failed.join(&fits)
        );
        for len in [244, 250, 251, 255] {
            let long = OsString::from("l".repeat(len));
            assert_eq!(
                q.choose_final(Destination::Done, &job, &long).unwrap(),
                q.done.join(&long),
                "{len} bytes"
            );
        }
    }

    #[test]
    fn a_name_too_long_for_a_sidecar_is_claimed_and_finished_without_one() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let job = JobId::generate(4);
        for len in [251, 255] {
            let name = OsString::from(format!("{}.jsonl", "s".repeat(len - 6)));
            assert_eq!(sidecar_path(&q.incoming_path(&name)), None);
            std::fs::write(q.incoming_path(&name), "x").unwrap();
            let path = q.claim(&name, &job).unwrap();
            q.adopt_sidecar(&name, &job).unwrap();
            let to = q.choose_final(Destination::Failed, &job, &name).unwrap();
            assert_eq!(to, q.failed.join(job.as_str()).join(&name));
            q.finish(&path, &to, Some(&reason())).unwrap();
            assert_eq!(std::fs::read_to_string(&to).unwrap(), "x");
            assert!(to.with_file_name("reason.json").exists());
            std::fs::remove_dir_all(to.parent().unwrap()).unwrap();
        }
        let fits = OsString::from(format!("{}.jsonl", "s".repeat(244)));
        assert!(sidecar_path(&q.incoming_path(&fits)).is_some());
    }

    #[test]
    fn finishing_moves_the_file_and_its_sidecar_can_be_repeated_and_tidies_up() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let job = JobId::generate(9);
        let name = OsStr::new("in.jsonl");
        std::fs::write(q.incoming_path(name), "content").unwrap();
        std::fs::write(q.incoming_path(&sidecar_name(name)), "deadline = \"1h\"").unwrap();
        let path = q.claim(name, &job).unwrap();
        q.adopt_sidecar(name, &job).unwrap();
        let to = q.choose_final(Destination::Failed, &job, name).unwrap();
        q.finish(&path, &to, Some(&reason())).unwrap();
        q.finish(&path, &to, Some(&reason())).unwrap();
        assert_eq!(std::fs::read_to_string(&to).unwrap(), "content");
        assert!(sidecar_path(&to).unwrap().exists());
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(reason_path(&to)).unwrap()).unwrap();
        assert_eq!(written["code"], "empty_file");
        assert!(
            std::fs::read_dir(&q.processing).unwrap().next().is_none(),
            "the job directory is gone"
        );
    }

    #[test]
    fn an_interrupted_link_then_unlink_move_is_completed() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(dir.path()).unwrap();
        let job = JobId::generate(3);
        let name = OsStr::new("twin.jsonl");
        // As the fallback leaves it after a crash: the claim's link made, its unlink not.
        std::fs::create_dir(q.job_dir(&job)).unwrap();
        std::fs::write(q.incoming_path(name), "same").unwrap();
        std::fs::hard_link(q.incoming_path(name), q.job_dir(&job).join(name)).unwrap();
        q.drop_incoming_twin(name, &q.job_dir(&job).join(name))
            .unwrap();
        assert!(!q.incoming_path(name).exists());
        assert_eq!(
            std::fs::read_to_string(q.job_dir(&job).join(name)).unwrap(),
            "same"
        );
        // A different file of the same name is not touched.
        std::fs::write(q.incoming_path(name), "other").unwrap();
        q.drop_incoming_twin(name, &q.job_dir(&job).join(name))
            .unwrap();
        assert!(q.incoming_path(name).exists());

        // And the final move's link made, its unlink not.
        let from = q.job_dir(&job).join(name);
        let to = q.done.join(name);
        std::fs::hard_link(&from, &to).unwrap();
        q.finish(&from, &to, None).unwrap();
        assert!(!from.exists());
        assert_eq!(std::fs::read_to_string(&to).unwrap(), "same");
    }
}
