//! batchwatch's store port: what every store speaks in, and no SQL. The rows a store gives
//! back (a job, a submission, a history row, figures) and the inputs of its operations (an
//! observation, a job's ending, the writer's lease) live here, so that a second backend
//! (PostgreSQL, for several daemons on one fleet) speaks the same words as the SQLite store,
//! and the daemon names no backend's types.

pub mod batches;
pub mod chain;
pub mod deletions;
pub mod figures;
pub mod history;
pub mod jobs;
pub mod ops;
pub mod retention;
pub mod usage;

pub use ops::Lease;

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
