//! Stuck batches: a batch that stays in `validating`, `finalizing` or `cancelling` longer than
//! `alerts.stuck_after` allows for that status (the time counted from when batchwatch first saw
//! it in the status, kept in `status_history`, so a restart does not reset it).
//!
//! The database says which batches are stuck ([`crate::store::Reads::stuck`]); the metrics,
//! `status`, `show` and the systemd status line read it there. The loop looks after its rounds,
//! at most every quarter of the shortest limit (between 1 s and a minute), and logs each batch
//! once per status it is stuck in, as a warning, while this process runs.

use std::collections::HashSet;
use std::time::Duration;

use crate::clock::{self, Timestamp};
use crate::config::{NotifyOn, StuckAfter};
use crate::daemon::ctx::Ctx;
use crate::daemon::housekeeping::notifications;
use crate::model::BatchStatus;
use crate::store::figures::StuckBatch;
use crate::store::prelude::*;

/// How often the loop looks for stuck batches: a quarter of the shortest limit, between a
/// second and a minute.
pub fn check_every(after: &StuckAfter) -> Duration {
    let shortest = after
        .validating
        .get()
        .min(after.finalizing.get())
        .min(after.cancelling.get());
    (shortest / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// The stuck batches already warned about, and those whose notifications are written.
#[derive(Debug, Default)]
pub struct Watch {
    warned: HashSet<(i64, BatchStatus)>,
    told: HashSet<(i64, BatchStatus)>,
    next: Option<Timestamp>,
}

impl Watch {
    /// Warns once about each batch that became stuck since the last check, and writes the
    /// notifications of each stuck episode (`[[notify]]` entries on `stuck`; the loop checks
    /// while this instance leads): once per batch, status and time it entered it, whatever restarts come
    /// between. Returns whether any was written.
    pub async fn check(&mut self, ctx: &Ctx) -> bool {
        let at = ctx.clock.now();
        if self.next.is_some_and(|next| at < next) {
            return false;
        }
        let after = &ctx.settings.alerts.stuck_after;
        self.next = Some(clock::add(at, check_every(after)));
        let stuck = match ctx.store.stuck(after, ctx.clock.now()).await {
            Ok(stuck) => stuck,
            Err(e) => {
                tracing::debug!(error = %e, "cannot look for stuck batches");
                return false;
            }
        };
        let now: HashSet<(i64, BatchStatus)> =
            stuck.iter().map(|s| (s.id, s.status.clone())).collect();
        for s in &stuck {
            if self.warned.insert((s.id, s.status.clone())) {
                let limit = limit(after, &s.status);
                tracing::warn!(
                    job = %s.job_id,
                    batch = s.remote_id.as_deref().unwrap_or("?"),
                    status = %s.status,
                    since = %s.since,
                    limit = %limit,
                    "a batch is stuck: {} since {} (longer than alerts.stuck_after.{} = {limit})",
                    s.status,
                    s.since,
                    s.status
                );
            }
        }
        self.warned.retain(|k| now.contains(k));
        self.told.retain(|k| now.contains(k));
        let mut written = false;
        if ctx.notify.want(NotifyOn::Stuck) {
            for s in &stuck {
                let episode = (s.id, s.status.clone());
                if self.told.contains(&episode) {
                    continue;
                }
                match tell(ctx, s).await {
                    Ok(n) => {
                        written |= n > 0;
                        self.told.insert(episode);
                    }
                    Err(e) => {
                        tracing::warn!(job = %s.job_id, error = format!("{e:#}"), "cannot write the notifications of a stuck batch; trying again at the next check");
                    }
                }
            }
        }
        written
    }
}

/// Writes the notifications of stuck batch `s`; returns how many were new.
async fn tell(ctx: &Ctx, s: &StuckBatch) -> anyhow::Result<u64> {
    let Some(job) = ctx.store.job(&s.job_id).await? else {
        return Ok(0);
    };
    let facts = notifications::JobFacts {
        stuck: Some(notifications::Stuck {
            batch_id: s.remote_id.clone(),
            status: s.status.to_string(),
            since: s.since.clone(),
            limit: limit(&ctx.settings.alerts.stuck_after, &s.status),
        }),
        ..notifications::JobFacts::of(&ctx.settings, &job, job.state, None)
    };
    let key = format!("stuck/{}/{}/{}", s.id, s.status, s.since);
    let planned = notifications::plan(ctx, NotifyOn::Stuck, &key, &facts)?;
    let planned: Vec<_> = planned.iter().map(notifications::Planned::as_new).collect();
    let lease = ctx.leader_lease();
    Ok(ctx
        .store
        .plan_notifications(&lease, &s.job_id, &planned, &ctx.now())
        .await?)
}

/// The `alerts.stuck_after` limit for `status`, as written in the configuration.
pub fn limit(after: &StuckAfter, status: &BatchStatus) -> String {
    match status {
        BatchStatus::Validating => after.validating.to_string(),
        BatchStatus::Finalizing => after.finalizing.to_string(),
        BatchStatus::Cancelling => after.cancelling.to_string(),
        _ => "-".to_owned(),
    }
}

/// The stuck batches in a few words, for the systemd status line: empty when there are none.
pub fn summary(stuck: &[StuckBatch], now: Timestamp) -> String {
    let Some(first) = stuck.first() else {
        return String::new();
    };
    let age = clock::parse(&first.since).map_or_else(String::new, |t| {
        format!(" for {}", clock::humanize(clock::between(t, now)))
    });
    let more = match stuck.len() {
        1 => String::new(),
        n => format!(" and {} more", n - 1),
    };
    format!(
        "; STUCK: {} {}{age}{more}",
        first.remote_id.as_deref().unwrap_or("?"),
        first.status
    )
}
