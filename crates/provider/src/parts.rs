//! A job's parts on the service, in the daemon's words: sending one (upload, then create), and
//! finding again what a lost answer or a database that lags the world may have left there.
//!
//! The daemon says which part it means with a [`Part`]; how that part is named on the service
//! (the metadata keys, the upload's name, see [`crate::tags`]) stays here. Those names are a
//! claim, not a proof: any key of the organisation lists the same batches and may write any
//! metadata on a batch of its own. So a batch is a part's ([`Batch::is_of`]) only when its
//! upload is provably the one batchwatch made for that part:
//!
//! * when the database records the part's upload, the batch runs that very upload, and its
//!   metadata names no other part (a service that drops metadata is still matched);
//! * when it records none (it lags: the upload intent was lost with a restored backup, or the
//!   job's row was made anew), the service lists the batch's upload under the part's upload
//!   name with the part's size in bytes, and the batch carries the digest of the job's file
//!   ([`Survey::proves`]).
//!
//! Listings read the service newest first and stop at objects created well before the time in
//! question ([`CLOCK_SLACK`] before it, for clocks that disagree).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use batchwatch_core::usage::Tokens;
use futures_util::{Stream, StreamExt, TryStreamExt};
use jiff::Timestamp;

use crate::tags::{self, Claim, parse_upload_name, upload_name};
use crate::types::{CreateBatchRequest, FileObject, OutputExpiresAfter};
use crate::{ApiError, Batch, Client};

/// How long before the time in question a listing still reads objects: clocks disagree.
pub const CLOCK_SLACK: Duration = Duration::from_secs(3600);

/// How many objects older than the oldest time in question a survey reads before it stops:
/// the service lists newest first, and a page of disorder is tolerated.
const OLDER_BEFORE_STOP: usize = 100;

/// Attempt `attempt` at part `part` of job `job_id`, and the upload the database records for
/// it: all that proves a batch the attempt's ([`Batch::is_of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt<'a> {
    pub job_id: &'a str,
    pub part: i64,
    pub attempt: i64,
    /// The attempt's upload, when the database records one.
    pub upload_id: Option<&'a str>,
}

/// One part of a job, at one attempt: what becomes one batch, with what its upload is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part<'a> {
    pub id: Attempt<'a>,
    /// The name of the job's file in the queue.
    pub file_name: &'a str,
    /// The part's size in bytes.
    pub bytes: Option<u64>,
    /// The digest of the job's whole file, when known.
    pub sha256: Option<&'a str>,
}

/// What a new batch is made with besides its part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOptions<'a> {
    /// Such as `/v1/chat/completions`.
    pub endpoint: &'a str,
    pub completion_window: &'a str,
    /// The job's own metadata; the part's tags are added to it.
    pub metadata: BTreeMap<String, String>,
    /// Seconds after which the service deletes the batch's results.
    pub results_expire_after: Option<u64>,
}

impl Batch {
    /// Whether this is the batch of `attempt`, whose upload the database records: a batch of
    /// that very upload that names no other attempt. A batch that only claims `attempt` is
    /// not; an attempt with no recorded upload has no batch this can prove (see
    /// [`Survey::proves`]).
    pub fn is_of(&self, attempt: &Attempt<'_>) -> bool {
        attempt.upload_id.is_some()
            && self.upload_id.as_deref() == attempt.upload_id
            && self
                .claim()
                .is_none_or(|c| c.names(attempt.job_id, attempt.part, attempt.attempt))
    }

    /// The part this batch's tags name: a claim, not a proof.
    pub fn claim(&self) -> Option<Claim<'_>> {
        Claim::of(self)
    }
}

/// The name `part` is uploaded under.
fn name_of(part: &Part<'_>) -> String {
    upload_name(
        part.id.job_id,
        part.id.part,
        part.id.attempt,
        part.file_name,
    )
}

/// Whether `file` is the upload named `name` of a part of `bytes` bytes. A file whose size the
/// service does not say is not.
fn is_upload(file: &FileObject, name: &str, bytes: Option<u64>) -> bool {
    file.filename == name && file.bytes.is_some() && file.bytes == bytes
}

/// The usage a batch's downloaded output reports, summed by model, where the service reports
/// it per request in the results rather than on the batch ([`Client::is_anthropic`]): read
/// line by line from `output`.
pub fn results_usage(output: impl std::io::BufRead) -> std::io::Result<BTreeMap<String, Tokens>> {
    crate::anthropic::usage_by_model(output)
}

/// `at` less [`CLOCK_SLACK`]: objects created before it cannot be of what happened at `at`.
fn slack_before(at: Timestamp) -> Timestamp {
    let slack = jiff::SignedDuration::try_from(CLOCK_SLACK).expect("an hour fits");
    at.checked_sub(slack).unwrap_or(at)
}

impl Client {
    /// Uploads `part`, bytes `range` of the file at `path`, under the part's upload name;
    /// the service deletes it `expires_after` seconds later when given. Returns the upload's
    /// id. Never retried: an unknown outcome is found again with [`Client::find_upload`].
    pub async fn upload_part(
        &self,
        part: &Part<'_>,
        path: &Path,
        range: Range<u64>,
        expires_after: Option<u64>,
    ) -> Result<String, ApiError> {
        let file = self
            .upload_file_expiring(path, range, &name_of(part), expires_after)
            .await?;
        Ok(file.id)
    }

    /// Creates the batch of `part` from its upload `upload_id`, tagged with the part. Never
    /// retried: an unknown outcome is found again with [`Client::find_batch`].
    pub async fn create_batch_of(
        &self,
        part: &Part<'_>,
        upload_id: &str,
        options: BatchOptions<'_>,
    ) -> Result<Batch, ApiError> {
        let mut metadata = options.metadata;
        tags::tag(
            &mut metadata,
            part.id.job_id,
            part.id.part,
            part.id.attempt,
            part.sha256,
        );
        let request = CreateBatchRequest {
            input_file_id: upload_id.to_owned(),
            endpoint: options.endpoint.to_owned(),
            completion_window: options.completion_window.to_owned(),
            metadata: Some(metadata),
            output_expires_after: options
                .results_expire_after
                .map(OutputExpiresAfter::after_creation),
        };
        self.create_batch(&request).await
    }

    /// Creates the batch of a part from its lines, bytes `range` of the file at `path`, on a
    /// service that takes them in the create itself ([`Client::is_anthropic`]: there is no
    /// upload). Never retried: an unknown outcome is found again with
    /// [`Client::batches_of_size_since`].
    pub async fn create_batch_from_lines(
        &self,
        path: &Path,
        range: Range<u64>,
    ) -> Result<Batch, ApiError> {
        Ok(self.create_message_batch(path, range).await?.into_batch())
    }

    /// Downloads the results of a batch whose results are the batch's own (`results_id`,
    /// its [`Batch::output_id`] on Anthropic): the requests that succeeded to `output`, the
    /// others to `errors`, each file landing whole and only when it has a line, `errors`
    /// first. Returns the bytes received.
    pub async fn download_batch_results(
        &self,
        results_id: &str,
        output: &Path,
        errors: &Path,
    ) -> Result<u64, ApiError> {
        let sorted = self
            .download_message_batch_results(results_id, output, errors)
            .await?;
        Ok(sorted.bytes)
    }

    /// The batches created since `sent_at` (less [`CLOCK_SLACK`]) that hold `requests`
    /// requests, newest first: all a create of a part that long whose answer was lost can be
    /// told by on a service whose batches name nothing of their part (no metadata, no
    /// upload). Which of them the caller already knows, and what one or several mean, is the
    /// caller's to judge.
    pub async fn batches_of_size_since(
        &self,
        requests: u64,
        sent_at: Option<Timestamp>,
    ) -> Result<Vec<Batch>, ApiError> {
        let listed = back_to(self.list_batches(100), sent_at, 1, |b| b.created_at);
        let sized = |b: &Batch| {
            let total = b.request_counts.map(|c| c.total);
            std::future::ready(total == Some(requests))
        };
        listed.try_filter(sized).try_collect().await
    }

    /// The batches, newest first, as the stream is read, back to the first one created before
    /// `since` (less [`CLOCK_SLACK`]).
    pub fn batches_since(
        &self,
        since: Timestamp,
    ) -> impl Stream<Item = Result<Batch, ApiError>> + Send + 'static {
        back_to(self.list_batches(100), Some(since), 1, |b| b.created_at)
    }

    /// The batch a create for `attempt` sent at `sent_at` made, if it made one.
    pub async fn find_batch(
        &self,
        attempt: &Attempt<'_>,
        sent_at: Option<Timestamp>,
    ) -> Result<Option<Batch>, ApiError> {
        let listed = back_to(self.list_batches(100), sent_at, 1, |b| b.created_at);
        let mut found = std::pin::pin!(listed.try_filter(|b| std::future::ready(b.is_of(attempt))));
        found.try_next().await
    }

    /// The upload of `part` an upload sent at `sent_at` made, if it made one whole.
    pub async fn find_upload(
        &self,
        part: &Part<'_>,
        sent_at: Option<Timestamp>,
    ) -> Result<Option<String>, ApiError> {
        let name = name_of(part);
        let listed = back_to(self.list_files(Some("batch")), sent_at, 1, |f| f.created_at);
        let wanted = |f: &FileObject| std::future::ready(is_upload(f, &name, part.bytes));
        let mut found = std::pin::pin!(listed.try_filter(wanted));
        Ok(found.try_next().await?.map(|f| f.id))
    }
}

/// A newest-first listing read back to `since` (less [`CLOCK_SLACK`]): it ends with the
/// object that makes `older_tolerated` created before that in a row (a page of disorder is
/// tolerated; an object whose time is unknown is not older). The whole listing when `since` is
/// unknown; an error ends it too, once read.
fn back_to<T>(
    listed: impl Stream<Item = Result<T, ApiError>>,
    since: Option<Timestamp>,
    older_tolerated: usize,
    created_at: fn(&T) -> Option<Timestamp>,
) -> impl Stream<Item = Result<T, ApiError>> {
    listed.scan(Reach::new(since, older_tolerated), move |reach, object| {
        if reach.ended() {
            return std::future::ready(None);
        }
        reach.count(object.as_ref().ok().and_then(created_at));
        std::future::ready(Some(object))
    })
}

/// How far a newest-first listing read back to a time has come ([`back_to`]): how many objects
/// in a row were created before it.
#[derive(Debug, Clone, Copy)]
struct Reach {
    stop_at: Option<Timestamp>,
    older: usize,
    older_tolerated: usize,
}

impl Reach {
    fn new(since: Option<Timestamp>, older_tolerated: usize) -> Reach {
        Reach {
            stop_at: since.map(slack_before),
            older: 0,
            older_tolerated,
        }
    }

    /// Whether the listing has ended: no object after the last one counted belongs to it.
    fn ended(&self) -> bool {
        self.older >= self.older_tolerated
    }

    /// Counts the next object, created at `created` (`None`: unknown, so not older).
    fn count(&mut self, created: Option<Timestamp>) {
        self.older = match self.stop_at {
            Some(stop_at) if created.is_some_and(|c| c < stop_at) => self.older + 1,
            _ => 0,
        };
    }
}

/// A survey of the service for what claims to be some jobs' ([`Survey`]), fed the batch list
/// newest first by whoever reads it, until it has [`enough`](Surveying::enough): back to
/// `since` (the earliest of the jobs' claims, less [`CLOCK_SLACK`]) and a page of disorder
/// beyond. The daemon's start-up check reads the list once, for this and for its first
/// sweep, and hands each page to both; [`Surveying::uploads`] then lists the uploads and
/// gives the survey.
pub struct Surveying<'j, K> {
    jobs: &'j BTreeSet<&'j str>,
    since: Option<Timestamp>,
    reach: Reach,
    /// Whether the database records a batch already under the submission its claim names:
    /// such a batch is not kept.
    known: K,
    survey: Survey,
}

impl<'j, K: Fn(&Batch, &Claim<'_>) -> bool> Surveying<'j, K> {
    /// A survey for the jobs `jobs`, back to `since`, of the batches `known` does not know.
    pub fn new(jobs: &'j BTreeSet<&'j str>, since: Option<Timestamp>, known: K) -> Self {
        Surveying {
            jobs,
            since,
            reach: Reach::new(since, OLDER_BEFORE_STOP),
            known,
            survey: Survey::default(),
        }
    }

    /// Takes in the next batch of the list, newest first: kept when its tags name one of the
    /// jobs and `known` does not know it. Past [`enough`](Surveying::enough) it is ignored,
    /// as a listing read back to the time would not have read it.
    pub fn take(&mut self, batch: &Batch) {
        if self.reach.ended() {
            return;
        }
        self.reach.count(batch.created_at);
        if let Some(claim) = batch.claim()
            && self.jobs.contains(claim.job_id)
            && !(self.known)(batch, &claim)
        {
            let (job, part, attempt) = (claim.job_id.to_owned(), claim.part, claim.attempt);
            self.survey.claimed.entry(job).or_default().push(Claimed {
                part,
                attempt,
                batch: batch.clone(),
            });
        }
    }

    /// Whether the batches taken in reach back far enough: no further one can be the jobs'.
    pub fn enough(&self) -> bool {
        self.reach.ended()
    }

    /// Lists the uploads named for the jobs, back to the same time, and gives the survey (a
    /// service without uploads has none to list).
    pub async fn uploads(self, client: &Client) -> Result<Survey, ApiError> {
        let mut survey = self.survey;
        if client.is_anthropic() {
            return Ok(survey);
        }
        let listed = back_to(
            client.list_files(Some("batch")),
            self.since,
            OLDER_BEFORE_STOP,
            |f| f.created_at,
        );
        let mut listed = std::pin::pin!(listed);
        while let Some(file) = listed.try_next().await? {
            if let Some(key) =
                parse_upload_name(&file.filename).filter(|k| self.jobs.contains(k.0.as_str()))
            {
                survey.uploads.entry(key).or_default().push(file);
            }
        }
        Ok(survey)
    }
}

/// A listed batch that claims to be a surveyed job's part and attempt.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub part: i64,
    pub attempt: i64,
    pub batch: Batch,
}

/// What one survey found for the jobs in question ([`Surveying`]).
#[derive(Debug, Default)]
pub struct Survey {
    /// The batches claiming to be each job's, in the order listed.
    claimed: BTreeMap<String, Vec<Claimed>>,
    /// The uploads named for each job, part and attempt, newest first.
    uploads: BTreeMap<(String, i64, i64), Vec<FileObject>>,
}

impl Survey {
    /// Takes the batches that claim to be `job_id`'s.
    pub fn take_claimed(&mut self, job_id: &str) -> Vec<Claimed> {
        self.claimed.remove(job_id).unwrap_or_default()
    }

    /// Whether `batch` is provably `part`'s (see the module docs): by its recorded upload
    /// when there is one, else by an upload listed under the part's name and size and the
    /// file's digest in the batch's tags.
    pub fn proves(&self, batch: &Batch, part: &Part<'_>) -> bool {
        if part.id.upload_id.is_some() {
            return batch.is_of(&part.id);
        }
        let name = name_of(part);
        let listed = self.uploads_of(part).any(|f| {
            Some(f.id.as_str()) == batch.upload_id.as_deref() && is_upload(f, &name, part.bytes)
        });
        listed && part.sha256.is_some() && batch.file_digest() == part.sha256
    }

    /// The upload the service has of `part`, whole, when it lists one.
    pub fn upload_of(&self, part: &Part<'_>) -> Option<&str> {
        let name = name_of(part);
        self.uploads_of(part)
            .find(|f| is_upload(f, &name, part.bytes))
            .map(|f| f.id.as_str())
    }

    fn uploads_of<'s>(&'s self, part: &Part<'_>) -> impl Iterator<Item = &'s FileObject> {
        self.uploads
            .get(&(part.id.job_id.to_owned(), part.id.part, part.id.attempt))
            .into_iter()
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::tags::{ATTEMPT_KEY, JOB_KEY, PART_KEY, SHA_KEY};

    const SHA: &str = "ab12";

    fn batch(upload: &str, metadata: Value) -> Batch {
        serde_json::from_value(json!({
            "id": "batch_1", "object": "batch", "endpoint": "/v1/chat/completions",
            "input_file_id": upload, "completion_window": "24h", "status": "in_progress",
            "created_at": 1, "metadata": metadata,
        }))
        .unwrap()
    }

    /// The tags batchwatch writes for `job_x`'s part 0, `attempt`.
    fn tags(attempt: &str) -> Value {
        json!({JOB_KEY: "job_x", PART_KEY: "0", ATTEMPT_KEY: attempt, SHA_KEY: SHA})
    }

    fn part(attempt: i64, upload_id: Option<&str>) -> Part<'_> {
        Part {
            id: Attempt {
                job_id: "job_x",
                part: 0,
                attempt,
                upload_id,
            },
            file_name: "f.jsonl",
            bytes: Some(10),
            sha256: Some(SHA),
        }
    }

    fn file(id: &str, name: &str, bytes: Option<u64>) -> FileObject {
        serde_json::from_value(json!({
            "id": id, "object": "file", "bytes": bytes, "created_at": 1,
            "filename": name, "purpose": "batch",
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn a_listing_read_back_to_a_time_ends_with_the_object_that_makes_enough_older_in_a_row() {
        let hour = 3600;
        let at = |s: i64| Timestamp::from_second(s).ok();
        // Newest first; 0 has no time (not older), the rest are seconds.
        let created = [
            Some(10 * hour),
            Some(hour),
            None,
            Some(hour),
            Some(hour),
            Some(0),
        ];
        let read = |since: Option<Timestamp>, tolerated: usize| {
            let listed = futures_util::stream::iter(created.map(|c| Ok(c.and_then(at))));
            back_to(listed, since, tolerated, |c: &Option<Timestamp>| *c)
                .map(|o| o.unwrap())
                .collect::<Vec<_>>()
        };
        // Slack of an hour: before 3h-1h = 2h is older.
        let since = at(3 * hour);
        assert_eq!(
            read(since, 1).await.len(),
            2,
            "ends with the first older one"
        );
        assert_eq!(
            read(since, 2).await.len(),
            5,
            "an unknown time breaks the run"
        );
        assert_eq!(read(None, 1).await.len(), 6, "no time: the whole listing");
    }

    #[test]
    fn a_survey_fed_the_list_keeps_the_unknown_claims_of_its_jobs_until_a_page_of_older_ones() {
        let listed = |id: &str, created: i64, metadata: Value| -> Batch {
            serde_json::from_value(json!({
                "id": id, "object": "batch", "endpoint": "/v1/chat/completions",
                "input_file_id": "file_1", "completion_window": "24h",
                "status": "in_progress", "created_at": created, "metadata": metadata,
            }))
            .unwrap()
        };
        let other = json!({JOB_KEY: "job_y", PART_KEY: "0", ATTEMPT_KEY: "1"});
        let jobs = BTreeSet::from(["job_x"]);
        // Since 2h: with the hour of slack, a batch created before 1h is older.
        let since = Timestamp::from_second(2 * 3600).ok();
        let mut surveying = Surveying::new(&jobs, since, |b: &Batch, _: &Claim<'_>| {
            b.id == "batch_known"
        });
        surveying.take(&listed("batch_new", 3 * 3600, tags("2")));
        surveying.take(&listed("batch_known", 3 * 3600, tags("1")));
        surveying.take(&listed("batch_other", 3 * 3600, other));
        for k in 0..OLDER_BEFORE_STOP {
            assert!(!surveying.enough(), "{k} older ones");
            let id = format!("batch_old{k}");
            surveying.take(&listed(&id, 0, Value::Null));
        }
        assert!(surveying.enough());
        surveying.take(&listed("batch_past", 3 * 3600, tags("3")));
        let mut survey = surveying.survey;
        let kept: Vec<String> = survey
            .take_claimed("job_x")
            .into_iter()
            .map(|c| c.batch.id)
            .collect();
        assert_eq!(kept, ["batch_new"], "unknown, the job's, before the end");
        assert!(survey.take_claimed("job_y").is_empty());
    }

    #[test]
    fn a_batch_is_a_parts_only_when_it_runs_the_recorded_upload_and_names_no_other_part() {
        let ours = part(2, Some("file_ours"));
        assert!(batch("file_ours", tags("2")).is_of(&ours.id));
        assert!(
            batch("file_ours", Value::Null).is_of(&ours.id),
            "a service that drops metadata"
        );
        assert!(
            !batch("file_ours", tags("3")).is_of(&ours.id),
            "the same upload, another attempt's tags"
        );
        assert!(
            !batch("file_theirs", tags("2")).is_of(&ours.id),
            "only the tags are ours"
        );
        assert!(
            !batch("file_ours", tags("2")).is_of(&part(2, None).id),
            "no recorded upload proves nothing by itself"
        );
    }

    #[test]
    fn without_a_recorded_upload_a_batch_is_proved_by_the_listed_upload_its_size_and_the_digest() {
        let name = upload_name("job_x", 0, 2, "f.jsonl");
        let survey = |files: Vec<FileObject>| Survey {
            uploads: BTreeMap::from([(("job_x".to_owned(), 0, 2), files)]),
            ..Survey::default()
        };
        let listed = survey(vec![file("file_up", &name, Some(10))]);
        let lagging = part(2, None);
        assert!(listed.proves(&batch("file_up", tags("2")), &lagging));
        assert_eq!(listed.upload_of(&lagging), Some("file_up"));
        let mut digest = tags("2");
        digest[SHA_KEY] = json!("ffff");
        assert!(
            !listed.proves(&batch("file_up", digest), &lagging),
            "another digest"
        );
        digest = tags("2");
        digest.as_object_mut().unwrap().remove(SHA_KEY);
        assert!(
            !listed.proves(&batch("file_up", digest), &lagging),
            "no digest"
        );
        let unknown_digest = Part {
            sha256: None,
            ..lagging
        };
        assert!(
            !listed.proves(&batch("file_up", tags("2")), &unknown_digest),
            "the job's digest unknown"
        );
        assert!(
            !listed.proves(&batch("file_other", tags("2")), &lagging),
            "a batch of another upload"
        );
        let recorded = part(2, Some("file_recorded"));
        assert!(
            !listed.proves(&batch("file_up", tags("2")), &recorded),
            "a recorded upload is the only proof"
        );
        assert!(Survey::default().proves(&batch("file_recorded", tags("2")), &recorded));
        for (why, files) in [
            ("another size", vec![file("file_up", &name, Some(11))]),
            ("no size", vec![file("file_up", &name, None)]),
            (
                "another name",
                vec![file(
                    "file_up",
                    &upload_name("job_x", 0, 2, "g.jsonl"),
                    Some(10),
                )],
            ),
        ] {
            let s = survey(files);
            assert!(!s.proves(&batch("file_up", tags("2")), &lagging), "{why}");
            assert_eq!(s.upload_of(&lagging), None, "{why}");
        }
    }
}
