//! Polling active batches: which are due, and one poll. What a poll sees is recorded by
//! [`crate::daemon::track::observe`].
//!
//! Each active submission has its `next_poll_at`. The interval adapts to the status, within
//! `poll.min_interval` and `poll.max_interval`: short while validating, finalizing or
//! cancelling (those end soon), growing with the batch's age while in progress, and never
//! past the job's deadline.

use std::time::Duration;

use anyhow::Context;

use crate::api::ApiError;
use crate::daemon::ctx::{Ctx, Next, defer};
use crate::daemon::track::observe::{lost, observe};
use crate::model::{BatchStatus, SubmissionState};
use crate::store::prelude::*;

/// Active submissions whose poll is due.
pub async fn due(ctx: &Ctx) -> anyhow::Result<Vec<i64>> {
    let limit = i64::try_from(ctx.settings.limits.tasks()).unwrap_or(i64::MAX);
    Ok(ctx.store.due_for_poll(&ctx.now(), limit).await?)
}

/// Polls one submission's batch and records what it says.
pub async fn step(ctx: Ctx, row_id: i64) -> anyhow::Result<()> {
    let Some(row) = ctx.store.submission(row_id).await? else {
        return Ok(());
    };
    if row.state != SubmissionState::Active {
        return Ok(());
    }
    let remote = row
        .remote_id
        .clone()
        .context("an active submission has no batch id")?;
    match ctx.client.retrieve_batch(&remote).await {
        Ok(batch) => observe(&ctx, &row, &batch).await,
        Err(ApiError::NotFound { message, .. }) => lost(&ctx, &row, &message).await,
        Err(e) => {
            defer(&ctx, row.id, &e, Next::Poll).await?;
            Err(e.into())
        }
    }
}

/// How long until the next poll of a batch in `status`, running for `age`, with `to_deadline`
/// left before its job's deadline.
pub fn next_poll_delay(
    status: &BatchStatus,
    poll: &crate::config::PollSettings,
    age: Duration,
    to_deadline: Option<Duration>,
) -> Duration {
    let (min, max) = (poll.min_interval.get(), poll.max_interval.get());
    let base = match status {
        BatchStatus::Validating | BatchStatus::Finalizing | BatchStatus::Cancelling => min,
        BatchStatus::InProgress => age / 20,
        _ => min.saturating_mul(4),
    };
    let base = match to_deadline {
        Some(left) if left < base => left,
        _ => base,
    };
    base.clamp(min, max)
}

/// `delay` give or take a tenth, within the poll bounds: batches retrieved one by one are
/// kept from being polled in lock-step. (A list sweep sees many at once and needs none.)
pub fn jitter(delay: Duration, poll: &crate::config::PollSettings) -> Duration {
    delay
        .mul_f64(0.9 + fastrand::f64() * 0.2)
        .clamp(poll.min_interval.get(), poll.max_interval.get())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Dur, PollSettings};

    fn poll() -> PollSettings {
        PollSettings {
            min_interval: Dur(Duration::from_secs(5)),
            max_interval: Dur(Duration::from_secs(60)),
            mode: crate::config::PollMode::Auto,
            list_page_budget: 200,
        }
    }

    #[test]
    fn the_interval_is_short_at_the_edges_of_a_batch_and_grows_while_it_runs() {
        let p = poll();
        let s = |d: Duration| d.as_secs_f64();
        assert!(
            s(next_poll_delay(
                &BatchStatus::Validating,
                &p,
                Duration::ZERO,
                None
            )) <= 5.5
        );
        assert!(
            s(next_poll_delay(
                &BatchStatus::Finalizing,
                &p,
                Duration::from_secs(9999),
                None
            )) <= 5.5
        );
        assert!(
            s(next_poll_delay(
                &BatchStatus::Cancelling,
                &p,
                Duration::from_secs(9999),
                None
            )) <= 5.5
        );
        let young = next_poll_delay(&BatchStatus::InProgress, &p, Duration::from_secs(60), None);
        let old = next_poll_delay(
            &BatchStatus::InProgress,
            &p,
            Duration::from_secs(3600),
            None,
        );
        assert_eq!(young, Duration::from_secs(5), "clamped to the minimum");
        assert_eq!(old, Duration::from_secs(60), "clamped to the maximum");
        let mid = next_poll_delay(&BatchStatus::InProgress, &p, Duration::from_secs(600), None);
        assert!((27.0..=33.0).contains(&s(mid)), "{mid:?}");
    }

    #[test]
    fn the_interval_never_passes_the_deadline() {
        let p = poll();
        let near = next_poll_delay(
            &BatchStatus::InProgress,
            &p,
            Duration::from_secs(3600),
            Some(Duration::from_secs(12)),
        );
        assert!((10.0..=14.0).contains(&near.as_secs_f64()), "{near:?}");
        let past = next_poll_delay(
            &BatchStatus::InProgress,
            &p,
            Duration::from_secs(3600),
            Some(Duration::ZERO),
        );
        assert_eq!(past, Duration::from_secs(5));
    }
}
