//! What a deletion's outcome tells the store.

use crate::deletions::Done;

/// How one try at deleting a remote file ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Deleted {
    Done(Done),
    /// It failed with `error`; it is tried again from `retry_at`.
    Failed {
        error: String,
        retry_at: String,
    },
}
