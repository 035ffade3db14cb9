//! A job's state, derived from its submissions: called in every transaction that changes a
//! submission, so the job and its batches never disagree.
//!
//! Shared by the backends: each includes this file as its `progress` module, and `crate::` is
//! the backend (its `jobs` and `batches` queries, its connection type `Conn`).

use crate::jobs::{self, Why};
use crate::{Conn, StoreError, batches};
use batchwatch_core::model::{JobState, SubmissionState};
use batchwatch_store::progress::derive;

/// Brings a job's state in line with its submissions, recording `message` as the event and
/// `why` as the reason when the state changes (or when `why` is given). Finished and
/// still-validating jobs are left alone.
pub async fn refresh_job(
    conn: &mut Conn,
    job_id: &str,
    why: Option<&Why>,
    message: &str,
    now: &str,
) -> Result<(), StoreError> {
    let Some(job) = jobs::get(&mut *conn, job_id).await? else {
        return Ok(());
    };
    if job.state.is_terminal() || job.state == JobState::Validating {
        return Ok(());
    }
    let states: Vec<SubmissionState> = batches::for_job(&mut *conn, job_id)
        .await?
        .into_iter()
        .map(|s| s.state)
        .collect();
    let Some(target) = derive(&states, job.cancel_requested_at.is_some()) else {
        return Ok(());
    };
    let reason_changes = why.is_some_and(|w| Some(&w.code) != job.reason_code.as_ref());
    if target != job.state || reason_changes {
        jobs::set_state(conn, job_id, target, why, message, now).await?;
    }
    Ok(())
}

/// Appends `message` to the story of job `job_id`, in the state the job is in (nothing when
/// the job is gone).
pub async fn add_event(
    conn: &mut Conn,
    job_id: &str,
    message: &str,
    now: &str,
) -> Result<(), StoreError> {
    match jobs::get(&mut *conn, job_id).await? {
        Some(job) => jobs::add_event(conn, job_id, job.state, message, now).await,
        None => Ok(()),
    }
}
