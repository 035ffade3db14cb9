//! The simulator's state: files, batches, statistics and the fault settings, behind one lock
//! ([`Shared`]), with the indexes that find them by id.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use secrecy::SecretString;
use tokio::sync::Notify;

use crate::lifecycle::RESULTS_PURPOSE;
use crate::model::clock::{Clock, SimMs, real_unix_ms};
use crate::model::{
    Api, Batch, Counters, FaultState, Faults, FileEntry, Foreign, ListOrder, SimConfig, Timing,
};
use batchwatch_core::batchfile::Limits;

/// Everything the server's tasks share.
pub(crate) struct Shared {
    /// The organisation's keys, the only ones accepted (any non-empty key when `None`); they
    /// all see and change the same files and batches. The admin API can change them.
    pub(crate) api_keys: Mutex<Option<Vec<SecretString>>>,
    pub(crate) data_dir: PathBuf,
    pub(crate) limits: Limits,
    pub(crate) state: Mutex<State>,
    /// Wakes the lifecycle ticker early: a validation finished, the clock changed.
    pub(crate) wake: Notify,
    /// The temporary data directory, removed when the simulator is dropped.
    _temp_dir: Option<tempfile::TempDir>,
}

impl Shared {
    pub(crate) fn new(config: &SimConfig) -> anyhow::Result<Shared> {
        let (data_dir, temp_dir) = match &config.data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| anyhow::anyhow!("creating data dir {}: {e}", dir.display()))?;
                (dir.clone(), None)
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("batchwatch-sim-")
                    .tempdir()
                    .map_err(|e| anyhow::anyhow!("creating a temporary data dir: {e}"))?;
                (temp.path().to_owned(), Some(temp))
            }
        };
        Ok(Shared {
            api_keys: Mutex::new(config.api_key.clone().map(|k| vec![k])),
            state: Mutex::new(State::new(config, data_dir.clone())),
            data_dir,
            limits: config.limits,
            wake: Notify::new(),
            _temp_dir: temp_dir,
        })
    }

    /// Locks the state, first bringing every batch up to the current simulated time.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.advance();
        state
    }
}

/// Everything behind the lock.
pub(crate) struct State {
    pub(crate) clock: Clock,
    pub(crate) timing: Timing,
    pub(crate) faults: FaultState,
    pub(crate) stats: Counters,
    /// Draws ids and per-batch seeds; separate from the fault generator so that faults do not
    /// change which ids and outcomes a run produces.
    pub(crate) rng: fastrand::Rng,
    pub(crate) data_dir: PathBuf,
    /// In upload order, so ascending by `seq`; found by id through `file_index`.
    pub(crate) files: Vec<FileEntry>,
    /// A file's `seq` by its id.
    pub(crate) file_index: HashMap<String, u64>,
    /// In creation order: a batch's index is its place in time.
    pub(crate) batches: Vec<Batch>,
    pub(crate) batch_index: HashMap<String, usize>,
    /// Every batch's next event as (instant, index), earliest first; entries the batch has
    /// moved past since are dropped when they come up (see `lifecycle`).
    pub(crate) events: BinaryHeap<Reverse<(SimMs, usize)>>,
    /// The order of `GET /batches`, and its index when it is not creation order.
    pub(crate) list_order: ListOrder,
    pub(crate) shuffled: BTreeSet<(u64, usize)>,
    /// The other tool's batches (`--foreign-batches`).
    pub(crate) foreign: Foreign,
    /// When the observation counts were last reset (simulated ms).
    pub(crate) observed_since: SimMs,
    pub(crate) next_seq: u64,
    /// What `reset` returns to.
    seed: u64,
    initial_faults: Faults,
}

impl State {
    fn new(config: &SimConfig, data_dir: PathBuf) -> State {
        let seed = config.seed.unwrap_or(0);
        let start = config.start_time.map_or_else(real_unix_ms, |s| s * 1000);
        State {
            clock: Clock::new(start, config.time_scale),
            timing: config.timing(),
            faults: FaultState::new(config.faults.clone(), fault_seed(seed)),
            stats: Counters::default(),
            rng: fastrand::Rng::with_seed(seed),
            data_dir,
            files: Vec::new(),
            file_index: HashMap::new(),
            batches: Vec::new(),
            batch_index: HashMap::new(),
            events: BinaryHeap::new(),
            list_order: config.list_order,
            shuffled: BTreeSet::new(),
            foreign: Foreign::new(config.foreign_batches, config.foreign_per_create),
            observed_since: start,
            next_seq: 0,
            seed,
            initial_faults: config.faults.clone(),
        }
    }

    /// Forgets every file, batch and count; faults return to the configured ones.
    pub(crate) fn reset(&mut self) {
        self.files.clear();
        self.batches.clear();
        self.reindex();
        self.foreign.reset();
        self.observed_since = self.clock.now();
        self.stats = Counters::default();
        self.rng = fastrand::Rng::with_seed(self.seed);
        self.faults = FaultState::new(self.initial_faults.clone(), fault_seed(self.seed));
    }

    /// The configured seed.
    pub(crate) fn seed(&self) -> u64 {
        self.seed
    }

    pub(crate) fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// A fresh path in the data directory.
    pub(crate) fn new_path(&mut self, tag: &str) -> PathBuf {
        let n = self.next_seq();
        self.data_dir.join(format!("{n:08}-{tag}"))
    }

    /// `prefix` then `len` random characters from `alphabet`.
    pub(crate) fn new_id(&mut self, prefix: &str, len: usize, alphabet: &[u8]) -> String {
        let mut id = String::with_capacity(prefix.len() + len);
        id.push_str(prefix);
        for _ in 0..len {
            id.push(alphabet[self.rng.usize(..alphabet.len())] as char);
        }
        id
    }

    pub(crate) fn new_file_id(&mut self) -> String {
        self.new_id(
            "file-",
            22,
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
        )
    }

    pub(crate) fn file(&self, id: &str) -> Option<&FileEntry> {
        self.file_position(id).map(|i| &self.files[i])
    }

    /// A file the Files API serves: not an Anthropic batch's results.
    pub(crate) fn client_file(&self, id: &str) -> Option<&FileEntry> {
        self.file(id).filter(|f| f.purpose != RESULTS_PURPOSE)
    }

    fn file_position(&self, id: &str) -> Option<usize> {
        let seq = *self.file_index.get(id)?;
        self.files.binary_search_by_key(&seq, |f| f.seq).ok()
    }

    /// Adds a file; its `seq` must be the newest (see `next_seq`).
    pub(crate) fn add_file(&mut self, file: FileEntry) {
        debug_assert!(self.files.last().is_none_or(|last| last.seq < file.seq));
        self.file_index.insert(file.id.clone(), file.seq);
        self.files.push(file);
    }

    /// Forgets a file object (its content stays while a batch still reads it).
    pub(crate) fn remove_file(&mut self, id: &str) -> bool {
        let Some(i) = self.file_position(id) else {
            return false;
        };
        self.files.remove(i);
        self.file_index.remove(id);
        true
    }

    /// Adds a new batch: indexed by id, placed in the list order, its first event scheduled.
    pub(crate) fn add_batch(&mut self, batch: Batch) -> usize {
        let i = self.batches.len();
        self.batch_index.insert(batch.id.clone(), i);
        self.batches.push(batch);
        self.place(i);
        self.schedule(i);
        i
    }

    /// Rebuilds every index from `files` and `batches` (after a load or a reset).
    pub(crate) fn reindex(&mut self) {
        self.file_index = self.files.iter().map(|f| (f.id.clone(), f.seq)).collect();
        self.batch_index = self
            .batches
            .iter()
            .enumerate()
            .map(|(i, b)| (b.id.clone(), i))
            .collect();
        self.events.clear();
        self.shuffled.clear();
        for i in 0..self.batches.len() {
            self.place(i);
            self.schedule(i);
        }
    }

    /// Records that these batches were sent to a client now.
    pub(crate) fn served(&mut self, batches: &[usize]) {
        let now = self.clock.now();
        for &i in batches {
            self.batches[i].served.mark(now);
        }
    }

    /// The index of a batch of `api` that has not vanished.
    pub(crate) fn visible_batch(&self, api: Api, id: &str) -> Option<usize> {
        self.batch_index
            .get(id)
            .copied()
            .filter(|&i| !self.batches[i].vanished && self.batches[i].api == api)
    }
}

/// The fault generator's seed, kept apart from the id generator's.
fn fault_seed(seed: u64) -> u64 {
    seed ^ 0x9E37_79B9_7F4A_7C15
}
