//! The inputs and answers of the store's operations, grouped by the activity that asks, and
//! the writer's lease every operation that moves a job or a submission carries.

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
