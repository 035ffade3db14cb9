//! Leases in SQLite: one daemon writes a SQLite database, behind its instance lock, so the one
//! lease there is [`Lease::SOLE`], which is never refused, there is nobody to take over
//! from, and that daemon leads.

use std::time::Duration;

use batchwatch_store::ops::lease::{Instance, InstanceRow, Leases};

use crate::{Lease, Store, StoreError};

impl Leases for Store {
    async fn register(
        &self,
        _who: &Instance,
        _ttl: Duration,
        _now: &str,
    ) -> Result<Lease, StoreError> {
        Ok(Lease::SOLE)
    }
    async fn renew(&self, _lease: &Lease, _ttl: Duration, _now: &str) -> Result<(), StoreError> {
        Ok(())
    }
    async fn take_over(
        &self,
        _lease: &Lease,
        _limit: i64,
        _now: &str,
    ) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }
    async fn elect(&self, _lease: &Lease, _term: Duration) -> Result<bool, StoreError> {
        Ok(true)
    }
    async fn resign(&self, _lease: &Lease) -> Result<(), StoreError> {
        Ok(())
    }
    async fn instances(&self) -> Result<Vec<InstanceRow>, StoreError> {
        Ok(Vec::new())
    }
}
