//! What the daemon's tasks share ([`Ctx`]), and how a failed request puts its submission's
//! next try off ([`defer`]).

use std::sync::Arc;

use crate::api::{ApiError, Client};
use crate::clock::{self, Clock};
use crate::config::Settings;
use crate::daemon::gate::Gate;
use crate::daemon::notifiers::Notifiers;
use crate::daemon::schedule::Schedule;
use crate::daemon::shared::{DuplicateWatch, Polls, Sweeps, Tenure, Unverified};
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::store::prelude::*;
use crate::store::{Lease, Store};

/// What the daemon's tasks share.
#[derive(Clone)]
pub struct Ctx {
    pub settings: Arc<Settings>,
    /// Every timer and back-off, derived from the settings once.
    pub schedule: Arc<Schedule>,
    pub store: Store,
    /// The lease every write that moves a job or a submission carries.
    pub lease: Lease,
    /// Whether this instance leads, and whether a request may start under its lease.
    pub tenure: Arc<Tenure>,
    pub queue: Queue,
    pub client: Client,
    /// The one clock: stored times, timers and back-offs all read it.
    pub clock: Clock,
    pub gate: Arc<Gate>,
    /// Jobs not yet checked against the service since the database may lag it.
    pub unverified: Arc<Unverified>,
    /// Late duplicates of re-sent creates already reported.
    pub duplicates: Arc<DuplicateWatch>,
    /// The counters and histograms `/metrics` shows.
    pub metrics: Metrics,
    /// The `[[notify]]` entries, their secrets read; replaced whole by a reload.
    pub notify: Arc<Notifiers>,
    /// What the last list sweep cost.
    pub sweeps: Arc<Sweeps>,
    /// When each active batch is polled next, while this instance leads.
    pub polls: Arc<Polls>,
}

impl Ctx {
    /// The current time in the stored form.
    pub fn now(&self) -> String {
        clock::format(self.clock.now())
    }

    /// The lease the leader's work writes under (tracking, housekeeping, the duplicate watch):
    /// let through for jobs other instances hold while this instance's term as leader runs.
    pub fn leader_lease(&self) -> Lease {
        self.lease.as_leader()
    }

    /// The poll schedule, while this instance leads: a follower polls nothing, and keeps none.
    pub fn leader_polls(&self) -> Option<&Polls> {
        self.tenure.leads().then_some(&*self.polls)
    }

    /// Whether a request to the service that changes something there (an upload, a create, a
    /// cancel, a deletion) may start: only while the lease it was intended under has more
    /// than a request's timeout left.
    pub fn may_send(&self) -> anyhow::Result<()> {
        self.tenure
            .may_send(self.settings.api.request_timeout.get())
    }
}

/// Which time a deferred step waits on.
pub enum Next {
    /// `next_poll_at`: the poll of an active batch.
    Poll,
    /// `not_before`: an upload, create, cancel or download.
    Step,
}

/// Records a failed request on a submission and puts its next try off: by the server's delay
/// when it gave one, else by `backoff.failed_request`. A refused key closes the gate.
pub async fn defer(ctx: &Ctx, row: i64, err: &ApiError, next: Next) -> anyhow::Result<()> {
    let now_ts = ctx.clock.now();
    ctx.gate.note(err, now_ts, ctx.schedule.auth_retry);
    let delay = err.retry_after().unwrap_or(ctx.schedule.failed_request);
    let at = clock::format(clock::add(now_ts, delay));
    let now = clock::format(now_ts);
    let error = err.to_string();
    match next {
        Next::Poll => {
            let lease = &ctx.leader_lease();
            ctx.store.defer_poll(lease, row, &at, &error, &now).await?;
            if let Some(polls) = ctx.leader_polls() {
                polls.stored(row, &at);
            }
        }
        Next::Step => {
            ctx.store
                .postpone(&ctx.lease, row, &at, Some(&error), &now)
                .await?
        }
    }
    Ok(())
}
