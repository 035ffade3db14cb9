//! What the simulator counts, and the statistics the admin API reports.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::batch::Transition;

/// Request and fault counters.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Counters {
    requests: BTreeMap<String, u64>,
    faults: BTreeMap<String, u64>,
}

impl Counters {
    pub(crate) fn count_request(&mut self, route: &str) {
        *self.requests.entry(route.to_owned()).or_default() += 1;
    }

    pub(crate) fn requests(&self) -> &BTreeMap<String, u64> {
        &self.requests
    }

    pub(crate) fn count_fault(&mut self, name: &str) {
        *self.faults.entry(name.to_owned()).or_default() += 1;
    }

    pub(crate) fn faults(&self) -> &BTreeMap<String, u64> {
        &self.faults
    }
}

/// What the admin API reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// The simulated clock, in unix seconds.
    pub now: i64,
    /// Batches created per value of the metadata key `batchwatch_job_id`.
    pub batches_by_job: BTreeMap<String, u64>,
    /// Requests received per `METHOD /route/{template}` (faulted ones included).
    pub requests: BTreeMap<String, u64>,
    /// Faults injected per kind.
    pub faults_injected: BTreeMap<String, u64>,
    /// Every batch ever created, oldest first.
    pub batches: Vec<BatchStats>,
}

/// One batch in [`Stats`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchStats {
    pub id: String,
    pub status: String,
    pub job_id: Option<String>,
    /// Created by the simulated other tool (`--foreign-batches`), not by a client.
    pub foreign: bool,
    pub vanished: bool,
    /// Every status it took, in order.
    pub history: Vec<Transition>,
}
