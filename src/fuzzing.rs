//! What the fuzz targets in `fuzz/` call that is not public otherwise: the pure functions
//! behind the API client's answers (the provider's) and the merge of a job's result files.
//! Built only with the `fuzzing` feature.

use std::io;
use std::path::Path;

pub use crate::api::fuzzing::answer;

/// Merges the downloaded `BATCH.KIND.jsonl` files of `batches` in `dir` into `KIND.jsonl`, as
/// a job's end does.
pub fn merge_results(dir: &Path, batches: &[String], kind: &str) -> io::Result<Option<String>> {
    crate::daemon::finish::merge(dir, batches, kind)
}
