//! The simulator's state across a restart: saved to `state.json` in its data directory at a
//! clean shutdown, loaded from there at the next start.
//!
//! Only a simulator given a data directory ([`SimConfig::data_dir`], `--data-dir`) persists: a
//! temporary one is removed at exit anyway. [`SimHandle::shutdown`](crate::SimHandle::shutdown), which `batchwatch
//! sim` runs on SIGTERM or SIGINT (so `docker stop` too), waits up to [`OUTPUT_WAIT`] for output
//! files still being written, writes `state.json` atomically and leaves on disk every file it
//! names. A start that finds `state.json` loads it, then removes it, so that it only ever
//! describes the last clean shutdown: after a crash (SIGKILL) the next start is empty, as
//! without persistence.
//!
//! Kept: every file and batch with its status history, the simulated clock's reading, the id
//! generator (ids never repeat), the request and fault counters. Not kept: the faults in force
//! and the scripted ones, the time scale and the durations (the new command line's apply), and
//! requests cut off by the shutdown. An output file still unwritten after [`OUTPUT_WAIT`] is
//! saved as failed: downloading it answers 500.
//!
//! The clock resumes at the reading it had when saved: the time the simulator was down does not
//! count, as if the world had paused with it, so a restart never pushes a batch through its
//! states unseen or past its expiry. `--start-time` does not apply to a loaded state (simulated
//! time never runs backwards). A batch that was still validating is validated again.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::model::clock::{Clock, SimMs};
use crate::model::{
    Batch, Counters, FileEntry, FileReady, Served, SimConfig, StoredFile, Validation, file_name,
};
use crate::state::{Shared, State};
use batchwatch_core::model::BatchStatus;

/// The saved state's file name in the data directory.
pub const STATE_FILE: &str = "state.json";

/// How long a shutdown waits for output files still being written before it saves.
pub const OUTPUT_WAIT: Duration = Duration::from_secs(5);

/// Bumped whenever the saved form changes; another version is refused, never guessed at.
const VERSION: u32 = 1;

/// A file as saved: its object, and its content's name in the data directory.
#[derive(Debug, Serialize, Deserialize)]
struct SavedFile {
    seq: u64,
    id: String,
    filename: String,
    purpose: String,
    created_at: SimMs,
    expires_at: Option<SimMs>,
    #[serde(with = "file_name")]
    data: Arc<StoredFile>,
    ready: FileReady,
}

/// What `state.json` holds, as written.
#[derive(Serialize)]
struct SavedRef<'a> {
    version: u32,
    now: SimMs,
    rng: u64,
    next_seq: u64,
    stats: &'a Counters,
    files: Vec<SavedFile>,
    batches: &'a [Batch],
}

/// What `state.json` holds, as read.
#[derive(Deserialize)]
struct Saved {
    version: u32,
    now: SimMs,
    rng: u64,
    next_seq: u64,
    stats: Counters,
    files: Vec<SavedFile>,
    batches: Vec<Batch>,
}

/// Writes the state to `state.json` in the data directory and keeps every file it names.
/// Waits up to [`OUTPUT_WAIT`] for output files still being written. Returns the path written.
pub(crate) async fn save(shared: &Shared) -> anyhow::Result<PathBuf> {
    // Locking brings the batches up to now, which may start writing more output files.
    let pending: Vec<watch::Receiver<FileReady>> = shared
        .lock()
        .files
        .iter()
        .filter(|f| *f.ready.borrow() == FileReady::Pending)
        .map(|f| f.ready.clone())
        .collect();
    let written = tokio::time::timeout(OUTPUT_WAIT, async {
        for mut ready in pending {
            let _ = ready.wait_for(|r| *r != FileReady::Pending).await;
        }
    })
    .await;
    if written.is_err() {
        tracing::warn!(
            "output files were still being written after {OUTPUT_WAIT:?}; they are saved as failed"
        );
    }
    // Not `lock()`: events that fall due now are applied after the next start, at the instants
    // they were due, and no output file is started that could not be waited for.
    let state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
    let files = state
        .files
        .iter()
        .map(|f| SavedFile {
            seq: f.seq,
            id: f.id.clone(),
            filename: f.filename.clone(),
            purpose: f.purpose.clone(),
            created_at: f.created_at,
            expires_at: f.expires_at,
            data: f.data.clone(),
            ready: match &*f.ready.borrow() {
                FileReady::Pending => {
                    FileReady::Failed("the simulator stopped before the file was written".into())
                }
                other => other.clone(),
            },
        })
        .collect();
    let saved = SavedRef {
        version: VERSION,
        now: state.clock.now(),
        rng: state.rng.get_seed(),
        next_seq: state.next_seq,
        stats: &state.stats,
        files,
        batches: &state.batches,
    };
    let json = serde_json::to_vec(&saved).context("serialising the simulator's state")?;
    let path = state.data_dir.join(STATE_FILE);
    write_atomically(&path, &json)?;
    for file in &state.files {
        file.data.keep();
    }
    for batch in &state.batches {
        batch.input.keep();
    }
    tracing::info!(
        path = %path.display(),
        files = state.files.len(),
        batches = state.batches.len(),
        "simulator state saved"
    );
    Ok(path)
}

/// Write to a temporary name, sync, rename, sync the directory: `state.json` is whole or absent.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("the state file has no directory")?;
    let tmp = path.with_extension("json.tmp");
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Loads `state.json` from the data directory into `state`, when there is one, and removes it.
/// Returns whether a state was loaded. A state that names a missing file is refused before
/// anything is changed on disk.
pub(crate) fn load(state: &mut State, config: &SimConfig) -> anyhow::Result<bool> {
    let path = state.data_dir.join(STATE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mut saved: Saved = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a saved simulator state", path.display()))?;
    anyhow::ensure!(
        saved.version == VERSION,
        "{} was saved by another version of the simulator (format {}, this one reads {VERSION}); \
         remove it to start empty",
        path.display(),
        saved.version
    );

    // Every file named must be there before any is taken over: a `StoredFile` removes its file
    // when dropped, so a half-done load must not hold any.
    let names: HashSet<PathBuf> = saved
        .files
        .iter()
        .map(|f| f.data.path())
        .chain(saved.batches.iter().map(|b| b.input.path()))
        .map(Path::to_path_buf)
        .collect();
    for name in &names {
        let full = state.data_dir.join(name);
        anyhow::ensure!(
            full.is_file(),
            "{} names {}, which is not in the data dir; remove {STATE_FILE} to start empty",
            path.display(),
            full.display()
        );
    }
    let stored: HashMap<PathBuf, Arc<StoredFile>> = names
        .into_iter()
        .map(|name| {
            let file = Arc::new(StoredFile::new(state.data_dir.join(&name)));
            (name, file)
        })
        .collect();
    let resolve = |named: &Arc<StoredFile>| stored[named.path()].clone();

    state.files = saved
        .files
        .iter()
        .map(|f| FileEntry {
            seq: f.seq,
            id: f.id.clone(),
            filename: f.filename.clone(),
            purpose: f.purpose.clone(),
            created_at: f.created_at,
            expires_at: f.expires_at,
            data: resolve(&f.data),
            ready: watch::channel(f.ready.clone()).1,
        })
        .collect();
    for batch in &mut saved.batches {
        batch.input = resolve(&batch.input);
        // Only a batch still validating needs its validation's result.
        if batch.status != BatchStatus::Validating {
            batch.validation = Validation::Used;
        }
    }
    for batch in &mut saved.batches {
        // Saved before observations were counted: count from the batch's creation.
        if batch.served.last_ms < batch.created_at {
            batch.served = Served::new(batch.created_at);
        }
        for transition in &mut batch.history {
            if transition.at_ms == 0 {
                transition.at_ms = transition.at * 1000;
            }
        }
    }
    // Saved in upload order; sorted anyway, as file lookups depend on it.
    state.files.sort_by_key(|f| f.seq);
    state.batches = saved.batches;
    state.reindex();
    state.resume_foreign();
    state.clock = Clock::new(saved.now, config.time_scale);
    state.rng = fastrand::Rng::with_seed(saved.rng);
    state.next_seq = saved.next_seq;
    state.stats = saved.stats;
    if config.start_time.is_some() {
        tracing::warn!("the start time is ignored: the clock resumes from the saved state");
    }
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    tracing::info!(
        path = %path.display(),
        files = state.files.len(),
        batches = state.batches.len(),
        "simulator state loaded"
    );
    Ok(true)
}

/// Takes up the state the last clean shutdown saved in a data directory of the caller's (a
/// temporary one is new, so it holds none), and starts the validations its batches still need.
pub(crate) fn resume(shared: &Arc<Shared>, config: &SimConfig) -> anyhow::Result<()> {
    let pending: Vec<_> = {
        let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        if config.data_dir.is_some() {
            load(&mut state, config)?;
        }
        state
            .batches
            .iter()
            .filter(|b| matches!(b.validation, Validation::Pending))
            .map(|b| (b.id.clone(), b.api, b.input.clone(), b.endpoint.clone()))
            .collect()
    };
    for (id, api, input, endpoint) in pending {
        crate::batches::spawn_validation(shared.clone(), id, api, input, endpoint);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn saved_file(seq: u64, name: &str) -> serde_json::Value {
        json!({
            "seq": seq, "id": format!("file-{seq}"), "filename": "in.jsonl", "purpose": "batch",
            "created_at": 0, "expires_at": null, "data": name, "ready": {"Ready": {"bytes": 3}},
        })
    }

    fn state_json(version: u32, files: Vec<serde_json::Value>) -> String {
        json!({
            "version": version, "now": 5_000, "rng": 1, "next_seq": 9,
            "stats": {"requests": {}, "faults": {}}, "files": files, "batches": [],
        })
        .to_string()
    }

    fn load_from(dir: &Path, state: &str) -> anyhow::Result<Shared> {
        std::fs::write(dir.join(STATE_FILE), state).unwrap();
        let config = SimConfig {
            data_dir: Some(dir.to_owned()),
            ..SimConfig::default()
        };
        let shared = Shared::new(&config)?;
        load(&mut shared.state.lock().unwrap(), &config)?;
        Ok(shared)
    }

    #[test]
    fn a_state_naming_a_missing_file_is_refused_and_leaves_every_file_in_place() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("00000001-upload"), "abc").unwrap();
        let state = state_json(
            VERSION,
            vec![
                saved_file(1, "00000001-upload"),
                saved_file(2, "00000002-upload"),
            ],
        );
        let err = load_from(dir.path(), &state).err().expect("refused");
        assert!(format!("{err:#}").contains("00000002-upload"), "{err:#}");
        assert!(dir.path().join("00000001-upload").is_file());
        assert!(dir.path().join(STATE_FILE).is_file());
    }

    #[test]
    fn a_loaded_state_owns_its_files_and_its_clock() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("00000001-upload"), "abc").unwrap();
        let state = state_json(VERSION, vec![saved_file(1, "00000001-upload")]);
        let shared = load_from(dir.path(), &state).expect("loaded");
        {
            let state = shared.state.lock().unwrap();
            assert_eq!(
                state.files[0].data.path(),
                dir.path().join("00000001-upload")
            );
            assert_eq!(state.next_seq, 9);
            assert!(state.clock.now() >= 5_000);
        }
        assert!(!dir.path().join(STATE_FILE).exists());
        // Owned again: deleting the file object removes its content, as before the restart.
        drop(shared);
        assert!(!dir.path().join("00000001-upload").exists());
    }

    #[test]
    fn a_state_of_another_format_or_naming_paths_outside_the_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_from(dir.path(), &state_json(VERSION + 1, vec![]))
            .err()
            .expect("another version is refused");
        assert!(format!("{err:#}").contains("another version"), "{err:#}");
        for name in ["../outside", "/etc/passwd", ""] {
            let state = state_json(VERSION, vec![saved_file(1, name)]);
            let err = load_from(dir.path(), &state).err().expect("refused");
            assert!(
                format!("{err:#}").contains("is not a data file name"),
                "{name}: {err:#}"
            );
        }
    }
}
