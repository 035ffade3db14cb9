//! The daemon's lease on a shared store (`batchwatch_store::ops::lease` has the states): it
//! registers as a new instance at its start, takes over the jobs earlier runs held, renews
//! its lease while it runs, and ends it at a clean stop, so every write it makes is fenced by
//! its own epoch.
//!
//! One daemon writes a database for now (a PostgreSQL one behind the store's advisory lock):
//! whatever other instance the database records is an earlier run that did not stop cleanly,
//! so the daemon ends those leases at once rather than waiting for them to run out. A SQLite
//! store has one lease, `Lease::SOLE`, and nothing here does anything to it.

use std::time::Duration;

use crate::clock::{self, Clock};
use crate::store::ops::lease::Instance;
use crate::store::prelude::*;
use crate::store::{Lease, Store, StoreError};

/// How long a lease runs from its last renewal.
pub const TTL: Duration = Duration::from_secs(60);

/// How often the lease is renewed: three times within its time to live, so one renewal lost
/// to a slow database costs nothing.
pub const RENEW_EVERY: Duration = Duration::from_secs(20);

/// This process, as it registers: `name` (else HOST-PID), its host and pid.
pub fn this_process(name: Option<&str>) -> Instance {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    let pid = std::process::id();
    Instance {
        name: name.map_or_else(|| format!("{host}-{pid}"), str::to_owned),
        host,
        pid,
    }
}

/// Registers this daemon, ends the leases of earlier runs, and takes over every unfinished
/// job: the daemon's lease.
pub async fn begin(store: &Store, clock: &Clock) -> anyhow::Result<Lease> {
    let now = clock::format(clock.now());
    let lease = store.register(&this_process(None), TTL, &now).await?;
    if lease.is_sole() {
        return Ok(lease);
    }
    for earlier in store.instances().await? {
        if earlier.epoch != lease.epoch() {
            store.resign(&Lease::of(earlier.epoch)).await?;
            tracing::info!(
                instance = %earlier.name,
                epoch = earlier.epoch,
                "ended the lease of an earlier run"
            );
        }
    }
    let taken = store.take_over(&lease, i64::MAX, &now).await?;
    tracing::info!(
        epoch = lease.epoch(),
        jobs = taken.len(),
        "holding the database under a new lease"
    );
    Ok(lease)
}

/// Renews `lease` every [`RENEW_EVERY`] until the task is aborted. A renewal that fails is
/// tried again at the next; a lease found lost is said once: from then on the store refuses
/// every move, so the rounds fail and `/readyz` says why, until the daemon is restarted.
pub async fn renew(store: Store, lease: Lease, clock: Clock) {
    if lease.is_sole() {
        return;
    }
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        match store.renew(&lease, TTL, &clock::format(clock.now())).await {
            Ok(()) => {}
            Err(e @ StoreError::LeaseLost { .. }) => {
                tracing::error!(error = %e, "this daemon can move nothing more; restart it");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %crate::telemetry::chain(&e), "the lease could not be renewed; trying again")
            }
        }
    }
}
