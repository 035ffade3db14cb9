//! What holds work back for everyone: a refused API key (401, 403) stops all API work until a
//! probe shows the key works again; exhausted quota (429 `insufficient_quota`) stops new
//! submissions for `backoff.auth_retry` at a time, while running batches are still polled,
//! cancelled and collected; and the enqueued-token limit holds back new submissions for one
//! model for a while.
//!
//! Both live in memory only: after a restart the first refused request closes the gate again,
//! and the submissions' own `not_before` times, which are stored, keep their back-off.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;

use super::ctx::Ctx;
use crate::api::ApiError;
use crate::clock::{self, Timestamp};

/// Why all API work stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct Pause {
    pub since: Timestamp,
    pub message: String,
    pub next_probe: Timestamp,
    /// Whether the key was read again from its source since the refusal: the first probe
    /// does that at once, before any wait (a rotated key file needs no restart).
    pub key_reread: bool,
}

#[derive(Debug, Default)]
pub struct Gate {
    pause: Mutex<Option<Pause>>,
    submissions: Mutex<Option<Timestamp>>,
    models: Mutex<HashMap<String, Timestamp>>,
}

impl Gate {
    /// The current pause, if the API refused the key.
    pub fn paused(&self) -> Option<Pause> {
        self.pause.lock().expect("gate lock").clone()
    }

    /// Notes an API error; returns true when it closed the gate (401, 403) or held
    /// submissions (quota).
    pub fn note(&self, err: &ApiError, now: Timestamp, retry: Duration) -> bool {
        if let ApiError::QuotaExceeded { .. } = err {
            let mut held = self.submissions.lock().expect("gate lock");
            if held.is_none_or(|until| until <= now) {
                tracing::error!(
                    error = %err,
                    retry_in = %clock::humanize(retry),
                    "THE API QUOTA IS EXHAUSTED: no new batches are submitted; running batches are still followed, and queued work waits"
                );
            }
            *held = Some(clock::add(now, retry));
            return true;
        }
        if !matches!(
            err,
            ApiError::Unauthorized { .. } | ApiError::Forbidden { .. }
        ) {
            return false;
        }
        let mut pause = self.pause.lock().expect("gate lock");
        if pause.is_none() {
            tracing::error!(
                error = %err,
                retry_in = %clock::humanize(retry),
                "THE API REFUSED THE KEY: all submissions and polling are stopped; queued work is kept and resumes when the key works again"
            );
        }
        *pause = Some(Pause {
            since: pause.as_ref().map_or(now, |p| p.since),
            message: err.to_string(),
            next_probe: clock::add(now, retry),
            key_reread: pause.as_ref().is_some_and(|p| p.key_reread),
        });
        true
    }

    /// The key was read again from its source; when it changed, the next probe is due at once.
    pub fn key_reread(&self, changed: bool, now: Timestamp) {
        if let Some(p) = self.pause.lock().expect("gate lock").as_mut() {
            p.key_reread = true;
            if changed {
                p.next_probe = now;
            }
        }
    }

    /// Makes the next probe due now (after a reload: the key or the API may be new).
    pub fn probe_now(&self, now: Timestamp) {
        if let Some(p) = self.pause.lock().expect("gate lock").as_mut() {
            p.key_reread = false;
            p.next_probe = now;
        }
    }

    /// The next time after `now` at which the gate changes by itself (a hold ends, a probe is
    /// due): the daemon wakes by then.
    pub fn next_change(&self, now: Timestamp) -> Option<Timestamp> {
        let probe = self
            .pause
            .lock()
            .expect("gate lock")
            .as_ref()
            .map(|p| p.next_probe);
        let submissions = *self.submissions.lock().expect("gate lock");
        let models: Vec<Timestamp> = self
            .models
            .lock()
            .expect("gate lock")
            .values()
            .copied()
            .collect();
        probe
            .into_iter()
            .chain(submissions)
            .chain(models)
            .filter(|t| *t > now)
            .min()
    }

    /// Whether it is time to try the key again.
    pub fn probe_due(&self, now: Timestamp) -> bool {
        self.pause
            .lock()
            .expect("gate lock")
            .as_ref()
            .is_some_and(|p| !p.key_reread || p.next_probe <= now)
    }

    fn reopen(&self) {
        if self.pause.lock().expect("gate lock").take().is_some() {
            tracing::warn!("the API accepts the key again: resuming");
        }
    }

    /// When new submissions may go out again, if exhausted quota holds them at `now`.
    pub fn submissions_held_until(&self, now: Timestamp) -> Option<Timestamp> {
        self.submissions
            .lock()
            .expect("gate lock")
            .filter(|until| *until > now)
    }

    /// Holds back new submissions for `model` until `until`.
    pub fn hold_model(&self, model: &str, until: Timestamp) {
        let mut models = self.models.lock().expect("gate lock");
        let entry = models.entry(model.to_owned()).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// When `model`'s hold ends, if it is held at `now`.
    /// The models held back at `now`.
    pub fn held_models(&self, now: Timestamp) -> Vec<String> {
        let models = self.models.lock().expect("gate lock");
        let held = models.iter().filter(|(_, until)| **until > now);
        held.map(|(model, _)| model.clone()).collect()
    }

    pub fn model_held_until(&self, model: &str, now: Timestamp) -> Option<Timestamp> {
        self.models
            .lock()
            .expect("gate lock")
            .get(model)
            .copied()
            .filter(|until| *until > now)
    }
}

/// Reads the key again from its source (it may have been rotated), then tries it with the
/// cheapest call there is; reopens the gate when it works.
pub async fn probe(ctx: Ctx) -> anyhow::Result<()> {
    match ctx.client.reload_key(&ctx.settings.api.key_source()) {
        Ok(changed) => {
            if changed {
                tracing::warn!(source = %ctx.settings.api.key_source(), "the API key changed at its source; trying the new one");
            }
            ctx.gate.key_reread(changed, ctx.clock.now());
        }
        Err(e) => {
            tracing::error!(error = %e, "the API key cannot be read again from its source; trying the one in use");
            ctx.gate.key_reread(false, ctx.clock.now());
        }
    }
    let first = std::pin::pin!(ctx.client.list_batches(1)).next().await;
    match first {
        None | Some(Ok(_)) => {
            ctx.gate.reopen();
            Ok(())
        }
        Some(Err(e)) => {
            if !ctx
                .gate
                .note(&e, ctx.clock.now(), ctx.settings.backoff.auth_retry.get())
            {
                // Not a refusal (the network, say): the key may be fine; try the work again.
                ctx.gate.reopen();
            }
            Err(e.into())
        }
    }
}

/// The back-off before attempt `attempt + 1` after `attempt` was refused for the token limit:
/// `initial * 2^(attempt-1)`, at most `max`.
pub fn token_backoff(attempt: i64, initial: Duration, max: Duration) -> Duration {
    let doublings = u32::try_from(attempt.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
    initial.saturating_mul(1 << doublings).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Operation;

    #[test]
    fn the_token_backoff_doubles_up_to_its_maximum() {
        let (i, m) = (Duration::from_secs(60), Duration::from_secs(600));
        let got: Vec<u64> = (1..=6).map(|a| token_backoff(a, i, m).as_secs()).collect();
        assert_eq!(got, [60, 120, 240, 480, 600, 600]);
    }

    #[test]
    fn exhausted_quota_holds_submissions_only() {
        let gate = Gate::default();
        let now: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let quota = ApiError::QuotaExceeded {
            op: Operation::CreateBatch,
            message: "billing".into(),
        };
        assert!(gate.note(&quota, now, Duration::from_secs(60)));
        assert!(gate.paused().is_none(), "polls and cancels go on");
        assert!(gate.submissions_held_until(now).is_some());
        assert!(
            gate.submissions_held_until(clock::add(now, Duration::from_secs(61)))
                .is_none()
        );
    }

    #[test]
    fn only_refusals_close_the_gate_and_a_model_hold_expires() {
        let gate = Gate::default();
        let now: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let transient = ApiError::Transient {
            op: Operation::RetrieveBatch,
            status: Some(500),
            detail: "x".into(),
            retry_after: None,
        };
        assert!(!gate.note(&transient, now, Duration::from_secs(60)));
        assert!(gate.paused().is_none());
        let refused = ApiError::Unauthorized {
            op: Operation::CreateBatch,
            message: "bad key".into(),
        };
        assert!(gate.note(&refused, now, Duration::from_secs(60)));
        // At once, to read the key again; then only after the wait.
        assert!(gate.probe_due(now));
        gate.key_reread(false, now);
        assert!(!gate.probe_due(now));
        assert!(gate.note(&refused, now, Duration::from_secs(60)));
        assert!(
            !gate.probe_due(now),
            "a refusal after the key was read again waits"
        );
        assert!(gate.probe_due(clock::add(now, Duration::from_secs(61))));
        gate.key_reread(true, now);
        assert!(gate.probe_due(now), "a changed key is tried at once");
        gate.reopen();
        assert!(gate.paused().is_none());

        gate.hold_model("m", clock::add(now, Duration::from_secs(30)));
        assert!(gate.model_held_until("m", now).is_some());
        assert!(
            gate.model_held_until("m", clock::add(now, Duration::from_secs(31)))
                .is_none()
        );
        assert!(gate.model_held_until("other", now).is_none());
    }
}
