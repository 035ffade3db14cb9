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
    /// Whether the writer writes as the leader ([`Lease::as_leader`]).
    leader: bool,
}

impl Lease {
    /// The lease of the one daemon that writes a database alone (SQLite, behind its instance
    /// lock), and of an operator's commands: never refused.
    pub const SOLE: Lease = Lease {
        epoch: 0,
        leader: false,
    };

    /// The lease of the instance registered as `epoch` (a store gives it out at registration).
    pub fn of(epoch: i64) -> Lease {
        Lease {
            epoch,
            leader: false,
        }
    }

    /// The same instance writing as the leader: what it records of a job it does not hold
    /// (an observation of the sweep, a duplicate found) is let through while, and only while,
    /// its term as leader runs ([`lease`] has the terms); the jobs it holds, as always.
    pub fn as_leader(self) -> Lease {
        Lease {
            leader: true,
            ..self
        }
    }

    /// Whether the writer writes as the leader.
    pub fn is_leader(&self) -> bool {
        self.leader
    }

    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// Whether this is [`Lease::SOLE`].
    pub fn is_sole(&self) -> bool {
        self.epoch == 0
    }
}
