//! The daemon in this process, on a manual clock, against a simulator whose clock is stopped:
//! a test moves both clocks itself and drives the rounds with `Daemon::step` (and
//! `Daemon::drain` for the tasks a round starts). Timers of minutes and hours pass at once,
//! and nothing waits for one.

use std::time::Duration;

use batchwatch::api::ApiKey;
use batchwatch::clock::{Clock, Timestamp};
use batchwatch::config::Settings;
use batchwatch::daemon::Daemon;
use batchwatch::model::JobState;
use batchwatch::sim::Faults;
use batchwatch::store::jobs::Job;
use batchwatch::store::prelude::*;

use super::KEY;
use super::daemon::Env;
use super::sim::{START, TestSim, spawn_sim, stopped_clock};

/// A daemon in this process and what it works against.
pub struct InProcess {
    pub env: Env,
    pub sim: TestSim,
    pub daemon: Daemon,
    pub clock: Clock,
}

impl InProcess {
    /// Starts a daemon with `extra` configuration over the fast test settings, its clock at
    /// 2026-01-01T00:00:00Z, against a simulator with `faults` and a stopped clock.
    pub async fn start(extra: &str, faults: Faults) -> InProcess {
        let sim = spawn_sim(batchwatch::sim::SimConfig {
            faults,
            ..stopped_clock()
        })
        .await;
        let env = Env::new(&sim.handle.base_url(), extra);
        let settings = Settings::load_from(Some(&env.config), []).unwrap();
        let clock = Clock::manual(Timestamp::from_second(START).unwrap());
        let daemon = Daemon::start(settings, ApiKey::new(KEY).unwrap(), clock.clone())
            .await
            .unwrap();
        InProcess {
            env,
            sim,
            daemon,
            clock,
        }
    }

    /// Moves the daemon's clock on by `by`, then does one round and waits for its tasks.
    pub async fn round(&mut self, by: Duration) {
        self.clock.advance(by);
        self.daemon.step().await;
        self.daemon.drain().await;
    }

    /// Rounds a second apart until `done` holds for the file's job, at most `rounds` of them.
    pub async fn until(&mut self, what: &str, rounds: usize, done: impl Fn(&Job) -> bool) -> Job {
        for _ in 0..rounds {
            if let Some(job) = self.job().await.filter(|j| done(j)) {
                return job;
            }
            self.round(Duration::from_secs(1)).await;
        }
        panic!(
            "{what}: not after {rounds} rounds; the job: {:#?}",
            self.job().await
        );
    }

    /// The one job of the test.
    pub async fn job(&self) -> Option<Job> {
        self.daemon
            .ctx
            .store
            .jobs_in_states(JobState::ALL)
            .await
            .unwrap()
            .into_iter()
            .next()
    }

    /// Batches the simulator created for the job.
    pub async fn batches_created(&self, job: &Job) -> u64 {
        let stats = self.sim.handle.stats().await;
        stats.batches_by_job.get(&job.id).copied().unwrap_or(0)
    }
}
