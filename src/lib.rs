//! batchwatch: runs OpenAI-style Batch API jobs from a queue directory, unattended, with the
//! whole status history in SQLite.

pub mod api;
pub mod batchfile;
pub mod cli;
pub mod config;
pub mod model;
pub mod sim;
pub mod telemetry;

/// Exit code for a configuration error (EX_CONFIG from sysexits.h); systemd is told not to
/// restart on it.
pub const EXIT_CONFIG: u8 = 78;
