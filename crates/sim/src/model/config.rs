//! What the simulator is told at start ([`SimConfig`]), and what follows from it.

use std::path::PathBuf;

use secrecy::SecretString;

use super::clock::ms;
use super::faults::Faults;
use batchwatch_core::batchfile::Limits;

/// Everything the simulator can be told. Durations are simulated seconds.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Simulated seconds per real second; 0 stops the clock (move it with [`SimHandle::advance`]).
    ///
    /// [`SimHandle::advance`]: crate::SimHandle::advance
    pub time_scale: f64,
    /// The simulated clock's reading at start, in unix seconds; default: the real time.
    pub start_time: Option<i64>,
    /// Seeds every random choice; default: a random seed (see [`SimHandle::seed`]).
    ///
    /// [`SimHandle::seed`]: crate::SimHandle::seed
    pub seed: Option<u64>,
    /// The only key accepted; default: any non-empty key.
    pub api_key: Option<SecretString>,
    /// Where files are kept; default: a temporary directory removed at exit. A directory given
    /// here also keeps the state across a clean restart (see "Restarts" in the crate's docs).
    pub data_dir: Option<PathBuf>,
    /// How long a batch is `validating`.
    pub validating_secs: f64,
    /// How long a batch is `in_progress`, plus `request_secs` per request.
    pub in_progress_secs: f64,
    /// Added to `in_progress_secs` for every request in the batch.
    pub request_secs: f64,
    /// How long a batch is `finalizing`.
    pub finalizing_secs: f64,
    /// How long a batch is `cancelling`.
    pub cancelling_secs: f64,
    /// A batch not done this long after its creation expires (the "24h" window).
    pub completion_window_secs: f64,
    /// The size and request limits of an input file.
    pub limits: Limits,
    /// The faults in force at start.
    pub faults: Faults,
    /// The order of `GET /batches` (see `listing.rs`).
    pub list_order: ListOrder,
    /// How many batches the simulated other tool creates in all (see `foreign.rs`).
    pub foreign_batches: u64,
    /// How many it creates after each batch a client creates.
    pub foreign_per_create: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            time_scale: 1.0,
            start_time: None,
            seed: None,
            api_key: None,
            data_dir: None,
            validating_secs: 10.0,
            in_progress_secs: 60.0,
            request_secs: 0.0,
            finalizing_secs: 10.0,
            cancelling_secs: 30.0,
            completion_window_secs: 24.0 * 3600.0,
            limits: Limits {
                max_requests: 50_000,
                max_bytes: 200_000_000,
            },
            faults: Faults::default(),
            list_order: ListOrder::NewestFirst,
            foreign_batches: 0,
            foreign_per_create: 1,
        }
    }
}

impl SimConfig {
    pub(crate) fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.time_scale >= 0.0 && self.time_scale.is_finite(),
            "the time scale must be a non-negative number, not {}",
            self.time_scale
        );
        for (name, secs) in [
            ("validating", self.validating_secs),
            ("in-progress", self.in_progress_secs),
            ("per-request", self.request_secs),
            ("finalizing", self.finalizing_secs),
            ("cancelling", self.cancelling_secs),
            ("completion window", self.completion_window_secs),
        ] {
            anyhow::ensure!(
                secs >= 0.0 && secs.is_finite(),
                "the {name} duration must be a non-negative number of seconds, not {secs}"
            );
        }
        anyhow::ensure!(
            self.limits.max_requests > 0 && self.limits.max_bytes > 0,
            "the file limits must be positive"
        );
        anyhow::ensure!(
            self.foreign_batches == 0 || self.foreign_per_create > 0,
            "the foreign batches per create must be at least 1 when there are foreign batches"
        );
        self.faults
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid faults: {e}"))
    }

    /// The durations, in simulated milliseconds.
    pub(crate) fn timing(&self) -> Timing {
        Timing {
            validating: ms(self.validating_secs),
            in_progress: ms(self.in_progress_secs),
            per_request: self.request_secs * 1000.0,
            finalizing: ms(self.finalizing_secs),
            cancelling: ms(self.cancelling_secs),
            window: ms(self.completion_window_secs),
        }
    }
}

/// Simulated durations, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) validating: i64,
    pub(crate) in_progress: i64,
    pub(crate) per_request: f64,
    pub(crate) finalizing: i64,
    pub(crate) cancelling: i64,
    pub(crate) window: i64,
}

/// The order of `GET /batches` (`--list-order`; see `listing.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ListOrder {
    /// Newest first, as the real service lists them.
    #[default]
    NewestFirst,
    /// A fixed pseudo-random order: complete and consistent pagination, but no time order.
    Shuffled,
}
