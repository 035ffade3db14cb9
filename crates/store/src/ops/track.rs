//! A sighting of a batch, the plan the daemon decides for it, and what recording it did.

use super::Lease;
use crate::StoreError;
use crate::batches::Submission;
use batchwatch_core::clock::Timestamp;

use crate::batches::{Observation, Recorded};
use crate::jobs::{Job, Why};
use batchwatch_core::config::ModelPrice;
use batchwatch_core::model::BatchStatus;
use batchwatch_core::usage::Tokens;

/// A batch as the service reported it, for one submission.
#[derive(Debug, Clone)]
pub struct Sighting<'a> {
    /// The submission's id.
    pub id: i64,
    /// The status the service reported (the observation's).
    pub status: &'a BatchStatus,
    pub observation: &'a Observation,
    /// The usage the batch reports, if any (stored until its cost is booked).
    pub tokens: Option<Tokens>,
}

/// What the caller decides a sighting means, given the job, the submission and the status
/// that stands (the stored one when the service reports a finished batch as unfinished).
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The price of the job's model, when it has one: the batch's cost (of the sighting's
    /// tokens) is booked once, when the status reported is final.
    pub price: Option<ModelPrice>,
    pub next: Next,
}

/// Where a submission that follows its batch goes next.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// The batch runs on: poll it at `at`. `message` is the job's event if this made it active.
    Poll { at: String, message: String },
    /// The batch ended: collect its results.
    Collect { message: String },
    /// The batch was refused for back-pressure: this attempt is over, the next waits until
    /// `until`, and the job records `why`.
    Retry {
        until: String,
        why: Why,
        message: String,
    },
}

/// What recording a sighting did.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// The submission's id.
    pub id: i64,
    pub recorded: Recorded,
    /// The status that stands.
    pub status: BatchStatus,
    /// The batch's cost was booked now (its status became final).
    pub booked: bool,
    /// The move made, or `None` when the submission was already past following its batch.
    pub moved: Option<Next>,
    /// The job, as read before the move.
    pub job: Job,
}

/// What tracking asks of the store: observations of batches (one, or a sweep's page), polls
/// deferred or rescheduled, batches lost, and the start that cannot trust what was in flight.
pub trait Track {
    /// Records `sighting`, seen at `now`, and moves its submission on as `decide` says.
    async fn observe(
        &self,
        lease: &Lease,
        sighting: &Sighting<'_>,
        decide: impl FnOnce(&Job, &Submission, &BatchStatus) -> Plan,
        now: &str,
    ) -> Result<Observed, StoreError>;
    /// Records one page of a list sweep, seen at `seen_at`, in one transaction: the `answered`
    /// submissions (nothing history tracks changed, and a failed poll's error stood) are
    /// cleared of it, as [`Track::seen_unchanged`] does; each of the `changed` is recorded as
    /// [`Track::observe`] does, unless its submission moved on or was looked at after `seen_at`
    /// by another step (then the page is not news for it). Quiet batches without an error
    /// are not written: their next poll is the daemon's, in memory.
    async fn observe_page(
        &self,
        lease: &Lease,
        answered: &[i64],
        changed: &[Sighting<'_>],
        decide: impl FnMut(&Job, &Submission, &BatchStatus) -> Plan,
        seen_at: Timestamp,
    ) -> Result<Vec<Observed>, StoreError>;
    /// The batches of the active submissions `answered` were seen at `now` with nothing
    /// history tracks changed, after a failed poll: its error no longer stands. Nothing else is
    /// written (the next poll is the daemon's, in memory), and an error stored after `now` is
    /// kept.
    async fn seen_unchanged(
        &self,
        lease: &Lease,
        answered: &[i64],
        now: &str,
    ) -> Result<(), StoreError>;
    /// A poll of submission `id` failed with `error`: it is polled again at `at`.
    async fn defer_poll(
        &self,
        lease: &Lease,
        id: i64,
        at: &str,
        error: &str,
        now: &str,
    ) -> Result<(), StoreError>;
    /// Puts the polls of `ids` off to `at` after `error`, leaving those that moved on since.
    async fn defer_polls(
        &self,
        lease: &Lease,
        ids: &[i64],
        at: &str,
        error: &str,
        now: &str,
    ) -> Result<(), StoreError>;
    /// The batch of submission `row` vanished: the submission is lost, and its job follows with
    /// `why`.
    async fn lose(
        &self,
        lease: &Lease,
        row: &Submission,
        why: &str,
        now: &str,
    ) -> Result<(), StoreError>;
    /// Marks the uploads and creates a stop left under way as of unknown outcome; returns how
    /// many. A create from lines (no input file) is marked before every send, so one not
    /// marked was not under way, and stays so.
    async fn mark_in_flight_unknown(&self, lease: &Lease, now: &str) -> Result<u64, StoreError>;
    /// Brings every stored poll plan after `latest` forward to it; returns how many moved.
    async fn poll_by(&self, lease: &Lease, latest: &str) -> Result<u64, StoreError>;
}
