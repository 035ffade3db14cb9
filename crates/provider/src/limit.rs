//! The shared request limits: a rate (a token bucket) and a concurrency cap (a semaphore).
//!
//! Every request of every clone of a [`super::Client`] passes through one [`Limiter`], so the
//! daemon's pollers, submitters and collectors together stay under `limits.requests_per_second`
//! with at most `limits.concurrency` requests in flight.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use batchwatch_core::config::LimitSettings;

/// A token bucket holding at most one token: requests are spaced at least `1/rate` apart, so
/// no window of any length sees more than `rate` per second (plus the one token).
#[derive(Debug)]
struct TokenBucket {
    interval: Duration,
    /// When the next token is available; in the past when the bucket is full.
    next_free: Instant,
}

impl TokenBucket {
    fn new(rate: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            interval: Duration::from_secs_f64(1.0 / rate),
            next_free: now,
        }
    }

    /// Takes the next token and says how long to wait before using it. Reserving ahead (the
    /// wait is computed under the lock, slept outside it) serves waiters in arrival order.
    fn reserve(&mut self, now: Instant) -> Duration {
        let at = self.next_free.max(now);
        self.next_free = at + self.interval;
        at - now
    }
}

/// The rate and concurrency limits, shared by every clone of the client.
#[derive(Debug, Clone)]
pub(crate) struct Limiter {
    bucket: Arc<Mutex<TokenBucket>>,
    slots: Arc<Semaphore>,
}

impl Limiter {
    pub(crate) fn new(limits: &LimitSettings) -> Limiter {
        // Validated config guarantees a positive, finite rate; guard anyway so a hand-built
        // LimitSettings cannot make Duration::from_secs_f64 panic.
        let rate = if limits.requests_per_second.is_finite() && limits.requests_per_second > 0.0 {
            limits.requests_per_second
        } else {
            1.0
        };
        Limiter {
            bucket: Arc::new(Mutex::new(TokenBucket::new(rate, Instant::now()))),
            slots: Arc::new(Semaphore::new(limits.concurrency.max(1) as usize)),
        }
    }

    /// Waits for a free slot, then for the rate, and returns the slot; the request runs while
    /// the permit is held (a download holds it until the last byte).
    pub(crate) async fn acquire(&self) -> OwnedSemaphorePermit {
        let permit = Arc::clone(&self.slots)
            .acquire_owned()
            .await
            .expect("the limiter's semaphore is never closed");
        let wait = self
            .bucket
            .lock()
            .expect("the token bucket lock is never poisoned")
            .reserve(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        permit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_spaces_requests_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(4.0, t0);
        let waits: Vec<Duration> = (0..4).map(|_| b.reserve(t0)).collect();
        assert_eq!(
            waits,
            [0, 250, 500, 750].map(Duration::from_millis).to_vec()
        );
    }

    #[test]
    fn bucket_does_not_save_up_a_burst_while_idle() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, t0);
        assert_eq!(b.reserve(t0), Duration::ZERO);
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.reserve(later), Duration::ZERO);
        assert_eq!(b.reserve(later), Duration::from_millis(500));
    }

    #[tokio::test]
    async fn limiter_caps_requests_in_flight() {
        let limiter = Limiter::new(&LimitSettings {
            requests_per_second: 1000.0,
            concurrency: 2,
        });
        let a = limiter.acquire().await;
        let _b = limiter.acquire().await;
        let third = tokio::time::timeout(Duration::from_millis(50), limiter.acquire()).await;
        assert!(third.is_err(), "a third request ran beside two");
        drop(a);
        let third = tokio::time::timeout(Duration::from_secs(5), limiter.acquire()).await;
        assert!(third.is_ok());
    }

    #[tokio::test]
    async fn limiter_holds_the_rate_across_clones() {
        let limiter = Limiter::new(&LimitSettings {
            requests_per_second: 20.0,
            concurrency: 10,
        });
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..6 {
            let l = limiter.clone();
            tasks.push(tokio::spawn(async move {
                drop(l.acquire().await);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        // Six requests at 20/s: the last may start 5 x 50 ms after the first.
        assert!(
            start.elapsed() >= Duration::from_millis(250),
            "{:?}",
            start.elapsed()
        );
    }
}
