//! What holds work back for everyone: a refused API key (401, 403) stops all API work until a
//! probe shows the key works again; so does a missing route (a 404 on a collection route of
//! the service: `api.base_url` is wrong), until the routes answer (after a reload that fixed the
//! URL, or the service coming back), and no job fails for it; exhausted quota (429
//! `insufficient_quota`) stops new submissions for `backoff.auth_retry` at a time, while
//! running batches are still polled, cancelled and collected; and the enqueued-token limit
//! holds back new submissions for one model for a while.
//!
//! Both live in memory only: after a restart the first refused request closes the gate again,
//! and the submissions' own `not_before` times, which are stored, keep their back-off.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::api::ApiError;
use crate::clock::{self, Timestamp};
use crate::daemon::shared::Task;
use crate::metrics::Metrics;

/// What closed the gate: what the operator has to fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::Display, strum::EnumIter)]
#[strum(serialize_all = "snake_case")]
pub enum Closed {
    /// 401 or 403: the key.
    KeyRefused,
    /// 404 on a collection route: `api.base_url`.
    RouteMissing,
}

impl Closed {
    /// What closes the gate, if `err` does.
    fn by(err: &ApiError) -> Option<Closed> {
        match err {
            ApiError::Unauthorized { .. } | ApiError::Forbidden { .. } => Some(Closed::KeyRefused),
            ApiError::RouteMissing { .. } => Some(Closed::RouteMissing),
            _ => None,
        }
    }
}

/// Why all API work stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct Pause {
    pub cause: Closed,
    pub since: Timestamp,
    pub message: String,
    pub next_probe: Timestamp,
    /// Whether the key was read again from its source since the refusal: the first probe
    /// does that at once, before any wait (a rotated key file needs no restart).
    pub key_reread: bool,
    /// Whether the log said what a missing route means for `api.base_url` (once a pause).
    pub route_hinted: bool,
}

#[derive(Debug, Default)]
pub struct Gate {
    /// Shows the pause as `batchwatch_gate_closed`.
    metrics: Metrics,
    pause: Mutex<Option<Pause>>,
    submissions: Mutex<Option<Timestamp>>,
    models: Mutex<HashMap<String, Timestamp>>,
}

impl Gate {
    /// A gate that shows its pauses in `metrics`.
    pub fn observed(metrics: Metrics) -> Gate {
        Gate {
            metrics,
            ..Gate::default()
        }
    }

    /// The current pause, if the API refused the key or has no route at `api.base_url`.
    pub fn paused(&self) -> Option<Pause> {
        self.pause.lock().expect("gate lock").clone()
    }

    /// Notes an API error; returns true when it closed the gate (401, 403, a missing route)
    /// or held submissions (quota).
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
        let Some(cause) = Closed::by(err) else {
            return false;
        };
        let mut pause = self.pause.lock().expect("gate lock");
        let same = pause.take().filter(|p| p.cause == cause);
        if same.is_none() {
            match cause {
                Closed::KeyRefused => tracing::error!(
                    error = %err,
                    retry_in = %clock::humanize(retry),
                    "THE API REFUSED THE KEY: all submissions and polling are stopped; queued work is kept and resumes when the key works again"
                ),
                Closed::RouteMissing => tracing::error!(
                    error = %err,
                    retry_in = %clock::humanize(retry),
                    "THE API HAS NO SUCH ROUTE: api.base_url is likely wrong (is its version path, /v1, missing?); all submissions and polling are stopped; queued work is kept and resumes when the route answers (fix api.base_url and reload)"
                ),
            }
        }
        *pause = Some(Pause {
            cause,
            since: same.as_ref().map_or(now, |p| p.since),
            message: err.to_string(),
            next_probe: clock::add(now, retry),
            key_reread: same.as_ref().is_some_and(|p| p.key_reread),
            route_hinted: same.as_ref().is_some_and(|p| p.route_hinted),
        });
        self.metrics.gate_closed(Some(cause));
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
            p.route_hinted = false;
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

    /// A probe showed the key and the routes work: everything goes again.
    pub fn reopen(&self) {
        match self
            .pause
            .lock()
            .expect("gate lock")
            .take()
            .map(|p| p.cause)
        {
            Some(Closed::KeyRefused) => tracing::warn!("the API accepts the key again: resuming"),
            Some(Closed::RouteMissing) => {
                tracing::warn!("the API's routes answer again at api.base_url: resuming")
            }
            None => return,
        }
        self.metrics.gate_closed(None);
    }

    /// The log said what a missing route means for `api.base_url`: no hint is due in this
    /// pause.
    pub fn route_explained(&self) {
        if let Some(p) = self.pause.lock().expect("gate lock").as_mut() {
            p.route_hinted = true;
        }
    }

    /// Whether a missing route's meaning for `api.base_url` is still to be logged in this
    /// pause; true once.
    pub fn route_hint_due(&self) -> bool {
        let mut pause = self.pause.lock().expect("gate lock");
        match pause.as_mut() {
            Some(p) if p.cause == Closed::RouteMissing && !p.route_hinted => {
                p.route_hinted = true;
                true
            }
            _ => false,
        }
    }

    /// When new submissions may go out again, if exhausted quota holds them at `now`.
    pub fn submissions_held_until(&self, now: Timestamp) -> Option<Timestamp> {
        self.submissions
            .lock()
            .expect("gate lock")
            .filter(|until| *until > now)
    }

    /// When the gate lets `task` go again, if it holds it back at `now`: a refused key holds
    /// everything until its next probe, exhausted quota holds submissions.
    pub fn reopens_at(&self, task: Task, now: Timestamp) -> Option<Timestamp> {
        let probe = self.paused().map(|p| p.next_probe.max(now));
        let quota = (task == Task::Submit)
            .then(|| self.submissions_held_until(now))
            .flatten();
        probe.into_iter().chain(quota).max()
    }

    /// Holds back new submissions for `model` until `until`.
    pub fn hold_model(&self, model: &str, until: Timestamp) {
        let mut models = self.models.lock().expect("gate lock");
        let entry = models.entry(model.to_owned()).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// The models held back at `now`.
    pub fn held_models(&self, now: Timestamp) -> Vec<String> {
        let held = self.held_models_until(now).into_iter();
        held.map(|(model, _)| model).collect()
    }

    /// The models held back at `now`, each with the end of its hold, by name.
    pub fn held_models_until(&self, now: Timestamp) -> Vec<(String, Timestamp)> {
        let models = self.models.lock().expect("gate lock");
        let mut held: Vec<(String, Timestamp)> = models
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(model, until)| (model.clone(), *until))
            .collect();
        held.sort();
        held
    }

    /// When `model`'s hold ends, if it is held at `now`.
    pub fn model_held_until(&self, model: &str, now: Timestamp) -> Option<Timestamp> {
        self.models
            .lock()
            .expect("gate lock")
            .get(model)
            .copied()
            .filter(|until| *until > now)
    }
}

/// The back-off before attempt `attempt + 1` after `attempt` was refused for the token limit:
/// `initial * 2^(attempt-1)`, at most `max`.
pub fn token_backoff(attempt: i64, initial: Duration, max: Duration) -> Duration {
    crate::daemon::schedule::doubling(initial, attempt, max)
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
    fn a_failed_task_resumes_when_the_gate_reopens_as_the_gate_says() {
        let gate = Gate::default();
        let now: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        assert_eq!(gate.reopens_at(Task::Poll, now), None);
        let refused = ApiError::Unauthorized {
            op: Operation::CreateBatch,
            message: "bad key".into(),
        };
        gate.note(&refused, now, Duration::from_secs(300));
        let probe = clock::add(now, Duration::from_secs(300));
        assert_eq!(gate.reopens_at(Task::Poll, now), Some(probe));
        assert_eq!(gate.reopens_at(Task::ProbeKey, now), Some(probe));
        gate.reopen();
        let quota = ApiError::QuotaExceeded {
            op: Operation::CreateBatch,
            message: "billing".into(),
        };
        gate.note(&quota, now, Duration::from_secs(60));
        assert_eq!(
            gate.reopens_at(Task::Submit, now),
            Some(clock::add(now, Duration::from_secs(60)))
        );
        assert_eq!(gate.reopens_at(Task::Poll, now), None, "polls go on");
    }

    #[test]
    fn a_missing_route_closes_the_gate_until_it_reopens_and_is_explained_once_a_pause() {
        let gate = Gate::default();
        let now: Timestamp = "2026-11-22T10:00:00Z".parse().unwrap();
        let missing = ApiError::RouteMissing {
            op: Operation::UploadFile,
            message: "Invalid URL".into(),
        };
        assert!(gate.note(&missing, now, Duration::from_secs(60)));
        let pause = gate.paused().expect("closed");
        assert_eq!(pause.cause, Closed::RouteMissing);
        assert!(gate.probe_due(now), "probed at once");
        assert!(gate.route_hint_due());
        assert!(!gate.route_hint_due(), "once");
        gate.probe_now(now);
        assert!(gate.route_hint_due(), "again after a reload");
        gate.reopen();
        assert!(gate.paused().is_none());
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
