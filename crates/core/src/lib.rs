//! batchwatch's domain: what every other crate reads and none owns. The words the parts share
//! ([`model`]), the batch-file rules ([`batchfile`]), the one clock ([`clock`]), the
//! configuration ([`config`]), token and cost arithmetic ([`usage`]), and the process-wide
//! helpers of every command (logging in [`telemetry`], [`process`], [`failpoint`],
//! [`printable`], and [`secret`] for secrets read from files). It talks to no service and keeps no state.

pub mod batchfile;
pub mod clock;
pub mod config;
pub mod failpoint;
pub mod model;
pub mod printable;
pub mod process;
pub mod secret;
pub mod telemetry;
pub mod usage;
