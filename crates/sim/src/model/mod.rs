//! The simulator's shared types, at the bottom: what it is told ([`SimConfig`], [`Faults`]),
//! simulated time, the files and batches it holds, the other tool's progress, and what it
//! counts. They import no other module of the simulator, so the rest stands in layers above
//! them: `state` (the lock and what is behind it) and `output`; the activities that change the
//! state (`lifecycle`, `listing`, `files`); the endpoints, the admin API and the fault
//! middleware; `persist` and `routes`; then `server` (start, the handle) and `args`.

mod batch;
pub(crate) mod clock;
mod config;
mod faults;
mod file;
mod foreign;
mod stats;

pub use batch::Transition;
pub(crate) use batch::{Admission, Api, Batch, BatchErrorEntry, Served, Validation};
pub(crate) use config::Timing;
pub use config::{ListOrder, SimConfig};
pub(crate) use faults::FaultState;
pub use faults::{AuthFault, ErrorStatus, FaultKind, Faults, RetryAfter, ScriptedFault};
pub(crate) use file::{FileEntry, FileReady, StoredFile, file_name};
pub(crate) use foreign::Foreign;
pub(crate) use stats::Counters;
pub use stats::{BatchStats, Stats};
