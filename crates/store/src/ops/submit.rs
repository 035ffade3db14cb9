//! What arming a create found.

use super::Lease;
use crate::StoreError;
use crate::batches::{NewSubmission, Submission};

/// What arming a create found (the store's `start_create`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateIntent {
    /// The create is armed: the batch may be created now.
    Armed,
    /// A cancel was asked for during the upload: the submission was abandoned instead.
    Cancelled,
    /// Another create from lines has an unknown outcome: nothing moved, this one waits.
    Waiting,
}

/// What submission asks of the store: the intents written before each request (an upload, a
/// create), what a lost answer turned out to be, and a submission postponed, abandoned or
/// added.
pub trait Submit {
    /// Arms the upload of queued submission `row` (its job moves to submitting).
    async fn start_upload(
        &self,
        lease: &Lease,
        row: &Submission,
        now: &str,
    ) -> Result<(), StoreError>;
    /// Records the uploaded `upload_id` and arms the create, unless a cancel was asked for
    /// meanwhile (the deadline may have passed during the upload): then no batch is created at
    /// all, and the submission is abandoned as [`Submit::abandon`] does with `unsent`.
    async fn start_create(
        &self,
        lease: &Lease,
        row: &Submission,
        upload_id: &str,
        unsent: &str,
        now: &str,
    ) -> Result<CreateIntent, StoreError>;
    /// Arms the create of submission `row` on a service that takes the lines in the create
    /// itself (queued, its job moving to submitting; or creating, its last create not carried
    /// out), unless another such create's outcome is unknown ([`CreateIntent::Waiting`]) or a
    /// cancel was asked for (abandoned with `unsent`, [`CreateIntent::Cancelled`]).
    async fn start_create_from_lines(
        &self,
        lease: &Lease,
        row: &Submission,
        unsent: &str,
        now: &str,
    ) -> Result<CreateIntent, StoreError>;
    /// Holds submission `row` (queued or creating, with no batch): a create that may have been
    /// sent could have made any of several batches, so it is never sent again, nothing of it
    /// counts as under way, and it waits until `until` with `why` as its last error; the job's
    /// events say `why`.
    async fn hold(
        &self,
        lease: &Lease,
        row: &Submission,
        until: &str,
        why: &str,
        now: &str,
    ) -> Result<(), StoreError>;
    /// Takes up `upload_id`, an upload a reconcile found for submission `row`, and arms the create.
    async fn adopt_upload(
        &self,
        lease: &Lease,
        row: &Submission,
        upload_id: &str,
        message: &str,
        now: &str,
    ) -> Result<(), StoreError>;
    /// Notes that the create of submission `id` is sent again: a reconcile found none.
    async fn note_resent(&self, lease: &Lease, id: i64, now: &str) -> Result<(), StoreError>;
    /// Puts the next step of submission `id` off until `until`, recording `error` if given.
    async fn postpone(
        &self,
        lease: &Lease,
        id: i64,
        until: &str,
        error: Option<&str>,
        now: &str,
    ) -> Result<(), StoreError>;
    /// Gives submission `row` up (it will not become a batch) with `why`; its job follows, with
    /// `message` as its event.
    async fn abandon(
        &self,
        lease: &Lease,
        row: &Submission,
        why: &str,
        message: &str,
        now: &str,
    ) -> Result<(), StoreError>;
    /// The request of submission `row` may or may not have been carried out: nothing is sent
    /// again before a reconcile, from `retry_at`, says which. `message` is the job's event.
    async fn await_reconcile(
        &self,
        lease: &Lease,
        row: &Submission,
        error: &str,
        retry_at: &str,
        message: &str,
        now: &str,
    ) -> Result<(), StoreError>;
    /// The request of submission `id` was refused: it was not carried out.
    async fn not_sent(&self, lease: &Lease, id: i64, now: &str) -> Result<(), StoreError>;
    /// Adds a submission: one a reconcile found on the service that the database lacks.
    async fn add_submission(
        &self,
        lease: &Lease,
        submission: &NewSubmission<'_>,
        now: &str,
    ) -> Result<(), StoreError>;
    /// Appends `message` to the story of job `job_id`, in the state the job is in.
    async fn note(
        &self,
        lease: &Lease,
        job_id: &str,
        message: &str,
        now: &str,
    ) -> Result<(), StoreError>;
}
