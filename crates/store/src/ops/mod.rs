//! The store's operations, one trait per activity that asks for them, with their inputs and
//! answers, and the writer's lease every operation that moves a job or a submission carries.
//! Each operation is one unit of work: the backend begins, writes and commits its transaction,
//! never the caller.

pub mod cancel;
pub mod finish;
pub mod housekeeping;
pub mod intake;
pub mod lease;
pub mod submit;
pub mod track;

/// The right to move the jobs a writer holds: the epoch of the writer's instance, which grows
/// each time a job changes hands, so a write carrying an older epoch can be refused ([`lease`]
/// has the states and the fence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    epoch: i64,
}

impl Lease {
    /// The lease of the one daemon that writes a database alone (SQLite, behind its instance
    /// lock), and of an operator's commands: never refused.
    pub const SOLE: Lease = Lease { epoch: 0 };

    /// The lease of the instance registered as `epoch` (a store gives it out at registration).
    pub fn of(epoch: i64) -> Lease {
        Lease { epoch }
    }

    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// Whether this is [`Lease::SOLE`].
    pub fn is_sole(&self) -> bool {
        self.epoch == 0
    }
}
