//! Leases: which daemon may move which job, when several share one database.
//!
//! # States and transitions
//!
//! An **instance** is one run of one daemon. It *registers* at its start and gets a new
//! **epoch** (a number no instance had before: a restart is a new instance), with a lease that
//! runs for the lease's time to live from the database server's clock. It *renews* the lease
//! well before it ends (a heartbeat). An instance whose lease ran out is *reaped* by any other:
//! its row goes, and it has lost its lease for good; its next renewal says so
//! ([`StoreError::LeaseLost`]), and it registers again, as a new instance, to go on.
//!
//! A **job** is held by one instance (its epoch in the job's row) or by none:
//!
//! ```text
//!   (file claimed) ──claim──▶ held by E ──(E reaped)──▶ free ──take_over by F──▶ held by F
//!                                  │                                               │
//!                                  └──resign (E stops cleanly)──▶ free ◀───────────┘ (F reaped)
//! ```
//!
//! A job claimed by instance E is held by E. When E is reaped or resigns, its unfinished jobs
//! are free, and another instance *takes them over* (`take_over`), a few at a time, with row
//! locks that skip rows another instance is taking (`FOR UPDATE SKIP LOCKED`). The taker's
//! epoch is greater than any the job had before, so "the epoch grows each time the job changes
//! hands" holds. The new holder knows nothing of what the old one had under way: it treats
//! the job as after a restore (its uploads and creates of unknown outcome, the job unverified
//! until the service was asked) before it sends anything.
//!
//! # The fence
//!
//! Every operation that moves a job, a submission, their history or the job's events carries
//! the writer's [`Lease`]. The store refuses it ([`StoreError::NotHeld`]) and moves nothing
//! when the writer's lease has run out or been reaped, or the job is not held by the writer:
//! an instance that was paused, partitioned or slow learns it from its first refused write,
//! and drops that work. The check is the store's (a PostgreSQL store checks it in one place
//! for every operation, and in triggers for every row it writes), never the caller's, so no
//! write can forget it. A finished job is not fenced: it never moves again.
//!
//! # The leader
//!
//! What must run once for the whole fleet (tracking the batches: the list sweep and the polls;
//! the stuck check; retention, remote clean-up, resubmissions and the duplicate watch) runs on
//! one instance, the **leader**, elected through a row rather than a session lock, so a dropped
//! connection cannot leave two instances believing they lead:
//!
//! ```text
//!   follower ──elect (no leader, or its term ran out)──▶ leader ──elect (renew)──▶ leader
//!      ▲                                                    │
//!      └────────── term ran out, or resign ─────────────────┘
//! ```
//!
//! A term is short (a quarter of the lease's time to live) and renewed at a third of it; the
//! leader stops leading a little before its term ends by its own clock, and a new one is
//! elected only once the term ended by the database's. A write the leader makes as leader
//! ([`Lease::as_leader`]) is let through for a job it does not hold while its term runs, and
//! refused once it ended (for the jobs it holds, as any write of theirs): the sweep is the
//! leader's lease on tracking.
//!
//! [`Lease::SOLE`] is the lease of a store one daemon writes alone (SQLite, behind its
//! instance lock) and of an operator's command: it is never refused.

use std::time::Duration;

use super::Lease;
use crate::StoreError;

/// Who an instance is: what it registers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// `instance.name`, else HOST-PID.
    pub name: String,
    pub host: String,
    pub pid: u32,
    /// Where `pid` names this process: the kernel's boot and the process's pid namespace
    /// (`BOOT_ID pid:[INODE]`). Two instances with the same run on one kernel in one pid
    /// namespace, where one can tell whether the other's process still runs; a host name
    /// cannot say that (containers on one host may share one, each in its own namespace).
    pub pid_namespace: String,
}

/// An instance as the database records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InstanceRow {
    pub epoch: i64,
    pub name: String,
    pub host: String,
    pub pid: i64,
    /// [`Instance::pid_namespace`]; `None` for an instance registered by a batchwatch that
    /// did not record it.
    pub pid_namespace: Option<String>,
    pub started_at: String,
    pub heartbeat_at: String,
    /// Whether its lease has not run out (by the database's clock).
    pub live: bool,
    /// How many unfinished jobs it holds.
    pub jobs: i64,
    /// Whether it is the leader, its term running.
    pub leader: bool,
}

/// What the instances of a shared store ask of it.
pub trait Leases {
    /// Registers `who` as a new instance whose lease runs for `ttl`: its lease.
    async fn register(&self, who: &Instance, ttl: Duration, now: &str)
    -> Result<Lease, StoreError>;
    /// Renews `lease` for another `ttl`; [`StoreError::LeaseLost`] when it was reaped.
    async fn renew(&self, lease: &Lease, ttl: Duration, now: &str) -> Result<(), StoreError>;
    /// Reaps the instances whose lease ran out, then takes up to `limit` of the unfinished jobs
    /// nobody holds for `lease`'s instance, each with an event that says so, their uploads and
    /// creates under way marked as of unknown outcome: their ids.
    async fn take_over(
        &self,
        lease: &Lease,
        limit: i64,
        now: &str,
    ) -> Result<Vec<String>, StoreError>;
    /// Elects `lease`'s instance leader for a `term`, or renews its term: whether it leads
    /// now. Nobody leads, or the last term ran out by the database's clock: it becomes
    /// leader; it leads already: its term is renewed; another leads: it does not.
    async fn elect(&self, lease: &Lease, term: Duration) -> Result<bool, StoreError>;
    /// Ends `lease` (a clean stop): its jobs are free at once, and its term as leader, if it
    /// leads.
    async fn resign(&self, lease: &Lease) -> Result<(), StoreError>;
    /// The instances registered, oldest first.
    async fn instances(&self) -> Result<Vec<InstanceRow>, StoreError>;
}
