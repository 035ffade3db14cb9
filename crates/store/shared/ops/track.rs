//! Tracking: what the service says of a batch (an observation), recorded with the submission
//! moved on and the job derived in one transaction; polls scheduled and put off; batches that
//! vanished; the requests a stop left under way.

use batchwatch_core::clock::{self, Timestamp};
use batchwatch_core::model::{BatchStatus, SubmissionState};
use batchwatch_core::usage::{self as arithmetic};

use super::Lease;
use crate::batches::{self, NewSubmission, Recorded, Submission};
use crate::jobs::{self, Job};
use crate::progress::refresh_job;
use crate::{Store, StoreError, Tx, transitions, usage};
use batchwatch_store::ops::track::Track;
pub use batchwatch_store::ops::track::{Next, Observed, Plan, Sighting};

impl Track for Store {
    async fn observe(
        &self,
        lease: &Lease,
        sighting: &Sighting<'_>,
        decide: impl FnOnce(&Job, &Submission, &BatchStatus) -> Plan,
        now: &str,
    ) -> Result<Observed, StoreError> {
        self.unit(lease, async |tx| {
            let row = batches::get(&mut **tx, sighting.id)
                .await?
                .ok_or_else(|| vanished(sighting.id))?;
            let observed = record(tx, &row, sighting, decide, now).await?;
            Ok(observed)
        })
        .await
    }

    async fn observe_page(
        &self,
        lease: &Lease,
        answered: &[i64],
        changed: &[Sighting<'_>],
        mut decide: impl FnMut(&Job, &Submission, &BatchStatus) -> Plan,
        seen_at: Timestamp,
    ) -> Result<Vec<Observed>, StoreError> {
        let now = clock::format(seen_at);
        self.unit(lease, async |tx| {
            if !answered.is_empty() {
                transitions::seen_unchanged(tx, answered, &now).await?;
            }
            let mut observed = Vec::new();
            for sighting in changed {
                let row = batches::get(&mut **tx, sighting.id)
                    .await?
                    .ok_or_else(|| vanished(sighting.id))?;
                let newer = row
                    .last_polled_at
                    .as_deref()
                    .and_then(clock::parse)
                    .is_some_and(|t| t > seen_at);
                if row.state != SubmissionState::Active || newer {
                    continue;
                }
                observed.push(record(tx, &row, sighting, &mut decide, &now).await?);
            }
            Ok(observed)
        })
        .await
    }

    async fn seen_unchanged(
        &self,
        lease: &Lease,
        answered: &[i64],
        now: &str,
    ) -> Result<(), StoreError> {
        self.unit(lease, async |tx| {
            transitions::seen_unchanged(tx, answered, now).await?;
            Ok(())
        })
        .await
    }

    async fn defer_poll(
        &self,
        lease: &Lease,
        id: i64,
        at: &str,
        error: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        self.unit(lease, async |tx| {
            transitions::defer_poll(tx, id, at, error, now).await?;
            Ok(())
        })
        .await
    }

    async fn defer_polls(
        &self,
        lease: &Lease,
        ids: &[i64],
        at: &str,
        error: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        self.unit(lease, async |tx| {
            for id in ids {
                match transitions::defer_poll(tx, *id, at, error, now).await {
                    Ok(()) | Err(StoreError::Illegal { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
        .await
    }

    async fn lose(
        &self,
        lease: &Lease,
        row: &Submission,
        why: &str,
        now: &str,
    ) -> Result<(), StoreError> {
        self.unit(lease, async |tx| {
            transitions::lose(tx, row.id, why, now).await?;
            refresh_job(tx, &row.job_id, None, why, now).await?;
            Ok(())
        })
        .await
    }

    async fn mark_in_flight_unknown(&self, lease: &Lease, now: &str) -> Result<u64, StoreError> {
        self.unit(lease, async |tx| {
            let n = batches::mark_in_flight_unknown(tx, lease, now).await?;
            Ok(n)
        })
        .await
    }

    async fn poll_by(&self, lease: &Lease, latest: &str) -> Result<u64, StoreError> {
        self.unit(lease, async |tx| {
            let n = batches::poll_by(tx, latest).await?;
            Ok(n)
        })
        .await
    }
}

fn vanished(id: i64) -> StoreError {
    StoreError::Finished {
        what: format!("submission {id}"),
        to: "an observation".to_owned(),
    }
}

/// Records `sighting` for `row` in `tx` and moves the submission on.
async fn record(
    tx: &mut Tx,
    row: &Submission,
    sighting: &Sighting<'_>,
    decide: impl FnOnce(&Job, &Submission, &BatchStatus) -> Plan,
    now: &str,
) -> Result<Observed, StoreError> {
    let job = jobs::get(&mut **tx, &row.job_id)
        .await?
        .ok_or_else(|| StoreError::Finished {
            what: format!("the job of submission {}", row.id),
            to: "an observation".to_owned(),
        })?;
    let recorded = batches::record_observation(&mut *tx, row.id, sighting.observation, now).await?;
    let status = match &recorded {
        Recorded::RefusedAfterTerminal { stored, .. } => stored.clone(),
        _ => sighting.status.clone(),
    };
    let plan = decide(&job, row, &status);
    if let Some(t) = &sighting.tokens {
        usage::store(&mut *tx, row.id, t, now).await?;
    }
    let cost_usd = sighting
        .tokens
        .as_ref()
        .zip(plan.price.as_ref())
        .map(|(t, p)| arithmetic::cost(p, t));
    let booked =
        sighting.status.is_terminal() && usage::book(&mut *tx, row.id, cost_usd, now).await?;
    // `row` was read in this transaction, and recording an observation moves no state.
    let activated = match row.state {
        SubmissionState::Queued | SubmissionState::Uploading | SubmissionState::Creating => {
            transitions::activate(&mut *tx, row.id, now).await?;
            true
        }
        SubmissionState::Active => false,
        // Already past following its batch (seen twice, or by a step that read the row
        // before): the observation is recorded, and nothing moves.
        _ => {
            return Ok(Observed {
                id: row.id,
                recorded,
                status,
                booked,
                moved: None,
                job,
            });
        }
    };
    match &plan.next {
        Next::Retry {
            until,
            why,
            message,
        } => {
            transitions::refused(&mut *tx, row.id, now).await?;
            batches::insert(
                &mut *tx,
                &NewSubmission {
                    job_id: &row.job_id,
                    part: row.part,
                    part_start: row.part_start,
                    part_end: row.part_end,
                    part_requests: row.part_requests,
                    attempt: row.attempt + 1,
                    not_before: Some(until),
                },
                now,
            )
            .await?;
            refresh_job(&mut *tx, &row.job_id, Some(why), message, now).await?;
        }
        Next::Collect { message } => {
            transitions::to_collecting(&mut *tx, row.id, now).await?;
            refresh_job(&mut *tx, &row.job_id, None, message, now).await?;
        }
        Next::Poll { at, message } => {
            transitions::schedule_poll(&mut *tx, row.id, at, now).await?;
            // The job follows its submissions' states; only a new active one can move it.
            if activated {
                refresh_job(&mut *tx, &row.job_id, None, message, now).await?;
            }
        }
    }
    Ok(Observed {
        id: row.id,
        recorded,
        status,
        booked,
        moved: Some(plan.next),
        job,
    })
}
