//! The retry policy for calls that are safe to repeat (retrieve, list, cancel, delete,
//! download): capped exponential backoff with full jitter, never sooner than the server asked.
//!
//! The policy is data and [`RetryPolicy::next_delay`] is a pure function of the attempt number,
//! the error and a uniform random number, so tests check every bound without sleeping.

use std::future::Future;
use std::time::Duration;

use batchwatch_core::config::ApiSettings;

use crate::error::ApiError;

/// How often, and how long apart, a safe call is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub attempts: u32,
    /// The ceiling of the first backoff; it doubles at each retry.
    pub initial_delay: Duration,
    /// The largest ceiling. A server asking for longer than this ends the retries: the caller
    /// gets the error with the server's delay and schedules the next try itself, rather than a
    /// task sleeping inside the client for minutes.
    pub max_delay: Duration,
}

impl RetryPolicy {
    pub fn from_settings(api: &ApiSettings) -> RetryPolicy {
        RetryPolicy {
            attempts: api.retry_attempts.max(1),
            initial_delay: api.retry_initial_delay.get(),
            max_delay: api.retry_max_delay.get(),
        }
    }

    /// The ceiling of the backoff after the `failures`-th failure (1-based):
    /// `min(max_delay, initial_delay * 2^(failures-1))`.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.initial_delay
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max_delay)
            .min(self.max_delay)
    }

    /// The delay before the next attempt after `failures` failed attempts ending in `err`, or
    /// `None` when the error is to be returned: it is not transient, the attempts are used up,
    /// or the server asked for more than `max_delay`. `unit` is uniform in [0, 1): full jitter
    /// picks the delay uniformly in [0, ceiling], raised to the server's delay when it gave one.
    pub fn next_delay(&self, failures: u32, err: &ApiError, unit: f64) -> Option<Duration> {
        if !err.is_transient() || failures >= self.attempts {
            return None;
        }
        let jittered = self.ceiling(failures).mul_f64(unit.clamp(0.0, 1.0));
        match err.retry_after() {
            Some(server) if server > self.max_delay => None,
            Some(server) => Some(jittered.max(server)),
            None => Some(jittered),
        }
    }

    /// Runs `call` until it succeeds or [`RetryPolicy::next_delay`] says stop, sleeping in
    /// between; returns the last error.
    pub async fn run<T, F, Fut>(&self, call: F) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        self.run_observed(call, |_| {}).await
    }

    /// As [`RetryPolicy::run`], calling `on_retry` with each error that is retried.
    pub async fn run_observed<T, F, Fut>(
        &self,
        mut call: F,
        mut on_retry: impl FnMut(&ApiError),
    ) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let mut failures = 0;
        loop {
            match call().await {
                Ok(value) => return Ok(value),
                Err(err) => {
                    failures += 1;
                    let Some(delay) = self.next_delay(failures, &err, fastrand::f64()) else {
                        return Err(err);
                    };
                    tracing::debug!(
                        operation = %err.operation(),
                        attempt = failures,
                        delay_ms = delay.as_millis() as u64,
                        error = %err,
                        "retrying after a transient error"
                    );
                    on_retry(&err);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Operation;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            attempts: 5,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }

    fn transient() -> ApiError {
        ApiError::Transient {
            op: Operation::RetrieveBatch,
            status: Some(502),
            detail: "502".into(),
            retry_after: None,
        }
    }

    fn rate_limited(after: Duration) -> ApiError {
        ApiError::RateLimited {
            op: Operation::RetrieveBatch,
            retry_after: Some(after),
            message: "slow down".into(),
        }
    }

    #[test]
    fn ceiling_doubles_from_the_initial_delay_up_to_the_cap() {
        let p = policy();
        let ceilings: Vec<u64> = (1..=9).map(|n| p.ceiling(n).as_millis() as u64).collect();
        assert_eq!(
            ceilings,
            [
                500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000
            ]
        );
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn full_jitter_spans_zero_to_the_ceiling() {
        let p = RetryPolicy {
            attempts: 10,
            ..policy()
        };
        let err = transient();
        assert_eq!(p.next_delay(3, &err, 0.0), Some(Duration::ZERO));
        assert_eq!(p.next_delay(3, &err, 0.5), Some(Duration::from_secs(1)));
        assert_eq!(p.next_delay(3, &err, 1.0), Some(Duration::from_secs(2)));
        let mut rng = fastrand::Rng::with_seed(7);
        let delays: Vec<Duration> = (0..1000)
            .map(|_| p.next_delay(4, &err, rng.f64()).unwrap())
            .collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(4)));
        // Full jitter, not "half plus jitter": some delays fall in the lowest tenth.
        assert!(delays.iter().any(|d| *d < Duration::from_millis(400)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(3600)));
    }

    #[test]
    fn server_delay_is_a_floor_under_the_jitter() {
        let p = policy();
        let err = rate_limited(Duration::from_secs(3));
        assert_eq!(p.next_delay(1, &err, 0.0), Some(Duration::from_secs(3)));
        assert_eq!(p.next_delay(1, &err, 0.99), Some(Duration::from_secs(3)));
        // Later ceilings are above the server's delay; the jitter may then exceed it.
        let late = p.next_delay(4, &err, 1.0).unwrap();
        assert_eq!(late, Duration::from_secs(4));
    }

    #[test]
    fn server_delay_beyond_the_cap_is_left_to_the_caller() {
        let p = policy();
        assert_eq!(
            p.next_delay(1, &rate_limited(Duration::from_secs(31)), 0.5),
            None
        );
    }

    #[test]
    fn attempts_include_the_first_call() {
        let p = RetryPolicy {
            attempts: 3,
            ..policy()
        };
        assert!(p.next_delay(1, &transient(), 0.5).is_some());
        assert!(p.next_delay(2, &transient(), 0.5).is_some());
        assert_eq!(p.next_delay(3, &transient(), 0.5), None);
        let once = RetryPolicy {
            attempts: 1,
            ..policy()
        };
        assert_eq!(once.next_delay(1, &transient(), 0.5), None);
    }

    #[test]
    fn permanent_and_unknown_outcome_errors_are_never_retried() {
        let p = policy();
        let errors = [
            ApiError::NotFound {
                op: Operation::RetrieveBatch,
                message: "gone".into(),
            },
            ApiError::Unauthorized {
                op: Operation::RetrieveBatch,
                message: "no".into(),
            },
            ApiError::QuotaExceeded {
                op: Operation::RetrieveBatch,
                message: "pay".into(),
            },
            ApiError::UnknownOutcome {
                op: Operation::CreateBatch,
                status: None,
                detail: "reset".into(),
            },
        ];
        for err in errors {
            assert_eq!(p.next_delay(1, &err, 0.5), None, "{err:?}");
        }
    }

    #[tokio::test]
    async fn run_retries_transient_errors_then_returns_the_value() {
        let p = RetryPolicy {
            attempts: 4,
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        };
        let mut calls = 0;
        let out = p
            .run(|| {
                calls += 1;
                let n = calls;
                async move { if n < 3 { Err(transient()) } else { Ok(n) } }
            })
            .await
            .unwrap();
        assert_eq!(out, 3);
    }

    #[tokio::test]
    async fn run_returns_the_last_error_when_attempts_run_out() {
        let p = RetryPolicy {
            attempts: 3,
            initial_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
        };
        let mut calls = 0;
        let err = p
            .run(|| {
                calls += 1;
                async { Err::<(), _>(transient()) }
            })
            .await
            .unwrap_err();
        assert_eq!(calls, 3);
        assert!(err.is_transient());
    }
}
