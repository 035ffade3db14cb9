//! What the activities share in memory, held by [`Ctx`](crate::daemon::ctx::Ctx): below
//! every activity, so none imports another for it.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// Batches per list page: the most the API gives.
pub const PAGE: u32 = 100;

/// The late duplicates already reported, so each is reported once.
#[derive(Debug, Default)]
pub struct DuplicateWatch {
    reported: Mutex<BTreeSet<String>>,
}

impl DuplicateWatch {
    pub fn is_new(&self, batch_id: &str) -> bool {
        !self.reported.lock().expect("lock").contains(batch_id)
    }

    pub fn reported(&self, batch_id: &str) {
        self.reported
            .lock()
            .expect("lock")
            .insert(batch_id.to_owned());
    }
}

/// Jobs whose remote side the database may not fully know; see the module docs.
#[derive(Debug, Default)]
pub struct Unverified(Mutex<BTreeSet<String>>);

impl Unverified {
    pub fn add(&self, job_id: &str) {
        self.0.lock().expect("lock").insert(job_id.to_owned());
    }

    pub fn contains(&self, job_id: &str) -> bool {
        self.0.lock().expect("lock").contains(job_id)
    }

    /// The jobs not yet checked.
    pub fn ids(&self) -> Vec<String> {
        self.0
            .lock()
            .expect("unverified lock")
            .iter()
            .cloned()
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.lock().expect("lock").is_empty()
    }

    pub fn remove(&self, job_id: &str) {
        self.0.lock().expect("lock").remove(job_id);
    }
}

/// What the last sweep learned about the cost of the next one.
#[derive(Debug, Default)]
pub struct Sweeps {
    /// Pages the last sweep read (0 before the first).
    pub(crate) last_pages: AtomicU32,
}

impl Sweeps {
    /// How many requests a sweep of `active` submissions is expected to cost.
    pub(crate) fn expected_pages(&self, active: i64) -> i64 {
        match self.last_pages.load(Ordering::Relaxed) {
            0 => (active + i64::from(PAGE) - 1) / i64::from(PAGE),
            n => i64::from(n),
        }
    }
}
