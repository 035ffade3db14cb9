//! The store's operations, one trait per activity that asks for them, with their inputs and
//! answers, and the writer's lease every operation that moves a job or a submission carries.
//! Each operation is one unit of work: the backend begins, writes and commits its transaction,
//! never the caller.

pub mod cancel;
pub mod finish;
pub mod housekeeping;
pub mod intake;
pub mod submit;
pub mod track;

/// The right to move jobs and submissions, held by one writer at a time: its epoch grows each
/// time the right changes hands, so a write carrying an older epoch can be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    epoch: i64,
}

impl Lease {
    /// The lease of the one daemon that writes a database alone (SQLite, behind its instance
    /// lock), and of the commands that write while it is stopped.
    pub const SOLE: Lease = Lease { epoch: 0 };

    pub fn epoch(&self) -> i64 {
        self.epoch
    }
}
