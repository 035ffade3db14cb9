//! How batchwatch's objects are named on an OpenAI service, so that they can be found again
//! when the database does not record them (an answer lost, a restored backup): the metadata
//! keys a batch carries, and the name a part's upload is given. What these say is a claim, not
//! a proof: any key of the organisation can write them (see [`crate::parts`]).

use std::collections::BTreeMap;

use crate::Batch;
use batchwatch_core::model::JobId;

/// The metadata keys that tie a remote batch to its submission.
pub const JOB_KEY: &str = "batchwatch_job_id";
pub const PART_KEY: &str = "batchwatch_part";
pub const ATTEMPT_KEY: &str = "batchwatch_attempt";
pub const SHA_KEY: &str = "batchwatch_sha256";

/// Tags `metadata` (the job's own) with the keys naming submission `part`, `attempt` of job
/// `job_id`, and the file's digest when known.
pub fn tag(
    metadata: &mut BTreeMap<String, String>,
    job_id: &str,
    part: i64,
    attempt: i64,
    sha256: Option<&str>,
) {
    metadata.insert(JOB_KEY.into(), job_id.to_owned());
    metadata.insert(PART_KEY.into(), part.to_string());
    metadata.insert(ATTEMPT_KEY.into(), attempt.to_string());
    if let Some(sha) = sha256 {
        metadata.insert(SHA_KEY.into(), sha.to_owned());
    }
}

/// The name a submission's input file is uploaded under; unique per job, part and attempt.
pub fn upload_name(job_id: &str, part: i64, attempt: i64, file_name: &str) -> String {
    let stem = file_name.strip_suffix(".jsonl").unwrap_or(file_name);
    let safe: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect();
    format!("{job_id}-p{part}-a{attempt}-{safe}.jsonl")
}

impl Batch {
    /// The digest of the job's file the batch's tags give: a claim, like every tag.
    pub fn file_digest(&self) -> Option<&str> {
        self.metadata_value(SHA_KEY)
    }
}

impl crate::FileObject {
    /// The job this file's name says it was uploaded for: a claim, not a proof.
    pub fn uploaded_for(&self) -> Option<String> {
        parse_upload_name(&self.filename).map(|(job, _, _)| job)
    }
}

/// The job, part and attempt an upload's name says it was made for.
pub fn parse_upload_name(name: &str) -> Option<(String, i64, i64)> {
    let (job, rest) = name.split_at_checked(JobId::PREFIX.len() + 26)?;
    JobId::parse(job)?;
    let mut fields = rest.strip_prefix("-p")?.splitn(3, '-');
    let part = fields.next()?.parse().ok()?;
    let attempt = fields.next()?.strip_prefix('a')?.parse().ok()?;
    Some((job.to_owned(), part, attempt))
}

/// The submission a batch's metadata names: the one reading of batchwatch's keys, for every
/// match. A claim, not a proof (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim<'a> {
    pub job_id: &'a str,
    pub part: i64,
    pub attempt: i64,
}

impl<'a> Claim<'a> {
    /// The claim of `batch`'s metadata, when it names a job, and a part and an attempt that
    /// read as numbers.
    pub(crate) fn of(batch: &'a Batch) -> Option<Claim<'a>> {
        Some(Claim {
            job_id: batch.metadata_value(JOB_KEY)?,
            part: batch.metadata_value(PART_KEY)?.parse().ok()?,
            attempt: batch.metadata_value(ATTEMPT_KEY)?.parse().ok()?,
        })
    }

    pub fn names(&self, job_id: &str, part: i64, attempt: i64) -> bool {
        (self.job_id, self.part, self.attempt) == (job_id, part, attempt)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn batch(metadata: Value) -> Batch {
        serde_json::from_value(json!({
            "id": "batch_1", "object": "batch", "endpoint": "/v1/chat/completions",
            "input_file_id": "file-1", "completion_window": "24h", "status": "in_progress",
            "created_at": 1, "metadata": metadata
        }))
        .unwrap()
    }

    fn claiming(attempt: &str) -> Value {
        json!({JOB_KEY: "job_x", PART_KEY: "0", ATTEMPT_KEY: attempt})
    }

    #[test]
    fn a_claim_names_a_job_and_a_part_and_an_attempt_read_as_numbers() {
        let read = |metadata: Value| {
            let b = batch(metadata);
            Claim::of(&b).map(|c| (c.job_id.to_owned(), c.part, c.attempt))
        };
        assert_eq!(read(claiming("02")), Some(("job_x".into(), 0, 2)));
        assert_eq!(read(json!({JOB_KEY: "job_x", PART_KEY: "0"})), None);
        assert_eq!(read(claiming("two")), None);
        assert_eq!(read(json!({PART_KEY: "0", ATTEMPT_KEY: "1"})), None);
        assert_eq!(read(Value::Null), None);
    }

    #[test]
    fn an_upload_name_reads_back_as_its_job_part_and_attempt() {
        let job = JobId::generate(1_765_000_000_000).to_string();
        let name = upload_name(&job, 2, 3, "my file?.jsonl");
        assert_eq!(parse_upload_name(&name), Some((job, 2, 3)));
        assert_eq!(parse_upload_name("other-tool.jsonl"), None);
    }
}
