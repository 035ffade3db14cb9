//! batchwatch: runs OpenAI-style Batch API jobs from a queue directory, unattended, with the
//! whole status history in SQLite.

pub mod cli;
pub mod daemon;
pub mod demo;
pub mod doctor;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod manual;
pub mod metrics;
pub mod pages;
pub mod preflight;
pub mod queue;
pub mod report;
pub mod store;
pub mod usage;

// The domain, the provider and the simulator live in crates of their own; their old paths stay for the code
// that has not moved yet.
pub use batchwatch_core::process::{EXIT_CONFIG, EXIT_NEWER_DATABASE};
pub use batchwatch_core::{
    batchfile, clock, config, failpoint, model, printable, process, secret, telemetry,
};
pub use batchwatch_provider as api;
pub use batchwatch_sim as sim;
