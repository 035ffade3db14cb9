//! Telling systemd how the daemon is: READY=1 once recovery and the first scan are done,
//! STATUS= with the job counts, WATCHDOG=1 from the main loop (so a stuck loop gets the service
//! restarted), STOPPING=1 at shutdown. Outside systemd (no NOTIFY_SOCKET) these do nothing.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use super::Ctx;
use crate::model::JobState;
use crate::store::jobs;

struct Sent {
    status: String,
    status_at: Instant,
    watchdog_at: Instant,
}

static SENT: Mutex<Option<Sent>> = Mutex::new(None);

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Start-up is complete.
pub async fn ready(ctx: &Ctx) {
    let status = status_line(ctx, 0).await;
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
    *SENT.lock().expect("notify lock") = Some(Sent {
        status,
        status_at: Instant::now(),
        watchdog_at: Instant::now(),
    });
    tracing::info!("ready");
}

/// Called from every loop round: pets the watchdog and refreshes the status line, each at
/// most as often as needed.
pub async fn status(ctx: &Ctx, in_flight: usize) {
    let now = Instant::now();
    let (status_due, watchdog_due) = {
        let sent = SENT.lock().expect("notify lock");
        let Some(sent) = sent.as_ref() else { return };
        let watchdog_due = sd_notify::watchdog_enabled()
            .is_some_and(|every| now.duration_since(sent.watchdog_at) >= every / 4);
        (
            now.duration_since(sent.status_at) >= Duration::from_secs(1),
            watchdog_due,
        )
    };
    if watchdog_due {
        send(&[NotifyState::Watchdog]);
    }
    let line = if status_due {
        Some(status_line(ctx, in_flight).await)
    } else {
        None
    };
    let mut guard = SENT.lock().expect("notify lock");
    let Some(sent) = guard.as_mut() else { return };
    if watchdog_due {
        sent.watchdog_at = now;
    }
    if let Some(line) = line {
        sent.status_at = now;
        if line != sent.status {
            send(&[NotifyState::Status(&line)]);
            sent.status = line;
        }
    }
}

/// Shutdown has begun.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

async fn status_line(ctx: &Ctx, in_flight: usize) -> String {
    if let Some(pause) = ctx.gate.paused() {
        return format!(
            "PAUSED since {}: {}",
            crate::clock::format(pause.since),
            pause.message
        );
    }
    let counts = jobs::state_counts(ctx.store.reader())
        .await
        .unwrap_or_default();
    let count = |s: JobState| counts.iter().find(|(c, _)| *c == s).map_or(0, |(_, n)| *n);
    let active = [
        JobState::Submitting,
        JobState::Running,
        JobState::Cancelling,
        JobState::Collecting,
    ];
    format!(
        "{} running, {} queued, {} completed, {} failed or rejected; {in_flight} tasks",
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
    )
}
