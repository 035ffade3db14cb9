//! Telling systemd how the daemon is: READY=1 once recovery and the first scan are done,
//! STATUS= with the job counts, WATCHDOG=1 from the main loop (so a stuck loop gets the service
//! restarted), STOPPING=1 at shutdown. Outside systemd (no NOTIFY_SOCKET) these do nothing.

use std::time::Duration;

use sd_notify::NotifyState;

use crate::clock::{self, Timestamp};
use crate::daemon::ctx::Ctx;
use crate::daemon::schedule::STATUS_EVERY;
use crate::model::JobState;
use crate::store::prelude::*;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// What was last told to systemd, and when.
#[derive(Debug, Default)]
pub struct Notifier {
    /// Whether anyone listens (systemd set `NOTIFY_SOCKET`): the status line costs two queries,
    /// not worth running for nobody.
    listening: bool,
    status: String,
    status_at: Option<Timestamp>,
    watchdog_at: Option<Timestamp>,
}

impl Notifier {
    pub fn new() -> Notifier {
        Notifier {
            listening: std::env::var_os("NOTIFY_SOCKET").is_some(),
            ..Notifier::default()
        }
    }

    /// Start-up is complete.
    pub async fn ready(&mut self, ctx: &Ctx) {
        let status = status_line(ctx, 0).await;
        send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        let now = ctx.clock.now();
        self.status = status;
        self.status_at = Some(now);
        self.watchdog_at = Some(now);
        tracing::info!("ready");
    }

    /// Called after every loop round: pets the watchdog and refreshes the status line, each at
    /// most as often as needed. Nothing before [`Notifier::ready`].
    pub async fn status(&mut self, ctx: &Ctx, in_flight: usize) {
        let now = ctx.clock.now();
        let (Some(status_at), Some(watchdog_at)) = (self.status_at, self.watchdog_at) else {
            return;
        };
        if watchdog_every().is_some_and(|every| clock::add(watchdog_at, every) <= now) {
            send(&[NotifyState::Watchdog]);
            self.watchdog_at = Some(now);
        }
        if self.listening && clock::add(status_at, STATUS_EVERY) <= now {
            let line = status_line(ctx, in_flight).await;
            self.status_at = Some(now);
            if line != self.status {
                send(&[NotifyState::Status(&line)]);
                self.status = line;
            }
        }
    }

    /// When the watchdog must be petted next, if systemd asked for it: the loop wakes by then.
    pub fn next_due(&self) -> Option<Timestamp> {
        Some(clock::add(self.watchdog_at?, watchdog_every()?))
    }

    /// A reload of the configuration has begun (`RELOADING=1`, with the monotonic time
    /// systemd asks for).
    pub fn reloading(&self) {
        let mut states = vec![NotifyState::Reloading];
        states.extend(NotifyState::monotonic_usec_now().ok());
        send(&states);
    }

    /// The reload is over, applied or refused: `READY=1` again.
    pub fn reloaded(&self) {
        send(&[NotifyState::Ready]);
    }

    /// Shutdown has begun.
    pub fn stopping(&self) {
        send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }
}

/// How often the watchdog is petted: four times per WatchdogSec, when systemd set one.
fn watchdog_every() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|every| every / 4)
}

async fn status_line(ctx: &Ctx, in_flight: usize) -> String {
    if let Some(pause) = ctx.gate.paused() {
        return format!(
            "PAUSED since {}: {}",
            crate::clock::format(pause.since),
            pause.message
        );
    }
    let counts = ctx.store.job_state_counts().await.unwrap_or_default();
    let count = |s: JobState| counts.iter().find(|(c, _)| *c == s).map_or(0, |(_, n)| *n);
    let active = [
        JobState::Submitting,
        JobState::Running,
        JobState::Cancelling,
        JobState::Collecting,
    ];
    let now = ctx.clock.now();
    let stuck = ctx
        .store
        .stuck(&ctx.settings.alerts.stuck_after, now)
        .await
        .unwrap_or_default();
    format!(
        "{} running, {} queued, {} completed, {} failed or rejected; {in_flight} tasks{}",
        active.iter().map(|s| count(*s)).sum::<i64>(),
        count(JobState::Queued) + count(JobState::Validating),
        count(JobState::Completed),
        [
            JobState::Failed,
            JobState::Rejected,
            JobState::Expired,
            JobState::Cancelled
        ]
        .iter()
        .map(|s| count(*s))
        .sum::<i64>(),
        crate::daemon::track::stuck::summary(&stuck, now),
    )
}
