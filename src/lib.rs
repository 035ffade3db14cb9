//! batchwatch: runs OpenAI-style Batch API jobs from a queue directory, unattended, with the
//! whole status history in SQLite.

pub mod api;
pub mod batchfile;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod failpoint;
pub mod housekeeping;
pub mod metrics;
pub mod model;
pub mod printable;
pub mod process;
pub mod queue;
pub mod report;
pub mod sim;
pub mod store;
pub mod telemetry;
pub mod usage;

/// Exit code when the database was migrated by a newer batchwatch, or its schema is not the one
/// its migrations make (EX_DATAERR): restarting cannot help, so the systemd unit does not
/// restart on it either.
pub const EXIT_NEWER_DATABASE: u8 = 65;

/// Exit code for a configuration error (EX_CONFIG from sysexits.h); systemd is told not to
/// restart on it.
pub const EXIT_CONFIG: u8 = 78;
