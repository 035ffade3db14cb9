//! batchwatch's store port: what every store speaks in, and no SQL. The rows a store gives
//! back (a job, a submission, a history row, figures) and the inputs of its operations (an
//! observation, a job's ending, the writer's lease) live here, so that a second backend
//! (PostgreSQL, for several daemons on one fleet) speaks the same words as the SQLite store,
//! and the daemon names no backend's types.
//!
//! The operations are traits, one per activity that asks for them ([`ops`]), and the reads
//! one more ([`Reads`]); a backend implements them all, and its errors reach the daemon as a
//! [`StoreError`]. The traits use `async fn`: every caller holds a concrete store (the
//! binary's `Store`, an enum over the backends), so whether a future is `Send` is known where
//! it is spawned, and nothing is boxed.
#![allow(async_fn_in_trait)]

pub mod batches;
pub mod chain;
pub mod deletions;
mod error;
pub mod figures;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod history;
pub mod jobs;
pub mod notifications;
pub mod ops;
pub mod progress;
mod reads;
pub mod retention;
pub mod schema;
pub mod usage;

pub use error::{BackendError, NOT_HELD_SQLSTATE, StoreError};
pub use ops::Lease;
pub use reads::Reads;

/// How an existing database is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Create it when missing and apply pending migrations (the daemon, `migrate`).
    Migrate,
    /// Read and write an existing database whose schema is current (`cancel`).
    Write,
    /// Read an existing database whose schema is current (`status`, `show`, `history`).
    ReadOnly,
}

impl Access {
    /// Whether a database of schema version `found` (`None`: not a batchwatch database) at
    /// `at` may be opened for this access by a build that knows up to version `known`: a
    /// newer schema never; an older one, or none, only to migrate it.
    pub fn may_open(
        self,
        found: Option<i64>,
        known: i64,
        at: &std::path::Path,
    ) -> Result<(), StoreError> {
        match found {
            Some(found) if found > known => Err(StoreError::NewerSchema {
                path: at.to_owned(),
                found,
                known,
            }),
            Some(found) if found < known && self != Access::Migrate => {
                Err(StoreError::OlderSchema {
                    path: at.to_owned(),
                    found,
                    known,
                })
            }
            None if self != Access::Migrate => Err(StoreError::NotOurs(at.to_owned())),
            _ => Ok(()),
        }
    }
}

/// The store's traits, to bring their methods into scope: `use batchwatch_store::prelude::*`.
pub mod prelude {
    pub use crate::Reads as _;
    pub use crate::ops::cancel::Cancel as _;
    pub use crate::ops::finish::Finish as _;
    pub use crate::ops::housekeeping::Housekeeping as _;
    pub use crate::ops::intake::Intake as _;
    pub use crate::ops::lease::Leases as _;
    pub use crate::ops::submit::Submit as _;
    pub use crate::ops::track::Track as _;
}

/// Writes a column that holds JSON text (a batch object, metadata) into JSON output as the
/// JSON it holds, an object rather than a string; text that is not JSON stays a string.
pub fn json_text<S: serde::Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
    match serde_json::from_str::<&serde_json::value::RawValue>(text) {
        Ok(json) => serde::Serialize::serialize(json, s),
        Err(_) => s.serialize_str(text),
    }
}

/// [`json_text`] for a column that may be NULL.
pub fn json_text_or_null<S: serde::Serializer>(
    text: &Option<String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match text {
        Some(text) => json_text(text, s),
        None => s.serialize_none(),
    }
}
