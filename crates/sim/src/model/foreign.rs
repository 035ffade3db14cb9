//! What the simulated other tool has done so far (`--foreign-batches`; see `foreign.rs`).

use std::sync::Arc;

use super::file::StoredFile;

/// What the other tool has done so far.
#[derive(Debug, Default)]
pub(crate) struct Foreign {
    /// How many batches it creates in all.
    pub(crate) wanted: u64,
    /// How many it creates after each batch a client creates.
    pub(crate) per_create: u64,
    /// How many it has created.
    pub(crate) created: u64,
    /// Its input file: the file id, and the content.
    pub(crate) input: Option<(String, Arc<StoredFile>)>,
}

impl Foreign {
    pub(crate) fn new(wanted: u64, per_create: u64) -> Foreign {
        Foreign {
            wanted,
            per_create,
            ..Foreign::default()
        }
    }

    /// Forgets every batch created (after a reset of the simulator).
    pub(crate) fn reset(&mut self) {
        self.created = 0;
        self.input = None;
    }
}
