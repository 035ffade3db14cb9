//! The store port's operations ([`batchwatch_store::ops`]) in SQLite: what the daemon, its
//! housekeeping and the commands ask of the database, each one unit of work that owns its
//! transaction (begun, written, committed here, never by the caller). A job's state is derived from its submissions inside the same
//! transaction that moves one of them ([`crate::progress::refresh_job`]).
//!
//! Every operation that moves a job or a submission takes the writer's [`Lease`]. One daemon
//! writes a SQLite database (its instance lock keeps a second one out), so here the lease is
//! [`Lease::SOLE`] and always holds; a store shared by several daemons fences a write whose
//! lease epoch is no longer current, in `Store::unit`, the one place every operation begins.
//!
//! The operations are grouped by the activity that asks for them: [`intake`] (claim, validate,
//! reject), [`submit`] (upload and create intents, reconcile), [`track`] (observations, polls,
//! lost batches), [`cancel`], [`finish`] (results, the job's end) and [`housekeeping`]
//! (retention, remote deletions, resubmission).

#[path = "../../../store/shared/ops/cancel.rs"]
pub mod cancel;
#[path = "../../../store/shared/ops/finish.rs"]
pub mod finish;
#[path = "../../../store/shared/ops/housekeeping.rs"]
pub mod housekeeping;
#[path = "../../../store/shared/ops/intake.rs"]
pub mod intake;
#[path = "../../../store/shared/ops/submit.rs"]
pub mod submit;
#[path = "../../../store/shared/ops/track.rs"]
pub mod track;

use crate::{Store, StoreError, Tx};
pub use batchwatch_store::ops::Lease;

impl Store {
    /// Runs `work` as one operation's transaction under `lease`: committed when it returns
    /// `Ok`, rolled back otherwise. SQLite has one writer, so every lease holds; this is where a
    /// shared store fences a writer whose epoch is no longer current.
    pub(crate) async fn unit<T>(
        &self,
        _lease: &Lease,
        work: impl AsyncFnOnce(&mut Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.transaction(work).await
    }

    /// Runs `work` in one write transaction: committed when it returns `Ok`, rolled back
    /// otherwise. For the operations that move nothing, so take no lease (a cancel asked for).
    pub(crate) async fn transaction<T>(
        &self,
        work: impl AsyncFnOnce(&mut Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut tx = self.begin().await?;
        let out = work(&mut tx).await?;
        #[cfg(feature = "fixtures")]
        if self
            .kill_before_commit
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            drop(tx);
            return Err(StoreError::Killed);
        }
        tx.commit().await?;
        Ok(out)
    }

    /// A test's crash point: the next operation that would commit is dropped before its
    /// commit instead, as SIGKILL at any of its writes leaves it (SQLite rolls an uncommitted
    /// transaction back whole). Returns whether it was armed already.
    #[cfg(feature = "fixtures")]
    pub fn kill_before_next_commit(&self, armed: bool) -> bool {
        self.kill_before_commit
            .swap(armed, std::sync::atomic::Ordering::SeqCst)
    }
}
