//! What other crates' tests need to make the provider's objects as the service would: a batch
//! tagged for a part, a listed file. Built only with the `testing` feature, which the root
//! package turns on for its tests alone.

use crate::tags::{self, upload_name};
use crate::{Batch, FileObject};

/// `batch` tagged as part `part`, attempt `attempt` of job `job_id`, the way batchwatch tags
/// the batches it creates (or the way a forger would).
pub fn tagged(mut batch: Batch, job_id: &str, part: i64, attempt: i64) -> Batch {
    let mut metadata = batch.metadata.take().unwrap_or_default();
    tags::tag(&mut metadata, job_id, part, attempt, None);
    batch.metadata = Some(metadata);
    batch
}

/// A file the service lists: `bytes` long, created at unix second `created`, named `name`.
pub fn file(id: &str, name: &str, bytes: Option<u64>, created: i64) -> FileObject {
    FileObject {
        id: id.to_owned(),
        object: "file".to_owned(),
        bytes,
        created_at: jiff::Timestamp::from_second(created).ok(),
        expires_at: None,
        filename: name.to_owned(),
        purpose: "batch".to_owned(),
        status: None,
        status_details: None,
    }
}

/// The name batchwatch uploads part `part`, attempt `attempt` of `job_id`'s `file_name` under.
pub fn upload_file_name(job_id: &str, part: i64, attempt: i64, file_name: &str) -> String {
    upload_name(job_id, part, attempt, file_name)
}
