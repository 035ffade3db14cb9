//! A sighting of a batch, the plan the daemon decides for it, and what recording it did.

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
