//! Polling active batches: when each is due (the poll schedule), which are due, and one poll.
//! What a poll sees is recorded by [`crate::daemon::track::observe`].
//!
//! The interval adapts to the status, within `poll.min_interval` and `poll.max_interval`:
//! short while validating, finalizing or cancelling (those end soon), growing with the
//! batch's age while in progress, and never past the job's deadline.
//!
//! # The poll schedule: in memory, rebuilt; what was observed: in the database
//!
//! When each active batch is polled next is the leader's, in memory
//! ([`Polls`](crate::daemon::shared::Polls), in [`Ctx::polls`]): a quiet answer (nothing history tracks changed: the status and the request
//! counts) writes nothing to the database, whether a list sweep's page or a retrieve gave it;
//! it only plans the next poll in memory. What must survive a crash is what was observed: an
//! observation that changes something is recorded as before, one transaction with its history
//! row. The schedule is something a daemon can rebuild, and does:
//!
//! * **built** by the first read of the store's plans after the daemon starts, and after this
//!   instance becomes leader (a follower keeps none; a leader that steps down forgets its own):
//!   every active batch is then due at once, so a restart, or a new leader, looks at every
//!   batch first (a sweep: a page per hundred) and nothing waits for a plan made before it;
//! * **kept** by the polls: a quiet answer plans the next poll at the interval the status
//!   gives; an answer that changed something, a failed poll's retry, a cancel sent (poll at
//!   once) are written to the row's `next_poll_at`, as before, and planned in memory at the
//!   same value;
//! * **learned** from the store ([`refresh`]), at each full round of the leader: what other
//!   steps or instances wrote since (a follower's new batch, its cancel) is found by
//!   `next_poll_at` (every write plans it at or after its own time, so the plans stored after
//!   the last read, less [`LEARN_MARGIN`](crate::daemon::shared::LEARN_MARGIN), and up to
//!   [`LEARN_AHEAD`](crate::daemon::shared::LEARN_AHEAD) from now); a later plan
//!   wakes the loop when it comes due ([`crate::store::Reads::next_due`]). A plan stored
//!   different from the one the schedule took into account replaces the schedule's; an equal
//!   one leaves it. Every active submission is read whole at each sweep, and at least every
//!   `poll.max_interval`: submissions no longer active leave the schedule then, and nothing a
//!   read missed stays missed.
//!
//! So `batches.next_poll_at` is the poll planned by the last write that changed something
//! about the row (an observation that changed it, a failed poll, a cancel, a reload), not the
//! next poll: a quiet batch's stays as it was, in the past. Nothing reads it as the schedule
//! but the leader's reads above, and a start or an election makes every batch due whatever it
//! holds. `last_polled_at` is when the last observation that changed something was recorded
//! (the list sweep's guard that a page older than it does not overwrite it); the time of the
//! last answer, quiet ones included, is the daemon's (`last_successful_poll_timestamp_seconds`).

use std::time::Duration;

use anyhow::Context;

use crate::api::ApiError;
use crate::clock;
use crate::daemon::ctx::{Ctx, Next, defer};
use crate::daemon::shared::Window;
use crate::daemon::track::observe::{lost, observe};
use crate::model::{BatchStatus, SubmissionState};
use crate::store::prelude::*;

/// Active submissions whose poll is due, most overdue first (the leader's; none on a follower).
pub fn due(ctx: &Ctx) -> Vec<i64> {
    let limit = ctx.settings.limits.tasks();
    ctx.leader_polls()
        .map_or_else(Vec::new, |polls| polls.due(ctx.clock.now(), limit))
}

/// Brings the leader's poll schedule up to date with the plans stored since it last read
/// them: all of them when it is not built yet, or was last read whole a `poll.max_interval`
/// ago.
pub async fn refresh(ctx: &Ctx) -> anyhow::Result<()> {
    let Some(polls) = ctx.leader_polls() else {
        return Ok(());
    };
    let now = ctx.clock.now();
    let window = polls.window(now, ctx.settings.poll.max_interval.get());
    let rows = match window {
        Window::Whole => ctx.store.stored_polls(None).await?,
        Window::Between(after, until) => {
            let (after, until) = (clock::format(after), clock::format(until));
            ctx.store.stored_polls(Some((&after, &until))).await?
        }
    };
    let rows = rows.iter().map(|r| (r.id, r.next_poll_at.as_deref()));
    polls.learn(rows, window, now);
    Ok(())
}

/// Polls one submission's batch and records what it says.
pub async fn step(ctx: Ctx, row_id: i64) -> anyhow::Result<()> {
    let Some(row) = ctx.store.submission(row_id).await? else {
        return Ok(());
    };
    if row.state != SubmissionState::Active {
        ctx.polls.remove(row_id);
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
