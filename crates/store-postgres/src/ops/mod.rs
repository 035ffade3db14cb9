//! The store port's operations ([`batchwatch_store::ops`]) in PostgreSQL, each one unit of work
//! that owns its transaction, as in the SQLite store (`batchwatch_store_sqlite::ops`), whose
//! operations these follow step for step.
//!
//! Every operation that moves a job or a submission takes the writer's [`Lease`]; [`Store::unit`]
//! is the one place every such operation begins, and fences it ([`crate::leases::fence`]).

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
    /// Runs `work` as one operation's transaction under `lease`: fenced first (a lease that
    /// ran out or was reaped moves nothing), committed when it returns `Ok`, rolled back
    /// otherwise.
    pub(crate) async fn unit<T>(
        &self,
        lease: &Lease,
        work: impl AsyncFnOnce(&mut Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut tx = self.begin().await?;
        crate::leases::fence(&mut tx, lease).await?;
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

    /// Runs `work` in one write transaction: committed when it returns `Ok`, rolled back
    /// otherwise. For the operations that move nothing, so take no lease (a cancel asked for).
    pub(crate) async fn transaction<T>(
        &self,
        work: impl AsyncFnOnce(&mut Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.unit(&Lease::SOLE, work).await
    }
}
