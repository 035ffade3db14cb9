//! What keeps a long-running daemon from filling anything up, shared by the daemon and the
//! commands that do the same on demand:
//!
//! * [`remote`]: deleting files from the service (each deletion an intent row first), and
//!   `batchwatch gc-remote`, which finds what earlier runs left there;
//! * [`retention`]: removing the files and database rows of jobs that ended long ago
//!   (`retention.*`, `batchwatch prune`);
//! * [`resubmit`]: queueing again the requests a finished job left undone
//!   (`batchwatch resubmit`, `batch.resubmit_expired`, `batch.resubmit_failed`);
//! * [`notifications`]: telling programs and URLs that a job ended or a batch is stuck
//!   (`[[notify]]`).

pub mod notifications;
pub mod remote;
pub mod resubmit;
pub mod retention;
